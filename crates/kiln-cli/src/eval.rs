//! `kiln eval mc`: zero- and few-shot multiple-choice accuracy of a GPT-2 the way
//! lm-evaluation-harness computes it (MedMCQA, MedQA, SWAG-style files).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln_data::mc::{McExample, McFormat, ReadOptions, read_mc};
use kiln_data::tokenizer::Tokenizer;
use kiln_models::LoadOptions;
use kiln_models::auto::AutoModel;
use kiln_train::tasks::mc::{GroupAccuracy, McEvalOptions, evaluate_mc};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::error::CliError;
use crate::progress::Bar;

#[derive(Debug, Subcommand)]
pub(crate) enum EvalCommand {
    /// Multiple-choice accuracy with lm-evaluation-harness's `multiple_choice` scoring: the
    /// task's prompt (`medmcqa`: "Question: …\nChoices:\nA. …\nAnswer:"; `medqa_4options` for
    /// MedQA and SWAG-style rows), each option scored as the continuation " A" … " D" by its
    /// summed log-likelihood (nats); `acc` picks the most likely, `acc_norm` the most likely per
    /// character of the option. Prints overall accuracy and accuracy by subject and by
    /// MedMCQA's choice_type, each with a percentile bootstrap interval.
    Mc(McArgs),
}

#[derive(Debug, Args)]
pub(crate) struct McArgs {
    /// GPT-2 language-model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Questions, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Row layout: medmcqa (id, question, opa…opd, cop, choice_type, subject_name), medqa
    /// (question, options {A…D}, answer_idx) or swag (sent1, sent2, ending0…3, label).
    #[arg(long, default_value = "medmcqa", value_parser = ["medmcqa", "medqa", "swag"])]
    format: String,
    /// Solved examples put before each question (lm-eval's num_fewshot). They are drawn from
    /// --fewshot-data, a different set for each question (seeded by --seed; never the question
    /// itself). lm-eval draws its shots with Python's `random`, so its choice differs; the
    /// context layout is the same.
    #[arg(long, default_value_t = 0)]
    shots: usize,
    /// Where the few-shot examples come from (the training split; same format as --data).
    #[arg(long, value_name = "FILE")]
    fewshot_data: Option<PathBuf>,
    /// MedMCQA files whose `cop` counts from 1 (the original release) rather than 0 (the
    /// Hugging Face dataset lm-eval reads).
    #[arg(long)]
    one_based_cop: bool,
    /// Evaluate only the first N rows.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Tokens the model sees at most (default: its context length, n_positions); longer
    /// prompts keep their end, as lm-eval.
    #[arg(long, value_name = "TOKENS")]
    max_length: Option<usize>,
    /// Bootstrap resamples of the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Confidence level of the intervals (0–1).
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Seed of the bootstrap and of the few-shot draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: cpu, cuda[:N] or wgpu (see `kiln run logits --help`). Defaults to KILN_DEVICE,
    /// else cpu.
    #[arg(long)]
    device: Option<String>,
    /// Print one JSON object: acc, acc_norm, n, by_subject, by_choice_type, and examples (per
    /// row: id, loglikelihoods, pred, pred_norm, answer) — what lm-eval's --log_samples gives.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: EvalCommand) -> Result<(), CliError> {
    match cmd {
        EvalCommand::Mc(a) => mc(a),
    }
}

/// `k` shots for question `q`, drawn without replacement from `pool`, never `q` itself.
fn draw_shots(
    pool: &[McExample],
    k: usize,
    q: &McExample,
    seed: u64,
    index: u64,
) -> Vec<McExample> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut candidates: Vec<&McExample> = pool.iter().filter(|p| p.id != q.id).collect();
    let mut out = Vec::with_capacity(k);
    while out.len() < k && !candidates.is_empty() {
        let i = (rng.next_u64() % candidates.len() as u64) as usize;
        out.push(candidates.swap_remove(i).clone());
    }
    out
}

