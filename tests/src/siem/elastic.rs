//! An Elasticsearch 8 (and OpenSearch-compatible) `_bulk` test server that answers as
//! Elasticsearch does, per-item errors included, for testing Verity's Elasticsearch sink.
//!
//! Endpoints:
//! - `GET /` (and `HEAD /`): cluster info (`version.number` `8.15.0`, tagline
//!   `You Know, for Search`); `GET /_cluster/health`: `{"status":"green",…}`.
//! - `POST`/`PUT` `/_bulk` and `/{index}/_bulk`: NDJSON, an action line (`index`, `create`,
//!   `delete`; `update` answers a per-item 400) then, for `index`/`create`, the document line.
//!
//! Whole-request answers, in the order they are checked:
//! 1. credentials (when [`ElasticSettings::api_key`] or [`ElasticSettings::basic`] is set):
//!    `Authorization: ApiKey <key>` or `Basic …`; otherwise 401 `security_exception` with
//!    `WWW-Authenticate` headers;
//! 2. `Content-Type` `application/x-ndjson` or `application/json` (or the
//!    `application/vnd.elasticsearch+…` compatibility types): otherwise 406;
//! 3. busy ([`TestServer::set_busy`]): 429 `es_rejected_execution_exception`; scripted
//!    failures ([`TestServer::fail_next`]);
//! 4. an empty body: 400 `parse_exception`; no final newline: 400 `illegal_argument_exception`
//!    "The bulk request must be terminated by a newline [\n]"; a malformed action line: 400;
//!    request validation (no index, empty `_id`, no document): 400
//!    `action_request_validation_exception`. Any of these and nothing is indexed.
//!
//! Then each item is executed and answered on its own (`"errors":true` if any failed):
//! `created` 201 / `updated` 200 / `deleted` 200 / `not_found` 404; `create` of an existing
//! `_id`: 409 `version_conflict_engine_exception`; an invalid index name: 400
//! `invalid_index_name_exception`; a document that is not a JSON object, or contains a marker
//! given to [`ElasticServer::reject_permanently`]: 400 `document_parsing_exception` (the type
//! Elasticsearch 8 reports; OpenSearch calls it `mapper_parsing_exception`); items chosen by
//! [`ElasticServer::reject_items_once`]: their status (e.g. 429
//! `es_rejected_execution_exception`) on the first attempt only, keyed by `_id` (or, without
//! one, by the document line), accepted when retried. Indices named in
//! [`ElasticSettings::data_streams`] behave as data streams: `create` only, `@timestamp`
//! required, items report the backing index `.ds-<name>-<yyyy.MM.dd>-000001`.
//!
//! Gzip request bodies (`Content-Encoding: gzip`) are accepted. Every answer carries
//! `X-elastic-product: Elasticsearch`, which the official clients check.
//! [`TestServer::received`] holds every accepted write's document in arrival order (a document
//! overwritten by `index` appears again); [`ElasticServer::docs_in`] holds the index's current
//! documents. The alert id is the document's `event.id`, else the action's `_id`.

use std::collections::{BTreeMap, HashSet};
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::Method;
use serde_json::{Map, Value, json};

use super::{
    Api, Common, Fault, Reply, Request, TestServer, base64_decode, id_string, lock, pseudo_guid, splitmix, unix_now,
};

/// The version the server reports in `GET /`.
pub const ES_VERSION: &str = "8.15.0";

/// How the Elasticsearch test server is configured.
#[derive(Clone, Debug, Default)]
pub struct ElasticSettings {
    /// `Some(key)`: accepts `Authorization: ApiKey <key>` (the encoded `id:api_key` value as a
    /// client sends it).
    pub api_key: Option<String>,
    /// `Some((user, password))`: accepts HTTP Basic with these credentials.
    /// With neither set, no credentials are required.
    pub basic: Option<(String, String)>,
    /// Index names (a trailing `*` matches a prefix) that are data streams.
    pub data_streams: Vec<String>,
}

impl ElasticSettings {
    /// No authentication.
    pub fn open() -> Self {
        ElasticSettings::default()
    }

    pub fn with_api_key(key: impl Into<String>) -> Self {
        ElasticSettings {
            api_key: Some(key.into()),
            ..ElasticSettings::default()
        }
    }

    pub fn with_basic(user: impl Into<String>, password: impl Into<String>) -> Self {
        ElasticSettings {
            basic: Some((user.into(), password.into())),
            ..ElasticSettings::default()
        }
    }

