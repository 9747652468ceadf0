//! Shadow mode: candidate policies evaluated on live traffic, each as an assertion "would deny
//! no observed legitimate traffic".
//!
//! Each candidate is judged on its own, together with the policies in force (if given): on
//! every request the mesh allowed at an enforcement point, a DENY candidate would deny it when
//! it matches; an ALLOW candidate that applies would deny it when neither it nor an ALLOW
//! policy in force matches. Once a candidate is promoted (enforced in the mesh), the requests
//! the mesh denies because of it count against it too: the denials its own rule caused, or,
//! for an ALLOW candidate, "no ALLOW policy matched" at a destination it applies to. Per
//! candidate, in event time over the last `window`:
//! - **violated**: it would have denied at least one legitimate request;
//! - **holding**: requests it applies to were seen, and it would have denied none;
//! - **unknown**: no request it applies to was seen, or only requests whose outcome the
//!   records cannot settle.
//!
//! A change of state is an alert (firing when violated, resolved when it holds again, unknown
//! when traffic stops), with the requests it would deny as evidence. `holding_since` is what a
//! promotion waits on.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use serde::Serialize;
use verity_model::alert::{Alert, AlertStatus, Evidence, Severity, alert_id};
use verity_model::event::col;
use verity_model::time::format_rfc3339_ns;

use crate::evaluate::{Observed, PolicySet, observed};
use crate::event_view::{Enforcer, EventView};
use crate::object::Action;
use crate::predicate::{kleene_and, kleene_or};

/// The rule id shadow alerts carry.
pub const RULE_ID: &str = "policy-shadow";
/// Requests kept as evidence per alert.
const MAX_EVIDENCE: usize = 5;
/// Characters of a record kept in evidence.
const MAX_RAW_CHARS: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowState {
    Unknown,
    Holding,
    Violated,
}

impl ShadowState {
    pub const ALL: [ShadowState; 3] = [ShadowState::Unknown, ShadowState::Holding, ShadowState::Violated];

    pub const fn as_str(self) -> &'static str {
        match self {
            ShadowState::Unknown => "unknown",
            ShadowState::Holding => "holding",
            ShadowState::Violated => "violated",
        }
    }
}

/// What one request meant for one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowOutcome {
    Allowed,
    WouldDeny,
    Unknown,
}

impl ShadowOutcome {
    pub const ALL: [ShadowOutcome; 3] = [ShadowOutcome::Allowed, ShadowOutcome::WouldDeny, ShadowOutcome::Unknown];

    pub const fn as_str(self) -> &'static str {
        match self {
            ShadowOutcome::Allowed => "allowed",
            ShadowOutcome::WouldDeny => "would_deny",
            ShadowOutcome::Unknown => "unknown",
        }
    }
}

/// One candidate's assertion.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateState {
    pub policy: String,
    /// Enforced in the mesh (promoted).
    pub promoted: bool,
    pub state: ShadowState,
    /// Event time the candidate has held since (reset by a violation); `None` unless holding.
    pub holding_since_ns: Option<i64>,
    pub last_traffic_ns: Option<i64>,
    pub last_violation_ns: Option<i64>,
    /// Requests, by outcome, since start.
    pub allowed: u64,
    pub would_deny: u64,
    pub unknown: u64,
    #[serde(skip)]
    evidence: Vec<Evidence>,
    #[serde(skip)]
    violations_in_state: u64,
}

/// The candidates' assertions.
#[derive(Debug)]
pub struct ShadowAssertions {
    /// The policies in force, then the candidates.
    set: PolicySet,
    /// Set index → candidate index, for the candidates.
    candidate_of: Vec<Option<usize>>,
    window_ns: i64,
    candidates: Vec<CandidateState>,
    watermark_ns: Option<i64>,
}

fn text<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch.column_by_name(name).and_then(|c| c.as_string_opt::<i32>())
}

fn value(array: Option<&StringArray>, row: usize) -> Option<String> {
    array
        .filter(|a| row < a.len() && a.is_valid(row))
        .map(|a| a.value(row).to_string())
}

