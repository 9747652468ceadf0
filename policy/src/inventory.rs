//! Which workloads exist and which labels their pods carry: what a policy's `selector` is
//! matched against, since access logs name a workload (or a pod, or only a service) but never
//! its labels.
//!
//! Read from `kubectl get pods,deployments,services -A -o yaml` (a `List`, or any mix of
//! `Pod`, `Deployment`, `StatefulSet`, `DaemonSet` and `Service` documents), or from Verity's
//! own short form:
//!
//! ```yaml
//! workloads:
//!   - {namespace: foo, name: httpbin, labels: {app: httpbin, version: v1}}
//! services:
//!   - {namespace: foo, name: httpbin, selector: {app: httpbin}}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Every label set seen (one per pod or workload template).
    label_sets: Vec<Labels>,
    /// namespace → pod or workload name → indexes into `label_sets`.
    names: HashMap<String, HashMap<String, Vec<usize>>>,
    /// namespace → indexes of every label set in it.
    in_namespace: HashMap<String, Vec<usize>>,
    /// namespace → service name → its pod selector.
    services: HashMap<String, HashMap<String, Labels>>,
    /// namespace → pod name → the workload it belongs to.
    pod_workloads: HashMap<String, HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShortForm {
    #[serde(default)]
    workloads: Vec<ShortWorkload>,
    #[serde(default)]
    services: Vec<ShortService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShortWorkload {
    namespace: String,
    name: String,
    #[serde(default)]
    labels: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShortService {
    namespace: String,
    name: String,
    #[serde(default)]
    selector: Labels,
}

/// Why an inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// How a selector relates to a request's destination.
fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Inventory {
    pub fn read(path: &Path) -> Result<Inventory, InventoryError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Io {
            path: shown.clone(),
            source,
        })?;
        Inventory::parse(&text).map_err(|message| InventoryError::Invalid { path: shown, message })
    }

    /// The inventory in `path`, or an empty one (every selector unknown) without a path.
    pub fn read_optional(path: Option<&Path>) -> Result<Inventory, InventoryError> {
        path.map_or_else(|| Ok(Inventory::default()), Inventory::read)
    }

    pub fn parse(text: &str) -> Result<Inventory, String> {
        let mut inventory = Inventory::default();
        for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(document).map_err(|e| format!("document {}: {e}", i + 1))?;
            if value.is_null() {
                continue;
            }
            if value.get("kind").is_some() {
                inventory.add_object(&value);
            } else {
                let short: ShortForm = serde_yaml::from_value(value).map_err(|e| format!("document {}: {e}", i + 1))?;
                for w in short.workloads {
                    inventory.add_workload(&w.namespace, &[w.name.as_str()], w.labels);
                }
                for s in short.services {
                    inventory.add_service(&s.namespace, &s.name, s.selector);
                }
            }
        }
        Ok(inventory)
    }

    pub fn add_workload(&mut self, namespace: &str, names: &[&str], labels: Labels) {
        let index = self.label_sets.len();
        self.label_sets.push(labels);
        self.in_namespace.entry(namespace.to_string()).or_default().push(index);
        let by_name = self.names.entry(namespace.to_string()).or_default();
        for name in names {
            let entry = by_name.entry((*name).to_string()).or_default();
            if !entry.contains(&index) {
                entry.push(index);
            }
        }
    }

    pub fn add_service(&mut self, namespace: &str, name: &str, selector: Labels) {
        self.services
            .entry(namespace.to_string())
            .or_default()
            .insert(name.to_string(), selector);
    }

    fn add_object(&mut self, value: &Value) {
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
        let metadata = value.get("metadata");
        let field = |v: Option<&Value>, k: &str| v.and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_string);
        let labels_at = |v: Option<&Value>| -> Labels {
            v.and_then(|m| m.get("labels"))
                .and_then(|l| serde_yaml::from_value(l.clone()).ok())
                .unwrap_or_default()
        };
        let name = field(metadata, "name").unwrap_or_default();
        let namespace = field(metadata, "namespace").unwrap_or_else(|| "default".into());
        match kind {
            "List" | "PodList" | "ServiceList" | "DeploymentList" => {
                if let Some(Value::Sequence(items)) = value.get("items") {
                    for item in items {
                        self.add_object(item);
                    }
                }
            }
            "Pod" => {
                let labels = labels_at(metadata);
                let workload = pod_workload(metadata, &labels);
                let names: Vec<&str> = [Some(name.as_str()), workload.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                self.add_workload(&namespace, &names, labels);
                if let Some(w) = workload {
                    self.pod_workloads.entry(namespace).or_default().insert(name, w);
                }
            }
            // ReplicaSets are left out: their templates repeat their Deployment's.
            "Deployment" | "StatefulSet" | "DaemonSet" => {
                let template = value
                    .get("spec")
                    .and_then(|s| s.get("template"))
                    .and_then(|t| t.get("metadata"));
                self.add_workload(&namespace, &[name.as_str()], labels_at(template));
            }
            "Service" => {
                let selector = value
                    .get("spec")
                    .and_then(|s| s.get("selector"))
                    .and_then(|l| serde_yaml::from_value(l.clone()).ok())
                    .unwrap_or_default();
                self.add_service(&namespace, &name, selector);
            }
            _ => {}
        }
    }

    /// The label sets a request's destination may carry: those of the named pod or workload,
    /// else of the pods behind the named service. `None` when the inventory cannot say.
    pub fn destination_labels(
        &self,
        namespace: &str,
        workload: Option<&str>,
        service: Option<&str>,
    ) -> Option<Vec<&Labels>> {
        if let Some(indexes) = workload.and_then(|w| self.names.get(namespace)?.get(w)) {
            return Some(indexes.iter().filter_map(|i| self.label_sets.get(*i)).collect());
        }
        let selector = service.and_then(|s| self.services.get(namespace)?.get(s))?;
        if selector.is_empty() {
            return None;
        }
        let behind: Vec<&Labels> = self
            .in_namespace
            .get(namespace)?
            .iter()
            .filter_map(|i| self.label_sets.get(*i))
            .filter(|labels| selects(selector, labels))
            .collect();
        (!behind.is_empty()).then_some(behind)
    }

    /// Whether `selector` selects the destination: true when it selects every candidate pod,
    /// false when none, unknown when some or when the destination is not in the inventory.
    pub fn selects(
        &self,
        selector: &Labels,
        namespace: &str,
        workload: Option<&str>,
        service: Option<&str>,
    ) -> Option<bool> {
        // Counted without collecting: this runs per request and selector policy.
        let (mut total, mut matching) = (0usize, 0usize);
        let mut count = |labels: &Labels| {
            total += 1;
            matching += usize::from(selects(selector, labels));
        };
        if let Some(indexes) = workload.and_then(|w| self.names.get(namespace)?.get(w)) {
            indexes
                .iter()
                .filter_map(|i| self.label_sets.get(*i))
                .for_each(&mut count);
        } else {
            let behind = service
                .and_then(|s| self.services.get(namespace)?.get(s))
                .filter(|s| !s.is_empty())?;
            self.in_namespace
                .get(namespace)?
                .iter()
                .filter_map(|i| self.label_sets.get(*i))
                .filter(|labels| selects(behind, labels))
                .for_each(&mut count);
        }
        match matching {
            _ if total == 0 => None,
            0 => Some(false),
            n if n == total => Some(true),
            _ => None,
        }
    }

    /// The labels of a named workload (or pod), when the inventory knows exactly one set.
    pub fn labels_of(&self, namespace: &str, workload: &str) -> Option<&Labels> {
        let indexes = self.names.get(namespace)?.get(workload)?;
        match indexes.as_slice() {
            [i] => self.label_sets.get(*i),
            _ => None,
        }
    }

    /// The selector of a service.
    pub fn service_selector(&self, namespace: &str, service: &str) -> Option<&Labels> {
        self.services.get(namespace)?.get(service).filter(|s| !s.is_empty())
    }

    /// How many workloads (pods or templates) in `namespace` a selector selects.
    pub fn count_selected(&self, namespace: &str, selector: &Labels) -> usize {
        self.in_namespace.get(namespace).map_or(0, |v| {
            v.iter()
                .filter_map(|i| self.label_sets.get(*i))
                .filter(|l| selects(selector, l))
                .count()
        })
    }

    /// The workload a pod belongs to, when the inventory lists the pod.
    pub fn workload_of(&self, namespace: &str, pod: &str) -> Option<&str> {
        self.pod_workloads.get(namespace)?.get(pod).map(String::as_str)
    }

    /// How many label sets (pods and templates) are registered under a name.
    pub fn count_named(&self, namespace: &str, name: &str) -> usize {
        self.names.get(namespace).and_then(|n| n.get(name)).map_or(0, Vec::len)
    }

    /// Every workload the inventory names (not the pods it knows the workload of), with one of
    /// its label sets.
    pub fn workloads(&self) -> Vec<(&str, &str, &Labels)> {
        let mut out = Vec::new();
        for (ns, names) in &self.names {
            let pods = self.pod_workloads.get(ns);
            for (name, indexes) in names {
                if pods.is_some_and(|p| p.contains_key(name)) {
                    continue;
                }
                if let Some(labels) = indexes.first().and_then(|i| self.label_sets.get(*i)) {
                    out.push((ns.as_str(), name.as_str(), labels));
                }
            }
        }
        out.sort();
        out
    }

    /// Namespaces that hold at least one workload.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.in_namespace.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.label_sets.is_empty() && self.services.is_empty()
    }
}

