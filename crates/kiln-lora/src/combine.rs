//! Combining adapters into a new one: PEFT's `add_weighted_adapter`, with the sparsification and
//! sign-election maths of kiln-merging.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use kiln_merging::methods::task_arithmetic::{MajoritySign, peft_disjoint_merge};
use kiln_merging::sparsify::{RandomDrop, TopK, stream_id};

use crate::adapter::{Adapter, LoraModule};
use crate::config::Modules;
use crate::error::{Error, Result};
use crate::linalg::{Svd, transpose};

/// PEFT's `combination_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    /// Weighted sums of the A factors and of the B factors (`√|w·s|` each, the sign on A); equal
    /// ranks. Note that `(Σ Bᵢ)(Σ Aᵢ)` has cross terms: it is not `Σ wᵢ·ΔWᵢ`.
    Linear,
    /// Concatenated factors: exactly `Σ wᵢ·ΔWᵢ`, rank `Σ rᵢ`.
    Cat,
    /// `Σ wᵢ·ΔWᵢ`, truncated by SVD to the new rank.
    Svd,
    /// TIES on the factors: magnitude pruning to `density`, sign election, disjoint mean.
    Ties,
    /// TIES on the ΔWs, then SVD.
    TiesSvd,
    /// DARE on the factors: random drop to `density` with rescaling, then a weighted sum.
    DareLinear,
    /// DARE drop, then TIES' sign election, on the factors.
    DareTies,
    /// DARE + sum on the ΔWs, then SVD.
    DareLinearSvd,
    /// DARE + TIES on the ΔWs, then SVD.
    DareTiesSvd,
    /// Magnitude pruning then a weighted sum, on the factors.
    MagnitudePrune,
    /// Magnitude pruning then a weighted sum on the ΔWs, then SVD.
    MagnitudePruneSvd,
}

const NAMES: &[(&str, Combination)] = &[
    ("linear", Combination::Linear),
    ("cat", Combination::Cat),
    ("svd", Combination::Svd),
    ("ties", Combination::Ties),
    ("ties_svd", Combination::TiesSvd),
    ("dare_linear", Combination::DareLinear),
    ("dare_ties", Combination::DareTies),
    ("dare_linear_svd", Combination::DareLinearSvd),
    ("dare_ties_svd", Combination::DareTiesSvd),
    ("magnitude_prune", Combination::MagnitudePrune),
    ("magnitude_prune_svd", Combination::MagnitudePruneSvd),
];

impl FromStr for Combination {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown combination `{s}`; PEFT's combination types are {}",
                    NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ))
            })
    }
}

impl Combination {
    /// PEFT's name.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("", |(n, _)| n)
    }

    fn svd(self) -> bool {
        matches!(
            self,
            Self::Svd
                | Self::TiesSvd
                | Self::DareLinearSvd
                | Self::DareTiesSvd
                | Self::MagnitudePruneSvd
        )
    }

    fn needs_density(self) -> bool {
        !matches!(self, Self::Linear | Self::Cat | Self::Svd)
    }
}

/// Settings of [`add_weighted_adapter`] (PEFT's arguments).
#[derive(Debug, Clone)]
pub struct CombineOptions {
    /// The combination type.
    pub combination: Combination,
    /// Share of entries kept by TIES, DARE and magnitude pruning, in (0, 1].
    pub density: Option<f64>,
    /// TIES sign election.
    pub majority_sign: MajoritySign,
    /// Rank of the SVD combinations [default: the largest rank of the inputs].
    pub svd_rank: Option<usize>,
    /// Clamp the SVD factors to this quantile of their entries' distribution (PEFT's `svd_clamp`).
    pub svd_clamp: Option<f64>,
    /// Seed of DARE's random drop (kiln's counter-based generator: reproducible, but not
    /// torch's draws).
    pub seed: u64,
}

impl CombineOptions {
    /// Options for `combination` with PEFT's defaults.
    pub fn new(combination: Combination) -> Self {
        Self {
            combination,
            density: None,
            majority_sign: MajoritySign::Total,
            svd_rank: None,
            svd_clamp: None,
            seed: 0,
        }
    }
}

