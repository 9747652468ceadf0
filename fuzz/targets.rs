// The body of every fuzz target, in one copy, shared by two crates:
//
// - each fuzz target (`fuzz/fuzz_targets/<name>.rs`) includes this file and calls `<name>`;
// - the regression test (`collector/tests/fuzz_regressions.rs`) includes it too and runs every
//   function on every file under `fuzz/regressions/<name>/`, on stable, in CI.
//
// (A library crate in `fuzz/` could not serve both: the collector's tests would have to depend
// on a crate that depends on the collector.) So this file may only use what both crates have:
// std, verity-collector, verity-model, verity-rules, arrow, opentelemetry-proto, prost, serde and
// serde_json (all of them dependencies of the collector),
// and it must compile under edition 2021 (fuzz) and 2024 (collector) and pass Clippy.
//
// A body asserts only that nothing panics and that every record comes out as an event or a
// rejection. Rejections are expected (this is hostile input); the one rejection that is a
// failure is `internal_error`, a panic that the normalizers' own boundary
// (`normalize::guarded`) caught. Under libFuzzer the original panic already aborts the run
// (libfuzzer-sys' panic hook); under `cargo test` it becomes that rejection, and fails here.
//
// Contexts are built with `Ctx::now` (default limits) only, never a struct literal, so fields
// added to `Ctx` do not break this file.

use std::sync::OnceLock;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use verity_collector::normalize::{self, Ctx, FormatHint, RejectReason, Rejection};
use verity_collector::sources::kafka::Encoding;
use verity_collector::sources::otlp::decoded_size::{self, Msg};
use verity_model::event::IngestSource;
use verity_model::{EventBatchBuilder, MetricBatchBuilder};

/// A target's body: one input, no result; a bug panics.
pub type Body = fn(&[u8]);

/// Every target: the name of its fuzz binary, of its corpus and of its regression directory.
pub const TARGETS: &[(&str, Body)] = &[
    ("access_line", access_line),
    ("otlp_logs_proto", otlp_logs_proto),
    ("otlp_logs_json", otlp_logs_json),
    ("otlp_metrics", otlp_metrics),
    ("kafka_message", kafka_message),
    ("rule_yaml", rule_yaml),
    ("config_yaml", config_yaml),
    ("spiffe_cert", spiffe_cert),
    ("policy_yaml", policy_yaml),
    ("inventory_yaml", inventory_yaml),
    ("repartition_rows", repartition_rows),
    ("state_value", state_value),
];

/// One log line from a file or a Kafka topic, through every parser: each `FormatHint` (so each
/// layout parser is tried on every input) and `Auto` (the detector).
pub fn access_line(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let ctx = Ctx::now(IngestSource::File);
    let _ = normalize::detect(&text);
    let mut batch = EventBatchBuilder::default();
    for hint in [
        FormatHint::Auto,
        FormatHint::EnvoyText,
        FormatHint::EnvoyJson,
        FormatHint::Ztunnel,
    ] {
        match normalize::normalize_line(&text, hint, &ctx) {
            Ok(ev) => batch.append(&ev),
            Err(r) => check_rejection(&r),
        }
    }
    finish_events(batch);
}

/// An OTLP/HTTP (or gRPC) protobuf logs request, as `sources/otlp/http.rs` decodes it: the decoded-size
/// bound first, then prost, then every record normalized with its resource's attributes.
pub fn otlp_logs_proto(data: &[u8]) {
    if let Some(req) = decode_proto::<ExportLogsServiceRequest>(data, Msg::LogsRequest) {
        normalize_logs(&req, IngestSource::OtlpHttp);
    }
}

/// An OTLP/HTTP JSON logs request (`Content-Type: application/json`).
pub fn otlp_logs_json(data: &[u8]) {
    if let Some(req) = decode_json::<ExportLogsServiceRequest>(data) {
        normalize_logs(&req, IngestSource::OtlpHttp);
    }
}

/// An OTLP protobuf metrics request, decoded and every metric normalized.
pub fn otlp_metrics(data: &[u8]) {
    if let Some(req) = decode_proto::<ExportMetricsServiceRequest>(data, Msg::MetricsRequest) {
        normalize_metrics(&req, IngestSource::OtlpHttp);
    }
}

