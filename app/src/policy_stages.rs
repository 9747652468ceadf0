//! The least-privilege stages, built from the `policy` section: shadow mode (candidates judged
//! on live traffic, optionally staged in the cluster and promoted), and live drift (the
//! policies in force, rule by rule). See docs/policy.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tracing::Instrument;
use verity_collector::pipeline::Stage;
use verity_collector::pipeline::alerts::AlertBus;
use verity_collector::pipeline::policy_drift::{DriftMetrics, InForceUpdates, PolicyDriftStage};
use verity_collector::pipeline::policy_learn::{LearnedEdges, PolicyLearnStage};
use verity_collector::pipeline::policy_shadow::{
    AutoStaging, CandidateBoard, PolicyShadowStage, ShadowMetrics, StagingCommand,
};
use verity_policy::shadow::ShadowAssertions;
use verity_policy::{AuthorizationPolicy, Inventory, PolicySet};

use crate::config::Settings;
use crate::policy_staging::{COMMAND_CAPACITY, Staging, StagingMetrics};
use crate::wiring::AppError;

/// What the admin API needs to promote a candidate.
pub struct StagingApi {
    pub board: Arc<CandidateBoard>,
    pub commands: tokio::sync::mpsc::Sender<StagingCommand>,
}

pub struct PolicyStages {
    pub stages: Vec<Box<dyn Stage>>,
    pub staging: Option<StagingApi>,
    /// What live learning has seen, for the admin API.
    pub learned: Option<Arc<LearnedEdges>>,
}

/// Builds the configured stages; staging runs as a control task.
pub async fn build(
    settings: &Settings,
    registry: &mut Registry,
    alerts: &Arc<AlertBus>,
    control_tasks: &mut verity_drain::Trigger,
    control_drain: &verity_drain::Watcher,
) -> Result<PolicyStages, AppError> {
    let cfg = &settings.policy;
    let mut out = PolicyStages {
        stages: Vec::new(),
        staging: None,
        learned: None,
    };
    if !(cfg.shadow.enabled || cfg.drift.enabled || cfg.learn.enabled) {
        return Ok(out);
    }
    // Read once: every stage resolves selectors with the same inventory.
    let compiling = Compiling {
        root_namespace: cfg.root_namespace.clone(),
        inventory: Inventory::read_optional(cfg.workloads.as_deref())
            .map_err(|e| AppError::Policies("policy.workloads", e.to_string()))?,
    };
    if cfg.shadow.enabled {
        let policies = read(&cfg.shadow.candidates, "policy.shadow.candidates")?;
        // Each candidate is judged with the policies in force; a candidate already applied
        // (listed in force too) is judged as the candidate only.
        let in_force: Vec<AuthorizationPolicy> = if cfg.in_force.is_empty() {
            Vec::new()
        } else {
            read(&cfg.in_force, "policy.in_force")?
                .into_iter()
                .filter(|p| !policies.iter().any(|c| c.id() == p.id()))
                .collect()
        };
        let all: Vec<AuthorizationPolicy> = in_force.iter().chain(&policies).cloned().collect();
        let set = compiling.compile(&all, "policy.shadow")?;
        let window_ns = i64::try_from(cfg.shadow.window_secs)
            .unwrap_or(3600)
            .saturating_mul(1_000_000_000);
        let shadow = ShadowAssertions::new(set, policies.len(), window_ns);
        tracing::info!(
            candidates = shadow.candidates().len(),
            "shadow mode: candidate policies judged on live traffic"
        );
        let mut stage = PolicyShadowStage::new(shadow, alerts.clone(), ShadowMetrics::register(registry));
        if cfg.shadow.stage {
            let istio = settings
                .control
                .istio
                .clone()
                .ok_or_else(|| AppError::Policies("policy.shadow.stage", "needs control.istio".into()))?;
            let controller = verity_control::istio::IstioController::connect(istio)
                .await
                .map_err(|e| AppError::Policies("policy.shadow.stage", e.to_string()))?;
            let board = Arc::new(CandidateBoard::default());
            let (tx, rx) = tokio::sync::mpsc::channel(COMMAND_CAPACITY);
            let candidates: HashMap<String, serde_json::Value> = policies
                .iter()
                .filter_map(|p| Some((p.id(), serde_json::to_value(p).ok()?)))
                .collect();
            stage = stage.with_staging(AutoStaging {
                board: board.clone(),
                commands: tx.clone(),
                promote_after_ns: i64::try_from(cfg.shadow.promote_after_secs)
                    .unwrap_or(0)
                    .saturating_mul(1_000_000_000),
                demote_on_violation: cfg.shadow.demote_on_violation,
            });
            let staging = Staging {
                controller,
                candidates,
                board: board.clone(),
                alerts: alerts.clone(),
                metrics: StagingMetrics::register(registry),
            };
            control_tasks.spawn(
                "policy staging",
                staging
                    .run(rx, control_drain.clone())
                    .instrument(tracing::info_span!("policy_staging")),
            );
            out.staging = Some(StagingApi { board, commands: tx });
        }
        out.stages.push(Box::new(stage));
    }
    if cfg.drift.enabled {
        let initial = if cfg.in_force.is_empty() {
            Vec::new()
        } else {
            read(&cfg.in_force, "policy.in_force")?
        };
        let set = compiling.compile(&initial, "policy.drift")?;
        tracing::info!(
            policies = set.policies().len(),
            "live drift: the policies in force evaluated on traffic"
        );
        let metrics = DriftMetrics::register(registry);
        let mut stage = PolicyDriftStage::new(set, metrics.clone());
        if cfg.drift.from_cluster {
            let istio = settings
                .control
                .istio
                .clone()
                .ok_or_else(|| AppError::Policies("policy.drift.from_cluster", "needs control.istio".into()))?;
            let controller = verity_control::istio::IstioController::connect(istio)
                .await
                .map_err(|e| AppError::Policies("policy.drift.from_cluster", e.to_string()))?;
            let updates = Arc::new(InForceUpdates::default());
            stage = stage.with_updates(updates.clone());
            let refresh = InForceRefresh {
                controller,
                updates,
                compiling: compiling.clone(),
                metrics,
                every: std::time::Duration::from_secs(cfg.drift.refresh_secs.max(1)),
            };
            control_tasks.spawn(
                "policies in force",
                refresh
                    .run(control_drain.clone())
                    .instrument(tracing::info_span!("policies_in_force")),
            );
        }
        out.stages.push(Box::new(stage));
    }
    if cfg.learn.enabled {
        let edges = Arc::new(LearnedEdges::new(compiling.inventory.clone()));
        tracing::info!("live learning: allowed edges kept for verity policy learn --live");
        out.stages.push(Box::new(PolicyLearnStage::new(edges.clone())));
        out.learned = Some(edges);
    }
    Ok(out)
}

