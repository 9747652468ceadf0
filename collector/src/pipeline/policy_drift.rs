//! The live drift stage: the AuthorizationPolicies in force evaluated on every event batch,
//! rule by rule ([`verity_policy::drift`]), so a dashboard shows which rules traffic uses,
//! which never match, and how many requests reach destinations no ALLOW policy protects.
//!
//! Label values are policy ids and rule indexes from the configured files (not from traffic)
//! and the action enum.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use verity_policy::PolicySet;
use verity_policy::drift::DriftReport;

use crate::pipeline::{Batch, Stage, StageError};

type RuleLabels = [(&'static str, String); 3];

#[derive(Clone, Default)]
pub struct DriftMetrics {
    matches: Family<RuleLabels, Counter>,
    unused: Family<[(&'static str, &'static str); 1], Gauge>,
    unprotected_requests: Counter,
    unprotected_destinations: Gauge,
    refreshes: Family<[(&'static str, &'static str); 1], Counter>,
}

impl DriftMetrics {
    /// Counts one listing of the policies in force from the cluster.
    pub fn refreshed(&self, outcome: &'static str) {
        self.refreshes.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "verity_policy_rule_matches",
            "Requests each rule of the policies in force matched (ALLOW rules: allowed requests); a rule at 0 is unused",
            m.matches.clone(),
        );
        registry.register(
            "verity_policy_rules_unused",
            "Rules of the policies in force no request has matched since Verity started, by action",
            m.unused.clone(),
        );
        registry.register(
            "verity_policy_unprotected_requests",
            "Requests to destinations that no ALLOW policy in force applies to",
            m.unprotected_requests.clone(),
        );
        registry.register(
            "verity_policy_in_force_refreshes",
            "Listings of the policies in force from the cluster, by outcome (applied, unchanged, list_failed, invalid)",
            m.refreshes.clone(),
        );
        registry.register(
            "verity_policy_unprotected_destinations",
            "Distinct destinations seen that no ALLOW policy in force applies to (capped at 10000)",
            m.unprotected_destinations.clone(),
        );
        m
    }
}

/// A newer set of the policies in force, offered by whoever reads them (the cluster refresh)
/// and taken by the stage before its next batch.
#[derive(Default)]
pub struct InForceUpdates {
    next: Mutex<Option<PolicySet>>,
}

impl InForceUpdates {
    pub fn offer(&self, set: PolicySet) {
        *self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(set);
    }

    fn take(&self) -> Option<PolicySet> {
        self.next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

pub struct PolicyDriftStage {
    set: PolicySet,
    updates: Option<Arc<InForceUpdates>>,
    report: DriftReport,
    metrics: DriftMetrics,
    /// Matches per rule already exported.
    exported: Vec<u64>,
    unprotected_exported: u64,
}

impl PolicyDriftStage {
    pub fn new(set: PolicySet, metrics: DriftMetrics) -> Self {
        let report = DriftReport::new(&set);
        let stage = Self {
            exported: vec![0; report.rules.len()],
            updates: None,
            set,
            report,
            metrics,
            unprotected_exported: 0,
        };
        stage.export();
        stage
    }

    /// Takes newer sets of the policies in force from `updates`.
    pub fn with_updates(mut self, updates: Arc<InForceUpdates>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Starts over with a new set: its rules' use is counted from now; the series of rules
    /// that are gone are removed.
    fn replace(&mut self, set: PolicySet) {
        let mut report = DriftReport::new(&set);
        report.carry_over(&self.report);
        for old in &self.report.rules {
            let still = report
                .rules
                .iter()
                .any(|r| r.policy == old.policy && r.rule == old.rule && r.action == old.action);
            if !still {
                self.metrics.matches.remove(&Self::labels(old));
            }
        }
        // What was carried over has been exported already; counters count on from there.
        self.exported = report.rules.iter().map(|r| r.matched).collect();
        self.report = report;
        self.set = set;
        self.unprotected_exported = 0;
        tracing::info!(policies = self.set.policies().len(), "policies in force refreshed");
        self.export();
    }

    fn export(&self) {
        for r in &self.report.rules {
            // Every rule has its series from the start, so "never matched" reads as 0.
            let _ = self.metrics.matches.get_or_create(&Self::labels(r));
        }
        for action in ["ALLOW", "DENY", "AUDIT", "CUSTOM"] {
            let unused = self
                .report
                .rules
                .iter()
                .filter(|r| r.action == action && r.matched == 0 && r.unknown == 0)
                .count();
            self.metrics
                .unused
                .get_or_create(&[("action", action)])
                .set(i64::try_from(unused).unwrap_or(i64::MAX));
        }
        let destinations = self.report.destinations_without_allow.len();
        self.metrics
            .unprotected_destinations
            .set(i64::try_from(destinations).unwrap_or(i64::MAX));
    }

    fn labels(r: &verity_policy::drift::RuleUse) -> RuleLabels {
        [
            ("policy", r.policy.clone()),
            ("rule", r.rule.to_string()),
            ("action", r.action.to_string()),
        ]
    }
}

impl Stage for PolicyDriftStage {
    fn name(&self) -> &'static str {
        "policy_drift"
    }

    fn process(&mut self, batch: &Batch) -> Result<(), StageError> {
        if let Some(set) = self.updates.as_ref().and_then(|u| u.take()) {
            self.replace(set);
        }
        let Batch::Events(events) = batch else {
            return Ok(());
        };
        self.report.add(&self.set, events);
        for (r, exported) in self.report.rules.iter().zip(self.exported.iter_mut()) {
            if r.matched > *exported {
                self.metrics
                    .matches
                    .get_or_create(&Self::labels(r))
                    .inc_by(r.matched - *exported);
                *exported = r.matched;
            }
        }
        let unprotected: u64 =
            self.report.destinations_without_allow.values().sum::<u64>() + self.report.destinations_overflow;
        if unprotected > self.unprotected_exported {
            self.metrics
                .unprotected_requests
                .inc_by(unprotected - self.unprotected_exported);
            self.unprotected_exported = unprotected;
        }
        self.export();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }
}
