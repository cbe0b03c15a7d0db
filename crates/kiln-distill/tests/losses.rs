//! kiln-distill's losses against the libraries, values and gradients with respect to the student's
//! logits, to 1e-6: PyTorch's `kl_div(batchmean)·T²`, TRL's `generalized_jsd_loss` (β 0, 0.3, ½, 1),
//! torchdistill's `KDLoss`, TVD, logit MSE and the sparse top-k KL (`missing` zero and uniform;
//! k = C equals the dense KL). Fixture: `tests/fixtures/make_loss_fixture.py` (regenerate with the
//! command in its docstring).

use kiln_distill::burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_distill::{
    Divergence, KdLoss, Missing, SparseTeacher, divergence, logit_mse, sparse_forward_kl,
};
use serde_json::Value;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/losses.json"
    ))
    .expect("fixture (see make_loss_fixture.py)");
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

struct Case {
    device: Device,
    student: Vec<f32>,
    teacher: Vec<f32>,
    rows: usize,
    classes: usize,
    weights: Vec<f32>,
}

fn lm_case(f: &Value) -> Case {
    let shape: Vec<usize> = f["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let labels = ints(&f["labels"]);
    Case {
        device: Device::flex().autodiff(),
        student: floats(&f["student"]),
        teacher: floats(&f["teacher"]),
        rows: shape[0] * shape[1],
        classes: shape[2],
        weights: labels
            .iter()
            .map(|&l| if l == -100 { 0.0 } else { 1.0 })
            .collect(),
    }
}

impl Case {
    fn student(&self) -> Tensor<2> {
        Tensor::<2>::from_data(
            TensorData::new(self.student.clone(), [self.rows, self.classes]),
            &self.device,
        )
        .require_grad()
    }
    fn teacher(&self) -> Tensor<2> {
        Tensor::<2>::from_data(
            TensorData::new(self.teacher.clone(), [self.rows, self.classes]),
            &self.device,
        )
    }
    fn weights(&self) -> Tensor<1> {
        Tensor::<1>::from_data(
            TensorData::new(self.weights.clone(), [self.rows]),
            &self.device,
        )
    }
}

/// Checks a loss's value and its gradient with respect to the student against `want` = [value,
/// [grad...]].
fn check(name: &str, student: Tensor<2>, loss: Tensor<1>, want: &Value) {
    let v = loss
        .clone()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .unwrap()[0];
    let w = want[0].as_f64().unwrap();
    assert!(
        (v - w).abs() <= 1e-6 * w.abs().max(1.0),
        "{name}: kiln {v} vs reference {w}"
    );
    let grads = loss.backward();
    let g = student
        .grad(&grads)
        .unwrap()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .unwrap();
    let wg: Vec<f64> = want[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(g.len(), wg.len(), "{name}: gradient size");
    for (i, (a, b)) in g.iter().zip(&wg).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6,
            "{name}: d/ds[{i}] kiln {a} vs reference {b}"
        );
    }
}

#[test]
fn kl_jsd_tvd_and_mse_match_pytorch_and_trl() {
    let f = fixture();
    let c = lm_case(&f);
    for t in [1.0, 2.0] {
        let s = c.student();
        let l = KdLoss {
            ce_weight: 0.0,
            kd_weight: 1.0,
            temperature: t,
            divergence: Divergence::ForwardKl,
        };
        let zero = Tensor::<1>::zeros([1], &c.device);
        let loss = l
            .combine(zero, s.clone(), c.teacher(), Some(c.weights()))
            .unwrap();
        check(
            &format!("kl_div batchmean·T² at T {t}"),
            s,
            loss,
            &f["torch_kl"][format!("{t:.1}")],
        );
    }
    for beta in [0.0, 0.3, 0.5, 1.0] {
        let s = c.student();
        let loss = divergence(
            s.clone(),
            c.teacher(),
            Some(c.weights()),
            2.0,
            Divergence::Jsd { beta },
        )
        .unwrap();
        check(
            &format!("TRL generalized JSD β {beta}"),
            s,
            loss,
            &f["trl_gjsd"][format!("{beta:.1}")],
        );
    }
    let s = c.student();
    let loss = divergence(
        s.clone(),
        c.teacher(),
        Some(c.weights()),
        1.0,
        Divergence::Tvd,
    )
    .unwrap();
    check("TVD", s, loss, &f["tvd"]);
    let s = c.student();
    let loss = logit_mse(s.clone(), c.teacher(), Some(c.weights())).unwrap();
    check("logit MSE", s, loss, &f["mse"]);
    // reverse KL is the forward KL with the roles swapped
    let (a, b) = (c.student(), c.teacher());
    let r = divergence(a.clone(), b.clone(), None, 1.0, Divergence::ReverseKl).unwrap();
    let fwd = divergence(b, a.detach(), None, 1.0, Divergence::ForwardKl).unwrap();
    let (r, fwd) = (r.into_scalar::<f32>(), fwd.into_scalar::<f32>());
    assert!((r - fwd).abs() < 1e-6, "{r} vs {fwd}");
}

