//! The cost of scoring every example during training: one image-classification step on the UCI
//! digits (batch 64) through kiln-train, plain or with `TrainingScores`, for kiln-models' MLP and
//! small ResNet on burn's flex CPU backend. One configuration per process.
//!
//! `cargo bench -p kiln-scoring --bench score_step -- mlp|resnet plain|scores` prints one JSON
//! object (step times from `BatchStart` to `BatchEnd`); `cargo xtask bench scoring` runs them
//! alternating and records them in docs/BENCHMARKS.md.

use std::sync::Arc;

use kiln_data::images::ImageSet;
use kiln_models::vision::{ImageClassifier, ImageShape, MlpConfig, ResNetConfig, VisionConfig};
use kiln_schedules::Duration;
use kiln_scoring::train::TrainingScores;
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::ImageClassificationTask;
use kiln_train::timing::StepClock;
use kiln_train::{Algorithm, OptimizerConfig, Trainer, TrainerConfig};

const BATCH: usize = 64;
const STEPS: u64 = 201;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (arch, mode) = match args.as_slice() {
        [a, m]
            if ["mlp", "resnet"].contains(&a.as_str())
                && ["plain", "scores"].contains(&m.as_str()) =>
        {
            (a.clone(), m.clone())
        }
        _ => return Err("usage: score_step mlp|resnet plain|scores".into()),
    };
    let input = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    let config = if arch == "mlp" {
        VisionConfig::Mlp(MlpConfig {
            input,
            hidden: vec![64],
            classes: 10,
        })
    } else {
        VisionConfig::Resnet(ResNetConfig {
            input,
            widths: vec![8, 16],
            blocks: 1,
            classes: 10,
        })
    };
    let d = Device::flex().autodiff();
    d.seed(0);
    let set = Arc::new(ImageSet::digits()?);
    let (train, test) = set.split(0.25, 0);
    let mut task = ImageClassificationTask::new(set.clone(), train, test, BATCH, 0, &d)?;
    let clock = StepClock::new();
    let times = clock.handle();
    let mut algorithms: Vec<Box<dyn Algorithm<ImageClassifier>>> = vec![Box::new(clock)];
    if mode == "scores" {
        algorithms.push(Box::new(TrainingScores::new(set.len())));
    }
    let mut tc = TrainerConfig::new(Duration::batches(STEPS), OptimizerConfig::adamw(3e-3, 0.0));
    tc.progress_bar = false;
    tc.autoresume = false;
    let dir = tempfile::tempdir()?;
    Trainer::new(tc, dir.path()).fit(
        ImageClassifier::init(&config, &d)?,
        &mut task,
        &mut algorithms,
        &d,
    )?;
    let t = times.borrow();
    println!(
        "{}",
        serde_json::json!({ "arch": arch, "mode": mode, "batch": BATCH, "step_s": *t })
    );
    Ok(())
}
