//! Revocations: what Verity has decided to cut off, kept durably, bounded by guardrails, and
//! enforced through Envoy's external authorization.
//!
//! - [`store::Store`]: every revocation with its state (pending, applied, failed, expired,
//!   lifted), written atomically to one JSON file so it survives restarts.
//! - [`revoker::Revoker`]: turns alerts and operator requests into revocations and keeps them
//!   in step with the responders and with time.
//! - [`guard::Guardrails`]: identities that are never revoked, caps per time window (global
//!   and per namespace, rule-driven and operator apart) and a minimum severity.
//! - [`evidence`]: who a rule-driven revocation may name (never an intermediary) and whether
//!   its evidence is good enough to act on.
//! - [`responder`]: the [`Responder`] trait with typed outcomes.
//! - [`denylist::DenyList`]: the principals currently denied, swapped in whole so that the
//!   ext_authz read path takes no lock.
//! - [`ext_authz`]: `envoy.service.auth.v3.Authorization/Check` answering 403 for revoked
//!   principals and OK for everyone else.
//! - [`istio`]: Istio `AuthorizationPolicy` DENY objects kept in step with the store by
//!   server-side apply, removed at expiry.
//! - [`webhook`]: signed JSON to any other control plane.

#![forbid(unsafe_code)]

pub mod config;
pub mod denylist;
pub mod evidence;
pub mod ext_authz;
pub mod guard;
pub mod istio;
pub mod metrics;
pub mod replica;
pub mod responder;
pub mod revoker;
pub mod store;
pub mod webhook;

pub use config::ControlConfig;
pub use evidence::{alert_namespace, parse_ttl_ns};
pub use metrics::ControlMetrics;
pub use responder::{Applied, DenyListResponder, Responder, ResponderError};
pub use revoker::{Outcome, RevokeRequest, Revoker, SharedRevoker, VerifyHook};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counters labelled by (name, value) pairs whose values come from fixed sets.
pub(crate) type Counters = prometheus_client::metrics::family::Family<
    Vec<(&'static str, &'static str)>,
    prometheus_client::metrics::counter::Counter,
>;

/// What Verity does with a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Record and audit only; nothing is applied anywhere (the embedded default).
    #[default]
    LogOnly,
    /// Apply Istio policies with `istio.io/dry-run: "true"`, so Istio only reports what it
    /// would deny; the ext_authz deny list is left alone and nothing is verified from traffic.
    DryRun,
    /// Apply through every responder (the ext_authz deny list takes effect at once).
    Enforce,
}

/// Where a revocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Recorded, not yet confirmed by every responder (or log-only).
    Pending,
    /// In force.
    Applied,
    /// A responder could not apply it; retried with backoff.
    Failed,
    /// Its TTL passed; removed from the control plane.
    Expired,
    /// Lifted by an operator before its TTL.
    Lifted,
}

impl State {
    pub fn is_active(self) -> bool {
        matches!(self, State::Pending | State::Applied | State::Failed)
    }
}

/// What a responder reported for one revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponderResult {
    pub ok: bool,
    /// Handed to a responder that confirms later (the Istio responder); not yet confirmed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// A failure that retrying will not fix; left for an operator.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
    pub detail: String,
    pub at_ns: i64,
}

impl ResponderResult {
    pub fn ok(detail: String, at_ns: i64) -> Self {
        Self {
            ok: true,
            pending: false,
            permanent: false,
            detail,
            at_ns,
        }
    }

    /// What a responder's [`Responder::apply`] answered.
    pub fn from_apply(outcome: Result<Applied, ResponderError>, at_ns: i64) -> Self {
        match outcome {
            Ok(Applied::Now(detail)) => Self::ok(detail, at_ns),
            Ok(Applied::Later(detail)) => Self {
                pending: true,
                ok: false,
                ..Self::ok(detail, at_ns)
            },
            Err(e) => Self {
                ok: false,
                pending: false,
                permanent: !e.retry,
                detail: e.detail,
                at_ns,
            },
        }
    }
}

/// One revocation of one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Stable: derived from the principal and the creation time.
    pub id: String,
    /// `principal` (a workload's SPIFFE identity without `spiffe://`) or `request_principal`
    /// (a JWT `iss/sub`).
    pub kind: String,
    pub principal: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// The destination namespace the alert was about, when it names one: where a
    /// namespace-scoped Istio policy goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The mode it was decided in.
    #[serde(default)]
    pub mode: Mode,
    pub created_ns: i64,
    pub expires_ns: i64,
    /// When every responder had applied it (verification starts a grace period after this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_ns: Option<i64>,
    pub state: State,
    #[serde(default)]
    pub results: BTreeMap<String, ResponderResult>,
}

impl Revocation {
    /// Sets the state from the responders' results, and `applied_ns` the first time every
    /// responder has applied it.
    pub fn settle(&mut self, now_ns: i64) {
        self.state = self.settled_state();
        if self.state == State::Applied && self.applied_ns.is_none() {
            self.applied_ns = Some(now_ns);
        }
    }

    /// Applied, failed or still pending, from the responders' results.
    pub fn settled_state(&self) -> State {
        if self.results.values().any(|r| !r.ok && !r.pending) {
            State::Failed
        } else if self.results.values().any(|r| r.pending) {
            State::Pending
        } else {
            State::Applied
        }
    }
}

/// The principal as Istio policies and ext_authz name it: without the `spiffe://` scheme.
pub fn normalize_principal(p: &str) -> &str {
    p.strip_prefix("spiffe://").unwrap_or(p)
}

/// A deterministic id: the same principal revoked at the same moment gets the same id.
pub fn revocation_id(principal: &str, created_ns: i64) -> String {
    let h = verity_model::alert::fnv1a(&[principal, &created_ns.to_string()]);
    format!("rev-{h:016x}")
}
