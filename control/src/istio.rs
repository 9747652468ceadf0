//! The Istio responder: each revocation in force becomes an `AuthorizationPolicy` with
//! `action: DENY` for the revoked principal (a workload's SPIFFE identity without
//! `spiffe://`, or a JWT `iss/sub` as a `requestPrincipals` entry), written by server-side
//! apply with Verity's field manager, and deleted when the revocation expires or is lifted.
//!
//! The controller is level-triggered, like a Kubernetes controller: every pass compares what
//! the store says should be in force with the policies it knows exist, applies what is
//! missing and deletes what is no longer wanted. Every `resync_secs` it lists the policies
//! it manages (by label) and re-applies everything, which repairs out-of-band edits and
//! deletions, and removes what expired while Verity was not running. Failures are retried
//! per policy with exponential backoff; the revocation is `failed` until the apply succeeds.
//!
//! Names are deterministic (`verity-revoke-<hash>` over the owner, the principal and the
//! namespace), so applying twice is a no-op and a restart finds its own objects again.

//!
//! The policy object itself is built in `policy_object.rs`; this file holds the responder the
//! revoker calls and the controller that talks to the Kubernetes API.

mod candidate;
mod policy_object;
pub use self::candidate::CANDIDATE_LABEL;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use tokio::sync::Notify;
use verity_model::alert::Alert;

pub use self::policy_object::{DRY_RUN_ANNOTATION, GROUP, MANAGED_BY, OWNER_LABEL, Policy, REVOCATION_LABEL, policy};
use crate::config::IstioConfig;
use crate::responder::{Applied, Responder, ResponderError};
use crate::revoker::Revoker;
use crate::{Counters, Mode, Revocation};

/// The responder's name in a revocation's results.
pub const NAME: &str = "istio";

#[derive(Debug, thiserror::Error)]
pub enum IstioError {
    /// The kubeconfig named by `control.istio.kubeconfig` cannot be read or used.
    #[error("control.istio.kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was named and none could be inferred.
    #[error("control.istio: no Kubernetes configuration found (in-cluster, $KUBECONFIG or ~/.kube/config): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The Kubernetes client cannot be built from the configuration.
    #[error("control.istio: {0}")]
    Client(#[source] kube::Error),
}

/// A failed API call: what the API server said, or why it could not be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CallError {
    code: Option<u16>,
    detail: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

fn call_error(e: kube::Error) -> CallError {
    match e {
        kube::Error::Api(status) => CallError {
            code: Some(status.code),
            detail: format!("HTTP {} {}: {}", status.code, status.reason, status.message),
        },
        other => CallError {
            code: None,
            detail: other.to_string(),
        },
    }
}

/// The responder's metrics.
#[derive(Clone)]
pub struct IstioMetrics {
    requests: Counters,
    policies: prometheus_client::metrics::gauge::Gauge,
}

const OPS: &[&str] = &["apply", "delete", "list"];

impl IstioMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            requests: Counters::default(),
            policies: Default::default(),
        };
        for op in OPS {
            for outcome in ["ok", "error"] {
                let _ = m.requests.get_or_create(&vec![("op", *op), ("outcome", outcome)]);
            }
        }
        registry.register(
            "verity_istio_api_requests",
            "Kubernetes API requests of the Istio responder, by operation and outcome",
            m.requests.clone(),
        );
        registry.register(
            "verity_istio_policies",
            "AuthorizationPolicy objects Verity manages, as last seen",
            m.policies.clone(),
        );
        m
    }

    fn request(&self, op: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.requests
            .get_or_create(&vec![("op", op), ("outcome", outcome)])
            .inc();
    }
}

/// The [`Responder`] the revoker calls: it only wakes the controller, which confirms later.
pub struct IstioResponder {
    wake: Arc<Notify>,
    cfg: IstioConfig,
}

impl IstioResponder {
    pub fn new(cfg: IstioConfig, wake: Arc<Notify>) -> Self {
        Self { wake, cfg }
    }
}

