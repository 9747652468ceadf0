//! `verity rules check`, `verity rules test` and `verity replay`: the rule author's tools.
//! They live in the collector because rule test cases are real log lines, which only the
//! collector's normalizers can read.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use verity_model::event::IngestSource;
use verity_model::{Alert, EventBatchBuilder};
use verity_rules::rule::{ExpectedAlert, RuleSource, TestCase, load_paths};
use verity_rules::{Compiler, Engine, EngineSettings, RevocationList};

use verity_collector::bounded_lines;
use verity_collector::normalize::limits::RecordLimits;
use verity_collector::normalize::{self, Ctx, FormatHint};

/// Loads and compiles rule files; prints every error. Returns the number of errors.
pub fn check(paths: &[PathBuf], out: &mut impl Write) -> std::io::Result<usize> {
    let sources = match load_paths(paths) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                writeln!(out, "error: {e}")?;
            }
            return Ok(errors.len());
        }
    };
    let n = sources.len();
    match Compiler::new(RevocationList::default()).compile_all(sources) {
        Ok(_) => {
            writeln!(out, "{n} rules ok")?;
            Ok(0)
        }
        Err(errors) => {
            for e in &errors {
                writeln!(out, "error: {e}")?;
            }
            Ok(errors.len())
        }
    }
}

/// The outcome of one rule test case.
pub struct CaseResult {
    pub rule_id: String,
    pub case: String,
    /// Empty when the case passed.
    pub problems: Vec<String>,
}

/// Runs every test case of every rule under `paths`.
pub fn run_tests(sources: &[RuleSource]) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for src in sources {
        for case in &src.rule.tests {
            let problems = run_case(src, case);
            results.push(CaseResult {
                rule_id: src.rule.id.clone(),
                case: case.name.clone(),
                problems,
            });
        }
        if src.rule.tests.is_empty() {
            results.push(CaseResult {
                rule_id: src.rule.id.clone(),
                case: "(no test cases)".into(),
                problems: vec!["every rule needs test cases: add `tests:` or a sibling .tests.yaml".into()],
            });
        }
    }
    results
}

/// Normalizes lines from `sender` into one event batch, binding them to the sender as the
/// embedded default `intake.trust` says; rejected lines are problems.
fn lines_to_batch(
    lines: &[String],
    sender: &verity_collector::ingest::Sender,
    class: Option<crate::config::SenderClass>,
    problems: &mut Vec<String>,
) -> Option<arrow::array::RecordBatch> {
    let ctx = Ctx {
        observed_time_ns: 0,
        ..Ctx::now(IngestSource::File)
    };
    let mut b = EventBatchBuilder::with_capacity(lines.len());
    for l in lines {
        match normalize::normalize_line(l, FormatHint::Auto, &ctx) {
            Ok(mut ev) => {
                verity_collector::ingest::stamp_sender(&mut ev, sender, class);
                b.append(&ev);
            }
            Err(r) => problems.push(format!("a line does not normalize: {r}: {l}")),
        }
    }
    b.finish().ok()
}

fn run_case(src: &RuleSource, case: &TestCase) -> Vec<String> {
    let mut problems = Vec::new();
    let revocations = RevocationList::new(case.revoked.iter().cloned());
    let rule = match Compiler::new(revocations).compile(src.clone()) {
        Ok(r) => r,
        Err(e) => return vec![e.to_string()],
    };
    // One batch per line: the lines stream in, in order, as they would in production.
    let mut engine = Engine::new(vec![rule], EngineSettings::default());
    let mut alerts = Vec::new();
    let sender = verity_collector::ingest::Sender::configured(case.sender.as_deref());
    let class = case.sender.as_deref().and_then(|id| {
        crate::config::load(None, std::iter::empty())
            .ok()
            .and_then(|c| c.intake.class_of(id))
    });
    for line in &case.lines {
        if let Some(batch) = lines_to_batch(std::slice::from_ref(line), &sender, class, &mut problems) {
            alerts.extend(engine.process(&batch));
        }
    }
    alerts.extend(engine.flush());
    if engine.stats().evaluation_errors > 0 {
        problems.push(format!("{} rule evaluations failed", engine.stats().evaluation_errors));
    }
    problems.extend(compare(&case.expect, &alerts));
    problems
}

fn matches(e: &ExpectedAlert, a: &Alert) -> bool {
    e.status == a.status
        && e.group.iter().all(|(k, v)| a.group.get(k) == Some(v))
        && e.count.is_none_or(|c| c == a.count)
        && e.entity
            .as_ref()
            .is_none_or(|want| a.entity.as_ref().is_some_and(|got| &got.value == want))
        && e.respond.is_none_or(|want| a.respond.is_some() == want)
}

