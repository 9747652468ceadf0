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
    send_with(python, args, &[]);
}

/// Runs the sender with extra environment (the SDK reads TLS files and headers from
/// `OTEL_EXPORTER_OTLP_*`) and returns how it ended.
fn run_sender(python: &str, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(python);
    cmd.arg(repo_root().join("tests/python/send_otlp.py")).args(args);
    // requests lets these override the exporter's own CA file (OTEL_EXPORTER_OTLP_CERTIFICATE).
    cmd.env_remove("REQUESTS_CA_BUNDLE").env_remove("CURL_CA_BUNDLE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("python runs")
}

/// Like [`run_sender`], and the export must succeed.
fn send_with(python: &str, args: &[&str], env: &[(&str, String)]) {
    let out = run_sender(python, args, env);
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

/// The SDK exporters over TLS: with a client certificate whose SPIFFE ID becomes the sender
/// (gRPC and HTTP), and with a bearer token whose name does; without either, refused.
#[test]
fn python_sdk_exporters_authenticate_with_certificates_and_tokens() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let mesh = verity_e2e::mesh_pki::MeshPki::new("mesh root");
    let ca = mesh.write_ca(dir.path(), "root");
    let (cert, key) = mesh.server().write(dir.path(), "verity");
    let sidecar = "spiffe://cluster.local/ns/istio-system/sa/otel-collector";
    let (client_cert, client_key) = mesh.workload(sidecar).write(dir.path(), "client");
    let token = dir.path().join("token");
    std::fs::write(&token, "python-sdk-token").expect("token");
    let s = |p: &std::path::Path| p.display().to_string();
    let tokens = format!(r#"[{{"name": "python-sdk", "secret": {{"file": "{}"}}}}]"#, s(&token));
    let mut env: Vec<(String, String)> = vec![("VERITY__OTLP__TOKENS".into(), tokens)];
    for listener in ["GRPC", "HTTP"] {
        let k = |key: &str| format!("VERITY__OTLP__{listener}__TLS__{key}");
        env.push((k("CERT_FILE"), s(&cert)));
        env.push((k("KEY_FILE"), s(&key)));
        env.push((k("CLIENT_CA_FILE"), s(&ca)));
        // Certificates are asked for; token senders present none.
        env.push((k("CLIENT_AUTH"), "optional".into()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let v = Verity::start(&env);
    let logs = repo_root().join("tests/fixtures/mesh.log");
    let logs = logs.to_str().expect("path");
    let grpc = format!("https://{}", v.grpc);
    let http = format!("https://{}", v.http);
    let mtls = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", s(&ca)),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", s(&client_cert)),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", s(&client_key)),
    ];
    send_with(&py, &["--protocol", "grpc", "--endpoint", &grpc, "--logs", logs], &mtls);
    send_with(&py, &["--protocol", "http", "--endpoint", &http, "--logs", logs], &mtls);
    let bearer = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", s(&ca)),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20python-sdk-token".to_string(),
        ),
    ];
    send_with(
        &py,
        &["--protocol", "http", "--endpoint", &http, "--logs", logs],
        &bearer,
    );
    send_with(
        &py,
        &["--protocol", "grpc", "--endpoint", &grpc, "--logs", logs],
        &bearer,
    );

    // Neither a certificate nor a token: the exporters report failure.
    let out = run_sender(
        &py,
        &[
            "--protocol",
            "http",
            "--endpoint",
            &http,
            "--logs",
            logs,
            "--timeout",
            "3",
        ],
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", s(&ca))],
    );
    assert!(!out.status.success(), "an unauthenticated SDK export succeeded");

    assert!(
        eventually(Duration::from_secs(10), || v.archive_rows("events.jsonl").len() == 12),
        "{}",
        v.stderr()
    );
    let events = v.archive_rows("events.jsonl");
    let count = |source: &str, sender: &str| {
        events
            .iter()
            .filter(|e| e["source"] == source && e["sender"] == sender && e["sender_verified"] == true)
            .count()
    };
    assert_eq!(count("otlp_grpc", sidecar), 3, "{events:?}");
    assert_eq!(count("otlp_http", sidecar), 3);
    assert_eq!(count("otlp_http", "python-sdk"), 3);
    assert_eq!(count("otlp_grpc", "python-sdk"), 3);
    assert_eq!(
        v.metric_value(r#"verity_intake_rejected_senders_total{listener="otlp_http",reason="no_identity"}"#),
        Some(1.0)
    );
}
