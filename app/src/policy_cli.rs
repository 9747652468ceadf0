//! `verity policy learn` and `verity policy whatif`: least-privilege `AuthorizationPolicy`
//! proposals from recorded traffic, and recorded traffic checked against policies before they
//! are applied. The semantics live in `verity-policy`; this module reads the files and writes
//! the reports.

use std::io::Write;
use std::path::{Path, PathBuf};

use verity_policy::AuthorizationPolicy;
use verity_policy::drift::DriftReport;
use verity_policy::learn::{LearnReport, LearnSettings, Learner};
use verity_policy::object::read_paths;
use verity_policy::whatif::{Change, WhatifReport};
use verity_policy::{Inventory, PolicySet};

use crate::log_files::{self, ReadError, ReadSettings};

/// Why a policy command stopped.
#[derive(Debug, thiserror::Error)]
pub enum PolicyCliError {
    #[error(transparent)]
    Policies(#[from] verity_policy::object::ReadError),
    #[error(transparent)]
    Compile(#[from] verity_policy::CompileError),
    #[error(transparent)]
    Inventory(#[from] verity_policy::inventory::InventoryError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("cannot write {what}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no AuthorizationPolicy found in {0}")]
    NoPolicies(String),
}

fn write_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PolicyCliError {
    let what = what.into();
    move |source| PolicyCliError::Write { what, source }
}

fn inventory(path: Option<&Path>) -> Result<Inventory, PolicyCliError> {
    Ok(Inventory::read_optional(path)?)
}

/// Reads the log files and hands every batch of events to `each`; returns (lines, rejected).
fn for_each_batch(
    files: &[String],
    workers: usize,
    progress: &mut impl Write,
    mut each: impl FnMut(&arrow::array::RecordBatch),
) -> Result<(u64, u64), PolicyCliError> {
    let settings = ReadSettings {
        workers,
        observed_time_ns: Some(0),
        ..ReadSettings::default()
    };
    let (mut lines, mut rejected) = (0u64, 0u64);
    log_files::for_each_chunk::<PolicyCliError>(files, &settings, &|_| true, |chunk| {
        lines = lines.saturating_add(chunk.lines);
        for r in &chunk.rejects {
            rejected = rejected.saturating_add(1);
            if rejected <= 20 {
                let name = files.get(chunk.file).map_or("-", String::as_str);
                let _ = writeln!(progress, "{name}:{}: {}", r.line, r.rejection);
            }
        }
        if let Some(batch) = &chunk.batch {
            each(batch);
        }
        Ok(())
    })?;
    Ok((lines, rejected))
}

pub struct WhatifOptions {
    pub policies: Vec<PathBuf>,
    pub workloads: Option<PathBuf>,
    pub root_namespace: String,
    pub enforce_dry_run: bool,
    pub json: bool,
    pub workers: usize,
}

/// Runs whatif and writes the report; returns it (the caller exits non-zero when it breaks
/// traffic).
pub fn whatif(
    opts: &WhatifOptions,
    files: &[String],
    out: &mut impl Write,
    progress: &mut impl Write,
) -> Result<WhatifReport, PolicyCliError> {
    let (policies, skipped) = read_paths(&opts.policies)?;
    if policies.is_empty() {
        let shown: Vec<String> = opts.policies.iter().map(|p| p.display().to_string()).collect();
        return Err(PolicyCliError::NoPolicies(shown.join(", ")));
    }
    if skipped > 0 {
        let _ = writeln!(progress, "whatif: {skipped} documents of other kinds skipped");
    }
    let set = PolicySet::compile(&policies, &opts.root_namespace, inventory(opts.workloads.as_deref())?)?;
    let mut report = WhatifReport::default();
    let (lines, rejected) = for_each_batch(files, opts.workers, progress, |batch| {
        report.add(&set, batch, opts.enforce_dry_run)
    })?;
    let _ = writeln!(
        progress,
        "whatif: {lines} lines ({rejected} rejected), {} policies",
        policies.len()
    );
    write_report(&report, opts.json, out, write_whatif_text)?;
    Ok(report)
}

/// Writes a report as pretty JSON, or as text with `text`.
fn write_report<R: serde::Serialize, W: Write>(
    report: &R,
    json: bool,
    out: &mut W,
    text: fn(&R, &mut W) -> std::io::Result<()>,
) -> Result<(), PolicyCliError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, report).map_err(|e| PolicyCliError::Write {
            what: "the report".into(),
            source: e.into(),
        })?;
        writeln!(out).map_err(write_err("the report"))
    } else {
        text(report, out).map_err(write_err("the report"))
    }
}

