//! `cargo xtask profile train|models [--before REV]`: where a CPU training step spends its time,
//! for kiln (perf, software clock, call stacks) and for PyTorch (torch.profiler), grouped into
//! the same categories and recorded in docs/BENCHMARKS.md.
//!
//! kiln: the release bench binary runs under `perf record -e cpu-clock -F 999 -g`; every sample
//! is attributed by its leaf symbol to matmul (gemm kernels), element-wise and reductions (burn
//! flex's unary/binary/zip/reduce ops, libm, kiln's fused CPU ops), memory (malloc/free,
//! memcpy/memset, and kernel time in page faults and mmap), RNG (weight initialisation and dropout samplers), threading
//! (scheduler, futex, `sched_yield` of idle workers) or other. Shares are of all samples, on all
//! threads; "busy cores" is samples ÷ (wall time × sampling rate). With `--before REV` the same
//! is done for a git revision checked out in a worktree under the target directory, side by side.
//!
//! PyTorch: the anchor script runs under `torch.profiler` (CPU activities, through
//! `xtask/torch_profile.py`, model construction included as in kiln's profile), which reports
//! each operator's self CPU time; operators are grouped the same way (`mm`/`addmm`/`bmm`/… as
//! matmul, `bernoulli_`/`native_dropout` as RNG, `empty*` as memory). torch.profiler cannot see
//! page faults or idle threads, so those categories stay empty for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{Result, root};

/// Categories, in the order they are reported.
const CATEGORIES: [&str; 6] = [
    "matmul",
    "element-wise + reductions",
    "memory (alloc, copies, page faults)",
    "RNG (weight init, dropout)",
    "threading (scheduler, idle spin)",
    "other",
];

pub(crate) fn command(args: &[&str]) -> Result {
    let (which, rest) = match args {
        [w @ ("train" | "models"), rest @ ..] => (*w, rest),
        _ => return Err("usage: cargo xtask profile train|models [--before REV]".into()),
    };
    let before = match rest {
        [] => None,
        ["--before", rev] => Some(*rev),
        _ => return Err(format!("unknown arguments to `profile {which}`: {rest:?}").into()),
    };
    let (package, bench, script, reps) = match which {
        "train" => (
            "kiln-train",
            "train_step",
            "crates/kiln-train/benches/torch_train_step.py",
            "40",
        ),
        _ => (
            "kiln-models",
            "models",
            "crates/kiln-models/benches/torch_anchor.py",
            "3",
        ),
    };
    let mut columns: Vec<(String, Breakdown)> = Vec::new();
    if let Some(rev) = before {
        let tree = crate::bench::worktree(rev, "profile-before")?;
        let bin = bench_binary(&tree, package, bench)?;
        columns.push((format!("kiln at {rev}"), perf_profile(&bin, reps, which)?));
    }
    let bin = bench_binary(&root(), package, bench)?;
    columns.push(("kiln (this tree)".into(), perf_profile(&bin, reps, which)?));
    match torch_profile(&root().join(script), reps)? {
        Some(t) => columns.push(("PyTorch (torch.profiler)".into(), t)),
        None => eprintln!("PyTorch anchor not profiled (is torch installed?)"),
    }
    let section = render(which, before, &columns);
    print!("{section}");
    crate::bench::record(
        &root().join("docs/BENCHMARKS.md"),
        &format!("profile-{which}"),
        &section,
    )
}

/// Seconds per category, the wall time and the average number of busy cores, plus the largest
/// leaf symbols.
#[derive(Debug, Default)]
struct Breakdown {
    seconds: BTreeMap<&'static str, f64>,
    wall_s: f64,
    busy_cores: Option<f64>,
    top: Vec<(String, f64)>,
}

/// A category for a perf leaf symbol (`kernel` for `[k]` samples).
fn classify_native(symbol: &str, kernel: bool) -> &'static str {
    let s = symbol.to_ascii_lowercase();
    let any = |keys: &[&str]| keys.iter().any(|k| s.contains(k));
    if kernel {
        if any(&[
            "sched",
            "futex",
            "task_switch",
            "wake",
            "yield",
            "idle",
            "switch_to",
        ]) {
            return CATEGORIES[4];
        }
        return CATEGORIES[2];
    }
    if any(&["gemm"]) {
        CATEGORIES[0]
    } else if any(&[
        "random",
        "chacha",
        "rand_core",
        "sampler",
        "distribution",
        "dropout_mask",
        "splitmix",
    ]) {
        CATEGORIES[3]
    } else if any(&[
        "malloc",
        "_int_free",
        "cfree",
        "free@",
        "memmove",
        "memcpy",
        "memset",
        "sysmalloc",
        "brk",
        "mmap",
    ]) {
        CATEGORIES[2]
    } else if any(&[
        "sched_yield",
        "futex",
        "rayon_core::registry",
        "rayon_core::sleep",
        "crossbeam",
        "pthread",
    ]) {
        CATEGORIES[4]
    } else if any(&[
        "burn_flex",
        "macerator",
        "libm",
        "expf",
        "logf",
        "erff",
        "tanhf",
        "powf",
        "kiln_models::cpu",
        "rayon::iter",
        "copy_2d",
    ]) {
        CATEGORIES[1]
    } else {
        CATEGORIES[5]
    }
}

