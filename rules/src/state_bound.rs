//! Bounded rule state. Every stateful rule keeps at most `max_keys` keys (groups of open
//! windows, assertion keys, learned `first_seen` tuples, absence keys); past it the least
//! recently seen are evicted down to nine tenths of the bound, so a flood of new keys (an
//! attacker spraying random principals) costs evictions, not memory. Evictions are counted
//! per rule and raise one `verity-state-pressure` alert per rule and hour of event time.

use std::collections::BTreeMap;

use verity_model::alert::{Alert, AlertStatus, Severity, alert_id};
use verity_model::time::format_rfc3339_ns;

/// The id of the alert that says a rule's state is at its bound.
pub const PRESSURE_RULE_ID: &str = "verity-state-pressure";

/// How many keys an eviction keeps: nine tenths of the bound, so a flood evicts in
/// batches instead of on every new key.
pub fn keep_after_eviction(max_keys: usize) -> usize {
    max_keys.saturating_sub(max_keys / 10).max(1)
}

/// The `n` items with the smallest time (least recently seen), in no particular order.
pub fn least_recent<K>(mut items: Vec<(i64, K)>, n: usize) -> Vec<K> {
    if n == 0 {
        return Vec::new();
    }
    if n < items.len() {
        items.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        items.truncate(n);
    }
    items.into_iter().map(|(_, k)| k).collect()
}

const HOUR_NS: i64 = 3_600_000_000_000;

/// Whether an hour of event time has passed since the last pressure alert at `last`.
pub fn pressure_due(last: i64, at: i64) -> bool {
    at >= last.saturating_add(HOUR_NS)
}

/// The start of the hour of event time `at` is in.
pub fn hour_of(at: i64) -> i64 {
    at.div_euclid(HOUR_NS).saturating_mul(HOUR_NS)
}

/// The alert for `rule_id` evicting keys at event time `at`; the engine raises at most one
/// per rule and hour of event time (see [`pressure_due`]), its id anchored to the hour.
pub fn pressure_alert(rule_id: &str, keys: usize, max_keys: usize, evicted: u64, at: i64) -> Alert {
    let hour = hour_of(at);
    let group = BTreeMap::from([("rule".to_string(), Some(rule_id.to_string()))]);
    Alert {
        id: alert_id(PRESSURE_RULE_ID, &group, hour, AlertStatus::Firing),
        rule_id: PRESSURE_RULE_ID.to_string(),
        title: "Rule state at its bound".to_string(),
        severity: Severity::High,
        kind: "detection".to_string(),
        status: AlertStatus::Firing,
        tags: vec!["verity".to_string(), "availability".to_string()],
        description: "A stateful rule reached its max_keys and evicted the least recently seen keys: \
                      windows closed early, assertion keys became unknown, learned tuples were \
                      forgotten. Either the mesh has grown past the bound (raise rules.max_keys or the \
                      rule's max_keys) or something is sending many new keys (random principals)."
            .to_string(),
        group,
        count: evicted,
        aggregates: BTreeMap::from([
            ("keys".to_string(), keys as f64),
            ("max_keys".to_string(), max_keys as f64),
            ("evicted".to_string(), evicted as f64),
        ]),
        window_start: None,
        window_end: None,
        first_seen: format_rfc3339_ns(at),
        last_seen: format_rfc3339_ns(at),
        evidence: Vec::new(),
        entity: None,
        respond: None,
        summary: format!(
            "rule {rule_id} holds {keys} keys, its max_keys is {max_keys}; {evicted} least recently seen keys evicted so far"
        ),
    }
}

/// The note evicted state carries into the alert it still raises.
pub fn eviction_note(max_keys: usize) -> String {
    format!(" (closed early: the rule's state reached max_keys = {max_keys} and this key was the least recently seen)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recent_picks_the_oldest() {
        let items = vec![(5, "e"), (1, "a"), (4, "d"), (2, "b"), (3, "c")];
        let mut got = least_recent(items, 2);
        got.sort();
        assert_eq!(got, ["a", "b"]);
        assert_eq!(least_recent(vec![(1, "a")], 5), ["a"]);
        assert!(least_recent(vec![(1, "a")], 0).is_empty());
        assert_eq!(keep_after_eviction(100), 90);
        assert_eq!(keep_after_eviction(1), 1);
    }

    #[test]
    fn one_pressure_alert_per_rule_and_hour() {
        let a = pressure_alert("r", 10, 9, 1, HOUR_NS + 5);
        let b = pressure_alert("r", 10, 9, 7, HOUR_NS + 10_000);
        let c = pressure_alert("r", 10, 9, 7, 2 * HOUR_NS);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(a.id, pressure_alert("s", 10, 9, 1, HOUR_NS).id);
    }
}
