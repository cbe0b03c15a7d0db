//! `kiln merge CONFIG.yml OUT_DIR`: streaming merges of Hugging Face checkpoints.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_merging::{MergeConfig, MergeOptions, MergePlan, Observer, TensorDone};

use crate::error::CliError;

/// Merge Hugging Face checkpoints from a mergekit-style YAML config.
///
/// Methods: linear, wise_ft, task_arithmetic, ties, dare_linear, dare_ties, slerp. Inputs are local
/// model directories (model.safetensors, or shards with model.safetensors.index.json). Tensors are
/// streamed one at a time from memory maps; the output directory appears only when complete and
/// also holds config.json (from the base), the config, a README model card and, with
/// `tokenizer_source`, the tokenizer.
#[derive(Debug, Args)]
pub(crate) struct MergeArgs {
    /// The merge configuration (mergekit YAML: models, base_model, merge_method, parameters,
    /// dtype, out_dtype, tokenizer_source; kiln adds trim_scope and shape_mismatch).
    config: PathBuf,
    /// Output directory; must not exist unless --force. It may not be, lie inside or contain an
    /// input model or the config (checked after resolving symlinks, also with --force).
    out_dir: PathBuf,
    /// Maximum size of each output shard, in bytes; accepts 5GB, 500MB, 2GiB, 1e9. A tensor larger
    /// than this gets a shard of its own.
    #[arg(long, default_value = "5GB", value_parser = kiln_checkpoint::size::parse, value_name = "BYTES")]
    out_shard_size: u64,
    /// Worker threads, 1 to 1024 [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Replace OUT_DIR if it exists (the old directory is removed only once the new one is
    /// complete; an interrupted replacement is repaired by the next run for OUT_DIR).
    #[arg(long)]
    force: bool,
    /// Print the plan (inputs, tensors, shards, memory) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Seed of DARE's random drop (the result is reproducible for a given seed).
    #[arg(long, default_value_t = 0)]
    random_seed: u64,
    /// Write the merge even when it turns finite inputs into NaN or ±∞ (overflow). By default
    /// such a merge is an error that names the tensors, and nothing is written.
    #[arg(long)]
    allow_non_finite: bool,
}

struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    read: u64,
    written: u64,
    last_line: usize,
}

impl Observer for Progress {
    fn phase(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_owned()),
            None => eprintln!("kiln merge: {message}"),
        }
    }

    fn tensor_done(&mut self, e: &TensorDone<'_>) {
        self.read += e.bytes_read;
        self.written += e.bytes_written;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = format!(
            "{:.1} tensors/s, {}/s read, {}/s written",
            (e.index + 1) as f64 / secs,
            kiln_checkpoint::size::format(self.read as f64 / secs),
            kiln_checkpoint::size::format(self.written as f64 / secs)
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(e.index as u64 + 1);
                bar.set_message(rate);
            }
            None => {
                // Not a terminal: a line at every 10%.
                let decile = (e.index + 1) * 10 / e.total.max(1);
                if decile > self.last_line {
                    self.last_line = decile;
                    eprintln!("kiln merge: {}/{} tensors ({rate})", e.index + 1, e.total);
                }
            }
        }
    }
}

pub(crate) fn run(args: MergeArgs) -> Result<(), CliError> {
    kiln_checkpoint::paths::check_output(
        &args.out_dir,
        &[("the merge config".to_owned(), args.config.clone())],
    )?;
    // Repair an interrupted `--force` replacement of OUT_DIR first, and say so, whatever the
    // rest of this run does (a dry run changes nothing).
    if !args.dry_run {
        for r in kiln_checkpoint::recover(&args.out_dir)? {
            eprintln!("note: {}: {r}", args.out_dir.display());
        }
    }
    let config = MergeConfig::from_file(&args.config)?;
    let options = MergeOptions {
        out_dir: args.out_dir.clone(),
        max_shard_bytes: args.out_shard_size,
        threads: args.threads.map(|t| t as usize),
        force: args.force,
        seed: args.random_seed,
        allow_non_finite: args.allow_non_finite,
    };
    let plan = MergePlan::new(config, options)?;
    if args.dry_run {
        print!("{}", plan.describe());
        return Ok(());
    }
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(plan.tensors.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tensors · {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let mut progress = Progress {
        bar,
        start: Instant::now(),
        read: 0,
        written: 0,
        last_line: 0,
    };
    let report = kiln_merging::run(&plan, &mut progress);
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    let report = report?;
    for (name, count) in &report.non_finite {
        eprintln!(
            "warning: `{name}` holds {count} NaN or infinite value(s) that the merge produced from finite inputs (written because of --allow-non-finite)"
        );
    }
    println!(
        "merged {} tensors ({} read, {} written) in {:.2} s → {}",
        report.tensors,
        kiln_checkpoint::size::format(report.bytes_read as f64),
        kiln_checkpoint::size::format(report.bytes_written as f64),
        report.seconds,
        report.out_dir.display()
    );
    Ok(())
}
