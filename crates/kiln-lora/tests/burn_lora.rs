//! What kiln-lora's training side will build on (docs/ARCHITECTURE.md, "kiln-lora"): burn
//! 0.22.1's `apply_lora` attaches adapters to kiln-models' GPT-2 by the Hugging Face parameter
//! names, with factors `a [d_in, r]` and `b [r, d_out]` (PEFT's `lora_Aᵀ`, `lora_Bᵀ`), and
//! freezes everything else. A burn upgrade that changes any of this fails here first.

use kiln_models::LoadOptions;
use kiln_models::burn::module::{Lora, Module, ModuleVisitor, Param, ParamGroup};
use kiln_models::burn::prelude::*;
use kiln_models::burn::tensor::TensorData;
use kiln_models::gpt2::Gpt2LmHead;

struct Names {
    path: Vec<String>,
    out: Vec<(String, Vec<usize>, bool)>,
}

impl ModuleVisitor for Names {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        let t = p.val();
        self.out
            .push((self.path.join("."), t.dims().to_vec(), t.is_require_grad()));
    }
}

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
    let mut names = Names {
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut names);
    let trainable: Vec<(String, Vec<usize>)> = names
        .out
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
