//! A Kubernetes API test server for Istio `AuthorizationPolicy` objects
//! (`security.istio.io/v1` and `v1beta1`, plural `authorizationpolicies`, namespaced): the part
//! of the API Verity's Istio responder uses, answered the way kube-apiserver answers it (status
//! codes, `meta/v1 Status` bodies, `Warning` and `Retry-After` headers). No real cluster can run
//! where these tests run; end-to-end tests and the alert → policy benchmark use this instead.
//!
//! Like the SIEM test servers it runs in-process on a dedicated thread with its own
//! current-thread tokio runtime, on a kernel-chosen port on 127.0.0.1, so plain synchronous
//! tests and code already inside a tokio runtime can both use it; it records every request and
//! can inject faults.
//!
//! # What it implements
//!
//! - **HTTPS and a bearer token.** A throwaway CA and a server certificate for `localhost`,
//!   `kubernetes` and 127.0.0.1; a missing or wrong `Authorization: Bearer` is a 401
//!   `Unauthorized` (as with `--anonymous-auth=false`). [`KubeApiServer::write_kubeconfig`]
//!   writes a kubeconfig that `kube::config::Kubeconfig::read_from` accepts.
//! - **Server-side apply**: `PATCH …/namespaces/{ns}/authorizationpolicies/{name}` with
//!   `application/apply-patch+yaml` (YAML or JSON body) and `fieldManager`, `force`,
//!   `dryRun=All`, `fieldValidation=Strict|Warn|Ignore` (default `Warn`). The options are
//!   checked like `PatchOptions` (a missing `fieldManager` is the apiserver's 422
//!   `PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: …`). Creates (201)
//!   or updates (200) and answers the object.
//! - **Field ownership.** Per object, each field manager (and operation, `Apply` or `Update`)
//!   keeps its configuration; ownership is at the leaves of it: objects (including `labels`,
//!   `annotations` and `matchLabels` maps) are granular, lists are atomic (as they are in these
//!   CRDs). The live object is the merge of all managers' configurations. An apply that sets a
//!   leaf another manager owns to a different value is a 409 `Conflict` (`Apply failed with 1
//!   conflict: conflict with "kubectl": .spec.action`, causes `FieldManagerConflict`) unless
//!   forced, which moves the leaf to the applier; leaves an applier stops sending go unless
//!   another manager still owns them. Non-apply writes (merge patch, JSON patch, `PUT`, `POST`)
//!   are `Update` operations: they take the leaves they change and never conflict, as in the
//!   apiserver. `managedFields` (`FieldsV1`, `f:` keys) are written from this.
//! - **System metadata**: `uid`, `resourceVersion` (one global counter; a no-op write does not
//!   bump it), `generation` (1, then +1 when `spec` changes), `creationTimestamp`,
//!   `managedFields`. Values clients send are ignored, except that `metadata.managedFields` in
//!   an apply is a 400 and `uid`/`resourceVersion` act as preconditions (409).
//! - `GET` one (404 `authorizationpolicies.security.istio.io "x" not found`), `LIST` in a
//!   namespace or across all with `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `key`,
//!   `!key`, `>`, `<`; malformed → 400) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`), `DELETE` (200 with the deleted object, as for a custom resource
//!   without finalizers; `dryRun` in the query or in the `DeleteOptions` body; `preconditions`),
//!   `DELETE` of a collection, `POST` (create, 409 `AlreadyExists`), `PUT` (update), and
//!   `PATCH` with `application/merge-patch+json` or `application/json-patch+json`.
//! - **Namespaces** as the apiserver treats them: creating in a namespace the server does not
//!   know (`default`, `istio-system`, `kube-system` and [`KubeSettings::namespaces`]) is a 404
//!   `namespaces "x" not found` (the NamespaceLifecycle admission plugin); reads and deletes
//!   there find nothing (404 for the object, an empty list), as on a real cluster.
//! - **Validation.** Metadata as the apiserver validates it: the name a DNS-1123 subdomain,
//!   label keys and values, annotation keys, annotations at most 256 KiB, unknown `metadata`
//!   fields. With the CRD file ([`KubeSettings::crd_path`]) present, the resulting object
//!   against the served version's `openAPIV3Schema`: `type`, `properties`, unknown fields
//!   (`Strict` → 400 `strict decoding error: unknown field "spec.x"`, `Warn` → pruned with a
//!   `Warning: 299 - "unknown field \"spec.x\""` header, `Ignore` → pruned), `nullable` (nulls
//!   pruned otherwise), `required`, `enum`, `items`, `minItems`/`maxItems`,
//!   `minLength`/`maxLength`, `pattern`, `minimum`/`maximum`/`multipleOf`,
//!   `minProperties`/`maxProperties`, `additionalProperties`, `allOf`/`oneOf`/`anyOf`/`not`,
//!   `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`, duplicates in
//!   `x-kubernetes-list-type: set|map` lists. Invalid objects get the 422 `Invalid` Status
//!   (`AuthorizationPolicy.security.istio.io "x" is invalid: spec.action: Unsupported value:
//!   …`) with one cause per error. `format` is not checked. Without the CRD file only the
//!   metadata and the object's shape are checked and [`KubeApiServer::schema_loaded`] is false.
//! - **Discovery**: `/version`, `/api`, `/apis`, `/apis/security.istio.io` and
//!   `/apis/security.istio.io/{v1,v1beta1}`.
//! - **Faults**: [`KubeApiServer::fail_next`] (each queued status answers one resource request,
//!   after authentication and authorization; discovery and `/version` are never failed),
//!   [`KubeApiServer::set_forbidden`] (the RBAC 403 for every resource request, with the verb,
//!   name and namespace filled in), [`KubeApiServer::set_down`] (the listener is closed and open
//!   connections dropped, so connections are refused; it listens again on the same port),
//!   [`KubeApiServer::set_response_delay`].
//!
//! # What it leaves out
//!
//! Watches (`watch=true` is a 405), `limit`/`continue` paging (lists are always whole, as a
//! list served from the watch cache is), `resourceVersion` semantics on reads, the `status`
//! subresource (`status` in a body is dropped, as the main resource does), finalizers and
//! graceful deletion, owner references and garbage collection, admission webhooks, strategic
//! merge patch (415, as for any custom resource), `x-kubernetes-map-type: atomic` and
//! granular ownership inside `set`/`map` lists (every list is atomic), defaults from the
//! schema, and CEL rules (`x-kubernetes-validations`): these are not evaluated, only counted in
//! [`KubeApiServer::cel_rules_skipped`]. Other resources are 404s.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::siem::{percent_decode, pseudo_guid};

const GROUP: &str = "security.istio.io";
const KIND: &str = "AuthorizationPolicy";
const PLURAL: &str = "authorizationpolicies";
const VERSIONS: &[&str] = &["v1", "v1beta1"];
const STORAGE_VERSION: &str = "v1";
const DEFAULT_NAMESPACES: &[&str] = &["default", "istio-system", "kube-system"];
/// The user the RBAC refusals name.
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:verity:verity";
/// kube-apiserver's request body limit.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;
const APPLY_PATCH: &str = "application/apply-patch+yaml";
const MERGE_PATCH: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
/// The fields of `ObjectMeta`; others in a body are unknown fields.
const META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// How the server is set up.
#[derive(Clone, Debug, Default)]
pub struct KubeSettings {
    /// The Istio security CRDs (multi-document YAML). When the file is present, objects are
    /// validated against the `authorizationpolicies.security.istio.io` schema.
    pub crd_path: Option<PathBuf>,
    /// Namespaces besides `default`, `istio-system` and `kube-system`.
    pub namespaces: Vec<String>,
}

/// The CRD file in the shared reference material beside the repository
/// (`../shared/reference/istio/security-crds.yaml`).
pub fn istio_crd_path() -> PathBuf {
    crate::repo_root().join("../shared/reference/istio/security-crds.yaml")
}

/// One request as the server answered it.
#[derive(Clone, Debug)]
pub struct KubeRequest {
    pub method: String,
    pub path: String,
    /// The raw query string.
    pub query: String,
    pub content_type: Option<String>,
    pub body: String,
    pub status: u16,
    /// The texts of the `Warning` headers sent back.
    pub warnings: Vec<String>,
    /// When the request arrived.
    pub at: Instant,
}

/// A 4xx answer (injected ones included), with what was sent.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub method: String,
    pub path: String,
    /// The `Status` answered.
    pub status: Value,
    /// The request body.
    pub body: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

type ManagerKey = (String, Operation);
/// A field path: the keys from the root.
type FieldPath = Vec<String>;

/// What one field manager owns: its configuration (labels, annotations and spec), whose leaves
/// are the fields it owns.
#[derive(Clone, Debug)]
struct Owner {
    api_version: String,
    time: String,
    config: Value,
}

#[derive(Clone, Debug)]
struct Object {
    owners: BTreeMap<ManagerKey, Owner>,
    /// As stored (storage version).
    live: Value,
    first_seen: Instant,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<(String, String), Object>,
    namespaces: BTreeSet<String>,
    resource_version: u64,
    faults: VecDeque<u16>,
    forbidden: bool,
    delay: Duration,
    requests: Vec<KubeRequest>,
    rejections: Vec<Rejection>,
    validated: u64,
    cel_skipped: u64,
}

/// The CRD's schemas by served version, and its patterns compiled once.
struct Schemas {
    versions: BTreeMap<String, Value>,
    patterns: BTreeMap<String, regex::Regex>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Bumped (and `changed` notified) whenever the state may have changed.
    epoch: Mutex<u64>,
    changed: Condvar,
    token: String,
    schemas: Option<Schemas>,
    down: tokio::sync::watch::Sender<bool>,
    listening: AtomicBool,
    /// Connections being served; going down waits until they are all dropped.
    open: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn touch(&self) {
        let mut e = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        *e += 1;
        self.changed.notify_all();
    }
}

/// The server; it stops when dropped.
pub struct KubeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = ((seed >> ((i % 16) * 8)) as u8) ^ (i as u8);
        }
    }
    b
}

/// Now, in RFC 3339 with whole seconds, as the apiserver writes timestamps.
fn now_rfc3339() -> String {
    let ns = verity_model::time::now_ns();
    let s = verity_model::time::format_rfc3339_ns(ns - ns.rem_euclid(1_000_000_000));
    match s.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => s,
    }
}

fn api_version(version: &str) -> String {
    format!("{GROUP}/{version}")
}

/// `authorizationpolicies.security.istio.io`.
fn resource_name() -> String {
    format!("{PLURAL}.{GROUP}")
}

/// A string quoted as Go's `%q` would for the strings met here.
fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn load_schemas(path: &Path) -> Result<Schemas, String> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut versions = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).map_err(|e| format!("{}: {e}", path.display()))?;
        if v["metadata"]["name"] != resource_name().as_str() {
            continue;
        }
        for version in v["spec"]["versions"].as_array().into_iter().flatten() {
            if version["served"] == false {
                continue;
            }
            if let (Some(name), Some(schema)) = (version["name"].as_str(), version["schema"].get("openAPIV3Schema")) {
                versions.insert(name.to_string(), schema.clone());
            }
        }
    }
    if versions.is_empty() {
        return Err(format!("{}: no {} CRD", path.display(), resource_name()));
    }
    let mut patterns = BTreeMap::new();
    fn collect(v: &Value, out: &mut BTreeMap<String, regex::Regex>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(p)) = m.get("pattern")
                    && let Ok(re) = regex::Regex::new(p)
                {
                    out.insert(p.clone(), re);
                }
                m.values().for_each(|c| collect(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| collect(c, out)),
            _ => {}
        }
    }
    versions.values().for_each(|s| collect(s, &mut patterns));
    Ok(Schemas { versions, patterns })
}

