//! Query parameters and options: parsing them, the `PatchOptions`/`CreateOptions`/`UpdateOptions`
//! checks, the field manager's name and decoding request bodies.

use serde_json::Value;

use super::server::Req;
use super::state::quote;
use super::status::{Cause, bad_request, cause, invalid_options, unsupported_media};
use crate::siem::percent_decode;

#[derive(Default, Debug)]
pub(super) struct Query {
    pub(super) field_manager: Option<String>,
    force: Option<String>,
    pub(super) dry_run: Vec<String>,
    field_validation: Option<String>,
    pub(super) label_selector: Option<String>,
    pub(super) field_selector: Option<String>,
    watch: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

/// As the apiserver converts query booleans: `true` or `1`, case-insensitively.
fn query_bool(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

impl Query {
    pub(super) fn parse(q: &str) -> Self {
        let mut out = Query::default();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match percent_decode(k).as_str() {
                "fieldManager" => out.field_manager = Some(v),
                "force" => out.force = Some(v),
                "dryRun" => out.dry_run.push(v),
                "fieldValidation" => out.field_validation = Some(v),
                "labelSelector" => out.label_selector = Some(v),
                "fieldSelector" => out.field_selector = Some(v),
                "watch" => out.watch = Some(v),
                _ => {}
            }
        }
        out
    }

    pub(super) fn force(&self) -> bool {
        query_bool(self.force.as_deref())
    }

    pub(super) fn watch(&self) -> bool {
        query_bool(self.watch.as_deref())
    }

    pub(super) fn dry_run(&self) -> bool {
        !self.dry_run.is_empty()
    }

    pub(super) fn validation(&self) -> FieldValidation {
        match self.field_validation.as_deref() {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        }
    }
}

pub(super) fn dry_run_causes(values: &[String]) -> Vec<Cause> {
    values
        .iter()
        .filter(|d| d.as_str() != "All")
        .map(|d| {
            cause(
                "FieldValueNotSupported",
                "dryRun",
                format!("Unsupported value: {}: supported values: \"All\"", quote(d)),
            )
        })
        .collect()
}

/// `PatchOptions`, `CreateOptions`, `UpdateOptions` checks, as `ValidatePatchOptions` & co.
pub(super) fn check_options(kind: &str, q: &Query, apply: bool) -> Result<(), Value> {
    let mut causes = Vec::new();
    if kind == "PatchOptions" {
        if apply && q.field_manager.as_deref().unwrap_or("").is_empty() {
            causes.push(cause(
                "FieldValueRequired",
                "fieldManager",
                "Required value: is required for apply patch",
            ));
        }
        if !apply && q.force.is_some() {
            causes.push(cause(
                "FieldValueForbidden",
                "force",
                "Forbidden: may not be specified for non-apply patch",
            ));
        }
    }
    if let Some(m) = &q.field_manager {
        if m.len() > 128 {
            causes.push(cause(
                "FieldValueTooLong",
                "fieldManager",
                "Too long: may not be more than 128 bytes",
            ));
        }
        if m.chars().any(char::is_control) {
            causes.push(cause(
                "FieldValueInvalid",
                "fieldManager",
                format!("Invalid value: {}: must only contain printable characters", quote(m)),
            ));
        }
    }
    causes.extend(dry_run_causes(&q.dry_run));
    if let Some(v) = &q.field_validation
        && !["", "Ignore", "Warn", "Strict"].contains(&v.as_str())
    {
        causes.push(cause(
            "FieldValueNotSupported",
            "fieldValidation",
            format!(
                "Unsupported value: {}: supported values: \"Ignore\", \"Strict\", \"Warn\"",
                quote(v)
            ),
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid_options(kind, &causes))
    }
}

/// The manager of a non-apply write: `fieldManager`, else the user agent up to its first `/`.
pub(super) fn manager_name(q: &Query, req: &Req<'_>) -> String {
    match q.field_manager.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => {
            let ua = req.header("user-agent").unwrap_or("");
            let prefix: String = ua.split('/').next().unwrap_or("").chars().take(128).collect();
            if prefix.is_empty() {
                "unknown".to_string()
            } else {
                prefix
            }
        }
    }
}

pub(super) fn decode_json(body: &[u8]) -> Result<Value, Value> {
    serde_json::from_slice(body).map_err(|e| bad_request(&format!("couldn't decode the request body as JSON: {e}")))
}

/// A body sent as JSON or YAML (`POST`, `PUT`).
pub(super) fn decode_object(req: &Req<'_>) -> Result<Value, Value> {
    let media = req.media_type();
    let v = match media.as_str() {
        "" | "application/json" => decode_json(req.body)?,
        "application/yaml" => {
            serde_yaml::from_slice(req.body).map_err(|e| bad_request(&format!("error decoding YAML: {e}")))?
        }
        _ => return Err(unsupported_media(&["application/json", "application/yaml"])),
    };
    if v.is_object() {
        Ok(v)
    } else {
        Err(bad_request("Object 'Kind' is missing in the request body"))
    }
}
