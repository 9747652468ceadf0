//! Rule engine throughput on pre-normalized batches, one core:
//! `cargo bench -p verity-rules --bench engine`.
//!
//! - `stateless`: the pack's detections without windows (filters only);
//! - `stateless_rule/<id>`: each of those rules alone, to see which of them the time goes to.
//!   Each includes the engine's own work per batch (the event clock's streams, the mask of
//!   forged rows), about as much as the cheapest rule's whole time: a rule's own cost per
//!   event is its time per event less the cheapest one's;
//! - `stateless_hostile`: the same on traffic whose every path and user agent holds literals
//!   that two attack patterns start with (`${`, `%24%7b`, `'`) without matching, so every row
//!   reaches the regex engine: the worst case of the literal prefilters;
//! - `whole_pack`: every rule, windows and assertions included, on a mesh's call graph
//!   ([`Traffic::CallGraph`]); `whole_pack_2_threads` the same on two engine threads;
//! - `whole_pack_key_flood`: the same rules on traffic whose every (identity, service) edge is
//!   new ([`Traffic::KeyFlood`]): the keyed rules' worst case, each row a new key to insert and,
//!   past `max_keys`, keys to evict;
//! - memory per active group key is printed once (RSS growth over 200 000 open groups).

use std::hint::black_box;

use arrow::array::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verity_model::{AccessEvent, Decision, Direction, EventBatchBuilder};
use verity_rules::compile::Plan;
use verity_rules::{CompiledRule, Compiler, Engine, EngineSettings, RevocationList};

const ROWS: usize = 8192;
const S: i64 = 1_000_000_000;
const T0: i64 = 1_714_557_600 * S;

/// Who calls whom in a bench's batches.
#[derive(Clone, Copy, PartialEq)]
enum Traffic {
    /// As in a mesh: each identity lives in one namespace and calls the same
    /// [`CALLS_PER_IDENTITY`] services, so the keyed rules mostly find keys they already hold.
    CallGraph,
    /// Row `n`'s identity is `ns<n % 37>/sa<n % distinct>` and its service `n % 23` in
    /// namespace `n % 11`: about 185 000 identities for 5 000 distinct, and nearly as many
    /// (identity, service) edges as rows. The 262 144 rows of a bench's batches hold more edges
    /// than `max_keys` (100 000), so least-recently-seen eviction forgets each edge before it
    /// comes round again: every row is a new key. (This is what every engine bench ran on
    /// before the call graph.)
    KeyFlood,
    /// The call graph, with every path and user agent holding literals that attack patterns
    /// start with (see `stateless_hostile`).
    Hostile,
}

/// How many services each identity of [`Traffic::CallGraph`] calls.
const CALLS_PER_IDENTITY: usize = 5;

fn batch(offset: usize, distinct_principals: usize) -> RecordBatch {
    batch_of(offset, distinct_principals, Traffic::CallGraph)
}

fn batch_of(offset: usize, distinct_principals: usize, traffic: Traffic) -> RecordBatch {
    let hostile = traffic == Traffic::Hostile;
    let mut b = EventBatchBuilder::with_capacity(ROWS);
    for i in 0..ROWS {
        let n = offset + i;
        let identity = n % distinct_principals;
        let (namespace, service, service_namespace) = match traffic {
            Traffic::KeyFlood => (n % 37, n % 23, n % 11),
            Traffic::CallGraph | Traffic::Hostile => {
                let service = (identity * 7 + n % CALLS_PER_IDENTITY) % 23;
                (identity % 37, service, service % 11)
            }
        };
        let principal = format!("spiffe://cluster.local/ns/ns{namespace}/sa/sa{identity}");
        let decision = match n % 50 {
            0 => Decision::DenyRbac,
            1 => Decision::DenyJwt,
            _ => Decision::Allow,
        };
        let e = AccessEvent {
            // 10 000 events per second of event time.
            event_time_ns: T0 + (n as i64) * (S / 10_000),
            source_principal: Some(principal.into()),
            source_namespace: Some(format!("ns{namespace}").into()),
            destination_namespace: Some(format!("ns{service_namespace}").into()),
            destination_service: Some(format!("svc{service}.ns{service_namespace}.svc.cluster.local").into()),
            source_ip: Some(format!("10.0.{}.{}", n % 200, n % 250).into()),
            direction: Direction::Inbound,
            mtls: Some(!n.is_multiple_of(1000)),
            method: Some("GET".into()),
            path: Some(if hostile {
                format!("/files/{}/it's/%24%7b{}", n % 997, n % 13).into()
            } else {
                format!("/api/v1/items/{}", n % 997).into()
            }),
            user_agent: Some(if hostile { "Go ${x} 1.1" } else { "Go-http-client/1.1" }.into()),
            status: Some(if decision == Decision::Allow { 200 } else { 403 }),
            decision,
            tls_version: Some("TLSv1.3".into()),
            upstream_cluster: Some("inbound|8080||".into()),
            raw: "[2024-05-01T10:00:00.000Z] \"GET /api/v1/items HTTP/1.1\" 200 - via_upstream".into(),
            ..Default::default()
        };
        b.append(&e);
    }
    b.finish().expect("batch")
}

