//! What fine-tuning changed, matrix by matrix: the spectrum of `ΔW = W_ft − W_base` (rank@τ,
//! effective rank, stable rank, relative size) beside the same measures for the base weight and
//! for a Gaussian matrix of the same shape, and intruder dimensions.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::linalg::{effective_rank, rank_at, singular_values, stable_rank};
use crate::pairs::{Filter, Pair};
use crate::targets::ModuleKind;

/// Settings of [`spectrum`].
#[derive(Debug, Clone)]
pub struct SpectrumOptions {
    /// τ of rank@τ: the share of σ² energy to explain (0.9 in the paper).
    pub threshold: f64,
    /// How many of the fine-tuned weight's top singular vectors to test for intrusion (PEFT: 10).
    pub intruder_top_k: usize,
    /// A fine-tuned singular vector whose |cos| with every base singular vector is below this
    /// is an intruder dimension (PEFT: 0.5).
    pub intruder_epsilon: f64,
    /// Seed of the Gaussian baseline matrices.
    pub seed: u64,
    /// Which modules.
    pub filter: Filter,
}

impl Default for SpectrumOptions {
    fn default() -> Self {
        Self {
            threshold: 0.9,
            intruder_top_k: 10,
            intruder_epsilon: 0.5,
            seed: 0,
            filter: Filter::default(),
        }
    }
}

/// Rank measures of one matrix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ranks {
    /// rank@τ (σ² energy).
    pub rank_at_threshold: usize,
    /// exp(entropy of σ/Σσ).
    pub effective_rank: f64,
    /// Σσ²/σ₁².
    pub stable_rank: f64,
}

impl Ranks {
    fn of(s: &[f32], tau: f64) -> Self {
        Self {
            rank_at_threshold: rank_at(s, tau),
            effective_rank: effective_rank(s),
            stable_rank: stable_rank(s),
        }
    }
}

/// The spectrum of one module's change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatrixSpectrum {
    /// Module name.
    pub name: String,
    /// `[out, in]`.
    pub shape: [usize; 2],
    /// `attention`, `mlp` or `other`, from the name (for the heatmap's rows).
    pub group: &'static str,
    /// The layer index in the name, if any.
    pub layer: Option<usize>,
    /// Ranks of ΔW.
    pub delta: Ranks,
    /// Ranks of the base weight W.
    pub base: Ranks,
    /// Ranks of a Gaussian matrix of ΔW's shape (and Frobenius norm).
    pub random: Ranks,
    /// ‖ΔW‖_F / ‖W‖_F.
    pub relative_change: f64,
    /// Intruder dimensions among the fine-tuned weight's top-k singular vectors.
    pub intruders: usize,
}

/// The group of a module name (attention or MLP), for plots.
pub fn group(name: &str) -> &'static str {
    const ATT: &[&str] = &[
        "attn",
        "attention",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "query",
        "key",
        "value",
        "Wqkv",
    ];
    const MLP: &[&str] = &[
        "mlp",
        "intermediate",
        "output.dense",
        "fc",
        "up_proj",
        "down_proj",
        "gate_proj",
    ];
    if ATT.iter().any(|a| name.contains(a)) {
        "attention"
    } else if MLP.iter().any(|m| name.contains(m)) {
        "mlp"
    } else {
        "other"
    }
}

/// The first number between dots in a module name (the layer index).
pub fn layer_of(name: &str) -> Option<usize> {
    name.split('.').find_map(|s| s.parse().ok())
}

/// Intruder dimensions (Shuttleworth et al. 2024, PEFT's `reduce_intruder_dimension`): among the
/// top-k left singular vectors of `w_ft`, those whose largest |cos| with the left singular
/// vectors of `w_base` is below ε.
///
/// # Errors
/// [`Error::Svd`].
pub fn intruders(
    w_base: &[f32],
    w_ft: &[f32],
    rows: usize,
    cols: usize,
    top_k: usize,
    epsilon: f64,
    name: &str,
) -> Result<usize> {
    Ok(
        crate::intruders::find_intruders(w_base, w_ft, [rows, cols], top_k, epsilon, name)?
            .0
            .len(),
    )
}

