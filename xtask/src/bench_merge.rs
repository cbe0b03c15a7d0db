//! `cargo xtask bench merge`: three ~0.7 GB bf16 checkpoints with a GPT-2-medium layout, merged
//! with `ties` and `linear` by kiln and, where `mergekit-yaml` is installed, by mergekit in the
//! same run; wall time, throughput and peak RSS, beside the time to read the inputs and write one
//! output once.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_checkpoint::{CheckpointWriter, Dtype, ShardPlan, TensorSpec, dtype};

use crate::bench::Spread;
use crate::{Result, root, run};

/// Runs of each tool per method.
const REPEATS: usize = 3;

const LAYERS: usize = 24;
const WIDTH: usize = 1024;
const VOCAB: usize = 50257;
const POSITIONS: usize = 1024;
/// Bump when the generated layout changes, so stale checkpoints are regenerated.
const LAYOUT_VERSION: &str = "gpt2-medium-bf16-v1";

pub(crate) fn layout() -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("transformer.wte.weight".to_owned(), vec![VOCAB, WIDTH]),
        ("transformer.wpe.weight".to_owned(), vec![POSITIONS, WIDTH]),
    ];
    for i in 0..LAYERS {
        let p = format!("transformer.h.{i}");
        for (name, shape) in [
            ("ln_1.weight", vec![WIDTH]),
            ("ln_1.bias", vec![WIDTH]),
            ("attn.c_attn.weight", vec![WIDTH, 3 * WIDTH]),
            ("attn.c_attn.bias", vec![3 * WIDTH]),
            ("attn.c_proj.weight", vec![WIDTH, WIDTH]),
            ("attn.c_proj.bias", vec![WIDTH]),
            ("ln_2.weight", vec![WIDTH]),
            ("ln_2.bias", vec![WIDTH]),
            ("mlp.c_fc.weight", vec![WIDTH, 4 * WIDTH]),
            ("mlp.c_fc.bias", vec![4 * WIDTH]),
            ("mlp.c_proj.weight", vec![4 * WIDTH, WIDTH]),
            ("mlp.c_proj.bias", vec![WIDTH]),
        ] {
            t.push((format!("{p}.{name}"), shape));
        }
    }
    t.push(("transformer.ln_f.weight".to_owned(), vec![WIDTH]));
    t.push(("transformer.ln_f.bias".to_owned(), vec![WIDTH]));
    t
}

/// xorshift64*: a fast deterministic generator for benchmark data (not for the merges).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn normalish(&mut self) -> f32 {
        // Sum of uniforms: close enough to a normal for weights.
        let mut s = 0.0f32;
        for _ in 0..4 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            s += (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
                - 0.5;
        }
        s * 1.7
    }
}

fn generate(dir: &Path) -> Result {
    let marker = dir.join("LAYOUT");
    if std::fs::read_to_string(&marker).is_ok_and(|s| s == LAYOUT_VERSION) {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let specs: Vec<TensorSpec> = layout()
        .into_iter()
        .map(|(name, shape)| TensorSpec {
            name,
            dtype: Dtype::BF16,
            shape,
        })
        .collect();
    let config = format!(
        r#"{{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": {LAYERS}, "n_embd": {WIDTH}, "n_head": 16, "n_positions": {POSITIONS}, "vocab_size": {VOCAB}, "torch_dtype": "bfloat16", "bos_token_id": 50256, "eos_token_id": 50256}}"#
    );
    for (m, name) in ["base", "ft1", "ft2"].iter().enumerate() {
        eprintln!("generating {name} ...");
        let plan = ShardPlan::new(specs.clone(), 400_000_000)?;
        let mut w = CheckpointWriter::create(dir.join(name), plan, Default::default(), false)?;
        for spec in &specs {
            let n: usize = spec.shape.iter().product();
            // Same base for every model (seeded by tensor), plus a per-model task vector.
            let mut base_rng =
                Rng(0x9E37_79B9_7F4A_7C15 ^ (n as u64).wrapping_mul(31) ^ spec.name.len() as u64);
            let mut ft_rng =
                Rng(0xD1B5_4A32_D192_ED03 ^ (m as u64 + 1).wrapping_mul(0x1000_0001) ^ n as u64);
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let b = 0.02 * base_rng.normalish();
                    if m == 0 {
                        b
                    } else {
                        b + 0.002 * ft_rng.normalish()
                    }
                })
                .collect();
            let mut bytes = vec![0u8; n * 2];
            dtype::encode_f32(&values, Dtype::BF16, &mut bytes)?;
            w.write_tensor(&spec.name, &bytes)?;
        }
        w.write_file("config.json", config.as_bytes())?;
        w.finish()?;
    }
    std::fs::write(&marker, LAYOUT_VERSION)?;
    Ok(())
}

