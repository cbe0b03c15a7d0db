//! EWC (`kiln_train::algorithms::{fisher_diagonal, Ewc}`) against the committed PyTorch
//! references of `tests/fixtures/make_ewc_fixture.py`: the five Fisher estimators on a 2-layer
//! MLP with 64 examples, and avalanche's `EWCPlugin` penalty after one and two tasks (separate
//! and online). Regenerate the fixture with the command in the script's docstring.

use std::collections::BTreeMap;
use std::ops::Range;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::tanh;
use kiln_train::algorithms::{
    Ewc, EwcMode, FisherData, FisherEstimator, PenaltyScale, fisher_diagonal,
};
use serde_json::Value;

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(tanh(self.fc1.forward(x)))
    }
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ewc.json"
    ))
    .expect("fixture (see make_ewc_fixture.py)");
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn device() -> Device {
    Device::flex().autodiff()
}

/// A torch `[out, in]` weight as burn's `[in, out]`.
fn linear(f: &Value, params: &str, name: &str, d: &Device) -> Linear {
    let shape = &f["shapes"][format!("{name}.weight")];
    let (out, inp) = (
        shape[0].as_u64().unwrap() as usize,
        shape[1].as_u64().unwrap() as usize,
    );
    let mut l = LinearConfig::new(inp, out).init(d);
    let w = Tensor::<2>::from_data(
        TensorData::new(floats(&f[params][format!("{name}.weight")]), [out, inp]),
        d,
    );
    let b = Tensor::<1>::from_data(
        TensorData::new(floats(&f[params][format!("{name}.bias")]), [out]),
        d,
    );
    l.weight = Param::from_tensor(w.transpose());
    l.bias = Some(Param::from_tensor(b));
    l
}

fn mlp(f: &Value, params: &str) -> Mlp {
    let d = device();
    Mlp {
        fc1: linear(f, params, "fc1", &d),
        fc2: linear(f, params, "fc2", &d),
    }
}

struct Data {
    x: Tensor<2>,
    y: Vec<i64>,
}

impl Data {
    fn new(f: &Value, x: &str, y: &str) -> Self {
        let y: Vec<i64> = f[y]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let xs = floats(&f[x]);
        let d = device();
        Self {
            x: Tensor::from_data(TensorData::new(xs, [y.len(), 6]), &d),
            y,
        }
    }
}

impl FisherData<Mlp> for Data {
    fn len(&self) -> usize {
        self.y.len()
    }
    fn forward(&mut self, model: &Mlp, r: Range<usize>) -> Result<(Tensor<2>, Vec<i64>), String> {
        Ok((
            model.forward(self.x.clone().slice(r.clone())),
            self.y[r].to_vec(),
        ))
    }
}

/// kiln's Fisher in torch's layout (`[out, in]` weights), flattened.
fn torch_layout(fisher: &BTreeMap<String, Tensor<1>>, f: &Value) -> BTreeMap<String, Vec<f32>> {
    fisher
        .iter()
        .map(|(name, t)| {
            let v = t
                .clone()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            let v = if name.ends_with("weight") {
                let s = &f["shapes"][name];
                let (out, inp) = (
                    s[0].as_u64().unwrap() as usize,
                    s[1].as_u64().unwrap() as usize,
                );
                // burn's [in, out] row-major → torch's [out, in]
                (0..out * inp)
                    .map(|k| v[(k % inp) * out + k / inp])
                    .collect()
            } else {
                v
            };
            (name.clone(), v)
        })
        .collect()
}

fn assert_fisher(got: &BTreeMap<String, Tensor<1>>, f: &Value, key: &str) {
    let got = torch_layout(got, f);
    let want = f[key].as_object().unwrap();
    assert_eq!(got.len(), want.len(), "{key}: parameter count");
    for (name, w) in want {
        let w = floats(w);
        let g = &got[name];
        assert_eq!(g.len(), w.len(), "{key} {name}: size");
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "{key} {name}[{i}]: kiln {a} vs torch {b}"
            );
        }
    }
}

