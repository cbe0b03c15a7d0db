//! `kiln scaling …` end to end: the machine-readable contract, the paper's examples, and errors.
//!
//! Expected values come from `crates/kiln-scaling-laws/tests/fixtures/reference.json`, written by
//! the fixture script from the paper's own code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn ok_json(args: &[&str]) -> Value {
    let out = kiln(args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn scaling_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-scaling-laws")
}

fn fixture() -> Value {
    let text =
        std::fs::read_to_string(scaling_dir().join("tests/fixtures/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn py_sci3(x: f64) -> String {
    let s = format!("{x:.3e}");
    let (m, e) = s.split_once('e').unwrap();
    let e: i32 = e.parse().unwrap();
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("missing number `{key}` in {v}"))
}

#[test]
fn optimal_json_contract_and_readme_example() {
    let fx = fixture();
    let published = &fx["published"]["compute_optimal"];
    let v = ok_json(&[
        "scaling",
        "optimal",
        "--loss",
        "1.947",
        "--inference-tokens",
        "2e12",
        "--json",
    ]);
    for key in [
        "n_params",
        "train_tokens",
        "flops",
        "chinchilla_n_params",
        "chinchilla_train_tokens",
        "chinchilla_flops",
    ] {
        assert!(v[key].is_number(), "contract key {key} missing: {v}");
    }
    assert_eq!(
        py_sci3(num(&v, "n_params")),
        published["n_params"].as_str().unwrap()
    );
    assert_eq!(
        py_sci3(num(&v, "train_tokens")),
        published["train_tokens"].as_str().unwrap()
    );
    assert_eq!(
        format!(
            "{:.2}",
            100.0 * num(&v, "flops") / num(&v, "chinchilla_flops")
        ),
        published["flops_pct"].as_str().unwrap()
    );
    // `flops` is lifetime FLOPs: 6·N·D + 2·N·T.
    let lifetime =
        6.0 * num(&v, "n_params") * num(&v, "train_tokens") + 2.0 * num(&v, "n_params") * 2e12;
    assert!((num(&v, "flops") / lifetime - 1.0).abs() < 1e-12);

    // Suffixes parse to the same answer.
    let w = ok_json(&[
        "scaling",
        "optimal",
        "--loss",
        "1.947",
        "--inference-tokens",
        "2T",
        "--json",
    ]);
    assert_eq!(v["n_params"], w["n_params"]);
}

#[test]
fn optimal_matches_the_reference_code_across_cases() {
    let fx = fixture();
    for case in fx["inference_optima"].as_array().unwrap().iter().step_by(7) {
        let loss = num(case, "loss").to_string();
        let t = num(case, "inference_tokens").to_string();
        let law = case["law"].as_str().unwrap();
        let v = ok_json(&[
            "scaling",
            "optimal",
            "--loss",
            &loss,
            "--inference-tokens",
            &t,
            "--law",
            law,
            "--json",
        ]);
        for key in [
            "n_params",
            "train_tokens",
            "flops",
            "chinchilla_n_params",
            "chinchilla_train_tokens",
            "chinchilla_flops",
        ] {
            let (got, want) = (num(&v, key), num(case, key));
            assert!(
                (got / want - 1.0).abs() < 1e-7,
                "{law} {loss} {t} {key}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn cost_reproduces_the_readme_example() {
    let fx = fixture();
    let case = &fx["cost_optima"][0];
    assert_eq!(case["scenario"]["name"], "readme");
    let v = ok_json(&[
        "scaling",
        "cost",
        "--loss",
        "1.947",
        "--requests",
        "1e10",
        "--input-tokens",
        "1000",
        "--output-tokens",
        "250",
        "--train-gpu",
        "a100-80gb",
        "--train-price",
        "1.40",
        "--inference-gpu",
        "a100-40gb",
        "--inference-precision",
        "int8",
        "--inference-price",
        "0.60",
        "--train-mfu",
        "0.5",
        "--prefill-mfu",
        "0.4",
        "--decode-mfu",
        "0.2",
        "--json",
    ]);
    let opt = &v["optimal"];
    assert!((num(opt, "n_params") / num(case, "n_params") - 1.0).abs() < 1e-7);
    assert!((num(&opt["cost"], "total") / num(&case["cost"], "total") - 1.0).abs() < 1e-7);
    assert!(
        (num(&v["baseline"]["cost"], "total") / num(&case["chinchilla_cost"], "total") - 1.0).abs()
            < 1e-12
    );
    let published = &fx["published"]["cost_optimal"];
    assert_eq!(
        format!("{:.2}", 100.0 * num(&v, "cost_ratio")),
        published["cost_pct"].as_str().unwrap()
    );
}

#[test]
fn cost_of_a_30b_model_as_the_reference_runs_it() {
    let fx = fixture();
    let case = &fx["cost_of_model"];
    let v = ok_json(&[
        "scaling",
        "cost",
        "--params",
        "30B",
        "--requests",
        "1e9",
        "--input-tokens",
        "500",
        "--output-tokens",
        "100",
        "--train-gpu",
        "h100",
        "--inference-gpu",
        "a100-40gb",
        "--inference-precision",
        "int8",
        "--json",
    ]);
    let base = &v["baseline"];
    assert_eq!(v["baseline_kind"], "chinchilla");
    for (key, want) in [
        ("train", "train"),
        ("prefill", "prefill"),
        ("decode", "decode"),
        ("total", "total"),
    ] {
        let (got, want) = (num(&base["cost"], key), num(&case["cost"], want));
        assert!((got / want - 1.0).abs() < 1e-12, "{key}: {got} vs {want}");
    }
    assert!((num(base, "flops") / num(case, "total_flops") - 1.0).abs() < 1e-12);
}

#[test]
fn fit_json_reports_the_law_itself_and_feeds_back_as_a_law() {
    let fx = fixture();
    let csv = scaling_dir().join("tests/fixtures/synthetic_runs.csv");
    let v = ok_json(&["scaling", "fit", "--csv", csv.to_str().unwrap(), "--json"]);
    for key in ["e", "a", "b", "alpha", "beta", "objective"] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
    let scipy = &fx["fit_synthetic"];
    // E, A, B themselves, not their logarithms.
    assert!((num(&v, "e") / num(&scipy["law"], "e") - 1.0).abs() < 1e-4);
    assert!((num(&v, "a") / num(&scipy["law"], "a") - 1.0).abs() < 1e-2);
    assert!(num(&v, "objective") <= num(scipy, "objective") * (1.0 + 1e-9));

    let dir = tempfile::tempdir().unwrap();
    let law_file = dir.path().join("law.json");
    std::fs::write(&law_file, serde_json::to_vec(&v).unwrap()).unwrap();
    let opt = ok_json(&[
        "scaling",
        "optimal",
        "--loss",
        "2.3",
        "--inference-tokens",
        "1e12",
        "--law",
        law_file.to_str().unwrap(),
        "--json",
    ]);
    assert!((num(&opt["law"], "alpha") - num(&v, "alpha")).abs() < 1e-15);
}

#[test]
fn fit_reads_named_columns() {
    let csv = scaling_dir().join("data/sardana2024_runs.csv");
    let v = ok_json(&[
        "scaling",
        "fit",
        "--csv",
        csv.to_str().unwrap(),
        "--threads",
        "2",
        "--json",
    ]);
    assert_eq!(v["runs"], 47);
    assert_eq!(v["starts"], 4500);
}

#[test]
fn sweep_writes_an_svg_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sweep.svg");
    let out = kiln(&[
        "scaling",
        "sweep",
        "--loss",
        "2.0",
        "--points",
        "6",
        "--output",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("inference tokens") && text.contains("plot written to"),
        "{text}"
    );
    let body = std::fs::read_to_string(&svg).unwrap();
    assert!(body.starts_with("<svg") && body.contains("inference-aware optimum"));

    let v = ok_json(&[
        "scaling",
        "sweep",
        "--params",
        "70B",
        "--points",
        "4",
        "--no-plot",
        "--json",
    ]);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    let n: Vec<f64> = points.iter().map(|p| num(p, "n_params")).collect();
    assert!(
        n.windows(2).all(|w| w[1] < w[0]),
        "more demand, smaller model: {n:?}"
    );
}

#[test]
fn csv_output_has_a_header_and_a_row() {
    let out = kiln(&[
        "scaling", "loss", "--params", "70B", "--tokens", "1T", "--csv",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("law.name,law.e,law.a,law.b,law.alpha,law.beta,n_params,train_tokens"),
        "{text}"
    );
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    // Below the irreducible loss.
    let out = kiln(&["scaling", "optimal", "--loss", "1.5"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("irreducible loss E = 1.69"), "{err}");

    // A malformed CSV names the line.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("runs.csv");
    std::fs::write(&csv, "params,tokens,loss\n1e8,1e9,3.1\n2e8,lots,3.0\n").unwrap();
    let out = kiln(&["scaling", "fit", "--csv", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("`lots` is not a number"),
        "{err}"
    );

    // An empty CSV.
    std::fs::write(&csv, "params,tokens,loss\n").unwrap();
    let err =
        String::from_utf8_lossy(&kiln(&["scaling", "fit", "--csv", csv.to_str().unwrap()]).stderr)
            .to_string();
    assert!(err.contains("no runs found"), "{err}");

    // MFU outside (0, 1].
    let out = kiln(&["scaling", "cost", "--loss", "2.0", "--decode-mfu", "1.5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("decode MFU must lie in (0, 1]"));

    // FP8 on an A100.
    let out = kiln(&[
        "scaling",
        "cost",
        "--loss",
        "2.0",
        "--inference-gpu",
        "a100-40gb",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no fp8"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A number clap cannot read is a usage error (exit 2) with a hint.
    let out = kiln(&["scaling", "loss", "--params", "70X", "--tokens", "1T"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown suffix"));

    // Unknown law.
    let out = kiln(&["scaling", "optimal", "--loss", "2.0", "--law", "kaplan"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a preset"));

    // Missing target.
    assert_eq!(kiln(&["scaling", "optimal"]).status.code(), Some(2));
}

#[test]
fn help_explains_units_and_defaults() {
    let out = kiln(&["scaling", "cost", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "dollars per GPU-hour",
        "[default: 0.01]",
        "tokens per request",
        "FLOP/s",
    ] {
        assert!(help.contains(needle), "`{needle}` not in help:\n{help}");
    }
    let help = String::from_utf8(kiln(&["scaling", "optimal", "--help"]).stdout).unwrap();
    assert!(
        help.contains("nats per token") && help.contains("inference demand in tokens"),
        "{help}"
    );
}

/// Review findings: `--params 1e300`, `--loss 1e300` and prices near f64's range printed `null` or
/// 0 in JSON with exit 0; `--threads` took any number; the sweep could overwrite its law file.
#[test]
fn absurd_inputs_are_errors_naming_them() {
    let err = |args: &[&str]| {
        let o = kiln(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = err(&[
        "scaling", "loss", "--params", "1e300", "--tokens", "1e12", "--json",
    ]);
    assert!(
        e.contains("n_params 1e300") && e.contains("64-bit float"),
        "{e}"
    );
    let e = err(&["scaling", "optimal", "--loss", "1e300", "--json"]);
    assert!(e.contains("loss 1e300"), "{e}");
    let e = err(&[
        "scaling",
        "cost",
        "--loss",
        "2.0",
        "--requests",
        "1e10",
        "--input-tokens",
        "100",
        "--output-tokens",
        "100",
        "--train-price",
        "1e307",
        "--json",
    ]);
    assert!(
        e.contains("`baseline.cost.train` is not a finite number") && e.contains("1e307"),
        "{e}"
    );
    for args in [
        &["scaling", "fit", "--csv", "x.csv", "--threads", "5000"][..],
        &["scaling", "fit", "--csv", "x.csv", "--starts", "0"][..],
        &["merge", "x.yml", "out", "--threads", "0"][..],
    ] {
        assert_eq!(kiln(args).status.code(), Some(2), "{args:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let law = dir.path().join("law.json");
    std::fs::write(
        &law,
        r#"{"e": 1.69, "a": 406.4, "b": 410.7, "alpha": 0.336, "beta": 0.283}"#,
    )
    .unwrap();
    let l = law.to_str().unwrap();
    let e = err(&[
        "scaling", "sweep", "--loss", "2.0", "--law", l, "--output", l,
    ]);
    assert!(e.contains("is the law file"), "{e}");
    assert!(std::fs::read_to_string(&law).unwrap().starts_with('{'));
}

/// A fit's cost is visible: `--starts` picks a subset of the grid, and without a terminal a
/// progress line is printed every 10%.
#[test]
fn fit_starts_are_configurable_and_progress_is_reported() {
    let csv = scaling_dir().join("data/sardana2024_runs.csv");
    let out = kiln(&[
        "scaling",
        "fit",
        "--csv",
        csv.to_str().unwrap(),
        "--starts",
        "50",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["starts"], 50);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("50/50 starts"), "{stderr}");
}
