//! `kiln-gpu-check`: everything kiln claims about a GPU, checked in one call.
//!
//! ```text
//! kiln-gpu-check [--device cuda|cpu|wgpu|wgpu:cpu] [--fixtures DIR] [--out FILE] [--gpu-name NAME] [--budget-s S] [--parity NAMES] [--runs LIST] [--no-fusion-binary PATH] [--quick]
//! ```
//!
//! 1. **Parity**: the transformers fixtures of kiln-models (GPT-2 with and without
//!    `scale_attn_by_inverse_layer_idx`, exact-GELU GPT-2, BERT MLM, MosaicBERT) run on the device
//!    and on the CPU; logits must agree within 1e-3 × the largest |logit| (f32) with each other
//!    and with transformers — or, for a device that runs f32 matmuls on TF32 tensor cores (burn's
//!    CUDA backend on Ampere and newer; no switch turns that off), within that of transformers
//!    with TF32-rounded matmul
//!    inputs. Both distances are reported, and which reference the device is closer to.
//! 2. **Training**: 20 AdamW steps of a small GPT-2 and a small MosaicBERT on the device, each in
//!    a time-limited child process (`kiln-gpu-check train …`); the loss must fall by 10%.
//! 3. **Throughput**: one training step (forward, loss, backward, AdamW) of a GPT-2-small-size and
//!    a BERT-base-size model in f32 and bf16, with CubeCL's default autotuning and with it at
//!    `minimal`: tokens/s, achieved TFLOP/s, model-FLOPs utilisation against the GPU's peak for
//!    the dtype, the allocator's peak reservation, and how long the first step (kernel
//!    compilation and autotuning) took on its own. Each measurement runs in a child process
//!    (`kiln-gpu-check measure …`), because a device's default dtype can be set only once.
//!
//! Everything is written to one JSON file (`--out`, default `gpu-check.json`), rewritten after each
//! stage so that a run cut short still leaves what it measured. A panic in a stage is recorded as
//! that stage's failure; each throughput child gets an equal share of what is left of `--budget-s`
//! (default 420 s) and is killed, and reported as timed out, when it overruns. The exit code is
//! non-zero when a parity or training check fails. `--device cpu --quick` runs the same code on
//! burn's flex backend with small sizes, which is how CI exercises it.

#[cfg(feature = "cuda-offline-no-fusion")]
mod llvm_stubs;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use kiln_checkpoint::Checkpoint;
use kiln_models::LoadOptions;
use kiln_models::bert::{BertConfig, BertForMaskedLm, MlmPositions, Padding};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Whether this binary was built with burn's kernel fusion (the `cuda` and `wgpu` features turn
/// it on; `cuda-offline-no-fusion` alone does not; flex has none).
const FUSION: bool = cfg!(any(feature = "cuda", feature = "wgpu"));

