//! Properties of the inference-aware optimum that hold for any valid law, loss and demand.

use kiln_scaling_laws::{ChinchillaLaw, chinchilla, inference};
use proptest::prelude::*;

fn law() -> impl Strategy<Value = ChinchillaLaw> {
    (
        1.0f64..2.5,
        50.0f64..3000.0,
        50.0f64..3000.0,
        0.2f64..0.6,
        0.2f64..0.6,
    )
        .prop_map(|(e, a, b, alpha, beta)| ChinchillaLaw::new(e, a, b, alpha, beta).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// More inference demand: a smaller model trained on more tokens, never more lifetime FLOPs
    /// than the Chinchilla-style model.
    #[test]
    fn monotone_in_inference_demand(law in law(), gap in 0.05f64..1.5, t_rel in -4.0f64..3.0, factor in 1.5f64..100.0) {
        let loss = law.e + gap;
        // Demands from 1e-4 to 1e3 times the Chinchilla-style training set: below that the
        // optimum is the Chinchilla-style model to f64 precision.
        let t = chinchilla::for_loss(&law, loss).unwrap().train_tokens * 10f64.powf(t_rel);
        let small = inference::optimal_allocation(&law, loss, t).unwrap();
        let large = inference::optimal_allocation(&law, loss, t * factor).unwrap();
        prop_assert!(large.optimal.n_params < small.optimal.n_params);
        prop_assert!(large.optimal.train_tokens > small.optimal.train_tokens);
        prop_assert!(small.optimal.n_params < small.chinchilla.n_params);
        prop_assert!(small.flops_ratio() <= 1.0 + 1e-12);
        prop_assert!(large.flops_ratio() <= small.flops_ratio() + 1e-12);
        // Both stay on the iso-loss curve.
        prop_assert!((large.optimal.loss(&law) - loss).abs() < 1e-9 * loss);
    }

    /// No inference demand: exactly the Chinchilla-style model; tiny demand: arbitrarily close.
    #[test]
    fn zero_demand_is_chinchilla_style(law in law(), gap in 0.05f64..1.5) {
        let loss = law.e + gap;
        let ch = chinchilla::for_loss(&law, loss).unwrap();
        let zero = inference::optimal_allocation(&law, loss, 0.0).unwrap();
        prop_assert_eq!(zero.optimal, ch);
        let tiny = inference::optimal_allocation(&law, loss, ch.train_tokens * 1e-9).unwrap();
        prop_assert!((tiny.optimal.n_params / ch.n_params - 1.0).abs() < 1e-6);
    }

    /// The optimum is no worse than nearby points of the iso-loss curve.
    #[test]
    fn optimum_beats_its_neighbours(law in law(), gap in 0.05f64..1.5, t_exp in 0.0f64..16.0) {
        let loss = law.e + gap;
        let t = 10f64.powf(t_exp);
        let opt = inference::optimal_allocation(&law, loss, t).unwrap();
        for f in [0.99, 1.01] {
            let n = opt.optimal.n_params * f;
            if let Ok(d) = chinchilla::tokens_to_reach_loss(&law, n, loss) {
                let alt = chinchilla::Allocation { n_params: n, train_tokens: d };
                prop_assert!(alt.lifetime_flops(t) >= opt.flops() * (1.0 - 1e-12));
            }
        }
    }
}
