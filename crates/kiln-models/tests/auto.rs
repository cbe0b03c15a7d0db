//! `AutoModel`: the head comes from the config (or the weights), every id is checked before it
//! reaches an embedding, and the logits equal the head-specific model's.

use std::path::{Path, PathBuf};

use kiln_checkpoint::Checkpoint;
use kiln_models::auto::{AutoModel, TokenBatch};
use kiln_models::burn::prelude::*;
use kiln_models::{Error, LoadOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(dir: &Path) -> kiln_models::Result<AutoModel> {
    AutoModel::load(dir, &Device::flex(), LoadOptions::default())
}

/// The reference's `name` as rows without padding.
fn rows(name: &str, tensor: &str) -> Vec<Vec<i64>> {
    let r = Checkpoint::open(fixtures().join(format!("reference/{name}.safetensors"))).unwrap();
    let read = |t: &str| -> (Vec<i64>, Vec<usize>) {
        let v = r.tensor(t).unwrap();
        (
            v.data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            v.shape().to_vec(),
        )
    };
    let (ids, shape) = read(tensor);
    let (mask, _) = read("attention_mask");
    ids.chunks(shape[1])
        .zip(mask.chunks(shape[1]))
        .map(|(row, m)| {
            row.iter()
                .zip(m)
                .filter(|(_, k)| **k == 1)
                .map(|(t, _)| *t)
                .collect()
        })
        .collect()
}

/// Copies a fixture directory and edits its config.json.
fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures().join("models").join(name)).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    dir
}

#[test]
fn the_head_comes_from_architectures_or_the_weights() {
    for (name, want) in [
        ("gpt2_tied", "GPT2LMHeadModel"),
        ("gpt2_seqcls", "GPT2ForSequenceClassification"),
        // Saved without `architectures`: the `classifier` weights say multiple choice.
        ("gpt2_mc", "GPT2ForMultipleChoice"),
        ("bert_mlm", "BertForMaskedLM"),
        ("bert_base", "BertModel"),
        ("bert_seqcls", "BertForSequenceClassification"),
        ("bert_tokcls", "BertForTokenClassification"),
        ("mosaic_bert", "BertForMaskedLM"),
    ] {
        let m = load(&fixtures().join("models").join(name)).unwrap();
        assert_eq!(m.architecture(), want, "{name}");
    }
    // Without `architectures`, the head weights decide.
    for (name, want) in [
        ("gpt2_seqcls", "GPT2ForSequenceClassification"),
        ("bert_seqcls", "BertForSequenceClassification"),
        ("bert_tokcls", "BertForTokenClassification"),
        ("bert_mlm", "BertForMaskedLM"),
    ] {
        let dir = edited(name, |c| {
            c.as_object_mut().unwrap().remove("architectures");
        });
        assert_eq!(load(dir.path()).unwrap().architecture(), want, "{name}");
    }
    let dir = edited("gpt2_tied", |c| {
        c["architectures"] = serde_json::json!(["GPT2DoubleHeadsModel"]);
    });
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("GPT2DoubleHeadsModel"), "{err}");
}

/// Review finding: `kiln run logits` on a classification or multiple-choice GPT-2 dropped the head
/// and printed LM logits. The classification head is now run; models without token logits are
/// refused with their name.
#[test]
fn logits_follow_the_head_or_are_refused_by_name() {
    let seqcls = load(&fixtures().join("models/gpt2_seqcls")).unwrap();
    let out = seqcls
        .logits(&TokenBatch::new(rows("gpt2_seqcls", "input_ids")))
        .unwrap();
    assert_eq!(out.shape, [2, 3]);
    let want = Checkpoint::open(fixtures().join("reference/gpt2_seqcls.safetensors"))
        .unwrap()
        .tensor("logits")
        .unwrap()
        .to_f32()
        .unwrap();
    let worst = out
        .values
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{worst}");
    for (name, want) in [
        ("gpt2_mc", "GPT2ForMultipleChoice"),
        ("bert_base", "BertModel has no output head"),
    ] {
        let m = load(&fixtures().join("models").join(name)).unwrap();
        let err = m.logits(&TokenBatch::new(vec![vec![1, 2]])).unwrap_err();
        assert!(err.to_string().contains(want), "{name}: {err}");
    }
}

/// Review finding: ragged rows were padded with GPT-2's default eos 50256, outside a small
/// vocabulary, and burn panicked. The pad id falls back to 0 (padding is masked) and every user
/// id is checked with a message naming it.
#[test]
fn every_id_is_checked_and_the_pad_id_is_always_valid() {
    let dir = edited("gpt2_tied", |c| {
        c["eos_token_id"] = 50256.into();
        c["pad_token_id"] = serde_json::Value::Null;
    });
    let m = load(dir.path()).unwrap();
    let ragged = TokenBatch::new(vec![vec![5, 6, 7], vec![8]]);
    let out = m.logits(&ragged).unwrap();
    assert_eq!(
        (out.pad_id, out.ragged, out.shape.clone()),
        (0, true, vec![2, 3, 61])
    );
    // The padded row's real token equals the row run alone.
    let alone = m.logits(&TokenBatch::new(vec![vec![8]])).unwrap();
    let worst = alone.values[..61]
        .iter()
        .zip(&out.values[3 * 61..4 * 61])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{worst}");

    let err = |m: &AutoModel, b: TokenBatch| match m.logits(&b) {
        Err(e @ Error::Input { .. }) => e.to_string(),
        other => panic!("expected an input error, got {other:?}"),
    };
    assert!(
        err(&m, TokenBatch::new(vec![vec![1, 61]]))
            .contains("token id 61 (row 0, position 1) is outside 0..61 (vocab_size 61)")
    );
    assert!(err(&m, TokenBatch::new(vec![vec![-1]])).contains("token id -1"));
    assert!(
        err(&m, TokenBatch::new(vec![vec![1; 33]]))
            .contains("33 tokens exceed the model's 32 positions")
    );
    let typed = |ids: Vec<Vec<i64>>, tt: Vec<Vec<i64>>| TokenBatch {
        input_ids: ids,
        token_type_ids: Some(tt),
    };
    assert!(err(&m, typed(vec![vec![1]], vec![vec![70]])).contains("token type id 70"));
    assert!(err(&m, typed(vec![vec![1, 2]], vec![vec![0]])).contains("same rows and lengths"));

    // BERT: token types are checked against type_vocab_size, not the vocabulary.
    let bert = load(&fixtures().join("models/bert_mlm")).unwrap();
    let e = err(&bert, typed(vec![vec![1, 2]], vec![vec![0, 2]]));
    assert!(
        e.contains("token type id 2") && e.contains("type_vocab_size 2"),
        "{e}"
    );
    assert!(
        bert.logits(&typed(vec![vec![1, 2]], vec![vec![0, 1]]))
            .is_ok()
    );
}
