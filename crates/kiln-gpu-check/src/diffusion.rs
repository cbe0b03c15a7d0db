//! Stage 4: the diffusion stack on the device. The tiny Stable Diffusion pipeline of kiln-models'
//! fixtures (`models/sd_tiny`: CLIP text encoder, UNet, VAE, DDIM) samples from the reference's
//! prompt embeddings and initial latents (5 steps, guidance 7.5) on the device and on the CPU;
//! the final latents must agree with each other and with diffusers' `StableDiffusionPipeline`
//! within 1e-3 × their largest value (1e-2 on a GPU backend, whose f32 matmuls may run on TF32
//! tensor cores), and the decoded image
//! is checked the same way. Then one training step (forward, MSE, backward) of an SD2-layout
//! UNet: SD2-base's own size (865 M parameters, 64×64 latent) on a GPU, a narrower version of
//! the same layout (1/8 width) on a 16×16 latent with `--quick` (left out with `--quick` on a GPU
//! backend: on lavapipe its kernels alone take minutes to compile); the loss and every gradient
//! must be finite, and the time is reported, not judged.

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use kiln_checkpoint::Checkpoint;
use kiln_models::diffusion::pipeline::{Pipeline, SampleOptions};
use kiln_models::diffusion::unet::{UNet2DConditionModel, UNetConfig};
use serde_json::{Value, json};

use crate::Result;

fn tensor<const D: usize>(r: &Checkpoint, name: &str, device: &Device) -> Result<Tensor<D>> {
    let t = r.tensor(name)?;
    let shape: [usize; D] = t
        .shape()
        .try_into()
        .map_err(|_| format!("{name} is not {D}-D"))?;
    Ok(Tensor::from_data(
        TensorData::new(t.to_f32()?, shape),
        device,
    ))
}

fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    Ok(t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?)
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

/// SD2-base's UNet layout with every channel count divided by `width` (1: SD2-base itself).
fn sd2_layout(width: usize) -> Result<UNetConfig> {
    let ch: Vec<usize> = [320, 640, 1280, 1280].iter().map(|c| c / width).collect();
    let groups = if width == 1 { 32 } else { 8 };
    let cross = 1024 / width;
    Ok(serde_json::from_str(&format!(
        r#"{{"act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": {ch:?},
            "cross_attention_dim": {cross},
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "out_channels": 4,
            "layers_per_block": 2, "norm_num_groups": {groups}, "sample_size": 64,
            "use_linear_projection": true}}"#
    ))?)
}

