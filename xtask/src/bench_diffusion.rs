//! `cargo xtask bench diffusion`: SD2-base's UNet (a training step's forward + backward, batch 1,
//! 64×64 latent) and a sampling step of it and of diffusers' tiny test UNet, on burn's flex CPU
//! backend beside diffusers in the same run, on every core.

use serde_json::Value;

use crate::bench::Spread;
use crate::{Result, root};

pub(crate) fn diffusion(args: &[&str]) -> Result {
    if !args.is_empty() {
        return Err(format!("unknown arguments to `bench diffusion`: {args:?}").into());
    }
    let script = root().join("crates/kiln-models/benches/torch_unet.py");
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let kiln = crate::bench::kiln_json_bench_with("kiln-models", "unet", None)?;
    let torch = crate::bench::torch_anchor_with(&script, threads, &[])?;
    let version = |k: &str| {
        torch
            .as_ref()
            .and_then(|t| t[k].as_str())
            .unwrap_or("not installed")
            .to_owned()
    };
    let reps = kiln["reps"].as_u64().unwrap_or(0);
    let mut table = String::from(
        "| measurement | kiln (s) | diffusers (s) | kiln / diffusers (time) |\n|---|---:|---:|---:|\n",
    );
    let s = |x: f64| {
        if x < 0.1 {
            format!("{:.4}", x)
        } else {
            format!("{:.2}", x)
        }
    };
    for (key, label) in [
        (
            "sd2_train_step_s",
            "SD2-base UNet, forward + backward, batch 1, 64×64 latent, 77 text states",
        ),
        (
            "sd2_sample_step_s",
            "SD2-base UNet, one sampling step (guided: batch 2), no autodiff",
        ),
        (
            "tiny_sample_step_s",
            "diffusers' tiny test UNet, one sampling step (batch 2, 16×16)",
        ),
    ] {
        let k = Spread::from_json(&kiln[key]).ok_or("the kiln bench printed no times")?;
        let t = torch.as_ref().and_then(|t| Spread::from_json(&t[key]));
        table.push_str(&format!(
            "| {label} | {} | {} | {} |\n",
            k.show(s),
            t.map_or("—".into(), |t| t.show(s)),
            t.map_or("—".into(), |t| format!("{:.2}×", k.median / t.median)),
        ));
    }
    let params = |v: &Value| {
        v["sd2_params"]
            .as_u64()
            .map_or("?".into(), |p| p.to_string())
    };
    let section = format!(
        "<!-- bench:diffusion:start -->\n\
## kiln-models: the diffusion UNet (CPU)\n\n\
Command: `cargo xtask bench diffusion` (`crates/kiln-models/benches/unet.rs`, release build, beside \
`benches/torch_unet.py` in the same run, on every core: {threads} threads). SD2-base's UNet is built from \
`stabilityai/stable-diffusion-2-base`'s `unet/config.json` layout with random weights (kiln {} parameters, \
diffusers {}), f32. A training step's forward + backward: loss = mean(output²) on one 64×64 latent at \
timestep 500 with 77 random text states (no optimizer); a sampling step: the UNet on a guided batch of 2 \
under no autodiff / `torch.no_grad`. Times are the median of {reps} runs (the tiny UNet: {}) after one \
warm-up, min–max in parentheses. diffusers {} (its default attention processor, PyTorch SDPA), PyTorch {}.\n\
Machine: {}.\n\n{table}\
<!-- bench:diffusion:end -->\n",
        params(&kiln),
        torch.as_ref().map_or("?".into(), params),
        20 * reps,
        version("diffusers"),
        version("torch"),
        crate::bench::machine()
    );
    print!("{section}");
    crate::bench::record(&root().join("docs/BENCHMARKS.md"), "diffusion", &section)?;
    Ok(())
}