/// One Kafka message. The first byte picks the topic's configuration (encoding, signal), the
/// rest is the payload, handled as `sources/kafka/message.rs` `handle_message` does: raw lines must be UTF-8
/// and are normalized one by one; OTLP payloads go through the source's own decoder
/// (`kafka::decode`: the decoded-size bound, then prost or serde), then the OTLP normalizers.
pub fn kafka_message(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => {
            let Ok(text) = std::str::from_utf8(payload) else {
                return;
            };
            let ctx = Ctx::now(IngestSource::Kafka);
            let mut batch = EventBatchBuilder::default();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match normalize::normalize_line(line, FormatHint::Auto, &ctx) {
                    Ok(ev) => batch.append(&ev),
                    Err(r) => check_rejection(&r),
                }
            }
            finish_events(batch);
        }
        1 => {
            if let Some(req) = kafka_decode::<ExportLogsServiceRequest>(Encoding::OtlpProto, payload, Msg::LogsRequest) {
                normalize_logs(&req, IngestSource::Kafka);
            }
        }
        2 => {
            if let Some(req) = kafka_decode::<ExportLogsServiceRequest>(Encoding::OtlpJson, payload, Msg::LogsRequest) {
                normalize_logs(&req, IngestSource::Kafka);
            }
        }
        3 => {
            if let Some(req) = kafka_decode::<ExportMetricsServiceRequest>(Encoding::OtlpProto, payload, Msg::MetricsRequest) {
                normalize_metrics(&req, IngestSource::Kafka);
            }
        }
        _ => {
            if let Some(req) = kafka_decode::<ExportMetricsServiceRequest>(Encoding::OtlpJson, payload, Msg::MetricsRequest) {
                normalize_metrics(&req, IngestSource::Kafka);
            }
        }
    }
}

/// A rule file's text: parsed, compiled (SQL through DataFusion), and, when it compiles, run
/// over a small fixed batch of events and flushed, so odd windows, thresholds and keys reach
/// the engine too.
pub fn rule_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No `rule.tests.yaml` beside this path, so parsing reads nothing from disk.
    let path = std::path::Path::new("/nonexistent/verity-fuzz/rule.yaml");
    let Ok(source) = verity_rules::RuleSource::parse(path, text.to_string()) else {
        return;
    };
    let compiled = match rule_compiler().compile(source) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut engine = verity_rules::Engine::new(vec![compiled], verity_rules::EngineSettings::default());
    if let Some(batch) = rule_sample_batch() {
        let _ = engine.process(batch);
    }
    let _ = engine.flush();
}

/// An AuthorizationPolicy file's text: parsed, compiled with a fixed inventory, and, when it
/// compiles, evaluated on a small fixed batch through everything that uses it (whatif with and
/// without dry-run policies, drift, a shadow assertion, learn).
pub fn policy_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut policies = Vec::new();
    if verity_policy::object::parse_documents(text, std::path::Path::new("policy.yaml"), &mut policies).is_err() {
        return;
    }
    let inventory = verity_policy::Inventory::parse(
        "workloads: [{namespace: pay, name: pay-1, labels: {app: pay}}, {namespace: shop, name: orders, labels: {app: orders}}]\nservices: [{namespace: pay, name: pay, selector: {app: pay}}]",
    )
    .unwrap_or_default();
    let set = match verity_policy::PolicySet::compile(&policies, "istio-system", inventory) {
        Ok(set) => set,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let Some(batch) = rule_sample_batch() else { return };
    let mut whatif = verity_policy::whatif::WhatifReport::default();
    whatif.add(&set, batch, false);
    whatif.add(&set, batch, true);
    let mut drift = verity_policy::drift::DriftReport::new(&set);
    drift.add(&set, batch);
    drift.finish();
    let mut learner = verity_policy::learn::Learner::default();
    learner.add(batch, set.inventory());
    let _ = learner.propose(set.inventory(), &verity_policy::learn::LearnSettings::default());
    // The first half is in force, the rest are candidates.
    let candidates = set.policies().len().div_ceil(2);
    let mut shadow = verity_policy::shadow::ShadowAssertions::new(set, candidates, 60_000_000_000);
    let _ = shadow.process(batch, |_, _| {});
}

