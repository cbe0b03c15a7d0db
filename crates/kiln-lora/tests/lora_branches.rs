//! kiln-lora's trainable adapters (LoRA branches on kiln-models' `Dense` layers) against PEFT:
//! logits and the gradients of every factor and DoRA magnitude, for DoRA on GPT-2's `Conv1D`
//! layers and LoRA on BERT's `query`/`value` — which kiln holds as column ranges of one fused
//! `qkv` layer, named as Hugging Face names them. Fixture: `tests/fixtures/make_grad_fixture.py`.

#![cfg(feature = "models")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_checkpoint::Checkpoint;
use kiln_lora::{Adapter, LoraConfig, Modules, train};
use kiln_models::LoadOptions;
use kiln_models::bert::{BertForMaskedLm, Padding};
use kiln_models::burn::module::Module;
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::dense::DenseLayers;
use kiln_models::gpt2::Gpt2LmHead;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture model with every dropout probability set to 0 (PEFT's reference ran in eval
/// mode; kiln's autodiff model would drop out otherwise).
fn without_dropout(model: &str, tmp: &Path) -> PathBuf {
    let src = fixtures().join("models").join(model);
    let dst = tmp.join(model);
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("model.safetensors"), dst.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    for (k, v) in config.as_object_mut().unwrap() {
        if (k.contains("pdrop") || k.contains("dropout")) && v.is_number() {
            *v = serde_json::json!(0.0);
        }
    }
    std::fs::write(dst.join("config.json"), config.to_string()).unwrap();
    dst
}

struct Reference {
    ids: Vec<i64>,
    shape: [usize; 2],
    proj: Vec<f32>,
    objective: f32,
    grads: BTreeMap<String, Vec<f32>>,
}

fn reference(name: &str) -> Reference {
    let ckpt =
        Checkpoint::open(fixtures().join(format!("reference/grads_{name}.safetensors"))).unwrap();
    let ids = ckpt.tensor("input_ids").unwrap();
    let shape = [ids.shape()[0], ids.shape()[1]];
    let ids = ids
        .data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let f = |n: &str| ckpt.tensor(n).unwrap().to_f32().unwrap();
    let grads = ckpt
        .names()
        .filter(|n| !["input_ids", "proj", "objective"].contains(n))
        .map(|n| (n.to_owned(), f(n)))
        .collect();
    Reference {
        ids,
        shape,
        proj: f("proj"),
        objective: f("objective")[0],
        grads,
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| v[r * cols + c]))
        .collect()
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let d = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        d <= 1e-4 * scale,
        "{what}: max |kiln − PEFT| = {d} (scale {scale})"
    );
}

/// Loads the PEFT adapter into `model` through `attach` + `load_factors`, computes
/// `sum(logits · proj)`, and compares the objective and every factor's gradient with PEFT's.
fn check<M: Module + DenseLayers>(
    model: M,
    name: &str,
    forward: impl Fn(&M, Tensor<2, Int>) -> Tensor<3>,
) {
    let peft = Adapter::load(fixtures().join("adapters").join(name)).unwrap();
    let r = reference(name);
    let (model, _) = train::attach(model, &peft.config, 0).unwrap();
    let mut model = train::load_factors(model, &peft).unwrap();
    // exported back under the Hugging Face names, the factors are PEFT's own
    let back = train::export(&model, &peft.config).unwrap();
    assert_eq!(
        back.modules, peft.modules,
        "{name}: export is PEFT's adapter"
    );
    let device = Device::flex().autodiff();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(r.ids.clone(), r.shape), &device);
    let logits = forward(&model, ids);
    let proj = Tensor::<3>::from_data(TensorData::new(r.proj.clone(), logits.dims()), &device);
    let objective = (logits * proj).sum();
    let value = values(objective.clone())[0];
    assert!(
        (value - r.objective).abs() <= 1e-4 * r.objective.abs().max(1.0),
        "{name}: objective {value} vs PEFT {}",
        r.objective
    );
    let grads = objective.backward();
    let mut seen = 0;
    model.visit_dense(&mut |_, views, dense| {
        let inp = dense.dims()[0];
        for branch in &dense.lora {
            let view = views.iter().find(|v| v.start == branch.start).unwrap();
            let (rank, len) = (branch.rank(), branch.len());
            let ga = values(branch.a.grad(&grads).expect("a trains"));
            let gb = values(branch.b.grad(&grads).expect("b trains"));
            close(
                &transpose(&ga, inp, rank),
                &r.grads[&format!("{}.lora_A", view.name)],
                &format!("{name}: ∂/∂{}.lora_A", view.name),
            );
            close(
                &transpose(&gb, rank, len),
                &r.grads[&format!("{}.lora_B", view.name)],
                &format!("{name}: ∂/∂{}.lora_B", view.name),
            );
            seen += 2;
            if let Some(m) = &branch.magnitude {
                close(
                    &values(m.grad(&grads).expect("magnitude trains")),
                    &r.grads[&format!("{}.magnitude", view.name)],
                    &format!("{name}: ∂/∂{}.magnitude", view.name),
                );
                seen += 1;
            }
            assert!(
                dense.weight.grad(&grads).is_none(),
                "the frozen base has no gradient"
            );
        }
    });
    assert_eq!(seen, r.grads.len(), "{name}: every PEFT gradient compared");
}

