//! Training data for kiln: tokenizers, token shards, packing, domain mixtures, MLM collation
//! and built-in corpora.
//!
//! The pipeline from text to batches:
//! 1. [`tokenizer`] — load a Hugging Face `tokenizer.json`, or train a WordPiece (BERT) or
//!    byte-level BPE (GPT-2) tokenizer offline;
//! 2. [`shards`] — tokenize text or JSONL once into memory-mapped token shards;
//! 3. [`packing`] — cut a shard into fixed-length sequences (concat or truncate) and stream them
//!    in a deterministic shuffled order whose [`Position`](packing::Position) a checkpoint
//!    saves;
//! 4. [`mixture`] — draw each sequence's domain from a data-mix schedule
//!    ([`kiln_schedules::DataMix`]) at the current step, counting tokens and repetition per
//!    domain — or [`curriculum`]: phases of mixes with mosaicml/streaming's
//!    `proportion | repeat | choose` counts per epoch ([`streams`]), repeat accounting per
//!    phase and domain, and llm-foundry's rule for changing the schedule on resume;
//! 5. [`mlm`] — BERT masking (80/10/10, specials and padding never selected) at a rate given
//!    per batch, e.g. by a [`kiln_schedules::MaskingSchedule`].
//!
//! [`mc`] reads multiple-choice questions (MedMCQA, MedQA, SWAG-style; JSONL or Parquet) and
//! builds lm-evaluation-harness's prompts for them.
//!
//! [`corpus`] generates three deterministic domains with real structure (prose from a grammar,
//! Python functions, arithmetic) and a CoLA-like acceptability probe, so everything runs offline
//! on any machine. [`images`] holds small labelled image sets for classifiers: the UCI
//! handwritten digits built in (CC BY 4.0), safetensors image files, stratified splits and the
//! rotations/permutations continual-learning task sequences are made of. [`captioned`] generates
//! captioned shape images for text-to-image training and reads back from pixels what an image
//! shows; [`arrays`] stores fixed-shape f32 records (precomputed latents and text embeddings)
//! in memory-mapped shards.
//!
//! ```
//! use std::{collections::BTreeMap, sync::Arc};
//! use kiln_data::{corpus::{self, Domain}, mixture::MixtureSampler, mlm::MlmCollator,
//!     packing::{Grouping, PackedSequences, Packing, SequenceStream}, shards, tokenizer::{Tokenizer, TokenizerKind}};
//! use kiln_schedules::{DataMix, Duration, MaskingSchedule, RunSize};
//!
//! let dir = tempfile::tempdir()?;
//! let docs: BTreeMap<&str, Vec<String>> =
//!     Domain::ALL.iter().map(|d| (d.name(), corpus::documents(*d, 0, 0, 50))).collect();
//! let tok = Tokenizer::train(TokenizerKind::WordPiece,
//!     docs.values().flatten().map(String::as_str), 500, 1)?;
//! let special = tok.special_ids();
//! let packing = Packing { seq_len: 32, bos: special.cls, eos: special.sep, grouping: Grouping::Concat };
//! let mut streams = BTreeMap::new();
//! for (name, texts) in &docs {
//!     shards::write_shard(dir.path().join(name), texts.iter().map(String::as_str), &tok, false, false)?;
//!     let shard = Arc::new(shards::TokenShard::open(dir.path().join(name))?);
//!     streams.insert(name.to_string(), SequenceStream::new(PackedSequences::new(shard, packing)?, 0));
//! }
//! let run = RunSize::new(Duration::batches(100));
//! let weights = |w: [f64; 3]| BTreeMap::from([("prose".into(), w[0]), ("code".into(), w[1]), ("arithmetic".into(), w[2])]);
//! let mix = DataMix::upsample_end(weights([8.0, 1.0, 1.0]), weights([2.0, 1.0, 1.0]), 0.2).resolve(&run)?;
//! let mut sampler = MixtureSampler::new(streams, mix, 0)?;
//! let masking = MaskingSchedule::Linear { from: 0.3, to: 0.15, t_max: Duration::fraction(1.0) }.resolve(&run)?;
//! let collator = MlmCollator::from_special_ids(&special, tok.vocab_size())?;
//! for step in 0..3 {
//!     let seqs: Vec<Vec<u32>> = sampler.batch(step, 8).into_iter().map(|(_, s)| s).collect();
//!     let batch = collator.collate(&seqs, masking.rate(step as f64), step)?;
//!     assert_eq!((batch.batch, batch.seq_len), (8, 32));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! No burn here: batches are plain `Vec<i64>` rows that any backend can take.
//!
//! # Errors
//! One [`Error`] type; every bad file, record, shard or setting is reported with where it is
//! and what would be valid.

#![warn(missing_docs)]

pub mod arrays;
pub mod captioned;
pub mod corpus;
pub mod curriculum;
mod error;
pub mod images;
pub mod mc;
pub mod mixture;
pub mod mlm;
mod numpy_rng;
pub mod packing;
pub mod shards;
pub mod streams;
pub mod tokenizer;

pub use error::{Error, Result};

// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
