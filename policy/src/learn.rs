//! `verity policy learn`: the edges the mesh really allowed, per destination workload, turned
//! into proposed ALLOW policies with their evidence.
//!
//! What is learned: for each destination (a workload behind a sidecar or ztunnel, or a service
//! behind a waypoint), each source principal that reached it with an allowed request, with
//! the methods, ports and paths it used, request counts and first/last seen. Only requests
//! recorded where policies are enforced count (the destination side), and only mTLS peers can
//! be named in a policy: plaintext requests, requests whose peer identity was not logged and
//! edges below the request threshold are left out, and listed.
//!
//! Paths are generalized conservatively: up to `max_paths` distinct paths per source, method
//! and port are kept exact; above that they are cut to the deepest prefix depth that leaves at
//! most `max_paths` prefixes (never above the first segment, so `/api/*` at the broadest, never
//! `*`). Destinations seen through ztunnel get L4 rules only (ztunnel would drop an ALLOW rule
//! with methods or paths).

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{AsArray, RecordBatch};
use serde::Serialize;
use verity_model::event::col;

use crate::evaluate::{Observed, observed};
use crate::event_view::{Enforcer, EventView, Seen, TextAttr, cell};
use crate::inventory::{Inventory, Labels};
use crate::object::{
    Action, AuthorizationPolicy, From, Metadata, Operation, Rule, Selector, Source, Spec, TargetRef, To,
};
use crate::pattern::normalize_path;
use crate::target::Destination;

/// Distinct paths remembered per source, method and port; beyond, only first segments.
const MAX_REMEMBERED_PATHS: usize = 4096;
/// Destinations remembered; requests to further ones are counted and left out. Learning runs
/// on live traffic too, so what it keeps is bounded whatever a sender writes.
pub const MAX_DESTINATIONS: usize = 10_000;
/// Source principals remembered per destination.
pub const MAX_SOURCES: usize = 1_000;

#[derive(Debug, Clone)]
pub struct LearnSettings {
    /// Edges with fewer allowed requests are left out (noise).
    pub min_requests: u64,
    /// Distinct paths per source, method and port kept exact.
    pub max_paths: usize,
    /// Write the proposals with Istio's dry-run annotation, so applying them stages them.
    pub dry_run: bool,
}

