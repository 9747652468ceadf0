//! The consumer context: librdkafka statistics into metrics, and rebalances that wait for
//! pending acknowledgements before partitions are handed over.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::statistics::Statistics;

use super::metrics::{KafkaMetrics, PartitionLabels};

/// Counts batches handed over but not yet acknowledged, so a rebalance can wait for them.
#[derive(Default)]
pub(super) struct PendingAcks(pub(super) AtomicUsize);

/// Partitions revoked since the reading loop last looked. What the loop read from them and has
/// not handed over yet is dropped: their next owner reads it again from the committed offset,
/// so handing it over here too would evaluate (and repartition) those records twice.
#[derive(Default)]
pub(super) struct Revoked(Mutex<Vec<(String, i32)>>);

impl Revoked {
    fn add(&self, tpl: &TopicPartitionList) {
        let mut r = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.extend(tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())));
    }

    /// The partitions revoked since the last call.
    pub(super) fn take(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

pub(super) struct Context {
    pub(super) metrics: KafkaMetrics,
    pub(super) pending: Arc<PendingAcks>,
    pub(super) rebalance_timeout: Duration,
    pub(super) revoked: Arc<Revoked>,
    /// The repartition consumer's rule state, moved with its partitions (see
    /// [`super::state_topic`]).
    pub(super) states: Option<Arc<super::state_topic::StateTopic>>,
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
            if let Some(states) = &self.states {
                // Snapshots first: the offsets stored below are those a snapshot covers.
                let covered = states.on_revoke(tpl, left == 0);
                if covered.count() > 0
                    && let Err(error) = consumer.store_offsets(&covered)
                {
                    tracing::debug!(%error, "could not store offsets covered by a snapshot");
                }
            }
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(%error, "commit before revoke");
            }
            self.revoked.add(tpl);
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
            // Before any of their messages is handed to this instance's engine.
            if let Some(states) = &self.states {
                states.on_assign(tpl);
            }
        }
    }
}

pub(super) type Consumer_ = StreamConsumer<Context>;
