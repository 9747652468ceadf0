//! The `_bulk` endpoint: the whole-request checks, then each item executed against the indices and
//! answered on its own (conflicts, data streams, scripted rejections).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::names::{auto_id, backing_index, validate_index_name};
use super::parse::{Op, OpKind, parse_bulk};
use super::rest::{es_error, unauthorized};
use super::{ElasticApi, EsIndex, EsState, StoredDoc};
use crate::siem::{Common, Fault, Reply, Request, id_string, lock, pseudo_guid};

fn rejected_reason() -> String {
    "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, \
     all_bytes=0, coordinating_operation_bytes=1048576, max_coordinating_and_primary_bytes=0]"
        .to_string()
}

impl ElasticApi {
    pub(super) fn bulk(&self, req: &Request, common: &Common, path_index: Option<&str>) -> Reply {
        let started = Instant::now();
        if let Err(r) = self.authenticate(req) {
            return r;
        }
        if let Err(r) = check_content_type(req) {
            return r;
        }
        if let Some(fault) = common.take_fault() {
            return fault_reply(fault);
        }
        let body = match req.decoded_body() {
            Ok(b) => b,
            Err(e) => return es_error(400, "parse_exception", &e),
        };
        if body.is_empty() {
            return es_error(400, "parse_exception", "request body is required");
        }
        if !body.ends_with(b"\n") {
            return es_error(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            );
        }
        let ops = match parse_bulk(&body, path_index) {
            Ok(ops) => ops,
            Err(r) => return r,
        };
        let mut items = Vec::with_capacity(ops.len());
        let mut accepted = Vec::new();
        {
            let mut state = lock(&self.state);
            for op in ops {
                let (item, doc) = self.execute(&mut state, op, path_index);
                if let Some(status) = item.get("status").and_then(Value::as_u64) {
                    *state.item_statuses.entry(status as u16).or_default() += 1;
                }
                items.push(item);
                accepted.extend(doc);
            }
        }
        common.accept(common.new_tag(), accepted);
        let errors = items.iter().any(|i| i.get("error").is_some());
        let items: Vec<Value> = items.into_iter().map(ItemAnswer::into_value).collect();
        Reply::json(
            200,
            &json!({"took": started.elapsed().as_millis() as u64, "errors": errors, "items": items}),
        )
    }

    /// Runs one item; returns its answer (under the action's name) and the accepted document.
    fn execute(
        &self,
        state: &mut EsState,
        op: Op,
        path_index: Option<&str>,
    ) -> (ItemAnswer, Option<(Option<String>, Value)>) {
        let kind = op.kind;
        // Validation guarantees an index.
        let index = op.index.or(path_index.map(str::to_string)).unwrap_or_default();
        let mut answer = ItemAnswer::new(kind.name());
        answer.set("_index", json!(index));
        if let Some(id) = &op.id {
            answer.set("_id", json!(id));
        }
        if let Err(reason) = validate_index_name(&index) {
            return (
                answer.error(400, "invalid_index_name_exception", &reason, Some(&index)),
                None,
            );
        }
        let data_stream = self.is_data_stream(&index);
        match kind {
            OpKind::Update => {
                let reason = "the Verity test server does not implement bulk [update]";
                return (answer.error(400, "illegal_argument_exception", reason, None), None);
            }
            OpKind::Delete => return (self.delete(state, &index, op.id.as_deref().unwrap_or(""), answer), None),
            OpKind::Index if data_stream => {
                let reason = "only write ops with an op_type of create are allowed in data streams";
                return (answer.error(400, "illegal_argument_exception", reason, None), None);
            }
            OpKind::Index | OpKind::Create => {}
        }
        let raw = op.source.unwrap_or_default();
        let id = match op.id.clone() {
            Some(id) => id,
            None => {
                state.auto_ids += 1;
                let id = auto_id(state.auto_ids);
                answer.set("_id", json!(id));
                id
            }
        };
        let parsed: Result<Value, serde_json::Error> = serde_json::from_str(&raw);

        state.write_items += 1;
        let key = op.id.clone().unwrap_or_else(|| raw.clone());
        if !state.rejected_once.contains(&key) {
            let counter = state.write_items;
            let hit = state
                .transient
                .iter()
                .find(|(f, _)| f.selects(counter, op.id.as_deref(), parsed.as_ref().ok()))
                .map(|(_, status)| *status);
            if let Some(status) = hit {
                state.rejected_once.insert(key);
                let (kind, reason) = transient_error(status, &index);
                return (answer.error(status, kind, &reason, None), None);
            }
        }

        let source = match parsed {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                let reason = "[1:1] failed to parse: Root value must be an object";
                return (answer.error(400, "document_parsing_exception", reason, None), None);
            }
            Err(e) => {
                let reason = format!("[{}:{}] failed to parse: {e}", e.line(), e.column());
                return (answer.error(400, "document_parsing_exception", &reason, None), None);
            }
        };
        if let Some(marker) = state.permanent.iter().find(|m| raw.contains(m.as_str())) {
            let (field, preview) = find_marker(&source, marker).unwrap_or_else(|| ("message".into(), marker.clone()));
            let column = raw.find(marker.as_str()).map_or(1, |c| c + 1);
            let reason = format!(
                "[1:{column}] failed to parse field [{field}] of type [long] in document with id '{id}'. \
                 Preview of field's value: '{preview}'"
            );
            let answer = answer.error(400, "document_parsing_exception", &reason, None);
            return (
                answer.caused_by(
                    "illegal_argument_exception",
                    &format!("For input string: \"{preview}\""),
                ),
                None,
            );
        }
        if data_stream && source.get("@timestamp").is_none() {
            let reason = "data stream timestamp field [@timestamp] is missing";
            return (answer.error(400, "document_parsing_exception", reason, None), None);
        }

