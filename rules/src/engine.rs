//! Runs a compiled rule set over event batches in event time.
//!
//! The watermark is the largest event time seen minus the allowed lateness. Windowed
//! detections close a window once the watermark passes its end; events older than the
//! watermark when they arrive are *late*: counted, and left out of windowed state (stateless
//! detections still see them). Assertions and absence rules change state as the watermark
//! moves. Given the same batches, the engine emits the same alerts in the same order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::buffer::BooleanBuffer;
use verity_model::alert::Alert;

use crate::absence::AbsenceState;
use crate::assertion::{AssertionState, KeyStatus};
use crate::compile::{CompiledRule, Plan};
use crate::detection::DetectionState;
use crate::evidence::Rows;
use crate::first_seen::FirstSeenState;
use crate::kind::RuleKind;

/// Batches smaller than this are evaluated on the calling thread alone: starting threads
/// would cost more than it saves.
const MIN_ROWS_TO_SPREAD: usize = 1024;

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Bounded out-of-orderness: how far behind the newest event the watermark trails.
    pub lateness_ns: i64,
    /// Where `first_seen` rules keep their learned sets across restarts.
    pub state_dir: Option<PathBuf>,
    /// A sender not heard from for this long (wall clock) no longer holds event time back.
    pub sender_idle_ns: i64,
    /// Nor does one whose newest event is this far behind the wall clock.
    pub sender_max_lag_ns: i64,
    /// Keys a stateful rule may hold (see [`crate::state_bound`]).
    pub max_keys: usize,
    /// How much of an event's line its evidence keeps.
    pub max_evidence_bytes: usize,
    /// Threads evaluating the rules of one batch, each rule on one of them (see
    /// [`crate::slot_threads`]); 1 runs every rule on the calling thread, 0 means one per
    /// core. The alerts are the same whatever the number.
    pub threads: usize,
    /// With Kafka repartitioning, the application id naming the keyed streams: each stateful
    /// rule then sees only the rows that came through its key set's stream (see
    /// [`crate::key_sets`]), and stateless rules see every row.
    pub keyed_streams: Option<String>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            lateness_ns: 5_000_000_000,
            state_dir: None,
            sender_idle_ns: 60_000_000_000,
            sender_max_lag_ns: 300_000_000_000,
            max_keys: 100_000,
            max_evidence_bytes: crate::evidence::DEFAULT_EVIDENCE_BYTES,
            threads: 1,
            keyed_streams: None,
        }
    }
}

pub(crate) struct Slot {
    pub(crate) rule: CompiledRule,
    pub(crate) state: Box<dyn RuleKind>,
    evaluated: u64,
    matched: u64,
    alerts: u64,
    /// Keys evicted because the state reached its bound.
    evictions: u64,
    /// The event time the last `verity-state-pressure` alert was raised at.
    pressure_at: Option<i64>,
    /// Recent wall-clock time per batch (a moving average, ns): how rules are spread over
    /// threads.
    cost_ns: u64,
    /// The keyed stream whose rows alone the rule sees (repartitioning), if any.
    pub(crate) stream: Option<String>,
}

/// Counters the collector exports as metrics.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub events: u64,
    pub late_events: u64,
    pub evaluation_errors: u64,
}

/// Per-rule counters.
#[derive(Debug, Clone)]
pub struct RuleCounters {
    pub rule_id: String,
    pub kind: &'static str,
    pub evaluated: u64,
    pub matched: u64,
    pub alerts: u64,
    /// Assertions: scoped events checked and events violating.
    pub checked: u64,
    pub violating: u64,
    /// Keys the rule's state holds, and how many were evicted at the bound.
    pub state_keys: usize,
    pub evictions: u64,
}

/// An assertion's keys as the metrics export them.
#[derive(Debug, Clone)]
pub struct AssertionStates {
    pub rule_id: String,
    pub keys: Vec<(String, KeyStatus)>,
    /// Keys past the limit, by state: holding, violated, unknown.
    pub rest: [u64; 3],
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub kept: usize,
    pub changed: usize,
    pub added: usize,
    pub removed: usize,
}

pub struct Engine {
    pub(crate) slots: Vec<Slot>,
    pub(crate) settings: EngineSettings,
    clock: crate::event_clock::EventClock,
    stats: EngineStats,
}

