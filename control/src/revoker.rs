//! Turns alerts that ask for a response into revocations, within the guardrails, applies them
//! through the responders, and keeps them in step with time: expiry at the TTL, retries of
//! failures, and, once a revocation has had a grace period to propagate, handing it to the
//! verification (the rules' `is_revoked()`), so traffic that still succeeds raises an alert.
//!
//! Every action (recorded, applied, failed, refused, review, expired, lifted) becomes an audit
//! event: an [`Alert`] of kind `audit`, so it reaches the same SIEM outputs as detections.

use std::collections::BTreeMap;
use std::sync::Arc;

use verity_model::alert::{Alert, AlertStatus, Entity, Severity};

use crate::config::ControlConfig;
use crate::evidence::{alert_namespace, alert_reporters, parse_ttl_ns};
use crate::guard::{Guardrails, Refusal};
use crate::metrics::ControlMetrics;
use crate::replica::Replica;
use crate::responder::{Responder, ResponderError};
use crate::store::{Feed, Store, StoreError};
use crate::{Mode, ResponderResult, Revocation, State, normalize_principal, revocation_id};

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
    /// Already refused (by the evidence check); recorded as such with this reason.
    pub refusal: Option<Refusal>,
    /// The senders whose telemetry backs it (rule-driven revocations).
    pub reporters: &'a [String],
}

/// Which responders [`Revoker::apply_all`] runs.
#[derive(Clone, Copy)]
enum Which {
    /// Every one (a new revocation).
    All,
    /// Those whose last result was a retryable failure and that do not retry on their own.
    Failed,
    /// After a restart: all but those that resume on their own what they were given.
    Restore,
}

/// What [`Revoker::revoke`] did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The audit events to deliver.
    pub events: Vec<Alert>,
    /// Why no revocation was made, if one was refused.
    pub refusal: Option<Refusal>,
}

/// Called when a principal enters verification (`is_revoked()` in rules) with the time from
/// which its traffic counts (`Some(ns)`: applied plus the grace period), or leaves it (`None`).
pub type VerifyHook = Box<dyn Fn(&str, Option<i64>) + Send + Sync>;

/// Decides, applies, expires and verifies revocations (see the module docs).
pub struct Revoker {
    cfg: ControlConfig,
    store: Store,
    guard: Guardrails,
    responders: Vec<Box<dyn Responder>>,
    verify: VerifyHook,
    metrics: Option<ControlMetrics>,
    audit_sink: Option<AuditSink>,
    /// Other instances' revocations in force (empty unless revocations are shared).
    replica: Replica,
    /// Where this instance's revocations are shared, if they are.
    feed: Option<Feed>,
}

/// Where audit events that arise outside a caller's request go (a responder's late outcome).
pub type AuditSink = Box<dyn Fn(Vec<Alert>) + Send + Sync>;

fn ns_to_rfc3339(ns: i64) -> String {
    verity_model::time::format_rfc3339_ns(ns)
}

impl Revoker {
    pub fn open(
        cfg: ControlConfig,
        responders: Vec<Box<dyn Responder>>,
        verify: VerifyHook,
    ) -> Result<Self, StoreError> {
        let store = Store::open(&cfg.store_path)?;
        let guard = Guardrails::new(&cfg);
        Ok(Self {
            cfg,
            store,
            guard,
            responders,
            verify,
            metrics: None,
            audit_sink: None,
            replica: Replica::default(),
            feed: None,
        })
    }