fn tls() -> Result<(String, rustls::ServerConfig), String> {
    let pki = crate::TestPki::generate(
        "kubernetes test CA",
        &["localhost", "kubernetes", "kubernetes.default.svc"],
    )?;
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
    /// Starts on 127.0.0.1 on a free port. Panics if it cannot (a test fixture), or if the CRD
    /// file is present but holds no `authorizationpolicies.security.istio.io` schema.
    pub fn start(settings: KubeSettings) -> Self {
        let schemas = match &settings.crd_path {
            Some(p) if p.is_file() => Some(load_schemas(p).unwrap_or_else(|e| panic!("CRD: {e}"))),
            _ => None,
        };
        let mut inner = Inner {
            resource_version: 1000,
            ..Inner::default()
        };
        inner.namespaces = DEFAULT_NAMESPACES.iter().map(|s| s.to_string()).collect();
        inner.namespaces.extend(settings.namespaces.iter().cloned());
        let (down, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            epoch: Mutex::new(0),
            changed: Condvar::new(),
            token: format!("verity-test-{}", hex::encode(random::<16>())),
            schemas,
            down,
            listening: AtomicBool::new(false),
            open: std::sync::atomic::AtomicUsize::new(0),
        });
        let (ca_pem, config) = tls().unwrap_or_else(|e| panic!("{e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("listener address");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kube-api-test-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(serve(listener, addr, config, s, stop_rx));
            })
            .expect("spawn the server thread");
        let server = Self {
            shared,
            addr,
            ca_pem,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        server.wait_listening(true);
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig for this server: one cluster with the CA, one user with the token, one
    /// context (namespace `default`), which is current.
    pub fn kubeconfig_yaml(&self) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\npreferences: {{}}\nclusters:\n- name: verity-test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: verity\n  user:\n    token: {}\ncontexts:\n- name: verity-test\n  context:\n    cluster: verity-test\n    user: verity\n    namespace: default\ncurrent-context: verity-test\n",
            self.url(),
            self.shared.token
        )
    }

    /// Writes [`KubeApiServer::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) {
        std::fs::write(path, self.kubeconfig_yaml()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Whether the CRD schema was loaded (else only metadata and shape are validated).
    pub fn schema_loaded(&self) -> bool {
        self.shared.schemas.is_some()
    }

    /// Objects validated against the CRD schema (accepted or not).
    pub fn validated(&self) -> u64 {
        self.shared.lock().validated
    }

    /// CEL rules (`x-kubernetes-validations`) met while validating, which are not evaluated.
    pub fn cel_rules_skipped(&self) -> u64 {
        self.shared.lock().cel_skipped
    }

    /// Every 4xx answered over HTTP (injected faults included), with the request body.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.shared.lock().rejections.clone()
    }

    /// Every request answered, in order.
    pub fn requests(&self) -> Vec<KubeRequest> {
        self.shared.lock().requests.clone()
    }

    /// All live objects (as stored: `security.istio.io/v1`), by namespace and name.
    pub fn objects(&self) -> Vec<Value> {
        self.shared.lock().objects.values().map(|o| o.live.clone()).collect()
    }

    /// One live object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .map(|o| o.live.clone())
    }

    /// When the object was created (it is reset if it is deleted and created again).
    pub fn first_seen(&self, namespace: &str, name: &str) -> Option<Instant> {
        self.shared
            .lock()
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .map(|o| o.first_seen)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version
    }

    /// An operator deleting an object out of band. Whether it existed.
    pub fn delete_as_admin(&self, namespace: &str, name: &str) -> bool {
        let removed = {
            let mut inner = self.shared.lock();
            let removed = inner
                .objects
                .remove(&(namespace.to_string(), name.to_string()))
                .is_some();
            if removed {
                inner.resource_version += 1;
            }
            removed
        };
        self.shared.touch();
        removed
    }

    /// Another field manager applying `object` (e.g. `kubectl apply --server-side`), through
    /// the same logic as an HTTP apply (namespace from the object, else `default`; version from
    /// its `apiVersion`; `fieldValidation=Warn`). The live object, or the `Status` refusal.
    pub fn apply_as(&self, manager: &str, object: &Value, force: bool) -> Result<Value, Value> {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let version = version_of(object);
        let w = Write {
            version: &version,
            namespace: &ns,
            name: &name,
            manager,
            force,
            dry_run: false,
            validation: FieldValidation::Warn,
        };
        let out = {
            let mut inner = self.shared.lock();
            apply(&self.shared, &mut inner, &w, object.clone())
        };
        self.shared.touch();
        out.map(|(_, v, _)| v)
    }

    /// Another field manager changing an object with a JSON merge patch (an `Update`, like
    /// `kubectl edit` or `kubectl patch --type=merge`): it takes the fields it changes, without
    /// conflicts. The live object, or the `Status` refusal.
    pub fn update_as(&self, manager: &str, namespace: &str, name: &str, merge_patch: &Value) -> Result<Value, Value> {
        let out = {
            let mut inner = self.shared.lock();
            match inner.objects.get(&(namespace.to_string(), name.to_string())).cloned() {
                None => Err(not_found(name)),
                Some(existing) => {
                    let version = version_of(&existing.live);
                    let mut doc = existing.live.clone();
                    merge_patch_into(&mut doc, merge_patch);
                    let w = Write {
                        version: &version,
                        namespace,
                        name,
                        manager,
                        force: false,
                        dry_run: false,
                        validation: FieldValidation::Warn,
                    };
                    update(&self.shared, &mut inner, &w, doc, &existing)
                }
            }
        };
        self.shared.touch();
        out.map(|(_, v, _)| v)
    }

    /// Makes a namespace exist.
    pub fn add_namespace(&self, namespace: &str) {
        self.shared.lock().namespaces.insert(namespace.to_string());
    }

    /// The next resource requests answer these statuses, one each, as the apiserver would
    /// (500 `InternalError`, 503 `ServiceUnavailable` and 429 `TooManyRequests` with
    /// `Retry-After: 1`, 409 `Conflict`, 403 `Forbidden`, 504 `Timeout`, …). They are taken
    /// after authentication and authorization; discovery and `/version` do not take them.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.shared.lock().faults.extend(statuses.iter().copied());
    }

    /// While on, every resource request is refused by RBAC (403 `Forbidden`).
    pub fn set_forbidden(&self, on: bool) {
        self.shared.lock().forbidden = on;
    }

    /// Every answer waits this long first.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Down: the listener is closed and open connections are dropped, so clients get
    /// "connection refused". Up again: it listens on the same port. Returns once done.
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
        self.wait_listening(!down);
    }

    /// Waits until the listener is open (or closed and every open connection dropped: a
    /// client's pooled keep-alive connection must not be answered after `set_down(true)`).
    fn wait_listening(&self, listening: bool) {
        let end = Instant::now() + Duration::from_secs(10);
        let done = || {
            self.shared.listening.load(Ordering::SeqCst) == listening
                && (listening || self.shared.open.load(Ordering::SeqCst) == 0)
        };
        while !done() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until `f` holds (re-checked whenever the server's state changes, and at least every
    /// 100 ms), or `timeout` passes. Whether it held.
    pub fn wait_for(&self, timeout: Duration, mut f: impl FnMut(&Self) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let seen = *self.shared.epoch.lock().unwrap_or_else(PoisonError::into_inner);
            if f(self) {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            let guard = self.shared.epoch.lock().unwrap_or_else(PoisonError::into_inner);
            if *guard == seen {
                let wait = (end - now).min(Duration::from_millis(100));
                let _ = self.shared.changed.wait_timeout(guard, wait);
            }
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

/// The version an object names (`security.istio.io/<v>`), else the storage version.
fn version_of(object: &Value) -> String {
    object["apiVersion"]
        .as_str()
        .and_then(|v| v.strip_prefix(GROUP))
        .and_then(|v| v.strip_prefix('/'))
        .filter(|v| VERSIONS.contains(v))
        .unwrap_or(STORAGE_VERSION)
        .to_string()
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept(listener: &Option<tokio::net::TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn serve(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    config: rustls::ServerConfig,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut listener = tokio::net::TcpListener::from_std(listener).ok();
    shared.listening.store(listener.is_some(), Ordering::SeqCst);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut down = shared.down.subscribe();
    loop {
        let want_down = *down.borrow_and_update();
        if want_down && listener.is_some() {
            listener = None;
            shared.listening.store(false, Ordering::SeqCst);
        } else if !want_down && listener.is_none() {
            match bind(addr) {
                Ok(l) => {
                    listener = Some(l);
                    shared.listening.store(true, Ordering::SeqCst);
                }
                Err(_) => {
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = down.changed() => continue,
            r = accept(&listener) => {
                let Ok(tcp) = r else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                shared.open.fetch_add(1, Ordering::SeqCst);
                let open = OpenConnection(shared.clone());
                tokio::spawn(async move {
                    let _open = open;
                    let mut down = shared.down.subscribe();
                    let conn = async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let svc = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(shared, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    };
                    tokio::select! {
                        _ = conn => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        }
    }
}

/// One served connection, counted in `Shared::open` until dropped.
struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

type Resp = hyper::Response<http_body_util::Full<bytes::Bytes>>;

/// A request as the handlers see it.
struct Req<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a hyper::HeaderMap,
    body: &'a [u8],
}

impl Req<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The media type of the body, without parameters, lowercase.
    fn media_type(&self) -> String {
        self.header("content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// An answer: status code, JSON body, warnings.
struct Answer {
    code: u16,
    body: Value,
    warnings: Vec<String>,
}

impl Answer {
    fn ok(code: u16, body: Value) -> Self {
        Self {
            code,
            body,
            warnings: Vec::new(),
        }
    }

    /// A `Status` failure; its `code` is the HTTP status.
    fn fail(status: Value) -> Self {
        let code = status["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500);
        Self::ok(code, status)
    }

    fn from_outcome(o: Outcome) -> Self {
        match o {
            Ok((code, body, warnings)) => Self { code, body, warnings },
            Err(status) => Self::fail(status),
        }
    }
}

async fn handle(shared: Arc<Shared>, req: hyper::Request<hyper::body::Incoming>) -> Resp {
    use http_body_util::BodyExt;
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => Some(b.to_bytes()),
        Err(_) => None,
    };
    let delay = shared.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let r = Req {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: body.as_deref().unwrap_or_default(),
    };
    let answer = match &body {
        Some(_) => answer(&shared, &r),
        None => Answer::fail(failure(
            413,
            "RequestEntityTooLarge",
            &format!("Request entity too large: limit is {MAX_BODY_BYTES}"),
            None,
        )),
    };
    let body_text = String::from_utf8_lossy(r.body).into_owned();
    {
        let mut inner = shared.lock();
        if (400..500).contains(&answer.code) {
            inner.rejections.push(Rejection {
                method: r.method.to_string(),
                path: r.path.to_string(),
                status: answer.body.clone(),
                body: body_text.clone(),
            });
        }
        inner.requests.push(KubeRequest {
            method: r.method.to_string(),
            path: r.path.to_string(),
            query: r.query.to_string(),
            content_type: r.header("content-type").map(str::to_string),
            body: body_text,
            status: answer.code,
            warnings: answer.warnings.clone(),
            at,
        });
    }
    shared.touch();
    respond(&answer)
}

/// `Warning: 299 - "text"`, as the apiserver writes it.
fn warning_header(text: &str) -> String {
    let escaped: String = text
        .chars()
        .map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' })
        .collect::<String>()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!("299 - \"{escaped}\"")
}

fn respond(a: &Answer) -> Resp {
    let mut b = hyper::Response::builder()
        .status(a.code)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .header("audit-id", pseudo_guid());
    // The apiserver sends Retry-After whenever a Status carries retryAfterSeconds.
    if let Some(s) = a.body["details"]["retryAfterSeconds"].as_u64().filter(|s| *s > 0) {
        b = b.header("retry-after", s.to_string());
    }
    for w in &a.warnings {
        b = b.header("warning", warning_header(w));
    }
    b.body(http_body_util::Full::new(bytes::Bytes::from(a.body.to_string())))
        .unwrap_or_else(|_| {
            let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
}

// ---- Status bodies ----

/// A `meta/v1 Status` failure.
fn failure(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
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

fn bad_request(message: &str) -> Value {
    failure(400, "BadRequest", message, None)
}

fn not_found(name: &str) -> Value {
    failure(
        404,
        "NotFound",
        &format!("{} {} not found", resource_name(), quote(name)),
        Some(json!({"name": name, "group": GROUP, "kind": PLURAL})),
    )
}

fn namespace_not_found(ns: &str) -> Value {
    failure(
        404,
        "NotFound",
        &format!("namespaces {} not found", quote(ns)),
        Some(json!({"name": ns, "kind": "namespaces"})),
    )
}

fn no_such_resource() -> Value {
    failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

fn method_not_allowed() -> Value {
    failure(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Some(json!({})),
    )
}

fn unsupported_media(accepted: &[&str]) -> Value {
    failure(
        415,
        "UnsupportedMediaType",
        &format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        ),
        None,
    )
}

/// 409 `Operation cannot be fulfilled on …`.
fn conflict(name: &str, why: &str) -> Value {
    failure(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} {}: {why}",
            resource_name(),
            quote(name)
        ),
        Some(json!({"name": name, "group": GROUP, "kind": PLURAL})),
    )
}

const MODIFIED: &str = "the object has been modified; please apply your changes to the latest version and try again";

/// One cause of a 422.
#[derive(Clone, Debug)]
struct Cause {
    reason: &'static str,
    field: String,
    message: String,
}

fn cause(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        reason,
        field: field.into(),
        message: message.into(),
    }
}

/// The aggregate message of field errors: one, or `[a, b]`.
fn aggregate(causes: &[Cause]) -> String {
    let list: Vec<String> = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    if list.len() == 1 {
        list.concat()
    } else {
        format!("[{}]", list.join(", "))
    }
}

fn causes_json(causes: &[Cause]) -> Vec<Value> {
    causes
        .iter()
        .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
        .collect()
}

/// 422 for the object.
fn invalid_object(name: &str, causes: &[Cause]) -> Value {
    failure(
        422,
        "Invalid",
        &format!("{KIND}.{GROUP} {} is invalid: {}", quote(name), aggregate(causes)),
        Some(json!({"name": name, "group": GROUP, "kind": KIND, "causes": causes_json(causes)})),
    )
}

/// 422 for request options (`PatchOptions.meta.k8s.io "" is invalid: …`).
fn invalid_options(kind: &str, causes: &[Cause]) -> Value {
    failure(
        422,
        "Invalid",
        &format!("{kind}.meta.k8s.io \"\" is invalid: {}", aggregate(causes)),
        Some(json!({"group": "meta.k8s.io", "kind": kind, "causes": causes_json(causes)})),
    )
}

/// The RBAC refusal for a verb.
fn forbidden(verb: &str, namespace: Option<&str>, name: Option<&str>) -> Value {
    let what = match name {
        Some(n) => format!("{} {}", resource_name(), quote(n)),
        None => resource_name(),
    };
    let scope = match namespace {
        Some(ns) => format!("in the namespace {}", quote(ns)),
        None => "at the cluster scope".to_string(),
    };
    let mut details = json!({"group": GROUP, "kind": PLURAL});
    if let Some(n) = name {
        details["name"] = json!(n);
    }
    failure(
        403,
        "Forbidden",
        &format!(
            "{what} is forbidden: User {} cannot {verb} resource {} in API group {} {scope}",
            quote(SERVICE_ACCOUNT),
            quote(PLURAL),
            quote(GROUP)
        ),
        Some(details),
    )
}

/// An injected failure, as the apiserver words it.
fn fault(code: u16, verb: &str, namespace: Option<&str>, name: Option<&str>) -> Value {
    match code {
        400 => bad_request("the server rejected our request for an unknown reason"),
        401 => failure(401, "Unauthorized", "Unauthorized", None),
        403 => forbidden(verb, namespace, name),
        404 => not_found(name.unwrap_or("")),
        409 => conflict(name.unwrap_or(""), MODIFIED),
        429 => failure(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            Some(json!({"retryAfterSeconds": 1})),
        ),
        503 => failure(
            503,
            "ServiceUnavailable",
            "storage is (re)initializing",
            Some(json!({"retryAfterSeconds": 1})),
        ),
        504 => failure(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
            Some(json!({})),
        ),
        c if c >= 500 => failure(
            c,
            "InternalError",
            "Internal error occurred: etcdserver: leader changed",
            Some(json!({"causes": [{"message": "etcdserver: leader changed"}]})),
        ),
        c => failure(c, "Unknown", "the server has received an unknown error", None),
    }
}

// ---- Routing ----

enum Route<'a> {
    Version,
    Api,
    Apis,
    Group,
    GroupVersion(&'a str),
    Resource {
        version: &'a str,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    },
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["apis", GROUP] => Route::Group,
        ["apis", GROUP, v] if VERSIONS.contains(v) => Route::GroupVersion(v),
        ["apis", GROUP, v, PLURAL] if VERSIONS.contains(v) => Route::Resource {
            version: v,
            namespace: None,
            name: None,
        },
        ["apis", GROUP, v, "namespaces", ns, PLURAL] if VERSIONS.contains(v) && !ns.is_empty() => Route::Resource {
            version: v,
            namespace: Some(ns),
            name: None,
        },
        ["apis", GROUP, v, "namespaces", ns, PLURAL, name]
            if VERSIONS.contains(v) && !ns.is_empty() && !name.is_empty() =>
        {
            Route::Resource {
                version: v,
                namespace: Some(ns),
                name: Some(name),
            }
        }
        _ => Route::Unknown,
    }
}

fn authenticated(shared: &Shared, req: &Req<'_>) -> bool {
    let Some(auth) = req.header("authorization") else {
        return false;
    };
    let mut parts = auth.trim().splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(token)) => {
            scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token == shared.token
        }
        _ => false,
    }
}

fn group_versions() -> Vec<Value> {
    VERSIONS
        .iter()
        .map(|v| json!({"groupVersion": api_version(v), "version": v}))
        .collect()
}

fn api_group() -> Value {
    json!({"name": GROUP, "versions": group_versions(),
        "preferredVersion": {"groupVersion": api_version(STORAGE_VERSION), "version": STORAGE_VERSION}})
}

fn answer(shared: &Shared, req: &Req<'_>) -> Answer {
    if !authenticated(shared, req) {
        return Answer::fail(failure(401, "Unauthorized", "Unauthorized", None));
    }
    let q = Query::parse(req.query);
    let route = route(req.path);
    if !matches!(route, Route::Resource { .. } | Route::Unknown) && req.method != "GET" {
        return Answer::fail(method_not_allowed());
    }
    match route {
        Route::Version => Answer::ok(
            200,
            json!({"major": "1", "minor": "34", "emulationMajor": "1", "emulationMinor": "34",
                "minCompatibilityMajor": "1", "minCompatibilityMinor": "33",
                "gitVersion": "v1.34.1", "gitCommit": "93248f9ae092f571eb870b7664c534bfc7d00f03",
                "gitTreeState": "clean", "buildDate": "2025-09-09T19:36:55Z", "goVersion": "go1.24.6",
                "compiler": "gc", "platform": "linux/amd64"}),
        ),
        Route::Api => Answer::ok(
            200,
            json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        ),
        Route::Apis => Answer::ok(
            200,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]}),
        ),
        Route::Group => {
            let mut group = api_group();
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            Answer::ok(200, group)
        }
        Route::GroupVersion(v) => Answer::ok(
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version(v),
                "resources": [{"name": PLURAL, "singularName": "authorizationpolicy", "namespaced": true,
                    "kind": KIND, "shortNames": ["ap"], "categories": ["istio-io", "security-istio-io"],
                    "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
                    "storageVersionHash": "0kCPUdlQrYE="},
                    {"name": format!("{PLURAL}/status"), "singularName": "", "namespaced": true, "kind": KIND,
                    "verbs": ["get", "patch", "update"]}]}),
        ),
        Route::Resource {
            version,
            namespace,
            name,
        } => resource(shared, req, &q, version, namespace, name),
        Route::Unknown => Answer::fail(no_such_resource()),
    }
}

fn resource(
    shared: &Shared,
    req: &Req<'_>,
    q: &Query,
    version: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Answer {
    let verb = match (req.method, name, namespace) {
        ("GET", None, _) if q.watch() => "watch",
        ("GET", None, _) => "list",
        ("GET", Some(_), _) => "get",
        ("POST", None, Some(_)) => "create",
        ("PUT", Some(_), _) => "update",
        ("PATCH", Some(_), _) => "patch",
        ("DELETE", Some(_), _) => "delete",
        ("DELETE", None, Some(_)) => "deletecollection",
        _ => return Answer::fail(method_not_allowed()),
    };
    {
        let mut inner = shared.lock();
        if inner.forbidden {
            return Answer::fail(forbidden(verb, namespace, name));
        }
        if let Some(code) = inner.faults.pop_front() {
            return Answer::fail(fault(code, verb, namespace, name));
        }
    }
    match (verb, namespace, name) {
        ("watch", ..) => Answer::fail(failure(
            405,
            "MethodNotAllowed",
            "watch is not supported by this test server",
            Some(json!({})),
        )),
        ("list", ns, _) => list(shared, q, version, ns),
        ("get", Some(ns), Some(name)) => {
            let inner = shared.lock();
            match inner.objects.get(&(ns.to_string(), name.to_string())) {
                Some(o) => Answer::ok(200, view(&o.live, version)),
                None => Answer::fail(not_found(name)),
            }
        }
        ("create", Some(ns), _) => Answer::from_outcome(post(shared, req, q, version, ns)),
        ("update", Some(ns), Some(name)) => Answer::from_outcome(put(shared, req, q, version, ns, name)),
        ("patch", Some(ns), Some(name)) => Answer::from_outcome(patch(shared, req, q, version, ns, name)),
        ("delete", Some(ns), Some(name)) => Answer::from_outcome(delete(shared, req, q, version, ns, name)),
        ("deletecollection", Some(ns), _) => Answer::from_outcome(delete_collection(shared, req, q, version, ns)),
        _ => Answer::fail(method_not_allowed()),
    }
}

/// The stored object as served in `version`.
fn view(live: &Value, version: &str) -> Value {
    let mut v = live.clone();
    v["apiVersion"] = json!(api_version(version));
    v
}

// ---- Query parameters and options ----

#[derive(Default, Debug)]
struct Query {
    field_manager: Option<String>,
    force: Option<String>,
    dry_run: Vec<String>,
    field_validation: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    watch: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

/// As the apiserver converts query booleans: `true` or `1`, case-insensitively.
fn query_bool(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

impl Query {
    fn parse(q: &str) -> Self {
        let mut out = Query::default();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match percent_decode(k).as_str() {
                "fieldManager" => out.field_manager = Some(v),
                "force" => out.force = Some(v),
                "dryRun" => out.dry_run.push(v),
                "fieldValidation" => out.field_validation = Some(v),
                "labelSelector" => out.label_selector = Some(v),
                "fieldSelector" => out.field_selector = Some(v),
                "watch" => out.watch = Some(v),
                _ => {}
            }
        }
        out
    }

    fn force(&self) -> bool {
        query_bool(self.force.as_deref())
    }

    fn watch(&self) -> bool {
        query_bool(self.watch.as_deref())
    }

    fn dry_run(&self) -> bool {
        !self.dry_run.is_empty()
    }

    fn validation(&self) -> FieldValidation {
        match self.field_validation.as_deref() {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        }
    }
}

fn dry_run_causes(values: &[String]) -> Vec<Cause> {
    values
        .iter()
        .filter(|d| d.as_str() != "All")
        .map(|d| {
            cause(
                "FieldValueNotSupported",
                "dryRun",
                format!("Unsupported value: {}: supported values: \"All\"", quote(d)),
            )
        })
        .collect()
}

/// `PatchOptions`, `CreateOptions`, `UpdateOptions` checks, as `ValidatePatchOptions` & co.
fn check_options(kind: &str, q: &Query, apply: bool) -> Result<(), Value> {
    let mut causes = Vec::new();
    if kind == "PatchOptions" {
        if apply && q.field_manager.as_deref().unwrap_or("").is_empty() {
            causes.push(cause(
                "FieldValueRequired",
                "fieldManager",
                "Required value: is required for apply patch",
            ));
        }
        if !apply && q.force.is_some() {
            causes.push(cause(
                "FieldValueForbidden",
                "force",
                "Forbidden: may not be specified for non-apply patch",
            ));
        }
    }
    if let Some(m) = &q.field_manager {
        if m.len() > 128 {
            causes.push(cause(
                "FieldValueTooLong",
                "fieldManager",
                "Too long: may not be more than 128 bytes",
            ));
        }
        if m.chars().any(char::is_control) {
            causes.push(cause(
                "FieldValueInvalid",
                "fieldManager",
                format!("Invalid value: {}: must only contain printable characters", quote(m)),
            ));
        }
    }
    causes.extend(dry_run_causes(&q.dry_run));
    if let Some(v) = &q.field_validation
        && !["", "Ignore", "Warn", "Strict"].contains(&v.as_str())
    {
        causes.push(cause(
            "FieldValueNotSupported",
            "fieldValidation",
            format!(
                "Unsupported value: {}: supported values: \"Ignore\", \"Strict\", \"Warn\"",
                quote(v)
            ),
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid_options(kind, &causes))
    }
}

/// The manager of a non-apply write: `fieldManager`, else the user agent up to its first `/`.
fn manager_name(q: &Query, req: &Req<'_>) -> String {
    match q.field_manager.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => {
            let ua = req.header("user-agent").unwrap_or("");
            let prefix: String = ua.split('/').next().unwrap_or("").chars().take(128).collect();
            if prefix.is_empty() {
                "unknown".to_string()
            } else {
                prefix
            }
        }
    }
}

fn decode_json(body: &[u8]) -> Result<Value, Value> {
    serde_json::from_slice(body).map_err(|e| bad_request(&format!("couldn't decode the request body as JSON: {e}")))
}

/// A body sent as JSON or YAML (`POST`, `PUT`).
fn decode_object(req: &Req<'_>) -> Result<Value, Value> {
    let media = req.media_type();
    let v = match media.as_str() {
        "" | "application/json" => decode_json(req.body)?,
        "application/yaml" => {
            serde_yaml::from_slice(req.body).map_err(|e| bad_request(&format!("error decoding YAML: {e}")))?
        }
        _ => return Err(unsupported_media(&["application/json", "application/yaml"])),
    };
    if v.is_object() {
        Ok(v)
    } else {
        Err(bad_request("Object 'Kind' is missing in the request body"))
    }
}

// ---- Verbs ----

fn list(shared: &Shared, q: &Query, version: &str, namespace: Option<&str>) -> Answer {
    let labels = match q.label_selector.as_deref().map(parse_label_selector).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return Answer::fail(bad_request(&e)),
    };
    let fields = match q.field_selector.as_deref().map(parse_field_selector).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return Answer::fail(bad_request(&e)),
    };
    let inner = shared.lock();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((ns, _), o)| namespace.is_none_or(|n| n == ns) && selects(&labels, &fields, &o.live))
        .map(|(_, o)| view(&o.live, version))
        .collect();
    Answer::ok(
        200,
        json!({"apiVersion": api_version(version), "kind": format!("{KIND}List"),
            "metadata": {"resourceVersion": inner.resource_version.to_string()}, "items": items}),
    )
}

fn selects(labels: &[Requirement], fields: &[FieldRequirement], live: &Value) -> bool {
    labels.iter().all(|r| r.matches(&live["metadata"]["labels"])) && fields.iter().all(|f| f.matches(live))
}

/// `DeleteOptions` from the query and the body.
struct DeleteOptions {
    dry_run: bool,
    uid: Option<String>,
    resource_version: Option<String>,
}

fn delete_options(q: &Query, body: &[u8]) -> Result<DeleteOptions, Value> {
    let mut dry_run = q.dry_run.clone();
    let mut opts = DeleteOptions {
        dry_run: false,
        uid: None,
        resource_version: None,
    };
    let mut causes = Vec::new();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = decode_json(body)?;
        if let Some(d) = v["dryRun"].as_array() {
            dry_run.extend(d.iter().map(|x| x.as_str().unwrap_or_default().to_string()));
        }
        opts.uid = v["preconditions"]["uid"].as_str().map(str::to_string);
        opts.resource_version = v["preconditions"]["resourceVersion"].as_str().map(str::to_string);
        if let Some(p) = v["propagationPolicy"].as_str()
            && !["Orphan", "Background", "Foreground"].contains(&p)
        {
            causes.push(cause(
                "FieldValueNotSupported",
                "propagationPolicy",
                format!(
                    "Unsupported value: {}: supported values: \"Background\", \"Foreground\", \"Orphan\"",
                    quote(p)
                ),
            ));
        }
    }
    causes.extend(dry_run_causes(&dry_run));
    if !causes.is_empty() {
        return Err(invalid_options("DeleteOptions", &causes));
    }
    opts.dry_run = !dry_run.is_empty();
    Ok(opts)
}

fn check_preconditions(name: &str, live: &Value, uid: Option<&str>, rv: Option<&str>) -> Result<(), Value> {
    let meta = &live["metadata"];
    if let Some(uid) = uid.filter(|u| !u.is_empty())
        && meta["uid"] != uid
    {
        return Err(conflict(
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta["uid"].as_str().unwrap_or("")
            ),
        ));
    }
    if let Some(rv) = rv.filter(|r| !r.is_empty())
        && meta["resourceVersion"] != rv
    {
        return Err(conflict(name, MODIFIED));
    }
    Ok(())
}

fn delete(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str, name: &str) -> Outcome {
    let opts = delete_options(q, req.body)?;
    let mut inner = shared.lock();
    let key = (namespace.to_string(), name.to_string());
    let Some(o) = inner.objects.get(&key) else {
        return Err(not_found(name));
    };
    check_preconditions(name, &o.live, opts.uid.as_deref(), opts.resource_version.as_deref())?;
    if opts.dry_run {
        return Ok((200, view(&o.live, version), Vec::new()));
    }
    let mut live = inner.objects.remove(&key).map(|o| o.live).unwrap_or_default();
    inner.resource_version += 1;
    live["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
    Ok((200, view(&live, version), Vec::new()))
}

fn delete_collection(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str) -> Outcome {
    let opts = delete_options(q, req.body)?;
    let labels = q
        .label_selector
        .as_deref()
        .map(parse_label_selector)
        .transpose()
        .map_err(|e| bad_request(&e))?
        .unwrap_or_default();
    let fields = q
        .field_selector
        .as_deref()
        .map(parse_field_selector)
        .transpose()
        .map_err(|e| bad_request(&e))?
        .unwrap_or_default();
    let mut inner = shared.lock();
    let keys: Vec<(String, String)> = inner
        .objects
        .iter()
        .filter(|((ns, _), o)| ns == namespace && selects(&labels, &fields, &o.live))
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for k in keys {
        if opts.dry_run {
            if let Some(o) = inner.objects.get(&k) {
                items.push(view(&o.live, version));
            }
        } else if let Some(o) = inner.objects.remove(&k) {
            inner.resource_version += 1;
            let mut live = o.live;
            live["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
            items.push(view(&live, version));
        }
    }
    Ok((
        200,
        json!({"apiVersion": api_version(version), "kind": format!("{KIND}List"),
            "metadata": {"resourceVersion": inner.resource_version.to_string()}, "items": items}),
        Vec::new(),
    ))
}

fn patch(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str, name: &str) -> Outcome {
    let media = req.media_type();
    let apply_patch = media == APPLY_PATCH;
    if !(apply_patch || media == MERGE_PATCH || media == JSON_PATCH) {
        return Err(unsupported_media(&[JSON_PATCH, MERGE_PATCH, APPLY_PATCH]));
    }
    check_options("PatchOptions", q, apply_patch)?;
    let manager = if apply_patch {
        q.field_manager.clone().unwrap_or_default()
    } else {
        manager_name(q, req)
    };
    let w = Write {
        version,
        namespace,
        name,
        manager: &manager,
        force: q.force(),
        dry_run: q.dry_run(),
        validation: q.validation(),
    };
    if apply_patch {
        let text = String::from_utf8_lossy(req.body);
        let body: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => serde_yaml::from_str(&text).map_err(|e| bad_request(&format!("error decoding YAML: {e}")))?,
        };
        if !body.is_object() {
            return Err(bad_request(
                "error decoding YAML: the apply configuration is not an object",
            ));
        }
        let mut inner = shared.lock();
        return apply(shared, &mut inner, &w, body);
    }
    let patch = decode_json(req.body)?;
    let mut inner = shared.lock();
    let Some(existing) = inner.objects.get(&(namespace.to_string(), name.to_string())).cloned() else {
        return Err(not_found(name));
    };
    let mut doc = view(&existing.live, version);
    if media == MERGE_PATCH {
        merge_patch_into(&mut doc, &patch);
    } else {
        json_patch(&mut doc, &patch).map_err(|e| failure(422, "Invalid", &e, None))?;
    }
    update(shared, &mut inner, &w, doc, &existing)
}

fn put(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str, name: &str) -> Outcome {
    check_options("UpdateOptions", q, false)?;
    let body = decode_object(req)?;
    let manager = manager_name(q, req);
    let w = Write {
        version,
        namespace,
        name,
        manager: &manager,
        force: false,
        dry_run: q.dry_run(),
        validation: q.validation(),
    };
    let mut inner = shared.lock();
    let Some(existing) = inner.objects.get(&(namespace.to_string(), name.to_string())).cloned() else {
        return Err(not_found(name));
    };
    update(shared, &mut inner, &w, body, &existing)
}

fn post(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str) -> Outcome {
    check_options("CreateOptions", q, false)?;
    let mut body = decode_object(req)?;
    check_type(&body, version)?;
    let meta = &body["metadata"];
    let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) if !g.is_empty() => {
            const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let suffix: String = random::<5>()
                .iter()
                .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
                .collect();
            format!("{g}{suffix}")
        }
        _ => {
            return Err(invalid_object(
                "",
                &[cause(
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )],
            ));
        }
    };
    body["metadata"]["name"] = json!(name);
    let manager = manager_name(q, req);
    let w = Write {
        version,
        namespace,
        name: &name,
        manager: &manager,
        force: false,
        dry_run: q.dry_run(),
        validation: q.validation(),
    };
    check_name(&body, &w)?;
    let mut inner = shared.lock();
    if inner.objects.contains_key(&(namespace.to_string(), name.clone())) {
        return Err(failure(
            409,
            "AlreadyExists",
            &format!("{} {} already exists", resource_name(), quote(&name)),
            Some(json!({"name": name, "group": GROUP, "kind": PLURAL})),
        ));
    }
    if !inner.namespaces.contains(namespace) {
        return Err(namespace_not_found(namespace));
    }
    let warnings = prune_object(shared, version, &mut body, w.validation)?;
    let managed = managed_part(&body);
    let me = (manager.clone(), Operation::Update);
    let mut owners = BTreeMap::new();
    owners.insert(
        me.clone(),
        Owner {
            api_version: api_version(version),
            time: String::new(),
            config: managed.clone(),
        },
    );
    commit(shared, &mut inner, &w, None, owners, &me, managed, warnings)
}

// ---- Writes: apply, update, commit ----

/// What a write is about.
struct Write<'a> {
    version: &'a str,
    namespace: &'a str,
    name: &'a str,
    manager: &'a str,
    force: bool,
    dry_run: bool,
    validation: FieldValidation,
}

/// Ok: (status, object, warnings); Err: a `Status`.
type Outcome = Result<(u16, Value, Vec<String>), Value>;

/// `apiVersion` and `kind` of a full object (`POST`, `PUT`, patched objects).
fn check_type(obj: &Value, version: &str) -> Result<(), Value> {
    let expected = api_version(version);
    let given = obj["apiVersion"].as_str().unwrap_or("");
    if given != expected {
        return Err(bad_request(&format!(
            "the API version in the data ({given}) does not match the expected API version ({expected})"
        )));
    }
    let kind = obj["kind"].as_str().unwrap_or("");
    if kind != KIND {
        return Err(bad_request(&format!(
            "the kind in the data ({kind}) does not match the expected kind ({KIND})"
        )));
    }
    Ok(())
}

/// The name and namespace in the body against the URL's.
fn check_name(obj: &Value, w: &Write<'_>) -> Result<(), Value> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name != w.name {
        return Err(bad_request(&format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            w.name
        )));
    }
    if let Some(ns) = obj["metadata"]["namespace"].as_str()
        && !ns.is_empty()
        && ns != w.namespace
    {
        return Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// The typed parts of `ObjectMeta` the server keeps: `labels` and `annotations` must be maps of
/// strings (a decoding error otherwise).
fn check_meta_types(obj: &Value) -> Result<(), Value> {
    for k in ["labels", "annotations"] {
        match &obj["metadata"][k] {
            Value::Null => {}
            Value::Object(m) => {
                if let Some((key, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(bad_request(&format!(
                        "json: cannot unmarshal {} into Go struct field ObjectMeta.metadata.{k} of type string (key {})",
                        type_name(&m[key]),
                        quote(key)
                    )));
                }
            }
            other => {
                return Err(bad_request(&format!(
                    "json: cannot unmarshal {} into Go struct field ObjectMeta.metadata.{k} of type map[string]string",
                    type_name(other)
                )));
            }
        }
    }
    if !obj["metadata"].is_object() && !obj["metadata"].is_null() {
        return Err(bad_request(&format!(
            "json: cannot unmarshal {} into Go struct field .metadata of type v1.ObjectMeta",
            type_name(&obj["metadata"])
        )));
    }
    Ok(())
}

/// Drops unknown fields (metadata always; the rest against the schema when loaded) and nulls of
/// non-nullable fields. Strict: unknown fields are a 400; Warn: one warning each.
fn prune_object(
    shared: &Shared,
    version: &str,
    obj: &mut Value,
    validation: FieldValidation,
) -> Result<Vec<String>, Value> {
    check_meta_types(obj)?;
    let mut unknown = Vec::new();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let extra: Vec<String> = m
            .keys()
            .filter(|k| !META_FIELDS.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in extra {
            unknown.push(format!("metadata.{k}"));
            m.remove(&k);
        }
    }
    if let Some(schema) = shared.schemas.as_ref().and_then(|s| s.versions.get(version))
        && let Value::Object(map) = obj
    {
        let mut body: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
        let mut root = Value::Object(std::mem::take(&mut body));
        prune(schema, &mut root, "", &mut unknown);
        if let Value::Object(rest) = root {
            map.extend(rest);
        }
    }
    let texts: Vec<String> = unknown.iter().map(|f| format!("unknown field {}", quote(f))).collect();
    match validation {
        FieldValidation::Strict if !texts.is_empty() => {
            Err(bad_request(&format!("strict decoding error: {}", texts.join(", "))))
        }
        FieldValidation::Warn => Ok(texts),
        _ => Ok(Vec::new()),
    }
}

/// The part of an object field managers own: labels, annotations and spec (`status` belongs to
/// the status subresource; system metadata to the server).
fn managed_part(object: &Value) -> Value {
    let mut m = Map::new();
    let mut meta = Map::new();
    for k in ["labels", "annotations"] {
        if let Some(v) = object["metadata"].get(k).filter(|v| v.is_object()) {
            meta.insert(k.to_string(), v.clone());
        }
    }
    if !meta.is_empty() {
        m.insert("metadata".into(), Value::Object(meta));
    }
    if let Some(s) = object.get("spec").filter(|s| !s.is_null()) {
        m.insert("spec".into(), s.clone());
    }
    Value::Object(m)
}

/// The leaves of a configuration: non-empty objects are walked; anything else (lists
/// included: they are atomic) is one leaf.
fn leaves(v: &Value) -> BTreeMap<FieldPath, Value> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeMap<FieldPath, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    path.push(k.clone());
                    walk(c, path, out);
                    path.pop();
                }
            }
            other => {
                out.insert(path.clone(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Removes a leaf, and the objects it leaves empty.
fn remove_path(v: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Value::Object(m) = v else { return };
    if rest.is_empty() {
        m.remove(first);
    } else if let Some(c) = m.get_mut(first) {
        remove_path(c, rest);
        if c.as_object().is_some_and(Map::is_empty) {
            m.remove(first);
        }
    }
}

/// Sets a leaf, making the objects on the way.
fn set_path(v: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = value;
        return;
    };
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    if let Value::Object(m) = v {
        set_path(m.entry(first.clone()).or_insert(Value::Null), rest, value);
    }
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

/// `.spec.action`, as structured-merge-diff prints paths.
fn dotted(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

fn fields_v1<'a>(paths: impl Iterator<Item = &'a FieldPath>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let Value::Object(m) = cur else { break };
            cur = m.entry(format!("f:{k}")).or_insert_with(|| Value::Object(Map::new()));
        }
    }
    root
}

fn managed_fields(owners: &BTreeMap<ManagerKey, Owner>) -> Vec<Value> {
    let mut entries: Vec<(&ManagerKey, &Owner)> = owners.iter().collect();
    entries.sort_by(|a, b| (a.0.1, &a.1.time, &a.0.0).cmp(&(b.0.1, &b.1.time, &b.0.0)));
    entries
        .into_iter()
        .map(|((manager, op), o)| {
            json!({"manager": manager, "operation": op.as_str(), "apiVersion": o.api_version,
                "time": o.time, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(leaves(&o.config).keys())})
        })
        .collect()
}

struct Conflict {
    manager: String,
    op: Operation,
    api_version: String,
    path: FieldPath,
}

/// How the apiserver names a manager in a conflict.
fn print_manager(c: &Conflict) -> String {
    match c.op {
        Operation::Apply => quote(&c.manager),
        Operation::Update => format!("{} using {}", quote(&c.manager), c.api_version),
    }
}

fn conflict_status(conflicts: &[Conflict]) -> Value {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", print_manager(c)),
                "field": dotted(&c.path)})
        })
        .collect();
    let message = match conflicts {
        [c] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            print_manager(c),
            dotted(&c.path)
        ),
        _ => {
            let mut by_manager: BTreeMap<(&str, Operation), Vec<&Conflict>> = BTreeMap::new();
            for c in conflicts {
                by_manager.entry((&c.manager, c.op)).or_default().push(c);
            }
            let mut lines = Vec::new();
            for list in by_manager.values() {
                lines.push(format!("conflicts with {}:", print_manager(list[0])));
                lines.extend(list.iter().map(|c| format!("- {}", dotted(&c.path))));
            }
            format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
        }
    };
    failure(409, "Conflict", &message, Some(json!({"causes": causes})))
}

