//! Online accumulators over checkpoints or epochs: Welford's mean and unbiased variance, and
//! forgetting events (Toneva et al. 2019) with nn_example_difficulty's definitions.

use serde::{Deserialize, Serialize};

/// Welford's running mean and unbiased variance (nn_example_difficulty's `OnlineVariance`), in
/// f64.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Welford {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Welford {
    /// Adds one measurement.
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Measurements so far.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The mean (`None` before the first measurement) — for a score over checkpoints, the area
    /// under its curve divided by their number.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then_some(self.mean)
    }

    /// The unbiased variance `Σ(x − x̄)²/(n − 1)` (`None` below two measurements).
    pub fn variance(&self) -> Option<f64> {
        (self.n > 1).then(|| self.m2 / (self.n - 1) as f64)
    }

    /// The population standard deviation `√(Σ(x − x̄)²/n)` (dataset cartography's variability).
    pub fn population_std(&self) -> Option<f64> {
        (self.n > 0).then(|| (self.m2 / self.n as f64).sqrt())
    }
}

/// Forgetting events of one example from its 0/1 accuracy at each presentation or checkpoint,
/// online. Equal to nn_example_difficulty's `forget_metrics` on the whole sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forgetting {
    t: usize,
    prev: bool,
    forget_from_zero: usize,
    forget_from_one: usize,
    first_one: Option<usize>,
    first_zero: Option<usize>,
    ones_since: usize,
    zeros_since: usize,
}

impl Forgetting {
    /// Adds the next accuracy.
    pub fn add(&mut self, correct: bool) {
        let t = self.t;
        let (prev_z, prev_o) = if t == 0 {
            (false, true)
        } else {
            (self.prev, self.prev)
        };
        if prev_z && !correct {
            self.forget_from_zero += 1;
        }
        if prev_o && !correct {
            self.forget_from_one += 1;
        }
        if correct {
            self.first_one.get_or_insert(t);
            if t == 0 || !self.prev {
                self.ones_since = t;
            }
        } else {
            self.first_zero.get_or_insert(t);
            if t == 0 || self.prev {
                self.zeros_since = t;
            }
        }
        self.prev = correct;
        self.t += 1;
    }

    /// Accuracies seen (`T`).
    pub fn len(&self) -> usize {
        self.t
    }

    /// Whether none was seen.
    pub fn is_empty(&self) -> bool {
        self.t == 0
    }

    /// 1 → 0 transitions (`countforget`); with `start_at_zero` the sequence is taken to start
    /// from an unlearned 0, otherwise from a learned 1 (so a first wrong answer counts).
    pub fn count(&self, start_at_zero: bool) -> usize {
        if start_at_zero {
            self.forget_from_zero
        } else {
            self.forget_from_one
        }
    }

    /// The first index with accuracy 1 (`firstlearn`; `T` if never).
    pub fn first_learn(&self) -> usize {
        self.first_one.unwrap_or(self.t)
    }

    /// The index from which accuracy stays 1 (`firstunforgettable`, Baldock et al.'s "iteration
    /// learned"; `T` if the last accuracy is 0).
    pub fn first_unforgettable(&self) -> usize {
        if self.t > 0 && self.prev {
            self.ones_since
        } else {
            self.t
        }
    }

    /// The first index with accuracy 0 (`firstforget`; `T` if never).
    pub fn first_forget(&self) -> usize {
        self.first_zero.unwrap_or(self.t)
    }

    /// The index from which accuracy stays 0 (`firstunlearnable`; `T` if the last is 1).
    pub fn first_unlearnable(&self) -> usize {
        if self.t > 0 && !self.prev {
            self.zeros_since
        } else {
            self.t
        }
    }

    /// Learned at least once and never forgotten (`unforgettable`).
    pub fn unforgettable(&self, start_at_zero: bool) -> bool {
        self.count(start_at_zero) == 0 && self.first_learn() < self.t
    }
}
