//! Phased data mixes with streaming's per-epoch counts, repeat accounting, and llm-foundry's
//! rule for changing the schedule on resume.
//!
//! A [`Curriculum`] is a list of phases, each lasting a [`Duration`] and drawing from its
//! streams with mosaicml/streaming's `proportion | repeat | choose` weights ([`crate::streams`]),
//! as llm-foundry's curriculum-learning callback (v2) swaps in one dataloader per phase. The
//! durations must add up to the run's length. Domain upsampling at the end of pretraining
//! (Blakeney et al. 2024) is two phases: the base mix for `1 − f` of the run, an upsampled
//! mix for the last `f` ([`Curriculum::upsample_end`]).
//!
//! Within a phase, each epoch draws exactly the resolved count from every stream, interleaved
//! in an order shuffled from `(seed, phase, epoch)`, so every batch mixes domains. A domain's
//! sequences come from its [`SequenceStream`], which continues across phases and epochs (a
//! domain repeats only after all of its sequences were drawn). Which samples streaming would
//! draw differs (it picks them at random per epoch); how many per stream and epoch is the same.
//! A new phase starts a fresh epoch of its mix at its first step (an abrupt switch, as resuming
//! with a new dataloader does); the learning-rate schedule belongs to the trainer and goes on
//! unchanged.
//!
//! **Repeat accounting.** Per phase and domain the sampler counts the tokens drawn, the tokens
//! of the *distinct* sequences drawn, and their ratio, the repeat factor (1: nothing seen twice
//! in the phase; 3: every token seen three times on average). Above
//! [`CurriculumSampler::repeat_warning`] (4 by default, the repetition up to which Muennighoff
//! et al. 2023 found repeated data almost as good as new) a warning is queued once per phase and
//! domain.
//!
//! **Resume.** [`ResolvedCurriculum::check_resume`] allows a resumed run to change only the
//! phases that had not begun when its checkpoint was written (and the end of the phase in
//! progress, not before the checkpoint); changing a phase that was trained on is an error
//! naming the phase — llm-foundry's v2 rule.
//!
//! ```
//! use std::{collections::BTreeMap, sync::Arc};
//! use kiln_data::curriculum::{Curriculum, CurriculumSampler};
//! use kiln_data::streams::StreamSpec;
//! use kiln_data::{corpus::{self, Domain}, packing::{Grouping, PackedSequences, Packing, SequenceStream}, shards, tokenizer::{Tokenizer, TokenizerKind}};
//! use kiln_schedules::{Duration, RunSize};
//!
//! let dir = tempfile::tempdir()?;
//! let tok = Tokenizer::train(TokenizerKind::Bpe,
//!     corpus::documents(Domain::Prose, 0, 0, 30).iter().map(String::as_str), 300, 1)?;
//! let packing = Packing { seq_len: 16, bos: None, eos: tok.special_ids().eos, grouping: Grouping::Concat };
//! let mut streams = BTreeMap::new();
//! for (d, n) in [(Domain::Prose, 200), (Domain::Arithmetic, 2)] {
//!     let texts = corpus::documents(d, 0, 0, n);
//!     shards::write_shard(dir.path().join(d.name()), texts.iter().map(String::as_str), &tok, false, false)?;
//!     let shard = Arc::new(shards::TokenShard::open(dir.path().join(d.name()))?);
//!     streams.insert(d.name().to_owned(), SequenceStream::new(PackedSequences::new(shard, packing)?, 0));
//! }
//! // 80% of the run on the natural mix, the last 20% with arithmetic at 50%.
//! let curriculum = Curriculum::upsample_end(
//!     vec![StreamSpec::plain("prose"), StreamSpec::plain("arithmetic")],
//!     vec![StreamSpec::proportion("prose", 0.5), StreamSpec::proportion("arithmetic", 0.5)],
//!     Some(64), 0.2);
//! let mut sampler = CurriculumSampler::new(streams, &curriculum, &RunSize::new(Duration::batches(50)), 0)?;
//! for step in 0..50 {
//!     sampler.batch(step, 8)?;
//! }
//! let last = &sampler.phase_stats()[1]["arithmetic"];
//! assert!(last.repeat() > 1.0); // the small domain repeats in the upsampled phase
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use kiln_schedules::{Duration, RunSize};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mixture::DomainStats;
use crate::packing::{Position, SequenceStream, permutation};
use crate::streams::{self, ResolvedStreams, STREAMING_SEED, StreamSpec};

