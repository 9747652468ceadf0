//! A Splunk HTTP Event Collector (HEC) test server that answers as Splunk documents, error codes
//! included, for testing Verity's HEC sink.
//!
//! Endpoints:
//! - `POST /services/collector/event` (also `/services/collector` and
//!   `/services/collector/event/1.0`): `Authorization: Splunk <token>` (or HTTP Basic with the
//!   token as the password); body = JSON envelopes concatenated, whitespace allowed between them
//!   (not an array), optionally `Content-Encoding: gzip`. The request is all or nothing: one bad
//!   envelope and nothing is indexed.
//! - `POST /services/collector/ack` with `{"acks":[0,1]}` → `{"acks":{"0":true,"1":false}}`:
//!   an ack is `true` once [`HecSettings::ack_delay`] has passed since its event request; as in
//!   Splunk, an ack reported `true` is released, so asking again answers `false`.
//! - `GET /services/collector/health` and `/services/collector/health/1.0` (no token).
//!
//! | status | code | text                                          | when                                   |
//! |--------|------|-----------------------------------------------|----------------------------------------|
//! | 200    | 0    | Success (+ `ackId` with acknowledgement on)   | indexed                                |
//! | 401    | 2    | Token is required                             | no `Authorization`                     |
//! | 401    | 3    | Invalid authorization                         | not `Splunk <token>` / Basic           |
//! | 403    | 4    | Invalid token                                 | wrong token                            |
//! | 400    | 5    | No data                                       | empty body                             |
//! | 400    | 6    | Invalid data format (+ `invalid-event-number`)| not JSON, not an object, bad `time`    |
//! | 400    | 7    | Incorrect index (+ `invalid-event-number`)    | `index` not in `allowed_indexes`       |
//! | 500    | 8    | Internal server error                         | `fail_next(n, 500)`                    |
//! | 503    | 9    | Server is busy                                | `set_busy(true)`, `fail_next(n, 503)`  |
//! | 400    | 10   | Data channel is missing                       | ack on, no channel                     |
//! | 400    | 11   | Invalid data channel                          | ack on, channel not a GUID             |
//! | 400    | 12   | Event field is required (+ number)            | envelope without `event`               |
//! | 400    | 13   | Event field cannot be blank (+ number)        | `event` is `""` or `null`              |
//! | 400    | 14   | ACK is disabled                               | ack request with acknowledgement off   |
//! | 400    | 15   | Error in handling indexed fields (+ number)   | `fields` not a flat object             |
//! | 400    | 16   | Query string authorization is not enabled     | `?token=` instead of the header        |
//! | 200    | 17   | HEC is healthy                                | health                                 |
//! | 503    | 18   | HEC is unhealthy, queues are full             | health while busy                      |
//!
//! The channel comes from the `X-Splunk-Request-Channel` header or the `channel` query
//! parameter; ack ids count from 0 per channel. [`TestServer::received`] holds whole envelopes;
//! the alert id is `event.id` (also when `event` is a string holding a JSON object).

mod envelope;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::{Map, Value, json};

use super::{Api, Common, Fault, Reply, Request, TestServer, base64_decode, lock};
use envelope::{envelope_id, parse_envelopes};

/// The token [`HecSettings::default`] uses (HEC tokens are GUIDs).
pub const DEFAULT_HEC_TOKEN: &str = "7c8f2b1e-4d3a-4e6f-9b0c-1a2d3e4f5a6b";

/// How the HEC test server is configured.
#[derive(Clone, Debug)]
pub struct HecSettings {
    /// The one valid token.
    pub token: String,
    /// Indexer acknowledgement on: a channel is required and successes carry an `ackId`.
    pub require_channel_ack: bool,
    /// `Some`: envelopes naming another `index` get 400 code 7 (no `index` means the token's
    /// default index, always allowed).
    pub allowed_indexes: Option<Vec<String>>,
    /// How long after its event request an ack turns `true`.
    pub ack_delay: Duration,
}

impl Default for HecSettings {
    fn default() -> Self {
        HecSettings {
            token: DEFAULT_HEC_TOKEN.to_string(),
            require_channel_ack: false,
            allowed_indexes: None,
            ack_delay: Duration::ZERO,
        }
    }
}

impl HecSettings {
    /// Acknowledgement off, any index.
    pub fn new(token: impl Into<String>) -> Self {
        HecSettings {
            token: token.into(),
            ..HecSettings::default()
        }
    }

    /// Turns indexer acknowledgement on with acks turning `true` after `ack_delay`.
    pub fn with_ack(mut self, ack_delay: Duration) -> Self {
        self.require_channel_ack = true;
        self.ack_delay = ack_delay;
        self
    }