/// Server-side apply.
fn apply(shared: &Shared, inner: &mut Inner, w: &Write<'_>, mut patch: Value) -> Outcome {
    let expected = api_version(w.version);
    let given = patch["apiVersion"].as_str().unwrap_or("");
    if given != expected {
        return Err(bad_request(&format!(
            "Incorrect version specified in apply patch. Specified patch version: {given}, expected: {expected}"
        )));
    }
    let kind = patch["kind"].as_str().unwrap_or("");
    if kind != KIND {
        return Err(bad_request(&format!(
            "Incorrect kind specified in apply patch. Specified patch kind: {kind}, expected: {KIND}"
        )));
    }
    check_name(&patch, w)?;
    if patch["metadata"]["managedFields"].is_array() {
        return Err(bad_request("metadata.managedFields must be nil"));
    }
    let warnings = prune_object(shared, w.version, &mut patch, w.validation)?;
    let key = (w.namespace.to_string(), w.name.to_string());
    let existing = inner.objects.get(&key).cloned();
    match &existing {
        None if !inner.namespaces.contains(w.namespace) => return Err(namespace_not_found(w.namespace)),
        None => {}
        Some(o) => check_preconditions(
            w.name,
            &o.live,
            patch["metadata"]["uid"].as_str(),
            patch["metadata"]["resourceVersion"].as_str(),
        )?,
    }
    let config = managed_part(&patch);
    let mine = leaves(&config);
    let me = (w.manager.to_string(), Operation::Apply);
    let mut owners = existing.as_ref().map(|o| o.owners.clone()).unwrap_or_default();
    let mut conflicts = Vec::new();
    for (key, owner) in owners.iter_mut().filter(|(k, _)| **k != me) {
        for (path, value) in leaves(&owner.config) {
            if mine.get(&path).is_some_and(|v| *v != value) {
                if w.force {
                    remove_path(&mut owner.config, &path);
                } else {
                    conflicts.push(Conflict {
                        manager: key.0.clone(),
                        op: key.1,
                        api_version: owner.api_version.clone(),
                        path,
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflict_status(&conflicts));
    }
    owners.insert(
        me.clone(),
        Owner {
            api_version: expected,
            time: String::new(),
            config,
        },
    );
    let mut managed = Value::Object(Map::new());
    for o in owners.values() {
        merge(&mut managed, &o.config);
    }
    commit(shared, inner, w, existing.as_ref(), owners, &me, managed, warnings)
}

/// A non-apply write of a whole new object (`PUT`, or a patch applied to the live object): an
/// `Update` by `w.manager`, which takes the leaves it changes.
fn update(shared: &Shared, inner: &mut Inner, w: &Write<'_>, mut obj: Value, existing: &Object) -> Outcome {
    check_type(&obj, w.version)?;
    check_name(&obj, w)?;
    check_preconditions(
        w.name,
        &existing.live,
        obj["metadata"]["uid"].as_str(),
        obj["metadata"]["resourceVersion"].as_str(),
    )?;
    let warnings = prune_object(shared, w.version, &mut obj, w.validation)?;
    let managed = managed_part(&obj);
    let old = leaves(&managed_part(&existing.live));
    let new = leaves(&managed);
    let changed: Vec<&FieldPath> = new
        .iter()
        .filter(|(p, v)| old.get(*p) != Some(*v))
        .map(|(p, _)| p)
        .collect();
    let removed: Vec<&FieldPath> = old.keys().filter(|p| !new.contains_key(*p)).collect();
    let me = (w.manager.to_string(), Operation::Update);
    let mut owners = existing.owners.clone();
    for (k, o) in owners.iter_mut() {
        if *k != me {
            for p in changed.iter().chain(&removed) {
                remove_path(&mut o.config, p);
            }
        }
    }
    let mine = owners.entry(me.clone()).or_insert_with(|| Owner {
        api_version: api_version(w.version),
        time: String::new(),
        config: Value::Object(Map::new()),
    });
    for p in &removed {
        remove_path(&mut mine.config, p);
    }
    for p in &changed {
        set_path(&mut mine.config, p, new[*p].clone());
    }
    if !changed.is_empty() {
        mine.api_version = api_version(w.version);
    }
    commit(shared, inner, w, Some(existing), owners, &me, managed, warnings)
}

/// Validates the resulting object, sets the system metadata and stores it (unless a dry run).
#[allow(clippy::too_many_arguments)]
fn commit(
    shared: &Shared,
    inner: &mut Inner,
    w: &Write<'_>,
    existing: Option<&Object>,
    mut owners: BTreeMap<ManagerKey, Owner>,
    me: &ManagerKey,
    managed: Value,
    warnings: Vec<String>,
) -> Outcome {
    owners.retain(|_, o| o.config.as_object().is_some_and(|m| !m.is_empty()));
    let mut candidate = json!({"apiVersion": api_version(w.version), "kind": KIND,
        "metadata": {"name": w.name, "namespace": w.namespace}});
    merge(&mut candidate, &managed);
    let mut causes = validate_metadata(&candidate["metadata"]);
    if let Some(s) = &shared.schemas
        && let Some(schema) = s.versions.get(w.version)
    {
        let mut body = candidate.clone();
        if let Value::Object(m) = &mut body {
            m.remove("apiVersion");
            m.remove("kind");
            m.remove("metadata");
        }
        let mut checker = Checker {
            patterns: &s.patterns,
            causes: Vec::new(),
            cel: 0,
        };
        checker.check(schema, &body, "");
        inner.validated += 1;
        inner.cel_skipped += checker.cel;
        causes.extend(checker.causes);
    }
    if !causes.is_empty() {
        return Err(invalid_object(w.name, &causes));
    }
    let now = now_rfc3339();
    for (k, o) in owners.iter_mut() {
        match existing.and_then(|e| e.owners.get(k)) {
            Some(old) if old.config == o.config => {
                o.time = old.time.clone();
                o.api_version = old.api_version.clone();
            }
            Some(old) if k != me => o.time = old.time.clone(),
            _ => o.time = now.clone(),
        }
    }
    let (uid, created, generation, rv, first_seen) = match existing {
        Some(o) => {
            let m = &o.live["metadata"];
            let spec_changed = o.live.get("spec") != managed.get("spec");
            (
                m["uid"].clone(),
                m["creationTimestamp"].clone(),
                m["generation"].as_i64().unwrap_or(1) + i64::from(spec_changed),
                m["resourceVersion"].clone(),
                o.first_seen,
            )
        }
        None => (json!(pseudo_guid()), json!(now), 1, Value::Null, Instant::now()),
    };
    let mut live = json!({
        "apiVersion": api_version(STORAGE_VERSION),
        "kind": KIND,
        "metadata": {
            "name": w.name,
            "namespace": w.namespace,
            "uid": uid,
            "resourceVersion": rv,
            "generation": generation,
            "creationTimestamp": created,
            "managedFields": managed_fields(&owners),
        },
    });
    merge(&mut live, &managed);
    let changed = existing.is_none_or(|o| o.live != live);
    if changed && !w.dry_run {
        inner.resource_version += 1;
        live["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        inner.objects.insert(
            (w.namespace.to_string(), w.name.to_string()),
            Object {
                owners,
                live: live.clone(),
                first_seen,
            },
        );
    }
    if let Some(m) = live["metadata"].as_object_mut()
        && m.get("resourceVersion").is_some_and(Value::is_null)
    {
        // A dry-run create: nothing was stored, so there is no resourceVersion.
        m.remove("resourceVersion");
    }
    Ok((
        if existing.is_none() { 201 } else { 200 },
        view(&live, w.version),
        warnings,
    ))
}

// ---- Patches ----

/// RFC 7386 JSON merge patch.
fn merge_patch_into(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch_into(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn json_pointer(s: &str) -> Result<Vec<String>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!("JSON pointer {} does not start with '/'", quote(s)));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |cur, k| match cur {
        Value::Object(m) => m.get(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn pointer_parent<'a>(doc: &'a mut Value, path: &[String]) -> Result<(&'a mut Value, String), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("the root has no parent".into());
    };
    let mut cur = doc;
    for k in parents {
        cur = match cur {
            Value::Object(m) => m.get_mut(k),
            Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("doc is missing path: {}", dotted_pointer(path)))?;
    }
    Ok((cur, last.clone()))
}

fn dotted_pointer(path: &[String]) -> String {
    path.iter().map(|k| format!("/{k}")).collect()
}

fn pointer_add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = pointer_parent(doc, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i <= a.len() => {
                a.insert(i, value);
                Ok(())
            }
            _ => Err(format!(
                "add operation does not apply: doc is missing path: {}",
                dotted_pointer(path)
            )),
        },
        _ => Err(format!(
            "add operation does not apply: doc is missing path: {}",
            dotted_pointer(path)
        )),
    }
}

fn pointer_remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let missing = || {
        format!(
            "remove operation does not apply: doc is missing path: {}",
            dotted_pointer(path)
        )
    };
    let (parent, last) = pointer_parent(doc, path).map_err(|_| missing())?;
    match parent {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// RFC 6902 JSON patch.
fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let kind = op["op"].as_str().ok_or("an operation has no \"op\"")?;
        let path = json_pointer(op["path"].as_str().ok_or("an operation has no \"path\"")?)?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{kind} operation has no \"value\""))
        };
        match kind {
            "add" => pointer_add(doc, &path, value()?)?,
            "remove" => {
                pointer_remove(doc, &path)?;
            }
            "replace" => {
                if path.is_empty() {
                    *doc = value()?;
                } else {
                    pointer_remove(doc, &path).map_err(|_| {
                        format!(
                            "replace operation does not apply: doc is missing key: {}",
                            dotted_pointer(&path)
                        )
                    })?;
                    pointer_add(doc, &path, value()?)?;
                }
            }
            "move" | "copy" => {
                let from = json_pointer(op["from"].as_str().ok_or("an operation has no \"from\"")?)?;
                let v = if kind == "move" {
                    pointer_remove(doc, &from)?
                } else {
                    pointer_get(doc, &from).cloned().ok_or_else(|| {
                        format!(
                            "copy operation does not apply: doc is missing from path: {}",
                            dotted_pointer(&from)
                        )
                    })?
                };
                pointer_add(doc, &path, v)?;
            }
            "test" => {
                if pointer_get(doc, &path) != Some(&value()?) {
                    return Err(format!("testing value {} failed: test failed", dotted_pointer(&path)));
                }
            }
            other => return Err(format!("Unexpected kind: {other}")),
        }
    }
    Ok(())
}

