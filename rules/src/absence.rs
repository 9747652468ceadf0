//! `absence`: alert when a key that used to send telemetry has been silent for a duration
//! (in event time), and resolve when it is heard from again.

use std::collections::BTreeMap;

use arrow::array::BooleanArray;
use verity_model::alert::{Alert, AlertStatus};

use crate::compile::{AbsencePlan, CompiledRule, Plan};
use crate::emit::{AlertParts, describe, make_alert};
use crate::eval_error::EvalError;
use crate::evidence::{Rows, group_map};
use crate::kind::RuleKind;
use crate::mask::{eval_filter, visible};
use crate::state_key::{Key, KeyMap, RowKey, forget_least_recent};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Seen {
    last: i64,
    silent: bool,
}

#[derive(Default)]
pub struct AbsenceState {
    keys: KeyMap<Seen>,
    /// No watched key falls silent before this event time; `None` until the next pass works
    /// it out. A lower bound: hearing from a key only moves its deadline later, so only new
    /// keys, resumed keys and imports lower it. With it, a batch whose watermark is before
    /// it costs nothing, instead of a pass over every key.
    next_due: Option<i64>,
}

impl AbsenceState {
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Forgets the least recently heard keys down to `keep`.
    pub fn evict(&mut self, keep: usize) -> u64 {
        let n = self.keys.len();
        if n <= keep {
            return 0;
        }
        forget_least_recent(&mut self.keys, n - keep, |s| s.last) as u64
    }

    pub fn process(
        &mut self,
        plan: &AbsencePlan,
        rule: &CompiledRule,
        rows: &Rows<'_>,
        mask: &BooleanArray,
        out: &mut Vec<Alert>,
    ) {
        let mut row_key = RowKey::default();
        for row in mask.values().set_indices() {
            let t = rows.time(row);
            let key = row_key.read(rows, &plan.keys, row);
            let Some(s) = self.keys.get_mut(key) else {
                self.keys.insert(key.to_key(), Seen { last: t, silent: false });
                lower_due(&mut self.next_due, t.saturating_add(plan.after));
                continue;
            };
            s.last = s.last.max(t);
            if s.silent {
                s.silent = false;
                lower_due(&mut self.next_due, s.last.saturating_add(plan.after));
                let group = group_map(&plan.keys, &key.to_key());
                let summary = format!("{}: telemetry resumed for {}", rule.rule().title, describe(&group));
                out.push(make_alert(
                    rule,
                    AlertParts::at(AlertStatus::Resolved, group, t, vec![rows.evidence(row)], None, summary),
                ));
            }
        }
    }

    pub fn advance(&mut self, plan: &AbsencePlan, rule: &CompiledRule, watermark: i64, out: &mut Vec<Alert>) {
        if self.next_due.is_some_and(|due| watermark < due) {
            return;
        }
        let mut next_due = i64::MAX;
        let mut due: Vec<&Key> = Vec::new();
        for (key, s) in self.keys.iter().filter(|(_, s)| !s.silent) {
            let at = s.last.saturating_add(plan.after);
            if watermark < at {
                next_due = next_due.min(at);
            } else {
                due.push(key);
            }
        }
        self.next_due = Some(next_due);
        // In key order, so the alerts of one pass come out the same on every run.
        due.sort();
        let due: Vec<Key> = due.into_iter().cloned().collect();
        for key in due {
            let Some(s) = self.keys.get_mut(&key) else { continue };
            let at = s.last.saturating_add(plan.after);
            s.silent = true;
            let group = group_map(&plan.keys, &key);
            let summary = format!(
                "{}: no telemetry from {} since {}",
                rule.rule().title,
                describe(&group),
                verity_model::time::format_rfc3339_ns(s.last)
            );
            out.push(make_alert(
                rule,
                AlertParts {
                    status: AlertStatus::Firing,
                    group,
                    at,
                    window: Some((s.last, at)),
                    count: 0,
                    aggregates: BTreeMap::new(),
                    first: s.last,
                    last: s.last,
                    evidence: Vec::new(),
                    entity: None,
                    summary,
                    // Silence is nobody's evidence.
                    unverified: true,
                    backing: None,
                },
            ));
        }
    }
}

/// Takes `at` into the lower bound on the next deadline, if there is one yet.
fn lower_due(next_due: &mut Option<i64>, at: i64) {
    if let Some(due) = next_due {
        *due = (*due).min(at);
    }
}

impl RuleKind for AbsenceState {
    fn process(
        &mut self,
        rule: &CompiledRule,
        rows: &Rows<'_>,
        hidden: Option<&BooleanArray>,
        _watermark_before: Option<i64>,
        out: &mut Vec<Alert>,
    ) -> Result<u64, EvalError> {
        let Plan::Absence(p) = &rule.plan else {
            return Err(EvalError::PlanMismatch);
        };
        let mask = visible(eval_filter(p.filter.as_ref(), rows.batch)?, hidden)?;
        AbsenceState::process(self, p, rule, rows, &mask, out);
        Ok(mask.true_count() as u64)
    }

    fn advance(&mut self, rule: &CompiledRule, watermark: i64, out: &mut Vec<Alert>) {
        if let Plan::Absence(p) = &rule.plan {
            AbsenceState::advance(self, p, rule, watermark, out);
        }
    }

    fn evict(&mut self, _rule: &CompiledRule, keep: usize, _max_keys: usize, _out: &mut Vec<Alert>) -> u64 {
        AbsenceState::evict(self, keep)
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
        // Imported keys carry deadlines of their own: the next pass works the bound out again.
        self.next_due = None;
        crate::partition_state::import_map(&mut self.keys, state, rule, room)
    }

    fn state_keys(&self) -> usize {
        self.keys()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
