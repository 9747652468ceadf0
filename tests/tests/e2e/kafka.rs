//! The Kafka source against a real Kafka-protocol broker: OTLP protobuf, OTLP/JSON and raw
//! lines in, alerts out; at-least-once across SIGKILL; two instances sharing a group; poison
//! messages dead-lettered without stalling their partition; records read ahead from a revoked
//! partition evaluated once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use verity_e2e::kafka::Broker;
use verity_e2e::{Verity, eventually, otlp, read_jsonl_lenient, require};

fn rule_dir(dir: &Path, windowed: bool) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    let body = if windowed {
        "id: e2e-per-principal\ntitle: Requests per principal\nseverity: low\nkind: detection\ndetection:\n  where: path LIKE '/fault/%'\n  group_by: [source_principal]\n  window: {type: tumbling, size: 10s}\n  having: count(*) >= 1\n"
    } else {
        "id: e2e-fault-path\ntitle: Request to a fault path\nseverity: high\nkind: detection\ndetection:\n  where: path LIKE '/fault/%'\n"
    };
    std::fs::write(rules.join("rule.yaml"), body).expect("write rule");
    rules
}

/// An Istio JSON access log line; `i` sets the path and the event time (ms after 10:00).
pub(crate) fn line(i: usize, principal: &str) -> String {
    let (s, ms) = (i / 1000, i % 1000);
    let (m, s) = (s / 60, s % 60);
    format!(
        r#"{{"start_time":"2026-11-22T10:{m:02}:{s:02}.{ms:03}Z","method":"GET","path":"/fault/{i}","protocol":"HTTP/1.1","response_code":200,"upstream_cluster":"inbound|8080||","downstream_peer_uri_san":"{principal}","requested_server_name":"outbound_.8080_._.pay.pay.svc.cluster.local"}}"#
    )
}

const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";

pub(crate) fn producer(b: &Broker) -> BaseProducer {
    // One record per record batch: the test broker answers a fetch only from the start of a
    // batch, so a committed offset inside a batch would stall the partition there (real Kafka
    // serves the batch that contains the offset).
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .expect("producer")
}

pub(crate) fn produce(p: &BaseProducer, topic: &str, key: Option<&str>, payload: &[u8]) {
    produce_to(p, topic, None, key, payload);
}

/// As [`produce`], into `partition` if given (else the producer's partitioner picks).
fn produce_to(p: &BaseProducer, topic: &str, partition: Option<i32>, key: Option<&str>, payload: &[u8]) {
    loop {
        let mut r = BaseRecord::to(topic).payload(payload);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(n) = partition {
            r = r.partition(n);
        }
        match p.send(r) {
            Ok(()) => return,
            Err((e, _)) => {
                assert!(
                    matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "{e}"
                );
                p.poll(Duration::from_millis(50));
            }
        }
    }
}

pub(crate) fn flush(p: &BaseProducer) {
    p.flush(Duration::from_secs(30)).expect("flush");
}

fn logs_proto(lines: &[String]) -> Vec<u8> {
    otlp::logs_request(lines.iter().map(|l| otlp::record(l, vec![])).collect()).encode_to_vec()
}

fn logs_json(lines: &[String]) -> Vec<u8> {
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::json!({"body": {"stringValue": l}}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]})).expect("json")
}