    pub fn data_stream(mut self, pattern: impl Into<String>) -> Self {
        self.data_streams.push(pattern.into());
        self
    }
}

/// Which bulk items [`ElasticServer::reject_items_once`] rejects.
#[derive(Clone)]
pub enum ItemFilter {
    /// Every n-th `index`/`create` item the server receives (counted across requests, from 1).
    EveryNth(usize),
    /// Items whose action `_id` is one of these.
    Ids(Vec<String>),
    /// Items whose document satisfies the predicate.
    Matching(Arc<dyn Fn(&Value) -> bool + Send + Sync>),
}

impl ItemFilter {
    pub fn every_nth(n: usize) -> Self {
        ItemFilter::EveryNth(n)
    }

    pub fn matching(f: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Self {
        ItemFilter::Matching(Arc::new(f))
    }

    fn selects(&self, counter: u64, id: Option<&str>, doc: Option<&Value>) -> bool {
        match self {
            ItemFilter::EveryNth(n) => *n > 0 && counter.is_multiple_of(*n as u64),
            ItemFilter::Ids(ids) => id.is_some_and(|id| ids.iter().any(|i| i == id)),
            ItemFilter::Matching(f) => doc.is_some_and(|d| f(d)),
        }
    }
}

impl std::fmt::Debug for ItemFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemFilter::EveryNth(n) => write!(f, "EveryNth({n})"),
            ItemFilter::Ids(ids) => write!(f, "Ids({ids:?})"),
            ItemFilter::Matching(_) => f.write_str("Matching(..)"),
        }
    }
}

/// A running Elasticsearch test server; dereferences to [`TestServer`] for the shared
/// controls.
pub struct ElasticServer {
    server: TestServer,
    api: Arc<ElasticApi>,
}

impl ElasticServer {
    /// Starts on `127.0.0.1` on a free port. Panics if it cannot bind.
    pub fn start(settings: ElasticSettings) -> ElasticServer {
        let api = Arc::new(ElasticApi {
            settings,
            cluster_uuid: pseudo_guid(),
            state: Mutex::new(EsState::default()),
        });
        let server = TestServer::start("elasticsearch", api.clone(), Arc::new(Common::new()));
        ElasticServer { server, api }
    }

    pub fn settings(&self) -> &ElasticSettings {
        &self.api.settings
    }

    /// `http://127.0.0.1:PORT/_bulk`.
    pub fn bulk_url(&self) -> String {
        format!("{}/_bulk", self.url())
    }

    /// The documents now stored in `index` (or data stream), in the order they were created.
    pub fn docs_in(&self, index: &str) -> Vec<Value> {
        let state = lock(&self.api.state);
        let Some(idx) = state.indices.get(index) else {
            return Vec::new();
        };
        let mut docs: Vec<&StoredDoc> = idx.docs.values().collect();
        docs.sort_by_key(|d| d.created);
        docs.into_iter().map(|d| d.source.clone()).collect()
    }

    /// The `_id`s now stored in `index`, in the order they were created.
    pub fn doc_ids(&self, index: &str) -> Vec<String> {
        let state = lock(&self.api.state);
        let Some(idx) = state.indices.get(index) else {
            return Vec::new();
        };
        let mut docs: Vec<(&String, &StoredDoc)> = idx.docs.iter().collect();
        docs.sort_by_key(|(_, d)| d.created);
        docs.into_iter().map(|(id, _)| id.clone()).collect()
    }

    /// One stored document.
    pub fn doc(&self, index: &str, id: &str) -> Option<Value> {
        lock(&self.api.state)
            .indices
            .get(index)
            .and_then(|i| i.docs.get(id))
            .map(|d| d.source.clone())
    }

    /// The indices (and data streams) that exist, sorted.
    pub fn indices(&self) -> Vec<String> {
        lock(&self.api.state).indices.keys().cloned().collect()
    }

    /// Items selected by `filter` are answered with `status` (429 gives
    /// `es_rejected_execution_exception`, 503 `unavailable_shards_exception`, 500 `exception`)
    /// the first time they are seen, and accepted when sent again. Items are keyed by `_id`, or
    /// without one by their document line. Rules add up.
    pub fn reject_items_once(&self, filter: ItemFilter, status: u16) {
        lock(&self.api.state).transient.push((filter, status));
    }

