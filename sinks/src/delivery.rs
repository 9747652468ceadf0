//! The delivery side: [`SinkSet`] spools alerts per output and runs one delivery task per
//! output that batches from the spool, sends, retries with exponential backoff and full jitter
//! (never sooner than a `Retry-After`), dead-letters what cannot be delivered, and acknowledges
//! the spool in order.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use verity_model::alert::Alert;

use crate::config::{BatchConfig, OutputConfig, RetryConfig, Routing, SinksConfig};
use crate::metrics::{FailureClass, FailureLabels, SinkLabel, SinkMetrics};
use crate::{Retry, Sink};
use verity_spool::{Entry, Spool, SpoolError, SpoolLimits};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("output {sink}: {source}")]
    Spool {
        sink: String,
        #[source]
        source: SpoolError,
    },
    #[error("cannot encode an alert: {0}")]
    Encode(String),
}

/// Alerts some outputs could not spool, kept for a retry instead of being dropped.
#[derive(Debug)]
pub struct Held {
    /// Output index and the encoded alerts it still needs.
    parts: Vec<(usize, Vec<Vec<u8>>)>,
    pub error: SubmitError,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("output {sink}: {message}")]
    Output { sink: String, message: String },
    #[error("output {sink}: {source}")]
    Spool {
        sink: String,
        #[source]
        source: SpoolError,
    },
}

struct Output {
    name: String,
    routing: Routing,
    spool: Arc<Spool>,
}

/// Every enabled output with its spool and delivery task.
pub struct SinkSet {
    outputs: Vec<Output>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    metrics: SinkMetrics,
    health: Vec<(String, Arc<dyn Sink>)>,
}

/// What one output found when it was checked.
#[derive(Debug, Clone)]
pub struct HealthReport {
    pub sink: String,
    pub kind: &'static str,
    pub result: Result<String, String>,
}

impl SinkSet {
    /// Opens each enabled output's spool and starts its delivery task on the current runtime.
    /// `build` turns an output's config into a [`Sink`] (see [`crate::outputs::build`]).
    pub fn start(config: &SinksConfig, metrics: SinkMetrics) -> Result<Self, BuildError> {
        Self::start_with(config, metrics, crate::outputs::build)
    }

    pub fn start_with(
        config: &SinksConfig,
        metrics: SinkMetrics,
        build: impl Fn(&str, &OutputConfig) -> Result<Arc<dyn Sink>, String>,
    ) -> Result<Self, BuildError> {
        let (stop, stop_rx) = watch::channel(false);
        let mut outputs = Vec::new();
        let mut tasks = Vec::new();
        let mut health = Vec::new();
        for (name, cfg) in config.outputs.iter().filter(|(_, c)| c.enabled) {
            let sink = build(name, cfg).map_err(|message| BuildError::Output {
                sink: name.clone(),
                message,
            })?;
            let dir = config.spool_dir.join(name);
            let limits = SpoolLimits {
                max_bytes: cfg.spool.max_bytes,
                max_events: cfg.spool.max_events,
                sync: cfg.spool.fsync,
                ..SpoolLimits::default()
            };
            let (spool, recovery) = Spool::open(&dir, limits).map_err(|source| BuildError::Spool {
                sink: name.clone(),
                source,
            })?;
            if recovery.pending_events > 0 || recovery.truncated_bytes > 0 {
                tracing::info!(
                    sink = %name,
                    pending = recovery.pending_events,
                    truncated_bytes = recovery.truncated_bytes,
                    "resuming delivery of spooled alerts"
                );
            }
            let spool = Arc::new(spool);
            let label = SinkMetrics::label(name);
            // Create the series so that dashboards see zeros, not gaps.
            for fam in [
                &metrics.spooled,
                &metrics.sent,
                &metrics.retries,
                &metrics.dead_lettered,
            ] {
                let _ = fam.get_or_create(&label);
            }
            for class in [FailureClass::Retryable, FailureClass::Permanent] {
                let _ = metrics.failed.get_or_create(&FailureLabels {
                    sink: name.clone(),
                    class,
                });
            }
            let d = Delivery {
                name: name.clone(),
                sink: sink.clone(),
                spool: spool.clone(),
                batch: cfg.batch.clone(),
                retry: cfg.retry.clone(),
                dead_letter: dir.join("dead-letter.jsonl"),
                metrics: metrics.clone(),
                label,
                stop: stop_rx.clone(),
            };
            d.update_depth();
            let span = tracing::info_span!("sink", sink = %name, kind = sink.kind());
            tasks.push(tokio::spawn(d.run().instrument(span)));
            health.push((name.clone(), sink));
            outputs.push(Output {
                name: name.clone(),
                routing: cfg.routing.clone(),
                spool,
            });
        }
        Ok(Self {
            outputs,
            tasks: std::sync::Mutex::new(tasks),
            stop,
            metrics,
            health,
        })
    }

