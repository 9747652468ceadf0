//! Alert construction shared by every rule kind: what a kind knows about one alert
//! ([`AlertParts`]), turned into the [`Alert`] that leaves the engine, and the group summary.

use std::collections::BTreeMap;

use verity_model::alert::{Alert, AlertStatus, Entity, Evidence, Response, alert_id};
use verity_model::time::format_rfc3339_ns;

use crate::compile::CompiledRule;

/// Everything an alert needs besides the rule.
pub(crate) struct AlertParts {
    pub status: AlertStatus,
    pub group: BTreeMap<String, Option<String>>,
    /// The time the alert's id is anchored to (window start, transition time).
    pub at: i64,
    pub window: Option<(i64, i64)>,
    pub count: u64,
    pub aggregates: BTreeMap<String, f64>,
    pub first: i64,
    pub last: i64,
    pub evidence: Vec<Evidence>,
    pub entity: Option<String>,
    pub summary: String,
    /// Some event behind the alert was not its sender's verified evidence.
    pub unverified: bool,
    /// Who reported every event behind it (rules with `respond`).
    pub backing: Option<verity_model::alert::Backing>,
}

impl AlertParts {
    /// An alert about one moment: a single event or a state transition at `at`.
    pub(crate) fn at(
        status: AlertStatus,
        group: BTreeMap<String, Option<String>>,
        at: i64,
        evidence: Vec<Evidence>,
        entity: Option<String>,
        summary: String,
    ) -> Self {
        let unverified = evidence.iter().any(|e| !e.sender_verified);
        Self {
            status,
            group,
            at,
            window: None,
            count: 1,
            aggregates: BTreeMap::new(),
            first: at,
            last: at,
            evidence,
            entity,
            summary,
            unverified,
            backing: None,
        }
    }

    /// Counts `row` as the alert's one backing event, for rules with `respond`.
    pub(crate) fn backed_by(mut self, rule: &CompiledRule, rows: &crate::evidence::Rows<'_>, row: usize) -> Self {
        if rule.rule().respond.is_some() {
            let mut b = verity_model::alert::Backing::default();
            let (entitled, sender, trusted) = rows.entitled(row, rule.entity.as_ref().map(|(_, c)| *c));
            b.add(entitled, sender, trusted);
            self.backing = Some(b);
        }
        self
    }
}

pub(crate) fn make_alert(rule: &CompiledRule, p: AlertParts) -> Alert {
    let r = rule.rule();
    let withheld = p.unverified
        && r.respond
            .as_ref()
            .is_some_and(|s| s.evidence == crate::rule::RequiredEvidence::Verified);
    let summary = if withheld {
        format!(
            "{}; no {} requested: some of the evidence is not verified as its sender's own (sender_verified = false)",
            p.summary,
            r.respond.as_ref().map_or("action", |s| s.action.as_str())
        )
    } else {
        p.summary
    };
    Alert {
        id: alert_id(&r.id, &p.group, p.at, p.status),
        rule_id: r.id.clone(),
        title: r.title.clone(),
        severity: r.severity,
        kind: r.kind().as_str().to_string(),
        status: p.status,
        tags: r.tags.clone(),
        description: r.description.trim().to_string(),
        group: p.group,
        count: p.count,
        aggregates: p.aggregates,
        window_start: p.window.map(|(s, _)| format_rfc3339_ns(s)),
        window_end: p.window.map(|(_, e)| format_rfc3339_ns(e)),
        first_seen: format_rfc3339_ns(p.first),
        last_seen: format_rfc3339_ns(p.last),
        evidence: p.evidence,
        entity: match (&rule.entity, p.entity) {
            (Some((kind, _)), Some(value)) => Some(Entity {
                kind: kind.clone(),
                value,
            }),
            _ => None,
        },
        respond: r.respond.as_ref().filter(|_| !withheld).map(|s| Response {
            action: s.action.as_str().to_string(),
            ttl: s.ttl.to_string(),
            backing: p.backing,
        }),
        summary,
    }
}

/// `a=1, b=2` for summaries.
pub(crate) fn describe(group: &BTreeMap<String, Option<String>>) -> String {
    if group.is_empty() {
        return "all traffic".to_string();
    }
    group
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("(none)")))
        .collect::<Vec<_>>()
        .join(", ")
}