/// A category for a torch.profiler operator name.
fn classify_torch(op: &str) -> &'static str {
    let op = op.trim_start_matches("aten::");
    match op {
        "mm" | "addmm" | "bmm" | "baddbmm" | "matmul" | "linear" | "dot" | "addmv" | "mv" => {
            CATEGORIES[0]
        }
        "bernoulli_" | "native_dropout" | "rand" | "uniform_" | "normal_" => CATEGORIES[3],
        o if o.starts_with("empty") || o == "resize_" => CATEGORIES[2],
        o if o.contains("autograd") || o.starts_with("optimizer") || o.contains("profiler") => {
            CATEGORIES[5]
        }
        _ => CATEGORIES[1],
    }
}

/// Builds a bench in `workspace` (release, with debug info for symbols) and returns its binary.
fn bench_binary(workspace: &Path, package: &str, bench: &str) -> Result<PathBuf> {
    eprintln!(
        "$ cargo bench -p {package} --bench {bench} --no-run (in {})",
        workspace.display()
    );
    let out = Command::new("cargo")
        .args([
            "bench",
            "-p",
            package,
            "--bench",
            bench,
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "building the bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == bench)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo printed no executable for bench {bench}").into())
}

/// `perf record` of the bench binary, then its samples grouped by leaf symbol.
fn perf_profile(bin: &Path, reps: &str, which: &str) -> Result<Breakdown> {
    const FREQ: f64 = 999.0;
    let data =
        std::env::temp_dir().join(format!("kiln-profile-{which}-{}.data", std::process::id()));
    eprintln!(
        "$ KILN_BENCH_REPS={reps} perf record -e cpu-clock -F 999 -g {}",
        bin.display()
    );
    let start = Instant::now();
    let status = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-o"])
        .arg(&data)
        .arg(bin)
        .env("KILN_BENCH_REPS", reps)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run perf ({e}); install linux-perf / linux-tools"))?;
    let wall_s = start.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("perf record failed ({status}); is perf_event_paranoid ≤ 2?").into());
    }
    let out = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--sort",
            "symbol",
            "-g",
            "none",
            "-n",
            "--stdio",
            "-i",
        ])
        .arg(&data)
        .output()?;
    let _ = std::fs::remove_file(&data);
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<(f64, bool, &str)> = text.lines().filter_map(parse_report_line).collect();
    let cpu_s = rows.iter().map(|r| r.0).sum::<f64>() / FREQ;
    let mut b = Breakdown {
        wall_s,
        busy_cores: (wall_s > 0.0).then(|| cpu_s / wall_s),
        ..Default::default()
    };
    for (samples, kernel, symbol) in rows {
        let seconds = samples / FREQ;
        *b.seconds
            .entry(classify_native(symbol, kernel))
            .or_default() += seconds;
        b.top.push((symbol.to_owned(), seconds));
    }
    b.top.truncate(8);
    Ok(b)
}

/// A line of `perf report -n --stdio`, `    29.74%   345  [.] gemm_f32::…  ` → (345 samples,
/// kernel?, symbol).
fn parse_report_line(line: &str) -> Option<(f64, bool, &str)> {
    let (pct, rest) = line.trim_start().split_once('%')?;
    pct.trim().parse::<f64>().ok()?;
    let rest = rest.trim_start();
    let (count, rest) = rest.split_once(char::is_whitespace)?;
    let samples = count.parse::<f64>().ok()?;
    let rest = rest.trim_start();
    let kernel = rest.starts_with("[k]");
    let symbol = rest.get(3..)?.trim();
    let symbol = symbol.split("  ").next().unwrap_or(symbol).trim();
    (rest.starts_with('[') && !symbol.is_empty()).then_some((samples, kernel, symbol))
}

/// Runs the anchor script under torch.profiler (`xtask/torch_profile.py`); `None` when python3 or
/// torch is missing.
fn torch_profile(script: &Path, reps: &str) -> Result<Option<Breakdown>> {
    let wrapper = root().join("xtask/torch_profile.py");
    let script = script.to_string_lossy();
    let threads = crate::bench::cores();
    let Some(v) =
        crate::bench::torch_anchor_with(&wrapper, threads, &[script.as_ref(), "--reps", reps])?
    else {
        return Ok(None);
    };
    let mut b = Breakdown {
        wall_s: v["profile_wall_s"].as_f64().unwrap_or(f64::NAN),
        ..Default::default()
    };
    if let Some(ops) = v["profile_self_cpu_s"].as_object() {
        let mut top: Vec<(String, f64)> = Vec::new();
        for (op, s) in ops {
            let s = s.as_f64().unwrap_or(0.0);
            *b.seconds.entry(classify_torch(op)).or_default() += s;
            top.push((op.clone(), s));
        }
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(8);
        b.top = top;
    }
    Ok(Some(b))
}

