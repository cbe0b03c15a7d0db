//! Every schedule against Composer (and llm-foundry's `inv_sqrt_with_warmup`), step by step.
//!
//! The fixture is made by `tests/fixtures/make_schedule_fixture.py`, which calls Composer's own
//! scheduler classes; see its docstring to regenerate it.

use kiln_schedules::{LrSchedule, MaskingSchedule, RunSize};
use serde::Deserialize;

#[derive(Deserialize)]
struct Run {
    max_duration: String,
    steps_per_epoch: u64,
    samples_per_step: u64,
    tokens_per_step: u64,
}

#[derive(Deserialize)]
struct Case {
    kind: String,
    schedule: serde_json::Value,
    run: Run,
    ssr: f64,
    steps: Vec<u64>,
    values: Vec<f64>,
}

fn cases() -> Vec<Case> {
    let text = include_str!("fixtures/schedules.json");
    serde_json::from_str(text).expect("fixture parses")
}

#[test]
fn every_schedule_matches_composer_at_every_step() {
    let cases = cases();
    assert!(cases.len() >= 60, "fixture has {} cases", cases.len());
    let mut names = std::collections::BTreeSet::new();
    for case in &cases {
        let run = RunSize::new(case.run.max_duration.parse().unwrap())
            .with_steps_per_epoch(case.run.steps_per_epoch)
            .with_samples_per_step(case.run.samples_per_step)
            .with_tokens_per_step(case.run.tokens_per_step);
        let eval: Box<dyn Fn(f64) -> f64> = match case.kind.as_str() {
            "lr" => {
                let s: LrSchedule = serde_json::from_value(case.schedule.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", case.schedule));
                names.insert(s.name());
                let r = s.resolve(&run, case.ssr).unwrap_or_else(|e| {
                    panic!("{} on {}: {e}", case.schedule, case.run.max_duration)
                });
                Box::new(move |t| r.multiplier(t))
            }
            "masking" => {
                let s: MaskingSchedule = serde_json::from_value(case.schedule.clone()).unwrap();
                let r = s.resolve(&run).unwrap();
                Box::new(move |t| r.rate(t))
            }
            other => panic!("unknown kind {other}"),
        };
        for (&step, &want) in case.steps.iter().zip(&case.values) {
            let got = eval(step as f64);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{} on {} (ssr {}) at step {step}: kiln {got}, Composer {want}",
                case.schedule,
                case.run.max_duration,
                case.ssr
            );
        }
    }
    assert_eq!(names.len(), 13, "every LR schedule is covered: {names:?}");
}

#[test]
fn composer_rejections_are_errors_here_too() {
    let run = RunSize::new("60ba".parse().unwrap()).with_steps_per_epoch(40);
    // Composer: "t_max 50ba must be greater than or equal to max_duration 60ba".
    let s: LrSchedule = serde_json::from_str(
        r#"{"name": "cosine_with_warmup", "t_warmup": "10ba", "t_max": "100ba"}"#,
    )
    .unwrap();
    let err = s.resolve(&run, 0.5).unwrap_err().to_string();
    assert!(err.contains("shorter than the run"), "{err}");
    assert!(s.resolve(&run, 1.0).is_ok());
    // llm-foundry: "Required: alpha_f_decay >= alpha_f_cooldown", and no `dur` times.
    let s: LrSchedule = serde_json::from_str(r#"{"name": "inv_sqrt_with_warmup", "t_warmup": "1ba", "t_scale": "1ba", "t_cooldown": "1ba", "alpha_f_decay": 0.1, "alpha_f_cooldown": 0.2}"#).unwrap();
    assert!(s.resolve(&run, 1.0).is_err());
}
