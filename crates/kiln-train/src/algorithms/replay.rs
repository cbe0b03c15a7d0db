//! Experience replay: a memory of earlier tasks' examples (their ids, not copies), mixed into
//! every step of later tasks — avalanche's `ReplayPlugin` with its two storage policies.

use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::Tensor;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::trainer::{Algorithm, Context, Event};

/// Which earlier examples the memory keeps (avalanche's storage policies). Both are a seeded
/// random subset: every example a task trained on gets a weight drawn from the seed, the task
/// and its id, and the highest weights stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayPolicy {
    /// avalanche's `ExperienceBalancedBuffer(adaptive_size=True)`: after t tasks each task holds
    /// `mem_size / t` examples (the first `mem_size mod t` tasks one more); a task's share
    /// shrinks by dropping its lowest weights.
    ExperienceBalanced,
    /// avalanche's `ReservoirSamplingBuffer`: the `mem_size` highest weights over every example
    /// of every task so far — a uniform random subset of the whole stream, so later (or larger)
    /// tasks hold more of the memory.
    Reservoir,
}

/// A memory entry: the task (0-based, in the order the tasks ended) and the example's id as the
/// task's [`StepOutput`](crate::StepOutput) reported it.
pub type MemoryEntry = (u32, u64);

/// Reads remembered examples again: the mean loss of `examples` under `model` (a `[1]`
/// tensor in its autodiff graph), on the same scale as the task's own loss (the mean per
/// example, or per token for a language model).
pub trait ReplaySource<M> {
    /// The loss of `examples`.
    ///
    /// # Errors
    /// A message (an id the source does not have, model errors).
    fn loss(
        &mut self,
        model: &M,
        examples: &[MemoryEntry],
    ) -> std::result::Result<Tensor<1>, String>;
}

/// Experience replay: at each task's end the examples it trained on (the ids in its step
/// outputs) enter a memory of at most `mem_size` entries ([`ReplayPolicy`]); while later tasks
/// train, every micro-batch of n current examples is joined by `batch_mem` remembered ones
/// (default n: avalanche's 1:1), drawn at random without replacement from the memory, and the
/// loss becomes `(n·L_current + m·L_memory)/(n + m)` — the mean over the joined batch, as
/// avalanche's concatenated batches give. The memory's examples are read again through a
/// [`ReplaySource`]; the memory, the ids seen in the running task and the counters are
/// checkpointed (`state.json`), and the draws are seeded by the step, so a resumed run goes on
/// bit for bit. Logged: `replay_memory` (entries) and `replay_loss`.
///
/// The task must report example ids ([`StepOutput::with_example_ids`](crate::StepOutput)).
///
/// ```
/// use kiln_train::algorithms::{MemoryEntry, Replay, ReplayPolicy, ReplaySource};
/// use kiln_train::burn::{nn::Linear, tensor::Tensor};
///
/// // Re-reads examples by (task, id): here inputs and targets held per task.
/// struct Source {
///     data: Vec<Vec<([f32; 2], f32)>>,
/// }
/// impl ReplaySource<Linear> for Source {
///     fn loss(&mut self, model: &Linear, ex: &[MemoryEntry]) -> Result<Tensor<1>, String> {
///         let d = model.weight.val().device();
///         let get = |&(t, id): &MemoryEntry| self.data[t as usize][id as usize];
///         let x: Vec<f32> = ex.iter().flat_map(|e| get(e).0).collect();
///         let y: Vec<f32> = ex.iter().map(|e| get(e).1).collect();
///         let x = Tensor::<1>::from_floats(x.as_slice(), &d).reshape([ex.len(), 2]);
///         let y = Tensor::<1>::from_floats(y.as_slice(), &d).reshape([ex.len(), 1]);
///         Ok((model.forward(x) - y).powi_scalar(2).mean())
///     }
/// }
/// let source = Source { data: vec![vec![([1.0, 2.0], 0.5); 10]] };
/// let mut replay = Replay::new(4, None, ReplayPolicy::ExperienceBalanced, 0, Box::new(source))?;
/// replay.end_task(0..10); // what `FitEnd` does with the ids task 0 reported
/// assert_eq!(replay.memory().len(), 4);
/// // in a run: `algorithms.push(Box::new(replay))`, one object for the whole task sequence
/// # Ok::<(), kiln_train::Error>(())
/// ```
pub struct Replay<M> {
    mem_size: usize,
    batch_mem: Option<usize>,
    policy: ReplayPolicy,
    seed: u64,
    /// (weight, entry), highest weight first within each task (ExperienceBalanced) or overall.
    memory: Vec<(f64, MemoryEntry)>,
    seen: BTreeSet<u64>,
    tasks: u32,
    /// Draws made in the running step (reset at `BatchStart`; part of each draw's seed).
    draws: u64,
    /// Examples of the running micro-batch.
    current: usize,
    source: Box<dyn ReplaySource<M>>,
}

impl<M> std::fmt::Debug for Replay<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("mem_size", &self.mem_size)
            .field("batch_mem", &self.batch_mem)
            .field("policy", &self.policy)
            .field("memory", &self.memory.len())
            .field("tasks", &self.tasks)
            .finish_non_exhaustive()
    }
}

/// A weight in [0, 1) for an example, from the seed, its task and its id only (so the memory does
/// not depend on the order the examples were seen in).
fn weight(seed: u64, task: u32, id: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ (u64::from(task) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ id.wrapping_mul(0xD6E8_FEB8_6659_FD93),
    );
    rng.random::<f64>()
}

