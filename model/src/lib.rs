//! The data model every Verity stage shares.
//!
//! Every source (OTLP logs, OTLP metrics, Kafka, files) normalizes into one of two Arrow
//! schemas defined here, so the rules engine, the archive and the sinks read one shape no
//! matter where telemetry came from:
//!
//! - [`event`]: one row per access (an HTTP request or a TCP connection) as seen by one proxy.
//!   The column-by-column reference is `docs/schema.md`; [`event::schema`] is the source of truth.
//! - [`metric`]: one row per metric data point, with the Istio standard labels as columns.
//!
//! Normalizers fill an [`event::AccessEvent`] (borrowing from the input line where they can)
//! and append it to an [`event::EventBatchBuilder`], which produces `RecordBatch`es.

#![forbid(unsafe_code)]

pub mod alert;
pub mod config_error;
pub mod error_chain;
pub mod event;
pub mod glob;
pub mod json;
pub mod metric;
mod null_runs;
pub mod scalar_map;
pub mod text;
pub mod time;
pub mod tls;

pub use alert::{Alert, AlertStatus, Severity};
pub use event::{AccessEvent, Decision, Direction, EventBatchBuilder, InputFormat, Reporter, SenderBinding};
pub use metric::{MetricBatchBuilder, MetricKind, MetricSample};
