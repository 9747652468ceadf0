//! Test receivers that follow the published contracts of SIEM ingestion APIs where no real
//! server can run here: Splunk HEC (event, ack and health endpoints with their error codes),
//! Elasticsearch `_bulk` (per-item results, `create` conflicts, final-newline rule), a signed
//! webhook, and the Azure Monitor Logs Ingestion API used by Sentinel.
//!
//! Each runs on its own thread and loopback port, can be taken down (the port refuses
//! connections) and brought back on the same port, and records what it accepted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// What every receiver records.
#[derive(Default)]
pub struct Record {
    /// Accepted documents, in arrival order.
    pub docs: Vec<Value>,
    /// The alert id of each accepted document (duplicates included).
    pub ids: Vec<String>,
    pub requests: u64,
    /// Requests refused, by HTTP status.
    pub refused: BTreeMap<u16, u64>,
}

struct Shared<S> {
    record: Mutex<Record>,
    settings: Mutex<S>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A server on a fixed loopback port that can go down and come back.
pub struct Server<S> {
    addr: SocketAddr,
    shared: Arc<Shared<S>>,
    router: Router,
    running: Mutex<Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl<S: Send + 'static> Server<S> {
    fn start(settings: S, router: impl FnOnce(Arc<Shared<S>>) -> Router) -> Self {
        let shared = Arc::new(Shared {
            record: Mutex::new(Record::default()),
            settings: Mutex::new(settings),
        });
        let router = router(shared.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let s = Self {
            addr,
            shared,
            router,
            running: Mutex::new(None),
        };
        s.serve(listener);
        s
    }

    fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let router = self.router.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                    let _ = rx.await;
                });
                // A client holding a connection open must not keep a "down" server up.
                let _ = tokio::time::timeout(Duration::from_secs(3600), serve).await;
            });
        });
        *lock(&self.running) = Some((tx, thread));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Down: the port refuses connections. Up: served again on the same port.
    pub fn set_down(&self, down: bool) {
        if down {
            if let Some((tx, thread)) = lock(&self.running).take() {
                let _ = tx.send(());
                let _ = thread.join();
            }
        } else if lock(&self.running).is_none() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match std::net::TcpListener::bind(self.addr) {
                    Ok(l) => {
                        self.serve(l);
                        return;
                    }
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("cannot rebind {}: {e}", self.addr),
                }
            }
        }
    }

    pub fn record(&self) -> MutexGuard<'_, Record> {
        lock(&self.shared.record)
    }

    pub fn ids(&self) -> Vec<String> {
        self.record().ids.clone()
    }

    pub fn distinct_ids(&self) -> BTreeSet<String> {
        self.record().ids.iter().cloned().collect()
    }

    pub fn docs(&self) -> Vec<Value> {
        self.record().docs.clone()
    }

    /// Changes the receiver's behaviour (busy, failures to inject, …) while it runs.
    pub fn settings(&self) -> MutexGuard<'_, S> {
        lock(&self.shared.settings)
    }
}

impl<S> Drop for Server<S> {
    fn drop(&mut self) {
        if let Some((tx, thread)) = lock(&self.running).take() {
            let _ = tx.send(());
            let _ = thread.join();
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn refuse<S>(shared: &Shared<S>, status: StatusCode, body: Value) -> Response {
    *lock(&shared.record).refused.entry(status.as_u16()).or_default() += 1;
    let mut r = json_response(status, &body);
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Splunk HTTP Event Collector

pub struct Hec {
    pub token: String,
    /// Indexer acknowledgement: a channel is required and answers carry an `ackId`.
    pub ack: bool,
    /// How long after the event request an ack turns true.
    pub ack_delay: Duration,
    /// Answer 503 code 9 ("Server is busy") to event requests.
    pub busy: bool,
    acks: HashMap<String, Vec<Instant>>,
}

impl Hec {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.to_string(),
            ack: false,
            ack_delay: Duration::from_millis(100),
            busy: false,
            acks: HashMap::new(),
        }
    }
}

fn hec_error(code: u32, text: &str) -> Value {
    json!({"text": text, "code": code})
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12].iter().zip(&parts).all(|(n, p)| p.len() == *n)
        && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn hec_auth(shared: &Shared<Hec>, headers: &HeaderMap) -> Option<Response> {
    let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Some(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            hec_error(2, "Token is required"),
        ));
    };
    let Some(token) = v.strip_prefix("Splunk ") else {
        return Some(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            hec_error(3, "Invalid authorization"),
        ));
    };
    if token != lock(&shared.settings).token {
        return Some(refuse(shared, StatusCode::FORBIDDEN, hec_error(4, "Invalid token")));
    }
    None
}

