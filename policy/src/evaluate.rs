//! A set of policies evaluated on event batches with Istio's order: CUSTOM, then DENY, then
//! ALLOW (allowed when no ALLOW policy applies to the destination, denied when one applies and
//! none matches). AUDIT policies never change a decision. Dry-run policies are left out of the
//! enforced verdict and counted in a second one, "as if enforced", which is what staging a
//! policy needs.
//!
//! A policy applies in its namespace (or mesh-wide from the root namespace), so the rows of a
//! batch are grouped by destination namespace and each group meets only the policies that can
//! apply to it; within a group a policy's predicates run only over the rows its target may
//! select. The work per batch grows with the policies per namespace, not with all of them.

use std::collections::HashMap;

use arrow::array::RecordBatch;

use crate::compile::{CompileError, CompiledPolicy, Layers, compile};
use crate::event_view::{Enforcer, EventView, cell};
use crate::inventory::Inventory;
use crate::object::{Action, AuthorizationPolicy};
use crate::predicate::{kleene_and, kleene_or};
use crate::target::{Destination, Target};

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

/// One policy that may apply to a request: whether it does, and whether it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Index into [`PolicySet::policies`].
    pub policy: usize,
    pub applies: Option<bool>,
    /// Applies and its rules match.
    pub matched: Option<bool>,
    rules_at: usize,
}

/// Every request's candidate policies in one batch. A policy not listed for a row does not
/// apply to it.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    starts: Vec<usize>,
    entries: Vec<Entry>,
    rules: Vec<Option<bool>>,
}