    /// Spools the alerts for every output that routes them, waiting while a spool is full.
    /// Blocking: call it from the pipeline's worker thread, not from async code. Alerts an
    /// output could not spool are dropped and counted; callers that can keep them use
    /// [`SinkSet::submit_or_hold`].
    pub fn submit(&self, alerts: &[Alert]) -> Result<(), SubmitError> {
        self.submit_or_hold(alerts).map_err(|held| self.drop_held(held))
    }

    /// Like [`SinkSet::submit`], but what an output could not spool (its disk failed or is
    /// full) is handed back, to be retried with [`SinkSet::retry_held`]: nothing is dropped.
    pub fn submit_or_hold(&self, alerts: &[Alert]) -> Result<(), Held> {
        if alerts.is_empty() {
            return Ok(());
        }
        let encoded: Vec<Vec<u8>> = match alerts.iter().map(serde_json::to_vec).collect::<Result<_, _>>() {
            Ok(e) => e,
            Err(e) => {
                // Nothing to hold: an alert that cannot be encoded cannot be kept either.
                self.metrics.dropped.inc_by(alerts.len() as u64);
                tracing::error!(error = %e, alerts = alerts.len(), "alerts cannot be encoded and are dropped");
                return Err(Held {
                    parts: Vec::new(),
                    error: SubmitError::Encode(e.to_string()),
                });
            }
        };
        let parts = self
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let payloads: Vec<Vec<u8>> = alerts
                    .iter()
                    .zip(&encoded)
                    .filter(|(a, _)| o.routing.matches(a))
                    .map(|(_, e)| e.clone())
                    .collect();
                (i, payloads)
            })
            .filter(|(_, p)| !p.is_empty())
            .collect();
        self.spool_parts(parts)
    }

    /// Tries again to spool what an earlier call held, only into the outputs that failed.
    pub fn retry_held(&self, held: Held) -> Result<(), Held> {
        self.spool_parts(held.parts)
    }

    /// Gives up on held alerts (a drain that cannot wait longer): counted as dropped.
    pub fn drop_held(&self, held: Held) -> SubmitError {
        let n: usize = held.parts.iter().map(|(_, p)| p.len()).sum();
        self.metrics.dropped.inc_by(n as u64);
        if n > 0 {
            tracing::error!(alerts = n, error = %held.error, "alerts could not be spooled and are dropped");
        }
        held.error
    }

    fn spool_parts(&self, parts: Vec<(usize, Vec<Vec<u8>>)>) -> Result<(), Held> {
        let mut failed = Vec::new();
        let mut first_error = None;
        for (i, payloads) in parts {
            let Some(o) = self.outputs.get(i) else { continue };
            let n = payloads.len() as u64;
            match o.spool.append(&payloads) {
                Ok(_) => {
                    self.metrics
                        .spooled
                        .get_or_create(&SinkMetrics::label(&o.name))
                        .inc_by(n);
                }
                Err(source) => {
                    self.metrics.spool_failures.inc();
                    tracing::error!(sink = %o.name, error = %source, alerts = n, "could not spool alerts; holding them");
                    if first_error.is_none() {
                        first_error = Some(SubmitError::Spool {
                            sink: o.name.clone(),
                            source,
                        });
                    }
                    failed.push((i, payloads));
                }
            }
        }
        match first_error {
            Some(error) => Err(Held { parts: failed, error }),
            None => Ok(()),
        }
    }

    /// How many alerts `held` keeps (summed over outputs).
    pub fn held_len(held: &Held) -> usize {
        held.parts.iter().map(|(_, p)| p.len()).sum()
    }

    /// True when every output has delivered (or dead-lettered) everything spooled.
    pub fn is_drained(&self) -> bool {
        self.outputs.iter().all(|o| o.spool.is_drained())
    }

    /// Delivers what is spooled until everything is out or `deadline` passes, then stops the
    /// delivery tasks. Returns the outputs that still hold alerts; those stay on disk and are
    /// delivered after the next start.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> Vec<(String, u64)> {
        while !self.is_drained() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.stop.send(true);
        for o in &self.outputs {
            o.spool.close();
        }
        let tasks = match self.tasks.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        self.outputs
            .iter()
            .filter(|o| !o.spool.is_drained())
            .map(|o| (o.name.clone(), o.spool.depth().events))
            .collect()
    }

    /// Runs every output's health check.
    pub async fn check_health(&self) -> Vec<HealthReport> {
        check_all(&self.health).await
    }

    pub fn names(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.name.clone()).collect()
    }
}

