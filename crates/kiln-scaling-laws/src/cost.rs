//! Dollar cost of training plus inference, and the cost-optimal model (Sardana et al. 2024, eq. 6).
//!
//! ```text
//! cost = 6·N·D_train·c_train / MFU_train + 2·N·c_inf·(D_prompt / MFU_prefill + D_generated / MFU_decode)
//! ```
//!
//! `c` is dollars per FLOP: `$ per GPU-hour / (3600 × peak FLOP/s)`. Generated tokens run at a far
//! lower utilisation than prompt tokens (1% against 50% by default), which is why the cost optimum
//! sits further from Chinchilla than the FLOP optimum. The cost problem is the FLOP problem with an
//! effective inference demand ([`CostModel::effective_inference_tokens`]), solved by the same
//! [`iso_loss_optimum`](crate::inference::iso_loss_optimum).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::chinchilla::{
    self, Allocation, INFERENCE_FLOPS_PER_PARAM_TOKEN, TRAIN_FLOPS_PER_PARAM_TOKEN,
};
use crate::error::{Error, Result, non_negative, positive};
use crate::inference;
use crate::law::ChinchillaLaw;

const SECONDS_PER_HOUR: f64 = 3600.0;

/// GPU presets with the dense tensor-core peaks used by the paper's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gpu {
    /// NVIDIA A100 40 GB.
    A100_40gb,
    /// NVIDIA A100 80 GB.
    A100_80gb,
    /// NVIDIA H100 (SXM).
    H100,
}

impl Gpu {
    /// Every preset, in a stable order.
    pub const ALL: [Self; 3] = [Self::A100_40gb, Self::A100_80gb, Self::H100];

    /// Name as accepted by [`FromStr`] and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Self::A100_40gb => "a100-40gb",
            Self::A100_80gb => "a100-80gb",
            Self::H100 => "h100",
        }
    }

    /// Peak dense throughput in FLOP/s (or OP/s for INT8) at `precision`.
    ///
    /// A100: 312 TFLOP/s BF16/FP16, 624 TOP/s INT8, no FP8. H100: 989 TFLOP/s BF16/FP16,
    /// 1,978 TFLOP/s FP8 (INT8 has the same peak).
    ///
    /// # Errors
    /// [`Error::UnsupportedPrecision`] for FP8 on an A100.
    pub fn peak_flops(self, precision: Precision) -> Result<f64> {
        use Precision::*;
        match (self, precision) {
            (Self::A100_40gb | Self::A100_80gb, Bf16 | Fp16) => Ok(3.12e14),
            (Self::A100_40gb | Self::A100_80gb, Int8) => Ok(6.24e14),
            (Self::A100_40gb | Self::A100_80gb, Fp8) => Err(Error::UnsupportedPrecision {
                gpu: self.name(),
                precision: precision.name(),
                supported: "bf16, fp16, int8",
            }),
            (Self::H100, Bf16 | Fp16) => Ok(9.89e14),
            (Self::H100, Fp8 | Int8) => Ok(1.978e15),
        }
    }

    /// Default rental price in dollars per GPU-hour (the paper code's defaults:
    /// A100-40GB $1.10, A100-80GB $1.50, H100 $2.00).
    pub const fn default_dollars_per_hour(self) -> f64 {
        match self {
            Self::A100_40gb => 1.10,
            Self::A100_80gb => 1.50,
            Self::H100 => 2.00,
        }
    }
}

impl fmt::Display for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Gpu {
    type Err = Error;

    /// Parses `a100-40gb`, `a100-80gb`, `h100` (case-insensitive; `_` for `-`, `a100-40` and
    /// `a100_80` as in the paper's code are accepted too).
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        let norm = norm.strip_suffix("gb").unwrap_or(&norm).to_owned();
        Self::ALL
            .into_iter()
            .find(|g| g.name().strip_suffix("gb").unwrap_or(g.name()) == norm)
            .ok_or_else(|| Error::UnknownName {
                kind: "GPU",
                name: s.to_owned(),
                expected: Self::ALL.map(Self::name).join(", "),
            })
    }
}

