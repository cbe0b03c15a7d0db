//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Everything kiln claims about a GPU, checked in one call: parity with transformers, short
/// trainings, training-step throughput and MFU, written to one JSON report.
#[derive(Debug, Parser)]
#[command(
    name = "kiln-gpu-check",
    version,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Child>,
    #[command(flatten)]
    pub(crate) check: CheckArgs,
}

/// The whole check (the default).
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// cuda (cuda:N for another GPU), cpu (burn's flex backend), or wgpu / wgpu:cpu (with the
    /// `wgpu` feature; wgpu:cpu is a CPU adapter such as Mesa's lavapipe).
    #[arg(long, default_value = "cuda")]
    pub(crate) device: String,
    /// kiln-models' fixture directory [default: crates/kiln-models/tests/fixtures under the
    /// current directory, or `fixtures` beside the binary].
    #[arg(long, value_name = "DIR")]
    pub(crate) fixtures: Option<PathBuf>,
    /// The JSON report, rewritten after each stage.
    #[arg(long, default_value = "gpu-check.json", value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// The GPU's name as nvidia-smi prints it, to pick its peak FLOP/s for MFU.
    #[arg(long, value_name = "NAME")]
    pub(crate) gpu_name: Option<String>,
    /// Seconds for the whole check on a lent machine: the training and throughput children share
    /// what the earlier stages leave, and one that overruns its share is killed.
    #[arg(long, default_value_t = 420.0, value_name = "S", value_parser = positive_seconds)]
    pub(crate) budget_s: f64,
    /// Instead of shares of --budget-s, give every child this many seconds: a limit that exists
    /// only to stop a hang, for CI, where a pass must not depend on the machine's speed.
    #[arg(long, value_name = "S", value_parser = positive_seconds)]
    pub(crate) child_limit_s: Option<f64>,
    /// Fixtures to compare, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub(crate) parity: Vec<Fixture>,
    /// Throughput runs as `MODEL:DTYPE:AUTOTUNE[:nofusion]`, comma-separated (MODEL gpt2|bert,
    /// DTYPE f32|bf16, AUTOTUNE default|minimal) [default: all eight with fusion, plus the four
    /// default-autotune runs without fusion when --no-fusion-binary is given].
    #[arg(long, value_delimiter = ',', value_parser = parse_run)]
    pub(crate) runs: Vec<Run>,
    /// The same check built without burn's fusion (`cargo xtask gpu-check build` makes it:
    /// gpu-check/kiln-gpu-check-no-fusion[.gz]); its throughput runs are the fusion-off ones.
    #[arg(long, value_name = "PATH")]
    pub(crate) no_fusion_binary: Option<PathBuf>,
    /// Small models and batches (for the CPU and lavapipe).
    #[arg(long)]
    pub(crate) quick: bool,
}

/// The child processes the check starts (one measurement each).
#[derive(Debug, Subcommand)]
pub(crate) enum Child {
    /// One training-step throughput measurement; prints one JSON object.
    Measure {
        /// The device.
        #[arg(long)]
        device: String,
        /// The model.
        #[arg(long, value_enum)]
        model: ThroughputModel,
        /// The float dtype of the whole model.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        /// Small sizes.
        #[arg(long)]
        quick: bool,
    },
    /// 20 AdamW steps; prints the losses.
    Train {
        /// The device.
        #[arg(long)]
        device: String,
        /// The model.
        #[arg(long, value_enum)]
        model: TrainModel,
        /// Small sizes.
        #[arg(long)]
        quick: bool,
    },
}

/// The parity fixtures (kiln-models' transformers references).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum Fixture {
    Gpt2Tied,
    Gpt2Scaled,
    Gpt2Gelu,
    BertMlm,
    MosaicBert,
}

impl Fixture {
    pub(crate) const ALL: [Self; 5] = [
        Self::Gpt2Tied,
        Self::Gpt2Scaled,
        Self::Gpt2Gelu,
        Self::BertMlm,
        Self::MosaicBert,
    ];

    /// The fixture's directory and reference name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Gpt2Tied => "gpt2_tied",
            Self::Gpt2Scaled => "gpt2_scaled",
            Self::Gpt2Gelu => "gpt2_gelu",
            Self::BertMlm => "bert_mlm",
            Self::MosaicBert => "mosaic_bert",
        }
    }
}

/// Models of the throughput stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ThroughputModel {
    Gpt2,
    Bert,
}

/// Models of the training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum TrainModel {
    Gpt2,
    MosaicBert,
}

/// Float dtypes of a throughput run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Dtype {
    F32,
    Bf16,
}

impl ThroughputModel {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::Bert => "bert",
        }
    }
}

impl TrainModel {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::MosaicBert => "mosaic_bert",
        }
    }
}

impl Dtype {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// One throughput measurement to make.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    pub(crate) model: ThroughputModel,
    pub(crate) dtype: Dtype,
    /// CubeCL's autotuning: the default (balanced) or minimal.
    pub(crate) minimal_autotune: bool,
    /// `false`: run with `--no-fusion-binary`.
    pub(crate) fusion: bool,
}

fn parse_run(text: &str) -> Result<Run, String> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    let bad = || {
        format!(
            "`{text}` is not MODEL:DTYPE:AUTOTUNE[:nofusion] with MODEL gpt2|bert, DTYPE f32|bf16, AUTOTUNE default|minimal"
        )
    };
    let (m, d, a, fusion) = match parts[..] {
        [m, d, a] => (m, d, a, true),
        [m, d, a, "nofusion"] => (m, d, a, false),
        _ => return Err(bad()),
    };
    Ok(Run {
        model: ThroughputModel::from_str(m, false).map_err(|_| bad())?,
        dtype: Dtype::from_str(d, false).map_err(|_| bad())?,
        minimal_autotune: match a {
            "default" => false,
            "minimal" => true,
            _ => return Err(bad()),
        },
        fusion,
    })
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| format!("expected a positive number of seconds, got `{text}`"))
}
