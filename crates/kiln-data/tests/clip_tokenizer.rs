//! The CLIP BPE tokenizer read from `vocab.json` + `merges.txt` gives transformers'
//! `CLIPTokenizer` ids, text by text (fixture: kiln-models'
//! `tests/fixtures/make_clip_bpe_fixture.py`).

use std::path::PathBuf;

use kiln_data::tokenizer::Tokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kiln-models/tests/fixtures")
}

#[test]
fn clip_bpe_from_vocab_and_merges_equals_transformers() {
    let dir = fixtures().join("models/clip_bpe_tokenizer");
    assert!(!dir.join("tokenizer.json").exists());
    // a directory without tokenizer.json is read as CLIP's files
    let tok = Tokenizer::from_file(&dir).unwrap();
    let text = std::fs::read_to_string(fixtures().join("reference/clip_bpe.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        tok.vocab_size() as u64,
        reference["vocab_size"].as_u64().unwrap()
    );
    let cases = reference["texts"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
    }
    // the merges are used: a word of the captions is one token, not its letters
    let square = tok.encode("square", false).unwrap();
    assert_eq!(square, vec![tok.token_id("square</w>").unwrap()]);
}

#[test]
fn clip_bpe_files_that_do_not_fit_are_refused_naming_the_file() {
    let src = fixtures().join("models/clip_bpe_tokenizer");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    // a merge of a token the vocabulary lacks
    let merges = tmp.path().join("merges.txt");
    let mut text = std::fs::read_to_string(&merges).unwrap();
    text.push_str("q z\n");
    std::fs::write(&merges, text).unwrap();
    let err = Tokenizer::from_clip_dir(tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("merges.txt") && err.contains("`qz`"), "{err}");
    // a pad token the vocabulary lacks
    std::fs::copy(src.join("merges.txt"), &merges).unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"pad_token": "<pad>"}"#,
    )
    .unwrap();
    let err = Tokenizer::from_clip_dir(tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("pad_token") && err.contains("<pad>"), "{err}");
}
