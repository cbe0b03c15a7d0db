//! Sampling sequences from named domains with proportions that follow a data-mix schedule.
//!
//! Each sequence's domain is drawn from the schedule's proportions at the current step, with a
//! random number that depends only on `(seed, step, slot)`; each domain is a
//! [`SequenceStream`]. So the whole state is the per-domain
//! positions and counters ([`MixtureState`]), which a checkpoint saves.

use std::collections::BTreeMap;

use kiln_schedules::ResolvedMix;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::packing::{Position, SequenceStream};

/// Per-domain counters.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DomainStats {
    /// Sequences drawn.
    pub sequences: u64,
    /// Tokens drawn.
    pub tokens: u64,
    /// Passes over the domain's data (fractional): above 1 means repetition.
    pub epochs: f64,
}

/// What a checkpoint saves of a sampler.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MixtureState {
    /// Stream position per domain.
    pub positions: BTreeMap<String, Position>,
    /// Counters per domain.
    pub stats: BTreeMap<String, DomainStats>,
}

/// A sampler over named domains.
#[derive(Debug, Clone)]
pub struct MixtureSampler {
    names: Vec<String>,
    streams: Vec<SequenceStream>,
    mix: ResolvedMix,
    seed: u64,
    stats: Vec<DomainStats>,
}

impl MixtureSampler {
    /// A sampler drawing from `streams` (by name) with `mix`'s proportions.
    ///
    /// # Errors
    /// [`Error::Config`] if the mix names a domain without a stream or a stream is not in the
    /// mix.
    pub fn new(
        mut streams: BTreeMap<String, SequenceStream>,
        mix: ResolvedMix,
        seed: u64,
    ) -> Result<Self> {
        let mut ordered = Vec::new();
        for name in mix.domains() {
            let s = streams.remove(name).ok_or_else(|| Error::Config {
                message: format!(
                    "the data mix names domain `{name}`, but no data was given for it"
                ),
            })?;
            ordered.push(s);
        }
        if let Some(extra) = streams.keys().next() {
            return Err(Error::Config {
                message: format!(
                    "data was given for domain `{extra}`, which the data mix does not name; give it a weight (0 to leave it out)"
                ),
            });
        }
        let n = ordered.len();
        Ok(Self {
            names: mix.domains().to_vec(),
            streams: ordered,
            mix,
            seed,
            stats: vec![DomainStats::default(); n],
        })
    }

    /// Domain names, in the order of [`MixtureSampler::proportions`].
    pub fn domains(&self) -> &[String] {
        &self.names
    }

    /// Proportions at `step`.
    pub fn proportions(&self, step: u64) -> Vec<f64> {
        self.mix.proportions(step as f64)
    }

    /// The `n` sequences of step `step`, each with its domain index.
    pub fn batch(&mut self, step: u64, n: usize) -> Vec<(usize, Vec<u32>)> {
        let p = self.proportions(step);
        (0..n)
            .map(|slot| {
                let u = uniform(self.seed, step, slot as u64);
                let mut acc = 0.0;
                let mut d = p.len() - 1;
                for (i, &q) in p.iter().enumerate() {
                    acc += q;
                    if u < acc && q > 0.0 {
                        d = i;
                        break;
                    }
                }
                // Rounding could land on a zero-weight last domain: take the last positive one.
                if p[d] == 0.0 {
                    d = p
                        .iter()
                        .rposition(|&q| q > 0.0)
                        .expect("a phase has a positive weight");
                }
                let seq = self.streams[d].next_sequence();
                let st = &mut self.stats[d];
                st.sequences += 1;
                st.tokens += seq.len() as u64;
                st.epochs = self.streams[d].epochs();
                (d, seq)
            })
            .collect()
    }

    /// Counters per domain.
    pub fn stats(&self) -> BTreeMap<String, DomainStats> {
        self.names
            .iter()
            .cloned()
            .zip(self.stats.iter().copied())
            .collect()
    }

    /// The state to checkpoint.
    pub fn state(&self) -> MixtureState {
        MixtureState {
            positions: self
                .names
                .iter()
                .cloned()
                .zip(self.streams.iter().map(SequenceStream::position))
                .collect(),
            stats: self.stats(),
        }
    }

    /// Restores a checkpointed state.
    ///
    /// # Errors
    /// [`Error::Config`] if the state names different domains.
    pub fn restore(&mut self, state: &MixtureState) -> Result<()> {
        if state.positions.keys().ne(self.names.iter()) {
            return Err(Error::Config {
                message: format!(
                    "the checkpoint's data domains {:?} are not this run's {:?}",
                    state.positions.keys().collect::<Vec<_>>(),
                    self.names
                ),
            });
        }
        for (i, name) in self.names.iter().enumerate() {
            self.streams[i].seek(state.positions[name]);
            self.stats[i] = state.stats.get(name).copied().unwrap_or_default();
        }
        Ok(())
    }
}

