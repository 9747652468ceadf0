//! Real OTLP clients: the Python OpenTelemetry SDK exporters (gRPC and HTTP/protobuf) send
//! log records whose bodies are mesh log lines, and Istio metric points, to `verity run`.
//!
//! Needs `VERITY_PYTHON` (the venv made by `scripts/python-env.sh`); the test command sets it.
//! Without it the test is skipped, unless `VERITY_E2E_REQUIRE=1` makes that a failure.

use std::process::Command;
use std::time::Duration;

use verity_e2e::{Verity, eventually, repo_root};

fn python() -> Option<String> {
    match std::env::var("VERITY_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var("VERITY_E2E_REQUIRE").as_deref() != Ok("1"),
                "VERITY_PYTHON is not set but VERITY_E2E_REQUIRE=1: run scripts/python-env.sh"
            );
            eprintln!("SKIP: VERITY_PYTHON is not set (run scripts/python-env.sh)");
            None
        }
    }
}

fn send(python: &str, args: &[&str]) {
    let out = Command::new(python)
        .arg(repo_root().join("tests/python/send_otlp.py"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "send_otlp.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_sdk_exporters_over_grpc_and_http() {
    let Some(py) = python() else { return };
    let mut v = Verity::start(&[]);
    let logs = repo_root().join("tests/fixtures/mesh.log");
    let logs = logs.to_str().expect("path");
    let grpc = format!("http://{}", v.grpc);
    let http = format!("http://{}", v.http);
    send(
        &py,
        &[
            "--protocol",
            "grpc",
            "--endpoint",
            &grpc,
            "--logs",
            logs,
            "--attr",
            "tls_version=TLSv1.3",
            "--resource",
            "k8s.cluster.name=east",
        ],
    );
    send(
        &py,
        &[
            "--protocol",
            "http",
            "--endpoint",
            &http,
            "--logs",
            logs,
            "--attr",
            "source_principal=spiffe://cluster.local/ns/shop/sa/cart",
        ],
    );
    send(&py, &["--protocol", "grpc", "--endpoint", &grpc, "--metrics"]);
    send(&py, &["--protocol", "http", "--endpoint", &http, "--metrics"]);

    assert!(
        eventually(Duration::from_secs(10), || v.archive_rows("events.jsonl").len() == 6),
        "{}",
        v.stderr()
    );
    let events = v.archive_rows("events.jsonl");
    let by_source = |s: &str| events.iter().filter(|e| e["source"] == s).cloned().collect::<Vec<_>>();
    let grpc_rows = by_source("otlp_grpc");
    let http_rows = by_source("otlp_http");
    assert_eq!((grpc_rows.len(), http_rows.len()), (3, 3));
    for rows in [&grpc_rows, &http_rows] {
        let rbac = rows
            .iter()
            .find(|e| e["decision"] == "deny_rbac")
            .expect("the RBAC denial");
        assert_eq!(rbac["decision_policy"], "pay/deny-cart");
        assert_eq!(rbac["status"], 403);
        let zt = rows
            .iter()
            .find(|e| e["format"] == "ztunnel_text")
            .expect("the ztunnel line");
        assert_eq!(zt["reporter"], "ztunnel");
    }
    // No identity on the ztunnel line means plaintext, unless an attribute supplied one.
    let zt = |rows: &[serde_json::Value]| {
        rows.iter()
            .find(|e| e["format"] == "ztunnel_text")
            .cloned()
            .expect("ztunnel")
    };
    assert_eq!(zt(&grpc_rows)["mtls"], false);
    assert_eq!(zt(&http_rows)["mtls"], true);
    assert!(
        grpc_rows
            .iter()
            .all(|e| e["cluster"] == "east" && e["tls_version"] == "TLSv1.3")
    );
    let allowed = http_rows
        .iter()
        .find(|e| e["request_id"] == "e2e-1")
        .expect("allowed request");
    assert_eq!(allowed["source_principal"], "spiffe://cluster.local/ns/shop/sa/cart");
    assert_eq!(allowed["mtls"], true);

    // The line that is not an access log was rejected once per protocol.
    let dead = v.dead_letters();
    assert_eq!(dead.len(), 2, "{dead:?}");
    // With attributes, the dead letter keeps the whole record (as OTLP JSON), body included.
    assert!(dead.iter().all(|d| {
        d["reason"] == "unrecognized_format"
            && d["record"]
                .as_str()
                .is_some_and(|r| r.contains("this line is not an access log"))
    }));

    assert!(eventually(Duration::from_secs(10), || v
        .archive_rows("metrics.jsonl")
        .len()
        == 6));
    let metrics = v.archive_rows("metrics.jsonl");
    let requests: Vec<_> = metrics.iter().filter(|m| m["name"] == "istio_requests_total").collect();
    assert_eq!(requests.len(), 2);
    for m in &requests {
        assert_eq!(m["kind"], "sum");
        assert_eq!(m["value"].as_f64(), Some(7.0));
        assert_eq!(m["reporter"], "destination");
        assert_eq!(m["source_principal"], "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(m["connection_security_policy"], "mutual_tls");
    }
    let hist = metrics
        .iter()
        .find(|m| m["name"] == "istio_request_duration_milliseconds")
        .expect("histogram");
    assert_eq!(hist["kind"], "histogram");
    assert_eq!(hist["count"], 3);
    assert_eq!(hist["value"].as_f64(), Some(55.0));
    assert!(metrics.iter().any(|m| m["connection_security_policy"] == "none"));

    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success());
}