const TIES: &str = "models:\n  - model: ft1\n    parameters: {weight: 1.0, density: 0.3}\n  - model: ft2\n    parameters: {weight: 0.8, density: 0.3}\nmerge_method: ties\nbase_model: base\ndtype: float32\nout_dtype: bfloat16\n";
const LINEAR: &str = "models:\n  - model: base\n    parameters: {weight: 0.4}\n  - model: ft1\n    parameters: {weight: 0.3}\n  - model: ft2\n    parameters: {weight: 0.3}\nmerge_method: linear\ndtype: float32\nout_dtype: bfloat16\n";

pub(crate) struct Measured {
    pub(crate) seconds: f64,
    pub(crate) peak_rss: u64,
}

/// Runs a command, polling /proc for its peak resident set (VmHWM).
pub(crate) fn measure(
    program: &str,
    args: &[&str],
    cwd: &Path,
    envs: &[(&str, &str)],
) -> Result<Measured> {
    eprintln!("$ {program} {}", args.join(" "));
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        let hwm = std::fs::read_to_string(&status_path).ok().and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        });
        if let Some(kb) = hwm {
            peak = peak.max(kb * 1024);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = start.elapsed().as_secs_f64();
    let err = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "`{program}` failed: {}",
            err.lines().rev().take(5).collect::<Vec<_>>().join("\n")
        )
        .into());
    }
    Ok(Measured {
        seconds,
        peak_rss: peak,
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Time to read every input file once and write `out_bytes` once (fsynced): the I/O floor.
fn io_floor(inputs: &[PathBuf], out_bytes: u64, scratch: &Path) -> Result<f64> {
    let start = Instant::now();
    let mut buf = vec![0u8; 16 << 20];
    for dir in inputs {
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "safetensors") {
                let mut f = std::fs::File::open(e.path())?;
                while f.read(&mut buf)? > 0 {}
            }
        }
    }
    let mut f = std::fs::File::create(scratch)?;
    let mut left = out_bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    std::fs::remove_file(scratch)?;
    Ok(start.elapsed().as_secs_f64())
}