/// Numeric precision of the matrix multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    Fp16,
    /// 8-bit floating point (H100 only).
    Fp8,
    /// 8-bit integer (quantised inference).
    Int8,
}

impl Precision {
    /// Every precision, in a stable order.
    pub const ALL: [Self; 4] = [Self::Bf16, Self::Fp16, Self::Fp8, Self::Int8];

    /// Name as accepted by [`FromStr`] and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
            Self::Fp8 => "fp8",
            Self::Int8 => "int8",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|p| p.name() == norm)
            .ok_or_else(|| Error::UnknownName {
                kind: "precision",
                name: s.to_owned(),
                expected: Self::ALL.map(Self::name).join(", "),
            })
    }
}

/// A GPU at a price: peak FLOP/s and dollars per GPU-hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    /// Peak throughput (FLOP/s) at the precision used.
    pub peak_flops: f64,
    /// Price in dollars per GPU-hour.
    pub dollars_per_hour: f64,
}

impl Hardware {
    /// Builds custom hardware.
    ///
    /// # Errors
    /// [`Error::NotPositive`] if either value is not a finite positive number.
    pub fn new(peak_flops: f64, dollars_per_hour: f64) -> Result<Self> {
        Ok(Self {
            peak_flops: positive("peak_flops (FLOP/s)", peak_flops)?,
            dollars_per_hour: positive("dollars_per_hour ($/GPU-hour)", dollars_per_hour)?,
        })
    }

    /// A preset GPU at `precision`, at its default price unless `dollars_per_hour` is given.
    ///
    /// # Errors
    /// [`Error::UnsupportedPrecision`] (see [`Gpu::peak_flops`]); [`Error::NotPositive`] for a
    /// bad price.
    pub fn preset(gpu: Gpu, precision: Precision, dollars_per_hour: Option<f64>) -> Result<Self> {
        Self::new(
            gpu.peak_flops(precision)?,
            dollars_per_hour.unwrap_or(gpu.default_dollars_per_hour()),
        )
    }

    /// Dollars per FLOP at 100% utilisation.
    pub fn dollars_per_flop(&self) -> f64 {
        self.dollars_per_hour / (SECONDS_PER_HOUR * self.peak_flops)
    }
}

/// Model-FLOPs utilisation of each phase, each in `(0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Utilization {
    /// Training MFU (default 0.5).
    pub train: f64,
    /// Prefill (prompt-token) MFU (default 0.5).
    pub prefill: f64,
    /// Decode (generated-token) MFU (default 0.01).
    pub decode: f64,
}

impl Utilization {
    /// Checked constructor.
    ///
    /// # Errors
    /// [`Error::InvalidMfu`] naming the first phase whose MFU is outside `(0, 1]`.
    pub fn new(train: f64, prefill: f64, decode: f64) -> Result<Self> {
        let u = Self {
            train,
            prefill,
            decode,
        };
        u.validate()?;
        Ok(u)
    }

    /// Checks every MFU lies in `(0, 1]`.
    ///
    /// # Errors
    /// [`Error::InvalidMfu`] naming the first bad phase.
    pub fn validate(&self) -> Result<()> {
        for (phase, value) in [
            ("training", self.train),
            ("prefill", self.prefill),
            ("decode", self.decode),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(Error::InvalidMfu { phase, value });
            }
        }
        Ok(())
    }
}

impl Default for Utilization {
    /// 50% training, 50% prefill, 1% decode (the paper's settings).
    fn default() -> Self {
        Self {
            train: 0.5,
            prefill: 0.5,
            decode: 0.01,
        }
    }
}

/// Lifetime inference demand: requests × (prompt, generated) tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InferenceDemand {
    /// Number of requests over the model's lifetime.
    pub requests: f64,
    /// Average prompt (prefill) tokens per request (default 70, LMSYS-Chat-1M's average).
    pub input_tokens_per_request: f64,
    /// Average generated (decode) tokens per request (default 215, LMSYS-Chat-1M's average).
    pub output_tokens_per_request: f64,
}

