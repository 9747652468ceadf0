//! What enforces a revocation: the [`Responder`] trait, its typed outcomes, and the ext_authz
//! deny list as the responder that takes effect at once.

use crate::Revocation;
use crate::denylist::{Denial, DenyList};

/// A responder's successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// In force now.
    Now(String),
    /// Handed on; the outcome is reported later through
    /// [`Revoker::confirm`](crate::revoker::Revoker::confirm). The revocation stays pending
    /// until then.
    Later(String),
}

/// A responder could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ResponderError {
    pub detail: String,
    /// Whether trying again may succeed (an outage, a full queue); false for a refusal that
    /// will not change (a receiver that answers 4xx, a policy the API server rejects).
    pub retry: bool,
}

impl ResponderError {
    pub fn retry(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            retry: true,
        }
    }

    pub fn permanent(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            retry: false,
        }
    }
}

/// Something that enforces revocations (the ext_authz deny list, a webhook, Istio).
pub trait Responder: Send + Sync {
    fn name(&self) -> &'static str;
    fn apply(&self, r: &Revocation) -> Result<Applied, ResponderError>;
    fn remove(&self, r: &Revocation) -> Result<String, ResponderError>;
    /// Whether it retries failures itself (it confirms later, see [`Applied::Later`]); the
    /// revoker then leaves retries to it.
    fn retries_itself(&self) -> bool {
        false
    }
    /// Whether it can apply a revocation without enforcing it (mode `dry_run`); the others
    /// are skipped in that mode.
    fn supports_dry_run(&self) -> bool {
        false
    }
    /// Whether its effect is this instance's alone (the ext_authz deny list): it then also
    /// enforces the revocations other instances share (`kafka.repartition.share_revocations`).
    fn per_instance(&self) -> bool {
        false
    }
    /// Called after revocation `id`'s new state is stored (and again on every reconcile while
    /// it is pending), so a deferred responder acts only on what the store holds.
    fn stored(&self, _id: &str) {}
}

/// Enforcement through the ext_authz server: effective as soon as it is recorded.
pub struct DenyListResponder(pub DenyList);

impl Responder for DenyListResponder {
    fn name(&self) -> &'static str {
        "ext_authz"
    }
    fn apply(&self, r: &Revocation) -> Result<Applied, ResponderError> {
        self.0.insert(
            &r.principal,
            Denial {
                revocation_id: r.id.clone(),
                alert_id: r.alert_id.clone(),
                reason: r.reason.clone(),
                expires_ns: r.expires_ns,
            },
        );
        Ok(Applied::Now("on the ext_authz deny list".into()))
    }
    fn per_instance(&self) -> bool {
        true
    }
    fn remove(&self, r: &Revocation) -> Result<String, ResponderError> {
        self.0.remove(&r.principal);
        Ok("removed from the ext_authz deny list".into())
    }
}
