//! `cargo xtask bench scoring`: the cost of `kiln_scoring::train::TrainingScores` on a training
//! step (`crates/kiln-scoring/benches/score_step.rs`, release build, one process per
//! configuration and repeat, plain and scored alternating), recorded in docs/BENCHMARKS.md.

use std::process::Command;

use crate::bench::Spread;
use crate::{Result, root};

const REPEATS: usize = 5;

fn one(arch: &str, mode: &str) -> Result<Vec<f64>> {
    eprintln!("$ cargo bench -p kiln-scoring --bench score_step -- {arch} {mode}");
    let out = Command::new("cargo")
        .args([
            "bench",
            "-p",
            "kiln-scoring",
            "--bench",
            "score_step",
            "--",
            arch,
            mode,
        ])
        .current_dir(root())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "the score_step bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v = crate::bench::last_json(&out.stdout)?;
    Ok(v["step_s"]
        .as_array()
        .ok_or("no step times")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .skip(1)
        .collect())
}

fn median(xs: &[f64]) -> f64 {
    Spread::of(xs).map_or(f64::NAN, |s| s.median)
}

pub(crate) fn scoring(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("`bench scoring` takes no arguments: {args:?}").into());
    }
    let mut table = String::from(
        "| model | plain step | with TrainingScores | overhead |\n|---|---:|---:|---:|\n",
    );
    let mut notes = String::new();
    for arch in ["mlp", "resnet"] {
        // per repeat: the median step of each mode
        let (mut plain, mut scored) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            plain.push(median(&one(arch, "plain")?));
            scored.push(median(&one(arch, "scores")?));
        }
        let (p, s) = (
            Spread::of(&plain).ok_or("no runs")?,
            Spread::of(&scored).ok_or("no runs")?,
        );
        let ratios: Vec<f64> = scored
            .iter()
            .zip(&plain)
            .map(|(s, p)| s / p - 1.0)
            .collect();
        let o = Spread::of(&ratios).ok_or("no runs")?;
        table.push_str(&format!(
            "| {arch} | {} | {} | {} |\n",
            p.show(|x| format!("{:.2} ms", 1e3 * x)),
            s.show(|x| format!("{:.2} ms", 1e3 * x)),
            o.show(|x| format!("{:+.1}%", 100.0 * x)),
        ));
        // run-to-run spread of the plain step, relative to its median
        let noise = (p.high - p.low) / p.median;
        notes.push_str(&format!(
            "- {arch}: scoring every example changes a step by {:+.1}% ({:.3} ms; median of the {REPEATS} paired runs), against a run-to-run spread of {:.1}% of the plain step; goal ≤ 5%: {}.\n",
            100.0 * o.median,
            1e3 * (s.median - p.median),
            100.0 * noise,
            if o.median <= 0.05 {
                "met"
            } else if o.median <= noise {
                "not shown beyond the noise"
            } else {
                "not met"
            }
        ));
    }
    let section = format!(
        "<!-- bench:scoring-step:start -->\n\
## kiln-scoring: scoring every example during training (CPU)\n\n\
Command: `cargo xtask bench scoring` (`crates/kiln-scoring/benches/score_step.rs`, release build). One image-classification \
training step on the UCI digits (batch 64, AdamW) through kiln-train, plain or with `TrainingScores` (every example's 8 \
pointwise scores and forgetting state updated from the step's logits, which it copies to the host). MLP 64 → 64 → 10 and a \
ResNet (widths 8, 16; one block per stage). Each configuration runs in its own process, plain and scored alternating, \
{REPEATS} times; a run's step time is the median of 200 steps after one warm-up; the table shows the median over runs with \
the min–max in parentheses, the overhead the median of the per-pair ratios.\n\
Machine: {}.\n\n{table}\n{notes}\
<!-- bench:scoring-step:end -->\n",
        crate::bench::machine()
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "scoring-step", &section)
}
