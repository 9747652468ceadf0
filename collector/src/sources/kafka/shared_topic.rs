//! A compacted topic that every instance of a deployment writes and reads whole: shared
//! state that is small and changes rarely (the revocations in force). Each value is the
//! latest word on its key, so compaction keeps exactly what a new instance needs.
//!
//! - Writing never blocks the caller: [`SharedTopic::publish`] keeps the latest value per key
//!   until the broker acknowledges it (`acks=all`); what the broker does not take is sent
//!   again with backoff (a value published meanwhile replaces it). Pending values are bounded by the keys the
//!   caller has, not by time or outages.
//! - Reading starts at the beginning of every partition, without a consumer group (every
//!   instance reads everything), and hands each value to a handler on the blocking pool.
//!   Values larger than [`MAX_VALUE_BYTES`], or refused by the handler, are counted as poison
//!   and logged; only Verity may write the topic (protect it with ACLs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use verity_drain::Watcher;

use super::KafkaError;
use super::config::KafkaConfig;
use super::repartition::client_config;
use super::signing::MessageKey;

/// One shared value at most this large (a revocation is about a kilobyte).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Says whether a value read from the topic was taken (false: poison).
pub type Handler = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    sent,
    retried,
    received,
    poison,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SharedLabel {
    topic: String,
    direction: Direction,
}

/// Shared-topic metrics.
#[derive(Clone)]
pub struct SharedTopicMetrics {
    messages: Family<SharedLabel, Counter>,
}

impl SharedTopicMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            messages: Family::default(),
        };
        registry.register(
            "verity_kafka_shared_messages",
            "Messages of a shared compacted topic (revocations), by direction: sent (acknowledged), retried, received, poison",
            m.messages.clone(),
        );
        m
    }

    fn count(&self, topic: &str, direction: Direction) {
        self.messages
            .get_or_create(&SharedLabel {
                topic: topic.to_string(),
                direction,
            })
            .inc();
    }
}