fn by_weight(a: &(f64, MemoryEntry), b: &(f64, MemoryEntry)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

impl<M> Replay<M> {
    /// A memory of `mem_size` examples, `batch_mem` of them per micro-batch (none: as many as the
    /// micro-batch has), kept by `policy`, drawn from `seed`, read through `source`.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero memory or memory batch.
    pub fn new(
        mem_size: usize,
        batch_mem: Option<usize>,
        policy: ReplayPolicy,
        seed: u64,
        source: Box<dyn ReplaySource<M>>,
    ) -> Result<Self> {
        if mem_size == 0 || batch_mem == Some(0) {
            return Err(Error::Config {
                message: format!(
                    "replay: mem_size {mem_size} and batch_mem {batch_mem:?} must be at least 1"
                ),
            });
        }
        Ok(Self {
            mem_size,
            batch_mem,
            policy,
            seed,
            memory: Vec::new(),
            seen: BTreeSet::new(),
            tasks: 0,
            draws: 0,
            current: 0,
            source,
        })
    }

    /// The memory's entries, highest weight first (per task for `ExperienceBalanced`).
    pub fn memory(&self) -> Vec<MemoryEntry> {
        self.memory.iter().map(|(_, e)| *e).collect()
    }

    /// Tasks ended so far.
    pub fn tasks(&self) -> u32 {
        self.tasks
    }

    /// Ends a task whose examples had `ids`: updates the memory by the policy.
    pub fn end_task(&mut self, ids: impl IntoIterator<Item = u64>) {
        let task = self.tasks;
        let mut new: Vec<(f64, MemoryEntry)> = ids
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|id| (weight(self.seed, task, id), (task, id)))
            .collect();
        self.tasks += 1;
        match self.policy {
            ReplayPolicy::Reservoir => {
                self.memory.append(&mut new);
                self.memory.sort_by(by_weight);
                self.memory.truncate(self.mem_size);
            }
            ReplayPolicy::ExperienceBalanced => {
                let t = self.tasks as usize;
                let mut groups: BTreeMap<u32, Vec<(f64, MemoryEntry)>> = BTreeMap::new();
                for e in self.memory.drain(..).chain(new) {
                    groups.entry(e.1.0).or_default().push(e);
                }
                for (k, mut g) in groups {
                    let share = self.mem_size / t + usize::from((k as usize) < self.mem_size % t);
                    g.sort_by(by_weight);
                    g.truncate(share);
                    self.memory.extend(g);
                }
            }
        }
    }

    /// `k` memory entries for draw `draw` of step `step`, without replacement.
    pub fn draw(&self, step: u64, draw: u64, k: usize) -> Vec<MemoryEntry> {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed
                ^ step.wrapping_mul(0xA076_1D64_78BD_642F)
                ^ draw.wrapping_mul(0xE703_7ED1_A0B4_28DB),
        );
        let k = k.min(self.memory.len());
        sample(&mut rng, self.memory.len(), k)
            .into_iter()
            .map(|i| self.memory[i].1)
            .collect()
    }
}

impl<M> Algorithm<M> for Replay<M> {
    fn name(&self) -> &str {
        "replay"
    }

    fn on_event(
        &mut self,
        event: Event,
        ctx: &mut Context<'_, M>,
    ) -> std::result::Result<(), String> {
        match event {
            Event::BatchStart => self.draws = 0,
            Event::AfterForward => {
                let out = ctx.output.as_deref().ok_or("replay: no step output")?;
                let ids = out.example_ids.as_ref().ok_or(
                    "replay needs the examples' ids: the task's forward must report them (StepOutput::with_example_ids)",
                )?;
                self.current = ids.len();
                self.seen.extend(ids.iter().copied());
            }
            Event::AfterLoss => {
                if self.memory.is_empty() {
                    return Ok(());
                }
                let m = self.batch_mem.unwrap_or(self.current).max(1);
                let picked = self.draw(ctx.state.step, self.draws, m);
                self.draws += 1;
                let mem_loss = self.source.loss(ctx.model, &picked)?;
                let value = crate::trainer::scalar(&mem_loss);
                let (n, m) = (self.current as f64, picked.len() as f64);
                if let Some(out) = ctx.output.as_deref_mut() {
                    out.loss =
                        (out.loss.clone().mul_scalar(n) + mem_loss.mul_scalar(m)).div_scalar(n + m);
                }
                ctx.metrics.insert("replay_loss".into(), value);
                ctx.metrics
                    .insert("replay_memory".into(), self.memory.len() as f64);
            }
            Event::FitEnd => {
                let seen = std::mem::take(&mut self.seen);
                self.end_task(seen);
            }
            _ => {}
        }
        Ok(())
    }

    fn state(&self) -> Value {
        json!({
            "tasks": self.tasks,
            "memory": self.memory.iter().map(|(_, (t, id))| json!([t, id])).collect::<Vec<_>>(),
            "seen": self.seen,
        })
    }

    fn load_state(&mut self, state: &Value) -> std::result::Result<(), String> {
        let bad = |what: &str| format!("replay checkpoint state: {what}");
        self.tasks = state["tasks"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| bad("no task count"))?;
        let mut memory = Vec::new();
        for e in state["memory"].as_array().ok_or_else(|| bad("no memory"))? {
            let (Some(t), Some(id)) = (e[0].as_u64(), e[1].as_u64()) else {
                return Err(bad(&format!("memory entry {e} is not [task, id]")));
            };
            let t = u32::try_from(t).map_err(|_| bad("task index out of range"))?;
            memory.push((weight(self.seed, t, id), (t, id)));
        }
        self.memory = memory;
        self.seen = state["seen"]
            .as_array()
            .ok_or_else(|| bad("no seen ids"))?
            .iter()
            .map(|v| v.as_u64().ok_or_else(|| bad("a seen id is not an integer")))
            .collect::<std::result::Result<_, _>>()?;
        Ok(())
    }
}
