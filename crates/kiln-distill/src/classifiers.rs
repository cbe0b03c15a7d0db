//! Teachers for kiln-models' classifiers (feature `models`): a BERT sequence classifier answering
//! from the batch's token inputs, and an image classifier answering by example id from the image
//! set the task trains on — the rows kiln-train's `ClassificationTask` and
//! `ImageClassificationTask` hand out (one per example).

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use kiln_data::images::ImageSet;
use kiln_models::bert::BertForSequenceClassification;
use kiln_models::vision::ImageClassifier;
use kiln_train::StepOutput;
use kiln_train::tasks::image_batch;

use crate::distill::Teacher;

fn check_classes(output: &StepOutput, teacher: usize) -> std::result::Result<(), String> {
    if let Some(p) = &output.predictions {
        let student = p.logits.dims()[1];
        if student != teacher {
            return Err(format!(
                "the teacher has {teacher} classes and the student {student}: distillation needs the same label set"
            ));
        }
    }
    Ok(())
}

fn constant(t: Tensor<2>, device: &Device) -> Tensor<2> {
    Tensor::from_inner(t)
        .to_device(device)
        .set_require_grad(false)
}

/// A BERT / MosaicBERT sequence classifier as a teacher (evaluation mode, no autodiff), run on
/// the micro-batch's `input_ids` and `attention_mask`.
pub struct BertClassifierTeacher {
    model: BertForSequenceClassification,
}

impl BertClassifierTeacher {
    /// A teacher from a classifier in memory (the previous run's), switched to evaluation mode.
    pub fn new(model: BertForSequenceClassification) -> Self {
        Self {
            model: model.valid(),
        }
    }
}

impl Teacher for BertClassifierTeacher {
    fn logits(
        &mut self,
        output: &StepOutput,
        device: &Device,
        _: u64,
    ) -> std::result::Result<Tensor<2>, String> {
        let inputs = output
            .inputs
            .as_ref()
            .ok_or("a BERT teacher needs the batch's inputs (StepOutput::with_inputs)")?;
        let logits = self.model.forward(
            inputs.input_ids.clone().inner(),
            inputs.token_type_ids.clone().map(Tensor::inner),
            inputs.attention_mask.clone().map(Tensor::inner),
        );
        check_classes(output, logits.dims()[1])?;
        Ok(constant(logits, device))
    }
}

/// An image classifier as a teacher (evaluation mode, no autodiff), reading the micro-batch's
/// images by example id from `set` (the set the task trains on: its ids are indices into it).
pub struct ImageTeacher {
    model: ImageClassifier,
    set: Arc<ImageSet>,
}

impl ImageTeacher {
    /// A teacher from a classifier in memory and the image set of the task.
    pub fn new(model: ImageClassifier, set: Arc<ImageSet>) -> Self {
        Self {
            model: model.valid(),
            set,
        }
    }
}

impl Teacher for ImageTeacher {
    fn logits(
        &mut self,
        output: &StepOutput,
        device: &Device,
        _: u64,
    ) -> std::result::Result<Tensor<2>, String> {
        let ids: Vec<usize> = output
            .example_ids
            .as_ref()
            .ok_or("an image teacher reads the images by example id: the task must report them")?
            .iter()
            .map(|&i| i as usize)
            .collect();
        if let Some(&i) = ids.iter().find(|&&i| i >= self.set.len()) {
            return Err(format!(
                "example {i} is not in the teacher's image set `{}` ({} images)",
                self.set.name,
                self.set.len()
            ));
        }
        let d = crate::gpt2::first_device(&self.model);
        let (x, _) = image_batch(&self.set, &ids, &d);
        let logits = self.model.forward(x).map_err(|e| e.to_string())?;
        check_classes(output, logits.dims()[1])?;
        Ok(constant(logits, device))
    }
}
