//! How many samples each domain gives per epoch, with mosaicml/streaming's rules for
//! `Stream(proportion=…, repeat=…, choose=…)` and `StreamingDataset(epoch_size=…)`.
//!
//! Each stream sets **at most one** of
//! - `proportion`: its share of the epoch (relative). Every stream must then set one;
//!   the epoch has `epoch_size` samples, or as many as all streams hold together;
//! - `repeat`: a multiplier on its own size (absolute; `0.5` takes half, `3` each sample three
//!   times);
//! - `choose`: an exact number of samples (absolute);
//! - none: its own size once (absolute) — or, when no stream sets anything and `epoch_size` is
//!   given, a share of the epoch proportional to its size.
//!
//! Relative and absolute weights cannot be mixed, and `epoch_size` goes only with relative (or
//! no) weights. Proportions become counts by truncation; the shortfall of one sample each goes
//! to streams picked by `np.random.default_rng(seed).choice(n_streams, shortfall,
//! replace=False)` with streaming's `shuffle_seed` (9176 by default) — kiln draws the same
//! picks, so a resolved mix has exactly the per-stream counts streaming's has (checked on tiny
//! MDS datasets by `tests/fixtures/make_streaming_fixture.py`).
//!
//! ```
//! use kiln_data::streams::{resolve, StreamSpec};
//! let streams = [StreamSpec::proportion("web", 0.7), StreamSpec::proportion("code", 0.3)];
//! let r = resolve(&streams, &[1000, 50], Some(100), 9176)?;
//! assert_eq!(r.choose, [70, 30]);
//! assert!((r.repeat[1] - 0.6).abs() < 1e-12);
//! # Ok::<(), kiln_data::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::numpy_rng::Pcg64;

/// streaming's default `shuffle_seed`, which also seeds the proportional rounding.
pub const STREAMING_SEED: u64 = 9176;

/// One stream (domain) and its weight, as `streaming.Stream`'s keyword arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// The domain's name.
    pub name: String,
    /// Share of the epoch (relative weight; need not sum to 1 over the streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proportion: Option<f64>,
    /// Multiplier on the domain's size (absolute weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<f64>,
    /// Exact samples per epoch (absolute weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choose: Option<u64>,
}

impl StreamSpec {
    /// A stream with no weight: its own size once.
    pub fn plain(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            proportion: None,
            repeat: None,
            choose: None,
        }
    }

    /// A stream with a relative weight.
    pub fn proportion(name: &str, p: f64) -> Self {
        Self {
            proportion: Some(p),
            ..Self::plain(name)
        }
    }

    /// A stream repeated `r` times per epoch.
    pub fn repeat(name: &str, r: f64) -> Self {
        Self {
            repeat: Some(r),
            ..Self::plain(name)
        }
    }

    /// A stream giving exactly `n` samples per epoch.
    pub fn choose(name: &str, n: u64) -> Self {
        Self {
            choose: Some(n),
            ..Self::plain(name)
        }
    }

    fn is_relative(&self) -> bool {
        self.proportion.is_some()
    }

    fn is_set(&self) -> bool {
        self.proportion.is_some() || self.repeat.is_some() || self.choose.is_some()
    }
}

/// A mix resolved against the domains' sizes: what one epoch draws from each stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedStreams {
    /// Stream names, in the given order.
    pub names: Vec<String>,
    /// Samples each stream holds.
    pub samples: Vec<u64>,
    /// Samples drawn from each stream per epoch (streaming's `stream.choose` after resolution).
    pub choose: Vec<u64>,
    /// `choose / samples`: passes over each stream per epoch.
    pub repeat: Vec<f64>,
    /// Each stream's share of the epoch.
    pub proportion: Vec<f64>,
    /// Samples per epoch, all streams together.
    pub epoch_size: u64,
}

/// NumPy's `np.add.reduce` over a float64 array: the first element, then a pairwise sum of the
/// rest (8-way unrolled blocks of up to 128), so proportions normalise to the same bits.
fn numpy_sum(a: &[f64]) -> f64 {
    fn pairwise(a: &[f64]) -> f64 {
        let n = a.len();
        if n < 8 {
            a.iter().fold(0.0, |s, &x| s + x)
        } else if n <= 128 {
            let mut r = [0.0f64; 8];
            r.copy_from_slice(&a[..8]);
            let mut i = 8;
            while i < n - n % 8 {
                for j in 0..8 {
                    r[j] += a[i + j];
                }
                i += 8;
            }
            let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for &x in &a[i..] {
                res += x;
            }
            res
        } else {
            let mut n2 = n / 2;
            n2 -= n2 % 8;
            pairwise(&a[..n2]) + pairwise(&a[n2..])
        }
    }
    match a.split_first() {
        None => 0.0,
        Some((first, rest)) => first + pairwise(rest),
    }
}