const USAGE: &str = "usage: kiln-gpu-check [--device cuda|cpu|wgpu|wgpu:cpu] [--fixtures DIR] [--out FILE] [--gpu-name NAME] [--budget-s S] [--parity NAMES] [--runs LIST] [--no-fusion-binary PATH] [--quick]
       kiln-gpu-check measure --device D --model gpt2|bert --dtype f32|bf16 [--quick]
       kiln-gpu-check train --device D --model gpt2|mosaic_bert [--quick]

  --device    cuda (default; cuda:N for another GPU), cpu (burn's flex backend), or wgpu / wgpu:cpu
              (with the `wgpu` feature; wgpu:cpu is a CPU adapter such as Mesa's lavapipe)
  --fixtures  kiln-models' fixture directory (default: crates/kiln-models/tests/fixtures under the
              current directory, or beside the binary)
  --out       the JSON report (default gpu-check.json)
  --gpu-name  the GPU's name as nvidia-smi prints it, to pick its peak FLOP/s for MFU
  --budget-s  seconds for the whole check (default 420); the throughput children share what the
              parity and training stages leave, and one that overruns its share is killed
  --parity    fixtures to compare (comma-separated; default all: gpt2_tied, gpt2_scaled,
              gpt2_gelu, bert_mlm, mosaic_bert)
  --runs      throughput runs as MODEL:DTYPE:AUTOTUNE[:nofusion], comma-separated (default: all
              eight of gpt2|bert × f32|bf16 × default|minimal, plus the four default-autotune
              runs without fusion when --no-fusion-binary is given)
  --no-fusion-binary
              the same check built without burn's fusion (`cargo xtask gpu-check build` makes
              it: gpu-check/kiln-gpu-check-no-fusion[.gz]); its throughput runs are the
              fusion-off measurements
  --quick     small models and batches (for the CPU)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("measure") => measure(&args[1..]).map(|v| println!("{v}")),
        Some("train") => train_child(&args[1..]).map(|v| println!("{v}")),
        _ => check(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-gpu-check: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn device(name: &str) -> Result<Device> {
    Ok(kiln_models::device_from_name(name)?)
}

fn check(args: &[String]) -> Result {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let known = [
        "--device",
        "--fixtures",
        "--out",
        "--gpu-name",
        "--budget-s",
        "--parity",
        "--runs",
        "--no-fusion-binary",
        "--quick",
    ];
    let mut i = 0;
    while i < args.len() {
        if !known.contains(&args[i].as_str()) {
            return Err(format!("unknown argument `{}`\n{USAGE}", args[i]).into());
        }
        i += if args[i] == "--quick" { 1 } else { 2 };
    }
    let dev_name = flag(args, "--device").unwrap_or("cuda").to_owned();
    let quick = args.iter().any(|a| a == "--quick");
    let out = PathBuf::from(flag(args, "--out").unwrap_or("gpu-check.json"));
    let budget = match flag(args, "--budget-s") {
        Some(b) => b.parse::<f64>().ok().filter(|b| *b > 0.0).ok_or_else(|| {
            format!("--budget-s: expected a positive number of seconds, got `{b}`")
        })?,
        None => 420.0,
    };
    let names: Vec<String> = match flag(args, "--parity") {
        Some(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
        None => FIXTURES.iter().map(|s| (*s).to_owned()).collect(),
    };
    if let Some(bad) = names.iter().find(|n| !FIXTURES.contains(&n.as_str())) {
        return Err(format!(
            "--parity: unknown fixture `{bad}` (known: {})",
            FIXTURES.join(", ")
        )
        .into());
    }
    let no_fusion_exe = flag(args, "--no-fusion-binary").map(PathBuf::from);
    if let Some(p) = &no_fusion_exe
        && !p.is_file()
    {
        return Err(format!("--no-fusion-binary: `{}` is not a file", p.display()).into());
    }
    let selected: Option<Vec<Run>> = flag(args, "--runs")
        .map(|list| {
            list.split(',')
                .map(|r| {
                    let parts: Vec<&str> = r.trim().split(':').collect();
                    let run = match parts[..] {
                        [m @ ("gpt2" | "bert"), d @ ("f32" | "bf16"), a @ ("default" | "minimal")] => {
                            Run { model: m.to_owned(), dtype: d.to_owned(), autotune: a.to_owned(), fusion: true }
                        }
                        [m @ ("gpt2" | "bert"), d @ ("f32" | "bf16"), a @ ("default" | "minimal"), "nofusion"] => {
                            Run { model: m.to_owned(), dtype: d.to_owned(), autotune: a.to_owned(), fusion: false }
                        }
                        _ => return Err(format!("--runs: `{r}` is not MODEL:DTYPE:AUTOTUNE[:nofusion] with MODEL gpt2|bert, DTYPE f32|bf16, AUTOTUNE default|minimal")),
                    };
                    if !run.fusion && no_fusion_exe.is_none() {
                        return Err(format!("--runs: `{r}` needs --no-fusion-binary"));
                    }
                    Ok(run)
                })
                .collect::<std::result::Result<Vec<_>, _>>()
        })
        .transpose()?;
    let dev = device(&dev_name)?;
    let fixtures = match flag(args, "--fixtures") {
        Some(f) => PathBuf::from(f),
        None => default_fixtures()?,
    };
    let gpu_name = flag(args, "--gpu-name").map(str::to_owned);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut report = json!({
        "kiln_gpu_check": env!("CARGO_PKG_VERSION"),
        "device": dev_name,
        "gpu_name": gpu_name,
        "build": if cfg!(feature = "cuda-offline-no-fusion") { "cuda-offline (NVRTC, LLVM stubbed)" } else if cfg!(feature = "cuda") { "cuda" } else if cfg!(feature = "wgpu") { "wgpu" } else { "cpu only" },
        "fusion": FUSION,
        "complete": false,
    });

    // One tiny kernel first: a machine without a working device (no driver, no NVRTC, no
    // adapter) gets one clear error instead of every stage and child failing the same way.
    if let Err(cause) = probe(&dev) {
        let message = format!(
            "--device {dev_name}: the device cannot run a kernel ({cause}). For CUDA: the NVIDIA \
             driver's libcuda and the toolkit's libnvrtc must be on LD_LIBRARY_PATH and CUDA_PATH \
             must name the toolkit (default /usr/local/cuda); see docs/GPU.md. `--device cpu` \
             runs the CPU half."
        );
        failures.push(message.clone());
        save(&out, &mut report, &failures, started)?;
        return Err(message.into());
    }

    eprintln!("== parity on {dev_name} against the CPU and transformers");
    report["parity"] = stage("parity", &mut failures, |f| {
        parity(&dev, &fixtures, &names, f).map(Value::from)
    });
    save(&out, &mut report, &failures, started)?;
    eprintln!("== 20 training steps on {dev_name}");
    // Each model trains in a child process with a time limit, so that a stuck kernel cannot
    // take the throughput stage down with it.
    let exe = std::env::current_exe()?;
    let scratch = tempfile::tempdir()?;
    let mut trained = Vec::new();
    for model in ["gpt2", "mosaic_bert"] {
        let left = budget - started.elapsed().as_secs_f64();
        let share = (left / 3.0).clamp(5.0, 150.0);
        let mut cmd = Command::new(&exe);
        cmd.args(["train", "--device", &dev_name, "--model", model]);
        // Training checks correctness, not speed: the fewest autotune candidates, so the first
        // step compiles as few kernels as it can (on lavapipe, the full-size MosaicBERT's first
        // step takes 180 s of compilation and tuning; the later ones 5.5 s).
        cmd.env("CUBECL_AUTOTUNE_LEVEL", "minimal");
        if quick {
            cmd.arg("--quick");
        }
        let v = run_child(cmd, scratch.path(), share)?;
        let v = match v["losses"].as_array() {
            Some(l) => {
                let losses: Vec<f64> = l.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect();
                record(model, &losses, &mut failures)
            }
            None => {
                eprintln!("   {model}: {}", summary(&v));
                failures.push(format!("training {model}: {}", summary(&v)));
                // A killed child's last progress lines say in which step and phase it was.
                json!({"model": model, "pass": false, "error": v["error"], "stderr": v["stderr"]})
            }
        };
        trained.push(v);
    }
    report["training"] = json!(trained);
    save(&out, &mut report, &failures, started)?;
    eprintln!("== training-step throughput");
    let peaks = gpu_name.as_deref().and_then(peak_tflops);
    let dtypes: &[&str] = if dev_name == "cpu" {
        &["f32"]
    } else {
        &["f32", "bf16"]
    };
    let mut runs = Vec::new();
    for fusion in [true, false] {
        for model in ["gpt2", "bert"] {
            for dtype in dtypes {
                for autotune in ["default", "minimal"] {
                    if dev_name == "cpu" && autotune == "minimal" {
                        continue; // CubeCL autotuning does not apply to flex
                    }
                    let run = Run {
                        model: model.to_owned(),
                        dtype: (*dtype).to_owned(),
                        autotune: autotune.to_owned(),
                        fusion,
                    };
                    let wanted = match &selected {
                        Some(sel) => sel.contains(&run),
                        // By default: everything with fusion, and the default-autotune runs
                        // without it when there is a binary for that.
                        None => fusion || (no_fusion_exe.is_some() && autotune == "default"),
                    };
                    if wanted {
                        runs.push(run);
                    }
                }
            }
        }
    }
    report["throughput"] = json!([]);
    for (i, run) in runs.iter().enumerate() {
        let (model, dtype, autotune) = (
            run.model.as_str(),
            run.dtype.as_str(),
            run.autotune.as_str(),
        );
        let left = budget - started.elapsed().as_secs_f64();
        let share = (left / (runs.len() - i) as f64).max(5.0);
        let program = match (&no_fusion_exe, run.fusion) {
            (Some(p), false) => p.clone(),
            _ => exe.clone(),
        };
        let mut cmd = Command::new(&program);
        cmd.args([
            "measure", "--device", &dev_name, "--model", model, "--dtype", dtype,
        ]);
        if quick {
            cmd.arg("--quick");
        }
        // Explicit either way, so that a CUBECL_AUTOTUNE_LEVEL in the caller's environment does
        // not leak into the "default" (balanced) measurement.
        let level = if autotune == "minimal" {
            "minimal"
        } else {
            "balanced"
        };
        cmd.env("CUBECL_AUTOTUNE_LEVEL", level);
        let t = Instant::now();
        let mut v = run_child(cmd, scratch.path(), share)?;
        v["model"] = json!(model);
        v["dtype"] = json!(dtype);
        v["autotune"] = json!(autotune);
        if v.get("fusion").is_none() {
            v["fusion"] = json!(run.fusion && FUSION);
        }
        v["wall_s"] = json!(t.elapsed().as_secs_f64());
        if let (Some((f32_peak, bf16_peak)), Some(achieved)) =
            (peaks, v["achieved_tflops"].as_f64())
        {
            let peak = if dtype == "bf16" { bf16_peak } else { f32_peak };
            v["peak_tflops"] = json!(peak);
            v["mfu"] = json!(achieved / peak);
        }
        eprintln!(
            "   {model} {dtype} autotune {autotune}{}: {}",
            if run.fusion { "" } else { ", no fusion" },
            summary(&v)
        );
        if let Some(list) = report["throughput"].as_array_mut() {
            list.push(v);
        }
        save(&out, &mut report, &failures, started)?;
    }
    report["complete"] = json!(true);
    save(&out, &mut report, &failures, started)?;
    eprintln!(
        "wrote {} ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} check(s) failed: {}",
            failures.len(),
            failures.join("; ")
        )
        .into())
    }
}

