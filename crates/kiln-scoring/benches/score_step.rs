//! The cost of each family of difficulty scores on a training step, through kiln-train as a user
//! runs it, on burn's flex CPU backend. One configuration per process.
//!
//! Models: `gpt2` — GPT-2 small's layout (124 M parameters), batch 2 × 64 tokens of a causal-LM
//! task; `cnn` — a ResNet (widths 16, 32, 64; one basic block per stage) on the UCI digits,
//! batch 64. Families:
//! - `forward`: `TrainingScores` (8 pointwise scores per example from the step's logits; the
//!   token scores of GPT-2 reduced on the device); `forward-host`: the same with every logit
//!   copied to the host and scored in f64 (`ScoreOn::Host`);
//! - `grand`: exact GraNd of the micro-batch's examples after the step (one backward pass per
//!   example through the whole model, `kiln_scoring::gradient::grand`);
//! - `depth`: prediction depth of the micro-batch's examples after the step (every layer's
//!   representation of the evaluation-mode model, kNN probes with k = 30 fit on the micro-batch
//!   itself — for GPT-2 per token, labelled by the next token).
//!
//! Steps alternate within the process: odd steps score, even steps do not, so each scored step is
//! compared with its neighbours under the same allocator state, cache and clock (between
//! processes a GPT-2 step varies by 10–20% on this machine, more than the effect measured).
//!
//! `cargo bench -p kiln-scoring --bench score_step -- gpt2|cnn FAMILY` prints one JSON object
//! (`plain_s`, `scored_s`: step times from `BatchStart` to `BatchEnd`); `cargo xtask bench
//! scoring` runs every family and records them in docs/BENCHMARKS.md.

use std::sync::Arc;

use kiln_data::images::ImageSet;
use kiln_models::burn::module::Module;
use kiln_models::burn::tensor::{Int, Tensor};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_models::vision::{ImageClassifier, ImageShape, ResNetConfig, VisionConfig};
use kiln_schedules::Duration;
use kiln_scoring::depth::{Probe, prediction_depth};
use kiln_scoring::gradient::grand;
use kiln_scoring::train::{ScoreOn, TrainingScores};
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::{CausalLmTask, ImageClassificationTask, image_batch};
use kiln_train::timing::StepClock;
use kiln_train::{Algorithm, Context, Event, OptimizerConfig, Trainer, TrainerConfig};

const FAMILIES: [&str; 4] = ["forward", "forward-host", "grand", "depth"];
/// Neighbours of the prediction-depth probes (Baldock et al.'s 30).
const K: usize = 30;

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .unwrap_or_default()
}

fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default()
}

/// Scores the step's micro-batch after the optimiser step (GraNd or prediction depth); the
/// results are summed into `checksum` (read back to the host, as a user's scores would be).
struct AfterStep {
    family: String,
    images: Option<Arc<ImageSet>>,
    ids: Vec<usize>,
    inputs: Option<(Tensor<2, Int>, Tensor<2, Int>)>,
    checksum: f64,
}

impl AfterStep {
    fn depth(
        &mut self,
        layers: Vec<Vec<f64>>,
        dims: Vec<usize>,
        labels: &[usize],
    ) -> Result<(), String> {
        let k = K.min(labels.len());
        let d = prediction_depth(&layers, &dims, labels, labels, k, Probe::IncludeSelf)
            .map_err(|e| e.to_string())?;
        self.checksum += d.iter().sum::<usize>() as f64;
        Ok(())
    }
}

impl Algorithm<ImageClassifier> for AfterStep {
    fn name(&self) -> &str {
        "bench-scores"
    }

