//! Shutdown in one shape for every task Verity runs.
//!
//! A [`Trigger`] owns a set of tasks. Each task holds a [`Watcher`] and, when the drain
//! starts, stops taking new work and finishes what it has. [`Trigger::drain`] starts the
//! drain, waits for every task until one deadline, then aborts what is still running (forces
//! it) and says which tasks those were. Dropping the trigger starts the drain too, so a task
//! never waits for a signal that can no longer come.
//!
//! Verity drains in phases, one trigger each: intake first (sources and the timers that act on
//! the outside world), then the pipeline and the outputs, and the admin server last, so that
//! readiness and metrics stay visible while the rest drains.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A future that resolves when the drain starts; `'static`, for servers' shutdown hooks.
pub type Signaled = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A new trigger and the first watcher of it.
pub fn channel() -> (Trigger, Watcher) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx, tasks: Vec::new() }, Watcher { rx })
}

/// Starts the drain and waits for the tasks it owns.
pub struct Trigger {
    tx: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<()>)>,
}

/// What a task holds to learn that the drain has started.
#[derive(Clone, Debug)]
pub struct Watcher {
    rx: watch::Receiver<bool>,
}

/// How a drain ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Tasks still running at the deadline, aborted.
    pub forced: Vec<String>,
    /// Tasks that panicked or were cancelled before they finished.
    pub failed: Vec<String>,
}

impl Drained {
    /// True when every task finished by itself within the deadline.
    pub fn is_clean(&self) -> bool {
        self.forced.is_empty() && self.failed.is_empty()
    }

    /// Adds what a later phase's drain found.
    pub fn merge(&mut self, later: Drained) {
        self.forced.extend(later.forced);
        self.failed.extend(later.failed);
    }
}

impl Trigger {
    /// Another watcher of this trigger.
    pub fn watcher(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
        }
    }

    /// Spawns `task` on the current runtime; [`Trigger::drain`] waits for it.
    /// `name` says which task it is in the log when it fails or has to be forced.
    pub fn spawn(&mut self, name: impl Into<String>, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name.into(), tokio::spawn(task)));
    }

    /// How many tasks this trigger waits for.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts the drain, waits for every task until `deadline`, then aborts the rest.
    ///
    /// A task that has already finished is collected even when the deadline has passed.
    pub async fn drain(self, deadline: Instant) -> Drained {
        let Trigger { tx, tasks } = self;
        // Receivers may all be gone (every task finished): that is not an error.
        tx.send_replace(true);
        let mut drained = Drained::default();
        for (name, mut handle) in tasks {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(task = %name, %error, "task failed while draining");
                    drained.failed.push(name);
                }
                Err(_) => {
                    handle.abort();
                    tracing::warn!(task = %name, "task still running at the drain deadline; aborted");
                    drained.forced.push(name);
                }
            }
        }
        drained
    }
}

impl Watcher {
    /// True once the drain has started (or the trigger is gone).
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Waits until the drain starts; at once if it has.
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which starts the drain as well.
        let _ = self.rx.wait_for(|draining| *draining).await;
    }

    /// [`Watcher::wait`] as an owned future, for APIs that take a shutdown future.
    pub fn signaled(mut self) -> Signaled {
        Box::pin(async move { self.wait().await })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn tasks_finish_their_work_after_the_signal() {
        let (mut trigger, watcher) = channel();
        let finished = Arc::new(AtomicBool::new(false));
        let (mut w, done) = (watcher.clone(), finished.clone());
        trigger.spawn("worker", async move {
            w.wait().await;
            // Work done after the signal still counts: this is the drain.
            tokio::time::sleep(Duration::from_millis(20)).await;
            done.store(true, Ordering::SeqCst);
        });
        assert!(!watcher.is_draining());
        let drained = trigger.drain(Instant::now() + Duration::from_secs(5)).await;
        assert!(drained.is_clean(), "{drained:?}");
        assert!(finished.load(Ordering::SeqCst));
        assert!(watcher.is_draining());
    }

    #[tokio::test]
    async fn tasks_past_the_deadline_are_aborted_and_named() {
        let (mut trigger, watcher) = channel();
        let mut w = watcher.clone();
        trigger.spawn("prompt", async move { w.wait().await });
        trigger.spawn("stuck", std::future::pending());
        let started = std::time::Instant::now();
        let drained = trigger.drain(Instant::now() + Duration::from_millis(100)).await;
        assert_eq!(drained.forced, vec!["stuck"]);
        assert!(drained.failed.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_finished_task_is_collected_after_the_deadline() {
        let (mut trigger, _watcher) = channel();
        trigger.spawn("quick", async {});
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let drained = trigger.drain(Instant::now() - Duration::from_secs(1)).await;
        assert!(drained.is_clean(), "{drained:?}");
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_as_failed() {
        let (mut trigger, _watcher) = channel();
        trigger.spawn("panics", async { panic!("boom") });
        let drained = trigger.drain(Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(drained.failed, vec!["panics"]);
    }

    #[tokio::test]
    async fn dropping_the_trigger_starts_the_drain() {
        let (trigger, watcher) = channel();
        let signaled = watcher.clone().signaled();
        drop(trigger);
        assert!(watcher.is_draining());
        tokio::time::timeout(Duration::from_secs(5), signaled)
            .await
            .expect("a watcher of a dropped trigger is signaled");
    }
}
