//! A Microsoft Sentinel test server speaking the Azure Monitor Logs Ingestion API, for testing
//! Verity's Sentinel sink.
//!
//! `POST /dataCollectionRules/{dcr_id}/streams/{stream}?api-version=2023-01-01` with
//! `Authorization: Bearer <token>`, `Content-Type: application/json` and a JSON array of rows
//! (optionally `Content-Encoding: gzip`). Success is `204 No Content`. Checks, in order:
//!
//! | status | error code                    | when                                                 |
//! |--------|-------------------------------|------------------------------------------------------|
//! | 404    | `NotFound`                    | not a `/dataCollectionRules/…/streams/…` path       |
//! | 401    | `AuthenticationFailed`        | no `Authorization` header (`WWW-Authenticate: Bearer`)|
//! | 401    | `InvalidAuthenticationToken`  | not `Bearer <token>` or another token                |
//! | 400    | `MissingApiVersionParameter`  | no `api-version`                                     |
//! | 400    | `UnsupportedApiVersion`       | not `2023-01-01` (or the older `2021-11-01-preview`) |
//! | 404    | `NotFound`                    | unknown DCR immutable id or stream                   |
//! | 429    | `TooManyRequests`             | busy; `Retry-After: 1`                               |
//! | 503    | `ServiceUnavailable`          | `fail_next(n, 503)`; `Retry-After: 1`                |
//! | 415    | `UnsupportedMediaType`        | `Content-Type` not `application/json`                |
//! | 413    | `ContentLengthLimitExceeded`  | body over 1,048,576 bytes, compressed or inflated    |
//! | 400    | `InvalidContentEncoding`      | bad gzip, unknown encoding                           |
//! | 400    | `InvalidPayload`              | not JSON, or not an array of objects                 |
//!
//! Error bodies are `{"error":{"code":…,"message":…}}`; every answer carries an
//! `x-ms-request-id`. Each row is one document; its alert id is the `AlertId` column
//! ([`SentinelSettings::id_column`]). The real service answers 204 to a body that is a single
//! object and then drops it silently; this server answers 400 so a sink sending the wrong shape
//! is caught. The service's 1 MB limit applies to each call, so a sink must split batches.

use std::ops::Deref;
use std::sync::Arc;

use axum::http::Method;
use serde_json::{Value, json};

use super::{Api, Common, Fault, Reply, Request, TestServer, id_string, pseudo_guid};

/// The largest body the Logs Ingestion API accepts, compressed or not.
pub const MAX_CALL_BYTES: usize = 1_048_576;
/// The API version Verity uses.
pub const API_VERSION: &str = "2023-01-01";

/// How the Sentinel test server is configured.
#[derive(Clone, Debug)]
pub struct SentinelSettings {
    /// The one valid bearer token.
    pub token: String,
    /// The DCR's immutable id (`dcr-` and 32 hex digits in Azure).
    pub dcr_id: String,
    /// The stream declared in the DCR (`Custom-<Table>_CL` for custom tables).
    pub stream: String,
    /// The row column holding the alert id.
    pub id_column: String,
}

impl Default for SentinelSettings {
    fn default() -> Self {
        SentinelSettings {
            token: "test-bearer-token".into(),
            dcr_id: "dcr-0123456789abcdef0123456789abcdef".into(),
            stream: "Custom-VerityAlerts_CL".into(),
            id_column: "AlertId".into(),
        }
    }
}

impl SentinelSettings {
    pub fn new(token: impl Into<String>, dcr_id: impl Into<String>, stream: impl Into<String>) -> Self {
        SentinelSettings {
            token: token.into(),
            dcr_id: dcr_id.into(),
            stream: stream.into(),
            ..SentinelSettings::default()
        }
    }
}

/// A running Logs Ingestion API test server; dereferences to [`TestServer`] for the shared
/// controls (busy answers 429 with `Retry-After: 1`; `fail_next(n, 503)` answers 503).
pub struct SentinelServer {
    server: TestServer,
    api: Arc<SentinelApi>,
}

