//! Masked-language-model collation with BERT's semantics, as Hugging Face's
//! `DataCollatorForLanguageModeling` (`torch_mask_tokens`) implements them:
//!
//! 1. every token is selected with probability `rate`, except special and padding tokens;
//! 2. labels are the original ids at selected positions and −100 elsewhere;
//! 3. of the selected tokens, 80% become `[MASK]`, half of the rest (10%) a token drawn
//!    uniformly from the whole vocabulary, and the remaining 10% stay unchanged.
//!
//! The rate is an argument of every call, so a masking schedule can change it each batch
//! (Ankner et al.); evaluation uses a fixed rate and a fixed seed, so it sees the same masks
//! every time.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::SpecialIds;

/// Label of positions without a loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// A padded MLM batch, row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlmBatch {
    /// Rows.
    pub batch: usize,
    /// Columns (the longest sequence).
    pub seq_len: usize,
    /// Inputs after masking.
    pub input_ids: Vec<i64>,
    /// Original ids at selected positions, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
}

impl MlmBatch {
    /// Positions with a label.
    pub fn num_masked(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Non-padding tokens.
    pub fn num_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m == 1).count()
    }
}

/// The collator.
///
/// ```
/// use kiln_data::mlm::{MlmCollator, IGNORE_INDEX};
/// let c = MlmCollator::new(0, 4, 100, vec![0, 1, 2, 3, 4])?;
/// let seqs = vec![vec![2, 10, 11, 12, 13, 3], vec![2, 20, 21, 3]];
/// let b = c.collate(&seqs, 0.3, 7)?;
/// assert_eq!((b.batch, b.seq_len), (2, 6));
/// assert_eq!(b.attention_mask, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
/// // [CLS], [SEP] and padding are never selected.
/// for i in [0, 5, 6, 9, 10, 11] { assert_eq!(b.labels[i], IGNORE_INDEX); }
/// # Ok::<(), kiln_data::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MlmCollator {
    pad_id: u32,
    mask_id: u32,
    vocab_size: u32,
    special: Vec<u32>,
    /// Fraction of selected tokens replaced by `[MASK]` (0.8).
    pub mask_fraction: f64,
    /// Fraction of selected tokens replaced by a random token (0.1).
    pub random_fraction: f64,
}

impl MlmCollator {
    /// A collator for a vocabulary of `vocab_size` with these special ids (never selected).
    ///
    /// # Errors
    /// [`Error::Config`] if `pad_id` or `mask_id` are outside the vocabulary.
    pub fn new(pad_id: u32, mask_id: u32, vocab_size: u32, special: Vec<u32>) -> Result<Self> {
        if pad_id >= vocab_size || mask_id >= vocab_size {
            return Err(Error::Config {
                message: format!(
                    "pad id {pad_id} and mask id {mask_id} must be below the vocabulary size {vocab_size}"
                ),
            });
        }
        let mut special = special;
        special.push(pad_id);
        special.sort_unstable();
        special.dedup();
        Ok(Self {
            pad_id,
            mask_id,
            vocab_size,
            special,
            mask_fraction: 0.8,
            random_fraction: 0.1,
        })
    }

    /// A collator from a tokenizer's special ids (needs `[PAD]` and `[MASK]`).
    ///
    /// # Errors
    /// [`Error::Config`] if the tokenizer has no `[PAD]` or `[MASK]`.
    pub fn from_special_ids(ids: &SpecialIds, vocab_size: usize) -> Result<Self> {
        let (Some(pad), Some(mask)) = (ids.pad, ids.mask) else {
            return Err(Error::Config { message: "MLM needs a tokenizer with [PAD] and [MASK] tokens (train one with TokenizerKind::WordPiece)".into() });
        };
        Self::new(pad, mask, vocab_size as u32, ids.all.clone())
    }

