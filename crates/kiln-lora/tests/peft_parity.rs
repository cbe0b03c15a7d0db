//! kiln-lora against PEFT, numpy and mergekit on the fixtures of
//! `tests/fixtures/make_lora_fixtures.py` (see its docstring for what each file is and how to
//! regenerate them).

#![cfg(feature = "models")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_checkpoint::Checkpoint;
use kiln_lora::{
    Adapter, ExtractOptions, Filter, MergeOptions, SpectrumOptions, extract, linalg,
    merge_into_checkpoint, spectrum,
};
use kiln_models::LoadOptions;
use kiln_models::auto::{AutoModel, TokenBatch};
use kiln_models::burn::prelude::Device;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let ckpt = Checkpoint::open(path).unwrap();
    ckpt.names()
        .map(|n| {
            let t = ckpt.tensor(n).unwrap();
            let v = if t.dtype() == kiln_checkpoint::Dtype::I64 {
                t.data
                    .chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect()
            } else {
                t.to_f32().unwrap()
            };
            (n.to_owned(), (t.shape().to_vec(), v))
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `got` equals `want` to `rtol` times the reference's scale (its largest magnitude): logits of a
/// few units are compared as kiln-models compares them with transformers.
fn close(got: &[f32], want: &[f32], rtol: f32, what: &str) {
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let d = max_diff(got, want);
    assert!(
        d <= rtol * scale,
        "{what}: max |kiln − PEFT| = {d:e} > {rtol:e} × {scale}"
    );
}

fn merge(base: &str, adapters: &[(&str, f64)], out: &Path) -> PathBuf {
    let loaded: Vec<Adapter> = adapters
        .iter()
        .map(|(a, _)| Adapter::load(fixtures().join("adapters").join(a)).unwrap())
        .collect();
    let weighted: Vec<_> = loaded
        .iter()
        .zip(adapters)
        .map(|(a, (_, w))| (a, *w))
        .collect();
    merge_into_checkpoint(
        &fixtures().join("models").join(base),
        &weighted,
        out,
        MergeOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap()
    .0
}

fn logits(model: &Path, ids: &[f32], shape: &[usize]) -> Vec<f32> {
    let rows = ids
        .chunks(shape[1])
        .map(|r| r.iter().map(|&x| x as i64).collect())
        .collect();
    let m = AutoModel::load(model, &Device::flex(), LoadOptions::default()).unwrap();
    m.logits(&TokenBatch::new(rows)).unwrap().values
}

const ADAPTERS: &[(&str, &str)] = &[
    ("gpt2_plain", "gpt2"),
    ("gpt2_rslora", "gpt2"),
    ("gpt2_patterns", "gpt2"),
    ("gpt2_dora", "gpt2"),
    ("bert_plain", "bert"),
    ("bert_dora", "bert"),
];

#[test]
fn merged_weights_and_logits_match_peft() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, base) in ADAPTERS {
        let out = merge(base, &[(name, 1.0)], &tmp.path().join(name));
        let reference = tensors(&fixtures().join(format!("reference/{name}.safetensors")));
        let merged = tensors(&out);
        let original = tensors(&fixtures().join(format!("models/{base}/model.safetensors")));
        let mut changed = 0;
        for (k, (shape, v)) in &merged {
            match reference.get(&format!("merged.{k}")) {
                Some((rs, rv)) => {
                    assert_eq!(shape, rs, "{name}: {k}");
                    let d = max_diff(v, rv);
                    assert!(d < 1e-6, "{name}: {k} differs from PEFT's merge by {d}");
                    changed += 1;
                }
                None => assert_eq!(v, &original[k].1, "{name}: {k} should be unchanged"),
            }
        }
        let expected = reference
            .keys()
            .filter(|k| k.starts_with("merged."))
            .count();
        assert_eq!(
            changed, expected,
            "{name}: every tensor PEFT changed is changed"
        );
        let (shape, ids) = &reference["input_ids"];
        let ours = logits(&out, ids, shape);
        close(
            &ours,
            &reference["logits"].1,
            1e-5,
            &format!("{name} logits"),
        );
    }
}

#[test]
fn trainable_parameter_counts_match_peft() {
    for (name, _) in ADAPTERS {
        let adapter = Adapter::load(fixtures().join("adapters").join(name)).unwrap();
        let text =
            std::fs::read_to_string(fixtures().join(format!("reference/{name}.json"))).unwrap();
        let counts: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            adapter.trainable_parameters() as u64,
            counts["trainable"].as_u64().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn cat_combination_matches_peft_add_weighted_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = merge(
        "bert",
        &[("bert_plain", 0.7), ("bert_second", 0.3)],
        &tmp.path().join("cat"),
    );
    let reference = tensors(&fixtures().join("reference/cat_plain_second.safetensors"));
    let (shape, ids) = &reference["input_ids"];
    close(
        &logits(&out, ids, shape),
        &reference["logits"].1,
        1e-5,
        "cat logits",
    );
}

#[test]
fn legacy_fields_are_kept_and_warned_about() {
    let legacy = Adapter::load(fixtures().join("adapters/gpt2_legacy")).unwrap();
    let plain = Adapter::load(fixtures().join("adapters/gpt2_plain")).unwrap();
    assert_eq!(legacy.modules, plain.modules);
    let w = legacy.config.warnings().join("\n");
    assert!(
        w.contains("enable_lora") && w.contains("merge_weights") && w.contains("CASUAL_LM"),
        "{w}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = legacy.save(tmp.path().join("a"), false).unwrap();
    let text = std::fs::read_to_string(out.join("adapter_config.json")).unwrap();
    assert!(text.contains("merge_weights") && text.contains("CASUAL_LM"));
}

#[test]
fn written_adapters_have_peft_keys_shapes_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, _) in ADAPTERS {
        let dir = fixtures().join("adapters").join(name);
        let adapter = Adapter::load(&dir).unwrap();
        let out = adapter.save(tmp.path().join(name), false).unwrap();
        let a = tensors(&dir.join("adapter_model.safetensors"));
        let b = tensors(&out.join("adapter_model.safetensors"));
        assert_eq!(a, b, "{name}: keys, shapes and values survive a round trip");
        let ca: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        let cb: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            ca, cb,
            "{name}: the config survives a round trip field for field"
        );
    }
}