/// Reads the policies in the files and directories given; an error when there are none.
fn read(paths: &[PathBuf], section: &'static str) -> Result<Vec<AuthorizationPolicy>, AppError> {
    let (policies, _) =
        verity_policy::object::read_paths(paths).map_err(|e| AppError::Policies(section, e.to_string()))?;
    if policies.is_empty() {
        return Err(AppError::Policies(
            section,
            "no AuthorizationPolicy in the files given".into(),
        ));
    }
    Ok(policies)
}

/// The policies the stages evaluate, and what they are compiled with.
#[derive(Clone)]
struct Compiling {
    root_namespace: String,
    inventory: Inventory,
}

impl Compiling {
    fn compile(&self, policies: &[AuthorizationPolicy], section: &'static str) -> Result<PolicySet, AppError> {
        PolicySet::compile(policies, &self.root_namespace, self.inventory.clone())
            .map_err(|e| AppError::Policies(section, e.to_string()))
    }
}

/// Lists every AuthorizationPolicy in the cluster every `every`, and offers the drift stage a
/// new set when it changed.
struct InForceRefresh {
    controller: verity_control::istio::IstioController,
    updates: Arc<InForceUpdates>,
    compiling: Compiling,
    metrics: DriftMetrics,
    every: std::time::Duration,
}

impl InForceRefresh {
    async fn run(self, mut drain: verity_drain::Watcher) {
        let mut last: Option<String> = None;
        let mut tick = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = drain.wait() => return,
            }
            let objects = match self.controller.list_all_policies().await {
                Ok(objects) => objects,
                Err(error) => {
                    tracing::warn!(%error, "cannot list the policies in force; keeping the last set");
                    self.metrics.refreshed("list_failed");
                    continue;
                }
            };
            let policies = match verity_policy::object::from_api_objects(objects) {
                Ok((mut policies, _)) => {
                    policies.sort_by_key(AuthorizationPolicy::id);
                    policies
                }
                Err(error) => {
                    tracing::warn!(%error, "a policy in force cannot be read; keeping the last set");
                    self.metrics.refreshed("invalid");
                    continue;
                }
            };
            let fingerprint = serde_json::to_string(&policies).unwrap_or_default();
            if last.as_deref() == Some(fingerprint.as_str()) {
                self.metrics.refreshed("unchanged");
                continue;
            }
            match self.compiling.compile(&policies, "policy.drift") {
                Ok(set) => {
                    self.updates.offer(set);
                    last = Some(fingerprint);
                    self.metrics.refreshed("applied");
                }
                Err(error) => {
                    tracing::warn!(%error, "the policies in force do not compile; keeping the last set");
                    self.metrics.refreshed("invalid");
                }
            }
        }
    }
}