/// A workload inventory's text (`kubectl get pods,services -o yaml` or the short form), then
/// selector lookups by pod, workload and service.
pub fn inventory_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(inventory) = verity_policy::Inventory::parse(text) else {
        return;
    };
    let selector = verity_policy::inventory::Labels::from([("app".to_string(), "pay".to_string())]);
    for (ns, name, labels) in inventory.workloads() {
        let _ = inventory.selects(&selector, ns, Some(name), None);
        let _ = inventory.selects(labels, ns, Some(name), Some(name));
        let _ = inventory.workload_of(ns, name);
    }
}

/// A configuration file's text, loaded over the embedded defaults (no environment) and
/// validated, as `verity validate` does.
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match verity::config::load_text(Some(("verity.yaml", text)), Vec::<(String, String)>::new()) {
        Ok(cfg) => {
            if let Err(errors) = cfg.validate() {
                for e in &errors {
                    let _ = e.to_string();
                }
            }
        }
        Err(errors) => {
            for e in &errors {
                let _ = e.to_string();
            }
        }
    }
}

/// A client certificate's DER, through the hand-written reader of its URI SANs
/// (`listener/spiffe.rs`).
pub fn spiffe_cert(data: &[u8]) {
    let sans = verity_collector::listener::spiffe::uri_sans(data);
    if let Some(id) = verity_collector::listener::spiffe::spiffe_id(data) {
        assert!(id.starts_with("spiffe://"), "SPIFFE ID {id:?} without spiffe://");
        assert!(
            sans.is_some_and(|s| s.contains(&id.as_str())),
            "SPIFFE ID {id:?} is not among the URI SANs"
        );
    }
}

// ---------------------------------------------------------------------------------------------

fn default_limits() -> normalize::limits::RecordLimits {
    Ctx::now(IngestSource::OtlpHttp).limits
}

fn decode_proto<T: Message + Default>(data: &[u8], root: decoded_size::Msg) -> Option<T> {
    decoded_size::protobuf(data, root, default_limits().max_decoded_bytes)?;
    T::decode(data).ok()
}