#[test]
fn a_zero_b_changes_nothing_and_foreign_adapters_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut adapter = Adapter::load(fixtures().join("adapters/gpt2_plain")).unwrap();
    for m in adapter.modules.values_mut() {
        m.b.iter_mut().for_each(|x| *x = 0.0);
    }
    let base = fixtures().join("models/gpt2");
    let (out, summary) = merge_into_checkpoint(
        &base,
        &[(&adapter, 1.0)],
        &tmp.path().join("z"),
        MergeOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    assert!(summary.merged > 0);
    assert_eq!(tensors(&out), tensors(&base.join("model.safetensors")));
    // a GPT-2 adapter on BERT names modules BERT does not have
    let e = merge_into_checkpoint(
        &fixtures().join("models/bert"),
        &[(&adapter, 1.0)],
        &tmp.path().join("x"),
        MergeOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("transformer.h.0.attn.c_attn") && e.contains("another architecture"),
        "{e}"
    );
    assert!(!tmp.path().join("x").exists());
    // NaN in a factor: refused by safe_merge
    adapter.modules.values_mut().next().unwrap().a[0] = f32::NAN;
    adapter.modules.values_mut().next().unwrap().b[0] = 1.0;
    let e = merge_into_checkpoint(
        &base,
        &[(&adapter, 1.0)],
        &tmp.path().join("n"),
        MergeOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, kiln_lora::Error::NonFinite { .. }), "{e}");
}

