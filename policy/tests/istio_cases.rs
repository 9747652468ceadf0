//! Istio's documented authorization examples, written as data (`cases/*.yaml`): each case has
//! policies, a workload inventory and requests with the outcome the documentation states.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use verity_model::event::{Direction, Reporter};
use verity_model::{AccessEvent, EventBatchBuilder};
use verity_policy::object::{AuthorizationPolicy, parse_documents};
use verity_policy::{Inventory, PolicySet, Verdict};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    workloads: Vec<serde_yaml::Value>,
    #[serde(default)]
    services: Vec<serde_yaml::Value>,
    #[serde(default)]
    root_namespace: Option<String>,
    policies: Vec<serde_yaml::Value>,
    requests: Vec<Request>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    name: String,
    event: BTreeMap<String, serde_yaml::Value>,
    expect: String,
    /// The outcome with dry-run policies enforced, when it differs from `expect`.
    #[serde(default)]
    expect_dry_run: Option<String>,
}

fn event(fields: &BTreeMap<String, serde_yaml::Value>) -> AccessEvent<'static> {
    let mut e = AccessEvent {
        reporter: Reporter::Destination,
        direction: Direction::Inbound,
        raw: Cow::Borrowed(""),
        ..AccessEvent::default()
    };
    for (key, value) in fields {
        let text = || -> Option<Cow<'static, str>> {
            Some(Cow::Owned(match value {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                other => panic!("{key}: unsupported value {other:?}"),
            }))
        };
        let int = || value.as_i64().and_then(|v| i32::try_from(v).ok());
        match key.as_str() {
            "destination_namespace" => e.destination_namespace = text(),
            "destination_workload" => e.destination_workload = text(),
            "destination_service" => e.destination_service = text(),
            "destination_port" => e.destination_port = int(),
            "destination_ip" => e.destination_ip = text(),
            "destination_principal" => e.destination_principal = text(),
            "source_principal" => e.source_principal = text(),
            "source_namespace" => e.source_namespace = text(),
            "source_workload" => e.source_workload = text(),
            "source_ip" => e.source_ip = text(),
            "mtls" => e.mtls = value.as_bool(),
            "protocol" => e.protocol = text(),
            "method" => e.method = text(),
            "path" => e.path = text(),
            "authority" => e.authority = text(),
            "user_agent" => e.user_agent = text(),
            "x_forwarded_for" => e.x_forwarded_for = text(),
            "request_principal" => e.request_principal = text(),
            "requested_server_name" => e.requested_server_name = text(),
            "reporter" => {
                e.reporter = *Reporter::ALL
                    .iter()
                    .find(|r| Some(r.as_str()) == value.as_str())
                    .expect("a reporter")
            }
            "direction" => {
                e.direction = *Direction::ALL
                    .iter()
                    .find(|r| Some(r.as_str()) == value.as_str())
                    .expect("a direction")
            }
            other => panic!("unknown event column {other:?}"),
        }
    }
    e
}

fn verdict_name(v: Verdict) -> &'static str {
    v.as_str()
}

fn run_file(path: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).expect("readable case file");
    let file: File = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &file.cases {
        let mut policies: Vec<AuthorizationPolicy> = Vec::new();
        for p in &case.policies {
            let yaml = serde_yaml::to_string(p).expect("yaml");
            parse_documents(&yaml, path, &mut policies)
                .unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), case.name));
        }
        let inventory_yaml = serde_yaml::to_string(&serde_yaml::Mapping::from_iter([
            ("workloads".into(), serde_yaml::Value::Sequence(case.workloads.clone())),
            ("services".into(), serde_yaml::Value::Sequence(case.services.clone())),
        ]))
        .expect("yaml");
        let inventory =
            Inventory::parse(&inventory_yaml).unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), case.name));
        let root = case.root_namespace.as_deref().unwrap_or("istio-system");
        let set = PolicySet::compile(&policies, root, inventory)
            .unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), case.name));
        let mut builder = EventBatchBuilder::with_capacity(case.requests.len());
        for r in &case.requests {
            builder.append(&event(&r.event));
        }
        let batch = builder.finish().expect("batch");
        let verdicts = set.evaluate(&batch);
        for (i, r) in case.requests.iter().enumerate() {
            checked += 1;
            let got = verdict_name(verdicts.enforced[i]);
            if got != r.expect {
                failures.push(format!(
                    "{} / {} / {}: expected {}, got {} ({:?}){}",
                    path.display(),
                    case.name,
                    r.name,
                    r.expect,
                    got,
                    verdicts.enforced[i],
                    case.note.as_deref().map(|n| format!(" — {n}")).unwrap_or_default()
                ));
            }
            let expect_dry = r.expect_dry_run.as_deref().unwrap_or(&r.expect);
            let got_dry = verdict_name(verdicts.with_dry_run[i]);
            if got_dry != expect_dry {
                failures.push(format!(
                    "{} / {} / {}: with dry-run policies enforced, expected {expect_dry}, got {got_dry}",
                    path.display(),
                    case.name,
                    r.name
                ));
            }
        }
    }
    (checked, failures)
}

#[test]
fn documented_examples_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("cases directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no case files in {}", dir.display());
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        let (n, f) = run_file(file);
        checked += n;
        failures.extend(f);
    }
    assert!(checked >= 40, "only {checked} requests checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} requests disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
