//! MedMCQA in the Hugging Face hub's Parquet layout reads into the same examples as the same rows
//! in JSONL, and a bad Parquet row is named by its number (fixtures from
//! `tests/fixtures/make_mc_parquet_fixture.py`, written by pyarrow with Snappy).

use std::path::PathBuf;

use kiln_data::mc::{McFormat, ReadOptions, read_mc};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn parquet_equals_jsonl() {
    let o = ReadOptions::default();
    let p = read_mc(&fixture("medmcqa_sample.parquet"), McFormat::MedMcqa, &o).unwrap();
    let j = read_mc(&fixture("medmcqa_sample.jsonl"), McFormat::MedMcqa, &o).unwrap();
    assert_eq!(p.len(), 6);
    assert_eq!(p, j);
    assert_eq!(p[3].choices[0], "NF-1");
    assert_eq!(p[3].question, "Café-au-lait spots are seen in");
    assert_eq!(
        (p[2].answer, p[2].choice_type.as_deref()),
        (Some(2), Some("multi"))
    );
    assert_eq!(p[5].answer, None, "cop −1: unlabelled");
    let limited = ReadOptions {
        limit: Some(2),
        ..ReadOptions::default()
    };
    assert_eq!(
        read_mc(
            &fixture("medmcqa_sample.parquet"),
            McFormat::MedMcqa,
            &limited
        )
        .unwrap()
        .len(),
        2
    );
}

#[test]
fn bad_parquet_rows_are_named() {
    let e = read_mc(
        &fixture("medmcqa_bad.parquet"),
        McFormat::MedMcqa,
        &ReadOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("row 3") && e.contains("`cop` 7"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("x.parquet");
    std::fs::write(&fake, b"not parquet").unwrap();
    let e = read_mc(&fake, McFormat::MedMcqa, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a Parquet file"), "{e}");
}
