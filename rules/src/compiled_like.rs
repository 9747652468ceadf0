//! `LIKE` patterns with a `%` between literal text, a `_` or a `\` escape, matched without a
//! regular expression.
//!
//! Arrow's `LIKE` kernel matches `'abc%'`, `'%abc'` and `'%abc%'` with a substring test, but
//! any other pattern, such as the pack's `'spiffe://%/ns/%'` or `'/\_debug%'`, becomes a
//! regular expression that it compiles again on every batch and runs on every row.
//! [`precompile`] rewrites a case-sensitive `LIKE` (or `NOT LIKE`) of a text column against
//! such a literal pattern into a function that matches its pieces in order: the text before
//! the first `%` from the start, the text after the last from the end, and each piece between
//! at its first occurrence after the one before. That is exactly what the kernel's expression
//! (`%` as `.*`, `_` as `.`, dot matching newlines, anchored at both ends) matches, for
//! patterns whose `_`s (any one character) lie before the first `%` or after the last; a `\`
//! makes the character after it literal, as in the kernel (the `_` of `'/\_debug%'` is literal).
//! Patterns with a `_` between two `%`s are left to the kernel. NULL stays NULL.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, DataFusionError, ExprSchema, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::{Like, ScalarFunction};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use memchr::memmem::Finder;

/// Rewrites `LIKE` against the patterns described in the module doc.
pub fn precompile(expr: Expr, schema: &DFSchema) -> DfResult<Expr> {
    expr.transform_up(|e| {
        let Expr::Like(Like {
            negated,
            expr,
            pattern,
            escape_char: None,
            case_insensitive: false,
        }) = &e
        else {
            return Ok(Transformed::no(e));
        };
        let Expr::Literal(ScalarValue::Utf8(Some(pattern)), _) = pattern.as_ref() else {
            return Ok(Transformed::no(e));
        };
        // `lower(x) LIKE 'prefix%'` reads x itself; any other pattern matches the lower-cased
        // text in pieces, if it can.
        let lowered = lowered_text(expr).zip(lower_prefix(pattern));
        let (matcher, text) = match lowered {
            Some((inner, prefix)) => (Matcher::LowerStartsWith(prefix), inner),
            None => match LikePieces::new(pattern) {
                Some(pieces) => (Matcher::Pieces(pieces), expr.as_ref()),
                None => return Ok(Transformed::no(e)),
            },
        };
        if text.get_type(schema as &dyn ExprSchema)? != DataType::Utf8 {
            return Ok(Transformed::no(e));
        }
        let udf = ScalarUDF::from(MatchesLike {
            pattern: pattern.clone(),
            matcher,
            negated: *negated,
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        });
        Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::new(udf),
            vec![text.clone()],
        ))))
    })
    .map(|t| t.data)
}

/// `x` of `lower(x)`.
fn lowered_text(e: &Expr) -> Option<&Expr> {
    match e {
        Expr::ScalarFunction(f) if f.func.name() == "lower" => match f.args.as_slice() {
            [inner] => Some(inner),
            _ => None,
        },
        _ => None,
    }
}

/// The text of a pattern `'text%'` whose text is ASCII and holds no `%`, `_` or `\`.
fn lower_prefix(pattern: &str) -> Option<String> {
    let prefix = pattern.strip_suffix('%')?;
    (prefix.is_ascii() && !prefix.contains(['%', '_', '\\'])).then(|| prefix.to_string())
}

/// Whether `lower(text)` starts with the ASCII `prefix`, lower-casing only as far as needed.
/// Lower-casing one character at a time gives the same text as lower-casing the whole
/// string, except for a final capital sigma ("ς" instead of "σ"), and neither is ASCII.
fn lower_starts_with(text: &str, prefix: &[u8]) -> bool {
    let bytes = text.as_bytes();
    for (i, &want) in prefix.iter().enumerate() {
        match bytes.get(i) {
            None => return false,
            Some(b) if b.is_ascii() => {
                if b.to_ascii_lowercase() != want {
                    return false;
                }
            }
            Some(_) => {
                // Every byte before `i` is ASCII, so `i` is a character boundary.
                let (Some(rest), Some(wanted)) = (text.get(i..), prefix.get(i..)) else {
                    return false;
                };
                let mut wanted = wanted.iter();
                for c in rest.chars().flat_map(char::to_lowercase) {
                    match wanted.next() {
                        None => return true,
                        Some(&w) if u32::from(w) == u32::from(c) => {}
                        Some(_) => return false,
                    }
                }
                return wanted.next().is_none();
            }
        }
    }
    true
}

