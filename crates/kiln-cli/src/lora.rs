//! `kiln lora`: merge PEFT adapters into Hugging Face checkpoints, extract adapters from fine-tuned
//! checkpoints, and measure the spectrum of what fine-tuning changed.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use kiln_lora::{Adapter, ExtractOptions, Filter, MergeOptions, SpectrumOptions};

use crate::error::CliError;
use crate::output::Table;
use crate::progress::Bar;

#[derive(Debug, Subcommand)]
pub(crate) enum LoraCommand {
    /// Merge a PEFT LoRA adapter into its base model and write a Hugging Face checkpoint
    /// (same tensor names and dtypes as the base; merged in f32; config and tokenizer copied).
    Merge(MergeArgs),
    /// Combine adapters into one PEFT adapter, as PEFT's `add_weighted_adapter` (linear, cat,
    /// svd, ties, dare_linear, dare_ties, magnitude_prune and their _svd variants).
    Combine(CombineArgs),
    /// Extract a PEFT LoRA adapter from a base and a fully fine-tuned checkpoint by truncated SVD
    /// of each changed weight (mergekit-extract-lora's method and options).
    Extract(ExtractArgs),
    /// Shrink an adapter's intruder dimensions (PEFT's reduce_intruder_dimension): directions of
    /// W + ΔW among its top-k singular vectors that no base singular vector aligns with (|cos| <
    /// ε) keep λ of their singular value; writes the mitigated adapter (same rank and config).
    ReduceIntruders(ReduceIntrudersArgs),
    /// Spectrum of what fine-tuning changed, per weight matrix: rank@τ, effective rank and stable
    /// rank of ΔW = W_ft − W_base beside the base weight and a Gaussian matrix of the same shape,
    /// ‖ΔW‖_F/‖W‖_F, and intruder dimensions.
    Spectrum(SpectrumArgs),
}

