//! Data-driven normalizer tests.
//!
//! - `tests/cases/*.yaml`: our own fixture lines with the expected columns (or the expected
//!   rejection reason), one file per family of formats.
//! - `tests/conformance/samples.yaml`: expectations for the upstream sample lines, which are
//!   read from `../shared/reference/samples` beside the repository and skipped (with a
//!   message) where that directory is absent.

use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, NumberDataPoint, Sum, metric, number_data_point};
use serde::Deserialize;
use serde_json::Value as Json;
use verity_collector::normalize::{self, Ctx, FormatHint};
use verity_model::event::IngestSource;
use verity_model::time::parse_rfc3339_ns;
use verity_model::{EventBatchBuilder, MetricBatchBuilder};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    line: String,
    #[serde(default)]
    expect: Option<serde_yaml::Mapping>,
    #[serde(default)]
    reject: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleCase {
    file: String,
    line: usize,
    expect: serde_yaml::Mapping,
}

fn ctx() -> Ctx {
    Ctx {
        observed_time_ns: 1_800_000_000_000_000_000,
        ..Ctx::now(IngestSource::File)
    }
}

fn normalize_to_json(line: &str) -> Result<serde_json::Map<String, Json>, normalize::Rejection> {
    let ev = normalize::normalize_line(line, FormatHint::Auto, &ctx())?;
    let mut b = EventBatchBuilder::with_capacity(1);
    b.append(&ev);
    let batch = b.finish().expect("batch");
    let rows = verity_model::json::to_json_rows(&batch).expect("json");
    match rows.into_iter().next() {
        Some(Json::Object(m)) => Ok(m),
        other => panic!("unexpected row {other:?}"),
    }
}

/// Compares expected columns; returns a readable list of mismatches.
fn check(row: &serde_json::Map<String, Json>, expect: &serde_yaml::Mapping) -> Vec<String> {
    let schema = verity_model::event::schema();
    let mut problems = Vec::new();
    for (k, v) in expect {
        let key = k.as_str().expect("string key");
        assert!(
            schema.field_with_name(key).is_ok(),
            "expectation names unknown column {key}"
        );
        let want: Json = serde_json::to_value(v).expect("yaml to json");
        let got = row.get(key).cloned().unwrap_or(Json::Null);
        let same = match (&want, &got) {
            (Json::Number(a), Json::Number(b)) => a.as_f64() == b.as_f64(),
            (Json::String(a), Json::String(b)) if key.ends_with("_time") => {
                parse_rfc3339_ns(a).is_some() && parse_rfc3339_ns(a) == parse_rfc3339_ns(b)
            }
            _ => want == got,
        };
        if !same {
            problems.push(format!("  {key}: expected {want}, got {got}"));
        }
    }
    problems
}

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("cases dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn fixture_cases() {
    let mut failures = Vec::new();
    let mut count = 0;
    for file in case_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let cases: Vec<Case> = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in cases {
            count += 1;
            let label = format!(
                "{} / {}",
                file.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                case.name
            );
            match (normalize_to_json(&case.line), &case.expect, &case.reject) {
                (Ok(row), Some(expect), None) => {
                    let problems = check(&row, expect);
                    if !problems.is_empty() {
                        failures.push(format!("{label}:\n{}", problems.join("\n")));
                    }
                }
                (Err(r), None, Some(reason)) => {
                    if r.reason.as_str() != reason {
                        failures.push(format!("{label}: expected rejection {reason}, got {r}"));
                    }
                    assert!(!r.detail.is_empty(), "{label}: rejection without a detail");
                }
                (Ok(_), None, Some(reason)) => {
                    failures.push(format!("{label}: expected rejection {reason}, but it normalized"))
                }
                (Err(r), Some(_), None) => failures.push(format!("{label}: rejected: {r}")),
                _ => failures.push(format!("{label}: a case needs exactly one of expect or reject")),
            }
        }
    }
    assert!(count >= 25, "only {count} cases found");
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn shared_samples() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/samples");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: {} is absent; upstream sample conformance not checked",
            dir.display()
        );
        None
    }
}

#[test]
fn upstream_samples_conform() {
    let Some(dir) = shared_samples() else { return };
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/samples.yaml"))
        .expect("read");
    let cases: Vec<SampleCase> = serde_yaml::from_str(&text).expect("samples.yaml");
    let mut failures = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    for case in &cases {
        let content = std::fs::read_to_string(dir.join(&case.file)).expect("sample file");
        let line = content
            .lines()
            .filter(|l| !l.trim().is_empty())
            .nth(case.line - 1)
            .unwrap_or_else(|| panic!("{} has no line {}", case.file, case.line));
        covered.insert((case.file.clone(), case.line));
        match normalize_to_json(line) {
            Ok(row) => {
                let problems = check(&row, &case.expect);
                if !problems.is_empty() {
                    failures.push(format!("{}:{}:\n{}", case.file, case.line, problems.join("\n")));
                }
            }
            Err(r) => failures.push(format!("{}:{}: rejected: {r}", case.file, case.line)),
        }
    }
    // Every line of every log sample must have an expectation.
    for entry in std::fs::read_dir(&dir).expect("samples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "log") {
            let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_string();
            let lines = std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count();
            for n in 1..=lines {
                if !covered.contains(&(name.clone(), n)) {
                    failures.push(format!("{name}:{n}: no expectation in samples.yaml"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The Prometheus exposition sample, carried as an OTLP sum: Istio labels become columns.
#[test]
fn upstream_metric_sample_labels_become_columns() {
    let Some(dir) = shared_samples() else { return };
    let text = std::fs::read_to_string(dir.join("istio-metrics.prom")).expect("read");
    let line = text.lines().find(|l| l.starts_with("istio_")).expect("a sample line");
    let (name, rest) = line.split_once('{').expect("labels");
    let (labels, value) = rest.rsplit_once('}').expect("labels end");
    let mut attributes = Vec::new();
    let mut s = labels;
    while let Some((k, tail)) = s.split_once("=\"") {
        let end = tail.find('"').expect("closing quote");
        attributes.push(KeyValue {
            key: k.trim_start_matches(',').to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(tail[..end].to_string())),
            }),
            ..Default::default()
        });
        s = &tail[end + 1..];
    }
    let value: f64 = value.split_whitespace().next().expect("value").parse().expect("number");
    let metric = Metric {
        name: name.to_string(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                attributes,
                time_unix_nano: 1_700_000_000_000_000_000,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            }],
            aggregation_temporality: 2,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let (mut out, mut rejected) = (Vec::new(), Vec::new());
    normalize::otel_metric::normalize(
        &metric,
        &[],
        "file",
        0,
        &normalize::limits::RecordLimits::default(),
        &mut out,
        &mut rejected,
    );
    assert!(rejected.is_empty());
    let mut b = MetricBatchBuilder::default();
    b.append(&out[0]);
    let rows = verity_model::json::to_json_rows(&b.finish().expect("batch")).expect("json");
    let row = &rows[0];
    assert_eq!(row["name"], "istio_requests_total");
    assert_eq!(row["reporter"], "destination");
    assert_eq!(row["source_principal"], "spiffe://cluster.local/ns/default/sa/sleep");
    assert_eq!(row["destination_service"], "httpbin.default.svc.cluster.local");
    assert_eq!(row["connection_security_policy"], "mutual_tls");
    assert_eq!(row["kind"], "sum");
    assert_eq!(row["temporality"], "cumulative");
    assert_eq!(row["value"].as_f64(), Some(value));
}
