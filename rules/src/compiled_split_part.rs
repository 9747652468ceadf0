//! Comparisons of one field of a text column, such as `split_part(source_principal, '/', 5)`,
//! made without building a column of the fields.
//!
//! The pack reads a SPIFFE ID's trust domain and namespace with `split_part`, then compares
//! them with a list (`NOT IN ('ops', 'istio-system')`) or another column (`<>
//! source_namespace`). DataFusion's `split_part` copies every row's field into a new string
//! column; `coalesce(split_part(…), '')` is simplified into a `CASE` that computes it twice;
//! and `IN` hashes each field into a set. [`precompile`] rewrites, after simplification,
//! - `F IN (literals…)` and `F NOT IN (…)`, and
//! - `F = x`, `F <> x` (either side) with `x` any text expression,
//!
//! where `F` is `split_part(text, delimiter, n)` with a literal non-empty delimiter and a
//! literal non-zero `n`, or that wrapped as `coalesce` is simplified (`CASE WHEN F IS NOT NULL
//! THEN F ELSE 'literal' END`), into one function that finds each row's field as a slice of
//! the row and compares it in place. The field is found exactly as `split_part` finds it
//! (the n-th piece between delimiters, counted from the end for a negative `n`, empty when
//! there are fewer), and NULL propagates as it does through the original expression.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, StringArray};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, DataFusionError, ExprSchema, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::{Case, InList, ScalarFunction};
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// Rewrites the comparisons described in the module doc.
pub fn precompile(expr: Expr, schema: &DFSchema) -> DfResult<Expr> {
    expr.transform_up(|e| {
        let rewritten = match &e {
            Expr::InList(InList { expr, list, negated }) => in_list(expr, list, *negated, schema)?,
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let negated = match op {
                    Operator::Eq => false,
                    Operator::NotEq => true,
                    _ => return Ok(Transformed::no(e)),
                };
                match compared(left, right, negated, schema)? {
                    Some(call) => Some(call),
                    None => compared(right, left, negated, schema)?,
                }
            }
            _ => None,
        };
        Ok(match rewritten {
            Some(call) => Transformed::yes(call),
            None => Transformed::no(e),
        })
    })
    .map(|t| t.data)
}

fn in_list(expr: &Expr, list: &[Expr], negated: bool, schema: &DFSchema) -> DfResult<Option<Expr>> {
    let Some((field, text)) = Field::of(expr, schema)? else {
        return Ok(None);
    };
    let mut values = Vec::with_capacity(list.len());
    for item in list {
        // A NULL in the list makes a miss NULL instead of false: left to the kernel.
        let Expr::Literal(ScalarValue::Utf8(Some(v)), _) = item else {
            return Ok(None);
        };
        values.push(v.clone());
    }
    values.sort();
    values.dedup();
    Ok(Some(call(
        FieldCompared {
            field,
            against: Against::Literals(values),
            negated,
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        },
        vec![text],
    )))
}

/// `field = other` (or `<>`) when `field` is a field and `other` is text.
fn compared(field: &Expr, other: &Expr, negated: bool, schema: &DFSchema) -> DfResult<Option<Expr>> {
    let Some((field, text)) = Field::of(field, schema)? else {
        return Ok(None);
    };
    match other {
        Expr::Literal(ScalarValue::Utf8(Some(v)), _) => Ok(Some(call(
            FieldCompared {
                field,
                against: Against::Literals(vec![v.clone()]),
                negated,
                signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
            },
            vec![text],
        ))),
        Expr::Literal(..) => Ok(None),
        other if other.get_type(schema as &dyn ExprSchema)? == DataType::Utf8 => Ok(Some(call(
            FieldCompared {
                field,
                against: Against::Argument,
                negated,
                signature: Signature::exact(vec![DataType::Utf8; 2], Volatility::Immutable),
            },
            vec![text, other.clone()],
        ))),
        _ => Ok(None),
    }
}

fn call(udf: FieldCompared, args: Vec<Expr>) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(ScalarUDF::from(udf)), args))
}

/// One field of a text, as `split_part` cuts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Field {
    delimiter: String,
    /// Zero-based, counted from the start or (`from_end`) from the end.
    index: usize,
    from_end: bool,
    /// What a NULL text reads as (`coalesce`'s fallback); None keeps it NULL.
    if_null: Option<String>,
}

