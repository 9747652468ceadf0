//! Detection state: per-event alerts (no window) or per-window aggregates with `having`,
//! tumbling or sliding in event time, with per-key suppression.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use serde::{Deserialize, Serialize};
use verity_model::alert::{Alert, AlertStatus};

use crate::compile::{AggFunc, CompiledRule, DetectionPlan, HavingPlan, Plan};
use crate::emit::{AlertParts, describe, make_alert};
use crate::eval_error::EvalError;
use crate::evidence::{Rows, group_map, push_evidence};
use crate::kind::RuleKind;
use crate::mask::{eval_bool, visible};
use crate::packed_evidence::{PackedEvidence, unpack_all};
use crate::state_key::{Key, KeyMap, RowKey, ValueSet, evict_least_recent, state_of};

#[derive(Default)]
pub struct DetectionState {
    /// Window start → group key → aggregate state.
    windows: BTreeMap<i64, KeyMap<Group>>,
    /// Group key → no alert before this event time.
    suppressed_until: KeyMap<i64>,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Group {
    count: u64,
    first: i64,
    last: i64,
    /// One slot per aggregate of the rule's `having`.
    counts: Vec<u64>,
    distinct: Vec<ValueSet>,
    numbers: Vec<Option<f64>>,
    evidence: Vec<PackedEvidence>,
    entity: Option<String>,
    /// Some event of the group was not its sender's verified evidence.
    unverified: bool,
    /// Who reported each event (rules with `respond`).
    #[serde(default)]
    backing: verity_model::alert::Backing,
}

/// Open windows and suppression as written to a checkpoint, for the rule text it was made
/// with.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    fingerprint: u64,
    windows: Vec<(i64, Vec<(Key, Group)>)>,
    suppressed: Vec<(Key, i64)>,
}

/// The keys of one partition, as handed to the instance taking it over.
#[derive(Default, Serialize, Deserialize)]
struct Moved {
    windows: Vec<(i64, Vec<(Key, Group)>)>,
    suppressed: Vec<(Key, i64)>,
}

fn checkpoint_path(dir: &std::path::Path, rule_id: &str) -> std::path::PathBuf {
    dir.join(format!("{rule_id}.windows.json"))
}

impl DetectionState {
    pub fn open_groups(&self) -> usize {
        self.windows.values().map(KeyMap::len).sum()
    }

    /// Writes the open windows and suppression to `<dir>/<rule id>.windows.json` (atomically:
    /// a temporary file, fsync, rename).
    pub fn save(&self, dir: &std::path::Path, rule_id: &str, fingerprint: u64) -> std::io::Result<()> {
        let snapshot = Snapshot {
            fingerprint,
            windows: self
                .windows
                .iter()
                .map(|(start, groups)| (*start, groups.iter().map(|(k, g)| (k.clone(), g.clone())).collect()))
                .collect(),
            suppressed: self.suppressed_until.iter().map(|(k, t)| (k.clone(), *t)).collect(),
        };
        crate::checkpoint::write_atomically(
            &checkpoint_path(dir, rule_id),
            &serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?,
        )
    }

