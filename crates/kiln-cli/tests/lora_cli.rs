//! `kiln lora merge|extract|spectrum` and `kiln run logits --adapter` end to end on the PEFT
//! fixtures of kiln-lora (`crates/kiln-lora/tests/fixtures/make_lora_fixtures.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_checkpoint::{Checkpoint, Dtype};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-lora/tests/fixtures")
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

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kiln failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn f32s(path: &Path, name: &str) -> Vec<f32> {
    Checkpoint::open(path)
        .unwrap()
        .tensor(name)
        .unwrap()
        .to_f32()
        .unwrap()
}

/// The reference's `input_ids` as `1,2,3;4,5`.
fn ids(reference: &Path) -> String {
    let c = Checkpoint::open(reference).unwrap();
    let t = c.tensor("input_ids").unwrap();
    assert_eq!(t.dtype(), Dtype::I64);
    let v: Vec<i64> = t
        .data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    v.chunks(t.shape()[1])
        .map(|r| r.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
        .collect::<Vec<_>>()
        .join(";")
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let d = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d <= 1e-5 * scale, "{what}: max diff {d} (scale {scale})");
}

#[test]
fn run_logits_with_adapters_matches_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    for (adapter, model) in [("gpt2_dora", "gpt2"), ("bert_plain", "bert")] {
        let reference = f.join(format!("reference/{adapter}.safetensors"));
        let out = tmp.path().join(format!("{adapter}.safetensors"));
        ok(&kiln(&[
            "run",
            "logits",
            "--model",
            s(&f.join("models").join(model)),
            "--adapter",
            s(&f.join("adapters").join(adapter)),
            "--input-ids",
            &ids(&reference),
            "--output",
            s(&out),
        ]));
        assert_close(&f32s(&out, "logits"), &f32s(&reference, "logits"), adapter);
    }
    // two adapters with weights: PEFT's add_weighted_adapter(combination_type="cat")
    let reference = f.join("reference/cat_plain_second.safetensors");
    let out = tmp.path().join("cat.safetensors");
    ok(&kiln(&[
        "run",
        "logits",
        "--model",
        s(&f.join("models/bert")),
        "--adapter",
        s(&f.join("adapters/bert_plain")),
        "--adapter",
        s(&f.join("adapters/bert_second")),
        "--adapter-weights",
        "0.7,0.3",
        "--input-ids",
        &ids(&reference),
        "--output",
        s(&out),
    ]));
    assert_close(&f32s(&out, "logits"), &f32s(&reference, "logits"), "cat");
    // one weight for two adapters
    let e = fails(&kiln(&[
        "run",
        "logits",
        "--model",
        s(&f.join("models/bert")),
        "--adapter",
        s(&f.join("adapters/bert_plain")),
        "--adapter",
        s(&f.join("adapters/bert_second")),
        "--adapter-weights",
        "0.7",
        "--input-ids",
        "1,2",
        "--output",
        s(&out),
    ]));
    assert!(e.contains("one weight per adapter"), "{e}");
}

#[test]
fn lora_merge_writes_a_checkpoint_with_peft_merged_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let out = tmp.path().join("merged");
    let stdout = ok(&kiln(&[
        "lora",
        "merge",
        "--base",
        s(&f.join("models/gpt2")),
        "--adapter",
        s(&f.join("adapters/gpt2_legacy")),
        s(&out),
    ]));
    assert!(stdout.contains("merged"), "{stdout}");
    assert!(out.join("config.json").is_file() && out.join("generation_config.json").is_file());
    let reference = f.join("reference/gpt2_plain.safetensors");
    let name = "transformer.h.1.attn.c_attn.weight";
    let d = f32s(&out, name)
        .iter()
        .zip(f32s(&reference, &format!("merged.{name}")))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-6, "{d}");
    // the legacy config's unknown fields are warned about, and a second run needs --force
    let again = kiln(&[
        "lora",
        "merge",
        "--base",
        s(&f.join("models/gpt2")),
        "--adapter",
        s(&f.join("adapters/gpt2_plain")),
        s(&out),
    ]);
    let e = fails(&again);
    assert!(e.contains("exists") && e.contains("--force"), "{e}");
    // an adapter for another architecture, and an output inside an input
    let e = fails(&kiln(&[
        "lora",
        "merge",
        "--base",
        s(&f.join("models/bert")),
        "--adapter",
        s(&f.join("adapters/gpt2_plain")),
        s(&tmp.path().join("x")),
    ]));
    assert!(e.contains("another architecture"), "{e}");
    assert!(!tmp.path().join("x").exists());
    let e = fails(&kiln(&[
        "lora",
        "merge",
        "--base",
        s(&f.join("models/gpt2")),
        "--adapter",
        s(&f.join("adapters/gpt2_plain")),
        s(&f.join("adapters/gpt2_plain/out")),
    ]));
    assert!(e.contains("inside"), "{e}");
}

