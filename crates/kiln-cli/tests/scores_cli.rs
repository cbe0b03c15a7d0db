//! `kiln scores …` end to end on score directories written by kiln-scoring: runs of two
//! "architectures" that share a difficulty per example, one of which finds 4 planted examples
//! much harder.

use std::path::Path;
use std::process::{Command, Output};

use kiln_scoring::ScoreTracker;
use kiln_scoring::files::{Manifest, ScoreTable};
use serde_json::Value;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn ok_json(args: &[&str]) -> Value {
    let out = kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// A run of 60 examples × 3 classes over 3 epochs: logit of the true class = difficulty + noise.
fn write_run(dir: &Path, name: &str, seed: u64, planted: bool) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 1000) as f64 / 1000.0 - 0.5
    };
    let n = 60;
    let mut t = ScoreTracker::new(n);
    let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
    for _ in 0..3 {
        let mut logits = Vec::new();
        for (i, &y) in labels.iter().enumerate() {
            let mut ease = (i as f64 / 10.0) - 2.0 + noise();
            if planted && [3, 14, 27, 51].contains(&i) {
                ease -= 6.0;
            }
            for c in 0..3 {
                logits.push(if c == y { ease } else { 0.3 * noise() });
            }
        }
        let ids: Vec<usize> = (0..n).collect();
        t.observe(&ids, &logits, 3, &labels).unwrap();
    }
    let path = dir.join(format!("{name}.scores"));
    ScoreTable::from_tracker(&t, Manifest::new("synthetic", seed))
        .save(&path, false)
        .unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn consistency_and_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let a: Vec<String> = (0..4)
        .map(|s| write_run(tmp.path(), &format!("a{s}"), s, false))
        .collect();
    let b: Vec<String> = (0..4)
        .map(|s| write_run(tmp.path(), &format!("b{s}"), 10 + s, true))
        .collect();
    let mut args = vec!["scores", "consistency", "--score", "loss_mean", "--json"];
    args.extend(a.iter().map(String::as_str));
    let v = ok_json(&args);
    assert_eq!(v["runs"], 4);
    assert_eq!(v["examples"], 60);
    let s = v["split_half"]["spearman"].as_f64().unwrap();
    assert!(s > 0.8 && s <= 1.0, "a shared difficulty: {s}");
    assert_eq!(v["averaging"].as_array().unwrap().len(), 2);
    let pca: Vec<f64> = v["pca_explained_variance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(pca[0] > 0.5, "one dominant component: {pca:?}");
    // the table form names the score
    let mut args = vec!["scores", "consistency", "--score", "loss_mean"];
    args.extend(a.iter().map(String::as_str));
    let out = kiln(&args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("split-half Spearman"));

    let ga = format!("clean={}", a.join(","));
    let gb = format!("planted={}", b.join(","));
    let v = ok_json(&[
        "scores",
        "fingerprint",
        "--group",
        &ga,
        "--group",
        &gb,
        "--score",
        "loss_mean",
        "--permutations",
        "500",
        "--top",
        "4",
        "--no-rank",
        "--json",
    ]);
    let top: Vec<u64> = v["pairs"][0]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["example"].as_u64().unwrap())
        .collect();
    let mut sorted = top.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![3, 14, 27, 51], "the planted examples");
    assert_eq!(v["accuracy"], 1.0);

    // bad input: a missing score directory, an unknown column, a malformed group
    let out = kiln(&["scores", "consistency", "nope.scores", &a[0]]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.scores"));
    let out = kiln(&[
        "scores",
        "consistency",
        "--score",
        "shoe_size",
        &a[0],
        &a[1],
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("el2n_mean"));
    let out = kiln(&["scores", "fingerprint", "--group", "justaname"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=RUN.scores"));
}
