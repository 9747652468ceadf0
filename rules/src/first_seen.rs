//! `first_seen`: alert when a key tuple (e.g. source principal → destination service)
//! appears that was not seen during the learning period. The learned set is saved under the
//! engine's state directory and survives restarts.

use std::path::{Path, PathBuf};

use arrow::array::BooleanArray;
use serde::{Deserialize, Serialize};
use verity_model::alert::{Alert, AlertStatus};

use crate::compile::{CompiledRule, FirstSeenPlan, Plan};
use crate::emit::{AlertParts, describe, make_alert};
use crate::eval_error::EvalError;
use crate::evidence::{Rows, group_map};
use crate::kind::RuleKind;
use crate::mask::{eval_filter, visible};
use crate::state_key::{Key, KeyMap, RowKey, forget_least_recent};

#[derive(Default)]
pub struct FirstSeenState {
    learn_start: Option<i64>,
    /// Each learned tuple with the event time it was last seen (for eviction).
    learned: KeyMap<i64>,
    dirty: bool,
}

/// The learned set as written to the state directory. `last_seen` is index-aligned with
/// `learned`; files written before it existed load with the tuples seen at `learn_start`.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    learn_start: Option<i64>,
    learned: Vec<Key>,
    #[serde(default)]
    last_seen: Vec<i64>,
}

/// The learned tuples of one partition, as handed to the instance taking it over.
#[derive(Serialize, Deserialize)]
struct Moved {
    learn_start: Option<i64>,
    learned: serde_json::Value,
}

fn path(dir: &Path, rule_id: &str) -> PathBuf {
    dir.join(format!("{rule_id}.first_seen.json"))
}

impl FirstSeenState {
    pub fn load(dir: Option<&Path>, rule_id: &str) -> Self {
        let Some(dir) = dir else { return Self::default() };
        let p = path(dir, rule_id);
        match std::fs::read(&p) {
            Ok(bytes) => match serde_json::from_slice::<Snapshot>(&bytes) {
                Ok(s) => {
                    let start = s.learn_start.unwrap_or(0);
                    let times = s.last_seen.into_iter().chain(std::iter::repeat(start));
                    Self {
                        learn_start: s.learn_start,
                        learned: s.learned.into_iter().zip(times).collect(),
                        dirty: false,
                    }
                }
                Err(error) => {
                    tracing::error!(path = %p.display(), %error, "learned set is unreadable; learning again");
                    Self::default()
                }
            },
            Err(_) => Self::default(),
        }
    }

    pub fn save(&mut self, dir: Option<&Path>, rule_id: &str) -> std::io::Result<()> {
        let Some(dir) = dir else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        let (learned, last_seen) = self.learned.iter().map(|(k, t)| (k.clone(), *t)).unzip();
        let snapshot = Snapshot {
            learn_start: self.learn_start,
            learned,
            last_seen,
        };
        crate::checkpoint::write_atomically(
            &path(dir, rule_id),
            &serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?,
        )?;
        self.dirty = false;
        Ok(())
    }

    pub fn learned(&self) -> usize {
        self.learned.len()
    }

    /// Forgets the least recently seen tuples down to `keep`; one seen again later alerts
    /// as new.
    pub fn evict(&mut self, keep: usize) -> u64 {
        let n = self.learned.len();
        if n <= keep {
            return 0;
        }
        let forgotten = forget_least_recent(&mut self.learned, n - keep, |t| *t);
        self.dirty = true;
        forgotten as u64
    }

    pub fn process(
        &mut self,
        plan: &FirstSeenPlan,
        rule: &CompiledRule,
        rows: &Rows<'_>,
        mask: &BooleanArray,
        out: &mut Vec<Alert>,
    ) {
        let entity_col = rule.entity.as_ref().map(|(_, c)| *c);
        let mut row_key = RowKey::default();
        for row in mask.values().set_indices() {
            let t = rows.time(row);
            let borrowed = row_key.read(rows, &plan.keys, row);
            if borrowed.is_all_null() {
                continue;
            }
            let start = *self.learn_start.get_or_insert(t);
            if let Some(seen) = self.learned.get_mut(borrowed) {
                // Recency for eviction; not worth a checkpoint on its own.
                *seen = (*seen).max(t);
                continue;
            }
            self.dirty = true;
            let key = borrowed.to_key();
            if t < start.saturating_add(plan.learning) {
                self.learned.insert(key, t);
                continue;
            }
            let group = group_map(&plan.keys, &key);
            self.learned.insert(key, t);
            let summary = format!("{}: first seen {}", rule.rule().title, describe(&group));
            out.push(make_alert(
                rule,
                AlertParts::at(
                    AlertStatus::Firing,
                    group,
                    t,
                    vec![rows.evidence(row)],
                    entity_col.and_then(|c| rows.value(c, row)),
                    summary,
                ),
            ));
        }
    }
}

impl RuleKind for FirstSeenState {
    fn process(
        &mut self,
        rule: &CompiledRule,
        rows: &Rows<'_>,
        hidden: Option<&BooleanArray>,
        _watermark_before: Option<i64>,
        out: &mut Vec<Alert>,
    ) -> Result<u64, EvalError> {
        let Plan::FirstSeen(p) = &rule.plan else {
            return Err(EvalError::PlanMismatch);
        };
        let mask = visible(eval_filter(p.filter.as_ref(), rows.batch)?, hidden)?;
        FirstSeenState::process(self, p, rule, rows, &mask, out);
        Ok(mask.true_count() as u64)
    }

    fn evict(&mut self, _rule: &CompiledRule, keep: usize, _max_keys: usize, _out: &mut Vec<Alert>) -> u64 {
        FirstSeenState::evict(self, keep)
    }

    /// The learned set.
    fn save(&mut self, rule: &CompiledRule, dir: &Path) -> std::io::Result<()> {
        FirstSeenState::save(self, Some(dir), &rule.rule().id)
    }

    fn export_keys(&self, pick: crate::kind::KeyPick<'_>) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(Moved {
            learn_start: self.learn_start,
            learned: crate::partition_state::export_map(&self.learned, pick)?,
        })
    }

    fn forget_keys(&mut self, pick: crate::kind::KeyPick<'_>) -> usize {
        crate::partition_state::forget_map(&mut self.learned, pick)
    }

    /// The learning period stays this instance's when it has one: an old or forged start must
    /// not end learning for every partition here.
    fn import_keys(
        &mut self,
        rule: &CompiledRule,
        state: serde_json::Value,
        room: usize,
    ) -> Result<usize, crate::kind::ImportError> {
        let moved: Moved = serde_json::from_value(state)?;
        let n = crate::partition_state::import_map(&mut self.learned, moved.learned, rule, room)?;
        self.learn_start = self.learn_start.or(moved.learn_start);
        self.dirty = true;
        Ok(n)
    }

    fn state_keys(&self) -> usize {
        self.learned()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
