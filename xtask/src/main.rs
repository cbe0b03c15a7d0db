//! kiln's project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! xtask is a plain Rust binary in the workspace instead of shell scripts or a Makefile: it runs
//! wherever cargo runs, and the pipelines it drives use the kiln crates directly.
//!
//! ```text
//! cargo xtask ci [--no-test]                 fmt check, clippy -D warnings, tests, docs, quick pipelines
//! cargo xtask repro scaling [--quick] [--out DIR]
//!                                            recompute "Beyond Chinchilla-Optimal" into docs/reproductions/
//! cargo xtask repro masking [--quick] [--out DIR]
//!                                            dynamic masking-rate schedules (Ankner et al.) at small scale
//! cargo xtask repro lora [--quick] [--out DIR]
//!                                            "LoRA Learns Less and Forgets Less" (Biderman et al.) at small scale
//! cargo xtask repro sfa [--quick] [--out DIR]
//!                                            "Soup to go" (SFA vs L2/EWC/replay/merges, Kleiman et al.) at small scale
//! cargo xtask repro distill [--quick] [--out DIR]
//!                                            KD for sequences of related runs (MosaicML) at small scale
//! cargo xtask repro difficulty [--quick] [--out DIR]
//!                                            example-difficulty consistency and fingerprints (Kwok et al.) at small scale
//! cargo xtask repro commoncanvas [--quick] [--out DIR]
//!                                            CommonCanvas's recipe and speed switches on a tiny text-to-image UNet
//! cargo xtask gpu-check build|cpu|lavapipe offline CUDA build of kiln-gpu-check (docs/GPU.md) / its CPU half / on lavapipe
//! cargo xtask bench scaling                  criterion benches + the scipy anchor → docs/BENCHMARKS.md
//! cargo xtask bench train                   one tiny-BERT training step: burn flex vs PyTorch CPU
//! cargo xtask bench merge                    kiln merge vs mergekit on GPT-2-medium-sized checkpoints
//! cargo xtask bench models                   burn flex vs PyTorch CPU tokens/s (GPT-2 small, BERT-base)
//! cargo xtask bench continual                per-step overhead of SFA/EMA/L2/EWC/replay on GPT-2 small
//! cargo xtask bench distill                  a KD step (live teacher, cached top-k) vs a plain step on GPT-2 small
//! cargo xtask bench scoring                  the cost of each family of difficulty scores on GPT-2 small and a CNN
//! cargo xtask bench diffusion                SD2-base's UNet training and sampling step, kiln vs diffusers (CPU)
//! cargo xtask profile train|models [--before REV]
//!                                            where a CPU step's time goes (perf; torch.profiler) → docs/BENCHMARKS.md
//! cargo xtask flex-patch test|bench          a burn-flex patch prepared for upstream: tested / measured
//! ```

