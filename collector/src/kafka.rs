//! The Kafka source: a consumer-group member that reads OTLP (protobuf or JSON, as the OTel
//! Collector's Kafka exporter writes it) and raw mesh-log lines, and feeds the pipeline with
//! at-least-once semantics.
//!
//! - Offsets are stored (`enable.auto.offset.store=false`) only after every record up to them
//!   has been evaluated by the rules and its alerts are in the sinks' durable spools: each
//!   batch's pipeline hand-off is awaited, in order, by an acknowledger task, and librdkafka
//!   commits stored offsets in the background, on rebalance and at shutdown.
//! - The acknowledger's queue is bounded: when batches wait for hand-off, reading waits too.
//! - When the pipeline is full, the assigned partitions are paused until it has room; nothing
//!   is dropped and the partitions are not given up.
//! - A message that is not valid OTLP, or a line no normalizer understands, is counted,
//!   written to the dead-letter file with topic, partition and offset (and to a dead-letter
//!   topic if configured), and its offset is stored like any other: it never stalls a
//!   partition.
//! - On rebalance, partitions are handed over only after pending acknowledgements are done (or
//!   a deadline passes); the new owner then starts after the last record fully processed.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;
use verity_model::event::IngestSource;

use crate::normalize::{RejectReason, Rejection};
use crate::otlp::{Origin, OtlpIngest};
use crate::pipeline::{Backpressure, Batch, Handoff, Intake};

/// How a topic's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `ExportLogsServiceRequest` / `ExportMetricsServiceRequest` protobuf (the OTel
    /// Collector Kafka exporter's `otlp_proto`).
    OtlpProto,
    /// The same as OTLP/JSON (`otlp_json`).
    OtlpJson,
    /// Log lines (Istio/Envoy text or JSON, ztunnel); several per message when newline-separated.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    #[default]
    Logs,
    Metrics,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub name: String,
    pub encoding: Encoding,
    /// For OTLP encodings: whether the topic carries logs or metrics.
    #[serde(default)]
    pub signal: Signal,
    /// The event column producers key this topic's messages by (e.g. `source_principal`).
    /// Verity warns at start about stateful rules whose keys it cannot serve.
    #[serde(default)]
    pub key: Option<String>,
    /// Who produces this topic (e.g. `otel-collector`), stamped as every record's `sender`.
    /// Kafka authenticates producers itself (SASL, mTLS, ACLs), so a configured sender counts
    /// as verified; unset, records carry no sender and `sender_verified = false`.
    #[serde(default)]
    pub sender: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub enabled: bool,
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<TopicConfig>,
    /// librdkafka consumer properties passed through (`security.protocol`, `sasl.*`, `ssl.*`).
    #[serde(deserialize_with = "verity_model::scalar_map::scalar_map")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets (e.g. `sasl.password`).
    pub secret_properties: BTreeMap<String, verity_secret::SecretRef>,
    /// Poison messages are also produced here, with their origin in headers.
    pub dead_letter_topic: Option<String>,
    /// A batch is handed to the pipeline at this many records …
    pub max_batch_records: usize,
    /// … or this old.
    pub max_batch_delay_ms: u64,
    /// Batches handed to the pipeline whose acknowledgement is pending; reading waits beyond.
    pub max_pending_batches: usize,
    /// On rebalance, how long to wait for pending acknowledgements before giving partitions up.
    pub rebalance_timeout_secs: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            brokers: String::new(),
            group_id: "verity".into(),
            topics: Vec::new(),
            properties: BTreeMap::new(),
            secret_properties: BTreeMap::new(),
            dead_letter_topic: None,
            max_batch_records: 5000,
            max_batch_delay_ms: 100,
            max_pending_batches: 16,
            rebalance_timeout_secs: 20,
        }
    }
}

