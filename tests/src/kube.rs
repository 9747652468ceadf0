//! A Kubernetes API test server for Istio `AuthorizationPolicy` objects
//! (`security.istio.io/v1` and `v1beta1`, plural `authorizationpolicies`, namespaced): the part
//! of the API Verity's Istio responder uses, answered the way kube-apiserver answers.
//!
//! - HTTPS with a generated CA and bearer-token authentication (401 `Unauthorized` otherwise);
//!   [`KubeApiServer::write_kubeconfig`] writes a kubeconfig that kube-rs reads.
//! - Server-side apply: `PATCH` with `application/apply-patch+yaml`, `fieldManager` (required),
//!   `force`, `dryRun=All` and `fieldValidation=Strict|Warn|Ignore`. Field ownership is kept
//!   per manager at the leaves of its applied configuration (lists are atomic, as in these
//!   CRDs): a different value for a leaf another manager owns is a 409 `Conflict` naming the
//!   field, unless forced, which moves the ownership; leaves a manager stops applying are
//!   removed. `uid`, `resourceVersion`, `generation` (bumped when `spec` changes),
//!   `creationTimestamp` and `managedFields` are the server's.
//! - `GET`, `DELETE` (answers the deleted object, as for a custom resource without
//!   finalizers) and `LIST` (namespaced and across namespaces) with label selectors
//!   (`=`, `==`, `!=`, `in`, `notin`, existence, `!key`).
//! - Validation: metadata as the apiserver does it (DNS-1123 name, label and annotation
//!   syntax, annotation size), and, when the Istio CRD file is given and present, the
//!   object against the CRD's `openAPIV3Schema` (types, properties, unknown fields per
//!   `fieldValidation`, required, enum, items, min/max items, lengths and properties,
//!   patterns, `oneOf`/`anyOf`/`not`, int-or-string, preserve-unknown-fields). Invalid objects
//!   get a 422 `Invalid` Status with its causes.
//! - Faults: [`KubeApiServer::fail_next`] (500, 503 and 429 with `Retry-After`, 409, 403),
//!   [`KubeApiServer::set_forbidden`] (RBAC 403s), [`KubeApiServer::set_down`].
//!
//! Left out: watches, `limit`/`continue` paging (lists are whole), other resources, other
//! patch types (415), admission webhooks, and CEL rules (`x-kubernetes-validations`), which
//! are counted in [`KubeApiServer::cel_rules_skipped`] instead of evaluated.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

const GROUP: &str = "security.istio.io";
const KIND: &str = "AuthorizationPolicy";
const PLURAL: &str = "authorizationpolicies";
const VERSIONS: &[&str] = &["v1", "v1beta1"];

/// How the server is set up.
#[derive(Clone, Debug, Default)]
pub struct KubeSettings {
    /// The Istio security CRDs (multi-document YAML); validation against the schema when
    /// present.
    pub crd_path: Option<PathBuf>,
    /// Namespaces besides `default`, `istio-system` and `kube-system`.
    pub namespaces: Vec<String>,
}

/// The CRD file in the shared reference material beside the repository.
pub fn istio_crd_path() -> PathBuf {
    crate::repo_root().join("../shared/reference/istio/security-crds.yaml")
}

/// One request as the server answered it.
#[derive(Clone, Debug)]
pub struct KubeRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: String,
    pub status: u16,
    pub at: Instant,
}

/// A 4xx answer, with what was sent.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub status: Value,
    pub body: String,
}

struct Object {
    /// Each field manager's last applied configuration (labels, annotations, spec).
    applied: BTreeMap<String, Value>,
    live: Value,
    first_seen: Instant,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<(String, String), Object>,
    faults: VecDeque<u16>,
    forbidden: bool,
    delay: Duration,
    requests: Vec<KubeRequest>,
    rejections: Vec<Rejection>,
    validated: u64,
    cel_skipped: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    token: String,
    schemas: BTreeMap<String, Value>,
    namespaces: BTreeSet<String>,
    resource_version: AtomicU64,
    down: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The server; stops when dropped.
pub struct KubeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn now_rfc3339() -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64 * 1_000_000_000)
        .unwrap_or(0);
    let s = verity_model::time::format_rfc3339_ns(ns);
    // The apiserver writes whole seconds.
    match s.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => s,
    }
}

fn load_schemas(path: &Path) -> Result<BTreeMap<String, Value>, String> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
        let v: Value = serde_json::to_value(v).map_err(|e| e.to_string())?;
        if v["metadata"]["name"] != format!("{PLURAL}.{GROUP}") {
            continue;
        }
        for version in v["spec"]["versions"].as_array().into_iter().flatten() {
            if let (Some(name), Some(schema)) = (version["name"].as_str(), version["schema"].get("openAPIV3Schema")) {
                out.insert(name.to_string(), schema.clone());
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no {PLURAL}.{GROUP} CRD", path.display()));
    }
    Ok(out)
}

type Tls = (String, rustls::ServerConfig);

fn tls() -> Result<Tls, String> {
    let pki = crate::TestPki::generate("kubernetes test CA", &["localhost", "kubernetes"])?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert_der.into()], key_der)
        .map_err(|e| e.to_string())?;
    Ok((pki.ca_pem, config))
}

