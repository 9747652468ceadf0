//! `verity rules check` and `verity rules test`: the rule author's tools (with `verity replay`,
//! in `replay.rs`). They live here because rule test cases are real log lines, which only the
//! collector's normalizers can read.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use verity_model::event::IngestSource;
use verity_model::{Alert, EventBatchBuilder};
use verity_rules::rule::{ExpectedAlert, RuleSource, TestCase, load_paths};
use verity_rules::{Compiler, Engine, EngineSettings, RevocationList};

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
