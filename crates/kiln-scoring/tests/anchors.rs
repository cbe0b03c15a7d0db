//! kiln-scoring against the anchors' own code (nn_example_difficulty's functions, the `aum`
//! package and scipy), through `tests/fixtures/scoring.json` made by
//! `tests/fixtures/make_scoring_fixture.py`.

use kiln_scoring::{Forgetting, Pointwise, ScoreTracker, Welford, stats};
use serde_json::Value;

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scoring.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: {got} vs {want}"
    );
}

#[test]
fn pointwise_scores_equal_nn_example_difficulty() {
    let f = fixture();
    let p = &f["pointwise"];
    let classes = p["classes"].as_u64().unwrap() as usize;
    let logits: Vec<f64> = p["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(f64s)
        .collect();
    let labels = usizes(&p["labels"]);
    let scores = Pointwise::batch(&logits, classes, &labels).unwrap();
    for name in ["acc", "ent", "conf", "maxconf", "margin", "el2n", "loss"] {
        let want = f64s(&p["scores"][name]);
        for (i, (s, w)) in scores.iter().zip(&want).enumerate() {
            close(
                s.get(name).unwrap(),
                *w,
                1e-12,
                &format!("{name} of row {i}"),
            );
        }
    }
}

#[test]
fn welford_over_checkpoints_and_aum_equal_the_anchors() {
    let f = fixture();
    let o = &f["online"];
    let labels = usizes(&o["labels"]);
    let checkpoints = o["logits"].as_array().unwrap();
    let classes = checkpoints[0][0].as_array().unwrap().len();
    let mut tracker = ScoreTracker::new(labels.len());
    for (t, ckpt) in checkpoints.iter().enumerate() {
        // in the shuffled order aum saw: scores follow the ids, not the rows' positions
        let order = usizes(&o["orders"][t]);
        let rows: Vec<Vec<f64>> = ckpt.as_array().unwrap().iter().map(f64s).collect();
        let logits: Vec<f64> = order.iter().flat_map(|&i| rows[i].clone()).collect();
        let y: Vec<usize> = order.iter().map(|&i| labels[i]).collect();
        tracker.observe(&order, &logits, classes, &y).unwrap();
    }
    for name in ["acc", "ent", "conf", "maxconf", "margin", "el2n", "loss"] {
        let (mean, var) = (f64s(&o["mean"][name]), f64s(&o["variance"][name]));
        for (i, e) in tracker.examples().iter().enumerate() {
            let w = e.score(name).unwrap();
            close(
                w.mean().unwrap(),
                mean[i],
                1e-12,
                &format!("mean {name} of {i}"),
            );
            close(
                w.variance().unwrap(),
                var[i],
                1e-12,
                &format!("variance {name} of {i}"),
            );
        }
    }
    // aum computes in float32
    let aum = f64s(&o["aum"]);
    for (i, e) in tracker.examples().iter().enumerate() {
        close(e.aum().unwrap(), aum[i], 1e-5, &format!("AUM of {i}"));
    }
}

#[test]
fn aum_readme_example() {
    let f = fixture();
    let r = &f["aum_readme"];
    for sample in ["sample_1", "sample_2"] {
        let margins = f64s(&r["margins"][sample]);
        let mut tracker = ScoreTracker::new(1);
        for m in &margins {
            tracker.observe(&[0], &[*m, 0.0], 2, &[0]).unwrap();
        }
        let aum = tracker.example(0).aum().unwrap();
        // the README's AUM is the mean of its margins, exactly in f64 …
        close(aum, margins.iter().sum::<f64>() / 2.0, 1e-12, sample);
        // … and aum's own (float32) value
        close(aum, r["aum"][sample].as_f64().unwrap(), 1e-6, sample);
    }
}

#[test]
fn forgetting_equals_forget_metrics() {
    let f = fixture();
    let g = &f["forgetting"];
    let seqs = g["sequences"].as_array().unwrap();
    assert!(seqs.len() >= 300);
    for (i, s) in seqs.iter().enumerate() {
        let s = usizes(s);
        let mut acc = Forgetting::default();
        for &a in &s {
            acc.add(a == 1);
        }
        let (z, o) = (&g["start_at_zero"][i], &g["start_at_one"][i]);
        if z.is_null() {
            assert!(acc.is_empty());
            continue;
        }
        let want = |v: &Value, k: &str| v[k].as_u64().unwrap() as usize;
        let what = format!("sequence {s:?}");
        assert_eq!(acc.count(true), want(z, "countforget"), "{what}");
        assert_eq!(acc.count(false), want(o, "countforget"), "{what}");
        assert_eq!(acc.first_learn(), want(z, "firstlearn"), "{what}");
        assert_eq!(
            acc.first_unforgettable(),
            want(z, "firstunforgettable"),
            "{what}"
        );
        assert_eq!(acc.first_forget(), want(o, "firstforget"), "{what}");
        assert_eq!(
            acc.first_unlearnable(),
            want(o, "firstunlearnable"),
            "{what}"
        );
        assert_eq!(
            usize::from(acc.unforgettable(true)),
            want(z, "unforgettable"),
            "{what}"
        );
        assert_eq!(
            usize::from(acc.unforgettable(false)),
            want(o, "unforgettable"),
            "{what}"
        );
    }
}

#[test]
fn ranks_and_correlations_equal_scipy() {
    let f = fixture();
    for (i, case) in f["ranks"].as_array().unwrap().iter().enumerate() {
        let (a, b) = (f64s(&case["a"]), f64s(&case["b"]));
        assert_eq!(
            stats::rankdata(&a).unwrap(),
            f64s(&case["rank_a"]),
            "case {i}"
        );
        assert_eq!(
            stats::rankdata(&b).unwrap(),
            f64s(&case["rank_b"]),
            "case {i}"
        );
        close(
            stats::spearman(&a, &b).unwrap().unwrap(),
            case["spearman"].as_f64().unwrap(),
            1e-12,
            &format!("spearman {i}"),
        );
        close(
            stats::pearson(&a, &b).unwrap().unwrap(),
            case["pearson"].as_f64().unwrap(),
            1e-12,
            &format!("pearson {i}"),
        );
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert!(Pointwise::of(&[1.0], 0, 0).is_err());
    assert!(
        Pointwise::of(&[1.0, 2.0], 2, 0)
            .unwrap_err()
            .to_string()
            .contains("label 2")
    );
    assert!(
        Pointwise::of(&[1.0, f64::NAN], 0, 3)
            .unwrap_err()
            .to_string()
            .contains("example 3")
    );
    let mut t = ScoreTracker::new(2);
    assert!(
        t.observe(&[5], &[1.0f32, 0.0], 2, &[0])
            .unwrap_err()
            .to_string()
            .contains("example id 5")
    );
    assert!(t.observe(&[0, 1], &[1.0f32, 0.0], 2, &[0, 1]).is_err());
    assert!(stats::pearson(&[1.0], &[1.0]).is_err());
    assert_eq!(stats::pearson(&[1.0, 1.0], &[1.0, 2.0]).unwrap(), None);
    assert!(stats::rankdata(&[1.0, f64::NAN]).is_err());
    let mut w = Welford::default();
    assert_eq!((w.mean(), w.variance()), (None, None));
    w.add(2.0);
    assert_eq!((w.mean(), w.variance()), (Some(2.0), None));
}

#[test]
fn pca_and_benjamini_hochberg_equal_numpy_and_scipy() {
    let f = fixture();
    let cols: Vec<Vec<f64>> = f["pca"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(f64s)
        .collect();
    for (rank, key) in [(true, "rank"), (false, "raw")] {
        let got = kiln_scoring::consistency::explained_variance(&cols, rank).unwrap();
        for (i, (g, w)) in got.iter().zip(f64s(&f["pca"][key])).enumerate() {
            close(*g, w, 1e-12, &format!("{key} component {i}"));
        }
    }
    let q = kiln_scoring::fingerprint::benjamini_hochberg(&f64s(&f["bh"]["p"]));
    for (i, (g, w)) in q.iter().zip(f64s(&f["bh"]["q"])).enumerate() {
        close(*g, w, 1e-12, &format!("q {i}"));
    }
}

#[test]
fn prediction_depth_equals_nn_example_difficulty() {
    use kiln_scoring::depth::{Probe, prediction_depth};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/depth.json");
    let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let labels = usizes(&f["labels"]);
    let dims = usizes(&f["dims"]);
    let layers: Vec<Vec<f64>> = f["layers"].as_array().unwrap().iter().map(f64s).collect();
    let k = f["k"].as_u64().unwrap() as usize;
    let got = prediction_depth(&layers, &dims, &labels, &labels, k, Probe::IncludeSelf).unwrap();
    assert_eq!(got, usizes(&f["depth"]));
    assert!(got.contains(&0) && got.contains(&dims.len()));
    assert!(prediction_depth(&layers, &dims, &labels, &labels, 0, Probe::IncludeSelf).is_err());
    assert!(
        prediction_depth(&layers[..2], &dims, &labels, &labels, k, Probe::IncludeSelf).is_err()
    );
}
