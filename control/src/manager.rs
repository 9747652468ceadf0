//! Turns alerts that ask for a response into revocations, within the guardrails, applies them
//! through the responders, and keeps them in step with time: expiry at the TTL, retries of
//! failures, and, once a revocation has had a grace period to propagate, handing it to the
//! verification (the rules' `is_revoked()`), so traffic that still succeeds raises an alert.
//!
//! Every action (recorded, applied, failed, refused, expired, lifted) becomes an audit event:
//! an [`Alert`] of kind `audit`, so it reaches the same SIEM outputs as detections.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use verity_model::alert::{Alert, AlertStatus, Entity, Severity};

use crate::denylist::{Denial, DenyList};
use crate::guard::{DEFAULT_PROTECTED, Guardrails, Refusal};
use crate::store::{Store, StoreError};
use crate::{Counters, ResponderResult, Revocation, State, normalize_principal, revocation_id};

pub use crate::Mode;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub mode: Mode,
    /// Where revocations are kept across restarts.
    pub store_path: std::path::PathBuf,
    /// Identities never revoked (`*` wildcards over the principal without `spiffe://`).
    pub protected: Vec<String>,
    /// At most this many revocations per window; beyond, a critical alert instead.
    pub max_per_window: usize,
    /// Operator revocations (the API) per window: a budget of their own, which rules cannot
    /// use up.
    pub max_operator_per_window: usize,
    pub window_secs: u64,
    pub min_severity: Severity,
    /// After being applied, a revocation is verified from traffic once this has passed.
    pub grace_secs: u64,
    /// Used when a rule's `respond` has no TTL.
    pub default_ttl_secs: u64,
    /// Serve `envoy.service.auth.v3.Authorization` here (`ip:port`); unset: no ext_authz.
    pub ext_authz_listen: Option<String>,
    /// TLS for the ext_authz listener (Envoy's `ext_authz` gRPC client over TLS or mTLS).
    pub ext_authz_tls: Option<verity_model::tls::ServerTlsConfig>,
    /// How often expiry, retries and verification are checked.
    pub reconcile_interval_secs: u64,
    /// Also send each revocation and removal, signed, to this webhook.
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// Also enforce through Istio `AuthorizationPolicy` DENY objects.
    pub istio: Option<crate::istio::IstioConfig>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            mode: Mode::LogOnly,
            store_path: "verity-data/revocations.json".into(),
            protected: DEFAULT_PROTECTED.iter().map(|s| s.to_string()).collect(),
            max_per_window: 10,
            max_operator_per_window: 100,
            window_secs: 600,
            min_severity: Severity::High,
            grace_secs: 15,
            default_ttl_secs: 3600,
            ext_authz_listen: None,
            ext_authz_tls: None,
            reconcile_interval_secs: 1,
            webhook: None,
            istio: None,
        }
    }
}

impl ControlConfig {
    /// Pure checks of the `control` section: every problem with its key.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut e = Vec::new();
        if let Some(l) = &self.ext_authz_listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            e.push((
                "control.ext_authz_listen".into(),
                format!("{l:?} is not an ip:port socket address"),
            ));
        }
        if let Some(tls) = &self.ext_authz_tls {
            e.extend(tls.validate("control.ext_authz_tls"));
        }
        if self.window_secs == 0 {
            e.push(("control.window_secs".into(), "must be at least 1".into()));
        }
        if self.default_ttl_secs == 0 {
            e.push(("control.default_ttl_secs".into(), "must be at least 1".into()));
        }
        if let Some(istio) = &self.istio {
            e.extend(istio.validate());
        }
        if self.max_per_window == 0 {
            e.push(("control.max_per_window".into(), "must be at least 1".into()));
        }
        if self.max_operator_per_window == 0 {
            e.push(("control.max_operator_per_window".into(), "must be at least 1".into()));
        }
        if !(1..=3600).contains(&self.reconcile_interval_secs) {
            e.push((
                "control.reconcile_interval_secs".into(),
                "must be between 1 and 3600".into(),
            ));
        }
        e
    }
}

