//! Sparsification of task vectors: magnitude top-k (TIES) and random drop (DARE).

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::real::Real;

/// Keeps exactly the `k = max(1, ⌊density·n⌋)` entries of largest magnitude, as mergekit's and
/// PEFT's magnitude pruning do; among entries equal to the k-th largest magnitude, the ones with
/// the lowest index are kept (torch leaves that order unspecified). `density >= 1` keeps
/// everything, `density <= 0` nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopK<F> {
    /// Magnitudes above this are kept.
    pub threshold: F,
    /// How many entries equal to `threshold` are kept (the first ones by index).
    pub ties_to_keep: usize,
    /// Keep everything.
    pub keep_all: bool,
    /// Keep nothing.
    pub keep_none: bool,
}

impl<F: Real> TopK<F> {
    /// Finds the threshold from the magnitudes of a whole tensor. `magnitudes` is scratch space:
    /// it is reordered.
    pub fn from_scratch(magnitudes: &mut [F], density: f64) -> Self {
        let n = magnitudes.len();
        if density >= 1.0 || n == 0 {
            return Self::all();
        }
        if density <= 0.0 {
            return Self {
                threshold: F::ZERO,
                ties_to_keep: 0,
                keep_all: false,
                keep_none: true,
            };
        }
        let k = ((density * n as f64) as usize).max(1);
        if k >= n {
            return Self::all();
        }
        let (_, kth, _) = magnitudes.select_nth_unstable_by(n - k, |a, b| {
            a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal)
        });
        let threshold = *kth;
        // Counting is order-independent, so the reordered scratch serves.
        let above = magnitudes.iter().filter(|v| **v > threshold).count();
        Self {
            threshold,
            ties_to_keep: k.saturating_sub(above),
            keep_all: false,
            keep_none: false,
        }
    }

    /// The number of entries to keep out of `n` at `density`, or `None` for "all" / "none"
    /// (see [`TopK::keep_all`], [`TopK::keep_none`]).
    pub fn keep_count(n: usize, density: f64) -> Result<usize, Self> {
        if density >= 1.0 || n == 0 {
            return Err(Self::all());
        }
        if density <= 0.0 {
            return Err(Self {
                threshold: F::ZERO,
                ties_to_keep: 0,
                keep_all: false,
                keep_none: true,
            });
        }
        let k = ((density * n as f64) as usize).max(1);
        if k >= n { Err(Self::all()) } else { Ok(k) }
    }

    /// The top-`k` of `n` magnitudes from a finished [`RadixSelect`] run for rank `n − k + 1`
    /// over their keys (how the streaming executor finds it, in parallel, without a copy).
    pub fn from_select(select: &RadixSelect, n: usize, k: usize) -> Self {
        let above = n as u64 - select.below() - select.equal();
        Self {
            threshold: F::from_key(select.result()),
            ties_to_keep: (k as u64).saturating_sub(above) as usize,
            keep_all: false,
            keep_none: false,
        }
    }

    /// The top-k of `values` (by magnitude).
    pub fn of(values: &[F], density: f64) -> Self {
        let mut mags: Vec<F> = values.iter().map(|v| v.abs()).collect();
        Self::from_scratch(&mut mags, density)
    }

    fn all() -> Self {
        Self {
            threshold: F::ZERO,
            ties_to_keep: 0,
            keep_all: true,
            keep_none: false,
        }
    }

    /// Zeroes the entries of `values` (a chunk) that are not kept. `ties_seen` counts the
    /// threshold-equal entries before this chunk; returns how many this chunk holds.
    pub fn apply(&self, values: &mut [F], ties_seen: usize) -> usize {
        if self.keep_all {
            return 0;
        }
        if self.keep_none {
            values.fill(F::ZERO);
            return 0;
        }
        // Branch-free: which entries survive is unpredictable.
        let mut ties = 0;
        for v in values.iter_mut() {
            let m = v.abs();
            let tie = m == self.threshold;
            let keep = (m > self.threshold) | (tie & (ties_seen + ties < self.ties_to_keep));
            ties += usize::from(tie);
            *v = if keep { *v } else { F::ZERO };
        }
        ties
    }

    /// How many entries of `values` equal the threshold in magnitude.
    pub fn count_ties(&self, values: &[F]) -> usize {
        if self.keep_all || self.keep_none {
            return 0;
        }
        values.iter().filter(|v| v.abs() == self.threshold).count()
    }
}

