//! A webhook receiver test server for Verity's webhook sink (HMAC-signed alert batches) and for
//! generic JSON-over-HTTP sinks such as OCSF over HTTP.
//!
//! Any path accepts `POST`. Checks, in order:
//! 1. [`WebhookSettings::bearer_token`], if set: `Authorization: Bearer <token>`, else 401;
//! 2. [`WebhookSettings::secret`], if not empty: `X-Verity-Timestamp: <unix seconds>` and
//!    `X-Verity-Signature: sha256=<64 lowercase hex digits>` =
//!    HMAC-SHA256(secret, `"<timestamp>.<body bytes as received>"`), compared in constant time
//!    (`ring::hmac::verify`); missing or wrong → 401 `{"error":"invalid signature"}` (counted by
//!    [`WebhookServer::rejected_signatures`]); a timestamp further than
//!    [`WebhookSettings::max_skew`] from now → 401 `{"error":"timestamp outside tolerance"}`
//!    (counted by [`WebhookServer::rejected_timestamps`]);
//! 3. busy → 503 with `Retry-After: 1`; scripted failures → their status (429 and 503 with
//!    `Retry-After: 1`);
//! 4. the body (gzip allowed, decoded after the signature check) must be JSON of the expected
//!    shape, else 400: [`WebhookFormat::VerityAlerts`] `{"version":"1","alerts":[{…},…]}`,
//!    each alert one document; [`WebhookFormat::Json`] an object or an array of objects, each
//!    object one document.
//!
//! Success: [`WebhookSettings::success_status`] (200 by default; 202 and 204 are usual too)
//! with `{"accepted":N}` (no body for 204). Ids come from [`WebhookSettings::id`].

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Method;
use ring::hmac;
use serde_json::{Value, json};

use super::{Api, Common, Fault, Reply, Request, TestServer, id_string, lock, unix_now};

/// The header carrying the signing time (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "X-Verity-Timestamp";
/// The header carrying `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Verity-Signature";

/// The value of [`SIGNATURE_HEADER`] for `body` signed at `timestamp` (the header's text).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// The body shape the receiver expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Verity's webhook: `{"version":"1","alerts":[…]}`.
    VerityAlerts,
    /// A JSON object or an array of objects (e.g. OCSF findings).
    Json,
}

/// Extracts an alert id from a document.
pub type IdFn = Arc<dyn Fn(&Value) -> Option<String> + Send + Sync>;

/// Where a document's alert id is.
#[derive(Clone)]
pub enum IdField {
    /// A JSON pointer (RFC 6901), e.g. `/finding_info/uid`.
    Pointer(String),
    /// Any extraction.
    Custom(IdFn),
    /// Documents carry no id.
    None,
}

impl IdField {
    /// A Verity alert's `id`.
    pub fn alert() -> Self {
        IdField::Pointer("/id".into())
    }

    /// An OCSF finding's `finding_info.uid`.
    pub fn ocsf() -> Self {
        IdField::Pointer("/finding_info/uid".into())
    }

    pub fn custom(f: impl Fn(&Value) -> Option<String> + Send + Sync + 'static) -> Self {
        IdField::Custom(Arc::new(f))
    }

    fn extract(&self, doc: &Value) -> Option<String> {
        match self {
            IdField::Pointer(p) => doc.pointer(p).and_then(id_string),
            IdField::Custom(f) => f(doc),
            IdField::None => None,
        }
    }
}

impl std::fmt::Debug for IdField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdField::Pointer(p) => write!(f, "Pointer({p:?})"),
            IdField::Custom(_) => f.write_str("Custom(..)"),
            IdField::None => f.write_str("None"),
        }
    }
}

