//! Architecture fingerprints (Kwok et al.'s "statistical genetics"): which examples' scores
//! differ between architectures beyond run-to-run noise — a permutation test per example with
//! Benjamini–Hochberg correction — and a nearest-centroid classifier that names the architecture
//! of an unseen run from a few of those examples.

use serde::Serialize;

use crate::consistency::Rng;
use crate::error::{Error, Result};
use crate::stats::rankdata;

/// The runs of one architecture: a score per example, one vector per run.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The architecture's name.
    pub name: String,
    /// Runs × examples.
    pub runs: Vec<Vec<f64>>,
}

/// Settings of [`fingerprint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Label permutations per test (default 1000: p-values down to 1/1001).
    pub permutations: usize,
    /// Seed of the permutations.
    pub seed: u64,
    /// Sensitive examples kept per pair of architectures for the classifier (default 10).
    pub top: usize,
    /// Rank-transform each run's scores first (default true: scores on different scales
    /// become comparable).
    pub rank: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            permutations: 1000,
            seed: 0,
            top: 10,
            rank: true,
        }
    }
}

/// The test of one example between two architectures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExampleTest {
    /// Example id.
    pub example: usize,
    /// Mean over A's runs minus mean over B's runs.
    pub difference: f64,
    /// Permutation p-value `(1 + #{|d_perm| ≥ |d|}) / (1 + permutations)`.
    pub p: f64,
    /// Benjamini–Hochberg adjusted p-value over all examples of the pair.
    pub q: f64,
}

/// The tests between two architectures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairTests {
    /// Architecture A.
    pub a: String,
    /// Architecture B.
    pub b: String,
    /// Every example, most significant first (p ascending, then |difference| descending).
    pub tests: Vec<ExampleTest>,
}

/// What [`fingerprint`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fingerprint {
    /// Each pair of architectures.
    pub pairs: Vec<PairTests>,
    /// The sensitive examples (the `top` of each pair, united) the classifier uses.
    pub sensitive: Vec<usize>,
    /// Leave-one-run-out accuracy of the nearest-centroid classifier; each held-out run's
    /// sensitive examples are chosen from the other runs only.
    pub accuracy: f64,
    /// Chance accuracy (always guessing the largest group).
    pub chance: f64,
    /// `(true architecture, predicted)` per held-out run.
    pub predictions: Vec<(String, String)>,
}

/// Benjamini–Hochberg adjusted p-values, in the input's order.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut q = vec![0.0; m];
    let mut running = 1.0f64;
    for (k, &i) in order.iter().enumerate().rev() {
        running = running.min(p[i] * m as f64 / (k + 1) as f64);
        q[i] = running.min(1.0);
    }
    q
}

fn prepared(groups: &[Group], rank: bool) -> Result<Vec<Vec<Vec<f64>>>> {
    if groups.len() < 2 {
        return Err(Error::Shape {
            what: "fingerprint".into(),
            message: format!("{} architecture(s); compare at least two", groups.len()),
        });
    }
    let n = groups[0].runs.first().map_or(0, Vec::len);
    for g in groups {
        if g.runs.len() < 2 {
            return Err(Error::Shape {
                what: format!("architecture `{}`", g.name),
                message: format!(
                    "{} run(s); a permutation test needs at least 2",
                    g.runs.len()
                ),
            });
        }
        if let Some(r) = g.runs.iter().find(|r| r.len() != n) {
            return Err(Error::Shape {
                what: format!("architecture `{}`", g.name),
                message: format!("a run scores {} examples, others {n}", r.len()),
            });
        }
    }
    groups
        .iter()
        .map(|g| {
            g.runs
                .iter()
                .map(|r| if rank { rankdata(r) } else { Ok(r.clone()) })
                .collect()
        })
        .collect()
}

/// Per-example permutation tests between the runs `a` and `b` (already transformed).
fn pair_tests(a: &[&Vec<f64>], b: &[&Vec<f64>], options: &Options) -> Vec<(f64, f64)> {
    let n = a[0].len();
    let pooled: Vec<&Vec<f64>> = a.iter().chain(b).copied().collect();
    let diff = |labels: &[bool]| -> Vec<f64> {
        let (na, nb) = (
            labels.iter().filter(|&&l| l).count() as f64,
            labels.iter().filter(|&&l| !l).count() as f64,
        );
        (0..n)
            .map(|e| {
                let (mut sa, mut sb) = (0.0, 0.0);
                for (r, &l) in pooled.iter().zip(labels) {
                    if l {
                        sa += r[e];
                    } else {
                        sb += r[e];
                    }
                }
                sa / na - sb / nb
            })
            .collect()
    };
    let mut labels: Vec<bool> = (0..pooled.len()).map(|i| i < a.len()).collect();
    let observed = diff(&labels);
    let mut exceed = vec![0usize; n];
    let mut rng = Rng::new(options.seed);
    for _ in 0..options.permutations {
        rng.shuffle(&mut labels);
        for (e, d) in diff(&labels).into_iter().enumerate() {
            if d.abs() >= observed[e].abs() - 1e-12 * observed[e].abs() {
                exceed[e] += 1;
            }
        }
    }
    observed
        .into_iter()
        .zip(exceed)
        .map(|(d, c)| (d, (1 + c) as f64 / (1 + options.permutations) as f64))
        .collect()
}

