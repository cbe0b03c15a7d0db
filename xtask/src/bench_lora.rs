//! `cargo xtask bench lora [files|train]`: `kiln lora extract` and `kiln lora spectrum` on a
//! generated pair of f32 checkpoints with GPT-2-medium's layout, beside the same SVDs in PyTorch
//! (`xtask/lora_anchor.py`, `torch.linalg.svd`) in the same run: wall time and peak RSS
//! (`files`); and a GPT-2-small fine-tuning step with LoRA and in full, beside PyTorch + PEFT
//! (`train`). Both by default.

use std::path::Path;
use std::process::Command;

use kiln_checkpoint::{CheckpointWriter, Dtype, ShardPlan, TensorSpec, dtype};

use crate::bench::Spread;
use crate::bench_merge::{Measured, Rng, layout, measure};
use crate::{Result, root, run};

/// Runs of each tool per task.
const REPEATS: usize = 3;
/// Rank of the generated fine-tuning change in every linear layer (plus small full-rank noise).
const CHANGE_RANK: usize = 16;
/// `--max-rank` of the extraction.
const MAX_RANK: usize = 64;
/// Bump when the generated pair changes.
const LAYOUT_VERSION: &str = "gpt2-medium-f32-lora-v1";

/// The linear layers of the layout (2-D weights other than the embeddings).
fn is_linear(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && !name.ends_with("wte.weight") && !name.ends_with("wpe.weight")
}

/// base, and ft = base + a rank-16 change + 1% noise in every linear layer (embeddings and
/// LayerNorms unchanged), both f32.
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
            dtype: Dtype::F32,
            shape,
        })
        .collect();
    let config = r#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 24, "n_embd": 1024, "n_head": 16, "n_positions": 1024, "vocab_size": 50257}"#;
    for (m, name) in ["base", "ft"].iter().enumerate() {
        eprintln!("generating {name} ...");
        let plan = ShardPlan::new(specs.clone(), 2_000_000_000)?;
        let mut w = CheckpointWriter::create(dir.join(name), plan, Default::default(), false)?;
        for spec in &specs {
            let n: usize = spec.shape.iter().product();
            let mut base_rng =
                Rng(0x9E37_79B9_7F4A_7C15 ^ (n as u64).wrapping_mul(31) ^ spec.name.len() as u64);
            let mut values: Vec<f32> = (0..n).map(|_| 0.02 * base_rng.normalish()).collect();
            if m == 1 && is_linear(&spec.name, &spec.shape) {
                let (rows, cols) = (spec.shape[0], spec.shape[1]);
                let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ n as u64 ^ (spec.name.len() as u64) << 7);
                let u: Vec<f32> = (0..rows * CHANGE_RANK).map(|_| rng.normalish()).collect();
                let v: Vec<f32> = (0..CHANGE_RANK * cols).map(|_| rng.normalish()).collect();
                let scale = 0.002 / (CHANGE_RANK as f32).sqrt();
                for i in 0..rows {
                    let row = &mut values[i * cols..(i + 1) * cols];
                    for k in 0..CHANGE_RANK {
                        let a = u[i * CHANGE_RANK + k] * scale;
                        for (x, b) in row.iter_mut().zip(&v[k * cols..(k + 1) * cols]) {
                            *x += a * b;
                        }
                    }
                    for x in row.iter_mut() {
                        *x += 0.0002 * rng.normalish();
                    }
                }
            }
            let mut bytes = vec![0u8; n * 4];
            dtype::encode_f32(&values, Dtype::F32, &mut bytes)?;
            w.write_tensor(&spec.name, &bytes)?;
        }
        w.write_file("config.json", config.as_bytes())?;
        w.finish()?;
    }
    std::fs::write(&marker, LAYOUT_VERSION)?;
    Ok(())
}

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, safetensors"])
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn lora(args: &[&str]) -> Result {
    let (files, train) = match args {
        [] => (true, true),
        ["files"] => (true, false),
        ["train"] => (false, true),
        _ => {
            return Err(format!(
                "unknown arguments to `bench lora` (files, train or nothing): {args:?}"
            )
            .into());
        }
    };
    if files {
        files_bench()?;
    }
    if train {
        train_bench()?;
    }
    Ok(())
}

