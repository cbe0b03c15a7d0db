//! `cargo xtask repro difficulty [--quick] [--out DIR] [--seeds N] [--device cpu|cuda[:N]]`:
//! Kwok, Anand, Frankle, Dziugaite, Rolnick, "Dataset Difficulty and the Role of Inductive Bias",
//! at small scale on the UCI digits and on a text task. Three image architectures (kiln-models'
//! MLP, a small ResNet, a tiny ViT) and a small BERT (on kiln-data's acceptability probe) × N
//! seeds train with `kiln_scoring::train::TrainingScores` recording every example's scores at
//! every presentation; the image runs add each example's prediction depth under the final
//! model; each run's scores are written as a `NAME.scores` table; then the report measures how
//! consistent single runs are (split-half Spearman), how that rises when averaging R runs, how
//! the scores correlate (and their PCA), how architectures agree, and whether a few examples
//! fingerprint an architecture (permutation tests + a held-out-run classifier). Writes
//! `difficulty.md`, `difficulty-consistency.svg` and `difficulty-sensitive.svg` (the most
//! sensitive digits).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_data::corpus;
use kiln_data::images::ImageSet;
use kiln_data::tokenizer::{Tokenizer, TokenizerKind};
use kiln_models::bert::{BertConfig, BertForSequenceClassification};
use kiln_models::burn::module::Module;
use kiln_models::vision::{
    ImageClassifier, ImageShape, MlpConfig, ResNetConfig, VisionConfig, VitConfig,
};
use kiln_schedules::Duration;
use kiln_scoring::consistency::{Averaged, averaging_curve, explained_variance, split_half};
use kiln_scoring::depth::{Probe, prediction_depth};
use kiln_scoring::files::{Manifest, ScoreTable};
use kiln_scoring::fingerprint::{Fingerprint, Group, Options, fingerprint};
use kiln_scoring::stats::spearman;
use kiln_scoring::tracker::ScoreTracker;
use kiln_scoring::train::{CheckpointScores, Pass, PassFn, TrainingScores};
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::{
    ClassificationTask, ImageClassificationTask, LabelledSequence, evaluate_images, image_batch,
};
use kiln_train::{Algorithm, OptimizerConfig, Trainer, TrainerConfig};
use plotters::prelude::*;

use crate::{Result, root, write_atomic};

const REPORT: &str = "difficulty.md";
const PLOT: &str = "difficulty-consistency.svg";
const EXAMPLES: &str = "difficulty-sensitive.svg";
/// Sensitive examples drawn in the report.
const SHOWN: usize = 12;
/// The scores the report follows (columns of the score tables).
const SCORES: [&str; 8] = [
    "loss_mean",
    "el2n_mean",
    "conf_mean",
    "margin_mean",
    "aum",
    "ent_mean",
    "countforget",
    "firstlearn",
];
/// The score the fingerprint and the plot use.
const MAIN: &str = "el2n_mean";
/// Prediction depth (Baldock et al.) of the final model, a column added to the image runs'
/// tables.
const DEPTH: &str = "pred_depth";
/// Neighbours of the prediction-depth probes (Baldock et al.'s 30).
const DEPTH_K: usize = 30;
/// The text task's group name.
const TEXT: &str = "bert";
/// Prefix of the image runs' columns measured by a pass over the training images at the end of
/// every epoch (evaluation mode, the paper's per-epoch scores) rather than on minibatches.
const CKPT: &str = "ckpt_";
/// The per-epoch scores analysed beside the minibatch ones.
const CKPT_SCORES: [&str; 3] = ["ckpt_el2n_mean", "ckpt_countforget", "ckpt_firstlearn"];

struct Setup {
    quick: bool,
    seeds: Vec<u64>,
    epochs: usize,
    batch: usize,
    permutations: usize,
    /// The text task: training and test sentences, epochs, batch, learning rate.
    text_train: u64,
    text_test: u64,
    text_epochs: usize,
    text_batch: usize,
    text_lr: f64,
    args: String,
}

impl Setup {
    fn new(quick: bool) -> Self {
        Self {
            quick,
            seeds: (0..if quick { 4 } else { 8 }).collect(),
            epochs: if quick { 2 } else { 20 },
            batch: 64,
            permutations: if quick { 100 } else { 1000 },
            text_train: if quick { 256 } else { 2000 },
            text_test: if quick { 64 } else { 500 },
            text_epochs: if quick { 2 } else { 15 },
            text_batch: 32,
            text_lr: 1e-3,
            args: String::new(),
        }
    }
}

/// The text task's BERT: 2 layers × 64, 4 heads, trained from scratch.
fn bert_config(vocab: usize) -> BertConfig {
    BertConfig {
        vocab_size: vocab,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        max_position_embeddings: 64,
        ..BertConfig::bert_base()
    }
}

struct Arch {
    name: &'static str,
    config: VisionConfig,
    lr: f64,
}

fn archs() -> Vec<Arch> {
    let input = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    vec![
        Arch {
            name: "mlp",
            config: VisionConfig::Mlp(MlpConfig {
                input,
                hidden: vec![64],
                classes: 10,
            }),
            lr: 3e-3,
        },
        Arch {
            name: "resnet",
            config: VisionConfig::Resnet(ResNetConfig {
                input,
                widths: vec![8, 16],
                blocks: 1,
                classes: 10,
            }),
            lr: 3e-3,
        },
        Arch {
            name: "vit",
            config: VisionConfig::Vit(VitConfig {
                dim: 32,
                depth: 2,
                heads: 2,
                mlp_dim: 64,
                ..VitConfig::tiny(8, 2, 1, 10)
            }),
            lr: 1e-3,
        },
    ]
}

