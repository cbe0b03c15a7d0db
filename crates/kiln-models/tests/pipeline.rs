//! The whole sampling loop against diffusers' `StableDiffusionPipeline` on a tiny pipeline
//! directory it saved (`fixtures/make_diffusion_fixtures.py`): from the same prompt and
//! negative embeddings and initial latents, the final latents after 5 steps (DDIM guided and
//! unguided, Euler guided) and the decoded image.

use std::path::PathBuf;

use kiln_checkpoint::Checkpoint;
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::diffusion::pipeline::{Pipeline, SampleOptions};
use kiln_models::diffusion::scheduler::Kind;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn floats<const D: usize>(r: &Checkpoint, name: &str) -> Tensor<D> {
    let t = r.tensor(name).unwrap();
    let shape: [usize; D] = t.shape().try_into().unwrap();
    Tensor::from_data(TensorData::new(t.to_f32().unwrap(), shape), &Device::flex())
}

#[track_caller]
fn close(got: Tensor<4>, want: Tensor<4>, rtol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let g: Vec<f32> = got.into_data().convert::<f32>().try_to_vec().unwrap();
    let w: Vec<f32> = want.into_data().convert::<f32>().try_to_vec().unwrap();
    let scale = w.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        worst <= rtol * scale,
        "{what}: {worst:e} > {rtol:e} × {scale}"
    );
}

#[test]
fn sampling_from_embeddings_equals_stable_diffusion_pipeline() {
    let d = Device::flex();
    let pipe = Pipeline::load(fixtures().join("models").join("sd_tiny"), &d).unwrap();
    let r = Checkpoint::open(fixtures().join("reference").join("sd_tiny.safetensors")).unwrap();
    let (pos, neg): (Tensor<3>, Tensor<3>) =
        (floats(&r, "prompt_embeds"), floats(&r, "negative_embeds"));
    let init: Tensor<4> = floats(&r, "init_latents");
    let run = |guidance: f64, scheduler: Option<Kind>| {
        let options = SampleOptions {
            steps: 5,
            guidance,
            scheduler,
            eta: 0.0,
        };
        let mut steps = Vec::new();
        let out = pipe
            .sample(
                pos.clone(),
                Some(neg.clone()),
                init.clone(),
                &options,
                |_| unreachable!("deterministic samplers draw no noise"),
                |i, n| steps.push((i, n)),
            )
            .unwrap();
        assert_eq!(steps.last(), Some(&(5, 5)), "progress reported per step");
        out
    };
    let ddim = run(7.5, None);
    close(ddim.clone(), floats(&r, "ddim"), 1e-4, "DDIM, guidance 7.5");
    close(
        run(1.0, None),
        floats(&r, "ddim_unguided"),
        1e-4,
        "DDIM, no guidance",
    );
    close(
        run(3.0, Some(Kind::Euler)),
        floats(&r, "euler"),
        1e-4,
        "Euler, guidance 3",
    );
    close(
        pipe.decode(ddim).unwrap(),
        floats(&r, "image"),
        1e-4,
        "decoded image",
    );
    // the text encoder gives the embeddings the pipeline was handed
    let ids = {
        let t = r.tensor("input_ids").unwrap();
        let v: Vec<i64> = t
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, 16]), &d)
    };
    let text = pipe.text_encoder.as_ref().unwrap();
    let embeds = text.forward(ids, None).unwrap().last_hidden_state;
    let (e, p): (Vec<f32>, Vec<f32>) = (
        embeds.into_data().convert::<f32>().try_to_vec().unwrap(),
        pos.into_data().convert::<f32>().try_to_vec().unwrap(),
    );
    assert!(e.iter().zip(&p).all(|(a, b)| (a - b).abs() < 1e-4));
}

#[test]
fn pipelines_missing_parts_and_bad_inputs_are_errors() {
    let d = Device::flex();
    let e = Pipeline::load(fixtures().join("models"), &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model_index.json"), "{e}");
    let pipe = Pipeline::load(fixtures().join("models").join("sd_tiny"), &d).unwrap();
    let pos = Tensor::<3>::zeros([1, 16, 32], &d);
    let init = Tensor::<4>::zeros([1, 4, 8, 8], &d);
    let options = SampleOptions {
        steps: 2,
        ..SampleOptions::default()
    };
    let e = pipe
        .sample(
            pos.clone(),
            None,
            init,
            &options,
            |_| unreachable!(),
            |_, _| {},
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs negative embeddings"), "{e}");
    let e = pipe
        .sample(
            pos,
            None,
            Tensor::zeros([2, 4, 8, 8], &d),
            &options,
            |_| unreachable!(),
            |_, _| {},
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 prompt embeddings for 2"), "{e}");
}