/// Creates `topic` (one partition, compacted) when missing, if `kafka.repartition.create_topics`
/// allows it.
pub async fn create_compacted(cfg: &KafkaConfig, topic: &str) -> Result<(), KafkaError> {
    if !cfg.repartition.create_topics {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)?
        .create()
        .map_err(|e| KafkaError::Create(e.to_string()))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(cfg.repartition.replication_factor))
        .set("cleanup.policy", "compact");
    let results = admin
        .create_topics(
            &[new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| KafkaError::Repartition(format!("creating {topic}: {e}")))?;
    for r in results {
        match r {
            Ok(topic) => tracing::info!(%topic, "compacted topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::Repartition(format!("creating {topic}: {code}"))),
        }
    }
    Ok(())
}

/// One shared topic: what is waiting to be written, and its metrics.
pub struct SharedTopic {
    topic: String,
    pending: Mutex<BTreeMap<String, Vec<u8>>>,
    wake: Notify,
    metrics: SharedTopicMetrics,
    signing: Option<Arc<MessageKey>>,
}

impl SharedTopic {
    /// `signing`: the deployment's message key, if it has one (see [`super::signing`]).
    pub fn new(topic: String, metrics: SharedTopicMetrics, signing: Option<Arc<MessageKey>>) -> Arc<Self> {
        for d in [
            Direction::sent,
            Direction::retried,
            Direction::received,
            Direction::poison,
        ] {
            let _ = metrics.messages.get_or_create(&SharedLabel {
                topic: topic.clone(),
                direction: d,
            });
        }
        Arc::new(Self {
            topic,
            pending: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            metrics,
            signing,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn pending(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        match self.pending.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Queues `value` as the latest word on `key`; returns at once.
    pub fn publish(&self, key: &str, value: Vec<u8>) {
        self.pending().insert(key.to_string(), value);
        self.wake.notify_one();
    }

    /// Values not yet acknowledged.
    pub fn backlog(&self) -> usize {
        self.pending().len()
    }

    /// Creates the topic (one partition, compacted) when missing and allowed to.
    pub async fn prepare(&self, cfg: &KafkaConfig) -> Result<(), KafkaError> {
        create_compacted(cfg, &self.topic).await
    }

    /// Writes what is published until the drain starts, then what is still pending, for at
    /// most `last_try`.
    pub async fn run_writer(self: Arc<Self>, cfg: KafkaConfig, mut drain: Watcher, last_try: Duration) {
        let producer: FutureProducer = match client_config(&cfg).and_then(|mut cc| {
            cc.set("acks", "all")
                .set("enable.idempotence", "true")
                .create()
                .map_err(|e| KafkaError::Create(e.to_string()))
        }) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%error, topic = %self.topic, "cannot write the shared topic; other instances will not learn this one's changes");
                return;
            }
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            let all_sent = self.send_pending(&producer).await;
            backoff = if all_sent {
                Duration::from_millis(200)
            } else {
                (backoff * 2).min(Duration::from_secs(10))
            };
            tokio::select! {
                () = self.wake.notified(), if all_sent => {}
                () = tokio::time::sleep(backoff), if !all_sent => {}
                () = drain.wait() => break,
            }
        }
        if tokio::time::timeout(last_try, self.send_pending(&producer))
            .await
            .is_err()
            || self.backlog() > 0
        {
            tracing::warn!(topic = %self.topic, pending = self.backlog(),
                "shared values not written at shutdown; they are shared again at the next start");
        }
    }

    /// Sends every pending value once; true if the broker took them all.
    async fn send_pending(&self, producer: &FutureProducer) -> bool {
        let batch = std::mem::take(&mut *self.pending());
        let mut all = true;
        for (key, value) in batch {
            let mut record = FutureRecord::to(&self.topic).key(&key).payload(&value);
            if let Some(signing) = &self.signing {
                record = record.headers(signing.sign(&self.topic, &value));
            }
            match producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => self.metrics.count(&self.topic, Direction::sent),
                Err((error, _)) => {
                    all = false;
                    self.metrics.count(&self.topic, Direction::retried);
                    tracing::warn!(%error, topic = %self.topic, %key, "could not write a shared value; trying again");
                    // A newer value published meanwhile wins.
                    self.pending().entry(key).or_insert(value);
                }
            }
        }
        all
    }

    /// Reads the whole topic from its beginning, then follows it, until the drain starts.
    pub async fn run_reader(self: Arc<Self>, cfg: KafkaConfig, handler: Handler, mut drain: Watcher) {
        let consumer = match self.reader(&cfg) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, topic = %self.topic, "cannot read the shared topic; other instances' changes are not seen");
                return;
            }
        };
        loop {
            let message = tokio::select! {
                m = consumer.recv() => m,
                () = drain.wait() => return,
            };
            let m = match message {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topic, "reading the shared topic");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // A tombstone: nothing to learn (values carry their own end).
            let Some(payload) = m.payload() else { continue };
            if payload.len() > MAX_VALUE_BYTES {
                self.metrics.count(&self.topic, Direction::poison);
                tracing::warn!(topic = %self.topic, offset = m.offset(), bytes = payload.len(), "shared value too large; ignored");
                continue;
            }
            if let Some(Err(error)) = self
                .signing
                .as_ref()
                .map(|k| k.verify(&self.topic, payload, m.headers()))
            {
                self.metrics.count(&self.topic, Direction::poison);
                tracing::warn!(topic = %self.topic, offset = m.offset(), %error, "shared value refused");
                continue;
            }
            let (h, value) = (handler.clone(), payload.to_vec());
            let taken = tokio::task::spawn_blocking(move || h(&value)).await.unwrap_or(false);
            let direction = if taken { Direction::received } else { Direction::poison };
            if !taken {
                tracing::warn!(topic = %self.topic, offset = m.offset(), "shared value refused; ignored");
            }
            self.metrics.count(&self.topic, direction);
        }
    }

    /// A consumer assigned every partition of the topic from the beginning, in no group.
    fn reader(&self, cfg: &KafkaConfig) -> Result<StreamConsumer, KafkaError> {
        let consumer: StreamConsumer = client_config(cfg)?
            .set("group.id", format!("{}-reader", self.topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| KafkaError::Create(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        // A topic just created may take a moment to show in metadata.
        for _ in 0..50 {
            let md = consumer
                .fetch_metadata(Some(&self.topic), Duration::from_secs(30))
                .map_err(|e| KafkaError::Repartition(format!("metadata of {}: {e}", self.topic)))?;
            for t in md
                .topics()
                .iter()
                .filter(|t| t.name() == self.topic && t.error().is_none())
            {
                for p in t.partitions() {
                    tpl.add_partition_offset(&self.topic, p.id(), Offset::Beginning)
                        .map_err(|e| KafkaError::Repartition(e.to_string()))?;
                }
            }
            if tpl.count() > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if tpl.count() == 0 {
            return Err(KafkaError::Repartition(format!(
                "shared topic {} does not exist (create it, or set kafka.repartition.create_topics)",
                self.topic
            )));
        }
        consumer
            .assign(&tpl)
            .map_err(|e| KafkaError::Repartition(format!("assigning {}: {e}", self.topic)))?;
        Ok(consumer)
    }
}
