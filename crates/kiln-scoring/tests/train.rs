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
use kiln_scoring::train::{ScoreOn, TrainingScores};
use kiln_scoring::{Pointwise, SCORES, ScoreTracker};
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

/// Stops the run (an error) after the checkpoint at step `at`.
struct StopAt(u64);
impl<M> Algorithm<M> for StopAt {
    fn name(&self) -> &str {
        "stop"
    }
    fn on_event(
        &mut self,
        e: kiln_train::Event,
        ctx: &mut kiln_train::Context<'_, M>,
    ) -> Result<(), String> {
        if e == kiln_train::Event::Checkpoint && ctx.state.step == self.0 {
            return Err("stopped".into());
        }
        Ok(())
    }
}

/// A tiny GPT-2 (vocabulary 97) trained 9 steps on 12 sequences of 5–11 tokens (batch 4, so
/// padded rows are ignored), scored on `on`; stopped after the step-`stop` checkpoint and
/// resumed in a fresh trainer and algorithm when given.
fn lm_run(on: ScoreOn, stop: Option<u64>) -> TrainingScores {
    use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
    use kiln_train::tasks::CausalLmTask;
    let d = Device::flex().autodiff();
    let seqs: Vec<Vec<u32>> = (0..12u32)
        .map(|i| (0..5 + i % 7).map(|t| (i * 31 + t * 17) % 97).collect())
        .collect();
    let mut tc = TrainerConfig::new(Duration::batches(9), OptimizerConfig::adamw(3e-3, 0.0));
    tc.progress_bar = false;
    tc.save_interval = Some(Duration::batches(3));
    tc.seed = 4;
    let dir = tempfile::tempdir().unwrap();
    let model = || {
        d.seed(11);
        Gpt2LmHead::init(&Gpt2Config::tiny(), &d).unwrap()
    };
    let task = || CausalLmTask::new(seqs.clone(), seqs[..2].to_vec(), 4, 2, &d).unwrap();
    let make = || -> Vec<Box<dyn Algorithm<Gpt2LmHead>>> {
        vec![Box::new(TrainingScores::new(12).score_on(on))]
    };
    let mut algorithms = make();
    if let Some(at) = stop {
        algorithms.push(Box::new(StopAt(at)));
        let e = Trainer::new(tc.clone(), dir.path())
            .fit(model(), &mut task(), &mut algorithms, &d)
            .unwrap_err();
        assert!(e.to_string().contains("stopped"), "{e}");
        algorithms = make(); // a new process: the scores come back from the checkpoint
    }
    Trainer::new(tc, dir.path())
        .fit(model(), &mut task(), &mut algorithms, &d)
        .unwrap();
    let mut scores = TrainingScores::new(12);
    Algorithm::<Gpt2LmHead>::load_state(&mut scores, &algorithms[0].state()).unwrap();
    scores
}

#[test]
fn language_model_tokens_are_scored_per_sequence_on_the_device_and_survive_a_resume() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let host = lm_run(ScoreOn::Host, None);
    let device = lm_run(ScoreOn::Device, None);
    for (id, (h, g)) in host
        .tracker()
        .examples()
        .iter()
        .zip(device.tracker().examples())
        .enumerate()
    {
        assert_eq!(
            h.scores[0].count(),
            3,
            "9 steps × 4 of 12 sequences: 3 epochs"
        );
        for name in SCORES {
            let (a, b) = (
                h.score(name).unwrap().mean().unwrap(),
                g.score(name).unwrap().mean().unwrap(),
            );
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "sequence {id} {name}: host {a}, device {b}"
            );
        }
        assert_eq!(h.forgetting, g.forgetting, "sequence {id}");
    }
    // killed after the step-6 checkpoint and resumed: every accumulator as if uninterrupted
    let resumed = lm_run(ScoreOn::Device, Some(6));
    assert_eq!(resumed.tracker(), device.tracker());
}

