//! `cargo xtask bench distill`: a GPT-2-small-layout training step, plain and distilled — from a
//! live teacher of equal size and from cached top-32 / top-128 log-probabilities
//! (`crates/kiln-distill/benches/kd_step.rs`, release build, one process per mode and repeat, the
//! modes alternating) — recorded in docs/BENCHMARKS.md with the cache's size per token.

use std::process::Command;

use crate::bench::Spread;
use crate::{Result, root};

const MODES: [&str; 4] = ["plain", "live", "cached32", "cached128"];
const REPEATS: usize = 3;

/// A mode's measurements: per repeat (median step, peak RSS MiB), cache bytes per token, and
/// per repeat the capture seconds.
type ModeRuns<'a> = (&'a str, Vec<(f64, f64)>, u64, Vec<f64>);

fn one(mode: &str) -> Result<serde_json::Value> {
    eprintln!("$ cargo bench -p kiln-distill --bench kd_step -- {mode}");
    let out = Command::new("cargo")
        .args([
            "bench",
            "-p",
            "kiln-distill",
            "--bench",
            "kd_step",
            "--",
            mode,
        ])
        .current_dir(root())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "the kd_step bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    crate::bench::last_json(&out.stdout)
}

pub(crate) fn distill(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("`bench distill` takes no arguments: {args:?}").into());
    }
    // mode → per repeat: (median step, peak RSS); bytes per token; capture seconds
    let mut rows: Vec<ModeRuns<'_>> = MODES
        .iter()
        .map(|m| (*m, Vec::new(), 0, Vec::new()))
        .collect();
    let mut shape = String::new();
    for _ in 0..REPEATS {
        for (mode, runs, bytes, capture) in &mut rows {
            let v = one(mode)?;
            let times: Vec<f64> = v["step_s"]
                .as_array()
                .ok_or("no step times")?
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .skip(1)
                .collect();
            let s = Spread::of(&times).ok_or("no step times")?;
            runs.push((s.median, v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)));
            *bytes = v["cache_bytes_per_token"].as_u64().unwrap_or(0);
            capture.push(v["capture_s"].as_f64().unwrap_or(0.0));
            shape = format!(
                "batch {} × {} tokens, {} timed steps after one warm-up",
                v["batch"],
                v["seq"],
                times.len()
            );
        }
    }
    let spread = |xs: Vec<f64>| Spread::of(&xs).expect("repeats");
    let plain = spread(rows[0].1.iter().map(|r| r.0).collect()).median;
    let plain_rss = spread(rows[0].1.iter().map(|r| r.1).collect()).median;
    let mut table = String::from(
        "| mode | step time | × plain | peak RSS (vs plain) | cache bytes/token | capture (once) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut ratios = Vec::new();
    for (mode, runs, bytes, capture) in &rows {
        let t = spread(runs.iter().map(|r| r.0).collect());
        let rss = spread(runs.iter().map(|r| r.1).collect());
        let ratio = t.median / plain;
        ratios.push((*mode, ratio));
        table.push_str(&format!(
            "| {mode} | {} | {ratio:.2}× | {:.0} MiB ({:+.0} MiB) | {} | {} |\n",
            t.show(|x| format!("{:.0} ms", x * 1e3)),
            rss.median,
            rss.median - plain_rss,
            if *bytes > 0 {
                bytes.to_string()
            } else {
                "—".into()
            },
            if capture.iter().any(|&c| c > 0.0) {
                spread(capture.clone()).show(|x| format!("{x:.1} s"))
            } else {
                "—".into()
            }
        ));
    }
    let goal: Vec<String> = ratios
        .iter()
        .filter(|(m, _)| m.starts_with("cached"))
        .map(|(m, r)| {
            format!(
                "{m} {r:.2}× ({})",
                if *r <= 1.15 { "met" } else { "not met" }
            )
        })
        .collect();
    let section = format!(
        "<!-- bench:distill:start -->\n\
## kiln-distill: a distillation step vs a plain step (CPU)\n\n\
Command: `cargo xtask bench distill` (`crates/kiln-distill/benches/kd_step.rs`, release build). Student: GPT-2 small layout \
(12 layers × 768, vocabulary 50257, random init), {shape}, AdamW, through kiln-train's `Trainer` with `CausalLmTask`; \
`ce_weight` 0.5, `kd_weight` 0.5, T 1, forward KL. `live`: a second GPT-2 small as the teacher, in evaluation mode without \
autodiff, one forward per step; `cached32`/`cached128`: the teacher's top-k bf16 log-probabilities captured before the run \
(`capture` column: the one-off cost over the run's sequences) and read by example id each step, sparse KL. Step time from \
`BatchStart` to `BatchEnd`; each mode in its own process, {REPEATS} runs, modes alternating; medians of the runs' median steps \
with min–max. Cache size per token = 6k + 4 bytes (k u32 indices, k bf16 log-probabilities, the f32 tail mass); DistillKit's \
compressed format is about 300 bytes per token at k = 128.\n\
Machine: {}.\n\n{table}\n\
Goal of the issue (a cached-logit KD step ≤ 1.15× a plain step): {}.\n\
<!-- bench:distill:end -->\n",
        crate::bench::machine(),
        goal.join(", ")
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "distill", &section)
}
