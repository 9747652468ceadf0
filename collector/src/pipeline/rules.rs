//! The rules stage of the pipeline: evaluates the rule set on every event batch, publishes the
//! alerts on the alert bus (returning once they are in the outputs' durable spools), exports
//! rule metrics, and reloads the rule set when the wiring asks (SIGHUP or changed rule files).
//!
//! A reload compiles the whole new set first; only if every rule compiles does it replace the
//! old one (unchanged rules keep their state). On any error the old set stays, and the error
//! is logged and counted.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use verity_model::Alert;
use verity_rules::assertion::KeyStatus;
use verity_rules::engine::ReloadSummary;
use verity_rules::{CompiledRule, Compiler, Engine, EngineSettings, RevocationList, RuleSource};

use crate::pipeline::alerts::AlertBus;
use crate::pipeline::{Batch, Stage, StageError};

/// Where rules come from.
#[derive(Debug, Clone)]
pub struct RuleSetSpec {
    pub builtin_pack: bool,
    pub dirs: Vec<PathBuf>,
    /// Which of the loaded rules this set holds.
    pub part: RulePart,
}

/// With Kafka repartitioning, the input's rules stage runs the stateless rules and the
/// repartition topics' rules stage runs the stateful ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RulePart {
    #[default]
    All,
    Stateless,
    /// Stateful rules whose key set is one of these (the repartition topics that exist); a
    /// reload bringing a rule with another key set is refused until a restart creates its
    /// topic.
    Stateful {
        key_sets: Vec<Vec<String>>,
    },
}

impl RulePart {
    /// Keeps the rules of this part; errors for stateful rules no repartition topic serves.
    fn select(&self, rules: Vec<CompiledRule>) -> Result<Vec<CompiledRule>, Vec<String>> {
        let mut errors = Vec::new();
        let kept = rules
            .into_iter()
            .filter(|r| {
                let keys = r.rule().body.state_keys();
                match (self, keys) {
                    (RulePart::All, _) => true,
                    (RulePart::Stateless, keys) => keys.is_none(),
                    (RulePart::Stateful { .. }, None) => false,
                    (RulePart::Stateful { key_sets }, Some(keys)) => {
                        let set = verity_rules::key_sets::key_set(keys);
                        if !key_sets.contains(&set) {
                            errors.push(format!(
                                "rule {} keeps state per [{}], which no repartition topic carries: restart Verity to create its topic",
                                r.rule().id,
                                set.join(", ")
                            ));
                        }
                        true
                    }
                }
            })
            .collect();
        if errors.is_empty() { Ok(kept) } else { Err(errors) }
    }
}

impl RuleSetSpec {
    /// The distinct key sets of the stateful rules of the whole set (read, not compiled).
    pub fn key_sets(&self) -> Result<Vec<Vec<String>>, Vec<String>> {
        let sources = self.sources()?;
        Ok(verity_rules::key_sets::key_sets(sources.iter().map(|s| &s.rule)))
    }

    /// Reads and compiles the whole set; every error, not the first.
    pub fn load(&self, revocations: &RevocationList) -> Result<Vec<CompiledRule>, Vec<String>> {
        let sources = self.sources()?;
        let rules = Compiler::new(revocations.clone())
            .compile_all(sources)
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        self.part.select(rules)
    }

    /// Every rule file of the set, read and parsed, with unique ids.
    fn sources(&self) -> Result<Vec<RuleSource>, Vec<String>> {
        let mut sources: Vec<RuleSource> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        if self.builtin_pack {
            match verity_rules::pack::sources() {
                Ok(s) => sources.extend(s),
                Err(e) => errors.extend(e.iter().map(ToString::to_string)),
            }
        }
        if !self.dirs.is_empty() {
            match verity_rules::rule::load_paths(&self.dirs) {
                Ok(s) => sources.extend(s),
                Err(e) => errors.extend(e.iter().map(ToString::to_string)),
            }
        }
        let mut ids: HashMap<String, String> = HashMap::new();
        for s in &sources {
            if let Some(prev) = ids.insert(s.rule.id.clone(), s.path.display().to_string()) {
                errors.push(format!(
                    "{}: duplicate rule id {} (also in {prev})",
                    s.path.display(),
                    s.rule.id
                ));
            }
        }
        if errors.is_empty() { Ok(sources) } else { Err(errors) }
    }

    /// Modification times of every rule file, to notice edits. The walk is the loader's:
    /// hidden entries skipped, no symlink followed out of a directory or into a loop, and a
    /// ConfigMap's links followed to the current version of each file.
    pub fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        verity_rules::rule::rule_files(&self.dirs)
            .into_iter()
            .map(|f| {
                let m = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
                (f, m)
            })
            .collect()
    }
}