    pub fn with_allowed_indexes<S: Into<String>>(mut self, indexes: impl IntoIterator<Item = S>) -> Self {
        self.allowed_indexes = Some(indexes.into_iter().map(Into::into).collect());
        self
    }
}

/// A running HEC test server; dereferences to [`TestServer`] for the shared controls.
pub struct HecServer {
    server: TestServer,
    api: Arc<HecApi>,
}

impl HecServer {
    /// Starts on `127.0.0.1` on a free port. Panics if it cannot bind.
    pub fn start(settings: HecSettings) -> HecServer {
        let api = Arc::new(HecApi {
            settings,
            state: Mutex::new(HecState::default()),
        });
        let server = TestServer::start("hec", api.clone(), Arc::new(Common::new()));
        HecServer { server, api }
    }

    pub fn settings(&self) -> &HecSettings {
        &self.api.settings
    }

    /// `http://127.0.0.1:PORT/services/collector/event`.
    pub fn event_url(&self) -> String {
        format!("{}/services/collector/event", self.url())
    }

    /// The `event` field of every accepted envelope, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .map(|mut e| e.get_mut("event").map(Value::take).unwrap_or(Value::Null))
            .collect()
    }

    /// How many ack requests (`POST /services/collector/ack`) arrived.
    pub fn ack_requests(&self) -> usize {
        lock(&self.api.state).ack_requests
    }

    /// Acks issued and not yet reported `true` (matured or not).
    pub fn pending_acks(&self) -> usize {
        lock(&self.api.state).channels.values().map(|c| c.pending.len()).sum()
    }

    /// The channels seen on successful event requests.
    pub fn channels(&self) -> Vec<String> {
        lock(&self.api.state).channels.keys().cloned().collect()
    }

    /// Simulates an indexer crash: every event whose ack has not yet turned `true` is lost
    /// (removed from [`TestServer::received`]) and its ack will answer `false` for ever.
    /// Returns how many events were lost.
    pub fn lose_unindexed(&self) -> usize {
        let now = Instant::now();
        let mut tags = HashSet::new();
        for channel in lock(&self.api.state).channels.values_mut() {
            channel.pending.retain(|_, p| {
                let indexed = now >= p.ready_at;
                if !indexed {
                    tags.insert(p.tag);
                }
                indexed
            });
        }
        self.server.common().withdraw(&tags)
    }
}

impl Deref for HecServer {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

#[derive(Default)]
struct HecState {
    channels: HashMap<String, Channel>,
    ack_requests: usize,
}

#[derive(Default)]
struct Channel {
    next_ack: u64,
    pending: BTreeMap<u64, PendingAck>,
}

struct PendingAck {
    ready_at: Instant,
    /// The tag its events were accepted under.
    tag: u64,
}

struct HecApi {
    settings: HecSettings,
    state: Mutex<HecState>,
}

/// A HEC answer `{"text":…,"code":…}`.
fn hec(status: u16, code: u32, text: &str) -> Reply {
    Reply::json(status, &json!({"text": text, "code": code}))
}

/// A HEC answer naming the (0-based) envelope that failed.
fn hec_event(status: u16, code: u32, text: &str, event_number: usize) -> Reply {
    Reply::json(
        status,
        &json!({"text": text, "code": code, "invalid-event-number": event_number}),
    )
}

fn not_found() -> Reply {
    hec(404, 404, "The requested URL was not found on this server.")
}

impl Api for HecApi {
    fn handle(&self, req: &Request, common: &Common) -> Reply {
        let path = req.path.trim_end_matches('/');
        match path {
            "/services/collector" | "/services/collector/event" | "/services/collector/event/1.0" => {
                if req.method == Method::POST {
                    self.event(req, common).ingest()
                } else {
                    not_found()
                }
            }
            "/services/collector/ack" if req.method == Method::POST => self.ack(req),
            "/services/collector/health" | "/services/collector/health/1.0"
                if req.method == Method::GET || req.method == Method::HEAD =>
            {
                if common.is_busy() {
                    hec(503, 18, "HEC is unhealthy, queues are full")
                } else {
                    hec(200, 17, "HEC is healthy")
                }
            }
            _ => not_found(),
        }
    }
}

impl HecApi {
    fn event(&self, req: &Request, common: &Common) -> Reply {
        if let Err(r) = self.authorize(req) {
            return r;
        }
        if let Some(fault) = common.take_fault() {
            return fault_reply(fault);
        }
        let channel = match self.channel(req) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Ok(body) = req.decoded_body() else {
            return hec(400, 6, "Invalid data format");
        };
        let envelopes = match parse_envelopes(&body, self.settings.allowed_indexes.as_deref()) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let tag = common.new_tag();
        // Register the ack before the events become visible, so a test that sees the events
        // also sees their ack.
        let ack_id = channel.map(|channel| {
            let mut state = lock(&self.state);
            let ch = state.channels.entry(channel).or_default();
            let id = ch.next_ack;
            ch.next_ack += 1;
            ch.pending.insert(
                id,
                PendingAck {
                    ready_at: Instant::now() + self.settings.ack_delay,
                    tag,
                },
            );
            id
        });
        common.accept(tag, envelopes.into_iter().map(|e| (envelope_id(&e), e)));
        match ack_id {
            Some(id) => Reply::json(200, &json!({"text": "Success", "code": 0, "ackId": id})),
            None => hec(200, 0, "Success"),
        }
    }

