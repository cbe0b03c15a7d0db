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

/// A fresh detached worktree of `rev` under the target directory (`worktrees/NAME`), for
/// building another revision beside this checkout without touching it.
pub(crate) fn worktree(rev: &str, name: &str) -> Result<PathBuf> {
    let dir = target_dir()?.join("worktrees").join(name);
    let dir_s = dir.to_string_lossy().into_owned();
    if dir.exists() {
        run("git", &["worktree", "remove", "--force", &dir_s], &[])?;
    }
    run("git", &["worktree", "prune"], &[])?;
    run("git", &["worktree", "add", "--detach", &dir_s, rev], &[])?;
    Ok(dir)
}

/// The JSON object a bench or anchor printed on its last line of standard output.
pub(crate) fn last_json(stdout: &[u8]) -> Result<Value> {
    Ok(serde_json::from_str(
        String::from_utf8_lossy(stdout)
            .lines()
            .last()
            .ok_or("no bench output")?,
    )?)
}

/// A criterion benchmark's median time and its 95% confidence interval, in seconds, from its
/// `estimates.json` (criterion runs each benchmark many times).
fn criterion_median(target: &Path, group: &str, name: &str) -> Result<Spread> {
    let path = target
        .join("criterion")
        .join(group)
        .join(name)
        .join("new/estimates.json");
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?,
    )?;
    let m = &v["median"];
    let get = |x: &Value| x.as_f64().ok_or("estimates.json without a median");
    Ok(Spread {
        median: get(&m["point_estimate"])? * 1e-9,
        low: get(&m["confidence_interval"]["lower_bound"])? * 1e-9,
        high: get(&m["confidence_interval"]["upper_bound"])? * 1e-9,
        runs: None,
    })
}

/// A measurement repeated several times: its median and a spread (min–max of the runs, or a
/// confidence interval).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
    /// How many runs (`None`: a criterion estimate over its own samples).
    pub(crate) runs: Option<usize>,
}

impl Spread {
    /// Median, min and max of repeated measurements; `None` for none.
    pub(crate) fn of(xs: &[f64]) -> Option<Self> {
        if xs.is_empty() {
            return None;
        }
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Some(Self {
            median,
            low: v[0],
            high: v[n - 1],
            runs: Some(n),
        })
    }