pub(crate) fn diffusion(
    dev: &Device,
    fixtures: &Path,
    quick: bool,
    failures: &mut Vec<String>,
) -> Result<Value> {
    // 1. the tiny pipeline against the CPU and diffusers
    let r = Checkpoint::open(fixtures.join("reference/sd_tiny.safetensors"))?;
    let dir = fixtures.join("models/sd_tiny");
    let run = |d: &Device| -> Result<(Vec<f32>, Vec<f32>)> {
        let pipe = Pipeline::load(&dir, d)?;
        let options = SampleOptions {
            steps: 5,
            guidance: 7.5,
            scheduler: None,
            eta: 0.0,
        };
        let latents = pipe.sample(
            tensor(&r, "prompt_embeds", d)?,
            Some(tensor(&r, "negative_embeds", d)?),
            tensor(&r, "init_latents", d)?,
            &options,
            |_| Tensor::zeros([1, 4, 8, 8], d),
            |_, _| {},
        )?;
        let image = pipe.decode(latents.clone())?;
        Ok((values(latents)?, values(image)?))
    };
    let t = Instant::now();
    let (dev_latents, dev_image) = run(dev)?;
    let pipeline_s = t.elapsed().as_secs_f64();
    let (cpu_latents, _) = run(&Device::flex())?;
    let want = r.tensor("ddim")?.to_f32()?;
    let want_image = r.tensor("image")?.to_f32()?;
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let (vs_cpu, vs_ref, image_vs_ref) = (
        max_diff(&dev_latents, &cpu_latents),
        max_diff(&dev_latents, &want),
        max_diff(&dev_image, &want_image),
    );
    // flex: 1e-3 of scale; a GPU backend 1e-2 (burn's CUDA backend runs f32 matmuls on TF32
    // tensor cores on Ampere and newer, 10 mantissa bits, which five guided steps amplify)
    let gpu_backend = dev.clone().inner() != Device::flex();
    let rel = if gpu_backend { 1e-2 } else { 1e-3 };
    let tol = rel * f64::from(scale);
    let pipeline_pass = vs_ref <= tol && vs_cpu <= tol && image_vs_ref <= rel;
    eprintln!(
        "   sd_tiny pipeline: |device − CPU| ≤ {vs_cpu:.2e}, |device − diffusers| ≤ {vs_ref:.2e} (tolerance {tol:.2e}), image ≤ {image_vs_ref:.2e}; {pipeline_s:.2} s {}",
        if pipeline_pass { "ok" } else { "FAIL" }
    );
    if !pipeline_pass {
        failures.push(format!(
            "diffusion sd_tiny: device vs CPU {vs_cpu:.2e}, vs diffusers {vs_ref:.2e}, image {image_vs_ref:.2e} (tolerance {tol:.2e})"
        ));
    }
    let pipeline = json!({
        "fixture": "sd_tiny",
        "max_abs_diff_vs_cpu": vs_cpu,
        "max_abs_diff_vs_diffusers": vs_ref,
        "image_max_abs_diff_vs_diffusers": image_vs_ref,
        "tolerance": tol,
        "seconds": pipeline_s,
        "pass": pipeline_pass,
    });
    // 2. one training step of an SD2-layout UNet. With `--quick` on a GPU backend it is left
    // out: on lavapipe (CI's Vulkan CPU driver) compiling its kernels alone takes minutes; CI
    // runs it on flex (`gpu-check cpu`), and a real GPU runs it at full size.
    if quick && gpu_backend {
        eprintln!("   SD2-layout UNet step: left out (--quick on a GPU backend)");
        return Ok(
            json!({"pipeline": pipeline, "sd2_unet_step": "left out: --quick on a GPU backend"}),
        );
    }
    let width = if quick { 8 } else { 1 };
    let config = sd2_layout(width)?;
    let ad = dev.clone().autodiff();
    ad.seed(0);
    let t = Instant::now();
    let unet = UNet2DConditionModel::init(&config, &ad)?;
    let params = unet.num_params();
    let side = if quick { 16 } else { 64 };
    let x = Tensor::<4>::random([1, 4, side, side], Distribution::Normal(0.0, 1.0), &ad);
    let text = Tensor::<3>::random(
        [1, 77, config.cross_attention_dim],
        Distribution::Normal(0.0, 1.0),
        &ad,
    );
    let init_s = t.elapsed().as_secs_f64();
    let mut steps = Vec::new();
    let mut finite = true;
    for _ in 0..2 {
        let t = Instant::now();
        let out = unet.forward(x.clone(), Tensor::from_floats([500.0], &ad), text.clone())?;
        let loss = out.powi_scalar(2).mean();
        let l = values(loss.clone())?;
        let grads = loss.backward();
        let g = unet
            .conv_in
            .weight
            .grad(&grads)
            .ok_or("conv_in has no gradient")?;
        let g = values(g)?;
        finite &= l.iter().chain(&g).all(|v| v.is_finite());
        steps.push(t.elapsed().as_secs_f64());
    }
    eprintln!(
        "   SD2-layout UNet (1/{width} width, {params} parameters, {side}×{side} latent): first step {:.2} s, second {:.2} s, loss and gradients {}",
        steps[0],
        steps[1],
        if finite { "finite" } else { "NOT finite" }
    );
    if !finite {
        failures
            .push("diffusion: the SD2-layout UNet step gave a non-finite loss or gradient".into());
    }
    Ok(json!({
        "pipeline": pipeline,
        "sd2_unet_step": {
            "width_divisor": width,
            "parameters": params,
            "latent_side": side,
            "init_s": init_s,
            "step_s": steps,
            "finite": finite,
        }
    }))
}