impl Field {
    /// The field `e` reads and the text expression it reads it from; None when `e` is not
    /// one.
    fn of(e: &Expr, schema: &DFSchema) -> DfResult<Option<(Self, Expr)>> {
        if let Expr::Case(Case {
            expr: None,
            when_then_expr,
            else_expr: Some(fallback),
        }) = e
        {
            // coalesce(F, 'x') as simplified: CASE WHEN F IS NOT NULL THEN F ELSE 'x' END.
            let [(when, then)] = when_then_expr.as_slice() else {
                return Ok(None);
            };
            let (Expr::IsNotNull(tested), Expr::Literal(ScalarValue::Utf8(Some(fallback)), _)) =
                (when.as_ref(), fallback.as_ref())
            else {
                return Ok(None);
            };
            if tested != then {
                return Ok(None);
            }
            return Ok(Self::split_part(then, schema)?.map(|(field, text)| {
                (
                    Self {
                        if_null: Some(fallback.clone()),
                        ..field
                    },
                    text,
                )
            }));
        }
        Self::split_part(e, schema)
    }

    fn split_part(e: &Expr, schema: &DFSchema) -> DfResult<Option<(Self, Expr)>> {
        let Expr::ScalarFunction(f) = e else {
            return Ok(None);
        };
        if f.func.name() != "split_part" {
            return Ok(None);
        }
        let [
            text,
            Expr::Literal(ScalarValue::Utf8(Some(delimiter)), _),
            Expr::Literal(ScalarValue::Int64(Some(n)), _),
        ] = f.args.as_slice()
        else {
            return Ok(None);
        };
        // An empty delimiter and n = 0 (an error) are left to the function itself.
        if delimiter.is_empty() || *n == 0 || text.get_type(schema as &dyn ExprSchema)? != DataType::Utf8 {
            return Ok(None);
        }
        let Ok(index) = usize::try_from(n.unsigned_abs() - 1) else {
            return Ok(None);
        };
        Ok(Some((
            Self {
                delimiter: delimiter.clone(),
                index,
                from_end: *n < 0,
                if_null: None,
            },
            text.clone(),
        )))
    }

    /// The field of a non-NULL text.
    fn cut<'a>(&self, text: &'a str) -> &'a str {
        let d = self.delimiter.as_bytes();
        let bytes = text.as_bytes();
        // A one-byte delimiter is looked for byte by byte: the texts are short (a SPIFFE ID
        // is about forty bytes) and the delimiters close together, so a vectorized search
        // would be set up again for every few bytes.
        let at = |b: u8| move |(i, &c): (usize, &u8)| (c == b).then_some(i);
        match (d, self.from_end) {
            ([b], false) => field_from_start(text, bytes.iter().enumerate().filter_map(at(*b)), 1, self.index),
            ([b], true) => field_from_end(text, bytes.iter().enumerate().rev().filter_map(at(*b)), 1, self.index),
            (_, false) => field_from_start(text, memchr::memmem::find_iter(bytes, d), d.len(), self.index),
            (_, true) => field_from_end(text, memchr::memmem::rfind_iter(bytes, d), d.len(), self.index),
        }
    }
}

/// The `index`-th field of `text`, given where its delimiters start, from the first on (as
/// `str::split` finds them: left to right, not overlapping); empty when there are fewer.
fn field_from_start(text: &str, mut delimiters: impl Iterator<Item = usize>, len: usize, index: usize) -> &str {
    let mut begin = 0;
    for _ in 0..index {
        match delimiters.next() {
            Some(at) => begin = at.saturating_add(len),
            None => return "",
        }
    }
    let end = delimiters.next().unwrap_or(text.len());
    // Delimiters are whole characters, so both ends are character boundaries.
    text.get(begin..end).unwrap_or("")
}

/// As [`field_from_start`], counting fields and delimiters from the end (as `str::rsplit`).
fn field_from_end(text: &str, mut delimiters: impl Iterator<Item = usize>, len: usize, index: usize) -> &str {
    let mut end = text.len();
    for _ in 0..index {
        match delimiters.next() {
            Some(at) => end = at,
            None => return "",
        }
    }
    let begin = delimiters.next().map_or(0, |at| at.saturating_add(len));
    text.get(begin..end).unwrap_or("")
}