fn hec_channel(
    shared: &Shared<Hec>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Option<String>, Box<Response>> {
    if !lock(&shared.settings).ack {
        return Ok(None);
    }
    let channel = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| query.get("channel").cloned());
    match channel {
        None => Err(Box::new(refuse(
            shared,
            StatusCode::BAD_REQUEST,
            hec_error(10, "Data channel is missing"),
        ))),
        Some(c) if !is_guid(&c) => Err(Box::new(refuse(
            shared,
            StatusCode::BAD_REQUEST,
            hec_error(11, "Invalid data channel"),
        ))),
        Some(c) => Ok(Some(c)),
    }
}

async fn hec_event(
    State(shared): State<Arc<Shared<Hec>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lock(&shared.record).requests += 1;
    if let Some(r) = hec_auth(&shared, &headers) {
        return r;
    }
    if lock(&shared.settings).busy {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, hec_error(9, "Server is busy"));
    }
    let channel = match hec_channel(&shared, &headers, &query) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return refuse(&shared, StatusCode::BAD_REQUEST, hec_error(5, "No data"));
    }
    // Envelopes are concatenated JSON objects; all or nothing.
    let mut events = Vec::new();
    for (i, item) in serde_json::Deserializer::from_slice(&body)
        .into_iter::<Value>()
        .enumerate()
    {
        let Ok(v) = item else {
            return refuse(
                &shared,
                StatusCode::BAD_REQUEST,
                json!({"text": "Invalid data format", "code": 6, "invalid-event-number": i}),
            );
        };
        match v.get("event") {
            None => {
                return refuse(
                    &shared,
                    StatusCode::BAD_REQUEST,
                    json!({"text": "Event field is required", "code": 12, "invalid-event-number": i}),
                );
            }
            Some(Value::Null) => {
                return refuse(
                    &shared,
                    StatusCode::BAD_REQUEST,
                    json!({"text": "Event field cannot be blank", "code": 13, "invalid-event-number": i}),
                );
            }
            Some(Value::String(s)) if s.is_empty() => {
                return refuse(
                    &shared,
                    StatusCode::BAD_REQUEST,
                    json!({"text": "Event field cannot be blank", "code": 13, "invalid-event-number": i}),
                );
            }
            Some(_) => events.push(v),
        }
    }
    {
        let mut rec = lock(&shared.record);
        for e in events {
            let id = e["event"]["id"].as_str().unwrap_or_default().to_string();
            rec.ids.push(id);
            rec.docs.push(e);
        }
    }
    match channel {
        Some(c) => {
            let mut s = lock(&shared.settings);
            let acks = s.acks.entry(c).or_default();
            acks.push(Instant::now());
            let id = acks.len() - 1;
            json_response(StatusCode::OK, &json!({"text": "Success", "code": 0, "ackId": id}))
        }
        None => json_response(StatusCode::OK, &json!({"text": "Success", "code": 0})),
    }
}

async fn hec_ack(
    State(shared): State<Arc<Shared<Hec>>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = hec_auth(&shared, &headers) {
        return r;
    }
    let channel = match hec_channel(&shared, &headers, &query) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return refuse(&shared, StatusCode::BAD_REQUEST, hec_error(14, "ACK is disabled"));
        }
        Err(r) => return *r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&shared, StatusCode::BAD_REQUEST, hec_error(6, "Invalid data format"));
    };
    let s = lock(&shared.settings);
    let sent = s.acks.get(&channel);
    let mut out = serde_json::Map::new();
    for id in req["acks"].as_array().cloned().unwrap_or_default() {
        let Some(n) = id.as_u64() else { continue };
        let done = sent
            .and_then(|v| v.get(n as usize))
            .is_some_and(|t| t.elapsed() >= s.ack_delay);
        out.insert(n.to_string(), Value::Bool(done));
    }
    json_response(StatusCode::OK, &json!({ "acks": out }))
}

async fn hec_health(State(shared): State<Arc<Shared<Hec>>>) -> Response {
    if lock(&shared.settings).busy {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, hec_error(9, "Server is busy"));
    }
    json_response(StatusCode::OK, &hec_error(17, "HEC is healthy"))
}

