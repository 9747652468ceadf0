//! The `control` section: how revocations are decided, bounded and applied.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use verity_model::alert::Severity;
use verity_model::config_error::ConfigError;

use crate::Mode;

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
    pub webhook: Option<WebhookConfig>,
    /// Also enforce through Istio `AuthorizationPolicy` DENY objects.
    pub istio: Option<IstioConfig>,
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
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        if let Some(l) = &self.ext_authz_listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            e.push(ConfigError::new(
                "control.ext_authz_listen",
                format!("{l:?} is not an ip:port socket address"),
            ));
        }
        if let Some(tls) = &self.ext_authz_tls {
            e.extend(tls.validate("control.ext_authz_tls"));
        }
        if self.window_secs == 0 {
            e.push(ConfigError::new("control.window_secs", "must be at least 1"));
        }
        if self.default_ttl_secs == 0 {
            e.push(ConfigError::new("control.default_ttl_secs", "must be at least 1"));
        }
        if let Some(istio) = &self.istio {
            e.extend(istio.validate());
        }
        if self.max_per_window == 0 {
            e.push(ConfigError::new("control.max_per_window", "must be at least 1"));
        }
        if self.max_operator_per_window == 0 {
            e.push(ConfigError::new(
                "control.max_operator_per_window",
                "must be at least 1",
            ));
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
                e.push(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.min_evidence == 0 {
            e.push(ConfigError::new("control.min_evidence", "must be at least 1"));
        }
        if !(1..=3600).contains(&self.reconcile_interval_secs) {
            e.push(ConfigError::new(
                "control.reconcile_interval_secs",
                "must be between 1 and 3600",
            ));
        }
        e
    }
}

/// Identities no revocation may touch by default: the control plane, gateways, kube-system.
pub const DEFAULT_PROTECTED: &[&str] = &[
    "*/ns/istio-system/*",
    "*/ns/kube-system/*",
    "*/sa/istiod*",
    "*/sa/istio-ingressgateway*",
    "*/sa/istio-egressgateway*",
    "*/sa/istio-eastwestgateway*",
    "*-gateway-service-account",
    // Gateway API gateways get a `<gateway>-istio` service account.
    "*/sa/*-istio",
    "*/sa/*waypoint*",
    "*/sa/ztunnel",
];

/// Where the DENY policy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The root namespace: the policy applies to every workload in the mesh.
    #[default]
    Mesh,
    /// The destination namespace of the alert, when it names one (else the root namespace).
    Destination,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IstioConfig {
    /// A kubeconfig file. Unset: the in-cluster service account, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; unset: its current context.
    pub context: Option<String>,
    pub scope: Scope,
    /// Istio's root namespace (`meshConfig.rootNamespace`).
    pub root_namespace: String,
    /// The server-side apply field manager, also the owner label: two Verity instances with
    /// separate stores need different ones, or each would delete the other's policies.
    pub field_manager: String,
    /// `v1` (Istio 1.22 and later) or `v1beta1`.
    pub api_version: String,
    /// How often the managed policies are listed and everything re-applied.
    pub resync_secs: u64,
    /// Per API request.
    pub timeout_secs: u64,
    /// Longest wait between retries of a failing policy.
    pub max_backoff_secs: u64,
}

impl Default for IstioConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            scope: Scope::Mesh,
            root_namespace: "istio-system".into(),
            field_manager: "verity".into(),
            api_version: "v1".into(),
            resync_secs: 60,
            timeout_secs: 10,
            max_backoff_secs: 300,
        }
    }
}

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl IstioConfig {
    /// Pure checks: every problem with its key.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        if !is_dns_label(&self.root_namespace) {
            e.push(ConfigError::new(
                "control.istio.root_namespace",
                format!("[{}] is not a namespace name", self.root_namespace),
            ));
        }
        // The field manager is also a label value.
        let fm = &self.field_manager;
        if fm.is_empty()
            || fm.len() > 63
            || !fm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || !fm.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !fm.ends_with(|c: char| c.is_ascii_alphanumeric())
        {
            e.push(ConfigError::new(
                "control.istio.field_manager",
                format!(
                    "[{fm}] must be 1-63 letters, digits, '-', '_' or '.', \
                     starting and ending with a letter or digit"
                ),
            ));
        }
        if !matches!(self.api_version.as_str(), "v1" | "v1beta1") {
            e.push(ConfigError::new(
                "control.istio.api_version",
                format!("[{}] is not v1 or v1beta1", self.api_version),
            ));
        }
        for (name, v) in [
            ("resync_secs", self.resync_secs),
            ("timeout_secs", self.timeout_secs),
            ("max_backoff_secs", self.max_backoff_secs),
        ] {
            if v == 0 {
                e.push(ConfigError::new(format!("control.istio.{name}"), "must be at least 1"));
            }
        }
        e
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC-SHA256 key for the signature header.
    #[serde(default)]
    pub secret: Option<verity_secret::SecretRef>,
    /// Failures after which a revocation is reported failed (delivery goes on).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_attempts() -> u32 {
    8
}