fn render(which: &str, before: Option<&str>, columns: &[(String, Breakdown)]) -> String {
    let what = match which {
        "train" => {
            "`crates/kiln-train/benches/train_step.rs` (40 tiny-BERT training steps of each layout) and \
`benches/torch_train_step.py` (the same BERT step in PyTorch)"
        }
        _ => {
            "`crates/kiln-models/benches/models.rs` (GPT-2 small and BERT-base, forward and \
forward + backward, 3 runs each) and `benches/torch_anchor.py`"
        }
    };
    let command = match before {
        Some(rev) => format!("cargo xtask profile {which} --before {rev}"),
        None => format!("cargo xtask profile {which}"),
    };
    let mut s = format!(
        "<!-- bench:profile-{which}:start -->\n\
## Where the CPU time goes: {which}\n\n\
Command: `{command}`. Profiles {what}. kiln: `perf record -e cpu-clock -F 999 -g` of the release \
bench, every sample attributed to a category by its leaf symbol (whole process, warm-up and model \
construction included); PyTorch: `torch.profiler` self CPU time per operator over the whole script (`xtask/torch_profile.py`). \
CPU seconds summed over threads, with each category's share; a category that a tool cannot see is \
left empty. See xtask/src/profile.rs for the symbol rules.\n\
Machine: {}.\n\n| category |",
        crate::bench::machine()
    );
    for (name, _) in columns {
        s.push_str(&format!(" {name} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(columns.len()));
    s.push('\n');
    for cat in CATEGORIES {
        s.push_str(&format!("| {cat} |"));
        for (name, b) in columns {
            let total: f64 = b.seconds.values().sum();
            let torch = name.starts_with("PyTorch");
            let blind = torch && (cat.starts_with("threading") || cat.starts_with("memory"));
            match b.seconds.get(cat) {
                Some(&v) => s.push_str(&format!(" {v:.2} s ({:.0}%) |", 100.0 * v / total)),
                None if blind => s.push_str(" (not visible) |"),
                None => s.push_str(" 0 |"),
            }
        }
        s.push('\n');
    }
    s.push_str("| wall time of the profiled run |");
    for (_, b) in columns {
        s.push_str(&format!(" {:.1} s |", b.wall_s));
    }
    s.push_str("\n| average busy cores |");
    for (_, b) in columns {
        match b.busy_cores {
            Some(c) => s.push_str(&format!(" {c:.2} |")),
            None => s.push_str(" — |"),
        }
    }
    s.push_str("\n\nLargest leaf symbols / operators (CPU seconds):\n\n");
    for (name, b) in columns {
        let top: Vec<String> = b
            .top
            .iter()
            .map(|(sym, sec)| format!("`{}` {sec:.2}", short(sym)))
            .collect();
        s.push_str(&format!("- {name}: {}\n", top.join(", ")));
    }
    s.push_str(&format!("<!-- bench:profile-{which}:end -->\n"));
    s
}

/// A symbol without its generic arguments, at most 60 characters.
fn short(symbol: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in symbol.chars() {
        match c {
            '<' => {
                if depth == 0 {
                    out.push_str("<…>");
                }
                depth += 1;
            }
            '>' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_lines_and_symbols_are_classified() {
        let l =
            "    29.74%           345  [.] gemm_f32::microkernel::fma::f32::x2x6       -      -   ";
        let (samples, kernel, sym) = parse_report_line(l).unwrap();
        assert!(samples == 345.0 && !kernel);
        assert_eq!(classify_native(sym, kernel), "matmul");
        let (_, k, sym) = parse_report_line("     3.97%  46  [k] exc_page_fault").unwrap();
        assert_eq!(classify_native(sym, k), CATEGORIES[2]);
        let (_, k, sym) = parse_report_line("  2.84%  33  [k] finish_task_switch.isra.0").unwrap();
        assert_eq!(classify_native(sym, k), CATEGORIES[4]);
        assert_eq!(
            classify_native(
                "<f32 as burn_std::element::base::ElementRandom>::random",
                false
            ),
            CATEGORIES[3]
        );
        assert_eq!(classify_native("__expf_fma", false), CATEGORIES[1]);
        assert_eq!(
            classify_native("__memmove_avx512_unaligned_erms", false),
            CATEGORIES[2]
        );
        assert!(parse_report_line("# Samples: 1K of event 'cpu-clock'").is_none());
        assert_eq!(classify_torch("aten::addmm"), "matmul");
        assert_eq!(classify_torch("aten::bernoulli_"), CATEGORIES[3]);
        assert_eq!(classify_torch("aten::gelu"), CATEGORIES[1]);
        assert_eq!(short("a::b<c<d>>::e"), "a::b<…>::e");
    }
}
