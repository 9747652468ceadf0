//! Revocations: what Verity has decided to cut off, kept durably, bounded by guardrails, and
//! enforced through Envoy's external authorization.
//!
//! - [`store::Store`]: every revocation with its state (pending, applied, failed, expired,
//!   lifted), written atomically to one JSON file so it survives restarts.
//! - [`guard::Guardrails`]: identities that are never revoked, a cap per time window and a
//!   minimum severity.
//! - [`denylist::DenyList`]: the principals currently denied, swapped in whole so that the
//!   ext_authz read path takes no lock.
//! - [`ext_authz`]: `envoy.service.auth.v3.Authorization/Check` answering 403 for revoked
//!   principals and OK for everyone else.

#![forbid(unsafe_code)]

pub mod denylist;
pub mod ext_authz;
pub mod guard;
pub mod manager;
pub mod store;
pub mod webhook;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a revocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Recorded, not yet applied by every responder.
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
    pub detail: String,
    pub at_ns: i64,
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
    pub created_ns: i64,
    pub expires_ns: i64,
    pub state: State,
    #[serde(default)]
    pub results: BTreeMap<String, ResponderResult>,
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