impl KubeApiServer {
    /// Starts on 127.0.0.1 on a free port. Panics if it cannot (a test fixture).
    pub fn start(settings: KubeSettings) -> Self {
        let schemas = match &settings.crd_path {
            Some(p) if p.is_file() => load_schemas(p).unwrap_or_else(|e| panic!("CRD: {e}")),
            _ => BTreeMap::new(),
        };
        let mut namespaces: BTreeSet<String> = ["default", "istio-system", "kube-system"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        namespaces.extend(settings.namespaces.iter().cloned());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            token: format!(
                "test-token-{:x}",
                std::process::id() as u64 * 7919 + crate::free_port() as u64
            ),
            schemas,
            namespaces,
            resource_version: AtomicU64::new(1000),
            down: AtomicBool::new(false),
        });
        let (ca_pem, config) = tls().unwrap_or_else(|e| panic!("{e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(serve(listener, config, s, stop_rx));
        });
        Self {
            shared,
            addr,
            ca_pem,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
    pub fn token(&self) -> &str {
        &self.shared.token
    }
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig for this server with a bearer token.
    pub fn write_kubeconfig(&self, path: &Path) {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: verity\n  user:\n    token: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: verity\n    namespace: default\ncurrent-context: test\n",
            self.url(),
            self.shared.token
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// Whether the CRD schema was loaded (else only metadata is validated).
    pub fn schema_loaded(&self) -> bool {
        !self.shared.schemas.is_empty()
    }
    /// Objects validated against the CRD schema.
    pub fn validated(&self) -> u64 {
        self.shared.lock().validated
    }
    /// CEL rules met while validating, not evaluated.
    pub fn cel_rules_skipped(&self) -> u64 {
        self.shared.lock().cel_skipped
    }
    /// Every 4xx answer (injected faults included), with the request body.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.shared.lock().rejections.clone()
    }
    pub fn requests(&self) -> Vec<KubeRequest> {
        self.shared.lock().requests.clone()
    }
    pub fn objects(&self) -> Vec<Value> {
        self.shared.lock().objects.values().map(|o| o.live.clone()).collect()
    }
    pub fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .map(|o| o.live.clone())
    }
    /// When an object was created (first apply), if it exists.
    pub fn first_seen(&self, namespace: &str, name: &str) -> Option<Instant> {
        self.shared
            .lock()
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .map(|o| o.first_seen)
    }
    /// An operator deleting an object out of band.
    pub fn delete_as_admin(&self, namespace: &str, name: &str) -> bool {
        self.shared
            .lock()
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some()
    }
    /// Another field manager applying (e.g. `kubectl apply --server-side`).
    pub fn apply_as(&self, manager: &str, object: &Value, force: bool) -> Result<Value, Value> {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let version = object["apiVersion"]
            .as_str()
            .and_then(|v| v.strip_prefix(&format!("{GROUP}/")))
            .unwrap_or("v1")
            .to_string();
        let q = Query {
            field_manager: Some(manager.to_string()),
            force,
            ..Query::default()
        };
        apply(&self.shared, &version, &ns, &name, object.clone(), &q).map(|(_, v, _)| v)
    }
    /// The next requests answer these statuses, one each, as the apiserver does.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.shared.lock().faults.extend(statuses.iter().copied());
    }
    /// Every request is refused by RBAC.
    pub fn set_forbidden(&self, on: bool) {
        self.shared.lock().forbidden = on;
    }
    pub fn set_response_delay(&self, d: Duration) {
        self.shared.lock().delay = d;
    }
    /// Connections are closed at once while down.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }
    /// Polls `f` every 20 ms until it holds or the time is up.
    pub fn wait_for(&self, timeout: Duration, mut f: impl FnMut(&Self) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if f(self) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    config: rustls::ServerConfig,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            _ = &mut stop => return,
        };
        if shared.down.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

type Resp = hyper::Response<http_body_util::Full<bytes::Bytes>>;

fn respond(status: u16, body: &Value, headers: &[(&str, String)]) -> Resp {
    let mut b = hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap_or_else(|_| hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
}

/// A `meta/v1 Status` failure.
fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn not_found(name: &str) -> Value {
    status(
        404,
        "NotFound",
        &format!("{PLURAL}.{GROUP} \"{name}\" not found"),
        Some(json!({"name": name, "group": GROUP, "kind": PLURAL})),
    )
}

#[derive(Default, Clone)]
struct Query {
    field_manager: Option<String>,
    force: bool,
    dry_run: bool,
    validation: Option<String>,
    label_selector: Option<String>,
}

fn parse_query(q: &str) -> Query {
    let mut out = Query::default();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "fieldManager" => out.field_manager = Some(v),
            "force" => out.force = v == "true",
            "dryRun" => out.dry_run = v == "All",
            "fieldValidation" => out.validation = Some(v),
            "labelSelector" => out.label_selector = Some(v),
            _ => {}
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a request addresses.
enum Route {
    Version,
    Group(String),
    Collection {
        version: String,
        namespace: Option<String>,
    },
    Item {
        version: String,
        namespace: String,
        name: String,
    },
    Unknown,
}

fn route(path: &str) -> Route {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["version"] => Route::Version,
        ["apis", g, v] if *g == GROUP && VERSIONS.contains(v) => Route::Group(v.to_string()),
        ["apis", g, v, p] if *g == GROUP && VERSIONS.contains(v) && *p == PLURAL => Route::Collection {
            version: v.to_string(),
            namespace: None,
        },
        ["apis", g, v, "namespaces", ns, p] if *g == GROUP && VERSIONS.contains(v) && *p == PLURAL => {
            Route::Collection {
                version: v.to_string(),
                namespace: Some(ns.to_string()),
            }
        }
        ["apis", g, v, "namespaces", ns, p, name] if *g == GROUP && VERSIONS.contains(v) && *p == PLURAL => {
            Route::Item {
                version: v.to_string(),
                namespace: ns.to_string(),
                name: name.to_string(),
            }
        }
        _ => Route::Unknown,
    }
}

fn verb(method: &hyper::Method, r: &Route) -> &'static str {
    match (method.as_str(), r) {
        ("GET", Route::Collection { .. }) => "list",
        ("GET", _) => "get",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        _ => "get",
    }
}