/// The Kafka source's decoder; an error is an answer (a poison message), rendered as the
/// dead-letter entry would render it.
fn kafka_decode<T: Message + Default + serde::de::DeserializeOwned>(enc: Encoding, data: &[u8], root: Msg) -> Option<T> {
    match verity_collector::sources::kafka::decode(enc, data, root, default_limits().max_decoded_bytes) {
        Ok(req) => Some(req),
        Err(e) => {
            let _ = e.to_string();
            None
        }
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    decoded_size::json(data, default_limits().max_decoded_bytes)?;
    serde_json::from_slice(data).ok()
}

/// As `OtlpIngest::logs_batch`: each resource prepared once, then every record
/// normalized; events go into a batch, rejected records are rendered for the dead-letter file.
/// (Mirrored rather than called: `OtlpIngest` needs a running pipeline and a dead-letter file,
/// and the mirror can assert what the real loop only counts. The normalizers it calls are the
/// real ones.)
fn normalize_logs(req: &ExportLogsServiceRequest, source: IngestSource) {
    let ctx = Ctx::now(source);
    let mut batch = EventBatchBuilder::default();
    for rl in &req.resource_logs {
        let attributes = rl.resource.as_ref().map(|r| &r.attributes[..]).unwrap_or(&[]);
        let resource = match normalize::otel_log::Resource::prepare(attributes, &ctx.limits) {
            Ok(r) => r,
            Err(r) => {
                check_rejection(&r);
                continue;
            }
        };
        for sl in &rl.scope_logs {
            for record in &sl.log_records {
                match normalize::otel_log::normalize(record, &resource, &ctx) {
                    Ok(ev) => batch.append(&ev),
                    Err(r) => {
                        check_rejection(&r);
                        let _ = serde_json::to_string(record);
                    }
                }
            }
        }
    }
    finish_events(batch);
}

/// As `OtlpIngest::metrics_batch`: every data point becomes a sample or a rejection.
fn normalize_metrics(req: &ExportMetricsServiceRequest, source: IngestSource) {
    let limits = default_limits();
    let observed = normalize::now_ns();
    let mut samples = Vec::new();
    let mut rejected = Vec::new();
    for rm in &req.resource_metrics {
        let resource = rm.resource.as_ref().map(|r| &r.attributes[..]).unwrap_or(&[]);
        if let Err(r) = normalize::otel_log::check_resource(resource, &limits) {
            check_rejection(&r);
            continue;
        }
        for sm in &rm.scope_metrics {
            for metric in &sm.metrics {
                let points = normalize::otel_metric::data_point_count(metric);
                let before = samples.len();
                normalize::otel_metric::normalize(
                    metric,
                    resource,
                    source.as_str(),
                    observed,
                    &limits,
                    &mut samples,
                    &mut rejected,
                );
                let produced = samples.len().saturating_sub(before).saturating_add(rejected.len());
                assert!(
                    produced >= points && produced <= points.max(1),
                    "metric {:?} with {points} data points gave {} samples and {} rejections",
                    metric.name,
                    samples.len().saturating_sub(before),
                    rejected.len()
                );
                for r in rejected.drain(..) {
                    check_rejection(&r);
                }
            }
        }
    }
    if samples.is_empty() {
        return;
    }
    let mut batch = MetricBatchBuilder::default();
    for s in &samples {
        batch.append(s);
    }
    if let Err(e) = batch.finish() {
        panic!("normalized metric samples do not make an Arrow batch: {e}");
    }
}

/// A rejection is an answer; `internal_error` is a caught panic, a bug.
fn check_rejection(r: &Rejection) {
    assert!(
        r.reason != RejectReason::InternalError,
        "a normalizer panicked (caught by normalize::guarded): {}",
        r.detail
    );
    let _ = r.to_string();
}

fn finish_events(mut batch: EventBatchBuilder) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = batch.finish() {
        panic!("normalized events do not make an Arrow batch: {e}");
    }
}

fn rule_compiler() -> &'static verity_rules::Compiler {
    static COMPILER: OnceLock<verity_rules::Compiler> = OnceLock::new();
    COMPILER.get_or_init(|| verity_rules::Compiler::new(verity_rules::RevocationList::default()))
}

/// A message in a repartition topic, as another instance (or anything with write access to
/// the topic) sent it: it must decode to event rows of exactly Verity's schema, or be refused.
/// A panic inside the Arrow IPC reader, which the decoder turns into a refusal, fails here.
pub fn repartition_rows(data: &[u8]) {
    use verity_collector::sources::kafka::repartition::{RowsError, decode_rows};
    let stream: std::sync::Arc<str> = std::sync::Arc::from("verity-repartition-source_principal/0");
    match decode_rows(data, &stream) {
        Ok(batch) => {
            assert_eq!(batch.schema(), verity_model::event::schema());
            let _ = verity_model::json::to_json_rows(&batch);
        }
        Err(RowsError::Panicked) => panic!("the Arrow IPC reader panicked"),
        Err(_) => {}
    }
}