/// One throughput measurement to make.
#[derive(Debug, PartialEq)]
struct Run {
    model: String,
    dtype: String,
    autotune: String,
    /// `false`: run with `--no-fusion-binary`.
    fusion: bool,
}

/// Runs one stage, turning an error or a panic into a recorded failure.
fn stage(
    name: &str,
    failures: &mut Vec<String>,
    f: impl FnOnce(&mut Vec<String>) -> Result<Value>,
) -> Value {
    let mut inner = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut inner)));
    failures.append(&mut inner);
    let message = match outcome {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e.to_string(),
        Err(panic) => panic_text(panic.as_ref()),
    };
    eprintln!("   {name} failed: {message}");
    failures.push(format!("{name}: {message}"));
    json!({"error": message})
}

/// A panic's message (`panic!` carries a `String` or a `&str`).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}

/// Writes the report as it stands (atomically).
fn save(out: &Path, report: &mut Value, failures: &[String], started: Instant) -> Result {
    report["failures"] = json!(failures);
    report["seconds"] = json!(started.elapsed().as_secs_f64());
    kiln_checkpoint::write_atomic(out, serde_json::to_string_pretty(report)?.as_bytes())?;
    Ok(())
}

/// Runs a `measure` or `train` child with its output in files, killing it after `limit_s` seconds.
fn run_child(mut cmd: Command, scratch: &Path, limit_s: f64) -> Result<Value> {
    let stdout_path = scratch.join("stdout");
    let stderr_path = scratch.join("stderr");
    cmd.stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?);
    let mut child = cmd.spawn()?;
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if t.elapsed().as_secs_f64() > limit_s {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let tail = || {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    };
    Ok(match status {
        None => {
            json!({"error": format!("timed out after {limit_s:.0} s (its share of --budget-s)"), "stderr": tail()})
        }
        Some(s) if s.success() => {
            let stdout = std::fs::read(&stdout_path)?;
            serde_json::from_slice(&stdout)
                .unwrap_or_else(|e| json!({"error": format!("bad output: {e}")}))
        }
        Some(s) => json!({"error": format!("exited with {s}: {}", tail())}),
    })
}

