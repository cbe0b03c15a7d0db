//! `kiln-gpu-check`: everything kiln claims about a GPU, checked in one call.
//!
//! ```text
//! kiln-gpu-check [--device cuda|cpu|wgpu|wgpu:cpu] [--fixtures DIR] [--out FILE] [--gpu-name NAME]
//!                [--budget-s S | --child-limit-s S] [--parity NAMES] [--runs LIST]
//!                [--no-fusion-binary PATH] [--quick]
//! ```
//!
//! 1. **Parity**: the transformers fixtures of kiln-models (GPT-2 with and without
//!    `scale_attn_by_inverse_layer_idx`, exact-GELU GPT-2, BERT MLM, MosaicBERT) run on the device
//!    and on the CPU; logits must agree within 1e-3 × the largest |logit| (f32) with each other
//!    and with transformers — or, for a device that runs f32 matmuls on TF32 tensor cores (burn's
//!    CUDA backend on Ampere and newer; no switch turns that off), within that of transformers
//!    with TF32-rounded matmul
//!    inputs. Both distances are reported, and which reference the device is closer to.
//! 2. **Diffusion**: kiln-models' tiny Stable Diffusion pipeline (`sd_tiny`) samples on the device
//!    and on the CPU from diffusers' reference inputs; the latents and decoded image must agree
//!    with each other and with diffusers. Then one training step of an SD2-layout UNet (SD2-base's
//!    865 M parameters on a 64×64 latent; 1/8 width on 16×16 with `--quick`, on flex only): finite loss and
//!    gradients, time reported ([`diffusion`]).
//! 3. **Training**: 20 AdamW steps of a small GPT-2 and a small MosaicBERT on the device, each in
//!    a time-limited child process (`kiln-gpu-check train …`); the loss must fall by 10%.
//! 4. **Throughput**: one training step (forward, loss, backward, AdamW) of a GPT-2-small-size and
//!    a BERT-base-size model in f32 and bf16, with CubeCL's default autotuning and with it at
//!    `minimal`: tokens/s, achieved TFLOP/s, model-FLOPs utilisation against the GPU's peak for
//!    the dtype, the allocator's peak reservation, and how long the first step (kernel
//!    compilation and autotuning) took on its own. Each measurement runs in a child process
//!    (`kiln-gpu-check measure …`), because a device's default dtype can be set only once.
//!
//! Everything is written to one JSON file (`--out`, default `gpu-check.json`), rewritten after each
//! stage so that a run cut short still leaves what it measured. A panic in a stage is recorded as
//! that stage's failure. On a lent GPU each child gets an equal share of what is left of
//! `--budget-s` (default 420 s) and is killed, and reported as timed out, when it overruns; in CI
//! `--child-limit-s` gives every child a fixed limit that exists only to stop a hang, so a pass
//! never depends on the machine's speed (times are reported, not judged). The exit code is
//! non-zero when a parity or training check fails. `--device cpu --quick` runs the same code on
//! burn's flex backend with small sizes, which is how CI exercises it.
//!
//! Modules: [`cli`] (arguments), [`parity`], [`diffusion`], [`train`] and [`measure`] (the four
//! stages),
//! [`child`] (child processes, stage failures, the device probe).

mod child;
mod cli;
mod diffusion;
#[cfg(feature = "cuda-offline-no-fusion")]
mod llvm_stubs;
mod measure;
mod parity;
mod train;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use serde_json::{Value, json};

use crate::child::{probe, run_child, stage, summary};
use crate::cli::{CheckArgs, Child, Cli, Dtype, Fixture, Run, ThroughputModel};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Whether this binary was built with burn's kernel fusion (the `cuda` and `wgpu` features turn
/// it on; `cuda-offline-no-fusion` alone does not; flex has none).
const FUSION: bool = cfg!(any(feature = "cuda", feature = "wgpu"));

fn main() -> ExitCode {
    let cli = Cli::parse();
    // glibc malloc tuned for training and inference loops (never changes results; see
    // kiln_models::cpu::tune_allocator, KILN_MALLOC_TUNING=0 turns it off).
    kiln_models::cpu::tune_allocator();
    let result = match cli.command {
        Some(Child::Measure {
            device,
            model,
            dtype,
            quick,
        }) => measure::measure(&device, model, dtype, quick).map(|v| println!("{v}")),
        Some(Child::Train {
            device,
            model,
            quick,
        }) => train::train_child(&device, model, quick).map(|v| println!("{v}")),
        None => check(&cli.check),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-gpu-check: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The check's running state: the report, the failures so far, and how to run children.
struct Check<'a> {
    args: &'a CheckArgs,
    report: Value,
    failures: Vec<String>,
    started: Instant,
    exe: PathBuf,
    scratch: tempfile::TempDir,
}

impl Check<'_> {
    /// A child's time limit: the fixed `--child-limit-s`, or a share of what is left of
    /// `--budget-s` (`parts` children still to run), bounded by `range`.
    fn limit(&self, parts: f64, range: (f64, f64)) -> f64 {
        match self.args.child_limit_s {
            Some(limit) => limit,
            None => ((self.args.budget_s - self.started.elapsed().as_secs_f64()) / parts)
                .clamp(range.0, range.1),
        }
    }

    /// Writes the report as it stands (atomically).
    fn save(&mut self) -> Result {
        self.report["failures"] = json!(self.failures);
        self.report["seconds"] = json!(self.started.elapsed().as_secs_f64());
        kiln_checkpoint::write_atomic(
            &self.args.out,
            serde_json::to_string_pretty(&self.report)?.as_bytes(),
        )?;
        Ok(())
    }
}