// ---- Validation: metadata ----

const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const QUALIFIED_NAME_PART: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const QUALIFIED_NAME: &str = "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn dns_subdomain_errors(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".to_string());
    }
    if !is_dns_subdomain(s) {
        out.push(DNS1123_SUBDOMAIN.to_string());
    }
    out
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `IsQualifiedName`: an optional DNS subdomain prefix and `/`, then a name part of at most 63.
fn qualified_name_errors(k: &str) -> Vec<String> {
    let parts: Vec<&str> = k.split('/').collect();
    let mut out = Vec::new();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                out.push("prefix part must be non-empty".to_string());
            } else {
                out.extend(
                    dns_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => return vec![QUALIFIED_NAME.to_string()],
    };
    if name.is_empty() {
        out.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            out.push("name part must be no more than 63 characters".to_string());
        }
        if !is_name_part(name) {
            out.push(QUALIFIED_NAME_PART.to_string());
        }
    }
    out
}

fn label_value_errors(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    if v.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !is_name_part(v) {
        out.push(LABEL_VALUE.to_string());
    }
    out
}

fn validate_metadata(meta: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let name = meta["name"].as_str().unwrap_or("");
    for m in dns_subdomain_errors(name) {
        out.push(cause(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: {}: {m}", quote(name)),
        ));
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            for m in qualified_name_errors(k) {
                out.push(cause(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: {}: {m}", quote(k)),
                ));
            }
            let v = v.as_str().unwrap_or("");
            for m in label_value_errors(v) {
                out.push(cause(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: {}: {m}", quote(v)),
                ));
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            for m in qualified_name_errors(&k.to_lowercase()) {
                out.push(cause(
                    "FieldValueInvalid",
                    "metadata.annotations",
                    format!("Invalid value: {}: {m}", quote(k)),
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX_BYTES {
            out.push(cause(
                "FieldValueTooLong",
                "metadata.annotations",
                format!("Too long: may not be more than {ANNOTATIONS_MAX_BYTES} bytes"),
            ));
        }
    }
    out
}

// ---- Validation: the CRD schema ----

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) if is_integer(v) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        _ => true,
    }
}

/// Whether a schema node describes an object's fields (so other fields are unknown).
fn is_object_schema(schema: &Value) -> bool {
    schema["type"] == "object" || schema.get("properties").is_some() || schema.get("additionalProperties").is_some()
}

/// Pruning as the apiserver does it for structural schemas: unknown fields are dropped (and
/// reported), nulls of non-nullable fields are dropped silently.
fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    if schema["x-kubernetes-int-or-string"] == true {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties");
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            let object_schema = is_object_schema(schema);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let sub = props
                    .and_then(|p| p.get(&k))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match sub {
                    Some(s) => {
                        if m.get(&k).is_some_and(Value::is_null) && s["nullable"] != true {
                            m.remove(&k);
                        } else if let Some(c) = m.get_mut(&k) {
                            prune(s, c, &join(path, &k), unknown);
                        }
                    }
                    None if preserve || additional == Some(&Value::Bool(true)) || !object_schema => {}
                    None => {
                        unknown.push(join(path, &k));
                        m.remove(&k);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(s, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Checks a value against an OpenAPI v3 (structural) schema, collecting the apiserver's causes.
struct Checker<'a> {
    patterns: &'a BTreeMap<String, regex::Regex>,
    causes: Vec<Cause>,
    /// CEL rules met, not evaluated.
    cel: u64,
}

impl Checker<'_> {
    fn satisfies(&self, schema: &Value, v: &Value) -> bool {
        let mut probe = Checker {
            patterns: self.patterns,
            causes: Vec::new(),
            cel: 0,
        };
        probe.check(schema, v, "");
        probe.causes.is_empty()
    }

    fn invalid(&mut self, path: &str, value: &Value, why: String) {
        let shown = match value {
            Value::Object(_) | Value::Array(_) => quote(type_name(value)),
            other => other.to_string(),
        };
        self.causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {shown}: {why}"),
        ));
    }

    fn check(&mut self, schema: &Value, v: &Value, path: &str) {
        if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
            self.cel += rules.len() as u64;
        }
        if v.is_null() && schema["nullable"] == true {
            return;
        }
        let body_path = if path.is_empty() {
            "body".to_string()
        } else {
            format!("{path} in body")
        };
        if schema["x-kubernetes-int-or-string"] == true {
            if !(v.is_string() || is_integer(v)) {
                self.causes.push(cause(
                    "FieldValueTypeInvalid",
                    path,
                    format!(
                        "Invalid value: {}: {body_path} must be of type integer or string: {}",
                        quote(type_name(v)),
                        quote(type_name(v))
                    ),
                ));
            }
            return;
        }
        if let Some(t) = schema["type"].as_str()
            && !type_matches(t, v)
        {
            let actual = type_name(v);
            self.causes.push(cause(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: {}: {body_path} must be of type {t}: {}",
                    quote(actual),
                    quote(actual)
                ),
            ));
            return;
        }
        if let Some(options) = schema["enum"].as_array()
            && !options.contains(v)
        {
            let list: Vec<String> = options.iter().map(Value::to_string).collect();
            self.causes.push(cause(
                "FieldValueNotSupported",
                path,
                format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
            ));
        }
        for sub in schema["allOf"].as_array().into_iter().flatten() {
            self.check(sub, v, path);
        }
        if let Some(subs) = schema["oneOf"].as_array() {
            let n = subs.iter().filter(|s| self.satisfies(s, v)).count();
            if n != 1 {
                self.invalid(
                    path,
                    v,
                    format!("{body_path} must validate one and only one schema (oneOf)"),
                );
            }
        }
        if let Some(subs) = schema["anyOf"].as_array()
            && !subs.iter().any(|s| self.satisfies(s, v))
        {
            self.invalid(
                path,
                v,
                format!("{body_path} must validate at least one schema (anyOf)"),
            );
        }
        if let Some(not) = schema.get("not")
            && self.satisfies(not, v)
        {
            self.invalid(path, v, format!("{body_path} must not validate the schema (not)"));
        }
        match v {
            Value::String(s) => self.check_string(schema, s, v, path, &body_path),
            Value::Number(_) => self.check_number(schema, v, path, &body_path),
            Value::Array(items) => self.check_array(schema, items, v, path, &body_path),
            Value::Object(m) => self.check_object(schema, m, v, path, &body_path),
            _ => {}
        }
    }

    fn check_string(&mut self, schema: &Value, s: &str, v: &Value, path: &str, body_path: &str) {
        let len = s.chars().count() as u64;
        if let Some(max) = schema["maxLength"].as_u64()
            && len > max
        {
            self.causes.push(cause(
                "FieldValueTooLong",
                path,
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(min) = schema["minLength"].as_u64()
            && len < min
        {
            self.invalid(path, v, format!("{body_path} should be at least {min} chars long"));
        }
        if let Some(p) = schema["pattern"].as_str()
            && let Some(re) = self.patterns.get(p)
            && !re.is_match(s)
        {
            self.invalid(path, v, format!("{body_path} should match '{p}'"));
        }
    }

    fn check_number(&mut self, schema: &Value, v: &Value, path: &str, body_path: &str) {
        let Some(n) = v.as_f64() else { return };
        if let Some(max) = schema["maximum"].as_f64() {
            if schema["exclusiveMaximum"] == true && n >= max {
                self.invalid(path, v, format!("{body_path} should be less than {max}"));
            } else if n > max {
                self.invalid(path, v, format!("{body_path} should be less than or equal to {max}"));
            }
        }
        if let Some(min) = schema["minimum"].as_f64() {
            if schema["exclusiveMinimum"] == true && n <= min {
                self.invalid(path, v, format!("{body_path} should be greater than {min}"));
            } else if n < min {
                self.invalid(path, v, format!("{body_path} should be greater than or equal to {min}"));
            }
        }
        if let Some(m) = schema["multipleOf"].as_f64()
            && m > 0.0
            && (n / m).fract() != 0.0
        {
            self.invalid(path, v, format!("{body_path} should be a multiple of {m}"));
        }
    }

    /// `maxItems`/`minItems` or `maxProperties`/`minProperties` (`[max key, min key, noun]`):
    /// the apiserver says "must have at most N items" for both, and names the noun for the
    /// minimum.
    fn check_count(
        &mut self,
        schema: &Value,
        [max_key, min_key, noun]: [&str; 3],
        len: usize,
        v: &Value,
        path: &str,
        body_path: &str,
    ) {
        if let Some(max) = schema[max_key].as_u64()
            && len as u64 > max
        {
            self.causes.push(cause(
                "FieldValueTooMany",
                path,
                format!("Too many: {len}: must have at most {max} items"),
            ));
        }
        if let Some(min) = schema[min_key].as_u64()
            && (len as u64) < min
        {
            self.invalid(path, v, format!("{body_path} should have at least {min} {noun}"));
        }
    }

    fn check_array(&mut self, schema: &Value, items: &[Value], v: &Value, path: &str, body_path: &str) {
        self.check_count(
            schema,
            ["maxItems", "minItems", "items"],
            items.len(),
            v,
            path,
            body_path,
        );
        match schema["x-kubernetes-list-type"].as_str() {
            Some("set") => {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        self.causes.push(cause(
                            "FieldValueDuplicate",
                            format!("{path}[{i}]"),
                            format!("Duplicate value: {item}"),
                        ));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let key_of = |item: &Value| -> Map<String, Value> {
                    keys.iter()
                        .filter_map(|k| item.get(*k).map(|v| (k.to_string(), v.clone())))
                        .collect()
                };
                for (i, item) in items.iter().enumerate() {
                    let k = key_of(item);
                    if items[..i].iter().any(|o| key_of(o) == k) {
                        self.causes.push(cause(
                            "FieldValueDuplicate",
                            format!("{path}[{i}]"),
                            format!("Duplicate value: {}", Value::Object(k)),
                        ));
                    }
                }
            }
            _ => {}
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{path}[{i}]"));
            }
        }
    }

    fn check_object(&mut self, schema: &Value, m: &Map<String, Value>, v: &Value, path: &str, body_path: &str) {
        self.check_count(
            schema,
            ["maxProperties", "minProperties", "properties"],
            m.len(),
            v,
            path,
            body_path,
        );
        for r in schema["required"].as_array().into_iter().flatten() {
            if let Some(k) = r.as_str()
                && !m.contains_key(k)
            {
                self.causes
                    .push(cause("FieldValueRequired", join(path, k), "Required value"));
            }
        }
        let props = schema["properties"].as_object();
        let additional = schema.get("additionalProperties").filter(|a| a.is_object());
        for (k, child) in m {
            if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                self.check(s, child, &join(path, k));
            }
        }
    }
}