fn tests_of(a: &str, b: &str, raw: Vec<(f64, f64)>) -> PairTests {
    let p: Vec<f64> = raw.iter().map(|r| r.1).collect();
    let q = benjamini_hochberg(&p);
    let mut tests: Vec<ExampleTest> = raw
        .into_iter()
        .zip(q)
        .enumerate()
        .map(|(example, ((difference, p), q))| ExampleTest {
            example,
            difference,
            p,
            q,
        })
        .collect();
    tests.sort_by(|x, y| {
        x.p.total_cmp(&y.p)
            .then(y.difference.abs().total_cmp(&x.difference.abs()))
            .then(x.example.cmp(&y.example))
    });
    PairTests {
        a: a.into(),
        b: b.into(),
        tests,
    }
}

/// The tests of every pair and the sensitive examples, from the runs given (`skip`: a run left
/// out, as (group, run)).
fn select(
    data: &[Vec<Vec<f64>>],
    names: &[&str],
    options: &Options,
    skip: Option<(usize, usize)>,
) -> (Vec<PairTests>, Vec<usize>) {
    let runs = |g: usize| -> Vec<&Vec<f64>> {
        data[g]
            .iter()
            .enumerate()
            .filter(|(r, _)| skip != Some((g, *r)))
            .map(|(_, v)| v)
            .collect()
    };
    let mut pairs = Vec::new();
    let mut sensitive = Vec::new();
    for i in 0..data.len() {
        for j in i + 1..data.len() {
            let t = tests_of(names[i], names[j], pair_tests(&runs(i), &runs(j), options));
            for e in t.tests.iter().take(options.top) {
                if !sensitive.contains(&e.example) {
                    sensitive.push(e.example);
                }
            }
            pairs.push(t);
        }
    }
    sensitive.sort_unstable();
    (pairs, sensitive)
}

/// Runs the tests between every pair of architectures and the leave-one-run-out classifier.
/// Deterministic for a seed.
///
/// # Errors
/// [`Error::Shape`] for fewer than two architectures, an architecture with fewer than two runs
/// (or three, so that one can be held out), runs of different lengths or a non-finite score.
pub fn fingerprint(groups: &[Group], options: &Options) -> Result<Fingerprint> {
    let data = prepared(groups, options.rank)?;
    if let Some(g) = groups.iter().find(|g| g.runs.len() < 3) {
        return Err(Error::Shape {
            what: format!("architecture `{}`", g.name),
            message: format!(
                "{} runs; the classifier holds one out and tests on the rest, so give at least 3",
                g.runs.len()
            ),
        });
    }
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let (pairs, sensitive) = select(&data, &names, options, None);
    let mut predictions = Vec::new();
    for (g, runs) in data.iter().enumerate() {
        for (r, run) in runs.iter().enumerate() {
            let (_, chosen) = select(&data, &names, options, Some((g, r)));
            let centroid = |h: usize| -> Vec<f64> {
                let kept: Vec<&Vec<f64>> = data[h]
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| (h, *k) != (g, r))
                    .map(|(_, v)| v)
                    .collect();
                chosen
                    .iter()
                    .map(|&e| kept.iter().map(|v| v[e]).sum::<f64>() / kept.len() as f64)
                    .collect()
            };
            let x: Vec<f64> = chosen.iter().map(|&e| run[e]).collect();
            let best = (0..data.len())
                .map(|h| {
                    let c = centroid(h);
                    let d: f64 = x.iter().zip(&c).map(|(a, b)| (a - b) * (a - b)).sum();
                    (h, d)
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |b| b.0);
            predictions.push((names[g].to_owned(), names[best].to_owned()));
        }
    }
    let total = predictions.len() as f64;
    let right = predictions.iter().filter(|(t, p)| t == p).count() as f64;
    let largest = groups.iter().map(|g| g.runs.len()).max().unwrap_or(0) as f64;
    Ok(Fingerprint {
        pairs,
        sensitive,
        accuracy: right / total,
        chance: largest / total,
        predictions,
    })
}
