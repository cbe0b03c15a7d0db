//! `kiln scaling …`: Chinchilla laws with inference demand (Sardana et al., ICML 2024).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use kiln_scaling_laws::chinchilla::{self, Allocation};
use kiln_scaling_laws::cost::{
    self, CostModel, CostedModel, Gpu, Hardware, InferenceDemand, Precision, Utilization,
};
use kiln_scaling_laws::fit::{self, FitOptions};
use kiln_scaling_laws::runs::{self, Columns};
use kiln_scaling_laws::{ChinchillaLaw, LawPreset, inference, plot};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::CliError;
use crate::numbers::{count, dollars, finite, non_negative_count, percent, positive_count, sci};
use crate::output::{Format, Report, Row, Shown, Table};

/// Size models with Chinchilla scaling laws, accounting for inference demand.
#[derive(Debug, Subcommand)]
pub(crate) enum ScalingCommand {
    /// Predicted loss, FLOPs and tokens per parameter of a model: give any two of --params,
    /// --tokens, --flops.
    Loss(LossArgs),
    /// The model size and training tokens that reach a loss with the fewest lifetime FLOPs
    /// (training + inference), beside the Chinchilla-style model of the same loss.
    Optimal(OptimalArgs),
    /// Dollar cost of training and serving a model, per phase, and the cost-optimal model of the
    /// same loss.
    Cost(CostArgs),
    /// Fit a Chinchilla law to your own runs (CSV of parameters, tokens, loss).
    Fit(FitArgs),
    /// Optimal N and D_train over a range of inference demands; writes an SVG plot.
    Sweep(SweepArgs),
}