/// Builds each enabled output (no spool, no task) and runs its health check: for
/// `verity validate --check-sinks`.
pub async fn check_outputs(config: &SinksConfig) -> Vec<HealthReport> {
    let mut reports = Vec::new();
    let mut sinks = Vec::new();
    for (name, cfg) in config.outputs.iter().filter(|(_, c)| c.enabled) {
        match crate::outputs::build(name, cfg) {
            Ok(s) => sinks.push((name.clone(), s)),
            Err(e) => reports.push(HealthReport {
                sink: name.clone(),
                kind: cfg.kind.name(),
                result: Err(e),
            }),
        }
    }
    reports.extend(check_all(&sinks).await);
    reports
}

async fn check_all(sinks: &[(String, Arc<dyn Sink>)]) -> Vec<HealthReport> {
    let mut out = Vec::new();
    for (name, sink) in sinks {
        let result = match tokio::time::timeout(Duration::from_secs(15), sink.health()).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.message),
            Err(_) => Err("no answer within 15 s".to_string()),
        };
        out.push(HealthReport {
            sink: name.clone(),
            kind: sink.kind(),
            result,
        });
    }
    out
}

struct Delivery {
    name: String,
    sink: Arc<dyn Sink>,
    spool: Arc<Spool>,
    batch: BatchConfig,
    retry: RetryConfig,
    dead_letter: PathBuf,
    metrics: SinkMetrics,
    label: SinkLabel,
    stop: watch::Receiver<bool>,
}

/// How a batch ended.
enum Done {
    /// Delivered or dead-lettered: acknowledge up to this sequence number.
    Ack(u64),
    /// Shutting down before it could be delivered: it stays in the spool.
    Kept,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A small xorshift generator: jitter needs spread, not cryptographic quality.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Self(seed)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Full jitter: uniform in [0, cap].
    fn upto(&mut self, cap: Duration) -> Duration {
        let ms = cap.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { self.next() % (ms + 1) })
    }
}

/// Exponential backoff with full jitter, never sooner than the server asked.
pub fn backoff(
    retry: &RetryConfig,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: &mut impl FnMut(Duration) -> Duration,
) -> Duration {
    let exp = retry
        .initial()
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
    let cap = exp.min(retry.max());
    let d = jitter(cap).max(Duration::from_millis(1));
    match retry_after {
        Some(ra) => d.max(ra),
        None => d,
    }
}

