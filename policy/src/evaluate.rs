//! A set of policies evaluated on event batches with Istio's order: CUSTOM, then DENY, then
//! ALLOW (allowed when no ALLOW policy applies to the destination, denied when one applies and
//! none matches). AUDIT policies never change a decision. Dry-run policies are left out of the
//! enforced verdict and counted in a second one, "as if enforced", which is what staging a
//! policy needs.

use arrow::array::{Array, BooleanArray, RecordBatch};

use crate::compile::{CompileError, CompiledPolicy, Layers, compile};
use crate::event_view::{Enforcer, EventView, cell};
use crate::inventory::Inventory;
use crate::object::{Action, AuthorizationPolicy};

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The record is not from a proxy that enforces policies (a client sidecar, an outbound
    /// ztunnel record): not evaluated.
    NotEnforced,
    /// Allowed; `by` is the ALLOW policy that matched (index into the set), `None` when no
    /// ALLOW policy applies.
    Allow { by: Option<usize> },
    /// Denied; `by` is the DENY policy that matched, `None` when ALLOW policies apply and none
    /// matched.
    Deny { by: Option<usize> },
    /// The policies' outcome depends on something the record does not carry.
    Unknown,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::NotEnforced => "not_enforced",
            Verdict::Allow { .. } => "allow",
            Verdict::Deny { .. } => "deny",
            Verdict::Unknown => "unknown",
        }
    }
}

/// What the mesh did with a request, from the record's `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Allowed,
    /// Denied by an authorization policy (RBAC, or ztunnel's L4 policy).
    DeniedByPolicy,
    /// Denied by something else (JWT validation, an external authorizer).
    DeniedOtherwise,
    Unknown,
}

pub fn observed(view: &EventView<'_>, row: usize) -> Observed {
    match cell(view.decision, row) {
        Some("allow") => Observed::Allowed,
        Some("deny_rbac" | "deny_l4") => Observed::DeniedByPolicy,
        Some("deny_jwt" | "deny_ext_authz") => Observed::DeniedOtherwise,
        _ => Observed::Unknown,
    }
}

/// The verdicts for one batch.
#[derive(Debug, Clone)]
pub struct Verdicts {
    /// With dry-run policies left out, as the mesh enforces.
    pub enforced: Vec<Verdict>,
    /// With dry-run policies enforced too.
    pub with_dry_run: Vec<Verdict>,
}

/// Compiled policies and the inventory their selectors are resolved with.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    inventory: Inventory,
}

impl PolicySet {
    pub fn compile(
        policies: &[AuthorizationPolicy],
        root_namespace: &str,
        inventory: Inventory,
    ) -> Result<PolicySet, CompileError> {
        let policies = policies
            .iter()
            .map(|p| compile(p, root_namespace))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PolicySet { policies, inventory })
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Per policy, per row: whether it applies and matches (three-valued).
    pub fn matches(&self, batch: &RecordBatch) -> Vec<BooleanArray> {
        let view = EventView::new(batch);
        let context = RowContext::of(&view);
        self.policies
            .iter()
            .map(|policy| {
                let applies: Vec<Option<bool>> = (0..view.rows())
                    .map(|row| policy.target.applies(&view, row, &self.inventory))
                    .collect();
                layered(&policy.matches, &view, &context, &applies)
            })
            .collect()
    }

    /// Per policy, per rule, per row: whether the policy applies and that rule matches.
    pub fn rule_matches(&self, batch: &RecordBatch) -> Vec<Vec<BooleanArray>> {
        let view = EventView::new(batch);
        let context = RowContext::of(&view);
        self.policies
            .iter()
            .map(|policy| {
                let applies: Vec<Option<bool>> = (0..view.rows())
                    .map(|row| policy.target.applies(&view, row, &self.inventory))
                    .collect();
                policy
                    .rules
                    .iter()
                    .map(|rule| layered(rule, &view, &context, &applies))
                    .collect()
            })
            .collect()
    }

    /// Per policy, per row: whether the policy applies to the request (three-valued).
    pub fn applies(&self, batch: &RecordBatch) -> Vec<Vec<Option<bool>>> {
        let view = EventView::new(batch);
        self.policies
            .iter()
            .map(|p| {
                (0..view.rows())
                    .map(|row| p.target.applies(&view, row, &self.inventory))
                    .collect()
            })
            .collect()
    }

