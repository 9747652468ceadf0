//! The outputs: one module per destination, each a [`Sink`] built from its config.

mod elastic;
pub mod file;
mod hec;
mod kafka;
mod ocsf;
mod sentinel;
mod syslog;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use crate::Sink;
use crate::config::{OutputConfig, OutputKind};

/// Builds an output's sink: resolves secrets, reads CA files, creates clients. No connection
/// is made here; the first delivery or the health check does that.
pub fn build(name: &str, cfg: &OutputConfig) -> Result<Arc<dyn Sink>, String> {
    let _ = name;
    Ok(match &cfg.kind {
        OutputKind::Stdout(_) => Arc::new(file::JsonLines::stdout()),
        OutputKind::File(c) => Arc::new(file::JsonLines::file(&c.path).map_err(|e| e.to_string())?),
        OutputKind::SplunkHec(c) => Arc::new(hec::Hec::new(c)?),
        OutputKind::Elasticsearch(c) => Arc::new(elastic::Elastic::new(c)?),
        OutputKind::Syslog(c) => Arc::new(syslog::Syslog::new(c)?),
        OutputKind::Kafka(c) => Arc::new(kafka::Kafka::new(c)?),
        OutputKind::Webhook(c) => Arc::new(webhook::Webhook::new(c)?),
        OutputKind::Ocsf(c) => Arc::new(ocsf::Ocsf::new(c)?),
        OutputKind::Sentinel(c) => Arc::new(sentinel::Sentinel::new(c)?),
    })
}

fn timeout(secs: u64) -> Duration {
    Duration::from_secs(secs.clamp(1, 600))
}

/// The current time as RFC 3339 with milliseconds, for wire formats that want send time.
fn now_rfc3339() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    verity_model::time::format_rfc3339_ns(ns - ns % 1_000_000)
}
