//! `cargo xtask repro masking`: "Dynamic Masking Rate Schedules for MLM Pretraining" (Ankner,
//! Saphra, Blalock, Frankle, Leavitt; EACL 2024) at small scale.
//!
//! A small MosaicBERT-style encoder (ALiBi, GeGLU) is pretrained on kiln-data's built-in corpus
//! with constant 15%, constant 30% and linear 30%→15% masking (same seeds, same steps, same
//! data order), then evaluated by masked-LM loss at a fixed 15% rate on held-out prose and by
//! fine-tuning on the built-in acceptability probe (a CoLA-like task: number agreement).
//! Results go to `docs/reproductions/masking.md` with `masking-curves.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_data::corpus::{self, Domain};
use kiln_data::mlm::MlmCollator;
use kiln_data::packing::{Grouping, PackedSequences, Packing, SequenceStream};
use kiln_data::shards::{TokenShard, write_shard};
use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
use kiln_models::bert::{BertConfig, BertForMaskedLm, BertForSequenceClassification};
use kiln_schedules::{DataMix, Duration, LrSchedule, MaskingSchedule};
use kiln_train::burn::module::Module;
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::{ClassificationTask, LabelledSequence, MlmTask, MlmTaskConfig};
use kiln_train::{OptimizerConfig, Trainer, TrainerConfig};
use plotters::prelude::*;
use serde_json::Value;

use crate::{Result, root, write_atomic};

const REPORT: &str = "masking.md";
const PLOT: &str = "masking-curves.svg";

/// Sizes of a reproduction.
#[derive(Debug, Clone)]
struct Setup {
    quick: bool,
    /// The command-line arguments that made it (for the report).
    args: String,
    seeds: Vec<u64>,
    pretrain_steps: u64,
    finetune_steps: u64,
    hidden: usize,
    layers: usize,
    heads: usize,
    intermediate: usize,
    seq_len: usize,
    batch: usize,
    vocab: usize,
    docs_per_domain: u64,
    probe_train: u64,
    probe_eval: u64,
    lr: f64,
    finetune_lr: f64,
}

impl Setup {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                args: String::new(),
                seeds: vec![17],
                pretrain_steps: 120,
                finetune_steps: 60,
                hidden: 64,
                layers: 2,
                heads: 4,
                intermediate: 128,
                seq_len: 64,
                batch: 16,
                vocab: 800,
                docs_per_domain: 800,
                probe_train: 800,
                probe_eval: 400,
                lr: 2e-3,
                finetune_lr: 1e-3,
            }
        } else {
            Self {
                quick,
                args: String::new(),
                seeds: vec![17, 2048, 3047],
                pretrain_steps: 1200,
                finetune_steps: 400,
                hidden: 64,
                layers: 2,
                heads: 4,
                intermediate: 128,
                seq_len: 64,
                batch: 32,
                vocab: 800,
                docs_per_domain: 4000,
                probe_train: 4000,
                probe_eval: 1000,
                lr: 2e-3,
                finetune_lr: 1e-3,
            }
        }
    }
}

/// The three schedules compared (the paper's baseline, constant 30%, and the headline).
fn schedules() -> Vec<(&'static str, MaskingSchedule)> {
    let whole = Duration::fraction(1.0);
    vec![
        ("constant 0.15", MaskingSchedule::Constant { rate: 0.15 }),
        ("constant 0.30", MaskingSchedule::Constant { rate: 0.30 }),
        (
            "linear 0.30→0.15",
            MaskingSchedule::Linear {
                from: 0.30,
                to: 0.15,
                t_max: whole,
            },
        ),
    ]
}

/// One pretraining + probe run.
#[derive(Debug, Clone)]
struct RunResult {
    schedule: &'static str,
    seed: u64,
    /// (step, eval MLM loss at 15%).
    curve: Vec<(u64, f64)>,
    mlm_loss: f64,
    mlm_accuracy: f64,
    probe_accuracy: f64,
    probe_mcc: f64,
    seconds: f64,
    tokens_per_s: f64,
    /// Parameters of the pretrained model (encoder and MLM head), counted on the module.
    params: usize,
}

