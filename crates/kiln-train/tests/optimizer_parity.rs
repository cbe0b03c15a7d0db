//! kiln's optimisers and global-norm clipping against Composer's `DecoupledAdamW`, PyTorch's
//! `AdamW`, llm-foundry's `DecoupledLionW` and `torch.nn.utils.clip_grad_norm_`, step by step.
//! Fixture: `tests/fixtures/make_optimizer_fixture.py`.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use kiln_train::OptimizerConfig;
use kiln_train::optim::{clip_grad_norm, grad_norm};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn trajectories_match_composer_and_pytorch() {
    let f: Value = serde_json::from_str(include_str!("fixtures/optimizers.json")).unwrap();
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::from_data(TensorData::new(floats(&f["x"]), [8, 3]), &device);
    let y = Tensor::<2>::from_data(TensorData::new(floats(&f["y"]), [8, 2]), &device);
    let mults: Vec<f64> = f["lr_multipliers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_f64().unwrap())
        .collect();
    for case in f["cases"].as_array().unwrap() {
        let cfg: OptimizerConfig = serde_json::from_value(case["optimizer"].clone()).unwrap();
        let clip = case["clip_grad_norm"].as_f64();
        let mut lin: Linear = LinearConfig::new(3, 2).init(&device);
        // PyTorch's weight is [out, in]; burn's is [in, out].
        let w = Tensor::<2>::from_data(TensorData::new(floats(&f["weight"]), [2, 3]), &device)
            .transpose();
        lin.weight = Param::from_tensor(w);
        lin.bias = Some(Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(floats(&f["bias"]), [2]),
            &device,
        )));
        let mut optim = cfg.build().unwrap();
        for (t, m) in mults.iter().enumerate() {
            let loss = (lin.forward(x.clone()) - y.clone()).powi_scalar(2).mean();
            let mut grads = GradientsParams::from_grads(loss.backward(), &lin);
            let norm = match clip {
                Some(max) => clip_grad_norm(&lin, &mut grads, max),
                None => grad_norm(&lin, &grads),
            };
            let want_norm = case["grad_norms"][t].as_f64().unwrap();
            assert!(
                (norm - want_norm).abs() < 1e-5 * want_norm.max(1.0),
                "{cfg:?} step {t}: norm {norm} vs {want_norm}"
            );
            lin = optim.step(cfg.lr() * m, lin, grads);
            let got_w = lin
                .weight
                .val()
                .transpose()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            let got_b = lin
                .bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            let want_w = floats(&case["weights"][t]);
            let want_b = floats(&case["biases"][t]);
            for (g, w) in got_w.iter().chain(&got_b).zip(want_w.iter().chain(&want_b)) {
                assert!(
                    (g - w).abs() < 2e-5,
                    "{cfg:?}, clip {clip:?}, step {t}: {g} vs {w}"
                );
            }
        }
    }
}
