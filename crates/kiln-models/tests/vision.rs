//! kiln's image classifiers against PyTorch: the logits of an MLP, a ResNet (torchvision's
//! names) and a ViT (timm's names) with every parameter random, from
//! `tests/fixtures/make_vision_fixtures.py` (regenerate with the command in its docstring);
//! save → load round trips; bad inputs.

use std::path::PathBuf;

use kiln_models::LoadOptions;
use kiln_models::burn::module::Module;
use kiln_models::burn::tensor::{Device, Tensor, TensorData};
use kiln_models::vision::{ImageClassifier, VisionConfig};

fn dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vision"
    ))
    .join(name)
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn logits(model: &ImageClassifier, images: &[f32], device: &Device) -> Vec<f32> {
    let x = Tensor::<4>::from_data(TensorData::new(images.to_vec(), [3, 1, 8, 8]), device);
    model
        .forward(x)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn classifiers_match_pytorch() {
    let device = Device::flex();
    for name in ["mlp", "resnet", "vit"] {
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir(name).join("reference.json")).unwrap(),
        )
        .unwrap();
        let model = ImageClassifier::load(dir(name), &device, LoadOptions::default()).unwrap();
        let got = logits(&model, &floats(&reference["images"]), &device);
        let want = floats(&reference["logits"]);
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * scale,
                "{name} logit {i}: kiln {g} vs torch {w} (scale {scale})"
            );
        }
        // evaluation mode on a training device gives the same (batch norm's running statistics)
        let ad = Device::flex().autodiff();
        let model = ImageClassifier::load(dir(name), &ad, LoadOptions::default()).unwrap();
        let valid = logits(&model.valid(), &floats(&reference["images"]), &device);
        for (g, w) in valid.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * scale, "{name} valid(): {g} vs {w}");
        }
    }
}

#[test]
fn save_then_load_is_exact() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["mlp", "resnet", "vit"] {
        let model = ImageClassifier::load(dir(name), &device, LoadOptions::default()).unwrap();
        let config: VisionConfig =
            serde_json::from_str(&std::fs::read_to_string(dir(name).join("config.json")).unwrap())
                .unwrap();
        let out = tmp.path().join(name);
        model
            .save(&config, &out, kiln_checkpoint::Dtype::F32, false)
            .unwrap();
        let again = ImageClassifier::load(&out, &device, LoadOptions::default()).unwrap();
        let images: Vec<f32> = (0..192).map(|i| (i as f32 * 0.37).sin().abs()).collect();
        assert_eq!(
            logits(&model, &images, &device),
            logits(&again, &images, &device),
            "{name}"
        );
    }
}

#[test]
fn fresh_classifiers_train_shapes_and_bad_inputs() {
    let device = Device::flex();
    for name in ["mlp", "resnet", "vit"] {
        let config: VisionConfig =
            serde_json::from_str(&std::fs::read_to_string(dir(name).join("config.json")).unwrap())
                .unwrap();
        let model = ImageClassifier::init(&config, &device).unwrap();
        let wrong = Tensor::<4>::zeros([2, 3, 8, 8], &device);
        let e = model.forward(wrong).unwrap_err().to_string();
        assert!(e.contains("3×8×8") && e.contains("1×8×8"), "{e}");
    }
    let e = ImageClassifier::load(dir("nothing"), &device, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    let bad: VisionConfig = serde_json::from_str(
        r#"{"kind": "vit", "input": {"channels": 1, "height": 8, "width": 8}, "patch": 3, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 8, "classes": 10}"#,
    )
    .unwrap();
    let e = ImageClassifier::init(&bad, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("patch 3"), "{e}");
}