/// How a row's text is matched.
#[derive(Debug)]
enum Matcher {
    /// `text LIKE pattern`, the pattern cut at its `%`s.
    Pieces(LikePieces),
    /// `lower(text) LIKE 'prefix%'`.
    LowerStartsWith(String),
}

impl Matcher {
    fn matches(&self, text: &str) -> bool {
        match self {
            Self::Pieces(p) => p.matches(text),
            Self::LowerStartsWith(prefix) => lower_starts_with(text, prefix.as_bytes()),
        }
    }
}

/// A pattern cut at its unescaped `%`s.
#[derive(Debug)]
struct LikePieces {
    /// Before the first `%` (the whole pattern when it holds none).
    head: Vec<Segment>,
    /// Between `%`s, literal text only.
    middle: Vec<Finder<'static>>,
    /// After the last `%`; None when the pattern holds no `%`.
    tail: Option<Vec<Segment>>,
}

/// A run of literal text, or `_`: any one character.
#[derive(Debug, PartialEq)]
enum Segment {
    Literal(String),
    AnyChar,
}

impl LikePieces {
    /// The pieces of a pattern the kernel would run as a regular expression, when its `_`s
    /// (unescaped) lie only before the first `%` or after the last; None for any other.
    fn new(pattern: &str) -> Option<Self> {
        if !pattern.contains(['_', '\\']) {
            let inner = pattern.strip_prefix('%').unwrap_or(pattern);
            let inner = inner.strip_suffix('%').unwrap_or(inner);
            if !inner.contains('%') {
                return None; // a prefix, suffix, substring or equality test: the kernel's own
            }
        }
        let mut groups = cut_at_any_runs(pattern).into_iter();
        let head = groups.next()?;
        let tail = groups.next_back();
        let mut middle = Vec::new();
        for group in groups {
            match group.as_slice() {
                [] => {}
                [Segment::Literal(piece)] => middle.push(Finder::new(piece.as_bytes()).into_owned()),
                _ => return None,
            }
        }
        Some(Self { head, middle, tail })
    }

    fn matches(&self, text: &str) -> bool {
        let Some(rest) = strip_head(&self.head, text) else {
            return false;
        };
        let Some(tail) = &self.tail else {
            return rest.is_empty();
        };
        let Some(between) = strip_tail(tail, rest) else {
            return false;
        };
        let mut between = between.as_bytes();
        for piece in &self.middle {
            let Some(at) = piece.find(between) else {
                return false;
            };
            let Some(after) = between.get(at + piece.needle().len()..) else {
                return false;
            };
            between = after;
        }
        true
    }
}

/// A pattern cut at its unescaped `%`s into runs of segments, with `\` escapes resolved as
/// the kernel resolves them: a `\` makes the character after it literal, and a `\` that ends
/// the pattern is itself.
fn cut_at_any_runs(pattern: &str) -> Vec<Vec<Segment>> {
    let mut groups = vec![Vec::new()];
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        let literal = match c {
            '%' => {
                groups.push(Vec::new());
                continue;
            }
            '_' => None,
            '\\' => Some(chars.next().unwrap_or('\\')),
            c => Some(c),
        };
        let Some(group) = groups.last_mut() else { continue };
        match (literal, group.last_mut()) {
            (None, _) => group.push(Segment::AnyChar),
            (Some(c), Some(Segment::Literal(text))) => text.push(c),
            (Some(c), _) => group.push(Segment::Literal(c.to_string())),
        }
    }
    groups
}

/// `text` after the segments, matched from its start.
fn strip_head<'a>(segments: &[Segment], mut text: &'a str) -> Option<&'a str> {
    for segment in segments {
        text = match segment {
            Segment::Literal(l) => text.strip_prefix(l.as_str())?,
            Segment::AnyChar => {
                let mut chars = text.chars();
                chars.next()?;
                chars.as_str()
            }
        };
    }
    Some(text)
}

