//! `TextToImageTask` through the trainer: a tiny random UNet on synthetic precomputed latents
//! learns (the fixed-draw evaluation loss falls), the same seed gives the same run, and a run
//! stopped after a checkpoint and resumed ends with the same weights.

use kiln_models::burn::tensor::Device;
use kiln_models::diffusion::scheduler::{Scheduler, SchedulerConfig};
use kiln_models::diffusion::unet::{UNet2DConditionModel, UNetConfig};
use kiln_schedules::Duration;
use kiln_train::tasks::{LatentSet, TextToImageConfig, TextToImageTask};
use kiln_train::{Algorithm, Context, Event, OptimizerConfig, TrainTask, Trainer, TrainerConfig};

/// burn's generator is per process and the trainer reseeds it: these tests run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn unet(d: &Device) -> UNet2DConditionModel {
    let config: UNetConfig = serde_json::from_str(
        r#"{"block_out_channels": [8, 16], "norm_num_groups": 4, "cross_attention_dim": 8,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "attention_head_dim": 2, "layers_per_block": 1, "sample_size": 8}"#,
    )
    .unwrap();
    d.seed(3);
    UNet2DConditionModel::init(&config, d).unwrap()
}

/// 16 examples of two kinds: a horizontal or a vertical stripe pattern, each kind with its own
/// "caption" embedding.
fn data() -> LatentSet {
    let (mut latents, mut embeds) = (Vec::new(), Vec::new());
    for i in 0..16 {
        let kind = i % 2;
        latents.push(
            (0..4 * 8 * 8)
                .map(|k| {
                    let (y, x) = ((k / 8) % 8, k % 8);
                    let v = if kind == 0 { y } else { x };
                    if v % 2 == 0 { 0.8 } else { -0.8 }
                })
                .collect(),
        );
        embeds.push(
            (0..4 * 8)
                .map(|k| if k % 2 == kind { 1.0 } else { -1.0 })
                .collect(),
        );
    }
    LatentSet {
        latent_shape: [4, 8, 8],
        embed_shape: [4, 8],
        latents,
        embeds,
    }
}

fn task(d: &Device) -> TextToImageTask {
    let config: SchedulerConfig = serde_json::from_str(
        r#"{"_class_name": "DDPMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear"}"#,
    )
    .unwrap();
    TextToImageTask::new(
        data(),
        (0..12).collect(),
        (12..16).collect(),
        Scheduler::from_config(&config).unwrap(),
        TextToImageConfig {
            batch_size: 4,
            caption_dropout: 0.1,
            noise_offset: 0.1,
            snr_gamma: Some(5.0),
            seed: 7,
        },
        d,
    )
    .unwrap()
}

struct StopAt(u64);
impl<M> Algorithm<M> for StopAt {
    fn name(&self) -> &str {
        "stop"
    }
    fn on_event(&mut self, e: Event, ctx: &mut Context<'_, M>) -> Result<(), String> {
        if e == Event::Checkpoint && ctx.state.step == self.0 {
            return Err("stopped".into());
        }
        Ok(())
    }
}

fn run(dir: &std::path::Path, stop: Option<u64>) -> (f64, f64, Vec<f32>) {
    let d = Device::flex().autodiff();
    let mut tc = TrainerConfig::new(Duration::batches(40), OptimizerConfig::adamw(2e-3, 0.0));
    tc.progress_bar = false;
    tc.save_interval = Some(Duration::batches(10));
    tc.seed = 1;
    let before = task(&d).evaluate(&unet(&d), &Default::default()).unwrap()["loss"];
    if let Some(at) = stop {
        let mut algorithms: Vec<Box<dyn Algorithm<UNet2DConditionModel>>> =
            vec![Box::new(StopAt(at))];
        Trainer::new(tc.clone(), dir)
            .fit(unet(&d), &mut task(&d), &mut algorithms, &d)
            .unwrap_err();
    }
    let out = Trainer::new(tc, dir)
        .fit(unet(&d), &mut task(&d), &mut [], &d)
        .unwrap();
    let w: Vec<f32> = out
        .model
        .conv_out
        .weight
        .val()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    (before, out.eval["loss"], w)
}

