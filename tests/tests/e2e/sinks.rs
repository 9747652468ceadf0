//! Alert delivery end to end: the real binary delivering to a real rsyslog, a real Kafka
//! broker, and test servers that follow the Splunk HEC, Elasticsearch `_bulk`, webhook and
//! Sentinel contracts; the durable spool across a SIEM outage and SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use verity_e2e::{Verity, eventually, read_jsonl, require};

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
    verity_e2e::post_log_lines(v.http, lines)
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

/// A rule whose title and group carry characters every syslog body format must escape.
fn tricky_rule_dir(dir: &Path) -> PathBuf {
    let rules = dir.join("tricky-rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    std::fs::write(
        rules.join("tricky.yaml"),
        "id: e2e-tricky\ntitle: 'Fault | path = \"q\" \\ ünï ]'\nseverity: high\ntags: [e2e]\nkind: detection\ndetection:\n  where: path LIKE '/fault/%'\n  group_by: [path]\n",
    )
    .expect("write rule");
    rules
}

#[test]
fn syslog_over_tcp_and_tls_to_a_real_rsyslog() {
    let Some(rsyslog) = require(verity_e2e::rsyslog::Rsyslog::start(), "rsyslogd") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("alerts.jsonl");
    let rules = format!("[{}]", tricky_rule_dir(dir.path()).display());
    let tcp = format!("127.0.0.1:{}", rsyslog.tcp_port());
    let tls = format!("127.0.0.1:{}", rsyslog.tls_port());
    let ca = rsyslog.ca_pem_path().to_str().expect("ca").to_string();
    let env: Vec<(&str, &str)> = vec![
        ("VERITY__RULES__BUILTIN_PACK", "false"),
        ("VERITY__RULES__DIRS", &rules),
        ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
        ("VERITY__SINKS__OUTPUTS__FILE__PATH", file.to_str().expect("path")),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TCP__TYPE", "syslog"),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TCP__ADDRESS", &tcp),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TCP__FORMAT", "cef"),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TCP__HOSTNAME", "verity-e2e"),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TLS__TYPE", "syslog"),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TLS__ADDRESS", &tls),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TLS__TRANSPORT", "tls"),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TLS__FORMAT", "leef"),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TLS__HOSTNAME", "verity-e2e"),
        ("VERITY__SINKS__OUTPUTS__SYSLOG_TLS__TLS__CA_FILE", &ca),
        (
            "VERITY__SINKS__OUTPUTS__SYSLOG_TLS__TLS__SERVER_NAME",
            rsyslog.server_name(),
        ),
    ];
    let mut v = Verity::start_in(dir, &env);
    let lines = vec![line(1, "?q=a|b=c"), line(2, "")];
    assert_eq!(post(&v, &lines), 200);
    let msgs = rsyslog.wait_for(4, Duration::from_secs(20));
    assert_eq!(msgs.len(), 4, "{msgs:?}\n{}\n{}", rsyslog.stderr(), v.stderr());
    let alerts = read_jsonl(&file);
    assert_eq!(alerts.len(), 2);
    for a in &alerts {
        let id = a["id"].as_str().expect("id");
        let mine: Vec<&serde_json::Value> = msgs
            .iter()
            .filter(|m| m["structured_data"].as_str().is_some_and(|sd| sd.contains(id)))
            .collect();
        assert_eq!(mine.len(), 2, "one message per listener for {id}: {msgs:?}");
        for m in mine {
            assert_eq!(m["hostname"], "verity-e2e");
            assert_eq!(m["app_name"], "verity");
            assert_eq!(m["msgid"], "alert.firing");
            assert_eq!(m["severity"], 3, "high maps to syslog severity err");
            let sd = m["structured_data"].as_str().expect("sd");
            assert!(sd.starts_with("[verity@32473 "), "{sd}");
            assert!(
                sd.contains(r#"rule="e2e-tricky""#) && sd.contains(r#"severity="high""#),
                "{sd}"
            );
            let msg = m["msg"].as_str().expect("msg");
            if m["listener"].as_str().is_some_and(|l| l.contains("tls")) {
                assert!(msg.starts_with("LEEF:2.0|Verity|Verity|"), "{msg}");
                assert!(msg.contains("ünï"), "UTF-8 passes through: {msg}");
            } else {
                // Pipes and backslashes escaped in the CEF header.
                assert!(msg.starts_with(r#"CEF:0|Verity|Verity|"#), "{msg}");
                assert!(msg.contains(r#"|e2e-tricky|Fault \| path = "q" \\ ünï ]|8|"#), "{msg}");
            }
        }
    }
    // The query string's '=' is escaped inside the CEF extension.
    let cef = msgs
        .iter()
        .filter_map(|m| m["msg"].as_str())
        .find(|m| m.starts_with("CEF") && m.contains("?q"))
        .expect("CEF message for the tricky path");
    assert!(cef.contains(r"?q\=a|b\=c"), "{cef}");
    assert_eq!(v.metric_value("verity_sink_sent_total{sink=\"syslog_tcp\"}"), Some(2.0));
    assert_eq!(v.metric_value("verity_sink_sent_total{sink=\"syslog_tls\"}"), Some(2.0));
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", v.stderr());
}

#[test]
fn validate_check_sinks_reports_each_output() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up = listener.local_addr().expect("addr");
    let down = verity_e2e::free_port();
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("verity.yaml");
    std::fs::write(
        &config,
        format!(
            "sinks:\n  spool_dir: {spool}\n  outputs:\n    stdout: {{type: stdout, enabled: false}}\n    file: {{type: file, path: {file}}}\n    siem_up: {{type: syslog, address: '{up}'}}\n    siem_down: {{type: syslog, address: '127.0.0.1:{down}', timeout_secs: 2}}\n",
            spool = dir.path().join("spool").display(),
            file = dir.path().join("alerts.jsonl").display(),
        ),
    )
    .expect("config");
    let out = verity_e2e::verity_command(dir.path())
        .args(["validate", "--check-sinks", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("output siem_up (syslog): ok: TCP connection to"),
        "{stdout}"
    );
    assert!(
        stdout.contains("output siem_down (syslog): FAILED: cannot connect"),
        "{stdout}"
    );
    assert!(stdout.contains("output file (file): ok"), "{stdout}");
    assert!(stdout.contains("1 of 3 checks failed"), "{stdout}");
    drop(listener);

    // A secret that is not there is a failure of that output, named clearly.
    std::fs::write(
        &config,
        "sinks:\n  outputs:\n    hec: {type: splunk_hec, endpoint: 'https://127.0.0.1:1', token: {env: VERITY_E2E_NO_SUCH_TOKEN}}\n",
    )
    .expect("config");
    let out = verity_e2e::verity_command(dir.path())
        .args(["validate", "--check-sinks", "--config"])
        .arg(&config)
        .env_remove("VERITY_E2E_NO_SUCH_TOKEN")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "output hec (splunk_hec): FAILED: token: environment variable VERITY_E2E_NO_SUCH_TOKEN is not set"
        ),
        "{stdout}"
    );
}

fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, value).expect("secret");
    format!("{{file: '{}'}}", p.display())
}

