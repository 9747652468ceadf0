//! Filters (`where`, an assertion's `scope`) keep a row only when their predicate is true: NULL
//! and false both leave it out. The left side of each `AND` of a filter is therefore read with
//! NULL as false ([`NullAsFalse`]), which changes no row's fate but lets DataFusion stop early.
//!
//! DataFusion skips the right side of an `AND` whose left side is false on every row of a
//! batch, and evaluates it only on the left side's true rows when those are few, but only when
//! the left side holds no NULL. A column that is NULL on many rows (a request path on
//! ztunnel's connection records, a JWT principal on requests without a token) made a rule
//! evaluate every one of its conditions on every row.
//!
//! Only the left sides are read so (that is where DataFusion looks), and only where they may be
//! NULL; reading NULL as false is one pass over two bitmaps. An assertion's `require` is not a
//! filter (its NULL means *unknown*) and is left alone.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::compute::prep_null_mask_filter;
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::expressions::BinaryExpr;
use datafusion::physical_plan::PhysicalExpr;

/// `e`, a filter, with the left side of each `AND` that may be NULL read as [`NullAsFalse`].
/// Descends through `AND` and `OR` (whose operands, too, only matter by being true), not
/// through `NOT` or anything else. True on exactly the rows where `e` is true.
pub(crate) fn rewrite(e: Arc<dyn PhysicalExpr>, schema: &Schema) -> DfResult<Arc<dyn PhysicalExpr>> {
    let Some(b) = e.downcast_ref::<BinaryExpr>() else {
        return Ok(e);
    };
    let (left, right) = match b.op() {
        Operator::And => (
            null_free(rewrite(Arc::clone(b.left()), schema)?, schema)?,
            rewrite(Arc::clone(b.right()), schema)?,
        ),
        Operator::Or => (
            rewrite(Arc::clone(b.left()), schema)?,
            rewrite(Arc::clone(b.right()), schema)?,
        ),
        _ => return Ok(e),
    };
    e.with_new_children(vec![left, right])
}

fn null_free(e: Arc<dyn PhysicalExpr>, schema: &Schema) -> DfResult<Arc<dyn PhysicalExpr>> {
    Ok(if e.nullable(schema)? {
        Arc::new(NullAsFalse { inner: e })
    } else {
        e
    })
}

/// `inner IS TRUE`: a boolean with NULL read as false, computed from the validity and value
/// bitmaps at once (DataFusion's own `IS TRUE` compares row by row).
#[derive(Debug, Eq)]
struct NullAsFalse {
    inner: Arc<dyn PhysicalExpr>,
}

impl PartialEq for NullAsFalse {
    fn eq(&self, other: &Self) -> bool {
        self.inner.eq(&other.inner)
    }
}

impl Hash for NullAsFalse {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl fmt::Display for NullAsFalse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} IS TRUE", self.inner)
    }
}