#[derive(Debug, Args)]
pub(crate) struct MergeArgs {
    /// The base model directory (config.json + safetensors) the adapter was trained on.
    #[arg(long, value_name = "DIR")]
    base: PathBuf,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors). Repeat to merge
    /// several; each then needs a weight in --adapter-weights.
    #[arg(long, value_name = "DIR", required = true)]
    adapter: Vec<PathBuf>,
    /// One weight per --adapter, comma separated: ΔW = Σ wᵢ·scaleᵢ·Bᵢ·Aᵢ, which is PEFT's
    /// `add_weighted_adapter(..., combination_type="cat")` [default: 1 for each].
    #[arg(long, value_name = "W,W,...", value_delimiter = ',')]
    adapter_weights: Vec<f64>,
    /// Output directory; must not exist unless --force, and may not be, lie inside or contain the
    /// base or an adapter (checked after resolving symlinks).
    #[arg(value_name = "OUT_DIR")]
    out: PathBuf,
    /// Replace an existing OUT_DIR (atomically: the old one stays until the new one is complete).
    #[arg(long)]
    force: bool,
    /// Write NaN or infinite merged values instead of refusing (PEFT's safe_merge=False).
    #[arg(long)]
    unsafe_merge: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CombineArgs {
    /// PEFT adapter directories to combine (repeat --adapter for each).
    #[arg(long, value_name = "DIR", required = true)]
    adapter: Vec<PathBuf>,
    /// One weight per --adapter, comma separated (negative weights subtract).
    #[arg(
        long,
        value_name = "W,W,...",
        value_delimiter = ',',
        required = true,
        allow_hyphen_values = true
    )]
    weights: Vec<f64>,
    /// PEFT's combination_type: linear (weighted sums of the A and of the B factors; equal ranks),
    /// cat (exactly Σ wᵢ·ΔWᵢ, rank Σ rᵢ), svd (Σ wᵢ·ΔWᵢ truncated by SVD), ties, dare_linear,
    /// dare_ties, magnitude_prune (on the factors; equal ranks), ties_svd, dare_linear_svd,
    /// dare_ties_svd, magnitude_prune_svd (on the ΔWs, then SVD).
    #[arg(long, default_value = "svd")]
    combination: String,
    /// Share of entries kept by ties, dare_* and magnitude_prune*, in (0, 1] [required by them].
    #[arg(long)]
    density: Option<f64>,
    /// TIES sign election: total (sign of the summed entries) or frequency (the more common sign).
    #[arg(long, default_value = "total", value_parser = ["total", "frequency"])]
    majority_sign: String,
    /// Rank of the *svd combinations [default: the largest rank of the inputs].
    #[arg(long)]
    svd_rank: Option<usize>,
    /// Clamp the SVD factors' entries to this quantile of their distribution, e.g. 0.99.
    #[arg(long)]
    svd_clamp: Option<f64>,
    /// Seed of DARE's random drop (reproducible with kiln; PEFT draws from torch's RNG instead).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output adapter directory; must not exist unless --force.
    #[arg(value_name = "OUT_DIR")]
    out: PathBuf,
    /// Replace an existing OUT_DIR.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ExtractArgs {
    /// The base model directory.
    #[arg(long, value_name = "DIR")]
    base: PathBuf,
    /// The fully fine-tuned model directory (same architecture and shapes as the base).
    #[arg(long, value_name = "DIR")]
    finetuned: PathBuf,
    /// The largest rank kept per module; modules whose ΔW has fewer singular values above
    /// --sv-epsilon get their real rank through rank_pattern (with α = r, so every scale is 1).
    #[arg(long, default_value_t = 128, value_name = "R")]
    max_rank: usize,
    /// Singular values at or below this are dropped (absolute, in the weights' units).
    #[arg(long, default_value_t = 0.0, value_name = "E")]
    sv_epsilon: f32,
    /// Only modules whose name matches this regex (searched anywhere in the name).
    #[arg(long, value_name = "RE")]
    include: Option<String>,
    /// Never modules whose name matches this regex.
    #[arg(long, value_name = "RE")]
    exclude: Option<String>,
    /// Changed embeddings become LoRA (lora_embedding_A/B) instead of being saved whole in
    /// modules_to_save.
    #[arg(long)]
    embed_lora: bool,
    /// Put the singular values in A (B = U, A = S·Vᵀ) instead of splitting them
    /// (B = U·√S, A = √S·Vᵀ).
    #[arg(long)]
    no_distribute_scale: bool,
    /// How the top singular vectors are computed: `exact` (the full thin SVD, as
    /// mergekit-extract-lora) or `randomized` (a seeded Gaussian sketch of max-rank +
    /// --oversample columns with --power-iters power iterations; exact when ΔW's rank is at most
    /// that, faster when --max-rank is small next to the matrix).
    #[arg(long, default_value = "exact", value_name = "METHOD", value_parser = ["exact", "randomized"])]
    svd: String,
    /// Extra sketch columns of --svd randomized.
    #[arg(long, default_value_t = 10, value_name = "N")]
    oversample: usize,
    /// Power iterations of --svd randomized (more: closer to the exact singular values).
    #[arg(long, default_value_t = 4, value_name = "N")]
    power_iters: usize,
    /// Output adapter directory (PEFT format, with a README listing the σ² energy kept per
    /// module); must not exist unless --force.
    #[arg(value_name = "OUT_DIR")]
    out: PathBuf,
    /// Replace an existing OUT_DIR.
    #[arg(long)]
    force: bool,
    /// Print the per-module report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReduceIntrudersArgs {
    /// The base model directory the adapter belongs to.
    #[arg(long, value_name = "DIR")]
    base: PathBuf,
    /// The PEFT adapter directory (plain LoRA on linear layers).
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// How many of W + ΔW's top singular vectors are tested.
    #[arg(long, default_value_t = 10, value_name = "K")]
    top_k: usize,
    /// A direction whose largest |cos| with the base's singular vectors is below this is an
    /// intruder.
    #[arg(long, default_value_t = 0.5, value_name = "EPS")]
    epsilon: f64,
    /// The share of each intruder's singular value kept, in [0, 1] (PEFT's mitigation_lambda:
    /// lower forgets less and learns less).
    #[arg(long, default_value_t = 0.75)]
    lambda: f64,
    /// Output adapter directory; must not exist unless --force.
    #[arg(value_name = "OUT_DIR")]
    out: PathBuf,
    /// Replace an existing OUT_DIR.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SpectrumArgs {
    /// The base model directory.
    #[arg(long, value_name = "DIR")]
    base: PathBuf,
    /// The fine-tuned model directory.
    #[arg(long, value_name = "DIR")]
    finetuned: PathBuf,
    /// τ of rank@τ: the share of ΔW's squared singular values (σ² energy) to explain, in (0, 1].
    #[arg(long, default_value_t = 0.9, value_name = "TAU")]
    threshold: f64,
    /// Intruder dimensions: how many of the fine-tuned weight's top singular vectors to test.
    #[arg(long, default_value_t = 10, value_name = "K")]
    intruder_top_k: usize,
    /// Intruder dimensions: a top singular vector whose |cos| with every base singular vector is
    /// below this is an intruder.
    #[arg(long, default_value_t = 0.5, value_name = "EPS")]
    intruder_epsilon: f64,
    /// Only modules whose name matches this regex.
    #[arg(long, value_name = "RE")]
    include: Option<String>,
    /// Never modules whose name matches this regex.
    #[arg(long, value_name = "RE")]
    exclude: Option<String>,
    /// Seed of the Gaussian baseline matrices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object with a `matrices` array instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write an SVG heatmap of rank@τ (module type × layer) to this file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