impl KafkaConfig {
    /// Pure checks: every problem with its key.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut e = Vec::new();
        if !self.enabled {
            return e;
        }
        if self.brokers.trim().is_empty() {
            e.push(("kafka.brokers".into(), "must list at least one host:port".into()));
        }
        if self.group_id.trim().is_empty() {
            e.push(("kafka.group_id".into(), "must be set".into()));
        }
        if self.topics.is_empty() {
            e.push(("kafka.topics".into(), "at least one topic is needed".into()));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if t.name.trim().is_empty() {
                e.push((format!("kafka.topics[{i}].name"), "must be set".into()));
            }
            if t.encoding == Encoding::Raw && t.signal == Signal::Metrics {
                e.push((
                    format!("kafka.topics[{i}].signal"),
                    "raw lines are logs; metrics need an OTLP encoding".into(),
                ));
            }
            if let Some(k) = &t.key
                && verity_model::event::schema().field_with_name(k).is_err()
            {
                e.push((
                    format!("kafka.topics[{i}].key"),
                    format!("{k:?} is not an event column"),
                ));
            }
        }
        for k in [
            "enable.auto.offset.store",
            "enable.auto.commit",
            "group.id",
            "bootstrap.servers",
        ] {
            if self.properties.contains_key(k) {
                e.push((
                    format!("kafka.properties.{k}"),
                    "is set by Verity (at-least-once needs it)".into(),
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.max_batch_records) {
            e.push(("kafka.max_batch_records".into(), "must be between 1 and 1000000".into()));
        }
        if !(1..=60_000).contains(&self.max_batch_delay_ms) {
            e.push(("kafka.max_batch_delay_ms".into(), "must be between 1 and 60000".into()));
        }
        if !(1..=1024).contains(&self.max_pending_batches) {
            e.push(("kafka.max_pending_batches".into(), "must be between 1 and 1024".into()));
        }
        e
    }
}

/// Stateful rules whose keys do not include the column a topic is partitioned by: their state
/// for one key may be split across instances of a consumer group.
pub fn partitioning_warnings(rules: &[verity_rules::rule::RuleFile], topic: &TopicConfig) -> Vec<String> {
    let Some(key) = &topic.key else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in rules {
        let keys: Option<&[String]> = match (&r.detection, &r.assertion, &r.first_seen, &r.absence) {
            (Some(d), ..) if d.window.is_some() => Some(&d.group_by),
            (_, Some(a), ..) => Some(&a.per),
            (_, _, Some(f), _) => Some(&f.keys),
            (_, _, _, Some(a)) => Some(&a.keys),
            _ => None,
        };
        if let Some(keys) = keys
            && !keys.iter().any(|k| k == key)
        {
            out.push(format!(
                "rule {} keeps state per [{}], but topic {} is partitioned by {key}: with several Verity instances in the group, one key's events can land on different instances",
                r.id,
                keys.join(", "),
                topic.name
            ));
        }
    }
    out
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

/// Kafka source metrics. Labels are topics from the config and their partitions.
#[derive(Clone)]
pub struct KafkaMetrics {
    records: Family<PartitionLabels, Counter>,
    bytes: Family<PartitionLabels, Counter>,
    lag: Family<PartitionLabels, Gauge>,
    committed: Family<PartitionLabels, Gauge>,
    poison: Family<TopicLabel, Counter>,
    rebalances: Counter,
    paused: Gauge,
    pending: Gauge,
}

impl KafkaMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            records: Family::default(),
            bytes: Family::default(),
            lag: Family::default(),
            committed: Family::default(),
            poison: Family::default(),
            rebalances: Counter::default(),
            paused: Gauge::default(),
            pending: Gauge::default(),
        };
        registry.register("verity_kafka_messages", "Kafka messages consumed", m.records.clone());
        registry.register(
            "verity_kafka_bytes",
            "Bytes of Kafka message values consumed",
            m.bytes.clone(),
        );
        registry.register(
            "verity_kafka_consumer_lag",
            "Messages behind the partition's high watermark",
            m.lag.clone(),
        );
        registry.register(
            "verity_kafka_committed_offset",
            "Last committed offset per partition",
            m.committed.clone(),
        );
        registry.register(
            "verity_kafka_poison_messages",
            "Kafka messages that could not be decoded or normalized at all (dead-lettered)",
            m.poison.clone(),
        );
        registry.register(
            "verity_kafka_rebalances",
            "Consumer group rebalances seen",
            m.rebalances.clone(),
        );
        registry.register(
            "verity_kafka_paused_partitions",
            "Partitions paused because the pipeline is full",
            m.paused.clone(),
        );
        registry.register(
            "verity_kafka_pending_batches",
            "Batches handed to the pipeline whose offsets are not yet stored",
            m.pending.clone(),
        );
        m
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(String),
    #[error("cannot subscribe to {topics:?}: {message}")]
    Subscribe { topics: Vec<String>, message: String },
    #[error("kafka.secret_properties.{key}: {message}")]
    Secret { key: String, message: String },
}

/// Counts batches handed over but not yet acknowledged, so a rebalance can wait for them.
#[derive(Default)]
struct PendingAcks(AtomicUsize);

struct Context {
    metrics: KafkaMetrics,
    pending: Arc<PendingAcks>,
    rebalance_timeout: Duration,
}

impl ClientContext for Context {
    fn stats(&self, stats: Statistics) {
        for (name, topic) in &stats.topics {
            for (id, p) in &topic.partitions {
                if *id < 0 || !p.desired {
                    continue;
                }
                let labels = PartitionLabels {
                    topic: name.clone(),
                    partition: id.to_string(),
                };
                if p.consumer_lag >= 0 {
                    self.metrics.lag.get_or_create(&labels).set(p.consumer_lag);
                }
                if p.committed_offset >= 0 {
                    self.metrics.committed.get_or_create(&labels).set(p.committed_offset);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.metrics.rebalances.inc();
            // The acknowledger runs on other threads; give it time to store what is done, so
            // the next owner of these partitions starts right after it.
            let deadline = Instant::now() + self.rebalance_timeout;
            while self.pending.0.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let left = self.pending.0.load(Ordering::Acquire);
            if left > 0 {
                tracing::warn!(
                    pending_batches = left,
                    "rebalance: acknowledgements still pending at the deadline; their records will be read again by the next owner"
                );
            }
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(%error, "commit before revoke");
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

type Consumer_ = StreamConsumer<Context>;

/// Offsets of the messages in one batch: the next offset to read, per partition.
type Offsets = HashMap<(String, i32), i64>;

struct Pending {
    handoff: Handoff,
    batch: Batch,
    offsets: Offsets,
    /// The batch's share of the in-flight memory budget, until it is acknowledged.
    _budget: Option<crate::otlp::budget::Reservation>,
}

/// A raw-lines message, kept until the batch is normalized in one go (a builder per message
/// would cost more than the lines themselves).
struct RawMsg {
    text: String,
    origin: Origin,
    key: Option<Vec<u8>>,
    sender: crate::otlp::Sender,
}

/// What the messages read so far turned into.
struct Accum {
    events: Vec<arrow::array::RecordBatch>,
    metrics: Vec<arrow::array::RecordBatch>,
    raw: Vec<RawMsg>,
    rows: usize,
    /// What the accumulated batches and raw messages hold: a batch is handed over at
    /// `intake.limits.max_request_rows_bytes` whatever its record count.
    bytes: usize,
    /// Per partition read: next offset, messages and bytes since the last hand-over. A short
    /// list scanned linearly: no allocation per message.
    positions: Vec<Position>,
    started: Option<Instant>,
}

struct Position {
    topic: String,
    partition: i32,
    next: i64,
    messages: u64,
    bytes: u64,
}

impl Accum {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            metrics: Vec::new(),
            raw: Vec::new(),
            rows: 0,
            bytes: 0,
            positions: Vec::new(),
            started: None,
        }
    }

    fn position(&mut self, topic: &str, partition: i32, offset: i64, bytes: usize) {
        let p = match self
            .positions
            .iter_mut()
            .position(|p| p.partition == partition && p.topic == topic)
        {
            Some(i) => &mut self.positions[i],
            None => {
                self.positions.push(Position {
                    topic: topic.to_string(),
                    partition,
                    next: 0,
                    messages: 0,
                    bytes: 0,
                });
                let last = self.positions.len() - 1;
                &mut self.positions[last]
            }
        };
        p.next = offset + 1;
        p.messages += 1;
        p.bytes += bytes as u64;
    }

    fn add(&mut self, batch: Option<Batch>) {
        match batch {
            Some(Batch::Events(b)) => {
                self.rows += b.num_rows();
                self.bytes = self.bytes.saturating_add(b.get_array_memory_size());
                self.events.push(b);
            }
            Some(Batch::Metrics(b)) => {
                self.rows += b.num_rows();
                self.bytes = self.bytes.saturating_add(b.get_array_memory_size());
                self.metrics.push(b);
            }
            _ => {}
        }
    }

    /// The batches to hand over, each carrying the offsets (all offsets go with the last).
    fn take(&mut self) -> Vec<(Batch, Offsets)> {
        let mut out = Vec::new();
        let concat = |v: Vec<arrow::array::RecordBatch>| -> Option<arrow::array::RecordBatch> {
            let schema = v.first()?.schema();
            match arrow::compute::concat_batches(&schema, &v) {
                Ok(b) => Some(b),
                Err(error) => {
                    tracing::error!(%error, "could not coalesce Kafka batches");
                    None
                }
            }
        };
        if let Some(b) = concat(std::mem::take(&mut self.events)) {
            out.push((Batch::Events(b), HashMap::new()));
        }
        if let Some(b) = concat(std::mem::take(&mut self.metrics)) {
            out.push((Batch::Metrics(b), HashMap::new()));
        }
        let offsets: Offsets = self
            .positions
            .drain(..)
            .map(|p| ((p.topic, p.partition), p.next))
            .collect();
        match out.last_mut() {
            Some(last) => last.1 = offsets,
            // Only poison or empty messages: their offsets still need storing, after
            // everything handed over before them.
            None if !offsets.is_empty() => out.push((Batch::Idle, offsets)),
            None => {}
        }
        self.rows = 0;
        self.bytes = 0;
        self.started = None;
        out
    }
}

/// Runs the consumer until `stop` resolves, then stores and commits what was processed.
pub async fn run(
    cfg: KafkaConfig,
    ingest: Arc<OtlpIngest>,
    metrics: KafkaMetrics,
    stop: impl Future<Output = ()>,
) -> Result<(), KafkaError> {
    let pending_acks = Arc::new(PendingAcks::default());
    let ctx = Context {
        metrics: metrics.clone(),
        pending: pending_acks.clone(),
        rebalance_timeout: Duration::from_secs(cfg.rebalance_timeout_secs),
    };
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        // Pausing for a full pipeline can last; do not leave the group for it.
        .set("max.poll.interval.ms", "900000");
    for (k, v) in &cfg.properties {
        cc.set(k, v);
    }
    for (k, s) in &cfg.secret_properties {
        let secret = verity_secret::Secret::resolve(s).map_err(|e| KafkaError::Secret {
            key: k.clone(),
            message: e.to_string(),
        })?;
        let value = secret.value().map_err(|e| KafkaError::Secret {
            key: k.clone(),
            message: e.to_string(),
        })?;
        cc.set(k, value);
    }
    let dlq: Option<(FutureProducer, String)> = match &cfg.dead_letter_topic {
        Some(t) => {
            let mut pc = ClientConfig::new();
            pc.set("bootstrap.servers", &cfg.brokers);
            for (k, v) in &cfg.properties {
                if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
                    pc.set(k, v);
                }
            }
            Some((pc.create().map_err(|e| KafkaError::Create(e.to_string()))?, t.clone()))
        }
        None => None,
    };
    let consumer: Arc<Consumer_> = Arc::new(
        cc.create_with_context(ctx)
            .map_err(|e| KafkaError::Create(e.to_string()))?,
    );
    let names: Vec<String> = cfg.topics.iter().map(|t| t.name.clone()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).map_err(|e| KafkaError::Subscribe {
        topics: names.clone(),
        message: e.to_string(),
    })?;
    tracing::info!(brokers = %cfg.brokers, group = %cfg.group_id, topics = ?names, "Kafka consumer subscribed");

    let topics: HashMap<String, TopicConfig> = cfg.topics.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let (ack_tx, ack_rx) = mpsc::channel::<Pending>(cfg.max_pending_batches.max(1));
    let acker = tokio::spawn(
        acknowledge(
            ack_rx,
            consumer.clone(),
            ingest.intake().clone(),
            pending_acks.clone(),
            metrics.clone(),
            ingest.held_alerts().clone(),
        )
        .instrument(tracing::info_span!("kafka_ack")),
    );

    let max_delay = Duration::from_millis(cfg.max_batch_delay_ms);
    let mut accum = Accum::new();
    tokio::pin!(stop);
    // One timer for the batch age, re-armed when a batch starts (not one per message).
    let age = tokio::time::sleep(max_delay);
    tokio::pin!(age);
    loop {
        let flush = tokio::select! {
            biased;
            () = &mut stop => break,
            () = &mut age, if accum.started.is_some() => true,
            msg = consumer.recv() => match msg {
                Ok(m) => {
                    if accum.started.is_none() {
                        age.as_mut().reset(tokio::time::Instant::now() + max_delay);
                    }
                    handle_message(&m, &topics, &ingest, &metrics, dlq.as_ref(), &mut accum).await;
                    accum.rows >= cfg.max_batch_records || accum.bytes >= ingest.limits().max_request_rows_bytes
                }
                Err(error) => {
                    tracing::warn!(%error, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    false
                }
            },
        };
        if flush
            && !hand_over(
                &mut accum,
                &consumer,
                &ingest,
                dlq.as_ref(),
                &ack_tx,
                &pending_acks,
                &metrics,
            )
            .await
        {
            break;
        }
    }
    // Hand over what was read, then let the acknowledger finish and commit.
    let _ = hand_over(
        &mut accum,
        &consumer,
        &ingest,
        dlq.as_ref(),
        &ack_tx,
        &pending_acks,
        &metrics,
    )
    .await;
    drop(ack_tx);
    let _ = acker.await;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("Kafka offsets committed"),
        Err(error) => tracing::debug!(%error, "final Kafka commit"),
    }
    consumer.unsubscribe();
    Ok(())
}

/// Sends what was accumulated into the pipeline, pausing the partitions while it is full.
/// Returns false when the pipeline is closed.
#[allow(clippy::too_many_arguments)]
async fn hand_over(
    accum: &mut Accum,
    consumer: &Consumer_,
    ingest: &OtlpIngest,
    dlq: Option<&(FutureProducer, String)>,
    ack_tx: &mpsc::Sender<Pending>,
    pending: &PendingAcks,
    metrics: &KafkaMetrics,
) -> bool {
    for p in &accum.positions {
        let labels = PartitionLabels {
            topic: p.topic.clone(),
            partition: p.partition.to_string(),
        };
        metrics.records.get_or_create(&labels).inc_by(p.messages);
        metrics.bytes.get_or_create(&labels).inc_by(p.bytes);
    }
    normalize_raw(accum, ingest, metrics, dlq).await;
    let intake = ingest.intake();
    for (batch, offsets) in accum.take() {
        // Held until acknowledged, twice the batch (it is kept here for a resend while the
        // pipeline joins it with others); reading pauses while the budget is spent.
        let budget = match batch
            .record_batch()
            .map(|b| b.get_array_memory_size().saturating_mul(2))
        {
            None => None,
            Some(bytes) => Some(match ingest.budget().try_reserve(bytes) {
                Ok(r) => r,
                Err(_) => {
                    let paused = consumer.assignment().ok();
                    if let Some(tpl) = &paused {
                        let _ = consumer.pause(tpl);
                        metrics.paused.set(tpl.count() as i64);
                        tracing::debug!(partitions = tpl.count(), "in-flight budget spent: partitions paused");
                    }
                    let r = ingest.budget().reserve(bytes).await;
                    if let Some(tpl) = &paused {
                        let _ = consumer.resume(tpl);
                        metrics.paused.set(0);
                    }
                    r
                }
            }),
        };
        let handoff = if matches!(batch, Batch::Idle) {
            None
        } else {
            match intake.try_reserve() {
                Ok(permit) => Some(permit.send(batch.clone())),
                Err(Backpressure::Closed) => return false,
                Err(Backpressure::Full) => {
                    let paused = consumer.assignment().ok();
                    if let Some(tpl) = &paused {
                        let _ = consumer.pause(tpl);
                        metrics.paused.set(tpl.count() as i64);
                        tracing::debug!(partitions = tpl.count(), "pipeline full: partitions paused");
                    }
                    let sent = intake.send(batch.clone()).await;
                    if let Some(tpl) = &paused {
                        let _ = consumer.resume(tpl);
                        metrics.paused.set(0);
                    }
                    match sent {
                        Ok(h) => Some(h),
                        Err(_) => return false,
                    }
                }
            }
        };
        pending.0.fetch_add(1, Ordering::AcqRel);
        metrics.pending.inc();
        let item = match handoff {
            Some(handoff) => Pending {
                handoff,
                batch,
                offsets,
                _budget: budget,
            },
            None => Pending {
                handoff: Handoff::done(),
                batch,
                offsets,
                _budget: budget,
            },
        };
        if ack_tx.send(item).await.is_err() {
            return false;
        }
    }
    true
}

/// Stores offsets in hand-off order; a batch whose processing failed is handed over again.
async fn acknowledge(
    mut rx: mpsc::Receiver<Pending>,
    consumer: Arc<Consumer_>,
    intake: Intake,
    pending: Arc<PendingAcks>,
    metrics: KafkaMetrics,
    held: crate::pipeline::HeldAlerts,
) {
    while let Some(mut p) = rx.recv().await {
        let mut attempt = 0u32;
        loop {
            match p.handoff.wait().await {
                Ok(()) => break,
                Err(error) if error.evaluated => {
                    // The rules counted these records; their alerts are held until a spool
                    // takes them. Handing them over again would count them twice: wait.
                    tracing::warn!(%error, "a Kafka batch's alerts are held; committing once they are spooled");
                    held.cleared().await;
                    break;
                }
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "a Kafka batch was not processed; handing it over again");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(50)))).await;
                    match intake.send(p.batch.clone()).await {
                        Ok(h) => p.handoff = h,
                        Err(_) => {
                            // Shutting down: the offsets stay unstored and the records are
                            // read again after the restart.
                            pending.0.fetch_sub(1, Ordering::AcqRel);
                            metrics.pending.dec();
                            return;
                        }
                    }
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &p.offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::warn!(error = %e, "bad offset");
            }
        }
        if tpl.count() > 0
            && let Err(error) = consumer.store_offsets(&tpl)
        {
            // After a rebalance the partition may belong to someone else now; they will
            // read these records again (at least once).
            tracing::debug!(%error, "could not store offsets");
        }
        pending.0.fetch_sub(1, Ordering::AcqRel);
        metrics.pending.dec();
    }
}

