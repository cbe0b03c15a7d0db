//! kiln's MLM collator against the masking statistics of Hugging Face's
//! `DataCollatorForLanguageModeling`, measured by `tests/fixtures/make_mlm_fixture.py`.

use kiln_data::mlm::{IGNORE_INDEX, MlmCollator};
use serde_json::Value;

#[test]
fn masking_statistics_match_transformers() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/hf_mlm_statistics.json")).unwrap();
    let rows: Vec<Vec<u32>> = serde_json::from_value(fixture["rows"].clone()).unwrap();
    let vocab = fixture["vocab_size"].as_u64().unwrap() as u32;
    let special: Vec<u32> = serde_json::from_value(fixture["special_ids"].clone()).unwrap();
    let collator = MlmCollator::new(0, 4, vocab, special).unwrap();
    for (rate_key, hf) in fixture["rates"].as_object().unwrap() {
        let rate: f64 = rate_key.parse().unwrap();
        let batches = hf["batches"].as_u64().unwrap();
        let (
            mut content,
            mut sel_content,
            mut sel_other,
            mut mask,
            mut random,
            mut kept,
            mut random_special,
        ) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for seed in 0..batches {
            let b = collator.collate(&rows, rate, seed).unwrap();
            for (r, row) in rows.iter().enumerate() {
                for c in 0..b.seq_len {
                    let k = r * b.seq_len + c;
                    let orig = row.get(c).copied();
                    let is_content = matches!(orig, Some(id) if id >= 5);
                    let selected = b.labels[k] != IGNORE_INDEX;
                    if selected {
                        assert_eq!(
                            b.labels[k],
                            i64::from(orig.unwrap()),
                            "labels hold the original ids"
                        );
                    }
                    content += u64::from(is_content);
                    if !is_content {
                        sel_other += u64::from(selected);
                        continue;
                    }
                    if !selected {
                        continue;
                    }
                    sel_content += 1;
                    let now = b.input_ids[k];
                    if now == 4 {
                        mask += 1;
                    } else if now == b.labels[k] {
                        kept += 1;
                    } else {
                        random += 1;
                        random_special += u64::from(now < 5);
                    }
                }
            }
        }
        assert_eq!(content, hf["content_tokens"].as_u64().unwrap());
        assert_eq!(
            sel_other, 0,
            "specials and padding are never selected (HF: {}, {})",
            hf["selected_special"], hf["selected_pad"]
        );
        // Within 5 standard errors of the two estimates combined.
        let close = |name: &str, ours: f64, n_ours: u64, theirs: f64, n_theirs: f64| {
            let p = (ours + theirs) / 2.0;
            let se = (p * (1.0 - p) * (1.0 / n_ours as f64 + 1.0 / n_theirs)).sqrt();
            assert!(
                (ours - theirs).abs() < 5.0 * se.max(1e-4),
                "rate {rate}: {name} kiln {ours:.4} vs transformers {theirs:.4} (se {se:.4})"
            );
        };
        let f = |n: u64, d: u64| n as f64 / d as f64;
        let hf_sel = hf["selected"].as_f64().unwrap();
        close(
            "selected",
            f(sel_content, content),
            content,
            hf["selected_content"].as_f64().unwrap(),
            hf["content_tokens"].as_f64().unwrap(),
        );
        close(
            "[MASK]",
            f(mask, sel_content),
            sel_content,
            hf["mask"].as_f64().unwrap(),
            hf_sel,
        );
        close(
            "random",
            f(random, sel_content),
            sel_content,
            hf["random"].as_f64().unwrap(),
            hf_sel,
        );
        close(
            "kept",
            f(kept, sel_content),
            sel_content,
            hf["kept"].as_f64().unwrap(),
            hf_sel,
        );
        close(
            "random specials",
            f(random_special, random),
            random,
            hf["random_special"].as_f64().unwrap(),
            hf_sel * hf["random"].as_f64().unwrap(),
        );
    }
}