pub(crate) fn run(cmd: LoraCommand) -> Result<(), CliError> {
    match cmd {
        LoraCommand::Merge(a) => merge(a),
        LoraCommand::Combine(a) => combine(a),
        LoraCommand::ReduceIntruders(a) => reduce_intruders(a),
        LoraCommand::Extract(a) => extract(a),
        LoraCommand::Spectrum(a) => spectrum(a),
    }
}

/// Loads adapters and prints their warnings (unknown or legacy config fields).
pub(crate) fn load_adapters(dirs: &[PathBuf]) -> Result<Vec<Adapter>, CliError> {
    dirs.iter()
        .map(|d| {
            let a = Adapter::load(d)?;
            for w in a.config.warnings() {
                eprintln!("warning: {}: {w}", d.display());
            }
            Ok(a)
        })
        .collect()
}

/// The weight of each adapter: `--adapter-weights`, or 1 each.
pub(crate) fn weights(n: usize, given: &[f64]) -> Result<Vec<f64>, CliError> {
    if given.is_empty() {
        return Ok(vec![1.0; n]);
    }
    if given.len() != n {
        return Err(CliError::Usage(format!(
            "--adapter-weights has {} value(s) for {n} --adapter(s); give one weight per adapter",
            given.len()
        )));
    }
    Ok(given.to_vec())
}

/// Merges adapters into `base` at `out` with a progress bar.
pub(crate) fn merge_with_progress(
    base: &Path,
    adapters: &[Adapter],
    weights: &[f64],
    out: &Path,
    options: MergeOptions,
) -> Result<(PathBuf, kiln_lora::MergeSummary), CliError> {
    let weighted: Vec<_> = adapters.iter().zip(weights.iter().copied()).collect();
    let mut bar: Option<Bar> = None;
    let result =
        kiln_lora::merge_into_checkpoint(base, &weighted, out, options, &mut |done, total, _| {
            bar.get_or_insert_with(|| Bar::new(total as u64, "tensors", "merging"))
                .set(done as u64);
        });
    if let Some(b) = &bar {
        b.finish();
    }
    Ok(result?)
}