async fn handle_message(
    m: &BorrowedMessage<'_>,
    topics: &HashMap<String, TopicConfig>,
    ingest: &OtlpIngest,
    metrics: &KafkaMetrics,
    dlq: Option<&(FutureProducer, String)>,
    accum: &mut Accum,
) {
    let topic = m.topic();
    let origin = Origin {
        topic: topic.to_string(),
        partition: m.partition(),
        offset: m.offset(),
    };
    let payload = m.payload().unwrap_or_default();
    accum.started.get_or_insert_with(Instant::now);
    accum.position(topic, m.partition(), m.offset(), payload.len());
    let Some(tc) = topics.get(topic) else {
        return;
    };
    let poison = |why: String| {
        metrics
            .poison
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
        why
    };
    let signal = match tc.signal {
        Signal::Logs => "logs",
        Signal::Metrics => "metrics",
    };
    let failure: Option<String> = match (tc.encoding, tc.signal) {
        (Encoding::Raw, _) => match std::str::from_utf8(payload) {
            Ok(text) => {
                accum.rows += text.lines().count();
                accum.bytes = accum.bytes.saturating_add(text.len());
                accum.raw.push(RawMsg {
                    text: text.to_string(),
                    origin: origin.clone(),
                    key: m.key().map(<[u8]>::to_vec),
                    sender: crate::otlp::Sender::configured(tc.sender.as_deref()),
                });
                None
            }
            Err(e) => {
                let why = poison(format!("message is not UTF-8: {e}"));
                ingest.reject_message(
                    IngestSource::Kafka,
                    signal,
                    Rejection::new(RejectReason::InvalidUtf8, why.clone()),
                    String::from_utf8_lossy(payload).into_owned(),
                    Some(&origin),
                );
                Some(why)
            }
        },
        (enc, Signal::Logs) => match decode::<ExportLogsServiceRequest>(
            enc,
            payload,
            crate::otlp::decoded_size::Msg::LogsRequest,
            ingest.limits().max_decoded_bytes,
        ) {
            Ok(req) => {
                accum.add(
                    ingest
                        .logs_batch(
                            &req,
                            IngestSource::Kafka,
                            Some(&origin),
                            &crate::otlp::Sender::configured(tc.sender.as_deref()),
                        )
                        .0,
                );
                None
            }
            Err(e) => Some(undecodable(ingest, &origin, signal, payload, poison(e.to_string()))),
        },
        (enc, Signal::Metrics) => match decode::<ExportMetricsServiceRequest>(
            enc,
            payload,
            crate::otlp::decoded_size::Msg::MetricsRequest,
            ingest.limits().max_decoded_bytes,
        ) {
            Ok(req) => {
                accum.add(ingest.metrics_batch(&req, IngestSource::Kafka, Some(&origin)).0);
                None
            }
            Err(e) => Some(undecodable(ingest, &origin, signal, payload, poison(e.to_string()))),
        },
    };
    if let (Some(why), Some(dlq)) = (failure, dlq) {
        to_dead_letter_topic(dlq, &origin, m.key(), payload, &why).await;
    }
}

