//! The shadow-mode stage: candidate AuthorizationPolicies judged on every event batch
//! ([`verity_policy::shadow`]). Each candidate's state is a gauge, each request's outcome for
//! it a counter, and each change of state an alert on the bus.
//!
//! Label values are the candidates' `namespace/name` (from configuration, not traffic) and the
//! state and outcome enums.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use verity_policy::shadow::{ShadowAssertions, ShadowOutcome, ShadowState};
use verity_sinks::Held;

use crate::pipeline::alerts::AlertBus;
use crate::pipeline::{Batch, Stage, StageError};

type Labels = [(&'static str, String); 2];

#[derive(Clone, Default)]
pub struct ShadowMetrics {
    state: Family<Labels, Gauge>,
    requests: Family<Labels, Counter>,
    holding_since: Family<[(&'static str, String); 1], Gauge>,
}

impl ShadowMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "verity_policy_shadow_state",
            "Candidate policies' shadow assertions: 1 for each candidate's current state (holding, violated, unknown)",
            m.state.clone(),
        );
        registry.register(
            "verity_policy_shadow_requests",
            "Legitimate requests a candidate applies to, by what it would do (allowed, would_deny, unknown)",
            m.requests.clone(),
        );
        registry.register(
            "verity_policy_shadow_holding_since_seconds",
            "Event time (Unix seconds) a holding candidate has held since; 0 when not holding",
            m.holding_since.clone(),
        );
        m
    }
}

pub struct PolicyShadowStage {
    shadow: ShadowAssertions,
    alerts: Arc<AlertBus>,
    metrics: ShadowMetrics,
    held: Option<Held>,
    /// Alerts not yet published because earlier ones are held.
    pending: Vec<verity_model::Alert>,
}

/// Alerts waiting behind held ones, at most.
const MAX_PENDING: usize = 10_000;

impl PolicyShadowStage {
    pub fn new(shadow: ShadowAssertions, alerts: Arc<AlertBus>, metrics: ShadowMetrics) -> Self {
        let stage = Self {
            shadow,
            alerts,
            metrics,
            held: None,
            pending: Vec::new(),
        };
        stage.export_states();
        stage
    }

    fn export_states(&self) {
        for c in self.shadow.candidates() {
            for state in ShadowState::ALL {
                self.metrics
                    .state
                    .get_or_create(&[("policy", c.policy.clone()), ("state", state.as_str().to_string())])
                    .set(i64::from(c.state == state));
            }
            let since = c.holding_since_ns.map_or(0, |ns| ns / 1_000_000_000);
            self.metrics
                .holding_since
                .get_or_create(&[("policy", c.policy.clone())])
                .set(since);
        }
    }

    /// Publishes alerts. While a spool cannot take earlier ones, new ones wait behind them
    /// (in order, up to [`MAX_PENDING`]; past that the oldest are given up, logged).
    fn publish(&mut self, alerts: Vec<verity_model::Alert>) {
        self.pending.extend(alerts);
        if self.pending.len() > MAX_PENDING {
            let excess = self.pending.len() - MAX_PENDING;
            self.pending.drain(..excess);
            tracing::error!(
                dropped = excess,
                "shadow-policy alerts given up: a spool has refused them for too long"
            );
        }
        if let Some(held) = self.held.take()
            && let Err(still) = self.alerts.retry_held(held)
        {
            self.held = Some(still);
            return;
        }
        if self.pending.is_empty() {
            return;
        }
        let alerts = std::mem::take(&mut self.pending);
        if let Err(held) = self.alerts.publish_or_hold(&alerts) {
            tracing::warn!(error = %held.error, "a spool cannot take shadow-policy alerts yet; retried with the next batch");
            self.held = Some(held);
        }
    }
}

impl Stage for PolicyShadowStage {
    fn name(&self) -> &'static str {
        "policy_shadow"
    }

    fn process(&mut self, batch: &Batch) -> Result<(), StageError> {
        let Batch::Events(events) = batch else {
            return Ok(());
        };
        let policies: Vec<String> = self.shadow.candidates().iter().map(|c| c.policy.clone()).collect();
        let requests = &self.metrics.requests;
        let alerts = self.shadow.process(events, |i, outcome: ShadowOutcome| {
            if let Some(p) = policies.get(i) {
                requests
                    .get_or_create(&[("policy", p.clone()), ("outcome", outcome.as_str().to_string())])
                    .inc();
            }
        });
        self.export_states();
        self.publish(alerts);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        self.publish(Vec::new());
        let pending = self.pending.len();
        if let Some(held) = self.held.take() {
            let error = self.alerts.drop_held(held);
            return Err(StageError::Other {
                stage: "policy_shadow",
                message: format!("shadow-policy alerts not spooled ({pending} more waiting): {error}"),
            });
        }
        Ok(())
    }
}