fn show_expected(e: &ExpectedAlert) -> String {
    let mut s = format!("{} {}", e.status.as_str(), show_group(&e.group));
    if let Some(c) = e.count {
        s.push_str(&format!(" count={c}"));
    }
    if let Some(en) = &e.entity {
        s.push_str(&format!(" entity={en}"));
    }
    if let Some(r) = e.respond {
        s.push_str(&format!(" respond={r}"));
    }
    s
}

fn show_actual(a: &Alert) -> String {
    let mut s = format!("{} {} count={}", a.status.as_str(), show_group(&a.group), a.count);
    if let Some(en) = &a.entity {
        s.push_str(&format!(" entity={}", en.value));
    }
    s.push_str(&format!(" respond={}", a.respond.is_some()));
    s
}

fn show_group(g: &BTreeMap<String, Option<String>>) -> String {
    let inner: Vec<String> = g
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("null")))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// Every expected alert must match a distinct actual alert, and nothing else may fire.
fn compare(expected: &[ExpectedAlert], actual: &[Alert]) -> Vec<String> {
    let mut used = vec![false; actual.len()];
    let mut missing = Vec::new();
    for e in expected {
        match actual.iter().enumerate().position(|(i, a)| !used[i] && matches(e, a)) {
            Some(i) => used[i] = true,
            None => missing.push(e),
        }
    }
    let extra: Vec<&Alert> = actual.iter().zip(&used).filter(|(_, u)| !**u).map(|(a, _)| a).collect();
    if missing.is_empty() && extra.is_empty() {
        return Vec::new();
    }
    let mut diff = vec!["alerts differ (- expected, + actual):".to_string()];
    diff.extend(missing.iter().map(|e| format!("  - {}", show_expected(e))));
    diff.extend(extra.iter().map(|a| format!("  + {}", show_actual(a))));
    diff
}

/// `verity rules test`: prints failures with a diff and ends with `N passed, N failed`.
pub fn test(paths: &[PathBuf], out: &mut impl Write) -> std::io::Result<(usize, usize)> {
    let sources = match load_paths(paths) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                writeln!(out, "error: {e}")?;
            }
            writeln!(out, "0 passed, {} failed", errors.len())?;
            return Ok((0, errors.len()));
        }
    };
    let results = run_tests(&sources);
    let (mut passed, mut failed) = (0, 0);
    for r in &results {
        if r.problems.is_empty() {
            passed += 1;
            writeln!(out, "ok    {} / {}", r.rule_id, r.case)?;
        } else {
            failed += 1;
            writeln!(out, "FAIL  {} / {}", r.rule_id, r.case)?;
            for p in &r.problems {
                writeln!(out, "      {p}")?;
            }
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok((passed, failed))
}

pub struct ReplayOptions {
    pub rules: Vec<PathBuf>,
    pub builtin_pack: bool,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub revoked: Vec<String>,
    pub lateness_ns: i64,
    pub max_keys: usize,
}

/// Totals of a replay.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    pub lines: u64,
    pub events: u64,
    pub rejected: u64,
    pub alerts: u64,
}

/// Rejected lines reported one by one before replay only counts them (a large file of
/// another format must not flood the terminal).
const MAX_REPORTED_REJECTS: u64 = 100;