/// One phase: how long it lasts and what it draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurriculumPhase {
    /// How long the phase lasts (any unit the run can convert; the phases must add up to the
    /// run's length).
    pub duration: Duration,
    /// The streams of the phase with their weights; a domain left out is not drawn.
    pub streams: Vec<StreamSpec>,
    /// Samples per epoch of the phase (with proportions or no weights, as streaming's
    /// `epoch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_size: Option<u64>,
}

fn default_seed() -> u64 {
    STREAMING_SEED
}

/// Phases of data mixes over a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curriculum {
    /// The phases, in order.
    pub phases: Vec<CurriculumPhase>,
    /// Seed of the proportional rounding (streaming's `shuffle_seed`, 9176 by default).
    #[serde(default = "default_seed")]
    pub rounding_seed: u64,
}

impl Curriculum {
    /// One mix for the whole run.
    pub fn constant(streams: Vec<StreamSpec>, epoch_size: Option<u64>) -> Self {
        Self {
            phases: vec![CurriculumPhase {
                duration: Duration::fraction(1.0),
                streams,
                epoch_size,
            }],
            rounding_seed: STREAMING_SEED,
        }
    }

    /// `base` for the first `1 − fraction` of the run, `upsampled` (with `epoch_size`) for the
    /// last `fraction`; `fraction` 0 is the base mix throughout.
    pub fn upsample_end(
        base: Vec<StreamSpec>,
        upsampled: Vec<StreamSpec>,
        epoch_size: Option<u64>,
        fraction: f64,
    ) -> Self {
        if fraction <= 0.0 {
            return Self::constant(base, None);
        }
        Self {
            phases: vec![
                CurriculumPhase {
                    duration: Duration::fraction(1.0 - fraction),
                    streams: base,
                    epoch_size: None,
                },
                CurriculumPhase {
                    duration: Duration::fraction(fraction),
                    streams: upsampled,
                    epoch_size,
                },
            ],
            rounding_seed: STREAMING_SEED,
        }
    }

    /// Checks the phases and turns them into steps of `run`, with each phase's streams resolved
    /// against the domains' sizes (sequences per domain).
    ///
    /// # Errors
    /// [`Error::Config`] for no phases, a phase of zero steps, durations that do not add up to
    /// the run, a stream naming a domain without data, and the stream rules of
    /// [`streams::resolve`] (naming the phase); [`Error::Schedule`] for durations the run
    /// cannot convert.
    pub fn resolve(
        &self,
        run: &RunSize,
        sizes: &BTreeMap<String, u64>,
    ) -> Result<ResolvedCurriculum> {
        let bad = |message: String| Err(Error::Config { message });
        if self.phases.is_empty() {
            return bad("a curriculum needs at least one phase".into());
        }
        let total = run.total_steps()?.round() as u64;
        let (mut cumulative, mut start) = (0.0f64, 0u64);
        let mut phases = Vec::with_capacity(self.phases.len());
        for (i, p) in self.phases.iter().enumerate() {
            let n = i + 1;
            cumulative += run.steps(&p.duration)?;
            let end = cumulative.round() as u64;
            if end <= start {
                return bad(format!(
                    "curriculum phase {n} ({}) lasts no step of this {total}-step run; make it longer or remove it",
                    p.duration
                ));
            }
            let mut samples = Vec::with_capacity(p.streams.len());
            for s in &p.streams {
                samples.push(*sizes.get(&s.name).ok_or_else(|| Error::Config {
                    message: format!(
                        "curriculum phase {n} names stream `{}`, but no data was given for it (domains with data: {})",
                        s.name,
                        sizes.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                })?);
            }
            let resolved = streams::resolve(&p.streams, &samples, p.epoch_size, self.rounding_seed)
                .map_err(|e| Error::Config {
                    message: format!("curriculum phase {n}: {e}"),
                })?;
            phases.push(ResolvedPhase {
                start,
                end,
                spec: p.clone(),
                streams: resolved,
            });
            start = end;
        }
        if start != total {
            return bad(format!(
                "the curriculum's phases last {start} steps in all, the run lasts {total}; the durations must add up to the run's length (llm-foundry's rule)"
            ));
        }
        Ok(ResolvedCurriculum { phases })
    }
}

/// A phase in steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedPhase {
    /// First step of the phase.
    pub start: u64,
    /// First step after it.
    pub end: u64,
    /// The phase as configured.
    pub spec: CurriculumPhase,
    /// Its streams resolved against the domains' sizes.
    pub streams: ResolvedStreams,
}

