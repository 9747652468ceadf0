//! Policy evaluation throughput on pre-built batches, one core:
//! `cargo bench -p verity-policy --bench evaluate`.
//!
//! A mesh of 40 namespaces and 500 workloads, each with a learned-style ALLOW policy (three
//! principals, a few paths), plus mesh-wide and namespace DENY policies; batches of 8192
//! inbound records, half sidecar HTTP requests with the peer identity logged and half ztunnel
//! connections, from 10 000 principals.
//!
//! - `whatif`: the enforced and dry-run verdicts of every record (`PolicySet::evaluate`);
//! - `drift`: rule-by-rule use (`DriftReport::add`);
//! - `shadow`: the candidates' assertions (`ShadowAssertions::process`);
//! - `learn`: the allowed edges kept for proposals (`Learner::add`, as live learning runs).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::hint::black_box;

use arrow::array::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verity_model::event::{Decision, Direction, Reporter};
use verity_model::{AccessEvent, EventBatchBuilder};
use verity_policy::drift::DriftReport;
use verity_policy::object::parse_documents;
use verity_policy::shadow::ShadowAssertions;
use verity_policy::{Inventory, PolicySet};

const ROWS: usize = 8192;
const WORKLOADS: usize = 500;
const NAMESPACES: usize = 40;
const PRINCIPALS: usize = 10_000;
const S: i64 = 1_000_000_000;

fn workload(i: usize) -> (String, String) {
    (format!("ns{}", i % NAMESPACES), format!("svc{i}"))
}

fn batch(offset: usize) -> RecordBatch {
    let mut b = EventBatchBuilder::with_capacity(ROWS);
    for i in 0..ROWS {
        let n = offset + i;
        let (ns, svc) = workload(n % WORKLOADS);
        let peer = n.wrapping_mul(7919) % PRINCIPALS;
        let ztunnel = n % 2 == 1;
        let e = AccessEvent {
            event_time_ns: 1_714_557_600 * S + (n as i64) * (S / 10_000),
            reporter: if ztunnel {
                Reporter::Ztunnel
            } else {
                Reporter::Destination
            },
            direction: Direction::Inbound,
            protocol: (!ztunnel).then_some(Cow::Borrowed("HTTP/1.1")),
            method: (!ztunnel).then_some(Cow::Borrowed(if n.is_multiple_of(5) { "POST" } else { "GET" })),
            path: (!ztunnel).then(|| Cow::Owned(format!("/api/v1/items/{}?page={}", n % 1000, n % 7))),
            authority: (!ztunnel).then(|| Cow::Owned(format!("{svc}.{ns}:8080"))),
            source_principal: Some(Cow::Owned(format!(
                "spiffe://cluster.local/ns/ns{}/sa/sa{peer}",
                peer % NAMESPACES
            ))),
            source_ip: Some(Cow::Owned(format!("10.1.{}.{}", peer / 250 % 250, peer % 250))),
            mtls: Some(true),
            destination_namespace: Some(Cow::Owned(ns.clone())),
            destination_workload: Some(Cow::Owned(svc.clone())),
            destination_service: Some(Cow::Owned(format!("{svc}.{ns}.svc.cluster.local"))),
            destination_port: Some(8080),
            decision: if n.is_multiple_of(100) {
                Decision::DenyRbac
            } else {
                Decision::Allow
            },
            raw: Cow::Borrowed("-"),
            ..AccessEvent::default()
        };
        b.append(&e);
    }
    b.finish().expect("batch")
}

fn policies() -> (String, String) {
    let mut yaml = String::new();
    let mut inventory = String::from("workloads:\n");
    for i in 0..WORKLOADS {
        let (ns, svc) = workload(i);
        let _ = writeln!(
            inventory,
            "  - {{namespace: {ns}, name: {svc}, labels: {{app: {svc}}}}}"
        );
        let peers: Vec<String> = (0..3)
            .map(|k| {
                let p = (i * 3 + k) % PRINCIPALS;
                format!("cluster.local/ns/ns{}/sa/sa{p}", p % NAMESPACES)
            })
            .collect();
        let _ = write!(
            yaml,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-{svc}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: {svc}}}}}\n  rules:\n  - from: [{{source: {{principals: [{}]}}}}]\n    to: [{{operation: {{methods: [GET], paths: [/api/v1/items/*, /health]}}}}]\n  - from: [{{source: {{namespaces: [ns{}]}}}}]\n    to: [{{operation: {{ports: [\"8080\"]}}}}]\n",
            peers.join(", "),
            i % NAMESPACES
        );
    }
    yaml.push_str("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin*, /debug/*]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: require-mtls, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {notPrincipals: [\"*\"]}}]\n");
    for ns in 0..NAMESPACES {
        let _ = write!(
            yaml,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-legacy, namespace: ns{ns}}}\nspec:\n  action: DENY\n  rules:\n  - from: [{{source: {{ipBlocks: [192.168.0.0/16]}}}}]\n"
        );
    }
    (yaml, inventory)
}

fn bench(c: &mut Criterion) {
    let (yaml, inventory) = policies();
    let mut parsed = Vec::new();
    parse_documents(&yaml, std::path::Path::new("bench.yaml"), &mut parsed).expect("policies");
    let inventory = Inventory::parse(&inventory).expect("inventory");
    let set = PolicySet::compile(&parsed, "istio-system", inventory).expect("compile");
    let batches: Vec<RecordBatch> = (0..4).map(|k| batch(k * ROWS)).collect();
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(ROWS as u64));
    let mut k = 0;
    group.bench_function("whatif", |b| {
        b.iter(|| {
            k += 1;
            black_box(set.evaluate(&batches[k % batches.len()]))
        })
    });
    let mut report = DriftReport::new(&set);
    group.bench_function("drift", |b| {
        b.iter(|| {
            k += 1;
            report.add(&set, &batches[k % batches.len()]);
        })
    });
    // The learned-style ALLOW policies are candidates; the DENY policies are in force.
    let candidates = WORKLOADS;
    let mut in_force_first: Vec<_> = parsed
        .iter()
        .skip(WORKLOADS)
        .chain(parsed.iter().take(WORKLOADS))
        .cloned()
        .collect();
    let shadow_set = PolicySet::compile(&in_force_first, "istio-system", set.inventory().clone()).expect("compile");
    in_force_first.clear();
    let mut shadow = ShadowAssertions::new(shadow_set, candidates, 3600 * S);
    group.bench_function("shadow", |b| {
        b.iter(|| {
            k += 1;
            black_box(shadow.process(&batches[k % batches.len()], |_, _| {}))
        })
    });
    let mut learner = verity_policy::learn::Learner::default();
    group.bench_function("learn", |b| {
        b.iter(|| {
            k += 1;
            learner.add(&batches[k % batches.len()], set.inventory());
        })
    });
    group.finish();
    eprintln!(
        "{} policies, {} rules",
        set.policies().len(),
        set.policies().iter().map(|p| p.rules.len()).sum::<usize>()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
