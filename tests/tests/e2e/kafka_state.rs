//! Rule state that survives the loss of an instance: three instances repartition an unkeyed
//! topic and snapshot their partitions' rule state to the state topic; one is SIGKILLed in
//! the middle of a window, and whoever takes its partitions continues its open windows from
//! the snapshot, counting every record once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use verity_e2e::kafka::Broker;
use verity_e2e::{Verity, eventually, require};

use super::kafka::{alerts, flush, line, metric_sum_where, produce, producer, start, stop_in_turn};

const INSTANCES: usize = 3;
const PRINCIPALS: usize = 12;
/// Records per principal before the kill, and after it: neither alone reaches the threshold.
const BEFORE: usize = 20;
const AFTER: usize = 15;

fn principal(i: usize) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/svc-{}", i % PRINCIPALS)
}

/// `count` records from record `first` on, 25 ms apart, cycling over the principals.
fn feed(broker: &Broker, first: usize, count: usize) {
    let p = producer(broker);
    for i in first..first + count {
        produce(&p, "mesh-kill", None, line(i * 25, &principal(i)).as_bytes());
    }
    flush(&p);
}

/// Repartition messages read and sent, summed over `vs`.
fn repartition_counts(vs: &[&Verity], app: &str) -> (f64, f64) {
    let label = format!("topic=\"{app}-repartition-");
    let received = vs
        .iter()
        .map(|v| metric_sum_where(v, "verity_kafka_messages_total", &label))
        .sum();
    let sent = vs
        .iter()
        .map(|v| metric_sum_where(v, "verity_kafka_repartition_messages_total", &label))
        .sum();
    (received, sent)
}

/// One instance of the deployment under test.
fn instance(broker: &Broker, app: &str) -> Verity {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("kill-rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    // One ten-minute window holds the whole test: 35 records per principal, 30 needed.
    std::fs::write(
        rules.join("burst.yaml"),
        "id: e2e-burst\ntitle: Burst per principal\nseverity: low\nkind: detection\ndetection:\n  where: path LIKE '/fault/%'\n  group_by: [source_principal]\n  window: {type: tumbling, size: 10m}\n  having: count(*) >= 30\n",
    )
    .expect("rule");
    let rules = format!("[{}]", rules.display());
    start(
        dir,
        broker,
        "e2e-kill",
        "[{name: mesh-kill, encoding: raw}]",
        true,
        &[
            ("VERITY__RULES__DIRS", &rules),
            ("VERITY__KAFKA__REPARTITION__ENABLED", "true"),
            ("VERITY__KAFKA__REPARTITION__APPLICATION_ID", app),
            ("VERITY__KAFKA__REPARTITION__STATE_SNAPSHOT_SECS", "1"),
        ],
    )
}

#[test]
fn a_sigkilled_instances_open_windows_continue_on_another() {
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    broker.create_topic("mesh-kill", 6).expect("topic");
    let app = "e2e-kill-app";
    let mut vs: Vec<Verity> = (0..INSTANCES).map(|_| instance(&broker, app)).collect();
    std::thread::sleep(Duration::from_secs(10));

    feed(&broker, 0, PRINCIPALS * BEFORE);
    let all: Vec<&Verity> = vs.iter().collect();
    let caught_up = |vs: &[&Verity]| {
        let read: f64 = vs
            .iter()
            .map(|v| metric_sum_where(v, "verity_kafka_messages_total", "topic=\"mesh-kill\""))
            .sum();
        let (received, sent) = repartition_counts(vs, app);
        read >= (PRINCIPALS * BEFORE) as f64 && sent > 0.0 && received >= sent
    };
    assert!(
        eventually(Duration::from_secs(60), || caught_up(&all)),
        "not caught up: {}",
        vs.iter().map(Verity::metrics_text).collect::<Vec<_>>().join("\n----\n")
    );
    // A snapshot (every second) covers what each evaluated, and its offsets are committed.
    std::thread::sleep(Duration::from_secs(4));
    let written = |v: &Verity| metric_sum_where(v, "verity_kafka_state_snapshots_total", "outcome=\"written\"");
    assert!(vs.iter().map(written).sum::<f64>() > 0.0, "no snapshot written");

    // The instance that evaluated the most keyed rows dies mid-window.
    let shares: Vec<f64> = vs.iter().map(|v| repartition_counts(&[v], app).0).collect();
    let victim = (0..vs.len())
        .max_by(|a, b| shares[*a].total_cmp(&shares[*b]))
        .expect("instances");
    vs[victim].kill9();
    let dead = vs.remove(victim);
    // The broker notices the loss (6 s session timeout); then a replacement joins, as a
    // restarted pod would, and the dead instance's partitions go wherever the assignor puts
    // them, with their state. (The test broker, tansu 0.6, needs the join: after a member's
    // session times out alone it re-forms the group with the dead member's partitions still
    // unassigned.)
    std::thread::sleep(Duration::from_secs(10));
    vs.push(instance(&broker, app));
    let survivors: Vec<&Verity> = vs.iter().collect();
    let (received_before, sent_before) = repartition_counts(&survivors, app);

    feed(&broker, PRINCIPALS * BEFORE, PRINCIPALS * AFTER);
    // The group notices the loss (6 s session timeout); the survivors take its partitions,
    // restore their state and read on.
    assert!(
        eventually(Duration::from_secs(90), || {
            let restored: f64 = survivors
                .iter()
                .map(|v| metric_sum_where(v, "verity_kafka_state_restores_total", "outcome=\"restored\""))
                .sum();
            let (received, sent) = repartition_counts(&survivors, app);
            restored > 0.0 && sent - sent_before > 0.0 && received - received_before >= sent - sent_before
        }),
        "the survivors did not take over: {}\n{}\nbroker: {}",
        vs.iter().map(Verity::metrics_text).collect::<Vec<_>>().join("\n----\n"),
        vs.iter().map(Verity::stderr).collect::<Vec<_>>().join("\n----\n"),
        broker
            .log_text()
            .lines()
            .filter(|l| l.contains("heartbeat") || l.contains("e2e-kill"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::thread::sleep(Duration::from_secs(3));

    let mut by_id: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut record = |v: &Verity| {
        for a in alerts(v) {
            if a["rule_id"] == "e2e-burst" {
                let id = a["id"].as_str().expect("id").to_string();
                by_id.entry(id).or_default().insert(a["count"].as_u64().expect("count"));
            }
        }
    };
    stop_in_turn(&mut vs);
    for v in &vs {
        record(v);
    }
    record(&dead);
    // Every principal's burst once (by id), counted over both halves: the dead instance's
    // open windows went on elsewhere, and no record was counted twice.
    assert_eq!(by_id.len(), PRINCIPALS, "{by_id:?}");
    for (id, counts) in &by_id {
        assert_eq!(
            counts,
            &BTreeSet::from([(BEFORE + AFTER) as u64]),
            "alert {id}: every record counted once"
        );
    }
}
