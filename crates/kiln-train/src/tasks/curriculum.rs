//! Causal-LM pretraining of a GPT-2 over domain streams that follow a data curriculum
//! (kiln-data's [`Curriculum`]): domain upsampling at the end of pretraining, drop-one-domain
//! ablations, and llm-foundry's rule for changing the schedule on resume.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::Device;
use kiln_data::curriculum::{Curriculum, CurriculumSampler, CurriculumState};
use kiln_data::packing::SequenceStream;
use kiln_models::gpt2::Gpt2LmHead;
use serde_json::Value;

use super::{check_lm_sets, lm_eval_loss, pad_rows};
use crate::error::{Error, Result};
use crate::step::{ModelInputs, Predictions, RunPlan, StepOutput};
use crate::trainer::{BatchSize, DataSize, TrainState, TrainTask};

/// Settings of a [`CurriculumLmTask`].
#[derive(Debug, Clone, PartialEq)]
pub struct CurriculumLmConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// The phases of data mixes, resolved against the trainer's run length.
    pub curriculum: Curriculum,
    /// Seed of the epoch orders.
    pub seed: u64,
    /// Repeat factor (tokens drawn per distinct token, per phase and domain) above which a
    /// warning is printed.
    pub repeat_warning: f64,
}

impl CurriculumLmConfig {
    /// `batch_size` sequences per micro-batch following `curriculum`; seed 0, warning above 4
    /// repeats.
    pub fn new(batch_size: usize, curriculum: Curriculum) -> Self {
        Self {
            batch_size,
            curriculum,
            seed: 0,
            repeat_warning: 4.0,
        }
    }
}

/// GPT-2 pretraining on sequences drawn from named domain streams by a [`CurriculumSampler`]:
/// each phase's epochs have streaming's exact per-domain counts, every batch mixes domains,
/// the step's log line carries the phase and per-domain tokens, passes and repeat factors,
/// and a checkpoint saves the schedule so that a resumed run may change only the phases that
/// had not begun ([`ResolvedCurriculum::check_resume`](kiln_data::curriculum::ResolvedCurriculum::check_resume)).
///
/// Evaluation reports `loss`/`perplexity` on the main held-out set and `{name}_loss` /
/// `{name}_perplexity` for each set added with [`with_eval_set`](Self::with_eval_set)
/// (one per domain, typically).
pub struct CurriculumLmTask {
    streams: BTreeMap<String, SequenceStream>,
    sampler: Option<CurriculumSampler>,
    config: CurriculumLmConfig,
    eval: Vec<Vec<u32>>,
    extra_eval: Vec<(String, Vec<Vec<u32>>)>,
    device: Device,
    checked: bool,
}

impl CurriculumLmTask {
    /// A task over `streams` (one per domain the curriculum names) with held-out `eval`
    /// sequences.
    ///
    /// # Errors
    /// [`Error::Config`] for no streams, an empty evaluation set, a zero batch size or an
    /// evaluation sequence of fewer than 2 tokens.
    pub fn new(
        streams: BTreeMap<String, SequenceStream>,
        eval: Vec<Vec<u32>>,
        config: CurriculumLmConfig,
        device: &Device,
    ) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if streams.is_empty() || eval.is_empty() || config.batch_size == 0 {
            return bad("curriculum LM task: the streams, the evaluation set and the batch size must not be empty".into());
        }
        if let Some(i) = eval.iter().position(|s| s.len() < 2) {
            return bad(format!(
                "curriculum LM task: evaluation sequence {i} has fewer than 2 tokens (nothing to predict)"
            ));
        }
        Ok(Self {
            streams,
            sampler: None,
            config,
            eval,
            extra_eval: Vec::new(),
            device: device.clone(),
            checked: false,
        })
    }

    /// Adds a named held-out set (`{name}_loss`, `{name}_perplexity`).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty set, a short sequence, or a name that is empty, not
    /// `[A-Za-z0-9_]` or already used.
    pub fn with_eval_set(mut self, name: &str, seqs: Vec<Vec<u32>>) -> Result<Self> {
        let bad = |message: String| Err(Error::Config { message });
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return bad(format!(
                "curriculum LM task: evaluation set name `{name}` must be non-empty letters, digits or `_` (it prefixes metric names)"
            ));
        }
        if self.extra_eval.iter().any(|(n, _)| n == name) {
            return bad(format!(
                "curriculum LM task: evaluation set `{name}` was added twice"
            ));
        }
        if seqs.is_empty() || seqs.iter().any(|s| s.len() < 2) {
            return bad(format!(
                "curriculum LM task: evaluation set `{name}` is empty or has a sequence of fewer than 2 tokens"
            ));
        }
        self.extra_eval.push((name.to_owned(), seqs));
        self.checked = false;
        Ok(self)
    }

    /// The sampler (per-phase, per-domain counts), once the trainer prepared the run.
    pub fn sampler(&self) -> Option<&CurriculumSampler> {
        self.sampler.as_ref()
    }

    fn sampler_mut(&mut self) -> Result<&mut CurriculumSampler> {
        self.sampler.as_mut().ok_or_else(|| Error::Config {
            message: "curriculum LM task used before the trainer prepared it (TrainTask::prepare)"
                .into(),
        })
    }

    fn seq_len(&self) -> usize {
        self.streams
            .values()
            .map(|s| s.sequences().packing().seq_len)
            .max()
            .unwrap_or(0)
    }
}

