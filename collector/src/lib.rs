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
//! The `verity` crate (`app/`) builds these from its configuration, wires them together and
//! owns the drain sequence.

#![forbid(unsafe_code)]

pub mod bounded_lines;
pub mod dead_letter;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod normalize;
pub mod pipeline;
pub mod sources;
