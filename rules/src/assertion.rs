//! Assertion state: at every moment each key is holding, violated or unknown.
//!
//! - A scoped event whose `require` is false makes its key *violated* at once (alert
//!   `firing`). NULL (cannot tell) counts as neither holding nor violating.
//! - A violated key that then sees only compliant events for `resolve_after` holds again
//!   (alert `resolved`).
//! - A key with no scoped events for `stale_after` is *unknown* (alert `unknown`: a
//!   telemetry gap). Its next compliant event makes it hold again (alert `resolved`).

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, BooleanArray};
use verity_model::alert::{Alert, AlertStatus};

use crate::compile::{AssertionPlan, CompiledRule, Plan};
use crate::emit::{AlertParts, describe, make_alert};
use crate::eval_error::EvalError;
use crate::evidence::{Rows, group_map, push_evidence};
use crate::kind::RuleKind;
use crate::mask::{eval_bool, visible};
use crate::packed_evidence::{PackedEvidence, unpack_all};
use crate::state_key::{Key, KeyMap, RowKey, evict_least_recent, state_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyStatus {
    Holding,
    Violated,
    Unknown,
}

impl KeyStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Holding => "holding",
            KeyStatus::Violated => "violated",
            KeyStatus::Unknown => "unknown",
        }
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct KeyState {
    status: KeyStatus,
    last_scoped: i64,
    first_violation: i64,
    last_violation: i64,
    violations: u64,
    compliant_since_violation: bool,
    /// Has this key ever held or been violated (so unknown → holding is a resolution)?
    known: bool,
    evidence: Vec<PackedEvidence>,
    entity: Option<String>,
}

impl KeyState {
    /// A violated key that has seen only compliant events for `resolve_after` holds again.
    fn resolves_by(&self, plan: &AssertionPlan, watermark: i64) -> bool {
        self.status == KeyStatus::Violated
            && self.compliant_since_violation
            && watermark >= self.last_violation.saturating_add(plan.resolve_after)
    }

    /// A key without scoped events for `stale_after` becomes unknown.
    fn goes_stale_by(&self, plan: &AssertionPlan, watermark: i64) -> bool {
        self.status != KeyStatus::Unknown && watermark >= self.last_scoped.saturating_add(plan.stale_after)
    }
}

#[derive(Default)]
pub struct AssertionState {
    keys: KeyMap<KeyState>,
    pub checked: u64,
    pub violating: u64,
}

impl AssertionState {
    /// The first `limit` keys (in key order) with their states, and how many of the rest
    /// are in each state (holding, violated, unknown): what the metrics export, bounded
    /// however many keys traffic brings.
    pub fn states(&self, limit: usize) -> (Vec<(String, KeyStatus)>, [u64; 3]) {
        let mut keys: Vec<(&Key, KeyStatus)> = self.keys.iter().map(|(k, s)| (k, s.status)).collect();
        let mut rest = [0u64; 3];
        if keys.len() > limit {
            if limit > 0 {
                keys.select_nth_unstable_by(limit - 1, |a, b| a.0.cmp(b.0));
            }
            for (_, status) in keys.drain(limit..) {
                let i = status as usize;
                if let Some(n) = rest.get_mut(i) {
                    *n += 1;
                }
            }
        }
        keys.sort_by(|a, b| a.0.cmp(b.0));
        let shown = keys
            .into_iter()
            .map(|(k, status)| {
                let name = k.values().map(|v| v.unwrap_or("")).collect::<Vec<_>>().join(",");
                (name, status)
            })
            .collect();
        (shown, rest)
    }

    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Drops the least recently seen keys down to `keep`: they are unknown from now on. A
    /// violated key says so with an `unknown` alert, so its open violation does not hang.
    pub fn evict(
        &mut self,
        plan: &AssertionPlan,
        rule: &CompiledRule,
        keep: usize,
        max_keys: usize,
        out: &mut Vec<Alert>,
    ) -> u64 {
        let n = self.keys.len();
        if n <= keep {
            return 0;
        }
        let mut victims = evict_least_recent(&mut self.keys, n - keep, |s| s.last_scoped);
        // Alerts in key order, whatever the map's order.
        victims.sort_by(|a, b| a.0.cmp(&b.0));
        let note = crate::state_bound::eviction_note(max_keys);
        let mut evicted = 0u64;
        for (key, s) in victims {
            evicted += 1;
            if s.status != KeyStatus::Violated {
                continue;
            }
            let group = group_map(&plan.per, &key);
            let summary = format!(
                "{}: no longer tracked for {}; cannot tell whether it holds{note}",
                rule.rule().title,
                describe(&group),
            );
            out.push(key_alert(rule, AlertStatus::Unknown, group, s.last_scoped, &s, summary));
        }
        evicted
    }