/// An operation on task tensors of one kind (all A factors, all B factors, or all ΔWs).
fn merge_tensors(
    how: Combination,
    tensors: &[Vec<f32>],
    weights: &[f32],
    density: f64,
    sign: MajoritySign,
    seed: u64,
    stream: &str,
) -> Vec<f32> {
    let n = tensors[0].len();
    let mut pruned: Vec<Vec<f32>> = tensors.to_vec();
    match how {
        Combination::Ties
        | Combination::TiesSvd
        | Combination::MagnitudePrune
        | Combination::MagnitudePruneSvd => {
            for t in &mut pruned {
                TopK::of(t, density).apply(t, 0);
            }
        }
        Combination::DareLinear
        | Combination::DareTies
        | Combination::DareLinearSvd
        | Combination::DareTiesSvd => {
            for (i, t) in pruned.iter_mut().enumerate() {
                let drop = RandomDrop {
                    density,
                    seed,
                    stream: stream_id(stream, i),
                };
                drop.apply(t, 0, (1.0 / density) as f32);
            }
        }
        _ => {}
    }
    let mut out = vec![0.0f32; n];
    match how {
        Combination::Ties
        | Combination::TiesSvd
        | Combination::DareTies
        | Combination::DareTiesSvd => {
            let refs: Vec<&[f32]> = pruned.iter().map(Vec::as_slice).collect();
            peft_disjoint_merge(&refs, weights, sign, &mut out);
        }
        _ => {
            for (t, &w) in pruned.iter().zip(weights) {
                out.iter_mut().zip(t).for_each(|(o, x)| *o += w * x);
            }
        }
    }
    out
}

