//! `TrainingScores` during real training (an MLP on the UCI digits through kiln-train's
//! `ImageClassificationTask`): scores land on the example ids the shuffled batches carry, every
//! example is measured once per epoch, and the tracker survives a checkpoint round trip.

#![cfg(feature = "train")]

use std::sync::Arc;

use kiln_data::images::ImageSet;
use kiln_models::burn::module::Module;
use kiln_models::burn::tensor::Device;
use kiln_models::vision::{ImageClassifier, ImageShape, MlpConfig, VisionConfig};
use kiln_schedules::Duration;
use kiln_scoring::train::TrainingScores;
use kiln_scoring::{Pointwise, SCORES};
use kiln_train::tasks::{ImageClassificationTask, image_batch};
use kiln_train::{Algorithm, OptimizerConfig, Trainer, TrainerConfig};

/// burn's generator is per process and the trainer reseeds it: these tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn model(device: &Device) -> ImageClassifier {
    device.seed(3);
    let config = VisionConfig::Mlp(MlpConfig {
        input: ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        },
        hidden: vec![32],
        classes: 10,
    });
    ImageClassifier::init(&config, device).unwrap()
}

/// 200 training images, batches of 20, `batches` steps at learning rate `lr`.
fn run(lr: f64, batches: usize) -> (ImageClassifier, TrainingScores, Arc<ImageSet>) {
    let d = Device::flex().autodiff();
    let set = Arc::new(ImageSet::digits().unwrap());
    let train: Vec<usize> = (0..200).collect();
    let mut task =
        ImageClassificationTask::new(set.clone(), train, (200..260).collect(), 20, 5, &d).unwrap();
    let clock = kiln_train::timing::StepClock::new();
    let times = clock.handle();
    let mut algorithms: Vec<Box<dyn Algorithm<ImageClassifier>>> =
        vec![Box::new(TrainingScores::new(200)), Box::new(clock)];
    let mut tc = TrainerConfig::new(
        Duration::batches(batches as u64),
        OptimizerConfig::adamw(lr, 0.0),
    );
    tc.progress_bar = false;
    let dir = tempfile::tempdir().unwrap();
    let out = Trainer::new(tc, dir.path())
        .fit(model(&d), &mut task, &mut algorithms, &d)
        .unwrap();
    assert_eq!(
        times.borrow().len(),
        batches,
        "kiln_train's StepClock times every step"
    );
    let state = algorithms[0].state();
    let mut scores = TrainingScores::new(200);
    Algorithm::<ImageClassifier>::load_state(&mut scores, &state).unwrap();
    (out.model, scores, set)
}

#[test]
fn scores_land_on_the_example_ids_of_shuffled_batches() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // learning rate 1e-12 (the trainer refuses 0): every presentation of an example gives the
    // (practically) frozen model's own scores
    let (model, scores, set) = run(1e-12, 40);
    let valid = model.valid();
    let plain = Device::flex();
    for id in [0usize, 17, 123, 199] {
        let e = scores.tracker().example(id);
        assert_eq!(
            e.scores[0].count(),
            4,
            "4 epochs of 10 batches: example {id} seen 4 times"
        );
        let (images, labels) = image_batch(&set, &[id], &plain);
        let logits: Vec<f64> = valid
            .forward(images)
            .unwrap()
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap();
        let label = labels
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap()[0] as usize;
        let want = Pointwise::of(&logits, label, id).unwrap();
        for name in SCORES {
            let w = e.score(name).unwrap();
            let (got, want) = (w.mean().unwrap(), want.get(name).unwrap());
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "example {id} {name}: {got} vs {want}"
            );
            assert!(
                w.variance().unwrap() < 1e-10,
                "{name} varies on a frozen model"
            );
        }
    }
}

#[test]
fn scores_follow_learning_and_forgetting_events_are_counted() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (_, scores, _) = run(3e-3, 80);
    let t = scores.tracker();
    assert!(
        t.examples().iter().all(|e| e.forgetting.len() == 8),
        "8 epochs each"
    );
    let learned = t
        .examples()
        .iter()
        .filter(|e| e.forgetting.first_learn() < 8)
        .count();
    assert!(
        learned > 150,
        "{learned} of 200 examples ever classified right"
    );
    // the state JSON round trip (as in a checkpoint) keeps every accumulator
    let mut copy = TrainingScores::new(200);
    let state = Algorithm::<ImageClassifier>::state(&scores);
    Algorithm::<ImageClassifier>::load_state(&mut copy, &state).unwrap();
    assert_eq!(copy.tracker(), scores.tracker());
    let e =
        Algorithm::<ImageClassifier>::load_state(&mut TrainingScores::new(10), &state).unwrap_err();
    assert!(e.contains("200"), "{e}");
}
