//! `cargo xtask repro lora`: "LoRA Learns Less and Forgets Less" (Biderman, Portes, Ortiz,
//! Paul, Greengard, Jennings, King, Havens, Chiley, Frankle, Blakeney, Cunningham; TMLR 2024,
//! arXiv 2405.09673) at small scale.
//!
//! A small GPT-2 is pretrained on kiln-data's built-in prose (the source domain), then
//! fine-tuned on a target domain (code; arithmetic as a second one) by full fine-tuning and by
//! LoRA (kiln-lora, rank r ∈ {4, 16, 64}, α = 2r, on attention only and on all linear layers),
//! each over a small learning-rate sweep. Every run logs the held-out target loss ("learns") and
//! the held-out prose loss ("forgets") during training; the full fine-tunes also record the
//! spectrum of ΔW = W_ft − W_base at every evaluation, through the same files path as
//! `kiln lora spectrum` (the model is saved as a Hugging Face checkpoint and compared with the
//! pretrained one). Full fine-tuning with weight decay and with dropout, at its best LR, is the
//! regulariser baseline. Results go to `docs/reproductions/lora.md` with four SVG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_checkpoint::Dtype;
use kiln_data::corpus::{self, Domain};
use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
use kiln_lora::{LoraConfig, MatrixSpectrum, Modules, SpectrumOptions};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::{Duration, LrSchedule};
use kiln_train::burn::module::Module;
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::CausalLmTask;
use kiln_train::{
    Algorithm, Context, Event, OptimizerConfig, TrainState, TrainTask, Trainer, TrainerConfig,
};
use plotters::prelude::*;
use serde_json::Value;

use crate::{Result, root, write_atomic};

const REPORT: &str = "lora.md";
const PLOT_CURVES: &str = "lora-curves.svg";
const PLOT_PARETO: &str = "lora-pareto.svg";
const PLOT_RANK: &str = "lora-rank.svg";
const HEATMAP: &str = "lora-rank-heatmap.svg";
/// τ of rank@τ (the paper's 0.9).
const TAU: f64 = 0.9;

/// Sizes of a reproduction.
#[derive(Debug, Clone)]
struct Setup {
    quick: bool,
    /// The command-line arguments that made it (for the report).
    args: String,
    seed: u64,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    seq_len: usize,
    batch: usize,
    vocab: usize,
    /// Documents of each domain for the tokenizer and the training sets.
    docs: u64,
    /// Held-out sequences per evaluation set.
    eval_seqs: usize,
    pretrain_steps: u64,
    pretrain_lr: f64,
    /// Share of pretraining sequences from each of code and arithmetic (the rest is prose).
    pretrain_side_share: f64,
    finetune_steps: u64,
    eval_every: u64,
    domains: Vec<Domain>,
    /// LoRA configurations: (rank, targets).
    lora: Vec<(usize, Target)>,
    full_lrs: Vec<f64>,
    lora_lrs: Vec<f64>,
    /// Decoupled weight decay λ (Composer's: θ ← θ − (lr_t / lr)·λ·θ each step) for the
    /// regulariser runs.
    weight_decays: Vec<f64>,
    /// Dropout (residual, embedding and attention) for the regulariser runs.
    dropouts: Vec<f64>,
}

impl Setup {
    fn new(quick: bool) -> Self {
        let all = |ranks: &[usize]| {
            ranks
                .iter()
                .flat_map(|&r| [(r, Target::Attention), (r, Target::AllLinear)])
                .collect()
        };
        if quick {
            Self {
                quick,
                args: String::new(),
                seed: 17,
                n_embd: 64,
                n_layer: 2,
                n_head: 2,
                seq_len: 64,
                batch: 8,
                vocab: 512,
                docs: 600,
                eval_seqs: 16,
                pretrain_steps: 150,
                pretrain_lr: 3e-3,
                pretrain_side_share: 0.05,
                finetune_steps: 40,
                eval_every: 10,
                domains: vec![Domain::Code],
                lora: vec![(4, Target::Attention), (16, Target::AllLinear)],
                full_lrs: vec![3e-4],
                lora_lrs: vec![1e-3],
                weight_decays: vec![1e-3],
                dropouts: vec![0.1],
            }
        } else {
            Self {
                quick,
                args: String::new(),
                seed: 17,
                n_embd: 128,
                n_layer: 4,
                n_head: 4,
                seq_len: 64,
                batch: 16,
                vocab: 1024,
                docs: 10_000,
                eval_seqs: 64,
                pretrain_steps: 1500,
                pretrain_lr: 3e-3,
                pretrain_side_share: 0.05,
                finetune_steps: 200,
                eval_every: 20,
                domains: vec![Domain::Code, Domain::Arithmetic],
                lora: all(&[4, 16, 64]),
                full_lrs: vec![3e-5, 1e-4, 3e-4, 1e-3],
                lora_lrs: vec![1e-4, 3e-4, 1e-3, 3e-3],
                weight_decays: vec![1e-4, 1e-3],
                dropouts: vec![0.1, 0.3],
            }
        }
    }
}

/// Which linear layers LoRA adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// `attn.c_attn` and `attn.c_proj` (the original LoRA's choice; the paper's "attention").
    Attention,
    /// Every linear layer but the output head (PEFT's `all-linear`).
    AllLinear,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Attention => "attention",
            Self::AllLinear => "all-linear",
        }
    }

    fn modules(self) -> Modules {
        match self {
            // PEFT's regex form: the whole module name must match.
            Self::Attention => Modules::Pattern(r".*\.attn\.(c_attn|c_proj)".into()),
            Self::AllLinear => Modules::Pattern("all-linear".into()),
        }
    }
}

/// How a run fine-tunes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Full,
    Lora { r: usize, target: Target },
}

impl Method {
    fn label(self) -> String {
        match self {
            Self::Full => "full FT".into(),
            Self::Lora { r, target } => format!("LoRA r{r} {}", target.name()),
        }
    }
}

/// A regulariser added to full fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reg {
    None,
    WeightDecay(f64),
    Dropout(f64),
}

impl Reg {
    fn label(self) -> String {
        match self {
            Self::None => String::new(),
            Self::WeightDecay(w) => format!(" + weight decay {w}"),
            Self::Dropout(p) => format!(" + dropout {p}"),
        }
    }
}

/// One fine-tuning run.
#[derive(Debug, Clone)]
struct Run {
    domain: Domain,
    method: Method,
    reg: Reg,
    lr: f64,
    trainable: usize,
    total: usize,
    /// (step, target loss, source loss), from step 0 (the pretrained model).
    curve: Vec<(u64, f64, f64)>,
    /// The loss became non-finite at this step (a learning rate too high).
    diverged: Option<u64>,
    seconds: f64,
    /// Full fine-tunes: the spectrum of ΔW at each evaluation.
    spectra: Spectra,
}

