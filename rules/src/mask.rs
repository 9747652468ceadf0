//! The row masks a rule kind evaluates on a batch: its filter or scope as booleans (NULL
//! counts as false), without the rows hidden from it.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::prep_null_mask_filter;
use datafusion::physical_plan::PhysicalExpr;

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