fn mc(a: McArgs) -> Result<(), CliError> {
    let format = McFormat::from_name(&a.format)?;
    let read = ReadOptions {
        one_based_cop: a.one_based_cop,
        limit: a.limit,
    };
    let rows = read_mc(&a.data, format, &read)?;
    let pool = match (&a.fewshot_data, a.shots) {
        (_, 0) => Vec::new(),
        (None, k) => {
            return Err(CliError::Usage(format!(
                "--shots {k} needs --fewshot-data FILE (solved examples, e.g. the training split)"
            )));
        }
        (Some(p), k) => {
            let pool = read_mc(
                p,
                format,
                &ReadOptions {
                    limit: None,
                    ..read
                },
            )?;
            let labelled = pool.iter().filter(|r| r.answer.is_some()).count();
            if labelled < k {
                return Err(CliError::Usage(format!(
                    "--shots {k}: {} has only {labelled} labelled rows",
                    p.display()
                )));
            }
            pool.into_iter().filter(|r| r.answer.is_some()).collect()
        }
    };
    let dev = match &a.device {
        Some(n) => kiln_models::device_from_name(n)?,
        None => kiln_models::device_from_env()?,
    };
    let model = match AutoModel::load(&a.model, &dev, LoadOptions::default())? {
        AutoModel::Gpt2Lm(m) => m,
        other => {
            return Err(CliError::Usage(format!(
                "multiple-choice scoring needs a GPT-2 language model (GPT2LMHeadModel); {} holds {}",
                a.model.display(),
                other.architecture()
            )));
        }
    };
    if !a.model.join("tokenizer.json").is_file() {
        return Err(CliError::Usage(format!(
            "{} has no tokenizer.json; the prompts are text, so the model's tokenizer is needed",
            a.model.display()
        )));
    }
    let tok = Tokenizer::from_file(&a.model)?;
    let mut options = McEvalOptions::new(format);
    options.max_length = a.max_length;
    options.bootstrap = a.bootstrap;
    options.confidence = a.confidence;
    options.seed = a.seed;
    let bar = Bar::new(rows.len() as u64, "questions", "kiln eval mc");
    let report = if a.shots == 0 {
        evaluate_mc(&model, &tok, &rows, &options, &dev, |k| bar.set(k as u64))?
    } else {
        // Each question with its own shots; the results are put together as one report.
        let mut examples = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            options.shots = draw_shots(&pool, a.shots, row, a.seed, i as u64);
            let r = evaluate_mc(
                &model,
                &tok,
                std::slice::from_ref(row),
                &options,
                &dev,
                |_| {},
            )?;
            examples.extend(r.examples);
            bar.set(i as u64 + 1);
        }
        kiln_train::tasks::mc::summarise(examples, &options, a.shots)
    };
    bar.finish();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(CliError::Json)?
        );
        return Ok(());
    }
    let pct = |g: &GroupAccuracy| {
        format!(
            "{:>5} {:>7.2}% {:>7.2}%  [{:.2}%, {:.2}%]",
            g.n,
            100.0 * g.acc,
            100.0 * g.acc_norm,
            100.0 * g.acc_low,
            100.0 * g.acc_high
        )
    };
    println!("{}", report.scoring);
    println!(
        "{:<28} {:>5} {:>8} {:>8}  acc interval",
        "", "n", "acc", "acc_norm"
    );
    println!("{:<28} {}", "all", pct(&report.overall));
    for (title, groups) in [
        ("subject", &report.by_subject),
        ("choice_type", &report.by_choice_type),
    ] {
        if !groups.is_empty() {
            println!("by {title}:");
            for (k, g) in groups {
                println!("  {:<26} {}", k, pct(g));
            }
        }
    }
    let unlabelled = rows.len() - report.n;
    if unlabelled > 0 {
        println!("{unlabelled} unlabelled rows scored (in --json's examples) but not counted");
    }
    Ok(())
}
