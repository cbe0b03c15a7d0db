//! A task sequence on the built-in digits (original → rotated → permuted) with an MLP:
//! `run_sequence` writes the score matrix, its metrics and a heatmap; replay and EWC run on the
//! image sources and replay retains the first task better than plain fine-tuning.

use std::sync::Arc;

use kiln_data::images::{ImageSet, ImageTransform};
use kiln_models::vision::{ImageClassifier, ImageShape, MlpConfig, VisionConfig};
use kiln_schedules::Duration;
use kiln_train::algorithms::{Ewc, EwcMode, FisherEstimator, PenaltyScale, Replay, ReplayPolicy};
use kiln_train::burn::tensor::Device;
use kiln_train::continual::{Metric, Stage, run_sequence, transfer_metrics};
use kiln_train::tasks::{
    ImageClassificationTask, ImageFisherData, ImageReplaySource, evaluate_images,
};
use kiln_train::{Algorithm, OptimizerConfig, TrainerConfig};

struct Setup {
    sets: Vec<Arc<ImageSet>>,
    train: Vec<usize>,
    test: Vec<usize>,
}

fn setup() -> Setup {
    let digits = ImageSet::digits().unwrap();
    let (train, test) = digits.split(0.25, 0);
    let sets = [
        None,
        Some(ImageTransform::Rotate90 { k: 1 }),
        Some(ImageTransform::Permute { seed: 7 }),
    ]
    .into_iter()
    .map(|t| Arc::new(t.map_or_else(|| digits.clone(), |t| digits.transformed(t).unwrap())))
    .collect();
    Setup { sets, train, test }
}

fn model(device: &Device) -> ImageClassifier {
    device.seed(3);
    let config = VisionConfig::Mlp(MlpConfig {
        input: ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        },
        hidden: vec![64],
        classes: 10,
    });
    ImageClassifier::init(&config, device).unwrap()
}

fn run(
    dir: &std::path::Path,
    s: &Setup,
    algorithms: &mut [Box<dyn Algorithm<ImageClassifier>>],
) -> kiln_train::continual::SequenceOutcome<ImageClassifier> {
    let device = Device::flex().autodiff();
    let mut trainer = TrainerConfig::new(Duration::batches(60), OptimizerConfig::adamw(3e-3, 0.0));
    trainer.progress_bar = false;
    trainer.save_interval = Some(Duration::batches(60));
    let mut stages: Vec<Stage<ImageClassificationTask>> = s
        .sets
        .iter()
        .enumerate()
        .map(|(i, set)| Stage {
            name: ["original", "rotated", "permuted"][i].to_owned(),
            task: ImageClassificationTask::new(
                set.clone(),
                s.train.clone(),
                s.test.clone(),
                32,
                i as u64,
                &device,
            )
            .unwrap(),
            trainer: trainer.clone(),
        })
        .collect();
    let sets = s.sets.clone();
    let test = s.test.clone();
    let mut score = |m: &ImageClassifier, j: usize| Ok(evaluate_images(m, &sets[j], &test, 256)?.0);
    run_sequence(
        dir,
        model(&device),
        &mut stages,
        algorithms,
        &device,
        Metric {
            name: "accuracy",
            higher_is_better: true,
        },
        &mut score,
    )
    .unwrap()
}

#[test]
fn a_digits_sequence_writes_its_matrix_and_replay_retains_more() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let plain = run(&tmp.path().join("plain"), &s, &mut []);
    let r = &plain.report;
    assert_eq!(r.matrix.len(), 3);
    // each task is learned when it is trained (10 classes: chance is 0.1)
    for i in 0..3 {
        assert!(
            r.matrix[i][i] > 0.8,
            "task {i} after its stage: {}",
            r.matrix[i][i]
        );
        assert!(
            r.baseline[i] < 0.3,
            "task {i} before training: {}",
            r.baseline[i]
        );
    }
    // the metrics are the formulas' on the written matrix
    let m = transfer_metrics(&r.matrix, Some(&r.baseline)).unwrap();
    assert_eq!(m, r.metrics);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("plain/sequence.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["tasks"][2], "permuted");
    assert_eq!(json["metrics"]["acc"].as_f64().unwrap(), r.metrics.acc);
    let svg = std::fs::read_to_string(tmp.path().join("plain/sequence.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("after rotated"));
    assert_eq!(plain.stage_models.len(), 3);

    // replay and EWC on the image sources
    let device = Device::flex().autodiff();
    let replay = Replay::new(
        200,
        None,
        ReplayPolicy::ExperienceBalanced,
        0,
        Box::new(ImageReplaySource::new(s.sets.clone(), &device)),
    )
    .unwrap();
    let mut with_replay: Vec<Box<dyn Algorithm<ImageClassifier>>> = vec![Box::new(replay)];
    let replayed = run(&tmp.path().join("replay"), &s, &mut with_replay);
    let forgot =
        |o: &kiln_train::continual::SequenceOutcome<ImageClassifier>| o.report.matrix[2][0];
    assert!(
        forgot(&replayed) > forgot(&plain) + 0.05,
        "task 0 at the end: replay {} vs plain {}",
        forgot(&replayed),
        forgot(&plain)
    );
    let mut ewc = Ewc::new(
        50.0,
        PenaltyScale::Half,
        FisherEstimator::ExactN(100),
        EwcMode::Online { gamma: 1.0 },
        0,
    )
    .unwrap();
    for set in &s.sets {
        ewc.push_task_data(Box::new(ImageFisherData::new(
            set.clone(),
            s.train.clone(),
            &device,
        )));
    }
    let mut with_ewc: Vec<Box<dyn Algorithm<ImageClassifier>>> = vec![Box::new(ewc)];
    let ewc_run = run(&tmp.path().join("ewc"), &s, &mut with_ewc);
    let log = std::fs::read_to_string(tmp.path().join("ewc/stage-1/metrics.jsonl")).unwrap();
    assert!(
        log.contains("ewc_penalty"),
        "EWC's penalty is logged in task 2"
    );
    assert!(ewc_run.report.matrix[2][0].is_finite());
}
