//! Alert delivery: every configured sink gets its own durable on-disk spool, a delivery task
//! that batches, retries with backoff and dead-letters, and routing filters.
//!
//! The pipeline calls [`SinkSet::submit`] with the alerts of a batch. It returns once every
//! alert is appended (and fsynced) to the spool of each sink that routes it: from then on an
//! alert survives a crash, and that is the moment upstream acknowledgements may be sent. When a
//! spool is full, `submit` waits: the pipeline fills and sources push back. Nothing is dropped
//! silently. When a spool's disk fails or is full, [`SinkSet::submit_or_hold`] hands the
//! alerts back to be retried (the rules stage keeps them and pushes back on its sources until
//! they are spooled); only a caller that gives up on them ([`SinkSet::drop_held`]) counts them
//! in `verity_alerts_dropped_total`.

#![forbid(unsafe_code)]

pub mod config;
pub mod delivery;
pub mod format;
mod http;
pub mod metrics;
pub mod outputs;
pub mod routing;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use verity_model::alert::Alert;

pub use config::{OutputConfig, SinksConfig};
pub use delivery::{Held, SinkSet, SubmitError};
pub use metrics::SinkMetrics;

/// A boxed future, so that [`Sink`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a failed delivery may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after backoff (at least `after` when the server said so with Retry-After).
    Retryable { after: Option<Duration> },
    /// Trying again cannot help (bad credentials, rejected data): dead-letter it.
    Permanent,
}

/// A delivery failure, with the classification the delivery loop acts on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub retry: Retry,
    pub message: String,
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retry: Retry::Retryable { after: None },
            message: message.into(),
        }
    }

    pub fn retry_after(message: impl Into<String>, after: Option<Duration>) -> Self {
        Self {
            retry: Retry::Retryable { after },
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retry: Retry::Permanent,
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.retry, Retry::Retryable { .. })
    }
}

/// The failure of one alert in an otherwise accepted batch (an Elasticsearch bulk item).
#[derive(Debug, Clone)]
pub struct ItemFailure {
    /// Index into the batch that was sent.
    pub index: usize,
    pub error: SinkError,
}

/// The result of sending one batch.
pub type SendResult = Result<Vec<ItemFailure>, SinkError>;

/// One destination for alerts. Implementations encode and send a batch; batching, the spool,
/// retries, routing and dead letters are the delivery loop's job.
pub trait Sink: Send + Sync + 'static {
    /// The sink's type, for logs (`splunk_hec`, `syslog`, …).
    fn kind(&self) -> &'static str;

    /// Sends a batch. `Ok` with item failures means the rest of the batch was accepted.
    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, SendResult>;

    /// Checks that the destination is reachable and accepts our credentials, without sending
    /// an alert. Returns a one-line description of what was checked.
    fn health<'a>(&'a self) -> BoxFuture<'a, Result<String, SinkError>>;
}
