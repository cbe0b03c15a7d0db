//! `cargo xtask flex-patch test|bench`: a burn-flex patch kiln prepared for upstream
//! (`patches/burn-flex-0.22.1-parallel-elementwise.patch`), applied to a copy of the released
//! crate, tested and measured — without kiln depending on it.
//!
//! The patch runs burn-flex's contiguous unary, binary and scalar element-wise loops on rayon's
//! pool from 64K elements (they ran on the calling thread; only the SIMD add/sub/mul/div kernels
//! went parallel, from 4M elements). kiln does not carry it: a `[patch]` in kiln's workspace would
//! not reach users who depend on kiln's crates from crates.io, and it would pin kiln to a fork of
//! one burn crate. See docs/ARCHITECTURE.md for the decision and its numbers.
//!
//! - `test`: burn-flex's own unit tests (the patch adds one) on the patched copy; then
//!   kiln-models' and kiln-train's tests (parity with transformers, autoresume) built against it,
//!   in a worktree of HEAD.
//! - `bench`: the tiny-BERT step and the GPT-2/BERT-base forward + backward benches with the
//!   released and the patched burn-flex, on 1 thread and every core, beside PyTorch, in one run
//!   → docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::bench::Spread;
use crate::{Result, root};

const PATCH: &str = "patches/burn-flex-0.22.1-parallel-elementwise.patch";

pub(crate) fn command(args: &[&str]) -> Result {
    match args {
        ["test"] => test(),
        ["bench"] => bench(),
        _ => Err("usage: cargo xtask flex-patch test|bench".into()),
    }
}

/// A fresh copy of the released burn-flex with the patch applied; returns its directory.
fn patched_copy() -> Result<PathBuf> {
    let meta = Command::new("cargo")
        .args(["metadata", "--format-version", "1"])
        .current_dir(root())
        .output()?;
    let meta: Value = serde_json::from_slice(&meta.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "burn-flex" && p["version"] == "0.22.1")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("burn-flex 0.22.1 is not in the dependency graph")?;
    let source = Path::new(manifest).parent().ok_or("bad manifest path")?;
    let copy = crate::bench::target_dir()?.join("flex-patch/burn-flex-0.22.1");
    if copy.exists() {
        std::fs::remove_dir_all(&copy)?;
    }
    copy_dir(source, &copy)?;
    let patch = root().join(PATCH);
    let status = Command::new("git")
        .args(["apply", "-p1"])
        .arg(&patch)
        .current_dir(&copy)
        .status()?;
    if !status.success() {
        return Err(format!("{} does not apply to burn-flex 0.22.1", patch.display()).into());
    }
    eprintln!("patched copy: {}", copy.display());
    Ok(copy)
}

fn copy_dir(from: &Path, to: &Path) -> Result {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

fn patch_config(copy: &Path) -> String {
    format!("patch.crates-io.burn-flex.path=\"{}\"", copy.display())
}

fn cargo_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<std::process::Output> {
    eprintln!("$ cargo {} (in {})", args.join(" "), dir.display());
    let out = Command::new("cargo")
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("`cargo {}` failed ({})", args.join(" "), out.status).into());
    }
    Ok(out)
}

fn test() -> Result {
    let copy = patched_copy()?;
    let manifest = copy.join("Cargo.toml");
    let manifest = manifest.to_string_lossy();
    // burn-flex's own unit tests, the patch's new one among them.
    let out = cargo_in(
        &root(),
        &["test", "--manifest-path", &manifest, "--lib"],
        &[],
    )?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let tree = crate::bench::worktree("HEAD", "flex-patch-head")?;
    let config = patch_config(&copy);
    let out = cargo_in(
        &tree,
        &[
            "test",
            "--config",
            &config,
            "-p",
            "kiln-models",
            "-p",
            "kiln-train",
        ],
        &[],
    )?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "flex-patch test: burn-flex's tests and kiln-models/kiln-train passed with the patch"
    );
    Ok(())
}

/// The JSON a bench prints last.
fn bench_json(
    dir: &Path,
    config: Option<&str>,
    package: &str,
    bench: &str,
    threads: usize,
) -> Result<Value> {
    let t = threads.to_string();
    let mut args = vec!["bench"];
    if let Some(c) = config {
        args.extend(["--config", c]);
    }
    args.extend(["-p", package, "--bench", bench]);
    let out = cargo_in(dir, &args, &[("RAYON_NUM_THREADS", &t)])?;
    crate::bench::last_json(&out.stdout)
}

