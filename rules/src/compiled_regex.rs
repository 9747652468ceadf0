//! Regular-expression matches with a constant pattern, compiled once when a rule is compiled.
//!
//! DataFusion simplifies `regexp_like(path, '…', 'i')` to the operator `path ~* '…'`, whose
//! kernel compiles the pattern again on every batch; for the pack's attack patterns that was
//! about a tenth of the stateless rules' time. After simplification, [`precompile`] rewrites
//! every such match (`~`, `~*`, `!~`, `!~*`) of a text column against a literal pattern into a
//! call of a function that holds the compiled expression. It compiles the pattern exactly as
//! the kernel does (`(?i)` prepended for the case-insensitive operators, the `regex` crate's
//! default limits), and a NULL input stays NULL, so what matches does not change.
//!
//! Two things make it cheaper than the kernel beyond compiling once:
//! - only rows holding one of the pattern's prefix literals reach the regex engine
//!   ([`crate::literal_prefilter`]);
//! - a match against `concat(a, ' ', b, …)` takes the parts themselves: the joined text is
//!   built, in one reused buffer, only for rows where a part holds a prefix literal, instead
//!   of a new column of joined text per batch. Joined as `concat` joins (NULL parts left out,
//!   never NULL). Searching the parts apart finds every literal the joined text holds as long
//!   as no literal can run into a separator: every two parts are separated by literal text,
//!   and no prefix literal shares a byte with it. Otherwise every row is joined and matched.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, StringArray};
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

use crate::literal_prefilter::LiteralPrefilter;

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
        let (text, args) = match concat_parts(left, schema)? {
            Some((parts, args)) => (Text::Joined(parts), args),
            None => (Text::Single, vec![left.as_ref().clone()]),
        };
        let prefilter = LiteralPrefilter::new(&pattern).filter(|p| match &text {
            Text::Single => true,
            Text::Joined(parts) => parts_searchable_apart(parts, p),
        });
        let udf = ScalarUDF::from(MatchesRegex {
            signature: Signature::exact(vec![DataType::Utf8; args.len()], Volatility::Immutable),
            prefilter,
            pattern,
            regex,
            negated,
            text,
        });
        Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::new(udf),
            args,
        ))))
    })
    .map(|t| t.data)
}

/// The parts of `concat(…)` whose arguments are all text, and its non-literal arguments in
/// order; None for anything else.
fn concat_parts(e: &Expr, schema: &DFSchema) -> DfResult<Option<(Vec<Part>, Vec<Expr>)>> {
    let Expr::ScalarFunction(f) = e else {
        return Ok(None);
    };
    if f.func.name() != "concat" || f.args.is_empty() {
        return Ok(None);
    }
    let (mut parts, mut args) = (Vec::new(), Vec::new());
    for arg in &f.args {
        match arg {
            // `concat` leaves NULL out.
            Expr::Literal(ScalarValue::Utf8(None), _) => {}
            Expr::Literal(ScalarValue::Utf8(Some(text)), _) => parts.push(Part::Literal(text.clone())),
            other if other.get_type(schema as &dyn ExprSchema)? == DataType::Utf8 => {
                parts.push(Part::Arg(args.len()));
                args.push(other.clone());
            }
            _ => return Ok(None),
        }
    }
    Ok((!args.is_empty()).then_some((parts, args)))
}

/// Whether every literal the joined text can hold lies inside one argument's value (see the
/// module doc).
fn parts_searchable_apart(parts: &[Part], prefilter: &LiteralPrefilter) -> bool {
    let mut previous_was_arg = false;
    for part in parts {
        match part {
            Part::Arg(_) if previous_was_arg => return false,
            Part::Arg(_) => previous_was_arg = true,
            Part::Literal(text) if text.is_empty() => {}
            Part::Literal(text) => {
                if prefilter.shares_a_byte_with(text.as_bytes()) {
                    return false;
                }
                previous_was_arg = false;
            }
        }
    }
    true
}

/// What the pattern is matched against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Text {
    /// The one text argument; NULL stays NULL.
    Single,
    /// The parts joined as `concat` joins them.
    Joined(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    /// The n-th argument.
    Arg(usize),
    Literal(String),
}