impl Engine {
    pub fn new(rules: Vec<CompiledRule>, mut settings: EngineSettings) -> Self {
        if settings.threads == 0 {
            settings.threads = std::thread::available_parallelism().map_or(1, usize::from);
        }
        let mut e = Self {
            slots: Vec::new(),
            clock: crate::event_clock::EventClock::new(
                settings.lateness_ns,
                settings.sender_idle_ns,
                settings.sender_max_lag_ns,
            ),
            settings,
            stats: EngineStats::default(),
        };
        e.replace_rules(rules);
        e
    }

    /// A new state for `rule`, loaded from the state directory for the kinds that keep one
    /// there: the one place that picks a kind.
    fn fresh_state(&self, rule: &CompiledRule) -> Box<dyn RuleKind> {
        let (id, state_dir) = (&rule.rule().id, self.settings.state_dir.as_deref());
        match &rule.plan {
            Plan::Detection(p) if p.window.is_some() || p.suppress.is_some() => {
                Box::new(DetectionState::load(state_dir, id, rule.fingerprint, p))
            }
            Plan::Detection(_) => Box::new(DetectionState::default()),
            Plan::Assertion(_) => Box::new(AssertionState::default()),
            Plan::FirstSeen(_) => Box::new(FirstSeenState::load(state_dir, id)),
            Plan::Absence(_) => Box::new(AbsenceState::default()),
        }
    }

    fn assertion(state: &dyn RuleKind) -> Option<&AssertionState> {
        state.as_any().downcast_ref::<AssertionState>()
    }

    /// Swaps in a new rule set. Rules whose id and text are unchanged keep their state.
    pub fn replace_rules(&mut self, rules: Vec<CompiledRule>) -> ReloadSummary {
        let mut old: HashMap<String, Slot> = self.slots.drain(..).map(|s| (s.rule.rule().id.clone(), s)).collect();
        let mut summary = ReloadSummary::default();
        let mut slots = Vec::with_capacity(rules.len());
        for rule in rules {
            let slot = match old.remove(&rule.rule().id) {
                Some(prev) if prev.rule.fingerprint == rule.fingerprint => {
                    summary.kept += 1;
                    Slot { rule, ..prev }
                }
                prev => {
                    if prev.is_some() {
                        summary.changed += 1;
                    } else {
                        summary.added += 1;
                    }
                    let state = self.fresh_state(&rule);
                    Slot {
                        rule,
                        state,
                        evaluated: 0,
                        matched: 0,
                        alerts: 0,
                        evictions: 0,
                        pressure_at: None,
                        cost_ns: 0,
                        stream: None,
                    }
                }
            };
            let stream = self.settings.keyed_streams.as_deref().and_then(|app| {
                Some(crate::key_sets::keyed_stream_name(
                    app,
                    slot.rule.rule().body.state_keys()?,
                ))
            });
            slots.push(Slot { stream, ..slot });
        }
        summary.removed = old.len();
        self.slots = slots;
        summary
    }

    pub fn rules(&self) -> impl Iterator<Item = &CompiledRule> {
        self.slots.iter().map(|s| &s.rule)
    }

    /// The minimum over active senders' newest event times, minus the lateness (see
    /// [`crate::event_clock`]).
    pub fn watermark(&self) -> Option<i64> {
        self.clock.watermark()
    }