/// A curriculum in steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedCurriculum {
    /// The phases, in order.
    pub phases: Vec<ResolvedPhase>,
}

impl ResolvedCurriculum {
    /// The phase in force at `step` (the last phase after the run's end).
    pub fn phase_at(&self, step: u64) -> usize {
        self.phases
            .iter()
            .position(|p| step < p.end)
            .unwrap_or(self.phases.len() - 1)
    }

    /// Whether this schedule may replace `saved`, the schedule of a checkpoint written before
    /// step `next_step`: phases that had begun must keep their start, streams and epoch size;
    /// those that had ended must keep their end; the phase in progress may end at any step
    /// from `next_step` on. Later phases may change freely.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first phase that would rewrite what was trained.
    pub fn check_resume(&self, saved: &ResolvedCurriculum, next_step: u64) -> Result<()> {
        let begun =
            |c: &ResolvedCurriculum| c.phases.iter().filter(|p| p.start < next_step).count();
        let n = begun(saved).max(begun(self));
        for i in 0..n {
            let past = |why: String| Error::Config {
                message: format!(
                    "curriculum phase {} had begun when the checkpoint was written (before step {next_step}): {why}; on resume only phases that had not begun may change",
                    i + 1
                ),
            };
            let (Some(old), Some(new)) = (saved.phases.get(i), self.phases.get(i)) else {
                return Err(past(
                    "this run's schedule removes it or adds a phase before it".into(),
                ));
            };
            if old.start != new.start {
                return Err(past(format!(
                    "it started at step {}, this run's schedule starts it at step {}",
                    old.start, new.start
                )));
            }
            if old.spec.streams != new.spec.streams || old.spec.epoch_size != new.spec.epoch_size {
                return Err(past("its streams or epoch size differ".into()));
            }
            if old.end <= next_step && new.end != old.end {
                return Err(past(format!(
                    "it ended at step {}, this run's schedule ends it at step {}",
                    old.end, new.end
                )));
            }
            if old.end > next_step && new.end < next_step {
                return Err(past(format!(
                    "it was in progress, and this run's schedule ends it at step {}, before the checkpoint",
                    new.end
                )));
            }
        }
        Ok(())
    }
}

/// What a phase drew from one domain.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PhaseStats {
    /// Sequences drawn.
    pub sequences: u64,
    /// Tokens drawn.
    pub tokens: u64,
    /// Distinct sequences drawn.
    pub unique_sequences: u64,
    /// Tokens of the distinct sequences drawn.
    pub unique_tokens: u64,
}

impl PhaseStats {
    /// Tokens drawn per distinct token (1 when nothing repeated; 0 when nothing was drawn).
    pub fn repeat(&self) -> f64 {
        if self.unique_tokens == 0 {
            0.0
        } else {
            self.tokens as f64 / self.unique_tokens as f64
        }
    }
}

/// A set of sequence indices.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Seen(Vec<u64>);

impl Seen {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }

    /// Marks `i`; whether it was new.
    fn insert(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let new = self.0[w] & b == 0;
        self.0[w] |= b;
        new
    }
}