/// The workload a pod belongs to, named as Istio's telemetry names it: the Deployment of its
/// ReplicaSet (the ReplicaSet name without the pod-template hash), or the owning StatefulSet,
/// DaemonSet or Job.
fn pod_workload(metadata: Option<&Value>, labels: &Labels) -> Option<String> {
    let owners = metadata?.get("ownerReferences")?.as_sequence()?;
    let owner = owners
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool).unwrap_or(true))?;
    let kind = owner.get("kind")?.as_str()?;
    let name = owner.get("name")?.as_str()?;
    if kind == "ReplicaSet"
        && let Some(hash) = labels.get("pod-template-hash")
        && let Some(deployment) = name.strip_suffix(hash.as_str()).and_then(|n| n.strip_suffix('-'))
    {
        return Some(deployment.to_string());
    }
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_resolve_to_their_deployment() {
        let inventory = Inventory::parse(
            r#"
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata:
      name: httpbin-5b8c-x7k2p
      namespace: foo
      labels: {app: httpbin, version: v1, pod-template-hash: 5b8c}
      ownerReferences: [{kind: ReplicaSet, name: httpbin-5b8c, controller: true}]
  - apiVersion: v1
    kind: Service
    metadata: {name: httpbin, namespace: foo}
    spec: {selector: {app: httpbin}}
"#,
        )
        .expect("valid");
        let app = Labels::from([("app".to_string(), "httpbin".to_string())]);
        let other = Labels::from([("app".to_string(), "other".to_string())]);
        assert_eq!(inventory.selects(&app, "foo", Some("httpbin"), None), Some(true));
        assert_eq!(
            inventory.selects(&app, "foo", Some("httpbin-5b8c-x7k2p"), None),
            Some(true)
        );
        assert_eq!(inventory.selects(&other, "foo", None, Some("httpbin")), Some(false));
        assert_eq!(inventory.selects(&app, "foo", Some("unknown"), None), None);
        assert_eq!(inventory.selects(&app, "bar", Some("httpbin"), None), None);
    }

    #[test]
    fn short_form_is_strict() {
        assert!(Inventory::parse("workloads: [{namespace: a, name: b, labels: {app: b}}]").is_ok());
        assert!(Inventory::parse("workloads: [{namespace: a, nmae: b}]").is_err());
    }
}
