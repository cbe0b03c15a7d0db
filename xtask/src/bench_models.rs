//! `cargo xtask bench models`: tokens/s of GPT-2-small- and BERT-base-size models on burn's flex CPU
//! backend, forward and forward + backward, beside PyTorch on the CPU in the same run.

use serde_json::Value;

use crate::bench::Spread;
use crate::{Result, root};

pub(crate) fn models(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("unknown arguments to `bench models`: {args:?}").into());
    }
    let script = root().join("crates/kiln-models/benches/torch_anchor.py");
    let mut table = String::from(
        "| model | pass | threads | kiln (burn flex) tokens/s | PyTorch CPU tokens/s | kiln / PyTorch |\n|---|---|---:|---:|---:|---:|\n",
    );
    let mut torch_version = "not installed".to_owned();
    let mut runs = Vec::new();
    for threads in crate::bench::thread_counts() {
        let kiln = crate::bench::kiln_json_bench_with("kiln-models", "models", Some(threads))?;
        let torch = crate::bench::torch_anchor_with(&script, threads, &[])?;
        if let Some(v) = torch.as_ref().and_then(|t| t["torch"].as_str()) {
            torch_version = v.to_owned();
        }
        runs.push((threads, kiln, torch));
    }
    let spread = |v: &Value, k: &str| Spread::from_json(&v[k]);
    for (model, label) in [
        ("gpt2", "GPT-2 small (124M)"),
        ("bert", "BERT-base MLM (110M encoder)"),
    ] {
        for (pass, key) in [
            ("forward", "forward_tokens_per_s"),
            ("forward + backward", "train_tokens_per_s"),
        ] {
            for (threads, kiln, torch) in &runs {
                let k = spread(kiln, &format!("{model}_{key}"))
                    .ok_or("the kiln bench printed no rates")?;
                let t = torch
                    .as_ref()
                    .and_then(|t| spread(t, &format!("{model}_{key}")));
                let rate = |x: f64| format!("{x:.0}");
                table.push_str(&format!(
                    "| {label} | {pass} | {threads} | {} | {} | {} |\n",
                    k.show(rate),
                    t.map_or("not run".into(), |t| t.show(rate)),
                    t.map_or("—".into(), |t| format!("{:.2}×", k.median / t.median))
                ));
            }
        }
    }
    let section = format!(
        "<!-- bench:models:start -->\n\
## kiln-models (CPU)\n\n\
Command: `cargo xtask bench models` (`crates/kiln-models/benches/models.rs`, release build, beside \
`benches/torch_anchor.py` in the same run). Batch 4 × 128 tokens, random weights, dropout off; each cell is the median of 5 runs after a \
warm-up with their min–max in parentheses; forward without autodiff, forward + backward of the LM/MLM loss with it. On 1 thread and on every core (`RAYON_NUM_THREADS` for kiln, `torch.set_num_threads` for PyTorch); kiln's bench tunes glibc malloc at start-up (`kiln_models::cpu::tune_allocator`), as kiln's binaries do. PyTorch {torch_version}.\n\
Machine: {}.\n\n{table}\
<!-- bench:models:end -->\n",
        crate::bench::machine()
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "models", &section)?;
    Ok(())
}
