//! The teacher-logit cache: captured from a GPT-2 teacher, byte-identical when captured twice,
//! read back as the teacher's top-k, followed in the (shuffled) data order by example id — the
//! cached KD loss equals the live teacher's up to 16-bit rounding — resumed bit for bit, and bad
//! caches (other data, another k, another vocabulary, a truncated shard) refused by name.

use std::path::Path;

use kiln_distill::burn::module::Module;
use kiln_distill::burn::tensor::activation::log_softmax;
use kiln_distill::burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_distill::gpt2::{Gpt2Teacher, capture};
use kiln_distill::{
    CacheSpec, Distill, Divergence, KdLoss, LogProbDtype, Missing, TopKCache, Window, fingerprint,
};
use kiln_models::gpt2::{Gpt2Config, Gpt2LmHead};
use kiln_schedules::Duration;
use kiln_train::params::float_params;
use kiln_train::tasks::CausalLmTask;
use kiln_train::{Algorithm, Context, Event, OptimizerConfig, Trainer, TrainerConfig};

const V: usize = 97;
const L: usize = 12;

fn config() -> Gpt2Config {
    Gpt2Config {
        vocab_size: V,
        n_positions: 16,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        ..Gpt2Config::tiny()
    }
}

fn seqs(n: usize, salt: u32) -> Vec<Vec<u32>> {
    (0..n as u32)
        .map(|s| {
            (0..L as u32)
                .map(|i| (s * 7 + i * 3 + salt) % V as u32)
                .collect()
        })
        .collect()
}

/// burn's generator is per process and the trainer reseeds it every step: tests that build
/// models from it or train run one at a time (they run in parallel threads otherwise, and an
/// interleaved seed or draw would change a model).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn model(seed: u64) -> Gpt2LmHead {
    let d = Device::flex().autodiff();
    d.seed(seed);
    let m = Gpt2LmHead::init(&config(), &d).unwrap();
    let _ = float_params(&m);
    m
}

fn spec(k: usize) -> CacheSpec {
    CacheSpec {
        k,
        dtype: LogProbDtype::Bf16,
        vocab_size: V,
        rows_per_example: L - 1,
        temperature: 1.0,
        teacher: "tiny GPT-2 seed 1".into(),
        data: "test sequences".into(),
    }
}

fn make(dir: &Path, k: usize, data: &[Vec<u32>]) -> TopKCache {
    let mut t = Gpt2Teacher::new(model(1));
    capture(&mut t, data, spec(k), dir, 5, false, &mut |_, _| {}).unwrap();
    TopKCache::open(dir).unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_capture_is_byte_identical_and_reads_back_as_the_teachers_top_k() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = seqs(12, 0);
    let cache = make(&tmp.path().join("a"), 8, &data);
    make(&tmp.path().join("b"), 8, &data);
    let (a, b) = (files(&tmp.path().join("a")), files(&tmp.path().join("b")));
    assert_eq!(a.len(), b.len());
    for ((na, fa), (nb, fb)) in a.iter().zip(&b) {
        assert!(na == nb && fa == fb, "{na} differs between two captures");
    }
    assert_eq!(cache.len(), 12);
    assert_eq!(cache.bytes_per_row(), 6 * 8 + 4);
    // example 5 against the teacher's own log-softmax
    let d = Device::flex();
    let teacher = model(1).valid();
    let ids: Vec<i64> = data[5].iter().map(|&t| i64::from(t)).collect();
    let logits = teacher.forward(
        Tensor::<2, Int>::from_data(TensorData::new(ids, [1, L]), &d),
        None,
        None,
    );
    let lp = log_softmax(logits.reshape([L, V]), 1)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    for (r, row_k) in cache.example(5).unwrap().into_iter().enumerate() {
        let (idx, vals, tail) = (row_k.indices, row_k.log_probs, row_k.tail);
        let row = &lp[r * V..(r + 1) * V];
        let mut order: Vec<usize> = (0..V).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        assert_eq!(
            idx,
            order[..8].iter().map(|&i| i as u32).collect::<Vec<_>>(),
            "row {r}: top-8 indices"
        );
        for (j, &i) in idx.iter().enumerate() {
            let want = half::bf16::from_f32(row[i as usize]).to_f32();
            assert_eq!(vals[j], want, "row {r}: log-probability of class {i}");
        }
        let mass: f64 = order[..8].iter().map(|&i| f64::from(row[i]).exp()).sum();
        assert!(
            (f64::from(tail) - (1.0 - mass)).abs() < 1e-6,
            "row {r}: tail {tail} vs {}",
            1.0 - mass
        );
    }
    assert!(cache.example(12).is_err());
}