fn dead_letters(v: &Verity, output: &str) -> Vec<serde_json::Value> {
    read_jsonl(
        &v.dir
            .path()
            .join("verity-data/spool")
            .join(output)
            .join("dead-letter.jsonl"),
    )
}

fn post_batch(v: &Verity, range: std::ops::Range<usize>) {
    let lines: Vec<String> = range.map(|i| line(i, "")).collect();
    post_until_accepted(v, &lines);
}

#[test]
fn hec_outage_and_sigkill_lose_no_alert() {
    use verity_e2e::siem::hec::{HecServer, HecSettings};
    let server = HecServer::start(HecSettings::new("e2e-token").with_ack(Duration::from_millis(50)));
    let dir = tempfile::tempdir().expect("tmp");
    let token = secret_file(dir.path(), "hec-token", "e2e-token\n");
    let env = output_env(
        "hec",
        &[
            ("type", "splunk_hec"),
            ("endpoint", &server.url()),
            ("token", &token),
            ("ack", "{poll_interval_ms: 50, timeout_secs: 5}"),
            ("retry", "{initial_backoff_ms: 50, max_backoff_ms: 1000}"),
            ("batch", "{max_events: 500, max_wait_ms: 50}"),
        ],
    );
    let mut env = env;
    env.push(("VERITY__SINKS__OUTPUTS__FILE__ENABLED".into(), "false".into()));
    let mut v = start(dir, &env);
    const N: usize = 10_000;
    const PER: usize = 500;
    // Up, then busy for a while (503 code 9), then down.
    for r in 0..4 {
        post_batch(&v, r * PER..(r + 1) * PER);
    }
    server.set_busy(true);
    post_batch(&v, 4 * PER..5 * PER);
    std::thread::sleep(Duration::from_millis(800));
    server.set_busy(false);
    post_batch(&v, 5 * PER..6 * PER);
    server.set_down(true);
    for r in 6..13 {
        post_batch(&v, r * PER..(r + 1) * PER);
    }
    // Killed while the SIEM is down, restarted while it is still down.
    v.kill9();
    v.restart();
    for r in 13..N / PER {
        post_batch(&v, r * PER..(r + 1) * PER);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        v.metric_value("verity_sink_retries_total{sink=\"hec\"}")
            .is_some_and(|n| n > 0.0),
        "retrying while the SIEM is down"
    );
    server.set_down(false);
    let complete = eventually(Duration::from_secs(120), || server.distinct_ids().len() >= N);
    let distinct = server.distinct_ids().len();
    let total = server.ids().len();
    assert!(complete, "{distinct} of {N} alert ids arrived\n{}", v.stderr());
    assert_eq!(distinct, N);
    assert!(server.ids().iter().all(|id| id.starts_with("e2e-fault-path-")));
    println!(
        "HEC received {total} alerts for {N} distinct ids ({} duplicates)",
        server.duplicates()
    );
    assert!(server.responses_with_status(503) > 0, "the busy phase was exercised");
    assert!(server.ack_requests() > 0, "indexer acknowledgement was used");
    assert!(eventually(Duration::from_secs(10), || v
        .metric_value("verity_sink_spool_events{sink=\"hec\"}")
        == Some(0.0)));
    assert_eq!(v.metric_value("verity_alerts_dropped_total"), Some(0.0));
    assert_eq!(
        v.metric_value("verity_sink_dead_lettered_total{sink=\"hec\"}"),
        Some(0.0)
    );
    assert!(dead_letters(&v, "hec").is_empty());
    let (status, _) = v.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", v.stderr());
}

