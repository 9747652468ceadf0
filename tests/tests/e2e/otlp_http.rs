//! OTLP/HTTP with curl as the client: JSON and protobuf, gzip, partial success.

use std::process::Command;
use std::time::Duration;

use prost::Message;
use verity_e2e::{Verity, eventually, gzip, http_request, otlp, repo_root, shared_reference};

/// Posts a file with curl; returns (HTTP status, body).
fn curl_post(url: &str, content_type: &str, file: &std::path::Path, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-H"])
        .arg(format!("Content-Type: {content_type}"))
        .args(extra)
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("code"), body.to_string())
}

#[test]
fn curl_posts_otlp_json_logs_with_partial_success() {
    let v = Verity::start(&[]);
    let fixture = repo_root().join("tests/fixtures/otlp-logs.json");
    let (code, body) = curl_post(&v.otlp_http_url("/v1/logs"), "application/json", &fixture, &[]);
    assert_eq!(code, 200, "{body}");
    let resp: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    let partial = &resp["partialSuccess"];
    let rejected = &partial["rejectedLogRecords"];
    let rejected = rejected
        .as_i64()
        .or_else(|| rejected.as_str().and_then(|s| s.parse().ok()));
    assert_eq!(rejected, Some(2), "{resp}");
    let msg = partial["errorMessage"].as_str().expect("message");
    assert!(msg.contains("rejected 2 of 3 log records"), "{msg}");
    assert!(
        msg.contains("unrecognized_format") && msg.contains("invalid_field"),
        "{msg}"
    );

    assert!(eventually(Duration::from_secs(10), || v
        .archive_rows("events.jsonl")
        .len()
        == 1));
    let ev = &v.archive_rows("events.jsonl")[0];
    assert_eq!(ev["source"], "otlp_http");
    assert_eq!(ev["decision"], "deny_rbac");
    assert_eq!(ev["decision_policy"], "none");
    assert_eq!(ev["source_principal"], "spiffe://cluster.local/ns/shop/sa/cart");
    assert_eq!(ev["mtls"], true);
    assert_eq!(ev["tls_version"], "TLSv1.3");
    assert_eq!(ev["destination_workload"], "pay-7d9");
    assert_eq!(ev["cluster"], "prod-eu");
    assert_eq!(ev["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(ev["attributes"], r#"{"retries":2}"#);

    let dead = v.dead_letters();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["reason"], "unrecognized_format");
    assert_eq!(dead[0]["record"], "not an access log at all");
    assert_eq!(dead[1]["reason"], "invalid_field");
    assert!(dead[1]["record"].as_str().expect("record").contains("99999"));
    assert_eq!(
        v.metric_value(r#"verity_records_rejected_total{source="otlp_http",reason="unrecognized_format"}"#),
        Some(1.0)
    );
    assert_eq!(
        v.metric_value(r#"verity_records_accepted_total{source="otlp_http",format="istio_text"}"#),
        Some(1.0)
    );
}

#[test]
fn curl_posts_the_upstream_otlp_examples() {
    let Some(shared) = shared_reference() else { return };
    let v = Verity::start(&[]);
    let (code, body) = curl_post(
        &v.otlp_http_url("/v1/logs"),
        "application/json",
        &shared.join("otlp/logs.json"),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let resp: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    // The example's body is prose, not an access log: reported, not fatal.
    assert!(
        resp["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap_or("")
            .contains("unrecognized_format"),
        "{resp}"
    );
    assert_eq!(v.dead_letters().len(), 1);

    let (code, body) = curl_post(
        &v.otlp_http_url("/v1/metrics"),
        "application/json",
        &shared.join("otlp/metrics.json"),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let resp: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(resp.get("partialSuccess").is_none_or(|p| p.is_null()), "{resp}");
    assert!(eventually(Duration::from_secs(10), || v
        .archive_rows("metrics.jsonl")
        .len()
        >= 4));
    let rows = v.archive_rows("metrics.jsonl");
    let kinds: std::collections::BTreeSet<&str> = rows.iter().filter_map(|r| r["kind"].as_str()).collect();
    for k in ["sum", "gauge", "histogram"] {
        assert!(kinds.contains(k), "no {k} row in {rows:?}");
    }
    let counter = rows.iter().find(|r| r["name"] == "my.counter").expect("my.counter");
    assert_eq!(counter["value"].as_f64(), Some(5.0));
    assert_eq!(counter["monotonic"], true);
    assert!(
        counter["attributes"]
            .as_str()
            .expect("attrs")
            .contains("my.counter.attr")
    );
}

#[test]
fn protobuf_and_gzip_bodies() {
    let v = Verity::start(&[]);
    let req = otlp::logs_request(vec![otlp::record(
        r#"[2024-03-01T10:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "pb-1" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#,
        vec![],
    )]);
    let body = req.encode_to_vec();
    let r = http_request(
        v.http,
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/x-protobuf")],
        &body,
    )
    .expect("http");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    let resp = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse::decode(&r.body[..])
        .expect("protobuf answer");
    assert!(resp.partial_success.is_none());

    let r = http_request(
        v.http,
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/x-protobuf"), ("Content-Encoding", "gzip")],
        // Another record: the same one again would be recognised as a resend.
        &gzip(
            &otlp::logs_request(vec![otlp::record(
                r#"[2024-03-01T10:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "pb-2" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#,
                vec![],
            )])
            .encode_to_vec(),
        ),
    )
    .expect("http");
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(10), || v
        .archive_rows("events.jsonl")
        .len()
        == 2));
}