/// How the webhook receiver is configured.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// The HMAC key; empty means requests need no signature.
    pub secret: Vec<u8>,
    /// How far `X-Verity-Timestamp` may be from now, either way.
    pub max_skew: Duration,
    pub format: WebhookFormat,
    pub id: IdField,
    /// `Some`: `Authorization: Bearer <token>` is required too.
    pub bearer_token: Option<String>,
    /// The status of a successful answer.
    pub success_status: u16,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            secret: Vec::new(),
            max_skew: Duration::from_secs(300),
            format: WebhookFormat::VerityAlerts,
            id: IdField::alert(),
            bearer_token: None,
            success_status: 200,
        }
    }
}

impl WebhookSettings {
    /// Verity's signed webhook with a 5-minute tolerance.
    pub fn signed(secret: impl Into<Vec<u8>>) -> Self {
        WebhookSettings {
            secret: secret.into(),
            ..WebhookSettings::default()
        }
    }

    /// Unsigned JSON objects (or arrays of them) with ids from `id`.
    pub fn json(id: IdField) -> Self {
        WebhookSettings {
            format: WebhookFormat::Json,
            id,
            ..WebhookSettings::default()
        }
    }

    /// Unsigned OCSF documents (ids from `finding_info.uid`).
    pub fn ocsf() -> Self {
        WebhookSettings::json(IdField::ocsf())
    }
}

/// A running webhook receiver; dereferences to [`TestServer`] for the shared controls.
pub struct WebhookServer {
    server: TestServer,
    api: Arc<WebhookApi>,
}

impl WebhookServer {
    /// Starts on `127.0.0.1` on a free port. Panics if it cannot bind.
    pub fn start(settings: WebhookSettings) -> WebhookServer {
        let api = Arc::new(WebhookApi {
            settings,
            rejected_signatures: AtomicUsize::new(0),
            rejected_timestamps: AtomicUsize::new(0),
            batches: Mutex::new(Vec::new()),
        });
        let server = TestServer::start("webhook", api.clone(), Arc::new(Common::new()));
        WebhookServer { server, api }
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.api.settings
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url_for(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }

    /// Requests refused for a missing or wrong signature.
    pub fn rejected_signatures(&self) -> usize {
        self.api.rejected_signatures.load(Ordering::SeqCst)
    }

    /// Correctly signed requests refused for a timestamp outside the tolerance.
    pub fn rejected_timestamps(&self) -> usize {
        self.api.rejected_timestamps.load(Ordering::SeqCst)
    }

    /// How many documents each accepted request carried, in arrival order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        lock(&self.api.batches).clone()
    }
}

impl Deref for WebhookServer {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

struct WebhookApi {
    settings: WebhookSettings,
    rejected_signatures: AtomicUsize,
    rejected_timestamps: AtomicUsize,
    batches: Mutex<Vec<usize>>,
}

fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, &json!({ "error": message }))
}

impl Api for WebhookApi {
    fn handle(&self, req: &Request, common: &Common) -> Reply {
        if req.method != Method::POST {
            return error(405, "method not allowed").with_header("allow", "POST");
        }
        self.post(req, common).ingest()
    }
}