/// Events for `rule_yaml` to evaluate rules on: lines from `collector/tests/cases` and
/// `tests/fixtures/mesh.log` (an allowed request, an RBAC denial, a ztunnel connection).
fn rule_sample_batch() -> Option<&'static arrow::array::RecordBatch> {
    const LINES: &[&str] = &[
        r#"[2024-03-01T10:00:00.000Z] "GET /api/orders HTTP/1.1" 200 - via_upstream - "-" 0 512 7 6 "-" "python-requests/2.31" "id-1" "orders.shop:8080" "10.1.0.7:8080" inbound|8080|| 127.0.0.6:51515 10.1.0.7:8080 10.1.0.3:44312 outbound_.8080_._.orders.shop.svc.cluster.local default"#,
        r#"[2024-03-01T10:00:02.000Z] "GET /admin HTTP/1.1" 403 - rbac_access_denied_matched_policy[ns[pay]-policy[deny-cart]-rule[0]] - "-" 0 19 0 - "-" "curl/8.4.0" "id-3" "pay.pay:8080" "-" inbound|8080|| - 10.1.0.8:8080 10.1.0.4:41000 outbound_.8080_._.pay.pay.svc.cluster.local -"#,
        "2024-06-01T08:00:01.000000Z\tinfo\taccess\tconnection complete\tsrc.addr=10.3.0.6:40001 src.workload=\"legacy-1\" src.namespace=\"legacy\" dst.addr=10.3.0.9:8080 dst.service=\"pay.pay.svc.cluster.local\" dst.workload=\"pay-1\" dst.namespace=\"pay\" direction=\"inbound\" bytes_sent=5 bytes_recv=6 duration=\"1.5s\"",
    ];
    static BATCH: OnceLock<Option<arrow::array::RecordBatch>> = OnceLock::new();
    BATCH
        .get_or_init(|| {
            let ctx = Ctx::now(IngestSource::File);
            let mut b = EventBatchBuilder::default();
            for line in LINES {
                if let Ok(ev) = normalize::normalize_line(line, FormatHint::Auto, &ctx) {
                    b.append(&ev);
                }
            }
            b.finish().ok()
        })
        .as_ref()
}

/// A value from the state topic, as anything with write access to it could send: framing
/// refused or read, and its data taken as a partition's rule state into an engine holding
/// every stateful kind (each rule's fingerprint set to the loaded rule's, so the state reaches
/// the kinds' import), which then evaluates a batch, exports the partition and flushes.
pub fn state_value(data: &[u8]) {
    use verity_collector::sources::kafka::state_topic::decode;
    use verity_rules::partition_state::{Partition, PartitionState};
    let body = match decode(data) {
        Ok(v) => v.data,
        Err(e) => {
            let _ = e.to_string();
            data
        }
    };
    let Ok(mut state) = serde_json::from_slice::<PartitionState>(body) else {
        return;
    };
    const RULES: &[&str] = &[
        "id: s-burst\ntitle: t\nseverity: low\nkind: detection\ndetection:\n  where: \"true\"\n  group_by: [source_principal]\n  window: {type: sliding, size: 1m, slide: 10s}\n  having: count(*) >= 3 AND count(distinct destination_service) >= 1 AND max(status) > 1\n  suppress: 5m\n",
        "id: s-mtls\ntitle: t\nseverity: low\nkind: assertion\nassertion:\n  scope: destination_namespace IS NOT NULL\n  require: mtls\n  per: [destination_namespace]\n  stale_after: 15m\n  resolve_after: 5m\n",
        "id: s-edge\ntitle: t\nseverity: low\nkind: first_seen\nfirst_seen:\n  keys: [source_principal, destination_service]\n  learning: 1m\n",
        "id: s-quiet\ntitle: t\nseverity: low\nkind: absence\nabsence:\n  keys: [destination_service]\n  after: 10m\n",
    ];
    let path = std::path::Path::new("/nonexistent/verity-fuzz/rule.yaml");
    let rules: Vec<_> = RULES
        .iter()
        .filter_map(|y| verity_rules::RuleSource::parse(path, (*y).to_string()).ok())
        .filter_map(|s| rule_compiler().compile(s).ok())
        .collect();
    assert_eq!(rules.len(), RULES.len(), "the state_value target's rules compile");
    for r in &mut state.rules {
        if let Some(loaded) = rules.iter().find(|c| c.rule().id == r.rule_id) {
            r.fingerprint = loaded.fingerprint;
        }
    }
    let mut engine = verity_rules::Engine::new(
        rules,
        verity_rules::EngineSettings {
            keyed_streams: Some("verity".into()),
            max_keys: 1000,
            ..Default::default()
        },
    );
    let _ = engine.import_partition(state);
    if let Some(batch) = rule_sample_batch() {
        let _ = engine.process(batch);
    }
    for stream in ["verity-repartition-source_principal", "verity-repartition-destination_namespace"] {
        let _ = engine.export_partition(Partition {
            stream,
            partition: 0,
            partitions: 1,
        });
    }
    let _ = engine.flush();
}