pub(crate) fn run(command: ScalingCommand) -> Result<(), CliError> {
    match command {
        ScalingCommand::Loss(a) => loss(a),
        ScalingCommand::Optimal(a) => optimal(a),
        ScalingCommand::Cost(a) => cost_cmd(a),
        ScalingCommand::Fit(a) => fit_cmd(a),
        ScalingCommand::Sweep(a) => sweep(a),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared arguments.

#[derive(Debug, Args)]
pub(crate) struct LawArgs {
    /// Scaling law: a preset (sardana, hoffmann, hoffmann-unrounded, besiroglu) or the path of a
    /// JSON file with numbers e, a, b, alpha, beta, such as the output of `kiln scaling fit
    /// --json`. `sardana` is Hoffmann's E, A, B with alpha 0.336, beta 0.283, as used by the paper.
    #[arg(long, default_value = "sardana", value_name = "PRESET|FILE")]
    law: String,
}

#[derive(Debug, Args)]
pub(crate) struct FormatArgs {
    /// Print one JSON object instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV (a header row, then one row per result) instead of a table.
    #[arg(long)]
    csv: bool,
}

impl FormatArgs {
    fn format(&self) -> Format {
        Format::from_flags(self.json, self.csv)
    }
}

/// The target quality, as a loss or as the loss of a Chinchilla-style model.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct TargetArgs {
    /// Target loss (nats per token); must be above the law's irreducible loss E (1.69 for sardana).
    #[arg(long, value_parser = finite)]
    loss: Option<f64>,
    /// Target the loss of the Chinchilla-style (training-compute-optimal) model with this many
    /// parameters, e.g. 70B.
    #[arg(long, value_parser = positive_count, value_name = "PARAMS")]
    params: Option<f64>,
    /// Target the loss of the Chinchilla-style model trained with this many FLOPs, e.g. 1e24.
    #[arg(long, value_parser = positive_count, value_name = "FLOPS")]
    flops: Option<f64>,
}

impl TargetArgs {
    /// The target loss and the Chinchilla-style model that defines it.
    fn resolve(&self, law: &ChinchillaLaw) -> Result<(f64, Allocation), CliError> {
        let baseline = match (self.loss, self.params, self.flops) {
            (Some(loss), _, _) => chinchilla::for_loss(law, loss)?,
            (_, Some(n), _) => Allocation {
                n_params: n,
                train_tokens: chinchilla::optimal_tokens_for_params(law, n)?,
            },
            (_, _, Some(c)) => chinchilla::compute_optimal(law, c)?,
            (None, None, None) => {
                return Err(CliError::Usage(
                    "give one of --loss, --params, --flops".into(),
                ));
            }
        };
        let loss = self.loss.unwrap_or_else(|| baseline.loss(law));
        Ok((loss, baseline))
    }
}

/// Resolves `--law`: a preset name, else a JSON file.
pub(crate) fn resolve_law(spec: &str) -> Result<(ChinchillaLaw, String), CliError> {
    if let Ok(preset) = spec.parse::<LawPreset>() {
        return Ok((preset.law(), preset.name().to_owned()));
    }
    let path = Path::new(spec);
    if !path.is_file() {
        return Err(CliError::UnknownLaw {
            given: spec.to_owned(),
            presets: LawPreset::ALL.map(LawPreset::name).join(", "),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        path: path.to_owned(),
        source,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| CliError::LawFile {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    // Accept a top-level law or one nested under "law" (both forms are printed by kiln).
    let obj = value.get("law").filter(|v| v.is_object()).unwrap_or(&value);
    let get = |k: &str| {
        obj.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| CliError::LawFile {
                path: path.to_owned(),
                message: format!("missing number `{k}`"),
            })
    };
    let law = ChinchillaLaw::new(get("e")?, get("a")?, get("b")?, get("alpha")?, get("beta")?)?;
    Ok((law, path.display().to_string()))
}

fn law_json(law: &ChinchillaLaw, name: &str) -> Value {
    json!({ "name": name, "e": law.e, "a": law.a, "b": law.b, "alpha": law.alpha, "beta": law.beta })
}

fn law_line(law: &ChinchillaLaw, name: &str) -> String {
    format!("law: {name} ({law})")
}

fn kv(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// kiln scaling loss

#[derive(Debug, Args)]
pub(crate) struct LossArgs {
    /// Model parameters, e.g. 70B or 7e10.
    #[arg(long, value_parser = positive_count)]
    params: Option<f64>,
    /// Training tokens, e.g. 1.4T or 1.4e12.
    #[arg(long, value_parser = positive_count)]
    tokens: Option<f64>,
    /// Training FLOPs (6 × parameters × tokens), e.g. 1e24.
    #[arg(long, value_parser = positive_count)]
    flops: Option<f64>,
    #[command(flatten)]
    law: LawArgs,
    #[command(flatten)]
    format: FormatArgs,
}

fn loss(args: LossArgs) -> Result<(), CliError> {
    let (law, law_name) = resolve_law(&args.law.law)?;
    let (n, d) = match (args.params, args.tokens, args.flops) {
        (Some(n), Some(d), None) => (n, d),
        (Some(n), None, Some(c)) => (n, c / (6.0 * n)),
        (None, Some(d), Some(c)) => (c / (6.0 * d), d),
        _ => {
            return Err(CliError::Usage(
                "give exactly two of --params, --tokens, --flops (the third follows from flops = 6 × params × tokens)"
                    .into(),
            ));
        }
    };
    let model = Allocation {
        n_params: n,
        train_tokens: d,
    };
    let result = LossResult {
        law: LawJson::new(&law, &law_name),
        n_params: n,
        train_tokens: d,
        train_flops: model.train_flops(),
        tokens_per_param: model.tokens_per_param(),
        loss: law.loss(n, d)?,
        chinchilla_train_tokens: chinchilla::optimal_tokens_for_params(&law, n)?,
    };
    Report::of(
        format!("Predicted loss\n{}", law_line(&law, &law_name)),
        &result,
        &[
            Row("parameters", "n_params", Shown::Count),
            Row("training tokens", "train_tokens", Shown::Count),
            Row("training FLOPs", "train_flops", Shown::Sci),
            Row("tokens per parameter", "tokens_per_param", Shown::Fixed(1)),
            Row("loss (nats/token)", "loss", Shown::Fixed(6)),
            Row(
                "compute-optimal tokens for this size",
                "chinchilla_train_tokens",
                Shown::Count,
            ),
        ],
        vec![],
    )?
    .print(args.format.format())
}

/// The result of `kiln scaling loss` (its JSON and CSV contract).
#[derive(Serialize)]
struct LossResult {
    law: LawJson,
    n_params: f64,
    train_tokens: f64,
    train_flops: f64,
    tokens_per_param: f64,
    loss: f64,
    chinchilla_train_tokens: f64,
}

/// A law in results: its name and coefficients.
#[derive(Serialize)]
struct LawJson {
    name: String,
    e: f64,
    a: f64,
    b: f64,
    alpha: f64,
    beta: f64,
}

impl LawJson {
    fn new(law: &ChinchillaLaw, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            e: law.e,
            a: law.a,
            b: law.b,
            alpha: law.alpha,
            beta: law.beta,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// kiln scaling optimal

#[derive(Debug, Args)]
pub(crate) struct OptimalArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Lifetime inference demand in tokens (prompt + generated, over all requests), e.g. 2e12 or
    /// 2T. 0 gives the Chinchilla-style model.
    #[arg(long, value_parser = non_negative_count, default_value = "0", value_name = "TOKENS")]
    inference_tokens: f64,
    #[command(flatten)]
    law: LawArgs,
    #[command(flatten)]
    format: FormatArgs,
}

fn optimum_fields(opt: &inference::InferenceOptimum, law_name: &str) -> Vec<(String, Value)> {
    let (o, c, t) = (opt.optimal, opt.chinchilla, opt.inference_tokens);
    kv(&[
        ("law", law_name.into()),
        ("loss", opt.loss.into()),
        ("inference_tokens", t.into()),
        ("n_params", o.n_params.into()),
        ("train_tokens", o.train_tokens.into()),
        ("train_flops", o.train_flops().into()),
        ("inference_flops", o.inference_flops(t).into()),
        ("flops", opt.flops().into()),
        ("chinchilla_n_params", c.n_params.into()),
        ("chinchilla_train_tokens", c.train_tokens.into()),
        ("chinchilla_train_flops", c.train_flops().into()),
        ("chinchilla_inference_flops", c.inference_flops(t).into()),
        ("chinchilla_flops", opt.chinchilla_flops().into()),
        ("params_ratio", opt.params_ratio().into()),
        ("tokens_ratio", opt.tokens_ratio().into()),
        ("flops_ratio", opt.flops_ratio().into()),
    ])
}

fn optimal(args: OptimalArgs) -> Result<(), CliError> {
    let (law, law_name) = resolve_law(&args.law.law)?;
    let (loss, _) = args.target.resolve(&law)?;
    let opt = inference::optimal_allocation(&law, loss, args.inference_tokens)?;
    let (o, c, t) = (opt.optimal, opt.chinchilla, opt.inference_tokens);
    let mut table = Table::new(["", "inference-aware", "Chinchilla-style", "ratio"]);
    table
        .row([
            "parameters".into(),
            count(o.n_params),
            count(c.n_params),
            percent(opt.params_ratio()),
        ])
        .row([
            "training tokens".into(),
            count(o.train_tokens),
            count(c.train_tokens),
            percent(opt.tokens_ratio()),
        ])
        .row([
            "tokens per parameter".into(),
            format!("{:.1}", o.tokens_per_param()),
            format!("{:.1}", c.tokens_per_param()),
            String::new(),
        ])
        .row([
            "training FLOPs".into(),
            sci(o.train_flops()),
            sci(c.train_flops()),
            percent(o.train_flops() / c.train_flops()),
        ])
        .row([
            "inference FLOPs".into(),
            sci(o.inference_flops(t)),
            sci(c.inference_flops(t)),
            String::new(),
        ])
        .row([
            "lifetime FLOPs".into(),
            sci(opt.flops()),
            sci(opt.chinchilla_flops()),
            percent(opt.flops_ratio()),
        ]);
    let fields = optimum_fields(&opt, &law_name);
    let mut json = Value::Object(fields.iter().cloned().collect());
    json["law"] = law_json(&law, &law_name);
    Report {
        title: format!(
            "Lifetime-FLOP-optimal model for loss {loss:.6} with {} inference tokens\n{}",
            count(t),
            law_line(&law, &law_name)
        ),
        tables: vec![table],
        notes: vec![format!(
            "Training costs 6·N FLOPs per token, inference 2·N. The inference-aware model saves {} FLOPs ({}).",
            sci(opt.flops_saved()),
            percent(1.0 - opt.flops_ratio())
        )],
        json,
        csv_rows: vec![fields],
    }
    .print(args.format.format())
}

// ---------------------------------------------------------------------------------------------
// kiln scaling cost

#[derive(Debug, Args)]
pub(crate) struct CostArgs {
    /// Target loss (nats per token); the baseline is the Chinchilla-style model of this loss.
    #[arg(long, value_parser = finite, conflicts_with_all = ["params", "flops"])]
    loss: Option<f64>,
    /// Baseline model parameters, e.g. 30B. Without --tokens it is trained Chinchilla-style.
    #[arg(long, value_parser = positive_count, conflicts_with = "flops")]
    params: Option<f64>,
    /// Baseline training tokens, e.g. 1.5T (needs --params).
    #[arg(long, value_parser = positive_count, requires = "params")]
    tokens: Option<f64>,
    /// Baseline: the Chinchilla-style model trained with this many FLOPs, e.g. 1e24.
    #[arg(long, value_parser = positive_count)]
    flops: Option<f64>,

    /// Lifetime number of inference requests, e.g. 1e10.
    #[arg(long, value_parser = non_negative_count, default_value = "1e10")]
    requests: f64,
    /// Average prompt (prefill) tokens per request; 70 is LMSYS-Chat-1M's average.
    #[arg(long, value_parser = non_negative_count, default_value = "70")]
    input_tokens: f64,
    /// Average generated (decode) tokens per request; 215 is LMSYS-Chat-1M's average.
    #[arg(long, value_parser = non_negative_count, default_value = "215")]
    output_tokens: f64,

    /// Training GPU: a100-40gb, a100-80gb or h100.
    #[arg(long, default_value = "h100")]
    train_gpu: String,
    /// Training precision (bf16, fp16, fp8; fp8 needs an h100).
    #[arg(long, default_value = "bf16")]
    train_precision: String,
    /// Training price in dollars per GPU-hour [default: the GPU's: a100-40gb 1.10, a100-80gb 1.50,
    /// h100 2.00].
    #[arg(long, value_parser = finite, value_name = "DOLLARS_PER_GPU_HOUR")]
    train_price: Option<f64>,
    /// Override the training GPU's peak throughput, in FLOP/s (e.g. 9.89e14).
    #[arg(long, value_parser = positive_count, value_name = "FLOP_PER_S")]
    train_peak_flops: Option<f64>,
    /// Inference GPU: a100-40gb, a100-80gb or h100.
    #[arg(long, default_value = "h100")]
    inference_gpu: String,
    /// Inference precision (bf16, fp16, fp8, int8; int8 on an h100 runs at its fp8 peak).
    #[arg(long, default_value = "fp8")]
    inference_precision: String,
    /// Inference price in dollars per GPU-hour [default: the GPU's].
    #[arg(long, value_parser = finite, value_name = "DOLLARS_PER_GPU_HOUR")]
    inference_price: Option<f64>,
    /// Override the inference GPU's peak throughput, in FLOP/s.
    #[arg(long, value_parser = positive_count, value_name = "FLOP_PER_S")]
    inference_peak_flops: Option<f64>,
    /// Training model-FLOPs utilisation, a fraction in (0, 1].
    #[arg(long, value_parser = finite, default_value = "0.5")]
    train_mfu: f64,
    /// Prefill (prompt-token) MFU, a fraction in (0, 1].
    #[arg(long, value_parser = finite, default_value = "0.5")]
    prefill_mfu: f64,
    /// Decode (generated-token) MFU, a fraction in (0, 1]; decoding is memory-bound, hence 1%.
    #[arg(long, value_parser = finite, default_value = "0.01")]
    decode_mfu: f64,

    #[command(flatten)]
    law: LawArgs,
    #[command(flatten)]
    format: FormatArgs,
}

fn hardware(
    gpu: &str,
    precision: &str,
    price: Option<f64>,
    peak: Option<f64>,
) -> Result<Hardware, CliError> {
    let gpu: Gpu = gpu.parse()?;
    let precision: Precision = precision.parse()?;
    let preset = Hardware::preset(gpu, precision, price)?;
    Ok(Hardware::new(
        peak.unwrap_or(preset.peak_flops),
        preset.dollars_per_hour,
    )?)
}

fn costed_json(m: &CostedModel) -> Value {
    json!({
        "n_params": m.allocation.n_params,
        "train_tokens": m.allocation.train_tokens,
        "loss": m.loss,
        "flops": m.flops,
        "cost": { "train": m.cost.train, "prefill": m.cost.prefill, "decode": m.cost.decode, "total": m.cost.total },
    })
}

fn cost_cmd(args: CostArgs) -> Result<(), CliError> {
    let (law, law_name) = resolve_law(&args.law.law)?;
    let model = CostModel {
        train_hardware: hardware(
            &args.train_gpu,
            &args.train_precision,
            args.train_price,
            args.train_peak_flops,
        )?,
        inference_hardware: hardware(
            &args.inference_gpu,
            &args.inference_precision,
            args.inference_price,
            args.inference_peak_flops,
        )?,
        mfu: Utilization::new(args.train_mfu, args.prefill_mfu, args.decode_mfu)?,
    };
    let demand = InferenceDemand::new(args.requests, args.input_tokens, args.output_tokens)?;
    let (baseline_kind, baseline) = match (args.loss, args.params, args.tokens, args.flops) {
        (Some(loss), None, None, None) => ("Chinchilla-style", chinchilla::for_loss(&law, loss)?),
        (None, Some(n), Some(d), None) => (
            "given",
            Allocation {
                n_params: n,
                train_tokens: d,
            },
        ),
        (None, Some(n), None, None) => (
            "Chinchilla-style",
            Allocation {
                n_params: n,
                train_tokens: chinchilla::optimal_tokens_for_params(&law, n)?,
            },
        ),
        (None, None, None, Some(c)) => ("Chinchilla-style", chinchilla::compute_optimal(&law, c)?),
        _ => {
            return Err(CliError::Usage(
                "give one of --loss, --params [--tokens], --flops to define the baseline model"
                    .into(),
            ));
        }
    };
    let loss = baseline.loss(&law);
    let best = cost::cost_optimal(&law, loss, &demand, &model)?;
    let base = CostedModel::new(&law, &model, &demand, baseline)?;
    let opt = best.optimal;
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            percent(a / b)
        } else {
            String::new()
        }
    };

    let mut table = Table::new(["", baseline_kind, "cost-optimal", "ratio"]);
    let (b, o) = (&base, &opt);
    table
        .row([
            "parameters".into(),
            count(b.allocation.n_params),
            count(o.allocation.n_params),
            ratio(o.allocation.n_params, b.allocation.n_params),
        ])
        .row([
            "training tokens".into(),
            count(b.allocation.train_tokens),
            count(o.allocation.train_tokens),
            ratio(o.allocation.train_tokens, b.allocation.train_tokens),
        ])
        .row([
            "loss (nats/token)".into(),
            format!("{:.6}", b.loss),
            format!("{:.6}", o.loss),
            String::new(),
        ])
        .row([
            "training cost".into(),
            dollars(b.cost.train),
            dollars(o.cost.train),
            ratio(o.cost.train, b.cost.train),
        ])
        .row([
            "prefill cost".into(),
            dollars(b.cost.prefill),
            dollars(o.cost.prefill),
            ratio(o.cost.prefill, b.cost.prefill),
        ])
        .row([
            "decode cost".into(),
            dollars(b.cost.decode),
            dollars(o.cost.decode),
            ratio(o.cost.decode, b.cost.decode),
        ])
        .row([
            "total cost".into(),
            dollars(b.cost.total),
            dollars(o.cost.total),
            ratio(o.cost.total, b.cost.total),
        ])
        .row([
            "lifetime FLOPs".into(),
            sci(b.flops),
            sci(o.flops),
            ratio(o.flops, b.flops),
        ]);

    let mut setup = Table::new(["setting", "value"]).left_aligned();
    let hw = |h: &Hardware| {
        format!(
            "{} FLOP/s at ${:.2}/GPU-hour",
            sci(h.peak_flops),
            h.dollars_per_hour
        )
    };
    setup
        .row([
            "training".into(),
            format!(
                "{} {}, {}, MFU {}",
                args.train_gpu,
                args.train_precision,
                hw(&model.train_hardware),
                model.mfu.train
            ),
        ])
        .row([
            "inference".into(),
            format!(
                "{} {}, {}, MFU prefill {} / decode {}",
                args.inference_gpu,
                args.inference_precision,
                hw(&model.inference_hardware),
                model.mfu.prefill,
                model.mfu.decode
            ),
        ])
        .row([
            "demand".into(),
            format!(
                "{} requests × ({} prompt + {} generated tokens)",
                sci(demand.requests),
                demand.input_tokens_per_request,
                demand.output_tokens_per_request
            ),
        ])
        .row([
            "effective inference tokens".into(),
            sci(best.effective_inference_tokens),
        ]);

    let json = json!({
        "law": law_json(&law, &law_name),
        "loss": loss,
        "requests": demand.requests,
        "input_tokens_per_request": demand.input_tokens_per_request,
        "output_tokens_per_request": demand.output_tokens_per_request,
        "effective_inference_tokens": best.effective_inference_tokens,
        "train_hardware": { "peak_flops": model.train_hardware.peak_flops, "dollars_per_hour": model.train_hardware.dollars_per_hour, "mfu": model.mfu.train },
        "inference_hardware": { "peak_flops": model.inference_hardware.peak_flops, "dollars_per_hour": model.inference_hardware.dollars_per_hour, "prefill_mfu": model.mfu.prefill, "decode_mfu": model.mfu.decode },
        "baseline_kind": if baseline_kind == "given" { "given" } else { "chinchilla" },
        "baseline": costed_json(b),
        "optimal": costed_json(o),
        "chinchilla": costed_json(&best.chinchilla),
        "cost_ratio": o.cost.total / b.cost.total,
        "params_ratio": o.allocation.n_params / b.allocation.n_params,
        "tokens_ratio": o.allocation.train_tokens / b.allocation.train_tokens,
    });
    let row = |prefix: &str, m: &CostedModel| {
        kv(&[
            (&format!("{prefix}n_params"), m.allocation.n_params.into()),
            (
                &format!("{prefix}train_tokens"),
                m.allocation.train_tokens.into(),
            ),
            (&format!("{prefix}train_cost"), m.cost.train.into()),
            (&format!("{prefix}prefill_cost"), m.cost.prefill.into()),
            (&format!("{prefix}decode_cost"), m.cost.decode.into()),
            (&format!("{prefix}total_cost"), m.cost.total.into()),
            (&format!("{prefix}flops"), m.flops.into()),
        ])
    };
    let mut csv = kv(&[
        ("law", law_name.as_str().into()),
        ("loss", loss.into()),
        ("requests", demand.requests.into()),
        (
            "effective_inference_tokens",
            best.effective_inference_tokens.into(),
        ),
    ]);
    csv.extend(row("baseline_", b));
    csv.extend(row("optimal_", o));
    csv.push(("cost_ratio".into(), (o.cost.total / b.cost.total).into()));

    Report {
        title: format!(
            "Lifetime cost of a model of loss {loss:.6}: {baseline_kind} baseline vs cost-optimal\n{}",
            law_line(&law, &law_name)
        ),
        tables: vec![table, setup],
        notes: vec![
            "cost = 6·N·D·$train/MFU_train + 2·N·$inference·(prompt tokens/MFU_prefill + generated tokens/MFU_decode), \
             $ = price per GPU-hour / (3600 × peak FLOP/s)."
                .into(),
        ],
        json,
        csv_rows: vec![csv],
    }
    .print(args.format.format())
}

// ---------------------------------------------------------------------------------------------
// kiln scaling fit

#[derive(Debug, Args)]
pub(crate) struct FitArgs {
    /// CSV of training runs with a header row; one row per run.
    #[arg(long, value_name = "FILE")]
    csv: PathBuf,
    /// Column holding parameter counts.
    #[arg(long, default_value = "params")]
    params_column: String,
    /// Column holding training-token counts.
    #[arg(long, default_value = "tokens")]
    tokens_column: String,
    /// Column holding final losses (nats per token).
    #[arg(long, default_value = "loss")]
    loss_column: String,
    /// Huber threshold on log-loss residuals.
    #[arg(long, value_parser = finite, default_value = "1e-3")]
    delta: f64,
    /// L-BFGS iterations per start, at most.
    #[arg(long, default_value_t = 1000)]
    max_iters: u64,
    /// Starts of L-BFGS, spread evenly over Hoffmann's 4,500-point initialisation grid
    /// [default: all 4,500]. A fit costs about starts × rows × iterations: on the 47 runs of the
    /// paper all 4,500 take seconds; for tens of thousands of rows use a few hundred.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4500))]
    starts: Option<u32>,
    /// Worker threads, 1 to 1024 [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long, conflicts_with = "csv_output")]
    json: bool,
    /// Print CSV instead of a table.
    #[arg(long = "csv-output")]
    csv_output: bool,
}

fn fit_cmd(args: FitArgs) -> Result<(), CliError> {
    let columns = Columns {
        params: args.params_column,
        tokens: args.tokens_column,
        loss: args.loss_column,
    };
    let runs = runs::read_runs_csv(&args.csv, &columns)?;
    let options = FitOptions {
        delta: args.delta,
        max_iters: args.max_iters,
        threads: args.threads.map(|t| t as usize),
        starts: args.starts.map(|s| s as usize),
        ..FitOptions::default()
    };
    let total = options.starts.unwrap_or_else(|| options.grid.len());
    let bar = crate::progress::Bar::new(
        total as u64,
        "starts",
        &format!("kiln scaling fit: {} runs", runs.len()),
    );
    let result = fit::fit_with_progress(&runs, &options, &|done, _| bar.set(done as u64));
    bar.finish();
    let result = result?;
    let l = result.law;
    let best = result.best_start;
    let out = FitReport {
        e: l.e,
        a: l.a,
        b: l.b,
        alpha: l.alpha,
        beta: l.beta,
        objective: result.objective,
        gradient_norm: result.gradient_norm,
        delta: args.delta,
        runs: result.runs,
        starts: result.starts,
        failed_starts: result.failed_starts,
        iterations: result.iterations,
        best_start: StartPoint {
            alpha: best[0],
            beta: best[1],
            e: best[2],
            a: best[3],
            b: best[4],
        },
    };
    Report::of(
        format!(
            "Chinchilla law fitted to {} runs of {} (Huber δ = {}, L-BFGS from {} starts)",
            result.runs,
            args.csv.display(),
            args.delta,
            result.starts
        ),
        &out,
        &[
            Row("E (irreducible loss)", "e", Shown::Fixed(6)),
            Row("A", "a", Shown::Fixed(6)),
            Row("B", "b", Shown::Fixed(6)),
            Row("alpha", "alpha", Shown::Fixed(6)),
            Row("beta", "beta", Shown::Fixed(6)),
            Row("objective (summed Huber)", "objective", Shown::Sci),
            Row("gradient norm", "gradient_norm", Shown::Sci),
        ],
        vec![
            format!(
                "L(N, D) = {:.4} + {:.2} / N^{:.4} + {:.2} / D^{:.4}",
                l.e, l.a, l.alpha, l.b, l.beta
            ),
            "Use it: save `--json` output to a file and pass it to --law.".into(),
        ],
    )?
    .print(Format::from_flags(args.json, args.csv_output))
}

/// The result of `kiln scaling fit` (its JSON — a law file `--law` reads — and CSV contract).
#[derive(Serialize)]
struct FitReport {
    e: f64,
    a: f64,
    b: f64,
    alpha: f64,
    beta: f64,
    objective: f64,
    gradient_norm: f64,
    delta: f64,
    runs: usize,
    starts: usize,
    failed_starts: usize,
    iterations: u64,
    best_start: StartPoint,
}

/// The initial point `θ` of the best start.
#[derive(Serialize)]
struct StartPoint {
    alpha: f64,
    beta: f64,
    e: f64,
    a: f64,
    b: f64,
}

// ---------------------------------------------------------------------------------------------
// kiln scaling sweep

#[derive(Debug, Args)]
pub(crate) struct SweepArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Smallest lifetime inference demand, in tokens.
    #[arg(long, value_parser = positive_count, default_value = "1e9")]
    min_inference_tokens: f64,
    /// Largest lifetime inference demand, in tokens.
    #[arg(long, value_parser = positive_count, default_value = "1e15")]
    max_inference_tokens: f64,
    /// Number of demands, spaced evenly in log space.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    points: u32,
    /// Where to write the SVG plot (replaced atomically if it exists; never the --law file).
    #[arg(long, default_value = "scaling-sweep.svg", value_name = "FILE")]
    output: PathBuf,
    /// Do not write the plot.
    #[arg(long, conflicts_with = "output")]
    no_plot: bool,
    #[command(flatten)]
    law: LawArgs,
    #[command(flatten)]
    format: FormatArgs,
}

fn sweep(args: SweepArgs) -> Result<(), CliError> {
    let law_path = Path::new(&args.law.law);
    if !args.no_plot && law_path.exists() {
        kiln_checkpoint::paths::check_output(
            &args.output,
            &[("the law file".to_owned(), law_path.to_owned())],
        )?;
    }
    let (law, law_name) = resolve_law(&args.law.law)?;
    let (loss, _) = args.target.resolve(&law)?;
    if args.min_inference_tokens >= args.max_inference_tokens {
        return Err(CliError::Usage(format!(
            "--min-inference-tokens ({}) must be below --max-inference-tokens ({})",
            sci(args.min_inference_tokens),
            sci(args.max_inference_tokens)
        )));
    }
    let demands = inference::log_space(
        args.min_inference_tokens,
        args.max_inference_tokens,
        args.points as usize,
    )?;
    let points = inference::sweep(&law, loss, &demands)?;
    let mut notes = Vec::new();
    if !args.no_plot {
        let svg = plot::sweep_svg(
            &points,
            &format!("Inference-aware optimum at loss {loss:.4} ({law_name})"),
        )?;
        kiln_checkpoint::write_atomic(&args.output, svg.as_bytes())?;
        notes.push(format!("plot written to {}", args.output.display()));
    }
    let mut t = Table::new([
        "inference tokens",
        "parameters",
        "training tokens",
        "params",
        "tokens",
        "FLOPs",
    ]);
    for p in &points {
        t.row([
            sci(p.inference_tokens),
            sci(p.optimal.n_params),
            sci(p.optimal.train_tokens),
            percent(p.params_ratio()),
            percent(p.tokens_ratio()),
            percent(p.flops_ratio()),
        ]);
    }
    let rows: Vec<Vec<(String, Value)>> = points
        .iter()
        .map(|p| optimum_fields(p, &law_name))
        .collect();
    let json = json!({
        "law": law_json(&law, &law_name),
        "loss": loss,
        "points": rows.iter().map(|r| Value::Object(r.iter().cloned().collect())).collect::<Vec<_>>(),
    });
    let ch = points[0].chinchilla;
    Report {
        title: format!(
            "Inference-aware optimum over inference demand at loss {loss:.6}\n{}\n\
             Chinchilla-style model of this loss: {} parameters on {} tokens. Ratios are to it.",
            law_line(&law, &law_name),
            count(ch.n_params),
            count(ch.train_tokens)
        ),
        tables: vec![t],
        notes,
        json,
        csv_rows: rows,
    }
    .print(args.format.format())
}