impl Default for LearnSettings {
    fn default() -> Self {
        Self {
            min_requests: 1,
            max_paths: 8,
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DestinationKey {
    namespace: String,
    /// The workload name, or the service name when the records name only the service.
    name: String,
    /// The records name only the destination service (its selector selects the pods).
    by_service: bool,
    via_waypoint: bool,
}

#[derive(Debug, Default)]
struct DestinationEdges {
    l4_only: bool,
    /// Allowed requests from sources past [`MAX_SOURCES`].
    dropped_sources: u64,
    sources: BTreeMap<String, SourceEdge>,
    plaintext: u64,
    unknown_peer: u64,
}

#[derive(Debug, Default)]
struct SourceEdge {
    requests: u64,
    first_ns: i64,
    last_ns: i64,
    /// (method, port) → path → requests.
    operations: BTreeMap<(Option<String>, Option<i32>), PathSet>,
}

#[derive(Debug, Default)]
struct PathSet {
    paths: BTreeMap<String, u64>,
    /// More distinct paths than remembered: the first-segment prefixes of the rest.
    overflow: BTreeSet<String>,
    /// Requests whose path could not be kept: one segment past the bound, or a path a policy
    /// cannot state exactly (`*`, `{`, `}` in it). The proposal would deny them.
    dropped: u64,
}

/// Segments of a path (`/a/b` has two; `/` has none).
fn depth_of(path: &str) -> usize {
    path.split('/').filter(|s| !s.is_empty()).count()
}

/// What was observed, ready to turn into policies.
#[derive(Debug, Default)]
pub struct Learner {
    destinations: BTreeMap<DestinationKey, DestinationEdges>,
    /// Allowed requests at enforcement points.
    pub allowed: u64,
    /// Records not at an enforcement point, or not allowed.
    pub skipped: u64,
    /// Enforcement-point records whose destination is not known.
    pub unknown_destination: u64,
    /// Records their sender was not a party to (forgeries): never learned from.
    pub forged: u64,
    /// Allowed requests to destinations past [`MAX_DESTINATIONS`].
    pub dropped_destinations: u64,
}

/// What a proposal left out and why, for the user to review.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct LearnReport {
    pub policies: usize,
    pub rules: usize,
    pub allowed_requests: u64,
    pub left_out: Vec<String>,
    /// Selectors written from a naming convention because no inventory lists the workload.
    pub assumed_selectors: Vec<String>,
}

/// The workload a record names: the pod's workload from the inventory, the name itself when
/// the inventory lists it as a workload, else the pod-name convention.
fn destination_workload<'a>(inventory: &'a Inventory, namespace: &str, name: &'a str) -> &'a str {
    match inventory.workload_of(namespace, name) {
        Some(w) => w,
        None if inventory.count_named(namespace, name) > 0 => name,
        None => workload_from_pod(name),
    }
}

/// A pod name's workload when no inventory says: a Deployment's pod is
/// `<deployment>-<template hash>-<5 characters>`, both drawn from the characters Kubernetes
/// uses for generated names (no vowels, no 0, 1 or 3).
fn workload_from_pod(name: &str) -> &str {
    let mut parts = name.rsplitn(3, '-');
    let (Some(last), Some(hash), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return name;
    };
    const GENERATED: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let alnum = |s: &str| s.bytes().all(|b| GENERATED.contains(&b));
    if last.len() == 5 && alnum(last) && (6..=10).contains(&hash.len()) && alnum(hash) {
        rest
    } else {
        name
    }
}

impl Learner {
    pub fn add(&mut self, batch: &RecordBatch, inventory: &Inventory) {
        let view = EventView::new(batch);
        let method = batch.column_by_name(col::METHOD).and_then(|c| c.as_string_opt::<i32>());
        let path = batch.column_by_name(col::PATH).and_then(|c| c.as_string_opt::<i32>());
        for row in 0..view.rows() {
            if view.forged(row) {
                self.forged += 1;
                continue;
            }
            let enforcer = view.enforcer(row);
            if enforcer == Enforcer::Elsewhere || observed(&view, row) != Observed::Allowed {
                self.skipped += 1;
                continue;
            }
            self.allowed += 1;
            let d = Destination::of(&view, row);
            let key = match (enforcer, d.namespace) {
                (Enforcer::Waypoint, _) => d.service.zip(d.service_namespace).map(|(s, ns)| DestinationKey {
                    namespace: ns.to_string(),
                    name: s.to_string(),
                    by_service: true,
                    via_waypoint: true,
                }),
                (_, Some(ns)) => match d.workload {
                    Some(w) => Some(DestinationKey {
                        namespace: ns.to_string(),
                        name: destination_workload(inventory, ns, w).to_string(),
                        by_service: false,
                        via_waypoint: false,
                    }),
                    None => d.service.map(|s| DestinationKey {
                        namespace: ns.to_string(),
                        name: s.to_string(),
                        by_service: true,
                        via_waypoint: false,
                    }),
                },
                _ => None,
            };
            let Some(key) = key else {
                self.unknown_destination += 1;
                continue;
            };
            if self.destinations.len() >= MAX_DESTINATIONS && !self.destinations.contains_key(&key) {
                self.dropped_destinations += 1;
                continue;
            }
            let edges = self.destinations.entry(key).or_default();
            edges.l4_only |= enforcer == Enforcer::Ztunnel;
            let principal = match view.text(TextAttr::Principal, row) {
                Seen::Value(p) => p,
                Seen::Absent => {
                    edges.plaintext += 1;
                    continue;
                }
                Seen::Unknown => {
                    edges.unknown_peer += 1;
                    continue;
                }
            };
            let time = view.event_time_ns(row).unwrap_or(0);
            if edges.sources.len() >= MAX_SOURCES && !edges.sources.contains_key(principal) {
                edges.dropped_sources += 1;
                continue;
            }
            let edge = edges.sources.entry(principal.to_string()).or_default();
            if edge.requests == 0 || time < edge.first_ns {
                edge.first_ns = time;
            }
            edge.last_ns = edge.last_ns.max(time);
            edge.requests += 1;
            let http = view.is_http(row) == Some(true) && enforcer != Enforcer::Ztunnel;
            let m = if http {
                cell(method, row).map(str::to_string)
            } else {
                None
            };
            let paths = edge.operations.entry((m, view.destination_port(row))).or_default();
            if let Some(p) = cell(path, row).filter(|_| http) {
                let p = normalize_path(p.split(['?', '#']).next().unwrap_or(p));
                if let Some(n) = paths.paths.get_mut(p.as_ref()) {
                    *n += 1;
                } else if p.contains(['*', '{', '}']) {
                    // Istio reads these as wildcards or templates: no policy names this path.
                    paths.dropped += 1;
                } else if paths.paths.len() < MAX_REMEMBERED_PATHS {
                    paths.paths.insert(p.into_owned(), 1);
                } else if depth_of(&p) > 1 && paths.overflow.len() < MAX_REMEMBERED_PATHS {
                    paths.overflow.insert(prefix(&p, 1));
                } else {
                    paths.dropped += 1;
                }
            }
        }
    }

    /// The proposed policies, one per destination, and what was left out.
    pub fn propose(&self, inventory: &Inventory, settings: &LearnSettings) -> (Vec<AuthorizationPolicy>, LearnReport) {
        let mut report = LearnReport {
            allowed_requests: self.allowed,
            ..LearnReport::default()
        };
        let mut policies = Vec::new();
        if self.forged > 0 {
            report.left_out.push(format!(
                "{} records their authenticated sender was not a party to (forgeries; see verity_intake metrics)",
                self.forged
            ));
        }
        if self.dropped_destinations > 0 {
            report.left_out.push(format!(
                "{} allowed requests to destinations past the first {MAX_DESTINATIONS}",
                self.dropped_destinations
            ));
        }
        if self.unknown_destination > 0 {
            report.left_out.push(format!(
                "{} allowed requests whose destination the records do not name",
                self.unknown_destination
            ));
        }
        for (key, edges) in &self.destinations {
            let who = format!("{}/{}", key.namespace, key.name);
            if edges.plaintext > 0 {
                report.left_out.push(format!(
                    "{who}: {} plaintext requests (no peer identity to allow; see PeerAuthentication)",
                    edges.plaintext
                ));
            }
            if edges.dropped_sources > 0 {
                report.left_out.push(format!(
                    "{who}: {} allowed requests from sources past the first {MAX_SOURCES}",
                    edges.dropped_sources
                ));
            }
            if edges.unknown_peer > 0 {
                report.left_out.push(format!("{who}: {} requests whose peer identity was not logged (add %DOWNSTREAM_PEER_URI_SAN% to the access log format)", edges.unknown_peer));
            }
            let mut rules = Vec::new();
            let mut evidence = BTreeMap::new();
            for (principal, edge) in &edges.sources {
                if edge.requests < settings.min_requests {
                    report.left_out.push(format!(
                        "{who}: {principal}: {} requests, below the threshold of {}",
                        edge.requests, settings.min_requests
                    ));
                    continue;
                }
                evidence.insert(
                    format!("verity.dev/rule-{}", rules.len()),
                    format!(
                        "{principal}: {} allowed requests, first {}, last {}",
                        edge.requests,
                        verity_model::time::format_rfc3339_ns(edge.first_ns),
                        verity_model::time::format_rfc3339_ns(edge.last_ns)
                    ),
                );
                let dropped: u64 = edge.operations.values().map(|p| p.dropped).sum();
                if dropped > 0 {
                    report.left_out.push(format!(
                        "{who}: {principal}: {dropped} requests whose path the proposal cannot allow (a path with `*`, `{{` or `}}`, or past {MAX_REMEMBERED_PATHS} distinct paths): review before applying"
                    ));
                }
                rules.push(rule_for(principal, edge, edges.l4_only, settings));
            }
            if rules.is_empty() {
                report.left_out.push(format!(
                    "{who}: no edge to propose (no policy written: an ALLOW policy without rules would deny everything)"
                ));
                continue;
            }
            let (selector, target_refs) = if key.via_waypoint {
                (
                    None,
                    vec![TargetRef {
                        group: String::new(),
                        kind: "Service".into(),
                        name: key.name.clone(),
                        namespace: None,
                    }],
                )
            } else {
                let by_service = key
                    .by_service
                    .then(|| inventory.service_selector(&key.namespace, &key.name))
                    .flatten();
                let (labels, assumed) = match by_service {
                    Some(selector) => (selector.clone(), false),
                    None => selector_for(inventory, &key.namespace, &key.name),
                };
                if assumed {
                    report.assumed_selectors.push(format!(
                        "{who}: app={} (no inventory entry; check the workload's labels)",
                        key.name
                    ));
                }
                (Some(Selector { match_labels: labels }), Vec::new())
            };
            let total: u64 = edges.sources.values().map(|e| e.requests).sum();
            let mut annotations = evidence;
            annotations.insert("verity.dev/learned-requests".into(), total.to_string());
            if settings.dry_run {
                annotations.insert(crate::object::DRY_RUN_ANNOTATION.into(), "true".into());
            }
            if edges.l4_only {
                annotations.insert(
                    "verity.dev/l4-only".into(),
                    "true: enforced by ztunnel, so no methods or paths".into(),
                );
            }
            report.rules += rules.len();
            policies.push(AuthorizationPolicy {
                api_version: "security.istio.io/v1".into(),
                kind: "AuthorizationPolicy".into(),
                metadata: Metadata {
                    name: policy_name(&key.name),
                    namespace: Some(key.namespace.clone()),
                    labels: BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "verity".to_string())]),
                    annotations,
                },
                spec: Spec {
                    selector,
                    target_ref: None,
                    target_refs,
                    action: Action::Allow,
                    provider: None,
                    rules: Some(rules),
                },
            });
        }
        report.policies = policies.len();
        (policies, report)
    }
}

