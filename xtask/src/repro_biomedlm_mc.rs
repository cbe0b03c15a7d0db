//! `cargo xtask repro biomedlm-mc`: BioMedLM's multiple-choice pipeline (Bolton et al. 2024) at
//! small scale, on data that can be generated here.
//!
//! A small GPT-2 is pretrained on kiln-data's built-in corpora (prose, Python, arithmetic
//! facts). A multiple-choice set in MedMCQA's file layout is generated from arithmetic
//! ("What is 37 + 48?" with four numeric options; subject = the operation, `choice_type`
//! single or multi) and read back through kiln-data's MedMCQA loader. Three evaluations on the
//! held-out questions: zero-shot with lm-evaluation-harness's `medmcqa` scoring (the letter
//! continuations " A"…" D" after its prompt), BioMedLM's multiple-choice head fine-tuned in full
//! (`[PAD]`/`[CLS]`/`[SEP]` added, embeddings grown, AdamW with half the steps warmup then
//! linear decay to 0), and the same head fine-tuned through kiln-lora adapters (r = 16 on every
//! linear layer, the head trainable as PEFT's `modules_to_save`). Accuracy overall, by
//! subject and by `choice_type`, each with a bootstrap interval.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_data::corpus::{self, Domain};
use kiln_data::mc::{McExample, McFormat, ReadOptions, read_mc};
use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
use kiln_lora::{LoraConfig, Modules};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead, Gpt2MultipleChoice};
use kiln_schedules::Duration;
use kiln_train::burn::module::Module;
use kiln_train::burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_train::tasks::CausalLmTask;
use kiln_train::tasks::mc::{
    McEncoded, McEvalOptions, McExampleResult, McReport, MultipleChoiceTask, encode_for_head,
    evaluate_mc, summarise,
};
use kiln_train::{OptimizerConfig, Trainer, TrainerConfig};

use crate::{Result, root, write_atomic};

const REPORT: &str = "biomedlm-mc.md";

#[derive(Debug, Clone)]
struct Setup {
    quick: bool,
    args: String,
    pretrain_steps: u64,
    finetune_epochs: u64,
    batch: usize,
    mc_batch: usize,
    seq_len: usize,
    n_embd: usize,
    n_layer: usize,
    vocab: usize,
    docs: u64,
    train_questions: usize,
    dev_questions: usize,
    lr_full: f64,
    lr_lora: f64,
    rank: usize,
    bootstrap: usize,
}

impl Setup {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                args: String::new(),
                pretrain_steps: 20,
                finetune_epochs: 1,
                batch: 8,
                mc_batch: 8,
                seq_len: 32,
                n_embd: 32,
                n_layer: 1,
                vocab: 384,
                docs: 200,
                train_questions: 64,
                dev_questions: 32,
                lr_full: 1e-3,
                lr_lora: 3e-3,
                rank: 4,
                bootstrap: 200,
            }
        } else {
            Self {
                quick,
                args: String::new(),
                pretrain_steps: 800,
                finetune_epochs: 3,
                batch: 16,
                mc_batch: 16,
                seq_len: 64,
                n_embd: 96,
                n_layer: 2,
                vocab: 1024,
                docs: 3000,
                train_questions: 2000,
                dev_questions: 400,
                lr_full: 5e-4,
                lr_lora: 2e-3,
                rank: 16,
                bootstrap: 2000,
            }
        }
    }
}