/// A seeded standard Gaussian matrix (SplitMix64 + Box–Muller), scaled to Frobenius norm `norm`.
pub fn gaussian(rows: usize, cols: usize, norm: f64, seed: u64) -> Vec<f32> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let n = rows * cols;
    let mut v: Vec<f64> = Vec::with_capacity(n + 1);
    while v.len() < n {
        let (u1, u2) = (next().max(f64::MIN_POSITIVE), next());
        let r = (-2.0 * u1.ln()).sqrt();
        v.push(r * (std::f64::consts::TAU * u2).cos());
        v.push(r * (std::f64::consts::TAU * u2).sin());
    }
    v.truncate(n);
    let f = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let s = if f > 0.0 { norm / f } else { 0.0 };
    v.iter().map(|x| (x * s) as f32).collect()
}

/// The spectrum of every linear module that changed between `base` and `finetuned`, one
/// matrix in memory at a time. `progress(done, total, module)` is called after each.
///
/// # Errors
/// [`Error::Mismatch`] when the checkpoints do not pair up, [`Error::Invalid`] for τ outside
/// (0, 1], [`Error::Svd`], [`Error::Checkpoint`].
pub fn spectrum(
    base: &Path,
    finetuned: &Path,
    options: &SpectrumOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Vec<MatrixSpectrum>> {
    if !(options.threshold > 0.0 && options.threshold <= 1.0) {
        return Err(Error::Invalid(format!(
            "threshold {} is not in (0, 1]: it is the share of squared singular values to explain, e.g. 0.9",
            options.threshold
        )));
    }
    let pair = Pair::open(base, finetuned)?;
    let modules = pair.linear_modules(&options.filter);
    let total = modules.len();
    let mut out = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        let (w, f) = pair.weights(m)?;
        let delta: Vec<f32> = f.iter().zip(&w).map(|(a, b)| a - b).collect();
        let (rows, cols) = m.out_in();
        let dn = delta
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        if dn > 0.0 {
            let wn = w.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let sd = singular_values(&delta, rows, cols, &m.name)?;
            let sw = singular_values(&w, rows, cols, &m.name)?;
            let g = gaussian(rows, cols, dn, options.seed.wrapping_add(i as u64));
            let sg = singular_values(&g, rows, cols, &m.name)?;
            let intr = intruders(
                &w,
                &f,
                rows,
                cols,
                options.intruder_top_k,
                options.intruder_epsilon,
                &m.name,
            )?;
            out.push(MatrixSpectrum {
                name: m.name.clone(),
                shape: [rows, cols],
                group: if m.kind == ModuleKind::Output {
                    "other"
                } else {
                    group(&m.name)
                },
                layer: layer_of(&m.name),
                delta: Ranks::of(&sd, options.threshold),
                base: Ranks::of(&sw, options.threshold),
                random: Ranks::of(&sg, options.threshold),
                relative_change: if wn > 0.0 { dn / wn } else { f64::INFINITY },
                intruders: intr,
            });
        }
        progress(i + 1, total, &m.name);
    }
    Ok(out)
}

