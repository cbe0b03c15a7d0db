//! Consistency statistics on synthetic runs (a shared difficulty plus run noise), the planted
//! fingerprint, and the score files' round trip.

use kiln_scoring::ScoreTracker;
use kiln_scoring::consistency::{
    averaging_curve, cross_correlations, explained_variance, split_half,
};
use kiln_scoring::files::{Manifest, ScoreTable};
use kiln_scoring::fingerprint::{Group, Options, fingerprint};

/// A deterministic normal-ish generator (sum of uniforms) for synthetic scores.
struct Gen(u64);
impl Gen {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// `runs` runs of `n` examples: difficulty (shared) + noise of scale `noise`.
fn runs(g: &mut Gen, truth: &[f64], k: usize, noise: f64) -> Vec<Vec<f64>> {
    (0..k)
        .map(|_| truth.iter().map(|t| t + noise * g.normal()).collect())
        .collect()
}

#[test]
fn consistency_rises_with_averaging_and_one_component_dominates() {
    let mut g = Gen(1);
    let truth: Vec<f64> = (0..400).map(|_| g.normal()).collect();
    let noisy = runs(&mut g, &truth, 8, 1.5);
    let single = split_half(&noisy, 0).unwrap();
    assert_eq!(single.pairs, 4);
    assert!(single.spearman > 0.1 && single.spearman < 0.6, "{single:?}");
    // deterministic per seed
    assert_eq!(split_half(&noisy, 0).unwrap(), single);
    let curve = averaging_curve(&noisy, 5, 0).unwrap();
    assert_eq!(curve.len(), 4);
    assert!((curve[0].spearman - single.spearman).abs() < 0.1);
    for w in curve.windows(2) {
        assert!(w[1].spearman > w[0].spearman, "{curve:?}");
    }
    // identical runs agree perfectly
    let same = vec![truth.clone(); 4];
    assert!((split_half(&same, 3).unwrap().spearman - 1.0).abs() < 1e-12);
    // three scores of one difficulty (one reversed) and an unrelated one: one dominant component
    let cols = vec![
        noisy[0].clone(),
        noisy[1].iter().map(|x| -x).collect(),
        noisy[2].clone(),
        (0..400).map(|_| g.normal()).collect(),
    ];
    let m = cross_correlations(&cols).unwrap();
    assert!(
        m[0][1] < -0.1 && m[0][2] > 0.1 && m[0][3].abs() < 0.15,
        "{m:?}"
    );
    let ev = explained_variance(&cols, true).unwrap();
    assert!(
        ev[0] > ev[1] && (ev.iter().sum::<f64>() - 1.0).abs() < 1e-12,
        "{ev:?}"
    );
    assert!(split_half(&noisy[..1], 0).is_err());
}

#[test]
fn planted_sensitive_examples_are_found_and_name_the_architecture() {
    let mut g = Gen(7);
    let n = 120;
    let truth: Vec<f64> = (0..n).map(|_| g.normal()).collect();
    let planted = [5usize, 17, 42, 88, 101];
    let mut shifted = truth.clone();
    for &e in &planted {
        shifted[e] += 4.0;
    }
    // 8 runs each: 16 runs split 8/8 in 12,870 ways, so the observed split is rare enough for a
    // BH-adjusted q < 0.05 over 120 examples (6/6 would floor p near 2/924)
    let groups = vec![
        Group {
            name: "mlp".into(),
            runs: runs(&mut g, &truth, 8, 0.5),
        },
        Group {
            name: "cnn".into(),
            runs: runs(&mut g, &shifted, 8, 0.5),
        },
    ];
    let options = Options {
        permutations: 2000,
        seed: 3,
        top: 5,
        // raw scores: a planted shift of an example whose score is already near the top moves
        // its rank little, which would make the ranking of the five a property of the draw
        rank: false,
    };
    let fp = fingerprint(&groups, &options).unwrap();
    let top: Vec<usize> = fp.pairs[0]
        .tests
        .iter()
        .take(5)
        .map(|t| t.example)
        .collect();
    let mut sorted = top.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted, planted,
        "the planted examples are the most sensitive"
    );
    assert!(
        fp.pairs[0].tests[..5]
            .iter()
            .all(|t| t.q < 0.05 && t.difference < 0.0)
    );
    assert!(fp.pairs[0].tests[10..].iter().all(|t| t.q > 0.05));
    assert_eq!(fp.accuracy, 1.0, "{:?}", fp.predictions);
    assert_eq!(fp.chance, 0.5);
    // deterministic per seed; another seed moves the p-values
    assert_eq!(fingerprint(&groups, &options).unwrap(), fp);
    let other = fingerprint(&groups, &Options { seed: 4, ..options }).unwrap();
    assert_ne!(
        other.pairs[0].tests.iter().map(|t| t.p).collect::<Vec<_>>(),
        fp.pairs[0].tests.iter().map(|t| t.p).collect::<Vec<_>>()
    );
    // on ranks the classifier still names every held-out run
    let ranked = fingerprint(
        &groups,
        &Options {
            rank: true,
            ..options
        },
    )
    .unwrap();
    assert_eq!(ranked.accuracy, 1.0, "{:?}", ranked.predictions);
    // two runs cannot hold one out
    let small = vec![
        Group {
            name: "a".into(),
            runs: groups[0].runs[..2].to_vec(),
        },
        groups[1].clone(),
    ];
    assert!(
        fingerprint(&small, &options)
            .unwrap_err()
            .to_string()
            .contains("at least 3")
    );
}

#[test]
fn score_files_round_trip_exactly_and_refuse_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = ScoreTracker::new(3);
    t.observe(
        &[2, 0, 1],
        &[1.0f32, 0.0, 0.2, 0.9, 3.0, -1.0],
        2,
        &[0, 1, 0],
    )
    .unwrap();
    t.observe(
        &[0, 1, 2],
        &[0.1f32, 0.5, 2.0, -1.0, 0.3, 0.4],
        2,
        &[1, 0, 0],
    )
    .unwrap();
    let mut manifest = Manifest::new("toy", 9);
    manifest.order = "ids 0..3".into();
    manifest.recipe = serde_json::json!({"model": "mlp", "lr": 0.003});
    let table = ScoreTable::from_tracker(&t, manifest);
    let dir = tmp.path().join("run.scores");
    table.save(&dir, false).unwrap();
    let back = ScoreTable::load(&dir).unwrap();
    assert_eq!(back, table, "every f64 bit and the manifest survive");
    assert_eq!(back.manifest.examples, 3);
    assert!(
        table
            .save(&dir, false)
            .unwrap_err()
            .to_string()
            .contains("exists")
    );
    table.save(&dir, true).unwrap();
    assert!(
        table
            .column("nope")
            .unwrap_err()
            .to_string()
            .contains("el2n_mean")
    );
    // a broken row is reported with its line
    let csv = std::fs::read_to_string(dir.join("scores.csv")).unwrap();
    std::fs::write(dir.join("scores.csv"), csv.replacen(",", ",x", 30)).unwrap();
    let e = ScoreTable::load(&dir).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
}
