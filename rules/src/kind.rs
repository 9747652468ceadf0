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

    /// Keys the state holds, for its bound and its metric.
    fn state_keys(&self) -> usize;

    /// The state itself, for the engine to read what only one kind has (the assertion
    /// metrics read [`crate::assertion::AssertionState`]).
    fn as_any(&self) -> &dyn Any;
}