impl InferenceDemand {
    /// Checked constructor (all values finite and `>= 0`).
    ///
    /// # Errors
    /// [`Error::Negative`] naming the first bad value.
    pub fn new(
        requests: f64,
        input_tokens_per_request: f64,
        output_tokens_per_request: f64,
    ) -> Result<Self> {
        let demand = Self {
            requests,
            input_tokens_per_request,
            output_tokens_per_request,
        };
        demand.validate()?;
        Ok(demand)
    }

    /// `requests` requests of the default shape (70 prompt + 215 generated tokens).
    pub fn lmsys_shaped(requests: f64) -> Self {
        Self {
            requests,
            input_tokens_per_request: 70.0,
            output_tokens_per_request: 215.0,
        }
    }

    /// Checks every value is finite and `>= 0`.
    ///
    /// # Errors
    /// [`Error::Negative`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        non_negative("requests", self.requests)?;
        non_negative("input tokens per request", self.input_tokens_per_request)?;
        non_negative("output tokens per request", self.output_tokens_per_request)?;
        Ok(())
    }

    /// Total prompt tokens.
    pub fn input_tokens(&self) -> f64 {
        self.requests * self.input_tokens_per_request
    }

    /// Total generated tokens.
    pub fn output_tokens(&self) -> f64 {
        self.requests * self.output_tokens_per_request
    }

    /// Total inference tokens (prompt + generated).
    pub fn total_tokens(&self) -> f64 {
        self.input_tokens() + self.output_tokens()
    }
}

/// Cost of each phase in dollars.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostBreakdown {
    /// Training.
    pub train: f64,
    /// Prompt processing.
    pub prefill: f64,
    /// Token generation.
    pub decode: f64,
    /// Sum of the three.
    pub total: f64,
}

/// Training and inference hardware with their utilisations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// Hardware used for training.
    pub train_hardware: Hardware,
    /// Hardware used for inference.
    pub inference_hardware: Hardware,
    /// MFU per phase.
    pub mfu: Utilization,
}

impl CostModel {
    /// The defaults of the paper's code: H100 BF16 training at $2.00/h, H100 FP8 inference at
    /// $2.00/h, MFU 0.5/0.5/0.01.
    pub fn reference_default() -> Self {
        Self {
            train_hardware: Hardware {
                peak_flops: 9.89e14,
                dollars_per_hour: 2.0,
            },
            inference_hardware: Hardware {
                peak_flops: 1.978e15,
                dollars_per_hour: 2.0,
            },
            mfu: Utilization::default(),
        }
    }

    /// The paper's Figure 6 settings: A100-80GB BF16 training at $1.50/h, A100-40GB INT8
    /// inference at $1.10/h, MFU 0.5/0.5/0.01.
    pub fn paper() -> Self {
        Self {
            train_hardware: Hardware {
                peak_flops: 3.12e14,
                dollars_per_hour: 1.50,
            },
            inference_hardware: Hardware {
                peak_flops: 6.24e14,
                dollars_per_hour: 1.10,
            },
            mfu: Utilization::default(),
        }
    }

    /// Checks the hardware and utilisations.
    ///
    /// # Errors
    /// [`Error::NotPositive`] or [`Error::InvalidMfu`].
    pub fn validate(&self) -> Result<()> {
        for hw in [self.train_hardware, self.inference_hardware] {
            Hardware::new(hw.peak_flops, hw.dollars_per_hour)?;
        }
        self.mfu.validate()
    }

    /// Dollars per effective (utilisation-adjusted) training FLOP.
    fn train_dollars_per_flop(&self) -> f64 {
        self.train_hardware.dollars_per_flop() / self.mfu.train
    }