    /// The state a checkpoint holds for this rule, if there is one made with the same rule
    /// text (`fingerprint`) and it is consistent with the rule's plan; otherwise empty.
    pub fn load(dir: Option<&std::path::Path>, rule_id: &str, fingerprint: u64, plan: &DetectionPlan) -> Self {
        let Some(dir) = dir else { return Self::default() };
        let p = checkpoint_path(dir, rule_id);
        let Ok(bytes) = std::fs::read(&p) else {
            return Self::default();
        };
        let snapshot: Snapshot = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(path = %p.display(), %error, "window checkpoint is unreadable; starting empty");
                return Self::default();
            }
        };
        let consistent = Self::fits(plan, &snapshot.windows, &snapshot.suppressed);
        if snapshot.fingerprint != fingerprint || !consistent {
            tracing::info!(
                rule = rule_id,
                "window checkpoint is for another version of the rule; starting empty"
            );
            return Self::default();
        }
        Self {
            windows: snapshot
                .windows
                .into_iter()
                .map(|(start, groups)| (start, groups.into_iter().collect()))
                .collect(),
            suppressed_until: snapshot.suppressed.into_iter().collect(),
        }
    }

    /// Whether every key and group fits `plan` (as many key values and aggregate slots).
    fn fits(plan: &DetectionPlan, windows: &[(i64, Vec<(Key, Group)>)], suppressed: &[(Key, i64)]) -> bool {
        let aggs = plan.having.as_ref().map_or(0, |h| h.aggs.len());
        let keys = plan.group_by.len();
        windows.iter().all(|(_, groups)| {
            groups.iter().all(|(k, g)| {
                k.len() == keys && g.counts.len() == aggs && g.distinct.len() == aggs && g.numbers.len() == aggs
            })
        }) && suppressed.iter().all(|(k, _)| k.len() == keys)
    }

    fn export_moved(&self, pick: crate::kind::KeyPick<'_>) -> Moved {
        Moved {
            windows: self
                .windows
                .iter()
                .map(|(start, groups)| {
                    let picked = groups
                        .iter()
                        .filter(|(k, _)| pick(k))
                        .map(|(k, g)| (k.clone(), g.clone()))
                        .collect();
                    (*start, picked)
                })
                .filter(|(_, groups): &(i64, Vec<(Key, Group)>)| !groups.is_empty())
                .collect(),
            suppressed: self
                .suppressed_until
                .iter()
                .filter(|(k, _)| pick(k))
                .map(|(k, t)| (k.clone(), *t))
                .collect(),
        }
    }

    /// Keys held: groups of open windows and suppressed keys.
    pub fn keys(&self) -> usize {
        self.open_groups().saturating_add(self.suppressed_until.len())
    }

    /// Evicts the least recently seen groups down to `keep`, closing their windows early (an
    /// alert they would raise now carries a note), then the oldest suppressions. Returns how
    /// many keys went.
    pub fn evict(
        &mut self,
        plan: &DetectionPlan,
        rule: &CompiledRule,
        keep: usize,
        max_keys: usize,
        out: &mut Vec<Alert>,
    ) -> u64 {
        let mut evicted = 0u64;
        let groups = self.open_groups();
        if let Some((size, _)) = plan.window
            && groups > keep
        {
            let items: Vec<(i64, (i64, &Key))> = self
                .windows
                .iter()
                .flat_map(|(start, gs)| gs.iter().map(move |(k, g)| (g.last, (*start, k))))
                .collect();
            let victims: Vec<(i64, Key)> = crate::state_bound::least_recent(items, groups - keep)
                .into_iter()
                .map(|(start, k)| (start, k.clone()))
                .collect();
            let mut by_window: BTreeMap<i64, KeyMap<Group>> = BTreeMap::new();
            for (start, key) in victims {
                let Some(window) = self.windows.get_mut(&start) else {
                    continue;
                };
                if let Some(g) = window.remove(&key) {
                    by_window.entry(start).or_default().insert(key, g);
                    evicted += 1;
                }
                if window.is_empty() {
                    self.windows.remove(&start);
                }
            }
            let note = crate::state_bound::eviction_note(max_keys);
            for (start, groups) in by_window {
                let first = out.len();
                self.close(plan, rule, start, start.saturating_add(size), groups, out);
                for a in out.iter_mut().skip(first) {
                    a.summary.push_str(&note);
                }
            }
        }
        let suppressed = self.suppressed_until.len();
        let room = keep.saturating_sub(self.open_groups());
        if suppressed > room {
            let victims = evict_least_recent(&mut self.suppressed_until, suppressed - room, |t| *t);
            evicted += victims.len() as u64;
        }
        evicted
    }

    pub fn process(
        &mut self,
        plan: &DetectionPlan,
        rule: &CompiledRule,
        rows: &Rows<'_>,
        mask: &BooleanArray,
        watermark_before: Option<i64>,
        out: &mut Vec<Alert>,
    ) {
        let entity_col = rule.entity.as_ref().map(|(_, c)| *c);
        let Some((size, slide)) = plan.window else {
            // Stateless: one alert per matching event, unless suppressed.
            let mut row_key = RowKey::default();
            for row in mask.values().set_indices() {
                let t = rows.time(row);
                let borrowed = row_key.read(rows, &plan.group_by, row);
                if self.suppressed_until.get(borrowed).is_some_and(|until| t < *until) {
                    continue;
                }
                let key = borrowed.to_key();
                if let Some(s) = plan.suppress {
                    self.suppressed_until.insert(key.clone(), t.saturating_add(s));
                }
                let group = group_map(&plan.group_by, &key);
                let summary = format!("{}: matched for {}", rule.rule().title, describe(&group));
                out.push(make_alert(
                    rule,
                    AlertParts::at(
                        AlertStatus::Firing,
                        group,
                        t,
                        vec![rows.evidence(row)],
                        entity_col.and_then(|c| rows.value(c, row)),
                        summary,
                    )
                    .backed_by(rule, rows, row),
                ));
            }
            return;
        };
        let track = rule.rule().respond.is_some();
        let mut row_key = RowKey::default();
        for row in mask.values().set_indices() {
            let t = rows.time(row);
            if watermark_before.is_some_and(|w| t < w) {
                continue; // late: counted by the engine, kept out of window state
            }
            let key = row_key.read(rows, &plan.group_by, row);
            let mut start = t.div_euclid(slide).saturating_mul(slide);
            while start > t.saturating_sub(size) {
                let windows = self.windows.entry(start).or_default();
                let g = state_of(windows, key, || new_group(plan.having.as_ref(), t));
                update(g, plan.having.as_ref(), rows, row, t, entity_col);
                if track {
                    let (entitled, sender, trusted) = rows.entitled(row, entity_col);
                    g.backing.add(entitled, sender, trusted);
                }
                start = start.saturating_sub(slide);
            }
        }
    }

    /// Closes every window whose end is at or before the watermark.
    pub fn advance(&mut self, plan: &DetectionPlan, rule: &CompiledRule, watermark: i64, out: &mut Vec<Alert>) {
        let Some((size, _)) = plan.window else {
            // Stateless rules only need their suppression memory trimmed.
            self.suppressed_until.retain(|_, until| *until > watermark);
            return;
        };
        while let Some((&start, _)) = self.windows.first_key_value() {
            if start.saturating_add(size) > watermark {
                break;
            }
            let Some(groups) = self.windows.remove(&start) else {
                break;
            };
            self.close(plan, rule, start, start.saturating_add(size), groups, out);
        }
        self.suppressed_until
            .retain(|_, until| *until > watermark.min(i64::MAX - size));
    }

    fn close(
        &mut self,
        plan: &DetectionPlan,
        rule: &CompiledRule,
        start: i64,
        end: i64,
        groups: KeyMap<Group>,
        out: &mut Vec<Alert>,
    ) {
        let mut groups: Vec<(Key, Group)> = groups.into_iter().collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let pass: Vec<bool> = match &plan.having {
            None => vec![true; groups.len()],
            Some(h) => match evaluate_having(h, plan, &groups) {
                Ok(p) => p,
                Err(error) => {
                    tracing::error!(rule = %rule.rule().id, %error, "having evaluation failed");
                    return;
                }
            },
        };
        for ((key, g), ok) in groups.into_iter().zip(pass) {
            if !ok || self.suppressed_until.get(&key).is_some_and(|until| start < *until) {
                continue;
            }
            if let Some(s) = plan.suppress {
                self.suppressed_until.insert(key.clone(), start.saturating_add(s));
            }
            let aggregates: BTreeMap<String, f64> = plan
                .having
                .as_ref()
                .map(|h| {
                    h.aggs
                        .iter()
                        .enumerate()
                        .map(|(i, a)| (a.label.clone(), agg_value(&g, a.func, i)))
                        .collect()
                })
                .unwrap_or_default();
            let group = group_map(&plan.group_by, &key);
            let summary = format!(
                "{}: {} events for {} between {} and {}",
                rule.rule().title,
                g.count,
                describe(&group),
                verity_model::time::format_rfc3339_ns(start),
                verity_model::time::format_rfc3339_ns(end)
            );
            out.push(make_alert(
                rule,
                AlertParts {
                    status: AlertStatus::Firing,
                    group,
                    at: start,
                    window: Some((start, end)),
                    count: g.count,
                    aggregates,
                    first: g.first,
                    last: g.last,
                    evidence: unpack_all(&g.evidence),
                    entity: g.entity,
                    summary,
                    unverified: g.unverified,
                    backing: rule.rule().respond.is_some().then_some(g.backing),
                },
            ));
        }
    }
}

