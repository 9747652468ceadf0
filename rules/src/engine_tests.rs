//! Engine behaviour on synthetic batches: windows, watermarks, late events, suppression,
//! assertion transitions, first_seen persistence, absence, reload and determinism.

use std::path::Path;

use arrow::array::RecordBatch;
use verity_model::{AccessEvent, AlertStatus, Decision, Direction, EventBatchBuilder};

use crate::rule::RuleSource;
use crate::{Compiler, Engine, EngineSettings, RevocationList};

const S: i64 = 1_000_000_000;
const T0: i64 = 1_714_557_600 * S; // 2024-05-01T10:00:00Z

fn ev(secs: i64, principal: &str, decision: Decision) -> AccessEvent<'static> {
    AccessEvent {
        event_time_ns: T0 + secs * S,
        source_principal: Some(principal.to_string().into()),
        destination_namespace: Some("pay".into()),
        destination_service: Some("pay.pay.svc.cluster.local".into()),
        direction: Direction::Inbound,
        decision,
        mtls: Some(true),
        raw: format!("line at {secs}").into(),
        ..Default::default()
    }
}

fn batch(evs: &[AccessEvent<'_>]) -> RecordBatch {
    let mut b = EventBatchBuilder::with_capacity(evs.len());
    for e in evs {
        b.append(e);
    }
    b.finish().expect("batch")
}

fn engine(yaml: &str, settings: EngineSettings) -> Engine {
    let src = RuleSource::parse(Path::new("t.yaml"), yaml.to_string()).expect("parse");
    let rule = Compiler::new(RevocationList::default()).compile(src).expect("compile");
    Engine::new(vec![rule], settings)
}

const BURST: &str = "id: burst\ntitle: Burst\nseverity: high\nkind: detection\ndetection:\n  where: decision = 'deny_rbac'\n  group_by: [source_principal]\n  window: {type: tumbling, size: 1m}\n  having: count(*) >= 3\n";

#[test]
fn tumbling_window_closes_when_the_watermark_passes() {
    let mut e = engine(BURST, EngineSettings::default());
    let denies: Vec<_> = (0..3).map(|i| ev(i, "a", Decision::DenyRbac)).collect();
    assert!(e.process(&batch(&denies)).is_empty(), "window still open");
    // 64 s: watermark 59 s, the [0, 60) window is not closed yet.
    assert!(e.process(&batch(&[ev(64, "b", Decision::Allow)])).is_empty());
    let alerts = e.process(&batch(&[ev(66, "b", Decision::Allow)]));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].count, 3);
    assert_eq!(
        alerts[0].window_start.as_deref(),
        Some("2024-05-01T10:00:00.000000000Z")
    );
    assert_eq!(alerts[0].aggregates.get("count(*)"), Some(&3.0));
}

#[test]
fn late_events_are_counted_and_left_out_of_windows() {
    let mut e = engine(BURST, EngineSettings::default());
    e.process(&batch(&[ev(100, "x", Decision::Allow)]));
    // Watermark is now 95 s; these are late.
    let late: Vec<_> = (0..3).map(|i| ev(i, "a", Decision::DenyRbac)).collect();
    assert!(e.process(&batch(&late)).is_empty());
    assert_eq!(e.stats().late_events, 3);
    assert!(e.flush().is_empty(), "late events never formed a window");
}

#[test]
fn sliding_windows_with_suppression_alert_once() {
    let yaml =
        BURST.replace("{type: tumbling, size: 1m}", "{type: sliding, size: 1m, slide: 10s}") + "  suppress: 5m\n";
    let mut e = engine(&yaml, EngineSettings::default());
    let denies: Vec<_> = (0..5).map(|i| ev(i, "a", Decision::DenyRbac)).collect();
    e.process(&batch(&denies));
    let alerts = e.flush();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(
        alerts[0].window_start.as_deref(),
        Some("2024-05-01T09:59:10.000000000Z")
    );
}