/// Starts Verity consuming `topics` (a YAML flow list) in `group`.
pub(crate) fn start(
    dir: tempfile::TempDir,
    broker: &Broker,
    group: &str,
    topics: &str,
    windowed: bool,
    extra: &[(&str, &str)],
) -> Verity {
    let rules = format!("[{}]", rule_dir(dir.path(), windowed).display());
    let alerts = dir.path().join("alerts.jsonl");
    let alerts = alerts.to_str().expect("path").to_string();
    let bootstrap = broker.bootstrap();
    let mut env: Vec<(&str, &str)> = vec![
        ("VERITY__RULES__BUILTIN_PACK", "false"),
        ("VERITY__RULES__DIRS", &rules),
        ("VERITY__RULES__LATENESS_SECS", "600"),
        ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
        ("VERITY__SINKS__OUTPUTS__FILE__PATH", &alerts),
        ("VERITY__KAFKA__ENABLED", "true"),
        ("VERITY__KAFKA__BROKERS", &bootstrap),
        ("VERITY__KAFKA__GROUP_ID", group),
        ("VERITY__KAFKA__TOPICS", topics),
        ("VERITY__KAFKA__PROPERTIES__AUTO.COMMIT.INTERVAL.MS", "200"),
        ("VERITY__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS", "6000"),
        ("VERITY__KAFKA__PROPERTIES__HEARTBEAT.INTERVAL.MS", "500"),
    ];
    env.extend_from_slice(extra);
    Verity::start_in(dir, &env)
}

pub(crate) fn alerts(v: &Verity) -> Vec<serde_json::Value> {
    read_jsonl_lenient(&v.dir.path().join("alerts.jsonl"))
}

fn ids(v: &Verity) -> BTreeSet<String> {
    alerts(v)
        .iter()
        .filter_map(|a| a["id"].as_str().map(String::from))
        .collect()
}

