//! The CPU half of the GPU check: the same binary with `--device cpu --quick` passes its parity
//! and training checks and writes a complete report.

use std::process::Command;

#[test]
fn cpu_run_passes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../kiln-models/tests/fixtures");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-gpu-check"))
        .args([
            "--device",
            "cpu",
            "--quick",
            "--child-limit-s",
            "1800",
            "--fixtures",
            fixtures,
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    // CI's mode: fixed work, and limits that only stop a hang; times are reported, not judged.
    assert_eq!(r["child_limit"], "1800 s each (hang guard)");
    assert!(
        r["training"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["wall_s"].as_f64().unwrap() > 0.0)
    );
    assert_eq!(r["parity"].as_array().unwrap().len(), 5);
    assert!(
        r["parity"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pass"] == true)
    );
    // The CPU computes f32 matmuls: it is closer to the f32 reference than to the TF32 one, and
    // the TF32 reference really differs (by what TF32 rounding does to these fixtures).
    for p in r["parity"].as_array().unwrap() {
        assert_eq!(p["pass_f32"], true, "{p}");
        assert_eq!(p["matmul_precision_closer_to"], "f32", "{p}");
        assert!(
            p["tf32_effect_on_reference"].as_f64().unwrap() > 1e-5,
            "{p}"
        );
    }
    assert!(
        r["training"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["pass"] == true)
    );
    let tp = r["throughput"].as_array().unwrap();
    assert_eq!(tp.len(), 2, "gpt2 and bert in f32 on the CPU");
    assert!(
        tp.iter().all(|t| t["tokens_per_s"].as_f64().unwrap() > 0.0),
        "{tp:?}"
    );
    // The first step (kernel compilation and autotuning on a GPU) is reported on its own and
    // is not one of the timed steps.
    assert!(
        tp.iter()
            .all(|t| t["first_step_s"].as_f64().unwrap() > 0.0 && t["warmup_steps"] == 1),
        "{tp:?}"
    );
    assert!(r["failures"].as_array().unwrap().is_empty());
    assert_eq!(r["complete"], true);
    // Bad arguments are errors, not panics.
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-gpu-check"))
        .args(["--device", "tpu"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("tpu"));
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-gpu-check"))
        .args(["--device", "cpu", "--budget-s", "soon"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--budget-s"));
}

/// `--no-fusion-binary` runs the `:nofusion` measurements through the other binary (here the same
/// CPU build, which has no fusion either) and says so in the report; asking for them without it
/// is an error.
#[test]
fn no_fusion_runs_go_through_the_other_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../kiln-models/tests/fixtures");
    let exe = env!("CARGO_BIN_EXE_kiln-gpu-check");
    let o = Command::new(exe)
        .args(["--device", "cpu", "--quick", "--parity", "gpt2_tied"])
        .args(["--runs", "gpt2:f32:default,gpt2:f32:default:nofusion"])
        .args(["--no-fusion-binary", exe, "--fixtures", fixtures, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let tp = r["throughput"].as_array().unwrap();
    assert_eq!(tp.len(), 2, "{tp:?}");
    assert!(tp.iter().all(|t| t["fusion"] == false), "{tp:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no fusion"));

    let o = Command::new(exe)
        .args(["--device", "cpu", "--runs", "bert:f32:default:nofusion"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--no-fusion-binary"));
    let o = Command::new(exe)
        .args(["--device", "cpu", "--no-fusion-binary", "/nonexistent/kgc"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a file"));
}
