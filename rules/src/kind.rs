//! The one shape every rule kind has. The engine drives each rule through [`RuleKind`] the
//! same way (evaluate a batch, follow event time, flush, bound and save its state); each kind
//! implements it in its own file over its own state, with its own plan from the compiled
//! rule: [`crate::detection`], [`crate::assertion`], [`crate::first_seen`],
//! [`crate::absence`]. The engine's `fresh_state` is the one place that picks a kind; the
//! row masks kinds evaluate are in [`crate::mask`].

use std::any::Any;
use std::path::Path;

use arrow::array::BooleanArray;
use verity_model::alert::Alert;

use crate::compile::CompiledRule;
use crate::eval_error::EvalError;
use crate::evidence::Rows;
use crate::state_key::Key;

/// Picks the keys of one keyed-stream partition (see [`crate::partition_state`]).
pub(crate) type KeyPick<'p> = &'p dyn Fn(&Key) -> bool;

/// Why exported state was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("state does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("state does not fit the rule (another key or aggregate count)")]
    Inconsistent,
    #[error("{keys} keys would take the rule past its bound ({room} more fit)")]
    TooManyKeys { keys: usize, room: usize },
}

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
    ) -> Result<u64, EvalError>;

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

    /// What the state holds for the keys `pick` selects, for another instance to take over
    /// when their partition moves (nothing, for kinds that keep nothing per key).
    fn export_keys(&self, _pick: KeyPick<'_>) -> Result<serde_json::Value, serde_json::Error> {
        Ok(serde_json::Value::Null)
    }

    /// Drops the keys `pick` selects: their partition moved to another instance. Returns how
    /// many went.
    fn forget_keys(&mut self, _pick: KeyPick<'_>) -> usize {
        0
    }

    /// Takes over keys [`RuleKind::export_keys`] gave for the same rule text, replacing what
    /// this state holds for them. Returns how many keys came; refuses state that does not fit
    /// the rule's plan, or that brings more than `room` keys (the rule's bound).
    fn import_keys(
        &mut self,
        _rule: &CompiledRule,
        _state: serde_json::Value,
        _room: usize,
    ) -> Result<usize, ImportError> {
        Ok(0)
    }

    /// Keys the state holds, for its bound and its metric.
    fn state_keys(&self) -> usize;

    /// The state itself, for the engine to read what only one kind has (the assertion
    /// metrics read [`crate::assertion::AssertionState`]).
    fn as_any(&self) -> &dyn Any;
}