/// The `/fault/N` paths that alerts were raised for.
fn paths(v: &Verity) -> BTreeSet<usize> {
    alerts(v)
        .iter()
        .flat_map(|a| a["evidence"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| {
            let raw = e["raw"].as_str()?.to_string();
            let i = raw.find("/fault/")? + "/fault/".len();
            raw[i..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

fn messages_consumed(v: &Verity) -> f64 {
    metric_sum(v, "verity_kafka_messages_total")
}

#[test]
fn otlp_proto_json_and_raw_lines_in_alerts_out() {
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    for t in ["otel-logs", "otel-logs-json", "mesh-raw", "otel-metrics"] {
        broker.create_topic(t, 1).expect("topic");
    }
    let p = producer(&broker);
    let l = |r: std::ops::Range<usize>| r.map(|i| line(i, CART)).collect::<Vec<_>>();
    produce(&p, "otel-logs", None, &logs_proto(&l(0..10)));
    produce(&p, "otel-logs-json", None, &logs_json(&l(10..20)));
    for i in 20..25 {
        produce(&p, "mesh-raw", None, line(i, CART).as_bytes());
    }
    // Several lines in one message.
    produce(&p, "mesh-raw", None, l(25..30).join("\n").as_bytes());
    let metrics = otlp_metrics_request();
    produce(&p, "otel-metrics", None, &metrics);
    flush(&p);

    let topics = "[{name: otel-logs, encoding: otlp_proto}, {name: otel-logs-json, encoding: otlp_json}, {name: mesh-raw, encoding: raw}, {name: otel-metrics, encoding: otlp_proto, signal: metrics}]";
    let dir = tempfile::tempdir().expect("tmp");
    // One record a batch and an in-flight budget of 1 KiB, which every batch takes whole:
    // batches go one at a time, reading pauses in between, and everything still flows.
    let mut v = start(
        dir,
        &broker,
        "verity-e2e-formats",
        topics,
        false,
        &[
            ("VERITY__KAFKA__MAX_BATCH_RECORDS", "1"),
            ("VERITY__OTLP__MAX_REQUEST_BYTES", "1024"),
            ("VERITY__OTLP__MAX_IN_FLIGHT_BYTES", "1024"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(30), || paths(&v) == (0..30).collect()),
        "alerts for {:?}\n{}",
        paths(&v),
        v.stderr()
    );
    assert!(eventually(Duration::from_secs(10), || v
        .metric_value("verity_records_accepted_total{source=\"kafka\",format=\"otlp_metrics\"}")
        .is_some_and(|n| n >= 1.0)));
    assert_eq!(
        v.metric_value("verity_kafka_messages_total{topic=\"mesh-raw\",partition=\"0\"}"),
        Some(6.0)
    );
    assert!(
        eventually(Duration::from_secs(10), || v
            .metric_value("verity_otlp_in_flight_bytes")
            == Some(0.0)),
        "every acknowledged batch gave its share back"
    );
    let (status, _) = v.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", v.stderr());
}

fn otlp_metrics_request() -> Vec<u8> {
    let json = serde_json::json!({"resourceMetrics": [{"resource": {"attributes": []}, "scopeMetrics": [{"metrics": [{
        "name": "istio_requests_total",
        "sum": {"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [{
            "timeUnixNano": "1795000000000000000", "asInt": "7",
            "attributes": [
                {"key": "reporter", "value": {"stringValue": "destination"}},
                {"key": "source_principal", "value": {"stringValue": CART}},
                {"key": "destination_service_namespace", "value": {"stringValue": "pay"}},
                {"key": "connection_security_policy", "value": {"stringValue": "mutual_tls"}},
                {"key": "response_code", "value": {"stringValue": "200"}}
            ]
        }]}
    }]}]}]});
    let req: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest =
        serde_json::from_value(json).expect("metrics request");
    req.encode_to_vec()
}

#[test]
fn sigkill_mid_stream_loses_no_alert() {
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    broker.create_topic("mesh", 2).expect("topic");
    let p = producer(&broker);
    const N: usize = 3000;
    for i in 0..N {
        produce(&p, "mesh", Some(&format!("k{}", i % 7)), line(i, CART).as_bytes());
    }
    flush(&p);
    let dir = tempfile::tempdir().expect("tmp");
    let mut v = start(
        dir,
        &broker,
        "verity-e2e-kill",
        "[{name: mesh, encoding: raw}]",
        false,
        // Small batches, so the kill lands in the middle of the stream.
        &[("VERITY__KAFKA__MAX_BATCH_RECORDS", "50")],
    );
    assert!(
        eventually(Duration::from_secs(30), || paths(&v).len() >= 300),
        "{}",
        v.stderr()
    );
    v.kill9();
    let before = paths(&v).len();
    assert!(
        before < N,
        "the kill came too late to prove anything ({before} of {N} done)"
    );
    v.restart();
    if !eventually(Duration::from_secs(60), || paths(&v).len() == N) {
        let got = paths(&v);
        let missing: Vec<usize> = (0..N).filter(|i| !got.contains(i)).collect();
        panic!(
            "{} of {N} alerts after restart (first seen before the kill: {before}); missing {:?}…{:?} ({} in all)\n{}\n{}",
            got.len(),
            missing.first(),
            missing.last(),
            missing.len(),
            v.metrics_text()
                .lines()
                .filter(|l| l.starts_with("verity_kafka")
                    || l.starts_with("verity_records")
                    || l.starts_with("verity_sink"))
                .collect::<Vec<_>>()
                .join("\n"),
            v.stderr()
        );
    }
    // Duplicates are allowed but carry the same id: one id per event.
    assert_eq!(ids(&v).len(), N);
    let (status, _) = v.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", v.stderr());
}

#[test]
fn two_instances_share_a_group_and_see_what_one_would() {
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    broker.create_topic("mesh-keyed", 4).expect("topic");
    let topics = "[{name: mesh-keyed, encoding: raw, key: source_principal}]";
    let a = start(
        tempfile::tempdir().expect("tmp"),
        &broker,
        "verity-e2e-pair",
        topics,
        true,
        &[],
    );
    let b = start(
        tempfile::tempdir().expect("tmp"),
        &broker,
        "verity-e2e-pair",
        topics,
        true,
        &[],
    );
    // Let the group settle with both members before data arrives.
    std::thread::sleep(Duration::from_secs(8));
    let p = producer(&broker);
    const N: usize = 1600;
    let principal = |i: usize| format!("spiffe://cluster.local/ns/shop/sa/svc-{}", i % 8);
    for i in 0..N {
        // 25 ms apart: 40 s of traffic, four 10 s windows per principal.
        let pr = principal(i);
        produce(&p, "mesh-keyed", Some(&pr), line(i * 25, &pr).as_bytes());
    }
    flush(&p);
    let mut pair = [a, b];
    assert!(
        eventually(Duration::from_secs(60), || pair
            .iter()
            .map(messages_consumed)
            .sum::<f64>()
            >= N as f64),
        "consumed {}",
        pair.iter().map(messages_consumed).sum::<f64>()
    );
    let shares: Vec<f64> = pair.iter().map(messages_consumed).collect();
    let mut union = BTreeSet::new();
    for v in pair.iter_mut() {
        let (status, _) = v.terminate(Duration::from_secs(20));
        assert!(status.success(), "{}", v.stderr());
        union.extend(ids(v));
    }

    let mut single = start(
        tempfile::tempdir().expect("tmp"),
        &broker,
        "verity-e2e-single",
        topics,
        true,
        &[],
    );
    assert!(eventually(Duration::from_secs(60), || messages_consumed(&single) >= N as f64));
    let (status, _) = single.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", single.stderr());
    let alone = ids(&single);
    assert_eq!(alone.len(), 8 * 4, "eight principals, four windows each");
    assert_eq!(union, alone, "shares of the partitions: {shares:?}");
    assert!(shares.iter().all(|s| *s > 0.0), "both instances consumed: {shares:?}");
}

/// A member joins while the first holds records it read but has not handed over yet (its
/// batches wait `max_batch_delay_ms`): the rebalance takes those partitions away, the next
/// owner reads the records again from the committed offset, and the first drops what it read
/// ahead. Every record is evaluated once in the group: handed over by both, a windowed count
/// would count it twice.
#[test]
fn records_read_ahead_from_a_revoked_partition_are_evaluated_once() {
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    broker.create_topic("mesh-handover", 4).expect("topic");
    let topics = "[{name: mesh-handover, encoding: raw}]";
    let group = "verity-e2e-handover";
    // Batches are handed over 25 s after their first record: the second member starts and
    // the group re-forms well within that (about 5 s here).
    let slow = [("VERITY__KAFKA__MAX_BATCH_DELAY_MS", "25000")];
    let a = start(tempfile::tempdir().expect("tmp"), &broker, group, topics, false, &slow);
    assert!(
        eventually(Duration::from_secs(30), || a.stderr().contains("partitions assigned")),
        "{}",
        a.stderr()
    );
    const N: usize = 40;
    let p = producer(&broker);
    for i in 0..N {
        produce(&p, "mesh-handover", None, line(i * 25, CART).as_bytes());
    }
    flush(&p);
    std::thread::sleep(Duration::from_secs(2));
    let rows = |v: &Verity| metric_sum_where(v, "verity_pipeline_rows_total", "signal=\"logs\"");
    assert_eq!(
        rows(&a),
        0.0,
        "handed over before the join: the test did not hold the batch"
    );

    let b = start(tempfile::tempdir().expect("tmp"), &broker, group, topics, false, &slow);
    let pair = [a, b];
    assert!(
        eventually(Duration::from_secs(90), || pair.iter().map(rows).sum::<f64>()
            >= N as f64),
        "evaluated {}",
        pair.iter().map(rows).sum::<f64>()
    );
    // A second hand-over of the read-ahead would come with the first's aged batch.
    std::thread::sleep(Duration::from_secs(3));
    let evaluated: f64 = pair.iter().map(rows).sum();
    let dropped = metric_sum_where(&pair[0], "verity_kafka_revoked_unprocessed_messages_total", "");
    assert_eq!(
        evaluated, N as f64,
        "every record evaluated once; read ahead and dropped: {dropped}"
    );
    assert!(
        dropped > 0.0,
        "the first member dropped its read-ahead: {}",
        pair[0].stderr()
    );
    let alerts: usize = pair.iter().map(|v| alerts(v).len()).sum();
    assert_eq!(alerts, N, "one alert per record");
}

/// The sum of every series of a metric.
fn metric_sum(v: &Verity, name: &str) -> f64 {
    metric_sum_where(v, name, "")
}

/// One producer writes to two partitions; partition 1 is five minutes behind (a backlog).
/// Its records are read after partition 0's, yet they are not late: event time is kept per
/// partition, so the lagging partition holds the watermark back.
#[test]
fn a_lagging_partition_is_not_made_late_by_the_others() {
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    broker.create_topic("mesh-lag", 2).expect("topic");
    let mut v = start(
        tempfile::tempdir().expect("tmp"),
        &broker,
        "verity-e2e-lag",
        "[{name: mesh-lag, encoding: raw, sender: mesh-shipper}]",
        true,
        &[("VERITY__RULES__LATENESS_SECS", "5")],
    );
    let p = producer(&broker);
    let send = |partition: i32, i: usize, principal: &str| {
        produce_to(&p, "mesh-lag", Some(partition), None, line(i, principal).as_bytes());
    };
    const AHEAD: &str = "spiffe://cluster.local/ns/shop/sa/ahead";
    const BEHIND: &str = "spiffe://cluster.local/ns/shop/sa/behind";
    // One record per 10 s window, so each window's alert holds its record as evidence.
    // Partition 0: 10:05:00 to 10:08:10.
    for i in 0..20 {
        send(0, 300_000 + i * 10_000, AHEAD);
    }
    flush(&p);
    assert!(eventually(Duration::from_secs(60), || messages_consumed(&v) >= 20.0));
    // Partition 1, read afterwards: 10:00:00 to 10:03:10.
    for i in 0..20 {
        send(1, i * 10_000, BEHIND);
    }
    flush(&p);
    assert!(eventually(Duration::from_secs(60), || metric_sum(
        &v,
        "verity_pipeline_rows_total"
    ) >= 40.0));
    let late = metric_sum(&v, "verity_rules_late_events_total");
    let (status, _) = v.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", v.stderr());
    assert_eq!(late, 0.0, "no record was late");
    let behind: BTreeSet<usize> = paths(&v).into_iter().filter(|i| *i < 300_000).collect();
    assert_eq!(
        behind,
        (0..20).map(|i| i * 10_000).collect(),
        "every backlog record counted"
    );
    let keyed: BTreeSet<String> = alerts(&v)
        .iter()
        .filter_map(|a| a["group"]["source_principal"].as_str().map(String::from))
        .collect();
    assert!(keyed.contains(BEHIND) && keyed.contains(AHEAD), "{keyed:?}");
}

/// The sum of a metric's series whose line contains `label` (e.g. `topic="x"`).
pub(crate) fn metric_sum_where(v: &Verity, name: &str, label: &str) -> f64 {
    v.metrics_text()
        .lines()
        .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()).is_some_and(|c| *c == b' ' || *c == b'{'))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Rules with two key sets (two windowed detections and an assertion) and a stateless one,
/// for repartitioning. Each principal sends about 33 records per 10 s: the thresholds of 30
/// are met only where all of a key's records meet (a third of them, on one of three
/// instances, raises nothing).
fn keyed_rules(dir: &Path) -> String {
    let rules = dir.join("keyed-rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    for (name, body) in [
        (
            "per-principal",
            "id: e2e-per-principal\ntitle: Requests per principal\nseverity: low\nkind: detection\ndetection:\n  where: path LIKE '/fault/%'\n  group_by: [source_principal]\n  window: {type: tumbling, size: 10s}\n  having: count(*) >= 30\n",
        ),
        (
            "per-edge",
            "id: e2e-per-edge\ntitle: Busy edge\nseverity: low\nkind: detection\ndetection:\n  where: 'true'\n  group_by: [destination_service, source_principal]\n  window: {type: tumbling, size: 20s}\n  having: count(*) >= 30\n",
        ),
        (
            // Three records break it, each another principal's: its violations are raised
            // once per key, by whichever instance owns the key.
            "no-bad-path",
            "id: e2e-no-bad-path\ntitle: Bad paths\nseverity: low\nkind: assertion\nassertion:\n  scope: path IS NOT NULL\n  require: path <> '/fault/75' AND path <> '/fault/1000' AND path <> '/fault/2025'\n  per: [source_principal]\n  stale_after: 1h\n  resolve_after: 1h\n",
        ),
        (
            "fault-10",
            "id: e2e-fault-10\ntitle: A request to /fault/10…\nseverity: high\nkind: detection\ndetection:\n  where: path LIKE '/fault/10%'\n",
        ),
    ] {
        std::fs::write(rules.join(format!("{name}.yaml")), body).expect("write rule");
    }
    format!("[{}]", rules.display())
}

/// Starts `instances` Verity instances in `group` with repartitioning (application id
/// `<group>-app`), lets the group settle, runs `feed`, waits until every input record and
/// every repartitioned message is consumed, stops them, and returns the union of their alert
/// ids with each instance's share of the repartitioned messages.
fn run_repartitioned(
    broker: &Broker,
    group: &str,
    instances: usize,
    n: usize,
    junk: usize,
    feed: impl FnOnce(),
) -> (BTreeSet<(String, String)>, Vec<f64>, f64) {
    let app = format!("{group}-app");
    let mut vs: Vec<Verity> = (0..instances)
        .map(|_| {
            let dir = tempfile::tempdir().expect("tmp");
            let rules = keyed_rules(dir.path());
            start(
                dir,
                broker,
                group,
                "[{name: mesh-unkeyed, encoding: raw}]",
                true,
                &[
                    ("VERITY__RULES__DIRS", &rules),
                    ("VERITY__KAFKA__REPARTITION__ENABLED", "true"),
                    ("VERITY__KAFKA__REPARTITION__APPLICATION_ID", &app),
                ],
            )
        })
        .collect();
    // Both groups (input and repartition) settle with every member before data arrives.
    std::thread::sleep(Duration::from_secs(if instances > 1 { 10 } else { 3 }));
    feed();
    let repartition = format!("topic=\"{app}-repartition-");
    let input = "topic=\"mesh-unkeyed\"";
    let caught_up = |vs: &[Verity]| {
        let read: f64 = vs
            .iter()
            .map(|v| metric_sum_where(v, "verity_kafka_messages_total", input))
            .sum();
        let sent: f64 = vs
            .iter()
            .map(|v| metric_sum_where(v, "verity_kafka_repartition_messages_total", &repartition))
            .sum();
        let received: f64 = vs
            .iter()
            .map(|v| metric_sum_where(v, "verity_kafka_messages_total", &repartition))
            .sum();
        read >= n as f64 && sent > 0.0 && received >= sent + junk as f64
    };
    assert!(
        eventually(Duration::from_secs(90), || caught_up(&vs)),
        "not caught up: {}",
        vs.iter().map(Verity::metrics_text).collect::<Vec<_>>().join("\n----\n")
    );
    // Consumed is not yet evaluated: give the pipelines a moment, then drain.
    std::thread::sleep(Duration::from_secs(2));
    let shares: Vec<f64> = vs
        .iter()
        .map(|v| metric_sum_where(v, "verity_kafka_messages_total", &repartition))
        .collect();
    let poison: f64 = vs
        .iter()
        .map(|v| metric_sum_where(v, "verity_kafka_poison_messages_total", &repartition))
        .sum();
    stop_in_turn(&mut vs);
    let mut union = BTreeSet::new();
    for v in &vs {
        union.extend(
            alerts(v)
                .iter()
                .filter_map(|a| Some((a["rule_id"].as_str()?.to_string(), a["id"].as_str()?.to_string()))),
        );
    }
    (union, shares, poison)
}

/// Stops `vs` one after the other (SIGTERM; each must exit cleanly), letting the group
/// re-form after each departure before the next: the partitions (and their rule state) of
/// the one that left go to the others. The test broker may otherwise hand a partition to an
/// instance that leaves before taking it, and never to the last one. How the repartition
/// partitions moved is printed, shown when a test fails.
pub(crate) fn stop_in_turn(vs: &mut [Verity]) {
    for (i, v) in vs.iter_mut().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(4));
        }
        let (status, _) = v.terminate(Duration::from_secs(30));
        assert!(status.success(), "{}", v.stderr());
        for l in v
            .stderr()
            .lines()
            .filter(|l| l.contains("state_topic") || l.contains("rebalance") || l.contains("read-ahead"))
        {
            eprintln!("{l}");
        }
        eprintln!("----");
    }
}