impl Responder for IstioResponder {
    fn name(&self) -> &'static str {
        NAME
    }
    fn apply(&self, r: &Revocation) -> Result<Applied, ResponderError> {
        // The controller is woken by `stored()`, once the revocation is in the store it reads.
        let p = policy(r, &self.cfg);
        Ok(Applied::Later(format!(
            "server-side apply of AuthorizationPolicy {}/{} queued",
            p.namespace, p.name
        )))
    }
    fn remove(&self, r: &Revocation) -> Result<String, ResponderError> {
        let p = policy(r, &self.cfg);
        self.wake.notify_one();
        Ok(format!(
            "deletion of AuthorizationPolicy {}/{} queued",
            p.namespace, p.name
        ))
    }
    fn retries_itself(&self) -> bool {
        true
    }
    fn supports_dry_run(&self) -> bool {
        true
    }
    fn stored(&self, _id: &str) {
        self.wake.notify_one();
    }
}

struct Backoff {
    attempts: u32,
    next: Instant,
}

type Key = (String, String);

/// Keeps the cluster's Verity-managed `AuthorizationPolicy` objects in step with the store.
pub struct IstioController {
    cfg: IstioConfig,
    client: kube::Client,
    resource: ApiResource,
    /// Policies known to exist, with the revocation id they were applied for.
    known: HashMap<Key, String>,
    retry: HashMap<Key, Backoff>,
    next_resync: Option<Instant>,
    metrics: Option<IstioMetrics>,
}