    pub fn with_metrics(mut self, metrics: ControlMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Audit events from responders that report later go here (the SIEM outputs).
    pub fn with_audit_sink(mut self, sink: AuditSink) -> Self {
        self.audit_sink = Some(sink);
        self
    }

    /// Hands audit events to the audit sink, if there is one.
    pub fn audit_out(&self, events: Vec<Alert>) {
        if let (Some(sink), false) = (&self.audit_sink, events.is_empty()) {
            sink(events);
        }
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

    /// The audit event for a refused revocation, counted by reason.
    fn refused(&self, r: &Revocation, refusal: &Refusal, now_ns: i64) -> Alert {
        let (action, sev) = match refusal {
            // Too many revocations at once is itself an incident, and so is an attempt to
            // revoke a wildcard: telemetry built to make Verity deny everyone.
            Refusal::Cap { .. }
            | Refusal::NamespaceCap { .. }
            | Refusal::ReporterCap { .. }
            | Refusal::NotAnIdentity { .. } => ("refused", Severity::Critical),
            // A person has to look: the alert is real, but who to cut off is not clear.
            Refusal::Intermediary { .. } => ("review", Severity::High),
            _ => ("refused", Severity::Medium),
        };
        if let Some(m) = &self.metrics {
            m.refusal(refusal.reason());
        }
        tracing::warn!(principal = %r.principal, %refusal, "revocation not made");
        self.audit(r, action, sev, &refusal.to_string(), now_ns)
    }

    /// Creates a revocation (from an alert or by hand) within the guardrails; returns the
    /// audit events and, if it was refused, why.
    pub fn revoke(&self, req: &RevokeRequest<'_>, now_ns: i64) -> Result<Outcome, StoreError> {
        let principal = normalize_principal(req.principal).to_string();
        if self.active_for(&principal).is_some() {
            return Ok(Outcome::default());
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
        let origin = if req.alert.is_some() {
            crate::guard::Origin::Rule
        } else {
            crate::guard::Origin::Operator
        };
        let admitted = crate::guard::check_identity(req.kind, &principal)
            .and_then(|()| req.refusal.clone().map_or(Ok(()), Err))
            .and_then(|()| {
                self.guard
                    .admit_reported(&principal, req.namespace, req.severity, origin, req.reporters, now_ns)
            });
        if let Err(refusal) = admitted {
            return Ok(Outcome {
                events: vec![self.refused(&r, &refusal, now_ns)],
                refusal: Some(refusal),
            });
        }
        let mut events = Vec::new();
        if self.cfg.mode == Mode::LogOnly {
            r.results.insert(
                "log_only".into(),
                ResponderResult::ok("recorded; mode log_only applies nothing".into(), now_ns),
            );
            self.store.put(r.clone())?;
            events.push(self.audit(&r, "recorded", Severity::Info, "log-only: not enforced", now_ns));
        } else {
            let started = std::time::Instant::now();
            self.apply_all(&mut r, now_ns, Which::All);
            r.settle(now_ns);
            if r.state == State::Applied
                && let Some(m) = &self.metrics
            {
                m.apply_seconds.observe(started.elapsed().as_secs_f64());
            }
            if let Err(error) = self.store.put(r.clone()) {
                // Not recorded: undo what the responders did, so nothing is enforced that the
                // store (and so expiry and lifting) does not know about.
                for resp in &self.responders {
                    let _ = resp.remove(&r);
                }
                return Err(error);
            }
            for resp in &self.responders {
                resp.stored(&r.id);
            }
            events.push(self.state_event(&r, now_ns));
        }
        tracing::info!(principal = %r.principal, id = %r.id, state = ?r.state, "revocation recorded");
        Ok(Outcome { events, refusal: None })
    }

    /// Runs the responders `which` selects, in this revocation's mode, recording their results.
    fn apply_all(&self, r: &mut Revocation, now_ns: i64, which: Which) {
        let dry_run = r.mode == Mode::DryRun;
        for resp in &self.responders {
            let previous = r.results.get(resp.name());
            let skip = match which {
                Which::All => false,
                Which::Failed => resp.retries_itself() || previous.is_some_and(|p| p.ok || p.pending || p.permanent),
                // A responder that keeps its own durable state (Istio compares with what
                // exists; the webhook's spool) resumes on its own what it was given.
                Which::Restore => resp.retries_itself() && previous.is_some(),
            };
            if skip {
                continue;
            }
            let result = if dry_run && !resp.supports_dry_run() {
                ResponderResult::ok("dry-run: not applied".into(), now_ns)
            } else {
                ResponderResult::from_apply(resp.apply(r), now_ns)
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

    /// The outcome from a responder that answered [`Applied::Later`]. Returns the audit event
    /// when the revocation's state changes: applied once every responder has applied it,
    /// failed the first time a responder reports a failure (later failures of the same kind
    /// are retried quietly).
    pub fn confirm(
        &self,
        id: &str,
        responder: &str,
        outcome: Result<String, ResponderError>,
        now_ns: i64,
    ) -> Vec<Alert> {
        let Some(before) = self.store.get(id) else {
            return Vec::new();
        };
        if !before.state.is_active() {
            return Vec::new();
        }
        let ok = outcome.is_ok();
        let permanent = outcome.as_ref().is_err_and(|e| !e.retry);
        let detail = match outcome {
            Ok(d) => d,
            Err(e) => e.detail,
        };
        let unchanged = before
            .results
            .get(responder)
            .is_some_and(|p| p.ok == ok && !p.pending && (ok || p.detail == detail));
        if unchanged {
            return Vec::new();
        }
        let updated = self.store.update(id, |r| {
            // Lifted or expired meanwhile: a late answer does not bring it back.
            if !r.state.is_active() {
                return;
            }
            r.results.insert(
                responder.to_string(),
                ResponderResult {
                    ok,
                    pending: false,
                    permanent,
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
        if r.state == before.state || !r.state.is_active() {
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
                    permanent: false,
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
            let Some(resp) = &a.respond else {
                continue;
            };
            if resp.action != "revoke" || a.status != AlertStatus::Firing {
                continue;
            }
            let Some(entity) = &a.entity else {
                continue;
            };
            let ttl_ns = parse_ttl_ns(&resp.ttl).unwrap_or_else(|| {
                i64::try_from(self.cfg.default_ttl_secs)
                    .unwrap_or(3600)
                    .saturating_mul(1_000_000_000)
            });
            // An intermediary is never the target; the evidence must be good enough to act on.
            let (target, refusal) = match crate::evidence::target(a, &self.cfg) {
                Some(Ok(t)) => {
                    let refusal = crate::evidence::check(a, &t, &self.cfg).err();
                    (t, refusal)
                }
                Some(Err(refusal)) => (
                    crate::evidence::Target {
                        kind: "principal",
                        principal: entity.value.clone(),
                    },
                    Some(refusal),
                ),
                None => continue,
            };
            let namespace = alert_namespace(a);
            let reporters = alert_reporters(a);
            let req = RevokeRequest {
                principal: &target.principal,
                kind: target.kind,
                reason: &a.title,
                severity: a.severity,
                ttl_ns,
                alert: Some((&a.id, &a.rule_id)),
                namespace: namespace.as_deref(),
                refusal,
                reporters: &reporters,
            };
            match self.revoke(&req, now_ns) {
                Ok(outcome) => out.extend(outcome.events),
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
        let grace = i64::try_from(self.cfg.grace_secs)
            .unwrap_or(15)
            .saturating_mul(1_000_000_000);
        self.reconcile_replica(grace, now_ns);
        for r in self.store.active() {
            let effective = r.applied_ns.unwrap_or(r.created_ns).saturating_add(grace);
            match r.state {
                State::Applied if r.mode == Mode::Enforce && effective <= now_ns => {
                    (self.verify)(&r.principal, Some(effective))
                }
                State::Failed if r.mode != Mode::LogOnly && self.cfg.mode != Mode::LogOnly => {
                    let mut retried = r.clone();
                    self.apply_all(&mut retried, now_ns, Which::Failed);
                    let results = retried.results;
                    match self.store.update(&r.id, |s| {
                        if !s.state.is_active() {
                            return;
                        }
                        for (k, v) in results {
                            if !s.results.get(&k).is_some_and(|p| p.ok || p.pending) {
                                s.results.insert(k, v);
                            }
                        }
                        s.settle(now_ns);
                    }) {
                        Ok(updated) if updated.state != State::Failed && updated.state.is_active() => {
                            out.push(self.state_event(&updated, now_ns));
                        }
                        Ok(_) => {}
                        Err(error) => tracing::error!(%error, "could not record a retry"),
                    }
                    for resp in &self.responders {
                        resp.stored(&r.id);
                    }
                }
                // A responder that could not take it yet (a full queue) gets it again.
                State::Pending if r.mode != Mode::LogOnly => {
                    for resp in &self.responders {
                        resp.stored(&r.id);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Removes `r` from every responder, unless a newer revocation of the same principal is
    /// still in force (lifting or expiring an old one must not undo it).
    fn remove_all(&self, r: &Revocation, why: &str) {
        if let Some(newer) = self.active_for(&r.principal).filter(|n| n.id != r.id) {
            tracing::info!(old = %r.id, newer = %newer.id, "{why} revocation superseded; the newer one stays in force");
            self.reapply_here(&newer);
            return;
        }
        for resp in &self.responders {
            if let Err(e) = resp.remove(r) {
                tracing::warn!(responder = resp.name(), error = %e, "could not remove an {why} revocation");
            }
        }
        (self.verify)(&r.principal, None);
    }

    /// Lifts an active revocation by hand. Lifting one that is no longer in force changes
    /// nothing (and never removes a newer revocation of the same principal).
    pub fn lift(&self, id: &str, now_ns: i64) -> Result<Vec<Alert>, StoreError> {
        self.lift_as(id, now_ns, "lifted by an operator")
    }

    /// [`Revoker::lift`], audited with `detail`. Another instance's revocation is lifted
    /// through the shared topic: its owner removes it from the control plane.
    fn lift_as(&self, id: &str, now_ns: i64, detail: &str) -> Result<Vec<Alert>, StoreError> {
        if self.store.get(id).is_none()
            && let Some(events) = self.lift_replicated(id, now_ns)
        {
            return Ok(events);
        }
        let was_active = self.store.get(id).is_some_and(|r| r.state.is_active());
        let r = self.store.update(id, |r| {
            if r.state.is_active() {
                r.state = State::Lifted;
            }
        })?;
        if !was_active {
            return Ok(Vec::new());
        }
        self.remove_all(&r, "lifted");
        Ok(vec![self.audit(&r, "lifted", Severity::Medium, detail, now_ns)])
    }

    /// After a restart: hands every revocation in force (applied, pending or failed) to every
    /// responder again, so nothing the store holds is missing from any of them. A responder
    /// that keeps its own state durable (Istio lists what exists and compares; the webhook
    /// delivers from its spool) resumes on its own what it had been given.
    pub fn restore(&self, now_ns: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        if self.cfg.mode != Mode::LogOnly {
            for r in self.store.active().into_iter().filter(|r| r.mode != Mode::LogOnly) {
                let mut again = r.clone();
                self.apply_all(&mut again, now_ns, Which::Restore);
                let results = again.results;
                match self.store.update(&r.id, |s| {
                    if s.state.is_active() {
                        s.results = results;
                        s.settle(now_ns);
                    }
                }) {
                    Ok(updated) if updated.state != r.state && updated.state.is_active() => {
                        out.push(self.state_event(&updated, now_ns))
                    }
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, id = %r.id, "could not record a restored revocation"),
                }
                for resp in &self.responders {
                    resp.stored(&r.id);
                }
            }
        }
        out.extend(self.reconcile(now_ns));
        out
    }

    /// Active revocations that deferred responders should have applied (not log-only),
    /// this instance's and those other instances share.
    pub fn enforced(&self) -> Vec<Revocation> {
        let own = self.store.active();
        // This instance's revocation of a principal wins over another's: Istio names a policy
        // by principal, and confirms it to the revocation listed.
        let others: Vec<Revocation> = self
            .replica
            .active()
            .into_iter()
            .filter(|r| !own.iter().any(|o| o.principal == r.principal))
            .collect();
        own.into_iter()
            .chain(others)
            .filter(|r| r.mode != Mode::LogOnly)
            .collect()
    }

    /// Every revocation this instance holds, then those in force that other instances share.
    pub fn list(&self) -> Vec<Revocation> {
        let mut all = self.store.list();
        all.extend(self.replica.active());
        all
    }

    /// A revocation by id, this instance's or a shared one in force.
    pub fn get(&self, id: &str) -> Option<Revocation> {
        self.store.get(id).or_else(|| self.replica.get(id))
    }

    /// The revocation of `principal` in force, this instance's or a shared one.
    pub fn active_for(&self, principal: &str) -> Option<Revocation> {
        self.store
            .active_for(principal)
            .or_else(|| self.replica.active_for(principal))
    }
}

/// Shared handle, for the pipeline and the admin API.
pub type SharedRevoker = Arc<Revoker>;

#[path = "revoker_shared.rs"]
mod shared;

#[cfg(test)]
#[path = "revoker_tests.rs"]
mod tests;
