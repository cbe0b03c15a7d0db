//! Stage 1: logits parity on the device against the CPU and transformers (f32 and TF32).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_checkpoint::Checkpoint;
use kiln_models::LoadOptions;
use kiln_models::bert::{BertForMaskedLm, Padding};
use kiln_models::gpt2::Gpt2LmHead;
use serde_json::{Value, json};

use crate::Result;
use crate::cli::Fixture;

pub(crate) fn default_fixtures() -> Result<PathBuf> {
    let rel = Path::new("crates/kiln-models/tests/fixtures");
    let mut candidates = vec![std::env::current_dir()?.join(rel)];
    if let Some(dir) = std::env::current_exe()?.parent() {
        candidates.push(dir.join("fixtures"));
    }
    candidates
        .into_iter()
        .find(|p| p.join("reference").is_dir())
        .ok_or_else(|| "kiln-models' fixtures not found: pass --fixtures DIR".into())
}

fn ints(r: &Checkpoint, name: &str, device: &Device) -> Result<Tensor<2, Int>> {
    let t = r.tensor(name)?;
    let v: Vec<i64> = t
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let shape: [usize; 2] = t
        .shape()
        .try_into()
        .map_err(|_| format!("{name} is not 2-D"))?;
    Ok(Tensor::from_data(TensorData::new(v, shape), device))
}

fn floats(t: Tensor<3>) -> Result<Vec<f32>> {
    Ok(t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?)
}

fn max_diff(a: &[f32], b: &[f32], mask: &[i64], vocab: usize) -> f64 {
    a.chunks(vocab)
        .zip(b.chunks(vocab))
        .zip(mask)
        .filter(|(_, m)| **m == 1)
        .flat_map(|((x, y), _)| x.iter().zip(y).map(|(p, q)| f64::from((p - q).abs())))
        .fold(0.0, f64::max)
}

pub(crate) fn parity(
    dev: &Device,
    fixtures: &Path,
    names: &[Fixture],
    failures: &mut Vec<String>,
) -> Result<Vec<Value>> {
    let cpu = Device::flex();
    let mut out = Vec::new();
    for name in names.iter().map(|f| f.name()) {
        let r = Checkpoint::open(
            fixtures
                .join("reference")
                .join(format!("{name}.safetensors")),
        )?;
        let dir = fixtures.join("models").join(name);
        let want = r.tensor("logits")?.to_f32()?;
        let run_with = |d: &Device, padding: Padding| -> Result<Vec<f32>> {
            let (ids, mask) = (ints(&r, "input_ids", d)?, ints(&r, "attention_mask", d)?);
            if name.starts_with("gpt2") {
                let m = Gpt2LmHead::load(&dir, d, LoadOptions::default())?;
                floats(m.forward(ids, Some(mask), None))
            } else {
                let m = BertForMaskedLm::load(&dir, d, LoadOptions::default())?;
                let tt = r
                    .tensor("token_type_ids")
                    .ok()
                    .map(|_| ints(&r, "token_type_ids", d))
                    .transpose()?;
                floats(m.forward(ids, tt, Some(mask), padding))
            }
        };
        let run = |d: &Device| {
            let padding = if name == "mosaic_bert" {
                Padding::Unpadded
            } else {
                Padding::Padded
            };
            run_with(d, padding)
        };
        let (on_dev, on_cpu) = (run(dev)?, run(&cpu)?);
        let mask: Vec<i64> = r
            .tensor("attention_mask")?
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let vocab = *r
            .tensor("logits")?
            .shape()
            .last()
            .ok_or("logits have no shape")?;
        // The same reference with every matmul input rounded to TF32 (make_tf32_reference.py):
        // what burn's CUDA backend computes for f32 on Ampere and newer GPUs.
        let tf32_path = fixtures
            .join("reference")
            .join(format!("{name}.tf32.safetensors"));
        let want_tf32 = Checkpoint::open(&tf32_path)
            .and_then(|c| c.tensor("logits")?.to_f32())
            .map_err(|e| {
                format!(
                    "{}: {e} (run crates/kiln-models/tests/fixtures/make_tf32_reference.py)",
                    tf32_path.display()
                )
            })?;
        let (vs_cpu, vs_ref, vs_tf32, tf32_effect) = (
            max_diff(&on_dev, &on_cpu, &mask, vocab),
            max_diff(&on_dev, &want, &mask, vocab),
            max_diff(&on_dev, &want_tf32, &mask, vocab),
            max_diff(&want_tf32, &want, &mask, vocab),
        );
        // Scale-aware: 1e-3 of the fixture's largest real-token logit (at least 1e-3 absolute).
        // f32 matmuls: within it of the CPU and of transformers. TF32 matmuls: within it of the
        // TF32 reference (whose accumulation-order noise is below 1e-4 on these fixtures:
        // reference/tf32_effect.json).
        let scale = want
            .chunks(vocab)
            .zip(&mask)
            .filter(|(_, m)| **m == 1)
            .flat_map(|(row, _)| row.iter())
            .fold(1.0f32, |a, v| a.max(v.abs()));
        let tol = 1e-3 * f64::from(scale);
        let pass_f32 = vs_cpu <= tol && vs_ref <= tol;
        let pass_tf32 = vs_tf32 <= tol;
        let pass = pass_f32 || pass_tf32;
        let matmuls = if vs_ref <= vs_tf32 { "f32" } else { "tf32" };
        if !pass {
            failures.push(format!(
                "parity {name}: device vs CPU {vs_cpu:.2e}, vs transformers {vs_ref:.2e}, vs transformers with TF32 matmuls {vs_tf32:.2e} (tolerance {tol:.2e})"
            ));
        }
        eprintln!(
            "   {name}: |device − CPU| ≤ {vs_cpu:.2e}, |device − transformers| ≤ {vs_ref:.2e}, |device − transformers at TF32| ≤ {vs_tf32:.2e} (TF32 alone moves it {tf32_effect:.2e}; closer to {matmuls}) {}",
            if pass { "ok" } else { "FAIL" }
        );
        let mut entry = json!({
            "fixture": name,
            "max_abs_diff_vs_cpu": vs_cpu,
            "max_abs_diff_vs_transformers": vs_ref,
            "max_abs_diff_vs_transformers_tf32": vs_tf32,
            "tf32_effect_on_reference": tf32_effect,
            "tolerance": tol,
            "matmul_precision_closer_to": matmuls,
            "pass_f32": pass_f32,
            "pass_tf32": pass_tf32,
            "pass": pass,
        });
        if name == "mosaic_bert" {
            // Diagnostic: the padded path on the device, to tell unpadding apart from the rest.
            let padded = run_with(dev, Padding::Padded)?;
            let d = max_diff(&padded, &want, &mask, vocab);
            eprintln!("      padded path: |device − transformers| ≤ {d:.2e}");
            entry["padded_max_abs_diff_vs_transformers"] = json!(d);
        }
        out.push(entry);
    }
    Ok(out)
}
