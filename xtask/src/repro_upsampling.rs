//! `cargo xtask repro upsampling`: domain upsampling at the end of pretraining (Blakeney, Paul,
//! Larsen, Owen, Frankle 2024, "Does your data spark joy?") at small scale.
//!
//! A small GPT-2 is pretrained on a large general domain (kiln-data's prose) and three small
//! domain sets — Python functions, arithmetic facts, and sorted digit lists generated here —
//! each with a held-out benchmark. The base run trains on the natural mix (every domain once per
//! epoch, streaming's "no weights"); from its checkpoints at `1 − f` of the run, branches train
//! the last `f` on an upsampled mix (resuming with a new final phase: a change to the future
//! that the curriculum's resume rule allows; the learning-rate schedule goes on unchanged), for
//! f ∈ {5, 10, 20, 30}%, and drop-one-domain ablations leave one small domain out of the
//! upsampled phase. Reported: held-out loss per domain, benchmark accuracies, repeat accounting
//! of the upsampled phase, the cost of each ablation against the full run, and a comparison with
//! the paper computed from the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_data::corpus::{self, Domain};
use kiln_data::curriculum::{Curriculum, PhaseStats};
use kiln_data::packing::{Grouping, PackedSequences, Packing, SequenceStream};
use kiln_data::shards::{TokenShard, write_shard};
use kiln_data::streams::StreamSpec;
use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::Duration;
use kiln_train::burn::module::Module;
use kiln_train::burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_train::tasks::{CurriculumLmConfig, CurriculumLmTask};
use kiln_train::{OptimizerConfig, Trainer, TrainerConfig};
use plotters::prelude::*;

use crate::bench::Spread;
use crate::{Result, root, write_atomic};

const REPORT: &str = "upsampling.md";
const PLOT: &str = "upsampling.svg";
/// The general domain and the small ones, in report order.
const GENERAL: &str = "prose";
const SMALL: [&str; 3] = ["code", "arithmetic", "sorting"];

#[derive(Debug, Clone)]
struct Setup {
    quick: bool,
    args: String,
    steps: u64,
    batch: usize,
    seq_len: usize,
    n_embd: usize,
    n_layer: usize,
    vocab: usize,
    lr: f64,
    /// Documents per domain.
    docs: BTreeMap<&'static str, u64>,
    eval_seqs: usize,
    bench_items: usize,
    seeds: Vec<u64>,
    fractions: Vec<f64>,
    ablation_fraction: f64,
    /// Share of the upsampled phase each small domain gets (the general domain the rest).
    upsampled_share: f64,
    repeat_warning: f64,
}

