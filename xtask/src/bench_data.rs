//! `cargo xtask bench data`: (1) the curriculum sampler's throughput with many domains against
//! a training step of the model `repro upsampling` trains (the smallest step it has to keep up
//! with); (2) `kiln eval mc`'s scoring (`kiln_train::tasks::mc::evaluate_mc`) on a GPT-2
//! small-layout model beside lm-evaluation-harness scoring the same rows with the same weights
//! (`xtask/lm_eval_mc_anchor.py`). Both run inside xtask (the dev profile: burn's kernels, kiln-data
//! and xtask optimised, kiln-models' and kiln-train's own code not), 3 repeats, recorded in
//! docs/BENCHMARKS.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kiln_data::corpus::{self, Domain};
use kiln_data::curriculum::{Curriculum, CurriculumSampler};
use kiln_data::mc::{McFormat, ReadOptions, read_mc};
use kiln_data::mixture::MixtureSampler;
use kiln_data::packing::{Grouping, PackedSequences, Packing, SequenceStream};
use kiln_data::shards::{TokenShard, write_shard};
use kiln_data::streams::StreamSpec;
use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
use kiln_models::LoadOptions;
use kiln_models::auto::AutoModel;
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::{DataMix, Duration, RunSize};
use kiln_train::burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_train::tasks::mc::{McEvalOptions, evaluate_mc};

use crate::bench::Spread;
use crate::{Result, root};

const REPEATS: usize = 3;
const DOMAINS: [usize; 3] = [4, 16, 64];
const BATCH: usize = 16;
const SEQ: usize = 64;
const STEPS: u64 = 2000;
const MC_ROWS: usize = 60;

fn streams(dir: &Path, tok: &Tokenizer, n: usize) -> Result<BTreeMap<String, SequenceStream>> {
    let packing = Packing {
        seq_len: SEQ,
        bos: None,
        eos: tok.special_ids().eos,
        grouping: Grouping::Concat,
    };
    let mut out = BTreeMap::new();
    for d in 0..n {
        let name = format!("d{d:02}");
        let docs = corpus::documents(
            Domain::ALL[d % 3],
            d as u64,
            0,
            if d == 0 { 600 } else { 60 },
        );
        let p = dir.join(&name);
        if !p.exists() {
            write_shard(&p, docs.iter().map(String::as_str), tok, false, false)?;
        }
        let seqs = PackedSequences::new(Arc::new(TokenShard::open(&p)?), packing)?;
        out.insert(name, SequenceStream::new(seqs, d as u64));
    }
    Ok(out)
}

/// Seconds to draw `STEPS` batches with the curriculum sampler (natural mix, then the last 20%
/// with every domain at an equal share) and with the mixture sampler (the same as weights).
fn draw(s: &BTreeMap<String, SequenceStream>) -> Result<(f64, f64)> {
    let run = RunSize::new(Duration::batches(STEPS));
    let names: Vec<String> = s.keys().cloned().collect();
    let c = Curriculum::upsample_end(
        names.iter().map(|n| StreamSpec::plain(n)).collect(),
        names
            .iter()
            .map(|n| StreamSpec::proportion(n, 1.0))
            .collect(),
        None,
        0.2,
    );
    let mut sampler = CurriculumSampler::new(s.clone(), &c, &run, 0)?;
    let t = Instant::now();
    for step in 0..STEPS {
        std::hint::black_box(sampler.batch(step, BATCH)?);
    }
    let curriculum = t.elapsed().as_secs_f64();
    let sizes: BTreeMap<String, f64> = s
        .iter()
        .map(|(k, v)| (k.clone(), v.sequences().len() as f64))
        .collect();
    let equal: BTreeMap<String, f64> = names.iter().map(|n| (n.clone(), 1.0)).collect();
    let mix = DataMix::upsample_end(sizes, equal, 0.2).resolve(&run)?;
    let mut sampler = MixtureSampler::new(s.clone(), mix, 0)?;
    let t = Instant::now();
    for step in 0..STEPS {
        std::hint::black_box(sampler.batch(step, BATCH));
    }
    Ok((curriculum, t.elapsed().as_secs_f64()))
}

