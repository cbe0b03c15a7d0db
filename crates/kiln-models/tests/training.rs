//! Gradients flow: one optimiser step lowers each model's loss; unpadded and padded MosaicBERT give
//! the same gradients.

use std::path::PathBuf;

use burn::optim::{AdamWConfig, GradientsParams};
use kiln_checkpoint::Checkpoint;
use kiln_models::LoadOptions;
use kiln_models::bert::{BertForMaskedLm, MlmPositions, Padding};
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::gpt2::{Gpt2LmHead, Gpt2MultipleChoice};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference(name: &str) -> Checkpoint {
    Checkpoint::open(
        fixtures()
            .join("reference")
            .join(format!("{name}.safetensors")),
    )
    .unwrap()
}

fn ints<const D: usize>(r: &Checkpoint, name: &str, device: &Device) -> Tensor<D, Int> {
    let t = r.tensor(name).unwrap();
    let v: Vec<i64> = t
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let shape: [usize; D] = t.shape().try_into().unwrap();
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn scalar(t: Tensor<1>) -> f32 {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()[0]
}

/// Dropout off: one step must follow the gradient of the loss it is judged on, and the device's
/// RNG is shared by tests running in parallel, so dropout masks would make the test a draw.
fn no_dropout_gpt2(m: &mut kiln_models::gpt2::Gpt2Model) {
    m.drop.prob = 0.0;
    for b in &mut m.h {
        b.attn.attn_dropout.prob = 0.0;
        b.attn.resid_dropout.prob = 0.0;
        b.mlp.dropout.prob = 0.0;
    }
}

fn no_dropout_bert(m: &mut kiln_models::bert::BertModel) {
    m.embeddings_dropout.prob = 0.0;
    for l in &mut m.layers {
        l.hidden_dropout.prob = 0.0;
        l.attn_dropout.prob = 0.0;
    }
}

/// One AdamW step small enough to lower the loss of the batch it was taken on (AdamW's first
/// step moves every parameter by about this much).
const LR: f64 = 1e-3;

fn train_device() -> Device {
    Device::flex().autodiff()
}

/// Where `valid()` models run (the same backend without autodiff).
fn eval() -> Device {
    Device::flex()
}

#[test]
fn one_step_lowers_the_gpt2_lm_loss() {
    let device = train_device();
    let r = reference("gpt2_tied");
    let mut model = Gpt2LmHead::load(
        fixtures().join("models/gpt2_tied"),
        &device,
        LoadOptions::default(),
    )
    .unwrap();
    no_dropout_gpt2(&mut model.transformer);
    let (ids, mask) = (
        ints::<2>(&r, "input_ids", &device),
        ints::<2>(&r, "attention_mask", &device),
    );
    let (ids_e, mask_e) = (
        ints::<2>(&r, "input_ids", &eval()),
        ints::<2>(&r, "attention_mask", &eval()),
    );
    let before = scalar(model.valid().loss(ids_e.clone(), Some(mask_e.clone())));
    let loss = model.loss(ids.clone(), Some(mask.clone()));
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = AdamWConfig::new().init().step(LR, model, grads);
    let after = scalar(model.valid().loss(ids_e, Some(mask_e)));
    assert!(after < before, "loss {before} → {after}");
}

#[test]
fn one_step_lowers_the_multiple_choice_loss() {
    let device = train_device();
    let r = reference("gpt2_mc");
    let mut model = Gpt2MultipleChoice::load(
        fixtures().join("models/gpt2_mc"),
        &device,
        LoadOptions::default(),
    )
    .unwrap();
    no_dropout_gpt2(&mut model.transformer);
    let (ids, mask, labels) = (
        ints::<3>(&r, "input_ids", &device),
        ints::<3>(&r, "attention_mask", &device),
        ints::<1>(&r, "labels", &device),
    );
    let (ids_e, mask_e, labels_e) = (
        ints::<3>(&r, "input_ids", &eval()),
        ints::<3>(&r, "attention_mask", &eval()),
        ints::<1>(&r, "labels", &eval()),
    );
    let before = scalar(
        model
            .valid()
            .loss(ids_e.clone(), Some(mask_e.clone()), labels_e.clone()),
    );
    let loss = model.loss(ids.clone(), Some(mask.clone()), labels.clone());
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = AdamWConfig::new().init().step(LR, model, grads);
    let after = scalar(model.valid().loss(ids_e, Some(mask_e), labels_e));
    assert!(after < before, "loss {before} → {after}");
}

#[test]
fn one_step_lowers_the_mlm_loss_for_bert_and_mosaic_bert() {
    for name in ["bert_mlm", "mosaic_bert"] {
        let device = train_device();
        let r = reference(name);
        let mut model = BertForMaskedLm::load(
            fixtures().join("models").join(name),
            &device,
            LoadOptions::default(),
        )
        .unwrap();
        no_dropout_bert(&mut model.bert);
        let ids = ints::<2>(&r, "input_ids", &device);
        let tt = ints::<2>(&r, "token_type_ids", &device);
        let mask = ints::<2>(&r, "attention_mask", &device);
        let labels = ints::<2>(&r, "labels", &device);
        let padding = if name == "mosaic_bert" {
            Padding::Unpadded
        } else {
            Padding::Padded
        };
        let e = eval();
        let (ids_e, tt_e, mask_e, labels_e) = (
            ints::<2>(&r, "input_ids", &e),
            ints::<2>(&r, "token_type_ids", &e),
            ints::<2>(&r, "attention_mask", &e),
            ints::<2>(&r, "labels", &e),
        );
        let eval = |m: &BertForMaskedLm| {
            scalar(m.valid().loss(
                ids_e.clone(),
                Some(tt_e.clone()),
                Some(mask_e.clone()),
                labels_e.clone(),
                padding,
                MlmPositions::All,
            ))
        };
        let before = eval(&model);
        let loss = model.loss(
            ids.clone(),
            Some(tt.clone()),
            Some(mask.clone()),
            labels.clone(),
            padding,
            MlmPositions::MaskedOnly,
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = AdamWConfig::new().init().step(LR, model, grads);
        let after = eval(&model);
        assert!(after < before, "{name}: loss {before} → {after}");
    }
}

#[test]
fn unpadded_and_padded_mosaic_bert_have_the_same_gradients() {
    let device = train_device();
    let r = reference("mosaic_bert");
    let mut model = BertForMaskedLm::load(
        fixtures().join("models/mosaic_bert"),
        &device,
        LoadOptions::default(),
    )
    .unwrap();
    // Dropout off, so both paths see the same function.
    model.bert.embeddings_dropout.prob = 0.0;
    for layer in &mut model.bert.layers {
        layer.hidden_dropout.prob = 0.0;
        layer.attn_dropout.prob = 0.0;
    }
    let ids = ints::<2>(&r, "input_ids", &device);
    let tt = ints::<2>(&r, "token_type_ids", &device);
    let mask = ints::<2>(&r, "attention_mask", &device);
    let labels = ints::<2>(&r, "labels", &device);
    let grads_of = |padding: Padding| {
        let loss = model.loss(
            ids.clone(),
            Some(tt.clone()),
            Some(mask.clone()),
            labels.clone(),
            padding,
            MlmPositions::All,
        );
        let grads = loss.backward();
        let word = model.bert.word_embeddings.weight.grad(&grads).unwrap();
        let qkv = model.bert.layers[0].qkv.weight.grad(&grads).unwrap();
        let v = |t: Tensor<2>| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        (v(word), v(qkv))
    };
    let (w1, q1) = grads_of(Padding::Unpadded);
    let (w2, q2) = grads_of(Padding::Padded);
    let worst = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        worst(&w1, &w2) < 1e-5 && worst(&q1, &q2) < 1e-5,
        "{} {}",
        worst(&w1, &w2),
        worst(&q1, &q2)
    );
    assert!(w1.iter().any(|g| *g != 0.0));
}

/// Every parameter of a freshly initialised model is trainable, and stays so through a save and
/// load (a bias created with `zeros_like` once was not, so it never learned).
#[test]
fn every_initialised_parameter_requires_grad() {
    use burn::module::{Module, ModuleVisitor, Param};

    #[derive(Default)]
    struct Frozen(Vec<String>, Vec<String>);
    impl ModuleVisitor for Frozen {
        fn enter_module(&mut self, n: &str, _: &str) {
            self.1.push(n.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if !p.val().is_require_grad() {
                self.0.push(self.1.join("."));
            }
        }
    }
    let device = train_device();
    let bert = kiln_models::bert::BertConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 16,
        ..Default::default()
    };
    let mut frozen = Frozen::default();
    let m = BertForMaskedLm::init(&bert, &device).unwrap();
    m.visit(&mut frozen);
    let mosaic = kiln_models::bert::BertConfig {
        alibi_starting_size: Some(16),
        ..bert.clone()
    };
    BertForMaskedLm::init(&mosaic, &device)
        .unwrap()
        .visit(&mut frozen);
    Gpt2LmHead::init(&kiln_models::gpt2::Gpt2Config::tiny(), &device)
        .unwrap()
        .visit(&mut frozen);
    let dir = tempfile::tempdir().unwrap();
    m.clone().save_file(dir.path().join("m.bpk")).unwrap();
    BertForMaskedLm::init(&bert, &device)
        .unwrap()
        .try_load_file(dir.path().join("m.bpk"))
        .unwrap()
        .visit(&mut frozen);
    assert!(frozen.0.is_empty(), "not trainable: {:?}", frozen.0);
}