fn pack() -> Vec<CompiledRule> {
    let sources = verity_rules::pack::sources().expect("pack");
    Compiler::new(RevocationList::new(
        ["spiffe://cluster.local/ns/ns1/sa/sa1".to_string()],
    ))
    .compile_all(sources)
    .expect("compile")
}

fn bench(c: &mut Criterion) {
    let batches: Vec<RecordBatch> = (0..32).map(|i| batch(i * ROWS, 5000)).collect();
    let stateless = stateless_rules();
    let n_stateless = stateless.len();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements((ROWS * batches.len()) as u64));
    g.bench_function(format!("stateless_{n_stateless}_rules"), |b| {
        let mut e = Engine::new(stateless_rules(), EngineSettings::default());
        b.iter(|| {
            for batch in &batches {
                black_box(e.process(batch));
            }
        })
    });
    // Each stateless rule alone, to see which of them the time above goes to.
    for id in stateless.iter().map(|r| r.rule().id.clone()) {
        g.bench_function(format!("stateless_rule/{id}"), |b| {
            let mut e = Engine::new(
                stateless_rules().into_iter().filter(|r| r.rule().id == id).collect(),
                EngineSettings::default(),
            );
            b.iter(|| {
                for batch in &batches {
                    black_box(e.process(batch));
                }
            })
        });
    }
    let hostile: Vec<RecordBatch> = (0..32).map(|i| batch_of(i * ROWS, 5000, Traffic::Hostile)).collect();
    g.bench_function("stateless_hostile", |b| {
        let mut e = Engine::new(stateless_rules(), EngineSettings::default());
        b.iter(|| {
            for batch in &hostile {
                black_box(e.process(batch));
            }
        })
    });
    let flood: Vec<RecordBatch> = (0..32).map(|i| batch_of(i * ROWS, 5000, Traffic::KeyFlood)).collect();
    for (name, threads, batches) in [
        ("whole_pack", 1, &batches),
        ("whole_pack_2_threads", 2, &batches),
        ("whole_pack_key_flood", 1, &flood),
    ] {
        g.bench_function(name, |b| {
            let mut e = Engine::new(
                pack(),
                EngineSettings {
                    threads,
                    ..EngineSettings::default()
                },
            );
            let mut offset = 0;
            b.iter(|| {
                // Fresh event times each iteration so windows keep moving forward.
                offset += batches.len();
                for (i, batch) in batches.iter().enumerate() {
                    black_box(e.process(&shift(batch, (offset + i) as i64)));
                }
            })
        });
    }
    g.finish();
    memory_per_key();
}

fn stateless_rules() -> Vec<CompiledRule> {
    pack()
        .into_iter()
        .filter(|r| matches!(&r.plan, Plan::Detection(d) if d.window.is_none()))
        .collect()
}

/// Moves a batch's event times forward by `k` batches' worth.
fn shift(b: &RecordBatch, k: i64) -> RecordBatch {
    use arrow::array::{Array, TimestampNanosecondArray};
    use std::sync::Arc;
    let t = b
        .column(0)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .expect("time");
    let moved: TimestampNanosecondArray = t
        .iter()
        .map(|v| v.map(|v| v + k * (ROWS as i64) * (S / 10_000)))
        .collect::<TimestampNanosecondArray>()
        .with_timezone("+00:00");
    let mut cols = b.columns().to_vec();
    cols[0] = Arc::new(moved);
    RecordBatch::try_new(b.schema(), cols).expect("batch")
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn memory_per_key() {
    let yaml = "id: m\ntitle: M\nseverity: low\nkind: detection\ndetection:\n  where: \"true\"\n  group_by: [source_principal]\n  window: {type: tumbling, size: 1h}\n  having: count(*) > 1000000 AND count(distinct path) > 1\n";
    let src = verity_rules::RuleSource::parse(std::path::Path::new("m.yaml"), yaml.to_string()).expect("parse");
    let rule = Compiler::new(RevocationList::default()).compile(src).expect("compile");
    let mut e = Engine::new(vec![rule], EngineSettings::default());
    let keys = 200_000;
    let batches: Vec<RecordBatch> = (0..keys / ROWS + 1).map(|i| batch(i * ROWS, keys)).collect();
    let before = rss_kib();
    for b in &batches {
        e.process(b);
    }
    let after = rss_kib();
    println!(
        "memory per active group key (windowed rule with count(*) and count(distinct path), {keys} keys): {:.0} bytes",
        (after.saturating_sub(before) as f64 * 1024.0) / keys as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
