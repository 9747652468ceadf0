//! `verity policy whatif`: recorded traffic against a set of policies. Each request at an
//! enforcement point is compared with what the mesh did; changes are grouped by source and
//! destination with sample records.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use serde::Serialize;
use verity_model::event::col;

use crate::evaluate::{Observed, PolicySet, Verdict, observed};
use crate::event_view::{EventView, cell};
use crate::target::Destination;

/// Sample records kept per group.
const SAMPLES: usize = 3;
/// Characters of a sample record kept.
const SAMPLE_CHARS: usize = 400;

/// How a request's outcome would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Allowed by the mesh, denied under the policies: the change would break traffic.
    AllowedToDenied,
    /// Denied by the mesh's policies, allowed under the given ones.
    DeniedToAllowed,
    /// The outcome under the policies depends on something the record does not carry.
    Unknown,
}

/// One source → destination pair whose requests change.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChangedEdge {
    pub requests: u64,
    /// The deciding policies (`namespace/name`, or `no ALLOW policy matched`), with counts.
    pub decided_by: BTreeMap<String, u64>,
    pub samples: Vec<String>,
}

/// Totals and changes of a whatif run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WhatifReport {
    /// Records from proxies that enforce policies.
    pub evaluated: u64,
    /// Records elsewhere (client sidecars, outbound ztunnel records): not evaluated.
    pub not_enforced: u64,
    /// Records their authenticated sender was not a party to (forgeries): not evaluated.
    pub forged: u64,
    /// Records whose mesh decision is not a policy one (JWT or external authorizer denials,
    /// unknown decisions): evaluated but not compared.
    pub not_comparable: u64,
    pub allowed_unchanged: u64,
    pub denied_unchanged: u64,
    pub allowed_to_denied: u64,
    pub denied_to_allowed: u64,
    pub unknown: u64,
    /// change → "source → destination" → requests.
    pub changes: BTreeMap<Change, BTreeMap<String, ChangedEdge>>,
}

impl WhatifReport {
    /// Adds one batch's records, evaluated with `set`. `enforce_dry_run` counts dry-run
    /// policies as enforced (what promoting them would do).
    pub fn add(&mut self, set: &PolicySet, batch: &RecordBatch, enforce_dry_run: bool) {
        let verdicts = set.evaluate(batch);
        let verdicts = if enforce_dry_run {
            verdicts.with_dry_run
        } else {
            verdicts.enforced
        };
        let view = EventView::new(batch);
        let raw = batch.column_by_name(col::RAW).and_then(|c| c.as_string_opt::<i32>());
        let source_principal = batch
            .column_by_name(col::SOURCE_PRINCIPAL)
            .and_then(|c| c.as_string_opt::<i32>());
        let source_workload = batch
            .column_by_name(col::SOURCE_WORKLOAD)
            .and_then(|c| c.as_string_opt::<i32>());
        let source_ip = batch
            .column_by_name(col::SOURCE_IP)
            .and_then(|c| c.as_string_opt::<i32>());
        for (row, verdict) in verdicts.iter().enumerate() {
            if view.forged(row) {
                self.forged += 1;
                continue;
            }
            if *verdict == Verdict::NotEnforced {
                self.not_enforced += 1;
                continue;
            }
            self.evaluated += 1;
            let change = match (observed(&view, row), verdict) {
                (Observed::DeniedOtherwise | Observed::Unknown, _) => {
                    self.not_comparable += 1;
                    continue;
                }
                (_, Verdict::Unknown) => {
                    self.unknown += 1;
                    Change::Unknown
                }
                (Observed::Allowed, Verdict::Allow { .. }) => {
                    self.allowed_unchanged += 1;
                    continue;
                }
                (Observed::DeniedByPolicy, Verdict::Deny { .. }) => {
                    self.denied_unchanged += 1;
                    continue;
                }
                (Observed::Allowed, Verdict::Deny { .. }) => {
                    self.allowed_to_denied += 1;
                    Change::AllowedToDenied
                }
                (Observed::DeniedByPolicy, Verdict::Allow { .. }) => {
                    self.denied_to_allowed += 1;
                    Change::DeniedToAllowed
                }
                (_, Verdict::NotEnforced) => continue,
            };
            let source = cell(source_principal, row)
                .or_else(|| cell(source_workload, row))
                .or_else(|| cell(source_ip, row))
                .unwrap_or("(unknown source)");
            let d = Destination::of(&view, row);
            let destination = format!(
                "{}/{}",
                d.namespace.unwrap_or("?"),
                d.workload.or(d.service).unwrap_or("?")
            );
            let edge = self
                .changes
                .entry(change)
                .or_default()
                .entry(format!("{source} → {destination}"))
                .or_default();
            edge.requests += 1;
            let decided = match verdict {
                Verdict::Deny { by: Some(i) } | Verdict::Allow { by: Some(i) } => {
                    set.policies().get(*i).map_or_else(|| "?".to_string(), |p| p.id.clone())
                }
                Verdict::Deny { by: None } => "no ALLOW policy matched".to_string(),
                Verdict::Allow { by: None } => "no ALLOW policy applies".to_string(),
                _ => "unknown".to_string(),
            };
            *edge.decided_by.entry(decided).or_default() += 1;
            if edge.samples.len() < SAMPLES
                && let Some(line) = raw.filter(|r| row < r.len() && r.is_valid(row)).map(|r| r.value(row))
            {
                edge.samples.push(line.chars().take(SAMPLE_CHARS).collect());
            }
        }
    }

    /// Whether applying the policies would deny traffic the mesh allowed.
    pub fn breaks_traffic(&self) -> bool {
        self.allowed_to_denied > 0
    }
}
