//! Parsing a bulk body: NDJSON action and document lines into [`Op`]s, validated as Elasticsearch
//! validates a bulk request before executing any of it.

use serde_json::Value;

use super::rest::es_error;
use crate::siem::{Reply, id_string};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum OpKind {
    Index,
    Create,
    Delete,
    Update,
}

impl OpKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            OpKind::Index => "index",
            OpKind::Create => "create",
            OpKind::Delete => "delete",
            OpKind::Update => "update",
        }
    }
}

/// One parsed bulk item.
pub(super) struct Op {
    pub(super) kind: OpKind,
    pub(super) index: Option<String>,
    pub(super) id: Option<String>,
    /// The document line, for `index`/`create`/`update`.
    pub(super) source: Option<String>,
}

/// Parses the whole NDJSON body; any malformed line or failed validation rejects the request.
pub(super) fn parse_bulk(body: &[u8], path_index: Option<&str>) -> Result<Vec<Op>, Reply> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(es_error(
            400,
            "x_content_parse_exception",
            "Invalid UTF-8 in the bulk body",
        ));
    };
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    // The body ends with '\n', so the last element is the empty remainder.
    let lines = &lines[..lines.len().saturating_sub(1)];
    let mut ops = Vec::new();
    let mut problems = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let line = lines[i];
        i += 1;
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |found: &str| {
            es_error(
                400,
                "illegal_argument_exception",
                &format!(
                    "Malformed action/metadata line [{line_no}], expected field [create], [delete], [index] or [update] but found [{found}]"
                ),
            )
        };
        let action: Value = serde_json::from_str(line).map_err(|e| {
            es_error(
                400,
                "x_content_parse_exception",
                &format!("[{line_no}:{}] {e}", e.column()),
            )
        })?;
        let Value::Object(action) = action else {
            return Err(es_error(
                400,
                "illegal_argument_exception",
                &format!(
                    "Malformed action/metadata line [{line_no}], expected START_OBJECT or END_OBJECT but found [{}]",
                    token_name(&action)
                ),
            ));
        };
        let mut entries = action.into_iter();
        let Some((name, meta)) = entries.next() else {
            return Err(malformed("END_OBJECT"));
        };
        let kind = match name.as_str() {
            "index" => OpKind::Index,
            "create" => OpKind::Create,
            "delete" => OpKind::Delete,
            "update" => OpKind::Update,
            other => return Err(malformed(other)),
        };
        if let Some((extra, _)) = entries.next() {
            return Err(malformed(&extra));
        }
        let Value::Object(meta) = meta else {
            return Err(es_error(
                400,
                "illegal_argument_exception",
                &format!(
                    "Malformed action/metadata line [{line_no}], expected START_OBJECT but found [{}]",
                    token_name(&meta)
                ),
            ));
        };
        let mut op = Op {
            kind,
            index: None,
            id: None,
            source: None,
        };
        for (key, value) in meta {
            match key.as_str() {
                "_index" => match value {
                    Value::String(s) => op.index = Some(s),
                    other => return Err(bad_meta(line_no, "_index", &other)),
                },
                "_id" => match id_string(&value) {
                    Some(s) => op.id = Some(s),
                    None if value.is_null() => {}
                    None => return Err(bad_meta(line_no, "_id", &value)),
                },
                "routing"
                | "pipeline"
                | "require_alias"
                | "require_data_stream"
                | "if_seq_no"
                | "if_primary_term"
                | "version"
                | "version_type"
                | "dynamic_templates"
                | "retry_on_conflict"
                | "_source"
                | "list_executed_pipelines" => {}
                other => {
                    return Err(es_error(
                        400,
                        "illegal_argument_exception",
                        &format!("Action/metadata line [{line_no}] contains an unknown parameter [{other}]"),
                    ));
                }
            }
        }
        if op.index.is_none() && path_index.is_none() {
            problems.push("index is missing".to_string());
        }
        match op.id.as_deref() {
            Some("") => problems.push("if _id is specified it must not be empty".to_string()),
            Some(id) if id.len() > 512 => problems.push(format!(
                "id [{id}] is too long, must be no longer than 512 bytes but was: {}",
                id.len()
            )),
            None if kind == OpKind::Delete || kind == OpKind::Update => problems.push("id is missing".to_string()),
            _ => {}
        }
        if kind != OpKind::Delete {
            match lines.get(i) {
                Some(source) if !source.trim().is_empty() => op.source = Some((*source).to_string()),
                _ => problems.push("source is missing".to_string()),
            }
            i += 1;
        }
        ops.push(op);
    }
    if !problems.is_empty() {
        let reason: String = problems
            .iter()
            .enumerate()
            .map(|(n, p)| format!("{}: {p};", n + 1))
            .collect();
        return Err(es_error(
            400,
            "action_request_validation_exception",
            &format!("Validation Failed: {reason}"),
        ));
    }
    Ok(ops)
}

fn bad_meta(line_no: usize, key: &str, value: &Value) -> Reply {
    es_error(
        400,
        "illegal_argument_exception",
        &format!(
            "Malformed action/metadata line [{line_no}], expected a simple value for field [{key}] but found [{}]",
            token_name(value)
        ),
    )
}

fn token_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "VALUE_NULL",
        Value::Bool(_) => "VALUE_BOOLEAN",
        Value::Number(_) => "VALUE_NUMBER",
        Value::String(_) => "VALUE_STRING",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
    }
}