impl Run {
    fn label(&self) -> String {
        format!("{}{}", self.method.label(), self.reg.label())
    }
    fn target(&self) -> f64 {
        self.curve.last().map_or(f64::NAN, |c| c.1)
    }
    fn source(&self) -> f64 {
        self.curve.last().map_or(f64::NAN, |c| c.2)
    }
    fn ok(&self) -> bool {
        self.diverged.is_none() && self.target().is_finite() && self.source().is_finite()
    }
}

struct Pretrained {
    model: Gpt2LmHead,
    /// Its Hugging Face directory (the base of the spectra).
    dir: PathBuf,
    /// Held-out prose loss at each evaluation of pretraining.
    curve: Vec<(u64, f64)>,
    seconds: f64,
    params: usize,
    /// Share of its training sequences from code and arithmetic.
    other_share: f64,
}

type Sequences = Vec<Vec<u32>>;
/// Spectra of ΔW by evaluation step.
type Spectra = Vec<(u64, Vec<MatrixSpectrum>)>;

struct Data {
    tokenizer_vocab: usize,
    eos: u32,
    /// Pretraining sequences: prose, with a share of code and arithmetic from other documents
    /// than the fine-tuning sets.
    pretrain: Vec<Vec<u32>>,
    /// The share of pretraining sequences from code and arithmetic (together).
    pretrain_other_share: f64,
    prose_eval: Vec<Vec<u32>>,
    /// Per target domain: (training, held-out) sequences.
    targets: BTreeMap<Domain, (Sequences, Sequences)>,
}

pub(crate) fn command(args: &[&str]) -> Result {
    let mut quick = false;
    let mut out = root().join("docs/reproductions");
    let (mut device, mut pretrain, mut finetune) = (None, None, None);
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
            "--pretrain-steps" => pretrain = Some(value("--pretrain-steps")?.parse::<u64>().map_err(|e| format!("--pretrain-steps: {e}"))?),
            "--finetune-steps" => finetune = Some(value("--finetune-steps")?.parse::<u64>().map_err(|e| format!("--finetune-steps: {e}"))?),
            other => return Err(format!("unknown argument `{other}` (expected --quick, --out DIR, --pretrain-steps N, --finetune-steps N, --device cpu|cuda[:N])").into()),
        }
    }
    let device = crate::pipeline_device(device.as_deref())?;
    let mut setup = Setup::new(quick);
    setup.pretrain_steps = pretrain.unwrap_or(setup.pretrain_steps);
    setup.finetune_steps = finetune.unwrap_or(setup.finetune_steps);
    if setup.pretrain_steps < 10 || setup.finetune_steps < setup.eval_every {
        return Err(format!(
            "give at least 10 pretraining steps and {} fine-tuning steps (one evaluation interval)",
            setup.eval_every
        )
        .into());
    }
    setup.args = crate::shown_args(args);
    let work = std::env::temp_dir().join(format!("kiln-repro-lora-{}", std::process::id()));
    let started = Instant::now();
    let result = run_all(&setup, &work, &device);
    let _ = std::fs::remove_dir_all(&work);
    let (pre, runs) = result?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    check_learned(&setup, &pre, &runs)?;
    let best = best_runs(&runs);
    write_atomic(
        &out.join(PLOT_CURVES),
        plot_curves(&setup, &best)?.as_bytes(),
    )?;
    write_atomic(
        &out.join(PLOT_PARETO),
        plot_pareto(&setup, &runs)?.as_bytes(),
    )?;
    write_atomic(&out.join(PLOT_RANK), plot_rank(&setup, &best)?.as_bytes())?;
    let last = best
        .iter()
        .find(|r| r.method == Method::Full && r.reg == Reg::None)
        .and_then(|r| r.spectra.last())
        .map(|s| s.1.clone())
        .unwrap_or_default();
    write_atomic(
        &out.join(HEATMAP),
        kiln_lora::heatmap_svg(&last, TAU).as_bytes(),
    )?;
    let md = report(&setup, &pre, &runs, &best, minutes);
    write_atomic(&out.join(REPORT), md.as_bytes())?;
    eprintln!("wrote {} and its plots", out.join(REPORT).display());
    Ok(())
}

fn prepare(setup: &Setup) -> Result<Data> {
    let docs: BTreeMap<Domain, Vec<String>> = Domain::ALL
        .iter()
        .map(|d| (*d, corpus::documents(*d, 0, 0, setup.docs)))
        .collect();
    // One byte-level BPE over all three domains, as GPT-2's covers code and numbers.
    let tokenizer = Tokenizer::train(
        TokenizerKind::Bpe,
        docs.values().flatten().map(String::as_str),
        setup.vocab,
        2,
    )?;
    let eos = tokenizer
        .special_ids()
        .eos
        .ok_or("the BPE tokenizer has no end-of-text token")?;
    let held_out = |d: Domain| -> Result<Vec<Vec<u32>>> {
        // Another seed of the generator: documents never trained on.
        let docs = corpus::documents(d, 99, 0, setup.docs / 4);
        let mut seqs = crate::pack(&tokenizer, &docs, eos, setup.seq_len)?;
        if seqs.len() < setup.eval_seqs {
            return Err(format!(
                "only {} held-out {} sequences, {} needed",
                seqs.len(),
                d.name(),
                setup.eval_seqs
            )
            .into());
        }
        seqs.truncate(setup.eval_seqs);
        Ok(seqs)
    };
    let mut targets = BTreeMap::new();
    for &d in &setup.domains {
        targets.insert(
            d,
            (
                crate::pack(&tokenizer, &docs[&d], eos, setup.seq_len)?,
                held_out(d)?,
            ),
        );
    }
    // Pretraining: the prose, plus a few code and arithmetic documents (another seed of the
    // generator) — as a general LLM has seen some code before it is fine-tuned on code; without
    // them the target domains' token embeddings would never have been trained, which LoRA (no
    // embedding updates) cannot make up for.
    let mut pretrain = crate::pack(&tokenizer, &docs[&Domain::Prose], eos, setup.seq_len)?;
    let prose = pretrain.len();
    let side = (prose as f64 * setup.pretrain_side_share / (1.0 - 2.0 * setup.pretrain_side_share))
        .round() as usize;
    for d in [Domain::Code, Domain::Arithmetic] {
        let docs = corpus::documents(d, 7, 0, setup.docs / 4);
        let mut seqs = crate::pack(&tokenizer, &docs, eos, setup.seq_len)?;
        if seqs.len() < side {
            return Err(format!(
                "only {} {} sequences for pretraining, {side} needed",
                seqs.len(),
                d.name()
            )
            .into());
        }
        seqs.truncate(side);
        pretrain.extend(seqs);
    }
    let pretrain_other_share = (pretrain.len() - prose) as f64 / pretrain.len() as f64;
    Ok(Data {
        tokenizer_vocab: tokenizer.vocab_size(),
        eos,
        pretrain,
        pretrain_other_share,
        prose_eval: held_out(Domain::Prose)?,
        targets,
    })
}

