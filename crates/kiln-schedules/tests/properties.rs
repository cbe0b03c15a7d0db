//! Property tests of the duration parser and of the schedules' ranges.

use kiln_schedules::{Duration, LrSchedule, MaskingSchedule, RunSize, Unit};
use proptest::prelude::*;

proptest! {
    /// Arbitrary text never panics: it parses or gives an error.
    #[test]
    fn any_text_parses_or_errors(s in "\\PC{0,24}") {
        let _ = s.parse::<Duration>();
    }

    /// Whole amounts in every unit and any fraction print and parse back to the same duration.
    #[test]
    fn display_round_trips(n in 0u64..1_000_000_000_000, f in 0.0f64..4.0, u in 0usize..5) {
        let d = match u {
            0 => Duration { value: n as f64, unit: Unit::Batch },
            1 => Duration { value: n as f64, unit: Unit::Epoch },
            2 => Duration { value: n as f64, unit: Unit::Sample },
            3 => Duration { value: n as f64, unit: Unit::Token },
            _ => Duration::fraction(f),
        };
        prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
    }

    /// Warmup schedules start at 0, stay within [min(alpha_f, 0), 1] and end at alpha_f.
    #[test]
    fn warmup_schedules_stay_in_range(total in 10u64..5000, warm in 0.0f64..0.5, alpha_f in 0.0f64..1.0, power in 0.1f64..4.0) {
        let run = RunSize::new(Duration::batches(total));
        let t_warmup = Duration::fraction(warm);
        let t_max = Duration::fraction(1.0);
        for s in [
            LrSchedule::CosineWithWarmup { t_warmup, t_max, alpha_f, scale_warmup: false },
            LrSchedule::LinearDecayWithWarmup { t_warmup, alpha_i: 1.0, alpha_f, t_max, scale_warmup: false },
            LrSchedule::PolynomialWithWarmup { t_warmup, power, t_max, alpha_f, scale_warmup: false },
        ] {
            let r = s.resolve(&run, 1.0).unwrap();
            for step in (0..=total).step_by((total / 50).max(1) as usize) {
                let m = r.multiplier(step as f64);
                prop_assert!((0.0..=1.0 + 1e-12).contains(&m), "{} at {step}: {m}", s.name());
            }
            prop_assert!((r.multiplier(total as f64) - alpha_f).abs() < 1e-9);
        }
    }

    /// Masking schedules move monotonically between their endpoints.
    #[test]
    fn masking_is_monotone_between_endpoints(from in 0.01f64..0.99, to in 0.01f64..0.99, total in 2u64..10_000) {
        let run = RunSize::new(Duration::batches(total));
        for s in [
            MaskingSchedule::Linear { from, to, t_max: Duration::fraction(1.0) },
            MaskingSchedule::Cosine { from, to, t_max: Duration::fraction(1.0) },
            MaskingSchedule::Step { from, to, at: Duration::fraction(0.5) },
        ] {
            let r = s.resolve(&run).unwrap();
            let mut prev = r.rate(0.0);
            for step in 1..=total.min(200) {
                let p = r.rate((step * total / total.min(200)) as f64);
                prop_assert!((p - prev) * (to - from) >= -1e-12, "{} not monotone", s.name());
                prop_assert!(p >= from.min(to) - 1e-12 && p <= from.max(to) + 1e-12);
                prev = p;
            }
        }
    }
}