/// Three instances on an unkeyed topic, with repartitioning, raise exactly the alerts one
/// instance raises: every key's rows meet on one instance, whichever partitions the producer
/// spread them over, for each key set of the loaded rules.
#[test]
fn three_instances_on_an_unkeyed_topic_raise_what_one_raises() {
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    broker.create_topic("mesh-unkeyed", 6).expect("topic");
    const N: usize = 1200;
    let feed = || {
        let p = producer(&broker);
        for i in 0..N {
            // 25 ms apart: 30 s of traffic; twelve principals; no message key, so the
            // producer spreads every principal over all six partitions.
            let principal = format!("spiffe://cluster.local/ns/shop/sa/svc-{}", i % 12);
            produce(&p, "mesh-unkeyed", None, line(i * 25, &principal).as_bytes());
        }
        flush(&p);
    };
    let (trio, shares, _) = run_repartitioned(&broker, "e2e-trio", 3, N, 0, feed);
    // Something other than Verity writes into a repartition topic: the message is refused
    // as poison (dead-lettered), and the rest flows.
    let junk = || {
        let p = producer(&broker);
        for payload in [&b"not arrow"[..], b"\xff\xff\xff\xff\x10\x00\x00\x00garbage"] {
            produce(&p, "e2e-solo-app-repartition-source_principal", None, payload);
        }
        flush(&p);
    };
    let (alone, _, poison) = run_repartitioned(&broker, "e2e-solo", 1, N, 2, junk);
    assert_eq!(poison, 2.0, "both foreign messages refused");
    let count = |rule: &str| alone.iter().filter(|(r, _)| r == rule).count();
    // Per principal: three 10 s windows; per edge: two 20 s windows, each of 30 or more.
    assert_eq!(count("e2e-per-principal"), 12 * 3, "{alone:?}");
    assert_eq!(count("e2e-per-edge"), 12 * 2, "{alone:?}");
    assert_eq!(count("e2e-no-bad-path"), 3, "{alone:?}");
    assert!(count("e2e-fault-10") > 0, "{alone:?}");
    assert_eq!(trio, alone, "repartitioned messages per instance: {shares:?}");
    assert!(
        shares.iter().filter(|s| **s > 0.0).count() >= 2,
        "the repartition topics' partitions are shared: {shares:?}"
    );
}