fn eval_curve(run_dir: &Path, source: bool) -> Result<Vec<(u64, f64, f64)>> {
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
    Ok(metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["split"] == "eval")
        .filter_map(|v| {
            Some((
                v["step"].as_u64()?,
                v["loss"].as_f64()?,
                if source {
                    v["source_loss"].as_f64()?
                } else {
                    f64::NAN
                },
            ))
        })
        .collect())
}

fn run_all(setup: &Setup, work: &Path, device: &Device) -> Result<(Pretrained, Vec<Run>)> {
    std::fs::create_dir_all(work)?;
    let data = prepare(setup)?;
    let pre = pretrain(setup, &data, work, device)?;
    let mut runs = Vec::new();
    for &domain in &setup.domains {
        // Step 0 of every curve: the pretrained model on the two held-out sets.
        let start = {
            let (train, eval) = &data.targets[&domain];
            let mut task = CausalLmTask::new(
                train[..1].to_vec(),
                eval.clone(),
                setup.batch,
                setup.seed,
                device,
            )?
            .with_eval_set("source", data.prose_eval.clone())?;
            let m = task.evaluate(&pre.model, &TrainState::default())?;
            (0, m["loss"], m["source_loss"])
        };
        let methods: Vec<Method> = std::iter::once(Method::Full)
            .chain(
                setup
                    .lora
                    .iter()
                    .map(|&(r, target)| Method::Lora { r, target }),
            )
            .collect();
        for method in methods {
            let lrs = match method {
                Method::Full => &setup.full_lrs,
                Method::Lora { .. } => &setup.lora_lrs,
            };
            for &lr in lrs {
                runs.push(finetune(
                    setup,
                    &data,
                    &pre,
                    work,
                    device,
                    (domain, method, Reg::None, lr),
                    start,
                )?);
            }
        }
        // The regularisers, on full fine-tuning at its best LR.
        let lr = runs
            .iter()
            .filter(|r| r.domain == domain && r.method == Method::Full && r.ok())
            .min_by(|a, b| a.target().total_cmp(&b.target()))
            .map_or(setup.full_lrs[0], |r| r.lr);
        let regs = setup
            .weight_decays
            .iter()
            .map(|&w| Reg::WeightDecay(w))
            .chain(setup.dropouts.iter().map(|&p| Reg::Dropout(p)));
        for reg in regs {
            runs.push(finetune(
                setup,
                &data,
                &pre,
                work,
                device,
                (domain, Method::Full, reg, lr),
                start,
            )?);
        }
    }
    Ok((pre, runs))
}

fn gpt2_config(setup: &Setup, vocab: usize, eos: u32) -> Gpt2Config {
    Gpt2Config {
        vocab_size: vocab.div_ceil(8) * 8,
        n_positions: setup.seq_len,
        n_embd: setup.n_embd,
        n_layer: setup.n_layer,
        n_head: setup.n_head,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        bos_token_id: Some(eos as usize),
        eos_token_id: Some(eos as usize),
        ..Gpt2Config::gpt2()
    }
}

fn pretrain(setup: &Setup, data: &Data, work: &Path, device: &Device) -> Result<Pretrained> {
    let device = device.clone().autodiff();
    eprintln!(
        "== pretraining on prose with {:.0}% code and arithmetic ({} steps)",
        100.0 * data.pretrain_other_share,
        setup.pretrain_steps
    );
    let config = gpt2_config(setup, data.tokenizer_vocab, data.eos);
    device.seed(setup.seed);
    let model = Gpt2LmHead::init(&config, &device)?;
    let params = model.num_params();
    let mut task = CausalLmTask::new(
        data.pretrain.clone(),
        data.prose_eval.clone(),
        setup.batch,
        setup.seed,
        &device,
    )?;
    let mut tc = TrainerConfig::new(
        Duration::batches(setup.pretrain_steps),
        OptimizerConfig::Adamw {
            lr: setup.pretrain_lr,
            betas: [0.9, 0.95],
            eps: 1e-8,
            weight_decay: 1e-5,
            decoupled: true,
        },
    );
    tc.lr_schedule = serde_json::from_str(
        r#"{"name": "cosine_with_warmup", "t_warmup": "0.05dur", "alpha_f": 0.1}"#,
    )?;
    tc.eval_interval = Some(Duration::batches((setup.pretrain_steps / 10).max(1)));
    tc.clip_grad_norm = Some(1.0);
    tc.autoresume = false;
    tc.seed = setup.seed;
    let run_dir = work.join("pretrain");
    let started = Instant::now();
    let out = Trainer::new(tc, &run_dir).fit(model, &mut task, &mut [], &device)?;
    let seconds = started.elapsed().as_secs_f64();
    let curve = eval_curve(&run_dir, false)?
        .into_iter()
        .map(|(s, l, _)| (s, l))
        .collect();
    let dir = work.join("base");
    out.model.save(&dir, Dtype::F32, false)?;
    Ok(Pretrained {
        model: out.model,
        dir,
        curve,
        seconds,
        params,
        other_share: data.pretrain_other_share,
    })
}

/// Saves the model at each evaluation and measures the spectrum of its change from the
/// pretrained checkpoint (what `kiln lora spectrum BASE FT` prints).
struct SpectrumProbe {
    base: PathBuf,
    scratch: PathBuf,
    /// Shared with the caller, which reads it after the run.
    spectra: Arc<Mutex<Spectra>>,
}

impl Algorithm<Gpt2LmHead> for SpectrumProbe {
    fn name(&self) -> &str {
        "spectrum-probe"
    }

    fn on_event(
        &mut self,
        event: Event,
        ctx: &mut Context<'_, Gpt2LmHead>,
    ) -> std::result::Result<(), String> {
        if event != Event::EvalEnd {
            return Ok(());
        }
        let e = |e: &dyn std::fmt::Display| e.to_string();
        ctx.model
            .save(&self.scratch, Dtype::F32, true)
            .map_err(|x| e(&x))?;
        let options = SpectrumOptions {
            threshold: TAU,
            ..SpectrumOptions::default()
        };
        let s = kiln_lora::spectrum(&self.base, &self.scratch, &options, &mut |_, _, _| {})
            .map_err(|x| e(&x))?;
        self.spectra
            .lock()
            .map_err(|_| "spectrum records poisoned".to_owned())?
            .push((ctx.state.step, s));
        Ok(())
    }
}

/// Sets every dropout of a GPT-2 to `p`.
fn set_dropout(model: &mut Gpt2LmHead, p: f64) {
    let t = &mut model.transformer;
    t.drop.prob = p;
    for block in &mut t.h {
        block.attn.attn_dropout.prob = p;
        block.attn.resid_dropout.prob = p;
        block.mlp.dropout.prob = p;
    }
}