/// A uniform number in [0, 1) from `(seed, step, slot)`.
fn uniform(seed: u64, step: u64, slot: u64) -> f64 {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&step.to_le_bytes());
    key[16..24].copy_from_slice(&slot.to_le_bytes());
    key[24..].copy_from_slice(b"kilnmix!");
    (ChaCha8Rng::from_seed(key).next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use kiln_schedules::{DataMix, Duration, RunSize};

    use super::*;
    use crate::corpus::{Domain, documents};
    use crate::packing::{Grouping, PackedSequences, Packing};
    use crate::shards::{TokenShard, write_shard};
    use crate::tokenizer::{Tokenizer, TokenizerKind};

    /// The three built-in domains (arithmetic tiny) as 16-token sequences.
    pub(crate) fn streams(dir: &std::path::Path) -> BTreeMap<String, SequenceStream> {
        let all: Vec<String> = Domain::ALL
            .iter()
            .flat_map(|d| documents(*d, 0, 0, 40))
            .collect();
        let tok = Tokenizer::train(
            TokenizerKind::WordPiece,
            all.iter().map(String::as_str),
            400,
            1,
        )
        .unwrap();
        Domain::ALL
            .iter()
            .map(|d| {
                let docs = documents(*d, 0, 0, if *d == Domain::Arithmetic { 5 } else { 60 });
                let p = dir.join(d.name());
                write_shard(&p, docs.iter().map(String::as_str), &tok, false, false).unwrap();
                let seqs = PackedSequences::new(
                    Arc::new(TokenShard::open(&p).unwrap()),
                    Packing {
                        seq_len: 16,
                        bos: Some(2),
                        eos: Some(3),
                        grouping: Grouping::Concat,
                    },
                )
                .unwrap();
                (d.name().to_owned(), SequenceStream::new(seqs, 1))
            })
            .collect()
    }

    fn weights(p: &[(&str, f64)]) -> BTreeMap<String, f64> {
        p.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn proportions_follow_the_schedule_and_upsampled_domains_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let mix = DataMix::upsample_end(
            weights(&[("prose", 0.8), ("code", 0.2), ("arithmetic", 0.0)]),
            weights(&[("prose", 0.4), ("code", 0.2), ("arithmetic", 0.4)]),
            0.5,
        );
        let mix = mix.resolve(&RunSize::new(Duration::batches(200))).unwrap();
        let mut s = MixtureSampler::new(streams(dir.path()), mix, 9).unwrap();
        let mut counts = [[0usize; 3]; 2];
        for step in 0..200 {
            for (d, seq) in s.batch(step, 16) {
                assert_eq!(seq.len(), 16);
                counts[usize::from(step >= 100)][d] += 1;
            }
        }
        // domains() is sorted: arithmetic, code, prose.
        assert_eq!(s.domains(), ["arithmetic", "code", "prose"]);
        assert_eq!(counts[0][0], 0, "arithmetic is off before the switch");
        let frac = |c: &[usize; 3], i: usize| c[i] as f64 / c.iter().sum::<usize>() as f64;
        assert!((frac(&counts[0], 2) - 0.8).abs() < 0.03, "{counts:?}");
        assert!((frac(&counts[1], 0) - 0.4).abs() < 0.03, "{counts:?}");
        let stats = s.stats();
        assert!(
            stats["arithmetic"].epochs > 5.0,
            "the tiny domain repeats: {stats:?}"
        );
        assert_eq!(stats.values().map(|d| d.tokens).sum::<u64>(), 200 * 16 * 16);
    }

    #[test]
    fn restoring_a_state_continues_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mix = DataMix::constant(weights(&[
            ("prose", 1.0),
            ("code", 1.0),
            ("arithmetic", 1.0),
        ]))
        .resolve(&RunSize::new(Duration::batches(50)))
        .unwrap();
        let mut a = MixtureSampler::new(streams(dir.path()), mix.clone(), 3).unwrap();
        for step in 0..10 {
            a.batch(step, 8);
        }
        let state = a.state();
        let json = serde_json::to_string(&state).unwrap();
        let want: Vec<_> = (10..20).flat_map(|step| a.batch(step, 8)).collect();
        let mut b = MixtureSampler::new(streams(&dir.path().join("again")), mix, 3).unwrap();
        b.restore(&serde_json::from_str(&json).unwrap()).unwrap();
        let got: Vec<_> = (10..20).flat_map(|step| b.batch(step, 8)).collect();
        assert_eq!(got, want);
        assert_eq!(a.stats(), b.stats());
    }

    #[test]
    fn mismatched_domains_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mix = DataMix::constant(weights(&[("prose", 1.0), ("web", 1.0)]))
            .resolve(&RunSize::new(Duration::batches(5)))
            .unwrap();
        let err = MixtureSampler::new(streams(dir.path()), mix, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`web`"), "{err}");
    }
}
