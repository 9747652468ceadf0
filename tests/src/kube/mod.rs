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

mod metadata;
mod patches;
mod query;
mod routing;
mod schema;
mod selectors;
mod server;
mod state;
mod status;
mod verbs;
mod writes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use patches::merge_patch_into;
use query::FieldValidation;
use schema::load_schemas;
use server::{serve, tls};
use state::{Inner, Shared, random, version_of};
use status::not_found;
use writes::{Write, apply, update};

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

/// The server; it stops when dropped.
pub struct KubeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