pub fn hec(settings: Hec) -> Server<Hec> {
    Server::start(settings, |shared| {
        Router::new()
            .route("/services/collector/event", post(hec_event))
            .route("/services/collector", post(hec_event))
            .route("/services/collector/ack", post(hec_ack))
            .route("/services/collector/health/1.0", get(hec_health))
            .route("/services/collector/health", get(hec_health))
            .with_state(shared)
    })
}

// ---------------------------------------------------------------------------------------------
// Elasticsearch `_bulk`

#[derive(Default)]
pub struct Elastic {
    /// Whole requests answered 429.
    pub busy: bool,
    /// Every n-th document (by arrival) is rejected with 429 on its first attempt only.
    pub reject_every_nth_once: Option<usize>,
    /// Documents whose JSON contains this are rejected with 400 every time.
    pub reject_marker: Option<String>,
    seen: u64,
    rejected_once: BTreeSet<String>,
    stored: BTreeSet<(String, String)>,
}

fn es_error(status: u16, kind: &str, reason: &str) -> Value {
    json!({"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason}, "status": status})
}

async fn es_root() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "name": "verity-test", "cluster_name": "verity-test-cluster", "cluster_uuid": "test",
            "version": {"number": "8.15.0", "build_flavor": "default"}, "tagline": "You Know, for Search"
        }),
    )
    .into_response()
}

async fn es_bulk_index(
    State(shared): State<Arc<Shared<Elastic>>>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    es_bulk_inner(&shared, Some(index), &headers, &body)
}

async fn es_bulk(State(shared): State<Arc<Shared<Elastic>>>, headers: HeaderMap, body: Bytes) -> Response {
    es_bulk_inner(&shared, None, &headers, &body)
}

fn es_bulk_inner(shared: &Shared<Elastic>, path_index: Option<String>, headers: &HeaderMap, body: &[u8]) -> Response {
    lock(&shared.record).requests += 1;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.starts_with("application/x-ndjson") || ct.starts_with("application/json")) {
        return refuse(
            shared,
            StatusCode::NOT_ACCEPTABLE,
            json!({"error": format!("Content-Type header [{ct}] is not supported"), "status": 406}),
        );
    }
    if lock(&shared.settings).busy {
        return refuse(
            shared,
            StatusCode::TOO_MANY_REQUESTS,
            es_error(
                429,
                "es_rejected_execution_exception",
                "rejected execution of bulk request",
            ),
        );
    }
    if !body.ends_with(b"\n") {
        return refuse(
            shared,
            StatusCode::BAD_REQUEST,
            es_error(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            ),
        );
    }
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut items = Vec::new();
    let mut errors = false;
    let mut i = 0;
    let mut settings = lock(&shared.settings);
    let mut rec = lock(&shared.record);
    while i < lines.len() {
        let Ok(action) = serde_json::from_slice::<Value>(lines[i]) else {
            drop(rec);
            drop(settings);
            return refuse(
                shared,
                StatusCode::BAD_REQUEST,
                es_error(400, "x_content_parse_exception", "Malformed action/metadata line"),
            );
        };
        let Some((op, meta)) = action.as_object().and_then(|o| o.iter().next()) else {
            drop(rec);
            drop(settings);
            return refuse(
                shared,
                StatusCode::BAD_REQUEST,
                es_error(400, "illegal_argument_exception", "Malformed action"),
            );
        };
        let op = op.clone();
        let index = meta["_index"]
            .as_str()
            .map(String::from)
            .or_else(|| path_index.clone())
            .unwrap_or_default();
        let id = meta["_id"].as_str().unwrap_or_default().to_string();
        let Some(doc_line) = lines.get(i + 1) else { break };
        i += 2;
        settings.seen += 1;
        let doc: Value = serde_json::from_slice(doc_line).unwrap_or(Value::Null);
        let (status, error) = if settings
            .reject_marker
            .as_ref()
            .is_some_and(|m| String::from_utf8_lossy(doc_line).contains(m.as_str()))
        {
            (
                400,
                Some(
                    json!({"type": "mapper_parsing_exception", "reason": "failed to parse field [message] of type [keyword]"}),
                ),
            )
        } else if settings
            .reject_every_nth_once
            .is_some_and(|n| settings.seen.is_multiple_of(n as u64))
            && settings.rejected_once.insert(id.clone())
        {
            (
                429,
                Some(
                    json!({"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}),
                ),
            )
        } else if op == "create" && settings.stored.contains(&(index.clone(), id.clone())) {
            (
                409,
                Some(
                    json!({"type": "version_conflict_engine_exception", "reason": format!("[{id}]: version conflict, document already exists (current version [1])")}),
                ),
            )
        } else {
            settings.stored.insert((index.clone(), id.clone()));
            rec.ids.push(doc["event"]["id"].as_str().unwrap_or(&id).to_string());
            rec.docs.push(json!({"_index": index, "_id": id, "_source": doc}));
            (201, None)
        };
        let mut item = json!({"_index": index, "_id": id, "status": status});
        match error {
            Some(e) => {
                errors = true;
                item["error"] = e;
            }
            None => {
                item["result"] = json!("created");
                item["_version"] = json!(1);
            }
        }
        items.push(json!({ op: item }));
    }
    json_response(StatusCode::OK, &json!({"took": 1, "errors": errors, "items": items}))
}

pub fn elastic(settings: Elastic) -> Server<Elastic> {
    Server::start(settings, |shared| {
        Router::new()
            .route("/", get(es_root))
            .route("/_bulk", post(es_bulk))
            .route("/{index}/_bulk", post(es_bulk_index))
            .with_state(shared)
    })
}

// ---------------------------------------------------------------------------------------------
// Signed webhook

pub struct Webhook {
    pub secret: Vec<u8>,
    pub max_skew: Duration,
    pub rejected_signatures: u64,
}

impl Webhook {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
            max_skew: Duration::from_secs(300),
            rejected_signatures: 0,
        }
    }
}

