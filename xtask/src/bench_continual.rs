//! `cargo xtask bench continual`: the per-step overhead of SFA, EMA, L2, EWC and replay against
//! plain fine-tuning on the GPT-2-small layout (`crates/kiln-train/benches/continual_step.rs`,
//! release build, one process per method and repeat, the methods alternating), recorded in
//! docs/BENCHMARKS.md. No anchor has SFA; the reference is kiln's own plain step in the same run.

use std::process::Command;

use crate::bench::Spread;
use crate::{Result, root};

const METHODS: [&str; 6] = ["plain", "sfa", "ema", "l2", "ewc", "replay"];
const REPEATS: usize = 3;

/// One run of one method: mean step over the run, median step, slowest step, peak RSS (MiB).
type RunFigures = (f64, f64, f64, f64);

fn one(method: &str) -> Result<serde_json::Value> {
    eprintln!("$ cargo bench -p kiln-train --bench continual_step -- {method}");
    let out = Command::new("cargo")
        .args([
            "bench",
            "-p",
            "kiln-train",
            "--bench",
            "continual_step",
            "--",
            method,
        ])
        .current_dir(root())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "the continual_step bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    crate::bench::last_json(&out.stdout)
}

pub(crate) fn continual(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("`bench continual` takes no arguments: {args:?}").into());
    }
    // method → per repeat: (mean step over the run, median step, slowest step, peak RSS)
    let mut runs: Vec<(&str, Vec<RunFigures>)> = METHODS.iter().map(|m| (*m, Vec::new())).collect();
    let (mut state, mut fisher, mut shape) =
        (std::collections::BTreeMap::new(), f64::NAN, String::new());
    for _ in 0..REPEATS {
        for (method, rows) in &mut runs {
            let v = one(method)?;
            let times: Vec<f64> = v["step_s"]
                .as_array()
                .ok_or("no step times")?
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .skip(1) // the first step allocates
                .collect();
            let s = Spread::of(&times).ok_or("no step times")?;
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            rows.push((
                mean,
                s.median,
                s.high,
                v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            ));
            state.insert(*method, v["state_bytes"].as_u64().unwrap_or(0));
            if *method == "ewc" {
                fisher = v["fisher_s"].as_f64().unwrap_or(f64::NAN);
            }
            shape = format!(
                "batch {} × {} tokens, {} steps, SFA merge / EMA update every {} steps",
                v["batch"], v["seq"], v["steps"], v["every"]
            );
        }
    }
    let col = |rows: &[RunFigures], k: usize| -> Spread {
        let xs: Vec<f64> = rows.iter().map(|r| [r.0, r.1, r.2, r.3][k]).collect();
        Spread::of(&xs).expect("repeats")
    };
    let plain_mean = col(&runs[0].1, 0).median;
    let plain_rss = col(&runs[0].1, 3).median;
    let mut table = String::from(
        "| method | mean step (whole run) | overhead vs plain | median step | slowest step | peak RSS (vs plain) | algorithm state |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (method, rows) in &runs {
        let (mean, med, slow, rss) = (col(rows, 0), col(rows, 1), col(rows, 2), col(rows, 3));
        table.push_str(&format!(
            "| {method} | {} | {:+.1}% | {} | {} | {:.0} MiB ({:+.0} MiB) | {:.1} MB |\n",
            mean.show(|x| format!("{:.0} ms", x * 1e3)),
            100.0 * (mean.median / plain_mean - 1.0),
            med.show(|x| format!("{:.0} ms", x * 1e3)),
            slow.show(|x| format!("{:.0} ms", x * 1e3)),
            rss.median,
            rss.median - plain_rss,
            state[method] as f64 / 1e6
        ));
    }
    let over = |m: &str| {
        runs.iter()
            .find(|(k, _)| *k == m)
            .map_or(f64::NAN, |(_, r)| {
                100.0 * (col(r, 0).median / plain_mean - 1.0)
            })
    };
    let goal = |m: &str| {
        let o = over(m);
        format!("{m} {o:+.1}% ({})", if o < 2.0 { "met" } else { "not met" })
    };
    let section = format!(
        "<!-- bench:continual:start -->\n\
## kiln-train: per-step overhead of continual-learning algorithms (CPU)\n\n\
Command: `cargo xtask bench continual` (`crates/kiln-train/benches/continual_step.rs`, release build). GPT-2 small layout \
(12 layers × 768, vocabulary 50257, random init), AdamW, {shape}, each method through kiln-train's `Trainer` and its events as \
a user runs it: `plain`; `sfa` (β 0.25, p 0.5: a merge every 50 steps); `ema` (Composer smoothing 0.9, an update every 50 steps); \
`l2` (λ 1e-3, a penalty every step); `ewc` (online, its Fisher of a previous task computed once before the run on 4 sequences, \
per-token empirical: {fisher:.1} s; a penalty every step); `replay` (64 remembered sequences, a memory batch as large as the \
current one every step: twice the forward and backward work by design). Step time = `BatchStart` to `BatchEnd`, so a merge or an \
update after the optimiser step counts; *mean step* is over all steps but the first (it amortises the merges), *slowest step* \
shows a merge's cost. Each method ran in its own process, {REPEATS} times, the methods alternating; every figure is the median \
of the {REPEATS} runs with min–max. *Algorithm state* = the bytes the method checkpoints (anchor, shadow, Fisher, ids). All \
averaging and penalties are tensor ops on the training device; nothing copies weights to the host.\n\
Machine: {}.\n\n{table}\n\
Goal of the issue (SFA and EMA below 2% of step time when averaging every ≥ 50 steps): {}, {}.\n\
<!-- bench:continual:end -->\n",
        crate::bench::machine(),
        goal("sfa"),
        goal("ema")
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "continual", &section)
}