fn write_whatif_text(r: &WhatifReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "requests evaluated where policies are enforced: {}", r.evaluated)?;
    writeln!(
        out,
        "  unchanged: {} allowed, {} denied",
        r.allowed_unchanged, r.denied_unchanged
    )?;
    writeln!(out, "  allowed -> denied: {}", r.allowed_to_denied)?;
    writeln!(out, "  denied -> allowed: {}", r.denied_to_allowed)?;
    writeln!(
        out,
        "  unknown (the outcome depends on what the records do not carry): {}",
        r.unknown
    )?;
    writeln!(
        out,
        "  not compared (denied by JWT or an external authorizer, or no decision): {}",
        r.not_comparable
    )?;
    writeln!(
        out,
        "records not at an enforcement point (client side, outbound, gateways): {}",
        r.not_enforced
    )?;
    for (change, title) in [
        (Change::AllowedToDenied, "ALLOWED -> DENIED (would break traffic)"),
        (Change::DeniedToAllowed, "DENIED -> ALLOWED"),
        (Change::Unknown, "UNKNOWN"),
    ] {
        let Some(edges) = r.changes.get(&change) else { continue };
        writeln!(out, "\n{title}")?;
        for (edge, e) in edges {
            let by: Vec<String> = e.decided_by.iter().map(|(p, n)| format!("{p} ({n})")).collect();
            writeln!(out, "  {edge}: {} requests; {}", e.requests, by.join(", "))?;
            for s in &e.samples {
                writeln!(out, "    {s}")?;
            }
        }
    }
    Ok(())
}

pub struct LearnOptions {
    pub workloads: Option<PathBuf>,
    pub settings: LearnSettings,
    /// Write one file per policy here; else print them all as one YAML stream.
    pub out_dir: Option<PathBuf>,
    pub workers: usize,
}

/// Learns from the log files and writes the proposed policies and the report.
pub fn learn(
    opts: &LearnOptions,
    files: &[String],
    out: &mut impl Write,
    progress: &mut impl Write,
) -> Result<LearnReport, PolicyCliError> {
    let inventory = inventory(opts.workloads.as_deref())?;
    let mut learner = Learner::default();
    let (lines, rejected) = for_each_batch(files, opts.workers, progress, |batch| learner.add(batch, &inventory))?;
    let (policies, report) = learner.propose(&inventory, &opts.settings);
    let _ = writeln!(progress, "learn: {lines} lines ({rejected} rejected)");
    write_proposals(&policies, report, opts.out_dir.as_deref(), out, progress)
}