pub(crate) fn command(args: &[&str]) -> Result {
    let mut quick = false;
    let mut out = root().join("docs/reproductions");
    let mut device = None;
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
            other => {
                return Err(format!(
                    "unknown argument `{other}` (expected --quick, --out DIR, --device cpu|cuda[:N])"
                )
                .into());
            }
        }
    }
    let device = crate::pipeline_device(device.as_deref())?;
    let mut s = Setup::new(quick);
    s.args = crate::shown_args(args);
    let work = std::env::temp_dir().join(format!("kiln-repro-biomedlm-mc-{}", std::process::id()));
    let started = Instant::now();
    let result = run_all(&s, &work, &device);
    let _ = std::fs::remove_dir_all(&work);
    let r = result?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    write_atomic(&out.join(REPORT), report(&s, &r, minutes).as_bytes())?;
    eprintln!("wrote {}", out.join(REPORT).display());
    Ok(())
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// Generated arithmetic questions in MedMCQA's JSONL layout (0-based `cop`).
fn write_questions(path: &Path, n: usize, seed: u64) -> Result {
    let mut rng = Rng(seed);
    let mut lines = String::new();
    for i in 0..n {
        let (a, b) = (rng.below(100) as i64, rng.below(100) as i64);
        let (op, subject, ans) = match rng.below(3) {
            0 => ("+", "addition", a + b),
            1 => ("-", "subtraction", a - b),
            _ => {
                let b = b % 13;
                ("*", "multiplication", a * b)
            }
        };
        let b = if op == "*" { b % 13 } else { b };
        // distractors near the answer, all different
        let mut options = vec![ans];
        for d in [1i64, -1, 10, -10, 2, 11, -2, -11] {
            if options.len() == 4 {
                break;
            }
            let x = ans + d;
            if !options.contains(&x) {
                options.push(x);
            }
        }
        let cop = rng.below(4) as usize;
        options.swap(0, cop);
        let multi = rng.below(5) == 0;
        let question = if multi {
            format!("Which of the following equals {a} {op} {b}?")
        } else {
            format!("What is {a} {op} {b}?")
        };
        let row = serde_json::json!({
            "id": format!("q{seed}-{i}"),
            "question": question,
            "opa": options[0].to_string(), "opb": options[1].to_string(),
            "opc": options[2].to_string(), "opd": options[3].to_string(),
            "cop": cop,
            "choice_type": if multi { "multi" } else { "single" },
            "exp": null,
            "subject_name": subject,
            "topic_name": null,
        });
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines)?;
    Ok(())
}

struct Results {
    zero_shot: McReport,
    full: McReport,
    lora: McReport,
    lora_trainable: usize,
    full_trainable: usize,
    pretrain_loss: f64,
    seconds: BTreeMap<&'static str, f64>,
    device: String,
}

