//! `cargo xtask bench scoring`: the cost of each family of difficulty scores (forward-only,
//! per-example gradient, prediction depth) on a training step of GPT-2 small and of a CNN
//! (`crates/kiln-scoring/benches/score_step.rs`, release build, one process per configuration
//! and repeat, the families alternating), recorded in docs/BENCHMARKS.md.

use std::process::Command;

use crate::bench::Spread;
use crate::{Result, root};

/// One process: the plain and the scored step times, alternating.
fn one(model: &str, family: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    eprintln!("$ cargo bench -p kiln-scoring --bench score_step -- {model} {family}");
    let out = Command::new("cargo")
        .args([
            "bench",
            "-p",
            "kiln-scoring",
            "--bench",
            "score_step",
            "--",
            model,
            family,
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
    let times = |key: &str| -> Result<Vec<f64>> {
        Ok(v[key]
            .as_array()
            .ok_or_else(|| format!("no {key}"))?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect())
    };
    Ok((times("plain_s")?, times("scored_s")?))
}

fn median(xs: &[f64]) -> f64 {
    Spread::of(xs).map_or(f64::NAN, |s| s.median)
}

/// The families measured, with what each does per step.
const FAMILIES: [(&str, &str); 4] = [
    (
        "forward",
        "`TrainingScores`: 8 pointwise scores per example from the step's logits (GPT-2's token scores reduced on the device; the CNN's 10 classes scored on the host in f64)",
    ),
    (
        "forward-host",
        "`TrainingScores` with `ScoreOn::Host`: every logit copied to the host and scored in f64",
    ),
    (
        "grand",
        "exact GraNd of the micro-batch's examples after the step (one backward pass per example)",
    ),
    (
        "depth",
        "prediction depth of the micro-batch's examples after the step (every layer's representation of the evaluation-mode model, kNN probes with k = 30 fit on the micro-batch; GPT-2 per token, labelled by the next token)",
    ),
];

pub(crate) fn scoring(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("`bench scoring` takes no arguments: {args:?}").into());
    }
    const REPEATS: usize = 3;
    let mut table = String::from(
        "| model | family | plain step | scored step | overhead |\n|---|---|---:|---:|---:|\n",
    );
    let mut notes = String::new();
    for (model, what) in [
        (
            "gpt2",
            "GPT-2 small's layout (124 M parameters), batch 2 × 64 tokens, 16 timed steps per process",
        ),
        (
            "cnn",
            "a ResNet (widths 16, 32, 64; one basic block per stage) on the UCI digits, batch 64, 120 timed steps per process",
        ),
    ] {
        for (family, _) in FAMILIES {
            // per process: median plain step, median scored step, median of the pair ratios
            let (mut plain, mut scored, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..REPEATS {
                let (p, s) = one(model, family)?;
                let ratios: Vec<f64> = s.iter().zip(&p).map(|(s, p)| s / p - 1.0).collect();
                plain.push(median(&p));
                scored.push(median(&s));
                overhead.push(median(&ratios));
            }
            let (p, s, o) = (
                Spread::of(&plain).ok_or("no runs")?,
                Spread::of(&scored).ok_or("no runs")?,
                Spread::of(&overhead).ok_or("no runs")?,
            );
            let unit = |x: f64| {
                if x >= 0.1 {
                    format!("{:.0} ms", 1e3 * x)
                } else {
                    format!("{:.2} ms", 1e3 * x)
                }
            };
            table.push_str(&format!(
                "| {model} | {family} | {} | {} | {} |\n",
                p.show(unit),
                s.show(unit),
                o.show(|x| format!("{:+.1}%", 100.0 * x))
            ));
            if family == "forward" {
                notes.push_str(&format!(
                    "- {model} ({what}): forward-only scores add {:+.1}% to a step (median over {REPEATS} processes of the median ratio of each scored step to the plain step before it; range {:+.1}% to {:+.1}%); goal ≤ 5%: {}.\n",
                    100.0 * o.median,
                    100.0 * o.low,
                    100.0 * o.high,
                    if o.high <= 0.05 {
                        "met"
                    } else if o.median <= 0.05 {
                        "met in the median, not in every process"
                    } else {
                        "not met"
                    }
                ));
            }
        }
    }
    let families: String = FAMILIES
        .iter()
        .map(|(f, what)| format!("- `{f}`: {what}.\n"))
        .collect();
    let section = format!(
        "<!-- bench:scoring-step:start -->\n\
## kiln-scoring: the cost of each family of difficulty scores on a training step (CPU)\n\n\
Command: `cargo xtask bench scoring` (`crates/kiln-scoring/benches/score_step.rs`, release build). One training step \
through kiln-train (AdamW), timed from `BatchStart` to `BatchEnd`, on GPT-2 small's layout (a causal-LM task) and on a \
small CNN (image classification). Within a process scored and plain steps alternate (odd steps score, the first \
pair is warm-up), so each scored step is compared with the plain step before it; each (model, family) runs in \
{REPEATS} processes; the table shows the median over processes with the min–max in parentheses. Families:\n\n{families}\n\
GraNd and prediction depth are usually computed at checkpoints, not every step; their row is what one pass over one \
micro-batch costs, so a pass over N examples costs about N / batch times the overhead shown.\n\
Machine: {}.\n\n{table}\n{notes}\
<!-- bench:scoring-step:end -->\n",
        crate::bench::machine()
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "scoring-step", &section)
}