fn check(args: &CheckArgs) -> Result {
    if let Some(p) = &args.no_fusion_binary
        && !p.is_file()
    {
        return Err(format!("--no-fusion-binary: `{}` is not a file", p.display()).into());
    }
    if let Some(r) = args.runs.iter().find(|r| !r.fusion)
        && args.no_fusion_binary.is_none()
    {
        return Err(format!(
            "--runs: `{}:{}:…:nofusion` needs --no-fusion-binary",
            r.model.name(),
            r.dtype.name()
        )
        .into());
    }
    let dev = kiln_models::device_from_name(&args.device)?;
    let fixtures = match &args.fixtures {
        Some(f) => f.clone(),
        None => parity::default_fixtures()?,
    };
    let mut c = Check {
        args,
        report: json!({
            "kiln_gpu_check": env!("CARGO_PKG_VERSION"),
            "device": args.device,
            "gpu_name": args.gpu_name,
            "build": if cfg!(feature = "cuda-offline-no-fusion") { "cuda-offline (NVRTC, LLVM stubbed)" } else if cfg!(feature = "cuda") { "cuda" } else if cfg!(feature = "wgpu") { "wgpu" } else { "cpu only" },
            "fusion": FUSION,
            "child_limit": match args.child_limit_s { Some(s) => format!("{s} s each (hang guard)"), None => format!("shares of a {} s budget", args.budget_s) },
            "complete": false,
        }),
        failures: Vec::new(),
        started: Instant::now(),
        exe: std::env::current_exe()?,
        scratch: tempfile::tempdir()?,
    };

    // One tiny kernel first: a machine without a working device (no driver, no NVRTC, no
    // adapter) gets one clear error instead of every stage and child failing the same way.
    if let Err(cause) = probe(&dev) {
        let message = format!(
            "--device {}: the device cannot run a kernel ({cause}). For CUDA: the NVIDIA \
             driver's libcuda and the toolkit's libnvrtc must be on LD_LIBRARY_PATH and CUDA_PATH \
             must name the toolkit (default /usr/local/cuda); see docs/GPU.md. `--device cpu` \
             runs the CPU half.",
            args.device
        );
        c.failures.push(message.clone());
        c.save()?;
        return Err(message.into());
    }
    parity_stage(&mut c, &dev, &fixtures)?;
    diffusion_stage(&mut c, &dev, &fixtures)?;
    training_stage(&mut c)?;
    throughput_stage(&mut c)?;
    c.report["complete"] = json!(true);
    c.save()?;
    eprintln!(
        "wrote {} ({:.0} s)",
        args.out.display(),
        c.started.elapsed().as_secs_f64()
    );
    if c.failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} check(s) failed: {}",
            c.failures.len(),
            c.failures.join("; ")
        )
        .into())
    }
}

fn parity_stage(c: &mut Check<'_>, dev: &Device, fixtures: &Path) -> Result {
    eprintln!(
        "== parity on {} against the CPU and transformers",
        c.args.device
    );
    let names: Vec<Fixture> = if c.args.parity.is_empty() {
        Fixture::ALL.to_vec()
    } else {
        c.args.parity.clone()
    };
    c.report["parity"] = stage("parity", &mut c.failures, |f| {
        parity::parity(dev, fixtures, &names, f).map(Value::from)
    });
    c.save()
}

fn diffusion_stage(c: &mut Check<'_>, dev: &Device, fixtures: &Path) -> Result {
    eprintln!(
        "== diffusion on {}: the tiny pipeline against the CPU and diffusers, an SD2-layout UNet step",
        c.args.device
    );
    let quick = c.args.quick;
    c.report["diffusion"] = stage("diffusion", &mut c.failures, |f| {
        diffusion::diffusion(dev, fixtures, quick, f)
    });
    c.save()
}