fn evidence(batch: &RecordBatch, row: usize, time_ns: i64) -> Evidence {
    let raw = value(text(batch, col::RAW), row).unwrap_or_default();
    let raw_bytes = raw.len();
    let cut: String = raw.chars().take(MAX_RAW_CHARS).collect();
    let status = batch
        .column_by_name(col::STATUS)
        .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int32Type>())
        .filter(|a| row < a.len() && a.is_valid(row))
        .map(|a| a.value(row));
    let verified = batch
        .column_by_name(col::SENDER_VERIFIED)
        .and_then(|c| c.as_boolean_opt())
        .is_some_and(|a| row < a.len() && a.is_valid(row) && a.value(row));
    Evidence {
        event_time: format_rfc3339_ns(time_ns),
        source_principal: value(text(batch, col::SOURCE_PRINCIPAL), row),
        destination_service: value(text(batch, col::DESTINATION_SERVICE), row),
        status,
        decision: value(text(batch, col::DECISION), row).unwrap_or_default(),
        raw_bytes: (cut.len() < raw_bytes).then_some(raw_bytes),
        raw: cut,
        sender: value(text(batch, col::SENDER), row),
        sender_verified: verified,
        sender_binding: value(text(batch, col::SENDER_BINDING), row),
        destination_principal: value(text(batch, col::DESTINATION_PRINCIPAL), row),
        request_principal: value(text(batch, col::REQUEST_PRINCIPAL), row),
    }
}

impl ShadowAssertions {
    /// `set` holds the policies in force first, then `candidates` of them: the last ones.
    pub fn new(set: PolicySet, candidates: usize, window_ns: i64) -> Self {
        let total = set.policies().len();
        let first = total.saturating_sub(candidates);
        let mut candidate_of = vec![None; total];
        let candidates: Vec<CandidateState> = set
            .policies()
            .iter()
            .enumerate()
            .skip(first)
            .enumerate()
            .map(|(c, (index, p))| {
                if let Some(slot) = candidate_of.get_mut(index) {
                    *slot = Some(c);
                }
                CandidateState {
                    policy: p.id.clone(),
                    promoted: false,
                    state: ShadowState::Unknown,
                    holding_since_ns: None,
                    last_traffic_ns: None,
                    last_violation_ns: None,
                    allowed: 0,
                    would_deny: 0,
                    unknown: 0,
                    evidence: Vec::new(),
                    violations_in_state: 0,
                }
            })
            .collect();
        Self {
            set,
            candidate_of,
            window_ns: window_ns.max(1),
            candidates,
            watermark_ns: None,
        }
    }

    /// Marks a candidate as enforced in the mesh (promoted) or not.
    pub fn set_promoted(&mut self, policy: &str, promoted: bool) {
        for c in &mut self.candidates {
            if c.policy == policy {
                c.promoted = promoted;
            }
        }
    }

    pub fn candidates(&self) -> &[CandidateState] {
        &self.candidates
    }

    /// The newest event time seen.
    pub fn watermark_ns(&self) -> Option<i64> {
        self.watermark_ns
    }

    /// Evaluates one batch; `outcomes` is told each (candidate index, outcome) for metrics.
    /// Returns the alerts for the candidates whose state changed.
    pub fn process(&mut self, batch: &RecordBatch, mut outcomes: impl FnMut(usize, ShadowOutcome)) -> Vec<Alert> {
        let evaluation = self.set.evaluation(batch, false);
        let view = EventView::new(batch);
        for row in 0..view.rows() {
            if view.enforcer(row) == Enforcer::Elsewhere {
                continue;
            }
            let seen = observed(&view, row);
            if !matches!(seen, Observed::Allowed | Observed::DeniedByPolicy) {
                continue;
            }
            let Some(time) = view.event_time_ns(row) else {
                continue;
            };
            self.watermark_ns = Some(self.watermark_ns.map_or(time, |w| w.max(time)));
            let entries = evaluation.row(row);
            // Whether an ALLOW policy in force (not a candidate, not dry-run) lets it through.
            let mut in_force_allows = Some(false);
            for e in entries {
                let in_force = self.candidate_of.get(e.policy).is_some_and(Option::is_none);
                let p = self.set.policies().get(e.policy);
                if in_force && p.is_some_and(|p| p.action == Action::Allow && !p.dry_run) {
                    in_force_allows = kleene_or(in_force_allows, e.matched);
                }
            }
            let denied_by = view.decision_policy(row);
            // A candidate not listed for the row does not apply to it.
            for e in entries {
                let Some(c) = self.candidate_of.get(e.policy).copied().flatten() else {
                    continue;
                };
                let Some(action) = self.set.policies().get(e.policy).map(|p| p.action) else {
                    continue;
                };
                let Some(candidate) = self.candidates.get_mut(c) else {
                    continue;
                };
                let outcome = match (seen, action) {
                    (Observed::Allowed, Action::Deny) => match e.matched {
                        Some(true) => ShadowOutcome::WouldDeny,
                        Some(false) => ShadowOutcome::Allowed,
                        None => ShadowOutcome::Unknown,
                    },
                    (Observed::Allowed, Action::Allow) => {
                        let denies = kleene_and(
                            e.applies,
                            kleene_and(e.matched.map(|m| !m), in_force_allows.map(|a| !a)),
                        );
                        match denies {
                            Some(true) => ShadowOutcome::WouldDeny,
                            Some(false) if e.applies == Some(true) => ShadowOutcome::Allowed,
                            _ => ShadowOutcome::Unknown,
                        }
                    }
                    // Denied in the mesh: only a promoted candidate's own denials count.
                    (Observed::DeniedByPolicy, Action::Deny)
                        if candidate.promoted && denied_by == Some(candidate.policy.as_str()) =>
                    {
                        ShadowOutcome::WouldDeny
                    }
                    (Observed::DeniedByPolicy, Action::Allow)
                        if candidate.promoted
                            && denied_by == Some("none")
                            && e.applies == Some(true)
                            && e.matched != Some(true) =>
                    {
                        ShadowOutcome::WouldDeny
                    }
                    _ => continue,
                };
                outcomes(c, outcome);
                match outcome {
                    ShadowOutcome::Allowed => {
                        candidate.allowed += 1;
                        candidate.last_traffic_ns = Some(candidate.last_traffic_ns.map_or(time, |t| t.max(time)));
                    }
                    ShadowOutcome::WouldDeny => {
                        candidate.would_deny += 1;
                        candidate.violations_in_state += 1;
                        candidate.last_traffic_ns = Some(candidate.last_traffic_ns.map_or(time, |t| t.max(time)));
                        candidate.last_violation_ns = Some(candidate.last_violation_ns.map_or(time, |t| t.max(time)));
                        if candidate.evidence.len() < MAX_EVIDENCE {
                            candidate.evidence.push(evidence(batch, row, time));
                        }
                    }
                    ShadowOutcome::Unknown => candidate.unknown += 1,
                }
            }
        }
        self.advance()
    }