    /// Every `index`/`create` document whose JSON text contains `marker` is refused with 400
    /// `document_parsing_exception`, on every attempt.
    pub fn reject_permanently(&self, marker: &str) {
        lock(&self.api.state).permanent.push(marker.to_string());
    }

    /// How many bulk items were answered with `status` (201 created, 409 conflicts, 429…).
    pub fn items_with_status(&self, status: u16) -> usize {
        lock(&self.api.state).item_statuses.get(&status).copied().unwrap_or(0)
    }
}

impl Deref for ElasticServer {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

#[derive(Default)]
struct EsState {
    indices: BTreeMap<String, EsIndex>,
    transient: Vec<(ItemFilter, u16)>,
    /// Keys of items already rejected once by a transient rule.
    rejected_once: HashSet<String>,
    /// `index`/`create` items seen, for [`ItemFilter::EveryNth`].
    write_items: u64,
    permanent: Vec<String>,
    /// Creation order across indices.
    created: u64,
    auto_ids: u64,
    item_statuses: BTreeMap<u16, usize>,
}

struct EsIndex {
    uuid: String,
    /// The backing index reported for a data stream.
    backing: Option<String>,
    docs: BTreeMap<String, StoredDoc>,
    next_seq_no: u64,
}

struct StoredDoc {
    source: Value,
    version: u64,
    created: u64,
}

struct ElasticApi {
    settings: ElasticSettings,
    cluster_uuid: String,
    state: Mutex<EsState>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OpKind {
    Index,
    Create,
    Delete,
    Update,
}

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            OpKind::Index => "index",
            OpKind::Create => "create",
            OpKind::Delete => "delete",
            OpKind::Update => "update",
        }
    }
}

/// One parsed bulk item.
struct Op {
    kind: OpKind,
    index: Option<String>,
    id: Option<String>,
    /// The document line, for `index`/`create`/`update`.
    source: Option<String>,
}

/// An Elasticsearch error answer `{"error":{"root_cause":[…],"type":…,"reason":…},"status":…}`.
fn es_error(status: u16, kind: &str, reason: &str) -> Reply {
    let cause = json!({"type": kind, "reason": reason});
    Reply::json(
        status,
        &json!({"error": {"root_cause": [cause], "type": kind, "reason": reason}, "status": status}),
    )
}

fn rejected_reason() -> String {
    "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, \
     all_bytes=0, coordinating_operation_bytes=1048576, max_coordinating_and_primary_bytes=0]"
        .to_string()
}

impl Api for ElasticApi {
    fn handle(&self, req: &Request, common: &Common) -> Reply {
        let reply = self.route(req, common);
        reply.with_header("x-elastic-product", "Elasticsearch")
    }
}

impl ElasticApi {
    fn route(&self, req: &Request, common: &Common) -> Reply {
        let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let bulk_index = match segments.as_slice() {
            ["_bulk"] => Some(None),
            [index, "_bulk"] => Some(Some(super::percent_decode(index))),
            _ => None,
        };
        if let Some(path_index) = bulk_index {
            if req.method != Method::POST && req.method != Method::PUT {
                return self.no_handler(req);
            }
            return self.bulk(req, common, path_index.as_deref()).ingest();
        }
        if let Err(r) = self.authenticate(req) {
            return r;
        }
        match (segments.as_slice(), &req.method) {
            ([], &Method::GET) => Reply::json(200, &self.info()),
            ([], &Method::HEAD) => Reply::empty(200).with_header("content-type", "application/json"),
            (["_cluster", "health", ..], &Method::GET) => Reply::json(200, &self.health()),
            _ => self.no_handler(req),
        }
    }

    fn no_handler(&self, req: &Request) -> Reply {
        Reply::json(
            400,
            &json!({
                "error": format!("no handler found for uri [{}] and method [{}]", uri(req), req.method),
                "status": 400,
            }),
        )
    }

    fn info(&self) -> Value {
        json!({
            "name": "verity-test-node",
            "cluster_name": "verity-test",
            "cluster_uuid": self.cluster_uuid,
            "version": {
                "number": ES_VERSION,
                "build_flavor": "default",
                "build_type": "docker",
                "build_hash": "1a77947f34deddb41af25e6f0ddb8e830159c179",
                "build_date": "2024-08-05T10:05:34.233336849Z",
                "build_snapshot": false,
                "lucene_version": "9.11.1",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0"
            },
            "tagline": "You Know, for Search"
        })
    }

