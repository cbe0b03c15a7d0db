//! Kill a training run in the middle of the second task of a sequence, damage its newest
//! checkpoint, restart it, and check that the resumed run logs exactly the losses and
//! evaluations of an uninterrupted one and ends with the same weights, bit for bit — with
//! algorithms whose state is tensors in the checkpoint: a test-local running average that pulls
//! the model toward it, and kiln's SFA, L2 anchor, EMA, SWA and EWC (its Fisher of task 1).
//!
//! This file is its own harness (`harness = false` in Cargo.toml): run without arguments it is
//! the test, which starts itself as a child process (`child RUN_DIR DATA_DIR`) to train a tiny
//! BERT with dropout on the built-in corpus, so the kill is a real SIGKILL of a real process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration as Wall, Instant};

use kiln_checkpoint::{Checkpoint, Dtype};
use kiln_data::corpus::{self, Domain};
use kiln_data::mlm::MlmCollator;
use kiln_data::packing::{Grouping, PackedSequences, Packing, SequenceStream};
use kiln_data::shards::{TokenShard, write_shard};
use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
use kiln_models::bert::{BertConfig, BertForMaskedLm, Padding};
use kiln_schedules::{DataMix, Duration, LrSchedule, MaskingSchedule};
use kiln_train::algorithms::{
    Ema, EmaDecay, Ewc, EwcMode, FisherData, FisherEstimator, L2Anchor, PenaltyScale, Sfa,
    SfaAnchor, Swa,
};
use kiln_train::burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_train::params::{float_params, map_float_params};
use kiln_train::tasks::{MlmTask, MlmTaskConfig};
use kiln_train::{Algorithm, Context, Event, OptimizerConfig, TensorState, Trainer, TrainerConfig};
use serde_json::Value;

const STEPS: u64 = 16;
const SEQ: usize = 32;

fn prepare_data(dir: &Path) {
    let docs: BTreeMap<Domain, Vec<String>> = Domain::ALL
        .iter()
        .map(|d| (*d, corpus::documents(*d, 0, 0, 60)))
        .collect();
    let tok = Tokenizer::train(
        TokenizerKind::WordPiece,
        docs.values().flatten().map(String::as_str),
        400,
        2,
    )
    .unwrap();
    tok.save(dir.join("tokenizer.json")).unwrap();
    for (d, texts) in &docs {
        write_shard(
            dir.join(d.name()),
            texts.iter().map(String::as_str),
            &tok,
            false,
            false,
        )
        .unwrap();
    }
}

/// Sleeps after each step, so the parent can kill the process between checkpoints.
struct Slow(u64);

impl<M> Algorithm<M> for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn on_event(&mut self, event: Event, _: &mut Context<'_, M>) -> Result<(), String> {
        if event == Event::BatchEnd {
            std::thread::sleep(Wall::from_millis(self.0));
        }
        Ok(())
    }
}

/// An algorithm with tensor state: a running average of the weights that pulls the model toward
/// it after every step (SFA-like). If a resume lost the average, the final weights would differ.
#[derive(Default)]
struct Pull {
    avg: BTreeMap<String, Tensor<1>>,
    updates: u64,
}

impl Algorithm<BertForMaskedLm> for Pull {
    fn name(&self) -> &str {
        "pull"
    }

    fn on_event(
        &mut self,
        event: Event,
        ctx: &mut Context<'_, BertForMaskedLm>,
    ) -> Result<(), String> {
        if event != Event::AfterStep {
            return Ok(());
        }
        for (name, t) in float_params(&*ctx.model) {
            let t = t.inner();
            let avg = match self.avg.remove(&name) {
                Some(a) => a.mul_scalar(0.8) + t.mul_scalar(0.2),
                None => t,
            };
            self.avg.insert(name, avg);
        }
        let avg = &self.avg;
        // The average has no autodiff; mixed with the model's tensors it is a constant.
        *ctx.model = map_float_params(ctx.model.clone(), |name, t| {
            t.mul_scalar(0.9) + avg[name].clone().mul_scalar(0.1)
        });
        self.updates += 1;
        Ok(())
    }

