//! Fixed-length training sequences from a shard, in a deterministic shuffled order with a
//! position a checkpoint can save and restore.
//!
//! Two groupings, as llm-foundry's text datasets:
//! - [`Grouping::Concat`]: documents are joined into one stream (each followed by `eos` when
//!   given) and cut into sequences of `seq_len` tokens, each starting with `bos` when given; no
//!   padding, nothing dropped but the final partial sequence.
//! - [`Grouping::Truncate`]: one sequence per document, wrapped in `bos`/`eos` and cut at
//!   `seq_len` (the BERT recipe of Ankner et al.; shorter sequences are padded by the collator).
//!
//! Every epoch visits every sequence once in an order drawn from `(seed, epoch)`, so the order
//! needs no state beyond a [`Position`].

use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shards::TokenShard;

/// How documents become sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grouping {
    /// Join documents and cut the stream into full sequences.
    Concat,
    /// One (truncated) sequence per document.
    Truncate,
}

/// Sequence layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packing {
    /// Tokens per sequence, specials included.
    pub seq_len: usize,
    /// Token at the start of each sequence (`[CLS]` for BERT).
    pub bos: Option<u32>,
    /// Token after each document (`[SEP]` for BERT, `<|endoftext|>` for GPT-2).
    pub eos: Option<u32>,
    /// Concat or truncate.
    pub grouping: Grouping,
}

/// Where a stream is: the epoch, and how many sequences of it have been handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// Completed passes.
    pub epoch: u64,
    /// Sequences handed out in the current pass.
    pub index: u64,
}

/// The sequences of one shard.
#[derive(Debug, Clone)]
pub struct PackedSequences {
    shard: Arc<TokenShard>,
    packing: Packing,
    /// Concat: start of each document in the stream (with eos tokens counted).
    stream_starts: Vec<u64>,
    /// Truncate: the non-empty documents.
    docs: Vec<u32>,
    len: usize,
}

impl PackedSequences {
    /// Lays out `shard` as sequences.
    ///
    /// # Errors
    /// [`Error::Config`] if `seq_len` leaves no room for content, or the shard yields no
    /// sequence at all.
    pub fn new(shard: Arc<TokenShard>, packing: Packing) -> Result<Self> {
        let room = packing.seq_len.saturating_sub(
            usize::from(packing.bos.is_some())
                + usize::from(packing.grouping == Grouping::Truncate && packing.eos.is_some()),
        );
        if room == 0 {
            return Err(Error::Config {
                message: format!(
                    "seq_len {} leaves no room for tokens besides bos/eos",
                    packing.seq_len
                ),
            });
        }
        let eos = u64::from(packing.eos.is_some());
        let (stream_starts, docs, len) = match packing.grouping {
            Grouping::Concat => {
                let starts: Vec<u64> = shard
                    .offsets()
                    .iter()
                    .enumerate()
                    .map(|(i, &o)| o + i as u64 * eos)
                    .collect();
                let total = *starts.last().expect("n + 1 offsets");
                (starts, Vec::new(), (total / room as u64) as usize)
            }
            Grouping::Truncate => {
                let o = shard.offsets();
                let docs: Vec<u32> = (0..shard.num_documents())
                    .filter(|&i| o[i + 1] > o[i])
                    .map(|i| i as u32)
                    .collect();
                let n = docs.len();
                (Vec::new(), docs, n)
            }
        };
        if len == 0 {
            return Err(Error::Config {
                message: format!(
                    "{} has too few tokens ({}) for one sequence of {}",
                    shard.path().display(),
                    shard.num_tokens(),
                    packing.seq_len
                ),
            });
        }
        Ok(Self {
            shard,
            packing,
            stream_starts,
            docs,
            len,
        })
    }

    /// Number of sequences per epoch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (construction refuses empty layouts).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The layout.
    pub fn packing(&self) -> &Packing {
        &self.packing
    }