/// Something that enforces revocations (the ext_authz deny list, a webhook, Istio).
pub trait Responder: Send + Sync {
    fn name(&self) -> &'static str;
    fn apply(&self, r: &Revocation) -> Result<String, String>;
    fn remove(&self, r: &Revocation) -> Result<String, String>;
    /// Whether `apply` only hands the work on and the outcome arrives later through
    /// [`Manager::confirm`]; the revocation stays pending until then.
    fn deferred(&self) -> bool {
        false
    }
    /// Whether it can apply a revocation without enforcing it (mode `dry_run`); the others
    /// are skipped in that mode.
    fn supports_dry_run(&self) -> bool {
        false
    }
    /// Called after a revocation's new state is stored, so a deferred responder can act on
    /// what is now in the store.
    fn stored(&self) {}
}

/// What to revoke, from an alert or an operator.
#[derive(Debug, Clone)]
pub struct RevokeRequest<'a> {
    pub principal: &'a str,
    /// `principal` or `request_principal`.
    pub kind: &'a str,
    pub reason: &'a str,
    pub severity: Severity,
    pub ttl_ns: i64,
    /// The alert's id and rule id.
    pub alert: Option<(&'a str, &'a str)>,
    /// The destination namespace, when known.
    pub namespace: Option<&'a str>,
}

/// Enforcement through the ext_authz server: effective as soon as it is recorded.
pub struct DenyListResponder(pub DenyList);

impl Responder for DenyListResponder {
    fn name(&self) -> &'static str {
        "ext_authz"
    }
    fn apply(&self, r: &Revocation) -> Result<String, String> {
        self.0.insert(
            &r.principal,
            Denial {
                revocation_id: r.id.clone(),
                alert_id: r.alert_id.clone(),
                reason: r.reason.clone(),
                expires_ns: r.expires_ns,
            },
        );
        Ok("on the ext_authz deny list".into())
    }
    fn remove(&self, r: &Revocation) -> Result<String, String> {
        self.0.remove(&r.principal);
        Ok("removed from the ext_authz deny list".into())
    }
}

/// Called when a principal enters or leaves verification (`is_revoked()` in rules).
pub type VerifyHook = Box<dyn Fn(&str, bool) + Send + Sync>;

/// Revocation metrics, registered into the registry the binary passes in.
#[derive(Clone)]
pub struct ControlMetrics {
    events: Counters,
    apply_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Every audit action, so each series exists (at 0) from the start.
pub const ACTIONS: &[&str] = &["recorded", "applied", "failed", "refused", "expired", "lifted"];

impl ControlMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            events: Counters::default(),
            apply_seconds: prometheus_client::metrics::histogram::Histogram::new([
                0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0,
            ]),
        };
        for a in ACTIONS {
            let _ = m.events.get_or_create(&vec![("action", *a)]);
        }
        registry.register(
            "verity_revocation_events",
            "Revocation actions: recorded, applied, failed, refused, expired, lifted",
            m.events.clone(),
        );
        registry.register(
            "verity_revocation_apply_seconds",
            "Time from a revocation's decision until every responder has applied it",
            m.apply_seconds.clone(),
        );
        m
    }

    fn action(&self, action: &str) {
        if let Some(a) = ACTIONS.iter().find(|a| **a == action) {
            self.events.get_or_create(&vec![("action", *a)]).inc();
        }
    }
}

pub struct Manager {
    cfg: ControlConfig,
    store: Store,
    guard: Guardrails,
    responders: Vec<Box<dyn Responder>>,
    verify: VerifyHook,
    metrics: Option<ControlMetrics>,
}

fn ns_to_rfc3339(ns: i64) -> String {
    verity_model::time::format_rfc3339_ns(ns)
}

