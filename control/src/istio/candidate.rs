//! Candidate policies staged through the Kubernetes API (least privilege, see
//! docs/policy.md): applied with Istio's dry-run annotation `"true"`, promoted by setting it to
//! `"false"`, demoted by setting it back. Setting rather than removing it takes the field over
//! whoever wrote it first (a `kubectl apply` of the same file), which removal would not. They carry Verity's managed-by label and a candidate label but
//! not the owner label, so the revocation resync never takes them for its own.

use serde_json::{Map, Value};

use super::{DRY_RUN_ANNOTATION, GROUP, IstioController, MANAGED_BY, Policy};
use crate::responder::ResponderError;

/// The label that marks a staged candidate.
pub const CANDIDATE_LABEL: &str = "verity.dev/candidate";

/// Fields the API server sets and an apply must not send.
const SERVER_FIELDS: &[&str] = &[
    "uid",
    "resourceVersion",
    "managedFields",
    "creationTimestamp",
    "generation",
    "selfLink",
];

impl IstioController {
    /// The live object of a candidate, if it exists.
    pub async fn get_candidate(&self, namespace: &str, name: &str) -> Result<Option<Value>, ResponderError> {
        match self.timed(self.api(namespace).get_opt(name)).await {
            Ok(found) => Ok(found.and_then(|o| serde_json::to_value(o).ok())),
            Err(e) => Err(ResponderError::retry(format!("get {namespace}/{name}: {e}"))),
        }
    }

    /// Whether a live object is this candidate, staged by Verity and promoted: the candidate
    /// label, dry-run `"false"`, and the same spec.
    pub fn is_promoted_candidate(live: &Value, candidate: &Value) -> bool {
        let metadata = &live["metadata"];
        metadata["labels"][CANDIDATE_LABEL] == "true"
            && metadata["annotations"][DRY_RUN_ANNOTATION] == "false"
            && live["spec"] == candidate["spec"]
    }

    /// Applies a candidate policy, as a dry run (staged) or enforced (promoted).
    pub async fn apply_candidate(&self, object: &Value, dry_run: bool) -> Result<(), ResponderError> {
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let (Some(namespace), Some(name)) = (
            text(&object["metadata"]["namespace"]),
            text(&object["metadata"]["name"]),
        ) else {
            return Err(ResponderError::permanent(
                "a candidate policy needs metadata.name and metadata.namespace",
            ));
        };
        let mut object = object.clone();
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
            o.insert(
                "apiVersion".into(),
                Value::String(format!("{GROUP}/{}", self.cfg.api_version)),
            );
            o.insert("kind".into(), Value::String("AuthorizationPolicy".into()));
        }
        let metadata = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ResponderError::permanent("metadata is not an object"))?;
        for field in SERVER_FIELDS {
            metadata.remove(*field);
        }
        let labels = map_at(metadata, "labels");
        labels.insert(MANAGED_BY.into(), Value::String("verity".into()));
        labels.insert(CANDIDATE_LABEL.into(), Value::String("true".into()));
        let annotations = map_at(metadata, "annotations");
        annotations.insert(DRY_RUN_ANNOTATION.into(), Value::String(dry_run.to_string()));
        let policy = Policy {
            namespace,
            name,
            object,
        };
        match self.apply(&policy, false).await {
            Ok(_) => Ok(()),
            Err(e) if e.code.is_some_and(|c| (400..500).contains(&c) && c != 409 && c != 429) => Err(
                ResponderError::permanent(format!("apply {}/{}: {e}", policy.namespace, policy.name)),
            ),
            Err(e) => Err(ResponderError::retry(format!(
                "apply {}/{}: {e}",
                policy.namespace, policy.name
            ))),
        }
    }
}

fn map_at<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        // Made an object just above.
        _ => unreachable!("an object"),
    }
}