/// What the field is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Against {
    /// Sorted, without duplicates: `IN (…)`, or `=` a literal.
    Literals(Vec<String>),
    /// The function's second argument, row by row.
    Argument,
}

/// `field IN (…)` or `field = other`, negated for `NOT IN` and `<>`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FieldCompared {
    field: Field,
    against: Against,
    negated: bool,
    signature: Signature,
}

impl FieldCompared {
    fn text_arg<'a>(&self, arg: Option<&'a ColumnarValue>, rows: usize) -> DfResult<TextArg<'a>> {
        match arg {
            Some(ColumnarValue::Array(a)) => a
                .as_string_opt::<i32>()
                .map(TextArg::Column)
                .ok_or_else(|| DataFusionError::Internal(format!("{} expects text", self.name()))),
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(v))) => Ok(TextArg::Same(v.as_deref(), rows)),
            _ => Err(DataFusionError::Internal(format!("{} expects text", self.name()))),
        }
    }

    /// The field of row `i`; None when it is NULL.
    fn field_at<'a>(&'a self, text: &TextArg<'a>, i: usize) -> Option<&'a str> {
        match text.get(i) {
            Some(t) => Some(self.field.cut(t)),
            None => self.field.if_null.as_deref(),
        }
    }

    fn evaluate(&self, text: &TextArg<'_>, other: Option<&TextArg<'_>>) -> DfResult<BooleanArray> {
        let rows = text.len();
        let mut nulls = match &self.field.if_null {
            Some(_) => None,
            None => text.nulls(),
        };
        let values = match (&self.against, other) {
            (Against::Literals(values), _) => BooleanBuffer::collect_bool(rows, |i| {
                self.field_at(text, i)
                    .is_some_and(|f| values.binary_search_by(|v| v.as_str().cmp(f)).is_ok() != self.negated)
            }),
            (Against::Argument, Some(other)) => {
                nulls = NullBuffer::union(nulls.as_ref(), other.nulls().as_ref());
                BooleanBuffer::collect_bool(rows, |i| match (self.field_at(text, i), other.get(i)) {
                    (Some(f), Some(o)) => (f == o) != self.negated,
                    _ => false,
                })
            }
            (Against::Argument, None) => {
                return Err(DataFusionError::Internal(format!(
                    "{} expects two arguments",
                    self.name()
                )));
            }
        };
        Ok(BooleanArray::new(values, nulls))
    }
}

/// A text argument: a column, or one value for every row.
enum TextArg<'a> {
    Column(&'a StringArray),
    Same(Option<&'a str>, usize),
}

impl<'a> TextArg<'a> {
    fn len(&self) -> usize {
        match self {
            Self::Column(c) => c.len(),
            Self::Same(_, rows) => *rows,
        }
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Self::Column(c) => c.is_valid(i).then(|| c.value(i)),
            Self::Same(v, _) => *v,
        }
    }

    fn nulls(&self) -> Option<NullBuffer> {
        match self {
            Self::Column(c) => c.nulls().cloned(),
            Self::Same(Some(_), _) => None,
            Self::Same(None, rows) => Some(NullBuffer::new_null(*rows)),
        }
    }
}

impl ScalarUDFImpl for FieldCompared {
    fn name(&self) -> &str {
        match (&self.against, self.negated) {
            (Against::Literals(_), false) => "split_part_in",
            (Against::Literals(_), true) => "split_part_not_in",
            (Against::Argument, false) => "split_part_eq",
            (Against::Argument, true) => "split_part_not_eq",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let text = self.text_arg(args.args.first(), rows)?;
        let other = match self.against {
            Against::Literals(_) => None,
            Against::Argument => Some(self.text_arg(args.args.get(1), rows)?),
        };
        let result = self.evaluate(&text, other.as_ref())?;
        if all_scalar {
            return ScalarValue::try_from_array(&result, 0).map(ColumnarValue::Scalar);
        }
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::ExprSchemable;
    use datafusion::optimizer::simplify_expressions::{ExprSimplifier, SimplifyContext};
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    use super::*;
    use crate::rewrite_tests::{df_schema, evaluate, text_batch};

    /// Evaluates `sql` as DataFusion plans it and as rewritten; and whether it was.
    fn both(p: Vec<Option<String>>, ns: Vec<Option<String>>, sql: &str) -> (BooleanArray, BooleanArray, bool) {
        let batch = text_batch(vec![("p", p), ("ns", ns)]);
        let df_schema = df_schema(&batch);
        let expr = SessionContext::new().parse_sql_expr(sql, &df_schema).expect("parse");
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(df_schema.clone()))
                .build(),
        );
        let expr = simplifier.coerce(expr, &df_schema).expect("coerce");
        let expr = simplifier.simplify(expr).expect("simplify");
        assert_eq!(expr.get_type(&df_schema).expect("type"), DataType::Boolean);
        let rewritten = precompile(expr.clone(), &df_schema).expect("rewrite");
        let was_rewritten = rewritten != expr;
        (evaluate(expr, &batch), evaluate(rewritten, &batch), was_rewritten)
    }