/// Writes proposed policies (one file each into `out_dir`, else a YAML stream to `out`) and
/// what was left out (to `progress`).
pub fn write_proposals(
    policies: &[AuthorizationPolicy],
    report: LearnReport,
    out_dir: Option<&Path>,
    out: &mut impl Write,
    progress: &mut impl Write,
) -> Result<LearnReport, PolicyCliError> {
    let mut text = String::new();
    for policy in policies {
        let yaml = serde_yaml::to_string(policy).map_err(|e| PolicyCliError::Write {
            what: "a policy".into(),
            source: std::io::Error::other(e),
        })?;
        match out_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(write_err(dir.display().to_string()))?;
                let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
                let path = dir.join(format!("{ns}.{}.yaml", policy.metadata.name));
                std::fs::write(&path, yaml).map_err(write_err(path.display().to_string()))?;
            }
            None => {
                text.push_str("---\n");
                text.push_str(&yaml);
            }
        }
    }
    out.write_all(text.as_bytes()).map_err(write_err("the policies"))?;
    let _ = writeln!(
        progress,
        "learn: {} allowed requests at enforcement points; {} policies with {} rules",
        report.allowed_requests, report.policies, report.rules
    );
    for item in &report.assumed_selectors {
        let _ = writeln!(progress, "learn: assumed selector {item}");
    }
    for item in &report.left_out {
        let _ = writeln!(progress, "learn: left out {item}");
    }
    Ok(report)
}

pub struct DriftOptions {
    pub workloads: Option<PathBuf>,
    pub root_namespace: String,
    pub json: bool,
    pub workers: usize,
}

/// Runs the policies in force over the log files and reports what is unused or missing.
pub fn drift(
    opts: &DriftOptions,
    policies: &[AuthorizationPolicy],
    files: &[String],
    out: &mut impl Write,
    progress: &mut impl Write,
) -> Result<DriftReport, PolicyCliError> {
    let set = PolicySet::compile(policies, &opts.root_namespace, inventory(opts.workloads.as_deref())?)?;
    let mut report = DriftReport::new(&set);
    let (lines, rejected) = for_each_batch(files, opts.workers, progress, |batch| report.add(&set, batch))?;
    report.finish();
    let _ = writeln!(
        progress,
        "drift: {lines} lines ({rejected} rejected), {} policies",
        policies.len()
    );
    write_report(&report, opts.json, out, write_drift_text)?;
    Ok(report)
}

fn write_drift_text(r: &DriftReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "requests evaluated where policies are enforced: {}", r.requests)?;
    let unused: Vec<_> = r.unused_allow_rules().collect();
    writeln!(
        out,
        "
ALLOW rules no allowed request used (over-broad or dead): {}",
        unused.len()
    )?;
    for u in unused {
        writeln!(
            out,
            "  {} rules[{}]{}",
            u.policy,
            u.rule,
            if u.dry_run { " (dry-run)" } else { "" }
        )?;
    }
    let idle: Vec<_> = r.idle_deny_rules().collect();
    writeln!(
        out,
        "
DENY rules that never matched: {}",
        idle.len()
    )?;
    for u in idle {
        writeln!(
            out,
            "  {} rules[{}]{}",
            u.policy,
            u.rule,
            if u.dry_run { " (dry-run)" } else { "" }
        )?;
    }
    let unknown: Vec<_> = r.rules.iter().filter(|u| u.matched == 0 && u.unknown > 0).collect();
    if !unknown.is_empty() {
        writeln!(
            out,
            "
Rules whose use the records cannot settle: {}",
            unknown.len()
        )?;
        for u in unknown {
            writeln!(out, "  {} rules[{}]: {} requests unknown", u.policy, u.rule, u.unknown)?;
        }
    }
    writeln!(
        out,
        "
Destinations in traffic that no ALLOW policy applies to: {}",
        r.destinations_without_allow.len()
    )?;
    for (d, n) in &r.destinations_without_allow {
        writeln!(out, "  {d}: {n} requests")?;
    }
    writeln!(
        out,
        "
Inventory workloads no ALLOW policy selects: {}",
        r.workloads_without_allow.len()
    )?;
    for w in &r.workloads_without_allow {
        writeln!(out, "  {w}")?;
    }
    writeln!(
        out,
        "
Rule use:"
    )?;
    for u in &r.rules {
        writeln!(
            out,
            "  {} {} rules[{}]: {} matched, {} unknown, last {}",
            u.action,
            u.policy,
            u.rule,
            u.matched,
            u.unknown,
            u.last_matched.as_deref().unwrap_or("never")
        )?;
    }
    Ok(())
}
