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
//!   What was read from them and not handed over yet is dropped: the new owner reads it again.

mod accumulate;
mod acknowledge;
mod config;
mod message;
mod metrics;
mod rebalance;
pub mod repartition;
pub mod shared_topic;
pub mod signing;
pub mod state_topic;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Message};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::ingest::Ingest;
use crate::pipeline::{Backpressure, Batch, Handoff};

use accumulate::{Accum, Pending};
use acknowledge::acknowledge;
pub use config::{Encoding, KafkaConfig, RepartitionConfig, Signal, TopicConfig, partitioning_warnings};
pub use message::{DecodeError, decode};
use message::{handle_message, normalize_raw};
pub use metrics::KafkaMetrics;
use metrics::{PartitionLabels, TopicLabel};
use rebalance::{Consumer_, Context, PendingAcks, Revoked};

/// The Kafka source: a consumer-group member over `cfg.topics`.
pub struct KafkaSource {
    pub config: KafkaConfig,
    pub ingest: Arc<Ingest>,
    pub metrics: KafkaMetrics,
    /// For the repartition consumer: rule state moved with its partitions.
    pub state: Option<Arc<state_topic::StateTopic>>,
}

impl crate::sources::Source for KafkaSource {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn run(self: Box<Self>, drain: verity_drain::Watcher) -> crate::sources::SourceFuture {
        let this = *self;
        Box::pin(
            async move {
                run(this.config, this.ingest, this.metrics, this.state, drain.signaled())
                    .await
                    .map_err(Into::into)
            }
            .instrument(tracing::info_span!("kafka")),
        )
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
    #[error("kafka.repartition: {0}")]
    Repartition(String),
}

/// Runs the consumer until `stop` resolves, then stores and commits what was processed.
pub async fn run(
    cfg: KafkaConfig,
    ingest: Arc<Ingest>,
    metrics: KafkaMetrics,
    states: Option<Arc<state_topic::StateTopic>>,
    stop: impl Future<Output = ()>,
) -> Result<(), KafkaError> {
    let pending_acks = Arc::new(PendingAcks::default());
    let revoked = Arc::new(Revoked::default());
    let ctx = Context {
        metrics: metrics.clone(),
        pending: pending_acks.clone(),
        rebalance_timeout: Duration::from_secs(cfg.rebalance_timeout_secs),
        revoked: revoked.clone(),
        states: states.clone(),
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
    set_secret_properties(&mut cc, &cfg)?;
    let dlq: Option<(FutureProducer, String)> = match &cfg.dead_letter_topic {
        Some(t) => Some((
            repartition::client_config(&cfg)?
                .create()
                .map_err(|e| KafkaError::Create(e.to_string()))?,
            t.clone(),
        )),
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
    let signing = signing_key(&cfg)?;
    let (ack_tx, ack_rx) = mpsc::channel::<Pending>(cfg.max_pending_batches.max(1));
    let acker = tokio::spawn(
        acknowledge(
            ack_rx,
            consumer.clone(),
            ingest.intake().clone(),
            pending_acks.clone(),
            metrics.clone(),
            ingest.held_alerts().clone(),
            states.clone(),
        )
        .instrument(tracing::info_span!("kafka_ack")),
    );

    let max_delay = Duration::from_millis(cfg.max_batch_delay_ms);
    let mut accum = Accum::new();
    tokio::pin!(stop);
    // One timer for the batch age, re-armed when a batch starts (not one per message).
    let age = tokio::time::sleep(max_delay);
    tokio::pin!(age);
    let snapshot_every = Duration::from_secs(cfg.repartition.state_snapshot_secs.max(1));
    let snapshot = tokio::time::sleep(snapshot_every);
    tokio::pin!(snapshot);
    loop {
        let flush = tokio::select! {
            biased;
            () = &mut stop => break,
            () = &mut age, if accum.started.is_some() => true,
            () = &mut snapshot, if states.is_some() => {
                if let Some(states) = &states {
                    write_snapshots(states, &consumer, &pending_acks).await;
                }
                snapshot.as_mut().reset(tokio::time::Instant::now() + snapshot_every);
                false
            }
            msg = consumer.recv() => match msg {
                Ok(m) => {
                    if accum.started.is_none() {
                        age.as_mut().reset(tokio::time::Instant::now() + max_delay);
                    }
                    // A rebalance may have run inside `recv`.
                    drop_revoked(&mut accum, &revoked, &metrics);
                    if let Some(states) = &states
                        && states.skip(m.topic(), m.partition(), m.offset())
                    {
                        accum.skip(m.topic(), m.partition(), m.offset());
                        continue;
                    }
                    handle_message(&m, &topics, signing.as_deref(), &ingest, &metrics, dlq.as_ref(), &mut accum).await;
                    accum.rows >= cfg.max_batch_records || accum.bytes >= ingest.limits().max_request_rows_bytes
                }
                Err(error) => {
                    tracing::warn!(%error, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    false
                }
            },
        };
        // What was read ahead from partitions revoked since (inside `recv`) is their next
        // owner's, or read again here from the committed offset: never evaluated now.
        drop_revoked(&mut accum, &revoked, &metrics);
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
    drop_revoked(&mut accum, &revoked, &metrics);
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
    if let Some(states) = &states {
        // Everything handed over is evaluated: the last snapshot covers all of it. The
        // drain then closes the open windows here; the next owner continues them from
        // this snapshot (and may raise their alerts again, with the same ids).
        write_snapshots(states, &consumer, &pending_acks).await;
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("Kafka offsets committed"),
        Err(error) => tracing::debug!(%error, "final Kafka commit"),
    }
    consumer.unsubscribe();
    Ok(())
}

/// Drops what was read from partitions revoked since the last call and not handed over yet.
fn drop_revoked(accum: &mut Accum, revoked: &Revoked, metrics: &KafkaMetrics) {
    for p in accum.drop_partitions(&revoked.take()) {
        metrics
            .revoked_unread
            .get_or_create(&TopicLabel { topic: p.topic.clone() })
            .inc_by(p.messages);
        tracing::debug!(
            topic = %p.topic,
            partition = p.partition,
            messages = p.messages,
            "read-ahead of a revoked partition left to its next owner"
        );
    }
}

/// Once every batch handed over is evaluated (waiting at most 5 s; reading waits too),
/// snapshots the owned partitions' rule state and stores the offsets the snapshots cover.
async fn write_snapshots(states: &Arc<state_topic::StateTopic>, consumer: &Consumer_, pending: &PendingAcks) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pending.0.load(Ordering::Acquire) > 0 {
        if std::time::Instant::now() > deadline {
            states.skipped();
            tracing::warn!("the pipeline did not catch up for a rule state snapshot; trying at the next interval");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = states.clone();
    let Ok(covered) = tokio::task::spawn_blocking(move || s.write_due()).await else {
        return;
    };
    if covered.count() > 0
        && let Err(error) = consumer.store_offsets(&covered)
    {
        tracing::debug!(%error, "could not store offsets covered by a snapshot");
    }
}

/// Sets `kafka.secret_properties` on a client's config, each resolved from its source: every
/// client of the cluster (consumers, producers, admin) needs them.
pub(super) fn set_secret_properties(cc: &mut ClientConfig, cfg: &KafkaConfig) -> Result<(), KafkaError> {
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
    Ok(())
}

/// The key signing the messages instances send each other, if one is configured.
pub fn signing_key(cfg: &KafkaConfig) -> Result<Option<Arc<signing::MessageKey>>, KafkaError> {
    let Some(source) = &cfg.repartition.signing_key else {
        return Ok(None);
    };
    let secret = |e: verity_secret::SecretError| KafkaError::Secret {
        key: "repartition.signing_key".into(),
        message: e.to_string(),
    };
    let value = verity_secret::Secret::resolve(source)
        .and_then(|s| s.value())
        .map_err(secret)?;
    Ok(Some(Arc::new(signing::MessageKey::new(value.as_bytes()))))
}

/// Sends what was accumulated into the pipeline, pausing the partitions while it is full.
/// Returns false when the pipeline is closed.
#[allow(clippy::too_many_arguments)]
async fn hand_over(
    accum: &mut Accum,
    consumer: &Consumer_,
    ingest: &Ingest,
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