/// Metrics of the rules stage.
#[derive(Clone)]
pub struct RuleMetrics {
    pub late_events: Counter,
    pub evaluation_errors: Counter,
    pub assertion_state: Family<[(&'static str, String); 2], Gauge>,
    pub assertion_checked: Family<[(&'static str, String); 1], Counter>,
    pub assertion_violating: Family<[(&'static str, String); 1], Counter>,
    pub reloads: Family<[(&'static str, &'static str); 1], Counter>,
    pub rules_loaded: Gauge,
    pub watermark: Gauge,
    pub revocations: Gauge,
    pub alert_write_errors: Counter,
    pub alerts_held: Gauge,
    pub checkpoint_errors: Counter,
    /// Keys each rule's state holds, and those evicted at its bound.
    pub state_keys: Family<[(&'static str, String); 1], Gauge>,
    pub state_evictions: Family<[(&'static str, String); 1], Counter>,
    /// Assertion keys by state (all of them, also those past the per-key series bound).
    pub assertion_keys: Family<[(&'static str, String); 2], Gauge>,
}

/// The `key` label of the series that stands for every assertion key past
/// [`MAX_EXPORTED_KEYS`]: its value is the worst state among them.
const OTHER_KEYS: &str = "other";

/// Assertion keys exported as their own `verity_assertion_state` series per assertion at
/// most (label values come from traffic); the rest are one `key="other"` series.
const MAX_EXPORTED_KEYS: usize = 1000;

impl RuleMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            late_events: Counter::default(),
            evaluation_errors: Counter::default(),
            assertion_state: Family::default(),
            assertion_checked: Family::default(),
            assertion_violating: Family::default(),
            reloads: Family::default(),
            rules_loaded: Gauge::default(),
            watermark: Gauge::default(),
            revocations: Gauge::default(),
            alert_write_errors: Counter::default(),
            alerts_held: Gauge::default(),
            checkpoint_errors: Counter::default(),
            state_keys: Family::default(),
            state_evictions: Family::default(),
            assertion_keys: Family::default(),
        };
        registry.register(
            "verity_rules_late_events",
            "Events older than the watermark when they arrived",
            m.late_events.clone(),
        );
        registry.register(
            "verity_rules_evaluation_errors",
            "Rule evaluations that failed on a batch",
            m.evaluation_errors.clone(),
        );
        registry.register(
            "verity_assertion_state",
            "Assertion state per key: 0 holding, 1 violated, 2 unknown",
            m.assertion_state.clone(),
        );
        registry.register(
            "verity_assertion_keys",
            "Assertion keys by state (holding, violated, unknown)",
            m.assertion_keys.clone(),
        );
        registry.register(
            "verity_rules_state_keys",
            "Keys a stateful rule holds (bounded by rules.max_keys or the rule's max_keys)",
            m.state_keys.clone(),
        );
        registry.register(
            "verity_rules_state_evictions",
            "Least recently seen keys a rule evicted at its bound",
            m.state_evictions.clone(),
        );
        registry.register(
            "verity_assertion_events_checked",
            "Scoped events an assertion checked",
            m.assertion_checked.clone(),
        );
        registry.register(
            "verity_assertion_events_violating",
            "Scoped events that violated an assertion",
            m.assertion_violating.clone(),
        );
        registry.register(
            "verity_rules_reloads",
            "Rule set reloads, by outcome",
            m.reloads.clone(),
        );
        registry.register(
            "verity_rules_loaded",
            "Rules in the active rule set",
            m.rules_loaded.clone(),
        );
        registry.register(
            "verity_event_time_watermark_seconds",
            "The rules engine's event-time watermark (Unix seconds)",
            m.watermark.clone(),
        );
        registry.register(
            "verity_revocations_active",
            "Principals on the revocation list",
            m.revocations.clone(),
        );
        registry.register(
            "verity_alert_write_errors",
            "Failures handing alerts to the outputs' spools",
            m.alert_write_errors.clone(),
        );
        registry.register(
            "verity_rules_checkpoint_errors",
            "Rule state (learned sets, open windows) that could not be checkpointed",
            m.checkpoint_errors.clone(),
        );
        registry.register(
            "verity_alerts_held",
            "Alerts a spool could not take yet (full or failing disk), kept and retried; while above 0 no new batch is evaluated",
            m.alerts_held.clone(),
        );
        m
    }
}

/// The engine, shared by the pipeline stage and the reloader.
#[derive(Clone)]
pub struct SharedEngine {
    engine: Arc<Mutex<Engine>>,
    spec: RuleSetSpec,
    revocations: RevocationList,
    metrics: RuleMetrics,
}

impl SharedEngine {
    pub fn new(
        spec: RuleSetSpec,
        settings: EngineSettings,
        revocations: RevocationList,
        metrics: RuleMetrics,
    ) -> Result<Self, Vec<String>> {
        let rules = spec.load(&revocations)?;
        // Added: with repartitioning two engines hold the two parts of one rule set.
        metrics.rules_loaded.inc_by(rules.len() as i64);
        metrics.revocations.set(revocations.len() as i64);
        Ok(Self {
            engine: Arc::new(Mutex::new(Engine::new(rules, settings))),
            spec,
            revocations,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        match self.engine.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Event time now: the engine's watermark.
    pub fn watermark(&self) -> Option<i64> {
        self.lock().watermark()
    }

    /// The rules currently loaded, as written.
    /// Runs `f` on the engine, between batches: how a Kafka source moves a partition's rule
    /// state in and out (see `sources::kafka::state_topic`).
    pub fn with_engine<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        f(&mut self.lock())
    }

    pub fn rule_files(&self) -> Vec<verity_rules::rule::RuleFile> {
        self.lock().rules().map(|r| r.rule().clone()).collect()
    }

    pub fn spec(&self) -> &RuleSetSpec {
        &self.spec
    }

    /// Compiles the rule files again and swaps them in if all compile.
    pub fn reload(&self) -> Result<ReloadSummary, Vec<String>> {
        Self::reload_together(std::slice::from_ref(self)).map(|mut s| s.remove(0))
    }

    /// Reloads several parts of one rule set (with repartitioning, the stateless and the
    /// stateful rules): every part is compiled first, and only if all compile are they all
    /// swapped in, so a rule never ends up in neither part.
    pub fn reload_together(engines: &[SharedEngine]) -> Result<Vec<ReloadSummary>, Vec<String>> {
        let Some(first) = engines.first() else {
            return Ok(Vec::new());
        };
        let compiled: Result<Vec<Vec<CompiledRule>>, Vec<String>> =
            engines.iter().map(|e| e.spec.load(&e.revocations)).collect();
        match compiled {
            Ok(sets) => {
                let mut total = 0;
                let mut summaries = Vec::with_capacity(sets.len());
                for (e, rules) in engines.iter().zip(sets) {
                    total += rules.len();
                    let summary = e.lock().replace_rules(rules);
                    tracing::info!(
                        kept = summary.kept,
                        changed = summary.changed,
                        added = summary.added,
                        removed = summary.removed,
                        "rules reloaded"
                    );
                    summaries.push(summary);
                }
                first.metrics.rules_loaded.set(total as i64);
                first.metrics.reloads.get_or_create(&[("outcome", "ok")]).inc();
                Ok(summaries)
            }
            Err(errors) => {
                first.metrics.reloads.get_or_create(&[("outcome", "error")]).inc();
                for e in &errors {
                    tracing::error!(error = %e, "rule reload failed; the previous rule set stays active");
                }
                Err(errors)
            }
        }
    }
}

/// Where a rules stage sends each event batch it is about to evaluate, and waits until it
/// is taken (repartitioning: the rows go to other instances' stateful rules). Called only
/// once the stage has committed to evaluating the batch, so the rows are sent exactly when
/// they are counted here, never on a batch refused and handed over again.
pub trait Forward: Send {
    fn forward(&mut self, batch: &arrow::array::RecordBatch);
}

/// How often a drain retries held alerts before giving up on them.
const DRAIN_RETRIES: u32 = 10;

/// Runs the engine on event batches.
pub struct RulesStage {
    shared: SharedEngine,
    alerts: Arc<AlertBus>,
    control: Option<Arc<verity_control::Revoker>>,
    last_counts: HashMap<String, (u64, u64)>,
    last_evictions: HashMap<String, u64>,
    /// The keys each assertion has a `verity_assertion_state` series for.
    exported_keys: HashMap<String, HashSet<String>>,
    last_late: u64,
    last_errors: u64,
    /// When the last event batch arrived (wall clock), for idle watermark advance.
    last_events: std::time::Instant,
    /// Alerts a spool could not take yet (disk full or failing), retried before anything new
    /// is evaluated.
    held: Option<verity_sinks::Held>,
    held_count: crate::pipeline::HeldAlerts,
    /// How often rule state is checkpointed, and when it last was.
    checkpoint_every: std::time::Duration,
    last_checkpoint: std::time::Instant,
    forward: Option<Box<dyn Forward>>,
}

impl RulesStage {
    pub fn new(shared: SharedEngine, alerts: Arc<AlertBus>) -> Self {
        Self {
            shared,
            alerts,
            control: None,
            last_counts: HashMap::new(),
            last_evictions: HashMap::new(),
            exported_keys: HashMap::new(),
            last_late: 0,
            last_errors: 0,
            last_events: std::time::Instant::now(),
            held: None,
            held_count: crate::pipeline::HeldAlerts::default(),
            checkpoint_every: std::time::Duration::from_secs(30),
            last_checkpoint: std::time::Instant::now(),
            forward: None,
        }
    }

    /// Sends every event batch to `forward` before evaluating it (see [`Forward`]).
    pub fn with_forward(mut self, forward: Box<dyn Forward>) -> Self {
        self.forward = Some(forward);
        self
    }

    /// Checkpoints rule state this often (learned sets, open windows).
    pub fn with_checkpoint_interval(mut self, every: std::time::Duration) -> Self {
        self.checkpoint_every = every;
        self
    }

    /// The count of held alerts, for sources deciding whether a retried batch is done.
    pub fn held_alerts(&self) -> crate::pipeline::HeldAlerts {
        self.held_count.clone()
    }

    fn set_held(&self, n: usize) {
        self.held_count.set(n);
        self.shared
            .metrics
            .alerts_held
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Retries held alerts; Err while a spool still cannot take them.
    fn deliver_held(&mut self) -> Result<(), StageError> {
        let Some(held) = self.held.take() else { return Ok(()) };
        match self.alerts.retry_held(held) {
            Ok(()) => {
                tracing::info!("held alerts are spooled now");
                self.set_held(0);
                Ok(())
            }
            Err(still) => {
                let message = still.error.to_string();
                self.set_held(verity_sinks::SinkSet::held_len(&still));
                self.held = Some(still);
                Err(StageError::Other {
                    stage: "rules",
                    message: format!("alerts from earlier batches are not spooled yet: {message}"),
                })
            }
        }
    }

    /// Alerts that ask for a response go to the revocation manager; its audit events are
    /// delivered with them.
    pub fn with_control(mut self, control: Arc<verity_control::Revoker>) -> Self {
        self.control = Some(control);
        self
    }

    fn emit(&mut self, mut alerts: Vec<Alert>) -> Result<(), StageError> {
        if let Some(c) = &self.control {
            let audit = c.on_alerts(&alerts, crate::normalize::now_ns());
            alerts.extend(audit);
        }
        let m = &self.shared.metrics;
        // Blocks while a spool is full: that is the pipeline's backpressure from slow SIEMs.
        // When a spool's disk fails, the alerts are held (rule state already counted the
        // batch) and retried before anything new is evaluated.
        match self.alerts.publish_or_hold(&alerts) {
            Ok(()) => Ok(()),
            Err(held) => {
                m.alert_write_errors.inc();
                let message = held.error.to_string();
                self.set_held(verity_sinks::SinkSet::held_len(&held));
                self.held = Some(held);
                Err(StageError::Held {
                    stage: "rules",
                    message,
                })
            }
        }
    }

    fn export(&mut self, engine: &Engine) {
        let m = &self.shared.metrics;
        let stats = engine.stats();
        m.late_events
            .inc_by(stats.late_events - self.last_late.min(stats.late_events));
        self.last_late = stats.late_events;
        m.evaluation_errors
            .inc_by(stats.evaluation_errors - self.last_errors.min(stats.evaluation_errors));
        self.last_errors = stats.evaluation_errors;
        if let Some(w) = engine.watermark() {
            m.watermark.set(w / 1_000_000_000);
        }
        for c in engine.counters() {
            if c.kind != "assertion" {
                continue;
            }
            let last = self.last_counts.entry(c.rule_id.clone()).or_insert((0, 0));
            m.assertion_checked
                .get_or_create(&[("assertion", c.rule_id.clone())])
                .inc_by(c.checked.saturating_sub(last.0));
            m.assertion_violating
                .get_or_create(&[("assertion", c.rule_id.clone())])
                .inc_by(c.violating.saturating_sub(last.1));
            *last = (c.checked, c.violating);
        }
        for c in engine.counters() {
            m.state_keys
                .get_or_create(&[("rule", c.rule_id.clone())])
                .set(i64::try_from(c.state_keys).unwrap_or(i64::MAX));
            let last = self.last_evictions.entry(c.rule_id.clone()).or_insert(0);
            m.state_evictions
                .get_or_create(&[("rule", c.rule_id.clone())])
                .inc_by(c.evictions.saturating_sub(*last));
            *last = c.evictions;
        }
        let value = |status: KeyStatus| match status {
            KeyStatus::Holding => 0,
            KeyStatus::Violated => 1,
            KeyStatus::Unknown => 2,
        };
        for a in engine.assertion_states(MAX_EXPORTED_KEYS) {
            let mut by_state = a.rest;
            let exported = self.exported_keys.entry(a.rule_id.clone()).or_default();
            let mut now: HashSet<String> = HashSet::with_capacity(a.keys.len());
            for (key, status) in a.keys {
                if let Some(n) = by_state.get_mut(value(status) as usize) {
                    *n += 1;
                }
                m.assertion_state
                    .get_or_create(&[("assertion", a.rule_id.clone()), ("key", key.clone())])
                    .set(value(status));
                now.insert(key);
            }
            // Keys evicted or pushed past the bound leave no stale series behind.
            for gone in exported.difference(&now) {
                m.assertion_state
                    .remove(&[("assertion", a.rule_id.clone()), ("key", gone.clone())]);
            }
            *exported = now;
            let other = [("assertion", a.rule_id.clone()), ("key", OTHER_KEYS.to_string())];
            let worst = if a.rest[1] > 0 {
                Some(1)
            } else if a.rest[2] > 0 {
                Some(2)
            } else if a.rest[0] > 0 {
                Some(0)
            } else {
                None
            };
            match worst {
                Some(v) => {
                    m.assertion_state.get_or_create(&other).set(v);
                }
                None => {
                    m.assertion_state.remove(&other);
                }
            }
            for (status, n) in [KeyStatus::Holding, KeyStatus::Violated, KeyStatus::Unknown]
                .into_iter()
                .zip(by_state)
            {
                m.assertion_keys
                    .get_or_create(&[("assertion", a.rule_id.clone()), ("state", status.as_str().to_string())])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        m.revocations.set(self.shared.revocations.len() as i64);
    }
}

impl Stage for RulesStage {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn evaluates(&self) -> bool {
        true
    }

    fn process(&mut self, batch: &Batch) -> Result<(), StageError> {
        // Nothing new is evaluated while earlier alerts are held: the sources are told to
        // retry, and no rule state moves.
        self.deliver_held()?;
        if let (Some(f), Batch::Events(b)) = (self.forward.as_mut(), batch) {
            f.forward(b);
        }
        let shared = self.shared.clone();
        let mut engine = shared.lock();
        let alerts = match batch {
            Batch::Events(b) => {
                self.last_events = std::time::Instant::now();
                engine.process_at(b, Some(crate::normalize::now_ns()))
            }
            // With no telemetry at all, event time stands still; let wall-clock idleness
            // move the watermark so silent keys still become unknown.
            Batch::Idle => {
                engine.advance_idle(i64::try_from(self.last_events.elapsed().as_nanos()).unwrap_or(i64::MAX))
            }
            Batch::Metrics(_) => return Ok(()),
        };
        // After the batch's state changes: a crash loses at most one interval of learning and
        // open windows.
        if self.last_checkpoint.elapsed() >= self.checkpoint_every {
            self.last_checkpoint = std::time::Instant::now();
            let failed = engine.checkpoint();
            if failed > 0 {
                self.shared.metrics.checkpoint_errors.inc_by(failed as u64);
            }
        }
        self.export(&engine);
        drop(engine);
        self.emit(alerts)
    }

    fn flush(&mut self) -> Result<(), StageError> {
        // Draining: a spool that still fails gets a few more tries, then what is held is
        // given up (counted in verity_alerts_dropped_total).
        for attempt in 0..DRAIN_RETRIES {
            if self.deliver_held().is_ok() {
                break;
            }
            if attempt + 1 < DRAIN_RETRIES {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
        if let Some(held) = self.held.take() {
            let error = self.alerts.drop_held(held);
            self.set_held(0);
            return Err(StageError::Other {
                stage: "rules",
                message: error.to_string(),
            });
        }
        let shared = self.shared.clone();
        let mut engine = shared.lock();
        let alerts = engine.flush();
        self.export(&engine);
        drop(engine);
        let result = self.emit(alerts);
        if let Some(held) = self.held.take() {
            let _ = self.alerts.drop_held(held);
            self.set_held(0);
        }
        result
    }
}