#[test]
fn elasticsearch_bulk_item_errors_are_retried_or_dead_lettered() {
    use verity_e2e::siem::elastic::{ElasticServer, ElasticSettings, ItemFilter};
    let server = ElasticServer::start(ElasticSettings::open());
    server.reject_items_once(ItemFilter::every_nth(3), 429);
    server.reject_permanently("/fault/13?poison");
    let dir = tempfile::tempdir().expect("tmp");
    let mut env = output_env(
        "es",
        &[
            ("type", "elasticsearch"),
            ("endpoint", &server.url()),
            ("index", "verity-e2e-%Y.%m.%d"),
            ("retry", "{initial_backoff_ms: 50, max_backoff_ms: 500}"),
            ("batch", "{max_events: 10, max_wait_ms: 50}"),
        ],
    );
    env.push(("VERITY__SINKS__OUTPUTS__FILE__ENABLED".into(), "false".into()));
    let mut v = start(dir, &env);
    let lines: Vec<String> = (0..40).map(|i| line(i, if i == 13 { "?poison" } else { "" })).collect();
    assert_eq!(post(&v, &lines), 200);
    assert!(
        eventually(Duration::from_secs(30), || server.distinct_ids().len() == 39
            && v.metric_value("verity_sink_dead_lettered_total{sink=\"es\"}") == Some(1.0)),
        "{} indexed\n{}",
        server.distinct_ids().len(),
        v.stderr()
    );
    assert_eq!(server.indices(), vec!["verity-e2e-2026.11.22".to_string()]);
    let docs = server.docs_in("verity-e2e-2026.11.22");
    assert_eq!(docs.len(), 39);
    let src = &docs[0];
    assert_eq!(src["event"]["kind"], "alert");
    assert_eq!(src["rule"]["id"], "e2e-fault-path");
    assert!(
        src["@timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-11-22T10:00:"))
    );
    let dead = dead_letters(&v, "es");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("document_parsing_exception")),
        "{dead:?}"
    );
    assert!(
        dead[0]["alert"]["evidence"][0]["raw"]
            .as_str()
            .is_some_and(|r| r.contains("?poison"))
    );
    assert!(
        v.metric_value("verity_sink_retries_total{sink=\"es\"}")
            .is_some_and(|n| n > 0.0)
    );
    assert_eq!(v.metric_value("verity_alerts_dropped_total"), Some(0.0));
    // Sending the same alerts again (as after a crash) indexes nothing twice: 409 is success.
    assert_eq!(post(&v, &lines[..5]), 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.ids().len(), 39);
    let (status, _) = v.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", v.stderr());
}

