//! Text generation with GPT-2 models: greedy or sampled (temperature, top-k, top-p), seeded, with
//! or without a key/value cache (both give the same tokens).

use burn::prelude::*;
use burn::tensor::TensorData;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::error::{Error, Result};
use crate::gpt2::{Gpt2LmHead, KvCache};

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Softmax temperature; `0` picks the most likely token (greedy).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    pub seed: u64,
    /// Stop after this token (it is included).
    pub eos_token_id: Option<i64>,
    /// Reuse past keys and values instead of recomputing the whole prefix each step.
    pub use_cache: bool,
}

impl Default for GenerationConfig {
    /// 32 greedy tokens with the cache.
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            eos_token_id: None,
            use_cache: true,
        }
    }
}

/// Generates up to `config.max_new_tokens` tokens after `prompt`; returns the new tokens.
///
/// # Errors
/// [`Error::Input`] for an empty prompt, token ids outside the vocabulary, a prompt plus new
/// tokens longer than the model's context, or invalid sampling settings.
pub fn generate(model: &Gpt2LmHead, prompt: &[i64], config: &GenerationConfig) -> Result<Vec<i64>> {
    let c = model.config();
    let bad = |message: String| Error::Input { message };
    if prompt.is_empty() {
        return Err(bad("the prompt is empty; give at least one token".into()));
    }
    if let Some(t) = prompt
        .iter()
        .find(|&&t| t < 0 || t as usize >= c.vocab_size)
    {
        return Err(bad(format!(
            "token id {t} is outside the vocabulary (0..{})",
            c.vocab_size
        )));
    }
    if prompt.len() + config.max_new_tokens > c.n_positions {
        return Err(bad(format!(
            "prompt ({}) + max_new_tokens ({}) exceeds the context of {} positions",
            prompt.len(),
            config.max_new_tokens,
            c.n_positions
        )));
    }
    if !(config.temperature >= 0.0 && config.temperature.is_finite())
        || config.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0))
        || config.top_k == Some(0)
    {
        return Err(bad(
            "temperature must be ≥ 0, top_p in (0, 1], top_k ≥ 1".into()
        ));
    }
    let device = model.transformer.wte.weight.val().device();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut tokens = prompt.to_vec();
    let mut out = Vec::new();
    let mut cache = KvCache::default();
    for _ in 0..config.max_new_tokens {
        let feed: &[i64] = if config.use_cache && !cache.is_empty() {
            &tokens[tokens.len() - 1..]
        } else {
            &tokens
        };
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(feed.to_vec(), [1, feed.len()]), &device);
        let logits = if config.use_cache {
            model.forward(ids, None, Some(&mut cache))
        } else {
            model.forward(ids, None, None)
        };
        let l = logits.dims()[1];
        let last: Vec<f32> = logits
            .narrow(1, l - 1, 1)
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .expect("f32 logits");
        let next = pick(&last, config, &mut rng) as i64;
        tokens.push(next);
        out.push(next);
        if config.eos_token_id == Some(next) {
            break;
        }
    }
    Ok(out)
}

/// Chooses a token from `logits` (host-side).
fn pick(logits: &[f32], config: &GenerationConfig, rng: &mut ChaCha8Rng) -> usize {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0
    };
    if config.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| {
        logits[b]
            .partial_cmp(&logits[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if let Some(k) = config.top_k {
        order.truncate(k);
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / config.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = config.top_p {
        let mut acc = 0.0;
        let keep = probs.iter().position(|&p| {
            acc += p;
            acc >= top_p
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    // One uniform draw in [0, 1) with 53 bits.
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return order[i];
        }
    }
    order[probs.len() - 1]
}