fn report_reject(progress: &mut impl Write, summary: &mut ReplaySummary, file: &str, line: u64, why: &str) {
    summary.rejected += 1;
    if summary.rejected <= MAX_REPORTED_REJECTS {
        let _ = writeln!(progress, "{file}:{line}: {why}");
    } else if summary.rejected == MAX_REPORTED_REJECTS + 1 {
        let _ = writeln!(progress, "replay: more rejected lines; only counting them from here");
    }
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{}", .0.join("\n"))]
    Rules(Vec<String>),
    #[error("cannot open {name}")]
    Open {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {name}")]
    Read {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build a batch")]
    Batch(#[source] arrow::error::ArrowError),
    #[error("cannot write alerts")]
    Write(#[source] std::io::Error),
}

/// Runs the rules over log files in event time and writes alerts as JSON lines.
pub fn replay(
    opts: &ReplayOptions,
    files: &[String],
    out: &mut impl Write,
    progress: &mut impl Write,
) -> Result<ReplaySummary, ReplayError> {
    let spec = verity_collector::pipeline::rules::RuleSetSpec {
        builtin_pack: opts.builtin_pack,
        dirs: opts.rules.clone(),
    };
    let revocations = RevocationList::new(opts.revoked.iter().cloned());
    let rules = spec.load(&revocations).map_err(ReplayError::Rules)?;
    let mut engine = Engine::new(
        rules,
        EngineSettings {
            lateness_ns: opts.lateness_ns,
            state_dir: None,
            max_keys: opts.max_keys,
            ..EngineSettings::default()
        },
    );
    let mut summary = ReplaySummary::default();
    let mut builder = EventBatchBuilder::with_capacity(8192);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let write_alerts =
        |alerts: Vec<Alert>, summary: &mut ReplaySummary, out: &mut dyn Write| -> Result<(), ReplayError> {
            for a in alerts {
                summary.alerts += 1;
                serde_json::to_writer(&mut *out, &a).map_err(|e| ReplayError::Write(e.into()))?;
                out.write_all(b"\n").map_err(ReplayError::Write)?;
            }
            Ok(())
        };
    let mut buf = Vec::new();
    for name in files {
        let reader: Box<dyn Read> = if name == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(name).map_err(|source| ReplayError::Open {
                name: name.clone(),
                source,
            })?)
        };
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let max = RecordLimits::default().max_record_bytes;
        while let Some(len) =
            bounded_lines::read_line(&mut reader, &mut buf, max.saturating_add(1)).map_err(|source| {
                ReplayError::Read {
                    name: name.clone(),
                    source,
                }
            })?
        {
            summary.lines += 1;
            let line_no = summary.lines;
            if len > max as u64 {
                let problem = format!("record_too_large: line is {len} bytes, more than {max}");
                report_reject(progress, &mut summary, name, line_no, &problem);
                continue;
            }
            let Ok(line) = std::str::from_utf8(&buf) else {
                report_reject(progress, &mut summary, name, line_no, "invalid_utf8: line is not UTF-8");
                continue;
            };
            if line.trim().is_empty() {
                continue;
            }
            let ctx = Ctx {
                observed_time_ns: 0,
                ..Ctx::now(IngestSource::File)
            };
            match normalize::normalize_line(line, FormatHint::Auto, &ctx) {
                Ok(ev) => {
                    if opts.since_ns.is_some_and(|s| ev.event_time_ns < s)
                        || opts.until_ns.is_some_and(|u| ev.event_time_ns >= u)
                    {
                        continue;
                    }
                    summary.events += 1;
                    builder.append(&ev);
                }
                Err(r) => report_reject(progress, &mut summary, name, line_no, &r.to_string()),
            }
            if builder.len() >= 8192 {
                let batch = builder.finish().map_err(ReplayError::Batch)?;
                write_alerts(engine.process(&batch), &mut summary, out)?;
            }
            if last_report.elapsed().as_secs() >= 2 {
                last_report = Instant::now();
                let _ = writeln!(
                    progress,
                    "replay: {} lines, {} events, {} alerts, {:.0} lines/s",
                    summary.lines,
                    summary.events,
                    summary.alerts,
                    summary.lines as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    if !builder.is_empty() {
        let batch = builder.finish().map_err(ReplayError::Batch)?;
        write_alerts(engine.process(&batch), &mut summary, out)?;
    }
    write_alerts(engine.flush(), &mut summary, out)?;
    out.flush().map_err(ReplayError::Write)?;
    let secs = started.elapsed().as_secs_f64();
    let _ = writeln!(
        progress,
        "replay: {} lines ({} rejected), {} events, {} alerts in {secs:.1} s ({:.0} lines/s)",
        summary.lines,
        summary.rejected,
        summary.events,
        summary.alerts,
        summary.lines as f64 / secs.max(1e-9)
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in pack's own test cases (the same run as `verity rules test rules/pack`).
    #[test]
    fn builtin_pack_cases_pass() {
        let sources = verity_rules::pack::sources().expect("pack parses");
        assert!(sources.len() >= 15, "the pack has {} rules", sources.len());
        let results = run_tests(&sources);
        let failures: Vec<String> = results
            .iter()
            .filter(|r| !r.problems.is_empty())
            .map(|r| format!("{} / {}:\n  {}", r.rule_id, r.case, r.problems.join("\n  ")))
            .collect();
        assert!(
            failures.is_empty(),
            "{} failing cases:\n{}",
            failures.len(),
            failures.join("\n")
        );
        for s in &sources {
            let cases = &s.rule.tests;
            assert!(
                cases.iter().any(|c| !c.expect.is_empty()),
                "{} has no positive case",
                s.rule.id
            );
            assert!(
                cases.iter().any(|c| c.expect.is_empty()),
                "{} has no negative case",
                s.rule.id
            );
        }
    }
}
