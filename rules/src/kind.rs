//! The one shape every rule kind has. The engine drives each rule through [`RuleKind`] the
//! same way (evaluate a batch, follow event time, flush, bound and save its state); each kind
//! implements it in its own file over its own state, with its own plan from the compiled
//! rule: [`crate::detection`], [`crate::assertion`], [`crate::first_seen`],
//! [`crate::absence`]. [`fresh`] is the one place that picks a kind.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::prep_null_mask_filter;
use datafusion::physical_plan::PhysicalExpr;
use verity_model::alert::Alert;

use crate::absence::AbsenceState;
use crate::assertion::AssertionState;
use crate::compile::{CompiledRule, Plan};
use crate::detection::DetectionState;
use crate::evidence::Rows;
use crate::first_seen::FirstSeenState;

/// What the engine does with every rule, whatever its kind.
pub(crate) trait RuleKind: Send {
    /// Evaluates one batch without the `hidden` rows (forgeries, for rules that do not ask
    /// about them); returns how many rows the rule's filter or scope matched.
    fn process(
        &mut self,
        rule: &CompiledRule,
        rows: &Rows<'_>,
        hidden: Option<&BooleanArray>,
        watermark_before: Option<i64>,
        out: &mut Vec<Alert>,
    ) -> Result<u64, String>;

    /// Event time has reached `watermark`: windows close, silence and staleness show.
    fn advance(&mut self, _rule: &CompiledRule, _watermark: i64, _out: &mut Vec<Alert>) {}

    /// End of input (replay, tests, drain). Only what end of input really ends is emitted:
    /// open windows close, but silence is not assumed.
    fn flush(&mut self, _rule: &CompiledRule, _out: &mut Vec<Alert>) {}

    /// Evicts the least recently seen keys down to `keep` (the state is past `max_keys`);
    /// returns how many went.
    fn evict(&mut self, rule: &CompiledRule, keep: usize, max_keys: usize, out: &mut Vec<Alert>) -> u64;

    /// Writes what must survive a restart to `dir` (nothing, for kinds that keep nothing).
    fn save(&mut self, _rule: &CompiledRule, _dir: &Path) -> std::io::Result<()> {
        Ok(())
    }

    /// Keys the state holds, for its bound and its metric.
    fn state_keys(&self) -> usize;

    /// The assertion state, for the assertion metrics; `None` for other kinds.
    fn assertion(&self) -> Option<&AssertionState> {
        None
    }
}

/// A new state for `rule`, loaded from `state_dir` for the kinds that keep one there.
pub(crate) fn fresh(rule: &CompiledRule, state_dir: Option<&Path>) -> Box<dyn RuleKind> {
    let id = &rule.rule().id;
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

/// The error of a state given a rule of another kind (a bug, reported as an evaluation error).
pub(crate) const PLAN_MISMATCH: &str = "rule state does not match its plan";

/// Evaluates a predicate; NULL counts as false.
pub(crate) fn eval_bool(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray, String> {
    let v = expr
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|e| e.to_string())?;
    let b = v.as_boolean_opt().ok_or("predicate did not evaluate to booleans")?;
    Ok(if b.null_count() > 0 {
        prep_null_mask_filter(b)
    } else {
        b.clone()
    })
}

/// An optional filter: every row when there is none.
pub(crate) fn eval_filter(filter: Option<&Arc<dyn PhysicalExpr>>, batch: &RecordBatch) -> Result<BooleanArray, String> {
    match filter {
        Some(f) => eval_bool(f, batch),
        None => Ok(BooleanArray::from(vec![true; batch.num_rows()])),
    }
}

/// `mask` without the `hidden` rows.
pub(crate) fn visible(mask: BooleanArray, hidden: Option<&BooleanArray>) -> Result<BooleanArray, String> {
    match hidden {
        None => Ok(mask),
        Some(h) => arrow::compute::and_not(&mask, h).map_err(|e| e.to_string()),
    }
}