    pub fn evaluate(&self, batch: &RecordBatch) -> Verdicts {
        let view = EventView::new(batch);
        let rows = view.rows();
        let matches = self.matches(batch);
        let applies: Vec<Vec<Option<bool>>> = self
            .policies
            .iter()
            .map(|p| {
                if p.action == Action::Allow {
                    (0..rows)
                        .map(|row| p.target.applies(&view, row, &self.inventory))
                        .collect()
                } else {
                    Vec::new()
                }
            })
            .collect();
        let mut enforced = Vec::with_capacity(rows);
        let mut with_dry_run = Vec::with_capacity(rows);
        for row in 0..rows {
            if view.enforcer(row) == Enforcer::Elsewhere {
                enforced.push(Verdict::NotEnforced);
                with_dry_run.push(Verdict::NotEnforced);
                continue;
            }
            enforced.push(self.decide(row, &matches, &applies, false));
            with_dry_run.push(self.decide(row, &matches, &applies, true));
        }
        Verdicts { enforced, with_dry_run }
    }

    fn decide(&self, row: usize, matches: &[BooleanArray], applies: &[Vec<Option<bool>>], dry_run: bool) -> Verdict {
        let mut custom = Some(false);
        let mut deny = Some(false);
        let mut deny_by = None;
        let mut allow_exists = Some(false);
        let mut allow = Some(false);
        let mut allow_by = None;
        for (i, policy) in self.policies.iter().enumerate() {
            if policy.dry_run && !dry_run {
                continue;
            }
            let m = matches.get(i).and_then(|a| a.is_valid(row).then(|| a.value(row)));
            match policy.action {
                Action::Custom => custom = kleene_or(custom, m),
                Action::Deny => {
                    if m == Some(true) && deny_by.is_none() {
                        deny_by = Some(i);
                    }
                    deny = kleene_or(deny, m);
                }
                Action::Allow => {
                    let a = applies.get(i).and_then(|v| v.get(row).copied()).flatten();
                    // Whatever its rules, an ALLOW policy that applies makes "no match" a denial.
                    allow_exists = kleene_or(allow_exists, a);
                    if m == Some(true) && allow_by.is_none() {
                        allow_by = Some(i);
                    }
                    allow = kleene_or(allow, m);
                }
                Action::Audit => {}
            }
        }
        // Denied by ALLOW policies: some apply and none matches.
        let not_allowed = kleene_and(allow_exists, allow.map(|a| !a));
        if deny == Some(true) {
            return Verdict::Deny { by: deny_by };
        }
        if not_allowed == Some(true) {
            return Verdict::Deny { by: None };
        }
        // From here on DENY and ALLOW would let the request through, unless unknown. An
        // external authorizer (CUSTOM) decides first and Verity cannot know what it says.
        if deny == Some(false) && not_allowed == Some(false) && custom == Some(false) {
            return Verdict::Allow { by: allow_by };
        }
        Verdict::Unknown
    }
}

fn kleene_and(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

fn kleene_or(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

/// What decides which of a policy's predicates a row is judged by.
struct RowContext {
    is_http: Vec<Option<bool>>,
    at_ztunnel: Vec<bool>,
}

impl RowContext {
    fn of(view: &EventView<'_>) -> Self {
        Self {
            is_http: (0..view.rows()).map(|r| view.is_http(r)).collect(),
            at_ztunnel: (0..view.rows())
                .map(|r| view.enforcer(r) == Enforcer::Ztunnel)
                .collect(),
        }
    }
}

/// Evaluates `layers` on every row with the predicate of the proxy that judged it, and with
/// whether the policy applies there.
fn layered(layers: &Layers, view: &EventView<'_>, context: &RowContext, applies: &[Option<bool>]) -> BooleanArray {
    let http = layers.http.eval(view);
    let tcp = if layers.tcp == layers.http {
        http.clone()
    } else {
        layers.tcp.eval(view)
    };
    let ztunnel = layers.ztunnel.as_ref().map(|z| z.eval(view));
    (0..view.rows())
        .map(|row| {
            let applies = applies.get(row).copied().flatten();
            let hit = |a: &BooleanArray| a.is_valid(row).then(|| a.value(row));
            if context.at_ztunnel.get(row).copied().unwrap_or(false) {
                // ztunnel enforces ALLOW and DENY policies only.
                return kleene_and(applies, ztunnel.as_ref().map_or(Some(false), hit));
            }
            let matched = match context.is_http.get(row).copied().flatten() {
                Some(true) => hit(&http),
                Some(false) => hit(&tcp),
                None => match (hit(&http), hit(&tcp)) {
                    (Some(a), Some(b)) if a == b => Some(a),
                    _ => None,
                },
            };
            kleene_and(applies, matched)
        })
        .collect()
}