fn bench() -> Result {
    let copy = patched_copy()?;
    let tree = crate::bench::worktree("HEAD", "flex-patch-head")?;
    let config = patch_config(&copy);
    let mut rows = String::new();
    let mut torch_version = "not installed".to_owned();
    for threads in crate::bench::thread_counts() {
        let torch_train = crate::bench::torch_anchor_with(
            &root().join("crates/kiln-train/benches/torch_train_step.py"),
            threads,
            &[],
        )?;
        let torch_models = crate::bench::torch_anchor_with(
            &root().join("crates/kiln-models/benches/torch_anchor.py"),
            threads,
            &[],
        )?;
        if let Some(v) = torch_models.as_ref().and_then(|t| t["torch"].as_str()) {
            torch_version = v.to_owned();
        }
        let released_train = bench_json(&tree, None, "kiln-train", "train_step", threads)?;
        let patched_train = bench_json(&tree, Some(&config), "kiln-train", "train_step", threads)?;
        let released_models = bench_json(&tree, None, "kiln-models", "models", threads)?;
        let patched_models = bench_json(&tree, Some(&config), "kiln-models", "models", threads)?;
        // Tokens per second everywhere (higher is better).
        let tokens = released_train["batch"].as_f64().unwrap_or(f64::NAN)
            * released_train["seq"].as_f64().unwrap_or(f64::NAN);
        let step_rate = |v: Option<&Value>| {
            v.and_then(|v| Spread::from_json(&v["bert_step_s"]))
                .map(|s| Spread {
                    median: tokens / s.median,
                    low: tokens / s.high,
                    high: tokens / s.low,
                    runs: s.runs,
                })
        };
        let rate = |v: Option<&Value>, k: &str| v.and_then(|v| Spread::from_json(&v[k]));
        let work = [
            (
                "tiny-BERT training step",
                step_rate(Some(&released_train)),
                step_rate(Some(&patched_train)),
                step_rate(torch_train.as_ref()),
            ),
            (
                "GPT-2 small forward + backward",
                rate(Some(&released_models), "gpt2_train_tokens_per_s"),
                rate(Some(&patched_models), "gpt2_train_tokens_per_s"),
                rate(torch_models.as_ref(), "gpt2_train_tokens_per_s"),
            ),
            (
                "BERT-base forward + backward",
                rate(Some(&released_models), "bert_train_tokens_per_s"),
                rate(Some(&patched_models), "bert_train_tokens_per_s"),
                rate(torch_models.as_ref(), "bert_train_tokens_per_s"),
            ),
        ];
        let show = |s: &Option<Spread>| {
            s.as_ref()
                .map_or("—".into(), |s| s.show(|x| format!("{x:.0}")))
        };
        let ratio = |a: &Option<Spread>, b: &Option<Spread>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}×", a.median / b.median),
            _ => "—".into(),
        };
        for (label, released, patched, torch) in work {
            rows.push_str(&format!(
                "| {label} | {threads} | {} | {} | {} | {} | {} |\n",
                show(&released),
                show(&patched),
                show(&torch),
                ratio(&released, &torch),
                ratio(&patched, &torch),
            ));
        }
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let section = format!(
        "<!-- bench:flex-patch:start -->\n\
## burn-flex with parallel element-wise ops (a patch prepared for upstream, not carried by kiln)\n\n\
Command: `cargo xtask flex-patch bench`: `{PATCH}` applied to a copy of burn-flex 0.22.1, kiln's \
benches built against the released and the patched crate (`--config patch.crates-io.burn-flex.path=…` \
in a worktree of HEAD, {commit}), on 1 thread and on every core, beside PyTorch {torch_version} in the same run. \
Tokens/s, median of 20 steps (tiny BERT) or 5 runs (GPT-2 small, BERT-base; batch 4 × 128) with \
min–max in parentheses. `cargo xtask flex-patch test` runs burn-flex's unit tests (the patch adds one) \
and kiln-models'/kiln-train's tests (transformers parity, autoresume) with it.\n\
Machine: {}.\n\n\
| work | threads | kiln, burn-flex 0.22.1 | kiln, patched burn-flex | PyTorch | released / PyTorch | patched / PyTorch |\n\
|---|---:|---:|---:|---:|---:|---:|\n{rows}\
<!-- bench:flex-patch:end -->\n",
        crate::bench::machine()
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "flex-patch", &section)
}