#[test]
fn stateless_detection_with_suppression() {
    let yaml = "id: s\ntitle: S\nseverity: low\nkind: detection\ndetection:\n  where: decision = 'deny_rbac'\n  group_by: [source_principal]\n  suppress: 1m\n";
    let mut e = engine(yaml, EngineSettings::default());
    let evs: Vec<_> = [0, 10, 30, 61, 62]
        .iter()
        .map(|s| ev(*s, "a", Decision::DenyRbac))
        .collect();
    let alerts = e.process(&batch(&evs));
    assert_eq!(alerts.len(), 2, "one at 0 s, one at 61 s");
    assert_ne!(alerts[0].id, alerts[1].id);
}

const ASSERT: &str = "id: mtls\ntitle: mTLS\nseverity: high\nkind: assertion\nassertion:\n  scope: direction = 'inbound'\n  require: mtls\n  per: [destination_namespace]\n  stale_after: 10m\n  resolve_after: 1m\n";

#[test]
fn assertion_transitions() {
    let mut e = engine(ASSERT, EngineSettings::default());
    let mut plain = ev(0, "a", Decision::Allow);
    plain.mtls = Some(false);
    let a = e.process(&batch(&[ev(-10, "a", Decision::Allow), plain]));
    assert_eq!(
        a.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AlertStatus::Firing]
    );
    assert_eq!(e.assertion_states(10)[0].keys[0].1.as_str(), "violated");
    // Compliant traffic for over a minute resolves it.
    let a = e.process(&batch(&[ev(30, "a", Decision::Allow), ev(70, "a", Decision::Allow)]));
    assert_eq!(
        a.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AlertStatus::Resolved]
    );
    // Another namespace keeps talking; pay goes silent for 10 minutes: unknown.
    let mut other = ev(700, "b", Decision::Allow);
    other.destination_namespace = Some("shop".into());
    let a = e.process(&batch(&[other]));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].status, AlertStatus::Unknown);
    assert_eq!(a[0].group.get("destination_namespace"), Some(&Some("pay".to_string())));
    // Telemetry back and compliant: resolved.
    let a = e.process(&batch(&[ev(710, "a", Decision::Allow)]));
    assert_eq!(
        a.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AlertStatus::Resolved]
    );
    let c = e.counters();
    assert_eq!((c[0].checked, c[0].violating), (6, 1));
}

#[test]
fn first_seen_learns_then_alerts_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let yaml = "id: edge\ntitle: Edge\nseverity: low\nkind: first_seen\nfirst_seen:\n  keys: [source_principal, destination_service]\n  learning: 1h\n";
    let settings = EngineSettings {
        state_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut e = engine(yaml, settings.clone());
    assert!(e.process(&batch(&[ev(0, "a", Decision::Allow)])).is_empty(), "learning");
    e.flush();
    // A new engine (a restart) remembers both the edge and when learning started.
    let mut e = engine(yaml, settings);
    assert!(
        e.process(&batch(&[ev(4000, "a", Decision::Allow)])).is_empty(),
        "known edge"
    );
    let a = e.process(&batch(&[
        ev(4001, "b", Decision::Allow),
        ev(4002, "b", Decision::Allow),
    ]));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].group.get("source_principal"), Some(&Some("b".to_string())));
}

#[test]
fn absence_fires_and_resolves() {
    let yaml =
        "id: quiet\ntitle: Quiet\nseverity: low\nkind: absence\nabsence:\n  keys: [source_principal]\n  after: 5m\n";
    let mut e = engine(yaml, EngineSettings::default());
    e.process(&batch(&[ev(0, "a", Decision::Allow), ev(0, "b", Decision::Allow)]));
    let a = e.process(&batch(&[ev(400, "b", Decision::Allow)]));
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].status, a[0].group.get("source_principal").cloned()),
        (AlertStatus::Firing, Some(Some("a".to_string())))
    );
    let a = e.process(&batch(&[ev(401, "a", Decision::Allow)]));
    assert_eq!(a[0].status, AlertStatus::Resolved);
}

