//! `kiln`: the command-line face of the kiln crates.
//!
//! ```text
//! kiln merge ties.yml ./merged --out-shard-size 2GB
//! kiln run generate --model ./gpt2 --prompt "The cell" --max-new-tokens 20
//! kiln lora merge --base ./gpt2 --adapter ./my-adapter ./merged
//! kiln lora extract --base ./gpt2 --finetuned ./gpt2-ft --max-rank 64 ./extracted
//! kiln lora spectrum --base ./gpt2 --finetuned ./gpt2-ft --plot ranks.svg
//! kiln scaling optimal --loss 1.947 --inference-tokens 2e12
//! kiln scaling cost --params 30B --requests 1e9 --input-tokens 500 --output-tokens 100
//! kiln scaling fit --csv runs.csv --json > law.json
//! kiln scaling sweep --loss 2.0 --output sweep.svg --law law.json
//! kiln eval mc --model ./biomedlm --data medmcqa_dev.jsonl --json > scores.json
//! kiln scores consistency runs/mlp-*.scores --score el2n_mean --json
//! kiln scores fingerprint --group mlp=a.scores,b.scores,c.scores --group cnn=d.scores,e.scores,f.scores
//! ```
//!
//! Every subcommand prints a table by default and `--json` / `--csv` for scripts. Errors go to
//! stderr with their causes; the exit status is 1 for a failed command and 2 for bad arguments.

mod diffuse;
mod error;
mod eval;
mod lora;
mod merge;
mod numbers;
mod output;
mod progress;
mod run;
mod scaling;
mod scores;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kiln: a decade of MosaicML/Databricks training research as tools.
///
/// Numbers accept scientific notation and suffixes: 2e12, 1.5T (1e12), 70B (1e9), 350M (1e6),
/// 10K (1e3).
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Merge Hugging Face checkpoints from a mergekit-style YAML config (TIES, DARE, task
    /// arithmetic, SLERP, linear, WiSE-FT), streamed tensor by tensor.
    Merge(merge::MergeArgs),
    /// Evaluate a model: multiple-choice accuracy as lm-evaluation-harness computes it
    /// (MedMCQA, MedQA, SWAG-style rows), zero- or few-shot.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// LoRA with PEFT's files: merge adapters into checkpoints, extract adapters from fine-tuned
    /// checkpoints by SVD, and the spectrum of what fine-tuning changed ("LoRA Learns Less and
    /// Forgets Less").
    #[command(subcommand)]
    Lora(lora::LoraCommand),
    /// Run a Hugging Face GPT-2 or BERT checkpoint: logits for token ids, or text generation.
    #[command(subcommand)]
    Run(run::RunCommand),
    /// Chinchilla scaling laws with inference demand: loss, optimal and cost-optimal sizing,
    /// fitting your own runs, sweeps (Sardana et al., "Beyond Chinchilla-Optimal", ICML 2024).
    #[command(subcommand)]
    Scaling(Box<scaling::ScalingCommand>),
    /// Example-difficulty scores across runs: how consistent a score is, and which examples
    /// fingerprint an architecture (Kwok et al., "Dataset Difficulty and the Role of Inductive
    /// Bias"); reads kiln-scoring's NAME.scores directories.
    #[command(subcommand)]
    Scores(scores::ScoresCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ctrl-C or SIGTERM (and SIGHUP): remove half-written outputs, put back an output that a
    // `--force` replacement had moved aside, then exit with 130 as shells expect.
    let _ = ctrlc::set_handler(|| {
        let undone = kiln_checkpoint::interrupt_cleanup();
        // Not eprintln!: it panics when stderr is closed, and the exit below must happen.
        let _ = writeln!(
            std::io::stderr(),
            "kiln: interrupted{}",
            if undone.is_empty() {
                String::new()
            } else {
                format!("; cleaned up {} unfinished output path(s)", undone.len())
            }
        );
        std::process::exit(130);
    });
    let result = match cli.command {
        Command::Merge(args) => merge::run(args),
        Command::Run(cmd) => {
            // glibc malloc tuned for model loops (never changes results; see
            // kiln_models::cpu::tune_allocator; KILN_MALLOC_TUNING=0 turns it off). Not for
            // `merge`, which streams and keeps its memory small.
            kiln_models::cpu::tune_allocator();
            run::run(cmd)
        }
        Command::Eval(cmd) => {
            kiln_models::cpu::tune_allocator();
            eval::run(cmd)
        }
        Command::Scaling(cmd) => scaling::run(*cmd),
        Command::Lora(cmd) => lora::run(cmd),
        Command::Scores(cmd) => scores::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
