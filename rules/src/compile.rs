//! Compiles rule files once: every SQL expression is parsed, type-checked against the event
//! schema and planned into a DataFusion `PhysicalExpr`. Nothing is planned per batch.
//!
//! `having` expressions are rewritten: each aggregate call (`count(*)`, `count(distinct x)`,
//! `sum(x)`, `min(x)`, `max(x)`) becomes a column of a small per-window schema that the
//! engine fills from its incremental state, and the rest is planned against that schema.
//!
//! Why a rule does not compile is a [`PlanError`]; [`Compiler::compile`] reports it with the
//! rule's file and id as a [`CompileError`], whose text is what `verity rules check` and a
//! failed reload print.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, ExprSchemable, ScalarUDF};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use verity_model::alert::fnv1a;

use crate::revocation::{IsRevoked, RevocationList};
use crate::rule::{Kind, RuleBody, RuleFile, RuleSource, WindowType};

/// How the engine reads a boolean expression's NULL.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// As false: a filter keeps only the rows where it is true ([`crate::null_as_false`]).
    Filter,
    /// As a value of its own (an assertion's `require`: unknown).
    Value,
}

/// A rule that failed to compile, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: rule {rule_id}: {error}")]
pub struct CompileError {
    pub path: String,
    pub rule_id: String,
    #[source]
    pub error: PlanError,
}

/// Why a rule does not compile. `what` is the part of the rule at fault as its author wrote
/// it (`where`, `scope`, `require`, `having`, `group_by`, `per`, `keys`, `respond.entity`),
/// which every message starts with. DataFusion's errors are boxed: they are large, and every
/// result of the compiler would be as large.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{what}: unknown column {name:?}{}", .suggestion.as_deref().map(suggest).unwrap_or_default())]
    UnknownColumn {
        what: &'static str,
        name: String,
        /// The closest known column, when it is close enough to be a typo.
        suggestion: Option<String>,
    },
    /// DataFusion refused the SQL (parse, type coercion, planning).
    #[error("{what}: {}", first_line(.source))]
    Sql {
        what: &'static str,
        #[source]
        source: Box<DataFusionError>,
    },
    /// DataFusion could not type the expression or build the `having` schema.
    #[error("{what}: {source}")]
    DataFusion {
        what: &'static str,
        #[source]
        source: Box<DataFusionError>,
    },
    /// The plan failed on a probe row of nulls, so it would fail on every batch.
    #[error("{what}: cannot be evaluated: {}", first_line(.source))]
    Unevaluable {
        what: &'static str,
        #[source]
        source: Box<DataFusionError>,
    },
    /// The probe row itself could not be built.
    #[error("{what}: {source}")]
    Probe {
        what: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{what}: aggregates belong in `having`, not here")]
    AggregateOutsideHaving { what: &'static str },
    #[error("{what}: must be a boolean expression, but {sql:?} is {found}")]
    NotBoolean {
        what: &'static str,
        sql: String,
        found: DataType,
    },
    #[error(
        "having: unsupported aggregate {name}{}; use count(*), count(distinct col), sum(col), min(col) or max(col)",
        if *.distinct { " distinct" } else { "" }
    )]
    UnsupportedAggregate { name: String, distinct: bool },
    #[error("having: column {column:?} is neither aggregated nor in group_by")]
    NotGrouped { column: String },
    #[error("having: needs at least one aggregate such as count(*)")]
    NoAggregate,
    #[error("having needs a window")]
    HavingWithoutWindow,
    #[error("window: a tumbling window has no slide")]
    TumblingWithSlide,
    #[error("window: a sliding window needs slide")]
    SlidingWithoutSlide,
    #[error("window: slide must divide the window size")]
    SlideNotDivisor,
    /// A `first_seen` or `absence` rule with an empty `keys`.
    #[error("{}: keys must name at least one column", .kind.as_str())]
    NoKeys { kind: Kind },
}

/// The first line of a DataFusion error: what is wrong with the rule; the rest, when there
/// is any, is DataFusion's own context.
fn first_line(e: &DataFusionError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    CountDistinct,
    Sum,
    Min,
    Max,
}