/// Each key falls silent at its own deadline, also a key first heard (or heard again) with a
/// deadline earlier than every other watched key's: the engine skips batches before the
/// earliest deadline, and those keys must move it.
#[test]
fn absence_fires_each_key_at_its_own_deadline() {
    let yaml =
        "id: quiet\ntitle: Quiet\nseverity: low\nkind: absence\nabsence:\n  keys: [source_principal]\n  after: 5m\n";
    let mut e = engine(yaml, EngineSettings::default());
    let mut step = |evs: &[(i64, &str)]| -> Vec<(AlertStatus, String)> {
        let evs: Vec<_> = evs.iter().map(|(t, p)| ev(*t, p, Decision::Allow)).collect();
        e.process(&batch(&evs))
            .into_iter()
            .map(|a| {
                let who = a.group.get("source_principal").cloned().flatten().unwrap_or_default();
                (a.status, who)
            })
            .collect()
    };
    let firing = |p: &str| vec![(AlertStatus::Firing, p.to_string())];
    assert!(step(&[(1000, "a"), (1000, "b")]).is_empty());
    // `c` arrives 4 s behind the others (within the lateness): due at 1296, before `a`.
    assert!(step(&[(996, "c"), (1000, "b")]).is_empty());
    assert_eq!(step(&[(1302, "b")]), firing("c"), "watermark 1297");
    assert_eq!(step(&[(1306, "b")]), firing("a"), "watermark 1301");
    // `a` is heard again, due at 1602, before `b` (1606).
    assert_eq!(step(&[(1302, "a")]), vec![(AlertStatus::Resolved, "a".to_string())]);
    assert!(step(&[(1606, "b")]).is_empty(), "watermark 1601");
    assert_eq!(step(&[(1607, "b")]), firing("a"), "watermark 1602");
    assert!(step(&[(1900, "b")]).is_empty(), "silent keys fire once");
}

#[test]
fn reload_keeps_state_of_unchanged_rules() {
    let compile = |yaml: &str| {
        let src = RuleSource::parse(Path::new("t.yaml"), yaml.to_string()).expect("parse");
        Compiler::new(RevocationList::default()).compile(src).expect("compile")
    };
    let mut e = Engine::new(vec![compile(BURST)], EngineSettings::default());
    e.process(&batch(&[
        ev(0, "a", Decision::DenyRbac),
        ev(1, "a", Decision::DenyRbac),
    ]));
    let s = e.replace_rules(vec![compile(BURST)]);
    assert_eq!((s.kept, s.changed), (1, 0));
    e.process(&batch(&[ev(2, "a", Decision::DenyRbac)]));
    assert_eq!(e.flush().len(), 1, "the two earlier events were kept");

    let mut e = Engine::new(vec![compile(BURST)], EngineSettings::default());
    e.process(&batch(&[
        ev(0, "a", Decision::DenyRbac),
        ev(1, "a", Decision::DenyRbac),
    ]));
    let s = e.replace_rules(vec![compile(&BURST.replace("Burst", "Burst v2"))]);
    assert_eq!((s.kept, s.changed), (0, 1));
    e.process(&batch(&[ev(2, "a", Decision::DenyRbac)]));
    assert!(e.flush().is_empty(), "a changed rule starts fresh");
}

#[test]
fn same_input_same_alerts() {
    let run = || {
        let mut e = engine(BURST, EngineSettings::default());
        let evs: Vec<_> = (0..10)
            .map(|i| ev(i * 7, if i % 2 == 0 { "a" } else { "b" }, Decision::DenyRbac))
            .collect();
        let mut out = e.process(&batch(&evs));
        out.extend(e.flush());
        serde_json::to_string(&out).expect("json")
    };
    assert_eq!(run(), run());
}

#[test]
fn idleness_moves_event_time_so_silence_is_noticed() {
    let mut e = engine(ASSERT, EngineSettings::default());
    assert!(e.process(&batch(&[ev(0, "a", Decision::Allow)])).is_empty());
    assert!(e.advance_idle(2 * S).is_empty(), "within the lateness: nothing moves");
    assert!(
        e.advance_idle(300 * S).is_empty(),
        "5 minutes of silence: still holding"
    );
    let a = e.advance_idle(606 * S);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].status, AlertStatus::Unknown);
    assert!(e.advance_idle(700 * S).is_empty(), "reported once");
}

/// A forged record (`sender_binding = 'not_party'`) with a far-future time.
fn forged(secs: i64, principal: &str) -> AccessEvent<'static> {
    AccessEvent {
        sender: Some("spiffe://td/ns/shop/sa/cart".into()),
        sender_binding: verity_model::SenderBinding::NotParty,
        ..ev(secs, principal, Decision::DenyRbac)
    }
}