fn summary(v: &Value) -> String {
    match v["error"].as_str() {
        // A child's panic message is the line after the first "panicked at"; else the last line.
        Some(e) => {
            let lines: Vec<&str> = e.lines().collect();
            let message = lines
                .iter()
                .position(|l| l.contains("panicked at"))
                .and_then(|i| lines.get(i + 1))
                .or(lines.last())
                .copied()
                .unwrap_or(e);
            format!("error: {message}")
        }
        None => format!(
            "{:.0} tokens/s, {:.2} TFLOP/s{}{}{}",
            v["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            v["achieved_tflops"].as_f64().unwrap_or(f64::NAN),
            v["mfu"]
                .as_f64()
                .map_or(String::new(), |m| format!(", MFU {:.1}%", 100.0 * m)),
            // The CPU backend reports no allocator pool.
            v["peak_reserved_bytes"]
                .as_f64()
                .map_or(String::new(), |b| format!(
                    ", peak {:.2} GiB",
                    b / (1u64 << 30) as f64
                )),
            v["first_step_s"]
                .as_f64()
                .map_or(String::new(), |t| format!(", first step {t:.1} s")),
        ),
    }
}

/// Dense peak TFLOP/s (f32 without tensor cores, bf16 with), from NVIDIA's data sheets.
fn peak_tflops(name: &str) -> Option<(f64, f64)> {
    let n = name.to_ascii_lowercase();
    if n.contains("h200") {
        Some((67.0, 989.0))
    } else if n.contains("h100") && (n.contains("pcie") || n.contains("nvl")) {
        Some((51.0, 756.0))
    } else if n.contains("h100") {
        Some((67.0, 989.0))
    } else if n.contains("a100") {
        Some((19.5, 312.0))
    } else {
        None
    }
}

fn default_fixtures() -> Result<PathBuf> {
    let rel = Path::new("crates/kiln-models/tests/fixtures");
    let mut candidates = vec![std::env::current_dir()?.join(rel)];
    if let Some(dir) = std::env::current_exe()?.parent() {
        candidates.push(dir.join("fixtures"));
    }
    candidates
        .into_iter()
        .find(|p| p.join("reference").is_dir())
        .ok_or_else(|| "kiln-models' fixtures not found: pass --fixtures DIR".into())
}

fn ints(r: &Checkpoint, name: &str, device: &Device) -> Result<Tensor<2, Int>> {
    let t = r.tensor(name)?;
    let v: Vec<i64> = t
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let shape: [usize; 2] = t
        .shape()
        .try_into()
        .map_err(|_| format!("{name} is not 2-D"))?;
    Ok(Tensor::from_data(TensorData::new(v, shape), device))
}

fn floats(t: Tensor<3>) -> Result<Vec<f32>> {
    Ok(t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?)
}

fn max_diff(a: &[f32], b: &[f32], mask: &[i64], vocab: usize) -> f64 {
    a.chunks(vocab)
        .zip(b.chunks(vocab))
        .zip(mask)
        .filter(|(_, m)| **m == 1)
        .flat_map(|((x, y), _)| x.iter().zip(y).map(|(p, q)| f64::from((p - q).abs())))
        .fold(0.0, f64::max)
}

const FIXTURES: [&str; 5] = [
    "gpt2_tied",
    "gpt2_scaled",
    "gpt2_gelu",
    "bert_mlm",
    "mosaic_bert",
];

fn parity(
    dev: &Device,
    fixtures: &Path,
    names: &[String],
    failures: &mut Vec<String>,
) -> Result<Vec<Value>> {
    let cpu = Device::flex();
    let mut out = Vec::new();
    for name in names.iter().map(String::as_str) {
        let r = Checkpoint::open(
            fixtures
                .join("reference")
                .join(format!("{name}.safetensors")),
        )?;
        let dir = fixtures.join("models").join(name);
        let want = r.tensor("logits")?.to_f32()?;
        let run_with = |d: &Device, padding: Padding| -> Result<Vec<f32>> {
            let (ids, mask) = (ints(&r, "input_ids", d)?, ints(&r, "attention_mask", d)?);
            if name.starts_with("gpt2") {
                let m = Gpt2LmHead::load(&dir, d, LoadOptions::default())?;
                floats(m.forward(ids, Some(mask), None))
            } else {
                let m = BertForMaskedLm::load(&dir, d, LoadOptions::default())?;
                let tt = r
                    .tensor("token_type_ids")
                    .ok()
                    .map(|_| ints(&r, "token_type_ids", d))
                    .transpose()?;
                floats(m.forward(ids, tt, Some(mask), padding))
            }
        };
        let run = |d: &Device| {
            let padding = if name == "mosaic_bert" {
                Padding::Unpadded
            } else {
                Padding::Padded
            };
            run_with(d, padding)
        };
        let (on_dev, on_cpu) = (run(dev)?, run(&cpu)?);
        let mask: Vec<i64> = r
            .tensor("attention_mask")?
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let vocab = *r
            .tensor("logits")?
            .shape()
            .last()
            .ok_or("logits have no shape")?;
        // The same reference with every matmul input rounded to TF32 (make_tf32_reference.py):
        // what burn's CUDA backend computes for f32 on Ampere and newer GPUs.
        let tf32_path = fixtures
            .join("reference")
            .join(format!("{name}.tf32.safetensors"));
        let want_tf32 = Checkpoint::open(&tf32_path)
            .and_then(|c| c.tensor("logits")?.to_f32())
            .map_err(|e| {
                format!(
                    "{}: {e} (run crates/kiln-models/tests/fixtures/make_tf32_reference.py)",
                    tf32_path.display()
                )
            })?;
        let (vs_cpu, vs_ref, vs_tf32, tf32_effect) = (
            max_diff(&on_dev, &on_cpu, &mask, vocab),
            max_diff(&on_dev, &want, &mask, vocab),
            max_diff(&on_dev, &want_tf32, &mask, vocab),
            max_diff(&want_tf32, &want, &mask, vocab),
        );
        // Scale-aware: 1e-3 of the fixture's largest real-token logit (at least 1e-3 absolute).
        // f32 matmuls: within it of the CPU and of transformers. TF32 matmuls: within it of the
        // TF32 reference (whose accumulation-order noise is below 1e-4 on these fixtures:
        // reference/tf32_effect.json).
        let scale = want
            .chunks(vocab)
            .zip(&mask)
            .filter(|(_, m)| **m == 1)
            .flat_map(|(row, _)| row.iter())
            .fold(1.0f32, |a, v| a.max(v.abs()));
        let tol = 1e-3 * f64::from(scale);
        let pass_f32 = vs_cpu <= tol && vs_ref <= tol;
        let pass_tf32 = vs_tf32 <= tol;
        let pass = pass_f32 || pass_tf32;
        let matmuls = if vs_ref <= vs_tf32 { "f32" } else { "tf32" };
        if !pass {
            failures.push(format!(
                "parity {name}: device vs CPU {vs_cpu:.2e}, vs transformers {vs_ref:.2e}, vs transformers with TF32 matmuls {vs_tf32:.2e} (tolerance {tol:.2e})"
            ));
        }
        eprintln!(
            "   {name}: |device − CPU| ≤ {vs_cpu:.2e}, |device − transformers| ≤ {vs_ref:.2e}, |device − transformers at TF32| ≤ {vs_tf32:.2e} (TF32 alone moves it {tf32_effect:.2e}; closer to {matmuls}) {}",
            if pass { "ok" } else { "FAIL" }
        );
        let mut entry = json!({
            "fixture": name,
            "max_abs_diff_vs_cpu": vs_cpu,
            "max_abs_diff_vs_transformers": vs_ref,
            "max_abs_diff_vs_transformers_tf32": vs_tf32,
            "tf32_effect_on_reference": tf32_effect,
            "tolerance": tol,
            "matmul_precision_closer_to": matmuls,
            "pass_f32": pass_f32,
            "pass_tf32": pass_tf32,
            "pass": pass,
        });
        if name == "mosaic_bert" {
            // Diagnostic: the padded path on the device, to tell unpadding apart from the rest.
            let padded = run_with(dev, Padding::Padded)?;
            let d = max_diff(&padded, &want, &mask, vocab);
            eprintln!("      padded path: |device − transformers| ≤ {d:.2e}");
            entry["padded_max_abs_diff_vs_transformers"] = json!(d);
        }
        out.push(entry);
    }
    Ok(out)
}

fn random_ids(b: usize, l: usize, vocab: usize, seed: u64, device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = (0..b * l)
        .map(|i| {
            ((i as u64 + 1)
                .wrapping_mul(seed | 1)
                .wrapping_mul(2_654_435_761)
                >> 7) as i64
                % vocab as i64
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [b, l]), device)
}

/// Runs `sum([1, 2, 3]²)` on the device; the first line of whatever went wrong (an error, or a
/// panic here or in the backend's threads, whose default report is silenced meanwhile).
fn probe(dev: &Device) -> std::result::Result<(), String> {
    check_value(
        || {
            let t = Tensor::<1>::from_floats([1.0, 2.0, 3.0], dev);
            scalar((t.clone() * t).sum())
        },
        14.0,
    )
}

/// Runs `f` and expects `want`; else the first line of the first panic (on any thread) or the
/// wrong value, cut to 200 characters.
fn check_value(f: impl FnOnce() -> f64, want: f64) -> std::result::Result<(), String> {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let hook = std::panic::take_hook();
    let record = Arc::clone(&seen);
    std::panic::set_hook(Box::new(move |info| {
        let text = panic_text(info.payload());
        if let Ok(mut first) = record.lock() {
            first.get_or_insert(text);
        }
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    let first_panic = seen.lock().ok().and_then(|mut s| s.take());
    let cause = match (outcome, first_panic) {
        (Ok(v), None) if v == want => return Ok(()),
        (Ok(v), None) => format!("a test kernel returned {v} instead of {want}"),
        (_, Some(text)) => text,
        (Err(_), None) => "panicked".to_owned(),
    };
    // A backend's message can be a page long (cudarc lists every library name it tried).
    let line = cause.lines().next().unwrap_or("");
    Err(match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    })
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_or(f64::NAN, |v| v[0])
}

/// `train --device D --model gpt2|mosaic_bert [--quick]`: 20 AdamW steps; prints the losses.
fn train_child(args: &[String]) -> Result<Value> {
    let dev_name = flag(args, "--device").ok_or("train needs --device")?;
    let model = flag(args, "--model").ok_or("train needs --model")?;
    let quick = args.iter().any(|a| a == "--quick");
    let losses = train_model(&device(dev_name)?, quick, model)?;
    Ok(json!({ "losses": losses }))
}

fn train_model(dev: &Device, quick: bool, model: &str) -> Result<Vec<f64>> {
    let device = dev.clone().autodiff();
    let (d, layers, seq, batch) = if quick {
        (64, 2, 32, 4)
    } else {
        (256, 4, 128, 16)
    };
    if !matches!(model, "gpt2" | "mosaic_bert") {
        return Err(format!("--model `{model}`: gpt2 or mosaic_bert").into());
    }
    // Progress on stderr: when the parent kills a stuck child, the report keeps the last lines,
    // which say in which step and phase it stopped.
    let t0 = Instant::now();
    let progress = |what: &str| eprintln!("[{:7.2} s] {what}", t0.elapsed().as_secs_f64());
    progress(&format!(
        "{model}: d {d}, {layers} layers, batch {batch} × {seq}"
    ));
    // GPT-2: a fixed batch the model can memorise.
    let cfg = Gpt2Config {
        n_layer: layers,
        n_embd: d,
        n_head: 4,
        n_positions: seq,
        vocab_size: 1024,
        ..Gpt2Config::gpt2()
    };
    if model == "gpt2" {
        let mut gpt = Gpt2LmHead::init(&cfg, &device)?;
        let ids = random_ids(batch, seq, 1024, 3, &device);
        let mut optim = AdamWConfig::new().init();
        let mut losses = Vec::new();
        for step in 0..20 {
            let loss = gpt.loss(ids.clone(), None);
            losses.push(scalar(loss.clone()));
            progress(&format!("step {step}: forward, loss {:.4}", losses[step]));
            let grads = GradientsParams::from_grads(loss.backward(), &gpt);
            progress(&format!("step {step}: backward"));
            gpt = optim.step(1e-3, gpt, grads);
            progress(&format!("step {step}: optimizer"));
        }
        return Ok(losses);
    }
    // MosaicBERT: MLM on every 7th position.
    let cfg = BertConfig {
        vocab_size: 1024,
        hidden_size: d,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        intermediate_size: 2 * d,
        max_position_embeddings: seq,
        attention_probs_dropout_prob: 0.0,
        alibi_starting_size: Some(seq),
        ..BertConfig::bert_base()
    };
    let mut bert = BertForMaskedLm::init(&cfg, &device)?;
    let ids = random_ids(batch, seq, 1024, 5, &device);
    let flat: Vec<i64> = ids
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| format!("{e:?}"))?;
    let labels: Vec<i64> = flat
        .iter()
        .enumerate()
        .map(|(i, &t)| if i % 7 == 3 { t } else { -100 })
        .collect();
    let masked: Vec<i64> = flat
        .iter()
        .enumerate()
        .map(|(i, &t)| if i % 7 == 3 { 4 } else { t })
        .collect();
    let (inp, lab) = (
        Tensor::<2, Int>::from_data(TensorData::new(masked, [batch, seq]), &device),
        Tensor::<2, Int>::from_data(TensorData::new(labels, [batch, seq]), &device),
    );
    let mut optim = AdamWConfig::new().init();
    let mut losses = Vec::new();
    for step in 0..20 {
        let loss = bert.loss(
            inp.clone(),
            None,
            None,
            lab.clone(),
            Padding::Padded,
            MlmPositions::MaskedOnly,
        );
        losses.push(scalar(loss.clone()));
        progress(&format!("step {step}: forward, loss {:.4}", losses[step]));
        let grads = GradientsParams::from_grads(loss.backward(), &bert);
        progress(&format!("step {step}: backward"));
        bert = optim.step(1e-3, bert, grads);
        progress(&format!("step {step}: optimizer"));
    }
    Ok(losses)
}

fn record(model: &str, losses: &[f64], failures: &mut Vec<String>) -> Value {
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    let pass = last.is_finite() && last < 0.9 * first;
    if !pass {
        failures.push(format!(
            "training {model}: loss {first:.4} → {last:.4} did not fall by 10%"
        ));
    }
    eprintln!(
        "   {model}: loss {first:.4} → {last:.4} {}",
        if pass { "ok" } else { "FAIL" }
    );
    json!({"model": model, "steps": losses.len(), "losses": losses, "pass": pass})
}

/// One throughput measurement (a child process): prints one JSON object.
fn measure(args: &[String]) -> Result<Value> {
    let dev_name = flag(args, "--device").ok_or("measure needs --device")?;
    let model = flag(args, "--model").ok_or("measure needs --model")?;
    let dtype = flag(args, "--dtype").unwrap_or("f32");
    let quick = args.iter().any(|a| a == "--quick");
    let mut base = device(dev_name)?;
    if dtype == "bf16" {
        base.configure(FloatDType::BF16)
            .map_err(|e| format!("bf16 on {dev_name}: {e:?}"))?;
    } else if dtype != "f32" {
        return Err(format!("dtype `{dtype}`: f32 or bf16").into());
    }
    let device = base.clone().autodiff();
    let (warmup, reps) = if quick { (1, 3) } else { (3, 10) };
    let mut optim = AdamWConfig::new().init();
    let (b, l, params, flops_per_token);
    let mut step: Box<dyn FnMut() -> f64> = match model {
        "gpt2" => {
            let cfg = if quick {
                Gpt2Config {
                    n_layer: 2,
                    n_embd: 128,
                    n_head: 4,
                    n_positions: 128,
                    vocab_size: 4096,
                    attn_pdrop: 0.0,
                    resid_pdrop: 0.0,
                    embd_pdrop: 0.0,
                    ..Gpt2Config::gpt2()
                }
            } else {
                Gpt2Config {
                    attn_pdrop: 0.0,
                    resid_pdrop: 0.0,
                    embd_pdrop: 0.0,
                    ..Gpt2Config::gpt2()
                }
            };
            (b, l) = if quick { (2, 128) } else { (8, 1024) };
            params = cfg.num_params();
            flops_per_token = cfg.flops_per_token(l);
            let mut m = Gpt2LmHead::init(&cfg, &device)?;
            let ids = random_ids(b, l, cfg.vocab_size, 7, &device);
            Box::new(move || {
                let loss = m.loss(ids.clone(), None);
                let grads = GradientsParams::from_grads(loss.clone().backward(), &m);
                m = optim.step(1e-4, m.clone(), grads);
                scalar(loss)
            })
        }
        "bert" => {
            let cfg = if quick {
                BertConfig {
                    vocab_size: 4096,
                    hidden_size: 128,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    intermediate_size: 512,
                    max_position_embeddings: 128,
                    ..BertConfig::bert_base()
                }
            } else {
                BertConfig::bert_base()
            };
            (b, l) = if quick { (4, 128) } else { (32, 128) };
            params = cfg.num_params();
            flops_per_token = cfg.flops_per_token(l);
            let mut m = BertForMaskedLm::init(&cfg, &device)?;
            let ids = random_ids(b, l, cfg.vocab_size, 11, &device);
            let flat: Vec<i64> = ids
                .clone()
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| format!("{e:?}"))?;
            let labels = Tensor::<2, Int>::from_data(
                TensorData::new(
                    flat.iter()
                        .enumerate()
                        .map(|(i, &t)| if i % 7 == 3 { t } else { -100 })
                        .collect::<Vec<i64>>(),
                    [b, l],
                ),
                &device,
            );
            Box::new(move || {
                let loss = m.loss(
                    ids.clone(),
                    None,
                    None,
                    labels.clone(),
                    Padding::Padded,
                    MlmPositions::All,
                );
                let grads = GradientsParams::from_grads(loss.clone().backward(), &m);
                m = optim.step(1e-4, m.clone(), grads);
                scalar(loss)
            })
        }
        other => return Err(format!("model `{other}`: gpt2 or bert").into()),
    };
    let mut peak = 0u64;
    let mut times = Vec::new();
    let mut first_step = f64::NAN;
    let mut last_loss = f64::NAN;
    for i in 0..warmup + reps {
        let t = Instant::now();
        last_loss = step(); // reading the loss synchronises the device
        base.sync().map_err(|e| format!("sync: {e:?}"))?;
        let took = t.elapsed().as_secs_f64();
        eprintln!("step {i}: {took:.3} s");
        if i == 0 {
            // Compiles and autotunes every kernel of the step: on CUDA, NVRTC's share of a run.
            first_step = took;
        }
        if i >= warmup {
            times.push(took);
        }
        if let Some(u) = base.memory_pool_usage() {
            peak = peak.max(u.bytes_reserved);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = (b * l) as f64;
    // Training FLOPs: forward + backward = 3 × forward (Kaplan et al.).
    let flops = 3.0 * flops_per_token * tokens;
    Ok(json!({
        "params": params, "batch": b, "seq_len": l, "first_step_s": first_step, "warmup_steps": warmup,
        "step_s": median, "tokens_per_s": tokens / median,
        "train_flops_per_step": flops, "achieved_tflops": flops / median / 1e12,
        "peak_reserved_bytes": (peak > 0).then_some(peak), "final_loss": last_loss,
        "fusion": FUSION,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the probe swaps the process-wide panic hook, which parallel tests would share.
    #[test]
    fn the_probe_passes_a_working_device_and_shortens_a_backend_failure() {
        assert_eq!(probe(&Device::flex()), Ok(()));
        // What burn's CUDA backend does without libcuda: its runtime thread panics with a
        // page-long message, and the caller then panics on a closed channel.
        let sent = format!(
            "Unable to load libcuda: tried {}\nsecond line",
            "x".repeat(500)
        );
        let err = check_value(
            move || {
                let worker = std::thread::spawn(move || -> f64 { panic!("{sent}") });
                worker.join().map_err(|_| "RecvError").unwrap()
            },
            14.0,
        )
        .unwrap_err();
        assert!(
            err.starts_with("Unable to load libcuda: tried xxx"),
            "{err}"
        );
        assert_eq!(
            err.chars().count(),
            201,
            "200 characters and an ellipsis: {err}"
        );
        assert!(!err.contains("RecvError") && !err.contains("second line"));
        assert_eq!(
            check_value(|| 13.0, 14.0),
            Err("a test kernel returned 13 instead of 14".to_owned())
        );
    }
}