// ---- Selectors ----

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

impl Requirement {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        let int = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
        match self {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::Ne(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Gt(k, n) => int(k).is_some_and(|x| x > *n),
            Requirement::Lt(k, n) => int(k).is_some_and(|x| x < *n),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Id(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Id(s) => s.clone(),
            Token::Not => "!".into(),
            Token::Eq => "=".into(),
            Token::DoubleEq => "==".into(),
            Token::NotEq => "!=".into(),
            Token::Open => "(".into(),
            Token::Close => ")".into(),
            Token::Comma => ",".into(),
            Token::Gt => ">".into(),
            Token::Lt => "<".into(),
        }
    }
}

fn lex(s: &str) -> Vec<Token> {
    let chars: Vec<char> = s.chars().collect();
    let special = |c: char| matches!(c, '!' | '=' | '(' | ')' | ',' | '>' | '<');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (tok, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '!' if next == Some('=') => (Token::NotEq, 2),
            '!' => (Token::Not, 1),
            '=' if next == Some('=') => (Token::DoubleEq, 2),
            '=' => (Token::Eq, 1),
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            ',' => (Token::Comma, 1),
            '>' => (Token::Gt, 1),
            '<' => (Token::Lt, 1),
            _ => {
                let start = i;
                let mut j = i;
                while j < chars.len() && !chars[j].is_whitespace() && !special(chars[j]) {
                    j += 1;
                }
                (Token::Id(chars[start..j].iter().collect()), j - start)
            }
        };
        out.push(tok);
        i += len;
    }
    out
}

