//! `meta/v1 Status` bodies, as the apiserver writes them for each failure.

use serde_json::{Value, json};

use super::state::{quote, resource_name};
use super::{GROUP, KIND, PLURAL, SERVICE_ACCOUNT};

/// A `meta/v1 Status` failure.
pub(super) fn failure(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

pub(super) fn bad_request(message: &str) -> Value {
    failure(400, "BadRequest", message, None)
}

pub(super) fn not_found(name: &str) -> Value {
    failure(
        404,
        "NotFound",
        &format!("{} {} not found", resource_name(), quote(name)),
        Some(json!({"name": name, "group": GROUP, "kind": PLURAL})),
    )
}

pub(super) fn namespace_not_found(ns: &str) -> Value {
    failure(
        404,
        "NotFound",
        &format!("namespaces {} not found", quote(ns)),
        Some(json!({"name": ns, "kind": "namespaces"})),
    )
}

pub(super) fn no_such_resource() -> Value {
    failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

pub(super) fn method_not_allowed() -> Value {
    failure(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Some(json!({})),
    )
}

pub(super) fn unsupported_media(accepted: &[&str]) -> Value {
    failure(
        415,
        "UnsupportedMediaType",
        &format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        ),
        None,
    )
}

/// 409 `Operation cannot be fulfilled on …`.
pub(super) fn conflict(name: &str, why: &str) -> Value {
    failure(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} {}: {why}",
            resource_name(),
            quote(name)
        ),
        Some(json!({"name": name, "group": GROUP, "kind": PLURAL})),
    )
}

pub(super) const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// One cause of a 422.
#[derive(Clone, Debug)]
pub(super) struct Cause {
    reason: &'static str,
    field: String,
    message: String,
}

pub(super) fn cause(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        reason,
        field: field.into(),
        message: message.into(),
    }
}

/// The aggregate message of field errors: one, or `[a, b]`.
fn aggregate(causes: &[Cause]) -> String {
    let list: Vec<String> = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    if list.len() == 1 {
        list.concat()
    } else {
        format!("[{}]", list.join(", "))
    }
}

fn causes_json(causes: &[Cause]) -> Vec<Value> {
    causes
        .iter()
        .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
        .collect()
}

/// 422 for the object.
pub(super) fn invalid_object(name: &str, causes: &[Cause]) -> Value {
    failure(
        422,
        "Invalid",
        &format!("{KIND}.{GROUP} {} is invalid: {}", quote(name), aggregate(causes)),
        Some(json!({"name": name, "group": GROUP, "kind": KIND, "causes": causes_json(causes)})),
    )
}

/// 422 for request options (`PatchOptions.meta.k8s.io "" is invalid: …`).
pub(super) fn invalid_options(kind: &str, causes: &[Cause]) -> Value {
    failure(
        422,
        "Invalid",
        &format!("{kind}.meta.k8s.io \"\" is invalid: {}", aggregate(causes)),
        Some(json!({"group": "meta.k8s.io", "kind": kind, "causes": causes_json(causes)})),
    )
}

/// The RBAC refusal for a verb.
pub(super) fn forbidden(verb: &str, namespace: Option<&str>, name: Option<&str>) -> Value {
    let what = match name {
        Some(n) => format!("{} {}", resource_name(), quote(n)),
        None => resource_name(),
    };
    let scope = match namespace {
        Some(ns) => format!("in the namespace {}", quote(ns)),
        None => "at the cluster scope".to_string(),
    };
    let mut details = json!({"group": GROUP, "kind": PLURAL});
    if let Some(n) = name {
        details["name"] = json!(n);
    }
    failure(
        403,
        "Forbidden",
        &format!(
            "{what} is forbidden: User {} cannot {verb} resource {} in API group {} {scope}",
            quote(SERVICE_ACCOUNT),
            quote(PLURAL),
            quote(GROUP)
        ),
        Some(details),
    )
}

/// An injected failure, as the apiserver words it.
pub(super) fn fault(code: u16, verb: &str, namespace: Option<&str>, name: Option<&str>) -> Value {
    match code {
        400 => bad_request("the server rejected our request for an unknown reason"),
        401 => failure(401, "Unauthorized", "Unauthorized", None),
        403 => forbidden(verb, namespace, name),
        404 => not_found(name.unwrap_or("")),
        409 => conflict(name.unwrap_or(""), MODIFIED),
        429 => failure(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            Some(json!({"retryAfterSeconds": 1})),
        ),
        503 => failure(
            503,
            "ServiceUnavailable",
            "storage is (re)initializing",
            Some(json!({"retryAfterSeconds": 1})),
        ),
        504 => failure(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
            Some(json!({})),
        ),
        c if c >= 500 => failure(
            c,
            "InternalError",
            "Internal error occurred: etcdserver: leader changed",
            Some(json!({"causes": [{"message": "etcdserver: leader changed"}]})),
        ),
        c => failure(c, "Unknown", "the server has received an unknown error", None),
    }
}