    pub fn process(
        &mut self,
        plan: &AssertionPlan,
        rule: &CompiledRule,
        rows: &Rows<'_>,
        scope: &BooleanArray,
        require: &BooleanArray,
        out: &mut Vec<Alert>,
    ) {
        let entity_col = rule.entity.as_ref().map(|(_, c)| *c);
        let mut row_key = RowKey::default();
        for row in scope.values().set_indices() {
            let t = rows.time(row);
            let key = row_key.read(rows, &plan.per, row);
            let ok = if require.is_null(row) {
                None
            } else {
                Some(require.value(row))
            };
            let Some(ok) = ok else { continue };
            self.checked += 1;
            let s = state_of(&mut self.keys, key, || KeyState {
                status: KeyStatus::Unknown,
                last_scoped: t,
                first_violation: t,
                last_violation: i64::MIN,
                violations: 0,
                compliant_since_violation: false,
                known: false,
                evidence: Vec::new(),
                entity: None,
            });
            s.last_scoped = s.last_scoped.max(t);
            if !ok {
                self.violating += 1;
                s.last_violation = s.last_violation.max(t);
                s.compliant_since_violation = false;
                s.violations = s.violations.saturating_add(1);
                push_evidence(&mut s.evidence, || rows.packed_evidence(row));
                if s.entity.is_none() {
                    s.entity = entity_col.and_then(|c| rows.value(c, row));
                }
                if s.status != KeyStatus::Violated {
                    s.status = KeyStatus::Violated;
                    s.known = true;
                    s.first_violation = t;
                    s.violations = 1;
                    let group = group_map(&plan.per, &key.to_key());
                    let summary = format!("{}: violated for {}", rule.rule().title, describe(&group));
                    out.push(make_alert(
                        rule,
                        AlertParts::at(
                            AlertStatus::Firing,
                            group,
                            t,
                            unpack_all(&s.evidence),
                            s.entity.clone(),
                            summary,
                        ),
                    ));
                }
            } else {
                match s.status {
                    KeyStatus::Violated => s.compliant_since_violation = true,
                    KeyStatus::Unknown => {
                        s.status = KeyStatus::Holding;
                        if s.known {
                            let group = group_map(&plan.per, &key.to_key());
                            let summary = format!(
                                "{}: telemetry is back and the assertion holds for {}",
                                rule.rule().title,
                                describe(&group)
                            );
                            out.push(resolution(rule, group, t, s, summary));
                        }
                        s.known = true;
                    }
                    KeyStatus::Holding => {}
                }
            }
        }
    }