pub(crate) fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn merge(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("unknown arguments to `bench merge`: {args:?}").into());
    }
    run("cargo", &["build", "--release", "-p", "kiln-cli"], &[])?;
    let target = crate::bench::target_dir()?;
    let kiln = target.join("release/kiln");
    let work = target.join("bench-merge");
    generate(&work)?;
    std::fs::write(work.join("ties.yml"), TIES)?;
    std::fs::write(work.join("linear.yml"), LINEAR)?;
    let inputs: Vec<PathBuf> = ["base", "ft1", "ft2"]
        .iter()
        .map(|m| work.join(m))
        .collect();
    let input_bytes: u64 = inputs.iter().map(|d| dir_bytes(d)).sum();
    let mergekit = have("mergekit-yaml");
    // Warm the page cache the same way for everyone; then the floor.
    let _ = io_floor(&inputs, 0, &work.join("scratch"))?;
    let mut rows = Vec::new();
    for (method, cfg) in [("ties", "ties.yml"), ("linear", "linear.yml")] {
        let read: u64 = input_bytes;
        let out_kiln = work.join(format!("out-kiln-{method}"));
        let out_mergekit = work.join(format!("out-mergekit-{method}"));
        let (mut k, mut m, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        let mut out_bytes = 0;
        // The tools take turns, REPEATS times, so a slow phase of the machine hits both.
        for _ in 0..REPEATS {
            let _ = std::fs::remove_dir_all(&out_kiln);
            k.push(measure(
                kiln.to_str().ok_or("path")?,
                &["merge", cfg, out_kiln.to_str().ok_or("path")?, "--force"],
                &work,
                &[],
            )?);
            out_bytes = dir_bytes(&out_kiln);
            let _ = std::fs::remove_dir_all(&out_kiln);
            floor.push(io_floor(&inputs, out_bytes, &work.join("scratch"))?);
            if mergekit {
                let _ = std::fs::remove_dir_all(&out_mergekit);
                let r = measure(
                    "mergekit-yaml",
                    &[
                        cfg,
                        out_mergekit.to_str().ok_or("path")?,
                        "--no-write-model-card",
                        "--out-shard-size",
                        "5B",
                        "--random-seed",
                        "0",
                    ],
                    &work,
                    &[("HF_HUB_OFFLINE", "1")],
                );
                let _ = std::fs::remove_dir_all(&out_mergekit);
                m.push(r?);
            }
        }
        rows.push((method, read, out_bytes, k, m, floor));
    }

    let gb = |b: u64| b as f64 / 1e9;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let spread = |xs: Vec<f64>| Spread::of(&xs).ok_or("no measurements");
    let mut table = String::from(
        "| method | tool | wall time | throughput (read + written) | peak RSS | vs. I/O floor |\n|---|---|---:|---:|---:|---:|\n",
    );
    let mut ratios = String::new();
    for (method, read, written, k, m, floor) in &rows {
        let total = gb(read + written);
        let floor = spread(floor.clone())?;
        let row = |tool: &str, runs: &[Measured]| -> Result<(String, Spread, Spread)> {
            let t = spread(runs.iter().map(|r| r.seconds).collect())?;
            let rss = spread(runs.iter().map(|r| mib(r.peak_rss)).collect())?;
            Ok((
                format!(
                    "| {method} | {tool} | {} | {:.2} GB/s | {} | {:.2}× |\n",
                    t.show(|x| format!("{x:.2} s")),
                    total / t.median,
                    rss.show(|x| format!("{x:.0} MiB")),
                    t.median / floor.median
                ),
                t,
                rss,
            ))
        };
        let (line, kt, krss) = row("kiln", k)?;
        table.push_str(&line);
        if m.is_empty() {
            table.push_str(&format!("| {method} | mergekit | not installed | | | |\n"));
        } else {
            let (line, mt, mrss) = row("mergekit", m)?;
            table.push_str(&line);
            ratios.push_str(&format!(
                "- {method}: kiln is {:.1}× faster than mergekit (medians) and uses {:.0}% of its peak memory.\n",
                mt.median / kt.median,
                100.0 * krss.median / mrss.median.max(1e-9)
            ));
        }
        table.push_str(&format!(
            "| {method} | I/O floor: read inputs + write output once | {} | {:.2} GB/s | | 1.00× |\n",
            floor.show(|x| format!("{x:.2} s")),
            total / floor.median
        ));
    }
    let largest = (VOCAB * WIDTH * 2) as f64 / (1024.0 * 1024.0);
    let mergekit_version = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('mergekit'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not installed".into());
    let section = format!(
        "<!-- bench:merge:start -->\n\
## kiln merge\n\n\
Command: `cargo xtask bench merge`. Three bf16 checkpoints with a GPT-2-medium layout ({LAYERS} layers × {WIDTH}, vocabulary {VOCAB}; \
{:.2} GB each, two shards) merged into bf16 with f32 arithmetic; `ties` (density 0.3, two task vectors) and `linear` (three models). \
kiln and mergekit ({mergekit_version}) run the same YAML, taking turns {REPEATS} times, on a warm page cache; peak RSS is the process's VmHWM. \
Each cell is the median of the {REPEATS} runs with their min–max in parentheses. The largest tensor (the embedding) is {largest:.0} MiB in bf16.\n\
Machine: {}.\n\n{table}\n{ratios}\
<!-- bench:merge:end -->\n",
        gb(input_bytes / 3),
        crate::bench::machine()
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "merge", &section)
}