impl SentinelServer {
    /// Starts on `127.0.0.1` on a free port. Panics if it cannot bind.
    pub fn start(settings: SentinelSettings) -> SentinelServer {
        let api = Arc::new(SentinelApi { settings });
        let server = TestServer::start("sentinel", api.clone(), Arc::new(Common::new()));
        SentinelServer { server, api }
    }

    pub fn settings(&self) -> &SentinelSettings {
        &self.api.settings
    }

    /// The logs ingestion endpoint (what Azure calls the DCE or the DCR's logs endpoint):
    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.url()
    }

    /// The full upload URL for the configured DCR and stream, with `api-version`.
    pub fn upload_url(&self) -> String {
        format!("{}{}?api-version={API_VERSION}", self.url(), self.upload_path())
    }

    /// `/dataCollectionRules/{dcr_id}/streams/{stream}`.
    pub fn upload_path(&self) -> String {
        let s = &self.api.settings;
        format!("/dataCollectionRules/{}/streams/{}", s.dcr_id, s.stream)
    }

    /// The accepted rows (same as [`TestServer::received`]).
    pub fn rows(&self) -> Vec<Value> {
        self.received()
    }
}

impl Deref for SentinelServer {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

struct SentinelApi {
    settings: SentinelSettings,
}

fn azure_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, &json!({"error": {"code": code, "message": message}}))
        .with_content_type("application/json; charset=utf-8")
}

impl Api for SentinelApi {
    fn handle(&self, req: &Request, common: &Common) -> Reply {
        self.route(req, common).with_header("x-ms-request-id", pseudo_guid())
    }
}

impl SentinelApi {
    fn route(&self, req: &Request, common: &Common) -> Reply {
        let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let (dcr, stream) = match segments.as_slice() {
            [rules, dcr, streams, stream]
                if rules.eq_ignore_ascii_case("dataCollectionRules") && streams.eq_ignore_ascii_case("streams") =>
            {
                (*dcr, *stream)
            }
            _ => {
                return azure_error(404, "NotFound", &format!("The resource '{}' was not found.", req.path));
            }
        };
        if req.method != Method::POST {
            return azure_error(
                405,
                "MethodNotAllowed",
                &format!("The requested resource does not support http method '{}'.", req.method),
            )
            .with_header("allow", "POST");
        }
        self.upload(req, common, dcr, stream).ingest()
    }

