//! Progress of long commands: a bar with rate and ETA on a terminal, a line every 10% otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress display that may be updated from several threads.
pub(crate) struct Bar {
    bar: Option<ProgressBar>,
    total: u64,
    what: &'static str,
    label: String,
    last_decile: AtomicU64,
}

impl Bar {
    /// `total` units of `what` (e.g. "starts"), introduced by `label`.
    pub(crate) fn new(total: u64, what: &'static str, label: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{spinner}} {label} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {what} · ETA {{eta}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            total,
            what,
            label: label.to_owned(),
            last_decile: AtomicU64::new(0),
        }
    }

    /// `done` units are finished.
    pub(crate) fn set(&self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                let decile = done * 10 / self.total.max(1);
                if self.last_decile.fetch_max(decile, Ordering::Relaxed) < decile {
                    eprintln!("{}: {done}/{} {}", self.label, self.total, self.what);
                }
            }
        }
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