/// What a checkpoint saves of a [`CurriculumSampler`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurriculumState {
    /// The schedule the run was trained with (for [`ResolvedCurriculum::check_resume`]).
    pub schedule: ResolvedCurriculum,
    /// The step after the last one batched.
    pub next_step: u64,
    /// Phase, epoch within it, and slot within the epoch of the next draw.
    pub phase: Option<usize>,
    /// Epoch within the phase.
    pub epoch: u64,
    /// Slot within the epoch.
    pub index: u64,
    /// Stream position per domain.
    pub positions: BTreeMap<String, Position>,
    /// Counters per domain over the run.
    pub stats: BTreeMap<String, DomainStats>,
    /// Counters per phase (index) and domain.
    pub phase_stats: Vec<BTreeMap<String, PhaseStats>>,
    /// Distinct sequences per domain: over the run, and in the current phase.
    seen_run: BTreeMap<String, Seen>,
    seen_phase: BTreeMap<String, Seen>,
    /// Warnings already given, as `(phase, domain)`.
    warned: Vec<(usize, String)>,
}

/// A sampler that follows a [`Curriculum`].
#[derive(Debug, Clone)]
pub struct CurriculumSampler {
    names: Vec<String>,
    streams: Vec<SequenceStream>,
    curriculum: ResolvedCurriculum,
    seed: u64,
    next_step: u64,
    phase: Option<usize>,
    epoch: u64,
    index: u64,
    /// Domain index of each slot of the current epoch.
    order: Vec<u32>,
    stats: Vec<DomainStats>,
    phase_stats: Vec<Vec<PhaseStats>>,
    seen_run: Vec<Seen>,
    seen_phase: Vec<Seen>,
    warned: Vec<(usize, String)>,
    pending: Vec<String>,
    /// Repeat factor above which a warning is queued.
    pub repeat_warning: f64,
}

impl CurriculumSampler {
    /// A sampler over `streams` (by domain name) following `curriculum` over `run`, with the
    /// epoch orders drawn from `seed`.
    ///
    /// # Errors
    /// As [`Curriculum::resolve`].
    pub fn new(
        streams: BTreeMap<String, SequenceStream>,
        curriculum: &Curriculum,
        run: &RunSize,
        seed: u64,
    ) -> Result<Self> {
        let sizes = streams
            .iter()
            .map(|(k, s)| (k.clone(), s.sequences().len() as u64))
            .collect();
        let resolved = curriculum.resolve(run, &sizes)?;
        let names: Vec<String> = streams.keys().cloned().collect();
        let streams: Vec<SequenceStream> = streams.into_values().collect();
        let seen =
            |s: &Vec<SequenceStream>| s.iter().map(|s| Seen::new(s.sequences().len())).collect();
        Ok(Self {
            seen_run: seen(&streams),
            seen_phase: seen(&streams),
            stats: vec![DomainStats::default(); names.len()],
            phase_stats: vec![vec![PhaseStats::default(); names.len()]; resolved.phases.len()],
            names,
            streams,
            curriculum: resolved,
            seed,
            next_step: 0,
            phase: None,
            epoch: 0,
            index: 0,
            order: Vec::new(),
            warned: Vec::new(),
            pending: Vec::new(),
            repeat_warning: 4.0,
        })
    }

    /// Domain names (sorted), in the order [`batch`](Self::batch) indexes them.
    pub fn domains(&self) -> &[String] {
        &self.names
    }

    /// The schedule in steps.
    pub fn curriculum(&self) -> &ResolvedCurriculum {
        &self.curriculum
    }

    /// The phase of the last batch (`None` before the first).
    pub fn phase(&self) -> Option<usize> {
        self.phase
    }