#[test]
fn the_five_fisher_estimators_match_pytorch() {
    let f = fixture();
    let model = mlp(&f, "params");
    let mut data = Data::new(&f, "x1", "y1");
    for (estimator, key) in [
        (FisherEstimator::Exact, "exact"),
        (FisherEstimator::ExactN(16), "exact_n16"),
        (FisherEstimator::Empirical, "empirical"),
        (FisherEstimator::Batched { batch_size: 8 }, "batched_8"),
        (FisherEstimator::Batched { batch_size: 1 }, "batched_1"),
    ] {
        let got = fisher_diagonal(&model, &mut data, estimator, 0).unwrap();
        assert_fisher(&got, &f, key);
    }
    // Sample is Empirical on labels drawn from the model: with torch's draws it is torch's
    let mut sampled = Data::new(&f, "x1", "sampled_labels");
    let got = fisher_diagonal(&model, &mut sampled, FisherEstimator::Empirical, 0).unwrap();
    assert_fisher(&got, &f, "sample");
}

fn total(fisher: &BTreeMap<String, Tensor<1>>) -> Vec<f64> {
    fisher
        .values()
        .flat_map(|t| {
            t.clone()
                .into_data()
                .convert::<f64>()
                .try_to_vec::<f64>()
                .unwrap()
        })
        .collect()
}

#[test]
fn batched_with_batch_size_one_is_the_empirical_fisher() {
    let f = fixture();
    let model = mlp(&f, "params_2");
    for (x, y) in [("x1", "y1"), ("x2", "y2")] {
        let mut data = Data::new(&f, x, y);
        let b1 = total(
            &fisher_diagonal(
                &model,
                &mut data,
                FisherEstimator::Batched { batch_size: 1 },
                0,
            )
            .unwrap(),
        );
        let emp =
            total(&fisher_diagonal(&model, &mut data, FisherEstimator::Empirical, 0).unwrap());
        for (a, b) in b1.iter().zip(&emp) {
            assert!((a - b).abs() <= 1e-7 * b.abs().max(1e-3), "{a} vs {b}");
        }
    }
}

#[test]
fn the_sample_estimator_draws_from_the_model_and_averages_to_the_exact_fisher() {
    let f = fixture();
    let model = mlp(&f, "params");
    let mut data = Data::new(&f, "x1", "y1");
    let exact = total(&fisher_diagonal(&model, &mut data, FisherEstimator::Exact, 0).unwrap());
    let runs = 40;
    let mut mean = vec![0.0; exact.len()];
    let first = total(&fisher_diagonal(&model, &mut data, FisherEstimator::Sample, 0).unwrap());
    assert_eq!(
        first,
        total(&fisher_diagonal(&model, &mut data, FisherEstimator::Sample, 0).unwrap()),
        "seeded"
    );
    for seed in 0..runs {
        let s = total(&fisher_diagonal(&model, &mut data, FisherEstimator::Sample, seed).unwrap());
        for (m, v) in mean.iter_mut().zip(s) {
            *m += v / runs as f64;
        }
    }
    let (sum_e, sum_m): (f64, f64) = (exact.iter().sum(), mean.iter().sum());
    // Σ over parameters: an unbiased estimate, 40 × 64 draws
    assert!(
        (sum_m / sum_e - 1.0).abs() < 0.05,
        "sample mean {sum_m} vs exact {sum_e}"
    );
    let emp = total(&fisher_diagonal(&model, &mut data, FisherEstimator::Empirical, 0).unwrap());
    let sum_emp: f64 = emp.iter().sum();
    // random labels: the empirical Fisher is far from the exact one, the sampled one is not
    assert!(
        (sum_emp / sum_e - 1.0).abs() > 0.2,
        "empirical {sum_emp} vs exact {sum_e}"
    );
}

fn penalty_value(ewc: &Ewc<Mlp>, model: &Mlp) -> f64 {
    ewc.penalty(model)
        .unwrap()
        .unwrap()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .unwrap()[0]
}

