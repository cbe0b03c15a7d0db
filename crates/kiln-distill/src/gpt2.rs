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