    fn state(&self) -> Value {
        serde_json::json!({ "updates": self.updates })
    }

    fn load_state(&mut self, state: &Value) -> Result<(), String> {
        self.updates = state["updates"].as_u64().ok_or("no `updates`")?;
        Ok(())
    }

    fn tensor_state(&self) -> TensorState {
        let mut s = TensorState::new();
        for (name, t) in &self.avg {
            s.insert(name.clone(), t.clone());
        }
        s
    }

    fn load_tensor_state(&mut self, state: TensorState, device: &Device) -> Result<(), String> {
        for (name, _) in state.iter() {
            let t: Tensor<1> = state.tensor(name, &device.clone().inner())?;
            self.avg.insert(name.to_owned(), t);
        }
        Ok(())
    }
}

/// EWC's data: every fourth token of a sequence masked, its label the original token.
struct MaskedRows {
    seqs: Vec<Vec<u32>>,
    mask: u32,
}

impl FisherData<BertForMaskedLm> for MaskedRows {
    fn len(&self) -> usize {
        self.seqs.len()
    }
    fn forward(
        &mut self,
        model: &BertForMaskedLm,
        r: std::ops::Range<usize>,
    ) -> Result<(Tensor<2>, Vec<i64>), String> {
        let (mut input, mut labels) = (Vec::new(), Vec::new());
        let rows = &self.seqs[r];
        for s in rows {
            for (j, &t) in s.iter().enumerate() {
                let masked = j % 4 == 1;
                input.push(i64::from(if masked { self.mask } else { t }));
                labels.push(if masked { i64::from(t) } else { -100 });
            }
        }
        let (b, l) = (rows.len(), rows[0].len());
        let device = model.decoder_bias.val().device();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(input, [b, l]), &device);
        let logits = model.forward(ids, None, None, Padding::Padded);
        let vocab = logits.dims()[2];
        Ok((logits.reshape([b * l, vocab]), labels))
    }
}

