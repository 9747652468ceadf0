//! Alert delivery end to end: the real binary delivering to a real rsyslog, a real Kafka
//! broker, and test servers that follow the Splunk HEC, Elasticsearch `_bulk`, webhook and
//! Sentinel contracts; the durable spool across a SIEM outage and SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use verity_e2e::{Verity, eventually, http_request, read_jsonl, require};

/// A rule that raises one alert per request to `/fault/…`: alert ids differ by event time.
fn rule_dir(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    std::fs::write(
        rules.join("fault.yaml"),
        "id: e2e-fault-path\ntitle: Request to a fault path\nseverity: high\ntags: [e2e]\nkind: detection\ndetection:\n  where: path LIKE '/fault/%'\n",
    )
    .expect("write rule");
    rules
}

/// An Istio JSON access log line; `i` sets both the path and the event time (milliseconds).
fn line(i: usize, path_suffix: &str) -> String {
    let (s, ms) = (i / 1000, i % 1000);
    let (m, s) = (s / 60, s % 60);
    format!(
        r#"{{"start_time":"2026-11-22T10:{m:02}:{s:02}.{ms:03}Z","method":"GET","path":"/fault/{i}{path_suffix}","protocol":"HTTP/1.1","response_code":200,"upstream_cluster":"inbound|8080||","downstream_peer_uri_san":"spiffe://cluster.local/ns/shop/sa/cart","requested_server_name":"outbound_.8080_._.pay.pay.svc.cluster.local"}}"#
    )
}

/// Posts lines as one OTLP/HTTP JSON request; returns the HTTP status.
fn post(v: &Verity, lines: &[String]) -> u16 {
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::json!({"body": {"stringValue": l}}))
        .collect();
    let body = serde_json::json!({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}).to_string();
    http_request(
        v.http,
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .map(|r| r.status)
    .unwrap_or(0)
}

/// Posts until accepted (the spool may push back with 503 for a while).
fn post_until_accepted(v: &Verity, lines: &[String]) {
    for _ in 0..600 {
        match post(v, lines) {
            200 => return,
            503 | 0 => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("unexpected answer {other}"),
        }
    }
    panic!("lines were never accepted");
}

fn base_env(rules: &str) -> Vec<(&str, &str)> {
    vec![
        ("VERITY__RULES__BUILTIN_PACK", "false"),
        ("VERITY__RULES__DIRS", rules),
        ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
    ]
}

fn output_env(name: &str, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                format!("VERITY__SINKS__OUTPUTS__{}__{}", name.to_uppercase(), k.to_uppercase()),
                v.to_string(),
            )
        })
        .collect()
}

fn start(dir: tempfile::TempDir, env: &[(String, String)]) -> Verity {
    let rules = rule_dir(dir.path());
    let rules = format!("[{}]", rules.display());
    let mut all: Vec<(&str, &str)> = base_env(&rules);
    for (k, v) in env {
        all.push((k, v));
    }
    Verity::start_in(dir, &all)
}

fn alert_ids(path: &Path) -> BTreeSet<String> {
    read_jsonl(path)
        .iter()
        .filter_map(|a| a["id"].as_str().map(String::from))
        .collect()
}

#[test]
fn kafka_output_to_a_real_broker() {
    let Some(broker) = require(verity_e2e::kafka::Broker::start(), "Kafka broker") else {
        return;
    };
    broker.create_topic("verity-alerts", 2).expect("topic");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("alerts.jsonl");
    let mut env = output_env(
        "kafka",
        &[
            ("type", "kafka"),
            ("brokers", &broker.bootstrap()),
            ("topic", "verity-alerts"),
        ],
    );
    env.extend(output_env("file", &[("path", file.to_str().expect("path"))]));
    let mut v = start(dir, &env);
    let lines: Vec<String> = (0..50).map(|i| line(i, "")).collect();
    post_until_accepted(&v, &lines);
    assert!(eventually(Duration::from_secs(20), || alert_ids(&file).len() == 50));
    let expected = alert_ids(&file);

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "e2e-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["verity-alerts"]).expect("subscribe");
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < 50 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let payload: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("json");
            got.insert(key, payload["id"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{}",
        broker.log_text()
    );
    assert!(got.iter().all(|(k, id)| k == id), "message key is the alert id");
    assert_eq!(v.metric_value("verity_sink_sent_total{sink=\"kafka\"}"), Some(50.0));
    assert_eq!(v.metric_value("verity_alerts_dropped_total"), Some(0.0));
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", v.stderr());
}
