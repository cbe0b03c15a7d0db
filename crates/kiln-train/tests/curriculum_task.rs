//! A tiny GPT-2 pretrained through `CurriculumLmTask` on the built-in domains with an
//! upsampled final phase: a run resumed from a checkpoint with the same schedule ends with the
//! uninterrupted run's weights bit for bit and logs the same losses and learning rates; a
//! resumed run may move a switch that lies in its future (the learning rate goes on as
//! before), and one that rewrites a phase already trained on is refused, naming the phase.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kiln_data::corpus::{self, Domain};
use kiln_data::curriculum::Curriculum;
use kiln_data::packing::{Grouping, PackedSequences, Packing, SequenceStream};
use kiln_data::shards::{TokenShard, write_shard};
use kiln_data::streams::StreamSpec;
use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::Duration;
use kiln_train::burn::tensor::Device;
use kiln_train::params::float_params;
use kiln_train::tasks::{CurriculumLmConfig, CurriculumLmTask};
use kiln_train::{OptimizerConfig, Trainer, TrainerConfig};
use serde_json::Value;

const STEPS: u64 = 12;
const SEQ: usize = 16;

struct Data {
    streams: BTreeMap<String, SequenceStream>,
    eval: Vec<Vec<u32>>,
    vocab: usize,
}

fn data(dir: &Path) -> Data {
    let docs: BTreeMap<Domain, Vec<String>> = Domain::ALL
        .iter()
        .map(|d| {
            (
                *d,
                corpus::documents(*d, 0, 0, if *d == Domain::Prose { 40 } else { 6 }),
            )
        })
        .collect();
    let tok = Tokenizer::train(
        TokenizerKind::Bpe,
        docs.values().flatten().map(String::as_str),
        300,
        2,
    )
    .unwrap();
    let packing = Packing {
        seq_len: SEQ,
        bos: None,
        eos: tok.special_ids().eos,
        grouping: Grouping::Concat,
    };
    let streams = docs
        .iter()
        .map(|(d, texts)| {
            let p = dir.join(d.name());
            write_shard(&p, texts.iter().map(String::as_str), &tok, false, false).unwrap();
            let seqs =
                PackedSequences::new(Arc::new(TokenShard::open(&p).unwrap()), packing).unwrap();
            (d.name().to_owned(), SequenceStream::new(seqs, 1))
        })
        .collect();
    let eval = corpus::documents(Domain::Prose, 9, 0, 4)
        .iter()
        .map(|t| {
            tok.encode(t, false)
                .unwrap()
                .into_iter()
                .take(SEQ)
                .collect()
        })
        .collect();
    Data {
        streams,
        eval,
        vocab: tok.vocab_size(),
    }
}

fn curriculum(f: f64) -> Curriculum {
    Curriculum::upsample_end(
        vec![
            StreamSpec::proportion("prose", 0.8),
            StreamSpec::proportion("code", 0.1),
            StreamSpec::proportion("arithmetic", 0.1),
        ],
        vec![
            StreamSpec::proportion("prose", 0.4),
            StreamSpec::proportion("code", 0.3),
            StreamSpec::proportion("arithmetic", 0.3),
        ],
        Some(20),
        f,
    )
}

/// Every parameter by name.
type Weights = Vec<(String, Vec<f32>)>;