pub(crate) fn command(args: &[&str]) -> Result {
    let mut quick = false;
    let mut out = root().join("docs/reproductions");
    let (mut steps, mut seeds, mut finetune, mut device) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .copied()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match *arg {
            "--quick" => quick = true,
            "--out" => out = PathBuf::from(value("--out")?),
            "--device" => device = Some(value("--device")?.to_owned()),
            "--steps" => steps = Some(value("--steps")?.parse::<u64>().map_err(|e| format!("--steps: {e}"))?),
            "--finetune-steps" => finetune = Some(value("--finetune-steps")?.parse::<u64>().map_err(|e| format!("--finetune-steps: {e}"))?),
            "--seeds" => seeds = Some(value("--seeds")?.split(',').map(|s| s.trim().parse::<u64>()).collect::<std::result::Result<Vec<_>, _>>().map_err(|e| format!("--seeds: {e}"))?),
            other => return Err(format!("unknown argument `{other}` (expected --quick, --out DIR, --steps N, --finetune-steps N, --seeds A,B,C, --device cpu|cuda[:N])").into()),
        }
    }
    let device = crate::pipeline_device(device.as_deref())?;
    let mut setup = Setup::new(quick);
    setup.pretrain_steps = steps.unwrap_or(setup.pretrain_steps);
    setup.finetune_steps = finetune.unwrap_or(setup.finetune_steps);
    setup.seeds = seeds.unwrap_or(setup.seeds);
    setup.args = crate::shown_args(args);
    if setup.seeds.is_empty() || setup.pretrain_steps < 10 || setup.finetune_steps == 0 {
        return Err("give at least one seed, 10 pretraining steps and 1 fine-tuning step".into());
    }
    let work = std::env::temp_dir().join(format!("kiln-repro-masking-{}", std::process::id()));
    let result = run_all(&setup, &work, &device);
    let _ = std::fs::remove_dir_all(&work);
    let results = result?;
    check_learned(&setup, &results)?;
    let svg = plot(&results)?;
    let report = report(&setup, &results);
    write_atomic(&out.join(PLOT), svg.as_bytes())?;
    write_atomic(&out.join(REPORT), report.as_bytes())?;
    eprintln!(
        "wrote {} and {}",
        out.join(REPORT).display(),
        out.join(PLOT).display()
    );
    Ok(())
}

struct Data {
    tokenizer: Tokenizer,
    shards: BTreeMap<&'static str, Arc<TokenShard>>,
    eval: Vec<Vec<u32>>,
    probe_train: Vec<LabelledSequence>,
    probe_eval: Vec<LabelledSequence>,
}

fn prepare(setup: &Setup, work: &Path) -> Result<Data> {
    let docs: BTreeMap<Domain, Vec<String>> = Domain::ALL
        .iter()
        .map(|d| (*d, corpus::documents(*d, 0, 0, setup.docs_per_domain)))
        .collect();
    let tokenizer = Tokenizer::train(
        TokenizerKind::WordPiece,
        docs.values().flatten().map(String::as_str),
        setup.vocab,
        2,
    )?;
    let mut shards = BTreeMap::new();
    for (d, texts) in &docs {
        let dir = work.join(d.name());
        write_shard(
            &dir,
            texts.iter().map(String::as_str),
            &tokenizer,
            false,
            true,
        )?;
        shards.insert(d.name(), Arc::new(TokenShard::open(&dir)?));
    }
    // Held-out prose (another seed of the generator), packed like training data.
    let held_out = corpus::documents(Domain::Prose, 99, 0, 400);
    let dir = work.join("held-out");
    write_shard(
        &dir,
        held_out.iter().map(String::as_str),
        &tokenizer,
        false,
        true,
    )?;
    let ids = tokenizer.special_ids();
    let packing = Packing {
        seq_len: setup.seq_len,
        bos: ids.cls,
        eos: ids.sep,
        grouping: Grouping::Concat,
    };
    let seqs = PackedSequences::new(Arc::new(TokenShard::open(&dir)?), packing)?;
    let eval: Vec<Vec<u32>> = (0..seqs.len().min(if setup.quick { 64 } else { 256 }))
        .map(|i| seqs.get(i))
        .collect();
    let probe = |start: u64, n: u64| -> Result<Vec<LabelledSequence>> {
        corpus::acceptability(5, start, n)
            .into_iter()
            .map(|j| {
                Ok(LabelledSequence {
                    ids: tokenizer.encode(&j.text, true)?,
                    label: u32::from(j.acceptable),
                })
            })
            .collect()
    };
    let probe_train = probe(0, setup.probe_train)?;
    let probe_eval = probe(1_000_000, setup.probe_eval)?;
    Ok(Data {
        tokenizer,
        shards,
        eval,
        probe_train,
        probe_eval,
    })
}

