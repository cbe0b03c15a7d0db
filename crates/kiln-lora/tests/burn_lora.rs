//! burn 0.22.1's `apply_lora` (which kiln-lora uses for embedding adapters) attaches adapters
//! to kiln-models' GPT-2 by the Hugging Face parameter names, with factors `a [d_in, r]` and
//! `b [r, d_out]` (PEFT's `lora_Aᵀ`, `lora_Bᵀ`), and freezes everything else; a burn upgrade
//! that changes this fails here first. Then `kiln_lora::train` (LoRA branches on kiln-models'
//! `Dense` layers) and `kiln_lora::live` against PEFT's fixtures.

#![cfg(feature = "models")]

use kiln_lora::train::parameters;
use kiln_models::LoadOptions;
use kiln_models::burn::module::{Lora, Module, ParamGroup};
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::gpt2::Gpt2LmHead;

#[test]
fn burn_lora_attaches_to_kiln_gpt2_by_hugging_face_names() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gpt2");
    let device = Device::flex().autodiff();
    let model = Gpt2LmHead::load(&dir, &device, LoadOptions::default()).unwrap();
    // (valid(): dropout off, so two forwards compare)
    let eval_ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 5, 7, 9, 3, 2, 8, 4], [2, 4]),
        &Device::flex(),
    );
    let before = model
        .valid()
        .loss(eval_ids.clone(), None)
        .into_scalar::<f32>();
    let targets = [
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.mlp.c_fc.weight",
    ];
    let model = model
        .apply_lora(Lora::new(4, 8.0).set_param_group(ParamGroup::from_paths(targets.to_vec())));
    let trainable: Vec<(String, Vec<usize>)> = parameters(&model)
        .iter()
        .filter(|(_, _, grad)| *grad)
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    assert_eq!(
        trainable,
        [
            (
                "transformer.h.0.attn.c_attn.weight.lora.a".to_string(),
                vec![16, 4]
            ),
            (
                "transformer.h.0.attn.c_attn.weight.lora.b".to_string(),
                vec![4, 48]
            ),
            (
                "transformer.h.1.mlp.c_fc.weight.lora.a".to_string(),
                vec![16, 4]
            ),
            (
                "transformer.h.1.mlp.c_fc.weight.lora.b".to_string(),
                vec![4, 24]
            ),
        ],
        "only the factors train; a is [d_in, r], b is [r, d_out]"
    );
    // B starts at zero: the adapted model computes what the base did
    let after = model.valid().loss(eval_ids, None).into_scalar::<f32>();

    assert!((before - after).abs() < 1e-6, "{before} vs {after}");
}

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference(name: &str) -> (Vec<Vec<i64>>, Vec<f32>, serde_json::Value) {
    let ckpt =
        kiln_checkpoint::Checkpoint::open(fixtures().join(format!("reference/{name}.safetensors")))
            .unwrap();
    let ids = ckpt.tensor("input_ids").unwrap();
    let cols = ids.shape()[1];
    let flat: Vec<i64> = ids
        .data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let rows = flat.chunks(cols).map(<[i64]>::to_vec).collect();
    let logits = ckpt.tensor("logits").unwrap().to_f32().unwrap();
    let counts = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("reference/{name}.json"))).unwrap(),
    )
    .unwrap();
    (rows, logits, counts)
}

fn logits(model: &Gpt2LmHead, rows: &[Vec<i64>]) -> Vec<f32> {
    let (b, l) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, l]), &Device::flex());
    model
        .valid()
        .forward(ids, None, None)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let d = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        d <= 1e-5 * scale,
        "{what}: max |kiln − PEFT| = {d} (scale {scale})"
    );
}

#[test]
fn peft_adapters_attach_load_and_export_through_burn() {
    use kiln_lora::{Adapter, train};
    for name in ["gpt2_plain", "gpt2_rslora", "gpt2_patterns", "gpt2_dora"] {
        let peft = Adapter::load(fixtures().join("adapters").join(name)).unwrap();
        let device = Device::flex().autodiff();
        let model = Gpt2LmHead::load(
            fixtures().join("models/gpt2"),
            &device,
            LoadOptions::default(),
        )
        .unwrap();
        let (model, report) = train::attach(model, &peft.config, 0).unwrap();
        let (rows, want, counts) = reference(name);
        assert_eq!(
            report.trainable as u64,
            counts["trainable"].as_u64().unwrap(),
            "{name}: {report}"
        );
        assert_eq!(
            report.total as u64,
            counts["total"].as_u64().unwrap(),
            "{name}: {report}"
        );
        assert_eq!(
            report.modules.len(),
            peft.modules.len(),
            "{name}: the same modules are adapted"
        );
        let model = train::load_factors(model, &peft).unwrap();
        close(&logits(&model, &rows), &want, name);
        let back = train::export(&model, &peft.config).unwrap();
        assert_eq!(
            back.modules, peft.modules,
            "{name}: exported factors are the loaded ones"
        );
        assert_eq!(
            back.replaced.keys().collect::<Vec<_>>(),
            peft.replaced.keys().collect::<Vec<_>>(),
            "{name}"
        );
    }
}

