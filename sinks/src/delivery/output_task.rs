//! The delivery task of one output: batches from its spool, sends, retries with backoff,
//! dead-letters what cannot be delivered and acknowledges the spool in order.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use verity_model::alert::Alert;

use super::backoff::{Jitter, backoff};
use crate::config::{BatchConfig, RetryConfig};
use crate::metrics::{FailureClass, FailureLabels, SinkLabel, SinkMetrics};
use crate::{Retry, Sink};
use verity_spool::{Entry, Spool};

pub(super) struct Delivery {
    pub(super) name: String,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) spool: Arc<Spool>,
    pub(super) batch: BatchConfig,
    pub(super) retry: RetryConfig,
    pub(super) dead_letter: PathBuf,
    pub(super) metrics: SinkMetrics,
    pub(super) label: SinkLabel,
    pub(super) drain: verity_drain::Watcher,
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

impl Delivery {
    pub(super) fn update_depth(&self) {
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
        self.drain.is_draining()
    }

    pub(super) async fn run(self) {
        let this = Arc::new(self);
        let mut inflight = FuturesOrdered::new();
        let mut pending: VecDeque<Entry> = VecDeque::new();
        let mut pending_bytes = 0usize;
        let max_wait = Duration::from_millis(this.batch.max_wait_ms);
        let mut drain = this.drain.clone();
        loop {
            if this.stopping() {
                break;
            }
            // Top up the batch being built from the spool.
            if pending.len() < this.batch.max_events {
                match this
                    .spool
                    .read_blocking(this.batch.max_events - pending.len(), this.batch.max_bytes)
                    .await
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
                            if let Err(error) = this.spool.ack_blocking(seq).await {
                                tracing::error!(%error, "cannot record delivery in the spool; alerts may be sent again after a restart");
                            }
                        }
                        Some(Done::Kept) | None => {}
                    }
                    this.update_depth();
                }
                () = this.spool.wait_for_data(wait), if pending.len() < this.batch.max_events => {}
                () = tokio::time::sleep(wait), if pending.len() >= this.batch.max_events => {}
                () = drain.wait() => {}
            }
        }
        // Batches in flight finish their current attempt or give up at the stop signal.
        while let Some(done) = inflight.next().await {
            if let Done::Ack(seq) = done
                && let Err(error) = this.spool.ack_blocking(seq).await
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
        let mut drain = self.drain.clone();
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
                () = drain.wait() => return Done::Kept,
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