#[test]
fn the_classifier_objective_matches_torchdistill() {
    let f = fixture();
    let cl = &f["classifier"];
    let device = Device::flex().autodiff();
    let (n, k) = (6, 7);
    let s = Tensor::<2>::from_data(TensorData::new(floats(&cl["student"]), [n, k]), &device)
        .require_grad();
    let t = Tensor::<2>::from_data(TensorData::new(floats(&cl["teacher"]), [n, k]), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(ints(&cl["targets"]), [n]), &device);
    // torchdistill's alpha = 0.3 weights the hard loss
    let l = KdLoss {
        ce_weight: 0.3,
        kd_weight: 0.7,
        temperature: 4.0,
        divergence: Divergence::ForwardKl,
    };
    let ce = kiln_distill::burn::tensor::activation::log_softmax(s.clone(), 1)
        .gather(1, y.reshape([n, 1]))
        .mean()
        .neg();
    let loss = l.combine(ce, s.clone(), t, None).unwrap();
    check("torchdistill KDLoss", s, loss, &f["torchdistill_kd"]);
}

#[test]
fn sparse_kl_matches_the_reference_and_is_dense_kl_at_k_equal_c() {
    let f = fixture();
    let c = lm_case(&f);
    for k in [3usize, 11] {
        let e = &f["sparse_kl"][k.to_string()];
        let teacher = SparseTeacher {
            indices: Tensor::<2, Int>::from_data(
                TensorData::new(ints(&e["indices"]), [c.rows, k]),
                &c.device,
            ),
            log_probs: Tensor::<2>::from_data(
                TensorData::new(floats(&e["log_probs"]), [c.rows, k]),
                &c.device,
            ),
            tail: Tensor::<1>::from_data(TensorData::new(floats(&e["tail"]), [c.rows]), &c.device),
        };
        for (missing, key) in [(Missing::Zero, "zero"), (Missing::Uniform, "uniform")] {
            let s = c.student();
            let loss =
                sparse_forward_kl(s.clone(), &teacher, Some(c.weights()), 1.0, missing).unwrap();
            check(&format!("sparse KL k {k} {key}"), s, loss, &e[key]);
        }
        if k == c.classes {
            // k = C: exactly the dense forward KL's value
            let s = c.student();
            let sparse =
                sparse_forward_kl(s.clone(), &teacher, Some(c.weights()), 1.0, Missing::Zero)
                    .unwrap();
            let dense = divergence(
                s,
                c.teacher(),
                Some(c.weights()),
                1.0,
                Divergence::ForwardKl,
            )
            .unwrap();
            let (a, b) = (sparse.into_scalar::<f32>(), dense.into_scalar::<f32>());
            assert!((a - b).abs() <= 1e-6, "sparse {a} vs dense {b}");
        }
    }
}

#[test]
fn mismatched_inputs_are_errors() {
    let d = Device::flex();
    let s = Tensor::<2>::zeros([3, 5], &d);
    let t = Tensor::<2>::zeros([3, 6], &d);
    let e = divergence(s.clone(), t, None, 1.0, Divergence::ForwardKl)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[3, 5]") && e.contains("[3, 6]"), "{e}");
    let e = divergence(s.clone(), s.clone(), None, 0.0, Divergence::ForwardKl)
        .unwrap_err()
        .to_string();
    assert!(e.contains("temperature"), "{e}");
    let e = divergence(s.clone(), s, None, 1.0, Divergence::Jsd { beta: 1.5 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("β 1.5"), "{e}");
}

#[test]
fn with_missing_uniform_the_tail_mass_is_spread_exactly_over_the_other_classes() {
    // The uniform sparse KL is the dense KL against the implied teacher: top-k probabilities,
    // and tail/(C − k) on every other class — whose masses add up to Σ top-k p + tail.
    let f = fixture();
    let c = lm_case(&f);
    let k = 3;
    let e = &f["sparse_kl"]["3"];
    let (idx, lp, tail) = (
        ints(&e["indices"]),
        floats(&e["log_probs"]),
        floats(&e["tail"]),
    );
    let mut implied = vec![0f32; c.rows * c.classes];
    for r in 0..c.rows {
        let q = tail[r] / (c.classes - k) as f32;
        for j in 0..c.classes {
            implied[r * c.classes + j] = q;
        }
        let mut top = 0.0f32;
        for m in 0..k {
            let p = lp[r * k + m].exp();
            implied[r * c.classes + idx[r * k + m] as usize] = p;
            top += p;
        }
        let total: f32 = implied[r * c.classes..(r + 1) * c.classes].iter().sum();
        assert!(
            (total - (top + tail[r])).abs() < 1e-6,
            "row {r}: {total} vs {}",
            top + tail[r]
        );
    }
    let teacher = SparseTeacher {
        indices: Tensor::<2, Int>::from_data(TensorData::new(idx, [c.rows, k]), &c.device),
        log_probs: Tensor::<2>::from_data(TensorData::new(lp, [c.rows, k]), &c.device),
        tail: Tensor::<1>::from_data(TensorData::new(tail, [c.rows]), &c.device),
    };
    let sparse = sparse_forward_kl(
        c.student(),
        &teacher,
        Some(c.weights()),
        1.0,
        Missing::Uniform,
    )
    .unwrap()
    .into_scalar::<f32>();
    // dense KL(implied ‖ student) by hand
    let ls = kiln_distill::burn::tensor::activation::log_softmax(c.student(), 1)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let (mut sum, mut n) = (0.0f64, 0.0f64);
    for r in 0..c.rows {
        if c.weights[r] == 0.0 {
            continue;
        }
        for j in 0..c.classes {
            let p = f64::from(implied[r * c.classes + j]);
            if p > 0.0 {
                sum += p * (p.ln() - f64::from(ls[r * c.classes + j]));
            }
        }
        n += 1.0;
    }
    let dense = sum / n;
    assert!(
        (f64::from(sparse) - dense).abs() < 1e-5,
        "sparse {sparse} vs dense {dense}"
    );
}