fn policy_name(workload: &str) -> String {
    let mut name: String = format!("verity-allow-{workload}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while name.ends_with('-') {
        name.pop();
    }
    name
}

/// The narrowest-to-read selector that selects exactly the workload's pods: `app`, then
/// `app` and `version`, then all its stable labels. Without an inventory entry, `app: <name>`,
/// flagged as assumed.
fn selector_for(inventory: &Inventory, namespace: &str, workload: &str) -> (Labels, bool) {
    if let Some(labels) = inventory.labels_of(namespace, workload).or_else(|| {
        // A workload registered from its pods holds several identical sets; any will do.
        inventory
            .destination_labels(namespace, Some(workload), None)
            .and_then(|v| v.first().copied())
    }) {
        let own = inventory.count_named(namespace, workload);
        let pick = |keys: &[&str]| -> Option<Labels> {
            let sel: Labels = keys
                .iter()
                .filter_map(|k| labels.get(*k).map(|v| ((*k).to_string(), v.clone())))
                .collect();
            (sel.len() == keys.len() && inventory.count_selected(namespace, &sel) == own).then_some(sel)
        };
        let volatile = [
            "pod-template-hash",
            "controller-revision-hash",
            "statefulset.kubernetes.io/pod-name",
            "pod-template-generation",
        ];
        let stable: Labels = labels
            .iter()
            .filter(|(k, _)| !volatile.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(sel) = pick(&["app"]).or_else(|| pick(&["app", "version"])) {
            return (sel, false);
        }
        if !stable.is_empty() && inventory.count_selected(namespace, &stable) == own {
            return (stable, false);
        }
    }
    (Labels::from([("app".to_string(), workload.to_string())]), true)
}

/// The first `depth` segments of a path as a prefix pattern (`/a/b/*`).
fn prefix(path: &str, depth: usize) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).take(depth).collect();
    format!("/{}/*", segments.join("/"))
}

