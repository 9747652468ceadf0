//! In-process test servers that speak the ingestion APIs of the SIEMs Verity delivers alerts to,
//! answering as the real products document, failures included:
//!
//! | module       | server              | product contract                                          |
//! |--------------|---------------------|-----------------------------------------------------------|
//! | [`hec`]      | [`HecServer`]       | Splunk HTTP Event Collector (event, ack, health)          |
//! | [`elastic`]  | [`ElasticServer`]   | Elasticsearch 8 / OpenSearch `_bulk`                      |
//! | [`webhook`]  | [`WebhookServer`]   | Verity's signed webhook, or plain JSON (OCSF over HTTP)   |
//! | [`sentinel`] | [`SentinelServer`]  | Azure Monitor Logs Ingestion API (Microsoft Sentinel)     |
//!
//! Each server listens on `127.0.0.1` on a port chosen by the kernel and runs on a dedicated
//! thread with its own current-thread tokio runtime, so plain synchronous test code can start,
//! drive and inspect it; it works the same when the caller is itself inside a tokio runtime.
//!
//! Every server dereferences to [`TestServer`], which carries the controls they share:
//! [`TestServer::set_down`] closes the listening socket and every open connection (new
//! connections are refused) and later serves again on the same port; [`TestServer::set_busy`]
//! and [`TestServer::fail_next`] inject the product's own overload and failure answers;
//! [`TestServer::set_response_delay`] holds every answer back (after the data is stored, so a
//! client that times out and retries produces duplicates); [`TestServer::received`],
//! [`TestServer::ids`] and [`TestServer::duplicates`] show what was accepted.
//!
//! The alert id of an accepted document is read from: the HEC envelope's `event.id`; the
//! Elasticsearch document's `event.id` (ECS), else the bulk action's `_id`; the webhook alert's
//! `id` (or any [`webhook::IdField`]); the Sentinel row's `AlertId` column.

pub mod elastic;
pub mod hec;
pub mod sentinel;
pub mod webhook;

mod api;
mod serve;
mod util;

pub use api::RecordedRequest;
pub(crate) use api::{Api, Fault, Reply, Request};
pub use elastic::{ElasticServer, ElasticSettings, ItemFilter};
pub use hec::{HecServer, HecSettings};
pub use sentinel::{SentinelServer, SentinelSettings};
pub(crate) use util::{base64_decode, id_string, percent_decode, pseudo_guid, splitmix, unix_now};
pub use webhook::{IdField, WebhookFormat, WebhookServer, WebhookSettings};

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use serve::{spawn, stop};

/// Largest request body any server reads (the products' own limits are checked separately).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Largest body a `Content-Encoding: gzip` request may inflate to.
const MAX_INFLATED: u64 = 64 * 1024 * 1024;
/// How long [`TestServer::set_down`]`(false)` keeps trying to bind the old port again.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);

/// A document the server accepted.
struct Accepted {
    id: Option<String>,
    doc: Value,
    /// Lets a server withdraw documents it accepted together (HEC losing unacknowledged data).
    tag: u64,
}

/// State every server shares: faults, counters and the accepted documents.
pub(crate) struct Common {
    busy: AtomicBool,
    delay: Mutex<Duration>,
    failures: Mutex<VecDeque<u16>>,
    requests: AtomicUsize,
    log: Mutex<Vec<RecordedRequest>>,
    docs: Mutex<Vec<Accepted>>,
    docs_changed: Condvar,
    next_tag: AtomicU64,
}

impl Common {
    fn new() -> Common {
        Common {
            busy: AtomicBool::new(false),
            delay: Mutex::new(Duration::ZERO),
            failures: Mutex::new(VecDeque::new()),
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            docs: Mutex::new(Vec::new()),
            docs_changed: Condvar::new(),
            next_tag: AtomicU64::new(1),
        }
    }

    /// The fault an ingestion request meets, if any: busy first, then one scripted failure.
    pub fn take_fault(&self) -> Option<Fault> {
        if self.busy.load(Ordering::SeqCst) {
            return Some(Fault::Busy);
        }
        lock(&self.failures).pop_front().map(Fault::Status)
    }

    /// Whether [`TestServer::set_busy`] is on (without taking a fault).
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// A fresh tag for [`Common::accept`].
    pub fn new_tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    /// Records accepted documents (with their alert ids) in arrival order.
    pub fn accept(&self, tag: u64, docs: impl IntoIterator<Item = (Option<String>, Value)>) {
        let mut all = lock(&self.docs);
        all.extend(docs.into_iter().map(|(id, doc)| Accepted { id, doc, tag }));
        drop(all);
        self.docs_changed.notify_all();
    }

    /// Withdraws the documents accepted under `tags`; returns how many were removed.
    pub fn withdraw(&self, tags: &HashSet<u64>) -> usize {
        let mut all = lock(&self.docs);
        let before = all.len();
        all.retain(|a| !tags.contains(&a.tag));
        before - all.len()
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not wedge the server).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    api: Arc<dyn Api>,
    common: Arc<Common>,
}

