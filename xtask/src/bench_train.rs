//! `cargo xtask bench train`: training-step throughput of a tiny BERT on burn's flex CPU backend
//! beside the same step in PyTorch, in one run, on one thread and on every core.

use serde_json::Value;

use crate::bench::Spread;
use crate::{Result, root};

pub(crate) fn train(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("unknown arguments to `bench train`: {args:?}").into());
    }
    let script = root().join("crates/kiln-train/benches/torch_train_step.py");
    let mut table = String::from(
        "| model | threads | kiln step (ms) | kiln tokens/s | PyTorch step (ms) | PyTorch tokens/s | kiln / PyTorch (speed) |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut torch_version = "not installed".to_owned();
    for threads in crate::bench::thread_counts() {
        let kiln = crate::bench::kiln_json_bench_with("kiln-train", "train_step", Some(threads))?;
        let torch = crate::bench::torch_anchor_with(&script, threads, &[])?;
        if let Some(v) = torch.as_ref().and_then(|t| t["torch"].as_str()) {
            torch_version = v.to_owned();
        }
        let steps = |v: &Value, k: &str| Spread::from_json(&v[k]);
        let tokens =
            (kiln["batch"].as_f64().unwrap_or(f64::NAN)) * kiln["seq"].as_f64().unwrap_or(f64::NAN);
        let ms = |x: f64| format!("{:.1}", x * 1e3);
        let rate = |s: &Spread| format!("{:.0}", tokens / s.median);
        for (key, label) in [
            ("bert", "BERT layout (learned positions, GELU)"),
            ("mosaic_bert", "MosaicBERT layout (ALiBi, GeGLU)"),
        ] {
            let k =
                steps(&kiln, &format!("{key}_step_s")).ok_or("the kiln bench printed no steps")?;
            let t = torch
                .as_ref()
                .and_then(|t| steps(t, &format!("{key}_step_s")));
            table.push_str(&format!(
                "| {label} | {threads} | {} | {} | {} | {} | {} |\n",
                k.show(ms),
                rate(&k),
                t.map_or("—".into(), |t| t.show(ms)),
                t.map_or("—".into(), |t| rate(&t)),
                t.map_or("—".into(), |t| format!("{:.2}×", t.median / k.median)),
            ));
        }
    }
    let section = format!(
        "<!-- bench:train:start -->\n\
## kiln-train: one training step of a tiny BERT (CPU)\n\n\
Command: `cargo xtask bench train` (`crates/kiln-train/benches/train_step.rs`, release build, beside \
`benches/torch_train_step.py` in the same run, on 1 thread and on every core: `RAYON_NUM_THREADS` for kiln, \
`torch.set_num_threads` for PyTorch). Hidden 64, 2 layers, 4 heads, MLP 128, vocabulary 1,024, dropout 0.1; \
batch 32 × 64 tokens; one step = forward, MLM loss on every 7th position, backward, global-norm clipping at 1.0, AdamW; \
steps are the median of 20 steps after 2 warm-up steps, with their min–max in parentheses; tokens/s from the median. \
kiln's bench tunes glibc malloc at start-up (`kiln_models::cpu::tune_allocator`), as kiln's binaries do. The PyTorch step is transformers' `BertForMaskedLM` with `torch.optim.AdamW` and \
`clip_grad_norm_` (transformers has no MosaicBERT, so that row has no anchor). PyTorch {torch_version}.\n\
Machine: {}.\n\n{table}\
<!-- bench:train:end -->\n",
        crate::bench::machine()
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "train", &section)?;
    Ok(())
}
