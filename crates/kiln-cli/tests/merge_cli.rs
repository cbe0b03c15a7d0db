//! `kiln merge` end to end: parity through the binary, dry runs, refusals, and a crash mid-merge.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_checkpoint::Checkpoint;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-merging/tests/fixtures")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn merges_like_mergekit_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ties");
    let cfg = fixtures().join("configs/ties.yml");
    let o = kiln(&[
        "merge",
        s(&cfg),
        s(&out),
        "--out-shard-size",
        "10kB",
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("merged 40 tensors"));
    let got = Checkpoint::open(&out).unwrap();
    assert!(got.files().len() > 1, "10 kB shards give several files");
    let want = Checkpoint::open(fixtures().join("expected/ties.safetensors")).unwrap();
    for name in want.names() {
        let (a, b) = (
            got.tensor(name).unwrap().to_f32().unwrap(),
            want.tensor(name).unwrap().to_f32().unwrap(),
        );
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{name}: {worst}");
    }
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = kiln(&[
        "merge",
        s(&fixtures().join("configs/slerp.yml")),
        s(&out),
        "--dry-run",
        "--out-shard-size",
        "20kB",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    for needle in [
        "merge_method: slerp",
        "40 merged",
        "model-00001-of-",
        "memory:",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bad_configs_and_existing_outputs_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yml");
    std::fs::write(
        &cfg,
        "models: [{model: x}]\nmerge_method: ties\nbase_model: y\nnormalise: true\n",
    )
    .unwrap();
    let o = kiln(&["merge", s(&cfg), s(&dir.path().join("o"))]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("normalise") && err.contains("merge_method"),
        "{err}"
    );

    std::fs::write(&cfg, "models: [{model: x}]\nmerge_method: frankenmerge\n").unwrap();
    let err = String::from_utf8_lossy(&kiln(&["merge", s(&cfg), s(&dir.path().join("o"))]).stderr)
        .to_string();
    assert!(
        err.contains("frankenmerge") && err.contains("slerp"),
        "{err}"
    );

    let out = dir.path().join("exists");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "precious").unwrap();
    let o = kiln(&["merge", s(&fixtures().join("configs/linear.yml")), s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "precious"
    );
    let o = kiln(&[
        "merge",
        s(&fixtures().join("configs/linear.yml")),
        s(&out),
        "--force",
    ]);
    assert!(o.status.success());
    assert!(!out.join("keep.txt").exists() && out.join("model.safetensors").exists());

    // Writing into an input is refused.
    let o = kiln(&[
        "merge",
        s(&fixtures().join("configs/linear.yml")),
        s(&fixtures().join("models/ft_a")),
        "--force",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("also an input model"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let o = kiln(&[
        "merge",
        s(&fixtures().join("configs/linear.yml")),
        s(&dir.path().join("z")),
        "--out-shard-size",
        "big",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

/// A merge killed mid-way (SIGKILL, no cleanup) leaves no output directory; the next run removes
/// the dead run's staging directory and succeeds.
#[test]
fn a_killed_merge_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "merge",
            s(&fixtures().join("configs/ties.yml")),
            s(&out),
            "--out-shard-size",
            "10kB",
        ])
        .env("KILN_MERGE_TEST_PAUSE_AFTER", "12")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut paused = false;
    for line in stderr.lines() {
        if line.unwrap().contains("paused after 12 tensors") {
            paused = true;
            break;
        }
    }
    assert!(paused, "the merge reached the pause point");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "no output directory after a crash");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.iter().all(|n| n.starts_with(".merged.kiln-tmp-")),
        "{leftovers:?}"
    );

    let o = kiln(&["merge", s(&fixtures().join("configs/ties.yml")), s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        after,
        vec!["merged".to_owned()],
        "the stale staging directory was removed"
    );
}

#[test]
fn merge_help_explains_units_and_defaults() {
    let help = String::from_utf8(kiln(&["merge", "--help"]).stdout).unwrap();
    for needle in [
        "[default: 5GB]",
        "in bytes",
        "--dry-run",
        "--force",
        "mergekit",
    ] {
        assert!(help.contains(needle), "`{needle}` not in:\n{help}");
    }
}
