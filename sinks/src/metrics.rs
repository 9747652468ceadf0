//! Per-output delivery metrics, registered into the registry the binary passes in. The `sink`
//! label is the output's configured name, so its cardinality is bounded by the config.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
pub enum FailureClass {
    Retryable,
    Permanent,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub sink: String,
    pub class: FailureClass,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

#[derive(Clone)]
pub struct SinkMetrics {
    pub spooled: Family<SinkLabel, Counter>,
    pub sent: Family<SinkLabel, Counter>,
    pub failed: Family<FailureLabels, Counter>,
    pub retries: Family<SinkLabel, Counter>,
    pub dead_lettered: Family<SinkLabel, Counter>,
    pub spool_events: Family<SinkLabel, Gauge>,
    pub spool_bytes: Family<SinkLabel, Gauge>,
    pub spool_oldest_age: Family<SinkLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub request_duration: Family<SinkLabel, Histogram, fn() -> Histogram>,
    /// Alerts that could not be kept at all (a spool's disk failed). Must stay 0.
    pub dropped: Counter,
    /// Spool appends that failed (the alerts were held and retried, not dropped).
    pub spool_failures: Counter,
}

impl SinkMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            spooled: Family::default(),
            sent: Family::default(),
            failed: Family::default(),
            retries: Family::default(),
            dead_lettered: Family::default(),
            spool_events: Family::default(),
            spool_bytes: Family::default(),
            spool_oldest_age: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            dropped: Counter::default(),
            spool_failures: Counter::default(),
        };
        registry.register(
            "verity_sink_spooled",
            "Alerts appended to an output's durable spool",
            m.spooled.clone(),
        );
        registry.register("verity_sink_sent", "Alerts the destination accepted", m.sent.clone());
        registry.register(
            "verity_sink_failed",
            "Alerts in failed delivery attempts, by retryable or permanent failure",
            m.failed.clone(),
        );
        registry.register(
            "verity_sink_retries",
            "Delivery attempts repeated after a failure",
            m.retries.clone(),
        );
        registry.register(
            "verity_sink_dead_lettered",
            "Alerts written to an output's dead-letter file (permanent failure or retry budget spent)",
            m.dead_lettered.clone(),
        );
        registry.register(
            "verity_sink_spool_events",
            "Alerts spooled and not yet delivered",
            m.spool_events.clone(),
        );
        registry.register(
            "verity_sink_spool_bytes",
            "Bytes spooled and not yet delivered",
            m.spool_bytes.clone(),
        );
        registry.register(
            "verity_sink_spool_oldest_age_seconds",
            "Age of the oldest alert being delivered",
            m.spool_oldest_age.clone(),
        );
        registry.register(
            "verity_sink_request_duration_seconds",
            "Duration of delivery requests",
            m.request_duration.clone(),
        );
        registry.register(
            "verity_sink_spool_failures",
            "Spool appends that failed (a full or failing disk); the alerts are held and retried, not dropped",
            m.spool_failures.clone(),
        );
        registry.register(
            "verity_alerts_dropped",
            "Alerts that could be neither delivered nor kept; anything but 0 is a bug or a failed disk",
            m.dropped.clone(),
        );
        m
    }

    pub fn label(sink: &str) -> SinkLabel {
        SinkLabel { sink: sink.to_string() }
    }
}