fn run_all(setup: &Setup, work: &Path, device: &Device) -> Result<Vec<RunResult>> {
    std::fs::create_dir_all(work)?;
    let data = prepare(setup, work)?;
    let mut results = Vec::new();
    for &seed in &setup.seeds {
        for (name, schedule) in schedules() {
            eprintln!("== {name}, seed {seed}");
            results.push(run_one(setup, &data, work, name, &schedule, seed, device)?);
        }
    }
    Ok(results)
}

fn run_one(
    setup: &Setup,
    data: &Data,
    work: &Path,
    name: &'static str,
    schedule: &MaskingSchedule,
    seed: u64,
    device: &Device,
) -> Result<RunResult> {
    let device = device.clone().autodiff();
    let ids = data.tokenizer.special_ids();
    let packing = Packing {
        seq_len: setup.seq_len,
        bos: ids.cls,
        eos: ids.sep,
        grouping: Grouping::Concat,
    };
    let streams = data
        .shards
        .iter()
        .map(|(name, shard)| {
            Ok((
                (*name).to_owned(),
                SequenceStream::new(PackedSequences::new(shard.clone(), packing)?, seed),
            ))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    // The schedules are resolved by the trainer, against the same run length as the LR.
    let mix = DataMix::constant(BTreeMap::from([
        ("prose".to_owned(), 0.8),
        ("code".to_owned(), 0.1),
        ("arithmetic".to_owned(), 0.1),
    ]));
    let collator = MlmCollator::from_special_ids(&ids, data.tokenizer.vocab_size())?;
    let mut config = MlmTaskConfig::new(setup.batch, setup.seq_len, schedule.clone(), mix);
    config.seed = seed;
    let mut task = MlmTask::new(streams, collator, &data.eval, config, &device)?;
    // MosaicBERT-style: ALiBi and GeGLU (from `alibi_starting_size`), no attention dropout.
    let config = BertConfig {
        vocab_size: data.tokenizer.vocab_size().div_ceil(8) * 8,
        hidden_size: setup.hidden,
        num_hidden_layers: setup.layers,
        num_attention_heads: setup.heads,
        intermediate_size: setup.intermediate,
        attention_probs_dropout_prob: 0.0,
        max_position_embeddings: setup.seq_len,
        alibi_starting_size: Some(setup.seq_len),
        ..BertConfig::bert_base()
    };
    device.seed(seed);
    let model = BertForMaskedLm::init(&config, &device)?;
    let params = model.num_params();
    // The paper's recipe, scaled: decoupled AdamW (0.9, 0.98), ε 1e-6, wd 1e-5, 6% warmup, linear
    // decay to 0.02 of the peak.
    let optimizer = OptimizerConfig::Adamw {
        lr: setup.lr,
        betas: [0.9, 0.98],
        eps: 1e-6,
        weight_decay: 1e-5,
        decoupled: true,
    };
    let lr: LrSchedule = serde_json::from_str(
        r#"{"name": "linear_decay_with_warmup", "t_warmup": "0.06dur", "alpha_f": 0.02}"#,
    )?;
    let mut tc = TrainerConfig::new(Duration::batches(setup.pretrain_steps), optimizer);
    tc.lr_schedule = lr.clone();
    tc.eval_interval = Some(Duration::batches((setup.pretrain_steps / 10).max(1)));
    tc.autoresume = false;
    tc.seed = seed;
    let run_dir = work.join(format!("{}-{seed}", name.replace([' ', '→'], "_")));
    let started = Instant::now();
    let out = Trainer::new(tc, &run_dir).fit(model, &mut task, &mut [], &device)?;
    let seconds = started.elapsed().as_secs_f64();
    let tokens_per_s = out.state.tokens as f64 / seconds;
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
    let curve: Vec<(u64, f64)> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["split"] == "eval")
        .filter_map(|v| Some((v["step"].as_u64()?, v["mlm_loss"].as_f64()?)))
        .collect();

    // Downstream probe: fine-tune the pretrained encoder on acceptability.
    let classifier = BertForSequenceClassification::from_encoder(out.model.bert, 2, &device)?;
    let mut probe = ClassificationTask::new(
        data.probe_train.clone(),
        data.probe_eval.clone(),
        32,
        ids.pad.unwrap_or(0),
        seed,
        &device,
    )?;
    let mut fc = TrainerConfig::new(
        Duration::batches(setup.finetune_steps),
        OptimizerConfig::Adamw {
            lr: setup.finetune_lr,
            betas: [0.9, 0.98],
            eps: 1e-6,
            weight_decay: 1e-6,
            decoupled: true,
        },
    );
    fc.lr_schedule = lr;
    fc.autoresume = false;
    fc.seed = seed;
    let probed =
        Trainer::new(fc, run_dir.join("probe")).fit(classifier, &mut probe, &mut [], &device)?;
    Ok(RunResult {
        schedule: name,
        seed,
        curve,
        mlm_loss: out.eval["mlm_loss"],
        mlm_accuracy: out.eval["mlm_accuracy"],
        probe_accuracy: probed.eval["accuracy"],
        probe_mcc: probed.eval.get("mcc").copied().unwrap_or(0.0),
        seconds,
        tokens_per_s,
        params,
    })
}

/// `--quick` checks that pretraining learned, not the paper's ranking.
fn check_learned(setup: &Setup, results: &[RunResult]) -> Result {
    let chance = (setup.vocab as f64).ln();
    for r in results {
        let first = r.curve.first().map_or(f64::NAN, |c| c.1);
        if !(r.mlm_loss < 0.8 * chance && r.mlm_loss < first) {
            return Err(format!("{} (seed {}) did not learn: eval MLM loss {:.3} (first eval {first:.3}, uniform {chance:.3})", r.schedule, r.seed, r.mlm_loss).into());
        }
    }
    Ok(())
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn by_schedule(results: &[RunResult]) -> Vec<(&'static str, Vec<&RunResult>)> {
    schedules()
        .into_iter()
        .map(|(name, _)| {
            (
                name,
                results.iter().filter(|r| r.schedule == name).collect(),
            )
        })
        .collect()
}

fn fmt_ms(xs: &[f64], digits: usize) -> String {
    let (m, s) = mean_sd(xs);
    if xs.len() > 1 {
        format!("{m:.digits$} ± {s:.digits$}")
    } else {
        format!("{m:.digits$}")
    }
}

fn report(setup: &Setup, results: &[RunResult]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Dynamic masking rates (Ankner et al., EACL 2024) at small scale\n"
    );
    let _ = writeln!(
        md,
        "Command: `{}` (wrote this file and `{PLOT}`). Pipeline: `xtask/src/repro_masking.rs`.\n",
        format!("cargo xtask repro masking {}", setup.args).trim_end()
    );
    let _ = writeln!(md, "## Setup\n");
    let _ = writeln!(
        md,
        "| | this reproduction | paper (BERT-Base) |\n|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| model | MosaicBERT-style encoder (ALiBi, GeGLU, post-LN), {} layers × {} wide, {} heads, GeGLU {} | HF BERT-Base, 12 × 768 |",
        setup.layers, setup.hidden, setup.heads, setup.intermediate
    );
    let _ = writeln!(
        md,
        "| data | kiln-data built-in corpus: prose 80% / code 10% / arithmetic 10%, WordPiece vocabulary {} | C4, `bert-base-uncased` vocabulary |",
        setup.vocab
    );
    let _ = writeln!(
        md,
        "| sequence × batch × steps | {} × {} × {} | 128 × 4096 × 70,000 |",
        setup.seq_len, setup.batch, setup.pretrain_steps
    );
    let _ = writeln!(
        md,
        "| optimiser | decoupled AdamW, lr {:.0e}, (0.9, 0.98), ε 1e-6, wd 1e-5; linear decay to 0.02 after 6% warmup | decoupled AdamW, lr 5e-4, same betas, ε, wd and schedule |",
        setup.lr
    );
    let _ = writeln!(
        md,
        "| masking | constant 0.15, constant 0.30, linear 0.30→0.15 over the run | the same (and more) |"
    );
    let _ = writeln!(
        md,
        "| evaluation | MLM loss at a fixed 15% on held-out prose (fixed masks) | MLM loss/accuracy at 15% |"
    );
    let _ = writeln!(
        md,
        "| downstream | acceptability probe (number agreement, CoLA-like): {} training / {} test sentences, {} fine-tuning steps, MCC | GLUE (9 numbers averaged) |",
        setup.probe_train, setup.probe_eval, setup.finetune_steps
    );
    let _ = writeln!(
        md,
        "| seeds | {:?} (pretraining and fine-tuning) | 3 pretraining × 5 fine-tuning |\n",
        setup.seeds
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "Mean{} over seeds.\n",
        if setup.seeds.len() > 1 {
            " ± standard deviation"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "| masking schedule | eval MLM loss @15% ↓ | eval MLM accuracy @15% ↑ | probe MCC ↑ | probe accuracy ↑ | paper GLUE avg |\n|---|---:|---:|---:|---:|---:|"
    );
    let paper = [
        ("constant 0.15", "83.83"),
        ("constant 0.30", "84.12"),
        ("linear 0.30→0.15", "84.29"),
    ];
    for (name, rs) in by_schedule(results) {
        let f = |g: fn(&RunResult) -> f64| rs.iter().map(|r| g(r)).collect::<Vec<_>>();
        let p = paper.iter().find(|p| p.0 == name).map_or("", |p| p.1);
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {p} |",
            fmt_ms(&f(|r| r.mlm_loss), 4),
            fmt_ms(&f(|r| r.mlm_accuracy), 4),
            fmt_ms(&f(|r| r.probe_mcc), 3),
            fmt_ms(&f(|r| r.probe_accuracy), 3)
        );
    }
    let _ = writeln!(md, "\n![eval MLM loss at 15% during pretraining]({PLOT})\n");
    let _ = writeln!(
        md,
        "Per run:\n\n| schedule | seed | eval MLM loss | probe MCC | probe accuracy | pretraining time | tokens/s |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {} | {:.4} | {:.3} | {:.3} | {:.0} s | {:.0} |",
            r.schedule,
            r.seed,
            r.mlm_loss,
            r.probe_mcc,
            r.probe_accuracy,
            r.seconds,
            r.tokens_per_s
        );
    }
    let _ = writeln!(md, "\n## Comparison with the paper\n");
    let (base, lin) = {
        let g = |n: &str| {
            mean_sd(
                &results
                    .iter()
                    .filter(|r| r.schedule == n)
                    .map(|r| r.mlm_loss)
                    .collect::<Vec<_>>(),
            )
            .0
        };
        (g("constant 0.15"), g("linear 0.30→0.15"))
    };
    let (pb, pl) = {
        let g = |n: &str| {
            mean_sd(
                &results
                    .iter()
                    .filter(|r| r.schedule == n)
                    .map(|r| r.probe_mcc)
                    .collect::<Vec<_>>(),
            )
            .0
        };
        (g("constant 0.15"), g("linear 0.30→0.15"))
    };
    let _ = writeln!(
        md,
        "The paper reports average GLUE of 83.83 (constant 15%), 84.12 (constant 30%) and 84.29 (linear 30%→15%, +0.46) for \
         BERT-Base after 70k steps, from 3 pretraining × 5 fine-tuning seeds per cell, and that the linear schedule reaches the \
         baseline's final quality 1.89× sooner. Here the linear schedule's held-out MLM loss at 15% is {lin:.4} against {base:.4} \
         for constant 15% ({:+.4}), and its probe MCC {pl:.3} against {pb:.3} ({:+.3}).\n",
        lin - base,
        pl - pb
    );
    // Seed standard deviation of the constant-15% baseline for one metric.
    let baseline_sd = |metric: fn(&RunResult) -> f64| {
        mean_sd(
            &results
                .iter()
                .filter(|r| r.schedule == "constant 0.15")
                .map(metric)
                .collect::<Vec<_>>(),
        )
        .1
    };
    let sd_base = baseline_sd(|r| r.mlm_loss);
    let verdict = if setup.seeds.len() < 2 {
        "One seed cannot separate the schedules: the difference above is of unknown significance."
            .to_owned()
    } else if (lin - base).abs() > 2.0 * sd_base {
        format!(
            "The MLM-loss difference is more than twice the seed standard deviation of the baseline ({sd_base:.4}), so at this scale the linear schedule is {} than constant 15% on held-out MLM loss.",
            if lin < base { "better" } else { "worse" }
        )
    } else {
        format!(
            "The MLM-loss difference is within twice the seed standard deviation of the baseline ({sd_base:.4}): at this scale the schedules are not separated."
        )
    };
    let sd_probe = baseline_sd(|r| r.probe_mcc);
    let probe_verdict = if setup.seeds.len() < 2 {
        String::new()
    } else if (pl - pb).abs() > 2.0 * sd_probe {
        format!(
            " The probe MCC difference is more than twice the baseline's seed standard deviation ({sd_probe:.3}): the linear schedule is {} on the probe.",
            if pl > pb { "better" } else { "worse" }
        )
    } else {
        format!(
            " The probe MCC difference is within twice the baseline's seed standard deviation ({sd_probe:.3}): the probe does not separate the schedules at this scale."
        )
    };
    let _ = writeln!(md, "{verdict}{probe_verdict}\n");
    let _ = writeln!(
        md,
        "What carries over and what does not: the mechanics are the paper's — the schedule `p(τ) = p₀ · f(τ)` with Composer's \
         linear scheduler (kiln-schedules, checked against Composer), BERT's 80/10/10 masking at the scheduled rate each batch \
         (kiln-data, checked against transformers' collator), evaluation at a fixed 15% — but the scale is not: a model of about \
         {:.2}M parameters, {} sequences of {} tokens per step and a generated corpus far simpler than C4, and a single \
         synthetic probe instead of GLUE. The paper's effect is +0.46 GLUE points measured over 15 runs per cell; nothing here \
         confirms or refutes that number. This run ({} seed(s)) took {:.0} minutes of pretraining and fine-tuning on {}; \
         `--quick` (1 seed, {} steps) runs in CI and only checks that pretraining learns.\n",
        results.first().map_or(0, |r| r.params) as f64 / 1e6,
        setup.batch,
        setup.seq_len,
        setup.seeds.len(),
        results.iter().map(|r| r.seconds).sum::<f64>() / 60.0,
        crate::bench::machine(),
        Setup::new(true).pretrain_steps,
    );
    md
}

fn plot(results: &[RunResult]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let curves: Vec<(&str, Vec<(f64, f64)>)> = by_schedule(results)
            .into_iter()
            .map(|(name, rs)| {
                let steps: Vec<u64> = rs
                    .first()
                    .map(|r| r.curve.iter().map(|c| c.0).collect())
                    .unwrap_or_default();
                let pts = steps
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| {
                        (
                            s as f64,
                            rs.iter().map(|r| r.curve[i].1).sum::<f64>() / rs.len() as f64,
                        )
                    })
                    .collect();
                (name, pts)
            })
            .collect();
        let all: Vec<(f64, f64)> = curves.iter().flat_map(|c| c.1.iter().copied()).collect();
        let (x1, y0, y1) = (
            all.iter().map(|p| p.0).fold(1.0, f64::max),
            all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
            all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "held-out MLM loss at 15% masking during pretraining (mean over seeds)",
                ("sans-serif", 18),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x1, (y0 - 0.05 * (y1 - y0))..(y1 + 0.05 * (y1 - y0)))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("MLM loss (nats)")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