impl Delivery {
    fn update_depth(&self) {
        let d = self.spool.depth();
        self.metrics
            .spool_events
            .get_or_create(&self.label)
            .set(d.events as i64);
        self.metrics.spool_bytes.get_or_create(&self.label).set(d.bytes as i64);
        let age = d
            .oldest_unix_ms
            .map_or(0.0, |ms| unix_ms().saturating_sub(ms) as f64 / 1000.0);
        self.metrics.spool_oldest_age.get_or_create(&self.label).set(age);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn run(self) {
        let this = Arc::new(self);
        let mut inflight = FuturesOrdered::new();
        let mut pending: VecDeque<Entry> = VecDeque::new();
        let mut pending_bytes = 0usize;
        let max_wait = Duration::from_millis(this.batch.max_wait_ms);
        let mut stop = this.stop.clone();
        loop {
            if this.stopping() {
                break;
            }
            // Top up the batch being built from the spool.
            if pending.len() < this.batch.max_events {
                match this
                    .spool
                    .read(this.batch.max_events - pending.len(), this.batch.max_bytes)
                {
                    Ok(entries) => {
                        for e in entries {
                            pending_bytes += e.payload.len();
                            pending.push_back(e);
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot read the spool; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let full = pending.len() >= this.batch.max_events || pending_bytes >= this.batch.max_bytes;
            let oldest_age = pending
                .front()
                .map(|e| Duration::from_millis(unix_ms().saturating_sub(e.unix_ms)));
            let due = oldest_age.is_some_and(|a| a >= max_wait);
            if (full || due) && inflight.len() < this.batch.concurrency {
                let entries: Vec<Entry> = pending.drain(..).collect();
                pending_bytes = 0;
                let t = this.clone();
                inflight.push_back(async move { t.deliver(entries).await });
                continue;
            }
            this.update_depth();
            let wait = match oldest_age {
                Some(a) if !full => max_wait.saturating_sub(a),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                done = inflight.next(), if !inflight.is_empty() => {
                    match done {
                        Some(Done::Ack(seq)) => {
                            if let Err(error) = this.spool.ack(seq) {
                                tracing::error!(%error, "cannot record delivery in the spool; alerts may be sent again after a restart");
                            }
                        }
                        Some(Done::Kept) | None => {}
                    }
                    this.update_depth();
                }
                () = this.spool.wait_for_data(wait), if pending.len() < this.batch.max_events => {}
                () = tokio::time::sleep(wait), if pending.len() >= this.batch.max_events => {}
                _ = stop.changed() => {}
            }
        }
        // Batches in flight finish their current attempt or give up at the stop signal.
        while let Some(done) = inflight.next().await {
            if let Done::Ack(seq) = done
                && let Err(error) = this.spool.ack(seq)
            {
                tracing::error!(%error, "cannot record delivery in the spool");
            }
        }
        this.update_depth();
    }

    async fn deliver(&self, entries: Vec<Entry>) -> Done {
        let Some(last_seq) = entries.last().map(|e| e.seq) else {
            return Done::Kept;
        };
        let mut alerts = Vec::with_capacity(entries.len());
        for e in &entries {
            match serde_json::from_slice::<Alert>(&e.payload) {
                Ok(a) => alerts.push(a),
                Err(err) => {
                    // Only a spool written by an incompatible version can get here.
                    let raw = String::from_utf8_lossy(&e.payload).into_owned();
                    self.dead_letter_raw(&raw, &format!("spooled record is not an alert: {err}"), 0);
                }
            }
        }
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut jitter = Jitter::new();
        let mut stop = self.stop.clone();
        while !alerts.is_empty() {
            let t0 = Instant::now();
            let result = self.sink.send(&alerts).await;
            self.metrics
                .request_duration
                .get_or_create(&self.label)
                .observe(t0.elapsed().as_secs_f64());
            let (retry_after, last_error) = match result {
                Ok(failures) if failures.is_empty() => {
                    self.metrics.sent.get_or_create(&self.label).inc_by(alerts.len() as u64);
                    break;
                }
                Ok(failures) => {
                    let mut retry_idx = Vec::new();
                    let mut after = None;
                    let mut last = String::new();
                    let mut failed = vec![false; alerts.len()];
                    for f in &failures {
                        let Some(slot) = failed.get_mut(f.index) else { continue };
                        *slot = true;
                        match f.error.retry {
                            Retry::Permanent => {
                                self.fail(FailureClass::Permanent, 1);
                                if let Some(a) = alerts.get(f.index) {
                                    self.dead_letter(a, &f.error.message, attempt + 1);
                                }
                            }
                            Retry::Retryable { after: a } => {
                                self.fail(FailureClass::Retryable, 1);
                                after = after.max(a);
                                last = f.error.message.clone();
                                retry_idx.push(f.index);
                            }
                        }
                    }
                    let ok = failed.iter().filter(|f| !**f).count() as u64;
                    self.metrics.sent.get_or_create(&self.label).inc_by(ok);
                    retry_idx.sort_unstable();
                    retry_idx.dedup();
                    let mut keep = Vec::with_capacity(retry_idx.len());
                    for (i, a) in alerts.into_iter().enumerate() {
                        if retry_idx.binary_search(&i).is_ok() {
                            keep.push(a);
                        }
                    }
                    alerts = keep;
                    if alerts.is_empty() {
                        break;
                    }
                    (after, last)
                }
                Err(e) => match e.retry {
                    Retry::Permanent => {
                        self.fail(FailureClass::Permanent, alerts.len() as u64);
                        tracing::error!(error = %e.message, alerts = alerts.len(), "permanent delivery failure; dead-lettering");
                        for a in &alerts {
                            self.dead_letter(a, &e.message, attempt + 1);
                        }
                        break;
                    }
                    Retry::Retryable { after } => {
                        self.fail(FailureClass::Retryable, alerts.len() as u64);
                        (after, e.message)
                    }
                },
            };
            if started.elapsed() >= self.retry.max_elapsed() {
                tracing::error!(error = %last_error, alerts = alerts.len(), "retry budget spent; dead-lettering");
                let reason = format!(
                    "retry budget of {}s spent; last error: {last_error}",
                    self.retry.max_elapsed_secs
                );
                for a in &alerts {
                    self.dead_letter(a, &reason, attempt + 1);
                }
                break;
            }
            let wait = backoff(&self.retry, attempt, retry_after, &mut |cap| jitter.upto(cap));
            tracing::warn!(error = %last_error, attempt = attempt + 1, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
            attempt += 1;
            self.metrics.retries.get_or_create(&self.label).inc();
            if self.stopping() {
                return Done::Kept;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return Done::Kept,
            }
        }
        Done::Ack(last_seq)
    }

    fn fail(&self, class: FailureClass, n: u64) {
        self.metrics
            .failed
            .get_or_create(&FailureLabels {
                sink: self.name.clone(),
                class,
            })
            .inc_by(n);
    }

    fn dead_letter(&self, alert: &Alert, error: &str, attempts: u32) {
        let value = serde_json::to_value(alert).unwrap_or(serde_json::Value::Null);
        self.write_dead_letter(value, error, attempts);
    }

    fn dead_letter_raw(&self, raw: &str, error: &str, attempts: u32) {
        self.write_dead_letter(serde_json::Value::String(raw.to_string()), error, attempts);
    }

    fn write_dead_letter(&self, alert: serde_json::Value, error: &str, attempts: u32) {
        let line = serde_json::json!({
            "time": verity_model::time::format_rfc3339_ns(unix_ms() as i64 * 1_000_000),
            "sink": self.name,
            "error": error,
            "attempts": attempts,
            "alert": alert,
        });
        self.metrics.dead_lettered.get_or_create(&self.label).inc();
        if let Err(e) = append_line(&self.dead_letter, &line) {
            // The alert is neither delivered nor kept.
            self.metrics.dropped.inc();
            tracing::error!(path = %self.dead_letter.display(), error = %e, "cannot write the dead-letter file; alert lost");
        }
    }
}

fn append_line(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let mut buf = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    f.write_all(&buf)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honors_retry_after() {
        let r = RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            max_elapsed_secs: 10,
        };
        let mut top = |cap: Duration| cap;
        assert_eq!(backoff(&r, 0, None, &mut top), Duration::from_millis(100));
        assert_eq!(backoff(&r, 2, None, &mut top), Duration::from_millis(400));
        assert_eq!(backoff(&r, 10, None, &mut top), Duration::from_millis(1000));
        assert_eq!(backoff(&r, 40, None, &mut top), Duration::from_millis(1000));
        assert_eq!(
            backoff(&r, 0, Some(Duration::from_secs(3)), &mut top),
            Duration::from_secs(3)
        );
        let mut j = Jitter::new();
        for _ in 0..100 {
            assert!(j.upto(Duration::from_millis(50)) <= Duration::from_millis(50));
        }
    }
}
