//! Repartitioning: every instance of a consumer group sends each event row, once per key set
//! of the loaded stateful rules, to that set's repartition topic, in the partition a hash of
//! the row's key columns picks. A second consumer (group `<application_id>-repartition`) reads
//! those topics, so all rows of one key meet on one instance, whatever the input's keying.
//!
//! - Rows travel as Arrow IPC streams of at most [`MAX_MESSAGE_BYTES`] each (dictionaries
//!   compacted to the rows sent; halved until they fit).
//! - The input's rules stage forwards a batch here once it has committed to evaluating it
//!   (`pipeline::rules::Forward`), and waits until the broker has acknowledged every message:
//!   the input's offsets are stored after that. Messages the broker does not take are sent
//!   again (only those), holding the pipeline meanwhile (sources push back). A row too large
//!   for any message is logged and counted, the one thing the broker can never take.
//! - Decoding checks a message holds event rows with exactly the event schema; anything else
//!   is a poison message (dead-lettered like any other). Only Verity may write these topics:
//!   protect them with ACLs, as their rows are taken as normalized.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use verity_rules::key_sets::keyed_stream_name;

use super::KafkaError;
use super::config::{Encoding, KafkaConfig, TopicConfig};
use super::metrics::TopicLabel;
use crate::pipeline::rules::Forward;

mod rows;
pub use rows::{MAX_MESSAGE_BYTES, RowsError, decode_rows, encode, partition_rows};

/// One key set's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub topic: String,
    pub keys: Vec<String>,
    pub partitions: i32,
}

/// The repartition topics for `key_sets`, created when missing: with `partitions` from the
/// config, or as many as the input topic with the most. Returns each with its partition
/// count as the broker reports it (all instances hash the same way).
pub async fn prepare_routes(cfg: &KafkaConfig, key_sets: &[Vec<String>]) -> Result<Vec<Route>, KafkaError> {
    let rp = &cfg.repartition;
    let client = client_config(cfg)?;
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(|e| KafkaError::Create(e.to_string()))?;
    let timeout = Duration::from_secs(30);
    let partitions_of = |topic: &str| -> Result<i32, KafkaError> {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| KafkaError::Repartition(format!("metadata of {topic}: {e}")))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
    };
    let wanted = if rp.partitions > 0 {
        i32::try_from(rp.partitions).unwrap_or(i32::MAX)
    } else {
        let mut most = 0;
        for t in &cfg.topics {
            most = most.max(partitions_of(&t.name)?);
        }
        most.max(1)
    };
    let names: Vec<(String, Vec<String>)> = key_sets
        .iter()
        .map(|k| (keyed_stream_name(cfg.application_id(), k), k.clone()))
        .collect();
    if rp.create_topics {
        let new: Vec<NewTopic<'_>> = names
            .iter()
            .map(|(n, _)| NewTopic::new(n, wanted, TopicReplication::Fixed(rp.replication_factor)))
            .collect();
        let results = admin
            .create_topics(&new, &AdminOptions::new().operation_timeout(Some(timeout)))
            .await
            .map_err(|e| KafkaError::Repartition(format!("creating repartition topics: {e}")))?;
        for r in results {
            match r {
                Ok(topic) => tracing::info!(%topic, partitions = wanted, "repartition topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::Repartition(format!("creating {topic}: {code}")));
                }
            }
        }
    }
    let mut routes = Vec::with_capacity(names.len());
    for (topic, keys) in names {
        // A topic just created may take a moment to show in metadata.
        let mut partitions = 0;
        for _ in 0..50 {
            partitions = partitions_of(&topic)?;
            if partitions > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if partitions == 0 {
            return Err(KafkaError::Repartition(format!(
                "repartition topic {topic} does not exist (create it, or set kafka.repartition.create_topics)"
            )));
        }
        routes.push(Route {
            topic,
            keys,
            partitions,
        });
    }
    Ok(routes)
}

/// Brokers, the security properties and their secrets: what any client of the cluster needs.
pub(super) fn client_config(cfg: &KafkaConfig) -> Result<ClientConfig, KafkaError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            cc.set(k, v);
        }
    }
    super::set_secret_properties(&mut cc, cfg)?;
    Ok(cc)
}

/// The consumer side: the input's settings, in group `<application_id>-repartition`, over
/// the repartition topics.
pub fn consumer_config(cfg: &KafkaConfig, routes: &[Route]) -> KafkaConfig {
    KafkaConfig {
        group_id: format!("{}-repartition", cfg.application_id()),
        // Prefetch across every repartition partition stays small (librdkafka's default is
        // 64 MiB), next to the in-flight budget.
        properties: {
            let mut p = cfg.properties.clone();
            p.entry("queued.max.messages.kbytes".into())
                .or_insert_with(|| "16384".into());
            p
        },
        topics: routes
            .iter()
            .map(|r| TopicConfig {
                name: r.topic.clone(),
                encoding: Encoding::ArrowIpc,
                signal: super::Signal::Logs,
                key: None,
                sender: None,
            })
            .collect(),
        ..cfg.clone()
    }
}

/// Repartitioning metrics.
#[derive(Clone)]
pub struct RepartitionMetrics {
    rows: Family<TopicLabel, Counter>,
    messages: Family<TopicLabel, Counter>,
    retries: Counter,
    too_large: Counter,
}

