//! `cargo xtask bench scaling`: criterion benches of kiln-scaling-laws beside the scipy anchor,
//! measured in one run and recorded in docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{Result, root, run, write_atomic};

pub(crate) fn target_dir() -> Result<PathBuf> {
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root())
        .output()?;
    if !out.status.success() {
        return Err("`cargo metadata` failed".into());
    }
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    Ok(PathBuf::from(
        meta["target_directory"]
            .as_str()
            .ok_or("no target_directory in cargo metadata")?,
    ))
}

/// Mean time in seconds of a criterion benchmark, from its `estimates.json`.
fn criterion_mean(target: &Path, group: &str, name: &str) -> Result<f64> {
    let path = target
        .join("criterion")
        .join(group)
        .join(name)
        .join("new/estimates.json");
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?,
    )?;
    Ok(v["mean"]["point_estimate"]
        .as_f64()
        .ok_or("estimates.json without a mean")?
        * 1e-9)
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores; {rustc}")
}

fn time(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else if seconds >= 1e-3 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{:.2} µs", seconds * 1e6)
    }
}

pub(crate) fn scaling(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("unknown arguments to `bench scaling`: {args:?}").into());
    }
    run(
        "cargo",
        &["bench", "-p", "kiln-scaling-laws", "--bench", "scaling"],
        &[],
    )?;
    run("cargo", &["build", "--release", "-p", "kiln-cli"], &[])?;
    let target = target_dir()?;
    let kiln_bin = target.join("release/kiln");
    let brent = criterion_mean(&target, "solve", "inference_optimal_brent")?;
    let newton = criterion_mean(&target, "solve", "inference_optimal_newton")?;
    let cost = criterion_mean(&target, "solve", "cost_optimal")?;
    let fit_all = criterion_mean(&target, "fit", "grid4500_runs47")?;
    let fit_one = criterion_mean(&target, "fit", "grid4500_runs47_1thread")?;

    let anchor_script = root().join("crates/kiln-scaling-laws/benches/anchor.py");
    eprintln!(
        "$ python3 {} --kiln {}",
        anchor_script.display(),
        kiln_bin.display()
    );
    let anchor = Command::new("python3")
        .arg(&anchor_script)
        .arg("--kiln")
        .arg(&kiln_bin)
        .output();
    let anchor: Option<Value> = match anchor {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout)?),
        Ok(o) => {
            eprintln!(
                "anchor failed (is scipy installed?): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("cannot run python3: {e}");
            None
        }
    };
    let a = |key: &str| anchor.as_ref().and_then(|v| v[key].as_f64());
    let cell = |x: Option<f64>| x.map_or("not run".to_owned(), time);
    let ratio = |anchor: Option<f64>, kiln: f64| {
        anchor.map_or("—".to_owned(), |s| format!("{:.0}×", s / kiln))
    };
    let workers = anchor
        .as_ref()
        .and_then(|v| v["fit_pool_workers"].as_u64())
        .unwrap_or(0);
    let versions = anchor
        .as_ref()
        .map(|v| {
            format!(
                "Python {}, numpy {}, scipy {}",
                v["python"].as_str().unwrap_or("?"),
                v["numpy"].as_str().unwrap_or("?"),
                v["scipy"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_else(|| "anchor not run".into());

    let section = format!(
        "<!-- bench:scaling:start -->\n\
## kiln-scaling-laws\n\n\
Command: `cargo xtask bench scaling` (criterion, `benches/scaling.rs`, beside the scipy anchor \
`benches/anchor.py` in the same run).\n\
Machine: {machine}; anchor: {versions}.\n\n\
| work | kiln | scipy anchor | anchor / kiln |\n\
|---|---:|---:|---:|\n\
| one inference-aware solve (loss 1.947, 2e12 tokens): kiln Brent on ln N / reference `scipy.optimize.newton` from 1e8 | {brent} | {py_solve} | {r_solve} |\n\
| the same, kiln's Newton cross-check | {newton} | | |\n\
| one cost-optimal solve (paper settings, 1e10 requests) | {cost} | | |\n\
| 4,500-start fit of the 47 runs, all cores (scipy: process pool of {workers}) | {fit_all} | {py_pool} | {r_pool} |\n\
| 4,500-start fit, one thread / one process (scipy: 450 starts timed, ×10) | {fit_one} | {py_one} | {r_one} |\n\
| `kiln scaling fit` as a process (whole command) | {proc_t} | | |\n\n\
Peak resident memory: `kiln scaling fit` process {kiln_rss}; scipy single process {py_rss} (pool workers up to {pool_rss}). \
The fit's working set is the runs themselves (O(runs)); memory does not grow with the number of starts.\n\
Both fits reach the same objective (scipy {py_obj}); the anchor uses a vectorised numpy objective with the analytic \
gradient, which is faster than the reference's per-row loop with finite differences. The single-process scipy figure is \
extrapolated from every 10th start (a full run takes tens of minutes), so it is the rougher of the two anchor numbers.\n\
<!-- bench:scaling:end -->\n",
        machine = machine(),
        brent = time(brent),
        py_solve = cell(a("solve_newton_s")),
        r_solve = ratio(a("solve_newton_s"), brent),
        newton = time(newton),
        cost = time(cost),
        fit_all = time(fit_all),
        py_pool = cell(a("fit_pool_s")),
        r_pool = ratio(a("fit_pool_s"), fit_all),
        fit_one = time(fit_one),
        py_one = cell(a("fit_1proc_s")),
        r_one = ratio(a("fit_1proc_s"), fit_one),
        proc_t = cell(a("kiln_process_fit_s")),
        kiln_rss =
            a("kiln_process_peak_rss_mib").map_or("not measured".into(), |m| format!("{m:.1} MiB")),
        py_rss =
            a("fit_1proc_peak_rss_mib").map_or("not measured".into(), |m| format!("{m:.1} MiB")),
        pool_rss = a("fit_pool_worker_peak_rss_mib")
            .map_or("not measured".into(), |m| format!("{m:.1} MiB")),
        py_obj = a("fit_objective").map_or("n/a".into(), |o| format!("{o:.6e}")),
    );
    print!("{section}");
    record(&root().join("docs/BENCHMARKS.md"), "scaling", &section)
}

/// Replaces the section between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`, or
/// appends it.
pub(crate) fn record(path: &Path, name: &str, section: &str) -> Result {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (start, end) = (
        format!("<!-- bench:{name}:start -->"),
        format!("<!-- bench:{name}:end -->\n"),
    );
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{section}{}", &text[..s], &text[e + end.len()..]),
        _ => format!("{}\n{section}", text.trim_end()),
    };
    write_atomic(path, updated.as_bytes())?;
    eprintln!("recorded in {}", path.display());
    Ok(())
}

/// Runs `cargo bench -p PKG --bench NAME` and parses the JSON object it prints last.
pub(crate) fn kiln_json_bench(package: &str, bench: &str) -> Result<serde_json::Value> {
    eprintln!("$ cargo bench -p {package} --bench {bench}");
    let out = std::process::Command::new("cargo")
        .args(["bench", "-p", package, "--bench", bench])
        .current_dir(crate::root())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "the kiln bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .ok_or("no bench output")?,
    )?)
}

/// Runs a PyTorch anchor script with `--threads` set to this machine's cores; `None` (with the
/// reason on stderr) when python3 or torch is missing, so the kiln side is still recorded.
pub(crate) fn torch_anchor(script: &Path) -> Result<(Option<serde_json::Value>, String)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    eprintln!("$ python3 {} --threads {threads}", script.display());
    let value = match std::process::Command::new("python3")
        .arg(script)
        .args(["--threads", &threads])
        .output()
    {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout)?),
        Ok(o) => {
            eprintln!(
                "PyTorch anchor failed (is torch installed?): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("cannot run python3: {e}");
            None
        }
    };
    Ok((value, threads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_replaces_its_own_section_only() {
        let dir = std::env::temp_dir().join(format!("kiln-xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("B.md");
        std::fs::write(&path, "# B\n\nintro\n").unwrap();
        record(
            &path,
            "x",
            "<!-- bench:x:start -->\none\n<!-- bench:x:end -->\n",
        )
        .unwrap();
        record(
            &path,
            "x",
            "<!-- bench:x:start -->\ntwo\n<!-- bench:x:end -->\n",
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "# B\n\nintro\n<!-- bench:x:start -->\ntwo\n<!-- bench:x:end -->\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