    pub fn advance(&mut self, plan: &AssertionPlan, rule: &CompiledRule, watermark: i64, out: &mut Vec<Alert>) {
        // Only keys whose state changes at this watermark are copied and sorted (for a stable
        // alert order), not every key at every advance.
        let mut due: Vec<Key> = self
            .keys
            .iter()
            .filter(|(_, s)| s.resolves_by(plan, watermark) || s.goes_stale_by(plan, watermark))
            .map(|(k, _)| k.clone())
            .collect();
        due.sort();
        for key in due {
            let Some(s) = self.keys.get_mut(&key) else { continue };
            let resolve_at = s.last_violation.saturating_add(plan.resolve_after);
            if s.resolves_by(plan, watermark) {
                s.status = KeyStatus::Holding;
                let group = group_map(&plan.per, &key);
                let summary = format!(
                    "{}: holds again for {} after {} violating events",
                    rule.rule().title,
                    describe(&group),
                    s.violations
                );
                out.push(resolution(rule, group, resolve_at, s, summary));
                s.evidence.clear();
            }
            let stale_at = s.last_scoped.saturating_add(plan.stale_after);
            if s.goes_stale_by(plan, watermark) {
                s.status = KeyStatus::Unknown;
                let group = group_map(&plan.per, &key);
                let summary = format!(
                    "{}: no telemetry for {} since {}; cannot tell whether it holds",
                    rule.rule().title,
                    describe(&group),
                    verity_model::time::format_rfc3339_ns(s.last_scoped)
                );
                out.push(make_alert(
                    rule,
                    AlertParts {
                        status: AlertStatus::Unknown,
                        group,
                        at: stale_at,
                        window: Some((s.last_scoped, stale_at)),
                        count: 0,
                        aggregates: BTreeMap::new(),
                        first: s.last_scoped,
                        last: s.last_scoped,
                        evidence: Vec::new(),
                        entity: None,
                        summary,
                        unverified: true,
                        backing: None,
                    },
                ));
                s.evidence.clear();
            }
        }
    }
}

fn resolution(
    rule: &CompiledRule,
    group: BTreeMap<String, Option<String>>,
    at: i64,
    s: &KeyState,
    summary: String,
) -> Alert {
    key_alert(rule, AlertStatus::Resolved, group, at, s, summary)
}

/// An alert about a key's whole violation so far (its resolution, or its eviction).
fn key_alert(
    rule: &CompiledRule,
    status: AlertStatus,
    group: BTreeMap<String, Option<String>>,
    at: i64,
    s: &KeyState,
    summary: String,
) -> Alert {
    make_alert(
        rule,
        AlertParts {
            status,
            group,
            at,
            window: None,
            count: s.violations,
            aggregates: BTreeMap::new(),
            first: s.first_violation,
            last: s.last_scoped,
            evidence: Vec::new(),
            entity: s.entity.clone(),
            summary,
            unverified: true,
            backing: None,
        },
    )
}

impl RuleKind for AssertionState {
    fn process(
        &mut self,
        rule: &CompiledRule,
        rows: &Rows<'_>,
        hidden: Option<&BooleanArray>,
        _watermark_before: Option<i64>,
        out: &mut Vec<Alert>,
    ) -> Result<u64, EvalError> {
        let Plan::Assertion(p) = &rule.plan else {
            return Err(EvalError::PlanMismatch);
        };
        let scope = visible(eval_bool(&p.scope, "scope", rows.batch)?, hidden)?;
        let require = p
            .require
            .evaluate(rows.batch)
            .and_then(|v| v.into_array(rows.batch.num_rows()))
            .map_err(|source| EvalError::Expression {
                what: "require",
                source,
            })?;
        let require = require
            .as_boolean_opt()
            .ok_or(EvalError::NotBoolean { what: "require" })?;
        AssertionState::process(self, p, rule, rows, &scope, require, out);
        Ok(scope.true_count() as u64)
    }

    fn advance(&mut self, rule: &CompiledRule, watermark: i64, out: &mut Vec<Alert>) {
        if let Plan::Assertion(p) = &rule.plan {
            AssertionState::advance(self, p, rule, watermark, out);
        }
    }

    fn evict(&mut self, rule: &CompiledRule, keep: usize, max_keys: usize, out: &mut Vec<Alert>) -> u64 {
        match &rule.plan {
            Plan::Assertion(p) => AssertionState::evict(self, p, rule, keep, max_keys, out),
            _ => 0,
        }
    }

    fn export_keys(&self, pick: crate::kind::KeyPick<'_>) -> Result<serde_json::Value, serde_json::Error> {
        crate::partition_state::export_map(&self.keys, pick)
    }

    fn forget_keys(&mut self, pick: crate::kind::KeyPick<'_>) -> usize {
        crate::partition_state::forget_map(&mut self.keys, pick)
    }

    fn import_keys(
        &mut self,
        rule: &CompiledRule,
        state: serde_json::Value,
        room: usize,
    ) -> Result<usize, crate::kind::ImportError> {
        crate::partition_state::import_map(&mut self.keys, state, rule, room)
    }

    fn state_keys(&self) -> usize {
        self.keys()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
