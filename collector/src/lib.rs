//! The Verity collector: telemetry in, normalized Arrow batches through the pipeline's stages.
//!
//! Follow one record:
//! - `sources/otlp/grpc.rs` or `sources/otlp/http.rs` (or `sources/kafka/`) decode a request;
//! - `ingest/mod.rs` stamps its sender, normalizes each record (`normalize/`), dead-letters
//!   what it rejects (`dead_letter.rs`) and hands a batch to the pipeline;
//! - `pipeline/mod.rs` coalesces batches and runs the stages: `pipeline/archive.rs`,
//!   `pipeline/rules.rs` (the rules engine; its alerts go to the sinks' spools) and
//!   `pipeline/posture.rs`.
//!
//! `app.rs` wires it all together and owns the drain sequence; `main.rs` is the `verity`
//! command line.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod bounded_lines;
pub mod config;
pub mod dead_letter;
pub mod demo;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod normalize;
pub mod pipeline;
pub mod redaction;
pub mod rules_cli;
pub mod sources;
pub mod telemetry;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Registers `verity_build_info{version}` (always 1).
pub fn build_info(registry: &mut Registry) {
    let info: Family<[(&'static str, &'static str); 1], Gauge> = Family::default();
    info.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
    registry.register("verity_build_info", "Verity version (always 1)", info);
}
