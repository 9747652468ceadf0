//! `first_seen`: alert when a key tuple (e.g. source principal → destination service)
//! appears that was not seen during the learning period. The learned set is saved under the
//! engine's state directory and survives restarts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow::array::BooleanArray;
use serde::{Deserialize, Serialize};
use verity_model::alert::{Alert, AlertStatus};

use crate::compile::{CompiledRule, FirstSeenPlan};
use crate::engine::{AlertParts, describe, make_alert};
use crate::evidence::{Key, Rows, group_map};

#[derive(Default, Serialize, Deserialize)]
pub struct FirstSeenState {
    learn_start: Option<i64>,
    learned: HashSet<Key>,
    #[serde(skip)]
    dirty: bool,
}

fn path(dir: &Path, rule_id: &str) -> PathBuf {
    dir.join(format!("{rule_id}.first_seen.json"))
}

impl FirstSeenState {
    pub fn load(dir: Option<&Path>, rule_id: &str) -> Self {
        let Some(dir) = dir else { return Self::default() };
        let p = path(dir, rule_id);
        match std::fs::read(&p) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
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
        crate::checkpoint::write_atomically(
            &path(dir, rule_id),
            &serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        self.dirty = false;
        Ok(())
    }

    pub fn learned(&self) -> usize {
        self.learned.len()
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
        for row in mask.values().set_indices() {
            let t = rows.time(row);
            let key = rows.key(&plan.keys, row);
            if key.iter().all(Option::is_none) {
                continue;
            }
            let start = *self.learn_start.get_or_insert(t);
            if self.learned.contains(&key) {
                continue;
            }
            self.learned.insert(key.clone());
            self.dirty = true;
            if t < start.saturating_add(plan.learning) {
                continue;
            }
            let group = group_map(&plan.keys, &key);
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