impl IstioController {
    /// Builds the Kubernetes client (no request is made yet).
    pub async fn connect(cfg: IstioConfig) -> Result<Self, IstioError> {
        // kube's TLS takes the process-wide rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = match &cfg.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| IstioError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
                let options = kube::config::KubeConfigOptions {
                    context: cfg.context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|source| IstioError::Kubeconfig {
                        path: path.clone(),
                        source,
                    })?
            }
            None => kube::Config::infer().await.map_err(IstioError::Infer)?,
        };
        let timeout = Duration::from_secs(cfg.timeout_secs);
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let client = kube::Client::try_from(config).map_err(IstioError::Client)?;
        Ok(Self {
            resource: cfg.api_resource(),
            cfg,
            client,
            known: HashMap::new(),
            retry: HashMap::new(),
            next_resync: None,
            metrics: None,
        })
    }

    pub fn with_metrics(mut self, metrics: IstioMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, op: &'static str, ok: bool) {
        if let Some(m) = &self.metrics {
            m.request(op, ok);
        }
    }

    fn api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &self.resource)
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = Result<T, kube::Error>>) -> Result<T, CallError> {
        match tokio::time::timeout(Duration::from_secs(self.cfg.timeout_secs), f).await {
            Ok(r) => r.map_err(call_error),
            Err(_) => Err(CallError {
                code: None,
                detail: format!("no answer within {} s", self.cfg.timeout_secs),
            }),
        }
    }

    async fn list(&self) -> Result<HashMap<Key, String>, CallError> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &self.resource);
        let lp = ListParams::default().labels(&self.cfg.selector());
        let list = self.timed(api.list(&lp)).await;
        self.count("list", list.is_ok());
        Ok(list?
            .items
            .into_iter()
            .filter_map(|o| {
                let ns = o.metadata.namespace.clone()?;
                let name = o.metadata.name.clone()?;
                let rev = o
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(REVOCATION_LABEL).cloned())
                    .unwrap_or_default();
                Some(((ns, name), rev))
            })
            .collect())
    }

    /// Server-side apply with Verity's field manager, taking fields back from other managers;
    /// a `dry_run` is checked by the API server (schema, admission, RBAC) and not stored.
    async fn apply(&self, p: &Policy, dry_run: bool) -> Result<DynamicObject, CallError> {
        let params = PatchParams::apply(&self.cfg.field_manager).force().validation_strict();
        let params = if dry_run { params.dry_run() } else { params };
        let api = self.api(&p.namespace);
        let out = self.timed(api.patch(&p.name, &params, &Patch::Apply(&p.object))).await;
        self.count("apply", out.is_ok());
        out
    }

    async fn delete(&self, key: &Key) -> Result<(), CallError> {
        let api = self.api(&key.0);
        let out = match self.timed(api.delete(&key.1, &DeleteParams::default())).await {
            Ok(_) => Ok(()),
            // Already gone is what we wanted.
            Err(e) if e.code == Some(404) => Ok(()),
            Err(e) => Err(e),
        };
        self.count("delete", out.is_ok());
        out
    }

    fn blocked(&self, key: &Key, now: Instant) -> bool {
        self.retry.get(key).is_some_and(|b| b.next > now)
    }

    fn failed(&mut self, key: &Key, now: Instant) -> Duration {
        let b = self
            .retry
            .entry(key.clone())
            .or_insert(Backoff { attempts: 0, next: now });
        b.attempts = b.attempts.saturating_add(1);
        let wait = Duration::from_secs(1u64 << b.attempts.min(16).saturating_sub(1))
            .min(Duration::from_secs(self.cfg.max_backoff_secs));
        b.next = now + wait;
        wait
    }

    /// Every AuthorizationPolicy in the cluster, in every namespace and whoever manages it
    /// (what `verity policy drift --cluster` reads), as JSON objects with kind and apiVersion.
    pub async fn list_all_policies(&self) -> Result<Vec<serde_json::Value>, ResponderError> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &self.resource);
        let list = self.timed(api.list(&ListParams::default())).await;
        self.count("list", list.is_ok());
        let list = list.map_err(|e| ResponderError::retry(format!("list: {e}")))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|mut o| {
                o.types.get_or_insert_with(|| kube::api::TypeMeta {
                    api_version: self.resource.api_version.clone(),
                    kind: self.resource.kind.clone(),
                });
                serde_json::to_value(o).ok()
            })
            .collect())
    }

    /// A health check for `verity validate --check-sinks`: lists the managed policies and
    /// applies a probe policy as a server-side dry run (which proves the CRD is installed,
    /// the objects pass its schema and Verity may patch them); nothing is stored.
    pub async fn check(&self) -> Result<String, ResponderError> {
        let listed = self
            .list()
            .await
            .map_err(|e| ResponderError::retry(format!("list: {e}")))?;
        let probe = Revocation {
            id: "rev-0000000000000000".into(),
            kind: "principal".into(),
            principal: "cluster.local/ns/verity-check/sa/probe".into(),
            reason: "verity validate --check-sinks".into(),
            alert_id: None,
            rule_id: None,
            namespace: None,
            mode: Mode::Enforce,
            created_ns: 0,
            expires_ns: 0,
            applied_ns: None,
            state: crate::State::Pending,
            results: Default::default(),
        };
        let p = policy(&probe, &self.cfg);
        self.apply(&p, true)
            .await
            .map_err(|e| ResponderError::retry(format!("server-side apply (dry run) in {}: {e}", p.namespace)))?;
        Ok(format!(
            "{} AuthorizationPolicies managed; server-side apply (dry run) accepted in {}",
            listed.len(),
            p.namespace
        ))
    }

    /// One comparison of wanted and existing policies. Returns the audit events of the
    /// revocations whose state changed.
    pub async fn pass(&mut self, manager: &Arc<Revoker>, now_ns: i64) -> Vec<Alert> {
        let now = Instant::now();
        let mut desired: HashMap<Key, (Revocation, Policy)> = HashMap::new();
        for r in manager.enforced() {
            // Defence in depth: whatever is in the store, never write a principal that is not
            // exactly one identity (a `*` here would deny every mTLS caller in the mesh).
            if let Err(refusal) = crate::guard::check_identity(&r.kind, &r.principal) {
                tracing::error!(revocation = %r.id, %refusal, "not writing an AuthorizationPolicy for it");
                continue;
            }
            let p = policy(&r, &self.cfg);
            desired.insert((p.namespace.clone(), p.name.clone()), (r, p));
        }
        let resync = self.next_resync.is_none_or(|t| t <= now);
        let mut to_apply: Vec<Key> = Vec::new();
        if resync {
            match self.list().await {
                Ok(existing) => {
                    self.known = existing;
                    self.next_resync = Some(now + Duration::from_secs(self.cfg.resync_secs));
                    // Re-applying is a no-op for unchanged objects and repairs edited ones.
                    to_apply.extend(desired.keys().cloned());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not list the AuthorizationPolicies Verity manages");
                    let retry_in = Duration::from_secs(5).min(Duration::from_secs(self.cfg.resync_secs));
                    self.next_resync = Some(now + retry_in);
                    to_apply.extend(desired.keys().filter(|k| !self.known.contains_key(*k)).cloned());
                }
            }
        } else {
            to_apply.extend(desired.keys().filter(|k| !self.known.contains_key(*k)).cloned());
        }
        let to_delete: Vec<Key> = self
            .known
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        let mut events = Vec::new();
        to_apply.sort();
        for key in to_apply {
            if self.blocked(&key, now) {
                continue;
            }
            let Some((r, p)) = desired.get(&key) else { continue };
            let outcome = match self.apply(p, false).await {
                Ok(obj) => {
                    self.retry.remove(&key);
                    self.known.insert(key.clone(), r.id.clone());
                    let generation = obj.metadata.generation.unwrap_or_default();
                    let dry = if r.mode == Mode::DryRun { " as a dry run" } else { "" };
                    Ok(format!(
                        "AuthorizationPolicy {}/{} applied{dry} (generation {generation})",
                        key.0, key.1
                    ))
                }
                Err(e) => {
                    let wait = self.failed(&key, now);
                    tracing::warn!(policy = %format!("{}/{}", key.0, key.1), error = %e, retry_in = ?wait,
                        "could not apply an AuthorizationPolicy");
                    // The controller retries with backoff whatever the cause.
                    Err(ResponderError::retry(format!(
                        "AuthorizationPolicy {}/{}: {e}",
                        key.0, key.1
                    )))
                }
            };
            let (m, id) = (manager.clone(), r.id.clone());
            if let Ok(ev) = tokio::task::spawn_blocking(move || m.confirm(&id, NAME, outcome, now_ns)).await {
                events.extend(ev);
            }
        }
        for key in to_delete {
            if self.blocked(&key, now) {
                continue;
            }
            match self.delete(&key).await {
                Ok(()) => {
                    self.retry.remove(&key);
                    if let Some(id) = self.known.remove(&key) {
                        let (m, detail) = (
                            manager.clone(),
                            format!("AuthorizationPolicy {}/{} deleted", key.0, key.1),
                        );
                        let _ = tokio::task::spawn_blocking(move || m.note(&id, NAME, detail, now_ns)).await;
                    }
                    tracing::info!(policy = %format!("{}/{}", key.0, key.1), "AuthorizationPolicy deleted");
                }
                Err(e) => {
                    let wait = self.failed(&key, now);
                    tracing::warn!(policy = %format!("{}/{}", key.0, key.1), error = %e, retry_in = ?wait,
                        "could not delete an AuthorizationPolicy");
                }
            }
        }
        if let Some(m) = &self.metrics {
            m.policies.set(i64::try_from(self.known.len()).unwrap_or(i64::MAX));
        }
        events
    }

    /// Runs passes until the drain starts: when woken by the responder, and at least once a
    /// second (for expiry, backoff and resync). The pass under way when the drain starts is
    /// finished. Policies are left in place at shutdown; the next start deletes what expired
    /// meanwhile.
    pub async fn run(
        mut self,
        manager: Arc<Revoker>,
        wake: Arc<Notify>,
        mut drain: verity_drain::Watcher,
        deliver: impl Fn(Vec<Alert>),
    ) {
        loop {
            let events = self.pass(&manager, verity_model::time::now_ns()).await;
            if !events.is_empty() {
                deliver(events);
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = drain.wait() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(IstioConfig::default().validate().is_empty());
        for bad in [
            IstioConfig {
                root_namespace: "Istio_System".into(),
                ..IstioConfig::default()
            },
            IstioConfig {
                field_manager: "verity/prod".into(),
                ..IstioConfig::default()
            },
            IstioConfig {
                api_version: "v2".into(),
                ..IstioConfig::default()
            },
            IstioConfig {
                resync_secs: 0,
                ..IstioConfig::default()
            },
        ] {
            assert!(!bad.validate().is_empty(), "{bad:?}");
        }
    }
}