impl WebhookApi {
    fn post(&self, req: &Request, common: &Common) -> Reply {
        if let Some(token) = &self.settings.bearer_token {
            let given = req.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
            if given.map(str::trim) != Some(token.as_str()) {
                return error(401, "invalid bearer token").with_header("www-authenticate", "Bearer");
            }
        }
        if !self.settings.secret.is_empty()
            && let Err(reply) = self.verify(req)
        {
            return reply;
        }
        match common.take_fault() {
            Some(Fault::Busy) => return error(503, "busy").with_header("retry-after", "1"),
            Some(Fault::Status(status @ (429 | 503))) => {
                return error(status, "scripted failure").with_header("retry-after", "1");
            }
            Some(Fault::Status(status)) => return error(status, "scripted failure"),
            None => {}
        }
        let body = match req.decoded_body() {
            Ok(b) => b,
            Err(e) => return error(400, &e),
        };
        let value: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(400, &format!("body is not JSON: {e}")),
        };
        let docs = match (self.settings.format, value) {
            (WebhookFormat::VerityAlerts, Value::Object(mut batch)) => {
                if batch.get("version").and_then(Value::as_str) != Some("1") {
                    return error(400, "unsupported or missing \"version\" (expected \"1\")");
                }
                match batch.remove("alerts") {
                    Some(Value::Array(alerts)) if alerts.iter().all(Value::is_object) => alerts,
                    _ => return error(400, "\"alerts\" must be an array of objects"),
                }
            }
            (WebhookFormat::VerityAlerts, _) => return error(400, "body must be a JSON object"),
            (WebhookFormat::Json, Value::Array(docs)) if docs.iter().all(Value::is_object) => docs,
            (WebhookFormat::Json, doc @ Value::Object(_)) => vec![doc],
            (WebhookFormat::Json, _) => return error(400, "body must be a JSON object or an array of objects"),
        };
        let n = docs.len();
        lock(&self.batches).push(n);
        common.accept(
            common.new_tag(),
            docs.into_iter().map(|d| (self.settings.id.extract(&d), d)),
        );
        match self.settings.success_status {
            204 => Reply::empty(204),
            status => Reply::json(status, &json!({ "accepted": n })),
        }
    }

    fn verify(&self, req: &Request) -> Result<(), Reply> {
        let reject = || {
            self.rejected_signatures.fetch_add(1, Ordering::SeqCst);
            error(401, "invalid signature")
        };
        let timestamp = req.header(TIMESTAMP_HEADER).ok_or_else(reject)?;
        let signature = req.header(SIGNATURE_HEADER).ok_or_else(reject)?;
        let digits = signature.strip_prefix("sha256=").ok_or_else(reject)?;
        if digits.len() != 64 || !digits.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(reject());
        }
        let tag = hex::decode(digits).map_err(|_| reject())?;
        let mut message = Vec::with_capacity(timestamp.len() + 1 + req.body.len());
        message.extend_from_slice(timestamp.as_bytes());
        message.push(b'.');
        message.extend_from_slice(&req.body);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.settings.secret);
        hmac::verify(&key, &message, &tag).map_err(|_| reject())?;
        let fresh = timestamp
            .trim()
            .parse::<i64>()
            .is_ok_and(|t| unix_now().abs_diff(t) <= self.settings.max_skew.as_secs());
        if !fresh {
            self.rejected_timestamps.fetch_add(1, Ordering::SeqCst);
            return Err(error(401, "timestamp outside tolerance"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{get, post};
    use super::*;

    const SECRET: &[u8] = b"s3cret";

    fn batch(ids: &[&str]) -> Vec<u8> {
        let alerts: Vec<Value> = ids.iter().map(|id| json!({"id": id, "severity": "high"})).collect();
        json!({"version": "1", "alerts": alerts}).to_string().into_bytes()
    }

    fn signed_post(s: &WebhookServer, ts: i64, secret: &[u8], body: &[u8]) -> crate::HttpResponse {
        let ts = ts.to_string();
        let sig = sign(secret, &ts, body);
        post(
            s.addr(),
            "/hooks/verity",
            &[
                (TIMESTAMP_HEADER, &ts),
                (SIGNATURE_HEADER, &sig),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    }

    #[test]
    fn known_signature() {
        // Computed independently (Python's hmac module).
        assert_eq!(
            sign(SECRET, "1700000000", br#"{"version":"1","alerts":[]}"#),
            "sha256=f28f6ccda14098ab55a1fc7c81539052b93901ff8461d6b3f18383e168427138"
        );
    }

    #[test]
    fn accepts_signed_batches() {
        let s = WebhookServer::start(WebhookSettings::signed(SECRET));
        let r = signed_post(&s, unix_now(), SECRET, &batch(&["a", "b"]));
        assert_eq!((r.status, r.json()), (200, json!({"accepted": 2})));
        assert_eq!(s.ids(), ["a", "b"]);
        assert_eq!(s.received()[0]["severity"], "high");
        assert_eq!(s.batch_sizes(), [2]);
        assert_eq!(s.request_log()[0].path, "/hooks/verity");
    }

    #[test]
    fn rejects_bad_signatures_and_stale_timestamps() {
        let s = WebhookServer::start(WebhookSettings {
            max_skew: Duration::from_secs(60),
            ..WebhookSettings::signed(SECRET)
        });
        let body = batch(&["a"]);
        assert_eq!(signed_post(&s, unix_now(), b"other", &body).status, 401);
        assert_eq!(post(s.addr(), "/", &[], &body).status, 401);
        let ts = unix_now().to_string();
        let upper = sign(SECRET, &ts, &body).to_uppercase().replace("SHA256=", "sha256=");
        let r = post(
            s.addr(),
            "/",
            &[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, &upper)],
            &body,
        );
        assert_eq!(r.status, 401, "hex must be lowercase");
        // A body changed after signing.
        let sig = sign(SECRET, &ts, &body);
        let r = post(
            s.addr(),
            "/",
            &[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, &sig)],
            &batch(&["b"]),
        );
        assert_eq!((r.status, r.json()), (401, json!({"error": "invalid signature"})));
        assert_eq!(s.rejected_signatures(), 4);

        let r = signed_post(&s, unix_now() - 120, SECRET, &body);
        assert_eq!(
            (r.status, r.json()),
            (401, json!({"error": "timestamp outside tolerance"}))
        );
        assert_eq!(signed_post(&s, unix_now() + 120, SECRET, &body).status, 401);
        assert_eq!(s.rejected_timestamps(), 2);
        assert!(s.received().is_empty());

        assert_eq!(signed_post(&s, unix_now(), SECRET, b"not json").status, 400);
        assert_eq!(
            signed_post(&s, unix_now(), SECRET, br#"{"version":"2","alerts":[]}"#).status,
            400
        );
        assert_eq!(signed_post(&s, unix_now(), SECRET, br#"[{"id":"a"}]"#).status, 400);
        assert_eq!(s.requests(), 9);
        assert_eq!(get(s.addr(), "/", &[]).status, 405);
    }

    #[test]
    fn json_mode_for_ocsf() {
        let s = WebhookServer::start(WebhookSettings {
            success_status: 202,
            bearer_token: Some("tok".into()),
            ..WebhookSettings::ocsf()
        });
        let finding = |uid: &str| json!({"class_uid": 2004, "finding_info": {"uid": uid, "title": "t"}});
        let auth = [("Authorization", "Bearer tok")];
        let array = json!([finding("f1"), finding("f2")]).to_string();
        assert_eq!(post(s.addr(), "/ocsf", &auth, array.as_bytes()).status, 202);
        assert_eq!(
            post(s.addr(), "/ocsf", &auth, finding("f3").to_string().as_bytes()).status,
            202
        );
        assert_eq!(post(s.addr(), "/ocsf", &auth, b"[1,2]").status, 400);
        assert_eq!(post(s.addr(), "/ocsf", &[], array.as_bytes()).status, 401);
        assert_eq!(s.ids(), ["f1", "f2", "f3"]);
        assert_eq!(s.batch_sizes(), [2, 1]);

        s.set_busy(true);
        let r = post(s.addr(), "/ocsf", &auth, array.as_bytes());
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
        s.set_busy(false);
        s.fail_next(1, 500);
        assert_eq!(post(s.addr(), "/ocsf", &auth, array.as_bytes()).status, 500);
        assert_eq!(s.received().len(), 3);
    }

    #[test]
    fn down_then_up() {
        let s = WebhookServer::start(WebhookSettings::ocsf());
        s.set_down(true);
        let err = crate::http_request(s.addr(), "POST", "/", &[], b"{}").expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        s.set_down(false);
        assert_eq!(post(s.addr(), "/", &[], br#"{"finding_info":{"uid":"x"}}"#).status, 200);
        assert_eq!(s.ids(), ["x"]);
    }
}
