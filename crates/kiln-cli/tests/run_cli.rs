//! `kiln run logits|generate` end to end against the transformers references of kiln-models.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_checkpoint::{Checkpoint, Dtype};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-models/tests/fixtures")
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

fn i64s(c: &Checkpoint, name: &str) -> (Vec<i64>, Vec<usize>) {
    let t = c.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I64);
    (
        t.data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        t.shape().to_vec(),
    )
}

/// `1,2,3;4,5` from a reference's `input_ids` and `attention_mask`.
fn rows(r: &Checkpoint) -> String {
    unpadded_rows(r, "input_ids")
}

/// Tensor `name` of a reference as `1,2,3;4,5`, rows without their padding.
fn unpadded_rows(r: &Checkpoint, name: &str) -> String {
    let (ids, shape) = i64s(r, name);
    let (mask, _) = i64s(r, "attention_mask");
    ids.chunks(shape[1])
        .zip(mask.chunks(shape[1]))
        .map(|(row, m)| {
            row.iter()
                .zip(m)
                .filter(|(_, m)| **m == 1)
                .map(|(t, _)| t.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[test]
fn logits_contract_for_gpt2_and_bert() {
    let dir = tempfile::tempdir().unwrap();
    for (model, extra) in [("gpt2_tied", None), ("bert_mlm", Some("token_type_ids"))] {
        let r =
            Checkpoint::open(fixtures().join(format!("reference/{model}.safetensors"))).unwrap();
        let out = dir.path().join(format!("{model}.safetensors"));
        let ids = rows(&r);
        let mut args: Vec<String> = [
            "run",
            "logits",
            "--model",
            s(&fixtures().join("models").join(model)),
            "--input-ids",
            &ids,
            "--output",
            s(&out),
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(name) = extra {
            let (tt, shape) = i64s(&r, name);
            let (mask, _) = i64s(&r, "attention_mask");
            let tt_rows = tt
                .chunks(shape[1])
                .zip(mask.chunks(shape[1]))
                .map(|(row, m)| {
                    row.iter()
                        .zip(m)
                        .filter(|(_, m)| **m == 1)
                        .map(|(t, _)| t.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect::<Vec<_>>()
                .join(";");
            args.extend(["--token-type-ids".to_owned(), tt_rows]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = kiln(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = Checkpoint::open(&out).unwrap();
        let logits = got.tensor("logits").unwrap();
        let want = r.tensor("logits").unwrap();
        assert_eq!(logits.dtype(), Dtype::F32);
        assert_eq!(logits.shape(), want.shape(), "[batch, seq, vocab]");
        // Rows differ in length: the mask is written, and matches the reference's.
        assert_eq!(i64s(&got, "attention_mask").0, i64s(&r, "attention_mask").0);
        let (a, b) = (logits.to_f32().unwrap(), want.to_f32().unwrap());
        let (mask, _) = i64s(&r, "attention_mask");
        let v = want.shape()[2];
        let worst = a
            .chunks(v)
            .zip(b.chunks(v))
            .zip(&mask)
            .filter(|(_, m)| **m == 1)
            .flat_map(|((x, y), _)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{model}: {worst}");
    }
    // Equal rows: no mask.
    let out = dir.path().join("plain.safetensors");
    assert!(
        kiln(&[
            "run",
            "logits",
            "--model",
            s(&fixtures().join("models/gpt2_gelu")),
            "--input-ids",
            "1,2,3;4,5,6",
            "--output",
            s(&out)
        ])
        .status
        .success()
    );
    let got = Checkpoint::open(&out).unwrap();
    assert_eq!(got.tensor("logits").unwrap().shape(), &[2, 3, 61]);
    assert!(!got.contains("attention_mask"));
}

#[test]
fn logits_of_bert_classification_heads() {
    let dir = tempfile::tempdir().unwrap();
    // The head follows `architectures`: [batch, labels] per sequence, [batch, seq, labels] per token.
    for model in ["bert_seqcls", "bert_regression", "bert_tokcls"] {
        let r =
            Checkpoint::open(fixtures().join(format!("reference/{model}.safetensors"))).unwrap();
        let out = dir.path().join(format!("{model}.safetensors"));
        let (ids, tt) = (rows(&r), unpadded_rows(&r, "token_type_ids"));
        let o = kiln(&[
            "run",
            "logits",
            "--model",
            s(&fixtures().join("models").join(model)),
            "--input-ids",
            &ids,
            "--token-type-ids",
            &tt,
            "--output",
            s(&out),
        ]);
        assert!(
            o.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = Checkpoint::open(&out).unwrap();
        let (logits, want) = (got.tensor("logits").unwrap(), r.tensor("logits").unwrap());
        assert_eq!(logits.shape(), want.shape(), "{model}");
        let (a, b) = (logits.to_f32().unwrap(), want.to_f32().unwrap());
        let per_token = want.shape().len() == 3;
        let (mask, _) = i64s(&r, "attention_mask");
        let width = *want.shape().last().unwrap();
        let worst = a
            .chunks(width)
            .zip(b.chunks(width))
            .enumerate()
            .filter(|(i, _)| !per_token || mask[*i] == 1)
            .flat_map(|(_, (x, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{model}: {worst}");
    }
    // A bare encoder has no logits to give, and says so.
    let o = kiln(&[
        "run",
        "logits",
        "--model",
        s(&fixtures().join("models/bert_base")),
        "--input-ids",
        "1,2,3",
        "--output",
        s(&dir.path().join("base.safetensors")),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("BertModel has no output head"), "{err}");
}

#[test]
fn generate_matches_transformers_greedy() {
    let r = Checkpoint::open(fixtures().join("reference/gpt2_tied.safetensors")).unwrap();
    let prompt = i64s(&r, "greedy_prompt")
        .0
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let want = i64s(&r, "greedy").0;
    let model = fixtures().join("models/gpt2_tied");
    for cache in [None, Some("--no-cache")] {
        let mut args = vec![
            "run",
            "generate",
            "--model",
            s(&model),
            "--input-ids",
            &prompt,
            "--max-new-tokens",
            "6",
            "--json",
        ];
        args.extend(cache);
        let o = kiln(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let got: Vec<i64> = v["new_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(got, want);
        assert!(
            v["text"].as_str().unwrap().starts_with('t'),
            "decoded with the tokenizer"
        );
    }
    // Text prompts go through tokenizer.json.
    let o = kiln(&[
        "run",
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "t3 t4 t5",
        "--max-new-tokens",
        "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn run_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let gpt2 = fixtures().join("models/gpt2_tied");
    let err = |args: &[&str]| {
        let o = kiln(args);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    assert!(
        err(&[
            "run",
            "logits",
            "--model",
            s(&gpt2),
            "--input-ids",
            "1,x",
            "--output",
            s(&out)
        ])
        .contains("`x` is not an integer")
    );
    assert!(
        err(&[
            "run",
            "logits",
            "--model",
            s(&gpt2),
            "--input-ids",
            "1,999",
            "--output",
            s(&out)
        ])
        .contains("token id 999 (row 0, position 1) is outside 0..61 (vocab_size 61)")
    );
    assert!(
        err(&[
            "run",
            "logits",
            "--model",
            s(&gpt2),
            "--input-ids",
            "1",
            "--output",
            s(&out),
            "--device",
            "tpu"
        ])
        .contains("unknown device")
    );
    assert!(
        err(&[
            "run",
            "generate",
            "--model",
            s(&fixtures().join("models/gpt2_scaled")),
            "--prompt",
            "hi"
        ])
        .contains("no tokenizer.json")
    );
    assert!(
        err(&[
            "run",
            "generate",
            "--model",
            s(&fixtures().join("models/bert_mlm")),
            "--input-ids",
            "1"
        ])
        .contains("needs a GPT-2 language model")
    );
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(
        gpt2.join("model.safetensors"),
        empty.path().join("model.safetensors"),
    )
    .unwrap();
    assert!(
        err(&[
            "run",
            "logits",
            "--model",
            s(empty.path()),
            "--input-ids",
            "1",
            "--output",
            s(&out)
        ])
        .contains("config.json")
    );
    assert!(!out.exists());
}

/// Review findings: `kiln run logits --output MODEL/model.safetensors` overwrote the weights with
/// logits (exit 0); a sequence-classification GPT-2 printed LM logits; a multiple-choice one too.
#[test]
fn logits_never_overwrite_the_model_and_follow_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("gpt2");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(fixtures().join("models/gpt2_tied")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    for out in [
        model.join("model.safetensors"),
        model.join("./logits.safetensors"),
        model.clone(),
        dir.path().to_owned(),
    ] {
        let o = kiln(&[
            "run",
            "logits",
            "--model",
            s(&model),
            "--input-ids",
            "1,2",
            "--output",
            s(&out),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{out:?}: {err}");
        assert!(err.contains("the model"), "{err}");
    }
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        weights
    );

    let out = dir.path().join("seqcls.safetensors");
    let o = kiln(&[
        "run",
        "logits",
        "--model",
        s(&fixtures().join("models/gpt2_seqcls")),
        "--input-ids",
        "1,2,3;4,5",
        "--output",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = Checkpoint::open(&out).unwrap();
    assert_eq!(
        got.tensor("logits").unwrap().shape(),
        &[2, 3],
        "one row of 3 labels per sequence"
    );

    let o = kiln(&[
        "run",
        "logits",
        "--model",
        s(&fixtures().join("models/gpt2_mc")),
        "--input-ids",
        "1,2",
        "--output",
        s(&dir.path().join("mc.safetensors")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("GPT2ForMultipleChoice"), "{err}");
}