    /// Sequence `i` (in shard order).
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn get(&self, i: usize) -> Vec<u32> {
        assert!(i < self.len, "sequence {i} of {}", self.len);
        let p = &self.packing;
        let mut out = Vec::with_capacity(p.seq_len);
        out.extend(p.bos);
        match p.grouping {
            Grouping::Truncate => {
                // The i-th non-empty document.
                let offsets = self.shard.offsets();
                let doc = self.docs[i] as usize;
                let room = p.seq_len - out.len() - usize::from(p.eos.is_some());
                let end = offsets[doc + 1].min(offsets[doc] + room as u64);
                out.extend(self.shard.tokens(offsets[doc], end));
                out.extend(p.eos);
            }
            Grouping::Concat => {
                let room = (p.seq_len - out.len()) as u64;
                let (mut at, end) = (i as u64 * room, (i as u64 + 1) * room);
                let offsets = self.shard.offsets();
                let mut doc = self.stream_starts.partition_point(|&s| s <= at) - 1;
                while at < end {
                    let doc_start = self.stream_starts[doc];
                    let doc_tokens = offsets[doc + 1] - offsets[doc];
                    let within = at - doc_start;
                    if within < doc_tokens {
                        let take = (doc_tokens - within).min(end - at);
                        out.extend(
                            self.shard
                                .tokens(offsets[doc] + within, offsets[doc] + within + take),
                        );
                        at += take;
                    } else {
                        // The eos after this document.
                        out.extend(p.eos);
                        at += 1;
                        doc += 1;
                    }
                }
            }
        }
        out
    }
}

impl PackedSequences {
    /// The shard document of every token of sequence `i` ([`get`](Self::get)`(i)` position by
    /// position): a document's `eos` counts with the document it ends, the sequence's `bos`
    /// with the document after it. With [`Grouping::Concat`] a sequence holds the end of one
    /// document and the start of others; this is how per-document statistics (difficulty
    /// scores of packed language-model data) find their document.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn documents(&self, i: usize) -> Vec<u32> {
        assert!(i < self.len, "sequence {i} of {}", self.len);
        let p = &self.packing;
        let mut out = Vec::with_capacity(p.seq_len);
        match p.grouping {
            Grouping::Truncate => {
                let n = self.get(i).len();
                out.resize(n, self.docs[i]);
            }
            Grouping::Concat => {
                let room = (p.seq_len - usize::from(p.bos.is_some())) as u64;
                let (mut at, end) = (i as u64 * room, (i as u64 + 1) * room);
                let offsets = self.shard.offsets();
                let first = self.stream_starts.partition_point(|&s| s <= at) - 1;
                if p.bos.is_some() {
                    out.push(first as u32);
                }
                let mut doc = first;
                while at < end {
                    // the document's tokens and its eos are one run of the stream
                    let run_end = self.stream_starts[doc]
                        + (offsets[doc + 1] - offsets[doc])
                        + u64::from(p.eos.is_some());
                    let take = run_end.min(end) - at;
                    out.extend(std::iter::repeat_n(doc as u32, take as usize));
                    at += take;
                    doc += 1;
                }
            }
        }
        out
    }
}

/// A deterministic, resumable, endless stream of sequences: each epoch a fresh permutation drawn
/// from `(seed, epoch)`.
///
/// ```
/// # use std::sync::Arc;
/// # use kiln_data::{corpus::{self, Domain}, shards::*, tokenizer::*, packing::*};
/// # let docs = corpus::documents(Domain::Prose, 0, 0, 40);
/// # let tok = Tokenizer::train(TokenizerKind::WordPiece, docs.iter().map(String::as_str), 300, 1)?;
/// # let dir = tempfile::tempdir()?;
/// # write_shard(dir.path().join("s"), docs.iter().map(String::as_str), &tok, false, false)?;
/// let shard = Arc::new(TokenShard::open(dir.path().join("s"))?);
/// let seqs = PackedSequences::new(shard, Packing { seq_len: 16, bos: Some(2), eos: Some(3), grouping: Grouping::Concat })?;
/// let mut a = SequenceStream::new(seqs.clone(), 17);
/// let first: Vec<_> = (0..5).map(|_| a.next_sequence()).collect();
/// // Resuming from a saved position continues exactly.
/// let saved = a.position();
/// let next = a.next_sequence();
/// let mut b = SequenceStream::new(seqs, 17);
/// b.seek(saved);
/// assert_eq!(b.next_sequence(), next);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SequenceStream {
    sequences: PackedSequences,
    seed: u64,
    position: Position,
    order: Vec<u32>,
    order_epoch: Option<u64>,
}

