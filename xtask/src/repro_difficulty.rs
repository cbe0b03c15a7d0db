//! `cargo xtask repro difficulty [--quick] [--out DIR] [--seeds N] [--device cpu|cuda[:N]]`:
//! Kwok, Anand, Frankle, Dziugaite, Rolnick, "Dataset Difficulty and the Role of Inductive Bias",
//! at small scale on the UCI digits. Three architectures (kiln-models' MLP, a small ResNet, a tiny
//! ViT) × N seeds train with `kiln_scoring::train::TrainingScores` recording every example's
//! scores at every presentation; each run's scores are written as a `NAME.scores` table; then
//! the report measures how consistent single runs are (split-half Spearman), how that rises when
//! averaging R runs, how the scores correlate (and their PCA), how architectures agree, and
//! whether a few examples fingerprint an architecture (permutation tests + a held-out-run
//! classifier). Writes `difficulty.md`, `difficulty-consistency.svg` and
//! `difficulty-sensitive.svg` (the most sensitive digits).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_data::images::ImageSet;
use kiln_models::vision::{
    ImageClassifier, ImageShape, MlpConfig, ResNetConfig, VisionConfig, VitConfig,
};
use kiln_schedules::Duration;
use kiln_scoring::consistency::{Averaged, averaging_curve, explained_variance, split_half};
use kiln_scoring::files::{Manifest, ScoreTable};
use kiln_scoring::fingerprint::{Fingerprint, Group, Options, fingerprint};
use kiln_scoring::stats::spearman;
use kiln_scoring::train::TrainingScores;
use kiln_train::burn::tensor::Device;
use kiln_train::tasks::{ImageClassificationTask, evaluate_images};
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

struct Setup {
    quick: bool,
    seeds: Vec<u64>,
    epochs: usize,
    batch: usize,
    permutations: usize,
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
            args: String::new(),
        }
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
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let analysis = analyse(&setup, &runs)?;
    write_atomic(&out.join(PLOT), plot(&analysis)?.as_bytes())?;
    write_atomic(
        &out.join(EXAMPLES),
        sensitive_svg(&runs, &analysis)?.as_bytes(),
    )?;
    let md = report(&setup, &runs, &analysis, minutes);
    write_atomic(&out.join(REPORT), md.as_bytes())?;
    eprintln!("wrote {} and its plot", out.join(REPORT).display());
    Ok(())
}

fn run_all(setup: &Setup, work: &Path, device: &Device) -> Result<Vec<(String, Vec<Run>)>> {
    let set = Arc::new(ImageSet::digits()?);
    let (train, test) = set.split(0.25, 0);
    let steps = (setup.epochs * train.len()).div_ceil(setup.batch) as u64;
    let mut all = Vec::new();
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
            let mut algorithms: Vec<Box<dyn Algorithm<ImageClassifier>>> =
                vec![Box::new(TrainingScores::new(set.len()))];
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
                "measured": "every minibatch presentation (scores before the step's update)",
            });
            let mut table = ScoreTable::from_tracker(scores.tracker(), manifest);
            table.rows = train.iter().map(|&i| table.rows[i].clone()).collect();
            table.save(&work.join(format!("{}-{seed}.scores", arch.name)), true)?;
            runs.push(Run {
                table: ScoreTable::load(&work.join(format!("{}-{seed}.scores", arch.name)))?,
                test_acc,
            });
        }
        all.push((arch.name.to_owned(), runs));
    }
    Ok(all)
}

struct ArchAnalysis {
    name: String,
    /// Per score: single-run split-half Spearman and the averaging curve.
    consistency: Vec<(String, f64, Vec<Averaged>)>,
    /// Spearman between scores, mean over runs, in `SCORES` order.
    cross: Vec<Vec<f64>>,
    /// PCA explained variance of the run-averaged, rank-transformed scores.
    pca: Vec<f64>,
    /// Run-averaged main score, per example.
    averaged: Vec<f64>,
}

struct Analysis {
    archs: Vec<ArchAnalysis>,
    /// Spearman of the run-averaged main score between architectures.
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

fn analyse(setup: &Setup, all: &[(String, Vec<Run>)]) -> Result<Analysis> {
    let mut archs = Vec::new();
    for (name, runs) in all {
        let mut consistency = Vec::new();
        let mut averaged_cols = Vec::new();
        for s in SCORES {
            let cols = column(runs, s)?;
            let half = split_half(&cols, 0)?;
            let curve = averaging_curve(&cols, 10, 0)?;
            consistency.push((s.to_owned(), half.spearman, curve));
            averaged_cols.push(mean_of(&cols));
        }
        let k = SCORES.len();
        let mut cross = vec![vec![0.0; k]; k];
        for r in runs {
            let cols: Vec<Vec<f64>> = SCORES
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
        let main = SCORES.iter().position(|s| *s == MAIN).unwrap_or(0);
        archs.push(ArchAnalysis {
            name: name.clone(),
            consistency,
            cross,
            pca,
            averaged: averaged_cols[main].clone(),
        });
    }
    let mut between = Vec::new();
    for i in 0..archs.len() {
        for j in i + 1..archs.len() {
            let c = spearman(&archs[i].averaged, &archs[j].averaged)?.unwrap_or(0.0);
            between.push((archs[i].name.clone(), archs[j].name.clone(), c));
        }
    }
    let groups: Vec<Group> = all
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
    Ok(Analysis {
        archs,
        between,
        fingerprint,
    })
}

fn plot(a: &Analysis) -> Result<String> {
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (1500, 440)).into_drawing_area();
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
    let ranks: Vec<Vec<f64>> = a
        .archs
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
        let line: Vec<String> = a
            .archs
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

fn report(setup: &Setup, all: &[(String, Vec<Run>)], a: &Analysis, minutes: f64) -> String {
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
    for (i, s) in SCORES.iter().enumerate() {
        let mut row = format!("| {s} |");
        for arch in &a.archs {
            let (_, single, curve) = &arch.consistency[i];
            let last = curve.last().map_or(f64::NAN, |p| p.spearman);
            let _ = write!(row, " {single:.3} | {last:.3} |");
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
    let first = &a.archs[0];
    let _ = writeln!(
        out,
        "\nSpearman between scores within a run ({}, mean over runs):\n",
        first.name
    );
    let mut h = String::from("| |");
    let mut r = String::from("|---|");
    for s in SCORES {
        let _ = write!(h, " {s} |");
        r.push_str("---:|");
    }
    let _ = writeln!(out, "{h}\n{r}");
    for (i, s) in SCORES.iter().enumerate() {
        let mut row = format!("| {s} |");
        for j in 0..SCORES.len() {
            let _ = write!(row, " {:+.2} |", first.cross[i][j]);
        }
        let _ = writeln!(out, "{row}");
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
        "The paper trains CIFAR-10 models for 160 epochs with dozens of replicates; this run trains {} architectures on 8×8 digits for {} epochs with {} seeds each, so the numbers are not comparable, only the direction of each claim. Example ids in the tables are indices in scikit-learn's `load_digits` order. Not done here: scores measured at checkpoints on un-augmented data (the paper's per-epoch evaluation; these are minibatch measurements), VoG, prediction depth and a text task with BERT (kiln issue #16).",
        a.archs.len(),
        setup.epochs,
        setup.seeds.len()
    );
    out
}