#[derive(Debug, Clone)]
pub struct AggSpec {
    pub func: AggFunc,
    /// Input column index in the event schema (`None` for `count(*)`).
    pub column: Option<usize>,
    /// How it reads in the rule, e.g. `count(distinct path)`.
    pub label: String,
}

pub struct HavingPlan {
    pub aggs: Vec<AggSpec>,
    /// Group columns (Utf8) then one column per aggregate.
    pub schema: SchemaRef,
    pub expr: Arc<dyn PhysicalExpr>,
}

pub struct DetectionPlan {
    pub filter: Arc<dyn PhysicalExpr>,
    pub group_by: Vec<(String, usize)>,
    /// (size, slide) in ns; tumbling windows slide by their size.
    pub window: Option<(i64, i64)>,
    pub having: Option<HavingPlan>,
    pub suppress: Option<i64>,
}

pub struct AssertionPlan {
    pub scope: Arc<dyn PhysicalExpr>,
    pub require: Arc<dyn PhysicalExpr>,
    pub per: Vec<(String, usize)>,
    pub stale_after: i64,
    pub resolve_after: i64,
}

pub struct FirstSeenPlan {
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    pub keys: Vec<(String, usize)>,
    pub learning: i64,
}

pub struct AbsencePlan {
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    pub keys: Vec<(String, usize)>,
    pub after: i64,
}

pub enum Plan {
    Detection(DetectionPlan),
    Assertion(AssertionPlan),
    FirstSeen(FirstSeenPlan),
    Absence(AbsencePlan),
}

impl Plan {
    /// Whether any expression or key of the rule reads `column`.
    pub fn reads_column(&self, column: &str) -> bool {
        let in_expr = |e: &Arc<dyn PhysicalExpr>| {
            datafusion::physical_expr::utils::collect_columns(e)
                .iter()
                .any(|c| c.name() == column)
        };
        let in_keys = |keys: &[(String, usize)]| keys.iter().any(|(n, _)| n == column);
        match self {
            Plan::Detection(p) => in_expr(&p.filter) || in_keys(&p.group_by),
            Plan::Assertion(p) => in_expr(&p.scope) || in_expr(&p.require) || in_keys(&p.per),
            Plan::FirstSeen(p) => p.filter.as_ref().is_some_and(in_expr) || in_keys(&p.keys),
            Plan::Absence(p) => p.filter.as_ref().is_some_and(in_expr) || in_keys(&p.keys),
        }
    }
}

pub struct CompiledRule {
    pub source: RuleSource,
    /// Changes whenever the rule's text changes; unchanged rules keep their state on reload.
    pub fingerprint: u64,
    pub plan: Plan,
    /// Column index of the responder entity, if the rule has `respond`.
    pub entity: Option<(String, usize)>,
    /// The rule reads `sender_binding`, so it sees forged records (`not_party`); every other
    /// rule evaluates as if they were not there.
    pub sees_forged: bool,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("id", &self.source.rule.id)
            .field("kind", &self.source.rule.kind())
            .field("path", &self.source.path)
            .finish()
    }
}

impl CompiledRule {
    pub fn rule(&self) -> &RuleFile {
        &self.source.rule
    }
}

/// Holds the planning context; build one, compile many rules.
pub struct Compiler {
    ctx: SessionContext,
    schema: DFSchema,
    arrow_schema: SchemaRef,
}

impl Compiler {
    pub fn new(revocations: RevocationList) -> Self {
        let ctx = SessionContext::new();
        ctx.register_udf(ScalarUDF::from(IsRevoked::new(revocations)));
        let arrow_schema = verity_model::event::schema();
        let schema = DFSchema::try_from(arrow_schema.as_ref().clone()).unwrap_or_else(|_| DFSchema::empty());
        Self {
            ctx,
            schema,
            arrow_schema,
        }
    }

