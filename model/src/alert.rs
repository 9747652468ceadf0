//! Alerts: what the rules engine emits and every sink delivers.
//!
//! An alert's `id` is stable: the same rule, group key, window and status always give the
//! same id, so SIEMs and retries can deduplicate, and replaying the same input gives the
//! same alerts. Nothing in an alert depends on the wall clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: &'static [Severity] = &[
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// The condition holds now (a detection matched, an assertion is violated).
    Firing,
    /// An assertion holds again, or a silent key sends telemetry again.
    Resolved,
    /// No telemetry for an assertion key: Verity cannot say whether the policy holds.
    Unknown,
}

impl AlertStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
            AlertStatus::Unknown => "unknown",
        }
    }
}

/// One event kept as evidence, with its original line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub event_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    pub decision: String,
    /// The original line, cut to `rules.max_evidence_bytes` at a character boundary.
    pub raw: String,
    /// The line's full length in bytes, when `raw` was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_bytes: Option<usize>,
    /// Who sent the record (see `docs/schema.md`, "Senders").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Whether the record is its sender's verified evidence; responders that act on
    /// identities should require it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sender_verified: bool,
    /// How the sender relates to the record (`bound`, `trusted`, …; see `docs/schema.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_binding: Option<String>,
    /// The workload that received the request: for an inbound record, the proxy that enforced
    /// the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_principal: Option<String>,
    /// The end user (JWT `iss/sub`) behind the request, when one was authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principal: Option<String>,
}

/// Who a responder may act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// The column it came from (`source_principal`, `request_principal`, …).
    pub kind: String,
    pub value: String,
}

/// What the rule asks responders to do (consumed by the control plane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub action: String,
    pub ttl: String,
    /// Who reported the events behind the alert, over every one of them (the alert's
    /// `evidence` keeps only the first few).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<Backing>,
}

/// The events behind an alert that asks for a response, by who reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backing {
    pub events: u64,
    /// Events not verified as their sender's own, or from a sender that could not have seen
    /// them (neither a trusted node or aggregator, nor the destination that enforced the
    /// decision, nor the acting identity itself).
    pub unentitled: u64,
    /// Distinct senders of the entitled events (at most [`Backing::MAX_REPORTERS`]).
    pub reporters: Vec<String>,
    /// Those of them that are workload proxies reporting their own traffic (not a trusted
    /// node or aggregator): each may lead to only a few revocations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<String>,
}

impl Backing {
    pub const MAX_REPORTERS: usize = 16;

    /// Counts one event; `trusted` when its sender is a trusted node or aggregator.
    pub fn add(&mut self, entitled: bool, sender: Option<&str>, trusted: bool) {
        self.events = self.events.saturating_add(1);
        if !entitled {
            self.unentitled = self.unentitled.saturating_add(1);
            return;
        }
        let Some(s) = sender else { return };
        for (list, wanted) in [(&mut self.reporters, true), (&mut self.proxies, !trusted)] {
            if wanted && list.len() < Self::MAX_REPORTERS && !list.iter().any(|r| r == s) {
                list.push(s.to_string());
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub rule_id: String,
    pub title: String,
    pub severity: Severity,
    pub kind: String,
    pub status: AlertStatus,
    pub tags: Vec<String>,
    pub description: String,
    /// Group key columns and their values.
    pub group: BTreeMap<String, Option<String>>,
    /// Events that contributed.
    pub count: u64,
    /// Aggregates computed for `having`, by their expression text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aggregates: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
    pub evidence: Vec<Evidence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<Entity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respond: Option<Response>,
    /// A human-readable sentence.
    pub summary: String,
}

#[cfg(any(test, feature = "test-util"))]
impl Alert {
    /// A representative alert for tests: a firing `zt-rbac-denial-burst` detection (severity
    /// high, 12 events) on the source principal `spiffe://cluster.local/ns/shop/sa/cart`, with
    /// no group, window, evidence, response or text. Tests override what they need with
    /// struct-update syntax: `Alert { rule_id: "x".into(), ..Alert::sample() }`.
    pub fn sample() -> Self {
        Alert {
            id: "zt-rbac-denial-burst-01".into(),
            rule_id: "zt-rbac-denial-burst".into(),
            title: "RBAC denial burst".into(),
            severity: Severity::High,
            kind: "detection".into(),
            status: AlertStatus::Firing,
            tags: Vec::new(),
            description: String::new(),
            group: BTreeMap::new(),
            count: 12,
            aggregates: BTreeMap::new(),
            window_start: None,
            window_end: None,
            first_seen: String::new(),
            last_seen: String::new(),
            evidence: Vec::new(),
            entity: Some(Entity {
                kind: "source_principal".into(),
                value: "spiffe://cluster.local/ns/shop/sa/cart".into(),
            }),
            respond: None,
            summary: String::new(),
        }
    }
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike `std`'s hasher.
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0x1f;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The stable alert id: rule id, group key, window start and status.
pub fn alert_id(
    rule_id: &str,
    group: &BTreeMap<String, Option<String>>,
    window_start_ns: i64,
    status: AlertStatus,
) -> String {
    let key: Vec<String> = group
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("\u{0}")))
        .collect();
    let key = key.join("\u{1}");
    let start = window_start_ns.to_string();
    format!("{rule_id}-{:016x}", fnv1a(&[rule_id, &key, &start, status.as_str()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let mut g = BTreeMap::new();
        g.insert("source_principal".to_string(), Some("spiffe://a".to_string()));
        let a = alert_id("r", &g, 1, AlertStatus::Firing);
        assert_eq!(a, alert_id("r", &g, 1, AlertStatus::Firing));
        assert_ne!(a, alert_id("r", &g, 2, AlertStatus::Firing));
        assert_ne!(a, alert_id("r", &g, 1, AlertStatus::Resolved));
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
    }
}
