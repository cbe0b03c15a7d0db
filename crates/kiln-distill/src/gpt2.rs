//! A GPT-2 teacher for causal language models (feature `models`): the previous run's model, live
//! or loaded from its checkpoint, answering the rows kiln-train's `CausalLmTask` hands out.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use kiln_models::LoadOptions;
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_train::StepOutput;

use crate::distill::Teacher;
use crate::error::{Error, Result};

/// A GPT-2 teacher: next-token logits for every position but the last of each sequence, the
/// rows of `CausalLmTask`'s predictions (`b·(L−1) + i` predicts token `i + 1`). Runs in
/// evaluation mode without autodiff (`valid()`), its FLOPs counted as
/// `Gpt2Config::flops_per_token × tokens`.
pub struct Gpt2Teacher {
    model: Gpt2LmHead,
    flops: Option<f64>,
}

impl Gpt2Teacher {
    /// A live teacher (a model in memory: the previous run's result, or a bigger model). It is
    /// switched to evaluation mode (no autodiff, no dropout).
    pub fn new(model: Gpt2LmHead) -> Self {
        Self {
            model: model.valid(),
            flops: None,
        }
    }

    /// A teacher from a Hugging Face GPT-2 directory (what `kiln` and transformers save).
    ///
    /// # Errors
    /// kiln-models' loading errors, as [`Error::Config`].
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let model =
            Gpt2LmHead::load(dir, device, LoadOptions::default()).map_err(|e| Error::Config {
                message: format!("teacher: {e}"),
            })?;
        Ok(Self::new(model))
    }

    /// A teacher from a kiln-train checkpoint (`checkpoints/step-N/`, whose `model.bpk` holds the
    /// student's weights), given the model's config.
    ///
    /// # Errors
    /// [`Error::Config`] when the checkpoint does not hold a model of `config`'s shape.
    pub fn from_training_checkpoint(
        step_dir: impl AsRef<Path>,
        config: &Gpt2Config,
        device: &Device,
    ) -> Result<Self> {
        let step_dir = step_dir.as_ref();
        let bad = |m: String| Error::Config {
            message: format!("teacher checkpoint {}: {m}", step_dir.display()),
        };
        let model = Gpt2LmHead::init(config, device).map_err(|e| bad(e.to_string()))?;
        let model = model
            .try_load_file(step_dir.join(kiln_train::checkpoint::MODEL_FILE))
            .map_err(|e| {
                bad(format!(
                    "{e} (is it a checkpoint of a model with this config?)"
                ))
            })?;
        Ok(Self::new(model))
    }

    /// The teacher's vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.model.transformer.config.vocab_size
    }
}

impl Teacher for Gpt2Teacher {
    fn logits(
        &mut self,
        output: &StepOutput,
        device: &Device,
        _: u64,
    ) -> std::result::Result<Tensor<2>, String> {
        let inputs = output
            .inputs
            .as_ref()
            .ok_or("a live GPT-2 teacher needs the batch's inputs (StepOutput::with_inputs)")?;
        let ids = inputs.input_ids.clone().inner();
        let [b, l] = ids.dims();
        let mask = inputs.attention_mask.clone().map(Tensor::inner);
        let logits = self.model.forward(ids, mask, None); // [B, L, V]
        let v = logits.dims()[2];
        if let Some(p) = &output.predictions {
            let student_v = p.logits.dims()[1];
            if student_v != v {
                return Err(format!(
                    "the teacher's vocabulary has {v} entries and the student's {student_v}: distillation needs the same tokenizer and vocabulary size"
                ));
            }
        }
        let c = &self.model.transformer.config;
        self.flops = Some(c.flops_per_token(l) * (b * l) as f64);
        let rows = logits.narrow(1, 0, l - 1).reshape([b * (l - 1), v]);
        Ok(Tensor::from_inner(rows)
            .to_device(device)
            .set_require_grad(false))
    }

    fn last_flops(&self) -> Option<f64> {
        self.flops
    }
}

/// Captures `teacher`'s top-k log-probabilities over `seqs` (every sequence of the same length
/// L; L − 1 rows each, the rows `CausalLmTask` hands out) into a cache at `dir`, in batches of
/// `batch` sequences, calling `progress(done, total)` after each. `spec.vocab_size` and
/// `spec.rows_per_example` must be the teacher's and L − 1. Example `i` of the cache is
/// `seqs[i]`: the run must use the same sequences in the same order as its training set (the
/// data fingerprint checks it).
///
/// # Errors
/// [`Error::Config`] for sequences of other lengths, an empty set or a spec that does not fit
/// the teacher; the cache's errors.
pub fn capture(
    teacher: &mut Gpt2Teacher,
    seqs: &[Vec<u32>],
    spec: crate::cache::CacheSpec,
    dir: impl AsRef<Path>,
    batch: usize,
    force: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<std::path::PathBuf> {
    let bad = |message: String| Err(Error::Config { message });
    let Some(first) = seqs.first() else {
        return bad("capture: no sequence".into());
    };
    let l = first.len();
    if l < 2 || batch == 0 {
        return bad(format!(
            "capture: sequences of {l} tokens (need ≥ 2) or a zero batch"
        ));
    }
    if let Some(i) = seqs.iter().position(|s| s.len() != l) {
        return bad(format!(
            "capture: sequence {i} has {} tokens, the first {l}; a cache holds one length (pack the data first)",
            seqs[i].len()
        ));
    }
    if spec.vocab_size != teacher.vocab_size() || spec.rows_per_example != l - 1 {
        return bad(format!(
            "capture: the spec says vocabulary {} and {} rows per example; the teacher has {} and the sequences give {}",
            spec.vocab_size,
            spec.rows_per_example,
            teacher.vocab_size(),
            l - 1
        ));
    }
    let device = first_device(&teacher.model);
    let mut w = crate::cache::CacheWriter::create(dir, spec, force)?;
    for (c, chunk) in seqs.chunks(batch).enumerate() {
        let ids: Vec<i64> = chunk.iter().flatten().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(ids, [chunk.len(), l]),
            &device,
        );
        let logits = teacher.model.forward(ids, None, None);
        let v = logits.dims()[2];
        for (i, s) in chunk.iter().enumerate() {
            let rows = logits
                .clone()
                .slice([i..i + 1, 0..l - 1, 0..v])
                .reshape([l - 1, v]);
            w.push(s, rows)?;
        }
        progress((c * batch + chunk.len()).min(seqs.len()), seqs.len());
    }
    w.finish()
}

/// The device of a module's first parameter (the flex CPU device for a module without any).
pub(crate) fn first_device<M: Module>(m: &M) -> Device {
    kiln_train::params::float_params(m)
        .first()
        .map_or_else(Device::flex, |(_, t)| t.device())
}
