//! `DenseLayers`: every reported path is a linear layer of the model (its burn parameter path),
//! and the Hugging Face views of each layer tile its output columns.

use kiln_models::bert::{BertConfig, BertForMaskedLm};
use kiln_models::burn::module::{Module, ModuleVisitor, Param};
use kiln_models::burn::prelude::*;
use kiln_models::dense::{DenseLayers, DenseView};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead, Gpt2MultipleChoice, Gpt2SequenceClassification};

#[derive(Default)]
struct Paths(Vec<String>, Vec<String>);

impl ModuleVisitor for Paths {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.1.push(name.to_owned());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.1.pop();
    }
    fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
        self.0.push(self.1.join("."));
    }
}

fn check<M: Module + DenseLayers>(mut model: M, want_hf: &[&str]) -> Vec<(String, Vec<DenseView>)> {
    let mut paths = Paths::default();
    model.visit(&mut paths);
    let params = paths.0;
    let mut seen = Vec::new();
    model.visit_dense(&mut |path, views, dense| {
        assert!(
            params.contains(&format!("{path}.weight")),
            "{path} is not a parameter path: {params:?}"
        );
        let mut at = 0;
        for v in views {
            assert_eq!(v.start, at, "{path}: views must tile the columns");
            at += v.len;
        }
        assert_eq!(at, dense.dims()[1], "{path}: views cover the output");
        seen.push((path.to_owned(), views.to_vec()));
    });
    for (kiln, hf) in model.embedding_names() {
        assert!(params.contains(&format!("{kiln}.weight")), "{kiln}");
        assert!(!hf.is_empty());
    }
    let names: Vec<&str> = seen
        .iter()
        .flat_map(|(_, v)| v.iter().map(|v| v.name.as_str()))
        .collect();
    for w in want_hf {
        assert!(names.contains(w), "{w} missing from {names:?}");
    }
    seen
}

#[test]
fn gpt2_layers_are_named_as_hugging_face_names_them() {
    let device = Device::flex();
    let c = Gpt2Config::tiny();
    let seen = check(
        Gpt2LmHead::init(&c, &device).unwrap(),
        &["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"],
    );
    assert_eq!(seen.len(), 4 * c.n_layer);
    let untied = Gpt2Config {
        tie_word_embeddings: false,
        ..c.clone()
    };
    check(Gpt2LmHead::init(&untied, &device).unwrap(), &["lm_head"]);
    check(
        Gpt2MultipleChoice::init(&c, &device).unwrap(),
        &["classifier"],
    );
    check(
        Gpt2SequenceClassification::init(&c, &device).unwrap(),
        &["score"],
    );
}

#[test]
fn bert_qkv_holds_query_key_value_and_mosaicbert_keeps_wqkv() {
    let device = Device::flex();
    let bert = BertConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 16,
        ..Default::default()
    };
    let seen = check(
        BertForMaskedLm::init(&bert, &device).unwrap(),
        &[
            "bert.encoder.layer.0.attention.self.query",
            "bert.encoder.layer.1.attention.self.value",
            "bert.encoder.layer.0.attention.output.dense",
            "bert.encoder.layer.0.intermediate.dense",
            "bert.encoder.layer.0.output.dense",
            "cls.predictions.transform.dense",
        ],
    );
    let qkv = &seen.iter().find(|s| s.0 == "bert.layers.0.qkv").unwrap().1;
    assert_eq!(
        qkv.iter().map(|v| (v.start, v.len)).collect::<Vec<_>>(),
        vec![(0, 16), (16, 16), (32, 16)]
    );
    let mosaic = BertConfig {
        alibi_starting_size: Some(16),
        ..bert
    };
    check(
        BertForMaskedLm::init(&mosaic, &device).unwrap(),
        &[
            "bert.encoder.layer.0.attention.self.Wqkv",
            "bert.encoder.layer.1.mlp.gated_layers",
            "bert.encoder.layer.1.mlp.wo",
        ],
    );
}