fn finetune(
    setup: &Setup,
    data: &Data,
    pre: &Pretrained,
    work: &Path,
    device: &Device,
    (domain, method, reg, lr): (Domain, Method, Reg, f64),
    start: (u64, f64, f64),
) -> Result<Run> {
    let device = device.clone().autodiff();
    let label = format!("{}{}", method.label(), reg.label());
    eprintln!("== {}: {label}, lr {lr:e}", domain.name());
    let mut model = pre.model.clone();
    if let Reg::Dropout(p) = reg {
        set_dropout(&mut model, p);
    }
    let (model, trainable, total) = match method {
        Method::Full => {
            let n = model.num_params();
            (model, n, n)
        }
        Method::Lora { r, target } => {
            let config = LoraConfig::new(r, 2.0 * r as f64, target.modules());
            let (m, report) = kiln_lora::train::attach(model, &config, setup.seed)?;
            (m, report.trainable, report.total)
        }
    };
    let (train, eval) = &data.targets[&domain];
    let mut task = CausalLmTask::new(
        train.clone(),
        eval.clone(),
        setup.batch,
        setup.seed,
        &device,
    )?
    .with_eval_set("source", data.prose_eval.clone())?;
    let weight_decay = match reg {
        Reg::WeightDecay(w) => w,
        _ => 0.0,
    };
    // The paper's fine-tuning recipe: Composer's decoupled LionW, betas (0.9, 0.95), no weight
    // decay, cosine with 10% warmup down to 0.01 of the peak, gradient norm clipped at 1.
    let mut tc = TrainerConfig::new(
        Duration::batches(setup.finetune_steps),
        OptimizerConfig::Lion {
            lr,
            betas: [0.9, 0.95],
            weight_decay,
            decoupled: true,
        },
    );
    let schedule: LrSchedule = serde_json::from_str(
        r#"{"name": "cosine_with_warmup", "t_warmup": "0.1dur", "alpha_f": 0.01}"#,
    )?;
    tc.lr_schedule = schedule;
    tc.eval_interval = Some(Duration::batches(setup.eval_every));
    tc.clip_grad_norm = Some(1.0);
    tc.autoresume = false;
    tc.seed = setup.seed;
    let name = format!(
        "{}-{}-{lr:e}",
        domain.name(),
        label.replace([' ', '+', '.'], "_")
    );
    let run_dir = work.join(name);
    let mut algorithms: Vec<Box<dyn Algorithm<Gpt2LmHead>>> = Vec::new();
    let spectra = Arc::new(Mutex::new(Vec::new()));
    if method == Method::Full {
        algorithms.push(Box::new(SpectrumProbe {
            base: pre.dir.clone(),
            scratch: work.join("spectrum-scratch"),
            spectra: spectra.clone(),
        }));
    }
    let started = Instant::now();
    let fit = Trainer::new(tc, &run_dir).fit(model, &mut task, &mut algorithms, &device);
    let seconds = started.elapsed().as_secs_f64();
    let diverged = match fit {
        Ok(_) => None,
        Err(kiln_train::Error::NonFiniteLoss { step, .. }) => {
            eprintln!("   diverged at step {step}");
            Some(step)
        }
        Err(e) => return Err(e.into()),
    };
    let mut curve = vec![start];
    if diverged.is_none() {
        curve.extend(eval_curve(&run_dir, true)?);
    }
    drop(algorithms);
    let spectra = std::mem::take(&mut *spectra.lock().map_err(|_| "spectrum records poisoned")?);
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(Run {
        domain,
        method,
        reg,
        lr,
        trainable,
        total,
        curve,
        diverged,
        seconds,
        spectra,
    })
}

/// The best run (lowest final target loss, the paper's criterion) of each (domain, method)
/// without a regulariser, then every regularised run.
fn best_runs(runs: &[Run]) -> Vec<Run> {
    let mut best: Vec<Run> = Vec::new();
    for r in runs.iter().filter(|r| r.reg == Reg::None && r.ok()) {
        match best
            .iter_mut()
            .find(|b| b.domain == r.domain && b.method == r.method)
        {
            Some(b) if b.target() <= r.target() => {}
            Some(b) => *b = r.clone(),
            None => best.push(r.clone()),
        }
    }
    best.extend(
        runs.iter()
            .filter(|r| r.reg != Reg::None && r.ok())
            .cloned(),
    );
    best
}

/// The source loss where the run's target loss first reaches `level` (linear interpolation
/// between evaluations): forgetting at equal learning.
fn source_at(curve: &[(u64, f64, f64)], level: f64) -> Option<f64> {
    if let Some(&(_, t, s)) = curve.first()
        && t <= level
    {
        return Some(s);
    }
    curve.windows(2).find_map(|w| {
        let ((_, t0, s0), (_, t1, s1)) = (w[0], w[1]);
        // t0 > level ≥ t1 here, so t0 − t1 > 0.
        (t1 <= level).then(|| s0 + (t0 - level) / (t0 - t1) * (s1 - s0))
    })
}

/// The target-loss level every run in `runs` reaches: the largest of their best target losses.
fn common_level(runs: &[&Run]) -> f64 {
    runs.iter()
        .map(|r| r.curve.iter().map(|c| c.1).fold(f64::INFINITY, f64::min))
        .fold(f64::NEG_INFINITY, f64::max)
}

/// `--quick` checks that the pipeline works (pretraining and every fine-tune learn), not the
/// paper's claims.
fn check_learned(setup: &Setup, pre: &Pretrained, runs: &[Run]) -> Result {
    let uniform = (setup.vocab as f64).ln();
    let last = pre.curve.last().map_or(f64::NAN, |c| c.1);
    if last.is_nan() || last >= 0.8 * uniform {
        return Err(format!(
            "pretraining did not learn: held-out prose loss {last:.3} (uniform {uniform:.3})"
        )
        .into());
    }
    for r in runs {
        if r.ok() && r.target() >= r.curve[0].1 {
            return Err(format!(
                "{} on {} (lr {:e}) did not learn: target loss {:.3} → {:.3}",
                r.label(),
                r.domain.name(),
                r.lr,
                r.curve[0].1,
                r.target()
            )
            .into());
        }
    }
    if runs.iter().all(|r| !r.ok()) {
        return Err("every fine-tuning run diverged".into());
    }
    Ok(())
}

