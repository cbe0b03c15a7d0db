//! GraNd against `torch.func.vmap(grad)` on a 2-layer MLP with every parameter random
//! (`tests/fixtures/make_grand_fixture.py`): the exact per-example norm over all parameters and
//! the closed-form last-layer norm, to 1e-6.

#![cfg(feature = "train")]

use kiln_models::LoadOptions;
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::burn::tensor::activation::log_softmax;
use kiln_models::vision::ImageClassifier;
use kiln_scoring::gradient::{grand, grand_last_layer};
use serde_json::Value;

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn grand_equals_vmap_grad() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grand.json")).unwrap()).unwrap();
    let d = Device::flex().autodiff();
    let model = ImageClassifier::load(dir.join("grand_mlp"), &d, LoadOptions::default()).unwrap();
    let images: Vec<f32> = f64s(&r["images"]).into_iter().map(|x| x as f32).collect();
    let labels: Vec<i64> = r["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let n = labels.len();
    let got = grand(&model, n, |m, i| {
        let x = Tensor::<4>::from_data(
            TensorData::new(images[i * 12..(i + 1) * 12].to_vec(), [1, 1, 4, 3]),
            &d,
        );
        let logits = m.forward(x).map_err(|e| e.to_string())?;
        let lp = log_softmax(logits, 1);
        let y = Tensor::<2, Int>::from_data(TensorData::new(vec![labels[i]], [1, 1]), &d);
        Ok(-lp.gather(1, y).reshape([1]))
    })
    .unwrap();
    let want = f64s(&r["grand"]);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * w.max(1.0),
            "example {i}: {g} vs {w}"
        );
    }
    // the closed-form last layer from the penultimate features and logits
    let last = f64s(&r["grand_last_layer"]);
    for i in 0..n {
        let h = f64s(&r["features"][i]);
        let z = f64s(&r["logits"][i]);
        let g = grand_last_layer(&h, &z, labels[i] as usize, true).unwrap();
        assert!(
            (g - last[i]).abs() <= 1e-9 * last[i].max(1.0),
            "example {i}: {g} vs {}",
            last[i]
        );
        assert!(g < got[i], "the last layer is part of the whole");
    }
    // and from kiln's own features of the loaded model
    let x = Tensor::<4>::from_data(TensorData::new(images[..12].to_vec(), [1, 1, 4, 3]), &d);
    let feats: Vec<f64> = model
        .features(x.clone())
        .unwrap()
        .into_data()
        .convert::<f64>()
        .try_to_vec()
        .unwrap();
    let logits: Vec<f64> = model
        .forward(x)
        .unwrap()
        .into_data()
        .convert::<f64>()
        .try_to_vec()
        .unwrap();
    let g = grand_last_layer(&feats, &logits, labels[0] as usize, true).unwrap();
    assert!(
        (g - last[0]).abs() <= 1e-5 * last[0].max(1.0),
        "{g} vs {}",
        last[0]
    );
}

#[test]
fn vog_equals_torch_over_three_checkpoints() {
    use kiln_scoring::gradient::input_gradients;
    use kiln_scoring::vog::{Vog, normalise_within_class};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grand.json")).unwrap()).unwrap();
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vog.json")).unwrap()).unwrap();
    let d = Device::flex().autodiff();
    let images: Vec<f32> = f64s(&r["images"]).into_iter().map(|x| x as f32).collect();
    let labels: Vec<usize> = r["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let n = labels.len();
    let want_grads = f64s(&v["gradients"]);
    let mut vog = Vog::new(n, 1, 12);
    let ids: Vec<usize> = (0..n).collect();
    for k in 0..3 {
        let model =
            ImageClassifier::load(dir.join(format!("vog_ckpt{k}")), &d, LoadOptions::default())
                .unwrap();
        let x = Tensor::<4>::from_data(TensorData::new(images.clone(), [n, 1, 4, 3]), &d);
        let g = input_gradients(&model, x, &labels, |m, x| {
            m.forward(x).map_err(|e| e.to_string())
        })
        .unwrap();
        for (i, (a, b)) in g
            .iter()
            .zip(&want_grads[k * n * 12..(k + 1) * n * 12])
            .enumerate()
        {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "checkpoint {k} gradient {i}: {a} vs {b}"
            );
        }
        vog.add(&ids, &g).unwrap();
    }
    let close = |got: &[f64], want: &[f64], what: &str| {
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1e-3),
                "{what} {i}: {a} vs {b}"
            );
        }
    };
    close(
        &vog.scores(false).unwrap(),
        &f64s(&v["vog_variance"]),
        "variance VoG",
    );
    let std = vog.scores(true).unwrap();
    close(&std, &f64s(&v["vog_std"]), "std VoG");
    close(
        &normalise_within_class(&std, &labels).unwrap(),
        &f64s(&v["vog_std_normalised"]),
        "normalised VoG",
    );
    // one checkpoint is not enough for a variance
    let mut one = Vog::new(1, 1, 2);
    one.add(&[0], &[1.0, 2.0]).unwrap();
    assert!(
        one.scores(true)
            .unwrap_err()
            .to_string()
            .contains("at least two")
    );
}