#[test]
fn forged_records_are_seen_only_by_rules_that_ask_and_never_move_event_time() {
    let mut burst = engine(BURST, EngineSettings::default());
    let far_future = 200 * 365 * 24 * 3600;
    let forgeries: Vec<_> = (0..5).map(|i| forged(far_future + i, "victim")).collect();
    assert!(burst.process(&batch(&forgeries)).is_empty());
    assert_eq!(burst.watermark(), None, "a batch of forgeries moved event time");
    // Honest events after them are on time, and the forged denials never count.
    let honest: Vec<_> = (0..2).map(|i| ev(i, "victim", Decision::DenyRbac)).collect();
    burst.process(&batch(&honest));
    assert_eq!(burst.stats().late_events, 0);
    assert!(burst.flush().is_empty(), "forged denials were counted");

    let forgery = "id: forgery\ntitle: Forgery\nseverity: critical\nkind: detection\ndetection:\n  where: sender_binding = 'not_party'\n  group_by: [sender]\n  suppress: 10m\n";
    let mut watcher = engine(forgery, EngineSettings::default());
    let alerts = watcher.process(&batch(&forgeries));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        alerts[0].group.get("sender"),
        Some(&Some("spiffe://td/ns/shop/sa/cart".to_string()))
    );
}

#[test]
fn open_windows_survive_a_crash_through_checkpoints() {
    let dir = tempfile::tempdir().expect("tmp");
    let settings = EngineSettings {
        state_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut e = engine(BURST, settings.clone());
    let two: Vec<_> = (0..2).map(|i| ev(i, "a", Decision::DenyRbac)).collect();
    assert!(e.process(&batch(&two)).is_empty());
    assert_eq!(e.checkpoint(), 0);
    // A crash: the engine is gone without a flush. The next one resumes the open window.
    drop(e);
    let mut e = engine(BURST, settings.clone());
    assert!(e.process(&batch(&[ev(2, "a", Decision::DenyRbac)])).is_empty());
    let alerts = e.process(&batch(&[ev(70, "b", Decision::Allow)]));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].count, 3);
    // A clean flush leaves nothing to resume: the closed window does not come back.
    e.flush();
    let mut e = engine(BURST, settings.clone());
    assert!(e.process(&batch(&[ev(3, "a", Decision::DenyRbac)])).is_empty());
    assert!(e.flush().is_empty(), "one denial is not a burst");
    // Another version of the rule does not take over the old one's windows.
    let mut e = engine(BURST, settings.clone());
    e.process(&batch(&two));
    e.checkpoint();
    let mut e = engine(&BURST.replace(">= 3", ">= 2"), settings);
    assert!(e.flush().is_empty(), "the windows belonged to the old rule text");
}

#[test]
fn a_flood_of_new_keys_is_bounded_by_eviction() {
    // One principal builds a burst; then a flood of random principals passes max_keys. The
    // burst's group is the least recently seen: its window closes early and its alert says so.
    let yaml = format!("{BURST}max_keys: 100\n");
    let mut e = engine(&yaml, EngineSettings::default());
    let burst: Vec<_> = (0..3).map(|_| ev(0, "victim", Decision::DenyRbac)).collect();
    assert!(e.process(&batch(&burst)).is_empty());
    let mut alerts = Vec::new();
    for round in 0..10 {
        let flood: Vec<_> = (0..50)
            .map(|i| ev(1, &format!("random-{round}-{i}"), Decision::DenyRbac))
            .collect();
        alerts.extend(e.process(&batch(&flood)));
        let c = &e.counters()[0];
        assert!(c.state_keys <= 100, "{} keys held", c.state_keys);
    }
    let c = &e.counters()[0];
    assert!(c.evictions >= 400, "{} evicted", c.evictions);
    let victim: Vec<_> = alerts.iter().filter(|a| a.rule_id == "burst").collect();
    assert_eq!(victim.len(), 1, "the burst still alerts once, closed early");
    assert!(victim[0].summary.contains("closed early"), "{}", victim[0].summary);
    let pressure: Vec<_> = alerts
        .iter()
        .filter(|a| a.rule_id == crate::state_bound::PRESSURE_RULE_ID)
        .collect();
    assert_eq!(pressure.len(), 1, "one pressure alert per rule and hour");
    assert_eq!(pressure[0].group["rule"].as_deref(), Some("burst"));

    // first_seen, assertion and absence rules are bounded the same way, by rules.max_keys.
    let settings = EngineSettings {
        max_keys: 50,
        ..EngineSettings::default()
    };
    for yaml in [
        "id: fs\ntitle: FS\nseverity: low\nkind: first_seen\nfirst_seen:\n  keys: [source_principal]\n  learning: 1s\n",
        "id: as\ntitle: AS\nseverity: low\nkind: assertion\nassertion:\n  scope: destination_namespace = 'pay'\n  require: mtls\n  per: [source_principal]\n  stale_after: 1h\n",
        "id: ab\ntitle: AB\nseverity: low\nkind: absence\nabsence:\n  keys: [source_principal]\n  after: 10m\n",
    ] {
        let mut e = engine(yaml, settings.clone());
        for round in 0..10 {
            let flood: Vec<_> = (0..30)
                .map(|i| ev(round, &format!("p-{round}-{i}"), Decision::Allow))
                .collect();
            e.process(&batch(&flood));
        }
        let c = &e.counters()[0];
        assert!(c.state_keys <= 50, "{}: {} keys", c.rule_id, c.state_keys);
        assert!(c.evictions >= 250, "{}: {} evicted", c.rule_id, c.evictions);
    }
}

