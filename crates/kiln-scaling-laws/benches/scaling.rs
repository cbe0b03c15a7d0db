//! Timings of one inference-aware solve, one cost-optimal solve, and one full 4,500-start fit.
//!
//! `cargo bench -p kiln-scaling-laws --bench scaling`; `cargo xtask bench scaling` runs this and
//! the scipy anchor (`benches/anchor.py`) in one go and records both in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kiln_scaling_laws::cost::{self, CostModel, InferenceDemand};
use kiln_scaling_laws::fit::{self, FitOptions};
use kiln_scaling_laws::runs::{self, Columns};
use kiln_scaling_laws::{ChinchillaLaw, inference};

fn solves(c: &mut Criterion) {
    let law = ChinchillaLaw::sardana();
    let mut group = c.benchmark_group("solve");
    group.bench_function("inference_optimal_brent", |b| {
        b.iter(|| inference::optimal_allocation(&law, black_box(1.947), black_box(2e12)).unwrap())
    });
    group.bench_function("inference_optimal_newton", |b| {
        b.iter(|| inference::newton_train_tokens(&law, black_box(1.947), black_box(2e12)).unwrap())
    });
    let model = CostModel::paper();
    let demand = InferenceDemand::lmsys_shaped(1e10);
    group.bench_function("cost_optimal", |b| {
        b.iter(|| cost::cost_optimal(&law, black_box(1.947), &demand, &model).unwrap())
    });
    group.finish();
}

fn fits(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/sardana2024_runs.csv");
    let runs = runs::read_runs_csv(&path, &Columns::default()).unwrap();
    let mut group = c.benchmark_group("fit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("grid4500_runs47", |b| {
        b.iter(|| fit::fit(black_box(&runs), &FitOptions::default()).unwrap())
    });
    group.bench_function("grid4500_runs47_1thread", |b| {
        let options = FitOptions {
            threads: Some(1),
            ..FitOptions::default()
        };
        b.iter(|| fit::fit(black_box(&runs), &options).unwrap())
    });
    group.finish();
}

criterion_group!(benches, solves, fits);
criterion_main!(benches);