fn child(run_dir: &Path, data: &Path, slow_ms: u64) {
    let device = Device::flex().autodiff();
    let tok = Tokenizer::from_file(data.join("tokenizer.json")).unwrap();
    let ids = tok.special_ids();
    let packing = Packing {
        seq_len: SEQ,
        bos: ids.cls,
        eos: ids.sep,
        grouping: Grouping::Concat,
    };
    let streams = || {
        Domain::ALL
            .iter()
            .map(|d| {
                let shard = Arc::new(TokenShard::open(data.join(d.name())).unwrap());
                (
                    d.name().to_owned(),
                    SequenceStream::new(PackedSequences::new(shard, packing).unwrap(), 7),
                )
            })
            .collect()
    };
    let w = |p: f64, c: f64, a: f64| {
        BTreeMap::from([
            ("prose".to_owned(), p),
            ("code".to_owned(), c),
            ("arithmetic".to_owned(), a),
        ])
    };
    // Resolved by the trainer, against the run's own length.
    let mix = DataMix::upsample_end(w(6.0, 2.0, 1.0), w(2.0, 1.0, 2.0), 0.25);
    let collator = MlmCollator::from_special_ids(&ids, tok.vocab_size()).unwrap();
    let eval: Vec<Vec<u32>> = corpus::documents(Domain::Prose, 99, 0, 8)
        .iter()
        .map(|d| tok.encode(d, true).unwrap().into_iter().take(SEQ).collect())
        .collect();
    let masking = MaskingSchedule::Linear {
        from: 0.3,
        to: 0.15,
        t_max: Duration::fraction(1.0),
    };
    let mut config = MlmTaskConfig::new(8, SEQ, masking, mix);
    config.seed = 11;
    let mut task = MlmTask::new(streams(), collator.clone(), &eval, config, &device).unwrap();
    // Task 1 of the sequence: prose only, 4 steps, its own run directory.
    let prose = DataMix::constant(w(4.0, 1.0, 1.0));
    let mut config1 = MlmTaskConfig::new(8, SEQ, MaskingSchedule::Constant { rate: 0.15 }, prose);
    config1.seed = 3;
    let mut task1 = MlmTask::new(streams(), collator, &eval, config1, &device).unwrap();
    let config = BertConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 64,
        max_position_embeddings: 64,
        ..BertConfig::bert_base()
    };
    let model = BertForMaskedLm::init(&config, &device).unwrap();
    let mut trainer =
        TrainerConfig::new(Duration::batches(STEPS), OptimizerConfig::adamw(2e-3, 1e-5));
    trainer.lr_schedule = serde_json::from_str::<LrSchedule>(
        r#"{"name": "linear_decay_with_warmup", "t_warmup": "0.25dur", "alpha_f": 0.02}"#,
    )
    .unwrap();
    trainer.grad_accum = 2;
    trainer.clip_grad_norm = Some(1.0);
    trainer.eval_interval = Some(Duration::batches(5));
    trainer.save_interval = Some(Duration::batches(4));
    trainer.keep_last_n = 3;
    trainer.seed = 5;
    trainer.progress_bar = false;
    // EWC's Fisher of task 1 on masked prose (Empirical: feasible per token)
    let mut ewc = Ewc::new(
        20.0,
        PenaltyScale::Half,
        FisherEstimator::Empirical,
        EwcMode::Online { gamma: 0.5 },
        1,
    )
    .unwrap();
    ewc.push_task_data(Box::new(MaskedRows {
        seqs: eval.clone(),
        mask: ids.mask.unwrap(),
    }));
    let mut algorithms: Vec<Box<dyn Algorithm<BertForMaskedLm>>> = vec![
        Box::new(Slow(slow_ms)),
        Box::new(Pull::default()),
        // kiln's own: anchors restored from algorithms.safetensors, merge counter from state.json
        Box::new(Sfa::new(0.3, 0.2, SfaAnchor::PrevTaskEnd).unwrap()),
        Box::new(L2Anchor::new(0.05, PenaltyScale::Half).unwrap()),
        // evaluations run on the averaged weights, so the logged eval metrics check the shadow
        Box::new(
            Ema::new(
                EmaDecay::composer_half_life(3.0, 1.0),
                Duration::batches(2),
                1,
                true,
            )
            .unwrap(),
        ),
        // averaging from step 3 every 2 steps, the model replaced at step 14
        Box::new(
            Swa::new(
                Duration::fraction(0.15),
                Duration::fraction(0.85),
                Duration::batches(2),
            )
            .unwrap(),
        ),
        Box::new(ewc),
    ];
    // Task 1 (resumed as finished on a restart: its FitEnd consolidates EWC again, the same way)
    let mut first = trainer.clone();
    first.max_duration = Duration::batches(4);
    first.eval_interval = None;
    let model = Trainer::new(first, run_dir.join("task1"))
        .fit(model, &mut task1, &mut algorithms, &device)
        .unwrap()
        .model;
    // Task 2, the one killed: SFA/L2 anchors at task 1's end, EWC's Fisher of task 1
    let out = Trainer::new(trainer, run_dir)
        .fit(model, &mut task, &mut algorithms, &device)
        .unwrap();
    // The final weights, to compare bit for bit.
    out.model
        .save(run_dir.join("final"), Dtype::F32, true)
        .unwrap();
    println!("resumed_from {}", out.resumed_from.map_or(-1, |s| s as i64));
}

fn metrics(run_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The deterministic part of each log line (timings differ between runs).
fn comparable(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            let o = l.as_object_mut().unwrap();
            o.remove("tokens_per_s");
            o.remove("samples_per_s");
            l
        })
        .collect()
}

fn spawn(run_dir: &Path, data: &Path, slow_ms: u64) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "child",
        run_dir.to_str().unwrap(),
        data.to_str().unwrap(),
        &slow_ms.to_string(),
    ]);
    c
}