/// Median seconds of a forward + backward step of `repro upsampling`'s model on one batch.
fn step_seconds(vocab: usize) -> Result<f64> {
    let device = Device::flex().autodiff();
    device.seed(0);
    let config = Gpt2Config {
        vocab_size: vocab,
        n_positions: SEQ,
        n_embd: 96,
        n_layer: 2,
        n_head: 4,
        ..Gpt2Config::gpt2()
    };
    let model = Gpt2LmHead::init(&config, &device)?;
    let ids: Vec<i64> = (0..BATCH * SEQ).map(|i| (i * 7 % vocab) as i64).collect();
    let mut times = Vec::new();
    for _ in 0..6 {
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [BATCH, SEQ]), &device);
        let t = Instant::now();
        let loss = model.loss(x, None);
        let grads = loss.backward();
        std::hint::black_box(grads);
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Spread::of(&times[1..]).ok_or("no steps")?.median)
}

fn python(args: &[&str]) -> Result<Option<serde_json::Value>> {
    let script = root().join("xtask/lm_eval_mc_anchor.py");
    eprintln!("$ python3 {} {}", script.display(), args.join(" "));
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            Ok(text
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .or(Some(serde_json::Value::Null)))
        }
        Ok(o) => {
            eprintln!(
                "lm-eval anchor failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Ok(None)
        }
        Err(e) => {
            eprintln!("cannot run python3: {e}");
            Ok(None)
        }
    }
}

/// Seconds for kiln to load the model and score every row (as lm-eval's timing includes its
/// model load), and the accuracy.
fn kiln_mc(dir: &Path) -> Result<(f64, f64, usize)> {
    let device = Device::flex();
    let t = Instant::now();
    let model = match AutoModel::load(dir.join("model"), &device, LoadOptions::default())? {
        AutoModel::Gpt2Lm(m) => m,
        _ => return Err("the bench model is not a GPT2LMHeadModel".into()),
    };
    let tok = Tokenizer::from_file(dir.join("model"))?;
    let rows = read_mc(
        &dir.join("dev.jsonl"),
        McFormat::MedMcqa,
        &ReadOptions::default(),
    )?;
    let r = evaluate_mc(
        &model,
        &tok,
        &rows,
        &McEvalOptions::new(McFormat::MedMcqa),
        &device,
        |_| {},
    )?;
    Ok((t.elapsed().as_secs_f64(), r.acc, rows.len()))
}

pub(crate) fn data(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("`bench data` takes no arguments: {args:?}").into());
    }
    let work = std::env::temp_dir().join(format!("kiln-bench-data-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run(&work);
    let _ = std::fs::remove_dir_all(&work);
    let section = result?;
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "data", &section)
}