impl Evaluation {
    pub fn rows(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// The policies that may apply to `row`, in policy order.
    pub fn row(&self, row: usize) -> &[Entry] {
        match (self.starts.get(row), self.starts.get(row + 1)) {
            (Some(&a), Some(&b)) => self.entries.get(a..b).unwrap_or_default(),
            _ => &[],
        }
    }

    /// Per rule of the entry's policy (`count` of them): applies and that rule matches. Empty
    /// unless the evaluation was made with rules.
    pub fn rules(&self, entry: &Entry, count: usize) -> &[Option<bool>] {
        self.rules
            .get(entry.rules_at..entry.rules_at.saturating_add(count))
            .unwrap_or_default()
    }
}

/// Compiled policies, indexed by the namespace they apply in, and the inventory their
/// selectors are resolved with.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    inventory: Inventory,
    /// Policies that can apply in any namespace.
    mesh_wide: Vec<usize>,
    by_namespace: HashMap<String, Vec<usize>>,
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
        let mut mesh_wide = Vec::new();
        let mut by_namespace: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            match &p.target {
                // A Gateway or GatewayClass reference reaches waypoints that serve any namespace.
                Target::Mesh | Target::Selector { namespace: None, .. } | Target::Refs { gateways: true, .. } => {
                    mesh_wide.push(i)
                }
                Target::Namespace(ns)
                | Target::Selector {
                    namespace: Some(ns), ..
                }
                | Target::Refs { namespace: ns, .. } => by_namespace.entry(ns.clone()).or_default().push(i),
            }
        }
        Ok(PolicySet {
            policies,
            inventory,
            mesh_wide,
            by_namespace,
        })
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The policies that can apply to rows whose destination namespace is `ns`, in order
    /// (every policy when the namespace is unknown).
    fn relevant(&self, ns: Option<&str>) -> Vec<usize> {
        let Some(ns) = ns else {
            return (0..self.policies.len()).collect();
        };
        let local = self.by_namespace.get(ns).map_or(&[][..], Vec::as_slice);
        let mut all: Vec<usize> = self.mesh_wide.iter().chain(local).copied().collect();
        all.sort_unstable();
        all
    }

    /// Evaluates every policy that may apply to each request at an enforcement point;
    /// `with_rules` also evaluates each rule on its own (for drift).
    pub fn evaluation(&self, batch: &RecordBatch, with_rules: bool) -> Evaluation {
        let view = EventView::new(batch);
        let rows = view.rows();
        let context = RowContext::of(&view);
        let destinations: Vec<Destination<'_>> = (0..rows).map(|r| Destination::of(&view, r)).collect();
        let mut groups: HashMap<Option<&str>, Vec<usize>> = HashMap::new();
        for row in 0..rows {
            if context.enforcers.get(row).copied().unwrap_or(Enforcer::Elsewhere) != Enforcer::Elsewhere {
                groups
                    .entry(destinations.get(row).and_then(|d| d.namespace))
                    .or_default()
                    .push(row);
            }
        }
        // (row, entry) pairs, sorted into row order at the end: one allocation, not one per row.
        let mut pairs: Vec<(usize, Entry)> = Vec::new();
        let mut rules_flat = Vec::new();
        for (ns, group) in groups {
            // Whether a policy applies depends only on the proxy and the destination: resolve
            // it once per distinct one in the group, not once per request.
            let mut distinct: HashMap<DestinationKey<'_>, usize> = HashMap::new();
            let mut representative: Vec<usize> = Vec::new();
            let mut destination_of: Vec<usize> = Vec::with_capacity(group.len());
            for &row in &group {
                let enforcer = context.enforcers.get(row).copied().unwrap_or(Enforcer::Elsewhere);
                let d = destinations.get(row).copied().unwrap_or_default();
                let key = (enforcer, d.workload, d.service, d.service_namespace);
                let index = *distinct.entry(key).or_insert_with(|| {
                    representative.push(row);
                    representative.len() - 1
                });
                destination_of.push(index);
            }
            for p in self.relevant(ns) {
                let Some(policy) = self.policies.get(p) else { continue };
                let per_destination: Vec<Option<bool>> = representative
                    .iter()
                    .map(|&row| {
                        let enforcer = context.enforcers.get(row).copied().unwrap_or(Enforcer::Elsewhere);
                        destinations
                            .get(row)
                            .and_then(|d| policy.target.applies(enforcer, d, &self.inventory))
                    })
                    .collect();
                let mut live = Vec::with_capacity(group.len());
                let mut applies = Vec::with_capacity(group.len());
                for (&row, &d) in group.iter().zip(&destination_of) {
                    let a = per_destination.get(d).copied().flatten();
                    if a != Some(false) {
                        live.push(row);
                        applies.push(a);
                    }
                }
                if live.is_empty() {
                    continue;
                }
                let matched = layered(&policy.matches, &view, &context, &live, &applies);
                let rules: Vec<Vec<Option<bool>>> = if with_rules {
                    policy
                        .rules
                        .iter()
                        .map(|r| layered(r, &view, &context, &live, &applies))
                        .collect()
                } else {
                    Vec::new()
                };
                for (k, &row) in live.iter().enumerate() {
                    let rules_at = rules_flat.len();
                    rules_flat.extend(rules.iter().map(|r| r.get(k).copied().flatten()));
                    pairs.push((
                        row,
                        Entry {
                            policy: p,
                            applies: applies.get(k).copied().flatten(),
                            matched: matched.get(k).copied().flatten(),
                            rules_at,
                        },
                    ));
                }
            }
        }
        pairs.sort_unstable_by_key(|(row, e)| (*row, e.policy));
        let mut out = Evaluation {
            starts: Vec::with_capacity(rows + 1),
            entries: Vec::with_capacity(pairs.len()),
            rules: rules_flat,
        };
        let mut next = pairs.iter().peekable();
        for row in 0..rows {
            out.starts.push(out.entries.len());
            while let Some((_, e)) = next.next_if(|(r, _)| *r == row) {
                out.entries.push(*e);
            }
        }
        out.starts.push(out.entries.len());
        out
    }

    pub fn evaluate(&self, batch: &RecordBatch) -> Verdicts {
        self.verdicts(batch, &self.evaluation(batch, false))
    }

    /// The verdicts of a batch from its evaluation.
    pub fn verdicts(&self, batch: &RecordBatch, evaluation: &Evaluation) -> Verdicts {
        let view = EventView::new(batch);
        let rows = view.rows();
        let mut enforced = Vec::with_capacity(rows);
        let mut with_dry_run = Vec::with_capacity(rows);
        for row in 0..rows {
            if view.enforcer(row) == Enforcer::Elsewhere {
                enforced.push(Verdict::NotEnforced);
                with_dry_run.push(Verdict::NotEnforced);
                continue;
            }
            let entries = evaluation.row(row);
            enforced.push(self.decide(entries, false));
            with_dry_run.push(self.decide(entries, true));
        }
        Verdicts { enforced, with_dry_run }
    }

    fn decide(&self, entries: &[Entry], dry_run: bool) -> Verdict {
        let mut custom = Some(false);
        let mut deny = Some(false);
        let mut deny_by = None;
        let mut allow_exists = Some(false);
        let mut allow = Some(false);
        let mut allow_by = None;
        for e in entries {
            let Some(policy) = self.policies.get(e.policy) else {
                continue;
            };
            // A dry-run CUSTOM policy still asks its external authorizer.
            if policy.dry_run && !dry_run && policy.action != Action::Custom {
                continue;
            }
            let m = e.matched;
            match policy.action {
                Action::Custom => custom = kleene_or(custom, m),
                Action::Deny => {
                    if m == Some(true) && deny_by.is_none() {
                        deny_by = Some(e.policy);
                    }
                    deny = kleene_or(deny, m);
                }
                Action::Allow => {
                    // Whatever its rules, an ALLOW policy that applies makes "no match" a denial.
                    allow_exists = kleene_or(allow_exists, e.applies);
                    if m == Some(true) && allow_by.is_none() {
                        allow_by = Some(e.policy);
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

/// What a policy's target is resolved against: the proxy, the workload, the service and its
/// namespace.
type DestinationKey<'a> = (Enforcer, Option<&'a str>, Option<&'a str>, Option<&'a str>);

/// What decides which of a policy's predicates a row is judged by.
struct RowContext {
    enforcers: Vec<Enforcer>,
    is_http: Vec<Option<bool>>,
}

impl RowContext {
    fn of(view: &EventView<'_>) -> Self {
        Self {
            enforcers: (0..view.rows()).map(|r| view.enforcer(r)).collect(),
            is_http: (0..view.rows()).map(|r| view.is_http(r)).collect(),
        }
    }
}

/// Evaluates `layers` on the `rows` with the predicate of the proxy that judged each, and with
/// whether the policy applies there (`applies`, one per row).
fn layered(
    layers: &Layers,
    view: &EventView<'_>,
    context: &RowContext,
    rows: &[usize],
    applies: &[Option<bool>],
) -> Vec<Option<bool>> {
    let mut at_ztunnel = Vec::new();
    let mut http_rows = Vec::new();
    let mut tcp_rows = Vec::new();
    let mut either_rows = Vec::new();
    for (k, &row) in rows.iter().enumerate() {
        if context.enforcers.get(row) == Some(&Enforcer::Ztunnel) {
            at_ztunnel.push(k);
        } else {
            match context.is_http.get(row).copied().flatten() {
                Some(true) => http_rows.push(k),
                Some(false) => tcp_rows.push(k),
                None => either_rows.push(k),
            }
        }
    }
    let mut out = vec![None; rows.len()];
    let pick = |ks: &[usize]| -> Vec<usize> { ks.iter().filter_map(|&k| rows.get(k).copied()).collect() };
    let mut put = |ks: &[usize], values: Vec<Option<bool>>| {
        for (&k, v) in ks.iter().zip(values) {
            if let Some(slot) = out.get_mut(k) {
                *slot = v;
            }
        }
    };
    if !http_rows.is_empty() {
        put(&http_rows, layers.http.eval(view, &pick(&http_rows)));
    }
    if !tcp_rows.is_empty() {
        put(&tcp_rows, layers.tcp.eval(view, &pick(&tcp_rows)));
    }
    if !either_rows.is_empty() {
        let selected = pick(&either_rows);
        let http = layers.http.eval(view, &selected);
        let tcp = if layers.tcp == layers.http {
            http.clone()
        } else {
            layers.tcp.eval(view, &selected)
        };
        put(
            &either_rows,
            http.into_iter()
                .zip(tcp)
                .map(|(a, b)| if a == b { a } else { None })
                .collect(),
        );
    }
    if !at_ztunnel.is_empty() {
        // ztunnel enforces ALLOW and DENY policies only.
        let values = match &layers.ztunnel {
            Some(z) => z.eval(view, &pick(&at_ztunnel)),
            None => vec![Some(false); at_ztunnel.len()],
        };
        put(&at_ztunnel, values);
    }
    out.iter().zip(applies).map(|(m, a)| kleene_and(*a, *m)).collect()
}
