//! Child processes, stages and their failures: how the check stays alive when a kernel hangs or
//! a backend panics.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use serde_json::{Value, json};

use crate::{Result, scalar};

/// Runs one stage, turning an error or a panic into a recorded failure.
pub(crate) fn stage(
    name: &str,
    failures: &mut Vec<String>,
    f: impl FnOnce(&mut Vec<String>) -> Result<Value>,
) -> Value {
    let mut inner = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut inner)));
    failures.append(&mut inner);
    let message = match outcome {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e.to_string(),
        Err(panic) => panic_text(panic.as_ref()),
    };
    eprintln!("   {name} failed: {message}");
    failures.push(format!("{name}: {message}"));
    json!({"error": message})
}

/// A panic's message (`panic!` carries a `String` or a `&str`).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}

/// Runs a `measure` or `train` child with its output in files, killing it after `limit_s` seconds.
pub(crate) fn run_child(mut cmd: Command, scratch: &Path, limit_s: f64) -> Result<Value> {
    let stdout_path = scratch.join("stdout");
    let stderr_path = scratch.join("stderr");
    cmd.stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?);
    let mut child = cmd.spawn()?;
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if t.elapsed().as_secs_f64() > limit_s {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let tail = || {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    };
    Ok(match status {
        None => {
            json!({"error": format!("timed out after {limit_s:.0} s (its time limit)"), "stderr": tail()})
        }
        Some(s) if s.success() => {
            let stdout = std::fs::read(&stdout_path)?;
            serde_json::from_slice(&stdout)
                .unwrap_or_else(|e| json!({"error": format!("bad output: {e}")}))
        }
        Some(s) => json!({"error": format!("exited with {s}: {}", tail())}),
    })
}

/// One line about a child's result: its error, or its throughput figures.
pub(crate) fn summary(v: &Value) -> String {
    match v["error"].as_str() {
        // A child's panic message is the line after the first "panicked at"; else the last line.
        Some(e) => {
            let lines: Vec<&str> = e.lines().collect();
            let message = lines
                .iter()
                .position(|l| l.contains("panicked at"))
                .and_then(|i| lines.get(i + 1))
                .or(lines.last())
                .copied()
                .unwrap_or(e);
            format!("error: {message}")
        }
        None => format!(
            "{:.0} tokens/s, {:.2} TFLOP/s{}{}{}",
            v["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            v["achieved_tflops"].as_f64().unwrap_or(f64::NAN),
            v["mfu"]
                .as_f64()
                .map_or(String::new(), |m| format!(", MFU {:.1}%", 100.0 * m)),
            // The CPU backend reports no allocator pool.
            v["peak_reserved_bytes"]
                .as_f64()
                .map_or(String::new(), |b| format!(
                    ", peak {:.2} GiB",
                    b / (1u64 << 30) as f64
                )),
            v["first_step_s"]
                .as_f64()
                .map_or(String::new(), |t| format!(", first step {t:.1} s")),
        ),
    }
}

/// Runs `sum([1, 2, 3]²)` on the device; the first line of whatever went wrong (an error, or a
/// panic here or in the backend's threads, whose default report is silenced meanwhile).
pub(crate) fn probe(dev: &Device) -> std::result::Result<(), String> {
    check_value(
        || {
            let t = Tensor::<1>::from_floats([1.0, 2.0, 3.0], dev);
            scalar((t.clone() * t).sum())
        },
        14.0,
    )
}

/// Runs `f` and expects `want`; else the first line of the first panic (on any thread) or the
/// wrong value, cut to 200 characters.
fn check_value(f: impl FnOnce() -> f64, want: f64) -> std::result::Result<(), String> {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let hook = std::panic::take_hook();
    let record = Arc::clone(&seen);
    std::panic::set_hook(Box::new(move |info| {
        let text = panic_text(info.payload());
        if let Ok(mut first) = record.lock() {
            first.get_or_insert(text);
        }
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    let first_panic = seen.lock().ok().and_then(|mut s| s.take());
    let cause = match (outcome, first_panic) {
        (Ok(v), None) if v == want => return Ok(()),
        (Ok(v), None) => format!("a test kernel returned {v} instead of {want}"),
        (_, Some(text)) => text,
        (Err(_), None) => "panicked".to_owned(),
    };
    // A backend's message can be a page long (cudarc lists every library name it tried).
    let line = cause.lines().next().unwrap_or("");
    Err(match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the probe swaps the process-wide panic hook, which parallel tests would share.
    #[test]
    fn the_probe_passes_a_working_device_and_shortens_a_backend_failure() {
        assert_eq!(probe(&Device::flex()), Ok(()));
        // What burn's CUDA backend does without libcuda: its runtime thread panics with a
        // page-long message, and the caller then panics on a closed channel.
        let sent = format!(
            "Unable to load libcuda: tried {}\nsecond line",
            "x".repeat(500)
        );
        let err = check_value(
            move || {
                let worker = std::thread::spawn(move || -> f64 { panic!("{sent}") });
                worker.join().map_err(|_| "RecvError").unwrap()
            },
            14.0,
        )
        .unwrap_err();
        assert!(
            err.starts_with("Unable to load libcuda: tried xxx"),
            "{err}"
        );
        assert_eq!(
            err.chars().count(),
            201,
            "200 characters and an ellipsis: {err}"
        );
        assert!(!err.contains("RecvError") && !err.contains("second line"));
        assert_eq!(
            check_value(|| 13.0, 14.0),
            Err("a test kernel returned 13 instead of 14".to_owned())
        );
    }
}
