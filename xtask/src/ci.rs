//! `cargo xtask ci`: every check CI runs, in the order that fails fastest.

use crate::{Result, run};

pub(crate) fn run_ci(no_test: bool) -> Result {
    run("cargo", &["fmt", "--all", "--", "--check"], &[])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    if !no_test {
        // README's test command.
        run("cargo", &["test", "--workspace"], &[])?;
    }
    run(
        "cargo",
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // The CUDA path type-checks offline with DOCS_RS=1 (no LLVM download or link; burn guide
    // §1.3), and the wgpu path with it. `--all-features` elsewhere would pull the CUDA build in,
    // which needs the network.
    run(
        "cargo",
        &[
            "check",
            "-p",
            "kiln-cli",
            "-p",
            "kiln-train",
            "-p",
            "kiln-gpu-check",
            "--features",
            "kiln-cli/cuda,kiln-train/cuda,kiln-gpu-check/cuda-offline,kiln-cli/wgpu,kiln-gpu-check/wgpu",
        ],
        &[("DOCS_RS", "1")],
    )?;
    // kiln-train as the lean hub plug-in crates depend on: without its model tasks.
    run(
        "cargo",
        &[
            "clippy",
            "-p",
            "kiln-train",
            "--no-default-features",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // Pipelines in --quick mode, writing outside the repository.
    let out = std::env::temp_dir().join(format!("kiln-ci-repro-{}", std::process::id()));
    let out_str = out.to_str().ok_or("temporary directory is not UTF-8")?;
    run(
        "cargo",
        &["xtask", "repro", "scaling", "--quick", "--out", out_str],
        &[],
    )?;
    run(
        "cargo",
        &["xtask", "repro", "masking", "--quick", "--out", out_str],
        &[],
    )?;
    run(
        "cargo",
        &["xtask", "repro", "lora", "--quick", "--out", out_str],
        &[],
    )?;
    run(
        "cargo",
        &["xtask", "repro", "sfa", "--quick", "--out", out_str],
        &[],
    )?;
    run(
        "cargo",
        &["xtask", "repro", "distill", "--quick", "--out", out_str],
        &[],
    )?;
    run(
        "cargo",
        &["xtask", "repro", "difficulty", "--quick", "--out", out_str],
        &[],
    )?;
    run(
        "cargo",
        &["xtask", "repro", "upsampling", "--quick", "--out", out_str],
        &[],
    )?;
    run(
        "cargo",
        &["xtask", "repro", "biomedlm-mc", "--quick", "--out", out_str],
        &[],
    )?;
    run(
        "cargo",
        &[
            "xtask",
            "repro",
            "commoncanvas",
            "--quick",
            "--out",
            out_str,
        ],
        &[],
    )?;
    let _ = std::fs::remove_dir_all(&out);
    eprintln!("xtask ci: all checks passed");
    Ok(())
}

pub(crate) fn command(args: &[&str]) -> Result {
    match args {
        [] => run_ci(false),
        ["--no-test"] => run_ci(true),
        _ => Err(
            format!("unknown arguments to `ci`: {args:?} (expected nothing or --no-test)").into(),
        ),
    }
}