async fn webhook_post(State(shared): State<Arc<Shared<Webhook>>>, headers: HeaderMap, body: Bytes) -> Response {
    lock(&shared.record).requests += 1;
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (ts, sig) = (h("x-verity-timestamp"), h("x-verity-signature"));
    let ok = {
        let mut s = lock(&shared.settings);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let fresh = ts.parse::<u64>().is_ok_and(|t| t.abs_diff(now) <= s.max_skew.as_secs());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s.secret);
        let mut msg = ts.clone().into_bytes();
        msg.push(b'.');
        msg.extend_from_slice(&body);
        let valid = sig
            .strip_prefix("sha256=")
            .and_then(|x| hex::decode(x).ok())
            .is_some_and(|tag| ring::hmac::verify(&key, &msg, &tag).is_ok());
        if !(fresh && valid) {
            s.rejected_signatures += 1;
        }
        fresh && valid
    };
    if !ok {
        return refuse(
            &shared,
            StatusCode::UNAUTHORIZED,
            json!({"error": "bad or stale signature"}),
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return refuse(&shared, StatusCode::BAD_REQUEST, json!({"error": "not JSON"}));
    };
    let mut rec = lock(&shared.record);
    for a in v["alerts"].as_array().cloned().unwrap_or_default() {
        rec.ids.push(a["id"].as_str().unwrap_or_default().to_string());
        rec.docs.push(a);
    }
    StatusCode::ACCEPTED.into_response()
}

pub fn webhook(settings: Webhook) -> Server<Webhook> {
    Server::start(settings, |shared| {
        Router::new().route("/hook", post(webhook_post)).with_state(shared)
    })
}

// ---------------------------------------------------------------------------------------------
// Azure Monitor Logs Ingestion API (Microsoft Sentinel)

pub struct Sentinel {
    pub token: String,
    pub dcr_id: String,
    pub stream: String,
    pub busy: bool,
}

async fn sentinel_post(
    State(shared): State<Arc<Shared<Sentinel>>>,
    Path((dcr, stream)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    lock(&shared.record).requests += 1;
    let (token, want_dcr, want_stream, busy) = {
        let s = lock(&shared.settings);
        (s.token.clone(), s.dcr_id.clone(), s.stream.clone(), s.busy)
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {token}") {
        return refuse(
            &shared,
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": "InvalidToken", "message": "The provided token is invalid"}}),
        );
    }
    if query.get("api-version").map(String::as_str) != Some("2023-01-01") {
        return refuse(
            &shared,
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "InvalidApiVersion", "message": "The api-version is not supported"}}),
        );
    }
    if dcr != want_dcr || stream != want_stream {
        return refuse(
            &shared,
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "NotFound", "message": "Data collection rule or stream not found"}}),
        );
    }
    if busy {
        return refuse(
            &shared,
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"code": "TooManyRequests", "message": "Rate limit exceeded"}}),
        );
    }
    if body.len() > 1_048_576 {
        return refuse(
            &shared,
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": {"code": "ContentLengthLimitExceeded", "message": "Maximum allowed content length: 1048576 bytes"}}),
        );
    }
    let Ok(Value::Array(rows)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(
            &shared,
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "InvalidContent", "message": "The body must be a JSON array"}}),
        );
    };
    let mut rec = lock(&shared.record);
    for r in rows {
        rec.ids.push(r["AlertId"].as_str().unwrap_or_default().to_string());
        rec.docs.push(r);
    }
    StatusCode::NO_CONTENT.into_response()
}