    /// Dollar cost of each phase for a model of `n_params` trained on `train_tokens` serving
    /// `demand`.
    ///
    /// # Errors
    /// Invalid counts, hardware, MFU or demand.
    pub fn cost(
        &self,
        n_params: f64,
        train_tokens: f64,
        demand: &InferenceDemand,
    ) -> Result<CostBreakdown> {
        positive("n_params (parameters)", n_params)?;
        positive("train_tokens (tokens)", train_tokens)?;
        self.validate()?;
        demand.validate()?;
        let c_inf = self.inference_hardware.dollars_per_flop();
        let train =
            TRAIN_FLOPS_PER_PARAM_TOKEN * n_params * train_tokens * self.train_dollars_per_flop();
        let prefill = INFERENCE_FLOPS_PER_PARAM_TOKEN * n_params * demand.input_tokens() * c_inf
            / self.mfu.prefill;
        let decode = INFERENCE_FLOPS_PER_PARAM_TOKEN * n_params * demand.output_tokens() * c_inf
            / self.mfu.decode;
        Ok(CostBreakdown {
            train,
            prefill,
            decode,
            total: train + prefill + decode,
        })
    }

    /// The inference demand (tokens) that, weighted like training FLOPs, costs the same as the real
    /// demand: `T_eff = c_inf·(D_prompt/MFU_prefill + D_generated/MFU_decode) / (c_train/MFU_train)`.
    ///
    /// # Errors
    /// Invalid hardware, MFU or demand.
    pub fn effective_inference_tokens(&self, demand: &InferenceDemand) -> Result<f64> {
        self.validate()?;
        demand.validate()?;
        let c_inf = self.inference_hardware.dollars_per_flop();
        Ok(c_inf
            * (demand.input_tokens() / self.mfu.prefill + demand.output_tokens() / self.mfu.decode)
            / self.train_dollars_per_flop())
    }
}

impl Default for CostModel {
    /// [`CostModel::reference_default`].
    fn default() -> Self {
        Self::reference_default()
    }
}

/// A model, its cost, and its FLOPs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostedModel {
    /// Parameters and training tokens.
    pub allocation: Allocation,
    /// Predicted loss.
    pub loss: f64,
    /// Dollar cost per phase.
    pub cost: CostBreakdown,
    /// Lifetime FLOPs (training + inference).
    pub flops: f64,
}

impl CostedModel {
    /// Costs `allocation` under `model` and `demand`.
    ///
    /// # Errors
    /// As [`CostModel::cost`].
    pub fn new(
        law: &ChinchillaLaw,
        model: &CostModel,
        demand: &InferenceDemand,
        allocation: Allocation,
    ) -> Result<Self> {
        Ok(Self {
            allocation,
            loss: law.loss(allocation.n_params, allocation.train_tokens)?,
            cost: model.cost(allocation.n_params, allocation.train_tokens, demand)?,
            flops: allocation.lifetime_flops(demand.total_tokens()),
        })
    }
}

/// The cost-optimal model for a loss, beside the Chinchilla-style model of the same loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostOptimum {
    /// Target loss.
    pub loss: f64,
    /// The effective inference demand the optimisation used (tokens).
    pub effective_inference_tokens: f64,
    /// The cost-optimal model.
    pub optimal: CostedModel,
    /// The Chinchilla-style model of the same loss.
    pub chinchilla: CostedModel,
}

impl CostOptimum {
    /// Optimal total cost as a fraction of the Chinchilla-style model's.
    pub fn cost_ratio(&self) -> f64 {
        self.optimal.cost.total / self.chinchilla.cost.total
    }

    /// Optimal parameters as a fraction of the Chinchilla-style model's.
    pub fn params_ratio(&self) -> f64 {
        self.optimal.allocation.n_params / self.chinchilla.allocation.n_params
    }

    /// Optimal training tokens as a fraction of the Chinchilla-style model's.
    pub fn tokens_ratio(&self) -> f64 {
        self.optimal.allocation.train_tokens / self.chinchilla.allocation.train_tokens
    }
}