        state.created += 1;
        let created_order = state.created;
        let idx = state.indices.entry(index.clone()).or_insert_with(|| EsIndex {
            uuid: pseudo_guid(),
            backing: data_stream.then(|| backing_index(&index)),
            docs: BTreeMap::new(),
            next_seq_no: 0,
        });
        if let Some(backing) = &idx.backing {
            answer.set("_index", json!(backing));
        }
        let existing = idx.docs.get(&id).map(|d| d.version);
        if kind == OpKind::Create
            && let Some(version) = existing
        {
            let reason = format!("[{id}]: version conflict, document already exists (current version [{version}])");
            let uuid = idx.uuid.clone();
            let answer = answer.error(409, "version_conflict_engine_exception", &reason, Some(&index));
            return (
                answer
                    .with_error_field("index_uuid", json!(uuid))
                    .with_error_field("shard", json!("0")),
                None,
            );
        }
        let seq_no = idx.next_seq_no;
        idx.next_seq_no += 1;
        let (version, result, status) = match existing {
            Some(v) => (v + 1, "updated", 200),
            None => (1, "created", 201),
        };
        let created = idx.docs.get(&id).map_or(created_order, |d| d.created);
        idx.docs.insert(
            id.clone(),
            StoredDoc {
                source: source.clone(),
                version,
                created,
            },
        );
        answer.success(version, result, seq_no, status);
        let alert_id = source
            .get("event")
            .and_then(|e| e.get("id"))
            .and_then(id_string)
            .or(Some(id));
        (answer, Some((alert_id, source)))
    }

    fn delete(&self, state: &mut EsState, index: &str, id: &str, mut answer: ItemAnswer) -> ItemAnswer {
        let Some(idx) = state.indices.get_mut(index) else {
            let reason = format!("no such index [{index}]");
            return answer
                .error(404, "index_not_found_exception", &reason, Some(index))
                .with_error_field("resource.type", json!("index_or_alias"))
                .with_error_field("resource.id", json!(index));
        };
        let seq_no = idx.next_seq_no;
        idx.next_seq_no += 1;
        match idx.docs.remove(id) {
            Some(doc) => answer.success(doc.version + 1, "deleted", seq_no, 200),
            None => answer.success(1, "not_found", seq_no, 404),
        }
        answer
    }

    fn is_data_stream(&self, index: &str) -> bool {
        self.settings.data_streams.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => index.starts_with(prefix),
            None => p == index,
        })
    }
}

/// A bulk item's answer under construction.
struct ItemAnswer {
    kind: &'static str,
    fields: Map<String, Value>,
}

