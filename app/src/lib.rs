//! The `verity` program: its configuration (defaults < file < `VERITY__SECTION__KEY`), the
//! wiring that builds every stage from it and drains them on shutdown, the admin API, Verity's
//! own telemetry, and the command-line tools (`rules check|test`, `replay`, `revocations`,
//! `demo`). The stages themselves live in their own crates and know nothing of the command line.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod log_files;
pub mod policy_cli;
pub mod policy_stages;
pub mod policy_staging;
pub mod redaction;
pub mod replay;
pub mod rules_cli;
pub mod shared_revocations;
pub mod telemetry;
pub mod wiring;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Registers `verity_build_info{version}` (always 1).
pub fn build_info(registry: &mut Registry) {
    let info: Family<[(&'static str, &'static str); 1], Gauge> = Family::default();
    info.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
    registry.register("verity_build_info", "Verity version (always 1)", info);
}
