//! Revocations shared between the instances of one consumer group through the compacted
//! revocations topic, against a real Kafka-protocol broker: a revocation made by whichever
//! instance owns the attacker's key is enforced at every instance's ext_authz, an operator's
//! revocation at one instance is enforced at the other, and a lift at either lifts it at both.

use std::time::Duration;

use rdkafka::producer::{BaseRecord, Producer};
use verity_e2e::kafka::Broker;
use verity_e2e::{Verity, eventually, free_port, require};

use super::control::{CART, DENIED, check, line};

const PAY: &str = "spiffe://cluster.local/ns/shop/sa/scanner";
const DENY: i32 = tonic::Code::PermissionDenied as i32;

/// One instance in group `e2e-rev` with repartitioning and shared revocations, enforcing,
/// with its ext_authz on a free port and an admin token; returns it with both.
fn instance(broker: &Broker) -> (Verity, std::net::SocketAddr, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    std::fs::write(
        rules.join("probe.yaml"),
        "id: e2e-probe\ntitle: Probing\nseverity: high\nkind: detection\ndetection:\n  where: decision = 'deny_rbac'\n  group_by: [source_principal]\n  window: {type: tumbling, size: 1s}\n  having: count(*) >= 3\nrespond:\n  entity: source_principal\n  action: revoke\n  ttl: 1h\n",
    )
    .expect("rule");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin\n").expect("token");
    let signing = dir.path().join("signing-key");
    std::fs::write(&signing, "deployment-signing-key\n").expect("key");
    let signing = format!("{{file: '{}'}}", signing.display());
    let ext_authz = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (rules, listen, file, token_ref, bootstrap) = (
        format!("[{}]", rules.display()),
        ext_authz.to_string(),
        dir.path().join("alerts.jsonl").display().to_string(),
        format!("{{file: '{}'}}", token.display()),
        broker.bootstrap(),
    );
    let v = Verity::start_in(
        dir,
        &[
            ("VERITY__RULES__BUILTIN_PACK", "false"),
            ("VERITY__RULES__DIRS", &rules),
            ("VERITY__RULES__LATENESS_SECS", "0"),
            ("VERITY__RULES__SENDER_IDLE_SECS", "2"),
            ("VERITY__CONTROL__MODE", "enforce"),
            ("VERITY__CONTROL__EXT_AUTHZ_LISTEN", &listen),
            ("VERITY__CONTROL__RECONCILE_INTERVAL_SECS", "1"),
            ("VERITY__ADMIN__TOKEN", &token_ref),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__SINKS__OUTPUTS__FILE__PATH", &file),
            ("VERITY__KAFKA__ENABLED", "true"),
            ("VERITY__KAFKA__BROKERS", &bootstrap),
            ("VERITY__KAFKA__GROUP_ID", "e2e-rev"),
            (
                "VERITY__KAFKA__TOPICS",
                "[{name: mesh-probe, encoding: raw, sender: otel-collector}]",
            ),
            ("VERITY__KAFKA__REPARTITION__ENABLED", "true"),
            ("VERITY__KAFKA__REPARTITION__SIGNING_KEY", &signing),
            ("VERITY__KAFKA__PROPERTIES__FETCH.WAIT.MAX.MS", "50"),
            ("VERITY__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS", "6000"),
            ("VERITY__KAFKA__PROPERTIES__HEARTBEAT.INTERVAL.MS", "500"),
        ],
    );
    let token = v.dir.path().join("admin-token");
    (v, ext_authz, token)
}

