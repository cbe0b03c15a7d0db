//! kiln-scaling-laws against the paper's own code.
//!
//! `tests/fixtures/reference.json` is written by `tests/fixtures/make_reference.py`, which imports
//! the official beyond-chinchilla code and scipy; see that script for the command that
//! regenerates it. Nothing here is typed by hand.

use std::path::PathBuf;

use kiln_scaling_laws::cost::{
    self, CostModel, Gpu, Hardware, InferenceDemand, Precision, Utilization,
};
use kiln_scaling_laws::fit::{self, FitOptions};
use kiln_scaling_laws::runs::{self, Columns};
use kiln_scaling_laws::{ChinchillaLaw, LawPreset, chinchilla, inference};
use serde_json::Value;

fn fixture() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("fixture field {key} missing in {v}"))
}

#[track_caller]
fn close(actual: f64, expected: f64, rel: f64, what: &str) {
    let err = ((actual - expected) / expected).abs();
    assert!(
        err <= rel,
        "{what}: kiln {actual:e}, reference {expected:e} (relative error {err:e} > {rel:e})"
    );
}

/// Python's `"{:.3e}"` (`2.418e+10`), the format the reference code prints.
fn py_sci3(x: f64) -> String {
    let s = format!("{x:.3e}");
    let (mantissa, exp) = s.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    format!(
        "{mantissa}e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

/// Python's `round(100 * x, 2)` as printed.
fn py_pct2(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

fn law_of(entry: &Value) -> ChinchillaLaw {
    let name = entry["law"].as_str().unwrap();
    name.parse::<LawPreset>().unwrap().law()
}

#[test]
fn presets_match_their_sources() {
    for entry in fixture()["closed_forms"].as_array().unwrap() {
        let law = law_of(entry);
        let c = &entry["coefficients"];
        for (got, key) in [
            (law.e, "e"),
            (law.a, "a"),
            (law.b, "b"),
            (law.alpha, "alpha"),
            (law.beta, "beta"),
        ] {
            close(got, f(c, key), 1e-15, key);
        }
    }
}

#[test]
fn closed_forms_match_the_reference() {
    for entry in fixture()["closed_forms"].as_array().unwrap() {
        let law = law_of(entry);
        let name = entry["law"].as_str().unwrap();
        for v in entry["compute_optimal"].as_array().unwrap() {
            let a = chinchilla::compute_optimal(&law, f(v, "flops")).unwrap();
            close(
                a.n_params,
                f(v, "n_params"),
                1e-12,
                &format!("{name} N_opt"),
            );
            close(
                a.train_tokens,
                f(v, "train_tokens"),
                1e-12,
                &format!("{name} D_opt"),
            );
            close(a.loss(&law), f(v, "loss"), 1e-13, &format!("{name} loss"));
        }
        for v in entry["for_loss"].as_array().unwrap() {
            let a = chinchilla::for_loss(&law, f(v, "loss")).unwrap();
            close(a.n_params, f(v, "n_params"), 1e-12, &format!("{name} N_ch"));
            close(
                a.train_tokens,
                f(v, "train_tokens"),
                1e-12,
                &format!("{name} D_ch"),
            );
            close(
                a.train_flops(),
                f(v, "train_flops"),
                1e-11,
                &format!("{name} C_ch"),
            );
        }
        for v in entry["tokens_for_params"].as_array().unwrap() {
            let d = chinchilla::optimal_tokens_for_params(&law, f(v, "n_params")).unwrap();
            close(d, f(v, "train_tokens"), 1e-11, &format!("{name} D for N"));
        }
        for v in entry["loss"].as_array().unwrap() {
            let l = law.loss(f(v, "n_params"), f(v, "train_tokens")).unwrap();
            close(l, f(v, "loss"), 1e-14, &format!("{name} L(N, D)"));
        }
        for v in entry["reach"].as_array().unwrap() {
            let d = chinchilla::tokens_to_reach_loss(&law, f(v, "n_params"), f(v, "loss")).unwrap();
            close(
                d,
                f(v, "tokens_to_reach"),
                1e-10,
                &format!("{name} tokens to reach"),
            );
            let n =
                chinchilla::params_to_reach_loss(&law, f(v, "train_tokens"), f(v, "loss")).unwrap();
            close(
                n,
                f(v, "params_to_reach"),
                1e-10,
                &format!("{name} params to reach"),
            );
        }
    }
}

#[test]
fn inference_optima_match_the_reference_newton() {
    let cases = fixture()["inference_optima"].as_array().unwrap().clone();
    assert!(
        cases.len() >= 100,
        "the fixture covers many (law, loss, demand) cases"
    );
    for v in &cases {
        let law = law_of(v);
        let (loss, t) = (f(v, "loss"), f(v, "inference_tokens"));
        let opt = inference::optimal_allocation(&law, loss, t).unwrap();
        let what = format!("{} loss {loss} T {t:e}", v["law"]);
        // scipy's Newton stops at a relative step of 1e-8.
        close(
            opt.optimal.n_params,
            f(v, "n_params"),
            1e-7,
            &format!("{what}: N"),
        );
        close(
            opt.optimal.train_tokens,
            f(v, "train_tokens"),
            1e-7,
            &format!("{what}: D"),
        );
        close(opt.flops(), f(v, "flops"), 1e-7, &format!("{what}: flops"));
        close(
            opt.chinchilla.n_params,
            f(v, "chinchilla_n_params"),
            1e-12,
            &format!("{what}: N_ch"),
        );
        close(
            opt.chinchilla_flops(),
            f(v, "chinchilla_flops"),
            1e-12,
            &format!("{what}: flops_ch"),
        );
    }
}

fn hardware(s: &Value, prefix: &str) -> Hardware {
    let gpu: Gpu = s[format!("{prefix}_gpu")]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let precision: Precision = s[format!("{prefix}_dtype")]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    Hardware::preset(gpu, precision, s[format!("{prefix}_price")].as_f64()).unwrap()
}

fn cost_model(s: &Value) -> CostModel {
    CostModel {
        train_hardware: hardware(s, "train"),
        inference_hardware: hardware(s, "inference"),
        mfu: Utilization::new(f(s, "train_mfu"), f(s, "prefill_mfu"), f(s, "decode_mfu")).unwrap(),
    }
}

fn check_costs(got: &cost::CostBreakdown, want: &Value, rel: f64, what: &str) {
    close(
        got.train,
        f(want, "train"),
        rel,
        &format!("{what}: train cost"),
    );
    close(
        got.prefill,
        f(want, "prefill"),
        rel,
        &format!("{what}: prefill cost"),
    );
    close(
        got.decode,
        f(want, "decode"),
        rel,
        &format!("{what}: decode cost"),
    );
    close(
        got.total,
        f(want, "total"),
        rel,
        &format!("{what}: total cost"),
    );
}

#[test]
fn cost_optima_match_the_reference() {
    for v in fixture()["cost_optima"].as_array().unwrap() {
        let s = &v["scenario"];
        let what = s["name"].as_str().unwrap();
        let demand = InferenceDemand::new(
            f(s, "requests"),
            f(s, "input_tokens"),
            f(s, "output_tokens"),
        )
        .unwrap();
        let best = cost::cost_optimal(
            &ChinchillaLaw::sardana(),
            f(s, "loss"),
            &demand,
            &cost_model(s),
        )
        .unwrap();
        close(
            best.optimal.allocation.n_params,
            f(v, "n_params"),
            1e-7,
            what,
        );
        close(
            best.optimal.allocation.train_tokens,
            f(v, "train_tokens"),
            1e-7,
            what,
        );
        check_costs(&best.optimal.cost, &v["cost"], 1e-7, what);
        close(
            best.chinchilla.allocation.n_params,
            f(v, "chinchilla_n_params"),
            1e-12,
            what,
        );
        check_costs(&best.chinchilla.cost, &v["chinchilla_cost"], 1e-12, what);
    }
}

#[test]
fn cost_of_a_given_model_matches_the_reference() {
    let v = &fixture()["cost_of_model"];
    let s = &v["scenario"];
    let law = ChinchillaLaw::sardana();
    let n = f(s, "n_params");
    let d = chinchilla::optimal_tokens_for_params(&law, n).unwrap();
    close(d, f(v, "train_tokens"), 1e-12, "D");
    close(law.loss(n, d).unwrap(), f(v, "loss"), 1e-14, "loss");
    let demand = InferenceDemand::new(
        f(s, "requests"),
        f(s, "input_tokens"),
        f(s, "output_tokens"),
    )
    .unwrap();
    let costs = cost_model(s).cost(n, d, &demand).unwrap();
    check_costs(&costs, &v["cost"], 1e-12, "30B model");
    let alloc = chinchilla::Allocation {
        n_params: n,
        train_tokens: d,
    };
    close(
        alloc.lifetime_flops(demand.total_tokens()),
        f(v, "total_flops"),
        1e-12,
        "total FLOPs",
    );
}

#[test]
fn readme_examples_at_printed_precision() {
    let fx = fixture();
    let p = &fx["published"];
    let law = ChinchillaLaw::sardana();

    // model_calculator.py --model 70e9 --data 1e12  ->  1.947
    let loss = law.loss(70e9, 1e12).unwrap();
    assert_eq!(
        format!("{loss:.3}"),
        p["model_calculator"]["loss"].as_str().unwrap()
    );

    // compute_optimal.py --loss 1.947 --inference_tokens 2e12
    let c = &p["compute_optimal"];
    let opt = inference::optimal_allocation(&law, 1.947, 2e12).unwrap();
    assert_eq!(
        py_sci3(opt.optimal.n_params),
        c["n_params"].as_str().unwrap()
    );
    assert_eq!(
        py_sci3(opt.optimal.train_tokens),
        c["train_tokens"].as_str().unwrap()
    );
    assert_eq!(
        py_pct2(opt.params_ratio()),
        c["params_pct"].as_str().unwrap()
    );
    assert_eq!(
        py_pct2(opt.tokens_ratio()),
        c["tokens_pct"].as_str().unwrap()
    );
    assert_eq!(py_pct2(opt.flops_ratio()), c["flops_pct"].as_str().unwrap());

    // cost_optimal.py README example.
    let c = &p["cost_optimal"];
    let model = CostModel {
        train_hardware: Hardware::preset(Gpu::A100_80gb, Precision::Bf16, Some(1.40)).unwrap(),
        inference_hardware: Hardware::preset(Gpu::A100_40gb, Precision::Int8, Some(0.60)).unwrap(),
        mfu: Utilization::new(0.5, 0.4, 0.2).unwrap(),
    };
    let demand = InferenceDemand::new(1e10, 1000.0, 250.0).unwrap();
    let best = cost::cost_optimal(&law, 1.947, &demand, &model).unwrap();
    assert_eq!(
        py_sci3(best.optimal.allocation.n_params),
        c["n_params"].as_str().unwrap()
    );
    assert_eq!(
        py_sci3(best.optimal.allocation.train_tokens),
        c["train_tokens"].as_str().unwrap()
    );
    assert_eq!(
        py_pct2(best.params_ratio()),
        c["params_pct"].as_str().unwrap()
    );
    assert_eq!(
        py_pct2(best.tokens_ratio()),
        c["tokens_pct"].as_str().unwrap()
    );
    assert_eq!(py_pct2(best.cost_ratio()), c["cost_pct"].as_str().unwrap());

    // cost_calculator.py README example, at the prices the code actually uses (see the note).
    let c = &p["cost_calculator"];
    let model = CostModel {
        train_hardware: Hardware::preset(Gpu::H100, Precision::Bf16, None).unwrap(),
        inference_hardware: Hardware::preset(Gpu::A100_40gb, Precision::Int8, None).unwrap(),
        mfu: Utilization::default(),
    };
    let n = 30e9;
    let d = chinchilla::optimal_tokens_for_params(&law, n).unwrap();
    let demand = InferenceDemand::new(1e9, 500.0, 100.0).unwrap();
    let costs = model.cost(n, d, &demand).unwrap();
    let alloc = chinchilla::Allocation {
        n_params: n,
        train_tokens: d,
    };
    assert_eq!(py_sci3(n), c["n_params"].as_str().unwrap());
    assert_eq!(py_sci3(d), c["train_tokens"].as_str().unwrap());
    let printed_loss: f64 = c["loss"].as_str().unwrap().parse().unwrap();
    close(law.loss(n, d).unwrap(), printed_loss, 1e-15, "printed loss");
    assert_eq!(py_sci3(costs.train), c["train_cost"].as_str().unwrap());
    assert_eq!(
        py_sci3(alloc.train_flops()),
        c["train_flops"].as_str().unwrap()
    );
    assert_eq!(
        py_sci3(alloc.lifetime_flops(demand.total_tokens())),
        c["total_flops"].as_str().unwrap()
    );
    assert_eq!(py_sci3(costs.total), c["total_cost"].as_str().unwrap());
}

fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn fit_recovers_a_known_law_from_noisy_runs() {
    let fx = fixture();
    let v = &fx["fit_synthetic"];
    let runs = runs::read_runs_csv(
        &fixture_path("tests/fixtures/synthetic_runs.csv"),
        &Columns::default(),
    )
    .unwrap();
    let result = fit::fit(&runs, &FitOptions::default()).unwrap();
    assert_eq!(result.starts, 4500);
    // At least as good as scipy's best of the same 4,500 starts.
    let scipy = f(v, "objective");
    assert!(
        result.objective <= scipy * (1.0 + 1e-9),
        "kiln {} vs scipy {scipy}",
        result.objective
    );
    // And the same optimum.
    let s = &v["law"];
    close(result.law.alpha, f(s, "alpha"), 1e-4, "alpha vs scipy");
    close(result.law.beta, f(s, "beta"), 1e-4, "beta vs scipy");
    close(result.law.e, f(s, "e"), 1e-4, "E vs scipy");

    // The law the runs were drawn from is recovered: exponents within noise, predictions within
    // 1% over the sampled range.
    let t = &v["truth"];
    let truth =
        ChinchillaLaw::new(f(t, "e"), f(t, "a"), f(t, "b"), f(t, "alpha"), f(t, "beta")).unwrap();
    assert!(
        (result.law.alpha - truth.alpha).abs() < 0.03,
        "{:?}",
        result.law
    );
    assert!(
        (result.law.beta - truth.beta).abs() < 0.03,
        "{:?}",
        result.law
    );
    for r in &runs {
        close(
            result.law.loss(r.n_params, r.tokens).unwrap(),
            truth.loss(r.n_params, r.tokens).unwrap(),
            0.01,
            "prediction vs truth",
        );
    }
}

#[test]
fn fit_on_the_papers_47_runs_matches_scipy() {
    let fx = fixture();
    let v = &fx["fit_sardana"];
    let runs = runs::read_runs_csv(
        &fixture_path("data/sardana2024_runs.csv"),
        &Columns::default(),
    )
    .unwrap();
    assert_eq!(runs.len() as u64, v["runs"].as_u64().unwrap());
    let result = fit::fit(&runs, &FitOptions::default()).unwrap();
    let scipy = f(v, "objective");
    assert!(
        result.objective <= scipy * (1.0 + 1e-9),
        "kiln {} vs scipy {scipy}",
        result.objective
    );
    // The exponents are well identified; E and A less so (see the guide): compare loosely.
    close(result.law.alpha, f(&v["law"], "alpha"), 1e-4, "alpha");
    close(result.law.beta, f(&v["law"], "beta"), 1e-4, "beta");
    close(
        fit::objective(&result.law, &runs, 1e-3).unwrap(),
        result.objective,
        1e-12,
        "objective",
    );
}
