//! Where telemetry comes in. Each source decodes its transport and hands records to
//! [`crate::ingest::Ingest`], which is the same for all of them.
//!
//! - [`otlp`]: the OTLP endpoint, gRPC and HTTP.
//! - [`kafka`]: a consumer-group member reading what an OpenTelemetry Collector's Kafka
//!   exporter writes, and raw mesh-log lines.
//!
//! Each is a [`Source`]: the wiring starts and stops them all the same way.

pub mod kafka;
pub mod otlp;

use std::future::Future;
use std::pin::Pin;

use verity_drain::Watcher;

/// A boxed future, so that [`Source`] stays object-safe.
pub type SourceFuture = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>>;

/// Why a source stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{source_name} server failed")]
    Serve {
        source_name: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Kafka source failed")]
    Kafka(#[from] kafka::KafkaError),
}

/// One way telemetry comes in. The wiring starts every source the same way: each runs until
/// the drain starts (`drain`), then stops taking new work, finishes what it accepted
/// (answering or acknowledging it once the pipeline is done with it) and returns.
pub trait Source: Send + 'static {
    /// For logs: `otlp_grpc`, `otlp_http`, `kafka`.
    fn name(&self) -> &'static str;

    fn run(self: Box<Self>, drain: Watcher) -> SourceFuture;
}