#[test]
fn extraction_matches_numpy_and_mergekit() {
    let tmp = tempfile::tempdir().unwrap();
    let numpy = tensors(&fixtures().join("reference/extract_numpy.safetensors"));
    let options = ExtractOptions {
        max_rank: 8,
        ..Default::default()
    };
    let mut checked = 0;
    for (base, ft) in [
        ("models/gpt2", "finetuned/gpt2_ft"),
        ("models/bert", "finetuned/bert_ft"),
    ] {
        let out = tmp.path().join(ft.replace('/', "_"));
        let (_, adapter, report) = extract(
            &fixtures().join(base),
            &fixtures().join(ft),
            &out,
            &options,
            &mut |_, _, _| {},
        )
        .unwrap();
        assert!(
            !report.modules_to_save.is_empty(),
            "the changed embedding is saved whole"
        );
        for (name, m) in &adapter.modules {
            let reference = &numpy[&format!("{name}.weight")].1;
            let d = max_diff(&m.delta(1.0), reference);
            assert!(
                d < 1e-5,
                "{name}: B·A differs from numpy's truncated SVD by {d}"
            );
            checked += 1;
        }
        assert_eq!(
            adapter.modules.len(),
            numpy
                .keys()
                .filter(|k| k.starts_with(if base.ends_with("gpt2") {
                    "transformer"
                } else {
                    "bert"
                }))
                .count()
        );
        // the written directory reads back as the same adapter
        let back = Adapter::load(&out).unwrap();
        assert_eq!(back.modules.len(), adapter.modules.len());
        for (name, m) in &back.modules {
            assert!(max_diff(&m.delta(1.0), &adapter.modules[name].delta(1.0)) < 1e-7);
        }
    }
    assert!(checked >= 8);
    // mergekit-extract-lora on the BERT pair: same B·A per module (mergekit also writes
    // unchanged modules, with B·A = 0, which kiln leaves out)
    let mergekit = Adapter::load(fixtures().join("extracted/mergekit_bert")).unwrap();
    let (_, ours, _) = extract(
        &fixtures().join("models/bert"),
        &fixtures().join("finetuned/bert_ft"),
        &tmp.path().join("again"),
        &options,
        &mut |_, _, _| {},
    )
    .unwrap();
    for (name, m) in &mergekit.modules {
        let theirs = m.delta(1.0);
        match ours.modules.get(name) {
            Some(o) => {
                let d = max_diff(&o.delta(1.0), &theirs);
                assert!(d < 1e-5, "{name}: kiln vs mergekit B·A differ by {d}");
            }
            None => assert!(
                theirs.iter().all(|x| x.abs() < 1e-6),
                "{name}: mergekit found a change kiln missed"
            ),
        }
    }
}

#[test]
fn exact_low_rank_changes_are_recovered_at_their_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let options = ExtractOptions {
        max_rank: 8,
        sv_epsilon: 1e-4,
        ..Default::default()
    };
    let (dir, adapter, report) = extract(
        &fixtures().join("models/gpt2"),
        &fixtures().join("finetuned/gpt2_ft"),
        &tmp.path().join("a"),
        &options,
        &mut |_, _, _| {},
    )
    .unwrap();
    for m in &report.modules {
        if m.name.ends_with("attn.c_attn") {
            assert_eq!((m.rank, m.real_rank), (3, 3), "{}", m.name);
            assert!((m.energy_kept - 1.0).abs() < 1e-6);
        } else {
            assert_eq!(m.rank, 8, "{}", m.name);
        }
    }
    // the rank-3 modules are in rank_pattern with α = r (scale 1), and merge back exactly
    assert_eq!(
        adapter
            .config
            .rank_pattern
            .get("transformer.h.0.attn.c_attn"),
        Some(&3)
    );
    let back = Adapter::load(&dir).unwrap();
    assert_eq!(back.modules["transformer.h.0.attn.c_attn"].scaling, 1.0);
    let (merged, _) = merge_into_checkpoint(
        &fixtures().join("models/gpt2"),
        &[(&back, 1.0)],
        &tmp.path().join("m"),
        MergeOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let ft = tensors(&fixtures().join("finetuned/gpt2_ft/model.safetensors"));
    let got = tensors(&merged);
    for (k, (_, v)) in &got {
        if k.ends_with("attn.c_attn.weight") || k.ends_with("wte.weight") {
            let d = max_diff(v, &ft[k].1);
            assert!(
                d < 1e-5,
                "{k}: extraction + merge misses the fine-tuned weight by {d}"
            );
        }
    }
}

#[test]
fn randomized_extraction_recovers_low_rank_changes_and_the_top_energy() {
    let tmp = tempfile::tempdir().unwrap();
    let numpy = tensors(&fixtures().join("reference/extract_numpy.safetensors"));
    let run = |svd, dir: &str| {
        let options = ExtractOptions {
            max_rank: 4,
            sv_epsilon: 1e-4,
            svd,
            ..Default::default()
        };
        extract(
            &fixtures().join("models/gpt2"),
            &fixtures().join("finetuned/gpt2_ft"),
            &tmp.path().join(dir),
            &options,
            &mut |_, _, _| {},
        )
        .unwrap()
    };
    // a sketch of 4 + 2 columns: smaller than every matrix, so the randomized path runs
    let (_, fast, fast_report) = run(
        kiln_lora::SvdMethod::Randomized {
            oversample: 2,
            power_iters: 2,
        },
        "fast",
    );
    let (_, _, exact_report) = run(kiln_lora::SvdMethod::Exact, "exact");
    let mut low = 0;
    for (m, e) in fast_report.modules.iter().zip(&exact_report.modules) {
        assert_eq!(m.name, e.name);
        if m.name.ends_with("attn.c_attn") {
            // rank 3 ≤ the sketch: exact to rounding
            assert_eq!((m.rank, m.real_rank), (3, 3), "{}", m.name);
            assert!((m.energy_kept - 1.0).abs() < 1e-6);
            let d = max_diff(
                &fast.modules[&m.name].delta(1.0),
                &numpy[&format!("{}.weight", m.name)].1,
            );
            assert!(d < 1e-5, "{}: B·A differs from numpy's by {d}", m.name);
            low += 1;
        } else {
            assert_eq!(m.rank, 4, "{}", m.name);
            assert!(
                (m.energy_kept - e.energy_kept).abs() < 0.05 * e.energy_kept,
                "{}: energy kept {} vs the exact SVD's {}",
                m.name,
                m.energy_kept,
                e.energy_kept
            );
        }
    }
    assert!(low >= 2);
}