    fn on_event(&mut self, e: Event, ctx: &mut Context<'_, ImageClassifier>) -> Result<(), String> {
        match e {
            Event::AfterForward => {
                let out = ctx.output.as_deref().ok_or("no step output")?;
                let ids = out.example_ids.as_ref().ok_or("no example ids")?;
                self.ids = ids.iter().map(|&i| i as usize).collect();
            }
            Event::AfterStep => {
                let set = self.images.as_ref().ok_or("no image set")?;
                let model = &*ctx.model;
                let device = model.devices()[0].clone();
                if self.family == "grand" {
                    let g = grand(model, self.ids.len(), |m, i| {
                        let (x, y) = image_batch(set, &self.ids[i..=i], &device);
                        let logits = m.forward(x).map_err(|e| e.to_string())?;
                        Ok(kiln_models::burn::nn::loss::CrossEntropyLossConfig::new()
                            .init(&device)
                            .forward(logits, y)
                            .reshape([1]))
                    })
                    .map_err(|e| e.to_string())?;
                    self.checksum += g.iter().sum::<f64>();
                } else {
                    let valid = model.valid();
                    let plain = valid.devices()[0].clone();
                    let (x, y) = image_batch(set, &self.ids, &plain);
                    let layers = valid.layer_features(x).map_err(|e| e.to_string())?;
                    let dims = layers.iter().map(|t| t.dims()[1]).collect();
                    let layers = layers.into_iter().map(floats).collect();
                    let labels: Vec<usize> = ints(y).into_iter().map(|v| v as usize).collect();
                    self.depth(layers, dims, &labels)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Algorithm<Gpt2LmHead> for AfterStep {
    fn name(&self) -> &str {
        "bench-scores"
    }

    fn on_event(&mut self, e: Event, ctx: &mut Context<'_, Gpt2LmHead>) -> Result<(), String> {
        match e {
            Event::AfterForward => {
                let out = ctx.output.as_deref().ok_or("no step output")?;
                let inputs = out.inputs.as_ref().ok_or("no inputs")?;
                let mask = inputs.attention_mask.clone().ok_or("no attention mask")?;
                self.inputs = Some((inputs.input_ids.clone(), mask));
            }
            Event::AfterStep => {
                let (ids, mask) = self.inputs.take().ok_or("no inputs")?;
                let [b, l] = ids.dims();
                let model = &*ctx.model;
                if self.family == "grand" {
                    let g = grand(model, b, |m, i| {
                        Ok(m.loss(
                            ids.clone().slice([i..i + 1, 0..l]),
                            Some(mask.clone().slice([i..i + 1, 0..l])),
                        ))
                    })
                    .map_err(|e| e.to_string())?;
                    self.checksum += g.iter().sum::<f64>();
                } else {
                    let valid = model.valid();
                    let plain = valid.transformer.wte.weight.val().device();
                    let (ids_v, mask_v) = (ids.inner(), mask.inner());
                    let states = valid.transformer.hidden_states(
                        ids_v.clone().to_device(&plain),
                        Some(mask_v.clone().to_device(&plain)),
                    );
                    // rows: positions 0..L−1 whose next token is real, labelled by that token
                    let (tok, m) = (ints(ids_v), ints(mask_v));
                    let rows: Vec<(usize, usize)> = (0..b)
                        .flat_map(|s| (0..l - 1).map(move |t| (s, t)))
                        .filter(|&(s, t)| m[s * l + t + 1] == 1)
                        .collect();
                    let labels: Vec<usize> = rows
                        .iter()
                        .map(|&(s, t)| tok[s * l + t + 1] as usize)
                        .collect();
                    let mut layers = Vec::new();
                    let mut dims = Vec::new();
                    for h in states {
                        let d = h.dims()[2];
                        let v = floats(h);
                        layers.push(
                            rows.iter()
                                .flat_map(|&(s, t)| {
                                    v[(s * l + t) * d..(s * l + t + 1) * d].to_vec()
                                })
                                .collect(),
                        );
                        dims.push(d);
                    }
                    self.depth(layers, dims, &labels)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Runs `inner` on odd steps only (the step being taken, 1-based), so scored and plain steps
/// alternate.
struct OddSteps<M> {
    inner: Box<dyn Algorithm<M>>,
    active: bool,
}

impl<M> Algorithm<M> for OddSteps<M> {
    fn name(&self) -> &str {
        "odd-steps"
    }

    fn on_event(&mut self, e: Event, ctx: &mut Context<'_, M>) -> Result<(), String> {
        if e == Event::BatchStart {
            self.active = (ctx.state.step + 1) % 2 == 1;
        }
        if self.active {
            self.inner.on_event(e, ctx)?;
        }
        Ok(())
    }
}

fn odd<M: 'static>(inner: impl Algorithm<M> + 'static) -> Box<dyn Algorithm<M>> {
    Box::new(OddSteps {
        inner: Box::new(inner),
        active: false,
    })
}

fn trainer(steps: u64) -> TrainerConfig {
    let mut tc = TrainerConfig::new(Duration::batches(steps), OptimizerConfig::adamw(3e-4, 0.0));
    tc.progress_bar = false;
    tc.autoresume = false;
    tc
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    kiln_models::cpu::tune_allocator();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (model, family) = match args.as_slice() {
        [m, f] if ["gpt2", "cnn"].contains(&m.as_str()) && FAMILIES.contains(&f.as_str()) => {
            (m.clone(), f.clone())
        }
        _ => {
            return Err(format!("usage: score_step gpt2|cnn {}", FAMILIES.join("|")).into());
        }
    };
    let d = Device::flex().autodiff();
    d.seed(0);
    let clock = StepClock::new();
    let times = clock.handle();
    let scorer = AfterStep {
        family: family.clone(),
        images: None,
        ids: Vec::new(),
        inputs: None,
        checksum: 0.0,
    };
    let dir = tempfile::tempdir()?;
    let batch = if model == "gpt2" {
        const BATCH: usize = 2;
        const SEQ: usize = 64;
        const STEPS: u64 = 17;
        let config = Gpt2Config::gpt2();
        let seqs: Vec<Vec<u32>> = (0..(STEPS as usize + 1) * BATCH)
            .map(|s| {
                (0..SEQ)
                    .map(|i| {
                        (((s * SEQ + i) as u64 * 2_654_435_761) % config.vocab_size as u64) as u32
                    })
                    .collect()
            })
            .collect();
        let mut task = CausalLmTask::new(seqs.clone(), vec![seqs[0].clone()], BATCH, 0, &d)?;
        let mut algorithms: Vec<Box<dyn Algorithm<Gpt2LmHead>>> = vec![Box::new(clock)];
        let n = seqs.len();
        algorithms.push(match family.as_str() {
            "forward" => odd(TrainingScores::new(n)),
            "forward-host" => odd(TrainingScores::new(n).score_on(ScoreOn::Host)),
            _ => odd(scorer),
        });
        Trainer::new(trainer(STEPS), dir.path()).fit(
            Gpt2LmHead::init(&config, &d)?,
            &mut task,
            &mut algorithms,
            &d,
        )?;
        format!("{BATCH}×{SEQ} tokens")
    } else {
        const BATCH: usize = 64;
        const STEPS: u64 = 121;
        let input = ImageShape {
            channels: 1,
            height: 8,
            width: 8,
        };
        let config = VisionConfig::Resnet(ResNetConfig {
            input,
            widths: vec![16, 32, 64],
            blocks: 1,
            classes: 10,
        });
        let set = Arc::new(ImageSet::digits()?);
        let (train, test) = set.split(0.25, 0);
        let mut task = ImageClassificationTask::new(set.clone(), train, test, BATCH, 0, &d)?;
        let mut algorithms: Vec<Box<dyn Algorithm<ImageClassifier>>> = vec![Box::new(clock)];
        algorithms.push(match family.as_str() {
            "forward" => odd(TrainingScores::new(set.len())),
            "forward-host" => odd(TrainingScores::new(set.len()).score_on(ScoreOn::Host)),
            _ => odd(AfterStep {
                images: Some(set.clone()),
                ..scorer
            }),
        });
        Trainer::new(trainer(STEPS), dir.path()).fit(
            ImageClassifier::init(&config, &d)?,
            &mut task,
            &mut algorithms,
            &d,
        )?;
        format!("{BATCH} images")
    };
    // step 1 (index 0) is scored and warms up; then pairs (plain, scored)
    let t = times.borrow();
    let plain: Vec<f64> = t.iter().skip(1).step_by(2).copied().collect();
    let scored: Vec<f64> = t.iter().skip(2).step_by(2).copied().collect();
    println!(
        "{}",
        serde_json::json!({
            "model": model, "family": family, "batch": batch,
            "plain_s": plain, "scored_s": scored
        })
    );
    Ok(())
}