/// The (N, D_train) that reaches `loss` at the lowest lifetime dollar cost.
///
/// # Errors
/// Invalid loss, hardware, MFU or demand; [`Error::NoConvergence`] as
/// [`optimal_allocation`](crate::inference::optimal_allocation).
///
/// # Example
/// ```
/// use kiln_scaling_laws::{ChinchillaLaw, cost::*};
/// // The README example of the paper's code.
/// let model = CostModel {
///     train_hardware: Hardware::preset(Gpu::A100_80gb, Precision::Bf16, Some(1.40))?,
///     inference_hardware: Hardware::preset(Gpu::A100_40gb, Precision::Int8, Some(0.60))?,
///     mfu: Utilization::new(0.5, 0.4, 0.2)?,
/// };
/// let demand = InferenceDemand::new(1e10, 1000.0, 250.0)?;
/// let best = cost_optimal(&ChinchillaLaw::sardana(), 1.947, &demand, &model)?;
/// assert!((best.optimal.allocation.n_params / 2.053e10 - 1.0).abs() < 1e-3);
/// assert!((best.cost_ratio() * 100.0 - 88.76).abs() < 0.005);
/// # Ok::<(), kiln_scaling_laws::Error>(())
/// ```
pub fn cost_optimal(
    law: &ChinchillaLaw,
    loss: f64,
    demand: &InferenceDemand,
    model: &CostModel,
) -> Result<CostOptimum> {
    let t_eff = model.effective_inference_tokens(demand)?;
    let optimal = inference::iso_loss_optimum(law, loss, t_eff)?;
    let chinchilla = chinchilla::for_loss(law, loss)?;
    Ok(CostOptimum {
        loss,
        effective_inference_tokens: t_eff,
        optimal: CostedModel::new(law, model, demand, optimal)?,
        chinchilla: CostedModel::new(law, model, demand, chinchilla)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!("A100_40".parse::<Gpu>().unwrap(), Gpu::A100_40gb);
        assert_eq!("a100-80gb".parse::<Gpu>().unwrap(), Gpu::A100_80gb);
        assert_eq!("H100".parse::<Gpu>().unwrap(), Gpu::H100);
        assert!(
            "v100"
                .parse::<Gpu>()
                .unwrap_err()
                .to_string()
                .contains("h100")
        );
        assert_eq!("INT8".parse::<Precision>().unwrap(), Precision::Int8);
        assert!(matches!(
            Gpu::A100_40gb.peak_flops(Precision::Fp8),
            Err(Error::UnsupportedPrecision { .. })
        ));
    }

    #[test]
    fn mfu_outside_unit_interval_is_rejected() {
        for bad in [0.0, -0.1, 1.01, f64::NAN] {
            let err = Utilization::new(0.5, bad, 0.01).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidMfu {
                        phase: "prefill",
                        ..
                    }
                ),
                "{err}"
            );
        }
        assert!(Utilization::new(1.0, 1.0, 1.0).is_ok());
    }

    #[test]
    fn no_demand_means_chinchilla_cost_optimum() {
        let law = ChinchillaLaw::sardana();
        let best = cost_optimal(
            &law,
            2.0,
            &InferenceDemand::lmsys_shaped(0.0),
            &CostModel::default(),
        )
        .unwrap();
        assert_eq!(best.optimal.allocation, best.chinchilla.allocation);
        assert_eq!(best.optimal.cost.decode, 0.0);
    }

    #[test]
    fn cost_optimum_is_no_dearer_than_neighbours() {
        let law = ChinchillaLaw::sardana();
        let model = CostModel::paper();
        let demand = InferenceDemand::lmsys_shaped(1e10);
        let best = cost_optimal(&law, 2.1, &demand, &model).unwrap();
        for f in [0.98, 1.02] {
            let n = best.optimal.allocation.n_params * f;
            let d = chinchilla::tokens_to_reach_loss(&law, n, 2.1).unwrap();
            let c = model.cost(n, d, &demand).unwrap();
            assert!(c.total >= best.optimal.cost.total);
        }
        assert!(best.cost_ratio() < 1.0);
    }
}
