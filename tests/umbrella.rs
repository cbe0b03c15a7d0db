//! Cross-crate checks: the umbrella crate `kiln` exposes each crate's API unchanged.

use kiln::scaling_laws::{self, ChinchillaLaw, LawPreset, chinchilla, inference};

#[test]
fn scaling_laws_through_the_umbrella() {
    // The same presets, by name, as the leaf crate.
    for preset in LawPreset::ALL {
        let law = preset.name().parse::<LawPreset>().unwrap().law();
        assert_eq!(law, preset.law());
    }
    // A compute-optimal model is its own inference-aware optimum when there is no demand.
    let law = ChinchillaLaw::besiroglu();
    let frontier = chinchilla::compute_optimal(&law, 1e24).unwrap();
    let opt = inference::optimal_allocation(&law, frontier.loss(&law), 0.0).unwrap();
    assert!((opt.optimal.n_params / frontier.n_params - 1.0).abs() < 1e-10);
    // Errors are the leaf crate's type.
    let err: scaling_laws::Error = inference::optimal_allocation(&law, 1.0, 1e12).unwrap_err();
    assert!(err.to_string().contains("irreducible"));
}