fn merge(a: MergeArgs) -> Result<(), CliError> {
    let mut inputs = vec![("the base model".to_owned(), a.base.clone())];
    inputs.extend(
        a.adapter
            .iter()
            .map(|d| ("an adapter".to_owned(), d.clone())),
    );
    kiln_checkpoint::paths::check_output(&a.out, &inputs)?;
    let w = weights(a.adapter.len(), &a.adapter_weights)?;
    let adapters = load_adapters(&a.adapter)?;
    let options = MergeOptions {
        safe_merge: !a.unsafe_merge,
        force: a.force,
        ..Default::default()
    };
    let (out, s) = merge_with_progress(&a.base, &adapters, &w, &a.out, options)?;
    println!(
        "wrote {}: {} tensor(s) merged, {} replaced by the adapter, {} copied",
        out.display(),
        s.merged,
        s.replaced,
        s.copied
    );
    Ok(())
}

fn combine(a: CombineArgs) -> Result<(), CliError> {
    let inputs: Vec<_> = a
        .adapter
        .iter()
        .map(|d| ("an adapter".to_owned(), d.clone()))
        .collect();
    kiln_checkpoint::paths::check_output(&a.out, &inputs)?;
    if a.weights.len() != a.adapter.len() {
        return Err(CliError::Usage(format!(
            "--weights has {} value(s) for {} --adapter(s); give one weight per adapter",
            a.weights.len(),
            a.adapter.len()
        )));
    }
    let adapters = load_adapters(&a.adapter)?;
    let options = kiln_lora::CombineOptions {
        combination: a.combination.parse()?,
        density: a.density,
        majority_sign: if a.majority_sign == "frequency" {
            kiln_lora::MajoritySign::Frequency
        } else {
            kiln_lora::MajoritySign::Total
        },
        svd_rank: a.svd_rank,
        svd_clamp: a.svd_clamp,
        seed: a.seed,
    };
    let weighted: Vec<_> = adapters.iter().zip(a.weights.iter().copied()).collect();
    let combined = kiln_lora::add_weighted_adapter(&weighted, &options)?;
    let out = combined.save(&a.out, a.force)?;
    println!(
        "wrote {} ({} module(s), r = {}, {} trainable parameters)",
        out.display(),
        combined.modules.len(),
        combined.config.r,
        combined.trainable_parameters()
    );
    Ok(())
}

fn reduce_intruders(a: ReduceIntrudersArgs) -> Result<(), CliError> {
    kiln_checkpoint::paths::check_output(
        &a.out,
        &[
            ("the base model".to_owned(), a.base.clone()),
            ("the adapter".to_owned(), a.adapter.clone()),
        ],
    )?;
    let adapter = load_adapters(std::slice::from_ref(&a.adapter))?.remove(0);
    let options = kiln_lora::IntruderOptions {
        top_k: a.top_k,
        epsilon: a.epsilon,
        lambda: a.lambda,
    };
    let (mitigated, counts) = kiln_lora::reduce_intruder_dimension(&adapter, &a.base, options)?;
    let mut t = Table::new(["module", "intruders"]);
    for (name, n) in &counts {
        t.row([name.clone(), n.to_string()]);
    }
    print!("{}", t.render());
    let out = mitigated.save(&a.out, a.force)?;
    println!(
        "wrote {} ({} intruder dimension(s) in {} module(s) shrunk to λ = {})",
        out.display(),
        counts.iter().map(|(_, n)| n).sum::<usize>(),
        counts.iter().filter(|(_, n)| *n > 0).count(),
        a.lambda
    );
    Ok(())
}

