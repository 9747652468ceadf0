//! The Kafka source's metrics: consumer lag and messages per partition, librdkafka's own
//! statistics, and batches waiting for acknowledgement.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct PartitionLabels {
    pub(super) topic: String,
    pub(super) partition: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct TopicLabel {
    pub(super) topic: String,
}

/// Kafka source metrics. Labels are topics from the config and their partitions.
#[derive(Clone)]
pub struct KafkaMetrics {
    pub(super) records: Family<PartitionLabels, Counter>,
    pub(super) bytes: Family<PartitionLabels, Counter>,
    pub(super) lag: Family<PartitionLabels, Gauge>,
    pub(super) committed: Family<PartitionLabels, Gauge>,
    pub(super) poison: Family<TopicLabel, Counter>,
    pub(super) rebalances: Counter,
    pub(super) revoked_unread: Family<TopicLabel, Counter>,
    pub(super) paused: Gauge,
    pub(super) pending: Gauge,
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
            revoked_unread: Family::default(),
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
            "verity_kafka_revoked_unprocessed_messages",
            "Messages read but not yet handed to the pipeline when their partition was revoked: left to the partition's next owner, which reads them from the committed offset",
            m.revoked_unread.clone(),
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
