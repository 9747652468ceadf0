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

mod bulk;
mod names;
mod parse;
mod rest;

use std::collections::{BTreeMap, HashSet};
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{Common, TestServer, lock, percent_decode, pseudo_guid};

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

#[cfg(test)]
mod tests;