#[test]
fn webhook_sentinel_ocsf_and_routing() {
    use verity_e2e::siem::sentinel::{SentinelServer, SentinelSettings};
    use verity_e2e::siem::webhook::{WebhookServer, WebhookSettings};
    let hook = WebhookServer::start(WebhookSettings::signed(b"hook-secret".to_vec()));
    let azure = SentinelServer::start(SentinelSettings::new(
        "azure-token",
        "dcr-0123456789abcdef",
        "Custom-VerityAlerts_CL",
    ));
    let dir = tempfile::tempdir().expect("tmp");
    let hook_secret = secret_file(dir.path(), "hook", "hook-secret");
    let wrong_secret = secret_file(dir.path(), "wrong", "not-the-secret");
    let azure_token = secret_file(dir.path(), "azure", "azure-token");
    let ocsf = dir.path().join("findings.jsonl");
    let critical = dir.path().join("critical.jsonl");
    let hook_url = hook.url_for("/hook");
    let mut env = output_env(
        "hook",
        &[("type", "webhook"), ("url", &hook_url), ("secret", &hook_secret)],
    );
    env.extend(output_env(
        "badhook",
        &[("type", "webhook"), ("url", &hook_url), ("secret", &wrong_secret)],
    ));
    env.extend(output_env(
        "sentinel",
        &[
            ("type", "sentinel"),
            ("endpoint", &azure.endpoint()),
            ("dcr_id", "dcr-0123456789abcdef"),
            ("stream", "Custom-VerityAlerts_CL"),
            ("token", &azure_token),
        ],
    ));
    env.extend(output_env(
        "ocsf",
        &[("type", "ocsf"), ("path", ocsf.to_str().expect("path"))],
    ));
    env.extend(output_env(
        "critical",
        &[
            ("type", "file"),
            ("path", critical.to_str().expect("path")),
            ("routing", "{min_severity: critical}"),
        ],
    ));
    let mut v = start(dir, &env);
    let lines: Vec<String> = (0..5).map(|i| line(i, "")).collect();
    assert_eq!(post(&v, &lines), 200);
    assert!(eventually(Duration::from_secs(20), || hook.distinct_ids().len() == 5
        && azure.distinct_ids().len() == 5
        && read_jsonl(&ocsf).len() == 5
        && v.metric_value("verity_sink_dead_lettered_total{sink=\"badhook\"}")
            == Some(5.0)));
    let expected = hook.distinct_ids();
    assert_eq!(azure.distinct_ids(), expected);
    let findings = read_jsonl(&ocsf);
    for f in &findings {
        assert_eq!(f["class_uid"], 2004);
        assert_eq!(f["type_uid"], 200401);
        assert!(expected.contains(f["finding_info"]["uid"].as_str().expect("uid")));
        assert!(
            f["time"].as_i64().is_some_and(|t| t > 1_700_000_000_000),
            "time in ms: {f}"
        );
    }
    let row = &azure.rows()[0];
    assert_eq!(row["RuleId"], "e2e-fault-path");
    assert!(row["TimeGenerated"].as_str().is_some());
    // The wrong key is refused by the receiver (401): permanent, dead-lettered with the answer.
    assert!(hook.rejected_signatures() >= 1);
    let dead = dead_letters(&v, "badhook");
    assert_eq!(dead.len(), 5);
    assert!(dead[0]["error"].as_str().is_some_and(|e| e.contains("401")), "{dead:?}");
    // Routing: nothing here is critical.
    assert!(read_jsonl(&critical).is_empty());
    assert_eq!(
        v.metric_value("verity_sink_spooled_total{sink=\"critical\"}"),
        Some(0.0)
    );
    assert_eq!(v.metric_value("verity_alerts_dropped_total"), Some(0.0));
    // Secrets never show in the effective configuration or the metrics.
    let text = v.metrics_text() + &v.stderr();
    assert!(!text.contains("hook-secret") && !text.contains("azure-token"));
    let (status, _) = v.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", v.stderr());
}