impl SequenceStream {
    /// A stream over `sequences` shuffled with `seed`.
    pub fn new(sequences: PackedSequences, seed: u64) -> Self {
        Self {
            sequences,
            seed,
            position: Position::default(),
            order: Vec::new(),
            order_epoch: None,
        }
    }

    /// The underlying sequences.
    pub fn sequences(&self) -> &PackedSequences {
        &self.sequences
    }

    /// Where the stream is.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Continues from a saved position (an index past the epoch's end wraps to the next epoch).
    pub fn seek(&mut self, position: Position) {
        let n = self.sequences.len() as u64;
        self.position = Position {
            epoch: position.epoch + position.index / n,
            index: position.index % n,
        };
    }

    /// Epochs completed, fractionally (for repetition reports).
    pub fn epochs(&self) -> f64 {
        self.position.epoch as f64 + self.position.index as f64 / self.sequences.len() as f64
    }

    /// The next sequence.
    pub fn next_sequence(&mut self) -> Vec<u32> {
        self.next_indexed().1
    }

    /// The next sequence with its index in [`PackedSequences`] (to count distinct sequences).
    pub fn next_indexed(&mut self) -> (usize, Vec<u32>) {
        if self.order_epoch != Some(self.position.epoch) {
            self.order = permutation(self.sequences.len(), self.seed, self.position.epoch);
            self.order_epoch = Some(self.position.epoch);
        }
        let i = self.order[self.position.index as usize] as usize;
        self.position.index += 1;
        if self.position.index as usize == self.sequences.len() {
            self.position = Position {
                epoch: self.position.epoch + 1,
                index: 0,
            };
        }
        (i, self.sequences.get(i))
    }
}

/// Fisher–Yates permutation of `0..n` from `(seed, epoch)`.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..].copy_from_slice(b"kiln-data-order!");
    let mut rng = ChaCha8Rng::from_seed(key);
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
impl PackedSequences {
    fn shard_for_tests(&self) -> Arc<TokenShard> {
        self.shard.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{Domain, documents};
    use crate::shards::write_shard;
    use crate::tokenizer::{Tokenizer, TokenizerKind};

    fn shard(dir: &std::path::Path) -> (Arc<TokenShard>, Tokenizer, Vec<String>) {
        let docs = documents(Domain::Code, 0, 0, 30);
        let tok = Tokenizer::train(
            TokenizerKind::WordPiece,
            docs.iter().map(String::as_str),
            300,
            1,
        )
        .unwrap();
        write_shard(
            dir.join("s"),
            docs.iter().map(String::as_str),
            &tok,
            false,
            false,
        )
        .unwrap();
        (
            Arc::new(TokenShard::open(dir.join("s")).unwrap()),
            tok,
            docs,
        )
    }

    #[test]
    fn concat_is_the_stream_cut_into_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let (s, tok, docs) = shard(dir.path());
        let mut stream: Vec<u32> = Vec::new();
        for d in &docs {
            stream.extend(tok.encode(d, false).unwrap());
            stream.push(3);
        }
        let seqs = PackedSequences::new(
            s,
            Packing {
                seq_len: 9,
                bos: Some(2),
                eos: Some(3),
                grouping: Grouping::Concat,
            },
        )
        .unwrap();
        assert_eq!(seqs.len(), stream.len() / 8);
        for i in 0..seqs.len() {
            let mut want = vec![2];
            want.extend(&stream[i * 8..(i + 1) * 8]);
            assert_eq!(seqs.get(i), want, "sequence {i}");
        }
    }