async fn to_dead_letter_topic(
    (producer, dlq_topic): &(FutureProducer, String),
    origin: &Origin,
    key: Option<&[u8]>,
    payload: &[u8],
    why: &str,
) {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "verity.source.topic",
            value: Some(&origin.topic),
        })
        .insert(Header {
            key: "verity.source.partition",
            value: Some(&origin.partition.to_string()),
        })
        .insert(Header {
            key: "verity.source.offset",
            value: Some(&origin.offset.to_string()),
        })
        .insert(Header {
            key: "verity.error",
            value: Some(why),
        });
    let mut record = FutureRecord::to(dlq_topic).payload(payload).headers(headers);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Err((error, _)) = producer.send(record, Duration::from_secs(10)).await {
        // The dead-letter file has it regardless.
        tracing::warn!(%error, "could not produce to the dead-letter topic");
    }
}

/// Normalizes the raw-lines messages read so far in one pass. A message none of whose lines
/// could be used is a poison message.
async fn normalize_raw(
    accum: &mut Accum,
    ingest: &OtlpIngest,
    metrics: &KafkaMetrics,
    dlq: Option<&(FutureProducer, String)>,
) {
    if accum.raw.is_empty() {
        return;
    }
    let raw = std::mem::take(&mut accum.raw);
    let mut owner: Vec<usize> = Vec::new();
    let mut lines_per_msg = vec![0usize; raw.len()];
    let mut lines: Vec<(&str, Option<&Origin>, &crate::otlp::Sender)> = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        for l in m.text.lines().filter(|l| !l.trim().is_empty()) {
            owner.push(i);
            lines_per_msg[i] += 1;
            lines.push((l, Some(&m.origin), &m.sender));
        }
    }
    let (batch, rejected) = ingest.lines_batch(lines.into_iter(), IngestSource::Kafka);
    accum.add(batch);
    let mut rejected_per_msg = vec![0usize; raw.len()];
    for pos in rejected {
        if let Some(&i) = owner.get(pos) {
            rejected_per_msg[i] += 1;
        }
    }
    for (i, m) in raw.iter().enumerate() {
        let n = lines_per_msg[i];
        if n > 0 && rejected_per_msg[i] == n {
            metrics
                .poison
                .get_or_create(&TopicLabel {
                    topic: m.origin.topic.clone(),
                })
                .inc();
            if let Some(dlq) = dlq {
                let why = format!("none of the {n} line(s) could be normalized");
                to_dead_letter_topic(dlq, &m.origin, m.key.as_deref(), m.text.as_bytes(), &why).await;
            }
        }
    }
}