/// `text ~ pattern` (or `!~`) with the pattern compiled.
#[derive(Debug)]
struct MatchesRegex {
    /// As compiled, with `(?i)` for a case-insensitive match.
    pattern: String,
    regex: Regex,
    /// The rows the regex can match, found for the whole column at once.
    prefilter: Option<LiteralPrefilter>,
    negated: bool,
    text: Text,
    signature: Signature,
}

impl PartialEq for MatchesRegex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.negated == other.negated && self.text == other.text
    }
}

impl Eq for MatchesRegex {}

impl Hash for MatchesRegex {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pattern.hash(state);
        self.negated.hash(state);
        self.text.hash(state);
    }
}

impl MatchesRegex {
    /// Rows a match is possible in: all of them without a prefilter.
    fn candidates(&self, texts: &[&StringArray], rows: usize) -> Option<Vec<bool>> {
        let prefilter = self.prefilter.as_ref()?;
        let mut marked = vec![false; rows];
        for text in texts {
            for (m, c) in marked.iter_mut().zip(prefilter.candidates(text)) {
                *m |= c;
            }
        }
        Some(marked)
    }

    fn single(&self, text: &StringArray) -> BooleanArray {
        // Like the kernel: every slot is matched, NULL slots keep their NULL.
        let candidates = self.candidates(&[text], text.len());
        let values = BooleanBuffer::collect_bool(text.len(), |i| {
            let possible = candidates.as_ref().is_none_or(|c| c.get(i).is_some_and(|&c| c));
            (possible && self.regex.is_match(text.value(i))) != self.negated
        });
        BooleanArray::new(values, text.nulls().cloned())
    }

    fn joined(&self, parts: &[Part], texts: &[&StringArray], rows: usize) -> BooleanArray {
        let candidates = self.candidates(texts, rows);
        let mut joined = String::new();
        let values = BooleanBuffer::collect_bool(rows, |i| {
            if candidates.as_ref().is_some_and(|c| !c.get(i).is_some_and(|&c| c)) {
                return self.negated;
            }
            joined.clear();
            for part in parts {
                match part {
                    Part::Literal(text) => joined.push_str(text),
                    Part::Arg(n) => {
                        if let Some(text) = texts.get(*n).filter(|t| t.is_valid(i)) {
                            joined.push_str(text.value(i));
                        }
                    }
                }
            }
            self.regex.is_match(&joined) != self.negated
        });
        BooleanArray::new(values, None)
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
        let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        // Scalars alone come back as arrays of one row.
        let rows = if scalar { 1 } else { args.number_rows };
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts = arrays
            .iter()
            .map(|a| a.as_string_opt::<i32>())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| DataFusionError::Internal(format!("{} expects text", self.name())))?;
        let result = match (&self.text, texts.as_slice()) {
            (Text::Single, [text]) => self.single(text),
            (Text::Joined(parts), texts) => self.joined(parts, texts, rows),
            (Text::Single, _) => {
                return Err(DataFusionError::Internal(format!(
                    "{} expects one text argument",
                    self.name()
                )));
            }
        };
        if scalar && result.len() == 1 {
            return ScalarValue::try_from_array(&result, 0).map(ColumnarValue::Scalar);
        }
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;
    use crate::rewrite_tests::{df_schema, evaluate, text_batch};

