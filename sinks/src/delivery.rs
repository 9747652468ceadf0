//! The delivery side: [`SinkSet`] spools alerts per output and runs one delivery task per
//! output that batches from the spool, sends, retries with exponential backoff and full jitter
//! (never sooner than a `Retry-After`), dead-letters what cannot be delivered, and acknowledges
//! the spool in order.
//!
//! This file holds [`SinkSet`] (start, submit, hold, drain); the delivery task of one output is
//! in `output_task.rs`, the backoff in `backoff.rs` and the health checks in `health.rs`.

mod backoff;
mod health;
mod output_task;

use std::sync::Arc;

use tracing::Instrument;
use verity_model::alert::Alert;

pub use self::backoff::backoff;
use self::health::check_all;
pub use self::health::{HealthError, HealthReport, check_outputs};
use self::output_task::Delivery;
use crate::Sink;
use crate::config::{OutputConfig, Routing, SinksConfig};
use crate::metrics::{FailureClass, FailureLabels, SinkMetrics};
use crate::outputs;
use verity_spool::{Spool, SpoolError, SpoolLimits};

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
    #[error("output {sink}: {source}")]
    Output {
        sink: String,
        #[source]
        source: outputs::BuildError,
    },
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
    /// The delivery tasks; taken by [`SinkSet::drain`].
    delivery: std::sync::Mutex<Option<verity_drain::Trigger>>,
    metrics: SinkMetrics,
    health: Vec<(String, Arc<dyn Sink>)>,
}

impl SinkSet {
    /// Opens each enabled output's spool and starts its delivery task on the current runtime.
    /// `build` turns an output's config into a [`Sink`] (see [`crate::outputs::build`]).
    pub fn start(config: &SinksConfig, metrics: SinkMetrics) -> Result<Self, BuildError> {
        Self::start_with(config, metrics, outputs::build)
    }

    pub fn start_with(
        config: &SinksConfig,
        metrics: SinkMetrics,
        build: impl Fn(&str, &OutputConfig) -> Result<Arc<dyn Sink>, outputs::BuildError>,
    ) -> Result<Self, BuildError> {
        let (mut delivery, drain) = verity_drain::channel();
        let mut outputs = Vec::new();
        let mut health = Vec::new();
        for (name, cfg) in config.outputs.iter().filter(|(_, c)| c.enabled) {
            let sink = build(name, cfg).map_err(|source| BuildError::Output {
                sink: name.clone(),
                source,
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
                drain: drain.clone(),
            };
            d.update_depth();
            let span = tracing::info_span!("sink", sink = %name, kind = sink.kind());
            delivery.spawn(format!("output {name}"), d.run().instrument(span));
            health.push((name.clone(), sink));
            outputs.push(Output {
                name: name.clone(),
                routing: cfg.routing.clone(),
                spool,
            });
        }
        Ok(Self {
            outputs,
            delivery: std::sync::Mutex::new(Some(delivery)),
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
    /// delivery tasks (a batch still being sent at the deadline is aborted and stays spooled).
    /// Returns the outputs that still hold alerts; those stay on disk and are delivered after
    /// the next start.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> Vec<(String, u64)> {
        let delivered = futures::future::join_all(self.outputs.iter().map(|o| o.spool.wait_drained()));
        let _ = tokio::time::timeout_at(deadline, delivered).await;
        for o in &self.outputs {
            o.spool.close();
        }
        let delivery = match self.delivery.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(delivery) = delivery {
            delivery.drain(deadline).await;
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
