//! Invariants of MLM collation and of the epoch order, for random inputs.

use kiln_data::mlm::{IGNORE_INDEX, MlmCollator};
use kiln_data::packing::permutation;
use proptest::prelude::*;

const VOCAB: u32 = 50;
const PAD: u32 = 0;
const MASK: u32 = 4;
/// `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`.
const SPECIAL: [u32; 5] = [0, 1, 2, 3, 4];

fn sequences() -> impl Strategy<Value = Vec<Vec<u32>>> {
    prop::collection::vec(prop::collection::vec(0..VOCAB, 0..40), 1..6)
}

/// Rates on a grid of 1/1000 (proptest's float ranges are avoided on purpose, see the root
/// `Cargo.toml`).
fn rate() -> impl Strategy<Value = f64> {
    (0u32..1000).prop_map(|k| f64::from(k) / 1000.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn mlm_labels_padding_and_replacements_follow_bert(seqs in sequences(), rate in rate(), seed in any::<u64>()) {
        let c = MlmCollator::new(PAD, MASK, VOCAB, SPECIAL.to_vec()).unwrap();
        let b = c.collate(&seqs, rate, seed).unwrap();
        prop_assert_eq!(b.batch, seqs.len());
        prop_assert_eq!(b.seq_len, seqs.iter().map(Vec::len).max().unwrap());
        for (r, seq) in seqs.iter().enumerate() {
            for col in 0..b.seq_len {
                let k = r * b.seq_len + col;
                let Some(&id) = seq.get(col) else {
                    // Padding: pad id, no attention, no label.
                    prop_assert_eq!((b.input_ids[k], b.attention_mask[k], b.labels[k]), (i64::from(PAD), 0, IGNORE_INDEX));
                    continue;
                };
                prop_assert_eq!(b.attention_mask[k], 1);
                if b.labels[k] == IGNORE_INDEX {
                    // Not selected: the input is the original token.
                    prop_assert_eq!(b.input_ids[k], i64::from(id));
                } else {
                    // Selected: the label is the original, never a special or padding token;
                    // the input is [MASK], a vocabulary token or the original.
                    prop_assert_eq!(b.labels[k], i64::from(id));
                    prop_assert!(!SPECIAL.contains(&id), "special token {id} selected");
                    prop_assert!((0..i64::from(VOCAB)).contains(&b.input_ids[k]));
                }
            }
        }
        prop_assert_eq!(b.num_tokens(), seqs.iter().map(Vec::len).sum::<usize>());
        // Same seed, same masks.
        prop_assert_eq!(&c.collate(&seqs, rate, seed).unwrap(), &b);
        if rate == 0.0 {
            prop_assert_eq!(b.num_masked(), 0);
        }
    }

    #[test]
    fn epoch_orders_are_permutations(n in 0usize..2000, seed in any::<u64>(), epoch in 0u64..1000) {
        let p = permutation(n, seed, epoch);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        prop_assert!(sorted.iter().enumerate().all(|(i, &v)| v as usize == i));
        prop_assert_eq!(p, permutation(n, seed, epoch));
    }
}

/// A shard directory with arbitrary `index.json` counts and arbitrary file sizes and bytes.
fn crafted_shard(
    dir: &std::path::Path,
    (num_documents, num_tokens, wide): (u64, u64, bool),
    offsets: &[u8],
    tokens: &[u8],
) {
    let index = serde_json::json!({
        "format": "kiln-token-shard", "version": 1, "dtype": if wide { "u32" } else { "u16" },
        "num_documents": num_documents, "num_tokens": num_tokens, "vocab_size": 100,
        "special_tokens": false,
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("offsets.bin"), offsets).unwrap();
    std::fs::write(dir.join("tokens.bin"), tokens).unwrap();
}

fn counts() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..20, any::<u64>(), Just(u64::MAX), Just(u64::MAX / 8)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Review finding: `(num_documents + 1) * 8` overflowed for a crafted index (a panic in debug
    /// builds, a wrap and an index panic in release). Any index and any bytes give a shard whose
    /// every document reads, or an error — never a panic.
    #[test]
    fn crafted_shard_indexes_never_panic(
        counts in (counts(), counts(), any::<bool>()),
        offsets in prop::collection::vec(any::<u8>(), 0..80),
        tokens in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        crafted_shard(dir.path(), counts, &offsets, &tokens);
        if let Ok(shard) = kiln_data::shards::TokenShard::open(dir.path()) {
            for i in 0..shard.num_documents() {
                let _ = shard.document(i);
            }
        }
    }
}

#[test]
fn an_index_claiming_u64_max_documents_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    crafted_shard(dir.path(), (u64::MAX, 0, false), &[0; 8], &[]);
    let err = kiln_data::shards::TokenShard::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("index is damaged"), "{err}");
}
