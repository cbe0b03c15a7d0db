//! Invariants of the merge maths, for random inputs, and of the executor on real checkpoints.

use std::path::PathBuf;

use kiln_checkpoint::Checkpoint;
use kiln_merging::methods::task_arithmetic::Dare;
use kiln_merging::methods::{linear, slerp, task_arithmetic};
use kiln_merging::{MergeConfig, MergeOptions, MergePlan, Method, Silent, run};
use proptest::prelude::*;

fn vecs(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-10.0f32..10.0, n)
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn merging_a_model_with_itself_is_the_identity(x in vecs(64), w in 0.1f32..3.0, density in 0.05f64..1.0, t in 0.0f64..1.0, seed in any::<u64>()) {
        let mut out = vec![0.0f32; 64];
        linear::linear(&[&x, &x], &[w, 2.0 * w], true, &mut out);
        prop_assert!(close(&out, &x, 1e-6));
        slerp::slerp(t, &x, &x, &mut out);
        prop_assert!(close(&out, &x, 1e-6));
        // Task vectors of a model against itself are zero: the base comes back exactly.
        task_arithmetic::ties(&x, &[&x, &x], &[w, w], &[density, density], 1.0, &mut out);
        prop_assert_eq!(&out, &x);
        task_arithmetic::dare(&x, &[&x], &[w], &Dare { density, seed, consensus: true, lambda: 1.0 }, &mut out);
        prop_assert_eq!(&out, &x);
    }

    #[test]
    fn linear_with_weights_one_zero_returns_the_first(a in vecs(32), b in vecs(32)) {
        let mut out = vec![0.0f32; 32];
        linear::linear(&[&a, &b], &[1.0, 0.0], true, &mut out);
        prop_assert_eq!(&out, &a);
        linear::linear(&[&a, &b], &[1.0, 0.0], false, &mut out);
        prop_assert_eq!(&out, &a);
    }

    #[test]
    fn ties_with_density_one_and_one_model_is_task_arithmetic(base in vecs(48), m in vecs(48), lambda in 0.1f32..2.0, w in 0.1f32..2.0) {
        let (mut a, mut b) = (vec![0.0f32; 48], vec![0.0f32; 48]);
        task_arithmetic::ties(&base, &[&m], &[w], &[1.0], lambda, &mut a);
        // TIES normalises by the weight of the one participating model: λ·δ.
        task_arithmetic::task_arithmetic(&base, &[&m], &[1.0], lambda, &mut b);
        prop_assert!(close(&a, &b, 1e-5));
    }

    #[test]
    fn finite_inputs_give_finite_outputs(base in vecs(40), a in vecs(40), b in vecs(40), density in 0.0f64..1.0, t in 0.0f64..1.0, w in -2.0f32..2.0, seed in any::<u64>()) {
        let mut out = vec![0.0f32; 40];
        let finite = |o: &[f32]| o.iter().all(|v| v.is_finite());
        linear::linear(&[&a, &b], &[w, 1.0 - w], true, &mut out);
        prop_assert!(finite(&out));
        task_arithmetic::ties(&base, &[&a, &b], &[w, 1.0], &[density, density], 1.0, &mut out);
        prop_assert!(finite(&out));
        task_arithmetic::dare(&base, &[&a, &b], &[w, 1.0], &Dare { density: density.max(0.01), seed, consensus: true, lambda: 1.0 }, &mut out);
        prop_assert!(finite(&out));
        slerp::slerp(t, &a, &b, &mut out);
        prop_assert!(finite(&out));
        // Zero vectors (undefined direction) included.
        slerp::slerp(t, &[0.0; 40], &b, &mut out);
        prop_assert!(finite(&out));
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every method, run on a checkpoint against itself through YAML and the streaming executor,
/// returns the checkpoint.
#[test]
fn every_method_merging_base_with_itself_returns_base() {
    let base = Checkpoint::open(fixtures().join("models/base")).unwrap();
    for method in Method::ALL {
        let params = match method {
            Method::Linear => {
                "    parameters: {weight: 0.4}\n  - model: ../models/ft_b_copy_of_base\n    parameters: {weight: 0.6}\n"
            }
            Method::WiseFt | Method::Slerp => "",
            Method::TaskArithmetic => "    parameters: {weight: 0.8}\n",
            _ => "    parameters: {weight: 0.8, density: 0.4}\n",
        };
        let global = match method {
            Method::Slerp => "parameters: {t: 0.3}\n",
            Method::WiseFt => "parameters: {alpha: 0.3}\n",
            _ => "",
        };
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("ft_b_copy_of_base");
        std::fs::create_dir(&copy).unwrap();
        std::fs::copy(
            fixtures().join("models/base/model.safetensors"),
            copy.join("model.safetensors"),
        )
        .unwrap();
        let yaml = format!(
            "models:\n  - model: {}\n{}merge_method: {method}\nbase_model: {}\n{global}",
            copy.display(),
            params.replace("../models/ft_b_copy_of_base", &copy.display().to_string()),
            fixtures().join("models/base").display()
        );
        let config = MergeConfig::parse(&yaml, "self.yml", dir.path()).unwrap();
        let plan = MergePlan::new(config, MergeOptions::new(dir.path().join("out"))).unwrap();
        run(&plan, &mut Silent).unwrap();
        let out = Checkpoint::open(dir.path().join("out")).unwrap();
        for name in base.names() {
            let (a, b) = (
                out.tensor(name).unwrap().to_f32().unwrap(),
                base.tensor(name).unwrap().to_f32().unwrap(),
            );
            assert!(close(&a, &b, 1e-6), "{method}: {name} changed");
        }
    }
}