    fn build_order(&mut self) {
        let p = self.phase.expect("a phase is set before drawing");
        let phase = &self.curriculum.phases[p];
        let slots: Vec<u32> = phase
            .streams
            .names
            .iter()
            .zip(&phase.streams.choose)
            .flat_map(|(name, &c)| {
                let d = self
                    .names
                    .iter()
                    .position(|n| n == name)
                    .expect("resolved against these domains") as u32;
                std::iter::repeat_n(d, c as usize)
            })
            .collect();
        let key = self.seed ^ (p as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.order = permutation(slots.len(), key, self.epoch)
            .into_iter()
            .map(|k| slots[k as usize])
            .collect();
    }

    /// The `n` sequences of optimiser step `step` (steps are expected in order; the micro-batches
    /// of a step call this with the same step), each with its domain index.
    ///
    /// # Errors
    /// [`Error::Config`] if `step` is before a step already drawn.
    pub fn batch(&mut self, step: u64, n: usize) -> Result<Vec<(usize, Vec<u32>)>> {
        if step + 1 < self.next_step {
            return Err(Error::Config {
                message: format!(
                    "the curriculum sampler drew step {} already; it cannot go back to step {step} (restore a checkpointed state instead)",
                    self.next_step - 1
                ),
            });
        }
        self.next_step = step + 1;
        let p = self.curriculum.phase_at(step);
        if self.phase != Some(p) {
            self.phase = Some(p);
            self.epoch = 0;
            self.index = 0;
            for (s, stream) in self.seen_phase.iter_mut().zip(&self.streams) {
                *s = Seen::new(stream.sequences().len());
            }
            self.build_order();
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            if self.index as usize >= self.order.len() {
                self.epoch += 1;
                self.index = 0;
                self.build_order();
            }
            let d = self.order[self.index as usize] as usize;
            self.index += 1;
            let (i, seq) = self.streams[d].next_indexed();
            let tokens = seq.len() as u64;
            let st = &mut self.stats[d];
            st.sequences += 1;
            st.tokens += tokens;
            st.epochs = self.streams[d].epochs();
            self.seen_run[d].insert(i);
            let ps = &mut self.phase_stats[p][d];
            ps.sequences += 1;
            ps.tokens += tokens;
            if self.seen_phase[d].insert(i) {
                ps.unique_sequences += 1;
                ps.unique_tokens += tokens;
            }
            if ps.repeat() > self.repeat_warning
                && !self
                    .warned
                    .iter()
                    .any(|(q, name)| *q == p && *name == self.names[d])
            {
                self.warned.push((p, self.names[d].clone()));
                self.pending.push(format!(
                    "domain `{}` is repeated {:.2}× in curriculum phase {} (above {}): its {} distinct tokens were drawn {} times in all by step {step}; a larger share may be wasted on repeats",
                    self.names[d],
                    ps.repeat(),
                    p + 1,
                    self.repeat_warning,
                    ps.unique_tokens,
                    ps.tokens
                ));
            }
            out.push((d, seq));
        }
        Ok(out)
    }

    /// Warnings queued since the last call (repeat factors above the threshold).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pending)
    }

    /// Counters per domain over the run.
    pub fn stats(&self) -> BTreeMap<String, DomainStats> {
        self.names
            .iter()
            .cloned()
            .zip(self.stats.iter().copied())
            .collect()
    }

    /// Counters per phase (index) and domain.
    pub fn phase_stats(&self) -> Vec<BTreeMap<String, PhaseStats>> {
        self.phase_stats
            .iter()
            .map(|row| {
                self.names
                    .iter()
                    .cloned()
                    .zip(row.iter().copied())
                    .collect()
            })
            .collect()
    }

    /// Distinct tokens drawn from each domain over the run.
    pub fn unique_tokens(&self) -> BTreeMap<String, u64> {
        self.names
            .iter()
            .zip(&self.streams)
            .zip(&self.seen_run)
            .map(|((name, stream), seen)| {
                let seqs = stream.sequences();
                let tokens = (0..seqs.len())
                    .filter(|&i| seen.0[i / 64] >> (i % 64) & 1 == 1)
                    .map(|i| seqs.get(i).len() as u64)
                    .sum();
                (name.clone(), tokens)
            })
            .collect()
    }