    /// Moves every candidate to its state at the watermark; returns the transitions' alerts.
    pub fn advance(&mut self) -> Vec<Alert> {
        let Some(watermark) = self.watermark_ns else {
            return Vec::new();
        };
        let recent = |t: Option<i64>| t.is_some_and(|t| t > watermark.saturating_sub(self.window_ns));
        let mut alerts = Vec::new();
        for candidate in &mut self.candidates {
            let next = if recent(candidate.last_violation_ns) {
                ShadowState::Violated
            } else if recent(candidate.last_traffic_ns) {
                ShadowState::Holding
            } else {
                ShadowState::Unknown
            };
            if next == candidate.state {
                continue;
            }
            let previous = candidate.state;
            candidate.state = next;
            candidate.holding_since_ns = (next == ShadowState::Holding).then_some(watermark);
            let status = match (previous, next) {
                (_, ShadowState::Violated) => Some(AlertStatus::Firing),
                (ShadowState::Violated, ShadowState::Holding) => Some(AlertStatus::Resolved),
                (_, ShadowState::Unknown) => Some(AlertStatus::Unknown),
                _ => None,
            };
            if let Some(status) = status {
                alerts.push(transition_alert(candidate, status, watermark));
            }
            candidate.evidence.clear();
            candidate.violations_in_state = 0;
        }
        alerts
    }
}

fn transition_alert(candidate: &CandidateState, status: AlertStatus, at_ns: i64) -> Alert {
    let group = BTreeMap::from([("policy".to_string(), Some(candidate.policy.clone()))]);
    let (title, severity, summary) = match status {
        AlertStatus::Firing => (
            "Candidate policy would deny legitimate traffic",
            Severity::Medium,
            format!(
                "candidate policy {} would have denied {} request(s) the mesh allowed",
                candidate.policy, candidate.violations_in_state
            ),
        ),
        AlertStatus::Resolved => (
            "Candidate policy holds again",
            Severity::Info,
            format!(
                "candidate policy {} would deny no observed legitimate traffic",
                candidate.policy
            ),
        ),
        AlertStatus::Unknown => (
            "Candidate policy has no traffic to judge",
            Severity::Low,
            format!(
                "no request candidate policy {} applies to was seen, or none whose outcome the records settle",
                candidate.policy
            ),
        ),
    };
    let at = format_rfc3339_ns(at_ns);
    Alert {
        id: alert_id(RULE_ID, &group, at_ns, status),
        rule_id: RULE_ID.into(),
        title: title.into(),
        severity,
        kind: "assertion".into(),
        status,
        tags: vec!["least-privilege".into(), "authorization-policy".into()],
        description:
            "A candidate AuthorizationPolicy evaluated on live traffic: it must deny no request the mesh allowed."
                .into(),
        group,
        count: candidate.violations_in_state,
        aggregates: BTreeMap::new(),
        window_start: None,
        window_end: None,
        first_seen: candidate
            .evidence
            .first()
            .map_or_else(|| at.clone(), |e| e.event_time.clone()),
        last_seen: at,
        evidence: candidate.evidence.clone(),
        entity: None,
        respond: None,
        summary,
    }
}