#[test]
fn poison_messages_are_dead_lettered_and_the_rest_flows() {
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    for t in ["otel-logs", "mesh-raw", "verity-dlq"] {
        broker.create_topic(t, 1).expect("topic");
    }
    let p = producer(&broker);
    produce(&p, "otel-logs", None, &logs_proto(&[line(0, CART)]));
    produce(&p, "otel-logs", None, b"\xff\x00 definitely not protobuf \x07");
    produce(&p, "otel-logs", None, &logs_proto(&[line(1, CART)]));
    // Valid protobuf that multiplies memory: 100 KB of empty log records (two bytes each on
    // the wire, hundreds once decoded), over the 1 MiB decoded-size limit set below.
    produce(&p, "otel-logs", None, &empty_records(50_000));
    produce(&p, "mesh-raw", None, line(2, CART).as_bytes());
    produce(&p, "mesh-raw", None, b"this is not an access log line");
    produce(&p, "mesh-raw", None, line(3, CART).as_bytes());
    flush(&p);
    let dir = tempfile::tempdir().expect("tmp");
    let mut v = start(
        dir,
        &broker,
        "verity-e2e-poison",
        "[{name: otel-logs, encoding: otlp_proto}, {name: mesh-raw, encoding: raw}]",
        false,
        &[
            ("VERITY__KAFKA__DEAD_LETTER_TOPIC", "verity-dlq"),
            ("VERITY__INTAKE__LIMITS__MAX_DECODED_BYTES", "1048576"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(30), || paths(&v) == (0..4).collect()),
        "{:?}\n{}",
        paths(&v),
        v.stderr()
    );
    let dead = v.dead_letters();
    let otlp = dead
        .iter()
        .find(|d| d["topic"] == "otel-logs")
        .expect("otlp poison dead-lettered");
    assert_eq!(otlp["partition"], 0);
    assert_eq!(otlp["offset"], 1);
    assert_eq!(otlp["reason"], "undecodable_message");
    let raw = dead
        .iter()
        .find(|d| d["topic"] == "mesh-raw")
        .expect("raw poison dead-lettered");
    assert_eq!(raw["offset"], 1);
    assert_eq!(raw["record"], "this is not an access log line");
    assert!(
        eventually(Duration::from_secs(10), || v
            .dead_letters()
            .iter()
            .any(|d| d["topic"] == "otel-logs" && d["offset"] == 3)),
        "the decoded-size bomb is dead-lettered: {:?}",
        v.dead_letters()
    );
    let bomb = v
        .dead_letters()
        .into_iter()
        .find(|d| d["topic"] == "otel-logs" && d["offset"] == 3)
        .expect("bomb");
    assert_eq!(bomb["reason"], "undecodable_message");
    assert!(
        bomb["error"].as_str().is_some_and(|d| d.contains("max_decoded_bytes")),
        "{bomb}"
    );
    assert_eq!(
        v.metric_value("verity_kafka_poison_messages_total{topic=\"otel-logs\"}"),
        Some(2.0)
    );
    assert_eq!(
        v.metric_value("verity_kafka_poison_messages_total{topic=\"mesh-raw\"}"),
        Some(1.0)
    );

    // The dead-letter topic got both, with their origin in headers.
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "e2e-dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&["verity-dlq"]).expect("subscribe");
    let mut origins = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while origins.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            let headers = m.headers().expect("headers");
            let topic = headers
                .iter()
                .find(|h| h.key == "verity.source.topic")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .expect("origin topic header");
            origins.insert(topic);
        }
    }
    assert_eq!(
        origins,
        BTreeSet::from(["mesh-raw".to_string(), "otel-logs".to_string()])
    );
    let (status, _) = v.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", v.stderr());

    // Every offset is committed, poison included: a restarted consumer in this group starts
    // after them instead of stalling on them.
    let group: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "verity-e2e-poison")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition("otel-logs", 0);
    tpl.add_partition("mesh-raw", 0);
    let committed = group
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let offset = |topic: &str| {
        committed
            .find_partition(topic, 0)
            .map(|p| p.offset())
            .expect("partition")
    };
    assert_eq!(offset("otel-logs"), rdkafka::Offset::Offset(4));
    assert_eq!(offset("mesh-raw"), rdkafka::Offset::Offset(3));
}

/// An `ExportLogsServiceRequest` of `n` empty log records, built by hand: prost would not
/// encode empty messages any smaller.
fn empty_records(n: usize) -> Vec<u8> {
    let mut scope = Vec::with_capacity(n * 2);
    for _ in 0..n {
        scope.extend_from_slice(&[0x12, 0x00]); // ScopeLogs.log_records (field 2), empty
    }
    let mut resource = Vec::new();
    resource.push(0x12); // ResourceLogs.scope_logs (field 2)
    prost::encoding::encode_varint(scope.len() as u64, &mut resource);
    resource.extend_from_slice(&scope);
    let mut request = Vec::new();
    request.push(0x0a); // ExportLogsServiceRequest.resource_logs (field 1)
    prost::encoding::encode_varint(resource.len() as u64, &mut request);
    request.extend_from_slice(&resource);
    request
}