mod bench;
mod bench_continual;
mod bench_data;
mod bench_diffusion;
mod bench_distill;
mod bench_lora;
mod bench_merge;
mod bench_models;
mod bench_scoring;
mod bench_train;
mod ci;
mod flex_patch;
mod gpu_check;
mod profile;
mod repro_biomedlm_mc;
mod repro_commoncanvas;
mod repro_difficulty;
mod repro_distill;
mod repro_lora;
mod repro_masking;
mod repro_scaling;
mod repro_sfa;
mod repro_upsampling;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// xtask's result: any error, printed by `main`.
pub(crate) type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci [--no-test]                    fmt --check, clippy -D warnings, cargo test --workspace, docs with
                                    -D warnings, and every pipeline in --quick mode
  repro scaling [--quick] [--out DIR]
                                    recompute the worked examples, demand sweep and fits of Sardana et al.
                                    (ICML 2024) into DIR (default docs/reproductions): scaling.md + scaling-sweep.svg
  repro masking [--quick] [--out DIR] [--device cpu|cuda[:N]] [--steps N] [--finetune-steps N] [--seeds A,B,C]
                                    pretrain a small MosaicBERT-style encoder on the built-in corpus with
                                    constant 15%, constant 30% and linear 30%->15% masking (3 seeds × 1200
                                    steps, about a quarter of an hour on 2 cores; --quick:
                                    1 seed, 120 steps), evaluate MLM loss at 15% and an acceptability probe
                                    → DIR (default docs/reproductions): masking.md + masking-curves.svg
  repro lora [--quick] [--out DIR] [--device cpu|cuda[:N]] [--pretrain-steps N] [--finetune-steps N]
                                    pretrain a small GPT-2 on the built-in prose (10% of its sequences code and
                                    arithmetic), fine-tune it on code and arithmetic in full and with LoRA (r 4/16/64 × attention/all-linear, α = 2r),
                                    each over a 4-point LR sweep, plus full FT with weight decay or dropout;
                                    learning (target loss), forgetting (prose loss), rank@0.9 of the full
                                    fine-tune's ΔW over training → DIR (default docs/reproductions): lora.md +
                                    4 SVGs (--quick: code only, 2 LoRA configurations, 1 LR each, 40 steps)
  repro sfa [--quick] [--out DIR] [--device cpu|cuda[:N]] [--seeds N] [--image-model mlp|resnet|vit]
                                    continual learning on two 3-task sequences — UCI digits (original →
                                    rotated 90° → permuted pixels) on a kiln-models classifier, and a small
                                    GPT-2 pretrained on prose then fine-tuned on code → arithmetic → legal
                                    clauses — with plain fine-tuning, SFA (β × p grid), L2, EWC, replay,
                                    TA/TIES merges (independent and sequential), WiSE-FT and a multi-task
                                    bound, over N seeds (default 3; λs and coefficients chosen on validation
                                    data) → DIR (default docs/reproductions): sfa.md + heatmaps, β×p grids and
                                    a retention plot (--quick: 1 seed, 2 SFA settings, tiny runs)
  repro distill [--quick] [--out DIR] [--device cpu|cuda[:N]]
                                    a learning-rate sweep of small GPT-2 runs on the built-in prose, each run
                                    after the first trained independently and distilled from the previous
                                    one (live teacher, cached top-32/top-128, early 25% window, sampled
                                    ensemble): steps and training time to the independent run's loss, KD
                                    overhead, whole-sequence cost → DIR (default docs/reproductions):
                                    distill.md + distill-curves.svg (--quick: 2 tiny runs)
  repro difficulty [--quick] [--out DIR] [--seeds N] [--device cpu|cuda[:N]]
                                    MLP, ResNet and ViT × N seeds (default 8) on the UCI digits with
                                    every example scored at every presentation: split-half consistency
                                    and its rise with averaged runs, score correlations and PCA,
                                    agreement between architectures, permutation-test fingerprints
                                    and a held-out-run classifier → DIR (default docs/reproductions):
                                    difficulty.md + difficulty-consistency.svg +
                                    difficulty-sensitive.svg (--quick: 4 seeds, 2 epochs)
  repro commoncanvas [--quick] [--out DIR] [--steps N] [--device cpu|cuda[:N]]
                                    CommonCanvas's recipe on a tiny pixel-space text-to-image UNet
                                    trained from scratch on generated captioned shapes: each speed
                                    switch's step time (precomputed text embeddings in a mapped
                                    shard, bf16 norms, fused attention, scheduled EMA; 3 repeats),
                                    sample grids per stage and from the EMA, prompt adherence read
                                    from the pixels → DIR (default docs/reproductions):
                                    commoncanvas.md + commoncanvas-samples.png (default 1500 steps;
                                    --quick: 6 steps, 3 prompts)
  repro upsampling [--quick] [--out DIR] [--seeds N] [--steps N] [--device cpu|cuda[:N]]
                                    domain upsampling at the end of pretraining (Blakeney et al. 2024): a
                                    small GPT-2 pretrained on prose plus three small domains (code,
                                    arithmetic, sorted lists), branched from its checkpoints at 1 − f to
                                    upsample the small domains over the last f ∈ {5, 10, 20, 30}% and to
                                    drop one domain at f = 20%; held-out loss per domain, benchmarks,
                                    repeat accounting, ablation cost (default 3 seeds × 1000 steps;
                                    --quick: 1 seed, 40 tiny steps) → DIR (default docs/reproductions):
                                    upsampling.md + upsampling.svg
  repro biomedlm-mc [--quick] [--out DIR] [--device cpu|cuda[:N]]
                                    BioMedLM's multiple-choice pipeline at small scale: a small GPT-2
                                    pretrained on the built-in corpora, arithmetic questions in MedMCQA's
                                    layout, zero-shot lm-eval medmcqa scoring vs the multiple-choice head
                                    fine-tuned in full and with LoRA (r 16), accuracy by subject and
                                    choice_type with bootstrap intervals → DIR (default docs/reproductions):
                                    biomedlm-mc.md (--quick: tiny model, 64 questions)
  gpu-check build                   build kiln-gpu-check for CUDA without network (DOCS_RS=1, NVRTC kernels,
                                    LLVM symbols stubbed; see docs/GPU.md) into gpu-check/, with fusion
                                    and without (kiln-gpu-check-no-fusion, for --no-fusion-binary)
  gpu-check cpu                     run kiln-gpu-check's checks on the CPU (--device cpu --quick)
  gpu-check lavapipe                the same on burn's GPU kernels through Mesa's Vulkan CPU driver
                                    (--features wgpu, --device wgpu:cpu; needs mesa-vulkan-drivers)
  bench scaling                     run the criterion benches of kiln-scaling-laws and the scipy anchor,
                                    then record both in docs/BENCHMARKS.md
  bench lora [files|train]          files: kiln lora extract and spectrum on a GPT-2-medium-shaped f32 pair
                                    beside the same SVDs in PyTorch (wall time, peak RSS); train: a GPT-2-small
                                    LoRA step vs full fine-tuning beside PyTorch + PEFT → docs/BENCHMARKS.md
  bench data                        the curriculum and mixture samplers' throughput with 4/16/64 domains
                                    against a training step, and multiple-choice scoring (kiln eval mc's)
                                    beside lm-evaluation-harness on a GPT-2-small layout → docs/BENCHMARKS.md
  bench models                      tokens/s of GPT-2-small and BERT-base on the CPU (forward, forward+backward),
                                    beside PyTorch → docs/BENCHMARKS.md
  bench continual                   the per-step time and memory of SFA, EMA, L2, EWC and replay beside plain
                                    fine-tuning on the GPT-2-small layout, through the trainer (3 alternating
                                    runs per method) → docs/BENCHMARKS.md
  bench diffusion                   SD2-base's UNet (random weights): a training step's forward + backward (batch
                                    1, 64×64 latent) and a guided sampling step, and diffusers' tiny test UNet's
                                    sampling step, beside diffusers (needs torch + diffusers) → docs/BENCHMARKS.md
  bench distill                     a GPT-2-small training step plain, with a live teacher of equal size and with
                                    cached top-32/top-128 logits (3 alternating runs per mode), cache bytes per
                                    token → docs/BENCHMARKS.md
  bench scoring                     an image-classification step on the digits (MLP, small ResNet) plain and with
                                    kiln-scoring's TrainingScores (3 alternating runs) → docs/BENCHMARKS.md
  bench train                       one training step of a tiny BERT (forward, MLM loss, backward, clipping,
                                    AdamW) on the CPU, beside PyTorch → docs/BENCHMARKS.md
  profile train|models [--before REV]
                                    where the CPU time of those benches goes, by category (matmul, element-wise,
                                    memory, RNG, threading): perf for kiln (needs `perf`), torch.profiler for
                                    PyTorch; --before also profiles git revision REV (a worktree under the
                                    target directory) → docs/BENCHMARKS.md
  flex-patch test|bench             patches/burn-flex-0.22.1-parallel-elementwise.patch (parallel element-wise
                                    ops in burn's CPU backend, prepared for upstream, not used by kiln) applied to a
                                    copy of burn-flex: `test` runs burn-flex's and kiln's tests with it, `bench`
                                    the training benches with and without it beside PyTorch → docs/BENCHMARKS.md
  bench merge                       merge three ~0.7 GB bf16 GPT-2-medium checkpoints (ties, linear) with
                                    kiln and, if installed, mergekit; time, GB/s, peak RSS → docs/BENCHMARKS.md
";

fn main() -> ExitCode {
    // The reproductions train in this process: glibc malloc tuned as kiln's binaries do.
    kiln_models::cpu::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["ci", rest @ ..] => ci::command(rest),
        ["gpu-check", rest @ ..] => gpu_check::command(rest),
        ["repro", "scaling", rest @ ..] => repro_scaling::command(rest),
        ["repro", "masking", rest @ ..] => repro_masking::command(rest),
        ["repro", "lora", rest @ ..] => repro_lora::command(rest),
        ["repro", "sfa", rest @ ..] => repro_sfa::command(rest),
        ["repro", "difficulty", rest @ ..] => repro_difficulty::command(rest),
        ["repro", "commoncanvas", rest @ ..] => repro_commoncanvas::command(rest),
        ["repro", "distill", rest @ ..] => repro_distill::command(rest),
        ["repro", "upsampling", rest @ ..] => repro_upsampling::command(rest),
        ["repro", "biomedlm-mc", rest @ ..] => repro_biomedlm_mc::command(rest),
        ["bench", "scaling", rest @ ..] => bench::scaling(rest),
        ["bench", "merge", rest @ ..] => bench_merge::merge(rest),
        ["bench", "lora", rest @ ..] => bench_lora::lora(rest),
        ["bench", "scoring", rest @ ..] => bench_scoring::scoring(rest),
        ["bench", "models", rest @ ..] => bench_models::models(rest),
        ["bench", "train", rest @ ..] => bench_train::train(rest),
        ["bench", "continual", rest @ ..] => bench_continual::continual(rest),
        ["bench", "distill", rest @ ..] => bench_distill::distill(rest),
        ["bench", "diffusion", rest @ ..] => bench_diffusion::diffusion(rest),
        ["bench", "data", rest @ ..] => bench_data::data(rest),
        ["profile", rest @ ..] => profile::command(rest),
        ["flex-patch", rest @ ..] => flex_patch::command(rest),
        ["help" | "--help" | "-h"] | [] => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(format!("unknown command `{}`\n\n{USAGE}", args.join(" ")).into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    // The run-time value first: `cargo xtask` (`cargo run -p xtask`) sets it for the process.
    // The compile-time one can name another checkout: with one CARGO_TARGET_DIR shared by
    // checkouts at different paths, cargo may reuse an xtask binary built in another one.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

/// Runs a command in the workspace root, echoing it; fails if it fails.
pub(crate) fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result {
    let shown: Vec<String> = envs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(std::iter::once(program.to_owned()))
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect();
    eprintln!("$ {}", shown.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", shown.join(" ")).into())
    }
}

/// The device a pipeline trains on: `--device NAME`, else `KILN_DEVICE`, else the CPU (burn's
/// flex backend).
pub(crate) fn pipeline_device(name: Option<&str>) -> Result<kiln_train::burn::tensor::Device> {
    Ok(match name {
        Some(name) => kiln_train::device_from_name(name)?,
        None => kiln_train::device_from_env()?,
    })
}

/// The arguments that shape a reproduction's results, for its report: all but `--out DIR` and
/// `--device NAME` (where it is written and what it ran on).
pub(crate) fn shown_args(args: &[&str]) -> String {
    let mut shown = Vec::new();
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if *a == "--out" || *a == "--device" {
            skip = true;
        } else {
            shown.push(*a);
        }
    }
    shown.join(" ")
}

/// Documents → one token stream (each document ended by `eos`) → sequences of `seq_len` tokens
/// (the last partial one dropped): the training data of the language-model reproductions.
pub(crate) fn pack(
    tokenizer: &kiln_data::tokenizer::Tokenizer,
    docs: &[String],
    eos: u32,
    seq_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut stream = Vec::new();
    for d in docs {
        stream.extend(tokenizer.encode(d, false)?);
        stream.push(eos);
    }
    Ok(stream.chunks_exact(seq_len).map(<[u32]>::to_vec).collect())
}

/// A label as a file-name part: ASCII letters and digits, the rest `_`.
pub(crate) fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Writes a file atomically (kiln-checkpoint's temp + fsync + rename + directory fsync), creating
/// its directory first.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(kiln_checkpoint::write_atomic(path, bytes)?)
}