#[test]
fn lora_extract_and_spectrum() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let out = tmp.path().join("extracted");
    let stdout = ok(&kiln(&[
        "lora",
        "extract",
        "--base",
        s(&f.join("models/gpt2")),
        "--finetuned",
        s(&f.join("finetuned/gpt2_ft")),
        "--max-rank",
        "8",
        "--sv-epsilon",
        "1e-4",
        s(&out),
    ]));
    assert!(
        stdout.contains("transformer.h.0.attn.c_attn") && stdout.contains("modules_to_save"),
        "{stdout}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["r"], 8);
    assert_eq!(config["rank_pattern"]["transformer.h.1.attn.c_attn"], 3);
    assert!(
        std::fs::read_to_string(out.join("README.md"))
            .unwrap()
            .contains("energy")
    );
    // the randomized SVD finds the same rank-3 modules (a sketch of 4 + 2 columns)
    let fast = tmp.path().join("fast");
    ok(&kiln(&[
        "lora",
        "extract",
        "--base",
        s(&f.join("models/gpt2")),
        "--finetuned",
        s(&f.join("finetuned/gpt2_ft")),
        "--max-rank",
        "4",
        "--sv-epsilon",
        "1e-4",
        "--svd",
        "randomized",
        "--oversample",
        "2",
        "--power-iters",
        "2",
        s(&fast),
    ]));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fast.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(config["rank_pattern"]["transformer.h.1.attn.c_attn"], 3);
    // spectrum: JSON with a matrices array, and an SVG heatmap
    let svg = tmp.path().join("ranks.svg");
    let json = ok(&kiln(&[
        "lora",
        "spectrum",
        "--base",
        s(&f.join("models/gpt2")),
        "--finetuned",
        s(&f.join("finetuned/gpt2_ft")),
        "--json",
        "--plot",
        s(&svg),
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let m = v["matrices"].as_array().unwrap();
    assert_eq!(
        m.len(),
        6,
        "c_attn, c_fc and c_proj of the MLP in 2 layers changed"
    );
    for row in m {
        for key in [
            "name",
            "shape",
            "delta",
            "base",
            "random",
            "relative_change",
            "intruders",
        ] {
            assert!(row.get(key).is_some(), "{key}");
        }
        if row["name"].as_str().unwrap().ends_with("c_attn") {
            assert!(row["delta"]["rank_at_threshold"].as_u64().unwrap() <= 3);
        }
    }
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let table = ok(&kiln(&[
        "lora",
        "spectrum",
        "--base",
        s(&f.join("models/gpt2")),
        "--finetuned",
        s(&f.join("finetuned/gpt2_ft")),
    ]));
    assert!(
        table.contains("rank@0.9") && table.contains("transformer.h.1.mlp.c_fc"),
        "{table}"
    );
    // bad inputs
    let e = fails(&kiln(&[
        "lora",
        "spectrum",
        "--base",
        s(&f.join("models/gpt2")),
        "--finetuned",
        s(&f.join("models/bert")),
    ]));
    assert!(e.contains("not in the fine-tuned checkpoint"), "{e}");
    let e = fails(&kiln(&[
        "lora",
        "spectrum",
        "--base",
        s(&f.join("models/gpt2")),
        "--finetuned",
        s(&f.join("finetuned/gpt2_ft")),
        "--threshold",
        "1.5",
    ]));
    assert!(e.contains("threshold"), "{e}");
    let e = fails(&kiln(&[
        "lora",
        "extract",
        "--base",
        s(&f.join("models/gpt2")),
        "--finetuned",
        s(&f.join("models/gpt2")),
        s(&tmp.path().join("same")),
    ]));
    assert!(e.contains("nothing to extract"), "{e}");
}

#[test]
fn lora_combine_writes_an_adapter_run_logits_can_use() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let out = tmp.path().join("combined");
    let stdout = ok(&kiln(&[
        "lora",
        "combine",
        "--adapter",
        s(&f.join("adapters/bert_plain")),
        "--adapter",
        s(&f.join("adapters/bert_second")),
        "--weights",
        "0.7,0.3",
        "--combination",
        "cat",
        s(&out),
    ]));
    assert!(stdout.contains("r = 10"), "{stdout}");
    // the combined adapter gives PEFT's `cat` logits
    let reference = f.join("reference/cat_plain_second.safetensors");
    let logits = tmp.path().join("l.safetensors");
    ok(&kiln(&[
        "run",
        "logits",
        "--model",
        s(&f.join("models/bert")),
        "--adapter",
        s(&out),
        "--input-ids",
        &ids(&reference),
        "--output",
        s(&logits),
    ]));
    assert_close(
        &f32s(&logits, "logits"),
        &f32s(&reference, "logits"),
        "combined cat",
    );
    let e = fails(&kiln(&[
        "lora",
        "combine",
        "--adapter",
        s(&f.join("adapters/bert_plain")),
        "--adapter",
        s(&f.join("adapters/bert_second")),
        "--weights",
        "0.7,-0.3",
        "--combination",
        "ties",
        s(&tmp.path().join("t")),
    ]));
    assert!(e.contains("needs a density"), "{e}");
    let e = fails(&kiln(&[
        "lora",
        "combine",
        "--adapter",
        s(&f.join("adapters/bert_plain")),
        "--weights",
        "1",
        "--combination",
        "mean",
        s(&tmp.path().join("t")),
    ]));
    assert!(e.contains("unknown combination"), "{e}");
}

#[test]
fn lora_reduce_intruders_writes_the_mitigated_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let out = tmp.path().join("mitigated");
    let stdout = ok(&kiln(&[
        "lora",
        "reduce-intruders",
        "--base",
        s(&f.join("models/bert")),
        "--adapter",
        s(&f.join("adapters/bert_intruder")),
        s(&out),
    ]));
    assert!(
        stdout.contains("1 intruder dimension(s) in 1 module(s)"),
        "{stdout}"
    );
    let a = kiln_lora::Adapter::load(&out).unwrap();
    let want = f32s(
        &f.join("reference/intruders_mitigated.safetensors"),
        "bert.encoder.layer.0.attention.self.query",
    );
    let got = a.modules["bert.encoder.layer.0.attention.self.query"].delta(1.0);
    assert!(got.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-5));
    let e = fails(&kiln(&[
        "lora",
        "reduce-intruders",
        "--base",
        s(&f.join("models/bert")),
        "--adapter",
        s(&f.join("adapters/bert_intruder")),
        "--lambda",
        "2",
        s(&tmp.path().join("x")),
    ]));
    assert!(e.contains("lambda"), "{e}");
}

