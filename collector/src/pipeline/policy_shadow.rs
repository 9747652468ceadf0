//! The shadow-mode stage: candidate AuthorizationPolicies judged on every event batch
//! ([`verity_policy::shadow`]). Each candidate's state is a gauge, each request's outcome for
//! it a counter, and each change of state an alert on the bus.
//!
//! Label values are the candidates' `namespace/name` (from configuration, not traffic) and the
//! state and outcome enums.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use verity_policy::shadow::{ShadowAssertions, ShadowOutcome, ShadowState};
use verity_sinks::Held;

use crate::pipeline::alerts::AlertBus;
use crate::pipeline::{Batch, Stage, StageError};

type Labels = [(&'static str, String); 2];

#[derive(Clone, Default)]
pub struct ShadowMetrics {
    state: Family<Labels, Gauge>,
    requests: Family<Labels, Counter>,
    holding_since: Family<[(&'static str, String); 1], Gauge>,
}

impl ShadowMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "verity_policy_shadow_state",
            "Candidate policies' shadow assertions: 1 for each candidate's current state (holding, violated, unknown)",
            m.state.clone(),
        );
        registry.register(
            "verity_policy_shadow_requests",
            "Legitimate requests a candidate applies to, by what it would do (allowed, would_deny, unknown)",
            m.requests.clone(),
        );
        registry.register(
            "verity_policy_shadow_holding_since_seconds",
            "Event time (Unix seconds) a holding candidate has held since; 0 when not holding",
            m.holding_since.clone(),
        );
        m
    }
}

/// What staging is asked to do with a candidate (applied through the Kubernetes API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagingCommand {
    /// Remove the dry-run annotation: the candidate is enforced.
    Promote { policy: String, reason: String },
    /// Put the dry-run annotation back.
    Demote { policy: String, reason: String },
}

impl StagingCommand {
    pub fn policy(&self) -> &str {
        match self {
            StagingCommand::Promote { policy, .. } | StagingCommand::Demote { policy, .. } => policy,
        }
    }
}

/// The candidates as the shadow stage judges them and staging applies them: shared by the
/// stage (states), the staging task (promoted) and the admin API (which refuses to promote a
/// violated candidate).
#[derive(Debug, Default)]
pub struct CandidateBoard {
    inner: Mutex<BoardInner>,
}

#[derive(Debug, Default)]
struct BoardInner {
    states: HashMap<String, ShadowState>,
    promoted: HashSet<String>,
    /// A command is on its way for these.
    pending: HashSet<String>,
    /// When a command for these last failed: automatic ones wait [`AUTO_RETRY`] before trying
    /// again.
    failed: HashMap<String, std::time::Instant>,
}

/// How long automatic promotion or demotion waits after a failed attempt.
pub const AUTO_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

impl CandidateBoard {
    fn lock(&self) -> MutexGuard<'_, BoardInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The candidate's state, `None` for a policy that is not a candidate.
    pub fn state(&self, policy: &str) -> Option<ShadowState> {
        self.lock().states.get(policy).copied()
    }

    pub fn is_promoted(&self, policy: &str) -> bool {
        self.lock().promoted.contains(policy)
    }

    /// Marks a command as on its way; false when one already is.
    pub fn begin(&self, policy: &str) -> bool {
        self.lock().pending.insert(policy.to_string())
    }

    /// Like [`CandidateBoard::begin`], for automatic commands: also false within
    /// [`AUTO_RETRY`] of a failure.
    pub fn begin_auto(&self, policy: &str) -> bool {
        let mut inner = self.lock();
        if inner.failed.get(policy).is_some_and(|t| t.elapsed() < AUTO_RETRY) {
            return false;
        }
        inner.pending.insert(policy.to_string())
    }

    /// Names every promoted candidate.
    pub fn promoted(&self) -> HashSet<String> {
        self.lock().promoted.clone()
    }

    /// A command finished: the candidate is now promoted or not.
    pub fn finish(&self, policy: &str, promoted: bool) {
        let mut inner = self.lock();
        inner.pending.remove(policy);
        if promoted {
            inner.promoted.insert(policy.to_string());
        } else {
            inner.promoted.remove(policy);
        }
    }

    /// A command was not sent: nothing changed.
    pub fn abandon(&self, policy: &str) {
        self.lock().pending.remove(policy);
    }

    /// A command failed: nothing changed, and automatic commands wait a while.
    pub fn fail(&self, policy: &str) {
        let mut inner = self.lock();
        inner.pending.remove(policy);
        inner.failed.insert(policy.to_string(), std::time::Instant::now());
    }
}

/// What the shadow stage asks of staging by itself.
pub struct AutoStaging {
    pub board: Arc<CandidateBoard>,
    pub commands: tokio::sync::mpsc::Sender<StagingCommand>,
    /// Promote a candidate once it has held this long in event time; 0: only on command.
    pub promote_after_ns: i64,
    /// Demote a promoted candidate that is violated.
    pub demote_on_violation: bool,
}

pub struct PolicyShadowStage {
    shadow: ShadowAssertions,
    staging: Option<AutoStaging>,
    alerts: Arc<AlertBus>,
    metrics: ShadowMetrics,
    held: Option<Held>,
    /// Alerts not yet published because earlier ones are held.
    pending: Vec<verity_model::Alert>,
}

/// Alerts waiting behind held ones, at most.
const MAX_PENDING: usize = 10_000;

