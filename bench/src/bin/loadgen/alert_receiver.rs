//! Alert latency: a small HTTP server that receives Verity's alerts from its `webhook` output
//! (`POST {"version":"1","alerts":[…]}`, see `sinks/src/outputs/webhook.rs`) and matches them
//! to the canaries loadgen sent (see `canary`).
//!
//! A canary's latency runs from the moment its request is handed to the gRPC client to the
//! moment the webhook request carrying the alert it raised has been read whole. That includes
//! Verity's output batching (`batch.max_wait_ms`, 200 ms by default) and the delivery to this
//! server, so it is an upper bound of the time from receipt to the alert being spooled.
//!
//! It serves HTTP/1.1 (hyper, with keep-alive and `Content-Length` or chunked bodies) on any
//! path: a `POST` is a webhook delivery, `HEAD` and `GET` (health checks) get an empty 200. It
//! runs on a thread of its own with a current-thread runtime, so the senders keeping the main
//! runtime busy do not delay the arrival times it records.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::canary;

/// Largest request body (a batch of the webhook's default 500 alerts fits many times over).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// The name of the output the printed environment adds to Verity's configuration.
const OUTPUT_ENV_PREFIX: &str = "VERITY__SINKS__OUTPUTS__WEBHOOK__";

/// The running server and what it has seen.
pub(crate) struct AlertReceiver {
    url: String,
    ledger: Arc<Ledger>,
}

/// Canaries sent and alerts received, shared by the senders and the server.
#[derive(Default)]
struct Ledger {
    /// Canaries sent whose alert has not arrived yet, by request number, with their send time.
    awaited: Mutex<HashMap<u64, Instant>>,
    /// Send → alert delivered, one per canary whose alert arrived.
    latencies: Mutex<Vec<Duration>>,
    /// Canaries in requests Verity accepted.
    canaries_sent: AtomicU64,
    /// Alerts received, canaries' or not.
    alerts: AtomicU64,
    /// Webhook requests that carried them.
    deliveries: AtomicU64,
    /// Alerts naming a canary not awaited: a repeat, or one sent by an earlier run.
    stray_canary_alerts: AtomicU64,
    /// Requests answered with an error (not the webhook's JSON, a body too large or cut short, a
    /// malformed request head, …).
    refused_requests: AtomicU64,
}

/// What [`AlertReceiver::report`] found.
pub(crate) struct CanaryReport {
    pub(crate) canaries_sent: u64,
    /// Canaries sent whose alert has not arrived.
    pub(crate) canaries_missing: u64,
    pub(crate) alerts: u64,
    pub(crate) deliveries: u64,
    pub(crate) stray_canary_alerts: u64,
    pub(crate) refused_requests: u64,
    /// Send → alert delivered, one per canary whose alert arrived, sorted.
    pub(crate) latencies: Vec<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The URL of a receiver listening on `addr` (on all interfaces: reached over loopback).
pub(crate) fn url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/alerts", SocketAddr::new(ip, addr.port()))
}

/// The environment that adds a `webhook` output delivering to the receiver at `url` to a
/// Verity started with it (the output is named `webhook`; see `docs/sinks.md`). The backoff cap
/// keeps alerts that failed while nothing listened (between two runs) from holding the next
/// run's alerts back for up to the default 30 s.
pub(crate) fn verity_env(url: &str) -> Vec<(String, String)> {
    [("TYPE", "webhook"), ("URL", url), ("RETRY__MAX_BACKOFF_MS", "1000")]
        .into_iter()
        .map(|(key, value)| (format!("{OUTPUT_ENV_PREFIX}{key}"), value.to_owned()))
        .collect()
}

