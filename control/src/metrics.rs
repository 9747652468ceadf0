//! Revocation metrics, registered into the registry the binary passes in.

use crate::Counters;

/// The revocation metrics.
#[derive(Clone)]
pub struct ControlMetrics {
    events: Counters,
    refusals: Counters,
    shared: Counters,
    pub(crate) apply_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Every audit action, so each series exists (at 0) from the start.
pub const ACTIONS: &[&str] = &[
    "recorded", "applied", "failed", "refused", "review", "expired", "lifted",
];

/// What became of a revocation another instance shared.
pub const SHARED_OUTCOMES: &[&str] = &["in_force", "ended", "unchanged", "refused"];

impl ControlMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            events: Counters::default(),
            refusals: Counters::default(),
            shared: Counters::default(),
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
        for o in SHARED_OUTCOMES {
            let _ = m.shared.get_or_create(&vec![("outcome", *o)]);
        }
        registry.register(
            "verity_revocation_shared",
            "Revocations other instances shared, by outcome: in_force (enforced here), ended, unchanged, refused (not an identity, protected, or too many)",
            m.shared.clone(),
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

    pub(crate) fn shared(&self, outcome: &'static str) {
        self.shared.get_or_create(&vec![("outcome", outcome)]).inc();
    }
}
