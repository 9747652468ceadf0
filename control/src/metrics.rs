//! Revocation metrics, registered into the registry the binary passes in.

use crate::Counters;

/// The revocation metrics.
#[derive(Clone)]
pub struct ControlMetrics {
    events: Counters,
    refusals: Counters,
    pub(crate) apply_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Every audit action, so each series exists (at 0) from the start.
pub const ACTIONS: &[&str] = &[
    "recorded", "applied", "failed", "refused", "review", "expired", "lifted",
];

impl ControlMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            events: Counters::default(),
            refusals: Counters::default(),
            apply_seconds: prometheus_client::metrics::histogram::Histogram::new([
                0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0,
            ]),
        };
        for a in ACTIONS {
            let _ = m.events.get_or_create(&vec![("action", *a)]);
        }
        for r in crate::guard::Refusal::REASONS {
            let _ = m.refusals.get_or_create(&vec![("reason", *r)]);
        }
        registry.register(
            "verity_revocation_refusals",
            "Revocations not made, by reason: not_an_identity, protected, intermediary, severity, cap, namespace_cap, evidence",
            m.refusals.clone(),
        );
        registry.register(
            "verity_revocation_events",
            "Revocation actions: recorded, applied, failed, refused, review (an intermediary: a person decides), expired, lifted",
            m.events.clone(),
        );
        registry.register(
            "verity_revocation_apply_seconds",
            "Time from a revocation's decision until every responder has applied it",
            m.apply_seconds.clone(),
        );
        m
    }

    pub(crate) fn action(&self, action: &str) {
        if let Some(a) = ACTIONS.iter().find(|a| **a == action) {
            self.events.get_or_create(&vec![("action", *a)]).inc();
        }
    }

    pub(crate) fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&vec![("reason", reason)]).inc();
    }
}
