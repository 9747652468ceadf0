//! The alert bus: the one way alerts reach the sinks. Every producer publishes here: the
//! rules stage (detections, assertion transitions, and the revocation audit events its alerts
//! cause), the revocation reconciler and the Istio responder (expiry, verification, retries),
//! and the admin API (operator revocations). Each alert is counted once, in
//! `verity_alerts_total{rule, severity, status}`, when it is first published; a retry of
//! alerts a spool could not take is not counted again.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use verity_model::alert::Alert;
use verity_sinks::{Held, SinkSet, SubmitError};

/// Label values are the rule id (bounded by the loaded rules and the fixed audit ids), and
/// the severity and status enums.
type AlertLabels = [(&'static str, String); 3];

pub struct AlertBus {
    sinks: Arc<SinkSet>,
    published: Family<AlertLabels, Counter>,
}

impl AlertBus {
    pub fn new(sinks: Arc<SinkSet>, registry: &mut Registry) -> Self {
        let published = Family::<AlertLabels, Counter>::default();
        registry.register(
            "verity_alerts",
            "Alerts emitted, by rule, severity and status",
            published.clone(),
        );
        Self { sinks, published }
    }

    /// The sinks behind the bus, for draining and health.
    pub fn sinks(&self) -> &Arc<SinkSet> {
        &self.sinks
    }

    /// Publishes alerts and waits until each is in the spool of every sink that routes it
    /// (blocking: call it from a blocking thread). Alerts a failing spool cannot take are
    /// dropped and counted by the sinks; see [`AlertBus::publish_or_hold`] to keep them.
    pub fn publish(&self, alerts: &[Alert]) -> Result<(), SubmitError> {
        self.count(alerts);
        self.sinks.submit(alerts)
    }

    /// Like [`AlertBus::publish`], but alerts a spool cannot take are handed back, to be
    /// retried with [`AlertBus::retry_held`].
    pub fn publish_or_hold(&self, alerts: &[Alert]) -> Result<(), Held> {
        self.count(alerts);
        self.sinks.submit_or_hold(alerts)
    }

    /// Retries alerts handed back earlier; they were counted when first published.
    pub fn retry_held(&self, held: Held) -> Result<(), Held> {
        self.sinks.retry_held(held)
    }

    /// Gives up on held alerts (at shutdown); the sinks count them as dropped.
    pub fn drop_held(&self, held: Held) -> SubmitError {
        self.sinks.drop_held(held)
    }

    fn count(&self, alerts: &[Alert]) {
        for a in alerts {
            self.published
                .get_or_create(&[
                    ("rule", a.rule_id.clone()),
                    ("severity", a.severity.as_str().to_string()),
                    ("status", a.status.as_str().to_string()),
                ])
                .inc();
        }
    }
}
