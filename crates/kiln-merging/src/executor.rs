//! The streaming executor: tensor by tensor from the memory maps to the output shards.
//!
//! For each output tensor, chunks of [`CHUNK`] elements are decoded from every input, merged and
//! encoded in parallel (rayon) into the tensor's output buffer, which a writer thread streams to
//! the current shard while the next tensor is computed. Afterwards the inputs' pages for that
//! tensor are released. TIES's magnitude threshold comes from a parallel radix select over the
//! task vector's bits, streamed like everything else. Peak memory is therefore about two output
//! tensors and per-thread chunk buffers — a small multiple of the largest tensor, independent of
//! the model's size.

use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use kiln_checkpoint::{Checkpoint, CheckpointWriter, TensorView};
use rayon::prelude::*;

use crate::config::{Compute, TokenizerSource};
use crate::error::{Error, Result};
use crate::methods::slerp::SlerpStats;
use crate::methods::task_arithmetic::{self, Combine};
use crate::methods::{Method, Sparsify, linear};
use crate::plan::{Action, MergePlan, TensorParams, TensorPlan};
use crate::real::Real;
use crate::sparsify::{RadixSelect, RandomDrop, TopK, stream_id};

/// Elements per chunk of parallel work.
pub const CHUNK: usize = 1 << 16;

/// Tokenizer files copied by `tokenizer_source`.
pub const TOKENIZER_FILES: [&str; 10] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "added_tokens.json",
    "chat_template.jinja",
];

/// Name of the configuration copied into the output directory.
pub const CONFIG_COPY: &str = "kiln_merge_config.yml";

/// Progress of a run, reported after each tensor.
#[derive(Debug, Clone, Copy)]
pub struct TensorDone<'a> {
    /// 0-based index of the tensor.
    pub index: usize,
    /// Number of tensors.
    pub total: usize,
    /// Its name.
    pub name: &'a str,
    /// Input bytes it read.
    pub bytes_read: u64,
    /// Output bytes it produced.
    pub bytes_written: u64,
}

/// Receives progress; the CLI draws a progress bar with it.
pub trait Observer: Send {
    /// A phase begins (e.g. the model-wide pass of `trim_scope: model`).
    fn phase(&mut self, _message: &str) {}
    /// A tensor has been merged and handed to the writer.
    fn tensor_done(&mut self, _event: &TensorDone<'_>) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Observer for Silent {}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeReport {
    /// Where the merged model is.
    pub out_dir: std::path::PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes read from the inputs.
    pub bytes_read: u64,
    /// Bytes of tensor data written.
    pub bytes_written: u64,
    /// Wall time.
    pub seconds: f64,
    /// The plan's warnings.
    pub warnings: Vec<String>,
    /// Tensors in which the merge produced NaN or ±∞ from finite inputs, with the number of such
    /// values (written only with `allow_non_finite`).
    pub non_finite: Vec<(String, usize)>,
}

/// Runs a plan: writes the merged checkpoint, `config.json`, the tokenizer (if asked), the
/// configuration and a model card into `plan.options.out_dir`, atomically.
///
/// # Errors
/// [`Error::Threads`], the checkpoint writer's errors (an existing output without `force`, I/O),
/// decoding errors of damaged inputs, [`Error::Io`] for the extra files.
pub fn run(plan: &MergePlan, observer: &mut dyn Observer) -> Result<MergeReport> {
    let go = |observer: &mut dyn Observer| match plan.config.compute {
        Compute::F32 => run_typed::<f32>(plan, observer),
        Compute::F64 => run_typed::<f64>(plan, observer),
    };
    match plan.options.threads {
        Some(threads) => rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Threads {
                threads,
                message: e.to_string(),
            })?
            .install(|| go(observer)),
        None => go(observer),
    }
}