/// An SVG heatmap of rank@τ of ΔW: one row per module type (the name with its layer index
/// folded, e.g. `transformer.h.N.attn.c_attn`), one column per layer, each cell coloured by
/// rank@τ as a share of the matrix's full rank and labelled with rank@τ. Written by hand (no
/// plotting dependency): open it in a browser.
pub fn heatmap_svg(rows: &[MatrixSpectrum], threshold: f64) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    let fold = |name: &str| {
        name.split('.')
            .map(|s| if s.parse::<usize>().is_ok() { "N" } else { s })
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut kinds: Vec<String> = Vec::new();
    let mut layers: Vec<Option<usize>> = Vec::new();
    let mut cells: BTreeMap<(String, Option<usize>), &MatrixSpectrum> = BTreeMap::new();
    for r in rows {
        let k = fold(&r.name);
        if !kinds.contains(&k) {
            kinds.push(k.clone());
        }
        if !layers.contains(&r.layer) {
            layers.push(r.layer);
        }
        cells.insert((k, r.layer), r);
    }
    layers.sort();
    let label_w = 9 * kinds.iter().map(String::len).max().unwrap_or(10) + 20;
    let (cw, ch, top) = (44usize, 26usize, 56usize);
    let width = label_w + cw * layers.len().max(1) + 20;
    let height = top + ch * kinds.len() + 60;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14">rank@{threshold} of ΔW = W_ft − W_base (σ² energy), per module and layer</text>"#
    );
    for (j, l) in layers.iter().enumerate() {
        let x = label_w + j * cw + cw / 2;
        let t = l.map_or("—".to_string(), |l| l.to_string());
        let _ = writeln!(
            svg,
            r#"<text x="{x}" y="{}" text-anchor="middle">{t}</text>"#,
            top - 8
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">layer</text>"#,
        label_w + cw * layers.len() / 2,
        top - 24
    );
    for (i, k) in kinds.iter().enumerate() {
        let y = top + i * ch;
        let _ = writeln!(svg, r#"<text x="10" y="{}">{k}</text>"#, y + ch / 2 + 4);
        for (j, l) in layers.iter().enumerate() {
            let x = label_w + j * cw;
            if let Some(r) = cells.get(&(k.clone(), *l)) {
                let full = r.shape[0].min(r.shape[1]).max(1);
                let share = r.delta.rank_at_threshold as f64 / full as f64;
                // white (0) to dark red (full rank)
                let c = |a: f64, b: f64| (a + (b - a) * share).round() as u8;
                let fill = format!(
                    "#{:02x}{:02x}{:02x}",
                    c(255.0, 165.0),
                    c(255.0, 15.0),
                    c(255.0, 21.0)
                );
                let ink = if share > 0.55 { "white" } else { "black" };
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="{fill}" stroke="white"><title>{}: rank@{threshold} {} of {full}, effective rank {:.1}, ‖ΔW‖/‖W‖ {:.3e}</title></rect><text x="{}" y="{}" text-anchor="middle" fill="{ink}">{}</text>"#,
                    r.name,
                    r.delta.rank_at_threshold,
                    r.delta.effective_rank,
                    r.relative_change,
                    x + cw / 2,
                    y + ch / 2 + 4,
                    r.delta.rank_at_threshold
                );
            }
        }
    }
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}">cell: rank@{threshold}; colour: rank@{threshold} / full rank (white 0, red 1)</text>"#,
        top + ch * kinds.len() + 30
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_is_seeded_and_scaled() {
        let a = gaussian(5, 7, 3.0, 1);
        assert_eq!(a, gaussian(5, 7, 3.0, 1));
        assert_ne!(a, gaussian(5, 7, 3.0, 2));
        let n = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((n - 3.0).abs() < 1e-5);
    }

    #[test]
    fn groups_and_layers_from_names() {
        assert_eq!(group("transformer.h.3.attn.c_attn"), "attention");
        assert_eq!(
            group("bert.encoder.layer.1.attention.output.dense"),
            "attention"
        );
        assert_eq!(group("bert.encoder.layer.1.output.dense"), "mlp");
        assert_eq!(group("transformer.h.0.mlp.c_fc"), "mlp");
        assert_eq!(layer_of("transformer.h.12.mlp.c_fc"), Some(12));
        assert_eq!(layer_of("bert.pooler.dense"), None);
    }

    #[test]
    fn a_change_in_new_directions_is_an_intruder() {
        // base: diag(1..=16), singular vectors e_i. Any unit vector has |cos| ≥ 1/4 with some e_i,
        // and u = (1, …, 1)/4 has exactly 1/4 with every one of them.
        let n = 16;
        let mut w = vec![0.0f32; n * n];
        for i in 0..n {
            w[i * n + i] = 0.1 * (n - i) as f32;
        }
        // boosting an existing direction: the top vector is e_16, which the base has
        let mut f = w.clone();
        f[(n - 1) * n + (n - 1)] += 10.0;
        assert_eq!(intruders(&w, &f, n, n, 1, 0.5, "x").unwrap(), 0);
        // adding 10·u·uᵀ: the top vector is ≈ u, |cos| ≈ 1/4 with every base vector
        let mut g = w.clone();
        g.iter_mut().for_each(|x| *x += 10.0 / 16.0);
        assert_eq!(intruders(&w, &g, n, n, 1, 0.5, "x").unwrap(), 1);
        assert_eq!(intruders(&w, &g, n, n, 1, 0.2, "x").unwrap(), 0);
    }
}
