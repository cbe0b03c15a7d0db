//! The YAML reader takes untrusted text: whatever it is given, it returns an error or a config,
//! never panics.

use kiln_merging::MergeConfig;
use proptest::prelude::*;

const KEYS: [&str; 12] = [
    "models",
    "merge_method",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "weight",
    "density",
    "filter",
    "value",
    "t",
];

fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
        prop::sample::select(vec![
            ":", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "ties", "linear", "0.5", "-1",
            "true", "x", "&a", "*a", "!!str", "'", "\""
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = MergeConfig::parse(&text, "fuzz.yml", std::path::Path::new("."));
    }

    #[test]
    fn yaml_shaped_text_never_panics(text in yamlish()) {
        let _ = MergeConfig::parse(&text, "fuzz.yml", std::path::Path::new("."));
    }
}