#[test]
fn penalties_match_avalanches_ewc_plugin_separate_and_online() {
    let f = fixture();
    let lambda = f["lambda"].as_f64().unwrap();
    let gamma = f["gamma"].as_f64().unwrap();
    let b = f["avalanche_batch_size"].as_u64().unwrap() as usize;
    let estimator = FisherEstimator::Batched { batch_size: b };
    let close = |got: f64, key: &str| {
        let want = f[key].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{key}: kiln {got} vs avalanche {want}"
        );
    };
    for mode in [EwcMode::Separate, EwcMode::Online { gamma }] {
        let mut ewc = Ewc::<Mlp>::new(lambda, PenaltyScale::Full, estimator, mode, 0).unwrap();
        assert!(
            ewc.penalty(&mlp(&f, "params")).unwrap().is_none(),
            "no penalty before a task ends"
        );
        ewc.consolidate(&mlp(&f, "params"), &mut Data::new(&f, "x1", "y1"))
            .unwrap();
        close(
            penalty_value(&ewc, &mlp(&f, "params_2")),
            "avalanche_after_task1",
        );
        ewc.consolidate(&mlp(&f, "params_2"), &mut Data::new(&f, "x2", "y2"))
            .unwrap();
        let key = match mode {
            EwcMode::Separate => "avalanche_separate_after_task2",
            EwcMode::Online { .. } => "avalanche_online_after_task2",
        };
        close(penalty_value(&ewc, &mlp(&f, "params_3")), key);
        assert_eq!(ewc.tasks(), 2);
    }
    // the paper's ½
    let mut half =
        Ewc::<Mlp>::new(lambda, PenaltyScale::Half, estimator, EwcMode::Separate, 0).unwrap();
    half.consolidate(&mlp(&f, "params"), &mut Data::new(&f, "x1", "y1"))
        .unwrap();
    close(
        2.0 * penalty_value(&half, &mlp(&f, "params_2")),
        "avalanche_after_task1",
    );
}

#[test]
fn the_penalty_has_the_gradient_of_the_quadratic() {
    // ∇ λ·Σ F (θ − θ*)² = 2λ F (θ − θ*)
    let f = fixture();
    let mut ewc = Ewc::<Mlp>::new(
        0.7,
        PenaltyScale::Full,
        FisherEstimator::Empirical,
        EwcMode::Separate,
        0,
    )
    .unwrap();
    ewc.consolidate(&mlp(&f, "params"), &mut Data::new(&f, "x1", "y1"))
        .unwrap();
    let model = mlp(&f, "params_2");
    let grads = ewc.penalty(&model).unwrap().unwrap().backward();
    let g = model.fc2.bias.as_ref().unwrap().val().grad(&grads).unwrap();
    let fisher = &ewc.fisher(0).unwrap()["fc2.bias"];
    let (t2, t1) = (
        floats(&f["params_2"]["fc2.bias"]),
        floats(&f["params"]["fc2.bias"]),
    );
    let fv = fisher
        .clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let gv = g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    for i in 0..gv.len() {
        let want = 2.0 * 0.7 * fv[i] * (t2[i] - t1[i]);
        assert!((gv[i] - want).abs() <= 1e-6, "{i}: {} vs {want}", gv[i]);
    }
}

#[test]
fn bad_settings_and_data_are_errors() {
    let f = fixture();
    for (lambda, mode, est) in [
        (-1.0, EwcMode::Separate, FisherEstimator::Exact),
        (f64::NAN, EwcMode::Separate, FisherEstimator::Exact),
        (1.0, EwcMode::Online { gamma: 1.5 }, FisherEstimator::Exact),
        (1.0, EwcMode::Separate, FisherEstimator::ExactN(0)),
        (
            1.0,
            EwcMode::Separate,
            FisherEstimator::Batched { batch_size: 0 },
        ),
    ] {
        let e = Ewc::<Mlp>::new(lambda, PenaltyScale::Half, est, mode, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("EWC"), "{e}");
    }
    let model = mlp(&f, "params");
    let mut data = Data::new(&f, "x1", "y1");
    data.y[3] = 9;
    let e = fisher_diagonal(&model, &mut data, FisherEstimator::Empirical, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 9") && e.contains("4 classes"), "{e}");
    let mut empty = Data {
        x: data.x.clone().slice(0..0),
        y: vec![],
    };
    let e = fisher_diagonal(&model, &mut empty, FisherEstimator::Exact, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no example"), "{e}");
}
