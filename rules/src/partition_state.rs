//! Rule state by keyed-stream partition: what one instance hands to the next when a
//! repartition topic's partition moves between them (Kafka scale-out).
//!
//! A stateful rule sees only its key set's stream, and every key of that stream lives in
//! one partition, the one [`crate::key_sets::key_partition`] picks for the key's values. So
//! the state of a partition is, for each rule on its stream, the keys that hash to it:
//! [`Engine::export_partition`] copies them out, [`Engine::forget_partition`] drops them when
//! the partition goes, and [`Engine::import_partition`] takes them in on the next owner.
//! Rules are matched by id and text (fingerprint): state made by another version of a rule
//! is not taken, as on a reload.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::kind::{ImportError, KeyPick};
use crate::state_key::{Key, KeyMap};

/// One partition's state: every rule's keys of it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PartitionState {
    pub rules: Vec<RuleState>,
}

/// One rule's keys of a partition.
#[derive(Debug, Serialize, Deserialize)]
pub struct RuleState {
    pub rule_id: String,
    pub fingerprint: u64,
    pub state: serde_json::Value,
}

/// What an import took and left.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Keys taken, over every rule.
    pub keys: usize,
    /// Rules whose state was taken.
    pub rules: usize,
    /// Rules whose state was not: no longer loaded, changed text, or state that does not
    /// fit (each logged).
    pub refused: usize,
}

/// One partition of one keyed stream.
#[derive(Debug, Clone, Copy)]
pub struct Partition<'s> {
    pub stream: &'s str,
    pub partition: usize,
    pub partitions: usize,
}

/// Whether a key of `rule` (on `stream`) belongs to `at`: its values, taken in key-set order (the
/// order rows were partitioned by), hash to the partition.
fn picker<'a>(
    rule: &'a crate::compile::CompiledRule,
    stream: Option<&str>,
    at: Partition<'a>,
) -> Option<impl Fn(&Key) -> bool + 'a> {
    if stream != Some(at.stream) {
        return None;
    }
    let keys = rule.rule().body.state_keys()?;
    let set = crate::key_sets::key_set(keys);
    // Each key-set column's place among the rule's key columns.
    let order: Vec<usize> = set.iter().filter_map(|c| keys.iter().position(|k| k == c)).collect();
    Some(move |key: &Key| {
        let values: Vec<Option<&str>> = key.values().collect();
        let ordered = order
            .iter()
            .map(|i| values.get(*i).copied().flatten().map(str::as_bytes));
        crate::key_sets::key_partition(ordered, at.partitions, &mut Vec::new()) == at.partition
    })
}

impl Engine {
    /// A copy of the state the rules on `at.stream` hold for keys of `at`.
    pub fn export_partition(&self, at: Partition<'_>) -> Result<PartitionState, serde_json::Error> {
        let mut out = PartitionState::default();
        for slot in &self.slots {
            let Some(pick) = picker(&slot.rule, slot.stream.as_deref(), at) else {
                continue;
            };
            let state = slot.state.export_keys(&pick)?;
            if state.is_null() {
                continue;
            }
            out.rules.push(RuleState {
                rule_id: slot.rule.rule().id.clone(),
                fingerprint: slot.rule.fingerprint,
                state,
            });
        }
        Ok(out)
    }

    /// Drops the state of keys of `at`: the partition now belongs to another instance.
    /// Returns how many keys went.
    pub fn forget_partition(&mut self, at: Partition<'_>) -> usize {
        let mut n = 0;
        for slot in &mut self.slots {
            let Some(pick) = picker(&slot.rule, slot.stream.as_deref(), at) else {
                continue;
            };
            n += slot.state.forget_keys(&pick);
        }
        n
    }

    /// Takes in a partition's state exported by another instance (or this one, earlier),
    /// for the rules loaded here with the same text.
    pub fn import_partition(&mut self, state: PartitionState) -> ImportSummary {
        let mut summary = ImportSummary::default();
        for r in state.rules {
            let Some(slot) = self.slots.iter_mut().find(|s| s.rule.rule().id == r.rule_id) else {
                tracing::info!(rule = %r.rule_id, "handed-over state of a rule no longer loaded: not taken");
                summary.refused += 1;
                continue;
            };
            if slot.rule.fingerprint != r.fingerprint {
                tracing::info!(rule = %r.rule_id, "handed-over state is for another version of the rule: not taken");
                summary.refused += 1;
                continue;
            }
            // Taken state counts against the rule's bound like any other: what would take it
            // past is refused rather than evicting what this instance already holds.
            let max_keys = slot.rule.rule().max_keys.unwrap_or(self.settings.max_keys);
            let room = max_keys.saturating_sub(slot.state.state_keys());
            match slot.state.import_keys(&slot.rule, r.state, room) {
                Ok(keys) => {
                    summary.keys += keys;
                    summary.rules += 1;
                }
                Err(error) => {
                    tracing::warn!(rule = %r.rule_id, %error, "handed-over state not taken");
                    summary.refused += 1;
                }
            }
        }
        summary
    }
}

/// The entries of `map` whose keys `pick` selects, as a JSON list of `[key, value]`.
pub(crate) fn export_map<V: Serialize>(
    map: &KeyMap<V>,
    pick: KeyPick<'_>,
) -> Result<serde_json::Value, serde_json::Error> {
    let picked: Vec<(&Key, &V)> = map.iter().filter(|(k, _)| pick(k)).collect();
    serde_json::to_value(picked)
}

/// Removes the entries `pick` selects; returns how many went.
pub(crate) fn forget_map<V>(map: &mut KeyMap<V>, pick: KeyPick<'_>) -> usize {
    let before = map.len();
    map.retain(|k, _| !pick(k));
    before - map.len()
}

/// Inserts the entries [`export_map`] wrote, each key with as many values as `rule` keeps
/// state per, and at most `room` of them.
pub(crate) fn import_map<V: DeserializeOwned>(
    map: &mut KeyMap<V>,
    state: serde_json::Value,
    rule: &crate::compile::CompiledRule,
    room: usize,
) -> Result<usize, ImportError> {
    let key_len = rule.rule().body.state_keys().map_or(0, <[String]>::len);
    let entries: Vec<(Key, V)> = serde_json::from_value(state)?;
    if entries.iter().any(|(k, _)| k.len() != key_len) {
        return Err(ImportError::Inconsistent);
    }
    if entries.len() > room {
        return Err(ImportError::TooManyKeys {
            keys: entries.len(),
            room,
        });
    }
    let n = entries.len();
    map.extend(entries);
    Ok(n)
}