fn new_group(having: Option<&HavingPlan>, t: i64) -> Group {
    let n = having.map(|h| h.aggs.len()).unwrap_or(0);
    Group {
        first: t,
        last: t,
        counts: vec![0; n],
        distinct: vec![ValueSet::default(); n],
        numbers: vec![None; n],
        ..Default::default()
    }
}

fn update(g: &mut Group, having: Option<&HavingPlan>, rows: &Rows<'_>, row: usize, t: i64, entity_col: Option<usize>) {
    // Saturating: a group restored from a checkpoint or another instance may hold anything.
    g.count = g.count.saturating_add(1);
    g.unverified |= !rows.sender_verified(row);
    g.first = g.first.min(t);
    g.last = g.last.max(t);
    push_evidence(&mut g.evidence, || rows.packed_evidence(row));
    if g.entity.is_none() {
        g.entity = entity_col.and_then(|c| rows.value(c, row));
    }
    let Some(h) = having else { return };
    // Values are read borrowed or as numbers: no allocation per row but a new distinct value.
    for (i, a) in h.aggs.iter().enumerate() {
        match a.func {
            AggFunc::Count => {
                if a.column.is_none_or(|c| rows.is_valid(c, row))
                    && let Some(n) = g.counts.get_mut(i)
                {
                    *n = n.saturating_add(1);
                }
            }
            AggFunc::CountDistinct => {
                if let Some(v) = a.column.and_then(|c| rows.text_value(c, row))
                    && !g.distinct[i].contains(v.as_ref())
                {
                    g.distinct[i].insert(v.into_owned());
                }
            }
            AggFunc::Sum | AggFunc::Min | AggFunc::Max => {
                if let Some(x) = a.column.and_then(|c| rows.number(c, row)) {
                    g.numbers[i] = Some(match (a.func, g.numbers[i]) {
                        (_, None) => x,
                        (AggFunc::Sum, Some(acc)) => acc + x,
                        (AggFunc::Min, Some(acc)) => acc.min(x),
                        (_, Some(acc)) => acc.max(x),
                    });
                }
            }
        }
    }
}