    #[test]
    fn every_token_knows_its_document() {
        let dir = tempfile::tempdir().unwrap();
        let (s, tok, docs) = shard(dir.path());
        let encoded: Vec<Vec<u32>> = docs.iter().map(|d| tok.encode(d, false).unwrap()).collect();
        for grouping in [Grouping::Concat, Grouping::Truncate] {
            let seqs = PackedSequences::new(
                s.clone(),
                Packing {
                    seq_len: 9,
                    bos: Some(2),
                    eos: Some(3),
                    grouping,
                },
            )
            .unwrap();
            // each document's tokens, read back through the labels, in order
            let mut got: Vec<Vec<u32>> = vec![Vec::new(); docs.len()];
            for i in 0..seqs.len() {
                let (tokens, owners) = (seqs.get(i), seqs.documents(i));
                assert_eq!(tokens.len(), owners.len(), "sequence {i}");
                for (t, d) in tokens.iter().zip(&owners).skip(1) {
                    if *t != 3 {
                        got[*d as usize].push(*t);
                    }
                }
                if grouping == Grouping::Concat && i > 0 {
                    assert_eq!(owners[0], owners[1], "bos goes with the next token");
                }
            }
            for (d, want) in encoded.iter().enumerate() {
                let want: &[u32] = match grouping {
                    // the last partial sequence is dropped
                    Grouping::Concat => &want[..got[d].len()],
                    Grouping::Truncate => &want[..want.len().min(7)],
                };
                assert_eq!(got[d], want, "{grouping:?}: document {d}");
            }
            if grouping == Grouping::Concat {
                let complete = got.iter().zip(&encoded).filter(|(g, w)| g.len() == w.len());
                assert!(complete.count() >= docs.len() - 1, "only the tail is cut");
            }
        }
    }

    #[test]
    fn truncate_wraps_each_document() {
        let dir = tempfile::tempdir().unwrap();
        let (s, tok, docs) = shard(dir.path());
        let seqs = PackedSequences::new(
            s,
            Packing {
                seq_len: 12,
                bos: Some(2),
                eos: Some(3),
                grouping: Grouping::Truncate,
            },
        )
        .unwrap();
        assert_eq!(seqs.len(), docs.len());
        let ids = tok.encode(&docs[4], false).unwrap();
        let mut want = vec![2];
        want.extend(&ids[..10]);
        want.push(3);
        assert_eq!(seqs.get(4), want);
    }

    #[test]
    fn epochs_are_permutations_and_differ() {
        let a = permutation(100, 1, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, permutation(100, 1, 1));
        assert_ne!(a, permutation(100, 2, 0));
        assert_eq!(a, permutation(100, 1, 0));
    }

    #[test]
    fn stream_wraps_epochs_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _, _) = shard(dir.path());
        let seqs = PackedSequences::new(
            s,
            Packing {
                seq_len: 32,
                bos: None,
                eos: Some(3),
                grouping: Grouping::Concat,
            },
        )
        .unwrap();
        let n = seqs.len();
        let mut st = SequenceStream::new(seqs.clone(), 5);
        let all: Vec<Vec<u32>> = (0..n + 3).map(|_| st.next_sequence()).collect();
        assert_eq!(st.position(), Position { epoch: 1, index: 3 });
        let mut again = SequenceStream::new(seqs.clone(), 5);
        again.seek(Position {
            epoch: 0,
            index: n as u64 - 1,
        });
        assert_eq!(again.next_sequence(), all[n - 1]);
        assert_eq!(again.next_sequence(), all[n]);
        assert!(
            PackedSequences::new(
                again.sequences().shard_for_tests(),
                Packing {
                    seq_len: 1,
                    bos: Some(2),
                    eos: None,
                    grouping: Grouping::Concat
                }
            )
            .is_err()
        );
    }
}
