//! Validation of metadata as the apiserver does it: the name, label keys and values, annotations.

use serde_json::Value;

use super::ANNOTATIONS_MAX_BYTES;
use super::state::quote;
use super::status::{Cause, cause};

const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_NAME_PART: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const QUALIFIED_NAME: &str = "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn dns_subdomain_errors(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".to_string());
    }
    if !is_dns_subdomain(s) {
        out.push(DNS1123_SUBDOMAIN.to_string());
    }
    out
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `IsQualifiedName`: an optional DNS subdomain prefix and `/`, then a name part of at most 63.
pub(super) fn qualified_name_errors(k: &str) -> Vec<String> {
    let parts: Vec<&str> = k.split('/').collect();
    let mut out = Vec::new();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                out.push("prefix part must be non-empty".to_string());
            } else {
                out.extend(
                    dns_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => return vec![QUALIFIED_NAME.to_string()],
    };
    if name.is_empty() {
        out.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            out.push("name part must be no more than 63 characters".to_string());
        }
        if !is_name_part(name) {
            out.push(QUALIFIED_NAME_PART.to_string());
        }
    }
    out
}

pub(super) fn label_value_errors(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    if v.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !is_name_part(v) {
        out.push(LABEL_VALUE.to_string());
    }
    out
}

pub(super) fn validate_metadata(meta: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let name = meta["name"].as_str().unwrap_or("");
    for m in dns_subdomain_errors(name) {
        out.push(cause(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: {}: {m}", quote(name)),
        ));
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            for m in qualified_name_errors(k) {
                out.push(cause(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: {}: {m}", quote(k)),
                ));
            }
            let v = v.as_str().unwrap_or("");
            for m in label_value_errors(v) {
                out.push(cause(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: {}: {m}", quote(v)),
                ));
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            for m in qualified_name_errors(&k.to_lowercase()) {
                out.push(cause(
                    "FieldValueInvalid",
                    "metadata.annotations",
                    format!("Invalid value: {}: {m}", quote(k)),
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX_BYTES {
            out.push(cause(
                "FieldValueTooLong",
                "metadata.annotations",
                format!("Too long: may not be more than {ANNOTATIONS_MAX_BYTES} bytes"),
            ));
        }
    }
    out
}
