//! The `policy` section of Verity's configuration: where candidate policies come from and how
//! shadow mode judges them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use verity_model::config_error::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The mesh's root namespace (`meshConfig.rootNamespace`): a policy there without a
    /// selector applies mesh-wide.
    pub root_namespace: String,
    /// Workloads and their labels, to resolve selectors (`kubectl get pods,services -A -o
    /// yaml`, or Verity's short form; see docs/policy.md).
    pub workloads: Option<PathBuf>,
    /// Files or directories of the policies in force (for example `kubectl get
    /// authorizationpolicies -A -o yaml`, refreshed into a ConfigMap): shadow mode judges each
    /// candidate together with them, and drift counts their rules' use.
    pub in_force: Vec<PathBuf>,
    pub shadow: ShadowConfig,
    pub drift: DriftConfig,
    pub learn: LearnConfig,
}

/// Live learning: the allowed edges of live traffic, proposed as policies on request
/// (`verity policy learn --live`, admin API `GET /policies/learned`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LearnConfig {
    pub enabled: bool,
}

/// Live drift: the policies in force (`policy.in_force`) evaluated on traffic, rule by rule.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    pub enabled: bool,
    /// Read the policies in force from the cluster (every namespace, through `control.istio`'s
    /// Kubernetes access) instead of `policy.in_force`, every `refresh_secs`.
    pub from_cluster: bool,
    pub refresh_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowConfig {
    pub enabled: bool,
    /// Files or directories of candidate AuthorizationPolicies.
    pub candidates: Vec<PathBuf>,
    /// A candidate is violated while it would have denied a legitimate request in this much
    /// event time, and unknown when it saw no traffic in it.
    pub window_secs: u64,
    /// Apply every candidate to the cluster as dry-run (needs `control.istio`).
    pub stage: bool,
    /// Promote a staged candidate (remove the dry-run annotation) once it has held this long
    /// in event time; 0: only on `verity policy promote`.
    pub promote_after_secs: u64,
    /// Put a promoted candidate back into dry-run when it is violated.
    pub demote_on_violation: bool,
}

impl PolicyConfig {
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let ns = &self.root_namespace;
        let dns_label = !ns.is_empty()
            && ns.len() <= 63
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !dns_label {
            errors.push(ConfigError::new(
                "policy.root_namespace",
                format!("{ns:?} is not a namespace name"),
            ));
        }
        if self.shadow.enabled && self.shadow.candidates.is_empty() {
            errors.push(ConfigError::new(
                "policy.shadow.candidates",
                "shadow mode needs at least one file or directory of candidate policies",
            ));
        }
        if self.drift.enabled && self.in_force.is_empty() && !self.drift.from_cluster {
            errors.push(ConfigError::new(
                "policy.in_force",
                "drift needs the policies in force: files or directories here, or policy.drift.from_cluster",
            ));
        }
        if self.shadow.promote_after_secs > 0 && !self.shadow.stage {
            errors.push(ConfigError::new(
                "policy.shadow.promote_after_secs",
                "promotion needs policy.shadow.stage: true",
            ));
        }
        if !(1..=86_400).contains(&self.drift.refresh_secs) {
            errors.push(ConfigError::new(
                "policy.drift.refresh_secs",
                "must be between 1 and 86400",
            ));
        }
        if !(60..=30 * 86_400).contains(&self.shadow.window_secs) {
            errors.push(ConfigError::new(
                "policy.shadow.window_secs",
                "must be between 60 and 2592000",
            ));
        }
        errors
    }
}