fn run(work: &Path) -> Result<String> {
    // 1. samplers
    let sample: Vec<String> = Domain::ALL
        .iter()
        .flat_map(|d| corpus::documents(*d, 0, 0, 100))
        .collect();
    let tok = Tokenizer::train(
        TokenizerKind::Bpe,
        sample.iter().map(String::as_str),
        1024,
        2,
    )?;
    let step = step_seconds(tok.vocab_size().div_ceil(8) * 8)?;
    let mut rows = String::from(
        "| domains | curriculum sampler | per batch | share of a step | mixture sampler | per batch |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for n in DOMAINS {
        let s = streams(&work.join("shards"), &tok, n)?;
        let (mut cur, mut mix) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            let (c, m) = draw(&s)?;
            cur.push(c);
            mix.push(m);
        }
        let seqs = (STEPS as usize * BATCH) as f64;
        // throughput per run (so the range reads low–high), time per batch from the median run
        let rate = |xs: &[f64]| Spread::of(&xs.iter().map(|x| seqs / x / 1e6).collect::<Vec<_>>());
        let (c, m) = (
            Spread::of(&cur).ok_or("no runs")?,
            Spread::of(&mix).ok_or("no runs")?,
        );
        let (cr, mr) = (rate(&cur).ok_or("no runs")?, rate(&mix).ok_or("no runs")?);
        rows.push_str(&format!(
            "| {n} | {} | {:.1} µs | {:.4}% | {} | {:.1} µs |\n",
            cr.show(|x| format!("{x:.2} M seq/s")),
            c.median / STEPS as f64 * 1e6,
            100.0 * c.median / STEPS as f64 / step,
            mr.show(|x| format!("{x:.2} M seq/s")),
            m.median / STEPS as f64 * 1e6,
        ));
    }
    // 2. multiple-choice scoring beside lm-eval
    let dir = work.join("mc");
    let dir_s = dir.to_str().ok_or("temporary directory is not UTF-8")?;
    let threads = crate::bench::cores().to_string();
    let made = python(&["--make", dir_s, "--rows", &MC_ROWS.to_string()])?;
    let mut mc = String::new();
    if made.is_none() {
        mc.push_str("The lm-eval anchor could not run (python3 with torch, transformers and lm-eval is needed); no comparison recorded.\n");
    } else {
        let (mut k, mut l) = (Vec::new(), Vec::new());
        let (mut acc_k, mut acc_l, mut n) = (f64::NAN, f64::NAN, 0);
        for _ in 0..REPEATS {
            let (secs, acc, rows) = kiln_mc(&dir)?;
            k.push(secs);
            acc_k = acc;
            n = rows;
            if let Some(v) = python(&["--run", dir_s, "--threads", &threads])? {
                l.push(v["seconds"].as_f64().unwrap_or(f64::NAN));
                acc_l = v["acc"].as_f64().unwrap_or(f64::NAN);
            }
        }
        let ks = Spread::of(&k).ok_or("no kiln runs")?;
        let per = |x: f64| format!("{:.2} questions/s", n as f64 / x);
        mc.push_str(
            "| scorer | wall time (load + score) | throughput | acc |\n|---|---:|---:|---:|\n",
        );
        mc.push_str(&format!(
            "| kiln (`evaluate_mc`) | {} | {} | {acc_k:.4} |\n",
            ks.show(|x| format!("{x:.1} s")),
            per(ks.median)
        ));
        if let Some(ls) = Spread::of(&l) {
            mc.push_str(&format!(
                "| lm-evaluation-harness 0.4.13 (`hf`, batch 1, {threads} torch threads) | {} | {} | {acc_l:.4} |\n\nkiln's time is {:.2}× lm-eval's.\n",
                ls.show(|x| format!("{x:.1} s")),
                per(ls.median),
                ks.median / ls.median
            ));
        }
    }
    Ok(format!(
        "<!-- bench:data:start -->\n\
## kiln-data samplers and multiple-choice scoring (CPU)\n\n\
Command: `cargo xtask bench data` (in xtask's process, dev profile: burn's kernels, kiln-data and xtask built with \
opt-level 3, kiln-models' and kiln-train's own code not). Machine: {}.\n\n\
**Samplers.** Domains of generated text (the first of 600 documents, the others of 60; sequences of {SEQ} tokens), \
{STEPS} batches of {BATCH} sequences per run with a switch to an equal mix at 80% (`CurriculumSampler`: streaming's \
per-epoch counts, distinct-sequence tracking; `MixtureSampler`: one weighted draw per sequence), {REPEATS} runs each, \
median (min–max). *Share of a step*: time per batch against a forward + backward pass of `repro upsampling`'s model \
(GPT-2 2 × 96, batch {BATCH} × {SEQ}) measured in the same process ({:.1} ms) — the smallest step the sampler has to keep up with.\n\n{rows}\n\
**Multiple-choice scoring.** {} MedMCQA rows (kiln-train's fixture rows, cycled) scored zero-shot with lm-eval's `medmcqa` \
prompt and continuations by a GPT-2 small-layout model (12 × 768, random weights saved once by transformers, the fixture's \
tokenizer) — both sides read the same directory; {REPEATS} runs alternating, median (min–max). Equal `acc` is a check that \
both scored the same thing.\n\n{mc}\
<!-- bench:data:end -->\n",
        crate::bench::machine(),
        step * 1e3,
        MC_ROWS,
    ))
}
