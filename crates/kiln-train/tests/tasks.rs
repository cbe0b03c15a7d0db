//! The ready-made tasks refuse data that does not fit the model, naming the example, instead of
//! panicking inside burn (review finding: `ClassificationTask` checked neither sequence length,
//! token ids nor labels against the model).

use kiln_models::bert::{BertConfig, BertForSequenceClassification};
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::{ClassificationTask, LabelledSequence};
use kiln_train::{OptimizerConfig, Trainer, TrainerConfig};

fn model(device: &Device) -> BertForSequenceClassification {
    let config = BertConfig {
        vocab_size: 20,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 6,
        ..BertConfig::bert_base()
    };
    BertForSequenceClassification::from_encoder(config.init(device).unwrap(), 2, device).unwrap()
}

fn run(train: Vec<LabelledSequence>) -> Result<(), String> {
    let device = Device::flex().autodiff();
    let eval = vec![LabelledSequence {
        ids: vec![1, 2, 3],
        label: 1,
    }];
    let mut task = ClassificationTask::new(train, eval, 2, 0, 0, &device).unwrap();
    let mut config = TrainerConfig::new("2ba".parse().unwrap(), OptimizerConfig::adamw(1e-3, 0.0));
    config.progress_bar = false;
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(config, dir.path())
        .fit(model(&device), &mut task, &mut [], &device)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn classification_data_is_checked_against_the_model() {
    let ok = |ids: Vec<u32>, label| LabelledSequence { ids, label };
    assert_eq!(run(vec![ok(vec![1, 2, 3], 0), ok(vec![4, 5], 1)]), Ok(()));
    for (bad, want) in [
        (
            ok(vec![1, 2, 3], 5),
            "training example 1 has label 5, but the classifier has 2 outputs",
        ),
        (
            ok(vec![1, 20], 0),
            "training example 1: token id 20 is outside the model's vocabulary (vocab_size 20)",
        ),
        (
            ok(vec![1; 7], 0),
            "training example 1 has 7 tokens, more than the model's 6 positions",
        ),
        (ok(vec![], 0), "training example 1 has no tokens"),
    ] {
        let err = run(vec![ok(vec![1, 2, 3], 0), bad]).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn causal_lm_task_refuses_data_that_does_not_fit_gpt2() {
    use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
    use kiln_train::tasks::CausalLmTask;
    let device = Device::flex().autodiff();
    let config = Gpt2Config::tiny();
    let fit = |train: Vec<Vec<u32>>| -> Result<(), String> {
        let model = Gpt2LmHead::init(&config, &device).unwrap();
        let mut task = CausalLmTask::new(train, vec![vec![1, 2, 3]], 2, 0, &device)
            .map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().unwrap();
        let mut c = TrainerConfig::new("2ba".parse().unwrap(), OptimizerConfig::adamw(1e-3, 0.0));
        c.progress_bar = false;
        Trainer::new(c, dir.path())
            .fit(model, &mut task, &mut [], &device)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    fit(vec![vec![1, 2, 3, 4], vec![5, 6, 7]]).unwrap();
    let e = fit(vec![vec![1, 2], vec![3, config.vocab_size as u32]]).unwrap_err();
    assert!(
        e.contains("training sequence 1") && e.contains("vocab_size"),
        "{e}"
    );
    let e = fit(vec![vec![1; config.n_positions + 1]]).unwrap_err();
    assert!(e.contains("n_positions"), "{e}");
    let e = fit(vec![vec![1]]).unwrap_err();
    assert!(e.contains("fewer than 2 tokens"), "{e}");
}

#[test]
fn causal_lm_task_reports_named_evaluation_sets() {
    use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
    use kiln_train::TrainState;
    use kiln_train::TrainTask;
    use kiln_train::tasks::CausalLmTask;
    let device = Device::flex().autodiff();
    let config = Gpt2Config::tiny();
    device.seed(3);
    let model = Gpt2LmHead::init(&config, &device).unwrap();
    let main = vec![vec![1, 2, 3, 4], vec![5, 6, 7]];
    let other = vec![vec![9, 8, 7, 6, 5], vec![4, 3]];
    let task = |extra: Vec<Vec<u32>>| {
        CausalLmTask::new(vec![vec![1, 2]], main.clone(), 2, 0, &device)
            .unwrap()
            .with_eval_set("source", extra)
    };
    // The same sequences give the main set's loss; other sequences another one.
    let same = task(main.clone())
        .unwrap()
        .evaluate(&model, &TrainState::default())
        .unwrap();
    assert_eq!(same["source_loss"], same["loss"]);
    assert!((same["source_perplexity"] - same["loss"].exp()).abs() < 1e-9);
    let m = task(other.clone())
        .unwrap()
        .evaluate(&model, &TrainState::default())
        .unwrap();
    assert_eq!(m["loss"], same["loss"]);
    assert!((m["source_loss"] - m["loss"]).abs() > 1e-6, "{m:?}");
    // … equal to the main loss of a task evaluating those sequences.
    let direct = CausalLmTask::new(vec![vec![1, 2]], other, 2, 0, &device)
        .unwrap()
        .evaluate(&model, &TrainState::default())
        .unwrap();
    assert_eq!(m["source_loss"], direct["loss"]);
    // Bad sets are refused by name.
    for (name, seqs, want) in [
        ("", vec![vec![1, 2]], "must be non-empty"),
        ("a-b", vec![vec![1, 2]], "must be non-empty"),
        ("x", vec![], "`x` is empty"),
        (
            "x",
            vec![vec![1, 2], vec![3]],
            "sequence 1 has fewer than 2",
        ),
    ] {
        let e = CausalLmTask::new(vec![vec![1, 2]], main.clone(), 2, 0, &device)
            .unwrap()
            .with_eval_set(name, seqs)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{e}");
    }
    let e = task(main.clone())
        .unwrap()
        .with_eval_set("source", main.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("added twice"), "{e}");
    // Token ids of an extra set are checked against the model too.
    let mut t = task(vec![vec![1, config.vocab_size as u32]]).unwrap();
    let e = t
        .evaluate(&model, &TrainState::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("evaluation set `source` sequence 0"), "{e}");
}