/// The module type of a name: the name with its layer index folded (`transformer.h.N.attn.c_attn`).
fn module_type(name: &str) -> String {
    name.split('.')
        .map(|s| if s.parse::<usize>().is_ok() { "N" } else { s })
        .collect::<Vec<_>>()
        .join(".")
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

fn lr_note(best: f64, grid: &[f64]) -> &'static str {
    let (lo, hi) = (
        grid.iter().copied().fold(f64::INFINITY, f64::min),
        grid.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    if grid.len() > 1 && (best == lo || best == hi) {
        " (edge of the sweep)"
    } else {
        ""
    }
}

#[allow(clippy::too_many_lines)]
fn report(setup: &Setup, pre: &Pretrained, runs: &[Run], best: &[Run], minutes: f64) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(
        w,
        "# \"LoRA Learns Less and Forgets Less\" (Biderman et al., TMLR 2024) at small scale\n"
    );
    let _ = writeln!(
        w,
        "Command: `{}` (wrote this file, `{PLOT_CURVES}`, `{PLOT_PARETO}`, `{PLOT_RANK}` and `{HEATMAP}`). \
         Pipeline: `xtask/src/repro_lora.rs`. Every number below is computed by that run.\n",
        format!("cargo xtask repro lora {}", setup.args).trim_end()
    );
    let _ = writeln!(w, "## Setup\n");
    let _ = writeln!(
        w,
        "| | this reproduction | paper (v2 / TMLR) |\n|---|---|---|"
    );
    let _ = writeln!(
        w,
        "| base model | GPT-2 ({} layers × {}, {} heads, {:.2}M parameters) pretrained here for {} steps on kiln-data's generated prose with {:.0}% of its sequences from code and arithmetic (other documents than the fine-tuning sets; batch {} × {} tokens, AdamW 3e-3, cosine) | Llama-2-7B (which saw some code and math in pretraining) |",
        setup.n_layer,
        setup.n_embd,
        setup.n_head,
        pre.params as f64 / 1e6,
        setup.pretrain_steps,
        100.0 * pre.other_share,
        setup.batch,
        setup.seq_len
    );
    let _ = writeln!(
        w,
        "| target domains | {} (kiln-data's generated corpora; one byte-level BPE of {} tokens over all domains) | code (StarCoder-Python, Magicoder) and math (OpenWebMath, MetaMathQA) |",
        setup
            .domains
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", "),
        setup.vocab
    );
    let _ = writeln!(
        w,
        "| learning metric | held-out target-domain loss (nats/token, {} sequences) | HumanEval pass@1, GSM8K |",
        setup.eval_seqs
    );
    let _ = writeln!(
        w,
        "| forgetting metric | held-out prose loss (the pretraining domain, {} sequences) | mean of HellaSwag, ARC-Challenge, WinoGrande |",
        setup.eval_seqs
    );
    let _ = writeln!(
        w,
        "| fine-tuning | {} steps × {} sequences × {} tokens; decoupled LionW (0.9, 0.95), no weight decay, cosine with 10% warmup to 0.01×, clip 1.0 | the same optimiser and schedule (IFT), 1–16 epochs |",
        setup.finetune_steps, setup.batch, setup.seq_len
    );
    let _ = writeln!(
        w,
        "| LoRA | r ∈ {{{}}}, α = 2r, PEFT default init, no dropout; attention (`attn.c_attn`, `attn.c_proj`) or all linear layers (kiln-lora, `attach`) | r ∈ {{16, 64, 256}}, α = 2r; attention, MLP, all |",
        {
            let mut r: Vec<usize> = setup.lora.iter().map(|l| l.0).collect();
            r.dedup();
            r.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        w,
        "| LR sweep | full FT {:?}, LoRA {:?}; best = lowest final target loss | \"exhaustive\"; full 1e-5–5e-5, LoRA 1e-4–2e-4 |",
        setup.full_lrs, setup.lora_lrs
    );
    let _ = writeln!(
        w,
        "| regularisers | full FT at its best LR with decoupled weight decay λ ∈ {:?} per step, or dropout p ∈ {:?} (residual, embedding, attention) | weight decay, dropout (values not published) |",
        setup.weight_decays, setup.dropouts
    );
    let _ = writeln!(
        w,
        "| spectrum | rank@{TAU} (σ² energy) of ΔW = W_ft − W_base per matrix at every evaluation of each full fine-tune, by `kiln_lora::spectrum` on saved checkpoints | rank@0.9 of ΔW, Llama-2-7B CPT checkpoints |"
    );
    let _ = writeln!(
        w,
        "| seeds | one ({}) | one per configuration |\n",
        setup.seed
    );
    let uniform = (setup.vocab as f64).ln();
    let _ = writeln!(
        w,
        "Pretraining: held-out prose loss {:.3} → {:.3} nats/token (uniform over the vocabulary: {uniform:.3}) in {:.0} s.\n",
        pre.curve.first().map_or(f64::NAN, |c| c.1),
        pre.curve.last().map_or(f64::NAN, |c| c.1),
        pre.seconds
    );

    let _ = writeln!(w, "## Learning and forgetting\n");
    let _ = writeln!(
        w,
        "Best learning rate of each method; target loss ↓ is what was learned, prose loss ↑ what was forgotten \
         (both held out, nats/token; Δ from the pretrained model). \"Prose loss at equal target loss\" interpolates each run's \
         curve at the target-loss level that every listed run of the domain reaches (the largest of their best target losses), \
         so methods are compared at the same amount learned.\n"
    );
    for &domain in &setup.domains {
        let rows: Vec<&Run> = best.iter().filter(|r| r.domain == domain).collect();
        if rows.is_empty() {
            continue;
        }
        let level = common_level(&rows);
        let start = rows[0].curve[0];
        let _ = writeln!(
            w,
            "### {}\n\nPretrained model: target loss {:.4}, prose loss {:.4}. Equal-target level: {level:.4}.\n",
            domain.name(),
            start.1,
            start.2
        );
        let _ = writeln!(
            w,
            "| method | trainable parameters | best LR | target loss (Δ) | prose loss (Δ) | prose loss at target {level:.3} | time |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for r in &rows {
            let grid = match r.method {
                Method::Full => &setup.full_lrs,
                Method::Lora { .. } => &setup.lora_lrs,
            };
            let at = source_at(&r.curve, level).map_or("—".to_owned(), |s| format!("{s:.4}"));
            let _ = writeln!(
                w,
                "| {} | {} ({:.2}%) | {:e}{} | {:.4} ({:+.4}) | {:.4} ({:+.4}) | {at} | {:.0} s |",
                r.label(),
                r.trainable,
                100.0 * r.trainable as f64 / r.total as f64,
                r.lr,
                if r.reg == Reg::None {
                    lr_note(r.lr, grid)
                } else {
                    " (full FT's)"
                },
                r.target(),
                r.target() - start.1,
                r.source(),
                r.source() - start.2,
                r.seconds
            );
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(
        w,
        "![target loss (learning) and prose loss (forgetting) during fine-tuning]({PLOT_CURVES})\n"
    );
    let _ = writeln!(
        w,
        "![learning–forgetting trade-off of every run and evaluation]({PLOT_PARETO})\n"
    );

    // The paper's claims, each decided by the numbers above.
    let _ = writeln!(w, "## Comparison with the paper\n");
    for &domain in &setup.domains {
        let plain: Vec<&Run> = best
            .iter()
            .filter(|r| r.domain == domain && r.reg == Reg::None)
            .collect();
        let Some(full) = plain.iter().find(|r| r.method == Method::Full) else {
            continue;
        };
        let loras: Vec<&&Run> = plain.iter().filter(|r| r.method != Method::Full).collect();
        let Some(best_lora) = loras
            .iter()
            .min_by(|a, b| a.target().total_cmp(&b.target()))
        else {
            continue;
        };
        let level = common_level(&plain);
        let learn_less = loras.iter().filter(|r| r.target() > full.target()).count();
        let forget_less = loras.iter().filter(|r| r.source() < full.source()).count();
        let full_at = source_at(&full.curve, level);
        let forget_less_eq = loras
            .iter()
            .filter(|r| match (source_at(&r.curve, level), full_at) {
                (Some(a), Some(b)) => a < b,
                _ => false,
            })
            .count();
        let _ = writeln!(
            w,
            "**{}.** *LoRA learns less:* full fine-tuning reaches target loss {:.4}; the best LoRA ({}) {:.4}; {} of {} LoRA configurations end above full FT. \
             *LoRA forgets less:* full FT ends at prose loss {:.4} ({:+.4}); {} of {} LoRA configurations end lower, and at equal target loss {level:.3} \
             {} of {} forget less than full FT ({}). *Learning rates:* full FT's best is {:e}; LoRA's best are {}.\n",
            domain.name(),
            full.target(),
            best_lora.label(),
            best_lora.target(),
            learn_less,
            loras.len(),
            full.source(),
            full.source() - full.curve[0].2,
            forget_less,
            loras.len(),
            forget_less_eq,
            loras.len(),
            full_at.map_or("full FT: —".to_owned(), |s| format!("full FT: {s:.4}")),
            full.lr,
            loras
                .iter()
                .map(|r| format!("{:e}", r.lr))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Regularisers at equal target loss.
        let regs: Vec<&Run> = best
            .iter()
            .filter(|r| r.domain == domain && r.reg != Reg::None)
            .collect();
        if !regs.is_empty() {
            let mut all = plain.clone();
            all.extend(regs.iter().copied());
            let level = common_level(&all);
            let best_lora_at = loras
                .iter()
                .filter_map(|r| source_at(&r.curve, level).map(|s| (s, r.label())))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let reg_text: Vec<String> = regs
                .iter()
                .map(|r| {
                    format!(
                        "{}: {}",
                        r.label(),
                        source_at(&r.curve, level).map_or("—".into(), |s| format!("{s:.4}"))
                    )
                })
                .collect();
            let _ = writeln!(
                w,
                "*Regularisers* (prose loss at the level {level:.3} that all of them and the plain runs reach): {}; plain full FT {}; \
                 least forgetting among the LoRA runs: {}.\n",
                reg_text.join("; "),
                source_at(&full.curve, level).map_or("—".into(), |s| format!("{s:.4}")),
                best_lora_at.map_or("—".into(), |(s, l)| format!("{l}: {s:.4}"))
            );
        }
    }

    // Spectra.
    let _ = writeln!(w, "## Rank of the full fine-tune's weight change\n");
    let _ = writeln!(
        w,
        "rank@{TAU}: the fewest singular values of ΔW holding {TAU} of Σσ². For reference, a Gaussian matrix of the same shape \
         (what the paper compares with) and the largest possible rank (the smaller dimension, {} for every matrix here but none \
         larger). Best-LR plain full fine-tune; layers in columns.\n",
        setup.n_embd
    );
    for r in best
        .iter()
        .filter(|r| r.method == Method::Full && r.reg == Reg::None)
    {
        let Some((step, last)) = r.spectra.last() else {
            continue;
        };
        let first = r.spectra.first().map(|s| s.0).unwrap_or(0);
        let mut types: Vec<String> = last.iter().map(|m| module_type(&m.name)).collect();
        types.dedup();
        types.sort();
        types.dedup();
        let layers = setup.n_layer;
        let _ = writeln!(
            w,
            "### {} (full FT, lr {:e}, step {step})\n",
            r.domain.name(),
            r.lr
        );
        let _ = writeln!(
            w,
            "| module | shape [out, in] | {} | Gaussian | rank@{TAU} at step {first} (mean over layers) |\n|---|---|{}---:|---:|",
            (0..layers)
                .map(|l| format!("layer {l}"))
                .collect::<Vec<_>>()
                .join(" | "),
            "---:|".repeat(layers)
        );
        for t in &types {
            let ms: Vec<&MatrixSpectrum> =
                last.iter().filter(|m| &module_type(&m.name) == t).collect();
            let cells: Vec<String> = (0..layers)
                .map(|l| {
                    ms.iter()
                        .find(|m| m.layer == Some(l))
                        .map_or("—".into(), |m| m.delta.rank_at_threshold.to_string())
                })
                .collect();
            let early: Vec<f64> = r
                .spectra
                .first()
                .map(|s| {
                    s.1.iter()
                        .filter(|m| &module_type(&m.name) == t)
                        .map(|m| m.delta.rank_at_threshold as f64)
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                w,
                "| `{t}` | {:?} | {} | {} | {:.1} |",
                ms.first().map_or([0, 0], |m| m.shape),
                cells.join(" | "),
                ms.first().map_or(0, |m| m.random.rank_at_threshold),
                early.iter().sum::<f64>() / early.len().max(1) as f64
            );
        }
        let mut ranks: Vec<f64> = last
            .iter()
            .map(|m| m.delta.rank_at_threshold as f64)
            .collect();
        let med = median(&mut ranks);
        let by_group = |g: &str| {
            let v: Vec<f64> = last
                .iter()
                .filter(|m| m.group == g)
                .map(|m| m.delta.rank_at_threshold as f64)
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let ranks_lora: Vec<usize> = {
            let mut v: Vec<usize> = setup.lora.iter().map(|l| l.0).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let early_mean = r
            .spectra
            .first()
            .map(|s| {
                s.1.iter()
                    .map(|m| m.delta.rank_at_threshold as f64)
                    .sum::<f64>()
                    / s.1.len().max(1) as f64
            })
            .unwrap_or(f64::NAN);
        let late_mean = last
            .iter()
            .map(|m| m.delta.rank_at_threshold as f64)
            .sum::<f64>()
            / last.len().max(1) as f64;
        let _ = writeln!(
            w,
            "\nMedian rank@{TAU} over all {} matrices: {med:.0} (at most {}), that is {} of the LoRA ranks tried. Mean over matrices: {early_mean:.1} at the first \
             evaluation (step {first}), {late_mean:.1} at the end ({}). Attention matrices average {:.1}, MLP matrices {:.1}.\n",
            last.len(),
            setup.n_embd,
            ranks_lora
                .iter()
                .map(|k| format!("{:.1}× r = {k}", med / *k as f64))
                .collect::<Vec<_>>()
                .join(", "),
            // (a change within 10% is no trend)
            if late_mean > 1.1 * early_mean {
                "it grows with training, as in the paper"
            } else if late_mean < early_mean / 1.1 {
                "it shrinks with training, unlike the paper"
            } else {
                "within 10% of each other: no growth over this run, unlike the paper"
            },
            by_group("attention"),
            by_group("mlp"),
        );
    }
    let _ = writeln!(
        w,
        "![rank@{TAU} of the full fine-tune's ΔW over training]({PLOT_RANK})\n\n![rank@{TAU} per module and layer at the end (first domain)]({HEATMAP})\n"
    );

    let _ = writeln!(w, "## All runs\n");
    let _ = writeln!(
        w,
        "| domain | method | LR | target loss | prose loss | note |\n|---|---|---:|---:|---:|---|"
    );
    for r in runs {
        let _ = writeln!(
            w,
            "| {} | {} | {:e} | {:.4} | {:.4} | {} |",
            r.domain.name(),
            r.label(),
            r.lr,
            r.target(),
            r.source(),
            r.diverged
                .map_or(String::new(), |s| format!("diverged at step {s}"))
        );
    }
    let _ = writeln!(w, "\n## What carries over\n");
    let _ = writeln!(
        w,
        "The paper's claims, as stated in its v2 text: LoRA underperforms full fine-tuning on the target domain (more for code than math, \
         more in continued pretraining than instruction tuning); it forgets less of the source domain; LoRA and full fine-tuning lie on \
         roughly one learning–forgetting curve; LoRA regularises more strongly than weight decay and dropout; LoRA needs a learning rate \
         about an order of magnitude higher (instruction tuning); and the full fine-tune's ΔW has rank 10–100× typical LoRA ranks, \
         growing with training, higher in MLP than in attention modules. The statements above are decided by this run's numbers, not \
         written in advance. What does not carry over: the scale (a {:.2}M-parameter model of width {} caps every rank at {}, so \
         \"10–100× r\" cannot be reached for r ≥ {}), the data (generated corpora far simpler than StarCoder or OpenWebMath), the \
         metrics (held-out loss instead of HumanEval/GSM8K and the three-task forgetting average) and the statistics (one seed). \
         This run took {minutes:.1} minutes on {}.{}\n",
        pre.params as f64 / 1e6,
        setup.n_embd,
        setup.n_embd,
        setup.n_embd.div_ceil(10),
        crate::bench::machine(),
        if setup.quick {
            " `--quick` mode: one domain, two LoRA configurations, one LR each — it checks that the pipeline runs and learns, nothing more."
        } else {
            ""
        }
    );
    md
}

fn color(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

/// Target and source loss against steps for each method's best run, one row per domain.
fn plot_curves(setup: &Setup, best: &[Run]) -> Result<String> {
    let mut svg = String::new();
    {
        let rows = setup.domains.len();
        let root = SVGBackend::with_string(&mut svg, (1100, 380 * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly((rows, 2));
        for (i, &domain) in setup.domains.iter().enumerate() {
            let runs: Vec<&Run> = best.iter().filter(|r| r.domain == domain).collect();
            for (j, (what, pick)) in [
                ("target loss (learning) ↓", 1usize),
                ("prose loss (forgetting) ↑", 2usize),
            ]
            .into_iter()
            .enumerate()
            {
                let value = |c: &(u64, f64, f64)| if pick == 1 { c.1 } else { c.2 };
                let ys: Vec<f64> = runs
                    .iter()
                    .flat_map(|r| r.curve.iter().map(value))
                    .collect();
                let (y0, y1) = (
                    ys.iter().copied().fold(f64::INFINITY, f64::min),
                    ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                );
                let pad = 0.05 * (y1 - y0).max(1e-6);
                let mut chart = ChartBuilder::on(&areas[i * 2 + j])
                    .caption(format!("{}: {what}", domain.name()), ("sans-serif", 16))
                    .margin(10)
                    .x_label_area_size(32)
                    .y_label_area_size(56)
                    .build_cartesian_2d(0.0..setup.finetune_steps as f64, (y0 - pad)..(y1 + pad))
                    .map_err(|e| e.to_string())?;
                chart
                    .configure_mesh()
                    .x_desc("step")
                    .y_desc("nats/token")
                    .draw()
                    .map_err(|e| e.to_string())?;
                for (k, r) in runs.iter().enumerate() {
                    let c = color(k);
                    let style = if r.method == Method::Full {
                        c.stroke_width(3)
                    } else {
                        c.stroke_width(1)
                    };
                    chart
                        .draw_series(LineSeries::new(
                            r.curve.iter().map(|p| (p.0 as f64, value(p))),
                            style,
                        ))
                        .map_err(|e| e.to_string())?
                        .label(format!("{} (lr {:e})", r.label(), r.lr))
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
                }
                if j == 1 {
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperLeft)
                        .label_font(("sans-serif", 11))
                        .border_style(BLACK)
                        .background_style(WHITE.mix(0.85))
                        .draw()
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Every evaluation of every run as (target loss, prose loss), one panel per domain; the
/// learning–forgetting Pareto front of the final points drawn through them.
fn plot_pareto(setup: &Setup, runs: &[Run]) -> Result<String> {
    let mut svg = String::new();
    {
        let n = setup.domains.len();
        let root = SVGBackend::with_string(&mut svg, (560 * n as u32, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly((1, n));
        for (i, &domain) in setup.domains.iter().enumerate() {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.domain == domain && r.ok())
                .collect();
            let pts: Vec<(f64, f64)> = rs
                .iter()
                .flat_map(|r| r.curve.iter().map(|c| (c.1, c.2)))
                .collect();
            let f = |g: fn(&(f64, f64)) -> f64, init: f64, op: fn(f64, f64) -> f64| {
                pts.iter().map(g).fold(init, op)
            };
            let (x0, x1) = (
                f(|p| p.0, f64::INFINITY, f64::min),
                f(|p| p.0, f64::NEG_INFINITY, f64::max),
            );
            let (y0, y1) = (
                f(|p| p.1, f64::INFINITY, f64::min),
                f(|p| p.1, f64::NEG_INFINITY, f64::max),
            );
            let (px, py) = (0.05 * (x1 - x0).max(1e-6), 0.05 * (y1 - y0).max(1e-6));
            let mut chart = ChartBuilder::on(&areas[i])
                .caption(
                    format!(
                        "{}: learning vs forgetting (every evaluation)",
                        domain.name()
                    ),
                    ("sans-serif", 15),
                )
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d((x1 + px)..(x0 - px), (y0 - py)..(y1 + py))
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("target loss (→ learns more)")
                .y_desc("prose loss (↑ forgets more)")
                .draw()
                .map_err(|e| e.to_string())?;
            // One colour per method (all its LRs and regularisers), full FT in black.
            let mut labels: Vec<String> = Vec::new();
            for r in &rs {
                let key = if r.reg == Reg::None {
                    r.method.label()
                } else {
                    "full FT + regulariser".into()
                };
                if !labels.contains(&key) {
                    labels.push(key);
                }
            }
            for (k, key) in labels.iter().enumerate() {
                let c = if key == "full FT" {
                    BLACK.to_rgba()
                } else {
                    color(k)
                };
                let mine: Vec<&&Run> = rs
                    .iter()
                    .filter(|r| {
                        (if r.reg == Reg::None {
                            r.method.label()
                        } else {
                            "full FT + regulariser".into()
                        }) == *key
                    })
                    .collect();
                for r in &mine {
                    chart
                        .draw_series(LineSeries::new(
                            r.curve.iter().map(|c| (c.1, c.2)),
                            c.mix(0.35),
                        ))
                        .map_err(|e| e.to_string())?;
                }
                chart
                    .draw_series(
                        mine.iter()
                            .map(|r| Circle::new((r.target(), r.source()), 4, c.filled())),
                    )
                    .map_err(|e| e.to_string())?
                    .label(key.clone())
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
            }
            // The Pareto front of the final points: lower target and lower prose loss are both better.
            let mut finals: Vec<(f64, f64)> = rs.iter().map(|r| (r.target(), r.source())).collect();
            finals.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut front = Vec::new();
            let mut best_source = f64::INFINITY;
            for p in finals {
                if p.1 < best_source {
                    front.push(p);
                    best_source = p.1;
                }
            }
            chart
                .draw_series(LineSeries::new(front, BLACK.stroke_width(1)))
                .map_err(|e| e.to_string())?
                .label("Pareto front (final points)")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(1))
                });
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 11))
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// rank@τ of the best full fine-tune's ΔW against steps, averaged over layers per module type,
/// with the LoRA ranks as horizontal references.
fn plot_rank(setup: &Setup, best: &[Run]) -> Result<String> {
    let mut svg = String::new();
    {
        let n = setup.domains.len();
        let root = SVGBackend::with_string(&mut svg, (560 * n as u32, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly((1, n));
        for (i, &domain) in setup.domains.iter().enumerate() {
            let Some(r) = best
                .iter()
                .find(|r| r.domain == domain && r.method == Method::Full && r.reg == Reg::None)
            else {
                continue;
            };
            let mut types: Vec<String> = r
                .spectra
                .iter()
                .flat_map(|s| s.1.iter().map(|m| module_type(&m.name)))
                .collect();
            types.sort();
            types.dedup();
            let mut chart = ChartBuilder::on(&areas[i])
                .caption(
                    format!(
                        "{}: rank@{TAU} of full-FT ΔW (mean over layers)",
                        domain.name()
                    ),
                    ("sans-serif", 15),
                )
                .margin(10)
                .x_label_area_size(32)
                .y_label_area_size(48)
                .build_cartesian_2d(
                    0.0..setup.finetune_steps as f64,
                    0.0..(setup.n_embd as f64 * 1.05),
                )
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("rank@0.9")
                .draw()
                .map_err(|e| e.to_string())?;
            for (k, t) in types.iter().enumerate() {
                let pts: Vec<(f64, f64)> = r
                    .spectra
                    .iter()
                    .map(|(step, ms)| {
                        let v: Vec<f64> = ms
                            .iter()
                            .filter(|m| &module_type(&m.name) == t)
                            .map(|m| m.delta.rank_at_threshold as f64)
                            .collect();
                        (*step as f64, v.iter().sum::<f64>() / v.len().max(1) as f64)
                    })
                    .collect();
                let c = color(k);
                chart
                    .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(t.trim_start_matches("transformer.h.N."))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
            }
            let mut ranks: Vec<usize> = setup.lora.iter().map(|l| l.0).collect();
            ranks.sort_unstable();
            ranks.dedup();
            for rank in ranks {
                let y = rank as f64;
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(0.0, y), (setup.finetune_steps as f64, y)],
                        4,
                        4,
                        BLACK.mix(0.5).stroke_width(1),
                    ))
                    .map_err(|e| e.to_string())?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("LoRA r = {rank}"),
                        (setup.finetune_steps as f64 * 0.78, y + 1.5),
                        ("sans-serif", 11),
                    )))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font(("sans-serif", 11))
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: Method, reg: Reg, lr: f64, curve: Vec<(u64, f64, f64)>) -> Run {
        Run {
            domain: Domain::Code,
            method,
            reg,
            lr,
            trainable: 1,
            total: 1,
            curve,
            diverged: None,
            seconds: 0.0,
            spectra: Vec::new(),
        }
    }

    #[test]
    fn forgetting_is_read_where_the_target_loss_first_reaches_the_level() {
        let curve = [
            (0, 10.0, 2.0),
            (10, 6.0, 3.0),
            (20, 4.0, 5.0),
            (30, 5.0, 4.0),
        ];
        // halfway between 6 and 4: prose loss halfway between 3 and 5
        assert_eq!(source_at(&curve, 5.0), Some(4.0));
        assert_eq!(source_at(&curve, 6.0), Some(3.0));
        assert_eq!(source_at(&curve, 10.0), Some(2.0));
        assert_eq!(source_at(&curve, 3.9), None);
        // the level every run reaches: the largest of their best target losses
        let a = run(Method::Full, Reg::None, 1e-3, curve.to_vec());
        let b = run(
            Method::Full,
            Reg::None,
            1e-3,
            vec![(0, 10.0, 2.0), (10, 4.5, 3.0)],
        );
        assert_eq!(common_level(&[&a, &b]), 4.5);
    }

    #[test]
    fn the_best_learning_rate_has_the_lowest_final_target_loss() {
        let lora = Method::Lora {
            r: 4,
            target: Target::Attention,
        };
        let mut diverged = run(Method::Full, Reg::None, 1e-2, vec![(0, 10.0, 2.0)]);
        diverged.diverged = Some(3);
        let runs = vec![
            run(
                Method::Full,
                Reg::None,
                1e-4,
                vec![(0, 10.0, 2.0), (10, 6.0, 3.0)],
            ),
            run(
                Method::Full,
                Reg::None,
                1e-3,
                vec![(0, 10.0, 2.0), (10, 5.0, 3.5)],
            ),
            diverged,
            run(lora, Reg::None, 1e-3, vec![(0, 10.0, 2.0), (10, 7.0, 2.5)]),
            run(lora, Reg::None, 3e-3, vec![(0, 10.0, 2.0), (10, 6.5, 2.6)]),
            run(
                Method::Full,
                Reg::Dropout(0.1),
                1e-3,
                vec![(0, 10.0, 2.0), (10, 5.5, 3.2)],
            ),
        ];
        let best = best_runs(&runs);
        let lrs: Vec<(String, f64)> = best.iter().map(|r| (r.label(), r.lr)).collect();
        assert_eq!(
            lrs,
            vec![
                ("full FT".to_owned(), 1e-3),
                ("LoRA r4 attention".to_owned(), 3e-3),
                ("full FT + dropout 0.1".to_owned(), 1e-3),
            ]
        );
        assert_eq!(lr_note(1e-3, &[1e-4, 1e-3]), " (edge of the sweep)");
        assert_eq!(lr_note(3e-4, &[1e-4, 3e-4, 1e-3]), "");
    }
}
