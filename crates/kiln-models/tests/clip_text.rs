//! The CLIP text encoder against transformers' `CLIPTextModel` on tiny models with every
//! parameter random (`fixtures/make_diffusion_fixtures.py`): OpenAI CLIP's form (quick_gelu,
//! the old end-token rule) and OpenCLIP's as in Stable Diffusion 2 (gelu, a real end token).

use std::path::PathBuf;

use kiln_checkpoint::{Checkpoint, Dtype};
use kiln_models::LoadOptions;
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::diffusion::clip::ClipTextModel;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ints(r: &Checkpoint, name: &str) -> Tensor<2, Int> {
    let t = r.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    let v: Vec<i64> = t
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let shape: [usize; 2] = t.shape().try_into().unwrap();
    Tensor::from_data(TensorData::new(v, shape), &Device::flex())
}

#[track_caller]
fn close<const D: usize>(got: Tensor<D>, r: &Checkpoint, name: &str, rtol: f32) {
    let want = r.tensor(name).unwrap();
    assert_eq!(got.dims().to_vec(), want.shape().to_vec(), "{name}: shape");
    let want = want.to_f32().unwrap();
    let got: Vec<f32> = got.into_data().convert::<f32>().try_to_vec().unwrap();
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= rtol * scale,
        "{name}: {worst:e} > {rtol:e} × {scale}"
    );
}

#[test]
fn clip_text_encoders_equal_transformers() {
    for (dir, name) in [
        ("clip_text_quick", "clip_text_quick"),
        ("clip_text_gelu", "clip_text_gelu"),
        ("clip_text_prefixed", "clip_text_gelu"),
    ] {
        let model = ClipTextModel::load(
            fixtures().join("models").join(dir),
            &Device::flex(),
            LoadOptions::default(),
        )
        .unwrap();
        let r = Checkpoint::open(
            fixtures()
                .join("reference")
                .join(format!("{name}.safetensors")),
        )
        .unwrap();
        let out = model
            .forward(ints(&r, "input_ids"), Some(ints(&r, "attention_mask")))
            .unwrap();
        close(out.last_hidden_state, &r, "last_hidden_state", 1e-5);
        close(out.pooled, &r, "pooler_output", 1e-5);
    }
}

#[test]
fn bad_inputs_and_directories_are_errors() {
    let dir = fixtures().join("models").join("clip_text_gelu");
    let model = ClipTextModel::load(&dir, &Device::flex(), LoadOptions::default()).unwrap();
    let d = Device::flex();
    let long = Tensor::<2, Int>::zeros([1, 17], &d);
    let e = model.forward(long, None).unwrap_err().to_string();
    assert!(
        e.contains("17 tokens") && e.contains("max_position_embeddings"),
        "{e}"
    );
    let bad = Tensor::<2, Int>::from_data(TensorData::new(vec![5i64, 99], [1, 2]), &d);
    let e = model.forward(bad, None).unwrap_err().to_string();
    assert!(e.contains("token id 99") && e.contains("vocab_size"), "{e}");
    // a directory without a text encoder
    let e = ClipTextModel::load(fixtures().join("models"), &d, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
}