pub fn sentinel(settings: Sentinel) -> Server<Sentinel> {
    Server::start(settings, |shared| {
        Router::new()
            .route("/dataCollectionRules/{dcr}/streams/{stream}", post(sentinel_post))
            .with_state(shared)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_request;

    fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
        let r = http_request(addr, "POST", path, headers, body).expect("request");
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }

    const CHANNEL: &str = "11111111-2222-3333-4444-555555555555";

    #[test]
    fn hec_answers_as_splunk_documents() {
        let mut settings = Hec::new("tok");
        settings.ack = true;
        settings.ack_delay = Duration::from_millis(100);
        let s = hec(settings);
        let ev = "/services/collector/event";
        let auth = ("Authorization", "Splunk tok");
        let chan = ("X-Splunk-Request-Channel", CHANNEL);
        assert_eq!(post(s.addr(), ev, &[], b"{}").1["code"], 2);
        assert_eq!(
            post(s.addr(), ev, &[("Authorization", "Bearer tok")], b"{}").1["code"],
            3
        );
        let (st, v) = post(s.addr(), ev, &[("Authorization", "Splunk nope")], b"{}");
        assert_eq!((st, v["code"].as_u64()), (403, Some(4)));
        assert_eq!(post(s.addr(), ev, &[auth], b"{\"event\":1}").1["code"], 10);
        assert_eq!(
            post(
                s.addr(),
                ev,
                &[auth, ("X-Splunk-Request-Channel", "x")],
                b"{\"event\":1}"
            )
            .1["code"],
            11
        );
        assert_eq!(post(s.addr(), ev, &[auth, chan], b"  ").1["code"], 5);
        let (st, v) = post(s.addr(), ev, &[auth, chan], b"{\"event\":{\"id\":\"a\"}}{\"event\":");
        assert_eq!(
            (st, v["code"].as_u64(), v["invalid-event-number"].as_u64()),
            (400, Some(6), Some(1))
        );
        assert_eq!(post(s.addr(), ev, &[auth, chan], b"{\"time\":1}").1["code"], 12);
        assert_eq!(post(s.addr(), ev, &[auth, chan], b"{\"event\":\"\"}").1["code"], 13);
        assert!(s.ids().is_empty(), "a refused request indexes nothing");
        let (st, v) = post(
            s.addr(),
            ev,
            &[auth, chan],
            b"{\"event\":{\"id\":\"a\"}}\n{\"event\":{\"id\":\"b\"}}",
        );
        assert_eq!((st, v["code"].as_u64(), v["ackId"].as_u64()), (200, Some(0), Some(0)));
        assert_eq!(s.ids(), vec!["a", "b"]);
        let ack = |s: &Server<Hec>| post(s.addr(), "/services/collector/ack", &[auth, chan], b"{\"acks\":[0,7]}").1;
        assert_eq!(ack(&s)["acks"], json!({"0": false, "7": false}));
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(ack(&s)["acks"], json!({"0": true, "7": false}));
        s.settings().busy = true;
        let (st, v) = post(s.addr(), ev, &[auth, chan], b"{\"event\":{\"id\":\"c\"}}");
        assert_eq!((st, v["code"].as_u64()), (503, Some(9)));
        let health = http_request(s.addr(), "GET", "/services/collector/health/1.0", &[], b"").expect("health");
        assert_eq!(health.status, 503);
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)] // the same way other crates must set it up
    fn elastic_bulk_per_item_results() {
        let mut settings = Elastic::default();
        settings.reject_every_nth_once = Some(2);
        let s = elastic(settings);
        let nd = ("Content-Type", "application/x-ndjson");
        let body = b"{\"create\":{\"_index\":\"i\",\"_id\":\"1\"}}\n{\"event\":{\"id\":\"1\"}}\n{\"create\":{\"_index\":\"i\",\"_id\":\"2\"}}\n{\"event\":{\"id\":\"2\"}}\n";
        let (st, v) = post(s.addr(), "/_bulk", &[nd], &body[..body.len() - 1]);
        assert_eq!(
            (st, v["error"]["type"].as_str()),
            (400, Some("illegal_argument_exception"))
        );
        assert_eq!(post(s.addr(), "/_bulk", &[("Content-Type", "text/plain")], body).0, 406);
        let (st, v) = post(s.addr(), "/_bulk", &[nd], body);
        assert_eq!((st, v["errors"].as_bool()), (200, Some(true)));
        assert_eq!(v["items"][0]["create"]["status"], 201);
        assert_eq!(v["items"][1]["create"]["status"], 429);
        // Retried: the rejected one goes in, the other is a conflict.
        let (_, v) = post(s.addr(), "/_bulk", &[nd], body);
        assert_eq!(v["items"][0]["create"]["status"], 409);
        assert_eq!(
            v["items"][0]["create"]["error"]["type"],
            "version_conflict_engine_exception"
        );
        assert_eq!(v["items"][1]["create"]["status"], 201);
        assert_eq!(s.ids(), vec!["1", "2"]);
        s.settings().busy = true;
        assert_eq!(post(s.addr(), "/_bulk", &[nd], body).0, 429);
    }

    #[test]
    fn webhook_checks_signature_and_freshness() {
        let s = webhook(Webhook::new(b"k"));
        let body = br#"{"version":"1","alerts":[{"id":"x"}]}"#;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let sign = |ts: u64| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k");
            let mut msg = format!("{ts}.").into_bytes();
            msg.extend_from_slice(body);
            format!("sha256={}", hex::encode(ring::hmac::sign(&key, &msg).as_ref()))
        };
        let ts = now.to_string();
        let good = sign(now);
        assert_eq!(
            post(
                s.addr(),
                "/hook",
                &[("X-Verity-Timestamp", &ts), ("X-Verity-Signature", "sha256=00")],
                body
            )
            .0,
            401
        );
        let old = (now - 3600).to_string();
        let stale = sign(now - 3600);
        assert_eq!(
            post(
                s.addr(),
                "/hook",
                &[("X-Verity-Timestamp", &old), ("X-Verity-Signature", &stale)],
                body
            )
            .0,
            401
        );
        assert_eq!(
            post(
                s.addr(),
                "/hook",
                &[("X-Verity-Timestamp", &ts), ("X-Verity-Signature", &good)],
                body
            )
            .0,
            202
        );
        assert_eq!(s.ids(), vec!["x"]);
        assert_eq!(s.settings().rejected_signatures, 2);
    }

    #[test]
    fn sentinel_logs_ingestion_answers_and_down_up() {
        let s = sentinel(Sentinel {
            token: "t".into(),
            dcr_id: "dcr-1".into(),
            stream: "Custom-X_CL".into(),
            busy: false,
        });
        let path = "/dataCollectionRules/dcr-1/streams/Custom-X_CL?api-version=2023-01-01";
        let auth = ("Authorization", "Bearer t");
        assert_eq!(post(s.addr(), path, &[("Authorization", "Bearer no")], b"[]").0, 401);
        assert_eq!(
            post(
                s.addr(),
                "/dataCollectionRules/dcr-1/streams/Custom-X_CL",
                &[auth],
                b"[]"
            )
            .0,
            400
        );
        assert_eq!(
            post(
                s.addr(),
                "/dataCollectionRules/dcr-2/streams/Custom-X_CL?api-version=2023-01-01",
                &[auth],
                b"[]"
            )
            .0,
            404
        );
        assert_eq!(post(s.addr(), path, &[auth], &vec![b' '; 1_048_577]).0, 413);
        assert_eq!(post(s.addr(), path, &[auth], b"{}").0, 400);
        assert_eq!(post(s.addr(), path, &[auth], br#"[{"AlertId":"a"}]"#).0, 204);
        s.set_down(true);
        assert!(
            http_request(s.addr(), "POST", path, &[auth], b"[]").is_err(),
            "refused while down"
        );
        s.set_down(false);
        assert_eq!(post(s.addr(), path, &[auth], br#"[{"AlertId":"b"}]"#).0, 204);
        assert_eq!(s.ids(), vec!["a", "b"]);
    }
}