/// Parses a label selector as `labels.Parse` does (`=`, `==`, `!=`, `in`, `notin`, `key`,
/// `!key`, `>`, `<`; requirements separated by commas, all of which must hold).
fn parse_label_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let toks = lex(s);
    let mut pos = 0;
    let mut out = Vec::new();
    let found = |t: Option<&Token>| t.map_or_else(|| "end of string".to_string(), Token::text);
    let ident = |t: Option<&Token>, what: &str| match t {
        Some(Token::Id(s)) => Ok(s.clone()),
        other => Err(format!("found '{}', expected: {what}", found(other))),
    };
    if toks.is_empty() {
        return Ok(out);
    }
    loop {
        let req = if toks.get(pos) == Some(&Token::Not) {
            let key = ident(toks.get(pos + 1), "identifier after '!'")?;
            pos += 2;
            Requirement::NotExists(key)
        } else {
            let key = ident(toks.get(pos), "!, identifier, or 'end of string'")?;
            pos += 1;
            match toks.get(pos) {
                None | Some(Token::Comma) => Requirement::Exists(key),
                Some(Token::Eq | Token::DoubleEq | Token::NotEq) => {
                    let ne = toks.get(pos) == Some(&Token::NotEq);
                    pos += 1;
                    let value = match toks.get(pos) {
                        Some(Token::Id(v)) => {
                            pos += 1;
                            v.clone()
                        }
                        None | Some(Token::Comma) => String::new(),
                        other => return Err(format!("found '{}', expected: identifier", found(other))),
                    };
                    if ne {
                        Requirement::Ne(key, value)
                    } else {
                        Requirement::Eq(key, value)
                    }
                }
                Some(Token::Gt | Token::Lt) => {
                    let gt = toks.get(pos) == Some(&Token::Gt);
                    let v = ident(toks.get(pos + 1), "identifier")?;
                    pos += 2;
                    let n: i64 = v
                        .parse()
                        .map_err(|_| format!("for 'Gt', 'Lt' operators, the value must be an integer: {v}"))?;
                    if gt {
                        Requirement::Gt(key, n)
                    } else {
                        Requirement::Lt(key, n)
                    }
                }
                Some(Token::Id(op)) if op == "in" || op == "notin" => {
                    let notin = op == "notin";
                    pos += 1;
                    if toks.get(pos) != Some(&Token::Open) {
                        return Err(format!("found '{}', expected: '('", found(toks.get(pos))));
                    }
                    pos += 1;
                    let mut values = Vec::new();
                    loop {
                        match toks.get(pos) {
                            Some(Token::Id(v)) => {
                                values.push(v.clone());
                                pos += 1;
                            }
                            Some(Token::Comma | Token::Close) => values.push(String::new()),
                            other => return Err(format!("found '{}', expected: ',', ')' or identifier", found(other))),
                        }
                        match toks.get(pos) {
                            Some(Token::Comma) => pos += 1,
                            Some(Token::Close) => {
                                pos += 1;
                                break;
                            }
                            other => return Err(format!("found '{}', expected: ',' or ')'", found(other))),
                        }
                    }
                    if notin {
                        Requirement::NotIn(key, values)
                    } else {
                        Requirement::In(key, values)
                    }
                }
                other => {
                    return Err(format!(
                        "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                        found(other)
                    ));
                }
            }
        };
        let (key, values): (&str, Vec<&str>) = match &req {
            Requirement::Eq(k, v) | Requirement::Ne(k, v) => (k, vec![v.as_str()]),
            Requirement::In(k, vs) | Requirement::NotIn(k, vs) => (k, vs.iter().map(String::as_str).collect()),
            Requirement::Exists(k) | Requirement::NotExists(k) | Requirement::Gt(k, _) | Requirement::Lt(k, _) => {
                (k, Vec::new())
            }
        };
        if let Some(m) = qualified_name_errors(key).first() {
            return Err(format!(
                "unable to parse requirement: key: Invalid value: {}: {m}",
                quote(key)
            ));
        }
        for v in values {
            if let Some(m) = label_value_errors(v).first() {
                return Err(format!(
                    "unable to parse requirement: values[0][{key}]: Invalid value: {}: {m}",
                    quote(v)
                ));
            }
        }
        out.push(req);
        match toks.get(pos) {
            None => return Ok(out),
            Some(Token::Comma) => pos += 1,
            other => return Err(format!("found '{}', expected: ',' or 'end of string'", found(other))),
        }
    }
}