fn run_all(s: &Setup, work: &Path, device: &Device) -> Result<Results> {
    std::fs::create_dir_all(work)?;
    let device = &device.clone().autodiff();
    let mut seconds = BTreeMap::new();
    // 1. Pretraining on the built-in corpora.
    let docs: Vec<String> = Domain::ALL
        .iter()
        .flat_map(|d| corpus::documents(*d, 0, 0, s.docs))
        .collect();
    let mut tok = Tokenizer::train(
        TokenizerKind::Bpe,
        docs.iter().map(String::as_str),
        s.vocab,
        2,
    )?;
    let eos = tok
        .special_ids()
        .eos
        .ok_or("the BPE tokenizer has no end-of-text token")?;
    let train = crate::pack(&tok, &docs, eos, s.seq_len)?;
    let held: Vec<String> = Domain::ALL
        .iter()
        .flat_map(|d| corpus::documents(*d, 77, 0, 20))
        .collect();
    let mut eval = crate::pack(&tok, &held, eos, s.seq_len)?;
    eval.truncate(32);
    let config = Gpt2Config {
        vocab_size: tok.vocab_size(),
        n_positions: 256,
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
    device.seed(0);
    let lm = Gpt2LmHead::init(&config, device)?;
    let mut task = CausalLmTask::new(train, eval, s.batch, 0, device)?;
    let mut tc = TrainerConfig::new(
        Duration::batches(s.pretrain_steps),
        OptimizerConfig::adamw(2e-3, 0.0),
    );
    tc.lr_schedule = serde_json::from_str(
        r#"{"name": "cosine_with_warmup", "t_warmup": "0.05dur", "alpha_f": 0.1}"#,
    )?;
    tc.eval_interval = Some(Duration::batches(s.pretrain_steps));
    tc.progress_bar = false;
    eprintln!("== pretraining ({} steps)", s.pretrain_steps);
    let t = Instant::now();
    let out =
        Trainer::new(tc, work.join("pretrain")).fit(lm, &mut task, &mut Vec::new(), device)?;
    seconds.insert("pretraining", t.elapsed().as_secs_f64());
    let pretrain_loss = out.eval["loss"];
    let lm = out.model;

    // 2. The question set, written in MedMCQA's layout and read back by its loader.
    let (train_path, dev_path) = (work.join("train.jsonl"), work.join("dev.jsonl"));
    write_questions(&train_path, s.train_questions, 1)?;
    write_questions(&dev_path, s.dev_questions, 2)?;
    let train_rows = read_mc(&train_path, McFormat::MedMcqa, &ReadOptions::default())?;
    let dev_rows = read_mc(&dev_path, McFormat::MedMcqa, &ReadOptions::default())?;

    // 3. Zero-shot, lm-eval's way.
    let inner = device.clone().inner();
    let mut opts = McEvalOptions::new(McFormat::MedMcqa);
    opts.bootstrap = s.bootstrap;
    eprintln!("== zero-shot (lm-eval medmcqa scoring)");
    let t = Instant::now();
    let zero_shot = evaluate_mc(&lm.clone().valid(), &tok, &dev_rows, &opts, &inner, |_| {})?;
    seconds.insert("zero-shot evaluation", t.elapsed().as_secs_f64());

    // 4. BioMedLM's head: special tokens, grown embeddings, fine-tuning.
    let ids = tok.add_special_tokens(&["[PAD]", "[CLS]", "[SEP]"])?;
    let pad = ids[0];
    let encode = |rows: &[McExample]| -> Result<Vec<McEncoded>> {
        rows.iter()
            .map(|r| Ok(encode_for_head(&tok, r, "[SEP]", 512)?))
            .collect()
    };
    let (train_enc, dev_enc) = (encode(&train_rows)?, encode(&dev_rows)?);
    let head_model = |lm: &Gpt2LmHead| -> Result<Gpt2MultipleChoice> {
        device.seed(1);
        let mut mc = Gpt2MultipleChoice::init(&lm.transformer.config, device)?;
        mc.transformer = lm
            .transformer
            .clone()
            .resize_token_embeddings(tok.vocab_size())?;
        Ok(mc)
    };
    let finetune = |name: &'static str,
                    model: Gpt2MultipleChoice,
                    lr: f64|
     -> Result<(Gpt2MultipleChoice, f64)> {
        let mut task = MultipleChoiceTask::new(
            train_enc.clone(),
            dev_enc.clone(),
            s.mc_batch,
            pad,
            5,
            device,
        )?;
        let steps = s.finetune_epochs * train_enc.len().div_ceil(s.mc_batch) as u64;
        let mut tc = TrainerConfig::new(Duration::batches(steps), OptimizerConfig::adamw(lr, 0.0));
        // BioMedLM's runner: --warmup_ratio 0.5, which the HF Trainer rounds up to whole steps,
        // then its linear decay to 0 (equal step for step: kiln-schedules' tests/hf_parity.rs)
        tc.lr_schedule = serde_json::from_value(serde_json::json!({
            "name": "linear_decay_with_warmup",
            "t_warmup": format!("{}ba", steps.div_ceil(2)),
            "alpha_f": 0.0,
        }))?;
        tc.progress_bar = false;
        eprintln!("== fine-tuning: {name}");
        let t = Instant::now();
        let out =
            Trainer::new(tc, work.join(name)).fit(model, &mut task, &mut Vec::new(), device)?;
        Ok((out.model, t.elapsed().as_secs_f64()))
    };
    let full_model = head_model(&lm)?;
    let full_trainable = full_model.num_params();
    let (full_model, secs) = finetune("full", full_model, s.lr_full)?;
    seconds.insert("full fine-tuning", secs);
    // every linear layer of the backbone (GPT-2's c_attn, attention and MLP c_proj, c_fc)
    let targets = ["c_attn", "c_proj", "c_fc"].map(String::from).to_vec();
    let config = LoraConfig::new(s.rank, 2.0 * s.rank as f64, Modules::List(targets));
    let (mut lora_model, attach) = kiln_lora::train::attach(head_model(&lm)?, &config, 0)?;
    // the head trains in full, as PEFT's modules_to_save does for classification heads
    lora_model.classifier.weight = lora_model.classifier.weight.clone().set_require_grad(true);
    if let Some(b) = lora_model.classifier.bias.clone() {
        lora_model.classifier.bias = Some(b.set_require_grad(true));
    }
    let lora_trainable = attach.trainable + lora_model.classifier.num_params();
    let (lora_model, secs) = finetune("lora", lora_model, s.lr_lora)?;
    seconds.insert("LoRA fine-tuning", secs);
    let full = head_report(&full_model, &dev_enc, &dev_rows, &opts, &inner)?;
    let lora = head_report(&lora_model, &dev_enc, &dev_rows, &opts, &inner)?;
    Ok(Results {
        zero_shot,
        full,
        lora,
        lora_trainable,
        full_trainable,
        pretrain_loss,
        seconds,
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

/// The head's held-out predictions as a report (the option scores in place of log-likelihoods).
fn head_report(
    model: &Gpt2MultipleChoice,
    enc: &[McEncoded],
    rows: &[McExample],
    opts: &McEvalOptions,
    device: &Device,
) -> Result<McReport> {
    let model = model.valid();
    let mut examples = Vec::with_capacity(rows.len());
    for (e, row) in enc.iter().zip(rows) {
        let c = e.choices.len();
        let l = e.choices.iter().map(Vec::len).max().unwrap_or(1);
        let (mut ids, mut mask) = (vec![0i64; c * l], vec![0i64; c * l]);
        for (j, ch) in e.choices.iter().enumerate() {
            for (k, &t) in ch.iter().enumerate() {
                ids[j * l + k] = i64::from(t);
                mask[j * l + k] = 1;
            }
        }
        let t = |v: Vec<i64>| Tensor::<3, Int>::from_data(TensorData::new(v, [1, c, l]), device);
        let scores: Vec<f64> = model
            .forward(t(ids), Some(t(mask)))
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap_or_default();
        let pred = scores
            .iter()
            .enumerate()
            .fold(0, |b, (i, &x)| if x > scores[b] { i } else { b });
        examples.push(McExampleResult {
            id: row.id.clone(),
            loglikelihoods: scores,
            pred,
            pred_norm: pred,
            answer: row.answer,
            subject: row.subject.clone(),
            choice_type: row.choice_type.clone(),
        });
    }
    Ok(summarise(examples, opts, 0))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn report(s: &Setup, r: &Results, minutes: f64) -> String {
    let mut o = String::new();
    let cmd = if s.args.is_empty() {
        "cargo xtask repro biomedlm-mc".to_owned()
    } else {
        format!("cargo xtask repro biomedlm-mc {}", s.args)
    };
    let _ = writeln!(o, "# BioMedLM-style multiple choice, at small scale\n");
    let _ = writeln!(
        o,
        "Generated by `{cmd}` in {minutes:.1} min on {}; every number below is computed by that run.{}\n",
        r.device,
        if s.quick {
            " **--quick: a smoke test, not a result.**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "BioMedLM (Bolton et al. 2024) reports **57.3% on MedMCQA (dev)** with its 2.7B model fine-tuned with a multiple-choice head. That number needs the real model and the real data, neither of which can be downloaded here. This report runs the same pipeline end to end on what can be generated: a {}-layer × {} GPT-2 pretrained for {} steps on kiln-data's built-in corpora (held-out loss {:.3} nats/token), and arithmetic questions written in MedMCQA's file layout ({} training, {} held-out; subject = the operation; 20% `multi` choice type) and read by kiln-data's MedMCQA loader.\n",
        s.n_layer, s.n_embd, s.pretrain_steps, r.pretrain_loss, s.train_questions, s.dev_questions
    );
    let _ = writeln!(o, "## Accuracy on the held-out questions\n");
    let _ = writeln!(
        o,
        "Chance is 25%. Intervals: {:.0}% percentile bootstrap over questions ({} resamples).\n",
        95.0, s.bootstrap
    );
    let _ = writeln!(
        o,
        "| method | trainable parameters | accuracy | interval | time |"
    );
    let _ = writeln!(o, "|---|---:|---:|---|---:|");
    let row = |o: &mut String, name: &str, params: String, rep: &McReport, secs: f64| {
        let _ = writeln!(
            o,
            "| {name} | {params} | {} | {}–{} | {secs:.1} s |",
            pct(rep.acc),
            pct(rep.overall.acc_low),
            pct(rep.overall.acc_high)
        );
    };
    row(
        &mut o,
        "zero-shot, lm-eval `medmcqa` scoring (acc)",
        "—".into(),
        &r.zero_shot,
        r.seconds["zero-shot evaluation"],
    );
    row(
        &mut o,
        "multiple-choice head, full fine-tuning",
        r.full_trainable.to_string(),
        &r.full,
        r.seconds["full fine-tuning"],
    );
    row(
        &mut o,
        &format!(
            "multiple-choice head, LoRA r = {} (c_attn, c_proj, c_fc) + head",
            s.rank
        ),
        r.lora_trainable.to_string(),
        &r.lora,
        r.seconds["LoRA fine-tuning"],
    );
    let _ = writeln!(
        o,
        "\nZero-shot `acc_norm`: {} (equal to `acc` here: every continuation is one letter).\n",
        pct(r.zero_shot.acc_norm)
    );
    let against_chance = |rep: &McReport| {
        if rep.overall.acc_low > 0.25 {
            "above chance (its interval lies above 25%)"
        } else if rep.overall.acc_high < 0.25 {
            "below chance (its interval lies below 25%)"
        } else {
            "not distinguishable from chance (its interval contains 25%)"
        }
    };
    let against = |a: &McReport, b: &McReport| {
        if a.overall.acc_low > b.overall.acc_high {
            "higher, with intervals that do not overlap"
        } else if a.overall.acc_high < b.overall.acc_low {
            "lower, with intervals that do not overlap"
        } else {
            "not separable (the intervals overlap)"
        }
    };
    let _ = writeln!(
        o,
        "Read from the table: zero-shot accuracy is {}; full fine-tuning is {}; against zero-shot, full fine-tuning is {} and LoRA is {}; LoRA against full fine-tuning is {}.\n",
        against_chance(&r.zero_shot),
        against_chance(&r.full),
        against(&r.full, &r.zero_shot),
        against(&r.lora, &r.zero_shot),
        against(&r.lora, &r.full)
    );
    for (title, pick) in [("subject", 0usize), ("choice_type", 1)] {
        let _ = writeln!(o, "### By {title}\n");
        let _ = writeln!(o, "| {title} | n | zero-shot | full | LoRA |");
        let _ = writeln!(o, "|---|---:|---:|---:|---:|");
        let groups = |rep: &McReport| {
            if pick == 0 {
                rep.by_subject.clone()
            } else {
                rep.by_choice_type.clone()
            }
        };
        let (z, f, l) = (groups(&r.zero_shot), groups(&r.full), groups(&r.lora));
        for (k, g) in &z {
            let cell = |m: &BTreeMap<String, kiln_train::tasks::mc::GroupAccuracy>| {
                m.get(k).map_or("—".into(), |g| {
                    format!("{} ({}–{})", pct(g.acc), pct(g.acc_low), pct(g.acc_high))
                })
            };
            let _ = writeln!(
                o,
                "| {k} | {} | {} | {} | {} |",
                g.n,
                cell(&z),
                cell(&f),
                cell(&l)
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "## What was run\n");
    let _ = writeln!(
        o,
        "- **Zero-shot** follows lm-evaluation-harness's `medmcqa` task: the prompt `Question: …\\nChoices:\\nA. …\\nB. …\\nC. …\\nD. …\\nAnswer:`, each option scored as the continuation ` A` … ` D` by its summed log-likelihood (`kiln_train::tasks::mc::evaluate_mc`; checked against an lm-eval 0.4.13 run in `crates/kiln-train/tests/mc_eval.rs`). Zero-shot scoring needs a model that answers with a letter after `Answer:`, which a small model pretrained on generic text was never shown."
    );
    let _ = writeln!(
        o,
        "- **Fine-tuning** follows BioMedLM's `finetune/mc` recipe: `[PAD]`, `[CLS]`, `[SEP]` added to the tokenizer and the embeddings grown (new rows = the mean row), each option encoded as `question[SEP]` + ` option[SEP]`, right padding, the option scored by `Linear(n_embd, 1)` at its last real token, cross-entropy over the four options; AdamW (no weight decay) with warmup over the first half of the steps and linear decay to 0, {} epochs, batch {}; learning rates {:e} (full) and {:e} (LoRA) — BioMedLM's own values for MedMCQA are not published.",
        s.finetune_epochs, s.mc_batch, s.lr_full, s.lr_lora
    );
    let _ = writeln!(
        o,
        "- **LoRA** attaches kiln-lora adapters (r = {}, α = {}) to every linear layer of the backbone (`c_attn`, `c_proj`, `c_fc`); the head stays trainable, as PEFT's `modules_to_save` does for classification heads.\n",
        s.rank,
        2 * s.rank
    );
    let _ = writeln!(o, "## Reproducing the paper's number\n");
    let _ = writeln!(
        o,
        "With BioMedLM (`stanford-crfm/BioMedLM`) and MedMCQA's validation split (`openlifescienceai/medmcqa`, 4,183 questions; the hub's Parquet file or JSONL), the zero-/few-shot evaluation is one command:\n"
    );
    let _ = writeln!(
        o,
        "```\nkiln eval mc --model ./BioMedLM --data validation-00000-of-00001.parquet --format medmcqa --json > biomedlm-medmcqa.json\n```\n"
    );
    let _ = writeln!(
        o,
        "The paper's 57.3% is a fine-tuned result: fine-tune the multiple-choice head on MedMCQA's training split with `kiln_train::tasks::mc::MultipleChoiceTask` as this pipeline does (the 2.7B model needs a GPU: about 43 GB of weights and AdamW state), then score the validation split. The prompts `kiln eval mc` builds are lm-eval's byte for byte, so its zero-shot numbers are comparable with `lm_eval --tasks medmcqa`."
    );
    o
}