    fn upload(&self, req: &Request, common: &Common, dcr: &str, stream: &str) -> Reply {
        let s = &self.settings;
        let Some(auth) = req.header("authorization") else {
            return azure_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
            .with_header("www-authenticate", "Bearer");
        };
        let token = auth.strip_prefix("Bearer ").map(str::trim);
        if token != Some(s.token.as_str()) {
            return azure_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
                .with_header("www-authenticate", "Bearer error=\"invalid_token\"");
        }
        match req.query_param("api-version") {
            None => {
                return azure_error(
                    400,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                );
            }
            Some(v) if v == API_VERSION || v == "2021-11-01-preview" => {}
            Some(v) => {
                return azure_error(
                    400,
                    "UnsupportedApiVersion",
                    &format!("The HTTP resource that matches the request URI does not support the API version '{v}'."),
                );
            }
        }
        if dcr != s.dcr_id {
            return azure_error(
                404,
                "NotFound",
                &format!("Data collection rule with immutable Id '{dcr}' not found."),
            );
        }
        if stream != s.stream {
            return azure_error(
                404,
                "NotFound",
                &format!("Stream '{stream}' is not declared in data collection rule '{dcr}'."),
            );
        }
        match common.take_fault() {
            None => {}
            Some(Fault::Busy) | Some(Fault::Status(429)) => {
                return azure_error(
                    429,
                    "TooManyRequests",
                    "The request was throttled. Retry after the interval in the Retry-After header.",
                )
                .with_header("retry-after", "1");
            }
            Some(Fault::Status(503)) => {
                return azure_error(503, "ServiceUnavailable", "The service is temporarily unavailable.")
                    .with_header("retry-after", "1");
            }
            Some(Fault::Status(status)) => {
                return azure_error(status, "InternalServerError", "Scripted failure.");
            }
        }
        if req.media_type().as_deref() != Some("application/json") {
            return azure_error(
                415,
                "UnsupportedMediaType",
                &format!(
                    "Content-Type '{}' is not supported; use application/json.",
                    req.header("content-type").unwrap_or("")
                ),
            );
        }
        let too_large = |n: usize| {
            azure_error(
                413,
                "ContentLengthLimitExceeded",
                &format!(
                    "Maximum allowed content length: {MAX_CALL_BYTES} bytes (1 MB). Provided content length: {n} bytes."
                ),
            )
        };
        if req.body.len() > MAX_CALL_BYTES {
            return too_large(req.body.len());
        }
        let body = match req.decoded_body() {
            Ok(b) => b,
            Err(e) => return azure_error(400, "InvalidContentEncoding", &e),
        };
        if body.len() > MAX_CALL_BYTES {
            return too_large(body.len());
        }
        let rows = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(rows)) if rows.iter().all(Value::is_object) => rows,
            Ok(_) => return azure_error(400, "InvalidPayload", "The payload must be a JSON array of objects."),
            Err(e) => return azure_error(400, "InvalidPayload", &format!("The payload is not valid JSON: {e}")),
        };
        common.accept(
            common.new_tag(),
            rows.into_iter()
                .map(|row| (row.get(&s.id_column).and_then(id_string), row)),
        );
        Reply::empty(204)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::post;
    use super::*;
    use crate::gzip;

    fn rows(ids: &[&str]) -> Vec<u8> {
        let rows: Vec<Value> = ids
            .iter()
            .map(|id| json!({"TimeGenerated": "2024-05-01T10:00:00Z", "AlertId": id, "Severity": "High"}))
            .collect();
        Value::Array(rows).to_string().into_bytes()
    }

    fn path(s: &SentinelServer) -> String {
        format!("{}?api-version=2023-01-01", s.upload_path())
    }

    const JSON: (&str, &str) = ("Content-Type", "application/json");
    const AUTH: (&str, &str) = ("Authorization", "Bearer test-bearer-token");

    #[test]
    fn accepts_rows() {
        let s = SentinelServer::start(SentinelSettings::default());
        assert!(s.upload_url().starts_with(&s.endpoint()));
        let r = post(s.addr(), &path(&s), &[AUTH, JSON], &rows(&["a", "b"]));
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        assert!(r.header("x-ms-request-id").is_some());
        assert_eq!(s.ids(), ["a", "b"]);
        assert_eq!(s.rows()[1]["Severity"], "High");
        let r = post(
            s.addr(),
            &path(&s),
            &[AUTH, JSON, ("Content-Encoding", "gzip")],
            &gzip(&rows(&["c"])),
        );
        assert_eq!(r.status, 204);
        assert_eq!(s.ids(), ["a", "b", "c"]);
        assert_eq!(s.requests(), 2);
    }

    #[test]
    fn refusals() {
        let s = SentinelServer::start(SentinelSettings::default());
        let body = rows(&["a"]);
        let code = |r: &crate::HttpResponse| (r.status, r.json()["error"]["code"].as_str().map(str::to_string));
        let expect = |status: u16, c: &str| (status, Some(c.to_string()));

        let r = post(s.addr(), &path(&s), &[JSON], &body);
        assert_eq!(code(&r), expect(401, "AuthenticationFailed"));
        let r = post(s.addr(), &path(&s), &[JSON, ("Authorization", "Bearer nope")], &body);
        assert_eq!(code(&r), expect(401, "InvalidAuthenticationToken"));
        let r = post(
            s.addr(),
            &path(&s),
            &[JSON, ("Authorization", "test-bearer-token")],
            &body,
        );
        assert_eq!(r.status, 401);
        let r = post(s.addr(), &s.upload_path(), &[AUTH, JSON], &body);
        assert_eq!(code(&r), expect(400, "MissingApiVersionParameter"));
        let r = post(
            s.addr(),
            &format!("{}?api-version=2020-01-01", s.upload_path()),
            &[AUTH, JSON],
            &body,
        );
        assert_eq!(code(&r), expect(400, "UnsupportedApiVersion"));
        let other_dcr = "/dataCollectionRules/dcr-ffff/streams/Custom-VerityAlerts_CL?api-version=2023-01-01";
        assert_eq!(
            code(&post(s.addr(), other_dcr, &[AUTH, JSON], &body)),
            expect(404, "NotFound")
        );
        let other_stream = format!(
            "/dataCollectionRules/{}/streams/Custom-Other_CL?api-version=2023-01-01",
            s.settings().dcr_id
        );
        assert_eq!(
            code(&post(s.addr(), &other_stream, &[AUTH, JSON], &body)),
            expect(404, "NotFound")
        );
        let r = post(s.addr(), &path(&s), &[AUTH, ("Content-Type", "text/plain")], &body);
        assert_eq!(r.status, 415);
        let r = post(s.addr(), &path(&s), &[AUTH, JSON], br#"{"AlertId":"a"}"#);
        assert_eq!(code(&r), expect(400, "InvalidPayload"));
        let r = post(s.addr(), &path(&s), &[AUTH, JSON], b"[not json");
        assert_eq!(code(&r), expect(400, "InvalidPayload"));
        assert!(s.received().is_empty());
    }

    #[test]
    fn over_one_megabyte_is_413() {
        let s = SentinelServer::start(SentinelSettings::default());
        let row = |i: usize| json!({"AlertId": format!("id-{i}"), "Pad": "x".repeat(1000)});
        let big = Value::Array((0..1100).map(row).collect()).to_string();
        assert!(big.len() > MAX_CALL_BYTES);
        let r = post(s.addr(), &path(&s), &[AUTH, JSON], big.as_bytes());
        assert_eq!(r.status, 413);
        assert_eq!(r.json()["error"]["code"], "ContentLengthLimitExceeded");
        let message = r.json()["error"]["message"].as_str().expect("message").to_string();
        assert!(
            message.starts_with("Maximum allowed content length: 1048576 bytes (1 MB)."),
            "{message}"
        );
        // Compressed below the limit but inflating beyond it: also refused.
        let r = post(
            s.addr(),
            &path(&s),
            &[AUTH, JSON, ("Content-Encoding", "gzip")],
            &gzip(big.as_bytes()),
        );
        assert_eq!(r.status, 413);
        // Exactly at the limit is fine.
        let mut exact = rows(&["a"]);
        exact.truncate(exact.len() - 1);
        exact.resize(MAX_CALL_BYTES - 1, b' ');
        exact.push(b']');
        assert_eq!(post(s.addr(), &path(&s), &[AUTH, JSON], &exact).status, 204);
        assert_eq!(s.ids(), ["a"]);
    }

    #[test]
    fn throttling_and_outage() {
        let s = SentinelServer::start(SentinelSettings::default());
        s.set_busy(true);
        let r = post(s.addr(), &path(&s), &[AUTH, JSON], &rows(&["a"]));
        assert_eq!((r.status, r.header("retry-after")), (429, Some("1")));
        s.set_busy(false);
        s.fail_next(1, 503);
        let r = post(s.addr(), &path(&s), &[AUTH, JSON], &rows(&["a"]));
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
        assert!(s.received().is_empty());

        s.set_down(true);
        let err = crate::http_request(s.addr(), "POST", &path(&s), &[AUTH, JSON], &rows(&["a"])).expect_err("down");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        s.set_down(false);
        assert_eq!(post(s.addr(), &path(&s), &[AUTH, JSON], &rows(&["a"])).status, 204);
        assert_eq!(s.ids(), ["a"]);
    }
}