#[test]
fn bad_caches_are_refused_by_name() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = seqs(6, 0);
    let dir = tmp.path().join("c");
    let cache = make(&dir, 4, &data);
    let fp = fingerprint(data.iter().map(Vec::as_slice));
    assert_eq!(cache.data_fingerprint(), fp);
    cache.check(&fp, V, Some(4)).unwrap();
    let other = fingerprint(seqs(6, 1).iter().map(Vec::as_slice));
    let e = cache.check(&other, V, None).unwrap_err().to_string();
    assert!(e.contains("other data"), "{e}");
    let e = cache.check(&fp, V, Some(8)).unwrap_err().to_string();
    assert!(e.contains("top 4") && e.contains("top 8"), "{e}");
    let e = cache.check(&fp, 50257, None).unwrap_err().to_string();
    assert!(e.contains("vocabulary of 97") && e.contains("50257"), "{e}");
    // an existing directory is not overwritten
    let mut t = Gpt2Teacher::new(model(1));
    let e = capture(&mut t, &data, spec(4), &dir, 5, false, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists"), "{e}");
    // sequences of another length
    let mut mixed = data.clone();
    mixed[2].pop();
    let e = capture(
        &mut t,
        &mixed,
        spec(4),
        tmp.path().join("m"),
        5,
        false,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sequence 2"), "{e}");
    // a truncated shard is an error when the cache is opened, never a panic
    let shard = dir.join("shard-00000.bin");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let e = TopKCache::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains("truncated") && e.contains("shard-00000.bin"),
        "{e}"
    );
}

fn kd() -> KdLoss {
    KdLoss {
        ce_weight: 0.5,
        kd_weight: 0.5,
        temperature: 1.0,
        divergence: Divergence::ForwardKl,
    }
}

struct StopAt(u64);
impl<M> Algorithm<M> for StopAt {
    fn name(&self) -> &str {
        "stop"
    }
    fn on_event(&mut self, e: Event, ctx: &mut Context<'_, M>) -> Result<(), String> {
        if e == Event::Checkpoint && ctx.state.step == self.0 {
            return Err("stopped".into());
        }
        Ok(())
    }
}

/// A 12-step run on shuffled data with a cached (k = V) or live teacher; returns the logged
/// `kd_loss` per step and the final weights.
fn run(dir: &Path, cache_dir: Option<&Path>, stop: Option<u64>) -> (Vec<f64>, Vec<Vec<f32>>) {
    let d = Device::flex().autodiff();
    let make = || -> Vec<Box<dyn Algorithm<Gpt2LmHead>>> {
        let distill = match cache_dir {
            Some(c) => Distill::cached(
                kd(),
                TopKCache::open(c).unwrap(),
                Missing::Zero,
                Window::always(),
            )
            .unwrap(),
            None => {
                Distill::new(kd(), Box::new(Gpt2Teacher::new(model(1))), Window::always()).unwrap()
            }
        };
        vec![Box::new(distill)]
    };
    let mut tc = TrainerConfig::new(Duration::batches(12), OptimizerConfig::adamw(1e-3, 0.0));
    tc.progress_bar = false;
    tc.save_interval = Some(Duration::batches(4));
    let task = || CausalLmTask::new(seqs(20, 0), seqs(4, 5), 4, 9, &d).unwrap();
    let mut algorithms = make();
    if let Some(at) = stop {
        algorithms.push(Box::new(StopAt(at)));
        assert!(
            Trainer::new(tc.clone(), dir)
                .fit(model(2), &mut task(), &mut algorithms, &d)
                .is_err()
        );
        algorithms = make();
    }
    let out = Trainer::new(tc, dir)
        .fit(model(2), &mut task(), &mut algorithms, &d)
        .unwrap();
    let kd = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["kd_loss"].as_f64())
        .collect();
    let w = float_params(&out.model)
        .into_iter()
        .map(|(_, t)| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
        .collect();
    (kd, w)
}

#[test]
fn training_on_a_cache_follows_the_data_order_and_resumes_bit_for_bit() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    make(&cache_dir, V, &seqs(20, 0));
    let (cached, w) = run(&tmp.path().join("cached"), Some(&cache_dir), None);
    let (live, _) = run(&tmp.path().join("live"), None, None);
    assert_eq!(cached.len(), 12);
    // the shuffled batches find their own examples: the first step's KL (same student, same
    // batch) agrees with the live teacher's up to bf16 rounding of the log-probabilities
    assert!(
        (cached[0] - live[0]).abs() <= 0.02 * live[0].abs(),
        "cached {} vs live {}",
        cached[0],
        live[0]
    );
    let (cached2, w2) = run(&tmp.path().join("resumed"), Some(&cache_dir), Some(8));
    assert_eq!(cached, cached2);
    assert_eq!(w, w2);
    // a cache is refused for a divergence it cannot give, or another temperature
    let c = TopKCache::open(&cache_dir).unwrap();
    let jsd = KdLoss {
        divergence: Divergence::Jsd { beta: 0.5 },
        ..kd()
    };
    assert!(Distill::cached(jsd, c, Missing::Zero, Window::always()).is_err());
    let c = TopKCache::open(&cache_dir).unwrap();
    let hot = KdLoss {
        temperature: 2.0,
        ..kd()
    };
    let e = Distill::cached(hot, c, Missing::Zero, Window::always())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("temperature 1"), "{e}");
}
