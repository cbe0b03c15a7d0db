//! BioMedLM fine-tunes with the Hugging Face Trainer's `warmup_ratio` and
//! `get_linear_schedule_with_warmup`. The Trainer rounds the warmup up to whole steps
//! (`ceil(ratio · T)`); with that many batches as `t_warmup`, kiln's (Composer's)
//! `linear_decay_with_warmup` down to 0 gives the same multiplier at every optimiser step
//! (fixture from `tests/fixtures/make_hf_schedule_fixture.py`, computed by transformers).

use kiln_schedules::{Duration, LrSchedule, RunSize};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    total_steps: u64,
    warmup_ratio: f64,
    warmup_steps: u64,
    multipliers: Vec<f64>,
}

#[test]
fn linear_warmup_equals_the_hf_trainer() {
    let cases: Vec<Case> =
        serde_json::from_str(include_str!("fixtures/hf_linear_warmup.json")).unwrap();
    assert!(cases.len() >= 5);
    for c in &cases {
        assert_eq!(
            c.warmup_steps,
            (c.warmup_ratio * c.total_steps as f64).ceil() as u64,
            "the Trainer's rounding"
        );
        let s: LrSchedule = serde_json::from_value(serde_json::json!({
            "name": "linear_decay_with_warmup",
            "t_warmup": format!("{}ba", c.warmup_steps),
            "alpha_f": 0.0,
        }))
        .unwrap();
        let r = s
            .resolve(&RunSize::new(Duration::batches(c.total_steps)), 1.0)
            .unwrap();
        for (k, want) in c.multipliers.iter().enumerate() {
            let got = r.multiplier(k as f64);
            assert!(
                (got - want).abs() < 1e-12,
                "T {} step {k}: kiln {got}, transformers {want}",
                c.total_steps
            );
        }
    }
}
