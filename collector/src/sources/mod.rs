//! Where telemetry comes in. Each source decodes its transport and hands records to
//! [`crate::ingest::Ingest`], which is the same for all of them.
//!
//! - [`otlp`]: the OTLP endpoint, gRPC and HTTP.
//! - [`kafka`]: a consumer-group member reading what an OpenTelemetry Collector's Kafka
//!   exporter writes, and raw mesh-log lines.

pub mod kafka;
pub mod otlp;
