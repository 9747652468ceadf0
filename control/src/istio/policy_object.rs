//! The `AuthorizationPolicy` object Verity writes for a revocation: its deterministic name and
//! namespace, the labels that mark it as Verity's and the annotations that explain it.

use std::collections::BTreeMap;

use kube::api::ApiResource;
use serde_json::{Value, json};

use crate::config::{IstioConfig, Scope, is_dns_label};
use crate::{Mode, Revocation};

/// Istio's API group for security policies.
pub const GROUP: &str = "security.istio.io";
/// The label every policy Verity manages carries (the Kubernetes recommended label).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The label naming which Verity instance (its field manager) owns a policy.
pub const OWNER_LABEL: &str = "verity.dev/owner";
/// The label with the revocation id.
pub const REVOCATION_LABEL: &str = "verity.dev/revocation";
/// Istio's annotation that turns a policy into a dry run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

impl IstioConfig {
    pub(super) fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: GROUP.into(),
            version: self.api_version.clone(),
            api_version: format!("{GROUP}/{}", self.api_version),
            kind: "AuthorizationPolicy".into(),
            plural: "authorizationpolicies".into(),
        }
    }

    pub(super) fn selector(&self) -> String {
        format!("{MANAGED_BY}=verity,{OWNER_LABEL}={}", self.field_manager)
    }
}

/// One policy as Verity wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub object: Value,
}

/// The `AuthorizationPolicy` for a revocation.
pub fn policy(r: &Revocation, cfg: &IstioConfig) -> Policy {
    let namespace = match (cfg.scope, &r.namespace) {
        (Scope::Destination, Some(ns)) if is_dns_label(ns) => ns.clone(),
        _ => cfg.root_namespace.clone(),
    };
    let hash = verity_model::alert::fnv1a(&[&cfg.field_manager, &r.kind, &r.principal, &namespace]);
    let name = format!("verity-revoke-{hash:016x}");
    let source = if r.kind == "request_principal" {
        json!({"requestPrincipals": [r.principal]})
    } else {
        json!({"principals": [r.principal]})
    };
    let mut annotations = BTreeMap::new();
    annotations.insert("verity.dev/revocation-id", r.id.clone());
    annotations.insert("verity.dev/principal", r.principal.clone());
    annotations.insert("verity.dev/reason", r.reason.clone());
    annotations.insert(
        "verity.dev/expires",
        verity_model::time::format_rfc3339_ns(r.expires_ns),
    );
    if let Some(a) = &r.alert_id {
        annotations.insert("verity.dev/alert-id", a.clone());
    }
    if let Some(rule) = &r.rule_id {
        annotations.insert("verity.dev/rule-id", rule.clone());
    }
    if r.mode == Mode::DryRun {
        annotations.insert(DRY_RUN_ANNOTATION, "true".into());
    }
    let object = json!({
        "apiVersion": format!("{GROUP}/{}", cfg.api_version),
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                MANAGED_BY: "verity",
                OWNER_LABEL: cfg.field_manager,
                REVOCATION_LABEL: r.id,
            },
            "annotations": annotations,
        },
        "spec": {
            "action": "DENY",
            "rules": [{"from": [{"source": source}]}],
        },
    });
    Policy {
        namespace,
        name,
        object,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(kind: &str, principal: &str, mode: Mode, ns: Option<&str>) -> Revocation {
        Revocation {
            id: "rev-0123456789abcdef".into(),
            kind: kind.into(),
            principal: principal.into(),
            reason: "RBAC denial burst".into(),
            alert_id: Some("zt-rbac-denial-burst-01".into()),
            rule_id: Some("zt-rbac-denial-burst".into()),
            namespace: ns.map(str::to_string),
            mode,
            created_ns: 0,
            expires_ns: 3_600_000_000_000,
            applied_ns: None,
            state: crate::State::Pending,
            results: BTreeMap::new(),
        }
    }

    #[test]
    fn policy_shape_names_and_scope() {
        let cfg = IstioConfig::default();
        let p = policy(
            &rev("principal", "cluster.local/ns/shop/sa/cart", Mode::Enforce, Some("pay")),
            &cfg,
        );
        assert_eq!(p.namespace, "istio-system", "mesh scope uses the root namespace");
        assert!(p.name.starts_with("verity-revoke-") && p.name.len() == "verity-revoke-".len() + 16);
        assert_eq!(p.object["spec"]["action"], "DENY");
        assert_eq!(
            p.object["spec"]["rules"][0]["from"][0]["source"]["principals"][0],
            "cluster.local/ns/shop/sa/cart"
        );
        assert_eq!(p.object["metadata"]["labels"][MANAGED_BY], "verity");
        assert_eq!(
            p.object["metadata"]["annotations"]["verity.dev/alert-id"],
            "zt-rbac-denial-burst-01"
        );
        assert_eq!(
            p.object["metadata"]["annotations"]["verity.dev/expires"],
            "1970-01-01T01:00:00.000000000Z"
        );
        assert!(p.object["metadata"]["annotations"].get(DRY_RUN_ANNOTATION).is_none());
        // Deterministic.
        let again = policy(
            &rev("principal", "cluster.local/ns/shop/sa/cart", Mode::Enforce, Some("pay")),
            &cfg,
        );
        assert_eq!(p.name, again.name);

        let cfg = IstioConfig {
            scope: Scope::Destination,
            ..IstioConfig::default()
        };
        let p = policy(
            &rev(
                "request_principal",
                "https://idp.example/alice",
                Mode::DryRun,
                Some("pay"),
            ),
            &cfg,
        );
        assert_eq!(p.namespace, "pay");
        assert_eq!(
            p.object["spec"]["rules"][0]["from"][0]["source"]["requestPrincipals"][0],
            "https://idp.example/alice"
        );
        assert_eq!(p.object["metadata"]["annotations"][DRY_RUN_ANNOTATION], "true");
        let p = policy(&rev("principal", "x", Mode::Enforce, None), &cfg);
        assert_eq!(p.namespace, "istio-system", "no destination namespace: mesh-wide");
    }
}