impl Setup {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                args: String::new(),
                steps: 40,
                batch: 4,
                seq_len: 32,
                n_embd: 32,
                n_layer: 1,
                vocab: 384,
                lr: 3e-3,
                docs: BTreeMap::from([
                    ("prose", 120),
                    ("code", 8),
                    ("arithmetic", 10),
                    ("sorting", 10),
                ]),
                eval_seqs: 8,
                bench_items: 16,
                seeds: vec![0],
                fractions: vec![0.1, 0.3],
                ablation_fraction: 0.3,
                upsampled_share: 0.2,
                repeat_warning: 4.0,
            }
        } else {
            Self {
                quick,
                args: String::new(),
                steps: 1000,
                batch: 16,
                seq_len: 64,
                n_embd: 96,
                n_layer: 2,
                vocab: 1024,
                lr: 2e-3,
                docs: BTreeMap::from([
                    ("prose", 17000),
                    ("code", 60),
                    ("arithmetic", 90),
                    ("sorting", 90),
                ]),
                eval_seqs: 48,
                bench_items: 200,
                seeds: vec![0, 1, 2],
                fractions: vec![0.05, 0.1, 0.2, 0.3],
                ablation_fraction: 0.2,
                upsampled_share: 0.2,
                repeat_warning: 4.0,
            }
        }
    }

    /// Steps at which the base run keeps a checkpoint to branch from.
    fn branch_steps(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .fractions
            .iter()
            .chain(std::iter::once(&self.ablation_fraction))
            .map(|f| self.steps - (f * self.steps as f64).round() as u64)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

pub(crate) fn command(args: &[&str]) -> Result {
    let mut quick = false;
    let mut out = root().join("docs/reproductions");
    let mut device = None;
    let mut seeds = None;
    let mut steps = None;
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
            "--seeds" => {
                let n: u64 = value("--seeds")?
                    .parse()
                    .map_err(|e| format!("--seeds: {e}"))?;
                if n == 0 {
                    return Err("--seeds must be at least 1".into());
                }
                seeds = Some((0..n).collect::<Vec<_>>());
            }
            "--steps" => {
                let n: u64 = value("--steps")?
                    .parse()
                    .map_err(|e| format!("--steps: {e}"))?;
                if n < 40 {
                    return Err(
                        "--steps must be at least 40 (the upsampled phases need steps)".into(),
                    );
                }
                steps = Some(n);
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}` (expected --quick, --out DIR, --device cpu|cuda[:N], --seeds N, --steps N)"
                )
                .into());
            }
        }
    }
    let device = crate::pipeline_device(device.as_deref())?;
    let mut s = Setup::new(quick);
    s.args = crate::shown_args(args);
    if let Some(v) = seeds {
        s.seeds = v;
    }
    if let Some(n) = steps {
        s.steps = n;
    }
    let work = std::env::temp_dir().join(format!("kiln-repro-upsampling-{}", std::process::id()));
    let started = Instant::now();
    let result = run_all(&s, &work, &device);
    let _ = std::fs::remove_dir_all(&work);
    let results = result?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    write_atomic(&out.join(PLOT), plot(&s, &results)?.as_bytes())?;
    write_atomic(&out.join(REPORT), report(&s, &results, minutes).as_bytes())?;
    eprintln!("wrote {} and its plot", out.join(REPORT).display());
    Ok(())
}

/// A question with its answer.
struct Item {
    prompt: String,
    answer: String,
}

/// Lines of sorted digit lists, `sort 7 3 9 1 : 1 3 7 9`: the fourth domain, generated here
/// (splitmix64 from `(seed, index)`).
fn sorting_document(seed: u64, index: u64) -> String {
    let mut rng = SplitMix(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_add(1));
    let lines = 4 + rng.below(6);
    let mut out = String::new();
    for _ in 0..lines {
        let item = sorting_item(&mut rng);
        let _ = writeln!(out, "{} {}", item.prompt, item.answer);
    }
    out
}

fn sorting_item(rng: &mut SplitMix) -> Item {
    let n = 3 + rng.below(3);
    let digits: Vec<u64> = (0..n).map(|_| rng.below(10)).collect();
    let mut sorted = digits.clone();
    sorted.sort_unstable();
    let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    Item {
        prompt: format!("sort {} :", join(&digits)),
        answer: join(&sorted),
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn domain_documents(name: &str, seed: u64, n: u64) -> Vec<String> {
    match name {
        "sorting" => (0..n).map(|i| sorting_document(seed, i)).collect(),
        other => corpus::documents(
            Domain::from_name(other).expect("a built-in domain"),
            seed,
            0,
            n,
        ),
    }
}

/// Held-out arithmetic questions (`a + b =`, `a - b =`, `a * b =` as the corpus writes them).
fn arithmetic_items(n: usize) -> Vec<Item> {
    corpus::documents(Domain::Arithmetic, 4242, 0, n as u64)
        .iter()
        .filter_map(|d| d.lines().next().map(str::to_owned))
        .filter_map(|line| {
            let (q, a) = line.split_once(" = ")?;
            Some(Item {
                prompt: format!("{q} ="),
                answer: a.to_owned(),
            })
        })
        .collect()
}

fn sorting_items(n: usize) -> Vec<Item> {
    let mut rng = SplitMix(777);
    (0..n).map(|_| sorting_item(&mut rng)).collect()
}

struct Data {
    tok: Tokenizer,
    eos: u32,
    streams: BTreeMap<String, SequenceStream>,
    eval: BTreeMap<String, Vec<Vec<u32>>>,
    /// Sequences and tokens per domain.
    sizes: BTreeMap<String, (usize, u64)>,
    arithmetic: Vec<Item>,
    sorting: Vec<Item>,
    config: Gpt2Config,
}

fn prepare(s: &Setup, work: &Path) -> Result<Data> {
    let docs: BTreeMap<&str, Vec<String>> = s
        .docs
        .iter()
        .map(|(&name, &n)| (name, domain_documents(name, 0, n)))
        .collect();
    // The tokenizer sees every domain equally (not the prose-heavy mix).
    let sample: Vec<&str> = docs
        .values()
        .flat_map(|d| d.iter().take(60).map(String::as_str))
        .collect();
    let tok = Tokenizer::train(TokenizerKind::Bpe, sample.iter().copied(), s.vocab, 2)?;
    let eos = tok
        .special_ids()
        .eos
        .ok_or("the BPE tokenizer has no end-of-text token")?;
    let packing = Packing {
        seq_len: s.seq_len,
        bos: None,
        eos: Some(eos),
        grouping: Grouping::Concat,
    };
    let mut streams = BTreeMap::new();
    let mut eval = BTreeMap::new();
    let mut sizes = BTreeMap::new();
    for (name, texts) in &docs {
        let dir = work.join("data").join(name);
        write_shard(&dir, texts.iter().map(String::as_str), &tok, false, false)?;
        let seqs = PackedSequences::new(Arc::new(TokenShard::open(&dir)?), packing)?;
        sizes.insert(
            (*name).to_owned(),
            (seqs.len(), (seqs.len() * s.seq_len) as u64),
        );
        streams.insert((*name).to_owned(), SequenceStream::new(seqs, 11));
        let held = domain_documents(name, 99, (s.docs[name] / 2).clamp(8, 400));
        let mut e = crate::pack(&tok, &held, eos, s.seq_len)?;
        e.truncate(s.eval_seqs);
        if e.is_empty() {
            return Err(format!("no held-out {name} sequence of {} tokens", s.seq_len).into());
        }
        eval.insert((*name).to_owned(), e);
    }
    let config = Gpt2Config {
        vocab_size: tok.vocab_size().div_ceil(8) * 8,
        n_positions: s.seq_len,
        n_embd: s.n_embd,
        n_layer: s.n_layer,
        n_head: 4.min(s.n_embd / 8),
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        bos_token_id: Some(eos as usize),
        eos_token_id: Some(eos as usize),
        ..Gpt2Config::gpt2()
    };
    Ok(Data {
        arithmetic: arithmetic_items(s.bench_items),
        sorting: sorting_items(s.bench_items),
        tok,
        eos,
        streams,
        eval,
        sizes,
        config,
    })
}

/// The base mix: every domain once per epoch (streaming's "no weights").
fn base_mix() -> Vec<StreamSpec> {
    std::iter::once(GENERAL)
        .chain(SMALL)
        .map(StreamSpec::plain)
        .collect()
}

/// The upsampled mix: each small domain `share` of the epoch (unless dropped), the general
/// domain the rest; proportions are renormalised by the stream rules when one is dropped.
fn upsampled_mix(s: &Setup, drop: Option<&str>) -> Vec<StreamSpec> {
    let general = 1.0 - s.upsampled_share * SMALL.len() as f64;
    std::iter::once(StreamSpec::proportion(GENERAL, general))
        .chain(
            SMALL
                .iter()
                .filter(|d| Some(**d) != drop)
                .map(|d| StreamSpec::proportion(d, s.upsampled_share)),
        )
        .collect()
}

/// One variant of the final phase.
#[derive(Debug, Clone, PartialEq)]
enum Variant {
    /// The natural mix throughout.
    Base,
    /// Upsampling over the last `f`.
    Upsample(f64),
    /// Upsampling over the last `f` without one small domain.
    Drop(f64, &'static str),
}

impl Variant {
    fn fraction(&self) -> f64 {
        match self {
            Self::Base => 0.0,
            Self::Upsample(f) | Self::Drop(f, _) => *f,
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Base => "no upsampling".into(),
            Self::Upsample(f) => format!("upsample last {:.0}%", f * 100.0),
            Self::Drop(f, d) => format!("upsample last {:.0}% without {d}", f * 100.0),
        }
    }

    fn curriculum(&self, s: &Setup) -> Curriculum {
        match self {
            Self::Base => Curriculum::constant(base_mix(), None),
            Self::Upsample(f) => {
                Curriculum::upsample_end(base_mix(), upsampled_mix(s, None), None, *f)
            }
            Self::Drop(f, d) => {
                Curriculum::upsample_end(base_mix(), upsampled_mix(s, Some(d)), None, *f)
            }
        }
    }
}

/// What one run gives.
#[derive(Debug, Clone)]
struct Outcome {
    variant: Variant,
    seed: u64,
    /// Held-out loss per domain.
    loss: BTreeMap<String, f64>,
    arithmetic: (f64, f64),
    sorting: (f64, f64),
    code_next_token: f64,
    /// Per phase and domain.
    phases: Vec<BTreeMap<String, PhaseStats>>,
    steps_trained: u64,
    seconds: f64,
}

fn train(
    s: &Setup,
    d: &Data,
    variant: &Variant,
    seed: u64,
    run_dir: &Path,
    device: &Device,
) -> Result<Outcome> {
    eprintln!("== seed {seed}: {}", variant.label());
    device.seed(seed);
    let model = Gpt2LmHead::init(&d.config, device)?;
    let mut config = CurriculumLmConfig::new(s.batch, variant.curriculum(s));
    config.seed = seed;
    config.repeat_warning = s.repeat_warning;
    let mut task =
        CurriculumLmTask::new(d.streams.clone(), d.eval[GENERAL].clone(), config, device)?;
    for name in SMALL {
        task = task.with_eval_set(name, d.eval[name].clone())?;
    }
    let mut tc = TrainerConfig::new(
        Duration::batches(s.steps),
        OptimizerConfig::adamw(s.lr, 0.0),
    );
    tc.lr_schedule = serde_json::from_str(
        r#"{"name": "cosine_with_warmup", "t_warmup": "0.05dur", "alpha_f": 0.1}"#,
    )?;
    tc.eval_interval = Some(Duration::batches(s.steps));
    let branches = s.branch_steps();
    if *variant == Variant::Base {
        let every = branches.iter().fold(s.steps, |g, &b| gcd(g, b));
        tc.save_interval = Some(Duration::batches(every));
        tc.keep_last_n = (s.steps / every) as usize + 1;
    }
    tc.progress_bar = false;
    tc.seed = seed;
    let started = Instant::now();
    let out = Trainer::new(tc, run_dir).fit(model, &mut task, &mut Vec::new(), device)?;
    let seconds = started.elapsed().as_secs_f64();
    let steps_trained = s.steps - out.resumed_from.unwrap_or(0);
    let model = out.model.valid();
    let inner = device.clone().inner();
    let mut loss = BTreeMap::from([(GENERAL.to_owned(), out.eval["loss"])]);
    for name in SMALL {
        loss.insert(name.to_owned(), out.eval[&format!("{name}_loss")]);
    }
    Ok(Outcome {
        variant: variant.clone(),
        seed,
        arithmetic: answer_accuracy(&model, d, &d.arithmetic, &inner)?,
        sorting: answer_accuracy(&model, d, &d.sorting, &inner)?,
        code_next_token: next_token_accuracy(&model, &d.eval["code"], &inner),
        loss,
        phases: task.sampler().map(|x| x.phase_stats()).unwrap_or_default(),
        steps_trained,
        seconds,
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn argmax_rows(logits: Tensor<3>) -> Vec<u32> {
    let [b, l, _] = logits.dims();
    logits
        .argmax(2)
        .reshape([b * l])
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// Greedy-decoding exact match and answer-token accuracy on `items`, both by teacher forcing:
/// row `eos + prompt + " " + answer + "\n"`; greedy decoding reproduces the answer (and stops at
/// the newline) exactly when every answer token and the newline are the argmax after the true
/// prefix, so one batched forward pass gives both.
fn answer_accuracy(
    model: &Gpt2LmHead,
    d: &Data,
    items: &[Item],
    device: &Device,
) -> Result<(f64, f64)> {
    let mut rows = Vec::new();
    for it in items {
        let mut prompt = vec![d.eos];
        prompt.extend(d.tok.encode(&it.prompt, false)?);
        let mut full = vec![d.eos];
        full.extend(
            d.tok
                .encode(&format!("{} {}\n", it.prompt, it.answer), false)?,
        );
        if full.len() <= prompt.len() || full[..prompt.len()] != prompt[..] {
            return Err(format!(
                "the tokenizer does not keep `{}` a prefix of its answered form",
                it.prompt
            )
            .into());
        }
        rows.push((prompt.len(), full));
    }
    let (mut exact, mut tokens, mut right) = (0usize, 0usize, 0usize);
    for chunk in rows.chunks(32) {
        let l = chunk.iter().map(|r| r.1.len()).max().unwrap_or(1);
        let mut ids = vec![0i64; chunk.len() * l];
        let mut mask = vec![0i64; chunk.len() * l];
        for (i, (_, r)) in chunk.iter().enumerate() {
            for (j, &t) in r.iter().enumerate() {
                ids[i * l + j] = i64::from(t);
                mask[i * l + j] = 1;
            }
        }
        let t =
            |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [chunk.len(), l]), device);
        let pred = argmax_rows(model.forward(t(ids), Some(t(mask)), None));
        for (i, (p, r)) in chunk.iter().enumerate() {
            let ok: Vec<bool> = (*p..r.len()).map(|j| pred[i * l + j - 1] == r[j]).collect();
            tokens += ok.len();
            right += ok.iter().filter(|b| **b).count();
            exact += usize::from(ok.iter().all(|b| *b));
        }
    }
    Ok((
        exact as f64 / rows.len() as f64,
        right as f64 / tokens as f64,
    ))
}

/// Top-1 next-token accuracy over held-out sequences (teacher forcing).
fn next_token_accuracy(model: &Gpt2LmHead, seqs: &[Vec<u32>], device: &Device) -> f64 {
    let (mut right, mut n) = (0usize, 0usize);
    for chunk in seqs.chunks(16) {
        let l = chunk[0].len();
        let ids: Vec<i64> = chunk.iter().flatten().map(|&t| i64::from(t)).collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [chunk.len(), l]), device);
        let pred = argmax_rows(model.forward(x, None, None));
        for (i, r) in chunk.iter().enumerate() {
            for j in 1..l {
                right += usize::from(pred[i * l + j - 1] == r[j]);
                n += 1;
            }
        }
    }
    right as f64 / n.max(1) as f64
}

fn copy_dir(from: &Path, to: &Path) -> Result {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

struct Results {
    data_sizes: BTreeMap<String, (usize, u64)>,
    runs: Vec<Outcome>,
    device: String,
}

fn run_all(s: &Setup, work: &Path, device: &Device) -> Result<Results> {
    std::fs::create_dir_all(work)?;
    let device = &device.clone().autodiff();
    let d = prepare(s, work)?;
    let mut variants: Vec<Variant> = s.fractions.iter().map(|&f| Variant::Upsample(f)).collect();
    variants.extend(SMALL.iter().map(|&x| Variant::Drop(s.ablation_fraction, x)));
    let mut runs = Vec::new();
    for &seed in &s.seeds {
        let base_dir = work.join(format!("seed{seed}-base"));
        runs.push(train(s, &d, &Variant::Base, seed, &base_dir, device)?);
        for v in &variants {
            let start = s.steps - (v.fraction() * s.steps as f64).round() as u64;
            let dir = work.join(format!("seed{seed}-{}", crate::slug(&v.label())));
            let name = format!("step-{start:09}");
            copy_dir(
                &base_dir.join("checkpoints").join(&name),
                &dir.join("checkpoints").join(&name),
            )?;
            let out = train(s, &d, v, seed, &dir, device)?;
            if out.steps_trained != s.steps - start {
                return Err(format!(
                    "{}: expected to resume at step {start}, trained {} steps",
                    v.label(),
                    out.steps_trained
                )
                .into());
            }
            runs.push(out);
            let _ = std::fs::remove_dir_all(&dir);
        }
        let _ = std::fs::remove_dir_all(&base_dir);
    }
    Ok(Results {
        data_sizes: d.sizes,
        runs,
        device: if format!("{device:?}").contains("Flex") {
            format!(
                "{} CPU cores",
                std::thread::available_parallelism().map_or(1, usize::from)
            )
        } else {
            format!("{device:?}")
        },
    })
}

/// Median and range over seeds of `f` for the runs of `variant`.
fn over_seeds(r: &Results, variant: &Variant, f: impl Fn(&Outcome) -> f64) -> Spread {
    let xs: Vec<f64> = r
        .runs
        .iter()
        .filter(|o| o.variant == *variant)
        .map(f)
        .collect();
    Spread::of(&xs).unwrap_or(Spread {
        median: f64::NAN,
        low: f64::NAN,
        high: f64::NAN,
        runs: Some(0),
    })
}

fn cell(x: &Spread, digits: usize) -> String {
    if x.runs.unwrap_or(0) > 1 {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            x.median,
            x.low,
            x.high,
            d = digits
        )
    } else {
        format!("{:.d$}", x.median, d = digits)
    }
}

/// The metrics of the report's tables: (label, getter, digits, higher is better).
type Metric = (&'static str, Box<dyn Fn(&Outcome) -> f64>, usize, bool);

fn metrics() -> Vec<Metric> {
    let mut m: Vec<Metric> = vec![(
        "general (prose) loss",
        Box::new(|o: &Outcome| o.loss[GENERAL]),
        4,
        false,
    )];
    for name in SMALL {
        m.push((
            match name {
                "code" => "code loss",
                "arithmetic" => "arithmetic loss",
                _ => "sorting loss",
            },
            Box::new(move |o: &Outcome| o.loss[name]),
            4,
            false,
        ));
    }
    m.push((
        "code next-token acc.",
        Box::new(|o: &Outcome| o.code_next_token),
        3,
        true,
    ));
    m.push((
        "arithmetic answer-token acc.",
        Box::new(|o: &Outcome| o.arithmetic.1),
        3,
        true,
    ));
    m.push((
        "arithmetic exact match",
        Box::new(|o: &Outcome| o.arithmetic.0),
        3,
        true,
    ));
    m.push((
        "sorting answer-token acc.",
        Box::new(|o: &Outcome| o.sorting.1),
        3,
        true,
    ));
    m.push((
        "sorting exact match",
        Box::new(|o: &Outcome| o.sorting.0),
        3,
        true,
    ));
    m
}

fn sweep(s: &Setup) -> Vec<Variant> {
    std::iter::once(Variant::Base)
        .chain(s.fractions.iter().map(|&f| Variant::Upsample(f)))
        .collect()
}

fn plot(s: &Setup, r: &Results) -> Result<String> {
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (1120, 420)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = area.split_evenly((1, 2));
        let xs: Vec<f64> = sweep(s).iter().map(|v| v.fraction() * 100.0).collect();
        let x1 = xs.iter().copied().fold(0.0, f64::max) * 1.05 + 1.0;
        let all = metrics();
        for (panel, (title, ylabel, pick)) in panels.iter().zip([
            (
                "held-out loss per domain",
                "loss (nats/token)",
                [0usize, 1, 2, 3].as_slice(),
            ),
            ("benchmarks", "accuracy", [4usize, 5, 7].as_slice()),
        ]) {
            let series: Vec<(&str, Vec<(f64, f64)>)> = pick
                .iter()
                .map(|&k| {
                    let (label, get, _, _) = &all[k];
                    (
                        *label,
                        sweep(s)
                            .iter()
                            .map(|v| (v.fraction() * 100.0, over_seeds(r, v, get).median))
                            .collect(),
                    )
                })
                .collect();
            let ys: Vec<f64> = series
                .iter()
                .flat_map(|(_, p)| p.iter().map(|q| q.1))
                .collect();
            let (y0, y1) = ys
                .iter()
                .filter(|y| y.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
                    (a.min(y), b.max(y))
                });
            let pad = ((y1 - y0) * 0.08).max(1e-3);
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(54)
                .build_cartesian_2d(0.0..x1, (y0 - pad)..(y1 + pad))
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("upsampled final fraction f (% of training)")
                .y_desc(ylabel)
                .draw()
                .map_err(|e| e.to_string())?;
            for (k, (label, points)) in series.iter().enumerate() {
                let c = Palette99::pick(k).to_rgba();
                chart
                    .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(*label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 11))
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        area.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn report(s: &Setup, r: &Results, minutes: f64) -> String {
    let mut o = String::new();
    let cmd = if s.args.is_empty() {
        "cargo xtask repro upsampling".to_owned()
    } else {
        format!("cargo xtask repro upsampling {}", s.args)
    };
    let _ = writeln!(
        o,
        "# Domain upsampling at the end of pretraining, at small scale\n"
    );
    let _ = writeln!(
        o,
        "Generated by `{cmd}` in {minutes:.1} min on {} ({} seed{}); every number below is computed by that run.{}\n",
        r.device,
        s.seeds.len(),
        if s.seeds.len() == 1 { "" } else { "s" },
        if s.quick {
            " **--quick: a smoke test, not a result.**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "Blakeney et al. (2024, \"Does your data spark joy?\") upsample small domain-specific sets in the last 10–20% of pretraining and find gains on the targeted (hard) benchmarks, and use the same switch with one set left out to measure that set's value at a fraction of a pretraining run's cost. kiln's pieces: `kiln_data::curriculum` (phases of mosaicml/streaming-weighted mixes, repeat accounting) and `kiln_train::tasks::CurriculumLmTask`.\n"
    );
    let _ = writeln!(o, "## Setup\n");
    let _ = writeln!(
        o,
        "- GPT-2 of {} layers × {} dims, context {}, batch {}, {} steps, AdamW lr {:e} with a 5% warmup and cosine decay to 10% (the schedule of the base run; branches resume it unchanged).",
        s.n_layer, s.n_embd, s.seq_len, s.batch, s.steps, s.lr
    );
    let _ = writeln!(
        o,
        "- Domains (training sequences of {} tokens):\n",
        s.seq_len
    );
    let _ = writeln!(o, "| domain | sequences | tokens | benchmark |");
    let _ = writeln!(o, "|---|---:|---:|---|");
    for (name, (n, t)) in &r.data_sizes {
        let bench = match name.as_str() {
            "prose" => "held-out loss (the general metric)",
            "code" => "top-1 next-token accuracy on held-out functions",
            "arithmetic" => {
                "held-out `a ∘ b =` questions: answer-token accuracy and greedy exact match"
            }
            _ => "held-out `sort 7 3 9 :` lists: answer-token accuracy and greedy exact match",
        };
        let _ = writeln!(o, "| {name} | {n} | {t} | {bench} |");
    }
    let general = 1.0 - s.upsampled_share * SMALL.len() as f64;
    let _ = writeln!(
        o,
        "\n- Base mix: every domain once per epoch (streaming's \"no weights\"), so each small domain is its natural share. Upsampled phase: proportions prose {general:.2}, each small domain {:.2} (a dropped domain's share is renormalised away).",
        s.upsampled_share
    );
    let _ = writeln!(
        o,
        "- Branches: the base run saves checkpoints; each variant resumes from the one at `1 − f` with a new final phase (the schedule's past unchanged, as the resume rule requires) and trains only the last `f`. Benchmarks are scored by teacher forcing: greedy decoding produces the answer exactly when every answer token (and the closing newline) is the argmax after the true prefix.\n"
    );
    let _ = writeln!(o, "## Upsampling fraction\n");
    let _ = writeln!(o, "Median over seeds (range in parentheses).\n");
    let sw = sweep(s);
    let _ = write!(o, "| metric |");
    for v in &sw {
        let _ = write!(o, " f = {:.0}% |", v.fraction() * 100.0);
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "|---|{}", "---:|".repeat(sw.len()));
    for (label, get, digits, _) in metrics() {
        let _ = write!(o, "| {label} |");
        for v in &sw {
            let _ = write!(o, " {} |", cell(&over_seeds(r, v, &get), digits));
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "\n![held-out losses and benchmarks against f]({PLOT})\n");

    // Repeat accounting of the upsampled phase, first seed.
    let _ = writeln!(
        o,
        "## Repeat accounting of the upsampled phase (seed {})\n",
        s.seeds[0]
    );
    let passes =
        (s.steps as f64 * s.batch as f64) / r.data_sizes.values().map(|x| x.0 as f64).sum::<f64>();
    let _ = writeln!(
        o,
        "Tokens drawn in the final phase per domain, the tokens of the distinct sequences among them, and their ratio (the repeat factor; kiln warns above {}). Over the whole base run each domain is drawn {passes:.1} times on average ({}).\n",
        s.repeat_warning,
        if passes > 1.05 {
            "the general domain repeats too at this scale"
        } else {
            "about one pass: before the switch nothing repeats, as in pretraining"
        }
    );
    let _ = writeln!(
        o,
        "| f | domain | tokens | distinct tokens | repeat factor |"
    );
    let _ = writeln!(o, "|---:|---|---:|---:|---:|");
    for v in sw.iter().skip(1) {
        if let Some(run) = r
            .runs
            .iter()
            .find(|x| x.variant == *v && x.seed == s.seeds[0])
            && let Some(last) = run.phases.last()
        {
            for (name, st) in last {
                let flag = if st.repeat() > s.repeat_warning {
                    " ⚠"
                } else {
                    ""
                };
                let _ = writeln!(
                    o,
                    "| {:.0}% | {name} | {} | {} | {:.2}{flag} |",
                    v.fraction() * 100.0,
                    st.tokens,
                    st.unique_tokens,
                    st.repeat()
                );
            }
        }
    }

    // Ablations
    let full = Variant::Upsample(s.ablation_fraction);
    let base_seconds = over_seeds(r, &Variant::Base, |x| x.seconds).median;
    let _ = writeln!(
        o,
        "\n## Drop one domain from the upsampled phase (f = {:.0}%)\n",
        s.ablation_fraction * 100.0
    );
    let _ = writeln!(
        o,
        "Change against upsampling every domain (median over seeds of the per-seed difference; for losses, positive = worse without the domain; for accuracies, negative = worse). Cost: the branch trains {:.0}% of the steps of a full run; wall time of the branch against the base run in the same process.\n",
        s.ablation_fraction * 100.0
    );
    let _ = writeln!(
        o,
        "| dropped | its loss Δ | its benchmark Δ | general loss Δ | steps | wall time vs full run |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for name in SMALL {
        let v = Variant::Drop(s.ablation_fraction, name);
        let diff = |get: &dyn Fn(&Outcome) -> f64| -> Spread {
            let xs: Vec<f64> = s
                .seeds
                .iter()
                .filter_map(|&seed| {
                    let a = r.runs.iter().find(|x| x.variant == v && x.seed == seed)?;
                    let b = r
                        .runs
                        .iter()
                        .find(|x| x.variant == full && x.seed == seed)?;
                    Some(get(a) - get(b))
                })
                .collect();
            Spread::of(&xs).unwrap_or(Spread {
                median: f64::NAN,
                low: f64::NAN,
                high: f64::NAN,
                runs: Some(0),
            })
        };
        let own_loss = diff(&|x: &Outcome| x.loss[name]);
        let bench = diff(&|x: &Outcome| bench_of(x, name));
        let general = diff(&|x: &Outcome| x.loss[GENERAL]);
        let steps = over_seeds(r, &v, |x| x.steps_trained as f64).median;
        let secs = over_seeds(r, &v, |x| x.seconds).median;
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {steps:.0} of {} | {:.2}× ({secs:.1} s vs {base_seconds:.1} s) |",
            signed(&own_loss, 4),
            signed(&bench, 3),
            signed(&general, 4),
            s.steps,
            secs / base_seconds
        );
    }

    // Comparison with the paper
    let _ = writeln!(o, "\n## Against the paper\n");
    let best = |get: &dyn Fn(&Outcome) -> f64, higher: bool| -> (f64, f64) {
        sw.iter()
            .map(|v| (v.fraction(), over_seeds(r, v, get).median))
            .filter(|x| x.1.is_finite())
            .fold(
                (
                    f64::NAN,
                    if higher {
                        f64::NEG_INFINITY
                    } else {
                        f64::INFINITY
                    },
                ),
                |acc, x| {
                    if (higher && x.1 > acc.1) || (!higher && x.1 < acc.1) {
                        x
                    } else {
                        acc
                    }
                },
            )
    };
    let _ = writeln!(o, "| claim of the paper | this run |");
    let _ = writeln!(o, "|---|---|");
    for name in SMALL {
        let get = move |x: &Outcome| bench_of(x, name);
        let (f_best, v_best) = best(&get, true);
        let at0 = over_seeds(r, &Variant::Base, get).median;
        let _ = writeln!(
            o,
            "| upsampling gains on the targeted benchmark ({name}: {}) | best at f = {:.0}%: {v_best:.3} vs {at0:.3} without upsampling ({}) |",
            bench_name(name),
            f_best * 100.0,
            if v_best > at0 { "a gain" } else { "no gain" }
        );
    }
    let g = |v: &Variant| over_seeds(r, v, |x| x.loss[GENERAL]).median;
    let g0 = g(&Variant::Base);
    let mut worse_beyond = Vec::new();
    for v in sw.iter().skip(1) {
        worse_beyond.push(format!("{:.0}%: {:+.4}", v.fraction() * 100.0, g(v) - g0));
    }
    let _ = writeln!(
        o,
        "| general ability degrades when upsampling lasts beyond ~20% | general loss change against no upsampling — {} |",
        worse_beyond.join(", ")
    );
    let (f_loss, _) = best(
        &|x: &Outcome| SMALL.iter().map(|n| x.loss[*n]).sum::<f64>() / SMALL.len() as f64,
        false,
    );
    let _ = writeln!(
        o,
        "| 10–20% is the best fraction | mean small-domain loss lowest at f = {:.0}% |",
        f_loss * 100.0
    );
    let _ = writeln!(
        o,
        "| an ablation costs a fraction of a pretraining run | each drop-one branch trains {:.0}% of the steps (wall times above) |",
        s.ablation_fraction * 100.0
    );
    let _ = writeln!(
        o,
        "\nScale: the paper trains 7B-parameter models on 1T tokens and evaluates on GSM8K, HumanEval and MMLU-style benchmarks; here a {}-layer GPT-2 sees {} tokens in all, and the benchmarks are generated tasks. What carries over is the mechanism (a late, abrupt switch of the mix with a continuous learning-rate schedule, and branching from a checkpoint for cheap ablations); the sizes of the effects do not. The table above states, per claim, what this run measured.",
        s.n_layer,
        s.steps * (s.batch * s.seq_len) as u64
    );
    o
}

fn bench_of(x: &Outcome, name: &str) -> f64 {
    match name {
        "code" => x.code_next_token,
        "arithmetic" => x.arithmetic.1,
        _ => x.sorting.1,
    }
}

fn bench_name(name: &str) -> &'static str {
    match name {
        "code" => "next-token accuracy",
        _ => "answer-token accuracy",
    }
}

fn signed(x: &Spread, digits: usize) -> String {
    if x.runs.unwrap_or(0) > 1 {
        format!(
            "{:+.d$} ({:+.d$} to {:+.d$})",
            x.median,
            x.low,
            x.high,
            d = digits
        )
    } else {
        format!("{:+.d$}", x.median, d = digits)
    }
}