    /// The state to checkpoint.
    pub fn state(&self) -> CurriculumState {
        let by_name = |v: &[Seen]| self.names.iter().cloned().zip(v.iter().cloned()).collect();
        CurriculumState {
            schedule: self.curriculum.clone(),
            next_step: self.next_step,
            phase: self.phase,
            epoch: self.epoch,
            index: self.index,
            positions: self
                .names
                .iter()
                .cloned()
                .zip(self.streams.iter().map(SequenceStream::position))
                .collect(),
            stats: self.stats(),
            phase_stats: self.phase_stats(),
            seen_run: by_name(&self.seen_run),
            seen_phase: by_name(&self.seen_phase),
            warned: self.warned.clone(),
        }
    }

    /// Restores a checkpointed state; this sampler's schedule may differ from the saved one only
    /// where [`ResolvedCurriculum::check_resume`] allows. Counters of phases whose end moved are
    /// kept; those of phases that had not begun start at zero.
    ///
    /// # Errors
    /// [`Error::Config`] if the state names other domains or the schedule rewrites a phase that
    /// had begun.
    pub fn restore(&mut self, state: &CurriculumState) -> Result<()> {
        if state.positions.keys().ne(self.names.iter()) {
            return Err(Error::Config {
                message: format!(
                    "the checkpoint's data domains {:?} are not this run's {:?}",
                    state.positions.keys().collect::<Vec<_>>(),
                    self.names
                ),
            });
        }
        self.curriculum
            .check_resume(&state.schedule, state.next_step)?;
        for (i, name) in self.names.iter().enumerate() {
            self.streams[i].seek(state.positions[name]);
            self.stats[i] = state.stats.get(name).copied().unwrap_or_default();
            let n = self.streams[i].sequences().len();
            let seen = |m: &BTreeMap<String, Seen>| {
                m.get(name)
                    .filter(|s| s.0.len() == n.div_ceil(64))
                    .cloned()
                    .ok_or_else(|| Error::Config {
                        message: format!(
                            "the checkpoint's record of domain `{name}` does not fit its {n} sequences; was the data changed?"
                        ),
                    })
            };
            self.seen_run[i] = seen(&state.seen_run)?;
            self.seen_phase[i] = seen(&state.seen_phase)?;
        }
        for (p, row) in self.phase_stats.iter_mut().enumerate() {
            for (i, name) in self.names.iter().enumerate() {
                row[i] = if self.curriculum.phases[p].start < state.next_step {
                    state
                        .phase_stats
                        .get(p)
                        .and_then(|m| m.get(name))
                        .copied()
                        .unwrap_or_default()
                } else {
                    PhaseStats::default()
                };
            }
        }
        self.next_step = state.next_step;
        self.warned = state.warned.clone();
        self.epoch = state.epoch;
        self.index = state.index;
        // A phase that ends at the checkpoint under the new schedule is left at the next draw.
        self.phase = state.phase;
        if self.phase.is_some() {
            self.build_order();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use kiln_schedules::{Duration, RunSize};

    use super::*;
    use crate::mixture::tests::streams;

    fn run(steps: u64) -> RunSize {
        RunSize::new(Duration::batches(steps))
    }

    fn sizes(s: &BTreeMap<String, SequenceStream>) -> BTreeMap<String, u64> {
        s.iter()
            .map(|(k, v)| (k.clone(), v.sequences().len() as u64))
            .collect()
    }

    /// Each epoch of a phase draws exactly the resolved counts; tokens, distinct tokens and
    /// repeat factors per phase follow in closed form; the warning fires once.
    #[test]
    fn epochs_draw_the_resolved_counts_and_repeats_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = streams(dir.path());
        let n = sizes(&s);
        let (na, nc) = (n["arithmetic"], n["code"]);
        // Phase 1: arithmetic 3 times per epoch, code half, prose left out; phase 2: code only.
        let c = Curriculum {
            phases: vec![
                CurriculumPhase {
                    duration: Duration::batches(6),
                    streams: vec![
                        StreamSpec::repeat("arithmetic", 3.0),
                        StreamSpec::choose("code", nc / 2),
                    ],
                    epoch_size: None,
                },
                CurriculumPhase {
                    duration: Duration::batches(4),
                    streams: vec![StreamSpec::plain("code")],
                    epoch_size: None,
                },
            ],
            rounding_seed: STREAMING_SEED,
        };
        let epoch = 3 * na + nc / 2;
        let mut sampler = CurriculumSampler::new(s, &c, &run(10), 5).unwrap();
        sampler.repeat_warning = 2.0;
        // draw exactly one epoch of phase 1 over its 6 steps
        let per_step = epoch.div_ceil(6) as usize;
        let mut drawn = Vec::new();
        for step in 0..6 {
            drawn.extend(sampler.batch(step, per_step).unwrap());
        }
        let first_epoch = &drawn[..epoch as usize];
        let count =
            |d: usize, xs: &[(usize, Vec<u32>)]| xs.iter().filter(|x| x.0 == d).count() as u64;
        // domains() sorted: arithmetic, code, prose
        assert_eq!(count(0, first_epoch), 3 * na);
        assert_eq!(count(1, first_epoch), nc / 2);
        assert_eq!(count(2, &drawn), 0);
        let stats = sampler.phase_stats();
        let a = stats[0]["arithmetic"];
        let drawn_a = count(0, &drawn);
        assert_eq!(a.sequences, drawn_a);
        assert_eq!(a.tokens, drawn_a * 16);
        assert_eq!(a.unique_sequences, na, "every arithmetic sequence was seen");
        assert!((a.repeat() - drawn_a as f64 / na as f64).abs() < 1e-12);
        let warnings = sampler.take_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("`arithmetic`") && warnings[0].contains("phase 1"));
        // phase 2 starts a fresh epoch of code only; its distinct count starts again
        let later: Vec<_> = (6..10).flat_map(|s| sampler.batch(s, 4).unwrap()).collect();
        assert!(later.iter().all(|x| x.0 == 1));
        let code2 = sampler.phase_stats()[1]["code"];
        assert_eq!(code2.sequences, 16);
        assert_eq!(code2.unique_sequences, 16.min(nc));
        assert!(sampler.take_warnings().is_empty());
        let total = sampler.stats();
        assert_eq!(total["code"].sequences, count(1, &drawn) + 16);
    }