async fn handle(shared: Arc<Shared>, req: hyper::Request<hyper::body::Incoming>) -> Resp {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string());
    let delay = shared.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (code, value, headers) = answer(&shared, &parts, &path, &query, content_type.as_deref(), &body);
    let mut inner = shared.lock();
    if (400..500).contains(&code) {
        inner.rejections.push(Rejection {
            status: value.clone(),
            body: body_text.clone(),
        });
    }
    inner.requests.push(KubeRequest {
        method: parts.method.to_string(),
        path,
        query,
        content_type,
        body: body_text,
        status: code,
        at: Instant::now(),
    });
    drop(inner);
    respond(code, &value, &headers)
}

type Answer = (u16, Value, Vec<(&'static str, String)>);

fn answer(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    path: &str,
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Answer {
    let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {}", shared.token)) {
        return (401, status(401, "Unauthorized", "Unauthorized", None), vec![]);
    }
    let r = route(path);
    let q = parse_query(query);
    {
        let mut inner = shared.lock();
        if inner.forbidden {
            let (name, ns) = match &r {
                Route::Item { name, namespace, .. } => (format!(" \"{name}\""), Some(namespace.clone())),
                Route::Collection { namespace, .. } => (String::new(), namespace.clone()),
                _ => (String::new(), None),
            };
            let scope = match ns {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_string(),
            };
            let v = verb(&parts.method, &r);
            let msg = format!(
                "{PLURAL}.{GROUP}{name} is forbidden: User \"system:serviceaccount:verity:verity\" cannot {v} resource \"{PLURAL}\" in API group \"{GROUP}\" {scope}"
            );
            return (
                403,
                status(403, "Forbidden", &msg, Some(json!({"group": GROUP, "kind": PLURAL}))),
                vec![],
            );
        }
        if let Some(code) = inner.faults.pop_front() {
            return fault(code);
        }
    }
    let method = parts.method.as_str();
    match (method, r) {
        ("GET", Route::Version) => (
            200,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}),
            vec![],
        ),
        ("GET", Route::Group(v)) => (
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{v}"),
                "resources": [{"name": PLURAL, "singularName": "authorizationpolicy", "namespaced": true,
                    "kind": KIND, "shortNames": ["ap"], "categories": ["istio-io", "security-istio-io"],
                    "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]}]}),
            vec![],
        ),
        ("GET", Route::Collection { version, namespace }) => {
            if let Some(ns) = &namespace
                && !shared.namespaces.contains(ns)
            {
                return namespace_not_found(ns);
            }
            let selector = match q.label_selector.as_deref().map(parse_selector).transpose() {
                Ok(s) => s.unwrap_or_default(),
                Err(e) => return (400, status(400, "BadRequest", &e, None), vec![]),
            };
            let inner = shared.lock();
            let items: Vec<Value> = inner
                .objects
                .iter()
                .filter(|((ns, _), _)| namespace.as_ref().is_none_or(|n| n == ns))
                .filter(|(_, o)| selector.iter().all(|req| req.matches(&o.live["metadata"]["labels"])))
                .map(|(_, o)| {
                    let mut v = o.live.clone();
                    v["apiVersion"] = json!(format!("{GROUP}/{version}"));
                    v
                })
                .collect();
            let rv = shared.resource_version.load(Ordering::SeqCst).to_string();
            (
                200,
                json!({"apiVersion": format!("{GROUP}/{version}"), "kind": format!("{KIND}List"),
                    "metadata": {"resourceVersion": rv}, "items": items}),
                vec![],
            )
        }
        (
            "GET",
            Route::Item {
                version,
                namespace,
                name,
            },
        ) => {
            if !shared.namespaces.contains(&namespace) {
                return namespace_not_found(&namespace);
            }
            match shared.lock().objects.get(&(namespace, name.clone())) {
                Some(o) => {
                    let mut v = o.live.clone();
                    v["apiVersion"] = json!(format!("{GROUP}/{version}"));
                    (200, v, vec![])
                }
                None => (404, not_found(&name), vec![]),
            }
        }
        ("DELETE", Route::Item { namespace, name, .. }) => {
            if !shared.namespaces.contains(&namespace) {
                return namespace_not_found(&namespace);
            }
            let mut inner = shared.lock();
            let key = (namespace, name.clone());
            let found = if q.dry_run {
                inner.objects.get(&key).map(|o| o.live.clone())
            } else {
                inner.objects.remove(&key).map(|o| o.live)
            };
            match found {
                Some(v) => {
                    if !q.dry_run {
                        shared.resource_version.fetch_add(1, Ordering::SeqCst);
                    }
                    (200, v, vec![])
                }
                None => (404, not_found(&name), vec![]),
            }
        }
        (
            "PATCH",
            Route::Item {
                version,
                namespace,
                name,
            },
        ) => {
            let media = content_type
                .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
                .unwrap_or_default();
            if media != "application/apply-patch+yaml" {
                return (
                    415,
                    status(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml (got {media:?})"
                        ),
                        None,
                    ),
                    vec![],
                );
            }
            if q.field_manager.is_none() {
                return (
                    400,
                    status(
                        400,
                        "BadRequest",
                        "PATCH requests with Apply content type require a fieldManager",
                        None,
                    ),
                    vec![],
                );
            }
            if !shared.namespaces.contains(&namespace) {
                return namespace_not_found(&namespace);
            }
            let text = String::from_utf8_lossy(body);
            let object: Value = match serde_json::from_str(&text)
                .or_else(|_| serde_yaml::from_str::<Value>(&text).map_err(|e| e.to_string()))
            {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    return (
                        400,
                        status(400, "BadRequest", "the body is not an object", None),
                        vec![],
                    );
                }
                Err(e) => {
                    return (
                        400,
                        status(400, "BadRequest", &format!("error decoding YAML: {e}"), None),
                        vec![],
                    );
                }
            };
            match apply(shared, &version, &namespace, &name, object, &q) {
                Ok((code, v, warnings)) => (code, v, warnings.into_iter().map(|w| ("warning", w)).collect()),
                Err(s) => {
                    let code = s["code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(500);
                    (code, s, vec![])
                }
            }
        }
        (_, Route::Unknown) => (
            404,
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                Some(json!({})),
            ),
            vec![],
        ),
        (m, _) => (
            405,
            status(
                405,
                "MethodNotAllowed",
                &format!("the server does not allow this method on the requested resource ({m})"),
                None,
            ),
            vec![],
        ),
    }
}