    fn texts(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_string)).collect()
    }

    const OPERATORS: [Operator; 4] = [
        Operator::RegexMatch,
        Operator::RegexIMatch,
        Operator::RegexNotMatch,
        Operator::RegexNotIMatch,
    ];

    /// The precompiled match gives what DataFusion's own operator gives, NULLs included.
    #[test]
    fn precompiled_matches_are_the_operators_matches() {
        let paths = texts(&[
            Some("/a/../../etc/passwd"),
            Some("/A/..%2F"),
            None,
            Some("/ok"),
            Some(""),
            Some("/x.."),
            Some("/?q=1%27%20OR%201=1"),
            Some("/${jndi:ldap://x}"),
            Some("/UNION/**/SELECT"),
        ]);
        let batch = text_batch(vec![("path", paths)]);
        let df_schema = df_schema(&batch);
        for (pattern, op) in [
            r"(\.\./|\.\.%2f)",
            r"(union(\s|/\*\*/)+select|(%27)(\s|%20)*or)",
            r"(\$|%24)\{\s*jndi",
            "x",
        ]
        .into_iter()
        .flat_map(|p| OPERATORS.map(|op| (p, op)))
        {
            let original = Expr::BinaryExpr(BinaryExpr::new(Box::new(col("path")), op, Box::new(lit(pattern))));
            let rewritten = precompile(original.clone(), &df_schema).expect("rewrite");
            assert!(matches!(rewritten, Expr::ScalarFunction(_)), "{op}: {rewritten}");
            assert_eq!(
                evaluate(original, &batch),
                evaluate(rewritten, &batch),
                "{pattern} {op}"
            );
        }
    }

    /// A match against `concat(…)` of text columns and literals gives what the operator gives
    /// on the joined text: matches across a separator, NULL parts, literals that share a byte
    /// with a separator, adjacent columns.
    #[test]
    fn matches_on_joined_parts_are_the_operators_matches() {
        let batch = text_batch(vec![
            (
                "path",
                texts(&[Some("/a${"), Some("/ok"), None, Some("/b"), Some("a"), Some("/x"), None]),
            ),
            (
                "user_agent",
                texts(&[
                    Some("jndi:x}"),
                    Some("curl ${jndi:ldap://e}"),
                    None,
                    None,
                    Some("b"),
                    Some("%24%7Bjndi"),
                    None,
                ]),
            ),
            (
                "x_forwarded_for",
                texts(&[
                    None,
                    Some("1.2.3.4"),
                    Some("${env:X}"),
                    Some("b"),
                    Some("c"),
                    Some(""),
                    None,
                ]),
            ),
        ]);
        let df_schema = df_schema(&batch);
        let joined = |parts: Vec<Expr>| datafusion::functions::string::expr_fn::concat(parts);
        let spaced = joined(vec![
            col("path"),
            lit(" "),
            col("user_agent"),
            lit(" "),
            col("x_forwarded_for"),
        ]);
        let adjacent = joined(vec![col("path"), col("user_agent")]);
        let cases = [
            (
                spaced.clone(),
                r"(\$|%24)(\{|%7b)\s*((jndi|j\$\{|\$\{)|(lower|upper|env|sys|::-)[:\}])",
            ),
            (spaced.clone(), r"a b c"),
            (spaced.clone(), r"^ "),
            (spaced, r"\{\s+jndi"),
            (adjacent.clone(), r"/ab"),
            (adjacent, r"\{jndi"),
        ];
        for ((text, pattern), op) in cases.into_iter().flat_map(|c| OPERATORS.map(|op| (c.clone(), op))) {
            let original = Expr::BinaryExpr(BinaryExpr::new(Box::new(text), op, Box::new(lit(pattern))));
            let rewritten = precompile(original.clone(), &df_schema).expect("rewrite");
            let Expr::ScalarFunction(f) = &rewritten else {
                panic!("{op}: {rewritten}")
            };
            assert!(f.args.iter().all(|a| matches!(a, Expr::Column(_))), "{rewritten}");
            assert_eq!(
                evaluate(original, &batch),
                evaluate(rewritten, &batch),
                "{pattern} {op}"
            );
        }
    }

    #[test]
    fn a_separator_sharing_a_byte_with_a_literal_turns_the_prefilter_off() {
        let p = LiteralPrefilter::new("a b").expect("prefilter");
        let parts = |sep: &str| vec![Part::Arg(0), Part::Literal(sep.into()), Part::Arg(1)];
        assert!(!parts_searchable_apart(&parts(" "), &p));
        assert!(parts_searchable_apart(&parts("|"), &p));
        assert!(!parts_searchable_apart(&[Part::Arg(0), Part::Arg(1)], &p));
        assert!(!parts_searchable_apart(
            &[Part::Arg(0), Part::Literal(String::new()), Part::Arg(1)],
            &p
        ));
    }

    #[test]
    fn a_pattern_that_does_not_compile_fails_at_rule_load() {
        let df_schema = df_schema(&text_batch(vec![("path", vec![None])]));
        let bad = Expr::BinaryExpr(BinaryExpr::new(
            Box::new(col("path")),
            Operator::RegexMatch,
            Box::new(lit("(unclosed")),
        ));
        let err = precompile(bad, &df_schema).unwrap_err();
        assert!(err.to_string().contains("did not compile"), "{err}");
    }
}