    /// How many senders' event clocks are kept.
    pub fn senders(&self) -> usize {
        self.clock.senders()
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn counters(&self) -> Vec<RuleCounters> {
        self.slots
            .iter()
            .map(|s| {
                let (checked, violating) =
                    Self::assertion(s.state.as_ref()).map_or((0, 0), |a| (a.checked, a.violating));
                RuleCounters {
                    rule_id: s.rule.rule().id.clone(),
                    kind: s.rule.rule().kind().as_str(),
                    evaluated: s.evaluated,
                    matched: s.matched,
                    alerts: s.alerts,
                    checked,
                    violating,
                    state_keys: s.state.state_keys(),
                    evictions: s.evictions,
                }
            })
            .collect()
    }

    /// Each assertion's first `limit` keys with their states, and the count of the rest by
    /// state (holding, violated, unknown).
    pub fn assertion_states(&self, limit: usize) -> Vec<AssertionStates> {
        self.slots
            .iter()
            .filter_map(|s| {
                let (keys, rest) = Self::assertion(s.state.as_ref())?.states(limit);
                Some(AssertionStates {
                    rule_id: s.rule.rule().id.clone(),
                    keys,
                    rest,
                })
            })
            .collect()
    }

    /// Evaluates every rule on a batch and returns the alerts it caused (replay, tests: every
    /// sender counts as active).
    pub fn process(&mut self, batch: &RecordBatch) -> Vec<Alert> {
        self.process_at(batch, None)
    }

    /// Evaluates every rule on a batch that arrived at `arrival_ns` (wall clock, for the
    /// senders' idle timeout) and returns the alerts it caused.
    pub fn process_at(&mut self, batch: &RecordBatch, arrival_ns: Option<i64>) -> Vec<Alert> {
        let mut out = Vec::new();
        if batch.num_rows() == 0 {
            return out;
        }
        let Some(rows) = Rows::new(batch).map(|r| r.with_max_evidence_bytes(self.settings.max_evidence_bytes)) else {
            self.stats.evaluation_errors += 1;
            tracing::error!("batch does not have the event schema; skipped");
            return out;
        };
        let n = batch.num_rows();
        self.stats.events += n as u64;
        // A forged record's time is the forger's choice: it never moves event time.
        let forged = forged_rows(batch);
        let senders = crate::event_clock::EventClock::batch_senders(batch, rows.times(), forged.as_ref());
        let watermark_before = self.clock.watermark_for(&senders, arrival_ns);
        if let Some(w) = watermark_before {
            let times = rows.times();
            for i in 0..n {
                if forged.as_ref().is_some_and(|f| f.value(i)) {
                    continue;
                }
                if times.value(i) < w {
                    self.stats.late_events += 1;
                }
            }
        }
        let threads = if n < MIN_ROWS_TO_SPREAD {
            1
        } else {
            self.settings.threads
        };
        let streams = self.stream_masks(batch, forged.as_ref());
        let outcomes = crate::slot_threads::run_spread(
            &mut self.slots,
            threads,
            |slot| slot.cost_ns,
            |slot| {
                let hidden = match &slot.stream {
                    Some(stream) => match streams.get(stream.as_str()) {
                        // None of the batch's rows came through this rule's stream: there is
                        // nothing for it to see (a repartitioned batch holds one stream).
                        Some(None) => return (Vec::new(), false),
                        Some(Some((plain, with_forged))) => {
                            Some(if slot.rule.sees_forged { plain } else { with_forged })
                        }
                        None => None,
                    },
                    None => forged.as_ref().filter(|_| !slot.rule.sees_forged),
                };
                evaluate_slot(slot, &rows, hidden, watermark_before)
            },
        );
        for (alerts, failed) in outcomes {
            if failed {
                self.stats.evaluation_errors += 1;
            }
            out.extend(alerts);
        }
        // A batch of forgeries alone says nothing about event time.
        self.clock.observe(&senders, arrival_ns);
        if let Some(w) = self.watermark() {
            self.advance(w, &mut out);
        }
        self.bound_state(&mut out);
        out
    }

    /// For each keyed stream a rule reads: the rows it must not see (those of other streams),
    /// and the same with forged rows added; `None` when the batch has no row of the stream.
    fn stream_masks(&self, batch: &RecordBatch, forged: Option<&BooleanArray>) -> HashMap<String, StreamMasks> {
        let mut masks = HashMap::new();
        for stream in self.slots.iter().filter_map(|s| s.stream.as_deref()) {
            if masks.contains_key(stream) {
                continue;
            }
            let theirs = crate::key_sets::rows_of_stream(batch, stream);
            if theirs.true_count() == 0 {
                masks.insert(stream.to_string(), None);
                continue;
            }
            // Neither kernel fails on arrays of one length without nulls; if one did, the
            // rule would see nothing rather than rows of other streams.
            let hide_all = || BooleanArray::from(vec![true; batch.num_rows()]);
            let others = arrow::compute::not(&theirs).unwrap_or_else(|_| hide_all());
            let with_forged = match forged {
                Some(f) => arrow::compute::or(&others, f).unwrap_or_else(|_| hide_all()),
                None => others.clone(),
            };
            masks.insert(stream.to_string(), Some((others, with_forged)));
        }
        masks
    }

    /// Evicts, rule by rule, what is past `max_keys` (see [`crate::state_bound`]).
    fn bound_state(&mut self, out: &mut Vec<Alert>) {
        let at = self.watermark().unwrap_or(0);
        for slot in &mut self.slots {
            let max_keys = slot.rule.rule().max_keys.unwrap_or(self.settings.max_keys);
            if slot.state.state_keys() <= max_keys {
                continue;
            }
            let keep = crate::state_bound::keep_after_eviction(max_keys);
            let before = out.len();
            let rule = &slot.rule;
            let evicted = slot.state.evict(rule, keep, max_keys, out);
            slot.alerts += (out.len() - before) as u64;
            slot.evictions = slot.evictions.saturating_add(evicted);
            tracing::warn!(rule = %rule.rule().id, max_keys, evicted, "rule state at its bound; least recently seen keys evicted");
            if slot
                .pressure_at
                .is_some_and(|last| !crate::state_bound::pressure_due(last, at))
            {
                continue;
            }
            slot.pressure_at = Some(at);
            out.push(crate::state_bound::pressure_alert(
                &rule.rule().id,
                slot.state.state_keys(),
                max_keys,
                slot.evictions,
                at,
            ));
        }
    }

    /// With no events arriving, moves event time forward by the wall-clock time since the
    /// last batch (once that exceeds the lateness), so assertions and absence rules notice
    /// silence even when the whole mesh has gone quiet.
    pub fn advance_idle(&mut self, idle_ns: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        if !self.clock.advance_idle(idle_ns) {
            return out;
        }
        if let Some(w) = self.watermark() {
            self.advance(w, &mut out);
        }
        out
    }

    fn advance(&mut self, watermark: i64, out: &mut Vec<Alert>) {
        for slot in &mut self.slots {
            let before = out.len();
            slot.state.advance(&slot.rule, watermark, out);
            slot.alerts += (out.len() - before) as u64;
        }
    }

    /// Writes what stateful rules hold to the state directory: learned sets of `first_seen`
    /// rules and the open windows and suppression of detections, so a crash loses at most
    /// what happened since. Returns how many rules' state could not be written.
    pub fn checkpoint(&mut self) -> usize {
        let Some(dir) = self.settings.state_dir.clone() else {
            return 0;
        };
        let mut failed = 0;
        for slot in &mut self.slots {
            let rule = &slot.rule;
            let result = slot.state.save(rule, &dir);
            if let Err(error) = result {
                failed += 1;
                tracing::error!(rule = %rule.rule().id, %error, "could not checkpoint rule state");
            }
        }
        failed
    }

    /// End of input (replay, tests, drain): closes every open window and saves learned
    /// sets. Assertions and absence rules do not treat the end of input as silence.
    pub fn flush(&mut self) -> Vec<Alert> {
        let mut out = Vec::new();
        for slot in &mut self.slots {
            let before = out.len();
            let rule = &slot.rule;
            slot.state.flush(rule, &mut out);
            slot.alerts += (out.len() - before) as u64;
        }
        // The windows just closed must not come back from an older checkpoint.
        self.checkpoint();
        out
    }
}

/// Rows a proxy sender reported without being a party to them (`sender_binding =
/// 'not_party'`), or None when the batch has none.
fn forged_rows(batch: &RecordBatch) -> Option<BooleanArray> {
    let column = batch.column_by_name(verity_model::event::col::SENDER_BINDING)?;
    let values = column.as_string_opt::<i32>()?;
    let not_party = verity_model::event::SenderBinding::NotParty.as_str();
    let forged = BooleanArray::new(
        BooleanBuffer::collect_bool(values.len(), |i| values.is_valid(i) && values.value(i) == not_party),
        None,
    );
    (forged.true_count() > 0).then_some(forged)
}

/// The rows of a batch hidden from a keyed stream's rules, without and with forged rows;
/// `None` when the batch has no row of that stream.
type StreamMasks = Option<(BooleanArray, BooleanArray)>;

/// One rule over one batch, without the rows in `hidden`: its alerts, and whether its evaluation failed (logged here).
fn evaluate_slot(
    slot: &mut Slot,
    rows: &Rows<'_>,
    hidden: Option<&BooleanArray>,
    watermark_before: Option<i64>,
) -> (Vec<Alert>, bool) {
    let started = Instant::now();
    let mut out = Vec::new();
    let failed = match slot.state.process(&slot.rule, rows, hidden, watermark_before, &mut out) {
        Ok(matched) => {
            slot.matched += matched;
            false
        }
        Err(error) => {
            tracing::error!(rule = %slot.rule.rule().id, %error, "rule evaluation failed on a batch");
            true
        }
    };
    slot.evaluated += rows.batch.num_rows() as u64;
    slot.alerts += out.len() as u64;
    let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    slot.cost_ns = slot.cost_ns.saturating_mul(3).saturating_add(took) / 4;
    (out, failed)
}