fn undecodable(ingest: &OtlpIngest, origin: &Origin, signal: &str, payload: &[u8], why: String) -> String {
    let raw = match std::str::from_utf8(payload) {
        Ok(s) => s.to_string(),
        Err(_) => format!("base16:{}", hex_prefix(payload)),
    };
    ingest.reject_message(
        IngestSource::Kafka,
        signal,
        Rejection::new(RejectReason::UndecodableMessage, why.clone()),
        raw,
        Some(origin),
    );
    why
}

/// The first 4 KiB of a binary payload as hex: enough to inspect, bounded in size.
fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(4096).map(|x| format!("{x:02x}")).collect()
}

/// Why a Kafka message's payload is not an OTLP request. A poison message: it is dead-lettered
/// (file and topic) and its offset committed like any other.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the message would take more than intake.limits.max_decoded_bytes ({limit}) once decoded")]
    TooLarge { limit: usize },
    #[error("not OTLP protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not OTLP/JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("raw is not an OTLP encoding")]
    NotOtlp,
}

/// Decodes one message's payload as the topic's OTLP encoding, after checking what it would
/// cost once decoded (`otlp::decoded_size`), so a small message cannot claim a large one.
pub fn decode<T: prost::Message + Default + serde::de::DeserializeOwned>(
    enc: Encoding,
    payload: &[u8],
    root: crate::otlp::decoded_size::Msg,
    limit: usize,
) -> Result<T, DecodeError> {
    let measured = match enc {
        Encoding::OtlpProto => crate::otlp::decoded_size::protobuf(payload, root, limit),
        Encoding::OtlpJson => crate::otlp::decoded_size::json(payload, limit),
        Encoding::Raw => return Err(DecodeError::NotOtlp),
    };
    if measured.is_none() {
        return Err(DecodeError::TooLarge { limit });
    }
    match enc {
        Encoding::OtlpProto => Ok(T::decode(payload)?),
        Encoding::OtlpJson => Ok(serde_json::from_slice(payload)?),
        Encoding::Raw => Err(DecodeError::NotOtlp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> verity_rules::rule::RuleFile {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn warns_about_rules_the_partitioning_cannot_serve() {
        let rules = vec![
            rule(
                "id: burst\ntitle: t\nseverity: low\nkind: detection\ndetection:\n  where: 'true'\n  group_by: [source_principal]\n  window: {type: tumbling, size: 1m}\n  having: count(*) > 1\n",
            ),
            rule(
                "id: ns\ntitle: t\nseverity: low\nkind: assertion\nassertion:\n  scope: 'true'\n  require: mtls\n  per: [destination_namespace]\n  stale_after: 5m\n",
            ),
            rule("id: stateless\ntitle: t\nseverity: low\nkind: detection\ndetection:\n  where: 'true'\n"),
        ];
        let topic = TopicConfig {
            name: "mesh".into(),
            encoding: Encoding::Raw,
            signal: Signal::Logs,
            key: Some("source_principal".into()),
            sender: None,
        };
        let w = partitioning_warnings(&rules, &topic);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("rule ns"), "{w:?}");
        let unkeyed = TopicConfig { key: None, ..topic };
        assert!(partitioning_warnings(&rules, &unkeyed).is_empty());
    }

    #[test]
    fn config_checks() {
        let mut c = KafkaConfig {
            enabled: true,
            brokers: "b:9092".into(),
            topics: vec![TopicConfig {
                name: "t".into(),
                encoding: Encoding::Raw,
                signal: Signal::Metrics,
                key: Some("no_such_column".into()),
                sender: None,
            }],
            ..KafkaConfig::default()
        };
        c.properties.insert("enable.auto.offset.store".into(), "true".into());
        let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"kafka.topics[0].signal".to_string()), "{keys:?}");
        assert!(keys.contains(&"kafka.topics[0].key".to_string()), "{keys:?}");
        assert!(
            keys.contains(&"kafka.properties.enable.auto.offset.store".to_string()),
            "{keys:?}"
        );
    }
}
