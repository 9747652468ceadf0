//! The Verity collector: sources (OTLP gRPC/HTTP), normalization of mesh telemetry into the
//! canonical Arrow schemas, the bounded pipeline, the admin endpoint and the `verity` CLI.
//!
//! Follow one record: `otlp/grpc.rs` or `otlp/http.rs` decode a request, `otlp/mod.rs`
//! normalizes each record (`normalize/`), dead-letters rejects (`dead_letter.rs`) and hands a
//! batch to `pipeline.rs`, which coalesces batches and runs the stages (`archive.rs`, `rules_stage.rs`).
//! `app.rs` wires it all together and owns the drain sequence.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod archive;
pub mod bounded_lines;
pub mod config;
pub mod dead_letter;
pub mod demo;
pub mod kafka;
pub mod listener;
pub mod metrics;
pub mod normalize;
pub mod otlp;
pub mod pipeline;
pub mod posture;
pub mod redaction;
pub mod rules_cli;
pub mod rules_stage;
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