    fn upsample(f: f64) -> Curriculum {
        Curriculum::upsample_end(
            vec![
                StreamSpec::proportion("prose", 0.8),
                StreamSpec::proportion("code", 0.2),
            ],
            vec![
                StreamSpec::proportion("prose", 0.4),
                StreamSpec::proportion("code", 0.2),
                StreamSpec::proportion("arithmetic", 0.4),
            ],
            Some(40),
            f,
        )
    }

    /// A sampler restored from a state continues exactly as the uninterrupted one; a schedule
    /// that changes only the future is accepted.
    #[test]
    fn resume_continues_exactly_and_may_change_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            CurriculumSampler::new(streams(dir.path()), &upsample(0.5), &run(20), 3).unwrap();
        for step in 0..7 {
            a.batch(step, 8).unwrap();
        }
        let json = serde_json::to_string(&a.state()).unwrap();
        let want: Vec<_> = (7..20).flat_map(|s| a.batch(s, 8).unwrap()).collect();
        let mut b =
            CurriculumSampler::new(streams(&dir.path().join("b")), &upsample(0.5), &run(20), 3)
                .unwrap();
        b.restore(&serde_json::from_str(&json).unwrap()).unwrap();
        let got: Vec<_> = (7..20).flat_map(|s| b.batch(s, 8).unwrap()).collect();
        assert_eq!(got, want);
        assert_eq!(a.state(), b.state());
        // The checkpoint was written inside phase 1 (steps 0–9): moving the switch to step 15 or
        // to step 7 changes only what was not trained yet.
        for f in [0.25, 0.65] {
            let mut c = CurriculumSampler::new(
                streams(&dir.path().join(format!("c{f}"))),
                &upsample(f),
                &run(20),
                3,
            )
            .unwrap();
            c.restore(&serde_json::from_str(&json).unwrap()).unwrap();
            let switch = c.curriculum().phases[1].start;
            let mut after = 0;
            for s in 7..20 {
                let arithmetic = c.batch(s, 8).unwrap().iter().filter(|x| x.0 == 0).count();
                if s < switch {
                    assert_eq!(arithmetic, 0, "no arithmetic before step {switch}");
                } else {
                    after += arithmetic;
                }
            }
            // 40% of the upsampled phase's draws
            let expect = (20 - switch) as f64 * 8.0 * 0.4;
            assert!((after as f64 - expect).abs() <= 8.0, "{after} vs {expect}");
        }
    }

    /// Changing what was trained is refused, naming the phase.
    #[test]
    fn resume_refuses_to_rewrite_the_past() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            CurriculumSampler::new(streams(dir.path()), &upsample(0.5), &run(20), 3).unwrap();
        for step in 0..13 {
            a.batch(step, 8).unwrap();
        }
        let state = a.state();
        let calls = std::cell::Cell::new(0);
        let err = |c: Curriculum| {
            calls.set(calls.get() + 1);
            let sub = dir.path().join(format!("b{}", calls.get()));
            let mut b = CurriculumSampler::new(streams(&sub), &c, &run(20), 3).unwrap();
            b.restore(&state).unwrap_err().to_string()
        };
        // the switch (step 10) was passed: moving it is rewriting phase 1
        let e = err(upsample(0.3));
        assert!(
            e.contains("curriculum phase 1 had begun") && e.contains("ended at step 10"),
            "{e}"
        );
        // phase 2 had begun: its mix cannot change
        let mut other = upsample(0.5);
        other.phases[1].streams[2].proportion = Some(0.6);
        let e = err(other);
        assert!(
            e.contains("curriculum phase 2") && e.contains("streams"),
            "{e}"
        );
        // adding a third phase after step 13 is fine
        let mut three = upsample(0.5);
        three.phases[1].duration = Duration::batches(5);
        three.phases.push(CurriculumPhase {
            duration: Duration::batches(5),
            streams: vec![StreamSpec::plain("prose")],
            epoch_size: None,
        });
        let mut b =
            CurriculumSampler::new(streams(&dir.path().join("c")), &three, &run(20), 3).unwrap();
        b.restore(&state).unwrap();
        assert!(b.batch(16, 8).unwrap().iter().all(|x| x.0 == 2));
    }

    #[test]
    fn bad_curricula_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let s = streams(dir.path());
        let n = sizes(&s);
        let short = Curriculum {
            phases: vec![CurriculumPhase {
                duration: Duration::batches(8),
                streams: vec![StreamSpec::plain("prose")],
                epoch_size: None,
            }],
            rounding_seed: 0,
        };
        let e = short.resolve(&run(10), &n).unwrap_err().to_string();
        assert!(e.contains("last 8 steps") && e.contains("lasts 10"), "{e}");
        let web = Curriculum::constant(vec![StreamSpec::plain("web")], None);
        assert!(
            web.resolve(&run(10), &n)
                .unwrap_err()
                .to_string()
                .contains("`web`")
        );
        let mixed = Curriculum::constant(
            vec![
                StreamSpec::proportion("prose", 1.0),
                StreamSpec::repeat("code", 2.0),
            ],
            None,
        );
        let e = mixed.resolve(&run(10), &n).unwrap_err().to_string();
        assert!(
            e.starts_with("curriculum phase 1: stream 1 (`code`)"),
            "{e}"
        );
        let parsed: Curriculum = serde_json::from_str(
            r#"{"phases": [{"duration": "0.8dur", "streams": [{"name": "prose"}, {"name": "code", "repeat": 2}]},
                           {"duration": "0.2dur", "streams": [{"name": "prose", "proportion": 1}, {"name": "code", "proportion": 1}], "epoch_size": 64}]}"#,
        )
        .unwrap();
        let r = parsed.resolve(&run(10), &n).unwrap();
        assert_eq!(r.phases[1].start, 8);
        assert_eq!(r.phases[1].streams.choose, [32, 32]);
    }
}