    fn ids() -> Vec<Option<String>> {
        [
            Some("spiffe://cluster.local/ns/ops/sa/oncall"),
            Some("spiffe://cluster.local/ns/shop/sa/cart"),
            Some("spiffe://evil.example/ns/istio-system/sa/x"),
            Some("spiffe://cluster.local/ns"),
            Some("spiffe:"),
            Some(""),
            None,
        ]
        .into_iter()
        .map(|s| s.map(String::from))
        .collect()
    }

    fn namespaces() -> Vec<Option<String>> {
        [
            Some("ops"),
            Some("pay"),
            Some("istio-system"),
            Some(""),
            Some(""),
            None,
            Some("x"),
        ]
        .into_iter()
        .map(|s| s.map(String::from))
        .collect()
    }

    #[test]
    fn the_packs_comparisons_are_rewritten_and_agree() {
        for sql in [
            "coalesce(split_part(p, '/', 5), '') NOT IN ('ops', 'istio-system')",
            "coalesce(split_part(p, '/', 5), 'none') IN ('ops', 'none')",
            "split_part(p, '/', 3) NOT IN ('cluster.local')",
            "split_part(p, '/', 3) IN ('cluster.local', 'evil.example', 'a', 'b', 'c')",
            "split_part(p, '/', 5) <> ns",
            "ns = split_part(p, '/', 5)",
            "split_part(p, '/', -1) = 'cart'",
            "split_part(p, 'ns/', 2) = 'ops/sa/oncall'",
            "split_part(p, '/', 9) = ''",
        ] {
            let (want, got, rewritten) = both(ids(), namespaces(), sql);
            assert!(rewritten, "{sql} was not rewritten");
            assert_eq!(want, got, "{sql}");
        }
    }

    #[test]
    fn other_forms_are_left_alone() {
        for sql in [
            "split_part(p, '', 1) = 'x'",
            "split_part(p, ns, 1) = 'x'",
            "split_part(p, '/', 3) IN ('a', NULL)",
            "split_part(p, '/', 3) < 'x'",
            "coalesce(split_part(p, '/', 5), ns) = 'x'",
        ] {
            let (want, got, rewritten) = both(ids(), namespaces(), sql);
            assert!(!rewritten, "{sql} was rewritten");
            assert_eq!(want, got, "{sql}");
        }
    }

    proptest! {
        /// On any text (multi-byte characters and empty fields included), any delimiter and
        /// position, the rewritten comparisons are DataFusion's.
        #[test]
        fn comparisons_are_datafusions(
            p in proptest::collection::vec(proptest::option::of("[a/é:]{0,12}"), 1..10),
            delimiter in "[/é:]{1,2}",
            n in -4i64..5,
            listed in proptest::collection::vec("[a/é]{0,3}", 1..4),
            fallback in proptest::option::of("[a/]{0,2}"),
        ) {
            prop_assume!(n != 0);
            let rows = p.len();
            let ns: Vec<Option<String>> = p.iter().map(|v| v.as_ref().map(|s| s.chars().rev().take(2).collect())).collect();
            let field = match &fallback {
                Some(f) => format!("coalesce(split_part(p, '{delimiter}', {n}), '{f}')"),
                None => format!("split_part(p, '{delimiter}', {n})"),
            };
            let list = listed.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ");
            for sql in [
                format!("{field} IN ({list})"),
                format!("{field} NOT IN ({list})"),
                format!("{field} = ns"),
                format!("ns <> {field}"),
            ] {
                let (want, got, _) = both(p.clone(), ns.clone(), &sql);
                prop_assert_eq!(want.len(), rows);
                prop_assert_eq!(want, got, "{}", sql);
            }
        }
    }
}
