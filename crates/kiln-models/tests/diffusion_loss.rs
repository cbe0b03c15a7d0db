//! The text-to-image training loss against `train_text_to_image.py`'s computation on a fixed
//! batch through the tiny random UNet (`fixtures/make_diffusion_fixtures.py`): plain MSE and
//! Min-SNR-γ, for an ε and a v-prediction schedule, and the SNR itself against diffusers'
//! `compute_snr`.

use std::path::PathBuf;

use kiln_checkpoint::Checkpoint;
use kiln_models::LoadOptions;
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::diffusion::scheduler::{Scheduler, SchedulerConfig};
use kiln_models::diffusion::training::{LossOptions, diffusion_loss, snr};
use kiln_models::diffusion::unet::UNet2DConditionModel;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn floats<const D: usize>(r: &Checkpoint, name: &str) -> Tensor<D> {
    let t = r.tensor(name).unwrap();
    let shape: [usize; D] = t.shape().try_into().unwrap();
    Tensor::from_data(TensorData::new(t.to_f32().unwrap(), shape), &Device::flex())
}

fn scalar(r: &Checkpoint, name: &str) -> f32 {
    r.tensor(name).unwrap().to_f32().unwrap()[0]
}

#[test]
fn losses_equal_the_diffusers_training_script() {
    let d = Device::flex();
    let unet = UNet2DConditionModel::load(
        fixtures().join("models/unet_tiny"),
        &d,
        LoadOptions::default(),
    )
    .unwrap();
    let r = Checkpoint::open(fixtures().join("reference/diffusion_loss.safetensors")).unwrap();
    let timesteps = [10usize, 700];
    for pred in ["epsilon", "v_prediction"] {
        let config: SchedulerConfig = serde_json::from_value(serde_json::json!({
            "_class_name": "DDPMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": pred
        }))
        .unwrap();
        let s = Scheduler::from_config(&config).unwrap();
        let want_snr = r.tensor(&format!("{pred}_snr")).unwrap().to_f32().unwrap();
        let got_snr = snr(&s, &timesteps).unwrap();
        for (g, w) in got_snr.iter().zip(&want_snr) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{pred} snr {g} vs {w}"
            );
        }
        for (options, key) in [
            (LossOptions { snr_gamma: None }, "mse"),
            (
                LossOptions {
                    snr_gamma: Some(5.0),
                },
                "min_snr",
            ),
        ] {
            let loss = diffusion_loss(
                &unet,
                &s,
                floats(&r, "latents"),
                floats(&r, "noise"),
                &timesteps,
                floats(&r, "encoder_hidden_states"),
                options,
            )
            .unwrap();
            let got = loss
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()[0];
            let want = scalar(&r, &format!("{pred}_{key}"));
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "{pred} {key}: {got} vs {want}"
            );
        }
    }
}