impl ItemAnswer {
    fn new(kind: &'static str) -> Self {
        ItemAnswer {
            kind,
            fields: Map::new(),
        }
    }

    fn set(&mut self, key: &str, value: Value) {
        self.fields.insert(key.to_string(), value);
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    fn error(mut self, status: u16, kind: &str, reason: &str, index: Option<&str>) -> Self {
        let mut error = json!({"type": kind, "reason": reason});
        if let Some(index) = index {
            error["index"] = json!(index);
        }
        self.set("status", json!(status));
        self.set("error", error);
        self
    }

    fn with_error_field(mut self, key: &str, value: Value) -> Self {
        if let Some(Value::Object(e)) = self.fields.get_mut("error") {
            e.insert(key.to_string(), value);
        }
        self
    }

    fn caused_by(self, kind: &str, reason: &str) -> Self {
        self.with_error_field("caused_by", json!({"type": kind, "reason": reason}))
    }

    /// `{"<action>": {…}}`.
    fn into_value(self) -> Value {
        let mut outer = Map::new();
        outer.insert(self.kind.to_string(), Value::Object(self.fields));
        Value::Object(outer)
    }

    fn success(&mut self, version: u64, result: &str, seq_no: u64, status: u16) {
        self.set("_version", json!(version));
        self.set("result", json!(result));
        self.set("_shards", json!({"total": 2, "successful": 1, "failed": 0}));
        self.set("_seq_no", json!(seq_no));
        self.set("_primary_term", json!(1));
        self.set("status", json!(status));
    }
}

fn check_content_type(req: &Request) -> Result<(), Reply> {
    let Some(raw) = req.header("content-type") else {
        if req.body.is_empty() {
            return Ok(());
        }
        return Err(Reply::json(
            406,
            &json!({"error": "Content-Type header is missing", "status": 406}),
        ));
    };
    let media = req.media_type().unwrap_or_default();
    let ok = matches!(
        media.as_str(),
        "application/x-ndjson"
            | "application/json"
            | "application/vnd.elasticsearch+x-ndjson"
            | "application/vnd.elasticsearch+json"
    );
    if ok {
        Ok(())
    } else {
        Err(Reply::json(
            406,
            &json!({"error": format!("Content-Type header [{raw}] is not supported"), "status": 406}),
        ))
    }
}

fn fault_reply(fault: Fault) -> Reply {
    let status = match fault {
        Fault::Busy => 429,
        Fault::Status(s) => s,
    };
    match status {
        429 => es_error(429, "es_rejected_execution_exception", &rejected_reason()),
        503 => es_error(
            503,
            "unavailable_shards_exception",
            "[verity][0] primary shard is not active Timeout: [1m]",
        ),
        401 => unauthorized(
            "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
        ),
        403 => es_error(
            403,
            "security_exception",
            "action [indices:data/write/bulk] is unauthorized for user [verity] with effective roles [] on indices [verity]",
        ),
        400 => es_error(400, "illegal_argument_exception", "scripted failure"),
        s => es_error(s, "exception", "scripted failure"),
    }
}

/// The per-item error for a transient rejection with `status`.
fn transient_error(status: u16, index: &str) -> (&'static str, String) {
    match status {
        429 => ("es_rejected_execution_exception", rejected_reason()),
        503 => (
            "unavailable_shards_exception",
            format!("[{index}][0] primary shard is not active Timeout: [1m]"),
        ),
        _ => ("exception", "scripted item failure".to_string()),
    }
}

/// The dotted path and value of the first field whose name or value contains `marker`.
fn find_marker(v: &Value, marker: &str) -> Option<(String, String)> {
    fn walk(v: &Value, marker: &str, path: &str) -> Option<(String, String)> {
        match v {
            Value::Object(m) => m.iter().find_map(|(k, child)| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k.contains(marker) {
                    let preview = match child {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    return Some((p, preview));
                }
                walk(child, marker, &p)
            }),
            Value::Array(a) => a.iter().find_map(|c| walk(c, marker, path)),
            Value::String(s) if s.contains(marker) => Some((path.to_string(), s.clone())),
            other if !path.is_empty() && other.to_string().contains(marker) => {
                Some((path.to_string(), other.to_string()))
            }
            _ => None,
        }
    }
    walk(v, marker, "")
}