#[test]
fn a_state_given_another_kinds_rule_is_an_evaluation_error() {
    use crate::kind::RuleKind;
    let src = RuleSource::parse(Path::new("t.yaml"), BURST.to_string()).expect("parse");
    let rule = Compiler::new(RevocationList::default()).compile(src).expect("compile");
    let b = batch(&[ev(0, "a", Decision::DenyRbac)]);
    let rows = crate::evidence::Rows::new(&b).expect("event schema");
    let mut state = crate::assertion::AssertionState::default();
    let e = RuleKind::process(&mut state, &rule, &rows, None, None, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, crate::eval_error::EvalError::PlanMismatch), "{e}");
    assert_eq!(e.to_string(), "rule state does not match its plan");
}

mod split_property {
    use proptest::prelude::*;

    use super::*;

    const FIRST_SEEN: &str =
        "id: fs\ntitle: FS\nseverity: low\nkind: first_seen\nfirst_seen:\n  keys: [source_principal]\n  learning: 5s\n";

    fn engines() -> Vec<Engine> {
        [BURST, FIRST_SEEN, ASSERT]
            .into_iter()
            .map(|yaml| engine(yaml, EngineSettings::default()))
            .collect()
    }

    fn alert_ids(engines: &mut [Engine], batches: &[RecordBatch]) -> Vec<String> {
        let mut ids = Vec::new();
        for e in engines.iter_mut() {
            for b in batches {
                ids.extend(e.process(b).into_iter().map(|a| a.id));
            }
            ids.extend(e.flush().into_iter().map(|a| a.id));
        }
        ids.sort();
        ids
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 128,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Events in event-time order give the same alerts whether they arrive as one batch or
        /// as two.
        #[test]
        fn a_batch_split_in_two_gives_the_same_alerts(
            events in prop::collection::vec((0i64..3, 0usize..4, any::<bool>(), any::<bool>()), 1..120),
            split in any::<prop::sample::Index>(),
        ) {
            let mut t = 0i64;
            let evs: Vec<AccessEvent<'static>> = events
                .iter()
                .map(|(step, who, deny, plaintext)| {
                    t += step;
                    let mut e = ev(t, ["a", "b", "c", "d"][*who], if *deny { Decision::DenyRbac } else { Decision::Allow });
                    e.mtls = Some(!plaintext);
                    e
                })
                .collect();
            let at = split.index(evs.len() + 1);
            let whole = alert_ids(&mut engines(), &[batch(&evs)]);
            let parts: Vec<RecordBatch> = [&evs[..at], &evs[at..]]
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(batch)
                .collect();
            let split_ids = alert_ids(&mut engines(), &parts);
            prop_assert_eq!(whole, split_ids);
        }
    }
}