fn list(v: &Verity, token: &std::path::Path) -> serde_json::Value {
    let (ok, out) = verity_e2e::revocations_cli(v.admin, token, &["list"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).expect("json")
}

#[test]
fn every_instance_denies_what_another_revoked_and_a_lift_anywhere_lifts_everywhere() {
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    broker.create_topic("mesh-probe", 4).expect("topic");
    let (a, authz_a, token_a) = instance(&broker);
    let (b, authz_b, token_b) = instance(&broker);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(check(authz_a, PAY), 0);
    assert_eq!(check(authz_b, PAY), 0);

    // Probing from PAY, unkeyed: its denials meet at whichever instance owns its key; that
    // one revokes, and both deny.
    let producer = super::kafka::producer(&broker);
    let both_deny = |p: &str| check(authz_a, p) == DENY && check(authz_b, p) == DENY;
    let denied = eventually(Duration::from_secs(60), || {
        for i in 0..4 {
            let l = line(i * 50, PAY, 403, DENIED);
            producer
                .send(BaseRecord::<(), _>::to("mesh-probe").payload(&l))
                .expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        std::thread::sleep(Duration::from_millis(500));
        both_deny(PAY)
    });
    assert!(denied, "a:\n{}\nb:\n{}", a.stderr(), b.stderr());
    let (la, lb) = (list(&a, &token_a), list(&b, &token_b));
    let owners: Vec<usize> = [&la, &lb]
        .iter()
        .map(|l| {
            l.as_array()
                .expect("list")
                .iter()
                .filter(|r| r["principal"] == PAY.trim_start_matches("spiffe://"))
                .count()
        })
        .collect();
    assert_eq!(owners, [1, 1], "each lists the one revocation: {la} {lb}");
    let revoked = |v: &Verity| -> usize {
        super::control::alerts(v)
            .iter()
            .filter(|e| e["rule_id"] == "e2e-probe")
            .count()
    };
    assert!(
        (revoked(&a) > 0) != (revoked(&b) > 0),
        "the instance owning PAY's key raised the probing alerts, the other none"
    );

    // An operator revokes CART at a: b denies it too.
    let (ok, out) = verity_e2e::revocations_cli(a.admin, &token_a, &["add", CART, "--ttl", "1h"]);
    assert!(ok, "{out}");
    assert!(
        eventually(Duration::from_secs(15), || check(authz_b, CART) == DENY),
        "{}",
        b.stderr()
    );
    // Lifted at b, which does not own it: both allow CART again, and a, the owner, records
    // the lift.
    let id = list(&b, &token_b)
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["principal"] == CART.trim_start_matches("spiffe://"))
        .and_then(|r| r["id"].as_str().map(str::to_string))
        .expect("b lists CART's revocation");
    let (ok, out) = verity_e2e::revocations_cli(b.admin, &token_b, &["lift", &id]);
    assert!(ok, "{out}");
    assert_eq!(check(authz_b, CART), 0);
    assert!(
        eventually(Duration::from_secs(15), || check(authz_a, CART) == 0),
        "{}",
        a.stderr()
    );
    assert!(eventually(Duration::from_secs(5), || {
        list(&a, &token_a)
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["id"] == id.as_str() && r["state"] == "lifted"))
    }));
    assert!(both_deny(PAY), "PAY stays revoked");

    // A client that can write the revocations topic but lacks the signing key cannot make
    // anyone deny a principal.
    const FORGED: &str = "cluster.local/ns/shop/sa/victim";
    let forged = serde_json::json!({
        "id": "rev-forged", "kind": "principal", "principal": FORGED, "reason": "forged",
        "mode": "enforce", "created_ns": 0, "expires_ns": i64::MAX, "state": "applied",
    });
    let forged = serde_json::to_vec(&forged).expect("json");
    producer
        .send(BaseRecord::to("e2e-rev-revocations").key("rev-forged").payload(&forged))
        .expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");
    let poison = |v: &Verity| {
        v.metric_value("verity_kafka_shared_messages_total{topic=\"e2e-rev-revocations\",direction=\"poison\"}")
            .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(15), || poison(&a) >= 1.0 && poison(&b) >= 1.0),
        "the unsigned revocation is refused by both"
    );
    assert_eq!(check(authz_a, FORGED), 0);
    assert_eq!(check(authz_b, FORGED), 0);
    assert!(
        a.metric_value("verity_revocation_shared_total{outcome=\"in_force\"}")
            .unwrap_or(0.0)
            + b.metric_value("verity_revocation_shared_total{outcome=\"in_force\"}")
                .unwrap_or(0.0)
            >= 2.0
    );
}