#[test]
fn pissa_and_olora_attach_without_changing_the_model() {
    use kiln_lora::{LoraConfig, Modules, train};
    let device = Device::flex().autodiff();
    let rows = vec![vec![3i64, 9, 27, 14, 5], vec![1, 2, 3, 4, 6]];
    let base = Gpt2LmHead::load(
        fixtures().join("models/gpt2"),
        &device,
        LoadOptions::default(),
    )
    .unwrap();
    let before = logits(&base, &rows);
    for init in ["pissa", "olora", "gaussian"] {
        let mut config = LoraConfig::new(4, 8.0, Modules::Pattern("all-linear".into()));
        config.init_lora_weights = serde_json::Value::String(init.into());
        let (model, _) = train::attach(base.clone(), &config, 3).unwrap();
        // the principal part moved into the adapter: W_res + s·a·b = W
        close(&logits(&model, &rows), &before, init);
        let adapter = train::export(&model, &config).unwrap();
        let m = &adapter.modules["transformer.h.0.attn.c_attn"];
        let nonzero = m.b.iter().any(|x| *x != 0.0);
        assert_eq!(
            nonzero,
            init != "gaussian",
            "{init}: B starts at zero only for the random inits"
        );
    }
    let config = LoraConfig::new(4, 8.0, Modules::List(vec!["q_proj".into()]));
    let e = train::attach(base.clone(), &config, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("transformer.h.N.attn.c_attn"), "{e}");
    let config = LoraConfig::new(40, 8.0, Modules::List(vec!["c_attn".into()]));
    assert!(
        train::attach(base, &config, 0).is_err(),
        "rank above the matrix"
    );
}

/// Sequences of a simple rule (steps of 1 or 2 through the vocabulary), to fine-tune on.
fn sequences(n: usize, len: usize, vocab: u32, offset: u32) -> Vec<Vec<u32>> {
    (0..n as u32)
        .map(|i| {
            let (start, step) = ((i * 7 + offset) % vocab, 1 + (i % 2));
            (0..len as u32)
                .map(|j| (start + j * step) % (vocab - 1) + 1)
                .collect()
        })
        .collect()
}

fn optimizer_bytes(run: &std::path::Path) -> u64 {
    let ckpts = run.join("checkpoints");
    let newest = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max()
        .unwrap();
    std::fs::metadata(newest.join(kiln_train::checkpoint::OPTIMIZER_FILE))
        .unwrap()
        .len()
}