/// Trains (or resumes) in `run_dir` with the final phase over the last `f` of the run.
fn fit(d: &Data, run_dir: &Path, f: f64) -> Result<(Weights, Vec<Value>), kiln_train::Error> {
    let device = Device::flex().autodiff();
    device.seed(3);
    let config = Gpt2Config {
        vocab_size: d.vocab,
        n_positions: SEQ,
        ..Gpt2Config::tiny()
    };
    let model = Gpt2LmHead::init(&config, &device).unwrap();
    let mut c = CurriculumLmConfig::new(4, curriculum(f));
    c.seed = 7;
    let mut task = CurriculumLmTask::new(d.streams.clone(), d.eval.clone(), c, &device)
        .unwrap()
        .with_eval_set("arithmetic", d.eval[..2].to_vec())
        .unwrap();
    let mut tc = TrainerConfig::new(Duration::batches(STEPS), OptimizerConfig::adamw(3e-3, 0.0));
    tc.lr_schedule = serde_json::from_str(
        r#"{"name": "cosine_with_warmup", "t_warmup": "0.25dur", "alpha_f": 0.1}"#,
    )
    .unwrap();
    tc.save_interval = Some(Duration::batches(2));
    tc.keep_last_n = 20;
    tc.eval_interval = Some(Duration::batches(4));
    tc.seed = 5;
    tc.progress_bar = false;
    let out = Trainer::new(tc, run_dir).fit(model, &mut task, &mut Vec::new(), &device)?;
    let weights = float_params(&out.model)
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
            )
        })
        .collect();
    let log = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Ok((weights, log))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A run directory holding only `from`'s checkpoint of `step`.
fn branch(from: &Path, to: &Path, step: u64) {
    let name = format!("step-{step:09}");
    copy_dir(
        &from.join("checkpoints").join(&name),
        &to.join("checkpoints").join(name),
    );
}

/// The deterministic part of the training lines from `step` on (step, loss, lr, phase).
fn steps_from(log: &[Value], step: u64) -> Vec<Value> {
    log.iter()
        .filter(|l| l["split"] == "train" && l["step"].as_u64().unwrap() >= step)
        .map(|l| {
            serde_json::json!({"step": l["step"], "loss": l["loss"], "lr": l["lr"], "phase": l["phase"]})
        })
        .collect()
}

#[test]
fn resume_is_exact_and_only_the_future_may_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(&dir.path().join("data"));
    let full = dir.path().join("full");
    let (weights, log) = fit(&d, &full, 0.5).unwrap();
    let phases: Vec<f64> = steps_from(&log, 0)
        .iter()
        .map(|l| l["phase"].as_f64().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&1.0));
    assert_eq!(phases.last(), Some(&2.0), "{phases:?}");
    assert!(
        log.iter().any(|l| l.get("arithmetic_loss").is_some()),
        "per-domain eval logged"
    );

    // Same schedule, resumed at step 8 (inside the upsampled phase): bit for bit.
    let resumed = dir.path().join("resumed");
    branch(&full, &resumed, 8);
    let (w2, log2) = fit(&d, &resumed, 0.5).unwrap();
    assert!(
        w2 == weights,
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert_eq!(steps_from(&log2, 9), steps_from(&log, 9));

    // Resumed at step 4 with the switch moved from step 6 to step 9: the past is unchanged, the
    // learning rate continues; the phase changes where the new schedule says.
    let moved = dir.path().join("moved");
    branch(&full, &moved, 4);
    let (_, log3) = fit(&d, &moved, 0.25).unwrap();
    let lr =
        |l: &[Value]| -> Vec<Value> { steps_from(l, 5).iter().map(|x| x["lr"].clone()).collect() };
    assert_eq!(lr(&log3), lr(&log));
    for l in steps_from(&log3, 5) {
        let step = l["step"].as_u64().unwrap();
        // a line logs the step just completed: step s trained batch s − 1
        let want = if step > 9 { 2.0 } else { 1.0 };
        assert_eq!(l["phase"].as_f64(), Some(want), "step {step}");
    }

    // Resumed at step 8 (phase 2 began at step 6) with the switch moved to step 9: refused.
    let rewrite = dir.path().join("rewrite");
    branch(&full, &rewrite, 8);
    let e = match fit(&d, &rewrite, 0.25) {
        Ok(_) => panic!("a schedule that rewrites a trained phase was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("curriculum phase 1 had begun") && e.contains("ended at step 6"),
        "{e}"
    );
}