/// torch.quantile with linear interpolation.
fn quantile(values: &[f32], q: f64) -> f32 {
    let mut v: Vec<f32> = values.to_vec();
    v.sort_by(f32::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = (pos - lo as f64) as f32;
    v[lo] + (v[hi] - v[lo]) * frac
}

/// Combines adapters into one, as PEFT's `add_weighted_adapter(adapters, weights, name,
/// combination_type, ...)`: the result has scale 1 (α = r, no rsLoRA), `rank_pattern`/
/// `alpha_pattern` for modules whose rank differs from the largest, and `target_modules` listing
/// the combined modules by full name. Modules missing from some adapters are
/// combined from those that have them.
///
/// # Errors
/// [`Error::Invalid`] for a missing or out-of-range density, unequal ranks where the combination
/// needs equal ones, DoRA adapters, adapters with trained biases or `modules_to_save` (PEFT
/// refuses them too), or an embedding/linear mix; [`Error::Svd`].
pub fn add_weighted_adapter(
    adapters: &[(&Adapter, f64)],
    options: &CombineOptions,
) -> Result<Adapter> {
    let how = options.combination;
    if adapters.is_empty() {
        return Err(Error::Invalid("no adapter to combine".into()));
    }
    for (a, w) in adapters {
        if a.config.use_dora || a.modules.values().any(|m| m.magnitude.is_some()) {
            return Err(Error::Invalid(format!(
                "{}: DoRA adapters cannot be combined (their magnitudes do not add)",
                a.path.display()
            )));
        }
        if !a.replaced.is_empty() || a.modules.values().any(|m| m.lora_bias.is_some()) {
            return Err(Error::Invalid(format!(
                "{}: an adapter with trained biases or modules_to_save cannot be combined (PEFT refuses it too); save it without them",
                a.path.display()
            )));
        }
        if !w.is_finite() {
            return Err(Error::Invalid(format!("weight {w} is not finite")));
        }
    }
    let density = if how.needs_density() {
        let d = options.density.ok_or_else(|| {
            Error::Invalid(format!(
                "combination `{}` needs a density (the share of entries kept), e.g. 0.5",
                how.name()
            ))
        })?;
        if !(d > 0.0 && d <= 1.0) {
            return Err(Error::Invalid(format!("density {d} is not in (0, 1]")));
        }
        d
    } else {
        1.0
    };
    let max_rank = adapters
        .iter()
        .flat_map(|(a, _)| a.modules.values().map(|m| m.r))
        .max()
        .unwrap_or(1);
    let names: BTreeSet<&String> = adapters
        .iter()
        .flat_map(|(a, _)| a.modules.keys())
        .collect();
    let mut modules = BTreeMap::new();
    for name in names {
        let present: Vec<(&LoraModule, f64)> = adapters
            .iter()
            .filter_map(|(a, w)| a.modules.get(name).map(|m| (m, *w)))
            .collect();
        let first = present[0].0;
        if present
            .iter()
            .any(|(m, _)| m.embedding != first.embedding || m.delta_shape() != first.delta_shape())
        {
            return Err(Error::Invalid(format!(
                "module `{name}` has different shapes or kinds in the adapters; they are for different models"
            )));
        }
        let module = if how == Combination::Cat {
            let r: usize = present.iter().map(|(m, _)| m.r).sum();
            let (rows, cols) = (first.b_rows, first.a_cols);
            let mut a = Vec::with_capacity(r * cols);
            let mut b = vec![0.0f32; rows * r];
            let mut offset = 0;
            for (m, w) in &present {
                let s = (w * m.scaling) as f32;
                a.extend(m.a.iter().map(|x| x * s));
                for i in 0..rows {
                    for j in 0..m.r {
                        b[i * r + offset + j] = m.b[i * m.r + j];
                    }
                }
                offset += m.r;
            }
            LoraModule::new(a, b, [rows, r, cols], 1.0, first.embedding)
        } else if how.svd() {
            // ΔW in the factors' orientation (B·A): embeddings transposed back
            let [d0, d1] = first.delta_shape();
            let deltas: Vec<Vec<f32>> = present
                .iter()
                .map(|(m, _)| {
                    let d = m.delta(1.0);
                    if m.embedding {
                        transpose(&d, d0, d1)
                    } else {
                        d
                    }
                })
                .collect();
            let weights: Vec<f32> = present.iter().map(|(_, w)| *w as f32).collect();
            let merged = merge_tensors(
                how,
                &deltas,
                &weights,
                density,
                options.majority_sign,
                options.seed,
                name,
            );
            let (rows, cols) = (first.b_rows, first.a_cols);
            let k = options
                .svd_rank
                .unwrap_or(max_rank)
                .min(rows.min(cols))
                .max(1);
            let svd = Svd::of(&merged, rows, cols, name)?;
            let (mut b, mut a) = svd.factors(k, false); // B = U, A = S·Vᵀ
            // PEFT returns B = U·S and A = Vᵀ: move S from A to B
            for j in 0..k {
                let s = svd.s[j];
                for i in 0..rows {
                    b[i * k + j] *= s;
                }
                for c in 0..cols {
                    a[j * cols + c] = svd.vt[j * cols + c];
                }
            }
            if let Some(q) = options.svd_clamp {
                let all: Vec<f32> = b.iter().chain(a.iter()).copied().collect();
                let hi = quantile(&all, q);
                b.iter_mut().for_each(|x| *x = x.clamp(-hi, hi));
                a.iter_mut().for_each(|x| *x = x.clamp(-hi, hi));
            }
            LoraModule::new(a, b, [rows, k, cols], 1.0, first.embedding)
        } else {
            if present.iter().any(|(m, _)| m.r != first.r) {
                return Err(Error::Invalid(format!(
                    "combination `{}` needs equal ranks, but module `{name}` has ranks {:?}; use cat or svd",
                    how.name(),
                    present.iter().map(|(m, _)| m.r).collect::<Vec<_>>()
                )));
            }
            let ws: Vec<f64> = present.iter().map(|(m, w)| w * m.scaling).collect();
            let wa: Vec<f32> = ws
                .iter()
                .map(|w| (w.abs().sqrt() * w.signum()) as f32)
                .collect();
            let wb: Vec<f32> = ws.iter().map(|w| w.abs().sqrt() as f32).collect();
            let a_list: Vec<Vec<f32>> = present.iter().map(|(m, _)| m.a.clone()).collect();
            let b_list: Vec<Vec<f32>> = present.iter().map(|(m, _)| m.b.clone()).collect();
            let a = merge_tensors(
                how,
                &a_list,
                &wa,
                density,
                options.majority_sign,
                options.seed,
                &format!("{name}.lora_A"),
            );
            let b = merge_tensors(
                how,
                &b_list,
                &wb,
                density,
                options.majority_sign,
                options.seed,
                &format!("{name}.lora_B"),
            );
            LoraModule::new(
                a,
                b,
                [first.b_rows, first.r, first.a_cols],
                1.0,
                first.embedding,
            )
        };
        modules.insert(name.clone(), module);
    }
    let r = modules.values().map(|m| m.r).max().unwrap_or(1);
    let mut config = adapters[0].0.config.clone();
    config.r = r;
    config.lora_alpha = r as f64;
    // scale 1 means α = r without rsLoRA (PEFT copies `use_rslora` from the first adapter, which
    // gives its combinations of rsLoRA adapters a scale of √r)
    config.use_rslora = false;
    config.use_dora = false;
    config.rank_pattern.clear();
    config.alpha_pattern.clear();
    for (name, m) in &modules {
        if m.r != r {
            config.rank_pattern.insert(name.clone(), m.r);
            config.alpha_pattern.insert(name.clone(), m.r as f64);
        }
    }
    // the modules that carry the combined adapter, by full name: the inputs' rules
    // (`layers_to_transform`, `exclude_modules`, regexes) may not describe their union
    config.target_modules = Some(Modules::List(modules.keys().cloned().collect()));
    config.layers_to_transform = None;
    config.layers_pattern = None;
    config.exclude_modules = None;
    Ok(Adapter {
        path: std::path::PathBuf::new(),
        config,
        modules,
        replaced: BTreeMap::new(),
    })
}