/// Traffic that gives every kind of pack rule something to do: denials in bursts, attack
/// paths, plaintext, foreign trust domains, new edges, forgeries.
fn mixed_traffic(round: i64, rows: i64) -> Vec<AccessEvent<'static>> {
    (0..rows)
        .map(|i| {
            let secs = round * 40 + i * 40 / rows;
            let who = format!(
                "spiffe://{}/ns/ns{}/sa/sa{}",
                if i % 97 == 0 { "evil" } else { "cluster.local" },
                i % 7,
                i % 13
            );
            let decision = if i % 5 == 0 {
                Decision::DenyRbac
            } else {
                Decision::Allow
            };
            let path = match i % 11 {
                0 => "/a/../../etc/passwd",
                1 => "/admin/users",
                2 => "/_debug/vars",
                3 => "/?q=1%27%20OR%201=1",
                _ => "/api/orders",
            };
            let base = AccessEvent {
                path: Some(path.into()),
                destination_service: Some(format!("svc{}.pay.svc.cluster.local", i % 17).into()),
                mtls: Some(i % 23 != 0),
                status: Some(if decision == Decision::Allow { 200 } else { 403 }),
                ..ev(secs, &who, decision)
            };
            if i % 31 == 0 {
                AccessEvent {
                    sender: Some("spiffe://cluster.local/ns/shop/sa/cart".into()),
                    sender_binding: verity_model::SenderBinding::NotParty,
                    ..base
                }
            } else {
                base
            }
        })
        .collect()
}

#[test]
fn the_pack_raises_the_same_alerts_on_one_thread_or_several() {
    let run = |threads: usize| {
        let rules = Compiler::new(RevocationList::new(["cluster.local/ns/ns3/sa/sa3".to_string()]))
            .compile_all(crate::pack::sources().expect("pack"))
            .expect("compile");
        let mut e = Engine::new(
            rules,
            EngineSettings {
                threads,
                ..EngineSettings::default()
            },
        );
        let mut out = Vec::new();
        for round in 0..6 {
            out.extend(e.process(&batch(&mixed_traffic(round, 3000))));
        }
        out.extend(e.flush());
        let counters: Vec<_> = e
            .counters()
            .into_iter()
            .map(|c| (c.rule_id, c.evaluated, c.matched, c.alerts, c.state_keys))
            .collect();
        (serde_json::to_string(&out).expect("json"), counters, out.len())
    };
    let (one, one_counters, alerts) = run(1);
    assert!(alerts > 10, "the traffic raises alerts ({alerts})");
    for threads in [0, 2, 3, 8] {
        let (many, counters, _) = run(threads);
        assert_eq!(one, many, "{threads} threads");
        assert_eq!(one_counters, counters, "{threads} threads");
    }
}

#[test]
fn with_keyed_streams_a_stateful_rule_counts_only_its_own_streams_rows() {
    use std::sync::Arc;
    let settings = EngineSettings {
        keyed_streams: Some("v".into()),
        ..Default::default()
    };
    let two_rules = [
        BURST.to_string(),
        "id: any-deny\ntitle: Any\nseverity: low\nkind: detection\ndetection:\n  where: decision = 'deny_rbac'\n"
            .to_string(),
    ];
    let rules = two_rules
        .iter()
        .map(|y| {
            let src = RuleSource::parse(Path::new("t.yaml"), y.clone()).expect("parse");
            Compiler::new(RevocationList::default()).compile(src).expect("compile")
        })
        .collect();
    let mut e = Engine::new(rules, settings);
    // The same two denials arrive through the rule's stream and through another set's
    // stream (where another instance sent them for another rule): they count once.
    let own: Arc<str> = Arc::from("v-repartition-source_principal/3");
    let other: Arc<str> = Arc::from("v-repartition-destination_service/1");
    let mut evs = Vec::new();
    for (i, stream) in [(0, &own), (0, &other), (1, &own), (1, &other)] {
        let mut ev = ev(i, "a", Decision::DenyRbac);
        ev.ingest_partition = Some(stream.clone());
        evs.push(ev);
    }
    let stateless = e.process(&batch(&evs));
    assert_eq!(stateless.len(), 4, "a stateless rule sees every row: {stateless:?}");
    let alerts: Vec<_> = e.flush().into_iter().filter(|a| a.rule_id == "burst").collect();
    assert!(alerts.is_empty(), "two denials are not a burst of three: {alerts:?}");
    let mut third = ev(2, "a", Decision::DenyRbac);
    third.ingest_partition = Some(own);
    let mut e2 = engine(
        BURST,
        EngineSettings {
            keyed_streams: Some("v".into()),
            ..Default::default()
        },
    );
    let mut again = evs.clone();
    again.push(third);
    e2.process(&batch(&again));
    let alerts = e2.flush();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].count, 3);
}