fn extract(a: ExtractArgs) -> Result<(), CliError> {
    kiln_checkpoint::paths::check_output(
        &a.out,
        &[
            ("the base model".to_owned(), a.base.clone()),
            ("the fine-tuned model".to_owned(), a.finetuned.clone()),
        ],
    )?;
    let options = ExtractOptions {
        max_rank: a.max_rank,
        sv_epsilon: a.sv_epsilon,
        distribute_scale: !a.no_distribute_scale,
        embed_lora: a.embed_lora,
        filter: Filter::new(a.include.as_deref(), a.exclude.as_deref())?,
        force: a.force,
        svd: if a.svd == "randomized" {
            kiln_lora::SvdMethod::Randomized {
                oversample: a.oversample,
                power_iters: a.power_iters,
            }
        } else {
            kiln_lora::SvdMethod::Exact
        },
    };
    let mut bar: Option<Bar> = None;
    let result = kiln_lora::extract(
        &a.base,
        &a.finetuned,
        &a.out,
        &options,
        &mut |done, total, _| {
            bar.get_or_insert_with(|| Bar::new(total as u64, "modules", "extracting"))
                .set(done as u64);
        },
    );
    if let Some(b) = &bar {
        b.finish();
    }
    let (out, adapter, report) = result?;
    if a.json {
        let v = serde_json::json!({"output": out, "r": adapter.config.r, "report": report});
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(CliError::Json)?
        );
        return Ok(());
    }
    let mut t = Table::new(["module", "rank", "real rank", "σ² energy kept"]);
    for m in &report.modules {
        t.row([
            m.name.clone(),
            m.rank.to_string(),
            m.real_rank.to_string(),
            format!("{:.6}", m.energy_kept),
        ]);
    }
    print!("{}", t.render());
    if !report.modules_to_save.is_empty() {
        println!(
            "saved whole (modules_to_save): {}",
            report.modules_to_save.join(", ")
        );
    }
    if !report.unchanged.is_empty() {
        println!("unchanged, left out: {} module(s)", report.unchanged.len());
    }
    println!(
        "wrote {} (r = {}, {} LoRA module(s), {} trainable parameters)",
        out.display(),
        adapter.config.r,
        adapter.modules.len(),
        adapter.trainable_parameters()
    );
    Ok(())
}

fn spectrum(a: SpectrumArgs) -> Result<(), CliError> {
    if let Some(plot) = &a.plot {
        kiln_checkpoint::paths::check_output(
            plot,
            &[
                ("the base model".to_owned(), a.base.clone()),
                ("the fine-tuned model".to_owned(), a.finetuned.clone()),
            ],
        )?;
    }
    let options = SpectrumOptions {
        threshold: a.threshold,
        intruder_top_k: a.intruder_top_k,
        intruder_epsilon: a.intruder_epsilon,
        seed: a.seed,
        filter: Filter::new(a.include.as_deref(), a.exclude.as_deref())?,
    };
    let mut bar: Option<Bar> = None;
    let result = kiln_lora::spectrum(&a.base, &a.finetuned, &options, &mut |done, total, _| {
        bar.get_or_insert_with(|| Bar::new(total as u64, "matrices", "spectrum"))
            .set(done as u64);
    });
    if let Some(b) = &bar {
        b.finish();
    }
    let rows = result?;
    if let Some(plot) = &a.plot {
        kiln_checkpoint::write_atomic(plot, kiln_lora::heatmap_svg(&rows, a.threshold).as_bytes())?;
        eprintln!("wrote {}", plot.display());
    }
    if a.json {
        let v = serde_json::json!({
            "threshold": a.threshold,
            "intruder_top_k": a.intruder_top_k,
            "intruder_epsilon": a.intruder_epsilon,
            "matrices": rows,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(CliError::Json)?
        );
        return Ok(());
    }
    let tau = a.threshold;
    let mut t = Table::new([
        "matrix".to_string(),
        "shape".into(),
        format!("rank@{tau}"),
        "eff. rank".into(),
        "stable rank".into(),
        "‖ΔW‖/‖W‖".into(),
        "intruders".into(),
        format!("W rank@{tau}"),
        format!("random rank@{tau}"),
    ]);
    for r in &rows {
        t.row([
            r.name.clone(),
            format!("{}x{}", r.shape[0], r.shape[1]),
            r.delta.rank_at_threshold.to_string(),
            format!("{:.1}", r.delta.effective_rank),
            format!("{:.2}", r.delta.stable_rank),
            format!("{:.3e}", r.relative_change),
            r.intruders.to_string(),
            r.base.rank_at_threshold.to_string(),
            r.random.rank_at_threshold.to_string(),
        ]);
    }
    print!("{}", t.render());
    if rows.is_empty() {
        println!("no linear weight differs between the two checkpoints");
    }
    Ok(())
}