impl TrainTask<Gpt2LmHead> for CurriculumLmTask {
    type Batch = Vec<Vec<u32>>;

    fn data_size(&self) -> DataSize {
        DataSize {
            steps_per_epoch: None,
            samples_per_step: Some(self.config.batch_size as u64),
            tokens_per_step: Some((self.config.batch_size * self.seq_len()) as u64),
        }
    }

    fn prepare(&mut self, run: &RunPlan) -> Result<()> {
        let mut sampler = CurriculumSampler::new(
            self.streams.clone(),
            &self.config.curriculum,
            &run.size,
            self.config.seed,
        )?;
        sampler.repeat_warning = self.config.repeat_warning;
        self.sampler = Some(sampler);
        Ok(())
    }

    fn next_batch(
        &mut self,
        state: &TrainState,
        _: usize,
        _: usize,
    ) -> Result<(Vec<Vec<u32>>, BatchSize)> {
        let n = self.config.batch_size;
        let sampler = self.sampler_mut()?;
        let seqs: Vec<Vec<u32>> = sampler
            .batch(state.step, n)?
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        for w in sampler.take_warnings() {
            eprintln!("warning: {w}");
        }
        let tokens = seqs.iter().map(|s| s.len() as u64).sum();
        Ok((
            seqs,
            BatchSize {
                samples: n as u64,
                tokens,
            },
        ))
    }

    /// The mean next-token cross-entropy over real targets, the next-token logits with their
    /// targets, and the inputs (sequences come from endless streams: no example ids).
    fn forward(&mut self, model: &Gpt2LmHead, seqs: Vec<Vec<u32>>) -> Result<StepOutput> {
        if !self.checked {
            check_lm_sets(model, [("training".to_owned(), &seqs)])?;
        }
        let rows: Vec<&Vec<u32>> = seqs.iter().collect();
        let (ids, mask) = pad_rows(&rows, &self.device);
        let (loss, logits, targets) = model.loss_with_logits(ids.clone(), Some(mask.clone()));
        let per_seq = ids.dims()[1] - 1;
        let example_of_row: Vec<usize> = (0..logits.dims()[0]).map(|r| r / per_seq).collect();
        Ok(StepOutput::new(loss)
            .with_predictions(Predictions::rows(logits, targets, example_of_row)?)
            .with_inputs(ModelInputs {
                input_ids: ids,
                attention_mask: Some(mask),
                token_type_ids: None,
            }))
    }

    /// `loss` and `perplexity` on the main held-out set, `{name}_loss` and
    /// `{name}_perplexity` on each named one.
    fn evaluate(&mut self, model: &Gpt2LmHead, _: &TrainState) -> Result<BTreeMap<String, f64>> {
        if !self.checked {
            let sets = std::iter::once(("evaluation".to_owned(), &self.eval)).chain(
                self.extra_eval
                    .iter()
                    .map(|(n, s)| (format!("evaluation set `{n}`"), s)),
            );
            check_lm_sets(model, sets)?;
            self.checked = true;
        }
        let valid = model.valid();
        let device = self.device.clone().inner();
        let b = self.config.batch_size;
        let loss = lm_eval_loss(&valid, &self.eval, b, &device);
        let mut out = BTreeMap::from([
            ("loss".to_owned(), loss),
            ("perplexity".to_owned(), loss.exp()),
        ]);
        for (name, seqs) in &self.extra_eval {
            let loss = lm_eval_loss(&valid, seqs, b, &device);
            out.insert(format!("{name}_loss"), loss);
            out.insert(format!("{name}_perplexity"), loss.exp());
        }
        Ok(out)
    }

    /// `phase` (1-based); per domain `tokens/{d}` and `epochs/{d}` over the run, and in the
    /// current phase `phase_tokens/{d}`, `phase_unique_tokens/{d}` (tokens of the distinct
    /// sequences drawn) and `repeat/{d}` (their ratio, the repeat factor).
    fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        if let Some(s) = &self.sampler {
            if let Some(p) = s.phase() {
                m.insert("phase".to_owned(), (p + 1) as f64);
                for (name, st) in &s.phase_stats()[p] {
                    m.insert(format!("repeat/{name}"), st.repeat());
                    m.insert(format!("phase_tokens/{name}"), st.tokens as f64);
                    m.insert(
                        format!("phase_unique_tokens/{name}"),
                        st.unique_tokens as f64,
                    );
                }
            }
            for (name, st) in s.stats() {
                m.insert(format!("tokens/{name}"), st.tokens as f64);
                m.insert(format!("epochs/{name}"), st.epochs);
            }
        }
        m
    }

    fn epoch(&self) -> f64 {
        self.sampler.as_ref().map_or(0.0, |s| {
            s.stats().values().map(|s| s.epochs).fold(0.0, f64::max)
        })
    }

    fn data_state(&self) -> Value {
        self.sampler.as_ref().map_or(Value::Null, |s| {
            serde_json::to_value(s.state()).expect("state serialises")
        })
    }

    /// Restores the sampler, refusing a curriculum that changes a phase already trained on.
    fn restore_data_state(&mut self, state: &Value) -> Result<()> {
        let s: CurriculumState =
            serde_json::from_value(state.clone()).map_err(|e| Error::Config {
                message: format!("checkpointed curriculum state: {e}"),
            })?;
        self.sampler_mut()?.restore(&s)?;
        Ok(())
    }
}
