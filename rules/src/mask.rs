//! The row masks a rule kind evaluates on a batch: its filter or scope as booleans (NULL
//! counts as false), without the rows hidden from it.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::prep_null_mask_filter;
use datafusion::physical_plan::PhysicalExpr;

use crate::eval_error::EvalError;

/// Evaluates a predicate, the rule's `what` (for errors); NULL counts as false.
pub(crate) fn eval_bool(
    expr: &Arc<dyn PhysicalExpr>,
    what: &'static str,
    batch: &RecordBatch,
) -> Result<BooleanArray, EvalError> {
    let v = expr
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|source| EvalError::Expression { what, source })?;
    let b = v.as_boolean_opt().ok_or(EvalError::NotBoolean { what })?;
    Ok(if b.null_count() > 0 {
        prep_null_mask_filter(b)
    } else {
        b.clone()
    })
}

/// An optional `where` filter: every row when there is none.
pub(crate) fn eval_filter(
    filter: Option<&Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
) -> Result<BooleanArray, EvalError> {
    match filter {
        Some(f) => eval_bool(f, "where", batch),
        None => Ok(BooleanArray::from(vec![true; batch.num_rows()])),
    }
}

/// `mask` without the `hidden` rows.
pub(crate) fn visible(mask: BooleanArray, hidden: Option<&BooleanArray>) -> Result<BooleanArray, EvalError> {
    match hidden {
        None => Ok(mask),
        Some(h) => Ok(arrow::compute::and_not(&mask, h)?),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, Int64Array};
    use datafusion::physical_expr::expressions::lit;

    use super::*;

    fn numbers() -> RecordBatch {
        RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef)]).expect("batch")
    }

    #[test]
    fn a_predicate_that_is_not_boolean_names_its_part() {
        let e = eval_bool(&lit(1i64), "scope", &numbers()).unwrap_err();
        assert!(matches!(e, EvalError::NotBoolean { what: "scope" }), "{e}");
        assert_eq!(e.to_string(), "scope did not evaluate to booleans");
    }

    #[test]
    fn null_is_false_and_hidden_rows_are_left_out() {
        let mask = eval_bool(
            &lit(datafusion::common::ScalarValue::Boolean(None)),
            "where",
            &numbers(),
        )
        .expect("mask");
        assert_eq!(mask, BooleanArray::from(vec![false, false]));
        let all = eval_filter(None, &numbers()).expect("mask");
        let hidden = BooleanArray::from(vec![false, true]);
        assert_eq!(
            visible(all, Some(&hidden)).expect("mask"),
            BooleanArray::from(vec![true, false])
        );
    }
}