fn agg_value(g: &Group, f: AggFunc, i: usize) -> f64 {
    match f {
        AggFunc::Count => g.counts[i] as f64,
        AggFunc::CountDistinct => g.distinct[i].len() as f64,
        _ => g.numbers[i].unwrap_or(f64::NAN),
    }
}

fn evaluate_having(h: &HavingPlan, plan: &DetectionPlan, groups: &[(Key, Group)]) -> Result<Vec<bool>, EvalError> {
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (i, _) in plan.group_by.iter().enumerate() {
        let values: StringArray = groups.iter().map(|(k, _)| k.values().nth(i).flatten()).collect();
        columns.push(Arc::new(values));
    }
    for (i, a) in h.aggs.iter().enumerate() {
        match a.func {
            AggFunc::Count | AggFunc::CountDistinct => {
                let v: Int64Array = groups
                    .iter()
                    .map(|(_, g)| Some(agg_value(g, a.func, i) as i64))
                    .collect();
                columns.push(Arc::new(v));
            }
            _ => {
                let v: Float64Array = groups.iter().map(|(_, g)| g.numbers[i]).collect();
                columns.push(Arc::new(v));
            }
        }
    }
    let batch = RecordBatch::try_new(h.schema.clone(), columns)?;
    let v = h
        .expr
        .evaluate(&batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|source| EvalError::Expression { what: "having", source })?;
    let b = v.as_boolean_opt().ok_or(EvalError::NotBoolean { what: "having" })?;
    Ok(b.iter().map(|x| x == Some(true)).collect())
}

