//! The acknowledger: awaits each batch's pipeline hand-off in order and only then stores its
//! offsets, so a commit never covers a record whose alerts are not in the spools.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::pipeline::Intake;

use super::accumulate::Pending;
use super::metrics::KafkaMetrics;
use super::rebalance::{Consumer_, PendingAcks};

/// Stores offsets in hand-off order; a batch whose processing failed is handed over again.
pub(super) async fn acknowledge(
    mut rx: mpsc::Receiver<Pending>,
    consumer: Arc<Consumer_>,
    intake: Intake,
    pending: Arc<PendingAcks>,
    metrics: KafkaMetrics,
    held: crate::pipeline::HeldAlerts,
    states: Option<Arc<super::state_topic::StateTopic>>,
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
        if let Some(states) = &states {
            // Stored once a snapshot covers them (see `state_topic`).
            states.processed(&p.offsets);
            pending.0.fetch_sub(1, Ordering::AcqRel);
            metrics.pending.dec();
            continue;
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
