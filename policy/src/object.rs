//! The `AuthorizationPolicy` object (security.istio.io v1 and v1beta1) as Kubernetes serves
//! it, and reading policies from YAML files, multi-document streams and `kubectl get -o yaml`
//! lists.
//!
//! The spec is read strictly: a field Verity does not know would change what the policy
//! means, so it is an error, never ignored. Metadata is read leniently (servers add `uid`,
//! `managedFields` and the like).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Istio's annotation that makes a policy a dry run: evaluated, reported, not enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// `None` (absent) and `Some([])` mean the same: no rule, so the policy matches nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    #[serde(default)]
    pub source: Source,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub operation: Operation,
}

/// Each list is `None` when absent: an absent field does not constrain, an empty one is
/// treated the same way (Istio ignores empty lists).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

impl AuthorizationPolicy {
    /// `namespace/name`, as Istio names a policy in its logs.
    pub fn id(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name
        )
    }

    /// Whether the dry-run annotation holds a true value (Go's `ParseBool`, as Istio reads it:
    /// a value that is neither true nor false leaves the policy enforced).
    pub fn is_dry_run(&self) -> bool {
        self.metadata
            .annotations
            .get(DRY_RUN_ANNOTATION)
            .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
    }
}

/// Why policies could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: document {document}: {message}")]
    Invalid {
        path: PathBuf,
        document: usize,
        message: String,
    },
}

/// Reads every `AuthorizationPolicy` in the given files and directories (`*.yaml`, `*.yml`,
/// `*.json`, not recursing into subdirectories), in path order. Documents of other kinds are
/// skipped and their number returned, so a caller can say so.
pub fn read_paths(paths: &[PathBuf]) -> Result<(Vec<AuthorizationPolicy>, usize), ReadError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| ReadError::Io {
                path: path.clone(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut policies = Vec::new();
    let mut skipped = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|source| ReadError::Io {
            path: file.clone(),
            source,
        })?;
        skipped += parse_documents(&text, file, &mut policies)?;
    }
    Ok((policies, skipped))
}

/// Parses a YAML (or JSON) stream of documents into `out`; returns how many documents were of
/// another kind.
pub fn parse_documents(text: &str, path: &Path, out: &mut Vec<AuthorizationPolicy>) -> Result<usize, ReadError> {
    let mut skipped = 0;
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let invalid = |message: String| ReadError::Invalid {
            path: path.to_path_buf(),
            document: index + 1,
            message,
        };
        let value = serde_yaml::Value::deserialize(document).map_err(|e| invalid(e.to_string()))?;
        skipped += collect(value, out).map_err(invalid)?;
    }
    Ok(skipped)
}

/// Reads policies from JSON objects as the Kubernetes API serves them (`kind` other than
/// `AuthorizationPolicy` skipped); returns them and how many were skipped.
pub fn from_api_objects(objects: Vec<serde_json::Value>) -> Result<(Vec<AuthorizationPolicy>, usize), String> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for object in objects {
        let value = serde_yaml::to_value(object).map_err(|e| e.to_string())?;
        skipped += collect(value, &mut out)?;
    }
    Ok((out, skipped))
}

fn collect(value: serde_yaml::Value, out: &mut Vec<AuthorizationPolicy>) -> Result<usize, String> {
    if value.is_null() {
        return Ok(0);
    }
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    match kind.as_str() {
        "AuthorizationPolicy" => {
            let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
            if !matches!(api_version, "security.istio.io/v1" | "security.istio.io/v1beta1") {
                return Err(format!(
                    "unsupported apiVersion {api_version:?} (security.istio.io/v1 or v1beta1)"
                ));
            }
            let policy: AuthorizationPolicy = serde_yaml::from_value(value).map_err(|e| e.to_string())?;
            out.push(policy);
            Ok(0)
        }
        "List" | "AuthorizationPolicyList" => {
            let mut skipped = 0;
            if let Some(serde_yaml::Value::Sequence(items)) = value.get("items") {
                for item in items.clone() {
                    skipped += collect(item, out)?;
                }
            }
            Ok(skipped)
        }
        _ => Ok(1),
    }
}