/// Resolves `streams` against the number of samples each holds (`samples`, same order), as
/// `StreamingDataset(streams=…, epoch_size=…, shuffle_seed=seed)` does.
///
/// # Errors
/// [`Error::Config`] naming the stream when a stream sets more than one weight, a weight is
/// negative or not finite, relative and absolute weights are mixed, `epoch_size` is given with
/// absolute weights or is zero, a stream holds no samples, all proportions are zero, or the
/// epoch would be empty.
pub fn resolve(
    streams: &[StreamSpec],
    samples: &[u64],
    epoch_size: Option<u64>,
    seed: u64,
) -> Result<ResolvedStreams> {
    let bad = |message: String| Err(Error::Config { message });
    if streams.is_empty() {
        return bad("a stream mix needs at least one stream".into());
    }
    if streams.len() != samples.len() {
        return bad(format!(
            "{} streams but sizes for {}; give one size per stream",
            streams.len(),
            samples.len()
        ));
    }
    for (i, s) in streams.iter().enumerate() {
        let set = [
            s.proportion.is_some(),
            s.repeat.is_some(),
            s.choose.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            return bad(format!(
                "stream {i} (`{}`) sets more than one of proportion, repeat and choose; set at most one, the others are derived",
                s.name
            ));
        }
        for (what, v) in [("proportion", s.proportion), ("repeat", s.repeat)] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return bad(format!(
                    "stream {i} (`{}`): {what} {v} must be a finite number ≥ 0",
                    s.name
                ));
            }
        }
        if samples[i] == 0 {
            return bad(format!(
                "stream {i} (`{}`) holds no samples; remove it from the mix",
                s.name
            ));
        }
        if streams[..i].iter().any(|o| o.name == s.name) {
            return bad(format!(
                "stream `{}` is listed twice; name each domain once",
                s.name
            ));
        }
    }
    let relative = streams[0].is_relative();
    if let Some((i, s)) = streams
        .iter()
        .enumerate()
        .find(|(_, s)| s.is_relative() != relative)
    {
        return bad(format!(
            "stream {i} (`{}`): relative (proportion) and absolute (repeat, choose, none) stream weights cannot be mixed; give every stream a proportion, or none of them",
            s.name
        ));
    }
    if epoch_size == Some(0) {
        return bad("epoch_size must be positive; leave it out to use the streams' sizes".into());
    }
    let unspecified = !streams.iter().any(StreamSpec::is_set);
    let n = streams.len();
    let total: u64 = samples.iter().sum();
    let choose: Vec<u64> = if relative || (unspecified && epoch_size.is_some()) {
        let epoch = epoch_size.unwrap_or(total);
        let raw: Vec<f64> = if relative {
            streams
                .iter()
                .map(|s| s.proportion.unwrap_or(0.0))
                .collect()
        } else {
            samples.iter().map(|&x| x as f64).collect()
        };
        let sum = numpy_sum(&raw);
        if sum <= 0.0 {
            return bad("every stream's proportion is 0, so nothing could be drawn".into());
        }
        let mut choose: Vec<u64> = raw
            .iter()
            .map(|p| (epoch as f64 * (p / sum)) as u64)
            .collect();
        let shortfall = epoch.saturating_sub(choose.iter().sum());
        let picks = Pcg64::new(seed)
            .choice_without_replacement(n as u64, shortfall)
            .ok_or_else(|| Error::Config {
                message: format!(
                    "cannot spread a rounding shortfall of {shortfall} samples over {n} streams (streaming's rule handles up to 10,000 streams)"
                ),
            })?;
        for p in picks {
            choose[p as usize] += 1;
        }
        choose
    } else {
        if epoch_size.is_some() {
            return bad("epoch_size can only be given with proportions (or no weights at all); with repeat or choose the epoch is the sum of the streams' counts".into());
        }
        streams
            .iter()
            .zip(samples)
            .map(|(s, &m)| match (s.repeat, s.choose) {
                (Some(r), _) => (r * m as f64) as u64,
                (None, Some(c)) => c,
                (None, None) => m,
            })
            .collect()
    };
    let epoch: u64 = choose.iter().sum();
    if epoch == 0 {
        return bad(
            "the mix draws no samples per epoch; give some stream a positive weight".into(),
        );
    }
    Ok(ResolvedStreams {
        names: streams.iter().map(|s| s.name.clone()).collect(),
        samples: samples.to_vec(),
        repeat: choose
            .iter()
            .zip(samples)
            .map(|(&c, &m)| c as f64 / m as f64)
            .collect(),
        proportion: choose.iter().map(|&c| c as f64 / epoch as f64).collect(),
        choose,
        epoch_size: epoch,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn fixture() -> Value {
        serde_json::from_str(include_str!("../tests/fixtures/streaming_mixes.json"))
            .expect("fixture parses")
    }

    fn specs(c: &Value) -> Vec<StreamSpec> {
        c["weights"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, w)| StreamSpec {
                name: format!("s{i}"),
                proportion: w.get("proportion").and_then(Value::as_f64),
                repeat: w.get("repeat").and_then(Value::as_f64),
                choose: w.get("choose").and_then(Value::as_u64),
            })
            .collect()
    }

    /// Every configuration resolves to the per-stream counts streaming's `StreamingDataset`
    /// resolved (and drew when iterating an epoch), or is refused where streaming refused it.
    #[test]
    fn counts_equal_streaming() {
        let f = fixture();
        let configs = f["configs"].as_array().unwrap();
        assert!(configs.len() >= 9);
        let mut checked = 0;
        for c in configs {
            let name = c["name"].as_str().unwrap();
            let sizes: Vec<u64> = serde_json::from_value(c["sizes"].clone()).unwrap();
            let got = resolve(
                &specs(c),
                &sizes,
                c["epoch_size"].as_u64(),
                c["seed"].as_u64().unwrap(),
            );
            if c.get("error").is_some() {
                let e = got.expect_err(name).to_string();
                assert!(
                    e.contains("stream") || e.contains("epoch_size"),
                    "{name}: {e}"
                );
                continue;
            }
            let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            let want: Vec<u64> = serde_json::from_value(c["choose"].clone()).unwrap();
            let drawn: Vec<u64> = serde_json::from_value(c["drawn"].clone()).unwrap();
            assert_eq!(got.choose, want, "{name}");
            assert_eq!(got.choose, drawn, "{name}");
            assert_eq!(
                Some(got.epoch_size),
                c["resolved_epoch_size"].as_u64(),
                "{name}"
            );
            checked += 1;
        }
        assert!(checked >= 6, "{checked} configurations compared");
    }

    /// NumPy's `default_rng(seed).choice(n, k, replace=False)` picks the same set.
    #[test]
    fn numpy_choice_equal() {
        let f = fixture();
        for c in f["choices"].as_array().unwrap() {
            let (seed, n, k) = (
                c["seed"].as_u64().unwrap(),
                c["n"].as_u64().unwrap(),
                c["k"].as_u64().unwrap(),
            );
            let mut got = Pcg64::new(seed).choice_without_replacement(n, k).unwrap();
            got.sort_unstable();
            let want: Vec<u64> = serde_json::from_value(c["picked"].clone()).unwrap();
            assert_eq!(got, want, "seed {seed}, n {n}, k {k}");
        }
    }

    #[test]
    fn errors_name_the_stream() {
        let e = |s: &[StreamSpec], n: &[u64], es| resolve(s, n, es, 0).unwrap_err().to_string();
        let two = StreamSpec {
            repeat: Some(2.0),
            ..StreamSpec::proportion("code", 0.5)
        };
        assert!(e(&[two], &[3], None).contains("(`code`) sets more than one"));
        assert!(
            e(
                &[StreamSpec::proportion("a", 1.0), StreamSpec::choose("b", 3)],
                &[5, 5],
                None
            )
            .contains("stream 1 (`b`): relative")
        );
        assert!(e(&[StreamSpec::repeat("a", 2.0)], &[5], Some(9)).contains("epoch_size can only"));
        assert!(e(&[StreamSpec::repeat("a", -1.0)], &[5], None).contains("finite number ≥ 0"));
        assert!(e(&[StreamSpec::plain("a")], &[0], None).contains("holds no samples"));
        assert!(e(&[StreamSpec::proportion("a", 0.0)], &[4], None).contains("proportion is 0"));
        assert!(
            e(
                &[StreamSpec::plain("a"), StreamSpec::plain("a")],
                &[4, 4],
                None
            )
            .contains("listed twice")
        );
    }
}