fn generalize(paths: &PathSet, max_paths: usize) -> Vec<String> {
    if paths.overflow.is_empty() && paths.paths.len() <= max_paths {
        return paths.paths.keys().cloned().collect();
    }
    // Paths with at most `depth` segments stay exact; deeper ones become prefixes at `depth`:
    // the deepest depth that leaves at most `max_paths`, never above the first segment.
    let cut = |depth: usize| -> BTreeSet<String> {
        paths
            .paths
            .keys()
            .map(|p| {
                if depth_of(p) > depth {
                    prefix(p, depth)
                } else {
                    p.clone()
                }
            })
            .collect()
    };
    let deepest = paths.paths.keys().map(|p| depth_of(p)).max().unwrap_or(1).max(1);
    let mut set = (1..deepest)
        .rev()
        .map(cut)
        .find(|set| set.len() <= max_paths)
        .unwrap_or_else(|| cut(1));
    set.extend(paths.overflow.iter().cloned());
    set.into_iter().collect()
}

fn rule_for(principal: &str, edge: &SourceEdge, l4_only: bool, settings: &LearnSettings) -> Rule {
    let mut to = Vec::new();
    if l4_only {
        let ports: BTreeSet<i32> = edge.operations.keys().filter_map(|(_, p)| *p).collect();
        if !ports.is_empty() {
            to.push(To {
                operation: Operation {
                    ports: ports.iter().map(ToString::to_string).collect(),
                    ..Operation::default()
                },
            });
        }
    } else {
        for ((method, port), paths) in &edge.operations {
            let operation = Operation {
                methods: method.iter().cloned().collect(),
                ports: port.iter().map(ToString::to_string).collect(),
                paths: generalize(paths, settings.max_paths),
                ..Operation::default()
            };
            to.push(To { operation });
        }
    }
    Rule {
        from: vec![From {
            source: Source {
                principals: vec![principal.to_string()],
                ..Source::default()
            },
        }],
        to,
        when: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_lose_their_hashes() {
        assert_eq!(workload_from_pod("productpage-v1-87d54dd59-fn6vw"), "productpage-v1");
        // Words that only look like hashes keep their name (vowels never appear in hashes).
        assert_eq!(workload_from_pod("payment-gateway-proxy"), "payment-gateway-proxy");
        assert_eq!(workload_from_pod("httpbin"), "httpbin");
        assert_eq!(workload_from_pod("a-b-c"), "a-b-c");
    }

    #[test]
    fn paths_generalize_to_prefixes_only_when_many() {
        let mut set = PathSet::default();
        for p in ["/api/v1/users/1", "/api/v1/users/2", "/health"] {
            set.paths.insert(p.into(), 1);
        }
        assert_eq!(
            generalize(&set, 8),
            vec!["/api/v1/users/1", "/api/v1/users/2", "/health"]
        );
        for i in 0..20 {
            set.paths.insert(format!("/api/v1/orders/{i}"), 1);
        }
        assert_eq!(
            generalize(&set, 8),
            vec!["/api/v1/orders/*", "/api/v1/users/*", "/health"]
        );
        assert_eq!(generalize(&set, 2), vec!["/api/v1/*", "/health"]);
        // Never broader than the first segment, even above the limit.
        assert_eq!(generalize(&set, 1), vec!["/api/*", "/health"]);
    }

    #[test]
    fn single_segment_paths_stay_exact_whatever_their_number() {
        let mut set = PathSet::default();
        for i in 0..20 {
            set.paths.insert(format!("/p{i}"), 1);
        }
        set.paths.insert("/".into(), 1);
        set.paths.insert("/api/a/b".into(), 1);
        let out = generalize(&set, 8);
        assert!(
            out.contains(&"/".to_string()) && out.contains(&"/p7".to_string()),
            "{out:?}"
        );
        assert!(
            out.contains(&"/api/*".to_string()) && !out.iter().any(|p| p.starts_with("//")),
            "{out:?}"
        );
    }

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(policy_name("Foo_Bar"), "verity-allow-foo-bar");
        assert!(policy_name(&"x".repeat(100)).len() <= 63);
    }
}