#[test]
fn spectrum_ranks_match_peft_cutoffs_and_known_ranks() {
    let m = tensors(&fixtures().join("reference/spectrum.safetensors"));
    let cut: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/spectrum.json")).unwrap(),
    )
    .unwrap();
    for (name, (shape, v)) in &m {
        let s = linalg::singular_values(v, shape[0], shape[1], name).unwrap();
        if let Some(k) = cut[name].get("rank") {
            let k = k.as_u64().unwrap() as usize;
            assert_eq!(linalg::numerical_rank(&s, shape[0], shape[1]), k, "{name}");
            assert_eq!(linalg::rank_at(&s, 1.0 - 1e-6), k, "{name}");
        } else {
            for (tau, expected) in cut[name].as_object().unwrap() {
                let tau: f64 = tau.parse().unwrap();
                assert_eq!(
                    linalg::rank_at(&s, tau) as u64,
                    expected.as_u64().unwrap(),
                    "{name} at τ = {tau}"
                );
            }
        }
    }
}

#[test]
fn spectrum_counts_intruders_as_peft() {
    let text = std::fs::read_to_string(fixtures().join("reference/intruders.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let options = SpectrumOptions {
        filter: Filter::new(Some(r"\.query$"), None).unwrap(),
        ..Default::default()
    };
    let rows = spectrum(
        &fixtures().join("models/bert"),
        &fixtures().join("models/bert_ft_intruders"),
        &options,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let key = format!("base_model.model.{}", r.name);
        assert_eq!(
            r.intruders as u64,
            reference["counts"][&key].as_u64().unwrap(),
            "{}",
            r.name
        );
        assert!(r.delta.rank_at_threshold <= 4, "a rank-4 change");
        assert!(r.random.rank_at_threshold > r.delta.rank_at_threshold);
    }
}

#[test]
fn add_weighted_adapter_matches_peft_for_every_deterministic_type() {
    use kiln_lora::{Combination, CombineOptions, MajoritySign, add_weighted_adapter};
    let reference = tensors(&fixtures().join("reference/weighted_adapters.safetensors"));
    let plain = Adapter::load(fixtures().join("adapters/bert_plain")).unwrap();
    let third = Adapter::load(fixtures().join("adapters/bert_third")).unwrap();
    type Case = (
        &'static str,
        Combination,
        Option<f64>,
        Option<usize>,
        MajoritySign,
    );
    let cases: &[Case] = &[
        (
            "linear",
            Combination::Linear,
            None,
            None,
            MajoritySign::Total,
        ),
        ("cat", Combination::Cat, None, None, MajoritySign::Total),
        ("svd", Combination::Svd, None, Some(6), MajoritySign::Total),
        (
            "ties",
            Combination::Ties,
            Some(0.5),
            None,
            MajoritySign::Total,
        ),
        (
            "ties_frequency",
            Combination::Ties,
            Some(0.4),
            None,
            MajoritySign::Frequency,
        ),
        (
            "ties_svd",
            Combination::TiesSvd,
            Some(0.5),
            Some(5),
            MajoritySign::Total,
        ),
        (
            "magnitude_prune",
            Combination::MagnitudePrune,
            Some(0.3),
            None,
            MajoritySign::Total,
        ),
        (
            "magnitude_prune_svd",
            Combination::MagnitudePruneSvd,
            Some(0.3),
            None,
            MajoritySign::Total,
        ),
        (
            "dare_linear",
            Combination::DareLinear,
            Some(1.0),
            None,
            MajoritySign::Total,
        ),
        (
            "dare_ties",
            Combination::DareTies,
            Some(1.0),
            None,
            MajoritySign::Total,
        ),
    ];
    for (key, combination, density, svd_rank, sign) in cases {
        let options = CombineOptions {
            density: *density,
            svd_rank: *svd_rank,
            majority_sign: *sign,
            ..CombineOptions::new(*combination)
        };
        let combined = add_weighted_adapter(&[(&plain, 0.6), (&third, -0.9)], &options).unwrap();
        let mut checked = 0;
        for (name, (_, want)) in reference
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{key}.")) && !k.ends_with(".rank"))
        {
            let module = &name[key.len() + 1..];
            let got = combined.modules[module].delta(1.0);
            let d = max_diff(&got, want);
            assert!(d < 1e-5, "{key}: {module}: ΔW differs from PEFT's by {d}");
            if *key != "cat" {
                let rank = reference[&format!("{name}.rank")].1[0] as usize;
                assert_eq!(combined.modules[module].r, rank, "{key}: {module}");
            }
            checked += 1;
        }
        assert_eq!(checked, 6, "{key}: query, key, value in two layers");
    }
}

#[test]
fn dare_drops_reproducibly_at_the_density() {
    use kiln_lora::{Combination, CombineOptions, add_weighted_adapter};
    let plain = Adapter::load(fixtures().join("adapters/bert_plain")).unwrap();
    let third = Adapter::load(fixtures().join("adapters/bert_third")).unwrap();
    let options = CombineOptions {
        density: Some(0.5),
        seed: 7,
        ..CombineOptions::new(Combination::DareLinear)
    };
    let a = add_weighted_adapter(&[(&plain, 0.6), (&third, 0.9)], &options).unwrap();
    let b = add_weighted_adapter(&[(&plain, 0.6), (&third, 0.9)], &options).unwrap();
    assert_eq!(a.modules, b.modules, "same seed, same drop");
    // query A factors: both adapters have them; an entry is 0 only when both drops hit (1/4)
    let (zeros, total) = a
        .modules
        .iter()
        .filter(|(n, _)| n.ends_with("query"))
        .flat_map(|(_, m)| m.a.iter())
        .fold((0usize, 0usize), |(z, t), x| {
            (z + usize::from(*x == 0.0), t + 1)
        });
    let share = zeros as f64 / total as f64;
    assert!(
        (0.18..0.32).contains(&share),
        "{share} of entries dropped by both"
    );
    let other = CombineOptions {
        seed: 8,
        ..options.clone()
    };
    assert_ne!(
        add_weighted_adapter(&[(&plain, 0.6), (&third, 0.9)], &other)
            .unwrap()
            .modules,
        a.modules
    );
    // bad inputs
    let e = add_weighted_adapter(&[(&plain, 0.6)], &CombineOptions::new(Combination::Ties))
        .unwrap_err();
    assert!(e.to_string().contains("needs a density"), "{e}");
    let second = Adapter::load(fixtures().join("adapters/bert_second")).unwrap();
    let e = add_weighted_adapter(
        &[(&plain, 1.0), (&second, 1.0)],
        &CombineOptions::new(Combination::Linear),
    )
    .unwrap_err();
    assert!(e.to_string().contains("equal ranks"), "{e}");
    let dora = Adapter::load(fixtures().join("adapters/bert_dora")).unwrap();
    assert!(add_weighted_adapter(&[(&dora, 1.0)], &CombineOptions::new(Combination::Cat)).is_err());
}

#[test]
fn pissa_and_olora_match_peft() {
    use kiln_lora::init::{Init, init_factors};
    let reference = tensors(&fixtures().join("reference/init.safetensors"));
    let base = tensors(&fixtures().join("models/bert/model.safetensors"));
    let mut checked = 0;
    for (key, (shape, a_ref)) in reference.iter().filter(|(k, _)| k.ends_with(".lora_A")) {
        let (method, module) = key
            .strip_suffix(".lora_A")
            .unwrap()
            .split_once('.')
            .unwrap();
        let init: Init = method.parse().unwrap();
        let r = shape[0];
        let (wshape, w) = &base[&format!("{module}.weight")];
        let f = init_factors(init, w, [wshape[0], wshape[1]], r, 2.0, 0, module).unwrap();
        // products, not factors: singular vectors and QR columns are defined up to sign
        let ours = linalg::matmul(&f.b, &f.a, wshape[0], r, wshape[1]);
        let b_ref = &reference[&format!("{method}.{module}.lora_B")].1;
        let theirs = linalg::matmul(b_ref, a_ref, wshape[0], r, wshape[1]);
        let d = max_diff(&ours, &theirs);
        assert!(
            d < 1e-5,
            "{method} {module}: B·A differs from PEFT's by {d}"
        );
        let res = &reference[&format!("{method}.{module}.residual")].1;
        let d = max_diff(f.residual.as_ref().unwrap(), res);
        assert!(
            d < 1e-5,
            "{method} {module}: residual W differs from PEFT's by {d}"
        );
        checked += 1;
    }
    assert_eq!(checked, 8, "2 methods × 2 module types × 2 layers");
}

#[test]
fn intruder_mitigation_matches_peft() {
    use kiln_lora::{IntruderOptions, reduce_intruder_dimension};
    let adapter = Adapter::load(fixtures().join("adapters/bert_intruder")).unwrap();
    let (mitigated, counts) = reduce_intruder_dimension(
        &adapter,
        &fixtures().join("models/bert"),
        IntruderOptions::default(),
    )
    .unwrap();
    let text = std::fs::read_to_string(fixtures().join("reference/intruders.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (name, n) in &counts {
        assert_eq!(
            *n as u64,
            expected["counts"][format!("base_model.model.{name}")]
                .as_u64()
                .unwrap(),
            "{name}"
        );
    }
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<usize>(), 1);
    let reference = tensors(&fixtures().join("reference/intruders_mitigated.safetensors"));
    for (name, (_, want)) in &reference {
        let d = max_diff(&mitigated.modules[name].delta(1.0), want);
        assert!(d < 1e-5, "{name}: mitigated ΔW differs from PEFT's by {d}");
    }
}

#[test]
fn merge_then_unmerge_is_the_identity() {
    use kiln_lora::targets::Inventory;
    use kiln_lora::{merge_module, unmerge_module};
    for (name, base) in ADAPTERS {
        let adapter = Adapter::load(fixtures().join("adapters").join(name)).unwrap();
        let ckpt = Checkpoint::open(fixtures().join("models").join(base)).unwrap();
        let inventory = Inventory::of(&ckpt);
        for (module, info) in adapter.resolve(|n| inventory.find(n)).unwrap() {
            let m = &adapter.modules[&module];
            let original = ckpt
                .tensor(&format!("{}.weight", info.name))
                .unwrap()
                .to_f32()
                .unwrap();
            let mut w = original.clone();
            let norms = merge_module(&mut w, info, m, 1.0);
            assert!(
                max_diff(&w, &original) > 1e-3,
                "{name} {module}: the merge changed something"
            );
            if m.magnitude.is_some() {
                let mut again = w.clone();
                assert!(unmerge_module(&mut again, info, m, 1.0, None).is_err());
            }
            unmerge_module(&mut w, info, m, 1.0, norms.as_deref()).unwrap();
            let d = max_diff(&w, &original);
            assert!(d < 1e-6, "{name} {module}: merge + unmerge is off by {d}");
        }
    }
}

#[test]
fn library_outputs_never_land_on_or_inside_their_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    // copies, so that a missing check could not damage the committed fixtures
    let copy = |from: &str, to: &str| {
        let dst = tmp.path().join(to);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(fixtures().join(from)).unwrap().flatten() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
        dst
    };
    let base = copy("models/gpt2", "base");
    let ft = copy("finetuned/gpt2_ft", "ft");
    let adapter_dir = copy("adapters/gpt2_plain", "adapter");
    let adapter = Adapter::load(&adapter_dir).unwrap();
    let before = tensors(&base.join("model.safetensors"));
    for out in [
        base.clone(),
        base.join("merged"),
        adapter_dir.join("merged"),
    ] {
        let options = MergeOptions {
            force: true,
            ..MergeOptions::default()
        };
        let e = merge_into_checkpoint(&base, &[(&adapter, 1.0)], &out, options, &mut |_, _, _| {})
            .unwrap_err();
        assert!(
            matches!(e, kiln_lora::Error::Checkpoint(_)),
            "{}: {e}",
            out.display()
        );
    }
    for out in [ft.clone(), base.join("x")] {
        let options = ExtractOptions {
            force: true,
            ..Default::default()
        };
        assert!(
            extract(&base, &ft, &out, &options, &mut |_, _, _| {}).is_err(),
            "{}",
            out.display()
        );
    }
    assert!(
        adapter.save(&adapter_dir, true).is_err(),
        "an adapter is not saved over its own source"
    );
    assert_eq!(tensors(&base.join("model.safetensors")), before);
    assert!(!base.join("merged").exists() && !base.join("x").exists());
}