impl AlertReceiver {
    /// Listens on `listen` and serves from a thread of its own until the process exits.
    pub(crate) fn start(listen: SocketAddr) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("alert receiver: cannot listen on {listen}"))?;
        let url = url(listener.local_addr()?);
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let ledger = Arc::new(Ledger::default());
        let served = ledger.clone();
        std::thread::Builder::new()
            .name("alert-receiver".into())
            .spawn(move || runtime.block_on(serve(listener, served)))?;
        Ok(Self { url, ledger })
    }

    /// Where Verity's webhook output is to deliver.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Just before the request carrying canary `number` is sent: its send time.
    pub(crate) fn sending(&self, number: u64) {
        lock(&self.ledger.awaited).insert(number, Instant::now());
    }

    /// Verity accepted the request carrying the canary [`AlertReceiver::sending`] announced.
    pub(crate) fn sent(&self) {
        self.ledger.canaries_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Verity refused the request carrying canary `number`: no alert is to be expected.
    pub(crate) fn not_sent(&self, number: u64) {
        lock(&self.ledger.awaited).remove(&number);
    }

    /// Waits until every canary sent has its alert, or `timeout` passed.
    pub(crate) async fn wait_for_alerts(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !lock(&self.ledger.awaited).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn report(&self) -> CanaryReport {
        let ledger = &self.ledger;
        let mut latencies = lock(&ledger.latencies).clone();
        latencies.sort();
        CanaryReport {
            canaries_sent: ledger.canaries_sent.load(Ordering::Relaxed),
            canaries_missing: lock(&ledger.awaited).len() as u64,
            alerts: ledger.alerts.load(Ordering::Relaxed),
            deliveries: ledger.deliveries.load(Ordering::Relaxed),
            stray_canary_alerts: ledger.stray_canary_alerts.load(Ordering::Relaxed),
            refused_requests: ledger.refused_requests.load(Ordering::Relaxed),
            latencies,
        }
    }
}

impl Ledger {
    /// Takes in a webhook body that arrived at `arrived`; returns how many alerts it held.
    fn receive(&self, body: &[u8], arrived: Instant) -> Result<usize, String> {
        let canaries = canaries_per_alert(body)?;
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.alerts.fetch_add(canaries.len() as u64, Ordering::Relaxed);
        for number in canaries.iter().flatten() {
            match lock(&self.awaited).remove(number) {
                Some(sent) => lock(&self.latencies).push(arrived.saturating_duration_since(sent)),
                None => {
                    self.stray_canary_alerts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(canaries.len())
    }
}

/// For each alert of a webhook body, the canary its evidence (`evidence[].raw`) names, if any.
fn canaries_per_alert(body: &[u8]) -> Result<Vec<Option<u64>>, String> {
    let batch: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    if batch.get("version").and_then(Value::as_str) != Some("1") {
        return Err("unsupported or missing \"version\" (expected \"1\")".into());
    }
    let alerts = batch
        .get("alerts")
        .and_then(Value::as_array)
        .ok_or("\"alerts\" must be an array")?;
    Ok(alerts
        .iter()
        .map(|alert| {
            alert
                .get("evidence")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|evidence| evidence.get("raw").and_then(Value::as_str))
                .find_map(canary::number_in)
        })
        .collect())
}

async fn serve(listener: std::net::TcpListener, ledger: Arc<Ledger>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("alert receiver: cannot register the listener: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("alert receiver: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let served = ledger.clone();
            let service = service_fn(move |request| handle(served.clone(), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            // hyper answers a malformed request head itself (400, 431, …) and ends the connection.
            if let Err(e) = connection.await
                && e.is_parse()
            {
                ledger.refused_requests.fetch_add(1, Ordering::Relaxed);
                eprintln!("alert receiver: refused a request: {e}");
            }
        });
    }
}

/// Answers one request, once its body has been read whole.
async fn handle(ledger: Arc<Ledger>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY_BYTES).collect().await;
    let arrived = Instant::now();
    let (status, text) = match body {
        Ok(body) => match parts.method {
            Method::POST => match ledger.receive(&body.to_bytes(), arrived) {
                Ok(n) => (StatusCode::OK, format!(r#"{{"accepted":{n}}}"#)),
                Err(e) => refuse(&ledger, StatusCode::BAD_REQUEST, &e),
            },
            Method::HEAD | Method::GET => (StatusCode::OK, String::new()),
            _ => (StatusCode::METHOD_NOT_ALLOWED, json_error("method not allowed")),
        },
        Err(e) if e.is::<LengthLimitError>() => refuse(
            &ledger,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than {MAX_BODY_BYTES} bytes"),
        ),
        Err(e) => refuse(&ledger, StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}")),
    };
    let mut response = Response::new(Full::from(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Counts and logs a request answered with an error; the status and body to answer.
fn refuse(ledger: &Ledger, status: StatusCode, message: &str) -> (StatusCode, String) {
    ledger.refused_requests.fetch_add(1, Ordering::Relaxed);
    eprintln!("alert receiver: refused a request ({status}): {message}");
    (status, json_error(message))
}

fn json_error(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A webhook body as Verity sends it (`serde_json` of two alerts, the first a canary's).
    const BODY: &str = r#"{"version":"1","alerts":[{"id":"zt-path-traversal-1f","rule_id":"zt-path-traversal","title":"Path traversal attempt","severity":"high","kind":"detection","status":"firing","tags":["attack.t1083","zt.application"],"description":"Dot-dot segments.","group":{"source_ip":"198.18.100.101","destination_service":"canary-0000000000000042.loadgen.svc.cluster.local"},"count":1,"aggregates":{"count(*)":1.0},"window_start":null,"window_end":null,"first_seen":"2031-12-24T18:30:05.123456000Z","last_seen":"2031-12-24T18:30:05.123456000Z","evidence":[{"event_time":"2031-12-24T18:30:05.123456000Z","status":404,"decision":"allow","raw":"[2031-12-24T18:30:05.123456Z] \"GET /canary-0000000000000042/../../etc/passwd HTTP/1.1\" 404 - via_upstream - \"-\" 0 19 1 1 \"-\" \"curl/8.4.0\"\tdefault","sender_binding":"none","sender_verified":false}],"summary":"x"},{"id":"zt-rbac-denial-burst-8a","rule_id":"zt-rbac-denial-burst","evidence":[{"raw":"[2024-05-01T10:00:00.003000Z] \"GET /api/v1/items/687 HTTP/1.1\" 403 \u00e9"}]}]}"#;

    #[test]
    fn reads_the_canary_out_of_each_alerts_evidence() {
        assert_eq!(canaries_per_alert(BODY.as_bytes()), Ok(vec![Some(42), None]));
        assert!(canaries_per_alert(br#"{"version":"2","alerts":[]}"#).is_err());
        assert!(canaries_per_alert(b"not json").is_err());
    }

    #[test]
    fn times_canaries_over_http() {
        let receiver = AlertReceiver::start("127.0.0.1:0".parse().unwrap()).unwrap();
        receiver.sending(42);
        receiver.sent();
        receiver.sending(43);
        receiver.not_sent(43);
        let addr = receiver.url.trim_start_matches("http://").trim_end_matches("/alerts");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        // Two requests on one connection, the second chunked and asking to close it.
        let head = "POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
        write!(stream, "{head}Content-Length: {}\r\n\r\n{BODY}", BODY.len()).unwrap();
        let (first, rest) = BODY.split_at(100);
        write!(
            stream,
            "{head}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
            first.len(),
            rest.len()
        )
        .unwrap();
        let mut answers = String::new();
        stream.read_to_string(&mut answers).unwrap();
        assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
        assert!(answers.ends_with(r#"{"accepted":2}"#), "{answers}");
        // A body that is not the webhook's is refused.
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "{head}Content-Length: 2\r\nConnection: close\r\n\r\n[]").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
        assert!(
            answer.ends_with(r#""}"#) && answer.contains(r#"{"error":""#),
            "{answer}"
        );
        let report = receiver.report();
        assert_eq!(
            (
                report.canaries_sent,
                report.canaries_missing,
                report.alerts,
                report.deliveries,
                report.stray_canary_alerts,
                report.refused_requests,
                report.latencies.len()
            ),
            (1, 0, 4, 2, 1, 1, 1)
        );
        assert_eq!(
            verity_env(receiver.url())[1],
            ("VERITY__SINKS__OUTPUTS__WEBHOOK__URL".to_owned(), receiver.url.clone())
        );
        assert_eq!(url("0.0.0.0:9099".parse().unwrap()), "http://127.0.0.1:9099/alerts");
        assert_eq!(url("[::]:9099".parse().unwrap()), "http://[::1]:9099/alerts");
    }
}
