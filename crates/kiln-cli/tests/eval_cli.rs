//! `kiln eval mc` on the lm-evaluation-harness fixture of kiln-train
//! (`crates/kiln-train/tests/fixtures/make_mc_fixture.py`): `--json` gives lm-eval's `acc`,
//! `acc_norm` and per-row log-likelihoods; few-shot runs; bad input is refused with where and why.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kiln-train/tests/fixtures/mc")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("kiln runs")
}

fn path(name: &str) -> String {
    fixtures().join(name).to_str().unwrap().to_owned()
}

#[test]
fn json_equals_lm_eval() {
    let (model, data) = (path("model"), path("medmcqa_dev.jsonl"));
    let out = kiln(&["eval", "mc", "--model", &model, "--data", &data, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(path("lm_eval.json")).unwrap()).unwrap();
    assert_eq!(got["acc"], want["zero_shot"]["acc"]);
    assert_eq!(got["acc_norm"], want["zero_shot"]["acc_norm"]);
    assert_eq!(got["n"], 20);
    let examples = got["examples"].as_array().unwrap();
    for (e, s) in examples
        .iter()
        .zip(want["zero_shot"]["samples"].as_array().unwrap())
    {
        assert_eq!(e["id"], s["id"]);
        for (a, b) in e["loglikelihoods"]
            .as_array()
            .unwrap()
            .iter()
            .zip(s["loglikelihoods"].as_array().unwrap())
        {
            assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4);
        }
        assert!(e["pred"].as_u64().unwrap() < 4 && e["pred_norm"].as_u64().unwrap() < 4);
    }
    assert!(got["by_subject"].as_object().unwrap().len() == 3);
    assert!(got["by_choice_type"]["single"]["n"].as_u64().unwrap() > 0);

    // the table, and two shots drawn from the training rows
    let out = kiln(&[
        "eval",
        "mc",
        "--model",
        &model,
        "--data",
        &data,
        "--shots",
        "2",
        "--fewshot-data",
        &path("medmcqa_train.jsonl"),
        "--limit",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("2-shot") && table.contains("by subject:") && table.contains("all"),
        "{table}"
    );
}

#[test]
fn bad_input_is_refused() {
    let model = path("model");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"a\", \"question\": \"Q\", \"opa\": \"1\", \"opb\": \"2\", \"opc\": \"3\", \"opd\": \"4\", \"cop\": 0}\n{\"id\": \"b\", \"question\": \"Q\"}\n").unwrap();
    let out = kiln(&[
        "eval",
        "mc",
        "--model",
        &model,
        "--data",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.jsonl:2:") && err.contains("`opa`"),
        "{err}"
    );
    let out = kiln(&[
        "eval",
        "mc",
        "--model",
        &model,
        "--data",
        &path("medmcqa_dev.jsonl"),
        "--shots",
        "3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--fewshot-data"),
        "{err}"
    );
    let out = kiln(&[
        "eval",
        "mc",
        "--model",
        dir.path().to_str().unwrap(),
        "--data",
        &path("medmcqa_dev.jsonl"),
    ]);
    assert!(!out.status.success());
}