/// One trained run: its score table (training examples only) and test accuracy.
struct Run {
    table: ScoreTable,
    test_acc: f64,
}

/// Every run: the image architectures (same data, compared with each other) and the text task.
struct Runs {
    images: Vec<(String, Vec<Run>)>,
    text: Vec<Run>,
    /// Seconds of prediction-depth probing per image run.
    depth_seconds: Vec<f64>,
    /// The text task's vocabulary and parameter count.
    text_vocab: usize,
    text_params: usize,
}

pub(crate) fn command(args: &[&str]) -> Result {
    let mut quick = false;
    let mut out = root().join("docs/reproductions");
    let (mut device, mut seeds) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .copied()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match *arg {
            "--quick" => quick = true,
            "--out" => out = PathBuf::from(value("--out")?),
            "--device" => device = Some(value("--device")?.to_owned()),
            "--seeds" => {
                seeds = Some(
                    value("--seeds")?
                        .parse::<u64>()
                        .map_err(|e| format!("--seeds: {e}"))?,
                );
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}` (expected --quick, --out DIR, --seeds N, --device cpu|cuda[:N])"
                )
                .into());
            }
        }
    }
    let device = crate::pipeline_device(device.as_deref())?.autodiff();
    let mut setup = Setup::new(quick);
    if let Some(n) = seeds {
        if n < 4 {
            return Err("--seeds must be at least 4 (two per half, and one to hold out)".into());
        }
        setup.seeds = (0..n).collect();
    }
    setup.args = crate::shown_args(args);
    let work = std::env::temp_dir().join(format!("kiln-repro-difficulty-{}", std::process::id()));
    let started = Instant::now();
    let result = run_all(&setup, &work, &device);
    let _ = std::fs::remove_dir_all(&work);
    let runs = result?;
    if runs.text.iter().all(|r| r.test_acc <= 0.5) && !setup.quick {
        eprintln!("warning: the text task stayed at chance in every run");
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let analysis = analyse(&setup, &runs)?;
    write_atomic(&out.join(PLOT), plot(&analysis)?.as_bytes())?;
    write_atomic(
        &out.join(EXAMPLES),
        sensitive_svg(&runs.images, &analysis)?.as_bytes(),
    )?;
    let md = report(&setup, &runs, &analysis, minutes);
    write_atomic(&out.join(REPORT), md.as_bytes())?;
    eprintln!("wrote {} and its plot", out.join(REPORT).display());
    Ok(())
}

fn run_all(setup: &Setup, work: &Path, device: &Device) -> Result<Runs> {
    let set = Arc::new(ImageSet::digits()?);
    let (train, test) = set.split(0.25, 0);
    let steps = (setup.epochs * train.len()).div_ceil(setup.batch) as u64;
    let mut images = Vec::new();
    let mut depth_seconds = Vec::new();
    for arch in archs() {
        let mut runs = Vec::new();
        for &seed in &setup.seeds {
            eprintln!("== {} seed {seed}: {steps} steps", arch.name);
            device.seed(1000 + seed);
            let model = ImageClassifier::init(&arch.config, device)?;
            let mut task = ImageClassificationTask::new(
                set.clone(),
                train.clone(),
                test.clone(),
                setup.batch,
                seed,
                device,
            )?;
            let mut algorithms: Vec<Box<dyn Algorithm<ImageClassifier>>> = vec![
                Box::new(TrainingScores::new(set.len())),
                Box::new(CheckpointScores::new(
                    set.len(),
                    "1ep".parse()?,
                    epoch_pass(set.clone(), train.clone()),
                )),
            ];
            let mut tc = TrainerConfig::new(
                Duration::batches(steps),
                OptimizerConfig::adamw(arch.lr, 0.0),
            );
            tc.progress_bar = false;
            tc.autoresume = false;
            tc.seed = seed;
            let dir = work.join(format!("{}-{seed}", arch.name));
            let outcome = Trainer::new(tc, &dir).fit(model, &mut task, &mut algorithms, device)?;
            let (test_acc, _) = evaluate_images(&outcome.model, &set, &test, 256)?;
            let mut scores = TrainingScores::new(set.len());
            Algorithm::<ImageClassifier>::load_state(&mut scores, &algorithms[0].state())?;
            let mut manifest =
                Manifest::new("UCI digits (scikit-learn's load_digits, CC BY 4.0)", seed);
            manifest.order = "column `example` = index in load_digits order; rows: the training split of ImageSet::split(0.25, 0)".into();
            manifest.recipe = serde_json::json!({
                "architecture": arch.name,
                "epochs": setup.epochs,
                "batch": setup.batch,
                "optimizer": "AdamW",
                "lr": arch.lr,
                "measured": "every minibatch presentation (scores before the step's update); columns ckpt_*: a pass over the training split in evaluation mode at the end of every epoch",
                DEPTH: format!("the final model in evaluation mode, kNN probes (k = {DEPTH_K}, Euclidean, each example among its own neighbours) on every layer's representation of the training split, fit and scored against the labels"),
            });
            let mut table = ScoreTable::from_tracker(scores.tracker(), manifest.clone());
            let per_epoch: ScoreTracker =
                serde_json::from_value(algorithms[1].state()["tracker"].clone())?;
            let per_epoch = ScoreTable::from_tracker(&per_epoch, manifest);
            // the per-epoch columns beside the minibatch ones (same rows: example ids)
            for (c, name) in per_epoch.columns.iter().enumerate().skip(1) {
                table.columns.push(format!("{CKPT}{name}"));
                for (row, other) in table.rows.iter_mut().zip(&per_epoch.rows) {
                    row.push(other[c]);
                }
            }
            table.rows = train.iter().map(|&i| table.rows[i].clone()).collect();
            let started = Instant::now();
            let depth = depth_of(&outcome.model, &set, &train)?;
            depth_seconds.push(started.elapsed().as_secs_f64());
            table.columns.push(DEPTH.into());
            for (row, d) in table.rows.iter_mut().zip(depth) {
                row.push(Some(d as f64));
            }
            let path = work.join(format!("{}-{seed}.scores", arch.name));
            table.save(&path, true)?;
            runs.push(Run {
                table: ScoreTable::load(&path)?,
                test_acc,
            });
        }
        images.push((arch.name.to_owned(), runs));
    }
    let (text, text_vocab, text_params) = run_text(setup, work, device)?;
    Ok(Runs {
        images,
        text,
        depth_seconds,
        text_vocab,
        text_params,
    })
}

/// A pass over the `train` images in evaluation mode, for [`CheckpointScores`].
fn epoch_pass(set: Arc<ImageSet>, train: Vec<usize>) -> PassFn<ImageClassifier> {
    Box::new(move |model: &ImageClassifier| {
        let valid = model.valid();
        let device = Device::flex();
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        let mut classes = 0;
        for chunk in train.chunks(256) {
            let (x, y) = image_batch(&set, chunk, &device);
            let z = valid.forward(x).map_err(|e| e.to_string())?;
            classes = z.dims()[1];
            logits.extend(
                z.into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .map_err(|e| format!("{e:?}"))?,
            );
            labels.extend(
                y.into_data()
                    .convert::<i64>()
                    .try_to_vec::<i64>()
                    .map_err(|e| format!("{e:?}"))?
                    .into_iter()
                    .map(|l| l as usize),
            );
        }
        Ok(Pass {
            ids: train.clone(),
            logits,
            classes,
            labels,
        })
    })
}

/// Prediction depth of the `train` images under the final model (evaluation mode): kNN probes
/// on every layer's representation, fit on the same images with their labels.
fn depth_of(model: &ImageClassifier, set: &ImageSet, train: &[usize]) -> Result<Vec<usize>> {
    let valid = model.valid();
    let device = Device::flex();
    let (x, y) = image_batch(set, train, &device);
    let layers = valid.layer_features(x)?;
    let dims: Vec<usize> = layers.iter().map(|t| t.dims()[1]).collect();
    let layers: Vec<Vec<f64>> = layers
        .into_iter()
        .map(|t| t.into_data().convert::<f64>().try_to_vec::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("reading representations: {e:?}"))?;
    let labels: Vec<usize> = y
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| format!("reading labels: {e:?}"))?
        .into_iter()
        .map(|l| l as usize)
        .collect();
    Ok(prediction_depth(
        &layers,
        &dims,
        &labels,
        &labels,
        DEPTH_K,
        Probe::IncludeSelf,
    )?)
}

/// The text task: BERT trained from scratch on kiln-data's acceptability probe (CoLA-like:
/// number agreement), every sentence scored at every presentation, `N` seeds.
fn run_text(setup: &Setup, work: &Path, device: &Device) -> Result<(Vec<Run>, usize, usize)> {
    let train_j = corpus::acceptability(5, 0, setup.text_train);
    let test_j = corpus::acceptability(5, 1_000_000, setup.text_test);
    let tokenizer = Tokenizer::train(
        TokenizerKind::WordPiece,
        train_j.iter().map(|j| j.text.as_str()),
        512,
        2,
    )?;
    let encode = |js: &[corpus::Judgement]| -> Result<Vec<LabelledSequence>> {
        js.iter()
            .map(|j| {
                Ok(LabelledSequence {
                    ids: tokenizer.encode(&j.text, true)?,
                    label: u32::from(j.acceptable),
                })
            })
            .collect()
    };
    let (train, test) = (encode(&train_j)?, encode(&test_j)?);
    let vocab = tokenizer.vocab_size();
    let pad = tokenizer.special_ids().pad.unwrap_or(0);
    let steps = (setup.text_epochs * train.len()).div_ceil(setup.text_batch) as u64;
    let mut runs = Vec::new();
    let mut params = 0;
    for &seed in &setup.seeds {
        eprintln!("== {TEXT} seed {seed}: {steps} steps");
        device.seed(2000 + seed);
        let model = BertForSequenceClassification::from_encoder(
            bert_config(vocab).init(device)?,
            2,
            device,
        )?;
        params = model.num_params();
        let mut task = ClassificationTask::new(
            train.clone(),
            test.clone(),
            setup.text_batch,
            pad,
            seed,
            device,
        )?;
        let mut algorithms: Vec<Box<dyn Algorithm<BertForSequenceClassification>>> =
            vec![Box::new(TrainingScores::new(train.len()))];
        let mut tc = TrainerConfig::new(
            Duration::batches(steps),
            OptimizerConfig::adamw(setup.text_lr, 0.0),
        );
        tc.progress_bar = false;
        tc.autoresume = false;
        tc.seed = seed;
        let dir = work.join(format!("{TEXT}-{seed}"));
        let outcome = Trainer::new(tc, &dir).fit(model, &mut task, &mut algorithms, device)?;
        let test_acc = outcome.eval.get("accuracy").copied().unwrap_or(f64::NAN);
        let mut scores = TrainingScores::new(train.len());
        Algorithm::<BertForSequenceClassification>::load_state(
            &mut scores,
            &algorithms[0].state(),
        )?;
        let mut manifest = Manifest::new(
            "kiln-data corpus::acceptability(seed 5), sentences 0..N (CoLA-like number agreement)",
            seed,
        );
        manifest.order = "column `example` = sentence index".into();
        manifest.recipe = serde_json::json!({
            "architecture": "BERT from scratch (2 layers × 64, 4 heads)",
            "epochs": setup.text_epochs,
            "batch": setup.text_batch,
            "optimizer": "AdamW",
            "lr": setup.text_lr,
            "measured": "every minibatch presentation (scores before the step's update)",
        });
        let table = ScoreTable::from_tracker(scores.tracker(), manifest);
        let path = work.join(format!("{TEXT}-{seed}.scores"));
        table.save(&path, true)?;
        runs.push(Run {
            table: ScoreTable::load(&path)?,
            test_acc,
        });
    }
    Ok((runs, vocab, params))
}

struct ArchAnalysis {
    name: String,
    /// The scores analysed (columns of the tables), in order.
    scores: Vec<String>,
    /// Per score: single-run split-half Spearman and the averaging curve.
    consistency: Vec<(String, f64, Vec<Averaged>)>,
    /// Spearman between scores, mean over runs, in `scores` order.
    cross: Vec<Vec<f64>>,
    /// PCA explained variance of the run-averaged, rank-transformed scores.
    pca: Vec<f64>,
    /// Run-averaged main score, per example.
    averaged: Vec<f64>,
}

impl ArchAnalysis {
    /// The single-run and largest-R split-half Spearman of `score`, if analysed.
    fn consistency_of(&self, score: &str) -> Option<(f64, f64)> {
        self.consistency
            .iter()
            .find(|c| c.0 == score)
            .map(|(_, single, curve)| (*single, curve.last().map_or(f64::NAN, |p| p.spearman)))
    }
}

struct Analysis {
    /// The image architectures, then the text task.
    archs: Vec<ArchAnalysis>,
    /// Spearman of the run-averaged main score between image architectures.
    between: Vec<(String, String, f64)>,
    fingerprint: Fingerprint,
}

fn column(runs: &[Run], score: &str) -> Result<Vec<Vec<f64>>> {
    Ok(runs
        .iter()
        .map(|r| r.table.values(score))
        .collect::<std::result::Result<_, _>>()?)
}

fn mean_of(cols: &[Vec<f64>]) -> Vec<f64> {
    (0..cols[0].len())
        .map(|e| cols.iter().map(|c| c[e]).sum::<f64>() / cols.len() as f64)
        .collect()
}

fn analyse_group(name: &str, runs: &[Run], scores: &[&str]) -> Result<ArchAnalysis> {
    let mut consistency = Vec::new();
    let mut averaged_cols = Vec::new();
    for s in scores {
        let cols = column(runs, s)?;
        let half = split_half(&cols, 0)?;
        let curve = averaging_curve(&cols, 10, 0)?;
        consistency.push(((*s).to_owned(), half.spearman, curve));
        averaged_cols.push(mean_of(&cols));
    }
    let k = scores.len();
    let mut cross = vec![vec![0.0; k]; k];
    for r in runs {
        let cols: Vec<Vec<f64>> = scores
            .iter()
            .map(|s| r.table.values(s))
            .collect::<std::result::Result<_, _>>()?;
        let m = kiln_scoring::consistency::cross_correlations(&cols)?;
        for i in 0..k {
            for j in 0..k {
                cross[i][j] += m[i][j] / runs.len() as f64;
            }
        }
    }
    // a score constant over the examples (e.g. no forgetting at all in --quick) has no
    // correlation; PCA over the others
    let varying: Vec<Vec<f64>> = averaged_cols
        .iter()
        .filter(|c| c.iter().any(|v| *v != c[0]))
        .cloned()
        .collect();
    let pca = explained_variance(&varying, true)?;
    let main = scores.iter().position(|s| *s == MAIN).unwrap_or(0);
    Ok(ArchAnalysis {
        name: name.to_owned(),
        scores: scores.iter().map(|s| (*s).to_owned()).collect(),
        consistency,
        cross,
        pca,
        averaged: averaged_cols[main].clone(),
    })
}

fn analyse(setup: &Setup, runs: &Runs) -> Result<Analysis> {
    let mut image_scores = SCORES.to_vec();
    image_scores.extend(CKPT_SCORES);
    image_scores.push(DEPTH);
    let mut archs = Vec::new();
    for (name, r) in &runs.images {
        archs.push(analyse_group(name, r, &image_scores)?);
    }
    let mut between = Vec::new();
    for i in 0..archs.len() {
        for j in i + 1..archs.len() {
            let c = spearman(&archs[i].averaged, &archs[j].averaged)?.unwrap_or(0.0);
            between.push((archs[i].name.clone(), archs[j].name.clone(), c));
        }
    }
    let groups: Vec<Group> = runs
        .images
        .iter()
        .map(|(name, runs)| {
            Ok(Group {
                name: name.clone(),
                runs: column(runs, MAIN)?,
            })
        })
        .collect::<Result<_>>()?;
    let fingerprint = fingerprint(
        &groups,
        &Options {
            permutations: setup.permutations,
            seed: 0,
            top: 10,
            rank: true,
        },
    )?;
    archs.push(analyse_group(TEXT, &runs.text, &SCORES)?);
    Ok(Analysis {
        archs,
        between,
        fingerprint,
    })
}

fn plot(a: &Analysis) -> Result<String> {
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (1900, 560)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = area.split_evenly((1, a.archs.len()));
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(127, 127, 127),
            RGBColor(23, 190, 207),
            RGBColor(188, 189, 34),
            RGBColor(40, 40, 40),
            RGBColor(255, 152, 150),
        ];
        for (panel, arch) in panels.iter().zip(&a.archs) {
            let max_r = arch
                .consistency
                .iter()
                .map(|c| c.2.len())
                .max()
                .unwrap_or(1);
            let lo = arch
                .consistency
                .iter()
                .flat_map(|c| c.2.iter().map(|p| p.spearman))
                .fold(1.0f64, f64::min)
                .min(0.0);
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("{}: split-half Spearman vs runs averaged", arch.name),
                    ("sans-serif", 16),
                )
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(48)
                .build_cartesian_2d(0.8f64..(max_r as f64 + 0.2), lo..1.0f64)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("runs averaged per half (R)")
                .y_desc("Spearman between halves")
                .draw()
                .map_err(|e| e.to_string())?;
            for ((score, _, curve), c) in arch.consistency.iter().zip(colors) {
                let pts: Vec<(f64, f64)> =
                    curve.iter().map(|p| (p.runs as f64, p.spearman)).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(score.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        area.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The most architecture-sensitive examples (smallest permutation p-value over the pairs of
/// architectures, then the largest rank difference), with each architecture's run-averaged
/// rank of the main score (higher = harder).
fn most_sensitive(a: &Analysis) -> Vec<(usize, f64, f64)> {
    let mut best: std::collections::BTreeMap<usize, (f64, f64)> = std::collections::BTreeMap::new();
    for p in &a.fingerprint.pairs {
        for t in &p.tests {
            let e = best.entry(t.example).or_insert((f64::INFINITY, 0.0));
            if t.p < e.0 || (t.p == e.0 && t.difference.abs() > e.1) {
                *e = (t.p, t.difference.abs());
            }
        }
    }
    let mut v: Vec<(usize, f64, f64)> = best.into_iter().map(|(e, (p, d))| (e, p, d)).collect();
    v.sort_by(|x, y| {
        x.1.total_cmp(&y.1)
            .then(y.2.total_cmp(&x.2))
            .then(x.0.cmp(&y.0))
    });
    v.truncate(SHOWN);
    v
}

/// The [`most_sensitive`] digits as an SVG grid: the 8×8 image, its id and label, and each
/// architecture's rank of the run-averaged main score.
fn sensitive_svg(all: &[(String, Vec<Run>)], a: &Analysis) -> Result<String> {
    let set = ImageSet::digits()?;
    let image_archs = &a.archs[..all.len()];
    let ranks: Vec<Vec<f64>> = image_archs
        .iter()
        .map(|x| kiln_scoring::stats::rankdata(&x.averaged))
        .collect::<std::result::Result<_, _>>()?;
    let n = ranks.first().map_or(0, Vec::len);
    let shown = most_sensitive(a);
    let (cell, px, cols) = (150usize, 12usize, 6usize);
    let rows = shown.len().div_ceil(cols).max(1);
    let (w, h) = (cols * cell, rows * (cell + 40) + 30);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n<text x=\"8\" y=\"18\" font-size=\"13\">Most architecture-sensitive training digits ({MAIN}; rank of {n}, higher = harder)</text>\n"
    );
    for (k, &(row, p, _)) in shown.iter().enumerate() {
        let id = all[0].1[0].table.rows[row][0].unwrap_or(f64::NAN) as usize;
        let (x0, y0) = ((k % cols) * cell + 27, (k / cols) * (cell + 40) + 30);
        let img = set.image(id);
        for (i, v) in img.iter().enumerate() {
            let g = (255.0 * (1.0 - f64::from(*v))).round() as u8;
            let _ = writeln!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{px}\" height=\"{px}\" fill=\"rgb({g},{g},{g})\"/>",
                x0 + (i % set.width) * px,
                y0 + (i / set.width) * px
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{x0}\" y=\"{}\">#{id} (label {}) p {p:.3}</text>",
            y0 + set.height * px + 14,
            set.labels[id]
        );
        let line: Vec<String> = image_archs
            .iter()
            .zip(&ranks)
            .map(|(x, r)| format!("{} {:.0}", x.name, r[row]))
            .collect();
        let _ = writeln!(
            svg,
            "<text x=\"{x0}\" y=\"{}\" font-size=\"10\">{}</text>",
            y0 + set.height * px + 28,
            line.join(" · ")
        );
    }
    svg.push_str("</svg>\n");
    Ok(svg)
}

fn report(setup: &Setup, runs: &Runs, a: &Analysis, minutes: f64) -> String {
    let all = &runs.images;
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let n_examples = all[0].1[0].table.rows.len();
    let _ = writeln!(
        out,
        "# Dataset difficulty and the role of inductive bias, at small scale\n"
    );
    let _ = writeln!(
        out,
        "Generated by `cargo xtask repro difficulty{}{}` in {minutes:.1} min on {cores} CPU cores. Every number below is computed by that run.{}\n",
        if setup.args.is_empty() { "" } else { " " },
        setup.args,
        if setup.quick {
            " `--quick` mode: four seeds and two epochs — it checks that the pipeline runs, nothing more."
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "Paper: Kwok, Anand, Frankle, Dziugaite, Rolnick, *Dataset Difficulty and the Role of Inductive Bias*. Its claims: example-difficulty scores from a single run are noisy (their rankings agree imperfectly between runs) and become reliable when averaged over runs; the different scores largely share one notion of difficulty; and a few examples are sensitive to the architecture, enough to tell which architecture produced a run.\n"
    );
    let _ = writeln!(out, "## Set-up\n");
    let _ = writeln!(
        out,
        "- Data: the UCI handwritten digits (1,797 8×8 images, scikit-learn's copy, CC BY 4.0), stratified split `ImageSet::split(0.25, 0)`: {n_examples} training images scored, the rest for test accuracy."
    );
    for (arch, (name, runs)) in archs().iter().zip(all) {
        let accs: Vec<f64> = runs.iter().map(|r| r.test_acc).collect();
        let acc = crate::bench::Spread::of(&accs);
        let _ = writeln!(
            out,
            "- **{name}**: {}; AdamW lr {:e}; test accuracy median {} over {} seeds.",
            match &arch.config {
                VisionConfig::Mlp(c) => format!("an MLP 64 → {:?} → 10", c.hidden),
                VisionConfig::Resnet(c) => format!(
                    "a ResNet (widths {:?}, {} basic block per stage)",
                    c.widths, c.blocks
                ),
                VisionConfig::Vit(c) => format!(
                    "a ViT (patch {}, width {}, depth {}, {} heads)",
                    c.patch, c.dim, c.depth, c.heads
                ),
            },
            arch.lr,
            acc.map_or_else(|| "–".into(), |a| a.show(|x| format!("{x:.3}"))),
            runs.len()
        );
    }
    let _ = writeln!(
        out,
        "- Each run: {} epochs of batch {}, seeds vary the initialisation and the data order. `kiln_scoring::train::TrainingScores` scores every example at every presentation (before that step's update); a score's value per example is its mean over the {} presentations (`*_mean`; `aum` = mean logit margin), `countforget` counts 1 → 0 accuracy transitions (from an unlearned start), `firstlearn` is the first presentation classified right. Each run's table is written as a `NAME.scores` directory and read back for the analysis.",
        setup.epochs, setup.batch, setup.epochs
    );
    let _ = writeln!(
        out,
        "- Per-epoch scores (the paper's measurement): `kiln_scoring::train::CheckpointScores` runs the training images through the model in evaluation mode at the end of every epoch; `ckpt_el2n_mean` is the mean EL2N over the {} passes, `ckpt_countforget` and `ckpt_firstlearn` Toneva et al.'s forgetting events and first-learned epoch counted on those passes.",
        setup.epochs
    );
    let depth_s = crate::bench::Spread::of(&runs.depth_seconds);
    let _ = writeln!(
        out,
        "- `{DEPTH}` (prediction depth, Baldock et al.): after training, the final model in evaluation mode gives every layer's representation of the training images (`ImageClassifier::layer_features`: the MLP's hidden layer; the ResNet's stem, each block and the pooled features; the ViT's token sequence after the embedding and each block, then its normed class token); a kNN probe (k = {DEPTH_K}, Euclidean, each image among its own neighbours, as nn_example_difficulty) per layer is fit on the labels, and the depth is the first layer from which every later probe is right. It took {} per run.",
        depth_s.map_or_else(|| "–".into(), |d| d.show(|x| format!("{x:.1} s")))
    );
    let accs: Vec<f64> = runs.text.iter().map(|r| r.test_acc).collect();
    let _ = writeln!(
        out,
        "- **{TEXT}** (the text task): kiln-data's acceptability probe (CoLA-like: sentences of the prose grammar, half broken by a number-agreement error; sentences 0..{} of seed 5 for training, {} others for test), a WordPiece vocabulary of {} trained on the training sentences, BERT trained from scratch ({} parameters: 2 layers × 64, 4 heads), {} epochs of batch {}, AdamW lr {:e}, the same {} seeds; test accuracy median {} (chance 0.5). Scored like the images, without `{DEPTH}`.",
        setup.text_train,
        setup.text_test,
        runs.text_vocab,
        runs.text_params,
        setup.text_epochs,
        setup.text_batch,
        setup.text_lr,
        runs.text.len(),
        crate::bench::Spread::of(&accs)
            .map_or_else(|| "–".into(), |a| a.show(|x| format!("{x:.3}")))
    );
    let _ = writeln!(
        out,
        "- Consistency: split-half Spearman (runs shuffled with seed 0, run i of one half against run i of the other, averaged); the curve averages R runs per half over 10 random splits. Fingerprint: per-example permutation tests of `{MAIN}` ranks between every pair of architectures ({} permutations, seed 0, Benjamini–Hochberg), the 10 most sensitive examples per pair, and a nearest-centroid classifier on them, leave-one-run-out with the examples re-selected without the held-out run.\n",
        setup.permutations
    );
    let _ = writeln!(out, "## Consistency of single runs, and of averages\n");
    let _ = writeln!(
        out,
        "Split-half Spearman of a single run (R = 1) and of R-run averages (largest R):\n"
    );
    let mut header = String::from("| score |");
    let mut rule = String::from("|---|");
    for arch in &a.archs {
        let r_max = arch.consistency[0].2.last().map_or(1, |p| p.runs);
        let _ = write!(header, " {} R=1 | {} R={r_max} |", arch.name, arch.name);
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for s in &a.archs[0].scores {
        let mut row = format!("| {s} |");
        for arch in &a.archs {
            match arch.consistency_of(s) {
                Some((single, last)) => {
                    let _ = write!(row, " {single:.3} | {last:.3} |");
                }
                None => row.push_str(" – | – |"),
            }
        }
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out, "\n![consistency vs runs averaged]({PLOT})\n");
    // verdicts
    let singles: Vec<f64> = a
        .archs
        .iter()
        .flat_map(|x| x.consistency.iter().map(|c| c.1))
        .collect();
    let max_single = singles.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min_single = singles.iter().copied().fold(f64::INFINITY, f64::min);
    let below = singles.iter().filter(|&&s| s < 0.9).count();
    let rises = a
        .archs
        .iter()
        .flat_map(|x| x.consistency.iter())
        .filter(|c| c.2.len() > 1)
        .filter(|c| c.2.last().is_some_and(|l| l.spearman > c.2[0].spearman))
        .count();
    let curves = a
        .archs
        .iter()
        .flat_map(|x| x.consistency.iter())
        .filter(|c| c.2.len() > 1)
        .count();
    let _ = writeln!(
        out,
        "- Single runs agree imperfectly: single-run split-half Spearman ranges from {min_single:.3} to {max_single:.3} over the {} (score, architecture) pairs, below 0.9 for {below} of them{}.",
        singles.len(),
        if below * 2 >= singles.len() {
            " — as the paper says, one run's ranking is noisy"
        } else {
            " — most scores are already stable in one run on this small, easy data set; the counts over presentations (forgetting, first learned) are the noisy ones"
        }
    );
    let _ = writeln!(
        out,
        "- Averaging runs raises consistency for {rises} of {curves} (score, architecture) curves (largest R against R = 1){}.\n",
        if curves > 0 && rises == curves {
            ", as the paper finds"
        } else if curves > 0 && 2 * rises > curves {
            ", for most, as the paper finds"
        } else {
            "; the paper's rise with averaging does not show here"
        }
    );
    let _ = writeln!(out, "## One notion of difficulty?\n");
    for arch in &a.archs {
        let _ = writeln!(
            out,
            "- **{}**: PCA of the run-averaged, rank-transformed scores — explained variance {} (first component {:.0}%).",
            arch.name,
            arch.pca
                .iter()
                .take(4)
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            100.0 * arch.pca[0]
        );
    }
    for x in [&a.archs[0], &a.archs[a.archs.len() - 1]] {
        let _ = writeln!(
            out,
            "\nSpearman between scores within a run ({}, mean over runs):\n",
            x.name
        );
        let mut h = String::from("| |");
        let mut r = String::from("|---|");
        for s in &x.scores {
            let _ = write!(h, " {s} |");
            r.push_str("---:|");
        }
        let _ = writeln!(out, "{h}\n{r}");
        for (i, s) in x.scores.iter().enumerate() {
            let mut row = format!("| {s} |");
            for j in 0..x.scores.len() {
                let _ = write!(row, " {:+.2} |", x.cross[i][j]);
            }
            let _ = writeln!(out, "{row}");
        }
    }
    let _ = writeln!(out, "\n## Architectures\n");
    for (x, y, c) in &a.between {
        let _ = writeln!(
            out,
            "- {x} vs {y}: Spearman of the run-averaged `{MAIN}` = {c:.3}."
        );
    }
    let fp = &a.fingerprint;
    let _ = writeln!(out);
    for p in &fp.pairs {
        let sig = p.tests.iter().filter(|t| t.q < 0.05).count();
        let _ = writeln!(
            out,
            "- {} vs {}: {sig} of {} examples differ at BH q < 0.05; most sensitive: {}.",
            p.a,
            p.b,
            p.tests.len(),
            p.tests
                .iter()
                .take(5)
                .map(|t| format!(
                    "#{} (Δrank {:+.0}, p {:.3})",
                    all[0].1[0].table.rows[t.example][0].unwrap_or(f64::NAN),
                    t.difference,
                    t.p
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n![the most architecture-sensitive digits]({EXAMPLES})\n\nThe {} digits above have the smallest permutation p-values between some pair of architectures; under each, every architecture's rank of the run-averaged `{MAIN}` among the {} training digits (higher = harder for that architecture).\n",
        most_sensitive(a).len(),
        all[0].1[0].table.rows.len()
    );
    let _ = writeln!(
        out,
        "- A nearest-centroid classifier on the {} most sensitive examples names the architecture of a held-out run with accuracy {:.3} (chance {:.3}, {} runs){}.\n",
        fp.sensitive.len(),
        fp.accuracy,
        fp.chance,
        fp.predictions.len(),
        if fp.accuracy > fp.chance + 0.2 {
            ": a few examples fingerprint the architecture, as the paper claims"
        } else {
            ": here the fingerprint is weak"
        }
    );
    let _ = writeln!(out, "## Compared with the paper\n");
    let _ = writeln!(
        out,
        "The paper trains CIFAR-10 models for 160 epochs with dozens of replicates; this run trains {} image architectures on 8×8 digits for {} epochs and a small BERT on a generated text task for {} epochs, {} seeds each, so the numbers are not comparable, only the direction of each claim. Example ids in the image tables are indices in scikit-learn's `load_digits` order. Point by point:\n",
        all.len(),
        setup.epochs,
        setup.text_epochs,
        setup.seeds.len()
    );
    let text = &a.archs[a.archs.len() - 1];
    let image_archs = &a.archs[..all.len()];
    let one_axis = a.archs.iter().filter(|x| x.pca[0] >= 0.5).count();
    let _ = writeln!(
        out,
        "- *Scores from one run are noisy; averaging runs makes them reliable.* Single-run split-half Spearman {min_single:.3}–{max_single:.3} (below 0.9 for {below} of {} pairs); averaging raises it for {rises} of {curves} curves (above).",
        singles.len()
    );
    let _ = writeln!(
        out,
        "- *The scores share one main axis of difficulty.* The first principal component of the run-averaged scores explains at least half of their variance for {one_axis} of {} groups ({}).",
        a.archs.len(),
        a.archs
            .iter()
            .map(|x| format!("{} {:.0}%", x.name, 100.0 * x.pca[0]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let depth_rho: Vec<(String, f64)> = image_archs
        .iter()
        .filter_map(|x| {
            let i = x.scores.iter().position(|s| s == DEPTH)?;
            let j = x.scores.iter().position(|s| s == MAIN)?;
            Some((x.name.clone(), x.cross[i][j]))
        })
        .collect();
    let depth_corr: Vec<String> = depth_rho
        .iter()
        .map(|(name, r)| format!("{name} {r:+.2}"))
        .collect();
    let depth_rho: Vec<f64> = depth_rho.into_iter().map(|(_, r)| r).collect();
    let depth_cons: Vec<String> = image_archs
        .iter()
        .filter_map(|x| {
            x.consistency_of(DEPTH)
                .map(|(single, last)| format!("{} {single:.3} → {last:.3}", x.name))
        })
        .collect();
    let weak = depth_rho.iter().filter(|r| r.abs() < 0.5).count();
    let _ = writeln!(
        out,
        "- *Prediction depth, a layer-wise measure, on the same axis?* Its within-run Spearman with `{MAIN}`: {}; its split-half consistency (one run → largest R): {}. {} It is measured once, on the final model, while the other scores average a measurement per presentation or per epoch.",
        depth_corr.join(", "),
        depth_cons.join(", "),
        if weak == 0 {
            "It ranks examples like the output-based scores for every architecture."
        } else if weak == depth_rho.len() {
            "It shares much less with the output-based scores (|ρ| < 0.5 for every architecture) than they share with each other."
        } else {
            "It agrees with the output-based scores for some architectures and not others."
        }
    );
    let zero: Vec<(String, f64)> = all
        .iter()
        .map(|(name, runs)| {
            let (mut zeros, mut n) = (0usize, 0usize);
            for r in runs {
                if let Ok(v) = r.table.values(DEPTH) {
                    zeros += v.iter().filter(|d| **d == 0.0).count();
                    n += v.len();
                }
            }
            (name.clone(), zeros as f64 / n.max(1) as f64)
        })
        .collect();
    let _ = writeln!(
        out,
        "  Share of training images at depth 0 (every probe right from the first layer on): {}{}.",
        zero.iter()
            .map(|(name, z)| format!("{name} {:.0}%", 100.0 * z))
            .collect::<Vec<_>>()
            .join(", "),
        if zero.iter().any(|(_, z)| *z > 0.5) {
            " — where most images tie at 0, the depth ranks only the rest"
        } else {
            ""
        }
    );
    let fp = &a.fingerprint;
    let _ = writeln!(
        out,
        "- *A few examples are sensitive to the architecture and fingerprint it.* Held-out-run classification from the {} most sensitive examples: {:.3} against chance {:.3}.",
        fp.sensitive.len(),
        fp.accuracy,
        fp.chance
    );
    let (t_single, t_last) = text.consistency_of(MAIN).unwrap_or((f64::NAN, f64::NAN));
    let _ = writeln!(
        out,
        "- *On text* (not in the paper, which studies images): BERT's `{MAIN}` has single-run split-half Spearman {t_single:.3}, {t_last:.3} with the largest R; its first principal component explains {:.0}%. {}",
        100.0 * text.pca[0],
        if t_last > t_single {
            "The same pattern as the images: averaging runs helps."
        } else {
            "Averaging runs does not raise it here."
        }
    );
    let _ = writeln!(
        out,
        "\nNot done here: VoG (in kiln-scoring, `kiln_scoring::vog`, tested against PyTorch, but not run here), per-epoch scores and prediction depth for BERT, fingerprinting between text architectures (one BERT configuration), and data augmentation (the digits are used as they are)."
    );
    out
}
