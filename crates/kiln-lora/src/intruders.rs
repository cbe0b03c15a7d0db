//! Intruder dimensions in an adapter and PEFT's mitigation (`reduce_intruder_dimension`, after
//! Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence", 2024).

use std::path::Path;

use kiln_checkpoint::Checkpoint;

use crate::adapter::{Adapter, PREFIX};
use crate::error::{Error, Result};
use crate::linalg::{Svd, transpose};
use crate::targets::{Inventory, ModuleKind};

/// Settings of [`reduce_intruder_dimension`] (PEFT's defaults).
#[derive(Debug, Clone, Copy)]
pub struct IntruderOptions {
    /// How many of the merged weight's top singular vectors are tested.
    pub top_k: usize,
    /// An intruder's largest |cos| with the base's singular vectors is below this.
    pub epsilon: f64,
    /// The share of each intruder direction removed (0: none, 1: all).
    pub lambda: f64,
}

impl Default for IntruderOptions {
    fn default() -> Self {
        Self {
            top_k: 10,
            epsilon: 0.5,
            lambda: 0.75,
        }
    }
}

/// The intruder dimensions of `W_merged` against `W_base` (both `[out, in]`): indices among the
/// top-k left singular vectors of `W_merged` whose largest |cos| with a left singular vector of
/// `W_base` is below ε, with the merged SVD.
///
/// # Errors
/// [`Error::Svd`].
pub fn find_intruders(
    base: &[f32],
    merged: &[f32],
    [rows, cols]: [usize; 2],
    top_k: usize,
    epsilon: f64,
    name: &str,
) -> Result<(Vec<usize>, Svd)> {
    let b = Svd::of(base, rows, cols, name)?;
    let m = Svd::of(merged, rows, cols, name)?;
    let (kb, km) = (b.k(), m.k());
    let mut found = Vec::new();
    for j in 0..top_k.min(km) {
        let mut best = 0f64;
        for i in 0..kb {
            let dot: f64 = (0..rows)
                .map(|r| f64::from(m.u[r * km + j]) * f64::from(b.u[r * kb + i]))
                .sum();
            best = best.max(dot.abs());
        }
        if best < epsilon {
            found.push(j);
        }
    }
    Ok((found, m))
}

/// PEFT's `reduce_intruder_dimension` on a plain LoRA adapter: for each module, the intruder
/// directions of `W + ΔW` are shrunk to λ of their singular value, and the result minus W is
/// written back as rank-r factors (`B = U·√S`, `A = √S·Vᵀ` of the truncated SVD, divided by the
/// module's scale). Returns the new adapter and the intruder count per module.
///
/// Computed on weights as `[out, in]`. (PEFT decomposes GPT-2's `Conv1D` weights as stored,
/// `[in, out]`, and then gives factors of the wrong shape for non-square layers; kiln keeps the
/// `[out, in]` orientation for every layer.)
///
/// # Errors
/// [`Error::Invalid`] for DoRA or embedding adapters and options out of range, [`Error::Tensor`]
/// when the base lacks a module, [`Error::Svd`], [`Error::Checkpoint`].
pub fn reduce_intruder_dimension(
    adapter: &Adapter,
    base: &Path,
    options: IntruderOptions,
) -> Result<(Adapter, Vec<(String, usize)>)> {
    if !(0.0..=1.0).contains(&options.lambda)
        || options.epsilon.is_nan()
        || options.epsilon <= 0.0
        || options.top_k == 0
    {
        return Err(Error::Invalid(format!(
            "intruder options out of range: top_k {} ≥ 1, epsilon {} > 0, lambda {} in [0, 1]",
            options.top_k, options.epsilon, options.lambda
        )));
    }
    let ckpt = Checkpoint::open(base)?;
    let inventory = Inventory::of(&ckpt);
    let resolved = adapter.resolve(|n| inventory.find(n))?;
    let mut out = adapter.clone();
    let mut counts = Vec::new();
    for (name, info) in resolved {
        let m = &adapter.modules[&name];
        if m.magnitude.is_some() || m.embedding {
            return Err(Error::Invalid(format!(
                "`{name}`: intruder mitigation is defined for plain LoRA on linear layers (not DoRA or embeddings)"
            )));
        }
        let tensor = format!("{}.weight", info.name);
        let stored = ckpt.tensor(&tensor)?.to_f32()?;
        let [r0, c0] = info.shape;
        let w = if info.kind == ModuleKind::Conv1D {
            transpose(&stored, r0, c0)
        } else {
            stored
        };
        let (rows, cols) = info.out_in();
        let delta = m.delta(1.0);
        let merged: Vec<f32> = w.iter().zip(&delta).map(|(a, b)| a + b).collect();
        let (found, svd) = find_intruders(
            &w,
            &merged,
            [rows, cols],
            options.top_k,
            options.epsilon,
            &name,
        )?;
        counts.push((name.clone(), found.len()));
        if found.is_empty() {
            continue;
        }
        let k = svd.k();
        let shrink = (options.lambda - 1.0) as f32;
        let mut mitigated = merged;
        for &j in &found {
            let s = svd.s[j];
            for i in 0..rows {
                let u = svd.u[i * k + j] * s * shrink;
                for c in 0..cols {
                    mitigated[i * cols + c] += u * svd.vt[j * cols + c];
                }
            }
        }
        let inv = (1.0 / m.scaling) as f32;
        let dw: Vec<f32> = mitigated
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b) * inv)
            .collect();
        let d = Svd::of(&dw, rows, cols, &name)?;
        let (b, a) = d.factors(m.r, true);
        let new = out.modules.get_mut(&name).ok_or_else(|| Error::Tensor {
            adapter: adapter.path.clone(),
            tensor: format!("{PREFIX}{name}"),
            message: "vanished".into(),
        })?;
        new.a = a;
        new.b = b;
    }
    Ok((out, counts))
}