/// Review finding: `run logits --adapter` merges into a scratch copy under the system temp
/// directory; Ctrl-C left that copy behind. Interrupted in the middle of the merge, the process
/// now removes it before it exits.
#[cfg(unix)]
#[test]
fn an_interrupted_run_with_an_adapter_leaves_no_scratch_copy() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let f = fixtures();
    let scratch = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for signal in ["INT", "TERM"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "run",
                "logits",
                "--model",
                s(&f.join("models/gpt2")),
                "--adapter",
                s(&f.join("adapters/gpt2_plain")),
                "--input-ids",
                "1,2,3",
                "--output",
                s(&out.path().join("logits.safetensors")),
            ])
            .env("TMPDIR", scratch.path())
            .env(kiln_checkpoint::TEST_PAUSE_VAR, "atomic-staged")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let paused = stderr
            .lines()
            .any(|l| l.unwrap().contains("paused at atomic-staged"));
        assert!(paused, "the merge into the scratch copy pauses");
        assert_eq!(
            std::fs::read_dir(scratch.path()).unwrap().count(),
            1,
            "the scratch copy exists while merging"
        );
        let killed = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        assert_eq!(child.wait().unwrap().code(), Some(130), "{signal}");
        let left: Vec<_> = std::fs::read_dir(scratch.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{signal}: left behind {left:?}");
        assert!(!out.path().join("logits.safetensors").exists());
    }
}
