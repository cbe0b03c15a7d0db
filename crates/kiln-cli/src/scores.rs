//! `kiln scores`: how consistent example-difficulty scores are across runs, and which examples
//! fingerprint an architecture (kiln-scoring's `NAME.scores` directories).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use kiln_scoring::consistency::{
    averaging_curve, cross_correlations, explained_variance, split_half,
};
use kiln_scoring::files::ScoreTable;
use kiln_scoring::fingerprint::{Group, Options, fingerprint};
use serde_json::json;

use crate::error::CliError;

#[derive(Debug, Subcommand)]
pub(crate) enum ScoresCommand {
    /// Split-half consistency of one score across runs of one recipe, its growth when each half
    /// averages R runs, the Spearman correlations between scores within a run, and the PCA
    /// explained variance of the run-averaged score matrix.
    Consistency(ConsistencyArgs),
    /// Per-example permutation tests between architectures (Benjamini–Hochberg adjusted), the
    /// most sensitive examples, and how well they name the architecture of a held-out run.
    Fingerprint(FingerprintArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ConsistencyArgs {
    /// Score directories (`NAME.scores`, written by kiln-scoring), one per run, at least two.
    #[arg(value_name = "RUN.scores", num_args = 2.., required = true)]
    runs: Vec<PathBuf>,
    /// The score column to test (e.g. el2n_mean, loss_mean, aum, countforget, firstlearn).
    #[arg(long, default_value = "el2n_mean")]
    score: String,
    /// Score columns correlated with each other and put through the PCA (comma-separated).
    #[arg(
        long,
        default_value = "loss_mean,el2n_mean,conf_mean,ent_mean,margin_mean,aum,countforget,firstlearn",
        value_delimiter = ','
    )]
    scores: Vec<String>,
    /// Random splits averaged per point of the averaging curve.
    #[arg(long, default_value_t = 10)]
    splits: usize,
    /// Seed of the splits.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct FingerprintArgs {
    /// An architecture and its runs: NAME=RUN.scores,RUN.scores,… (at least 3 runs; give at
    /// least two groups).
    #[arg(long = "group", value_name = "NAME=RUNS", required = true)]
    groups: Vec<String>,
    /// The score column compared.
    #[arg(long, default_value = "el2n_mean")]
    score: String,
    /// Label permutations per test (the smallest p-value is 1/(permutations + 1)).
    #[arg(long, default_value_t = 1000)]
    permutations: usize,
    /// Most sensitive examples kept per pair of architectures for the classifier.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Compare raw scores instead of each run's ranks.
    #[arg(long)]
    no_rank: bool,
    /// Seed of the permutations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: ScoresCommand) -> Result<(), CliError> {
    match cmd {
        ScoresCommand::Consistency(a) => consistency(a),
        ScoresCommand::Fingerprint(a) => fingerprint_cmd(a),
    }
}

fn load(path: &Path) -> Result<ScoreTable, CliError> {
    Ok(ScoreTable::load(path)?)
}