    /// Pads `sequences` on the right and masks them at `rate` with randomness from `seed`.
    ///
    /// # Errors
    /// [`Error::Config`] for a rate outside [0, 1), no sequences, or a token id outside the
    /// vocabulary.
    pub fn collate(&self, sequences: &[Vec<u32>], rate: f64, seed: u64) -> Result<MlmBatch> {
        if !(0.0..1.0).contains(&rate) {
            return Err(Error::Config {
                message: format!("masking rate {rate} is outside [0, 1)"),
            });
        }
        if sequences.is_empty() {
            return Err(Error::Config {
                message: "no sequences to collate".into(),
            });
        }
        let batch = sequences.len();
        let seq_len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut u = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut input_ids = vec![i64::from(self.pad_id); batch * seq_len];
        let mut labels = vec![IGNORE_INDEX; batch * seq_len];
        let mut attention_mask = vec![0i64; batch * seq_len];
        for (r, seq) in sequences.iter().enumerate() {
            for (c, &id) in seq.iter().enumerate() {
                if id >= self.vocab_size {
                    return Err(Error::Config {
                        message: format!(
                            "token id {id} in sequence {r} is outside the vocabulary ({})",
                            self.vocab_size
                        ),
                    });
                }
                let k = r * seq_len + c;
                input_ids[k] = i64::from(id);
                attention_mask[k] = 1;
                // One draw per position for selection, then one for the replacement kind, as
                // HF draws full Bernoulli matrices (the streams differ; the distribution does not).
                let selected = u() < rate;
                if !selected || self.special.binary_search(&id).is_ok() {
                    continue;
                }
                labels[k] = i64::from(id);
                let kind = u();
                if kind < self.mask_fraction {
                    input_ids[k] = i64::from(self.mask_id);
                } else if kind < self.mask_fraction + self.random_fraction {
                    input_ids[k] = (u() * f64::from(self.vocab_size)) as i64;
                }
            }
        }
        Ok(MlmBatch {
            batch,
            seq_len,
            input_ids,
            labels,
            attention_mask,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_and_replacement_follow_bert() {
        let c = MlmCollator::new(0, 4, 1000, vec![0, 1, 2, 3, 4]).unwrap();
        let seqs: Vec<Vec<u32>> = (0..200)
            .map(|r| {
                std::iter::once(2)
                    .chain((0..126).map(|i| 5 + (r * 131 + i * 7) % 995))
                    .chain(std::iter::once(3))
                    .collect()
            })
            .collect();
        for rate in [0.15, 0.3] {
            let b = c.collate(&seqs, rate, 11).unwrap();
            let content = 200 * 126;
            let selected = b.num_masked();
            let expect = rate * content as f64;
            let sd = (content as f64 * rate * (1.0 - rate)).sqrt();
            assert!(
                (selected as f64 - expect).abs() < 4.0 * sd,
                "rate {rate}: {selected} vs {expect}"
            );
            let (mut masked, mut kept, mut random) = (0, 0, 0);
            for (k, &l) in b.labels.iter().enumerate() {
                if l == IGNORE_INDEX {
                    continue;
                }
                match b.input_ids[k] {
                    4 => masked += 1,
                    x if x == l => kept += 1,
                    _ => random += 1,
                }
            }
            let f = |n: usize| n as f64 / selected as f64;
            assert!(
                (f(masked) - 0.8).abs() < 0.02
                    && (f(kept) - 0.1).abs() < 0.02
                    && (f(random) - 0.1).abs() < 0.02,
                "{masked} {kept} {random}"
            );
            // Special tokens keep their ids and never get labels.
            for r in 0..200 {
                assert_eq!((b.input_ids[r * 128], b.input_ids[r * 128 + 127]), (2, 3));
            }
        }
    }

    #[test]
    fn same_seed_same_masks_and_bad_input_errors() {
        let c = MlmCollator::new(0, 4, 50, vec![1, 2, 3]).unwrap();
        let seqs = vec![vec![2, 10, 11, 12, 3]; 4];
        assert_eq!(
            c.collate(&seqs, 0.5, 1).unwrap(),
            c.collate(&seqs, 0.5, 1).unwrap()
        );
        assert_ne!(
            c.collate(&seqs, 0.5, 1).unwrap(),
            c.collate(&seqs, 0.5, 2).unwrap()
        );
        assert!(
            c.collate(&[vec![2, 60]], 0.15, 0)
                .unwrap_err()
                .to_string()
                .contains("outside the vocabulary")
        );
        assert!(c.collate(&seqs, 1.5, 0).is_err());
        assert!(c.collate(&[], 0.15, 0).is_err());
        assert!(MlmCollator::new(0, 99, 50, vec![]).is_err());
        assert_eq!(c.collate(&seqs, 0.0, 0).unwrap().num_masked(), 0);
    }
}