    fn ack(&self, req: &Request) -> Reply {
        lock(&self.state).ack_requests += 1;
        if let Err(r) = self.authorize(req) {
            return r;
        }
        if !self.settings.require_channel_ack {
            return hec(400, 14, "ACK is disabled");
        }
        let channel = match self.channel(req) {
            Ok(Some(c)) => c,
            Ok(None) => return hec(400, 10, "Data channel is missing"),
            Err(r) => return r,
        };
        let ids = req
            .decoded_body()
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| {
                v.get("acks")?
                    .as_array()?
                    .iter()
                    .map(Value::as_u64)
                    .collect::<Option<Vec<u64>>>()
            });
        let Some(ids) = ids else {
            return hec(400, 6, "Invalid data format");
        };
        let now = Instant::now();
        let mut state = lock(&self.state);
        let mut answer = Map::new();
        for id in ids {
            let done = match state.channels.get_mut(&channel) {
                Some(ch) => match ch.pending.get(&id) {
                    Some(p) if now >= p.ready_at => {
                        ch.pending.remove(&id);
                        true
                    }
                    _ => false,
                },
                None => false,
            };
            answer.insert(id.to_string(), Value::Bool(done));
        }
        Reply::json(200, &json!({ "acks": answer }))
    }

    /// Checks `Authorization: Splunk <token>` (or Basic with the token as password).
    fn authorize(&self, req: &Request) -> Result<(), Reply> {
        let Some(raw) = req.headers.get("authorization") else {
            if req.query_param("token").is_some() {
                return Err(hec(400, 16, "Query string authorization is not enabled"));
            }
            return Err(hec(401, 2, "Token is required"));
        };
        let invalid = || hec(401, 3, "Invalid authorization");
        let value = raw.to_str().map_err(|_| invalid())?.trim();
        let (scheme, rest) = value.split_once(' ').ok_or_else(invalid)?;
        let token = if scheme.eq_ignore_ascii_case("splunk") {
            rest.trim().to_string()
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64_decode(rest).ok_or_else(invalid)?;
            let text = String::from_utf8(decoded).map_err(|_| invalid())?;
            let (_, password) = text.split_once(':').ok_or_else(invalid)?;
            password.to_string()
        } else {
            return Err(invalid());
        };
        if token.is_empty() {
            return Err(invalid());
        }
        if token != self.settings.token {
            return Err(hec(403, 4, "Invalid token"));
        }
        Ok(())
    }

    /// The request's channel: required (and checked to be a GUID) with acknowledgement on,
    /// ignored otherwise.
    fn channel(&self, req: &Request) -> Result<Option<String>, Reply> {
        if !self.settings.require_channel_ack {
            return Ok(None);
        }
        let channel = req
            .header("x-splunk-request-channel")
            .map(str::to_string)
            .or_else(|| req.query_param("channel"));
        match channel {
            None => Err(hec(400, 10, "Data channel is missing")),
            Some(c) if is_guid(c.trim()) => Ok(Some(c.trim().to_ascii_lowercase())),
            Some(_) => Err(hec(400, 11, "Invalid data channel")),
        }
    }
}

fn fault_reply(fault: Fault) -> Reply {
    match fault {
        Fault::Busy | Fault::Status(503) => hec(503, 9, "Server is busy"),
        Fault::Status(400) => hec(400, 6, "Invalid data format"),
        Fault::Status(401) => hec(401, 2, "Token is required"),
        Fault::Status(403) => hec(403, 4, "Invalid token"),
        Fault::Status(status) => hec(status, 8, "Internal server error"),
    }
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests;