#[test]
fn a_unet_learns_on_precomputed_latents_and_resumes_exactly() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let (before, after, w) = run(&tmp.path().join("a"), None);
    assert!(after < 0.8 * before, "evaluation loss {before} → {after}");
    let (_, again, w2) = run(&tmp.path().join("b"), None);
    assert_eq!((after, &w), (again, &w2), "same seed, same run");
    let (_, resumed, w3) = run(&tmp.path().join("c"), Some(20));
    assert_eq!(
        (after, &w),
        (resumed, &w3),
        "stopped at step 20 and resumed"
    );
}

#[test]
fn bad_data_is_refused_by_example() {
    let d = Device::flex();
    let mut bad = data();
    bad.embeds[5].pop();
    let config: SchedulerConfig =
        serde_json::from_str(r#"{"_class_name": "DDPMScheduler"}"#).unwrap();
    let e = TextToImageTask::new(
        bad,
        vec![0],
        vec![1],
        Scheduler::from_config(&config).unwrap(),
        TextToImageConfig {
            batch_size: 1,
            caption_dropout: 0.1,
            noise_offset: 0.0,
            snr_gamma: None,
            seed: 0,
        },
        &d,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("example 5"), "{e}");
}

/// Captioned shapes through `vae_tiny` (kiln-models' diffusers fixture, 16×16 RGB → 4×8×8) and
/// a random tiny CLIP text encoder (4 tokens of width 8), encoded every step.
fn encoded_source(d: &Device) -> kiln_train::tasks::EncodeEachStep {
    use kiln_models::LoadOptions;
    use kiln_models::diffusion::clip::{ClipTextConfig, ClipTextModel};
    use kiln_models::diffusion::vae::AutoencoderKl;
    let set = kiln_data::captioned::CaptionedShapes::generate(16, 16, 5).unwrap();
    let images: Vec<Vec<f32>> = set
        .images
        .iter()
        .map(|x| x.iter().map(|v| 2.0 * v - 1.0).collect())
        .collect();
    // token ids: one per caption word (a toy vocabulary), padded to 4
    let ids: Vec<Vec<i64>> = set
        .attributes
        .iter()
        .map(|a| {
            vec![
                0,
                1 + a.colour as i64,
                7 + a.shape as i64,
                10 + a.place as i64,
            ]
        })
        .collect();
    let config: ClipTextConfig = serde_json::from_str(
        r#"{"vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 4, "hidden_act": "gelu"}"#,
    )
    .unwrap();
    d.seed(11);
    let clip = ClipTextModel::init(&config, d).unwrap();
    let vae_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kiln-models/tests/fixtures/models/vae_tiny");
    let vae = AutoencoderKl::load(vae_dir, d, LoadOptions::default()).unwrap();
    kiln_train::tasks::EncodeEachStep::new(images, [3, 16, 16], ids, clip, Some(vae)).unwrap()
}

fn source_task(
    d: &Device,
    data: impl kiln_train::tasks::LatentSource + 'static,
) -> TextToImageTask {
    let config: SchedulerConfig =
        serde_json::from_str(r#"{"_class_name": "DDPMScheduler"}"#).unwrap();
    TextToImageTask::new(
        data,
        (0..12).collect(),
        (12..16).collect(),
        Scheduler::from_config(&config).unwrap(),
        TextToImageConfig {
            batch_size: 4,
            caption_dropout: 0.25,
            noise_offset: 0.0,
            snr_gamma: None,
            seed: 3,
        },
        d,
    )
    .unwrap()
}

#[test]
fn precomputed_shards_train_as_encoding_every_step_does() {
    use kiln_train::tasks::{LatentShards, LatentSource, precompute};
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let flex = Device::flex();
    // precompute once (batches of 5, a last batch of 1), read back from the mapped shard
    let mut encoded = encoded_source(&flex);
    assert_eq!(
        (encoded.latent_shape(), encoded.embed_shape()),
        ([4, 8, 8], [4, 8])
    );
    let dir = tmp.path().join("latents");
    let index = precompute(&mut encoded, &dir, 5, &flex, false).unwrap();
    assert_eq!(index.len, 16);
    let mut shards = LatentShards::open(&dir).unwrap();
    for i in [0, 7, 15] {
        let (a, b) = (
            encoded.batch(&[i], &flex).unwrap(),
            shards.batch(&[i], &flex).unwrap(),
        );
        let close = |x: Vec<f32>, y: Vec<f32>| {
            x.iter()
                .zip(&y)
                .all(|(p, q)| (p - q).abs() <= 1e-5 * (1.0 + p.abs()))
        };
        let v4 = |t: kiln_models::burn::Tensor<4>| {
            t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
        };
        let v3 = |t: kiln_models::burn::Tensor<3>| {
            t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
        };
        assert!(close(v4(a.0), v4(b.0)), "latent {i}");
        assert!(close(v3(a.1), v3(b.1)), "embedding {i}");
    }
    assert!(
        precompute(&mut encoded, &dir, 5, &flex, false).is_err(),
        "an existing shard is not overwritten without force"
    );
    // the same run from either source: same draws, same values up to the encoders' rounding
    let run = |precomputed: bool| {
        let d = Device::flex().autodiff();
        let mut tc = TrainerConfig::new(Duration::batches(12), OptimizerConfig::adamw(2e-3, 0.0));
        tc.progress_bar = false;
        tc.seed = 1;
        let name = if precomputed { "p" } else { "e" };
        let out = if precomputed {
            let mut task = source_task(&d, LatentShards::open(&dir).unwrap());
            Trainer::new(tc, tmp.path().join(name)).fit(unet(&d), &mut task, &mut [], &d)
        } else {
            let mut task = source_task(&d, encoded_source(&d));
            Trainer::new(tc, tmp.path().join(name)).fit(unet(&d), &mut task, &mut [], &d)
        }
        .unwrap();
        out.eval["loss"]
    };
    let (p, e) = (run(true), run(false));
    assert!(
        (p - e).abs() <= 1e-4 * e.abs(),
        "precomputed {p} vs encoded each step {e}"
    );
}

/// kiln-train's EMA over the UNet, as CommonCanvas's recipe runs it, handing the averaged
/// weights out at the end of the fit.
struct EmaOut {
    ema: kiln_train::algorithms::Ema<UNet2DConditionModel>,
    out: std::rc::Rc<std::cell::RefCell<Option<(u64, UNet2DConditionModel)>>>,
}

impl Algorithm<UNet2DConditionModel> for EmaOut {
    fn name(&self) -> &str {
        "ema"
    }
    fn on_event(
        &mut self,
        e: Event,
        ctx: &mut Context<'_, UNet2DConditionModel>,
    ) -> Result<(), String> {
        self.ema.on_event(e, ctx)?;
        if e == Event::FitEnd {
            *self.out.borrow_mut() =
                Some((self.ema.updates(), self.ema.averaged(ctx.model.clone())));
        }
        Ok(())
    }
}

#[test]
fn an_ema_of_the_unet_averages_its_weights_from_its_start() {
    use kiln_train::algorithms::{Ema, EmaDecay};
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let d = Device::flex().autodiff();
    let out = std::rc::Rc::new(std::cell::RefCell::new(None));
    // the EMA starts at step 6 of 10 (a scheduled EMA, as CommonCanvas's last 50k steps)
    let ema = Ema::new(
        EmaDecay::composer_half_life(2.0, 1.0),
        Duration::batches(6),
        1,
        false,
    )
    .unwrap();
    let mut algorithms: Vec<Box<dyn Algorithm<UNet2DConditionModel>>> = vec![Box::new(EmaOut {
        ema,
        out: out.clone(),
    })];
    let mut tc = TrainerConfig::new(Duration::batches(10), OptimizerConfig::adamw(2e-3, 0.0));
    tc.progress_bar = false;
    let fit = Trainer::new(tc, tmp.path())
        .fit(unet(&d), &mut task(&d), &mut algorithms, &d)
        .unwrap();
    let (updates, averaged) = out.borrow_mut().take().unwrap();
    assert_eq!(updates, 4, "updates after steps 7…10");
    let w = |m: &UNet2DConditionModel| -> Vec<f32> {
        m.conv_out
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap()
    };
    let (raw, avg, init) = (w(&fit.model), w(&averaged), w(&unet(&d)));
    assert_ne!(raw, avg, "the average lags the raw weights");
    // the average lies between where averaging started and the raw weights: closer to the
    // final weights than the initial ones are
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>();
    assert!(dist(&avg, &raw) < dist(&init, &raw));
}