#[test]
fn packed_documents_are_scored_as_documents() {
    use kiln_data::corpus::{Domain, documents};
    use kiln_data::packing::{Grouping, PackedSequences, Packing};
    use kiln_data::shards::{TokenShard, write_shard};
    use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
    use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
    use kiln_train::IGNORE_INDEX;
    use kiln_train::tasks::CausalLmTask;
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // 10 short documents packed into sequences of 16 tokens (documents cross sequences)
    let docs: Vec<String> = documents(Domain::Arithmetic, 3, 0, 10);
    let tok = Tokenizer::train(
        TokenizerKind::WordPiece,
        docs.iter().map(String::as_str),
        200,
        1,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_shard(
        tmp.path().join("s"),
        docs.iter().map(String::as_str),
        &tok,
        false,
        false,
    )
    .unwrap();
    let packed = PackedSequences::new(
        Arc::new(TokenShard::open(tmp.path().join("s")).unwrap()),
        Packing {
            seq_len: 16,
            bos: None,
            eos: Some(1),
            grouping: Grouping::Concat,
        },
    )
    .unwrap();
    let seqs: Vec<Vec<u32>> = (0..packed.len()).map(|i| packed.get(i)).collect();
    let owners: Vec<Vec<u32>> = (0..packed.len()).map(|i| packed.documents(i)).collect();
    assert!(seqs.len() >= 3, "{} sequences", seqs.len());
    let d = Device::flex().autodiff();
    // no dropout: training-mode presentations equal the evaluation-mode reference
    let config = Gpt2Config {
        vocab_size: tok.vocab_size(),
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        ..Gpt2Config::tiny()
    };
    d.seed(5);
    let model = Gpt2LmHead::init(&config, &d).unwrap();
    // one micro-batch per epoch holding every sequence, learning rate 1e-12: each document is
    // measured once per epoch, on (practically) the initial model
    let mut task = CausalLmTask::new(seqs.clone(), seqs[..1].to_vec(), seqs.len(), 0, &d)
        .unwrap()
        .with_documents(owners.clone())
        .unwrap();
    let mut algorithms: Vec<Box<dyn Algorithm<Gpt2LmHead>>> =
        vec![Box::new(TrainingScores::new(docs.len()))];
    let mut tc = TrainerConfig::new(Duration::batches(2), OptimizerConfig::adamw(1e-12, 0.0));
    tc.progress_bar = false;
    let out = Trainer::new(tc, tmp.path().join("run"))
        .fit(model, &mut task, &mut algorithms, &d)
        .unwrap();
    let mut scores = TrainingScores::new(docs.len());
    Algorithm::<Gpt2LmHead>::load_state(&mut scores, &algorithms[0].state()).unwrap();

    // by hand: every next-token row of the frozen model, grouped by its target's document
    let valid = out.model.valid();
    let plain = Device::flex();
    let l = seqs[0].len();
    let flat: Vec<i64> = seqs.iter().flatten().map(|&t| i64::from(t)).collect();
    let ids = kiln_models::burn::tensor::Tensor::<2, kiln_models::burn::tensor::Int>::from_data(
        kiln_models::burn::tensor::TensorData::new(flat, [seqs.len(), l]),
        &plain,
    );
    let (_, logits, targets) = valid.loss_with_logits(ids, None);
    let vocab = logits.dims()[1];
    let z: Vec<f64> = logits
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .unwrap();
    let y: Vec<i64> = targets
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    let mut by_doc: Vec<Vec<Pointwise>> = vec![Vec::new(); docs.len()];
    for (r, &t) in y.iter().enumerate() {
        assert_ne!(t, IGNORE_INDEX);
        let (b, i) = (r / (l - 1), r % (l - 1));
        let p = Pointwise::of(&z[r * vocab..(r + 1) * vocab], t as usize, r).unwrap();
        by_doc[owners[b][i + 1] as usize].push(p);
    }
    let mut checked = 0;
    for (doc, rows) in by_doc.iter().enumerate() {
        let e = scores.tracker().example(doc);
        if rows.is_empty() {
            assert_eq!(e.scores[0].count(), 0, "document {doc} is in no sequence");
            continue;
        }
        assert_eq!(e.scores[0].count(), 2, "document {doc}: once per epoch");
        for name in SCORES {
            let want = rows.iter().map(|p| p.get(name).unwrap()).sum::<f64>() / rows.len() as f64;
            let got = e.score(name).unwrap().mean().unwrap();
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "document {doc} {name}: {got} vs {want}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "{checked} documents scored");
}

/// 200 digits, batch 20 (10 steps an epoch), 30 steps at `lr`, a `CheckpointScores` pass over
/// the 200 training images every epoch; stopped after the step-`stop` checkpoint and resumed in
/// a fresh trainer when given.
fn checkpoint_run(lr: f64, stop: Option<u64>) -> (ImageClassifier, ScoreTracker) {
    use kiln_scoring::train::{CheckpointScores, Pass};
    let d = Device::flex().autodiff();
    let set = Arc::new(ImageSet::digits().unwrap());
    let train: Vec<usize> = (0..200).collect();
    let make = || -> Vec<Box<dyn Algorithm<ImageClassifier>>> {
        let set = set.clone();
        let pass = move |m: &ImageClassifier| -> Result<Pass, String> {
            let ids: Vec<usize> = (0..200).collect();
            let (x, y) = image_batch(&set, &ids, &Device::flex());
            let logits = m.valid().forward(x).map_err(|e| e.to_string())?;
            Ok(Pass {
                classes: logits.dims()[1],
                logits: logits
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap(),
                labels: y
                    .into_data()
                    .convert::<i64>()
                    .try_to_vec::<i64>()
                    .unwrap()
                    .into_iter()
                    .map(|l| l as usize)
                    .collect(),
                ids,
            })
        };
        vec![Box::new(CheckpointScores::new(
            200,
            "1ep".parse().unwrap(),
            Box::new(pass),
        ))]
    };
    let task = || {
        ImageClassificationTask::new(set.clone(), train.clone(), (200..260).collect(), 20, 5, &d)
            .unwrap()
    };
    let mut tc = TrainerConfig::new(Duration::batches(30), OptimizerConfig::adamw(lr, 0.0));
    tc.progress_bar = false;
    tc.save_interval = Some(Duration::batches(10));
    let dir = tempfile::tempdir().unwrap();
    let mut algorithms = make();
    if let Some(at) = stop {
        algorithms.push(Box::new(StopAt(at)));
        Trainer::new(tc.clone(), dir.path())
            .fit(model(&d), &mut task(), &mut algorithms, &d)
            .unwrap_err();
        algorithms = make();
    }
    let out = Trainer::new(tc, dir.path())
        .fit(model(&d), &mut task(), &mut algorithms, &d)
        .unwrap();
    let state = algorithms[0].state();
    let tracker: ScoreTracker = serde_json::from_value(state["tracker"].clone()).unwrap();
    (out.model, tracker)
}

#[test]
fn checkpoint_passes_score_every_example_each_epoch_and_resume() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // a frozen model: three passes (steps 10, 20, 30; the end adds none) of its own scores
    let (model, tracker) = checkpoint_run(1e-12, None);
    let set = ImageSet::digits().unwrap();
    let plain = Device::flex();
    for id in [0usize, 99, 199] {
        let e = tracker.example(id);
        assert_eq!(
            e.scores[0].count(),
            3,
            "example {id}: one measurement per epoch"
        );
        let (x, y) = image_batch(&set, &[id], &plain);
        let z: Vec<f64> = model
            .valid()
            .forward(x)
            .unwrap()
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap();
        let label = y.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()[0] as usize;
        let want = Pointwise::of(&z, label, id).unwrap();
        for name in SCORES {
            let got = e.score(name).unwrap().mean().unwrap();
            let want = want.get(name).unwrap();
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "example {id} {name}: {got} vs {want}"
            );
        }
    }
    // learning, stopped after the step-10 checkpoint and resumed: the same accumulators
    let (_, whole) = checkpoint_run(3e-3, None);
    let (_, resumed) = checkpoint_run(3e-3, Some(10));
    assert_eq!(whole, resumed);
    assert!(whole.examples().iter().all(|e| e.forgetting.len() == 3));
}
