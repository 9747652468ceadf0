//! Regular-expression matches with a constant pattern, compiled once when a rule is compiled.
//!
//! DataFusion simplifies `regexp_like(path, '…', 'i')` to the operator `path ~* '…'`, whose
//! kernel compiles the pattern again on every batch; for the pack's attack patterns that was
//! about a tenth of the stateless rules' time. After simplification, [`precompile`] rewrites
//! every such match (`~`, `~*`, `!~`, `!~*`) of a text column against a literal pattern into a
//! call of a function that holds the compiled expression. It compiles the pattern exactly as
//! the kernel does (`(?i)` prepended for the case-insensitive operators, the `regex` crate's
//! default limits), and a NULL input stays NULL, so what matches does not change.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, DataFusionError, ExprSchema, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use regex::Regex;

/// Rewrites matches against literal patterns in `expr` (see the module doc).
pub fn precompile(expr: Expr, schema: &DFSchema) -> DfResult<Expr> {
    expr.transform_up(|e| {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else {
            return Ok(Transformed::no(e));
        };
        let (case_insensitive, negated) = match op {
            Operator::RegexMatch => (false, false),
            Operator::RegexIMatch => (true, false),
            Operator::RegexNotMatch => (false, true),
            Operator::RegexNotIMatch => (true, true),
            _ => return Ok(Transformed::no(e)),
        };
        let Expr::Literal(ScalarValue::Utf8(Some(pattern)), _) = right.as_ref() else {
            return Ok(Transformed::no(e));
        };
        if left.get_type(schema as &dyn ExprSchema)? != DataType::Utf8 || pattern.is_empty() {
            return Ok(Transformed::no(e));
        }
        let pattern = if case_insensitive {
            format!("(?i){pattern}")
        } else {
            pattern.clone()
        };
        let regex = Regex::new(&pattern)
            .map_err(|err| DataFusionError::Plan(format!("Regular expression did not compile: {err}")))?;
        let udf = ScalarUDF::from(MatchesRegex {
            pattern,
            regex,
            negated,
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        });
        Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::new(udf),
            vec![left.as_ref().clone()],
        ))))
    })
    .map(|t| t.data)
}

/// `text ~ pattern` (or `!~`) with the pattern compiled.
#[derive(Debug)]
struct MatchesRegex {
    /// As compiled, with `(?i)` for a case-insensitive match.
    pattern: String,
    regex: Regex,
    negated: bool,
    signature: Signature,
}

impl PartialEq for MatchesRegex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.negated == other.negated
    }
}

impl Eq for MatchesRegex {}

impl Hash for MatchesRegex {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pattern.hash(state);
        self.negated.hash(state);
    }
}

impl ScalarUDFImpl for MatchesRegex {
    fn name(&self) -> &str {
        if self.negated {
            "not_matches_regex"
        } else {
            "matches_regex"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        match args.args.first() {
            Some(ColumnarValue::Array(a)) => {
                let Some(text) = a.as_string_opt::<i32>() else {
                    return Err(DataFusionError::Internal(format!("{} expects text", self.name())));
                };
                // Like the kernel: every slot is matched, NULL slots keep their NULL.
                let values =
                    BooleanBuffer::collect_bool(text.len(), |i| self.regex.is_match(text.value(i)) != self.negated);
                Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
                    values,
                    text.nulls().cloned(),
                ))))
            }
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(v))) => Ok(ColumnarValue::Scalar(ScalarValue::Boolean(
                v.as_deref().map(|s| self.regex.is_match(s) != self.negated),
            ))),
            _ => Err(DataFusionError::Internal(format!(
                "{} expects one text argument",
                self.name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::{col, lit};
    use datafusion::prelude::SessionContext;

    use super::*;

    /// The precompiled match gives what DataFusion's own operator gives, NULLs included.
    #[test]
    fn precompiled_matches_are_the_operators_matches() {
        let schema = Schema::new(vec![Field::new("path", DataType::Utf8, true)]);
        let df_schema = DFSchema::try_from(schema.clone()).expect("schema");
        let paths: ArrayRef = Arc::new(StringArray::from(vec![
            Some("/a/../../etc/passwd"),
            Some("/A/..%2F"),
            None,
            Some("/ok"),
            Some(""),
        ]));
        let batch = RecordBatch::try_new(Arc::new(schema), vec![paths]).expect("batch");
        let ctx = SessionContext::new();
        let pattern = r"(\.\./|\.\.%2f)";
        for op in [
            Operator::RegexMatch,
            Operator::RegexIMatch,
            Operator::RegexNotMatch,
            Operator::RegexNotIMatch,
        ] {
            let original = Expr::BinaryExpr(BinaryExpr::new(Box::new(col("path")), op, Box::new(lit(pattern))));
            let rewritten = precompile(original.clone(), &df_schema).expect("rewrite");
            assert!(matches!(rewritten, Expr::ScalarFunction(_)), "{op}: {rewritten}");
            let eval = |e: Expr| {
                let p = ctx.create_physical_expr(e, &df_schema).expect("plan");
                p.evaluate(&batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
                    .expect("evaluate")
            };
            let (want, got) = (eval(original), eval(rewritten));
            assert_eq!(want.as_boolean(), got.as_boolean(), "{op}");
        }
    }

    #[test]
    fn a_pattern_that_does_not_compile_fails_at_rule_load() {
        let schema = Schema::new(vec![Field::new("path", DataType::Utf8, true)]);
        let df_schema = DFSchema::try_from(schema).expect("schema");
        let bad = Expr::BinaryExpr(BinaryExpr::new(
            Box::new(col("path")),
            Operator::RegexMatch,
            Box::new(lit("(unclosed")),
        ));
        let err = precompile(bad, &df_schema).unwrap_err();
        assert!(err.to_string().contains("did not compile"), "{err}");
    }
}
