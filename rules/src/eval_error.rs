//! Why a rule could not be evaluated on a batch. Every rule kind returns [`EvalError`] from
//! its `process`; the engine counts it as an evaluation error, logs it with the rule's id and
//! goes on with the next rule. A detection's `having` failing as its window closes is logged
//! by the detection itself.

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A compiled expression (`where`, `scope`, `require`, `having`) failed on the batch.
    #[error("{what}: {source}")]
    Expression {
        what: &'static str,
        #[source]
        source: DataFusionError,
    },
    /// An expression the compiler type-checked as boolean gave something else.
    #[error("{what} did not evaluate to booleans")]
    NotBoolean { what: &'static str },
    /// Arrow could not combine masks or build a batch of aggregates.
    #[error("{0}")]
    Arrow(#[from] ArrowError),
    /// The engine gave a state the plan of another kind (a bug, not a property of the input).
    #[error("rule state does not match its plan")]
    PlanMismatch,
}