impl PhysicalExpr for NullAsFalse {
    fn data_type(&self, _schema: &Schema) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, _schema: &Schema) -> DfResult<bool> {
        Ok(false)
    }

    fn return_field(&self, _schema: &Schema) -> DfResult<FieldRef> {
        Ok(Arc::new(Field::new(self.to_string(), DataType::Boolean, false)))
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        match self.inner.evaluate(batch)? {
            ColumnarValue::Array(a) => {
                let b = a.as_boolean_opt().ok_or_else(|| {
                    DataFusionError::Internal(format!("{} is {}, not a boolean", self.inner, a.data_type()))
                })?;
                if b.null_count() == 0 {
                    return Ok(ColumnarValue::Array(a));
                }
                Ok(ColumnarValue::Array(Arc::new(prep_null_mask_filter(b))))
            }
            ColumnarValue::Scalar(ScalarValue::Boolean(v)) => {
                Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(v == Some(true)))))
            }
            ColumnarValue::Scalar(s) if s.is_null() => Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false)))),
            ColumnarValue::Scalar(s) => Err(DataFusionError::Internal(format!(
                "{} is {}, not a boolean",
                self.inner,
                s.data_type()
            ))),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> DfResult<Arc<dyn PhysicalExpr>> {
        let [inner] = <[Arc<dyn PhysicalExpr>; 1]>::try_from(children)
            .map_err(|c| DataFusionError::Internal(format!("IS TRUE takes one argument, not {}", c.len())))?;
        Ok(Arc::new(Self { inner }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)?;
        write!(f, " IS TRUE")
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use arrow::array::{ArrayRef, BooleanArray, Int64Array};
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::{Expr, col, lit, not};
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    use super::*;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Boolean, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("x", DataType::Int64, true),
            Field::new("never_null", DataType::Boolean, false),
        ]))
    }

    fn plan(e: &Expr) -> Arc<dyn PhysicalExpr> {
        let df = DFSchema::try_from(schema().as_ref().clone()).expect("schema");
        SessionContext::new()
            .create_physical_expr(e.clone(), &df)
            .expect("plan")
    }

    fn rewritten(e: &Expr) -> Arc<dyn PhysicalExpr> {
        rewrite(plan(e), &schema()).expect("rewrite")
    }

    /// The rows a filter keeps: true, not NULL, not false.
    fn kept(e: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Vec<bool> {
        let v = e
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .expect("evaluate");
        let b = v.as_boolean();
        (0..b.len()).map(|i| b.is_valid(i) && b.value(i)).collect()
    }

    fn leaf() -> impl Strategy<Value = Expr> {
        prop_oneof![
            Just(col("a")),
            Just(col("b")),
            Just(col("never_null")),
            (-2i64..6).prop_map(|n| col("x").lt(lit(n))),
            Just(col("x").is_null()),
            Just(col("a").is_not_null()),
            Just(lit(ScalarValue::Boolean(None))),
            Just(lit(true)),
        ]
    }

    fn predicate() -> impl Strategy<Value = Expr> {
        leaf().prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(l, r)| l.and(r)),
                (inner.clone(), inner.clone()).prop_map(|(l, r)| l.or(r)),
                inner.prop_map(not),
            ]
        })
    }

    /// A row's `a`, `b`, `x` and `never_null`.
    type Row = (Option<bool>, Option<bool>, Option<i64>, bool);

    fn batch(rows: &[Row]) -> RecordBatch {
        let a: BooleanArray = rows.iter().map(|r| r.0).collect();
        let b: BooleanArray = rows.iter().map(|r| r.1).collect();
        let x: Int64Array = rows.iter().map(|r| r.2).collect();
        let n: BooleanArray = rows.iter().map(|r| Some(r.3)).collect();
        let columns: Vec<ArrayRef> = vec![Arc::new(a), Arc::new(b), Arc::new(x), Arc::new(n)];
        RecordBatch::try_new(schema(), columns).expect("batch")
    }

    proptest! {
        /// On any batch with NULLs, the rewritten filter keeps exactly the rows the original
        /// keeps, whatever the nesting of AND, OR and NOT (constants included).
        #[test]
        fn keeps_the_same_rows(
            e in predicate(),
            rows in proptest::collection::vec(
                (
                    proptest::option::of(any::<bool>()),
                    proptest::option::of(any::<bool>()),
                    proptest::option::of(-2i64..6),
                    any::<bool>(),
                ),
                1..40,
            ),
        ) {
            let batch = batch(&rows);
            let (original, rewritten) = (plan(&e), rewritten(&e));
            prop_assert_eq!(kept(&rewritten, &batch), kept(&original, &batch), "{} -> {}", original, rewritten);
        }
    }

    #[test]
    fn the_left_side_of_an_and_reads_null_as_false_where_it_may_be_null() {
        assert_eq!(rewritten(&col("a").and(col("b"))).to_string(), "a@0 IS TRUE AND b@1");
        assert_eq!(
            // (DataFusion prints no parentheses: this is `(a IS TRUE AND b) IS TRUE AND x < 3`.)
            rewritten(&col("a").and(col("b")).and(col("x").lt(lit(3i64)))).to_string(),
            "a@0 IS TRUE AND b@1 IS TRUE AND x@2 < 3"
        );
        // Operands of OR are descended into, not read differently themselves.
        assert_eq!(
            rewritten(&col("a").or(col("a").and(col("b")))).to_string(),
            "a@0 OR a@0 IS TRUE AND b@1"
        );
        // A left side that cannot be NULL is kept as it is.
        assert_eq!(
            rewritten(&col("never_null").and(col("a"))).to_string(),
            plan(&col("never_null").and(col("a"))).to_string()
        );
        // Under NOT, NULL and false differ (NOT NULL is NULL, NOT false is true): left alone.
        let negated = not(col("a").and(col("b")));
        assert_eq!(rewritten(&negated).to_string(), plan(&negated).to_string());
    }

    #[test]
    fn a_left_side_with_nulls_now_stops_the_and() {
        // `1 / x` fails on any row it is evaluated on (x is 0). With NULL read as false the
        // left side is false on every row, so DataFusion never evaluates the right side.
        let e = col("a").and((lit(1i64) / col("x")).lt(lit(0)));
        let rows = [(None, None, Some(0), true), (Some(false), None, Some(0), false)];
        assert!(
            plan(&e).evaluate(&batch(&rows)).is_err(),
            "the original evaluates 1 / 0"
        );
        assert_eq!(kept(&rewritten(&e), &batch(&rows)), vec![false, false]);
    }
}