impl PolicyShadowStage {
    pub fn new(shadow: ShadowAssertions, alerts: Arc<AlertBus>, metrics: ShadowMetrics) -> Self {
        let stage = Self {
            shadow,
            staging: None,
            alerts,
            metrics,
            held: None,
            pending: Vec::new(),
        };
        stage.export_states();
        stage
    }

    /// Shares the candidates' states with staging, which the stage asks to promote and demote.
    pub fn with_staging(mut self, staging: AutoStaging) -> Self {
        self.staging = Some(staging);
        self.share_states();
        self
    }

    fn share_states(&self) {
        let Some(staging) = &self.staging else { return };
        let mut inner = staging.board.lock();
        for c in self.shadow.candidates() {
            inner.states.insert(c.policy.clone(), c.state);
        }
    }

    /// Promotes what has held long enough and demotes what is violated, as configured.
    fn ask_staging(&self) {
        let Some(staging) = &self.staging else { return };
        let watermark = self.shadow.watermark_ns();
        for c in self.shadow.candidates() {
            let promoted = staging.board.is_promoted(&c.policy);
            let command = match (c.state, c.holding_since_ns, watermark) {
                (ShadowState::Holding, Some(since), Some(now))
                    if staging.promote_after_ns > 0
                        && !promoted
                        && now.saturating_sub(since) >= staging.promote_after_ns =>
                {
                    StagingCommand::Promote {
                        policy: c.policy.clone(),
                        reason: format!(
                            "held for {} s of event time with {} legitimate requests",
                            now.saturating_sub(since) / 1_000_000_000,
                            c.allowed
                        ),
                    }
                }
                (ShadowState::Violated, _, _) if staging.demote_on_violation && promoted => StagingCommand::Demote {
                    policy: c.policy.clone(),
                    reason: format!(
                        "violated: would deny legitimate traffic ({} requests so far)",
                        c.would_deny
                    ),
                },
                _ => continue,
            };
            if staging.board.begin_auto(&c.policy) && staging.commands.try_send(command).is_err() {
                // Staging is busy or gone: the next batch asks again.
                staging.board.abandon(&c.policy);
            }
        }
    }

    fn export_states(&self) {
        for c in self.shadow.candidates() {
            for state in ShadowState::ALL {
                self.metrics
                    .state
                    .get_or_create(&[("policy", c.policy.clone()), ("state", state.as_str().to_string())])
                    .set(i64::from(c.state == state));
            }
            let since = c.holding_since_ns.map_or(0, |ns| ns / 1_000_000_000);
            self.metrics
                .holding_since
                .get_or_create(&[("policy", c.policy.clone())])
                .set(since);
        }
    }

    /// Publishes alerts. While a spool cannot take earlier ones, new ones wait behind them
    /// (in order, up to [`MAX_PENDING`]; past that the oldest are given up, logged).
    fn publish(&mut self, alerts: Vec<verity_model::Alert>) {
        self.pending.extend(alerts);
        if self.pending.len() > MAX_PENDING {
            let excess = self.pending.len() - MAX_PENDING;
            self.pending.drain(..excess);
            tracing::error!(
                dropped = excess,
                "shadow-policy alerts given up: a spool has refused them for too long"
            );
        }
        if let Some(held) = self.held.take()
            && let Err(still) = self.alerts.retry_held(held)
        {
            self.held = Some(still);
            return;
        }
        if self.pending.is_empty() {
            return;
        }
        let alerts = std::mem::take(&mut self.pending);
        if let Err(held) = self.alerts.publish_or_hold(&alerts) {
            tracing::warn!(error = %held.error, "a spool cannot take shadow-policy alerts yet; retried with the next batch");
            self.held = Some(held);
        }
    }
}

impl Stage for PolicyShadowStage {
    fn name(&self) -> &'static str {
        "policy_shadow"
    }

    fn process(&mut self, batch: &Batch) -> Result<(), StageError> {
        let Batch::Events(events) = batch else {
            return Ok(());
        };
        if let Some(staging) = &self.staging {
            let promoted = staging.board.promoted();
            let names: Vec<(String, bool)> = self
                .shadow
                .candidates()
                .iter()
                .map(|c| (c.policy.clone(), promoted.contains(&c.policy)))
                .collect();
            for (policy, is_promoted) in names {
                self.shadow.set_promoted(&policy, is_promoted);
            }
        }
        // Counted per batch, then added: no label strings per request.
        let mut counts = vec![[0u64; 3]; self.shadow.candidates().len()];
        let alerts = self.shadow.process(events, |i, outcome: ShadowOutcome| {
            if let Some(c) = counts.get_mut(i) {
                let k = ShadowOutcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
                c[k % 3] += 1;
            }
        });
        for (candidate, c) in self.shadow.candidates().iter().zip(&counts) {
            for (outcome, n) in ShadowOutcome::ALL.iter().zip(c) {
                if *n > 0 {
                    self.metrics
                        .requests
                        .get_or_create(&[
                            ("policy", candidate.policy.clone()),
                            ("outcome", outcome.as_str().to_string()),
                        ])
                        .inc_by(*n);
                }
            }
        }
        self.export_states();
        self.share_states();
        self.publish(alerts);
        self.ask_staging();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        self.publish(Vec::new());
        let pending = self.pending.len();
        if let Some(held) = self.held.take() {
            let error = self.alerts.drop_held(held);
            return Err(StageError::Other {
                stage: "policy_shadow",
                message: format!("shadow-policy alerts not spooled ({pending} more waiting): {error}"),
            });
        }
        Ok(())
    }
}