/// Each model trains in a child process with a time limit, so that a stuck kernel cannot take
/// the throughput stage down with it. The loss must fall; the time is reported, not judged.
fn training_stage(c: &mut Check<'_>) -> Result {
    eprintln!("== 20 training steps on {}", c.args.device);
    let mut trained = Vec::new();
    for model in [cli::TrainModel::Gpt2, cli::TrainModel::MosaicBert] {
        let limit = c.limit(3.0, (5.0, 150.0));
        let mut cmd = Command::new(&c.exe);
        cmd.args(["train", "--device", &c.args.device, "--model", model.name()]);
        // Training checks correctness, not speed: the fewest autotune candidates, so the first
        // step compiles as few kernels as it can (on lavapipe, the full-size MosaicBERT's first
        // step takes 180 s of compilation and tuning; the later ones 5.5 s).
        cmd.env("CUBECL_AUTOTUNE_LEVEL", "minimal");
        if c.args.quick {
            cmd.arg("--quick");
        }
        let t = Instant::now();
        let v = run_child(cmd, c.scratch.path(), limit)?;
        let mut v = match v["losses"].as_array() {
            Some(l) => {
                let losses: Vec<f64> = l.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect();
                train::record(model.name(), &losses, &mut c.failures)
            }
            None => {
                eprintln!("   {}: {}", model.name(), summary(&v));
                c.failures
                    .push(format!("training {}: {}", model.name(), summary(&v)));
                // A killed child's last progress lines say in which step and phase it was.
                json!({"model": model.name(), "pass": false, "error": v["error"], "stderr": v["stderr"]})
            }
        };
        v["wall_s"] = json!(t.elapsed().as_secs_f64());
        trained.push(v);
    }
    c.report["training"] = json!(trained);
    c.save()
}

/// The throughput runs to make: what `--runs` names, or by default everything with fusion and
/// the default-autotune runs without it when there is a binary for that.
fn planned_runs(args: &CheckArgs) -> Vec<Run> {
    if !args.runs.is_empty() {
        return args.runs.clone();
    }
    let cpu = args.device == "cpu";
    let dtypes: &[Dtype] = if cpu {
        &[Dtype::F32]
    } else {
        &[Dtype::F32, Dtype::Bf16]
    };
    let mut runs = Vec::new();
    for fusion in [true, false] {
        for model in [ThroughputModel::Gpt2, ThroughputModel::Bert] {
            for &dtype in dtypes {
                for minimal_autotune in [false, true] {
                    if cpu && minimal_autotune {
                        continue; // CubeCL autotuning does not apply to flex
                    }
                    if fusion || (args.no_fusion_binary.is_some() && !minimal_autotune) {
                        runs.push(Run {
                            model,
                            dtype,
                            minimal_autotune,
                            fusion,
                        });
                    }
                }
            }
        }
    }
    runs
}

fn throughput_stage(c: &mut Check<'_>) -> Result {
    eprintln!("== training-step throughput");
    let peaks = c.args.gpu_name.as_deref().and_then(measure::peak_tflops);
    let runs = planned_runs(c.args);
    c.report["throughput"] = json!([]);
    for (i, run) in runs.iter().enumerate() {
        let (model, dtype) = (run.model.name(), run.dtype.name());
        let autotune = if run.minimal_autotune {
            "minimal"
        } else {
            "default"
        };
        let limit = c.limit((runs.len() - i) as f64, (5.0, f64::INFINITY));
        let program = match (&c.args.no_fusion_binary, run.fusion) {
            (Some(p), false) => p.clone(),
            _ => c.exe.clone(),
        };
        let mut cmd = Command::new(&program);
        cmd.args([
            "measure",
            "--device",
            &c.args.device,
            "--model",
            model,
            "--dtype",
            dtype,
        ]);
        if c.args.quick {
            cmd.arg("--quick");
        }
        // Explicit either way, so that a CUBECL_AUTOTUNE_LEVEL in the caller's environment does
        // not leak into the "default" (balanced) measurement.
        let level = if run.minimal_autotune {
            "minimal"
        } else {
            "balanced"
        };
        cmd.env("CUBECL_AUTOTUNE_LEVEL", level);
        let t = Instant::now();
        let mut v = run_child(cmd, c.scratch.path(), limit)?;
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
            let peak = if run.dtype == Dtype::Bf16 {
                bf16_peak
            } else {
                f32_peak
            };
            v["peak_tflops"] = json!(peak);
            v["mfu"] = json!(achieved / peak);
        }
        eprintln!(
            "   {model} {dtype} autotune {autotune}{}: {}",
            if run.fusion { "" } else { ", no fusion" },
            summary(&v)
        );
        if let Some(list) = c.report["throughput"].as_array_mut() {
            list.push(v);
        }
        c.save()?;
    }
    Ok(())
}

pub(crate) fn random_ids(
    b: usize,
    l: usize,
    vocab: usize,
    seed: u64,
    device: &Device,
) -> Tensor<2, Int> {
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

pub(crate) fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_or(f64::NAN, |v| v[0])
}