    fn health(&self) -> Value {
        let shards = lock(&self.state).indices.len();
        json!({
            "cluster_name": "verity-test",
            "status": "green",
            "timed_out": false,
            "number_of_nodes": 1,
            "number_of_data_nodes": 1,
            "active_primary_shards": shards,
            "active_shards": shards,
            "relocating_shards": 0,
            "initializing_shards": 0,
            "unassigned_shards": 0,
            "unassigned_primary_shards": 0,
            "delayed_unassigned_shards": 0,
            "number_of_pending_tasks": 0,
            "number_of_in_flight_fetch": 0,
            "task_max_waiting_in_queue_millis": 0,
            "active_shards_percent_as_number": 100.0
        })
    }

    fn authenticate(&self, req: &Request) -> Result<(), Reply> {
        let (api_key, basic) = (&self.settings.api_key, &self.settings.basic);
        if api_key.is_none() && basic.is_none() {
            return Ok(());
        }
        let Some(value) = req.header("authorization").map(str::trim) else {
            return Err(unauthorized(&format!(
                "missing authentication credentials for REST request [{}]",
                uri(req)
            )));
        };
        let bad = || {
            unauthorized(
                "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
            )
        };
        let (scheme, credentials) = value.split_once(' ').ok_or_else(bad)?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("apikey") {
            return match api_key {
                Some(key) if key == credentials => Ok(()),
                _ => Err(bad()),
            };
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64_decode(credentials).and_then(|b| String::from_utf8(b).ok());
            let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return Err(bad());
            };
            return match basic {
                Some((u, p)) if u == user && p == password => Ok(()),
                _ => Err(unauthorized(&format!(
                    "unable to authenticate user [{user}] for REST request [{}]",
                    uri(req)
                ))),
            };
        }
        Err(bad())
    }

    fn bulk(&self, req: &Request, common: &Common, path_index: Option<&str>) -> Reply {
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

/// The 401 Elasticsearch answers with security enabled.
fn unauthorized(reason: &str) -> Reply {
    let challenges = [
        "Basic realm=\"security\", charset=\"UTF-8\"",
        "Bearer realm=\"security\"",
        "ApiKey",
    ];
    let cause = json!({
        "type": "security_exception",
        "reason": reason,
        "header": {"WWW-Authenticate": challenges},
    });
    let body = json!({
        "error": {
            "root_cause": [cause],
            "type": "security_exception",
            "reason": reason,
            "header": {"WWW-Authenticate": challenges},
        },
        "status": 401,
    });
    challenges
        .iter()
        .fold(Reply::json(401, &body), |r, c| r.with_header("www-authenticate", *c))
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

/// Parses the whole NDJSON body; any malformed line or failed validation rejects the request.
fn parse_bulk(body: &[u8], path_index: Option<&str>) -> Result<Vec<Op>, Reply> {
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

/// Elasticsearch's index-name rules.
fn validate_index_name(name: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("Invalid index name [{name}], {why}"));
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name != name.to_lowercase() {
        return invalid("must be lowercase");
    }
    if name.starts_with(['_', '-', '+']) {
        return invalid("must not start with '_', '-', or '+'");
    }
    if name == "." || name == ".." {
        return invalid("must not be '.' or '..'");
    }
    if name.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':']) {
        return invalid("must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?, #, :]");
    }
    if name.len() > 255 {
        return invalid("index name is too long");
    }
    Ok(())
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

/// A 20-character base64url id, as Elasticsearch generates.
fn auto_id(n: u64) -> String {
    const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let a = splitmix(n ^ (unix_now() as u64).rotate_left(20));
    let b = splitmix(a);
    (0..20)
        .map(|i| {
            let bits = if i < 10 { a >> (6 * i) } else { b >> (6 * (i - 10)) };
            URL_SAFE[(bits & 63) as usize] as char
        })
        .collect()
}

/// `.ds-<name>-<yyyy.MM.dd>-000001` for today (UTC).
fn backing_index(name: &str) -> String {
    let (y, m, d) = civil_date(unix_now());
    format!(".ds-{name}-{y:04}.{m:02}.{d:02}-000001")
}

/// The UTC calendar date of a Unix time.
fn civil_date(unix: i64) -> (i64, u32, u32) {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The request's path and query, as Elasticsearch names it in messages.
fn uri(req: &Request) -> String {
    match &req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{base64, get, post};
    use super::*;
    use crate::HttpResponse;

    const NDJSON: (&str, &str) = ("Content-Type", "application/x-ndjson");

    fn doc(id: &str) -> String {
        json!({"@timestamp": "2024-05-01T10:00:00Z", "event": {"id": id, "kind": "alert"}, "message": "denied"})
            .to_string()
    }

    fn create(index: &str, id: &str) -> String {
        format!("{}\n{}\n", json!({"create": {"_index": index, "_id": id}}), doc(id))
    }

    fn bulk(s: &ElasticServer, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        post(s.addr(), "/_bulk", headers, body.as_bytes())
    }

    #[test]
    fn info_and_health() {
        let s = ElasticServer::start(ElasticSettings::open());
        let r = get(s.addr(), "/", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-elastic-product"), Some("Elasticsearch"));
        let info = r.json();
        assert_eq!(info["version"]["number"], "8.15.0");
        assert_eq!(info["tagline"], "You Know, for Search");
        assert!(info["name"].is_string() && info["cluster_name"].is_string());
        assert_eq!(get(s.addr(), "/_cluster/health", &[]).json()["status"], "green");
        assert_eq!(s.requests(), 0, "only _bulk is ingestion");
    }

    #[test]
    fn bulk_create_and_index() {
        let s = ElasticServer::start(ElasticSettings::open());
        let body = format!(
            "{}{}\n{}\n{}\n{}\n",
            create("alerts", "a"),
            json!({"index": {"_index": "alerts", "_id": "b"}}),
            doc("b"),
            json!({"index": {}}),
            doc("c"),
        );
        let r = post(s.addr(), "/alerts/_bulk", &[NDJSON], body.as_bytes());
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["errors"], false);
        assert!(v["took"].is_u64());
        let first = &v["items"][0]["create"];
        assert_eq!(
            (
                first["_index"].as_str(),
                first["_id"].as_str(),
                first["status"].as_u64()
            ),
            (Some("alerts"), Some("a"), Some(201))
        );
        assert_eq!(first["result"], "created");
        assert_eq!(first["_version"], 1);
        assert_eq!(first["_seq_no"], 0);
        assert_eq!(first["_primary_term"], 1);
        assert_eq!(first["_shards"], json!({"total": 2, "successful": 1, "failed": 0}));
        assert_eq!(v["items"][1]["index"]["status"], 201);
        let auto = v["items"][2]["index"]["_id"].as_str().expect("generated id");
        assert_eq!(auto.len(), 20);
        assert_eq!(s.ids(), ["a", "b", "c"]);
        assert_eq!(s.indices(), ["alerts"]);
        assert_eq!(s.docs_in("alerts").len(), 3);
        assert_eq!(s.doc_ids("alerts")[..2], ["a".to_string(), "b".to_string()]);

        // `index` of an existing id replaces it.
        let again = format!("{}\n{}\n", json!({"index": {"_index": "alerts", "_id": "b"}}), doc("b"));
        let item = &bulk(&s, &[NDJSON], &again).json()["items"][0]["index"];
        assert_eq!(
            (item["status"].as_u64(), item["result"].as_str()),
            (Some(200), Some("updated"))
        );
        assert_eq!(item["_version"], 2);
        assert_eq!(s.docs_in("alerts").len(), 3);
        assert_eq!(s.duplicates(), 1, "received() counts every accepted write");
    }

    #[test]
    fn create_of_an_existing_id_conflicts() {
        let s = ElasticServer::start(ElasticSettings::open());
        assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "a")).json()["errors"], false);
        let v = bulk(
            &s,
            &[NDJSON],
            &format!("{}{}", create("alerts", "a"), create("alerts", "b")),
        )
        .json();
        assert_eq!(v["errors"], true);
        let item = &v["items"][0]["create"];
        assert_eq!(item["status"], 409);
        assert_eq!(item["error"]["type"], "version_conflict_engine_exception");
        assert_eq!(
            item["error"]["reason"],
            "[a]: version conflict, document already exists (current version [1])"
        );
        assert_eq!(item["_id"], "a");
        assert_eq!(v["items"][1]["create"]["status"], 201);
        assert_eq!(s.ids(), ["a", "b"]);
        assert_eq!(s.duplicates(), 0);
        assert_eq!(s.items_with_status(409), 1);
    }

    #[test]
    fn items_rejected_once_succeed_when_retried() {
        let s = ElasticServer::start(ElasticSettings::open());
        s.reject_items_once(ItemFilter::every_nth(2), 429);
        let body: String = ["a", "b", "c", "d"].iter().map(|id| create("alerts", id)).collect();
        let v = bulk(&s, &[NDJSON], &body).json();
        assert_eq!(v["errors"], true);
        let statuses: Vec<u64> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["create"]["status"].as_u64().expect("status"))
            .collect();
        assert_eq!(statuses, [201, 429, 201, 429]);
        let error = &v["items"][1]["create"]["error"];
        assert_eq!(error["type"], "es_rejected_execution_exception");
        assert!(
            error["reason"]
                .as_str()
                .expect("reason")
                .starts_with("rejected execution of")
        );
        assert_eq!(s.ids(), ["a", "c"]);

        // The retry of b and d lands on positions 6 and 7 … b would be the 6th item: not
        // rejected again because it was rejected once already.
        let retry = format!("{}{}", create("alerts", "b"), create("alerts", "d"));
        let v = bulk(&s, &[NDJSON], &retry).json();
        assert_eq!(v["errors"], false, "{v}");
        assert_eq!(s.ids(), ["a", "c", "b", "d"]);
        assert_eq!(s.items_with_status(429), 2);

        s.reject_items_once(ItemFilter::matching(|d| d["event"]["id"] == "e"), 503);
        let v = bulk(&s, &[NDJSON], &create("alerts", "e")).json();
        assert_eq!(v["items"][0]["create"]["error"]["type"], "unavailable_shards_exception");
    }

    #[test]
    fn permanent_rejection_and_data_streams() {
        let s = ElasticServer::start(ElasticSettings::open().data_stream("logs-verity-*"));
        s.reject_permanently("POISON");
        let poison = format!(
            "{}\n{}\n",
            json!({"create": {"_index": "alerts", "_id": "p"}}),
            json!({"event": {"id": "p"}, "source": {"port": "POISON"}})
        );
        for _ in 0..2 {
            let item = &bulk(&s, &[NDJSON], &poison).json()["items"][0]["create"];
            assert_eq!(item["status"], 400);
            assert_eq!(item["error"]["type"], "document_parsing_exception");
            let reason = item["error"]["reason"].as_str().expect("reason");
            assert!(reason.contains("failed to parse field [source.port]"), "{reason}");
        }

        let v = bulk(&s, &[NDJSON], &create("logs-verity-default", "a")).json();
        let item = &v["items"][0]["create"];
        assert_eq!(item["status"], 201);
        assert!(
            item["_index"]
                .as_str()
                .expect("index")
                .starts_with(".ds-logs-verity-default-")
        );
        assert_eq!(s.docs_in("logs-verity-default").len(), 1);
        let index_op = format!(
            "{}\n{}\n",
            json!({"index": {"_index": "logs-verity-default"}}),
            doc("b")
        );
        assert_eq!(
            bulk(&s, &[NDJSON], &index_op).json()["items"][0]["index"]["status"],
            400
        );
        let untimed = format!(
            "{}\n{}\n",
            json!({"create": {"_index": "logs-verity-default"}}),
            json!({"event": {"id": "c"}})
        );
        let item = &bulk(&s, &[NDJSON], &untimed).json()["items"][0]["create"];
        assert_eq!(
            item["error"]["reason"],
            "data stream timestamp field [@timestamp] is missing"
        );
        let upper = bulk(&s, &[NDJSON], &create("Alerts", "x")).json();
        assert_eq!(
            upper["items"][0]["create"]["error"]["type"],
            "invalid_index_name_exception"
        );
        assert_eq!(s.ids(), ["a"]);
    }

    #[test]
    fn whole_request_failures_index_nothing() {
        let s = ElasticServer::start(ElasticSettings::open());
        let r = bulk(&s, &[NDJSON], create("alerts", "a").trim_end());
        assert_eq!(r.status, 400);
        let reason = "The bulk request must be terminated by a newline [\\n]";
        let cause = json!({"type": "illegal_argument_exception", "reason": reason});
        assert_eq!(
            r.json(),
            json!({"error": {"root_cause": [cause], "type": "illegal_argument_exception", "reason": reason}, "status": 400})
        );
        assert_eq!(bulk(&s, &[NDJSON], "").json()["error"]["type"], "parse_exception");
        let r = bulk(&s, &[("Content-Type", "text/plain")], &create("alerts", "a"));
        assert_eq!(
            (r.status, r.json()),
            (
                406,
                json!({"error": "Content-Type header [text/plain] is not supported", "status": 406})
            )
        );
        assert_eq!(bulk(&s, &[], &create("alerts", "a")).status, 406);
        let bad_json = format!("{}{{\"create\": \n{}\n", create("alerts", "a"), doc("b"));
        assert_eq!(bulk(&s, &[NDJSON], &bad_json).status, 400);
        let unknown = format!("{}{}\n", create("alerts", "a"), json!({"upsert": {"_index": "alerts"}}));
        let r = bulk(&s, &[NDJSON], &unknown);
        assert_eq!(r.status, 400);
        assert!(
            r.json()["error"]["reason"]
                .as_str()
                .expect("reason")
                .contains("Malformed action/metadata line [3]")
        );
        let no_index = format!("{}{}\n{}\n", create("alerts", "a"), json!({"create": {}}), doc("b"));
        let r = bulk(&s, &[NDJSON], &no_index);
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"]["type"], "action_request_validation_exception");
        assert_eq!(r.json()["error"]["reason"], "Validation Failed: 1: index is missing;");
        assert!(s.received().is_empty());
        assert!(s.indices().is_empty());

        s.set_busy(true);
        let r = bulk(&s, &[NDJSON], &create("alerts", "a"));
        assert_eq!(r.status, 429);
        assert_eq!(r.json()["error"]["type"], "es_rejected_execution_exception");
        assert_eq!(r.json()["status"], 429);
        s.set_busy(false);
        s.fail_next(1, 503);
        assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "a")).status, 503);
        assert!(s.received().is_empty());
        assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "a")).status, 200);
        assert_eq!(s.ids(), ["a"]);
    }

    #[test]
    fn authentication() {
        let s = ElasticServer::start(ElasticSettings {
            api_key: Some("a2V5aWQ6c2VjcmV0".into()),
            basic: Some(("elastic".into(), "changeme".into())),
            data_streams: Vec::new(),
        });
        let r = bulk(&s, &[NDJSON], &create("alerts", "a"));
        assert_eq!(r.status, 401);
        let v = r.json();
        assert_eq!(v["status"], 401);
        assert_eq!(v["error"]["type"], "security_exception");
        assert_eq!(
            v["error"]["reason"],
            "missing authentication credentials for REST request [/_bulk]"
        );
        assert_eq!(v["error"]["root_cause"][0]["type"], "security_exception");
        let challenges: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(challenges.contains(&"ApiKey") && challenges.iter().any(|c| c.starts_with("Basic")));
        assert_eq!(get(s.addr(), "/", &[]).status, 401);

        let wrong = bulk(&s, &[NDJSON, ("Authorization", "ApiKey nope")], &create("alerts", "a"));
        assert_eq!(
            (wrong.status, wrong.json()["error"]["type"].as_str()),
            (401, Some("security_exception"))
        );
        let ok = bulk(
            &s,
            &[NDJSON, ("Authorization", "ApiKey a2V5aWQ6c2VjcmV0")],
            &create("alerts", "a"),
        );
        assert_eq!(ok.status, 200);
        let basic = format!("Basic {}", base64(b"elastic:changeme"));
        let ok = bulk(&s, &[NDJSON, ("Authorization", &basic)], &create("alerts", "b"));
        assert_eq!(ok.status, 200);
        let bad_basic = format!("Basic {}", base64(b"elastic:wrong"));
        let r = bulk(&s, &[NDJSON, ("Authorization", &bad_basic)], &create("alerts", "c"));
        assert_eq!(r.status, 401);
        assert_eq!(s.ids(), ["a", "b"]);
    }

    #[test]
    fn down_then_up_keeps_the_documents() {
        let s = ElasticServer::start(ElasticSettings::open());
        assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "a")).status, 200);
        s.set_down(true);
        let err = crate::http_request(s.addr(), "GET", "/", &[], b"").expect_err("refused while down");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        s.set_down(false);
        assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "b")).status, 200);
        assert_eq!(s.doc_ids("alerts"), ["a", "b"]);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(1_709_164_800), (2024, 2, 29));
        assert_eq!(civil_date(951_782_400), (2000, 2, 29));
    }
}