impl Manager {
    pub fn open(
        cfg: ControlConfig,
        responders: Vec<Box<dyn Responder>>,
        verify: VerifyHook,
    ) -> Result<Self, StoreError> {
        let store = Store::open(&cfg.store_path)?;
        let guard = Guardrails::new(
            cfg.protected.clone(),
            cfg.max_per_window,
            cfg.max_operator_per_window,
            cfg.window_secs,
            cfg.min_severity,
        );
        Ok(Self {
            cfg,
            store,
            guard,
            responders,
            verify,
            metrics: None,
        })
    }

    pub fn with_metrics(mut self, metrics: ControlMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn audit(&self, r: &Revocation, action: &str, severity: Severity, detail: &str, now_ns: i64) -> Alert {
        if let Some(m) = &self.metrics {
            m.action(action);
        }
        let mut group = BTreeMap::new();
        group.insert("principal".to_string(), Some(r.principal.clone()));
        group.insert("revocation".to_string(), Some(r.id.clone()));
        Alert {
            id: format!("verity-revocation-{action}-{}", r.id.trim_start_matches("rev-")),
            rule_id: format!("verity-revocation-{action}"),
            title: format!("Revocation {action}"),
            severity,
            kind: "audit".into(),
            status: AlertStatus::Firing,
            tags: vec!["zt.response".into(), "verity.audit".into()],
            description: r.reason.clone(),
            group,
            count: 1,
            aggregates: BTreeMap::new(),
            window_start: None,
            window_end: None,
            first_seen: ns_to_rfc3339(now_ns),
            last_seen: ns_to_rfc3339(now_ns),
            evidence: Vec::new(),
            entity: Some(Entity {
                kind: r.kind.clone(),
                value: r.principal.clone(),
            }),
            respond: None,
            summary: format!(
                "revocation {} of {} {action}: {detail} (until {}, alert {})",
                r.id,
                r.principal,
                ns_to_rfc3339(r.expires_ns),
                r.alert_id.as_deref().unwrap_or("-")
            ),
        }
    }

    /// Creates a revocation (from an alert or by hand) within the guardrails; returns the
    /// audit events.
    pub fn revoke(&self, req: &RevokeRequest<'_>, now_ns: i64) -> Result<Vec<Alert>, StoreError> {
        let principal = normalize_principal(req.principal).to_string();
        if self.store.active_for(&principal).is_some() {
            return Ok(Vec::new());
        }
        let mut r = Revocation {
            id: revocation_id(&principal, now_ns),
            kind: req.kind.to_string(),
            principal: principal.clone(),
            reason: req.reason.to_string(),
            alert_id: req.alert.map(|(id, _)| id.to_string()),
            rule_id: req.alert.map(|(_, rule)| rule.to_string()),
            namespace: req.namespace.filter(|n| !n.is_empty()).map(str::to_string),
            mode: self.cfg.mode,
            created_ns: now_ns,
            expires_ns: now_ns.saturating_add(req.ttl_ns),
            applied_ns: None,
            state: State::Pending,
            results: BTreeMap::new(),
        };
        let admitted = crate::guard::check_identity(req.kind, &principal).and_then(|()| {
            let origin = if req.alert.is_some() {
                crate::guard::Origin::Rule
            } else {
                crate::guard::Origin::Operator
            };
            self.guard.admit(&principal, req.severity, origin, now_ns)
        });
        if let Err(refusal) = admitted {
            let sev = match refusal {
                // Too many revocations at once is itself an incident, and so is an attempt
                // to revoke a wildcard: telemetry built to make Verity deny everyone.
                Refusal::Cap { .. } | Refusal::NotAnIdentity { .. } => Severity::Critical,
                _ => Severity::Medium,
            };
            tracing::warn!(%principal, %refusal, "revocation refused by a guardrail");
            return Ok(vec![self.audit(&r, "refused", sev, &refusal.to_string(), now_ns)]);
        }
        let mut events = Vec::new();
        if self.cfg.mode == Mode::LogOnly {
            r.results.insert(
                "log_only".into(),
                ResponderResult {
                    ok: true,
                    pending: false,
                    detail: "recorded; mode log_only applies nothing".into(),
                    at_ns: now_ns,
                },
            );
            self.store.put(r.clone())?;
            events.push(self.audit(&r, "recorded", Severity::Info, "log-only: not enforced", now_ns));
        } else {
            let started = std::time::Instant::now();
            self.apply_all(&mut r, now_ns, false);
            r.settle(now_ns);
            if r.state == State::Applied
                && let Some(m) = &self.metrics
            {
                m.apply_seconds.observe(started.elapsed().as_secs_f64());
            }
            self.store.put(r.clone())?;
            for resp in &self.responders {
                resp.stored();
            }
            events.push(self.state_event(&r, now_ns));
        }
        tracing::info!(principal = %r.principal, id = %r.id, state = ?r.state, "revocation recorded");
        Ok(events)
    }

    /// Runs every responder that applies in this revocation's mode, recording their results;
    /// with `only_failed`, only the ones whose last result was a failure.
    fn apply_all(&self, r: &mut Revocation, now_ns: i64, only_failed: bool) {
        let dry_run = r.mode == Mode::DryRun;
        for resp in &self.responders {
            let previous = r.results.get(resp.name());
            if only_failed && (resp.deferred() || previous.is_some_and(|p| p.ok || p.pending)) {
                continue;
            }
            let result = if dry_run && !resp.supports_dry_run() {
                ResponderResult {
                    ok: true,
                    pending: false,
                    detail: "dry-run: not applied".into(),
                    at_ns: now_ns,
                }
            } else {
                let outcome = resp.apply(r);
                ResponderResult {
                    ok: outcome.is_ok() && !resp.deferred(),
                    pending: outcome.is_ok() && resp.deferred(),
                    detail: outcome.unwrap_or_else(|e| e),
                    at_ns: now_ns,
                }
            };
            r.results.insert(resp.name().to_string(), result);
        }
    }

    fn failures(r: &Revocation) -> String {
        r.results
            .iter()
            .filter(|(_, v)| !v.ok && !v.pending)
            .map(|(k, v)| format!("{k}: {}", v.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The audit event for a revocation's settled state after it was (re)applied.
    fn state_event(&self, r: &Revocation, now_ns: i64) -> Alert {
        let what = if r.mode == Mode::DryRun {
            "applied as a dry run (not enforced)"
        } else {
            "enforced by every responder"
        };
        match r.state {
            State::Applied => self.audit(r, "applied", Severity::High, what, now_ns),
            State::Failed => self.audit(r, "failed", Severity::High, &Self::failures(r), now_ns),
            _ => {
                let waiting: Vec<&str> = r
                    .results
                    .iter()
                    .filter(|(_, v)| v.pending)
                    .map(|(k, _)| k.as_str())
                    .collect();
                self.audit(
                    r,
                    "recorded",
                    Severity::Info,
                    &format!("waiting for {}", waiting.join(", ")),
                    now_ns,
                )
            }
        }
    }

    /// The outcome from a deferred responder (see [`Responder::deferred`]). Returns the audit
    /// event when the revocation's state changes: applied once every responder has applied
    /// it, failed the first time a responder reports a failure (later failures of the same
    /// kind are retried quietly).
    pub fn confirm(&self, id: &str, responder: &str, outcome: Result<String, String>, now_ns: i64) -> Vec<Alert> {
        let Some(before) = self.store.get(id) else {
            return Vec::new();
        };
        if !before.state.is_active() {
            return Vec::new();
        }
        let ok = outcome.is_ok();
        let detail = outcome.unwrap_or_else(|e| e);
        let unchanged = before
            .results
            .get(responder)
            .is_some_and(|p| p.ok == ok && !p.pending && (ok || p.detail == detail));
        if unchanged {
            return Vec::new();
        }
        let updated = self.store.update(id, |r| {
            r.results.insert(
                responder.to_string(),
                ResponderResult {
                    ok,
                    pending: false,
                    detail: detail.clone(),
                    at_ns: now_ns,
                },
            );
            r.settle(now_ns);
        });
        let r = match updated {
            Ok(r) => r,
            Err(error) => {
                tracing::error!(%error, "could not record a responder's outcome");
                return Vec::new();
            }
        };
        if r.state == before.state {
            return Vec::new();
        }
        if r.state == State::Applied
            && let Some(m) = &self.metrics
        {
            let secs = (now_ns - r.created_ns).max(0) as f64 / 1e9;
            m.apply_seconds.observe(secs);
        }
        vec![self.state_event(&r, now_ns)]
    }

    /// Records a responder's detail without changing the revocation's state (a removal).
    pub fn note(&self, id: &str, responder: &str, detail: String, now_ns: i64) {
        let res = self.store.update(id, |r| {
            let ok = r.results.get(responder).is_none_or(|p| p.ok);
            r.results.insert(
                responder.to_string(),
                ResponderResult {
                    ok,
                    pending: false,
                    detail,
                    at_ns: now_ns,
                },
            );
        });
        if let Err(error) = res {
            tracing::warn!(%error, "could not record a responder's removal");
        }
    }

    /// Revocations for alerts whose rule asks for one (`respond.action: revoke`).
    pub fn on_alerts(&self, alerts: &[Alert], now_ns: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        for a in alerts {
            let (Some(resp), Some(entity)) = (&a.respond, &a.entity) else {
                continue;
            };
            if resp.action != "revoke" || a.status != AlertStatus::Firing {
                continue;
            }
            let ttl_ns = parse_ttl_ns(&resp.ttl)
                .unwrap_or_else(|| i64::try_from(self.cfg.default_ttl_secs).unwrap_or(3600) * 1_000_000_000);
            let kind = if entity.kind == "request_principal" {
                "request_principal"
            } else {
                "principal"
            };
            let namespace = alert_namespace(a);
            let req = RevokeRequest {
                principal: &entity.value,
                kind,
                reason: &a.title,
                severity: a.severity,
                ttl_ns,
                alert: Some((&a.id, &a.rule_id)),
                namespace: namespace.as_deref(),
            };
            match self.revoke(&req, now_ns) {
                Ok(events) => out.extend(events),
                Err(error) => tracing::error!(%error, "could not record a revocation"),
            }
        }
        out
    }

    /// Expires what is due, retries failures, and starts verification of revocations whose
    /// grace period has passed. Returns the audit events.
    pub fn reconcile(&self, now_ns: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        match self.store.expire(now_ns) {
            Ok(expired) => {
                for r in expired {
                    self.remove_all(&r, "expired");
                    out.push(self.audit(&r, "expired", Severity::Info, "TTL reached", now_ns));
                }
            }
            Err(error) => tracing::error!(%error, "could not expire revocations"),
        }
        let grace = i64::try_from(self.cfg.grace_secs).unwrap_or(15) * 1_000_000_000;
        for r in self.store.active() {
            match r.state {
                State::Applied if r.mode == Mode::Enforce && r.applied_ns.unwrap_or(r.created_ns) + grace <= now_ns => {
                    (self.verify)(&r.principal, true)
                }
                State::Failed if r.mode != Mode::LogOnly && self.cfg.mode != Mode::LogOnly => {
                    let mut retried = r.clone();
                    self.apply_all(&mut retried, now_ns, true);
                    let results = retried.results;
                    match self.store.update(&r.id, |s| {
                        for (k, v) in results {
                            if !s.results.get(&k).is_some_and(|p| p.ok || p.pending) {
                                s.results.insert(k, v);
                            }
                        }
                        s.settle(now_ns);
                    }) {
                        Ok(updated) if updated.state != State::Failed => {
                            out.push(self.state_event(&updated, now_ns));
                        }
                        Ok(_) => {}
                        Err(error) => tracing::error!(%error, "could not record a retry"),
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn remove_all(&self, r: &Revocation, why: &str) {
        for resp in &self.responders {
            if let Err(e) = resp.remove(r) {
                tracing::warn!(responder = resp.name(), error = %e, "could not remove an {why} revocation");
            }
        }
        (self.verify)(&r.principal, false);
    }

    /// Lifts an active revocation by hand.
    pub fn lift(&self, id: &str, now_ns: i64) -> Result<Vec<Alert>, StoreError> {
        let r = self.store.update(id, |r| {
            if r.state.is_active() {
                r.state = State::Lifted;
            }
        })?;
        self.remove_all(&r, "lifted");
        Ok(vec![self.audit(
            &r,
            "lifted",
            Severity::Medium,
            "lifted by an operator",
            now_ns,
        )])
    }

    /// Re-applies what the store says is in force (after a restart). Deferred responders
    /// catch up on their own (the Istio responder lists what exists and compares).
    pub fn restore(&self, now_ns: i64) {
        for r in self.store.active() {
            if r.mode == Mode::Enforce && self.cfg.mode == Mode::Enforce && r.state == State::Applied {
                for resp in self.responders.iter().filter(|r| !r.deferred()) {
                    let _ = resp.apply(&r);
                }
            }
        }
        let _ = self.reconcile(now_ns);
    }

    /// Active revocations that deferred responders should have applied (not log-only).
    pub fn enforced(&self) -> Vec<Revocation> {
        self.store
            .active()
            .into_iter()
            .filter(|r| r.mode != Mode::LogOnly)
            .collect()
    }
}

/// The destination namespace an alert is about: its group's `destination_namespace`, else the
/// one namespace every piece of evidence's destination service (`svc.ns.svc.domain`) is in.
pub fn alert_namespace(a: &Alert) -> Option<String> {
    if let Some(Some(ns)) = a.group.get("destination_namespace") {
        return Some(ns.clone());
    }
    let mut found: Option<&str> = None;
    for e in &a.evidence {
        let ns = e.destination_service.as_deref().and_then(|s| {
            let mut parts = s.split('.');
            let (_svc, ns, kind) = (parts.next()?, parts.next()?, parts.next()?);
            (kind == "svc" && !ns.is_empty()).then_some(ns)
        })?;
        match found {
            Some(f) if f != ns => return None,
            _ => found = Some(ns),
        }
    }
    found.map(str::to_string)
}

/// `30s`, `5m`, `1h`, `1d` in nanoseconds.
pub fn parse_ttl_ns(s: &str) -> Option<i64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1_000_000_000)
}

/// Shared handle, for the pipeline and the admin API.
pub type SharedManager = Arc<Manager>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use verity_model::alert::Response;

    const S: i64 = 1_000_000_000;

    fn alert(principal: &str) -> Alert {
        Alert {
            id: "zt-rbac-denial-burst-01".into(),
            rule_id: "zt-rbac-denial-burst".into(),
            title: "RBAC denial burst".into(),
            severity: Severity::High,
            kind: "detection".into(),
            status: AlertStatus::Firing,
            tags: vec![],
            description: String::new(),
            group: BTreeMap::new(),
            count: 12,
            aggregates: BTreeMap::new(),
            window_start: None,
            window_end: None,
            first_seen: String::new(),
            last_seen: String::new(),
            evidence: vec![],
            entity: Some(Entity {
                kind: "source_principal".into(),
                value: principal.into(),
            }),
            respond: Some(Response {
                action: "revoke".into(),
                ttl: "1h".into(),
            }),
            summary: String::new(),
        }
    }

    type Verified = Arc<Mutex<Vec<(String, bool)>>>;

    fn manager(dir: &std::path::Path, mode: Mode) -> (Manager, DenyList, Verified) {
        let deny = DenyList::default();
        let verified = Arc::new(Mutex::new(Vec::new()));
        let v = verified.clone();
        let cfg = ControlConfig {
            mode,
            store_path: dir.join("revocations.json"),
            max_per_window: 2,
            grace_secs: 10,
            ..ControlConfig::default()
        };
        let m = Manager::open(
            cfg,
            vec![Box::new(DenyListResponder(deny.clone()))],
            Box::new(move |p, on| v.lock().unwrap().push((p.to_string(), on))),
        )
        .unwrap();
        (m, deny, verified)
    }

    #[test]
    fn validate_reports_every_problem_with_its_key() {
        assert!(ControlConfig::default().validate().is_empty());
        let bad = ControlConfig {
            ext_authz_listen: Some("localhost".into()),
            window_secs: 0,
            max_per_window: 0,
            reconcile_interval_secs: 0,
            istio: Some(crate::istio::IstioConfig {
                root_namespace: "Istio_System".into(),
                ..Default::default()
            }),
            ..ControlConfig::default()
        };
        let keys: Vec<String> = bad.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "control.ext_authz_listen",
                "control.window_secs",
                "control.istio.root_namespace",
                "control.max_per_window",
                "control.reconcile_interval_secs",
            ]
        );
    }

    #[test]
    fn enforce_applies_verifies_after_grace_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let (m, deny, verified) = manager(dir.path(), Mode::Enforce);
        let events = m.on_alerts(&[alert("spiffe://cluster.local/ns/shop/sa/cart")], 0);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].rule_id, "verity-revocation-applied");
        assert!(
            deny.check("cluster.local/ns/shop/sa/cart", 1).is_some(),
            "effective at once"
        );
        // The same alert again does not stack revocations.
        assert!(
            m.on_alerts(&[alert("spiffe://cluster.local/ns/shop/sa/cart")], S)
                .is_empty()
        );
        assert!(m.reconcile(5 * S).is_empty());
        assert!(verified.lock().unwrap().is_empty(), "still in its grace period");
        m.reconcile(11 * S);
        assert_eq!(
            verified.lock().unwrap()[0],
            ("cluster.local/ns/shop/sa/cart".to_string(), true)
        );
        let expired = m.reconcile(3600 * S);
        assert_eq!(expired[0].rule_id, "verity-revocation-expired");
        assert!(deny.check("cluster.local/ns/shop/sa/cart", 3600 * S).is_none());
        assert!(!verified.lock().unwrap().last().unwrap().1);
    }

    #[test]
    fn guardrails_and_log_only() {
        let dir = tempfile::tempdir().unwrap();
        let (m, deny, _) = manager(dir.path(), Mode::LogOnly);
        let e = m.on_alerts(&[alert("spiffe://cluster.local/ns/istio-system/sa/istiod")], 0);
        assert_eq!(e[0].rule_id, "verity-revocation-refused");
        let e = m.on_alerts(&[alert("spiffe://cluster.local/ns/a/sa/1")], 0);
        assert_eq!(e[0].rule_id, "verity-revocation-recorded");
        assert!(deny.is_empty(), "log-only applies nothing");
        m.on_alerts(&[alert("spiffe://cluster.local/ns/a/sa/2")], 0);
        let e = m.on_alerts(&[alert("spiffe://cluster.local/ns/a/sa/3")], 0);
        assert_eq!(e[0].rule_id, "verity-revocation-refused");
        assert_eq!(e[0].severity, Severity::Critical, "reaching the cap is an incident");
    }

    #[test]
    fn state_survives_a_restart_and_is_reapplied() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (m, _, _) = manager(dir.path(), Mode::Enforce);
            m.on_alerts(&[alert("spiffe://cluster.local/ns/shop/sa/cart")], 0);
        }
        let (m, deny, _) = manager(dir.path(), Mode::Enforce);
        assert!(deny.is_empty());
        m.restore(S);
        assert!(deny.check("cluster.local/ns/shop/sa/cart", 2 * S).is_some());
        let id = m.store().list()[0].id.clone();
        let e = m.lift(&id, 3 * S).unwrap();
        assert_eq!(e[0].rule_id, "verity-revocation-lifted");
        assert!(deny.is_empty());
        assert_eq!(parse_ttl_ns("90s"), Some(90 * S));
        assert_eq!(parse_ttl_ns("1h"), Some(3600 * S));
        assert_eq!(parse_ttl_ns("x"), None);
    }
}