/// DARE's random drop: each entry is kept with probability `density`, independently, from a
/// ChaCha8 stream addressed by (seed, stream, element index), so the result does not depend on
/// chunking or threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomDrop {
    /// Keep probability.
    pub density: f64,
    /// Global seed (`--random-seed`).
    pub seed: u64,
    /// Stream: distinct per (tensor, model).
    pub stream: u64,
}

impl RandomDrop {
    /// Zeroes dropped entries of `values`, which start at element `start` of the tensor.
    /// Kept entries are multiplied by `scale` (1/density when rescaling, else 1).
    pub fn apply<F: Real>(&self, values: &mut [F], start: usize, scale: F) {
        if self.density >= 1.0 {
            return;
        }
        if self.density <= 0.0 {
            values.fill(F::ZERO);
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(start as u128);
        // keep iff u < density·2^32, with u uniform on [0, 2^32).
        let cut = (self.density * 4_294_967_296.0).min(4_294_967_295.0) as u64;
        for v in values.iter_mut() {
            if u64::from(rng.next_u32()) < cut {
                *v = *v * scale;
            } else {
                *v = F::ZERO;
            }
        }
    }
}

/// A stable 64-bit hash of a string and an index (FNV-1a), for [`RandomDrop::stream`].
pub fn stream_id(name: &str, index: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain((index as u64).to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Exact selection of the `rank`-th smallest key (1-based) over data streamed several times:
/// a radix select over 16-bit digits, most significant first. Memory: one 65,536-bin histogram.
/// Used for the TIES paper's model-wide trim, whose threshold spans every tensor.
#[derive(Debug, Clone)]
pub struct RadixSelect {
    key_bits: u32,
    rank: u64,
    /// Keys known to be smaller than the selected one.
    below: u64,
    /// Keys equal to the selected one (known after the last pass).
    equal: u64,
    /// Digits fixed so far (as a prefix of the key).
    prefix: u64,
    /// How many 16-bit digits are fixed.
    fixed: u32,
    hist: Vec<u64>,
}

impl RadixSelect {
    /// Selects the `rank`-th smallest (1-based) of keys with `key_bits` significant bits
    /// (32 or 64).
    pub fn new(key_bits: u32, rank: u64) -> Self {
        Self {
            key_bits,
            rank: rank.max(1),
            below: 0,
            equal: 0,
            prefix: 0,
            fixed: 0,
            hist: vec![0; 1 << 16],
        }
    }

    /// Whether another pass over the data is needed.
    pub fn needs_pass(&self) -> bool {
        self.fixed * 16 < self.key_bits
    }

    /// Feeds one key during a pass.
    #[inline]
    pub fn observe(&mut self, key: u64) {
        let shift_done = self.key_bits - self.fixed * 16;
        // `checked_shr` covers the first pass, where no digit is fixed (a shift by 64 for f64).
        if key.checked_shr(shift_done).unwrap_or(0) != self.prefix {
            return;
        }
        let digit = (key >> (shift_done - 16)) & 0xFFFF;
        self.hist[digit as usize] += 1;
    }

    /// Feeds the magnitudes of a slice during a pass.
    pub fn observe_magnitudes<F: Real>(&mut self, values: &[F]) {
        let shift_done = self.key_bits - self.fixed * 16;
        let shift_digit = shift_done - 16;
        if self.fixed == 0 {
            for v in values {
                self.hist[((v.abs().key() >> shift_digit) & 0xFFFF) as usize] += 1;
            }
        } else {
            for v in values {
                let key = v.abs().key();
                if key >> shift_done == self.prefix {
                    self.hist[((key >> shift_digit) & 0xFFFF) as usize] += 1;
                }
            }
        }
    }

    /// Merges another selector's histogram (for parallel passes).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            *a += b;
        }
    }

    /// An empty copy for a worker thread of the current pass.
    pub fn fork(&self) -> Self {
        Self {
            hist: vec![0; 1 << 16],
            ..self.clone()
        }
    }

    /// Ends a pass: fixes the next digit.
    pub fn finish_pass(&mut self) {
        let mut remaining = self.rank;
        let mut digit = 0xFFFF;
        for (d, &c) in self.hist.iter().enumerate() {
            if remaining <= c {
                digit = d as u64;
                break;
            }
            remaining -= c;
            self.below += c;
        }
        self.equal = self.hist[digit as usize];
        self.rank = remaining;
        self.prefix = (self.prefix << 16) | digit;
        self.fixed += 1;
        self.hist.iter_mut().for_each(|c| *c = 0);
    }

    /// The selected key, once no pass is needed.
    pub fn result(&self) -> u64 {
        self.prefix
    }

    /// How many keys are smaller than the selected one (after the last pass).
    pub fn below(&self) -> u64 {
        self.below
    }

    /// How many keys equal the selected one (after the last pass).
    pub fn equal(&self) -> u64 {
        self.equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_exactly_k_with_ties_by_index() {
        let v = [0.5f32, -3.0, 1.0, 1.0, -1.0, 0.0, 2.0];
        // density 4/7: keep 4 — -3, 2, and two of the three ±1 ties (the first two by index).
        let t = TopK::of(&v, 4.0 / 7.0 + 1e-9);
        let mut out = v;
        t.apply(&mut out, 0);
        assert_eq!(out, [0.0, -3.0, 1.0, 1.0, 0.0, 0.0, 2.0]);
        // The same in two chunks, passing the ties seen.
        let mut a = v;
        let seen = t.apply(&mut a[..3], 0);
        t.apply(&mut a[3..], seen);
        assert_eq!(a, out);
        assert!(TopK::of(&v, 1.0).keep_all);
        let mut z = v;
        TopK::of(&v, 0.0).apply(&mut z, 0);
        assert!(z.iter().all(|x| *x == 0.0));
        // The streaming route gives the same selection.
        let (n, k) = (
            v.len(),
            TopK::<f32>::keep_count(v.len(), 4.0 / 7.0 + 1e-9).unwrap(),
        );
        let mut sel = RadixSelect::new(32, (n - k + 1) as u64);
        while sel.needs_pass() {
            for x in &v {
                sel.observe(x.abs().key());
            }
            sel.finish_pass();
        }
        assert_eq!(TopK::from_select(&sel, n, k), t);
        // At least one entry is kept for any positive density.
        let mut one = v;
        TopK::of(&v, 1e-6).apply(&mut one, 0);
        assert_eq!(one.iter().filter(|x| **x != 0.0).count(), 1);
    }

    #[test]
    fn random_drop_is_chunking_independent_and_has_the_right_rate() {
        let drop = RandomDrop {
            density: 0.3,
            seed: 7,
            stream: stream_id("w", 1),
        };
        let mut whole = vec![1.0f64; 100_000];
        drop.apply(&mut whole, 0, 1.0 / 0.3);
        let mut parts = vec![1.0f64; 100_000];
        let (a, b) = parts.split_at_mut(33_333);
        drop.apply(a, 0, 1.0 / 0.3);
        drop.apply(b, 33_333, 1.0 / 0.3);
        assert_eq!(whole, parts);
        let kept = whole.iter().filter(|v| **v != 0.0).count() as f64 / 1e5;
        // Binomial(1e5, 0.3): sd 0.00145; 5 sd.
        assert!((kept - 0.3).abs() < 0.0075, "{kept}");
        assert!(
            whole
                .iter()
                .all(|v| *v == 0.0 || (*v - 1.0 / 0.3).abs() < 1e-12)
        );
    }

    #[test]
    fn radix_select_finds_exact_ranks() {
        let values: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 5000) as f32 * 0.001)
            .collect();
        let mut sorted = values.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for rank in [1u64, 2, 2500, 4999, 5000] {
            let mut sel = RadixSelect::new(32, rank);
            while sel.needs_pass() {
                for v in &values {
                    sel.observe(v.key());
                }
                sel.finish_pass();
            }
            assert_eq!(
                f32::from_key(sel.result()),
                sorted[rank as usize - 1],
                "rank {rank}"
            );
        }
        let values64: Vec<f64> = values.iter().map(|v| f64::from(*v) / 3.0).collect();
        let mut sel = RadixSelect::new(64, 1234);
        while sel.needs_pass() {
            let mut fork = sel.fork();
            for v in &values64 {
                fork.observe(v.key());
            }
            sel.merge(&fork);
            sel.finish_pass();
        }
        let mut s64 = values64.clone();
        s64.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(f64::from_key(sel.result()), s64[1233]);
        assert_eq!(
            sel.below() as usize,
            s64.iter().filter(|v| **v < s64[1233]).count()
        );
        assert_eq!(
            sel.equal() as usize,
            s64.iter().filter(|v| **v == s64[1233]).count()
        );
    }
}