fn base_weight(model: &Gpt2LmHead) -> Vec<f32> {
    assert!(
        parameters(model)
            .iter()
            .any(|(n, _, _)| n == "transformer.h.0.attn.c_attn.weight")
    );
    model.transformer.h[0]
        .attn
        .c_attn
        .weight
        .base()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn lora_fine_tuning_through_kiln_train_keeps_the_base_and_optimizer_state_small() {
    use kiln_lora::{LoraConfig, MergeOptions, Modules, merge_into_checkpoint, train};
    use kiln_train::tasks::CausalLmTask;
    use kiln_train::{OptimizerConfig, TrainState, TrainTask, Trainer, TrainerConfig};
    let device = Device::flex().autodiff();
    let fit = |lora: Option<&LoraConfig>, run: &std::path::Path| {
        let base = Gpt2LmHead::load(
            fixtures().join("models/gpt2"),
            &device,
            LoadOptions::default(),
        )
        .unwrap();
        let model = match lora {
            Some(c) => train::attach(base, c, 0).unwrap().0,
            None => base,
        };
        let mut task = CausalLmTask::new(
            sequences(32, 12, 61, 0),
            sequences(8, 12, 61, 3),
            8,
            0,
            &device,
        )
        .unwrap();
        let mut config =
            TrainerConfig::new("40ba".parse().unwrap(), OptimizerConfig::adamw(1e-2, 0.0));
        config.progress_bar = false;
        config.save_interval = Some("40ba".parse().unwrap());
        let initial =
            TrainTask::evaluate(&mut task, &model, &TrainState::default()).unwrap()["loss"];
        let out = Trainer::new(config, run.join("run"))
            .fit(model, &mut task, &mut [], &device)
            .unwrap();
        (
            initial,
            out.eval["loss"],
            out.model,
            optimizer_bytes(&run.join("run")),
        )
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = LoraConfig::new(4, 8.0, Modules::Pattern("all-linear".into()));
    let original = base_weight(
        &Gpt2LmHead::load(
            fixtures().join("models/gpt2"),
            &device,
            LoadOptions::default(),
        )
        .unwrap(),
    );
    let (_, full_loss, _, full_bytes) = fit(None, &tmp.path().join("full"));
    let (start, lora_loss, lora_model, lora_bytes) = fit(Some(&config), &tmp.path().join("lora"));
    assert!(
        lora_loss < start - 0.5,
        "LoRA learns: {start} → {lora_loss} nats"
    );
    assert!(
        full_loss < lora_loss,
        "full fine-tuning learns more here: {full_loss} vs {lora_loss}"
    );
    assert_eq!(
        base_weight(&lora_model),
        original,
        "the frozen base does not move"
    );
    assert!(
        (lora_bytes as f64) < 0.5 * full_bytes as f64,
        "AdamW state only for the factors: {lora_bytes} vs {full_bytes} bytes"
    );
    // the trained factors, exported and merged into the Hugging Face checkpoint, give the
    // trained model's logits
    let adapter = train::export(&lora_model, &config).unwrap();
    let merged = merge_into_checkpoint(
        &fixtures().join("models/gpt2"),
        &[(&adapter, 1.0)],
        &tmp.path().join("merged"),
        MergeOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap()
    .0;
    let rows = vec![vec![3i64, 4, 5, 6, 7, 8], vec![10, 12, 14, 16, 18, 20]];
    let merged_model = Gpt2LmHead::load(&merged, &Device::flex(), LoadOptions::default()).unwrap();
    close(
        &logits(&merged_model, &rows),
        &logits(&lora_model, &rows),
        "merged vs trained",
    );
}

#[test]
fn named_adapters_on_one_live_model() {
    use kiln_lora::live::LoraModel;
    use kiln_lora::{Adapter, LoraConfig, MergeOptions, Modules, merge_into_checkpoint};
    use kiln_train::tasks::CausalLmTask;
    use kiln_train::{OptimizerConfig, Trainer, TrainerConfig};
    let device = Device::flex().autodiff();
    let load = || {
        Gpt2LmHead::load(
            fixtures().join("models/gpt2"),
            &device,
            LoadOptions::default(),
        )
        .unwrap()
    };
    let base = load();
    let original = base_weight(&base);
    let (rows, _, _) = reference("gpt2_plain");
    let base_logits = logits(&base, &rows);
    let mut m = LoraModel::new(base);
    let plain = Adapter::load(fixtures().join("adapters/gpt2_plain")).unwrap();
    let patterns = Adapter::load(fixtures().join("adapters/gpt2_patterns")).unwrap();
    m.load_adapter("plain", plain.clone()).unwrap();
    assert_eq!(
        m.active_adapters(),
        vec![("plain".to_owned(), 1.0)],
        "the first adapter becomes active"
    );
    m.load_adapter("patterns", patterns.clone()).unwrap();
    assert_eq!(m.names(), ["patterns", "plain"]);
    // each active adapter computes PEFT's logits
    for (name, fixture) in [("patterns", "gpt2_patterns"), ("plain", "gpt2_plain")] {
        m.set_adapter(name).unwrap();
        let (rows, want, _) = reference(fixture);
        close(&logits(m.model(), &rows), &want, name);
    }
    // disabled: exactly the base
    m.disable_adapters();
    assert_eq!(logits(m.model(), &rows), base_logits);
    assert!(
        m.active_model()
            .unwrap_err()
            .to_string()
            .contains("disabled")
    );
    m.enable_adapters();
    assert_ne!(logits(m.model(), &rows), base_logits);

    // a weighted set = both merged into the checkpoint with those weights; it does not train
    m.set_adapters(&[("plain", 0.7), ("patterns", 0.3)])
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let merged_dir = merge_into_checkpoint(
        &fixtures().join("models/gpt2"),
        &[(&plain, 0.7), (&patterns, 0.3)],
        &tmp.path().join("merged"),
        MergeOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap()
    .0;
    let files = Gpt2LmHead::load(&merged_dir, &Device::flex(), LoadOptions::default()).unwrap();
    close(
        &logits(m.model(), &rows),
        &logits(&files, &rows),
        "weighted set vs merged files",
    );
    assert_eq!(m.parameter_counts().0, 0, "a weighted set is frozen");
    let e = m.update(m.active_model().unwrap()).unwrap_err().to_string();
    assert!(e.contains("weighted set"), "{e}");

    // train a fresh adapter; its progress survives switching away and back
    let config = LoraConfig::new(4, 8.0, Modules::Pattern("all-linear".into()));
    let report = m.add_adapter("fresh", &config, 5).unwrap();
    assert!(report.trainable > 0);
    assert_eq!(m.active_adapters().len(), 2, "adding does not activate");
    m.set_adapter("fresh").unwrap();
    assert_eq!(
        logits(m.model(), &rows),
        base_logits,
        "a fresh adapter (B = 0) changes nothing"
    );
    let mut task = CausalLmTask::new(
        sequences(16, 12, 61, 0),
        sequences(4, 12, 61, 3),
        8,
        0,
        &device,
    )
    .unwrap();
    let mut tc = TrainerConfig::new("6ba".parse().unwrap(), OptimizerConfig::adamw(1e-2, 0.0));
    tc.progress_bar = false;
    let out = Trainer::new(tc, tmp.path().join("run"))
        .fit(m.active_model().unwrap(), &mut task, &mut [], &device)
        .unwrap();
    let trained = logits(&out.model, &rows);
    m.update(out.model).unwrap();
    assert!(
        m.adapter("fresh")
            .unwrap()
            .modules
            .values()
            .any(|x| x.b.iter().any(|v| *v != 0.0)),
        "the trained factors are the adapter's"
    );
    m.set_adapter("plain").unwrap();
    m.set_adapter("fresh").unwrap();
    close(&logits(m.model(), &rows), &trained, "after switching back");

    // merge / unmerge: merged = the adapter's forward; unmerged base bit-identical
    m.merge_adapter(true).unwrap();
    assert!(m.is_merged());
    assert!(
        !parameters(m.model()).iter().any(|p| p.0.contains(".lora.")),
        "merged: a plain model"
    );
    close(&logits(m.model(), &rows), &trained, "merged");
    for e in [
        m.set_adapter("plain").unwrap_err(),
        m.merge_adapter(true).unwrap_err(),
        m.delete_adapter("plain").unwrap_err(),
    ] {
        assert!(e.to_string().contains("unmerge_adapter"), "{e}");
    }
    m.unmerge_adapter().unwrap();
    assert!(m.unmerge_adapter().is_err());
    close(&logits(m.model(), &rows), &trained, "unmerged");
    assert_eq!(base_weight(m.base()), original, "the base never moves");

    // delete: not the active one; unknown names list the adapters
    let e = m.delete_adapter("fresh").unwrap_err().to_string();
    assert!(e.contains("is active"), "{e}");
    m.delete_adapter("patterns").unwrap();
    let e = m.set_adapter("patterns").unwrap_err().to_string();
    assert!(
        e.contains("no adapter named `patterns`") && e.contains("fresh, plain"),
        "{e}"
    );
    let e = m.add_adapter("plain", &config, 0).unwrap_err().to_string();
    assert!(e.contains("exists already"), "{e}");
    // an adapter for other modules is refused by name
    let bert = Adapter::load(fixtures().join("adapters/bert_plain")).unwrap();
    assert!(m.load_adapter("bert", bert).is_err());
    // modules_to_save (a tensor replaced whole) is refused by name, not silently dropped
    let mut with_head = plain.clone();
    with_head.replaced.insert(
        "transformer.wte.weight".into(),
        (vec![61, 16], vec![0.0; 61 * 16]),
    );
    let e = m.load_adapter("head", with_head).unwrap_err().to_string();
    assert!(
        e.contains("transformer.wte.weight") && e.contains("modules_to_save"),
        "{e}"
    );

    // safe_merge refuses NaN; merge_and_unload gives the plain merged model
    let mut broken = plain.clone();
    broken.modules.values_mut().next().unwrap().b[0] = f32::NAN;
    m.load_adapter("broken", broken).unwrap();
    m.set_adapter("broken").unwrap();
    let e = m.merge_adapter(true).unwrap_err().to_string();
    assert!(
        e.contains("non-finite") && e.contains("transformer.h."),
        "{e}"
    );
    assert!(!m.is_merged());
    m.set_adapter("fresh").unwrap();
    let plain_model = m.merge_and_unload(true).unwrap();
    close(&logits(&plain_model, &rows), &trained, "merge_and_unload");
}