fn consistency(a: ConsistencyArgs) -> Result<(), CliError> {
    let tables: Vec<ScoreTable> = a.runs.iter().map(|p| load(p)).collect::<Result<_, _>>()?;
    let runs: Vec<Vec<f64>> = tables
        .iter()
        .map(|t| t.values(&a.score))
        .collect::<Result<_, _>>()?;
    let half = split_half(&runs, a.seed)?;
    let curve = averaging_curve(&runs, a.splits, a.seed)?;
    // within-run correlations (averaged over runs) and the PCA of the run-averaged matrix
    let k = a.scores.len();
    let mut mean_corr = vec![vec![0.0; k]; k];
    for t in &tables {
        let cols: Vec<Vec<f64>> = a
            .scores
            .iter()
            .map(|s| t.values(s))
            .collect::<Result<_, _>>()?;
        let m = cross_correlations(&cols)?;
        for i in 0..k {
            for j in 0..k {
                mean_corr[i][j] += m[i][j] / tables.len() as f64;
            }
        }
    }
    let n = runs[0].len();
    let averaged: Vec<Vec<f64>> = a
        .scores
        .iter()
        .map(|s| {
            let cols: Vec<Vec<f64>> = tables
                .iter()
                .map(|t| t.values(s))
                .collect::<Result<_, _>>()?;
            Ok((0..n)
                .map(|e| cols.iter().map(|c| c[e]).sum::<f64>() / cols.len() as f64)
                .collect())
        })
        .collect::<Result<_, CliError>>()?;
    let pca = explained_variance(&averaged, true)?;
    if a.json {
        let out = json!({
            "score": a.score,
            "runs": a.runs.len(),
            "examples": n,
            "split_half": half,
            "averaging": curve,
            "scores": a.scores,
            "cross_correlations": mean_corr,
            "pca_explained_variance": pca,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(CliError::Json)?
        );
        return Ok(());
    }
    println!(
        "{} runs × {n} examples, score {}: single-run split-half Spearman {:.4}, Pearson {:.4} ({} pairs)",
        a.runs.len(),
        a.score,
        half.spearman,
        half.pearson,
        half.pairs
    );
    println!("\nruns averaged per half | Spearman | Pearson");
    for p in &curve {
        println!("{:>22} | {:>8.4} | {:>7.4}", p.runs, p.spearman, p.pearson);
    }
    println!("\nSpearman between scores within a run (mean over runs):");
    println!(
        "{:>14} {}",
        "",
        a.scores
            .iter()
            .map(|s| format!("{s:>12.12}"))
            .collect::<String>()
    );
    for (i, row) in mean_corr.iter().enumerate() {
        println!(
            "{:>14.14} {}",
            a.scores[i],
            row.iter().map(|v| format!("{v:>12.3}")).collect::<String>()
        );
    }
    println!(
        "\nPCA of the run-averaged, rank-transformed scores: explained variance {}",
        pca.iter()
            .map(|v| format!("{v:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn fingerprint_cmd(a: FingerprintArgs) -> Result<(), CliError> {
    let mut groups = Vec::new();
    for g in &a.groups {
        let (name, runs) = g.split_once('=').ok_or_else(|| {
            CliError::Usage(format!(
                "--group `{g}`: expected NAME=RUN.scores,RUN.scores,…"
            ))
        })?;
        let runs: Vec<Vec<f64>> = runs
            .split(',')
            .filter(|r| !r.is_empty())
            .map(|r| {
                load(&PathBuf::from(r))?
                    .values(&a.score)
                    .map_err(CliError::from)
            })
            .collect::<Result<_, _>>()?;
        groups.push(Group {
            name: name.to_owned(),
            runs,
        });
    }
    let options = Options {
        permutations: a.permutations,
        seed: a.seed,
        top: a.top,
        rank: !a.no_rank,
    };
    let fp = fingerprint(&groups, &options)?;
    if a.json {
        let out = json!({
            "score": a.score,
            "permutations": a.permutations,
            "seed": a.seed,
            "sensitive": fp.sensitive,
            "accuracy": fp.accuracy,
            "chance": fp.chance,
            "predictions": fp.predictions,
            "pairs": fp.pairs.iter().map(|p| json!({
                "a": p.a, "b": p.b,
                "significant": p.tests.iter().filter(|t| t.q < 0.05).count(),
                "top": p.tests.iter().take(a.top).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(CliError::Json)?
        );
        return Ok(());
    }
    for p in &fp.pairs {
        println!(
            "{} vs {}: {} of {} examples differ at BH q < 0.05; most sensitive:",
            p.a,
            p.b,
            p.tests.iter().filter(|t| t.q < 0.05).count(),
            p.tests.len()
        );
        println!("  example | mean {} − mean {} | p | q", p.a, p.b);
        for t in p.tests.iter().take(a.top) {
            println!(
                "  {:>7} | {:>+10.4} | {:.4} | {:.4}",
                t.example, t.difference, t.p, t.q
            );
        }
    }
    println!(
        "\nnearest-centroid on {} sensitive examples, leave one run out: accuracy {:.3} (chance {:.3})",
        fp.sensitive.len(),
        fp.accuracy,
        fp.chance
    );
    Ok(())
}
