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
use crate::{ResponderResult, Revocation, State, normalize_principal, revocation_id};

/// What Verity does with a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Record and audit only; nothing is enforced (the embedded default).
    #[default]
    LogOnly,
    /// Apply through the responders (the ext_authz deny list takes effect at once).
    Enforce,
}

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
    pub window_secs: u64,
    pub min_severity: Severity,
    /// After being applied, a revocation is verified from traffic once this has passed.
    pub grace_secs: u64,
    /// Used when a rule's `respond` has no TTL.
    pub default_ttl_secs: u64,
    /// Serve `envoy.service.auth.v3.Authorization` here (`ip:port`); unset: no ext_authz.
    pub ext_authz_listen: Option<String>,
    /// How often expiry, retries and verification are checked.
    pub reconcile_interval_secs: u64,
    /// Also send each revocation and removal, signed, to this webhook.
    pub webhook: Option<crate::webhook::WebhookConfig>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            mode: Mode::LogOnly,
            store_path: "verity-data/revocations.json".into(),
            protected: DEFAULT_PROTECTED.iter().map(|s| s.to_string()).collect(),
            max_per_window: 10,
            window_secs: 600,
            min_severity: Severity::High,
            grace_secs: 15,
            default_ttl_secs: 3600,
            ext_authz_listen: None,
            reconcile_interval_secs: 1,
            webhook: None,
        }
    }
}

/// Something that enforces revocations (the ext_authz deny list, a webhook, Istio).
pub trait Responder: Send + Sync {
    fn name(&self) -> &'static str;
    fn apply(&self, r: &Revocation) -> Result<String, String>;
    fn remove(&self, r: &Revocation) -> Result<String, String>;
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

type Counters = prometheus_client::metrics::family::Family<
    Vec<(&'static str, &'static str)>,
    prometheus_client::metrics::counter::Counter,
>;

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
    #[allow(clippy::too_many_arguments)]
    pub fn revoke(
        &self,
        principal: &str,
        kind: &str,
        reason: &str,
        severity: Severity,
        ttl_ns: i64,
        alert: Option<(&str, &str)>,
        now_ns: i64,
    ) -> Result<Vec<Alert>, StoreError> {
        let principal = normalize_principal(principal).to_string();
        if self.store.active_for(&principal).is_some() {
            return Ok(Vec::new());
        }
        let mut r = Revocation {
            id: revocation_id(&principal, now_ns),
            kind: kind.to_string(),
            principal: principal.clone(),
            reason: reason.to_string(),
            alert_id: alert.map(|(id, _)| id.to_string()),
            rule_id: alert.map(|(_, rule)| rule.to_string()),
            created_ns: now_ns,
            expires_ns: now_ns.saturating_add(ttl_ns),
            state: State::Pending,
            results: BTreeMap::new(),
        };
        if let Err(refusal) = self.guard.admit(&principal, severity, now_ns) {
            let sev = match refusal {
                // Too many revocations at once is itself an incident.
                Refusal::Cap { .. } => Severity::Critical,
                _ => Severity::Medium,
            };
            tracing::warn!(%principal, %refusal, "revocation refused by a guardrail");
            return Ok(vec![self.audit(&r, "refused", sev, &refusal.to_string(), now_ns)]);
        }
        let mut events = Vec::new();
        match self.cfg.mode {
            Mode::LogOnly => {
                r.results.insert(
                    "log_only".into(),
                    ResponderResult {
                        ok: true,
                        detail: "recorded; mode log_only applies nothing".into(),
                        at_ns: now_ns,
                    },
                );
                self.store.put(r.clone())?;
                events.push(self.audit(&r, "recorded", Severity::Info, "log-only: not enforced", now_ns));
            }
            Mode::Enforce => {
                let started = std::time::Instant::now();
                let mut failed = Vec::new();
                for resp in &self.responders {
                    let result = resp.apply(&r);
                    if let Err(e) = &result {
                        failed.push(format!("{}: {e}", resp.name()));
                    }
                    r.results.insert(
                        resp.name().to_string(),
                        ResponderResult {
                            ok: result.is_ok(),
                            detail: result.unwrap_or_else(|e| e),
                            at_ns: now_ns,
                        },
                    );
                }
                r.state = if failed.is_empty() {
                    State::Applied
                } else {
                    State::Failed
                };
                if let Some(m) = &self.metrics
                    && failed.is_empty()
                {
                    m.apply_seconds.observe(started.elapsed().as_secs_f64());
                }
                self.store.put(r.clone())?;
                events.push(if failed.is_empty() {
                    self.audit(&r, "applied", Severity::High, "enforced by every responder", now_ns)
                } else {
                    self.audit(&r, "failed", Severity::High, &failed.join("; "), now_ns)
                });
            }
        }
        tracing::info!(principal = %r.principal, id = %r.id, state = ?r.state, "revocation recorded");
        Ok(events)
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
            match self.revoke(
                &entity.value,
                kind,
                &a.title,
                a.severity,
                ttl_ns,
                Some((&a.id, &a.rule_id)),
                now_ns,
            ) {
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
                    for resp in &self.responders {
                        if let Err(e) = resp.remove(&r) {
                            tracing::warn!(responder = resp.name(), error = %e, "could not remove an expired revocation");
                        }
                    }
                    (self.verify)(&r.principal, false);
                    out.push(self.audit(&r, "expired", Severity::Info, "TTL reached", now_ns));
                }
            }
            Err(error) => tracing::error!(%error, "could not expire revocations"),
        }
        let grace = i64::try_from(self.cfg.grace_secs).unwrap_or(15) * 1_000_000_000;
        for r in self.store.active() {
            match r.state {
                State::Applied if r.created_ns + grace <= now_ns => (self.verify)(&r.principal, true),
                State::Failed if self.cfg.mode == Mode::Enforce => {
                    let mut failed = Vec::new();
                    for resp in &self.responders {
                        if let Err(e) = resp.apply(&r) {
                            failed.push(format!("{}: {e}", resp.name()));
                        }
                    }
                    if failed.is_empty()
                        && let Ok(r) = self.store.update(&r.id, |r| r.state = State::Applied)
                    {
                        out.push(self.audit(&r, "applied", Severity::High, "applied on retry", now_ns));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Lifts an active revocation by hand.
    pub fn lift(&self, id: &str, now_ns: i64) -> Result<Vec<Alert>, StoreError> {
        let r = self.store.update(id, |r| {
            if r.state.is_active() {
                r.state = State::Lifted;
            }
        })?;
        for resp in &self.responders {
            if let Err(e) = resp.remove(&r) {
                tracing::warn!(responder = resp.name(), error = %e, "could not remove a lifted revocation");
            }
        }
        (self.verify)(&r.principal, false);
        Ok(vec![self.audit(
            &r,
            "lifted",
            Severity::Medium,
            "lifted by an operator",
            now_ns,
        )])
    }

    /// Re-applies what the store says is in force (after a restart).
    pub fn restore(&self, now_ns: i64) {
        for r in self.store.active() {
            if self.cfg.mode == Mode::Enforce && r.state == State::Applied {
                for resp in &self.responders {
                    let _ = resp.apply(&r);
                }
            }
        }
        let _ = self.reconcile(now_ns);
    }
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