fn run_typed<F: Real>(plan: &MergePlan, observer: &mut dyn Observer) -> Result<MergeReport> {
    let start = Instant::now();
    let metadata = plan.reference().metadata();
    let writer = CheckpointWriter::create(
        &plan.options.out_dir,
        plan.shards.clone(),
        metadata,
        plan.options.force,
    )?;
    let thresholds = model_thresholds::<F>(plan, observer)?;
    let pause_after: Option<usize> = std::env::var("KILN_MERGE_TEST_PAUSE_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());

    let mut non_finite: Vec<(String, usize)> = Vec::new();
    let (tx, rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(1);
    let (bytes_read, bytes_written, writer) =
        std::thread::scope(|scope| -> Result<(u64, u64, CheckpointWriter)> {
            let writer_thread = scope.spawn(move || -> Result<CheckpointWriter> {
                let mut writer = writer;
                for (i, bytes) in rx {
                    writer.write_tensor(&plan.tensors[i].name, &bytes)?;
                }
                Ok(writer)
            });
            let mut read = 0u64;
            let mut written = 0u64;
            let mut failure = None;
            for (i, tp) in plan.tensors.iter().enumerate() {
                let produced = tensor_bytes::<F>(plan, tp, &thresholds);
                let bytes = match produced {
                    Ok((b, bad)) => {
                        if bad > 0 {
                            non_finite.push((tp.name.clone(), bad));
                        }
                        b
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                let tensor_read: u64 = inputs(plan)
                    .filter_map(|c| c.info(&tp.name))
                    .map(|t| t.byte_len() as u64)
                    .sum();
                read += tensor_read;
                written += bytes.len() as u64;
                let out_len = bytes.len() as u64;
                if tx.send((i, bytes)).is_err() {
                    break; // the writer failed; its error is reported below
                }
                for c in inputs(plan) {
                    c.release(&tp.name);
                }
                observer.tensor_done(&TensorDone {
                    index: i,
                    total: plan.tensors.len(),
                    name: &tp.name,
                    bytes_read: tensor_read,
                    bytes_written: out_len,
                });
                if pause_after == Some(i + 1) {
                    // Test hook (see the fault-injection test): stop here, mid-merge, until killed.
                    eprintln!(
                        "kiln: paused after {} tensors (KILN_MERGE_TEST_PAUSE_AFTER)",
                        i + 1
                    );
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
            }
            drop(tx);
            let writer = writer_thread
                .join()
                .expect("the writer thread does not panic")?;
            if let Some(e) = failure {
                return Err(e);
            }
            Ok((read, written, writer))
        })?;

    if !non_finite.is_empty() && !plan.options.allow_non_finite {
        // Nothing is committed: dropping the writer removes the staging directory.
        return Err(Error::NonFinite {
            tensors: non_finite,
        });
    }
    let mut writer = writer;
    write_extras(plan, &mut writer)?;
    let out_dir = writer.finish()?;
    Ok(MergeReport {
        out_dir,
        tensors: plan.tensors.len(),
        bytes_read,
        bytes_written,
        seconds: start.elapsed().as_secs_f64(),
        warnings: plan.warnings.clone(),
        non_finite,
    })
}

fn inputs(plan: &MergePlan) -> impl Iterator<Item = &Checkpoint> {
    plan.base.iter().chain(&plan.models)
}

/// The reference's view of a tensor and each model's.
struct Views<'a> {
    reference: TensorView<'a>,
    base: Option<TensorView<'a>>,
    models: Vec<TensorView<'a>>,
}

fn views<'a>(plan: &'a MergePlan, tp: &TensorPlan) -> Result<Views<'a>> {
    Ok(Views {
        reference: plan.reference().tensor(&tp.name)?,
        base: plan.base.as_ref().map(|b| b.tensor(&tp.name)).transpose()?,
        models: plan
            .models
            .iter()
            .map(|m| m.tensor(&tp.name))
            .collect::<kiln_checkpoint::Result<_>>()?,
    })
}

/// Decodes elements `start..start + out.len()` of a model's tensor laid out like the reference;
/// with a row count (the `base_rows` policy), elements past the model's rows come from
/// `fallback` (the reference's chunk).
fn decode_model<F: Real>(
    view: &TensorView<'_>,
    rows: Option<usize>,
    row_len: usize,
    start: usize,
    out: &mut [F],
    fallback: &[F],
) -> Result<()> {
    let Some(rows) = rows else {
        return Ok(F::decode(view, start, out)?);
    };
    let end = start + out.len();
    let valid_end = end.min(rows * row_len);
    if start < valid_end {
        F::decode(view, start, &mut out[..valid_end - start])?;
    }
    let from = valid_end.max(start);
    out[from - start..].copy_from_slice(&fallback[from - start..]);
    Ok(())
}

fn row_len(shape: &[usize]) -> usize {
    shape.iter().skip(1).product::<usize>().max(1)
}

/// A tensor's merged bytes, and how many of its values are NaN or ±∞ where every input value
/// of the same chunk was finite (values the merge itself made non-finite).
fn tensor_bytes<F: Real>(
    plan: &MergePlan,
    tp: &TensorPlan,
    thresholds: &[Option<F>],
) -> Result<(Vec<u8>, usize)> {
    let params = match &tp.action {
        Action::Copy => return Ok((plan.reference().tensor(&tp.name)?.data.to_vec(), 0)),
        Action::Merge(p) => p,
    };
    let v = views(plan, tp)?;
    let n: usize = tp.shape.iter().product();
    let rl = row_len(&tp.shape);
    let size = tp.out_dtype.size();
    let mut out = vec![0u8; n * size];
    if n == 0 {
        return Ok((out, 0));
    }
    let method = plan.config.method;
    let k = v.models.len();

    // Per-model sparsifiers of the task-arithmetic family.
    let sparsifiers: Vec<Sparsifier<F>> = match method.family() {
        Some(family) => (0..k)
            .map(|i| sparsifier(plan, tp, params, &v, i, family.sparsify, thresholds))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let slerp = if method == Method::Slerp {
        let stats = (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .map_init(
                || (vec![F::ZERO; CHUNK], vec![F::ZERO; CHUNK]),
                |(a, b), c| -> Result<SlerpStats> {
                    let s = c * CHUNK;
                    let len = CHUNK.min(n - s);
                    F::decode(&v.reference, s, &mut a[..len])?;
                    decode_model(&v.models[0], tp.rows[0], rl, s, &mut b[..len], &a[..len])?;
                    let mut st = SlerpStats::default();
                    st.add(&a[..len], &b[..len]);
                    Ok(st)
                },
            )
            .try_reduce(SlerpStats::default, |x, y| Ok(x.merge(y)))?;
        Some(stats.coefficients(params.t))
    } else {
        None
    };

    let weights: Vec<F> = params.weights.iter().map(|&w| F::from_f64(w)).collect();
    let combine = Combine {
        consensus: method.family().is_some_and(|f| f.consensus),
        normalize: params.normalize,
        lambda: F::from_f64(params.lambda),
    };
    let introduced = out
        .par_chunks_mut(CHUNK * size)
        .enumerate()
        .map_init(
            || {
                (
                    vec![F::ZERO; CHUNK],
                    vec![vec![F::ZERO; CHUNK]; k],
                    vec![F::ZERO; CHUNK],
                )
            },
            |(reference, models, merged), (c, out_bytes)| -> Result<usize> {
                let s = c * CHUNK;
                let len = out_bytes.len() / size;
                let reference = &mut reference[..len];
                F::decode(&v.reference, s, reference)?;
                for (i, m) in models.iter_mut().enumerate() {
                    decode_model(&v.models[i], tp.rows[i], rl, s, &mut m[..len], reference)?;
                }
                let inputs_finite = reference.iter().all(|x| x.is_finite())
                    && models
                        .iter()
                        .all(|m| m[..len].iter().all(|x| x.is_finite()));
                let merged = &mut merged[..len];
                match method {
                    Method::Linear => {
                        let refs: Vec<&[F]> = models.iter().map(|m| &m[..len]).collect();
                        linear::linear(&refs, &weights, params.normalize, merged);
                    }
                    Method::WiseFt => {
                        linear::wise_ft(F::from_f64(params.t), reference, &models[0][..len], merged)
                    }
                    Method::Slerp => {
                        let (a, b) = slerp.expect("computed above");
                        let (a, b) = (F::from_f64(a), F::from_f64(b));
                        for ((o, &x), &y) in merged
                            .iter_mut()
                            .zip(reference.iter())
                            .zip(&models[0][..len])
                        {
                            *o = a * x + b * y;
                        }
                    }
                    Method::TaskArithmetic
                    | Method::Ties
                    | Method::DareLinear
                    | Method::DareTies => {
                        // The reference is the base for these methods.
                        for (i, m) in models.iter_mut().enumerate() {
                            let d = &mut m[..len];
                            for (x, &b) in d.iter_mut().zip(reference.iter()) {
                                *x = *x - b;
                            }
                            sparsifiers[i].apply(d, c, s);
                        }
                        let refs: Vec<&[F]> = models.iter().map(|m| &m[..len]).collect();
                        task_arithmetic::combine(reference, &refs, &weights, &combine, merged);
                    }
                }
                F::encode(merged, tp.out_dtype, out_bytes)?;
                Ok(if inputs_finite {
                    kiln_checkpoint::dtype::count_non_finite(out_bytes, tp.out_dtype)?
                } else {
                    0
                })
            },
        )
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    Ok((out, introduced))
}

/// How one model's task vector is sparsified for one tensor.
enum Sparsifier<F> {
    Keep,
    TopK {
        topk: TopK<F>,
        ties_before: Vec<usize>,
        scale: F,
    },
    AtLeast {
        threshold: F,
        scale: F,
    },
    Random {
        drop: RandomDrop,
        scale: F,
    },
}

impl<F: Real> Sparsifier<F> {
    fn apply(&self, delta: &mut [F], chunk: usize, start: usize) {
        match self {
            Self::Keep => {}
            Self::TopK {
                topk,
                ties_before,
                scale,
            } => {
                topk.apply(delta, ties_before[chunk]);
                scale_all(delta, *scale);
            }
            Self::AtLeast { threshold, scale } => {
                for x in delta.iter_mut() {
                    *x = if x.abs() >= *threshold {
                        *x * *scale
                    } else {
                        F::ZERO
                    };
                }
            }
            Self::Random { drop, scale } => drop.apply(delta, start, *scale),
        }
    }
}

fn scale_all<F: Real>(values: &mut [F], scale: F) {
    if scale != F::ONE {
        for x in values.iter_mut() {
            *x = *x * scale;
        }
    }
}

fn sparsifier<F: Real>(
    plan: &MergePlan,
    tp: &TensorPlan,
    params: &TensorParams,
    v: &Views<'_>,
    i: usize,
    kind: Sparsify,
    thresholds: &[Option<F>],
) -> Result<Sparsifier<F>> {
    let density = params.densities[i];
    let scale = if params.rescale && density > 0.0 {
        F::from_f64(1.0 / density)
    } else {
        F::ONE
    };
    match kind {
        Sparsify::None => Ok(Sparsifier::Keep),
        Sparsify::Random => Ok(Sparsifier::Random {
            drop: RandomDrop {
                density,
                seed: plan.options.seed,
                stream: stream_id(&tp.name, i),
            },
            scale,
        }),
        Sparsify::Magnitude if params.model_scope => {
            Ok(match thresholds.get(i).copied().flatten() {
                None => Sparsifier::Keep,
                Some(threshold) => Sparsifier::AtLeast { threshold, scale },
            })
        }
        Sparsify::Magnitude => {
            let n: usize = tp.shape.iter().product();
            let k = match TopK::<F>::keep_count(n, density) {
                Ok(k) => k,
                Err(TopK { keep_all: true, .. }) => return Ok(Sparsifier::Keep),
                Err(none) => {
                    return Ok(Sparsifier::TopK {
                        topk: none,
                        ties_before: vec![0; n.div_ceil(CHUNK)],
                        scale,
                    });
                }
            };
            let rl = row_len(&tp.shape);
            let base = v.base.as_ref().expect("the family requires a base");
            let model = &v.models[i];
            let rows = tp.rows[i];
            // Task-vector chunk `c` into `d` (with the base chunk in `b`).
            let delta = |c: usize, b: &mut [F], d: &mut [F]| -> Result<usize> {
                let s = c * CHUNK;
                let len = CHUNK.min(n - s);
                F::decode(base, s, &mut b[..len])?;
                decode_model(model, rows, rl, s, &mut d[..len], &b[..len])?;
                for (x, &y) in d[..len].iter_mut().zip(b[..len].iter()) {
                    *x = *x - y;
                }
                Ok(len)
            };
            // The exact k-th largest |δ|: a radix select over the magnitudes' bits, streamed in
            // parallel chunks (no copy of the tensor).
            let mut select = RadixSelect::new(F::KEY_BITS, (n - k + 1) as u64);
            while select.needs_pass() {
                let part = (0..n.div_ceil(CHUNK))
                    .into_par_iter()
                    .map_init(
                        || (vec![F::ZERO; CHUNK], vec![F::ZERO; CHUNK]),
                        |(b, d), c| -> Result<RadixSelect> {
                            let len = delta(c, b, d)?;
                            let mut fork = select.fork();
                            fork.observe_magnitudes(&d[..len]);
                            Ok(fork)
                        },
                    )
                    .try_reduce(
                        || select.fork(),
                        |mut a, b| {
                            a.merge(&b);
                            Ok(a)
                        },
                    )?;
                select.merge(&part);
                select.finish_pass();
            }
            let topk = TopK::from_select(&select, n, k);
            let chunks = n.div_ceil(CHUNK);
            if topk.ties_to_keep == 0 || topk.ties_to_keep as u64 >= select.equal() {
                // All entries at the threshold are kept, or none: no order to respect.
                return Ok(Sparsifier::TopK {
                    topk,
                    ties_before: vec![0; chunks],
                    scale,
                });
            }
            // Some ties at the threshold are kept, in index order: count them per chunk.
            let per_chunk: Vec<usize> = (0..n.div_ceil(CHUNK))
                .into_par_iter()
                .map_init(
                    || (vec![F::ZERO; CHUNK], vec![F::ZERO; CHUNK]),
                    |(b, d), c| -> Result<usize> {
                        let len = delta(c, b, d)?;
                        Ok(topk.count_ties(&d[..len]))
                    },
                )
                .collect::<Result<_>>()?;
            let mut ties_before = Vec::with_capacity(per_chunk.len());
            let mut acc = 0;
            for t in per_chunk {
                ties_before.push(acc);
                acc += t;
            }
            Ok(Sparsifier::TopK {
                topk,
                ties_before,
                scale,
            })
        }
    }
}

/// The TIES paper's model-wide trim: for each model, the magnitude threshold over its whole
/// task vector (every merged tensor), found exactly by a radix select streamed over the inputs.
fn model_thresholds<F: Real>(
    plan: &MergePlan,
    observer: &mut dyn Observer,
) -> Result<Vec<Option<F>>> {
    let scoped = plan
        .tensors
        .iter()
        .any(|t| matches!(&t.action, Action::Merge(p) if p.model_scope));
    if !scoped
        || plan
            .config
            .method
            .family()
            .is_none_or(|f| f.sparsify != Sparsify::Magnitude)
    {
        return Ok(Vec::new());
    }
    let merged: Vec<&TensorPlan> = plan
        .tensors
        .iter()
        .filter(|t| matches!(t.action, Action::Merge(_)))
        .collect();
    let total: u64 = merged
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    let base = plan.base.as_ref().expect("the family requires a base");
    let mut out = Vec::with_capacity(plan.models.len());
    for i in 0..plan.models.len() {
        let density = match &merged.first().map(|t| &t.action) {
            Some(Action::Merge(p)) => p.densities[i],
            _ => 1.0,
        };
        // The TIES code keeps |τ| ≥ the (d − ⌊d·density⌋)-th smallest magnitude.
        let keep = (total as f64 * density) as u64;
        if density >= 1.0 || keep >= total || total == 0 {
            out.push(None);
            continue;
        }
        observer.phase(&format!(
            "trim_scope model: magnitude threshold of model {} ({} passes)",
            i + 1,
            F::KEY_BITS / 16
        ));
        let mut select = RadixSelect::new(F::KEY_BITS, total - keep);
        while select.needs_pass() {
            for tp in &merged {
                let n: usize = tp.shape.iter().product();
                let rl = row_len(&tp.shape);
                let bv = base.tensor(&tp.name)?;
                let mv = plan.models[i].tensor(&tp.name)?;
                let part = (0..n.div_ceil(CHUNK))
                    .into_par_iter()
                    .map_init(
                        || (vec![F::ZERO; CHUNK], vec![F::ZERO; CHUNK]),
                        |(b, m), c| -> Result<RadixSelect> {
                            let s = c * CHUNK;
                            let len = CHUNK.min(n - s);
                            F::decode(&bv, s, &mut b[..len])?;
                            decode_model(&mv, tp.rows[i], rl, s, &mut m[..len], &b[..len])?;
                            for (x, &y) in m[..len].iter_mut().zip(b[..len].iter()) {
                                *x = *x - y;
                            }
                            let mut fork = select.fork();
                            fork.observe_magnitudes(&m[..len]);
                            Ok(fork)
                        },
                    )
                    .try_reduce(
                        || select.fork(),
                        |mut a, b| {
                            a.merge(&b);
                            Ok(a)
                        },
                    )?;
                select.merge(&part);
                base.release(&tp.name);
                plan.models[i].release(&tp.name);
            }
            select.finish_pass();
        }
        out.push(Some(F::from_key(select.result())));
    }
    Ok(out)
}

fn write_extras(plan: &MergePlan, writer: &mut CheckpointWriter) -> Result<()> {
    if let Some(config) = plan.reference().config() {
        let mut json = config.json().clone();
        if let (Some(dtype), Some(obj)) = (plan.config.out_dtype, json.as_object_mut()) {
            let torch = match dtype {
                kiln_checkpoint::Dtype::BF16 => "bfloat16",
                kiln_checkpoint::Dtype::F16 => "float16",
                kiln_checkpoint::Dtype::F64 => "float64",
                _ => "float32",
            };
            let key = if obj.contains_key("dtype") {
                "dtype"
            } else {
                "torch_dtype"
            };
            obj.insert(key.into(), torch.into());
        }
        let text = serde_json::to_string_pretty(&json).expect("JSON serialises");
        writer.write_file(kiln_checkpoint::CONFIG_FILE, text.as_bytes())?;
    }
    let mut copied = Vec::new();
    if plan.config.tokenizer_source.is_some() {
        let dir = tokenizer_dir(&plan.config);
        for name in tokenizer_files(&dir) {
            writer.copy_file(&dir.join(name), name)?;
            copied.push(name);
        }
    }
    writer.write_file(CONFIG_COPY, plan.config.text.as_bytes())?;
    writer.write_file(
        "README.md",
        crate::card::model_card(plan, &copied).as_bytes(),
    )?;
    Ok(())
}

/// The directory `tokenizer_source` names (a model file's directory for file inputs).
pub(crate) fn tokenizer_dir(config: &crate::config::MergeConfig) -> std::path::PathBuf {
    let path = match &config.tokenizer_source {
        Some(TokenizerSource::Base) => &config.base_model.as_ref().expect("validated").path,
        Some(TokenizerSource::Model(i)) => &config.models[*i].model.path,
        None => return std::path::PathBuf::new(),
    };
    if path.is_file() {
        path.parent().unwrap_or(Path::new(".")).to_owned()
    } else {
        path.clone()
    }
}

/// The tokenizer files present in `dir`.
pub(crate) fn tokenizer_files(dir: &Path) -> Vec<&'static str> {
    TOKENIZER_FILES
        .into_iter()
        .filter(|name| dir.join(name).is_file())
        .collect()
}
