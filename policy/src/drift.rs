//! `verity policy drift`: the policies in force against the traffic they saw. Reports ALLOW
//! rules no allowed request used (over-broad, or dead), DENY rules that never matched, and
//! workloads no ALLOW policy selects (everything is allowed to reach them).
//!
//! Only records from enforcement points count, and only matches that are known: a rule whose
//! matches were all unknown is reported as such, not as unused.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use serde::Serialize;

use crate::evaluate::{Observed, PolicySet, observed};
use crate::event_view::{Enforcer, EventView};
use crate::object::Action;
use crate::predicate::kleene_or;
use crate::target::Destination;

/// How one rule of one policy was used.
#[derive(Debug, Clone, Serialize)]
pub struct RuleUse {
    pub policy: String,
    pub action: &'static str,
    pub rule: usize,
    pub dry_run: bool,
    /// Requests the rule matched (for ALLOW rules, allowed requests).
    pub matched: u64,
    /// Requests whose match the records could not settle.
    pub unknown: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_matched: Option<String>,
    #[serde(skip)]
    last_ns: Option<i64>,
}

/// Totals of a drift run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DriftReport {
    /// Records from enforcement points.
    pub requests: u64,
    pub rules: Vec<RuleUse>,
    /// Destinations seen in traffic that no ALLOW policy applies to, with their requests.
    pub destinations_without_allow: BTreeMap<String, u64>,
    /// Requests to further destinations without an ALLOW policy, past
    /// [`MAX_DESTINATIONS`] (destinations come from traffic: their number is bounded).
    pub destinations_overflow: u64,
    /// Inventory workloads no ALLOW policy selects.
    pub workloads_without_allow: Vec<String>,
    /// Per policy, the index of its first rule in `rules`.
    #[serde(skip)]
    first_rule: Vec<usize>,
}

/// Distinct destinations without an ALLOW policy remembered by name.
pub const MAX_DESTINATIONS: usize = 10_000;

impl DriftReport {
    pub fn new(set: &PolicySet) -> Self {
        let rules = set
            .policies()
            .iter()
            .flat_map(|p| {
                (0..p.rules.len()).map(move |rule| RuleUse {
                    policy: p.id.clone(),
                    action: p.action.as_str(),
                    rule,
                    dry_run: p.dry_run,
                    matched: 0,
                    unknown: 0,
                    last_matched: None,
                    last_ns: None,
                })
            })
            .collect();
        let mut workloads_without_allow = Vec::new();
        for (ns, name, labels) in set.inventory().workloads() {
            let selected = set
                .policies()
                .iter()
                .any(|p| p.action == Action::Allow && !p.dry_run && p.target.selects_workload(ns, labels));
            if !selected {
                workloads_without_allow.push(format!("{ns}/{name}"));
            }
        }
        let mut first_rule = Vec::with_capacity(set.policies().len());
        let mut next = 0;
        for p in set.policies() {
            first_rule.push(next);
            next += p.rules.len();
        }
        Self {
            rules,
            workloads_without_allow,
            first_rule,
            ..Self::default()
        }
    }

    pub fn add(&mut self, set: &PolicySet, batch: &RecordBatch) {
        let view = EventView::new(batch);
        let evaluation = set.evaluation(batch, true);
        for row in 0..view.rows() {
            if view.enforcer(row) == Enforcer::Elsewhere {
                continue;
            }
            self.requests += 1;
            let allowed = observed(&view, row) == Observed::Allowed;
            let time = view.event_time_ns(row);
            let mut any_allow_applies = Some(false);
            for entry in evaluation.row(row) {
                let Some(policy) = set.policies().get(entry.policy) else {
                    continue;
                };
                if policy.action == Action::Allow && !policy.dry_run {
                    any_allow_applies = kleene_or(any_allow_applies, entry.applies);
                }
                // An ALLOW rule is used by requests the mesh let through; any other by whatever
                // it matched.
                if policy.action == Action::Allow && !allowed {
                    continue;
                }
                let first = self.first_rule.get(entry.policy).copied().unwrap_or(usize::MAX);
                for (k, hit) in evaluation.rules(entry, policy.rules.len()).iter().enumerate() {
                    let Some(used) = first.checked_add(k).and_then(|slot| self.rules.get_mut(slot)) else {
                        continue;
                    };
                    match hit {
                        Some(true) => {
                            used.matched += 1;
                            if let Some(t) = time
                                && used.last_ns.is_none_or(|l| t > l)
                            {
                                used.last_ns = Some(t);
                            }
                        }
                        None => used.unknown += 1,
                        Some(false) => {}
                    }
                }
            }
            if any_allow_applies == Some(false) {
                let d = Destination::of(&view, row);
                let name = format!(
                    "{}/{}",
                    d.namespace.unwrap_or("?"),
                    d.workload.or(d.service).unwrap_or("?")
                );
                let room = self.destinations_without_allow.len() < MAX_DESTINATIONS;
                match self.destinations_without_allow.get_mut(&name) {
                    Some(n) => *n += 1,
                    None if room => {
                        self.destinations_without_allow.insert(name, 1);
                    }
                    None => self.destinations_overflow += 1,
                }
            }
        }
    }

    /// Takes over what `old` counted for the rules both sets have (same policy, index and
    /// action), so that re-reading an unchanged policy forgets nothing.
    pub fn carry_over(&mut self, old: &DriftReport) {
        for rule in &mut self.rules {
            if let Some(o) = old
                .rules
                .iter()
                .find(|o| o.policy == rule.policy && o.rule == rule.rule && o.action == rule.action)
            {
                rule.matched = o.matched;
                rule.unknown = o.unknown;
                rule.last_ns = o.last_ns;
            }
        }
        self.requests = old.requests;
    }

    /// Fills in the times; call once at the end.
    pub fn finish(&mut self) {
        for r in &mut self.rules {
            r.last_matched = r.last_ns.map(verity_model::time::format_rfc3339_ns);
        }
    }

    /// ALLOW rules no allowed request used (and whose use is not merely unknown).
    pub fn unused_allow_rules(&self) -> impl Iterator<Item = &RuleUse> {
        self.rules
            .iter()
            .filter(|r| r.action == "ALLOW" && r.matched == 0 && r.unknown == 0)
    }

    /// DENY rules that matched nothing.
    pub fn idle_deny_rules(&self) -> impl Iterator<Item = &RuleUse> {
        self.rules
            .iter()
            .filter(|r| r.action == "DENY" && r.matched == 0 && r.unknown == 0)
    }
}
