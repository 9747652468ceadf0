//! The fuzzers' regression corpus, replayed on stable as part of `cargo test`.
//!
//! Every file under `fuzz/regressions/<target>/` (a crash a fuzzer once found, a representative
//! seed, or a hand-made hostile input) is run through the very function its fuzz target runs:
//! the bodies live in `fuzz/targets.rs`, included both here and by each `fuzz/fuzz_targets/*.rs`,
//! so there is one copy of each. A body panics on a bug (including a panic that the normalizers'
//! own boundary turned into an `internal_error` rejection); each input runs behind
//! `catch_unwind`, so a failure names every file that failed and why. See `fuzz/README.md`.

use std::path::{Path, PathBuf};

mod targets {
    include!("../../fuzz/targets.rs");
}

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

/// The inputs of one target, sorted; hidden files (`.gitkeep`) are not inputs.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

fn replay(target: &str) {
    let body = targets::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target named {target} in fuzz/targets.rs"));
    let dir = regressions().join(target);
    let files = inputs(&dir);
    assert!(!files.is_empty(), "no regression inputs in {}", dir.display());
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if let Err(payload) = std::panic::catch_unwind(|| body(&data)) {
            failures.push(format!("  {}: {}", path.display(), panic_message(payload.as_ref())));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} regression inputs of fuzz target {target} failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn access_line() {
    replay("access_line");
}

#[test]
fn otlp_logs_proto() {
    replay("otlp_logs_proto");
}

#[test]
fn otlp_logs_json() {
    replay("otlp_logs_json");
}

#[test]
fn otlp_metrics() {
    replay("otlp_metrics");
}

#[test]
fn kafka_message() {
    replay("kafka_message");
}

#[test]
fn rule_yaml() {
    replay("rule_yaml");
}

#[test]
fn config_yaml() {
    replay("config_yaml");
}

#[test]
fn spiffe_cert() {
    replay("spiffe_cert");
}

#[test]
fn policy_yaml() {
    replay("policy_yaml");
}

#[test]
fn inventory_yaml() {
    replay("inventory_yaml");
}

#[test]
fn repartition_rows() {
    replay("repartition_rows");
}

#[test]
fn state_value() {
    replay("state_value");
}

/// A directory named after no target (a typo) would silently never run, and a target without
/// a test above would never be replayed.
#[test]
fn every_regression_directory_is_a_target_with_a_test() {
    let tested = [
        "access_line",
        "otlp_logs_proto",
        "otlp_logs_json",
        "otlp_metrics",
        "kafka_message",
        "rule_yaml",
        "config_yaml",
        "spiffe_cert",
        "policy_yaml",
        "inventory_yaml",
        "repartition_rows",
        "state_value",
    ];
    let names: Vec<&str> = targets::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, tested, "fuzz/targets.rs TARGETS and the tests above differ");
    let dirs = std::fs::read_dir(regressions()).expect("fuzz/regressions");
    for entry in dirs {
        let path = entry.expect("directory entry").path();
        if !path.is_dir() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        assert!(
            names.contains(&name.as_str()),
            "fuzz/regressions/{name} names no fuzz target (known: {names:?})"
        );
    }
}
