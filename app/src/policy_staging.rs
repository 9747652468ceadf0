//! Staging of candidate policies (docs/policy.md, "Staging and promotion"): every candidate is
//! applied to the cluster as dry-run at start, then promoted or demoted on the commands of the
//! shadow stage (automatic promotion and demotion) and of the admin API (`verity policy
//! promote`). Each action is an audit alert (`verity-policy-<action>`) and a metric.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::mpsc;
use verity_collector::pipeline::alerts::AlertBus;
use verity_collector::pipeline::policy_shadow::{CandidateBoard, StagingCommand};
use verity_control::istio::IstioController;
use verity_control::responder::ResponderError;
use verity_model::alert::{Alert, AlertStatus, Severity};

/// Commands waiting for the staging task, at most.
pub const COMMAND_CAPACITY: usize = 64;
/// Wait between attempts to stage a candidate the API server would not take.
const RETRY: Duration = Duration::from_secs(5);

type Labels = [(&'static str, &'static str); 2];

#[derive(Clone, Default)]
pub struct StagingMetrics {
    actions: Family<Labels, Counter>,
}

impl StagingMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "verity_policy_staging",
            "Candidate policies staged (applied as dry-run), promoted and demoted, by outcome (ok, failed)",
            m.actions.clone(),
        );
        m
    }

    fn count(&self, action: &'static str, ok: bool) {
        self.actions
            .get_or_create(&[("action", action), ("outcome", if ok { "ok" } else { "failed" })])
            .inc();
    }
}

pub struct Staging {
    pub controller: IstioController,
    /// `namespace/name` → the candidate as read from its file.
    pub candidates: HashMap<String, Value>,
    pub board: Arc<CandidateBoard>,
    pub alerts: Arc<AlertBus>,
    pub metrics: StagingMetrics,
}

impl Staging {
    /// Stages every candidate (retrying what the API server could not take yet), and serves
    /// commands meanwhile, until the drain.
    pub async fn run(self, mut commands: mpsc::Receiver<StagingCommand>, mut drain: verity_drain::Watcher) {
        let mut unstaged: Vec<String> = self.candidates.keys().cloned().collect();
        unstaged.sort();
        unstaged = self.adopt_promoted(unstaged).await;
        let mut retry = tokio::time::interval(RETRY);
        loop {
            tokio::select! {
                _ = retry.tick(), if !unstaged.is_empty() => {
                    let mut still = Vec::new();
                    for policy in unstaged {
                        match self.apply(&policy, "staged", true, "applied as dry-run for shadow evaluation").await {
                            Ok(()) => self.board.finish(&policy, false),
                            Err(e) if e.retry => still.push(policy),
                            // The API server refuses it for good (schema, admission, RBAC):
                            // audited, and not tried again until the next start.
                            Err(_) => {}
                        }
                    }
                    unstaged = still;
                }
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    self.serve(command, &unstaged).await;
                }
                () = drain.wait() => return,
            }
        }
    }

    /// Candidates a previous run promoted stay promoted (a restart must not undo a
    /// promotion); returns the others, to be staged.
    async fn adopt_promoted(&self, candidates: Vec<String>) -> Vec<String> {
        let mut rest = Vec::new();
        for policy in candidates {
            let live = match (self.candidates.get(&policy), policy.split_once('/')) {
                (Some(object), Some((ns, name))) => self
                    .controller
                    .get_candidate(ns, name)
                    .await
                    .ok()
                    .flatten()
                    .map(|l| (l, object)),
                _ => None,
            };
            match live {
                Some((live, object)) if IstioController::is_promoted_candidate(&live, object) => {
                    tracing::info!(policy, "candidate policy already promoted; kept enforced");
                    self.board.finish(&policy, true);
                }
                _ => rest.push(policy),
            }
        }
        rest
    }

    async fn serve(&self, command: StagingCommand, unstaged: &[String]) {
        let policy = command.policy().to_string();
        let (action, dry_run, reason) = match &command {
            StagingCommand::Promote { reason, .. } => ("promoted", false, reason.clone()),
            StagingCommand::Demote { reason, .. } => ("demoted", true, reason.clone()),
        };
        if unstaged.contains(&policy) {
            self.audit(
                &policy,
                "failed",
                Severity::Medium,
                &format!("{action}: not staged yet"),
            );
            self.metrics.count(action, false);
            self.board.fail(&policy);
            return;
        }
        // The state may have changed since the command was asked for.
        if !dry_run && self.board.state(&policy) == Some(verity_policy::shadow::ShadowState::Violated) {
            self.audit(
                &policy,
                "failed",
                Severity::Medium,
                "promotion refused: the candidate is violated",
            );
            self.metrics.count(action, false);
            self.board.fail(&policy);
            return;
        }
        match self.apply(&policy, action, dry_run, &reason).await {
            Ok(()) => self.board.finish(&policy, !dry_run),
            Err(_) => self.board.fail(&policy),
        }
    }

    /// Applies one candidate; audits and counts the outcome.
    async fn apply(
        &self,
        policy: &str,
        action: &'static str,
        dry_run: bool,
        reason: &str,
    ) -> Result<(), ResponderError> {
        let Some(object) = self.candidates.get(policy) else {
            self.audit(
                policy,
                "failed",
                Severity::Medium,
                &format!("{action}: {policy} is not a candidate"),
            );
            return Err(ResponderError::permanent("not a candidate"));
        };
        let result = self.controller.apply_candidate(object, dry_run).await;
        self.metrics.count(action, result.is_ok());
        match &result {
            Ok(()) => {
                tracing::info!(policy, action, reason, "candidate policy");
                let severity = if action == "demoted" {
                    Severity::High
                } else {
                    Severity::Info
                };
                self.audit(policy, action, severity, reason);
            }
            Err(e) => {
                tracing::warn!(policy, action, error = %e, "candidate policy not applied");
                self.audit(policy, "failed", Severity::Medium, &format!("{action}: {e}"));
            }
        }
        result
    }

    fn audit(&self, policy: &str, action: &str, severity: Severity, detail: &str) {
        let now = verity_model::time::now_ns();
        let at = verity_model::time::format_rfc3339_ns(now);
        let group = BTreeMap::from([("policy".to_string(), Some(policy.to_string()))]);
        let rule_id = format!("verity-policy-{action}");
        let alert = Alert {
            id: verity_model::alert::alert_id(&rule_id, &group, now, AlertStatus::Firing),
            rule_id,
            title: format!("Candidate policy {action}"),
            severity,
            kind: "audit".into(),
            status: AlertStatus::Firing,
            tags: vec!["least-privilege".into(), "verity.audit".into()],
            description: "A candidate AuthorizationPolicy staged, promoted or demoted by Verity.".into(),
            group,
            count: 1,
            aggregates: BTreeMap::new(),
            window_start: None,
            window_end: None,
            first_seen: at.clone(),
            last_seen: at,
            evidence: Vec::new(),
            entity: None,
            respond: None,
            summary: format!("candidate policy {policy} {action}: {detail}"),
        };
        let alerts = self.alerts.clone();
        // Spooling fsyncs: off the async workers.
        tokio::task::spawn_blocking(move || {
            if let Err(error) = alerts.publish(&[alert]) {
                tracing::error!(%error, "could not deliver a staging audit event");
            }
        });
    }
}