/// A partition's state moves to another engine: open windows and learned sets continue
/// there, and the engine it left holds none of its keys.
#[test]
fn a_partitions_state_moves_to_another_engine_and_continues_there() {
    use crate::partition_state::{Partition, PartitionState};
    use std::sync::Arc;
    const LEARN: &str = "id: new-caller\ntitle: New caller\nseverity: low\nkind: first_seen\nfirst_seen:\n  keys: [source_principal]\n  learning: 1m\n";
    let keyed = || EngineSettings {
        keyed_streams: Some("v".into()),
        ..Default::default()
    };
    let rules = || {
        [BURST, LEARN]
            .iter()
            .map(|y| {
                let src = RuleSource::parse(Path::new("t.yaml"), (*y).to_string()).expect("parse");
                Compiler::new(RevocationList::default()).compile(src).expect("compile")
            })
            .collect::<Vec<_>>()
    };
    let (mut a, mut b) = (Engine::new(rules(), keyed()), Engine::new(rules(), keyed()));
    const N: usize = 3;
    let partition_of = |p: &str| crate::key_sets::key_partition([Some(p.as_bytes())], N, &mut Vec::new());
    let stream = "v-repartition-source_principal";
    let principals: Vec<String> = (0..6).map(|i| format!("spiffe://c/ns/x/sa/p{i}")).collect();
    let rows = |secs: i64| -> Vec<AccessEvent<'static>> {
        principals
            .iter()
            .map(|p| {
                let mut e = ev(secs, p, Decision::DenyRbac);
                e.ingest_partition = Some(Arc::from(format!("{stream}/{}<0", partition_of(p)).as_str()));
                e
            })
            .collect()
    };
    a.process(&batch(&[rows(0), rows(1)].concat()));
    for partition in 0..N {
        let at = Partition {
            stream,
            partition,
            partitions: N,
        };
        let state = a.export_partition(at).expect("export");
        // Through bytes, as it travels.
        let bytes = serde_json::to_vec(&state).expect("encode");
        let state: PartitionState = serde_json::from_slice(&bytes).expect("decode");
        let summary = b.import_partition(state);
        assert_eq!(summary.refused, 0, "{summary:?}");
        a.forget_partition(at);
    }
    assert!(a.counters().iter().all(|c| c.state_keys == 0), "{:?}", a.counters());
    // The third denial of each principal, at the new owner, completes its burst; the
    // learned callers are not new there.
    let alerts = b.process(&batch(&rows(2)));
    assert!(alerts.is_empty(), "nobody is new: {alerts:?}");
    let bursts: Vec<_> = b.flush().into_iter().filter(|x| x.rule_id == "burst").collect();
    assert_eq!(bursts.len(), principals.len(), "{bursts:?}");
    assert!(bursts.iter().all(|x| x.count == 3));
    assert!(a.flush().iter().all(|x| x.rule_id != "burst"));

    // State made by another text of the rule is not taken.
    let mut c = engine(&BURST.replace(">= 3", ">= 4"), keyed());
    let mut d = engine(BURST, keyed());
    d.process(&batch(&rows(0)));
    let state = d
        .export_partition(Partition {
            stream,
            partition: partition_of(&principals[0]),
            partitions: N,
        })
        .expect("export");
    assert_eq!(c.import_partition(state).refused, 1);

    // Taken state counts against the rule's bound: six keys do not fit in three.
    let mut small = engine(BURST, EngineSettings { max_keys: 3, ..keyed() });
    let all = d
        .export_partition(Partition {
            stream,
            partition: 0,
            partitions: 1,
        })
        .expect("export");
    let summary = small.import_partition(all);
    assert_eq!((summary.refused, summary.keys), (1, 0), "{summary:?}");
}