#[test]
fn dora_on_gpt2_has_peft_gradients_with_the_norm_detached() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    let model = Gpt2LmHead::load(
        without_dropout("gpt2", tmp.path()),
        &device,
        LoadOptions::default(),
    )
    .unwrap();
    check(model, "gpt2_dora", |m, ids| m.forward(ids, None, None));
}

#[test]
fn saving_an_adapted_model_writes_the_merged_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let base = Gpt2LmHead::load(
        fixtures().join("models/gpt2"),
        &device,
        LoadOptions::default(),
    )
    .unwrap();
    let peft = Adapter::load(fixtures().join("adapters/gpt2_dora")).unwrap();
    let (model, _) = train::attach(base, &peft.config, 0).unwrap();
    let model = train::load_factors(model, &peft).unwrap();
    let dir = tmp.path().join("saved");
    model
        .save(&dir, kiln_checkpoint::Dtype::F32, false)
        .unwrap();
    std::fs::copy(
        fixtures().join("models/gpt2/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let plain = Gpt2LmHead::load(&dir, &device, LoadOptions::default()).unwrap();
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![3i64, 9, 27, 14, 5, 1, 2, 3, 4, 6], [2, 5]),
        &device,
    );
    close(
        &values(plain.forward(ids.clone(), None, None)),
        &values(model.forward(ids, None, None)),
        "the saved checkpoint computes what the adapted model does",
    );
    assert!(plain.transformer.h[0].attn.c_attn.lora.is_empty());
}

#[test]
fn bert_query_and_value_adapters_live_in_the_fused_qkv_with_peft_gradients() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    let model = BertForMaskedLm::load(
        without_dropout("bert", tmp.path()),
        &device,
        LoadOptions::default(),
    )
    .unwrap();
    check(model, "bert_plain", |m, ids| {
        m.forward(ids, None, None, Padding::Padded)
    });
}

#[test]
fn dropout_dora_and_partial_lora_only_biases_on_attach() {
    let device = Device::flex().autodiff();
    let tmp = tempfile::tempdir().unwrap();
    let gpt2 = Gpt2LmHead::load(
        without_dropout("gpt2", tmp.path()),
        &device,
        LoadOptions::default(),
    )
    .unwrap();
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![3i64, 9, 27, 14, 5, 1, 2, 3, 4, 6], [2, 5]),
        &device,
    );
    let before = values(gpt2.forward(ids.clone(), None, None));
    // DoRA starts as the identity (B = 0, magnitude = the column norms) and counts its magnitudes
    let mut config = LoraConfig::new(4, 8.0, Modules::Pattern("all-linear".into()));
    config.use_dora = true;
    let (dora, report) = train::attach(gpt2.clone(), &config, 0).unwrap();
    close(
        &values(dora.forward(ids.clone(), None, None)),
        &before,
        "DoRA at init",
    );
    let plain = train::attach(
        gpt2.clone(),
        &LoraConfig::new(4, 8.0, Modules::Pattern("all-linear".into())),
        0,
    )
    .unwrap()
    .1;
    // out features of c_attn, attn.c_proj, c_fc, mlp.c_proj (n_embd 16, n_inner 24), 2 layers
    let out_features: usize = [3 * 16, 16, 24, 16].iter().sum::<usize>() * 2;
    assert_eq!(report.trainable, plain.trainable + out_features, "{report}");
    // lora_dropout is taken (and trains stochastically); 1.0 is refused
    config.use_dora = false;
    config.lora_dropout = 0.3;
    let (dropped, _) = train::attach(gpt2.clone(), &config, 0).unwrap();
    close(
        &values(dropped.valid().forward(
            Tensor::<2, Int>::from_data(ids.clone().into_data(), &Device::flex()),
            None,
            None,
        )),
        &before,
        "dropout at init",
    );
    config.lora_dropout = 1.0;
    assert!(
        train::attach(gpt2, &config, 0)
            .unwrap_err()
            .to_string()
            .contains("lora_dropout")
    );
    // bias lora_only on only part of BERT's fused qkv is refused with the reason
    let bert = BertForMaskedLm::load(
        without_dropout("bert", tmp.path()),
        &device,
        LoadOptions::default(),
    )
    .unwrap();
    let mut config = LoraConfig::new(4, 8.0, Modules::List(vec!["query".into()]));
    config.bias = kiln_lora::Bias::LoraOnly;
    let e = train::attach(bert, &config, 0).unwrap_err().to_string();
    assert!(e.contains("qkv") && e.contains("query"), "{e}");
}