/// One configuration of the training step, in its own process: kiln's bench or the PyTorch
/// script; `None` when PyTorch or PEFT is missing.
fn step(tool: &str, mode: &str) -> Result<Option<serde_json::Value>> {
    let out = if tool == "kiln" {
        eprintln!("$ cargo bench -p kiln-lora --bench lora_step -- {mode}");
        let out = Command::new("cargo")
            .args([
                "bench",
                "-p",
                "kiln-lora",
                "--bench",
                "lora_step",
                "--",
                mode,
            ])
            .current_dir(root())
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "the kiln bench failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        out
    } else {
        let script = root().join("crates/kiln-lora/benches/torch_lora_step.py");
        eprintln!("$ python3 {} --mode {mode}", script.display());
        let out = Command::new("python3")
            .arg(&script)
            .args(["--mode", mode])
            .output()?;
        if !out.status.success() {
            eprintln!(
                "PyTorch + PEFT anchor failed (are torch, transformers and peft installed?): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok(None);
        }
        out
    };
    Ok(Some(crate::bench::last_json(&out.stdout)?))
}

fn train_bench() -> Result {
    let mut table = String::from(
        "| fine-tuning | tool | step time | peak RSS | trainable / total parameters |\n|---|---|---:|---:|---:|\n",
    );
    let mut versions = String::from("not installed");
    let mut medians = std::collections::BTreeMap::new();
    for mode in ["lora", "full"] {
        for tool in ["kiln", "torch"] {
            let label = match (tool, mode) {
                ("kiln", _) => "kiln (burn flex)",
                (_, "lora") => "PyTorch + PEFT",
                _ => "PyTorch",
            };
            let Some(v) = step(tool, mode)? else {
                table.push_str(&format!("| {mode} | {label} | not installed | | |\n"));
                continue;
            };
            if let Some(t) = v["torch"].as_str() {
                versions = t.to_owned();
            }
            let times: Vec<f64> = v["step_s"]
                .as_array()
                .ok_or("no step times")?
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .collect();
            let t = Spread::of(&times).ok_or("no step times")?;
            let rss = v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
            medians.insert((mode, tool), (t.median, rss));
            table.push_str(&format!(
                "| {mode} | {label} | {} | {rss:.0} MiB | {} / {} |\n",
                t.show(|x| format!("{x:.2} s")),
                v["trainable"],
                v["total"]
            ));
        }
    }
    let mut notes = String::new();
    if let (Some(l), Some(f)) = (
        medians.get(&("lora", "kiln")),
        medians.get(&("full", "kiln")),
    ) {
        notes.push_str(&format!(
            "- kiln: a LoRA step takes {:.2}× a full fine-tuning step's time at {:.0}% of its peak memory.\n",
            l.0 / f.0,
            100.0 * l.1 / f.1
        ));
    }
    if let (Some(l), Some(f)) = (
        medians.get(&("lora", "torch")),
        medians.get(&("full", "torch")),
    ) {
        notes.push_str(&format!(
            "- PyTorch: a LoRA step (PEFT) takes {:.2}× a full step's time at {:.0}% of its peak memory.\n",
            l.0 / f.0,
            100.0 * l.1 / f.1
        ));
    }
    for mode in ["lora", "full"] {
        if let (Some(k), Some(t)) = (medians.get(&(mode, "kiln")), medians.get(&(mode, "torch"))) {
            notes.push_str(&format!(
                "- {mode}: kiln's step takes {:.2}× PyTorch's time at {:.0}% of its peak memory.\n",
                k.0 / t.0,
                100.0 * k.1 / t.1
            ));
        }
    }
    let section = format!(
        "<!-- bench:lora-train:start -->\n\
## kiln-lora: a LoRA fine-tuning step vs full fine-tuning (CPU)\n\n\
Command: `cargo xtask bench lora train` (`crates/kiln-lora/benches/lora_step.rs`, release build, beside \
`benches/torch_lora_step.py`, PyTorch {versions} with transformers and PEFT). GPT-2 small layout (12 layers × 768, vocabulary 50257, \
random init, dropout 0.1), batch 4 × 128 tokens; one step = forward, next-token loss, backward, AdamW. LoRA: r 16, α 32 on every \
linear layer (`all-linear`: c_attn, c_proj, c_fc, mlp.c_proj), base frozen. Each configuration runs in its own process, every core; \
step times are the median of 5 steps after 1 warm-up with their min–max in parentheses; peak RSS is the process's VmHWM \
(PyTorch: `ru_maxrss`). kiln's LoRA, like PEFT's unmerged forward, adds `s·(dropout(x)·A)·B` to each adapted layer's output \
(a `LoraBranch` on kiln-models' `Dense` layer); the frozen base weight gets no gradient.\n\
Machine: {}.\n\n{table}\n{notes}\
<!-- bench:lora-train:end -->\n",
        crate::bench::machine()
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "lora-train", &section)
}

fn files_bench() -> Result {
    run("cargo", &["build", "--release", "-p", "kiln-cli"], &[])?;
    let target = crate::bench::target_dir()?;
    let kiln = target.join("release/kiln");
    let kiln = kiln.to_str().ok_or("path")?;
    let work = target.join("bench-lora");
    generate(&work)?;
    let (base, ft) = (work.join("base"), work.join("ft"));
    let (base, ft) = (base.to_str().ok_or("path")?, ft.to_str().ok_or("path")?);
    let out_kiln = work.join("out-kiln");
    let out_torch = work.join("out-torch.safetensors");
    let anchor = root().join("xtask/lora_anchor.py");
    let anchor = anchor.to_str().ok_or("path")?;
    let torch = torch_available();
    let rank = MAX_RANK.to_string();
    let mut rows: Vec<(&str, Vec<Measured>, Vec<Measured>)> = Vec::new();
    for task in ["extract", "spectrum"] {
        let (mut k, mut t) = (Vec::new(), Vec::new());
        // The tools take turns, so a slow phase of the machine hits both.
        for _ in 0..REPEATS {
            let _ = std::fs::remove_dir_all(&out_kiln);
            let kiln_args: Vec<&str> = if task == "extract" {
                vec![
                    "lora",
                    "extract",
                    "--base",
                    base,
                    "--finetuned",
                    ft,
                    "--max-rank",
                    &rank,
                    out_kiln.to_str().ok_or("path")?,
                ]
            } else {
                vec![
                    "lora",
                    "spectrum",
                    "--base",
                    base,
                    "--finetuned",
                    ft,
                    "--json",
                ]
            };
            k.push(measure(kiln, &kiln_args, &work, &[])?);
            if torch {
                let py_args: Vec<&str> = if task == "extract" {
                    vec![
                        anchor,
                        "extract",
                        base,
                        ft,
                        out_torch.to_str().ok_or("path")?,
                        &rank,
                    ]
                } else {
                    vec![anchor, "spectrum", base, ft]
                };
                t.push(measure("python3", &py_args, &work, &[])?);
            }
        }
        let _ = std::fs::remove_dir_all(&out_kiln);
        let _ = std::fs::remove_file(&out_torch);
        rows.push((task, k, t));
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let spread = |xs: Vec<f64>| Spread::of(&xs).ok_or("no measurements");
    let mut table = String::from("| task | tool | wall time | peak RSS |\n|---|---|---:|---:|\n");
    let mut ratios = String::new();
    for (task, k, t) in &rows {
        let kt = spread(k.iter().map(|r| r.seconds).collect())?;
        let kr = spread(k.iter().map(|r| mib(r.peak_rss)).collect())?;
        table.push_str(&format!(
            "| {task} | kiln (faer) | {} | {} |\n",
            kt.show(|x| format!("{x:.1} s")),
            kr.show(|x| format!("{x:.0} MiB"))
        ));
        if t.is_empty() {
            table.push_str(&format!("| {task} | PyTorch | not installed | |\n"));
        } else {
            let tt = spread(t.iter().map(|r| r.seconds).collect())?;
            let tr = spread(t.iter().map(|r| mib(r.peak_rss)).collect())?;
            table.push_str(&format!(
                "| {task} | PyTorch (`torch.linalg.svd`) | {} | {} |\n",
                tt.show(|x| format!("{x:.1} s")),
                tr.show(|x| format!("{x:.0} MiB"))
            ));
            ratios.push_str(&format!(
                "- {task}: kiln takes {:.2}× PyTorch's time (medians) at {:.0}% of its peak memory.\n",
                kt.median / tt.median,
                100.0 * kr.median / tr.median.max(1e-9)
            ));
        }
    }
    let torch_version = Command::new("python3")
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not installed".into());
    let section = format!(
        "<!-- bench:lora:start -->\n\
## kiln lora extract / spectrum\n\n\
Command: `cargo xtask bench lora`. A base and a fine-tuned f32 checkpoint with GPT-2-medium's layout (24 layers × 1024, \
vocabulary 50257; the fine-tuned one differs by a rank-{CHANGE_RANK} change plus small full-rank noise in each of the 96 linear \
layers, embeddings unchanged). `extract`: `kiln lora extract --max-rank {MAX_RANK}` (thin SVD of each ΔW in f32, factors written \
as a PEFT adapter) against the same SVDs and factors in PyTorch {torch_version} (`xtask/lora_anchor.py extract`, \
`torch.linalg.svd`, written with `save_file`). `spectrum`: `kiln lora spectrum --json` against the same work in PyTorch \
(singular values of ΔW, W and a Gaussian matrix, full SVDs of W and W_ft for the intruder test). PyTorch loads both \
checkpoints with safetensors' `load_file` as a script would; kiln streams one matrix at a time from memory maps. Both use \
every core. The tools take turns, {REPEATS} times; each cell is the median with the min–max in parentheses; peak RSS is VmHWM.\n\
Machine: {}.\n\n{table}\n{ratios}\
<!-- bench:lora:end -->\n",
        crate::bench::machine()
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "lora", &section)
}