impl RuleKind for DetectionState {
    fn process(
        &mut self,
        rule: &CompiledRule,
        rows: &Rows<'_>,
        hidden: Option<&BooleanArray>,
        watermark_before: Option<i64>,
        out: &mut Vec<Alert>,
    ) -> Result<u64, EvalError> {
        let Plan::Detection(p) = &rule.plan else {
            return Err(EvalError::PlanMismatch);
        };
        let mask = visible(eval_bool(&p.filter, "where", rows.batch)?, hidden)?;
        DetectionState::process(self, p, rule, rows, &mask, watermark_before, out);
        Ok(mask.true_count() as u64)
    }

    fn advance(&mut self, rule: &CompiledRule, watermark: i64, out: &mut Vec<Alert>) {
        if let Plan::Detection(p) = &rule.plan {
            DetectionState::advance(self, p, rule, watermark, out);
        }
    }

    fn flush(&mut self, rule: &CompiledRule, out: &mut Vec<Alert>) {
        RuleKind::advance(self, rule, i64::MAX, out);
    }

    fn evict(&mut self, rule: &CompiledRule, keep: usize, max_keys: usize, out: &mut Vec<Alert>) -> u64 {
        match &rule.plan {
            Plan::Detection(p) => DetectionState::evict(self, p, rule, keep, max_keys, out),
            _ => 0,
        }
    }

    fn export_keys(&self, pick: crate::kind::KeyPick<'_>) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self.export_moved(pick))
    }

    fn forget_keys(&mut self, pick: crate::kind::KeyPick<'_>) -> usize {
        let before = self.keys();
        for groups in self.windows.values_mut() {
            groups.retain(|k, _| !pick(k));
        }
        self.windows.retain(|_, groups| !groups.is_empty());
        self.suppressed_until.retain(|k, _| !pick(k));
        before.saturating_sub(self.keys())
    }

    fn import_keys(
        &mut self,
        rule: &CompiledRule,
        state: serde_json::Value,
        room: usize,
    ) -> Result<usize, crate::kind::ImportError> {
        let Plan::Detection(p) = &rule.plan else {
            return Err(crate::kind::ImportError::Inconsistent);
        };
        let moved: Moved = serde_json::from_value(state)?;
        if !Self::fits(p, &moved.windows, &moved.suppressed) {
            return Err(crate::kind::ImportError::Inconsistent);
        }
        let keys = moved
            .windows
            .iter()
            .map(|(_, g)| g.len())
            .fold(moved.suppressed.len(), usize::saturating_add);
        if keys > room {
            return Err(crate::kind::ImportError::TooManyKeys { keys, room });
        }
        let mut n = moved.suppressed.len();
        for (start, groups) in moved.windows {
            n += groups.len();
            self.windows.entry(start).or_default().extend(groups);
        }
        self.suppressed_until.extend(moved.suppressed);
        Ok(n)
    }

    /// Open windows and suppression, for the detections that have them.
    fn save(&mut self, rule: &CompiledRule, dir: &std::path::Path) -> std::io::Result<()> {
        match &rule.plan {
            Plan::Detection(p) if p.window.is_some() || p.suppress.is_some() => {
                DetectionState::save(self, dir, &rule.rule().id, rule.fingerprint)
            }
            _ => Ok(()),
        }
    }

    fn state_keys(&self) -> usize {
        self.keys()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