impl RepartitionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            rows: Family::default(),
            messages: Family::default(),
            retries: Counter::default(),
            too_large: Counter::default(),
        };
        registry.register(
            "verity_kafka_repartitioned_rows",
            "Event rows sent to a repartition topic",
            m.rows.clone(),
        );
        registry.register(
            "verity_kafka_repartition_messages",
            "Messages produced to a repartition topic",
            m.messages.clone(),
        );
        registry.register(
            "verity_kafka_repartition_retries",
            "Attempts at sending again the repartition messages the broker did not take",
            m.retries.clone(),
        );
        registry.register(
            "verity_kafka_repartition_oversized_rows",
            "Rows too large for any repartition message (each logged): the stateful rules of other instances do not see them",
            m.too_large.clone(),
        );
        m
    }
}

/// Sends event rows to the repartition topics: the input rules stage's [`Forward`].
pub struct Repartitioner {
    producer: FutureProducer,
    routes: Vec<Route>,
    metrics: RepartitionMetrics,
    signing: Option<Arc<super::signing::MessageKey>>,
}

impl Repartitioner {
    pub fn new(cfg: &KafkaConfig, routes: Vec<Route>, metrics: RepartitionMetrics) -> Result<Self, KafkaError> {
        let mut cc = client_config(cfg)?;
        // Acknowledged by every in-sync replica, and not reordered or duplicated by retries.
        cc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.max.bytes", "1000000")
            // One batch's messages are in flight at a time; bound librdkafka's queue to that.
            .set("queue.buffering.max.kbytes", "65536");
        let producer = cc.create().map_err(|e| KafkaError::Create(e.to_string()))?;
        Ok(Self {
            producer,
            routes,
            metrics,
            signing: super::signing_key(cfg)?,
        })
    }

    /// Sends every message and waits for the broker to take them all. Those it did not take
    /// are sent again, until it does (at least once: a message whose acknowledgement was lost
    /// may arrive twice; none is skipped).
    fn send_all(&self, mut messages: Vec<(usize, i32, Vec<u8>)>) {
        let mut attempt = 0u32;
        while !messages.is_empty() {
            let mut waiting = Vec::with_capacity(messages.len());
            let mut failed = Vec::new();
            let mut error: Option<String> = None;
            for (route, partition, payload) in messages {
                let Some(topic) = self.routes.get(route).map(|r| r.topic.as_str()) else {
                    continue;
                };
                let sent = loop {
                    let mut record = FutureRecord::<(), [u8]>::to(topic)
                        .payload(payload.as_slice())
                        .partition(partition);
                    if let Some(key) = &self.signing {
                        record = record.headers(key.sign(topic, payload.as_slice()));
                    }
                    match self.producer.send_result(record) {
                        Ok(delivery) => break Some(delivery),
                        Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err((e, _)) => {
                            error.get_or_insert(e.to_string());
                            break None;
                        }
                    }
                };
                match sent {
                    Some(delivery) => waiting.push((route, partition, payload, delivery)),
                    None => failed.push((route, partition, payload)),
                }
            }
            for (route, partition, payload, delivery) in waiting {
                match futures::executor::block_on(delivery) {
                    Ok(Ok(_)) => {
                        if let Some(r) = self.routes.get(route) {
                            self.metrics
                                .messages
                                .get_or_create(&TopicLabel { topic: r.topic.clone() })
                                .inc();
                        }
                    }
                    Ok(Err((e, _))) => {
                        error.get_or_insert(e.to_string());
                        failed.push((route, partition, payload));
                    }
                    Err(_) => {
                        error.get_or_insert("the producer was dropped".into());
                        failed.push((route, partition, payload));
                    }
                }
            }
            if failed.is_empty() {
                return;
            }
            attempt = attempt.saturating_add(1);
            self.metrics.retries.inc();
            tracing::warn!(
                error = error.as_deref().unwrap_or("unknown"),
                messages = failed.len(),
                attempt,
                "the broker did not take repartitioned rows; sending them again"
            );
            std::thread::sleep(Duration::from_millis(100u64.saturating_mul(u64::from(attempt.min(50)))));
            messages = failed;
        }
    }
}

impl Forward for Repartitioner {
    fn forward(&mut self, b: &RecordBatch) {
        if b.num_rows() == 0 {
            return;
        }
        let mut messages = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let parts = match partition_rows(b, &route.keys, route.partitions) {
                Ok(p) => p,
                // The key columns are the event schema's (checked when the rules load).
                Err(error) => {
                    tracing::error!(%error, topic = %route.topic, "cannot partition a batch for repartitioning");
                    continue;
                }
            };
            for (partition, rows) in parts.into_iter().enumerate() {
                if rows.is_empty() {
                    continue;
                }
                let partition = i32::try_from(partition).unwrap_or(0);
                let (payloads, oversized) = encode(b, &rows);
                for row in oversized {
                    self.metrics.too_large.inc();
                    tracing::error!(topic = %route.topic, row, "an event row is too large for a repartition message; other instances' stateful rules will not see it");
                }
                for payload in payloads {
                    messages.push((i, partition, payload));
                }
            }
            self.metrics
                .rows
                .get_or_create(&TopicLabel {
                    topic: route.topic.clone(),
                })
                .inc_by(b.num_rows() as u64);
        }
        self.send_all(messages);
    }
}
