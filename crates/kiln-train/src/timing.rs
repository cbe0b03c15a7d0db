//! [`StepClock`]: an algorithm that times every optimiser step from `BatchStart` to `BatchEnd`,
//! for benchmarks and for measuring what other algorithms add to a step. Put it first in the
//! algorithm list so that its interval encloses everything the others do.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use crate::trainer::{Algorithm, Context, Event};

/// Times each step (seconds, wall clock). Keep a [`handle`](Self::handle) to read the times
/// after the clock is boxed into the trainer's algorithm list.
///
/// ```
/// use kiln_train::timing::StepClock;
///
/// let clock = StepClock::new();
/// let times = clock.handle();
/// // trainer.fit(model, &mut task, &mut [Box::new(clock), …], &device)?;
/// assert!(times.borrow().is_empty());
/// ```
#[derive(Debug, Default)]
pub struct StepClock {
    started: Option<Instant>,
    times: Rc<RefCell<Vec<f64>>>,
}

impl StepClock {
    /// A clock with no step timed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The step times recorded so far (shared with the clock).
    pub fn handle(&self) -> Rc<RefCell<Vec<f64>>> {
        self.times.clone()
    }
}

impl<M> Algorithm<M> for StepClock {
    fn name(&self) -> &str {
        "clock"
    }

    fn on_event(&mut self, e: Event, _: &mut Context<'_, M>) -> Result<(), String> {
        match e {
            Event::BatchStart => self.started = Some(Instant::now()),
            Event::BatchEnd => {
                if let Some(t) = self.started.take() {
                    self.times.borrow_mut().push(t.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
        Ok(())
    }
}
