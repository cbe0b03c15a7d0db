//! The VAE against diffusers' `AutoencoderKL` on a tiny model with every parameter random
//! (`fixtures/make_diffusion_fixtures.py`): the encoder's posterior and the decoder's image.

use std::path::PathBuf;

use kiln_checkpoint::Checkpoint;
use kiln_models::LoadOptions;
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::diffusion::vae::AutoencoderKl;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn floats(r: &Checkpoint, name: &str) -> Tensor<4> {
    let t = r.tensor(name).unwrap();
    let shape: [usize; 4] = t.shape().try_into().unwrap();
    Tensor::from_data(TensorData::new(t.to_f32().unwrap(), shape), &Device::flex())
}

#[track_caller]
fn close(got: Tensor<4>, want: Tensor<4>, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let g: Vec<f32> = got.into_data().convert::<f32>().try_to_vec().unwrap();
    let w: Vec<f32> = want.into_data().convert::<f32>().try_to_vec().unwrap();
    let scale = w.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst <= 1e-5 * scale, "{what}: {worst:e} > 1e-5 × {scale}");
}

#[test]
fn vae_encodes_and_decodes_as_diffusers() {
    let dir = fixtures().join("models").join("vae_tiny");
    let vae = AutoencoderKl::load(&dir, &Device::flex(), LoadOptions::default()).unwrap();
    let r = Checkpoint::open(fixtures().join("reference").join("vae_tiny.safetensors")).unwrap();
    let post = vae.encode(floats(&r, "image")).unwrap();
    close(post.mean.clone(), floats(&r, "mean"), "posterior mean");
    close(post.logvar, floats(&r, "logvar"), "posterior logvar");
    close(
        vae.decode(floats(&r, "latents")).unwrap(),
        floats(&r, "decoded"),
        "decoded",
    );
    // the pipeline's scaling: encode_latents = mean × scaling_factor, decode_latents undoes it
    let s = vae.config.scaling_factor as f32;
    close(
        vae.encode_latents(floats(&r, "image")).unwrap(),
        post.mean.mul_scalar(s),
        "encode_latents",
    );
    close(
        vae.decode_latents(floats(&r, "latents").mul_scalar(s))
            .unwrap(),
        floats(&r, "decoded"),
        "decode_latents",
    );
    let d = Device::flex();
    let e = vae
        .encode(Tensor::zeros([1, 3, 15, 16], &d))
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiples of 2"), "{e}");
    let e = vae
        .decode(Tensor::zeros([1, 3, 8, 8], &d))
        .unwrap_err()
        .to_string();
    assert!(e.contains("latent_channels"), "{e}");
}
