//! Which requests a policy applies to: the workloads it selects (mesh-wide from the root
//! namespace, namespace-wide, by `selector`) or the Services and Gateways its `targetRefs`
//! attach it to, and which proxy enforces each.

use crate::event_view::{Enforcer, EventView, cell};
use crate::inventory::{Inventory, Labels};
use crate::object::AuthorizationPolicy;

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Every workload in the mesh: the root namespace, no selector.
    Mesh,
    /// Every workload of one namespace.
    Namespace(String),
    /// Workloads whose labels match, in one namespace (or every one, from the root namespace).
    Selector { namespace: Option<String>, labels: Labels },
    /// Attached to Services or Gateways: enforced by waypoints.
    Refs {
        namespace: String,
        services: Vec<String>,
        gateways: bool,
    },
}

impl Target {
    pub fn of(policy: &AuthorizationPolicy, root_namespace: &str) -> Result<Target, String> {
        let namespace = policy
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| "metadata.namespace is missing (a policy applies in its namespace)".to_string())?;
        let spec = &policy.spec;
        let refs: Vec<_> = spec.target_ref.iter().chain(spec.target_refs.iter()).collect();
        let has_selector = spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
        if !refs.is_empty() {
            if spec.selector.is_some() {
                return Err("only one of selector and targetRefs may be set".into());
            }
            let mut services = Vec::new();
            let mut gateways = false;
            for r in refs {
                if r.namespace.as_deref().is_some_and(|n| !n.is_empty() && n != namespace) {
                    return Err(format!(
                        "targetRef {}: cross-namespace references are not supported",
                        r.name
                    ));
                }
                match (r.group.as_str(), r.kind.as_str()) {
                    ("" | "core", "Service") => services.push(r.name.clone()),
                    ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
                    | ("networking.istio.io", "ServiceEntry") => gateways = true,
                    (group, kind) => {
                        return Err(format!("targetRef kind {kind:?} in group {group:?} is not supported"));
                    }
                }
            }
            return Ok(Target::Refs {
                namespace,
                services,
                gateways,
            });
        }
        let root = namespace == root_namespace;
        Ok(match (has_selector, root) {
            (false, true) => Target::Mesh,
            (false, false) => Target::Namespace(namespace),
            (true, _) => Target::Selector {
                namespace: (!root).then_some(namespace),
                labels: spec
                    .selector
                    .as_ref()
                    .map(|s| s.match_labels.clone())
                    .unwrap_or_default(),
            },
        })
    }

    /// Whether the policy selects a workload with these labels in `namespace` (for workloads
    /// known from an inventory, not from traffic). Waypoint-attached policies select none.
    pub fn selects_workload(&self, namespace: &str, labels: &Labels) -> bool {
        match self {
            Target::Mesh => true,
            Target::Namespace(ns) => ns == namespace,
            Target::Selector {
                namespace: ns,
                labels: selector,
            } => {
                ns.as_deref().is_none_or(|ns| ns == namespace) && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            }
            Target::Refs { .. } => false,
        }
    }

    /// Whether the policy applies to a request that `enforcer` judged, going to `destination`
    /// (unknown when the destination or its labels are not known).
    pub fn applies(&self, enforcer: Enforcer, destination: &Destination<'_>, inventory: &Inventory) -> Option<bool> {
        match self {
            Target::Refs {
                namespace,
                services,
                gateways,
            } => {
                if enforcer != Enforcer::Waypoint {
                    return Some(false);
                }
                let service = destination.service.zip(destination.service_namespace);
                let named = service.is_some_and(|(s, ns)| ns == namespace && services.iter().any(|x| x == s));
                match (named, *gateways, service.is_some()) {
                    (true, _, _) => Some(true),
                    // Which waypoint or gateway carried the request is not in the record.
                    (false, true, _) | (false, false, false) => None,
                    (false, false, true) => Some(false),
                }
            }
            _ if !matches!(enforcer, Enforcer::Sidecar | Enforcer::Ztunnel) => Some(false),
            Target::Mesh => Some(true),
            Target::Namespace(ns) => destination.namespace.map(|d| d == ns),
            Target::Selector { namespace, labels } => {
                let dest_ns = destination.namespace?;
                if namespace.as_deref().is_some_and(|ns| ns != dest_ns) {
                    return Some(false);
                }
                let service = destination
                    .service
                    .filter(|_| destination.service_namespace == Some(dest_ns));
                inventory.selects(labels, dest_ns, destination.workload, service)
            }
        }
    }
}

/// Where a request went, as far as its record says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Destination<'a> {
    pub namespace: Option<&'a str>,
    pub workload: Option<&'a str>,
    /// The service's short name and namespace, from `name.namespace.svc…`.
    pub service: Option<&'a str>,
    pub service_namespace: Option<&'a str>,
}

impl<'a> Destination<'a> {
    pub fn of(view: &EventView<'a>, row: usize) -> Self {
        let (service, service_namespace) = match cell(view.destination_service, row) {
            Some(fqdn) => {
                let mut labels = fqdn.split('.');
                let name = labels.next();
                let ns = labels.next();
                if labels.next() == Some("svc") {
                    (name, ns)
                } else {
                    (None, None)
                }
            }
            None => (None, None),
        };
        Destination {
            namespace: cell(view.destination_namespace, row).or(service_namespace),
            workload: cell(view.destination_workload, row),
            service,
            service_namespace,
        }
    }
}
