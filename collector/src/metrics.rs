//! Verity's own Prometheus metrics. One [`Metrics`] is built against a registry passed in by
//! the app and shared by reference; every label value comes from a fixed enum.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels1 = [(&'static str, &'static str); 1];
pub type Labels2 = [(&'static str, &'static str); 2];
pub type Labels3 = [(&'static str, &'static str); 3];

/// Counters and gauges of the collector and pipeline.
#[derive(Clone)]
pub struct Metrics {
    /// Records received, by `source` and `signal` (logs, metrics).
    pub records_received: Family<Labels2, Counter>,
    /// Records normalized, by `source` and input `format`.
    pub records_accepted: Family<Labels2, Counter>,
    /// Records rejected, by `source` and `reason`.
    pub records_rejected: Family<Labels2, Counter>,
    /// OTLP export requests by `transport`, `signal` and `outcome`.
    pub otlp_requests: Family<Labels3, Counter>,
    /// Bytes OTLP requests in flight have reserved of `otlp.max_in_flight_bytes`.
    pub otlp_in_flight: Gauge,
    /// Items waiting in each bounded queue (`intake`, `pipeline`).
    pub queue_depth: Family<Labels1, Gauge>,
    /// Rows per batch handed to the pipeline stages.
    pub batch_rows: Histogram,
    /// Rows processed by the pipeline stages, by `signal`.
    pub pipeline_rows: Family<Labels1, Counter>,
    /// Seconds from a batch's oldest rows entering the pipeline to every stage having
    /// processed the batch (its alerts in the outputs' spools), by `signal`.
    pub pipeline_latency: Family<Labels1, Histogram>,
    /// Records written to the dead-letter file.
    pub dead_letter_records: Counter,
    /// Failures writing the dead-letter file (the record is then only in the logs).
    pub dead_letter_errors: Counter,
    /// Bytes written to the dead-letter file.
    pub dead_letter_bytes: Counter,
    /// Dead-letter files rotated out.
    pub dead_letter_rotations: Counter,
    /// Rejected records counted but not written (past `dead_letter.max_entries_per_request`).
    pub dead_letter_omitted: Counter,
    /// Failures writing the JSONL archive.
    pub archive_errors: Counter,
    /// 1 while the collector accepts input.
    pub ready: Gauge,
    /// Senders refused (or identity claims ignored), by `listener` and `reason`.
    pub rejected_senders: Family<Labels2, Counter>,
    /// Reloads of a listener's TLS files, by `listener` and `outcome` (reloaded, error).
    pub tls_reloads: Family<Labels2, Counter>,
    /// OTLP requests recognised as resends of one already evaluated, by `outcome`
    /// (`acknowledged`: answered without evaluating again; `retry_later`: still settling).
    pub duplicate_requests: Family<Labels1, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            records_received: Family::default(),
            records_accepted: Family::default(),
            records_rejected: Family::default(),
            otlp_requests: Family::default(),
            otlp_in_flight: Gauge::default(),
            queue_depth: Family::default(),
            batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            pipeline_rows: Family::default(),
            pipeline_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            dead_letter_records: Counter::default(),
            dead_letter_errors: Counter::default(),
            dead_letter_bytes: Counter::default(),
            dead_letter_rotations: Counter::default(),
            dead_letter_omitted: Counter::default(),
            archive_errors: Counter::default(),
            ready: Gauge::default(),
            rejected_senders: Family::default(),
            tls_reloads: Family::default(),
            duplicate_requests: Family::default(),
        };
        registry.register(
            "verity_records_received",
            "Telemetry records received, by source and signal",
            m.records_received.clone(),
        );
        registry.register(
            "verity_records_accepted",
            "Records normalized into events, by source and input format",
            m.records_accepted.clone(),
        );
        registry.register(
            "verity_records_rejected",
            "Records that could not be normalized, by source and reason",
            m.records_rejected.clone(),
        );
        registry.register(
            "verity_otlp_requests",
            "OTLP export requests, by transport, signal and outcome",
            m.otlp_requests.clone(),
        );
        registry.register_with_unit(
            "verity_otlp_in_flight",
            "Bytes OTLP requests in flight have reserved of otlp.max_in_flight_bytes",
            prometheus_client::registry::Unit::Bytes,
            m.otlp_in_flight.clone(),
        );
        registry.register(
            "verity_queue_depth",
            "Items waiting in a bounded pipeline queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "verity_pipeline_batch_rows",
            "Rows per batch handed to the pipeline stages",
            m.batch_rows.clone(),
        );
        registry.register(
            "verity_pipeline_rows",
            "Rows processed by the pipeline stages, by signal",
            m.pipeline_rows.clone(),
        );
        registry.register_with_unit(
            "verity_pipeline_latency",
            "Time from a batch's oldest rows entering the pipeline to every stage having processed it (alerts spooled), by signal",
            prometheus_client::registry::Unit::Seconds,
            m.pipeline_latency.clone(),
        );
        registry.register(
            "verity_dead_letter_records",
            "Records written to the dead-letter file",
            m.dead_letter_records.clone(),
        );
        registry.register(
            "verity_dead_letter_write_errors",
            "Failures writing the dead-letter file",
            m.dead_letter_errors.clone(),
        );
        registry.register(
            "verity_dead_letter_bytes",
            "Bytes written to the dead-letter file",
            m.dead_letter_bytes.clone(),
        );
        registry.register(
            "verity_dead_letter_rotations",
            "Dead-letter files rotated out (dead_letter.max_file_bytes)",
            m.dead_letter_rotations.clone(),
        );
        registry.register(
            "verity_dead_letter_omitted_records",
            "Rejected records counted but not written, past dead_letter.max_entries_per_request",
            m.dead_letter_omitted.clone(),
        );
        registry.register(
            "verity_archive_write_errors",
            "Failures writing the event archive",
            m.archive_errors.clone(),
        );
        registry.register("verity_ready", "1 while Verity accepts input", m.ready.clone());
        for outcome in ["acknowledged", "retry_later"] {
            let _ = m.duplicate_requests.get_or_create(&[("outcome", outcome)]);
        }
        registry.register(
            "verity_intake_duplicate_requests",
            "OTLP requests recognised as resends of one already evaluated: acknowledged without evaluating again, or told to retry later",
            m.duplicate_requests.clone(),
        );
        registry.register(
            "verity_intake_rejected_senders",
            "Senders refused, or identity claims ignored, by listener and reason",
            m.rejected_senders.clone(),
        );
        registry.register(
            "verity_tls_reloads",
            "Reloads of a listener's TLS certificate files, by listener and outcome",
            m.tls_reloads.clone(),
        );
        m
    }

    /// A throwaway registry, for tests and one-shot commands.
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }
}

/// Buckets for the pipeline's latency: 1 ms to about 33 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}