fn namespace_not_found(ns: &str) -> Answer {
    (
        404,
        status(
            404,
            "NotFound",
            &format!("namespaces \"{ns}\" not found"),
            Some(json!({"name": ns, "kind": "namespaces"})),
        ),
        vec![],
    )
}

fn fault(code: u16) -> Answer {
    match code {
        429 => (
            429,
            status(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                Some(json!({"retryAfterSeconds": 1})),
            ),
            vec![("retry-after", "1".into())],
        ),
        503 => (
            503,
            status(
                503,
                "ServiceUnavailable",
                "storage is (re)initializing",
                Some(json!({"retryAfterSeconds": 1})),
            ),
            vec![("retry-after", "1".into())],
        ),
        409 => (
            409,
            status(
                409,
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
                None,
            ),
            vec![],
        ),
        403 => (403, status(403, "Forbidden", "forbidden", None), vec![]),
        c => (
            c,
            status(
                c,
                "InternalError",
                "Internal error occurred: etcdserver: request timed out",
                None,
            ),
            vec![],
        ),
    }
}

/// The leaves of an applied configuration: objects are walked, everything else is one leaf.
fn leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                leaves(c, &format!("{prefix}.{k}"), out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// The part of an object a manager owns: labels, annotations and spec.
fn managed_part(object: &Value) -> Value {
    let mut m = Map::new();
    let mut meta = Map::new();
    for k in ["labels", "annotations"] {
        if let Some(v) = object["metadata"].get(k) {
            meta.insert(k.to_string(), v.clone());
        }
    }
    if !meta.is_empty() {
        m.insert("metadata".into(), Value::Object(meta));
    }
    if let Some(s) = object.get("spec") {
        m.insert("spec".into(), s.clone());
    }
    Value::Object(m)
}

fn remove_path(v: &mut Value, path: &str) {
    let keys: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    fn walk(v: &mut Value, keys: &[&str]) {
        let Some((first, rest)) = keys.split_first() else {
            return;
        };
        let Value::Object(m) = v else { return };
        if rest.is_empty() {
            m.remove(*first);
        } else if let Some(c) = m.get_mut(*first) {
            walk(c, rest);
            if c.as_object().is_some_and(|o| o.is_empty()) {
                m.remove(*first);
            }
        }
    }
    walk(v, &keys);
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

fn fields_v1(paths: &BTreeMap<String, Value>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths.keys() {
        let mut cur = &mut root;
        for k in p.trim_start_matches('.').split('.') {
            let Value::Object(m) = cur else { break };
            cur = m.entry(format!("f:{k}")).or_insert_with(|| Value::Object(Map::new()));
        }
    }
    root
}

/// Server-side apply. Ok: (status, object, warnings); Err: a Status.
fn apply(
    shared: &Shared,
    version: &str,
    namespace: &str,
    name: &str,
    mut object: Value,
    q: &Query,
) -> Result<(u16, Value, Vec<String>), Value> {
    let bad = |m: String| status(400, "BadRequest", &m, None);
    let api_version = format!("{GROUP}/{version}");
    if object["apiVersion"] != api_version.as_str() {
        return Err(bad(format!(
            "the API version in the data ({}) does not match the expected API version ({api_version})",
            object["apiVersion"].as_str().unwrap_or("")
        )));
    }
    if object["kind"] != KIND {
        return Err(bad(format!(
            "the kind in the data ({}) does not match {KIND}",
            object["kind"]
        )));
    }
    if object["metadata"]["name"] != name {
        return Err(bad(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            object["metadata"]["name"].as_str().unwrap_or("")
        )));
    }
    if let Some(ns) = object["metadata"]["namespace"].as_str()
        && ns != namespace
    {
        return Err(bad(format!(
            "the namespace of the provided object does not match the namespace sent on the request ({ns} != {namespace})"
        )));
    }
    let manager = q.field_manager.clone().unwrap_or_default();
    let mut causes = validate_metadata(&object["metadata"]);
    let mut warnings = Vec::new();
    if let Some(schema) = shared.schemas.get(version) {
        let policy = match q.validation.as_deref() {
            Some("Strict") => Unknown::Strict,
            Some("Ignore") => Unknown::Ignore,
            _ => Unknown::Warn,
        };
        let mut v = Validator {
            unknown: policy,
            causes: Vec::new(),
            unknown_fields: Vec::new(),
            cel: 0,
        };
        let mut root = object.clone();
        if let Value::Object(m) = &mut root {
            m.remove("apiVersion");
            m.remove("kind");
            m.remove("metadata");
        }
        v.check(schema, &mut root, "");
        if !v.unknown_fields.is_empty() && policy == Unknown::Strict {
            let list: Vec<String> = v
                .unknown_fields
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(bad(format!("strict decoding error: {}", list.join(", "))));
        }
        if policy == Unknown::Warn {
            warnings.extend(
                v.unknown_fields
                    .iter()
                    .map(|f| format!("299 - \"unknown field \\\"{f}\\\"\"")),
            );
        }
        causes.extend(v.causes);
        // Pruned fields go.
        if let (Value::Object(o), Value::Object(r)) = (&mut object, root) {
            for (k, val) in r {
                o.insert(k, val);
            }
        }
        let mut inner = shared.lock();
        inner.validated += 1;
        inner.cel_skipped += v.cel;
    }
    if !causes.is_empty() {
        let list: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.1, c.2)).collect();
        let message = if list.len() == 1 {
            format!("{KIND}.{GROUP} \"{name}\" is invalid: {}", list[0])
        } else {
            format!("{KIND}.{GROUP} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        return Err(status(
            422,
            "Invalid",
            &message,
            Some(json!({"name": name, "group": GROUP, "kind": KIND,
                "causes": causes.iter().map(|c| json!({"reason": c.0, "message": c.2, "field": c.1})).collect::<Vec<_>>()})),
        ));
    }

    let mut inner = shared.lock();
    let key = (namespace.to_string(), name.to_string());
    let incoming = managed_part(&object);
    let mut mine = BTreeMap::new();
    leaves(&incoming, "", &mut mine);
    let existing = inner.objects.get(&key);
    let mut applied = existing.map(|o| o.applied.clone()).unwrap_or_default();
    // Conflicts: a leaf another manager owns, set to a different value.
    let mut conflicts = Vec::new();
    for (other, config) in applied.iter_mut().filter(|(m, _)| **m != manager) {
        let mut theirs = BTreeMap::new();
        leaves(config, "", &mut theirs);
        for (path, value) in &theirs {
            if let Some(v) = mine.get(path)
                && v != value
            {
                if q.force {
                    remove_path(config, path);
                } else {
                    conflicts.push((other.clone(), path.clone()));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
            .collect();
        let list: Vec<String> = conflicts
            .iter()
            .map(|(m, f)| format!("conflict with \"{m}\": {f}"))
            .collect();
        return Err(status(
            409,
            "Conflict",
            &format!(
                "Apply failed with {} conflict{}: {}",
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                list.join("\n")
            ),
            Some(json!({"name": name, "group": GROUP, "kind": PLURAL, "causes": causes})),
        ));
    }
    applied.insert(manager.clone(), incoming);
    applied.retain(|_, c| c.as_object().is_some_and(|o| !o.is_empty()));
    let mut merged = Value::Object(Map::new());
    for config in applied.values() {
        merge(&mut merged, config);
    }
    let created = existing.is_none();
    let (uid, creation, mut generation, first_seen) = match existing {
        Some(o) => (
            o.live["metadata"]["uid"].clone(),
            o.live["metadata"]["creationTimestamp"].clone(),
            o.live["metadata"]["generation"].as_i64().unwrap_or(1),
            o.first_seen,
        ),
        None => (
            json!(format!(
                "{:08x}-0000-4000-8000-{:012x}",
                shared.resource_version.load(Ordering::SeqCst),
                key_hash(&key)
            )),
            json!(now_rfc3339()),
            1,
            Instant::now(),
        ),
    };
    if let Some(o) = existing
        && o.live.get("spec") != merged.get("spec")
    {
        generation += 1;
    }
    let unchanged = existing.is_some_and(|o| managed_part(&o.live) == merged);
    let rv = if unchanged || q.dry_run {
        existing
            .map(|o| o.live["metadata"]["resourceVersion"].clone())
            .unwrap_or(json!("0"))
    } else {
        json!((shared.resource_version.fetch_add(1, Ordering::SeqCst) + 1).to_string())
    };
    let managed_fields: Vec<Value> = applied
        .iter()
        .map(|(m, c)| {
            let mut paths = BTreeMap::new();
            leaves(c, "", &mut paths);
            json!({"manager": m, "operation": "Apply", "apiVersion": format!("{GROUP}/{version}"),
                "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&paths)})
        })
        .collect();
    let mut live = json!({
        "apiVersion": format!("{GROUP}/{version}"),
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": rv,
            "generation": generation,
            "creationTimestamp": creation,
            "managedFields": managed_fields,
        },
    });
    merge(&mut live, &merged);
    if !q.dry_run {
        inner.objects.insert(
            key,
            Object {
                applied,
                live: live.clone(),
                first_seen,
            },
        );
    }
    Ok((if created { 201 } else { 200 }, live, warnings))
}

fn key_hash(key: &(String, String)) -> u64 {
    verity_model::alert::fnv1a(&[&key.0, &key.1]) & 0xffff_ffff_ffff
}

/// (reason, field, message)
type Cause = (&'static str, String, String);

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_qualified_key(k: &str) -> bool {
    match k.rsplit_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(k),
    }
}

fn validate_metadata(meta: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let name = meta["name"].as_str().unwrap_or("");
    if !is_dns_subdomain(name) {
        out.push((
            "FieldValueInvalid",
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        ));
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            if !is_qualified_key(k) {
                out.push((
                    "FieldValueInvalid",
                    "metadata.labels".into(),
                    format!(
                        "Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'"
                    ),
                ));
            }
            let v = v.as_str().unwrap_or("\u{0}");
            if !(v.is_empty() || is_qualified_name_part(v)) {
                out.push(("FieldValueInvalid", format!("metadata.labels.{k}"), format!("Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (63 characters at most)")));
            }
        }
    }
    if let Some(ann) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in ann {
            if !is_qualified_key(k) {
                out.push((
                    "FieldValueInvalid",
                    "metadata.annotations".into(),
                    format!(
                        "Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'"
                    ),
                ));
            }
            if !v.is_string() {
                out.push((
                    "FieldValueTypeInvalid",
                    format!("metadata.annotations.{k}"),
                    "Invalid value: must be a string".into(),
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            out.push((
                "FieldValueTooLong",
                "metadata.annotations".into(),
                format!("Too long: must have at most 262144 bytes (has {total})"),
            ));
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unknown {
    Strict,
    Warn,
    Ignore,
}

struct Validator {
    unknown: Unknown,
    causes: Vec<Cause>,
    unknown_fields: Vec<String>,
    cel: u64,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Validator {
    /// Whether `v` satisfies `schema` (for `oneOf`/`anyOf`/`not`), without side effects.
    fn satisfies(schema: &Value, v: &Value) -> bool {
        let mut probe = Validator {
            unknown: Unknown::Ignore,
            causes: Vec::new(),
            unknown_fields: Vec::new(),
            cel: 0,
        };
        let mut copy = v.clone();
        probe.check(schema, &mut copy, "");
        probe.causes.is_empty()
    }

    fn check(&mut self, schema: &Value, v: &mut Value, path: &str) {
        if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
            self.cel += rules.len() as u64;
        }
        let int_or_string = schema["x-kubernetes-int-or-string"] == true;
        if int_or_string {
            if !(v.is_string() || type_name(v) == "integer") {
                self.causes.push((
                    "FieldValueTypeInvalid",
                    path.to_string(),
                    format!(
                        "Invalid value: \"{}\": {path} in body must be of type integer or string",
                        type_name(v)
                    ),
                ));
            }
            return;
        }
        if let Some(t) = schema["type"].as_str() {
            let actual = type_name(v);
            let ok = actual == t || (t == "number" && actual == "integer");
            if !ok {
                self.causes.push((
                    "FieldValueTypeInvalid",
                    path.to_string(),
                    format!("Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""),
                ));
                return;
            }
        }
        if let Some(options) = schema["enum"].as_array()
            && !options.contains(v)
        {
            let list: Vec<String> = options.iter().map(|o| o.to_string()).collect();
            self.causes.push((
                "FieldValueNotSupported",
                path.to_string(),
                format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
            ));
        }
        for sub in schema["oneOf"].as_array().into_iter() {
            let n = sub.iter().filter(|s| Self::satisfies(s, v)).count();
            if n != 1 {
                self.causes.push((
                    "FieldValueInvalid",
                    path.to_string(),
                    format!("Invalid value: must validate one and only one schema (oneOf), found {n}"),
                ));
            }
        }
        if let Some(sub) = schema["anyOf"].as_array()
            && !sub.iter().any(|s| Self::satisfies(s, v))
        {
            self.causes.push((
                "FieldValueInvalid",
                path.to_string(),
                "Invalid value: must validate at least one schema (anyOf)".into(),
            ));
        }
        if let Some(not) = schema.get("not")
            && Self::satisfies(not, v)
        {
            self.causes.push((
                "FieldValueInvalid",
                path.to_string(),
                "Invalid value: must not validate the schema (not)".into(),
            ));
        }
        match v {
            Value::String(s) => {
                let len = s.chars().count();
                if let Some(max) = schema["maxLength"].as_u64()
                    && len as u64 > max
                {
                    self.causes.push((
                        "FieldValueTooLong",
                        path.to_string(),
                        format!("Too long: may not be more than {max} bytes"),
                    ));
                }
                if let Some(min) = schema["minLength"].as_u64()
                    && (len as u64) < min
                {
                    self.causes.push((
                        "FieldValueInvalid",
                        path.to_string(),
                        format!("Invalid value: \"{s}\": {path} in body should be at least {min} chars long"),
                    ));
                }
                if let Some(p) = schema["pattern"].as_str() {
                    match regex::Regex::new(p) {
                        Ok(re) if !re.is_match(s) => self.causes.push((
                            "FieldValueInvalid",
                            path.to_string(),
                            format!("Invalid value: \"{s}\": {path} in body should match '{p}'"),
                        )),
                        _ => {}
                    }
                }
            }
            Value::Array(items) => {
                if let Some(max) = schema["maxItems"].as_u64()
                    && items.len() as u64 > max
                {
                    self.causes.push((
                        "FieldValueTooMany",
                        path.to_string(),
                        format!("Too many: {}: must have at most {max} items", items.len()),
                    ));
                }
                if let Some(min) = schema["minItems"].as_u64()
                    && (items.len() as u64) < min
                {
                    self.causes.push((
                        "FieldValueInvalid",
                        path.to_string(),
                        format!("Invalid value: {path} in body should have at least {min} items"),
                    ));
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        self.check(item_schema, item, &format!("{path}[{i}]"));
                    }
                }
            }
            Value::Object(m) => {
                if let Some(max) = schema["maxProperties"].as_u64()
                    && m.len() as u64 > max
                {
                    self.causes.push((
                        "FieldValueTooMany",
                        path.to_string(),
                        format!("Too many: {}: must have at most {max} items", m.len()),
                    ));
                }
                for r in schema["required"].as_array().into_iter().flatten() {
                    if let Some(k) = r.as_str()
                        && !m.contains_key(k)
                    {
                        self.causes
                            .push(("FieldValueRequired", join(path, k), "Required value".into()));
                    }
                }
                let props = schema["properties"].as_object();
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    let sub = props.and_then(|p| p.get(&k)).or(additional);
                    match sub {
                        Some(s) => {
                            if let Some(child) = m.get_mut(&k) {
                                self.check(s, child, &join(path, &k));
                            }
                        }
                        None if preserve => {}
                        None if props.is_some() || schema["type"] == "object" => {
                            self.unknown_fields.push(join(path, &k));
                            if self.unknown != Unknown::Strict {
                                m.remove(&k);
                            }
                        }
                        None => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::Ne(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        }
    }
}

fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let bad = |p: &str| format!("unable to parse requirement: found '{p}', expected: '=', '!=', '==', 'in', notin'");
    let key_ok = |k: &str| is_qualified_key(k);
    let mut out = Vec::new();
    for p in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = p.split_once("!=") {
            Requirement::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once("==") {
            Requirement::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once('=') {
            Requirement::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, rest)) = p.split_once(" notin ") {
            Requirement::NotIn(k.trim().into(), set(rest).ok_or_else(|| bad(p))?)
        } else if let Some((k, rest)) = p.split_once(" in ") {
            Requirement::In(k.trim().into(), set(rest).ok_or_else(|| bad(p))?)
        } else if let Some(k) = p.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else {
            Requirement::Exists(p.into())
        };
        let key = match &req {
            Requirement::Eq(k, _)
            | Requirement::Ne(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::NotExists(k) => k,
        };
        if !key_ok(key) {
            return Err(format!("unable to parse requirement: invalid label key \"{key}\""));
        }
        out.push(req);
    }
    Ok(out)
}

fn set(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};

    fn ar() -> ApiResource {
        ApiResource {
            group: GROUP.into(),
            version: "v1".into(),
            api_version: format!("{GROUP}/v1"),
            kind: KIND.into(),
            plural: PLURAL.into(),
        }
    }

    fn policy(ns: &str, name: &str, action: &str) -> Value {
        json!({"apiVersion": "security.istio.io/v1", "kind": KIND,
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "verity"}},
            "spec": {"action": action, "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/cart"]}}]}]}})
    }

    async fn client(server: &KubeApiServer, dir: &Path) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let path = dir.join("kubeconfig");
        server.write_kubeconfig(&path);
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    fn code(e: kube::Error) -> u16 {
        match e {
            kube::Error::Api(s) => s.code,
            other => panic!("not an API error: {other}"),
        }
    }

    #[test]
    fn apply_get_list_delete_conflicts_faults_and_schema() {
        let crd = istio_crd_path();
        let server = KubeApiServer::start(KubeSettings {
            crd_path: Some(crd.clone()),
            namespaces: vec!["pay".into()],
        });
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = client(&server, dir.path()).await;
            let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "pay", &ar());
            let pp = PatchParams::apply("verity").force().validation_strict();
            let o = api
                .patch("deny-cart", &pp, &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
                .await
                .unwrap();
            assert_eq!(o.metadata.generation, Some(1));
            assert_eq!(
                o.metadata.managed_fields.as_ref().unwrap()[0].manager.as_deref(),
                Some("verity")
            );
            // Same again: no new generation.
            let o = api
                .patch("deny-cart", &pp, &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
                .await
                .unwrap();
            assert_eq!(o.metadata.generation, Some(1));
            // Another manager changing the action conflicts unless forced.
            let err = server
                .apply_as("kubectl", &policy("pay", "deny-cart", "ALLOW"), false)
                .unwrap_err();
            assert_eq!(err["code"], 409);
            assert_eq!(err["details"]["causes"][0]["field"], ".spec.action");
            server
                .apply_as("kubectl", &policy("pay", "deny-cart", "ALLOW"), true)
                .unwrap();
            assert_eq!(server.get("pay", "deny-cart").unwrap()["spec"]["action"], "ALLOW");
            let o = api
                .patch("deny-cart", &pp, &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
                .await
                .unwrap();
            assert_eq!(o.metadata.generation, Some(3));
            // JWT principal, in another namespace.
            let mut jwt = policy("istio-system", "deny-alice", "DENY");
            jwt["spec"]["rules"][0]["from"][0]["source"] = json!({"requestPrincipals": ["https://idp.example/alice"]});
            let root: Api<DynamicObject> = Api::namespaced_with(c.clone(), "istio-system", &ar());
            root.patch("deny-alice", &pp, &Patch::Apply(&jwt)).await.unwrap();
            let all: Api<DynamicObject> = Api::all_with(c.clone(), &ar());
            let l = all
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=verity"))
                .await
                .unwrap();
            assert_eq!(l.items.len(), 2);
            let l = all
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by in (other)"))
                .await
                .unwrap();
            assert!(l.items.is_empty());
            assert_eq!(
                code(all.list(&ListParams::default().labels("a b c")).await.unwrap_err()),
                400
            );
            // Dry run persists nothing.
            api.patch(
                "dry",
                &pp.clone().dry_run(),
                &Patch::Apply(&policy("pay", "dry", "DENY")),
            )
            .await
            .unwrap();
            assert!(server.get("pay", "dry").is_none());
            api.delete("deny-cart", &DeleteParams::default()).await.unwrap();
            assert_eq!(code(api.get("deny-cart").await.unwrap_err()), 404);
            assert_eq!(
                code(api.delete("deny-cart", &DeleteParams::default()).await.unwrap_err()),
                404
            );
            let nowhere: Api<DynamicObject> = Api::namespaced_with(c.clone(), "nowhere", &ar());
            assert_eq!(code(nowhere.get("x").await.unwrap_err()), 404);
            // Faults.
            // kube-rs retries 429/503/504 itself: the 503 is seen, then the real answer.
            server.fail_next(&[503]);
            assert_eq!(code(api.get("x").await.unwrap_err()), 404);
            let statuses: Vec<u16> = server.requests().iter().rev().take(2).map(|r| r.status).collect();
            assert_eq!(statuses, vec![404, 503]);
            server.fail_next(&[500]);
            assert_eq!(code(api.get("x").await.unwrap_err()), 500);
            server.set_forbidden(true);
            let e = api
                .patch("x", &pp, &Patch::Apply(&policy("pay", "x", "DENY")))
                .await
                .unwrap_err();
            match e {
                kube::Error::Api(s) => {
                    assert_eq!(s.code, 403);
                    assert!(
                        s.message.contains("cannot patch resource \"authorizationpolicies\""),
                        "{}",
                        s.message
                    );
                }
                other => panic!("{other}"),
            }
            server.set_forbidden(false);
            // Wrong token.
            let mut cfg = kube::Config::new(server.url().parse().unwrap());
            cfg.root_cert = Some(vec![
                rustls::pki_types::pem::PemObject::from_pem_slice(server.ca_pem().as_bytes())
                    .map(|c: rustls::pki_types::CertificateDer<'_>| c.to_vec())
                    .unwrap(),
            ]);
            cfg.auth_info.token = Some("wrong".to_string().into());
            let bad = kube::Client::try_from(cfg).unwrap();
            let api_bad: Api<DynamicObject> = Api::namespaced_with(bad, "pay", &ar());
            assert_eq!(code(api_bad.get("x").await.unwrap_err()), 401);
            // Bad metadata is refused with or without the schema.
            let mut bad_label = policy("pay", "bad", "DENY");
            bad_label["metadata"]["labels"]["verity.dev/revocation"] = json!("not a label value!");
            assert_eq!(
                code(api.patch("bad", &pp, &Patch::Apply(&bad_label)).await.unwrap_err()),
                422
            );
            if !server.schema_loaded() {
                eprintln!("SKIP: {} is absent; schema checks not run", crd.display());
                return;
            }
            assert!(server.validated() > 0);
            let e = api
                .patch("bad", &pp, &Patch::Apply(&policy("pay", "bad", "BLOCK")))
                .await
                .unwrap_err();
            match e {
                kube::Error::Api(s) => {
                    assert_eq!(s.code, 422);
                    assert!(s.message.contains("spec.action: Unsupported value"), "{}", s.message);
                }
                other => panic!("{other}"),
            }
            let mut unknown = policy("pay", "bad", "DENY");
            unknown["spec"]["rules"][0]["from"][0]["source"]["users"] = json!(["x"]);
            assert_eq!(
                code(api.patch("bad", &pp, &Patch::Apply(&unknown)).await.unwrap_err()),
                400
            );
            let mut many = policy("pay", "bad", "DENY");
            many["spec"]["targetRefs"] = json!(
                (0..17)
                    .map(|i| json!({"kind": "Service", "name": format!("s{i}")}))
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                code(api.patch("bad", &pp, &Patch::Apply(&many)).await.unwrap_err()),
                422
            );
            assert!(server.get("pay", "bad").is_none());
        });
    }

    #[test]
    fn selectors() {
        let labels = json!({"app.kubernetes.io/managed-by": "verity", "tier": "a"});
        let ok = |s: &str| parse_selector(s).unwrap().iter().all(|r| r.matches(&labels));
        assert!(ok("app.kubernetes.io/managed-by=verity,tier"));
        assert!(ok("tier in (a, b),!missing"));
        assert!(!ok("tier notin (a)"));
        assert!(!ok("tier!=a"));
        assert!(ok(""));
        assert!(parse_selector("bad key!=x").is_err());
    }
}