fn checkpoint_steps(run_dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(run_dir.join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(
            Path::new(&args[2]),
            Path::new(&args[3]),
            args[4].parse().unwrap(),
        );
        return;
    }
    // libtest-style arguments (e.g. --list from `cargo test -- --list`) are not for us.
    if args.iter().any(|a| a == "--list") {
        println!("autoresume: test");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data: PathBuf = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    prepare_data(&data);

    // An uninterrupted run.
    let reference = tmp.path().join("reference");
    let out = spawn(&reference, &data, 0).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed_from -1"));
    let want = comparable(&metrics(&reference));
    assert_eq!(
        want.iter().filter(|l| l["split"] == "train").count(),
        STEPS as usize
    );
    assert_eq!(
        want.iter()
            .filter(|l| l["split"] == "eval")
            .map(|l| l["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [5, 10, 15, 16]
    );
    // The task's own metrics are logged: masking rate and tokens per domain, so the comparison
    // below also checks that the data position is restored exactly.
    let last_train = want.iter().rfind(|l| l["split"] == "train").unwrap();
    assert!(
        last_train["masking_rate"].as_f64().unwrap() > 0.0,
        "{last_train}"
    );
    assert!(
        last_train
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("tokens/")),
        "{last_train}"
    );

    // The same run, killed after its step-8 checkpoint and a few more steps.
    let killed = tmp.path().join("killed");
    let mut child = spawn(&killed, &data, 150)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let steps_logged = std::fs::read_to_string(killed.join("metrics.jsonl"))
            .map(|t| t.lines().filter(|l| l.contains("\"train\"")).count())
            .unwrap_or(0);
        if checkpoint_steps(&killed).contains(&8) && steps_logged >= 10 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        assert!(
            started.elapsed() < Wall::from_secs(600),
            "timed out waiting for the step-8 checkpoint"
        );
        std::thread::sleep(Wall::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let logged = metrics(&killed)
        .iter()
        .filter(|l| l["split"] == "train")
        .count();
    assert!(
        logged > 8 && logged < STEPS as usize,
        "killed mid-run: {logged} steps logged"
    );
    assert_eq!(checkpoint_steps(&killed), [4, 8]);

    // Damage the newest checkpoint: the restart must skip it and resume from step 4.
    let model = killed.join("checkpoints/step-000000008/model.bpk");
    let len = std::fs::metadata(&model).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = spawn(&killed, &data, 0).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipping checkpoint") && stderr.contains("model.bpk does not match"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("resumed_from 4"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let got = comparable(&metrics(&killed));
    assert_eq!(
        got.len(),
        want.len(),
        "the log reads like one uninterrupted run"
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "resumed run differs from the uninterrupted one");
    }
    assert_eq!(checkpoint_steps(&killed), [8, 12, 16], "keep_last_n = 3");
    // The algorithm's tensors were checkpointed with the rest...
    let states =
        Checkpoint::open(killed.join("checkpoints/step-000000016/algorithms.safetensors")).unwrap();
    for algorithm in [
        "pull/",
        "sfa/anchor.",
        "l2_anchor/anchor.",
        "ema/shadow.",
        "swa/average.",
        "ewc/0.fisher.",
        "ewc/0.anchor.",
    ] {
        assert!(
            states.names().any(|n| n.starts_with(algorithm)),
            "{algorithm} tensors checkpointed: {:?}",
            states
                .names()
                .map(|n| n.split('.').next().unwrap_or(""))
                .collect::<std::collections::BTreeSet<_>>()
        );
    }
    // ... and the final weights are bit for bit the uninterrupted run's.
    let (a, b) = (
        Checkpoint::open(reference.join("final")).unwrap(),
        Checkpoint::open(killed.join("final")).unwrap(),
    );
    let mut compared = 0;
    for name in a.names() {
        assert_eq!(
            a.tensor(name).unwrap().data,
            b.tensor(name).unwrap().data,
            "final weight `{name}` differs after the resume"
        );
        compared += 1;
    }
    assert!(compared > 10);
    println!(
        "autoresume: ok (killed after {logged} steps, resumed from step 4 past a damaged step-8 checkpoint, {} log lines and {compared} final weights identical)",
        got.len()
    );
}