/// `text` before the segments, matched from its end.
fn strip_tail<'a>(segments: &[Segment], mut text: &'a str) -> Option<&'a str> {
    for segment in segments.iter().rev() {
        text = match segment {
            Segment::Literal(l) => text.strip_suffix(l.as_str())?,
            Segment::AnyChar => {
                let mut chars = text.chars();
                chars.next_back()?;
                chars.as_str()
            }
        };
    }
    Some(text)
}

/// `text LIKE pattern` (or `NOT LIKE`) with the pattern cut into pieces once.
#[derive(Debug)]
struct MatchesLike {
    pattern: String,
    matcher: Matcher,
    negated: bool,
    signature: Signature,
}

impl PartialEq for MatchesLike {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.negated == other.negated && self.lowered() == other.lowered()
    }
}

impl Eq for MatchesLike {}

impl Hash for MatchesLike {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pattern.hash(state);
        self.negated.hash(state);
        self.lowered().hash(state);
    }
}

impl MatchesLike {
    fn lowered(&self) -> bool {
        matches!(self.matcher, Matcher::LowerStartsWith(_))
    }
}

impl ScalarUDFImpl for MatchesLike {
    fn name(&self) -> &str {
        match (self.lowered(), self.negated) {
            (false, false) => "matches_like",
            (false, true) => "not_matches_like",
            (true, false) => "lower_matches_like",
            (true, true) => "lower_not_matches_like",
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
                let values =
                    BooleanBuffer::collect_bool(text.len(), |i| self.matcher.matches(text.value(i)) != self.negated);
                Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
                    values,
                    text.nulls().cloned(),
                ))))
            }
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(v))) => Ok(ColumnarValue::Scalar(ScalarValue::Boolean(
                v.as_deref().map(|s| self.matcher.matches(s) != self.negated),
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
    use datafusion::functions::string::expr_fn::lower;
    use datafusion::logical_expr::{col, lit};
    use proptest::prelude::*;

    use super::*;
    use crate::rewrite_tests::{df_schema, evaluate, text_batch};

    /// Evaluates `p LIKE pattern` (or NOT LIKE) with the kernel and rewritten.
    fn both(values: Vec<Option<String>>, pattern: &str, negated: bool) -> (BooleanArray, BooleanArray, bool) {
        both_on(col("p"), values, pattern, negated)
    }

    /// Evaluates `text LIKE pattern` (or NOT LIKE) with the kernel and rewritten, for a
    /// `text` over the column `p`.
    fn both_on(
        text: Expr,
        values: Vec<Option<String>>,
        pattern: &str,
        negated: bool,
    ) -> (BooleanArray, BooleanArray, bool) {
        let batch = text_batch(vec![("p", values)]);
        let like = Expr::Like(Like::new(negated, Box::new(text), Box::new(lit(pattern)), None, false));
        let rewritten = precompile(like.clone(), &df_schema(&batch)).expect("rewrite");
        let was_rewritten = matches!(rewritten, Expr::ScalarFunction(_));
        (evaluate(like, &batch), evaluate(rewritten, &batch), was_rewritten)
    }

    #[test]
    fn only_patterns_the_kernel_runs_as_a_regex_are_rewritten() {
        for (pattern, rewritten) in [
            ("spiffe://%/ns/%", true),
            ("a%b", true),
            ("%a%b%", true),
            ("a%%b", true),
            ("abc%%", true),
            ("abc%", false),
            ("%abc", false),
            ("%abc%", false),
            ("abc", false),
            ("a_%b", true),
            ("/_debug%", true),
            ("a_c", true),
            ("%_", true),
            ("a%_%b", false),
            ("a\\%b%c", true),
            ("/\\_debug%", true),
            ("a%\\_%b", true),
            ("a%\\%", true),
            ("abc\\", true),
        ] {
            let (_, _, was) = both(vec![Some("x".into())], pattern, false);
            assert_eq!(was, rewritten, "{pattern}");
        }
    }

    #[test]
    fn matches_are_the_kernels_on_spiffe_ids() {
        let ids = vec![
            Some("spiffe://cluster.local/ns/shop/sa/cart".to_string()),
            Some("spiffe://evil/ns/".to_string()),
            Some("spiffe:///ns/".to_string()),
            Some("spiffe://x/nsx/".to_string()),
            Some("spiffe://ns/".to_string()),
            Some("https://x/ns/y".to_string()),
            None,
            Some(String::new()),
        ];
        for negated in [false, true] {
            let (want, got, _) = both(ids.clone(), "spiffe://%/ns/%", negated);
            assert_eq!(want, got, "negated {negated}");
        }
    }

    #[test]
    fn one_character_wildcards_are_the_kernels() {
        let paths: Vec<Option<String>> = [
            "/_debug/vars",
            "/xdebug",
            "/édebug",
            "/\ndebug",
            "/debug",
            "/",
            "",
            "//debug",
            "/\\_debug",
            "/%",
        ]
        .into_iter()
        .map(|p| Some(p.to_string()))
        .chain([None])
        .collect();
        for pattern in [
            "/_debug%",
            "%debu_",
            "_/debug",
            "/_%_",
            "/\\_debug%",
            "%\\_debug%",
            "/\\%%",
        ] {
            for negated in [false, true] {
                let (want, got, rewritten) = both(paths.clone(), pattern, negated);
                assert!(rewritten, "{pattern}");
                assert_eq!(want, got, "{pattern} negated {negated}");
            }
        }
    }

    #[test]
    fn lower_prefixes_are_the_kernels() {
        let paths: Vec<Option<String>> = [
            "/Admin/x",
            "/ADMIN",
            "/admin",
            "/adm",
            "/\u{130}dmin",
            "/\u{212a}",
            "/\u{3a3}",
            "/\u{e9}admin",
            "",
            "/AdMiN\u{130}",
        ]
        .into_iter()
        .map(|p| Some(p.to_string()))
        .chain([None])
        .collect();
        for pattern in ["/admin%", "/k%", "/i%", "/%", "%", "/Admin%"] {
            for negated in [false, true] {
                let (want, got, rewritten) = both_on(lower(col("p")), paths.clone(), pattern, negated);
                assert!(rewritten, "{pattern}");
                assert_eq!(want, got, "{pattern} negated {negated}");
            }
        }
        // Other patterns match the lower-cased text piece by piece, or are left to the kernel.
        for (pattern, rewritten) in [
            ("/adm_n%", true),
            ("/a%n%", true),
            ("%admin", false),
            ("/\u{e9}%", false),
            ("/admin", false),
        ] {
            let (want, got, was) = both_on(lower(col("p")), paths.clone(), pattern, false);
            assert_eq!(was, rewritten, "{pattern}");
            assert_eq!(want, got, "{pattern}");
        }
    }

    proptest! {
        /// On any text (newlines and multi-byte characters included) and any pattern of
        /// literal pieces, `%`, `_` and `\` escapes, the rewritten match is the kernel's.
        #[test]
        fn matches_are_the_kernels(
            values in proptest::collection::vec(proptest::option::of("[ab/%_\\\\\\n é]{0,10}"), 1..12),
            pattern in "[ab/é%_\\\\]{0,8}",
            negated in any::<bool>(),
        ) {
            let (want, got, _) = both(values, &pattern, negated);
            prop_assert_eq!(want, got);
        }

        /// `lower(text) LIKE 'prefix%'` on text with capitals, characters whose lower case
        /// is ASCII or longer (the Kelvin sign, dotted capital I) and sigma.
        #[test]
        fn lower_prefixes_match_as_lower_does(
            values in proptest::collection::vec(proptest::option::of("[aAkK/\u{212a}\u{130}\u{3a3}i ]{0,8}"), 1..12),
            prefix in "[aAkKi/ ]{0,4}",
            negated in any::<bool>(),
        ) {
            let (want, got, rewritten) = both_on(lower(col("p")), values, &format!("{prefix}%"), negated);
            prop_assert!(rewritten);
            prop_assert_eq!(want, got);
        }
    }
}
