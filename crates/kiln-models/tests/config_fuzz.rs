//! Model configs from untrusted `config.json` files: any combination of small or zero sizes is
//! either rejected by `validate` with a message or builds a model that runs a forward pass —
//! never a panic inside burn (review finding: `num_hidden_layers = 0`, a zero vocabulary or zero
//! positions passed validation and then panicked at `n - 1`).

use kiln_models::bert::{BertConfig, BertForMaskedLm, Padding};
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use proptest::prelude::*;

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), 1usize..9]
}

fn ids(vocab: usize, b: usize, l: usize) -> Tensor<2, Int> {
    let v: Vec<i64> = (0..b * l).map(|i| (i % vocab.max(1)) as i64).collect();
    Tensor::from_data(TensorData::new(v, [b, l]), &Device::flex())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn bert_configs_validate_or_run(
        (vocab, hidden, layers, heads, inter, positions, types) in
            (size(), size(), size(), size(), size(), size(), 0usize..3),
        alibi in any::<bool>(),
        glu in any::<bool>(),
    ) {
        let json = serde_json::json!({
            "vocab_size": vocab, "hidden_size": hidden * 4, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": inter,
            "max_position_embeddings": positions, "type_vocab_size": types,
            "alibi": alibi, "gated_mlp": glu, "hidden_dropout_prob": 0.0,
        });
        let config: BertConfig = serde_json::from_value(json).unwrap();
        match config.validate() {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(()) => {
                let device = Device::flex();
                let model = BertForMaskedLm::init(&config, &device).unwrap();
                let l = if alibi { 3 } else { positions.min(3) };
                let logits = model.forward(ids(vocab, 2, l), None, None, Padding::Padded);
                prop_assert_eq!(logits.dims(), [2, l, vocab]);
            }
        }
    }

    #[test]
    fn gpt2_configs_validate_or_run(
        (vocab, embd, layers, heads, inner, positions) in
            (size(), size(), size(), size(), size(), size()),
    ) {
        let json = serde_json::json!({
            "vocab_size": vocab, "n_embd": embd * 4, "n_layer": layers, "n_head": heads,
            "n_inner": inner, "n_positions": positions,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        });
        let config: Gpt2Config = serde_json::from_value(json).unwrap();
        match config.validate() {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(()) => {
                let model = Gpt2LmHead::init(&config, &Device::flex()).unwrap();
                let l = positions.min(3);
                let logits = model.forward(ids(vocab, 2, l), None, None);
                prop_assert_eq!(logits.dims(), [2, l, vocab]);
            }
        }
    }
}

#[test]
fn zero_layers_vocabulary_or_positions_are_named() {
    for (field, want) in [
        ("num_hidden_layers", "num_hidden_layers must be at least 1"),
        ("vocab_size", "vocab_size must be at least 1"),
        (
            "max_position_embeddings",
            "max_position_embeddings must be at least 1",
        ),
    ] {
        let mut json = serde_json::to_value(BertConfig::bert_base()).unwrap();
        json[field] = 0.into();
        let config: BertConfig = serde_json::from_value(json).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(want), "{field}: {err}");
    }
}