/// The listener thread of a server that is up.
struct Running {
    shutdown: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// What every SIEM test server shares: its address, up/down, fault injection and the accepted
/// documents. The product servers ([`HecServer`], [`ElasticServer`], [`WebhookServer`],
/// [`SentinelServer`]) dereference to this.
pub struct TestServer {
    name: &'static str,
    addr: SocketAddr,
    inner: Arc<Inner>,
    running: Mutex<Option<Running>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` and starts serving `api`. Panics if no port can be bound.
    pub(crate) fn start(name: &'static str, api: Arc<dyn Api>, common: Arc<Common>) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("{name} test server: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{name} test server: no local address: {e}"));
        let inner = Arc::new(Inner { api, common });
        let running =
            spawn(name, listener, inner.clone()).unwrap_or_else(|e| panic!("{name} test server: cannot start: {e}"));
        TestServer {
            name,
            addr,
            inner,
            running: Mutex::new(Some(running)),
        }
    }

    pub(crate) fn common(&self) -> &Common {
        &self.inner.common
    }

    /// The bound address (`127.0.0.1:PORT`); it stays the same across [`TestServer::set_down`].
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `true`: the SIEM is down. The listening socket is closed, so new connections are refused,
    /// and every open connection is closed; a request being processed gets no answer.
    /// Returns once the socket is closed. `false`: binds the same port again and serves (the
    /// accepted data and settings are kept). Panics if the port cannot be bound again within
    /// 10 s; see [`TestServer::try_set_down`].
    pub fn set_down(&self, down: bool) {
        self.try_set_down(down)
            .unwrap_or_else(|e| panic!("{} test server: cannot bind {} again: {e}", self.name, self.addr));
    }

    /// [`TestServer::set_down`], reporting a failure to bind the port again as an error.
    pub fn try_set_down(&self, down: bool) -> std::io::Result<()> {
        let mut running = lock(&self.running);
        if down {
            if let Some(r) = running.take() {
                stop(r);
            }
            return Ok(());
        }
        if running.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + REBIND_TIMEOUT;
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(25)),
            }
        };
        *running = Some(spawn(self.name, listener, self.inner.clone())?);
        Ok(())
    }

    /// Whether [`TestServer::set_down`]`(true)` is in force.
    pub fn is_down(&self) -> bool {
        lock(&self.running).is_none()
    }

    /// Overload: ingestion requests get the product's "busy" answer and nothing is stored
    /// (HEC 503 code 9 and health 503 code 18; Elasticsearch whole-request 429
    /// `es_rejected_execution_exception`; Sentinel 429 with `Retry-After: 1`; webhook 503 with
    /// `Retry-After: 1`). Authentication is still checked first.
    pub fn set_busy(&self, busy: bool) {
        self.common().busy.store(busy, Ordering::SeqCst);
    }

    pub fn is_busy(&self) -> bool {
        self.common().is_busy()
    }

    /// The next `n` authenticated ingestion requests fail with `status` (answered with the
    /// product's own error body for that status) and store nothing. Calls queue up:
    /// `fail_next(2, 503); fail_next(1, 500)` fails three requests in that order.
    pub fn fail_next(&self, n: usize, status: u16) {
        lock(&self.common().failures).extend(std::iter::repeat_n(status, n));
    }

    /// Scripted failures not yet used.
    pub fn pending_failures(&self) -> usize {
        lock(&self.common().failures).len()
    }

    /// Delays every answer by `delay`, after the request has been processed and its data
    /// stored: a client with a shorter timeout sees a failure although the data was accepted.
    pub fn set_response_delay(&self, delay: Duration) {
        *lock(&self.common().delay) = delay;
    }

    /// Requests to the ingestion endpoint (HEC event, `_bulk`, webhook POST, Sentinel stream),
    /// whatever their outcome. Health checks, acks and other requests are not counted.
    pub fn requests(&self) -> usize {
        self.common().requests.load(Ordering::SeqCst)
    }

    /// Every request received (any endpoint) with its answer's status, in arrival order.
    pub fn request_log(&self) -> Vec<RecordedRequest> {
        lock(&self.common().log).clone()
    }

    /// How many requests were answered with `status`.
    pub fn responses_with_status(&self, status: u16) -> usize {
        lock(&self.common().log).iter().filter(|r| r.status == status).count()
    }

    /// Every accepted document in arrival order (a document accepted twice appears twice). What
    /// a "document" is depends on the server: the whole HEC envelope, the Elasticsearch
    /// `_source`, one webhook alert or JSON object, one Sentinel row.
    pub fn received(&self) -> Vec<Value> {
        lock(&self.common().docs).iter().map(|a| a.doc.clone()).collect()
    }

    /// How many documents were accepted.
    pub fn received_count(&self) -> usize {
        lock(&self.common().docs).len()
    }

    /// The alert id of each accepted document, in arrival order (documents without one are
    /// left out).
    pub fn ids(&self) -> Vec<String> {
        lock(&self.common().docs).iter().filter_map(|a| a.id.clone()).collect()
    }

    /// The distinct alert ids accepted.
    pub fn distinct_ids(&self) -> HashSet<String> {
        self.ids().into_iter().collect()
    }

    /// Accepted alert ids minus distinct alert ids: how many deliveries were duplicates.
    pub fn duplicates(&self) -> usize {
        let ids = self.ids();
        ids.len() - ids.iter().collect::<HashSet<_>>().len()
    }

    /// Waits until at least `n` documents have been accepted; `false` on timeout.
    pub fn wait_for_received(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut docs = lock(&self.common().docs);
        while docs.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            docs = self
                .common()
                .docs_changed
                .wait_timeout(docs, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Waits until every id in `ids` has been accepted at least once; `false` on timeout.
    pub fn wait_for_ids<S: AsRef<str>>(&self, ids: &[S], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut docs = lock(&self.common().docs);
        loop {
            let have: HashSet<&str> = docs.iter().filter_map(|a| a.id.as_deref()).collect();
            if ids.iter().all(|id| have.contains(id.as_ref())) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            docs = self
                .common()
                .docs_changed
                .wait_timeout(docs, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Forgets the accepted documents, the request log and the request count (not the product
    /// state such as Elasticsearch's stored documents or HEC acks).
    pub fn clear_received(&self) {
        lock(&self.common().docs).clear();
        lock(&self.common().log).clear();
        self.common().requests.store(0, Ordering::SeqCst);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.running).take() {
            stop(r);
        }
    }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("down", &self.is_down())
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for the servers' unit tests.

    use std::net::SocketAddr;

    pub use crate::{HttpResponse, http_request};

    /// Standard base64 with padding.
    pub fn base64(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// POST with headers, panicking on transport errors.
    pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        http_request(addr, "POST", path, headers, body).expect("request")
    }

    pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_request(addr, "GET", path, headers, b"").expect("request")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    struct Echo;
    impl Api for Echo {
        fn handle(&self, req: &Request, common: &Common) -> Reply {
            if let Some(Fault::Status(s)) = common.take_fault() {
                return Reply::empty(s).ingest();
            }
            common.accept(common.new_tag(), [(req.query_param("id"), Value::Null)]);
            Reply::json(200, &serde_json::json!({"path": req.path})).ingest()
        }
    }

    fn echo() -> TestServer {
        TestServer::start("echo", Arc::new(Echo), Arc::new(Common::new()))
    }

    #[test]
    fn down_refuses_connections_and_up_serves_the_same_port_again() {
        let s = echo();
        let addr = s.addr();
        assert_eq!(s.url(), format!("http://{addr}"));
        assert_eq!(test_util::get(addr, "/x?id=a", &[]).status, 200);

        // A keep-alive connection open across the outage is closed by it.
        let mut kept = TcpStream::connect(addr).expect("connect");
        kept.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        kept.write_all(format!("GET /y HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .expect("write");
        let mut buf = [0u8; 4096];
        let n = kept.read(&mut buf).expect("first answer");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

        s.set_down(true);
        assert!(s.is_down());
        let err = TcpStream::connect(addr).expect_err("must be refused while down");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(
            matches!(kept.read(&mut buf), Ok(0) | Err(_)),
            "open connection must be closed"
        );

        s.set_down(false);
        assert!(!s.is_down());
        assert_eq!(s.addr(), addr);
        assert_eq!(test_util::get(addr, "/z?id=a", &[]).status, 200);
        assert_eq!(s.ids(), vec!["a".to_string(), "a".to_string()]);
        assert_eq!(s.duplicates(), 1);
        assert_eq!(s.requests(), 3);
    }

    #[test]
    fn scripted_failures_are_used_in_order() {
        let s = echo();
        s.fail_next(1, 503);
        s.fail_next(1, 500);
        assert_eq!(s.pending_failures(), 2);
        assert_eq!(test_util::get(s.addr(), "/", &[]).status, 503);
        assert_eq!(test_util::get(s.addr(), "/", &[]).status, 500);
        assert_eq!(test_util::get(s.addr(), "/", &[]).status, 200);
        assert_eq!(s.responses_with_status(503), 1);
        assert!(s.wait_for_received(1, Duration::from_secs(1)));
        assert!(s.wait_for_ids(&[""; 0], Duration::from_millis(1)));
    }

    #[test]
    fn response_delay_comes_after_the_data_is_stored() {
        let s = echo();
        s.set_response_delay(Duration::from_millis(1000));
        let addr = s.addr();
        let started = Instant::now();
        let client = std::thread::spawn(move || test_util::get(addr, "/?id=slow", &[]).status);
        assert!(s.wait_for_ids(&["slow"], Duration::from_secs(5)));
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "stored before answering"
        );
        assert_eq!(client.join().expect("client"), 200);
        assert!(started.elapsed() >= Duration::from_millis(1000));
        s.clear_received();
        assert_eq!((s.received_count(), s.requests(), s.request_log().len()), (0, 0, 0));
    }
}