    /// Compiles every rule; returns all errors (and the rules that compiled are discarded
    /// then, because a rule set is replaced only as a whole).
    pub fn compile_all(&self, sources: Vec<RuleSource>) -> Result<Vec<CompiledRule>, Vec<CompileError>> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for s in sources {
            match self.compile(s) {
                Ok(r) => out.push(r),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }

    pub fn compile(&self, source: RuleSource) -> Result<CompiledRule, CompileError> {
        let rule = &source.rule;
        let err = |error: PlanError| CompileError {
            path: source.path.display().to_string(),
            rule_id: rule.id.clone(),
            error,
        };
        let plan = match &rule.body {
            RuleBody::Detection(d) => {
                let filter = self.filter(&d.filter, "where").map_err(err)?;
                let group_by = self.columns(&d.group_by, "group_by").map_err(err)?;
                let window = match &d.window {
                    None => None,
                    Some(w) => {
                        let slide = match (w.kind, w.slide) {
                            (WindowType::Tumbling, None) => w.size.0,
                            (WindowType::Tumbling, Some(_)) => {
                                return Err(err(PlanError::TumblingWithSlide));
                            }
                            (WindowType::Sliding, Some(s)) if s.0 <= w.size.0 && w.size.0 % s.0 == 0 => s.0,
                            (WindowType::Sliding, Some(_)) => {
                                return Err(err(PlanError::SlideNotDivisor));
                            }
                            (WindowType::Sliding, None) => {
                                return Err(err(PlanError::SlidingWithoutSlide));
                            }
                        };
                        Some((w.size.0, slide))
                    }
                };
                let having = match (&d.having, window) {
                    (Some(h), Some(_)) => Some(self.having(h, &group_by).map_err(err)?),
                    (Some(_), None) => return Err(err(PlanError::HavingWithoutWindow)),
                    (None, _) => None,
                };
                Plan::Detection(DetectionPlan {
                    filter,
                    group_by,
                    window,
                    having,
                    suppress: d.suppress.map(|s| s.0),
                })
            }
            RuleBody::Assertion(a) => Plan::Assertion(AssertionPlan {
                scope: self.filter(&a.scope, "scope").map_err(err)?,
                require: self.predicate(&a.require, "require").map_err(err)?,
                per: self.columns(&a.per, "per").map_err(err)?,
                stale_after: a.stale_after.0,
                resolve_after: a.resolve_after.map(|d| d.0).unwrap_or(60_000_000_000),
            }),
            RuleBody::FirstSeen(f) => {
                if f.keys.is_empty() {
                    return Err(err(PlanError::NoKeys { kind: Kind::FirstSeen }));
                }
                Plan::FirstSeen(FirstSeenPlan {
                    filter: f
                        .filter
                        .as_deref()
                        .map(|w| self.filter(w, "where"))
                        .transpose()
                        .map_err(err)?,
                    keys: self.columns(&f.keys, "keys").map_err(err)?,
                    learning: f.learning.0,
                })
            }
            RuleBody::Absence(a) => {
                if a.keys.is_empty() {
                    return Err(err(PlanError::NoKeys { kind: Kind::Absence }));
                }
                Plan::Absence(AbsencePlan {
                    filter: a
                        .filter
                        .as_deref()
                        .map(|w| self.filter(w, "where"))
                        .transpose()
                        .map_err(err)?,
                    keys: self.columns(&a.keys, "keys").map_err(err)?,
                    after: a.after.0,
                })
            }
        };
        let entity = match &rule.respond {
            Some(r) => Some(
                self.columns(std::slice::from_ref(&r.entity), "respond.entity")
                    .map_err(err)?
                    .remove(0),
            ),
            None => None,
        };
        let fingerprint = fnv1a(&[&source.text]);
        let sees_forged = plan.reads_column(verity_model::event::col::SENDER_BINDING);
        Ok(CompiledRule {
            source,
            fingerprint,
            plan,
            entity,
            sees_forged,
        })
    }

    fn columns(&self, names: &[String], what: &'static str) -> Result<Vec<(String, usize)>, PlanError> {
        names
            .iter()
            .map(|n| match self.arrow_schema.index_of(n) {
                Ok(i) => Ok((n.clone(), i)),
                Err(_) => Err(PlanError::UnknownColumn {
                    what,
                    name: n.clone(),
                    suggestion: closest(n, &self.column_names()),
                }),
            })
            .collect()
    }

    fn column_names(&self) -> Vec<String> {
        self.arrow_schema.fields().iter().map(|f| f.name().clone()).collect()
    }

    fn parse(&self, sql: &str, what: &'static str, schema: &DFSchema) -> Result<Expr, PlanError> {
        self.ctx
            .parse_sql_expr(sql, schema)
            .map_err(|e| Self::explain(e, what, schema))
    }

    /// DataFusion's error as the rule author's: an unknown column (DataFusion's own message
    /// quotes the name, with no suggestion) gets the did-you-mean of [`Self::columns`].
    fn explain(e: DataFusionError, what: &'static str, schema: &DFSchema) -> PlanError {
        let msg = e.to_string();
        if let Some(at) = msg.find("No field named ") {
            let rest = &msg[at + "No field named ".len()..];
            let name: String = rest
                .trim_start_matches('"')
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            return PlanError::UnknownColumn {
                what,
                suggestion: closest(&name, &names),
                name,
            };
        }
        PlanError::Sql {
            what,
            source: Box::new(e),
        }
    }

    /// Coerces types, simplifies (some functions, such as `coalesce`, only run once
    /// rewritten) and plans; then evaluates the plan once on a probe row so that a rule that
    /// cannot run fails at load, not on the first batch.
    fn plan(
        &self,
        expr: Expr,
        what: &'static str,
        schema: &DFSchema,
        reading: Reading,
    ) -> Result<Arc<dyn PhysicalExpr>, PlanError> {
        let simplifier = ExprSimplifier::new(SimplifyContext::builder().with_schema(Arc::new(schema.clone())).build());
        let expr = simplifier
            .coerce(expr, schema)
            .map_err(|e| Self::explain(e, what, schema))?;
        let expr = simplifier.simplify(expr).map_err(|e| Self::explain(e, what, schema))?;
        let expr = crate::compiled_regex::precompile(expr, schema).map_err(|e| Self::explain(e, what, schema))?;
        let expr = crate::compiled_like::precompile(expr, schema).map_err(|e| Self::explain(e, what, schema))?;
        let expr = crate::compiled_split_part::precompile(expr, schema).map_err(|e| Self::explain(e, what, schema))?;
        let physical = self
            .ctx
            .create_physical_expr(expr, schema)
            .map_err(|e| Self::explain(e, what, schema))?;
        let physical = match reading {
            Reading::Filter => {
                crate::null_as_false::rewrite(physical, schema.inner()).map_err(|e| Self::explain(e, what, schema))?
            }
            Reading::Value => physical,
        };
        let probe = probe_batch(schema.inner()).map_err(|source| PlanError::Probe { what, source })?;
        physical
            .evaluate(&probe)
            .and_then(|v| v.into_array(probe.num_rows()))
            .map_err(|source| PlanError::Unevaluable {
                what,
                source: Box::new(source),
            })?;
        Ok(physical)
    }

    /// A boolean expression over the event schema whose NULL means something of its own (an
    /// assertion's `require`: unknown).
    pub fn predicate(&self, sql: &str, what: &'static str) -> Result<Arc<dyn PhysicalExpr>, PlanError> {
        self.boolean(sql, what, Reading::Value)
    }

    /// A filter over the event schema (`where`, `scope`): rows where it is NULL are left out,
    /// as rows where it is false.
    pub fn filter(&self, sql: &str, what: &'static str) -> Result<Arc<dyn PhysicalExpr>, PlanError> {
        self.boolean(sql, what, Reading::Filter)
    }

    fn boolean(&self, sql: &str, what: &'static str, reading: Reading) -> Result<Arc<dyn PhysicalExpr>, PlanError> {
        let expr = self.parse(sql, what, &self.schema)?;
        if contains_aggregate(&expr) {
            return Err(PlanError::AggregateOutsideHaving { what });
        }
        let t = expr.get_type(&self.schema).map_err(|source| PlanError::DataFusion {
            what,
            source: Box::new(source),
        })?;
        if !matches!(t, DataType::Boolean | DataType::Null) {
            return Err(PlanError::NotBoolean {
                what,
                sql: sql.to_string(),
                found: t,
            });
        }
        self.plan(expr, what, &self.schema, reading)
    }

    fn having(&self, sql: &str, group_by: &[(String, usize)]) -> Result<HavingPlan, PlanError> {
        const WHAT: &str = "having";
        let datafusion = |source: DataFusionError| PlanError::DataFusion {
            what: WHAT,
            source: Box::new(source),
        };
        let expr = self.parse(sql, WHAT, &self.schema)?;
        let mut aggs: Vec<AggSpec> = Vec::new();
        // The first problem is reported; the rewrite cannot stop at it.
        let mut problem: Option<PlanError> = None;
        // Top-down, so an aggregate is replaced before its argument columns are visited.
        let rewritten = expr
            .transform_down(|e| match e {
                Expr::AggregateFunction(AggregateFunction { func, params }) => {
                    let name = func.name().to_ascii_lowercase();
                    let column = match params.args.first() {
                        Some(Expr::Column(c)) => match self.arrow_schema.index_of(&c.name) {
                            Ok(i) => Some((c.name.clone(), i)),
                            Err(_) => {
                                problem.get_or_insert(PlanError::UnknownColumn {
                                    what: WHAT,
                                    name: c.name.clone(),
                                    suggestion: None,
                                });
                                None
                            }
                        },
                        _ => None,
                    };
                    let (func, label) = match (name.as_str(), params.distinct, &column) {
                        ("count", false, None) => (AggFunc::Count, "count(*)".to_string()),
                        ("count", false, Some((c, _))) => (AggFunc::Count, format!("count({c})")),
                        ("count", true, Some((c, _))) => (AggFunc::CountDistinct, format!("count(distinct {c})")),
                        ("sum", false, Some((c, _))) => (AggFunc::Sum, format!("sum({c})")),
                        ("min", false, Some((c, _))) => (AggFunc::Min, format!("min({c})")),
                        ("max", false, Some((c, _))) => (AggFunc::Max, format!("max({c})")),
                        _ => {
                            problem.get_or_insert(PlanError::UnsupportedAggregate {
                                distinct: params.distinct,
                                name,
                            });
                            (AggFunc::Count, String::new())
                        }
                    };
                    let idx = match aggs.iter().position(|a| a.label == label && !label.is_empty()) {
                        Some(i) => i,
                        None => {
                            aggs.push(AggSpec {
                                func,
                                column: column.map(|(_, i)| i),
                                label,
                            });
                            aggs.len() - 1
                        }
                    };
                    Ok(Transformed::yes(Expr::Column(Column::from_name(format!(
                        "__agg_{idx}"
                    )))))
                }
                Expr::Column(c) if !c.name.starts_with("__agg_") && !group_by.iter().any(|(g, _)| *g == c.name) => {
                    problem.get_or_insert(PlanError::NotGrouped { column: c.name.clone() });
                    Ok(Transformed::no(Expr::Column(c)))
                }
                other => Ok(Transformed::no(other)),
            })
            .map_err(datafusion)?
            .data;
        if let Some(p) = problem {
            return Err(p);
        }
        if aggs.is_empty() {
            return Err(PlanError::NoAggregate);
        }
        let mut fields: Vec<Field> = group_by
            .iter()
            .map(|(g, _)| Field::new(g, DataType::Utf8, true))
            .collect();
        for (i, a) in aggs.iter().enumerate() {
            let t = match a.func {
                AggFunc::Count | AggFunc::CountDistinct => DataType::Int64,
                _ => DataType::Float64,
            };
            fields.push(Field::new(format!("__agg_{i}"), t, true));
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let df = DFSchema::try_from(schema.as_ref().clone()).map_err(datafusion)?;
        let t = rewritten.get_type(&df).map_err(datafusion)?;
        if t != DataType::Boolean {
            return Err(PlanError::NotBoolean {
                what: WHAT,
                sql: sql.to_string(),
                found: t,
            });
        }
        let expr = self.plan(rewritten, WHAT, &df, Reading::Value)?;
        Ok(HavingPlan { aggs, schema, expr })
    }
}

/// One row of nulls to try a plan on (columns are referenced by index, so a relaxed copy of
/// the schema works).
fn probe_batch(schema: &SchemaRef) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let columns = fields
        .iter()
        .map(|f| arrow::array::new_null_array(f.data_type(), 1))
        .collect();
    arrow::array::RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

fn contains_aggregate(e: &Expr) -> bool {
    let mut found = false;
    let _ = e.apply(|n| {
        if matches!(n, Expr::AggregateFunction(_)) {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// `, did you mean "x"?` for the closest known name, when it is close enough.
pub fn did_you_mean(name: &str, candidates: &[String]) -> String {
    closest(name, candidates).as_deref().map(suggest).unwrap_or_default()
}

/// The candidate closest to `name`, when it is close enough to be a typo of it.
fn closest(name: &str, candidates: &[String]) -> Option<String> {
    let best = candidates
        .iter()
        .filter(|c| !c.starts_with("__"))
        .map(|c| (levenshtein(name, c), c))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d <= (name.len() / 3).max(2) => Some(c.clone()),
        _ => None,
    }
}

fn suggest(candidate: &str) -> String {
    format!(", did you mean {candidate:?}?")
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn compile(yaml: &str) -> Result<CompiledRule, String> {
        let src = RuleSource::parse(Path::new("t.yaml"), yaml.to_string()).map_err(|e| e.to_string())?;
        Compiler::new(RevocationList::default())
            .compile(src)
            .map_err(|e| e.to_string())
    }

    const HEAD: &str = "id: t\ntitle: T\nseverity: low\n";

    #[test]
    fn compiles_a_windowed_detection() {
        let r = compile(&format!(
            "{HEAD}kind: detection\ndetection:\n  where: decision = 'deny_rbac' AND status >= 400\n  group_by: [source_principal]\n  window: {{type: sliding, size: 1m, slide: 10s}}\n  having: count(*) >= 10 AND count(distinct destination_service) > 2\n"
        ))
        .expect("compiles");
        let Plan::Detection(d) = r.plan else {
            panic!("detection")
        };
        let h = d.having.expect("having");
        assert_eq!(h.aggs.len(), 2);
        assert_eq!(h.aggs[1].label, "count(distinct destination_service)");
        assert_eq!(d.window, Some((60_000_000_000, 10_000_000_000)));
    }

    #[test]
    fn unknown_columns_get_a_did_you_mean() {
        let e = compile(&format!(
            "{HEAD}kind: detection\ndetection:\n  where: decison = 'allow'\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("t.yaml: rule t: where: unknown column \"decison\", did you mean \"decision\"?"),
            "{e}"
        );
        let e = compile(&format!(
            "{HEAD}kind: detection\ndetection:\n  where: \"true\"\n  group_by: [source_principle]\n"
        ))
        .unwrap_err();
        assert!(e.contains("did you mean \"source_principal\""), "{e}");
    }

    #[test]
    fn type_and_syntax_errors_are_reported() {
        let e = compile(&format!("{HEAD}kind: detection\ndetection:\n  where: status + 1\n")).unwrap_err();
        assert!(e.contains("must be a boolean expression"), "{e}");
        let e = compile(&format!("{HEAD}kind: detection\ndetection:\n  where: status = = 3\n")).unwrap_err();
        assert!(e.contains("rule t: where:"), "{e}");
        let e = compile(&format!(
            "{HEAD}kind: detection\ndetection:\n  where: \"true\"\n  having: count(*) > 1\n"
        ))
        .unwrap_err();
        assert!(e.contains("having needs a window"), "{e}");
        let e = compile(&format!("{HEAD}kind: assertion\ndetection:\n  where: \"true\"\n")).unwrap_err();
        assert!(
            e.contains("a `detection:` block does not belong to kind assertion"),
            "{e}"
        );
        let e = compile(&format!(
            "{HEAD}kind: detection\ndetection:\n  where: \"true\"\n  wehre: x\n"
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `wehre`"), "{e}");
    }

    #[test]
    fn errors_say_which_check_failed() {
        let error = |yaml: String| {
            let src = RuleSource::parse(Path::new("t.yaml"), yaml).expect("parses");
            Compiler::new(RevocationList::default())
                .compile(src)
                .expect_err("does not compile")
        };
        let detection = |rest: &str| format!("{HEAD}kind: detection\ndetection:\n  where: \"true\"\n{rest}");
        let e = error(detection("  window: {type: tumbling, size: 1m, slide: 10s}\n"));
        assert!(matches!(e.error, PlanError::TumblingWithSlide), "{e}");
        assert_eq!(e.to_string(), "t.yaml: rule t: window: a tumbling window has no slide");
        let e = error(detection("  window: {type: sliding, size: 1m}\n"));
        assert_eq!(e.to_string(), "t.yaml: rule t: window: a sliding window needs slide");
        let e = error(detection("  window: {type: sliding, size: 1m, slide: 7s}\n"));
        assert_eq!(
            e.to_string(),
            "t.yaml: rule t: window: slide must divide the window size"
        );
        let e = error(detection(
            "  group_by: [source_principal]\n  window: {type: tumbling, size: 1m}\n  having: avg(status) > 1\n",
        ));
        assert!(
            matches!(&e.error, PlanError::UnsupportedAggregate { name, distinct: false } if name == "avg"),
            "{e}"
        );
        let e = error(detection(
            "  group_by: [source_principal]\n  window: {type: tumbling, size: 1m}\n  having: count(*) > 1 AND status > 3\n",
        ));
        assert_eq!(
            e.to_string(),
            "t.yaml: rule t: having: column \"status\" is neither aggregated nor in group_by"
        );
        let e = error(format!(
            "{HEAD}kind: first_seen\nfirst_seen:\n  keys: []\n  learning: 1h\n"
        ));
        assert!(matches!(e.error, PlanError::NoKeys { kind: Kind::FirstSeen }), "{e}");
        assert_eq!(
            e.to_string(),
            "t.yaml: rule t: first_seen: keys must name at least one column"
        );
        let e = error(detection("respond: {entity: source_principl, ttl: 1h}\n"));
        assert!(
            matches!(&e.error, PlanError::UnknownColumn { what, suggestion: Some(s), .. } if *what == "respond.entity" && s == "source_principal"),
            "{e}"
        );
        // DataFusion's error stays reachable as the source, behind its first line.
        let e = error(format!("{HEAD}kind: detection\ndetection:\n  where: status = = 3\n"));
        assert!(matches!(e.error, PlanError::Sql { .. }), "{e}");
        let source = std::error::Error::source(&e).and_then(std::error::Error::source);
        assert!(
            source.is_some_and(|s| s.to_string().contains("SQL error")),
            "{source:?}"
        );
    }

    #[test]
    fn is_revoked_is_available() {
        compile(&format!(
            "{HEAD}kind: detection\ndetection:\n  where: is_revoked(source_principal) AND decision = 'allow'\n"
        ))
        .expect("compiles");
    }

    #[test]
    fn a_rule_has_the_body_of_its_kind_and_a_known_action() {
        let missing = compile(&format!("{HEAD}kind: assertion\n")).unwrap_err();
        assert!(
            missing.contains("kind assertion needs a `assertion:` block"),
            "{missing}"
        );
        let r = compile(&format!(
            "{HEAD}kind: detection\ndetection:\n  where: decision = 'allow'\nrespond: {{entity: source_principal, ttl: 1h}}\n"
        ))
        .expect("compiles");
        assert_eq!(r.rule().kind(), crate::rule::Kind::Detection);
        assert_eq!(
            r.rule().respond.as_ref().map(|s| s.action),
            Some(crate::rule::Action::Revoke)
        );
        let unknown = compile(&format!(
            "{HEAD}kind: detection\ndetection:\n  where: decision = 'allow'\nrespond: {{entity: source_principal, action: delete, ttl: 1h}}\n"
        ))
        .unwrap_err();
        assert!(unknown.contains("unknown variant `delete`"), "{unknown}");
    }
}
