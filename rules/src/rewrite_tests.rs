//! What the tests of every expression rewrite share: a batch of text columns, and an
//! expression planned as the engine plans it and evaluated on that batch, so a test can
//! compare DataFusion's own result with the rewritten one row by row.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;

/// A batch of nullable text columns, in order.
pub(crate) fn text_batch(columns: Vec<(&str, Vec<Option<String>>)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, _)| Field::new(*n, DataType::Utf8, true))
        .collect();
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|(_, v)| Arc::new(StringArray::from(v)) as ArrayRef)
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("batch")
}

/// The batch's schema as the planner takes it.
pub(crate) fn df_schema(batch: &RecordBatch) -> DFSchema {
    DFSchema::try_from(batch.schema().as_ref().clone()).expect("schema")
}

/// `expr` planned and evaluated on every row of `batch`.
pub(crate) fn evaluate(expr: Expr, batch: &RecordBatch) -> BooleanArray {
    let plan = SessionContext::new()
        .create_physical_expr(expr, &df_schema(batch))
        .expect("plan");
    let values = plan
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .expect("evaluate");
    values.as_boolean().clone()
}