    /// The values of a JSON list (or a single number).
    pub(crate) fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::Array(a) => Self::of(&a.iter().filter_map(Value::as_f64).collect::<Vec<_>>()),
            other => other.as_f64().and_then(|x| Self::of(&[x])),
        }
    }

    /// `median (low–high)` with `show` formatting each number.
    pub(crate) fn show(&self, show: impl Fn(f64) -> String) -> String {
        format!(
            "{} ({}–{})",
            show(self.median),
            show(self.low),
            show(self.high)
        )
    }
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
    let brent = criterion_median(&target, "solve", "inference_optimal_brent")?;
    let newton = criterion_median(&target, "solve", "inference_optimal_newton")?;
    let cost = criterion_median(&target, "solve", "cost_optimal")?;
    let fit_all = criterion_median(&target, "fit", "grid4500_runs47")?;
    let fit_one = criterion_median(&target, "fit", "grid4500_runs47_1thread")?;

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
    let spread = |key: &str| anchor.as_ref().and_then(|v| Spread::from_json(&v[key]));
    let cell = |x: Option<Spread>| x.map_or("not run".to_owned(), |s| s.show(time));
    let ratio = |anchor: Option<Spread>, kiln: Spread| {
        anchor.map_or("—".to_owned(), |s| {
            format!("{:.0}×", s.median / kiln.median)
        })
    };
    let workers = anchor
        .as_ref()
        .and_then(|v| v["fit_pool_workers"].as_u64())
        .unwrap_or(0);
    let repeats = anchor
        .as_ref()
        .and_then(|v| v["repeats"].as_u64())
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
    let mib = |x: Option<f64>| x.map_or("not measured".into(), |m| format!("{m:.1} MiB"));
    // The objectives both fits reached, and how far apart they are.
    let objectives = match (a("kiln_fit_objective"), a("fit_objective")) {
        (Some(k), Some(p)) => format!(
            "Objectives reached: kiln {k:.6e}, scipy {p:.6e} (kiln − scipy = {:+.2e}, relative {:+.2e}).",
            k - p,
            (k - p) / p
        ),
        _ => "Objectives: not compared (the anchor did not run).".into(),
    };
    let kiln_proc = spread("kiln_process_fit_s");

    let section = format!(
        "<!-- bench:scaling:start -->\n\
## kiln-scaling-laws\n\n\
Command: `cargo xtask bench scaling` (criterion, `benches/scaling.rs`, beside the scipy anchor \
`benches/anchor.py` in the same run).\n\
Machine: {machine}; anchor: {versions}.\n\n\
Times are medians with their spread in parentheses: criterion's 95% confidence interval for \
kiln's benchmarks, min–max of {repeats} runs for the anchor and for the kiln process.\n\n\
| work | kiln | scipy anchor | anchor / kiln |\n\
|---|---:|---:|---:|\n\
| one inference-aware solve (loss 1.947, 2e12 tokens): kiln Brent on ln N / reference `scipy.optimize.newton` from 1e8 | {brent} | {py_solve} | {r_solve} |\n\
| the same, kiln's Newton cross-check | {newton} | | |\n\
| one cost-optimal solve (paper settings, 1e10 requests) | {cost} | | |\n\
| 4,500-start fit of the 47 runs, all cores (scipy: process pool of {workers}) | {fit_all} | {py_pool} | {r_pool} |\n\
| 4,500-start fit, one thread / one process (scipy: 450 starts timed, ×10) | {fit_one} | {py_one} | {r_one} |\n\
| `kiln scaling fit` as a process (whole command) | {proc_t} | | |\n\n\
Peak resident memory: `kiln scaling fit` process {kiln_rss}; scipy single process {py_rss}; scipy \
pool workers {pool_rss} (measured in a process of their own). The fit's working set is the runs \
themselves (O(runs)); memory does not grow with the number of starts.\n\
{objectives} The anchor uses a vectorised numpy objective with the analytic gradient, which is \
faster than the reference's per-row loop with finite differences. The single-process scipy figure \
is extrapolated from every 10th start (a full run takes tens of minutes), so it is the rougher of \
the two anchor numbers.\n\
<!-- bench:scaling:end -->\n",
        machine = machine(),
        brent = brent.show(time),
        py_solve = cell(spread("solve_newton_s")),
        r_solve = ratio(spread("solve_newton_s"), brent),
        newton = newton.show(time),
        cost = cost.show(time),
        fit_all = fit_all.show(time),
        py_pool = cell(spread("fit_pool_s")),
        r_pool = ratio(spread("fit_pool_s"), fit_all),
        fit_one = fit_one.show(time),
        py_one = cell(spread("fit_1proc_s")),
        r_one = ratio(spread("fit_1proc_s"), fit_one),
        proc_t = cell(kiln_proc),
        kiln_rss = mib(a("kiln_process_peak_rss_mib")),
        py_rss = mib(a("fit_1proc_peak_rss_mib")),
        pool_rss = mib(a("fit_pool_worker_peak_rss_mib")),
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

/// Runs `cargo bench -p PKG --bench NAME` and parses the JSON object it prints last, with rayon
/// (burn flex's matmul threads and kiln's fused CPU ops) limited to `threads` through
/// `RAYON_NUM_THREADS`; `None` leaves every core.
pub(crate) fn kiln_json_bench_with(
    package: &str,
    bench: &str,
    threads: Option<usize>,
) -> Result<serde_json::Value> {
    let mut cmd = std::process::Command::new("cargo");
    cmd.args(["bench", "-p", package, "--bench", bench])
        .current_dir(crate::root());
    match threads {
        Some(t) => {
            eprintln!("$ RAYON_NUM_THREADS={t} cargo bench -p {package} --bench {bench}");
            cmd.env("RAYON_NUM_THREADS", t.to_string());
        }
        None => eprintln!("$ cargo bench -p {package} --bench {bench}"),
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "the kiln bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    last_json(&out.stdout)
}

/// This machine's cores (what "all threads" means in the benchmarks).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The thread counts the CPU training benchmarks compare: 1 and every core.
pub(crate) fn thread_counts() -> Vec<usize> {
    let mut t = vec![1, cores()];
    t.dedup();
    t
}

/// Runs a PyTorch anchor script with `--threads THREADS` and `extra` arguments; `None` (with
/// the reason on stderr) when python3 or torch is missing.
pub(crate) fn torch_anchor_with(
    script: &Path,
    threads: usize,
    extra: &[&str],
) -> Result<Option<serde_json::Value>> {
    let threads = threads.to_string();
    eprintln!(
        "$ python3 {} --threads {threads} {}",
        script.display(),
        extra.join(" ")
    );
    Ok(
        match std::process::Command::new("python3")
            .arg(script)
            .args(["--threads", &threads])
            .args(extra)
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
        },
    )
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
