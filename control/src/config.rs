//! The `control` section: how revocations are decided, bounded and applied.

use serde::{Deserialize, Serialize};
use verity_model::alert::Severity;

use crate::Mode;
use crate::guard::DEFAULT_PROTECTED;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub mode: Mode,
    /// Where revocations are kept across restarts.
    pub store_path: std::path::PathBuf,
    /// Identities never revoked (`*` wildcards over the principal without `spiffe://`).
    pub protected: Vec<String>,
    /// At most this many revocations per window; beyond, a critical alert instead.
    pub max_per_window: usize,
    /// Operator revocations (the API) per window: a budget of their own, which rules cannot
    /// use up.
    pub max_operator_per_window: usize,
    /// Rule-driven revocations of identities in one namespace per window, so a burst aimed at
    /// one namespace cannot use up the global budget.
    pub max_per_namespace_per_window: usize,
    /// Operator revocations in one namespace per window.
    pub max_operator_per_namespace_per_window: usize,
    /// Rule-driven revocations one sender's telemetry may lead to per window.
    pub max_per_reporter_per_window: usize,
    /// Identities that act on behalf of others (`*` wildcards, like `protected`), besides
    /// gateways and waypoints, which always count. An alert about one never revokes it: it
    /// revokes the end user (`request_principal`) behind the requests, or asks for review.
    pub intermediaries: Vec<String>,
    /// A rule-driven revocation needs at least this many events behind the alert.
    pub min_evidence: u64,
    /// … reported by at least this many distinct senders (2 or more: one compromised
    /// workload alone cannot get a caller revoked mesh-wide).
    pub min_reporters: usize,
    pub window_secs: u64,
    pub min_severity: Severity,
    /// After being applied, a revocation is verified from traffic once this has passed.
    pub grace_secs: u64,
    /// Used when a rule's `respond` has no TTL.
    pub default_ttl_secs: u64,
    /// Serve `envoy.service.auth.v3.Authorization` here (`ip:port`); unset: no ext_authz.
    pub ext_authz_listen: Option<String>,
    /// The request header carrying the validated JWT payload (base64url JSON), for revoking
    /// end users (`request_principal`) at ext_authz: Istio's `outputPayloadToHeader`.
    pub ext_authz_jwt_header: String,
    /// TLS for the ext_authz listener (Envoy's `ext_authz` gRPC client over TLS or mTLS).
    pub ext_authz_tls: Option<verity_model::tls::ServerTlsConfig>,
    /// How often expiry, retries and verification are checked.
    pub reconcile_interval_secs: u64,
    /// Also send each revocation and removal, signed, to this webhook.
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// Also enforce through Istio `AuthorizationPolicy` DENY objects.
    pub istio: Option<crate::istio::IstioConfig>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            mode: Mode::LogOnly,
            store_path: "verity-data/revocations.json".into(),
            protected: DEFAULT_PROTECTED.iter().map(|s| s.to_string()).collect(),
            max_per_window: 10,
            max_operator_per_window: 100,
            max_per_namespace_per_window: 5,
            max_operator_per_namespace_per_window: 50,
            max_per_reporter_per_window: 3,
            intermediaries: Vec::new(),
            min_evidence: 1,
            min_reporters: 1,
            window_secs: 600,
            min_severity: Severity::High,
            grace_secs: 15,
            default_ttl_secs: 3600,
            ext_authz_listen: None,
            ext_authz_jwt_header: crate::ext_authz::DEFAULT_JWT_PAYLOAD_HEADER.to_string(),
            ext_authz_tls: None,
            reconcile_interval_secs: 1,
            webhook: None,
            istio: None,
        }
    }
}

impl ControlConfig {
    /// Pure checks of the `control` section: every problem with its key.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut e = Vec::new();
        if let Some(l) = &self.ext_authz_listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            e.push((
                "control.ext_authz_listen".into(),
                format!("{l:?} is not an ip:port socket address"),
            ));
        }
        if let Some(tls) = &self.ext_authz_tls {
            e.extend(tls.validate("control.ext_authz_tls"));
        }
        if self.window_secs == 0 {
            e.push(("control.window_secs".into(), "must be at least 1".into()));
        }
        if self.default_ttl_secs == 0 {
            e.push(("control.default_ttl_secs".into(), "must be at least 1".into()));
        }
        if let Some(istio) = &self.istio {
            e.extend(istio.validate());
        }
        if self.max_per_window == 0 {
            e.push(("control.max_per_window".into(), "must be at least 1".into()));
        }
        if self.max_operator_per_window == 0 {
            e.push(("control.max_operator_per_window".into(), "must be at least 1".into()));
        }
        for (key, v) in [
            (
                "control.max_per_namespace_per_window",
                self.max_per_namespace_per_window,
            ),
            (
                "control.max_operator_per_namespace_per_window",
                self.max_operator_per_namespace_per_window,
            ),
            ("control.min_reporters", self.min_reporters),
            ("control.max_per_reporter_per_window", self.max_per_reporter_per_window),
        ] {
            if v == 0 {
                e.push((key.into(), "must be at least 1".into()));
            }
        }
        if self.min_evidence == 0 {
            e.push(("control.min_evidence".into(), "must be at least 1".into()));
        }
        if !(1..=3600).contains(&self.reconcile_interval_secs) {
            e.push((
                "control.reconcile_interval_secs".into(),
                "must be between 1 and 3600".into(),
            ));
        }
        e
    }
}
