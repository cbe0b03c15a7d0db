//! What kiln-lora's training side will build on (docs/ARCHITECTURE.md, "kiln-lora"): burn
//! 0.22.1's `apply_lora` attaches adapters to kiln-models' GPT-2 by the Hugging Face parameter
//! names, with factors `a [d_in, r]` and `b [r, d_out]` (PEFT's `lora_Aᵀ`, `lora_Bᵀ`), and
//! freezes everything else. A burn upgrade that changes any of this fails here first. Then
//! `kiln_lora::train` on top of it, against PEFT's fixtures.

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
    for name in ["gpt2_plain", "gpt2_rslora", "gpt2_patterns"] {
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
    let mut config = LoraConfig::new(4, 8.0, Modules::List(vec!["c_attn".into()]));
    config.lora_dropout = 0.1;
    assert!(
        train::attach(base.clone(), &config, 0)
            .unwrap_err()
            .to_string()
            .contains("lora_dropout")
    );
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