#[derive(Debug, Clone)]
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    fn matches(&self, live: &Value) -> bool {
        let actual = match self.field.as_str() {
            "metadata.name" => live["metadata"]["name"].as_str(),
            _ => live["metadata"]["namespace"].as_str(),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

/// Field selectors on what custom resources support: `metadata.name`, `metadata.namespace`.
fn parse_field_selector(s: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("invalid selector: '{s}'; can't understand '{part}'"));
        };
        let field = field.trim();
        if !matches!(field, "metadata.name" | "metadata.namespace") {
            return Err(format!(
                "{} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                quote(field)
            ));
        }
        out.push(FieldRequirement {
            field: field.to_string(),
            value: value.trim().to_string(),
            equal,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};

    const CRD: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/reference/istio/security-crds.yaml"
    );
    const MANAGED: &str = "app.kubernetes.io/managed-by=verity";

    fn ar(version: &str) -> ApiResource {
        ApiResource {
            group: GROUP.into(),
            version: version.into(),
            api_version: api_version(version),
            kind: KIND.into(),
            plural: PLURAL.into(),
        }
    }

    fn policy(ns: &str, name: &str, action: &str) -> Value {
        json!({"apiVersion": "security.istio.io/v1", "kind": KIND,
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "verity"}},
            "spec": {"action": action, "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/cart"]}}]}]}})
    }

    fn server(with_crd: bool) -> KubeApiServer {
        KubeApiServer::start(KubeSettings {
            crd_path: with_crd.then(|| PathBuf::from(CRD)),
            namespaces: vec!["pay".into(), "shop".into()],
        })
    }

    async fn config(server: &KubeApiServer) -> kube::Config {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        server.write_kubeconfig(&path);
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap()
    }

    async fn client(server: &KubeApiServer) -> kube::Client {
        kube::Client::try_from(config(server).await).unwrap()
    }

    /// A client without kube-rs's own retries of 429/503/504.
    async fn client_without_retries(server: &KubeApiServer) -> kube::Client {
        let mut cfg = config(server).await;
        cfg.default_retry = false;
        kube::Client::try_from(cfg).unwrap()
    }

    fn api(c: &kube::Client, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(c.clone(), ns, &ar("v1"))
    }

    fn pp() -> PatchParams {
        PatchParams::apply("verity").force()
    }

    fn api_status(e: kube::Error) -> kube::core::Status {
        match e {
            kube::Error::Api(s) => *s,
            other => panic!("not an API error: {other}"),
        }
    }

    /// A raw request through the kube client: status, headers, JSON body.
    async fn raw(
        c: &kube::Client,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> (u16, hyper::HeaderMap, Value) {
        use http_body_util::BodyExt;
        let mut b = hyper::Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        let res = c
            .send(b.body(kube::client::Body::from(body.as_bytes().to_vec())).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn has_schema(server: &KubeApiServer) -> bool {
        if !server.schema_loaded() {
            eprintln!("SKIP: {CRD} is absent; schema assertions not run");
        }
        server.schema_loaded()
    }

    #[tokio::test]
    async fn create_update_generation_and_metadata() {
        let server = server(true);
        let c = client(&server).await;
        let pay = api(&c, "pay");
        let o = pay
            .patch("deny-cart", &pp(), &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
            .await
            .unwrap();
        assert_eq!(server.requests().last().unwrap().status, 201);
        assert_eq!(o.metadata.generation, Some(1));
        assert!(o.metadata.uid.as_deref().is_some_and(|u| u.len() == 36));
        assert!(o.metadata.creation_timestamp.is_some());
        let rv1 = o.metadata.resource_version.clone().unwrap();
        let mf = &o.metadata.managed_fields.as_ref().unwrap()[0];
        assert_eq!(mf.manager.as_deref(), Some("verity"));
        assert_eq!(mf.operation.as_deref(), Some("Apply"));
        assert_eq!(mf.fields_type.as_deref(), Some("FieldsV1"));
        let fields = serde_json::to_value(mf.fields_v1.as_ref().unwrap()).unwrap();
        assert_eq!(
            fields,
            json!({"f:metadata": {"f:labels": {"f:app.kubernetes.io/managed-by": {}}},
                "f:spec": {"f:action": {}, "f:rules": {}}})
        );
        assert!(server.first_seen("pay", "deny-cart").is_some());

        // The same again: nothing changes, not even the resourceVersion.
        let o = pay
            .patch("deny-cart", &pp(), &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
            .await
            .unwrap();
        assert_eq!(server.requests().last().unwrap().status, 200);
        assert_eq!(
            (o.metadata.generation, o.metadata.resource_version.as_deref()),
            (Some(1), Some(rv1.as_str()))
        );

        // A label only: a new resourceVersion, the same generation.
        let mut labelled = policy("pay", "deny-cart", "DENY");
        labelled["metadata"]["labels"]["verity.dev/revocation"] = json!("r-1");
        let o = pay.patch("deny-cart", &pp(), &Patch::Apply(&labelled)).await.unwrap();
        assert_eq!(o.metadata.generation, Some(1));
        assert_ne!(o.metadata.resource_version.as_deref(), Some(rv1.as_str()));
        // The spec: generation 2; the label it no longer sends is gone.
        let mut other = policy("pay", "deny-cart", "DENY");
        other["spec"]["rules"][0]["from"][0]["source"]["principals"] =
            json!(["cluster.local/ns/shop/sa/cart", "cluster.local/ns/shop/sa/web"]);
        let o = pay.patch("deny-cart", &pp(), &Patch::Apply(&other)).await.unwrap();
        assert_eq!(o.metadata.generation, Some(2));
        assert!(!o.labels().contains_key("verity.dev/revocation"));
        let live = server.get("pay", "deny-cart").unwrap();
        assert_eq!(
            live["spec"]["rules"][0]["from"][0]["source"]["principals"][1],
            "cluster.local/ns/shop/sa/web"
        );
        assert_eq!(live["apiVersion"], "security.istio.io/v1");
        // Served as v1beta1 too.
        let beta: Api<DynamicObject> = Api::namespaced_with(c.clone(), "pay", &ar("v1beta1"));
        let o = beta.get("deny-cart").await.unwrap();
        assert_eq!(o.types.unwrap().api_version, "security.istio.io/v1beta1");
        // Discovery.
        let v = c.apiserver_version().await.unwrap();
        assert_eq!(v.major, "1");
        let (code, _, list) = raw(&c, "GET", "/apis/security.istio.io/v1", None, "").await;
        assert_eq!((code, list["resources"][0]["name"].as_str()), (200, Some(PLURAL)));
    }

    #[tokio::test]
    async fn conflicts_and_forced_takeover() {
        let server = server(true);
        let c = client(&server).await;
        let pay = api(&c, "pay");
        pay.patch("deny-cart", &pp(), &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
            .await
            .unwrap();
        let err = server
            .apply_as("kubectl", &policy("pay", "deny-cart", "ALLOW"), false)
            .unwrap_err();
        assert_eq!(err["code"], 409);
        assert_eq!(err["reason"], "Conflict");
        assert_eq!(
            err["message"],
            "Apply failed with 1 conflict: conflict with \"verity\": .spec.action"
        );
        assert_eq!(
            err["details"]["causes"],
            json!([{"reason": "FieldManagerConflict", "message": "conflict with \"verity\"", "field": ".spec.action"}])
        );
        // Forced, kubectl takes the action; the rules it sends with the same value are shared.
        server
            .apply_as("kubectl", &policy("pay", "deny-cart", "ALLOW"), true)
            .unwrap();
        let live = server.get("pay", "deny-cart").unwrap();
        assert_eq!(live["spec"]["action"], "ALLOW");
        let owned = |live: &Value, manager: &str| -> Value {
            live["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["manager"] == manager)
                .map(|e| e["fieldsV1"]["f:spec"].clone())
                .unwrap_or(Value::Null)
        };
        assert_eq!(owned(&live, "kubectl"), json!({"f:action": {}, "f:rules": {}}));
        assert_eq!(owned(&live, "verity"), json!({"f:rules": {}}));

        // Verity without force now conflicts with kubectl; with force it takes the field back.
        let e = api_status(
            pay.patch(
                "deny-cart",
                &PatchParams::apply("verity"),
                &Patch::Apply(&policy("pay", "deny-cart", "DENY")),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.action"
        );
        let cause = &e.details.unwrap().causes[0];
        assert_eq!(
            (cause.reason.as_str(), cause.field.as_str()),
            ("FieldManagerConflict", ".spec.action")
        );
        let o = pay
            .patch("deny-cart", &pp(), &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
            .await
            .unwrap();
        assert_eq!(o.data["spec"]["action"], "DENY");
        assert_eq!(o.metadata.generation, Some(3));

        // An Update (kubectl edit) never conflicts and takes what it changes.
        server
            .update_as(
                "kubectl-edit",
                "pay",
                "deny-cart",
                &json!({"spec": {"action": "AUDIT"}}),
            )
            .unwrap();
        let e = api_status(
            pay.patch(
                "deny-cart",
                &PatchParams::apply("verity"),
                &Patch::Apply(&policy("pay", "deny-cart", "DENY")),
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using security.istio.io/v1: .spec.action"
        );
        // Two fields: the apiserver's multi-conflict message.
        let mut both = policy("pay", "deny-cart", "CUSTOM");
        both["spec"]["rules"] = json!([]);
        let err = server.apply_as("other", &both, false).unwrap_err();
        assert_eq!(
            err["message"],
            "Apply failed with 3 conflicts: conflicts with \"kubectl\":\n- .spec.rules\nconflicts with \"kubectl-edit\" using security.istio.io/v1:\n- .spec.action\nconflicts with \"verity\":\n- .spec.rules"
        );
        // A merge patch through HTTP is an Update too.
        let o = pay
            .patch(
                "deny-cart",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"note": "x"}}})),
            )
            .await
            .unwrap();
        assert_eq!(o.annotations().get("note").map(String::as_str), Some("x"));
        let updaters: Vec<String> = o
            .metadata
            .managed_fields
            .unwrap()
            .iter()
            .filter(|e| e.operation.as_deref() == Some("Update"))
            .filter_map(|e| e.manager.clone())
            .collect();
        assert_eq!(updaters.len(), 2, "{updaters:?}");
        // Applying without the label verity sent before removes it unless someone else owns it.
        let mut unlabelled = policy("pay", "deny-cart", "DENY");
        unlabelled["metadata"]["labels"] = json!({});
        let o = pay.patch("deny-cart", &pp(), &Patch::Apply(&unlabelled)).await.unwrap();
        assert!(
            o.labels().contains_key("app.kubernetes.io/managed-by"),
            "kubectl still owns it"
        );
    }

    #[tokio::test]
    async fn get_list_delete() {
        let server = server(true);
        let c = client(&server).await;
        let pay = api(&c, "pay");
        let e = api_status(pay.get("nothing").await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
        assert_eq!(
            e.message,
            "authorizationpolicies.security.istio.io \"nothing\" not found"
        );
        let d = e.details.unwrap();
        assert_eq!(
            (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
            ("nothing", GROUP, PLURAL)
        );
        assert_eq!(
            api_status(pay.delete("nothing", &DeleteParams::default()).await.unwrap_err()).code,
            404
        );

        for (ns, name) in [("pay", "a"), ("shop", "b"), ("istio-system", "c")] {
            api(&c, ns)
                .patch(name, &pp(), &Patch::Apply(&policy(ns, name, "DENY")))
                .await
                .unwrap();
        }
        let mut foreign = policy("pay", "foreign", "ALLOW");
        foreign["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "someone", "tier": "2"});
        pay.patch("foreign", &PatchParams::apply("someone"), &Patch::Apply(&foreign))
            .await
            .unwrap();

        let all: Api<DynamicObject> = Api::all_with(c.clone(), &ar("v1"));
        let names = |l: kube::core::ObjectList<DynamicObject>| -> Vec<String> {
            l.items.into_iter().map(|o| o.metadata.name.unwrap()).collect()
        };
        assert_eq!(
            names(all.list(&ListParams::default().labels(MANAGED)).await.unwrap()),
            ["c", "a", "b"]
        );
        assert_eq!(
            names(pay.list(&ListParams::default().labels(MANAGED)).await.unwrap()),
            ["a"]
        );
        assert_eq!(names(pay.list(&ListParams::default()).await.unwrap()), ["a", "foreign"]);
        for (selector, want) in [
            ("app.kubernetes.io/managed-by in (verity, x)", vec!["c", "a", "b"]),
            ("app.kubernetes.io/managed-by notin (verity)", vec!["foreign"]),
            ("app.kubernetes.io/managed-by!=verity", vec!["foreign"]),
            ("app.kubernetes.io/managed-by==someone,tier", vec!["foreign"]),
            ("!tier", vec!["c", "a", "b"]),
            ("tier>1", vec!["foreign"]),
        ] {
            assert_eq!(
                names(all.list(&ListParams::default().labels(selector)).await.unwrap()),
                want,
                "{selector}"
            );
        }
        assert_eq!(
            names(
                all.list(&ListParams::default().fields("metadata.namespace=shop"))
                    .await
                    .unwrap()
            ),
            ["b"]
        );
        let l = all.list(&ListParams::default()).await.unwrap();
        assert_eq!(l.metadata.resource_version, Some(server.resource_version().to_string()));
        assert_eq!(l.items[0].types.as_ref().unwrap().kind, KIND);
        for bad in ["a b c", "x in (a", "=x", "tier>one"] {
            let e = api_status(all.list(&ListParams::default().labels(bad)).await.unwrap_err());
            assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"), "{bad}");
        }
        assert_eq!(
            api_status(
                all.list(&ListParams::default().fields("spec.action=DENY"))
                    .await
                    .unwrap_err()
            )
            .code,
            400
        );
        // A namespace that does not exist holds nothing, as on a real cluster.
        let nowhere = api(&c, "nowhere");
        assert!(nowhere.list(&ListParams::default()).await.unwrap().items.is_empty());
        assert_eq!(api_status(nowhere.get("a").await.unwrap_err()).code, 404);

        // Dry-run delete (DeleteOptions in the body, as kube-rs sends it) keeps the object.
        let dry = DeleteParams {
            dry_run: true,
            ..DeleteParams::default()
        };
        let gone = pay.delete("a", &dry).await.unwrap().left().unwrap();
        assert_eq!(gone.metadata.name.as_deref(), Some("a"));
        assert!(server.get("pay", "a").is_some());
        let gone = pay.delete("a", &DeleteParams::default()).await.unwrap().left().unwrap();
        assert_eq!(gone.data["spec"]["action"], "DENY");
        assert!(server.get("pay", "a").is_none() && server.first_seen("pay", "a").is_none());
        assert_eq!(api_status(pay.get("a").await.unwrap_err()).code, 404);
        assert!(server.delete_as_admin("shop", "b"));
        assert!(!server.delete_as_admin("shop", "b"));
        assert_eq!(
            names(all.list(&ListParams::default().labels(MANAGED)).await.unwrap()),
            ["c"]
        );
    }

    #[tokio::test]
    async fn dry_run_options_and_request_shape() {
        let server = server(true);
        let c = client(&server).await;
        let pay = api(&c, "pay");
        let rv = server.resource_version();
        let o = pay
            .patch("dry", &pp().dry_run(), &Patch::Apply(&policy("pay", "dry", "DENY")))
            .await
            .unwrap();
        assert_eq!(o.metadata.name.as_deref(), Some("dry"));
        assert!(server.get("pay", "dry").is_none() && server.objects().is_empty());
        assert_eq!(server.resource_version(), rv);

        let path = "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies/x";
        let body = policy("pay", "x", "DENY").to_string();
        let (code, _, s) = raw(&c, "PATCH", path, Some(APPLY_PATCH), &body).await;
        assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")));
        assert_eq!(
            s["message"],
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        );
        let (code, _, s) = raw(
            &c,
            "PATCH",
            &format!("{path}?fieldManager=m&dryRun=Some"),
            Some(APPLY_PATCH),
            &body,
        )
        .await;
        assert_eq!(code, 422, "{s}");
        let (code, _, s) = raw(
            &c,
            "PATCH",
            &format!("{path}?fieldManager=m"),
            Some("application/strategic-merge-patch+json"),
            "{}",
        )
        .await;
        assert_eq!((code, s["reason"].as_str()), (415, Some("UnsupportedMediaType")));
        let (code, _, _) = raw(&c, "PATCH", &format!("{path}?fieldManager=m"), Some(MERGE_PATCH), "{}").await;
        assert_eq!(code, 404);
        let (code, _, s) = raw(
            &c,
            "PATCH",
            &format!("{path}?fieldManager=m&force=true"),
            Some(MERGE_PATCH),
            "{}",
        )
        .await;
        assert_eq!(
            (code, s["message"].as_str()),
            (
                422,
                Some(
                    "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch"
                )
            )
        );
        // The body against the URL.
        let named = policy("pay", "other", "DENY").to_string();
        let (code, _, s) = raw(
            &c,
            "PATCH",
            &format!("{path}?fieldManager=m"),
            Some(APPLY_PATCH),
            &named,
        )
        .await;
        assert_eq!(
            (code, s["message"].as_str()),
            (
                400,
                Some("the name of the object (other) does not match the name on the URL (x)")
            )
        );
        let mut beta = policy("pay", "x", "DENY");
        beta["apiVersion"] = json!("security.istio.io/v1beta1");
        let (code, _, s) = raw(
            &c,
            "PATCH",
            &format!("{path}?fieldManager=m"),
            Some(APPLY_PATCH),
            &beta.to_string(),
        )
        .await;
        assert_eq!(code, 400, "{s}");
        let mut with_mf = policy("pay", "x", "DENY");
        with_mf["metadata"]["managedFields"] = json!([]);
        let (code, _, s) = raw(
            &c,
            "PATCH",
            &format!("{path}?fieldManager=m"),
            Some(APPLY_PATCH),
            &with_mf.to_string(),
        )
        .await;
        assert_eq!(
            (code, s["message"].as_str()),
            (400, Some("metadata.managedFields must be nil"))
        );
        // YAML works as well as JSON.
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: x\nspec:\n  action: DENY\n";
        let (code, _, s) = raw(&c, "PATCH", &format!("{path}?fieldManager=m"), Some(APPLY_PATCH), yaml).await;
        assert_eq!((code, s["metadata"]["namespace"].as_str()), (201, Some("pay")));
        // A JSON patch, and a resourceVersion precondition.
        let jp = r#"[{"op":"test","path":"/spec/action","value":"DENY"},{"op":"replace","path":"/spec/action","value":"AUDIT"}]"#;
        let (code, _, s) = raw(&c, "PATCH", path, Some(JSON_PATCH), jp).await;
        assert_eq!((code, s["spec"]["action"].as_str()), (200, Some("AUDIT")));
        let (code, _, _) = raw(&c, "PATCH", path, Some(JSON_PATCH), jp).await;
        assert_eq!(code, 422, "the test op fails now");
        let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"action": "DENY"}}).to_string();
        let (code, _, s) = raw(&c, "PATCH", path, Some(MERGE_PATCH), &stale).await;
        assert_eq!((code, s["reason"].as_str()), (409, Some("Conflict")));

        // Creating in a namespace that does not exist.
        let nowhere = api(&c, "nowhere");
        let e = api_status(
            nowhere
                .patch("x", &pp(), &Patch::Apply(&policy("nowhere", "x", "DENY")))
                .await
                .unwrap_err(),
        );
        assert_eq!((e.code, e.message.as_str()), (404, "namespaces \"nowhere\" not found"));
        server.add_namespace("nowhere");
        nowhere
            .patch("x", &pp(), &Patch::Apply(&policy("nowhere", "x", "DENY")))
            .await
            .unwrap();
        // POST and PUT.
        let create = policy("pay", "posted", "DENY").to_string();
        let (code, _, _) = raw(
            &c,
            "POST",
            "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies",
            Some("application/json"),
            &create,
        )
        .await;
        assert_eq!(code, 201);
        let (code, _, s) = raw(
            &c,
            "POST",
            "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies",
            Some("application/json"),
            &create,
        )
        .await;
        assert_eq!((code, s["reason"].as_str()), (409, Some("AlreadyExists")));
        // Paths and methods it does not serve.
        let (code, _, s) = raw(&c, "GET", "/apis/networking.istio.io/v1/virtualservices", None, "").await;
        assert_eq!(
            (code, s["message"].as_str()),
            (404, Some("the server could not find the requested resource"))
        );
        let (code, _, s) = raw(&c, "POST", path, Some("application/json"), &body).await;
        assert_eq!((code, s["reason"].as_str()), (405, Some("MethodNotAllowed")));
    }

    #[tokio::test]
    async fn auth_faults_and_outages() {
        let server = server(false);
        let c = client(&server).await;
        let pay = api(&c, "pay");
        // A wrong token.
        let mut cfg = kube::Config::new(server.url().parse().unwrap());
        cfg.root_cert = Some(vec![
            rustls::pki_types::pem::PemObject::from_pem_slice(server.ca_pem().as_bytes())
                .map(|c: rustls::pki_types::CertificateDer<'_>| c.to_vec())
                .unwrap(),
        ]);
        cfg.auth_info.token = Some("wrong".to_string().into());
        let stranger = api(&kube::Client::try_from(cfg).unwrap(), "pay");
        let e = api_status(stranger.get("x").await.unwrap_err());
        assert_eq!(
            (e.code, e.reason.as_str(), e.message.as_str()),
            (401, "Unauthorized", "Unauthorized")
        );

        // RBAC.
        server.set_forbidden(true);
        let e = api_status(
            pay.patch("x", &pp(), &Patch::Apply(&policy("pay", "x", "DENY")))
                .await
                .unwrap_err(),
        );
        assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            e.message,
            "authorizationpolicies.security.istio.io \"x\" is forbidden: User \"system:serviceaccount:verity:verity\" cannot patch resource \"authorizationpolicies\" in API group \"security.istio.io\" in the namespace \"pay\""
        );
        let all: Api<DynamicObject> = Api::all_with(c.clone(), &ar("v1"));
        let e = api_status(all.list(&ListParams::default()).await.unwrap_err());
        assert_eq!(
            e.message,
            "authorizationpolicies.security.istio.io is forbidden: User \"system:serviceaccount:verity:verity\" cannot list resource \"authorizationpolicies\" in API group \"security.istio.io\" at the cluster scope"
        );
        server.set_forbidden(false);

        // 503 and 429 with Retry-After, as a client without retries sees them.
        let bare = client_without_retries(&server).await;
        server.fail_next(&[503]);
        let (code, headers, s) = raw(
            &bare,
            "GET",
            "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies",
            None,
            "",
        )
        .await;
        assert_eq!(
            (code, s["reason"].as_str(), s["message"].as_str()),
            (503, Some("ServiceUnavailable"), Some("storage is (re)initializing"))
        );
        assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        server.fail_next(&[429]);
        let e = api_status(api(&bare, "pay").get("x").await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (429, "TooManyRequests"));
        // kube-rs retries 503 itself after the Retry-After second: the 503, then the real answer.
        server.fail_next(&[503]);
        assert_eq!(api_status(pay.get("x").await.unwrap_err()).code, 404);
        let statuses: Vec<u16> = server.requests().iter().rev().take(2).map(|r| r.status).collect();
        assert_eq!(statuses, [404, 503]);
        server.fail_next(&[500, 409, 403]);
        for want in [500, 409, 403] {
            assert_eq!(api_status(pay.get("x").await.unwrap_err()).code, want);
        }
        assert_eq!(api_status(pay.get("x").await.unwrap_err()).code, 404);
        // Discovery never takes a fault.
        server.fail_next(&[500]);
        c.apiserver_version().await.unwrap();
        assert_eq!(api_status(pay.get("x").await.unwrap_err()).code, 500);
        // Rejections hold every 4xx.
        assert!(server.rejections().iter().any(|r| r.status["code"] == 401));

        // Slow answers.
        server.set_response_delay(Duration::from_millis(300));
        let t = Instant::now();
        let _ = pay.get("x").await;
        assert!(t.elapsed() >= Duration::from_millis(300));
        server.set_response_delay(Duration::ZERO);

        // Down: connections are refused; up again on the same port.
        server.set_down(true);
        assert!(std::net::TcpStream::connect(server.addr()).is_err());
        match pay.get("x").await {
            Err(kube::Error::Api(s)) => panic!("answered while down: {s:?}"),
            Err(_) => {}
            Ok(o) => panic!("answered while down: {o:?}"),
        }
        server.set_down(false);
        pay.patch("x", &pp(), &Patch::Apply(&policy("pay", "x", "DENY")))
            .await
            .unwrap();
        // wait_for sees changes made by other threads.
        // (Its own client: this runtime is blocked in wait_for meanwhile.)
        let cfg = config(&server).await;
        let waiter = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let c = kube::Client::try_from(cfg).unwrap();
                api(&c, "pay").delete("x", &DeleteParams::default()).await.unwrap();
            });
        });
        assert!(server.wait_for(Duration::from_secs(10), |s| s.get("pay", "x").is_none()));
        waiter.join().unwrap();
    }

    #[tokio::test]
    async fn schema_validation() {
        let server = server(true);
        let c = client(&server).await;
        let pay = api(&c, "pay");
        let strict = pp().validation_strict();
        // Bad metadata is refused with or without the schema.
        let mut bad_label = policy("pay", "bad", "DENY");
        bad_label["metadata"]["labels"]["verity.dev/revocation"] = json!("not a label value!");
        let e = api_status(pay.patch("bad", &strict, &Patch::Apply(&bad_label)).await.unwrap_err());
        assert_eq!(
            (e.code, e.details.unwrap().causes[0].field.as_str()),
            (422, "metadata.labels")
        );
        if !has_schema(&server) {
            return;
        }
        // What Verity sends passes.
        pay.patch("deny-cart", &strict, &Patch::Apply(&policy("pay", "deny-cart", "DENY")))
            .await
            .unwrap();
        let mut jwt = policy("pay", "deny-alice", "DENY");
        jwt["spec"]["rules"][0]["from"][0]["source"] = json!({"requestPrincipals": ["https://issuer.example/alice"]});
        pay.patch("deny-alice", &strict, &Patch::Apply(&jwt)).await.unwrap();
        assert!(server.validated() >= 3);
        assert!(server.cel_rules_skipped() > 0);

        let refuse = |obj: Value| {
            let pay = pay.clone();
            async move {
                let name = obj["metadata"]["name"].as_str().unwrap().to_string();
                api_status(
                    pay.patch(&name, &pp().validation_strict(), &Patch::Apply(&obj))
                        .await
                        .unwrap_err(),
                )
            }
        };
        let e = refuse(policy("pay", "bad", "BLOCK")).await;
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
        assert_eq!(
            e.message,
            "AuthorizationPolicy.security.istio.io \"bad\" is invalid: spec.action: Unsupported value: \"BLOCK\": supported values: \"ALLOW\", \"DENY\", \"AUDIT\", \"CUSTOM\""
        );
        let d = e.details.unwrap();
        assert_eq!(
            (d.kind.as_str(), d.group.as_str(), d.name.as_str()),
            (KIND, GROUP, "bad")
        );
        assert_eq!(
            (d.causes[0].reason.as_str(), d.causes[0].field.as_str()),
            ("FieldValueNotSupported", "spec.action")
        );

        let mut many = policy("pay", "bad", "DENY");
        many["spec"]["targetRefs"] = json!(
            (0..17)
                .map(|i| json!({"kind": "Service", "name": format!("s{i}")}))
                .collect::<Vec<_>>()
        );
        let e = refuse(many).await;
        let c0 = &e.details.unwrap().causes[0];
        assert_eq!(
            (c0.reason.as_str(), c0.field.as_str()),
            ("FieldValueTooMany", "spec.targetRefs")
        );
        assert_eq!(c0.message, "Too many: 17: must have at most 16 items");

        let mut missing = policy("pay", "bad", "DENY");
        missing["spec"]["targetRefs"] = json!([{"name": "s", "group": "Not A Group"}]);
        let e = refuse(missing).await;
        let mut got: Vec<(String, String)> = e
            .details
            .unwrap()
            .causes
            .into_iter()
            .map(|c| (c.reason, c.field))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("FieldValueInvalid".to_string(), "spec.targetRefs[0].group".to_string()),
                ("FieldValueRequired".to_string(), "spec.targetRefs[0].kind".to_string())
            ]
        );

        let mut long = policy("pay", "bad", "DENY");
        long["spec"]["rules"][0]["from"][0]["source"] = json!({"serviceAccounts": ["x".repeat(321)]});
        let e = refuse(long).await;
        assert_eq!(e.details.unwrap().causes[0].reason, "FieldValueTooLong");

        let mut typed = policy("pay", "bad", "DENY");
        typed["spec"]["action"] = json!(5);
        let e = refuse(typed).await;
        assert_eq!(e.details.unwrap().causes[0].reason, "FieldValueTypeInvalid");

        // Unknown fields: Strict refuses, Warn prunes with a warning, Ignore prunes silently.
        let mut unknown = policy("pay", "bad", "DENY");
        unknown["spec"]["rules"][0]["from"][0]["source"]["foo"] = json!(["x"]);
        let e = refuse(unknown.clone()).await;
        assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
        assert_eq!(
            e.message,
            "strict decoding error: unknown field \"spec.rules[0].from[0].source.foo\""
        );
        assert!(server.get("pay", "bad").is_none());
        let path = "/apis/security.istio.io/v1/namespaces/pay/authorizationpolicies/bad?fieldManager=verity&force=true";
        let (code, headers, o) = raw(&c, "PATCH", path, Some(APPLY_PATCH), &unknown.to_string()).await;
        assert_eq!(code, 201);
        assert_eq!(
            headers.get("warning").and_then(|v| v.to_str().ok()),
            Some(r#"299 - "unknown field \"spec.rules[0].from[0].source.foo\"""#)
        );
        assert!(o["spec"]["rules"][0]["from"][0]["source"].get("foo").is_none());
        assert!(
            server.get("pay", "bad").unwrap()["spec"]["rules"][0]["from"][0]["source"]
                .get("foo")
                .is_none()
        );
        let (code, headers, _) = raw(
            &c,
            "PATCH",
            &format!("{path}&fieldValidation=Ignore"),
            Some(APPLY_PATCH),
            &unknown.to_string(),
        )
        .await;
        assert_eq!((code, headers.get("warning")), (200, None));

        // Every refusal is recorded with what was sent.
        let rejections = server.rejections();
        assert!(
            rejections
                .iter()
                .any(|r| r.status["code"] == 422 && r.body.contains("BLOCK"))
        );
        assert!(rejections.iter().all(|r| r.method == "PATCH"));
    }

    #[tokio::test]
    async fn metadata_validation_without_schema() {
        let server = server(false);
        assert!(!server.schema_loaded());
        let c = client(&server).await;
        let pay = api(&c, "pay");
        // Without the schema the spec is not checked.
        pay.patch("ok", &pp(), &Patch::Apply(&policy("pay", "ok", "BLOCK")))
            .await
            .unwrap();
        assert_eq!(server.validated(), 0);

        let e = api_status(
            pay.patch("Bad_Name", &pp(), &Patch::Apply(&policy("pay", "Bad_Name", "DENY")))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (e.code, e.details.unwrap().causes[0].field.as_str()),
            (422, "metadata.name")
        );
        let mut key = policy("pay", "k", "DENY");
        key["metadata"]["labels"] = json!({"bad key": "v"});
        let e = api_status(pay.patch("k", &pp(), &Patch::Apply(&key)).await.unwrap_err());
        assert!(e.message.starts_with("AuthorizationPolicy.security.istio.io \"k\" is invalid: metadata.labels: Invalid value: \"bad key\": name part must consist of"), "{}", e.message);
        let mut long_value = policy("pay", "k", "DENY");
        long_value["metadata"]["labels"] = json!({"k": "v".repeat(64)});
        assert_eq!(
            api_status(pay.patch("k", &pp(), &Patch::Apply(&long_value)).await.unwrap_err()).code,
            422
        );
        let mut big = policy("pay", "k", "DENY");
        big["metadata"]["annotations"] = json!({"verity.dev/blob": "x".repeat(ANNOTATIONS_MAX_BYTES)});
        let e = api_status(pay.patch("k", &pp(), &Patch::Apply(&big)).await.unwrap_err());
        let c0 = &e.details.unwrap().causes[0];
        assert_eq!(
            (c0.reason.as_str(), c0.field.as_str()),
            ("FieldValueTooLong", "metadata.annotations")
        );
        let mut meta = policy("pay", "k", "DENY");
        meta["metadata"]["colour"] = json!("red");
        let e = api_status(
            pay.patch("k", &pp().validation_strict(), &Patch::Apply(&meta))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "strict decoding error: unknown field \"metadata.colour\"")
        );
        let mut good = policy("pay", "k", "DENY");
        good["metadata"]["labels"] = json!({"example.com/tier": "", "a.b-c_d": "Z9"});
        good["metadata"]["annotations"] = json!({"Example.com/Note": "anything at all"});
        pay.patch("k", &pp(), &Patch::Apply(&good)).await.unwrap();
    }

    #[test]
    fn usable_from_sync_code() {
        let server = server(false);
        let obj = server.apply_as("kubectl", &policy("pay", "p", "DENY"), false).unwrap();
        assert_eq!(obj["metadata"]["generation"], 1);
        assert_eq!(server.objects().len(), 1);
        let text = server.kubeconfig_yaml();
        assert!(text.contains(&format!("server: {}", server.url())) && text.contains(server.token()));
        assert!(server.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(server.wait_for(Duration::from_millis(50), |s| s.get("pay", "p").is_some()));
        assert!(!server.wait_for(Duration::from_millis(50), |s| s.get("pay", "q").is_some()));
    }

    #[test]
    fn label_selectors() {
        let labels = json!({"app.kubernetes.io/managed-by": "verity", "tier": "3", "empty": ""});
        let ok = |s: &str| parse_label_selector(s).unwrap().iter().all(|r| r.matches(&labels));
        assert!(ok(""));
        assert!(ok("app.kubernetes.io/managed-by=verity,tier"));
        assert!(ok("tier in (3, 4),!missing"));
        assert!(ok("tier notin (1),missing notin (x)"));
        assert!(ok("tier!=1,missing!=1"));
        assert!(ok("empty="));
        assert!(ok("tier>2,tier<4"));
        assert!(!ok("tier notin (3)"));
        assert!(!ok("tier!=3"));
        assert!(!ok("tier in (1,2)"));
        assert!(!ok("missing"));
        for bad in [
            "bad key!=x",
            "a=b=c",
            "a,",
            "a in b",
            "a in (b",
            "x=not a value!",
            "!",
            "a>b",
        ] {
            assert!(parse_label_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patches() {
        let mut doc = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge_patch_into(&mut doc, &json!({"a": {"b": null, "e": true}, "d": "y"}));
        assert_eq!(doc, json!({"a": {"c": [1, 2], "e": true}, "d": "y"}));
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/a/c/-", "value": 3},
                {"op": "add", "path": "/a/c/0", "value": 0},
                {"op": "remove", "path": "/a/e"},
                {"op": "copy", "from": "/d", "path": "/f~1g"},
                {"op": "move", "from": "/d", "path": "/h"},
                {"op": "test", "path": "/h", "value": "y"}
            ]),
        )
        .unwrap();
        assert_eq!(doc, json!({"a": {"c": [0, 1, 2, 3]}, "f/g": "y", "h": "y"}));
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
