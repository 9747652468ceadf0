//! Repartitioning: every instance of a consumer group sends each event row, once per key set
//! of the loaded stateful rules, to that set's repartition topic, in the partition a hash of
//! the row's key columns picks. A second consumer (group `<application_id>-repartition`) reads
//! those topics, so all rows of one key meet on one instance, whatever the input's keying.
//!
//! - Rows travel as Arrow IPC streams, a few hundred KiB per message.
//! - The stage runs before the rules, and returns only once the broker has acknowledged every
//!   message of the batch: the input's offsets are stored after that. While the broker does
//!   not take them it retries, holding the pipeline (sources push back), and never drops.
//! - Decoding checks a message holds event rows with exactly the event schema; anything else
//!   is a poison message (dead-lettered like any other). Only Verity may write these topics:
//!   protect them with ACLs, as their rows are taken as normalized.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Int32Type};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use verity_model::event::{col, schema};
use verity_rules::key_sets::{fnv1a, keyed_stream_name};

use super::KafkaError;
use super::config::{Encoding, KafkaConfig, TopicConfig};
use super::metrics::TopicLabel;
use crate::pipeline::{Batch, Stage, StageError};

/// Aim for messages of about this size (Kafka's default limit is 1 MiB).
const TARGET_MESSAGE_BYTES: usize = 256 * 1024;

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
        .map(|k| (keyed_stream_name(&rp.application_id, k), k.clone()))
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
    Ok(cc)
}

/// The consumer side: the input's settings, in group `<application_id>-repartition`, over
/// the repartition topics.
pub fn consumer_config(cfg: &KafkaConfig, routes: &[Route]) -> KafkaConfig {
    KafkaConfig {
        group_id: format!("{}-repartition", cfg.repartition.application_id),
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
}

impl RepartitionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            rows: Family::default(),
            messages: Family::default(),
            retries: Counter::default(),
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
            "Batches whose repartitioned rows the broker did not take at once and that were sent again",
            m.retries.clone(),
        );
        m
    }
}

/// The pipeline stage that sends event rows to the repartition topics.
pub struct RepartitionStage {
    producer: FutureProducer,
    routes: Vec<Route>,
    metrics: RepartitionMetrics,
}

impl RepartitionStage {
    pub fn new(cfg: &KafkaConfig, routes: Vec<Route>, metrics: RepartitionMetrics) -> Result<Self, KafkaError> {
        let mut cc = client_config(cfg)?;
        // Acknowledged by every in-sync replica, and not reordered or duplicated by retries.
        cc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5");
        let producer = cc.create().map_err(|e| KafkaError::Create(e.to_string()))?;
        Ok(Self {
            producer,
            routes,
            metrics,
        })
    }

    /// Sends every message and waits for the broker to take them all; on any failure the
    /// batch's messages are sent again (at least once: the other instance's stateful rules
    /// may see a row twice after a failure, never zero times).
    fn send_all(&self, messages: &[(usize, i32, Vec<u8>)]) {
        let mut attempt = 0u32;
        loop {
            let mut waiting = Vec::with_capacity(messages.len());
            let mut failed: Option<String> = None;
            for (route, partition, payload) in messages {
                let topic = &self.routes[*route].topic;
                let mut record = FutureRecord::<(), [u8]>::to(topic)
                    .payload(payload.as_slice())
                    .partition(*partition);
                loop {
                    match self.producer.send_result(record) {
                        Ok(delivery) => {
                            waiting.push(delivery);
                            break;
                        }
                        Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err((e, _)) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                if failed.is_some() {
                    break;
                }
            }
            for delivery in waiting {
                match futures::executor::block_on(delivery) {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        failed.get_or_insert(e.to_string());
                    }
                    Err(_) => {
                        failed.get_or_insert("the producer was dropped".into());
                    }
                }
            }
            let Some(error) = failed else {
                for (route, _, _) in messages {
                    let label = TopicLabel {
                        topic: self.routes[*route].topic.clone(),
                    };
                    self.metrics.messages.get_or_create(&label).inc();
                }
                return;
            };
            attempt = attempt.saturating_add(1);
            self.metrics.retries.inc();
            tracing::warn!(%error, attempt, "the broker did not take repartitioned rows; sending them again");
            std::thread::sleep(Duration::from_millis(100u64.saturating_mul(u64::from(attempt.min(50)))));
        }
    }
}

impl Stage for RepartitionStage {
    fn name(&self) -> &'static str {
        "repartition"
    }

    fn process(&mut self, batch: &Batch) -> Result<(), StageError> {
        let Batch::Events(b) = batch else { return Ok(()) };
        if b.num_rows() == 0 {
            return Ok(());
        }
        let mut messages = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let parts = partition_rows(b, &route.keys, route.partitions).map_err(|e| StageError::Other {
                stage: "repartition",
                message: e.to_string(),
            })?;
            for (partition, rows) in parts.into_iter().enumerate() {
                if rows.is_empty() {
                    continue;
                }
                let partition = i32::try_from(partition).unwrap_or(0);
                for payload in encode(b, &rows).map_err(|e| StageError::Other {
                    stage: "repartition",
                    message: e.to_string(),
                })? {
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
        self.send_all(&messages);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }
}

/// Row indices per partition: a hash of each row's key columns (their text; null apart from
/// every text) modulo `partitions`. Stable across instances and versions.
pub fn partition_rows(
    batch: &RecordBatch,
    keys: &[String],
    partitions: i32,
) -> Result<Vec<Vec<u32>>, arrow::error::ArrowError> {
    let n = usize::try_from(partitions.max(1)).unwrap_or(1);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(keys.len());
    for k in keys {
        let c = batch
            .column_by_name(k)
            .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no column {k}")))?;
        columns.push(arrow::compute::cast(c, &DataType::Utf8)?);
    }
    let texts: Vec<_> = columns.iter().map(|c| c.as_string::<i32>()).collect();
    let mut out = vec![Vec::new(); n];
    let mut bytes = Vec::new();
    for row in 0..batch.num_rows() {
        bytes.clear();
        for t in &texts {
            // A tag before each value keeps (null) apart from any text and ("a", "bc") apart
            // from ("ab", "c").
            if t.is_null(row) {
                bytes.push(0);
            } else {
                let v = t.value(row).as_bytes();
                bytes.push(1);
                bytes.extend_from_slice(&(v.len() as u64).to_le_bytes());
                bytes.extend_from_slice(v);
            }
        }
        let p = usize::try_from(fnv1a(&bytes) % n as u64).unwrap_or(0);
        if let (Some(list), Ok(row)) = (out.get_mut(p), u32::try_from(row)) {
            list.push(row);
        }
    }
    Ok(out)
}

/// `rows` of `batch` as Arrow IPC streams of about [`TARGET_MESSAGE_BYTES`] each.
pub fn encode(batch: &RecordBatch, rows: &[u32]) -> Result<Vec<Vec<u8>>, arrow::error::ArrowError> {
    let per_row = batch.get_array_memory_size() / batch.num_rows().max(1);
    let chunk = (TARGET_MESSAGE_BYTES / per_row.max(1)).max(1);
    let mut out = Vec::new();
    for part in rows.chunks(chunk) {
        let indices = UInt32Array::from(part.to_vec());
        let columns = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::take(c.as_ref(), &indices, None))
            .collect::<Result<Vec<_>, _>>()?;
        let taken = RecordBatch::try_new(batch.schema(), columns)?;
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &batch.schema())?;
            w.write(&taken)?;
            w.finish()?;
        }
        out.push(buf);
    }
    Ok(out)
}

/// Why a repartition message was refused.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error("not an Arrow IPC stream of event rows: {0}")]
    Ipc(#[from] arrow::error::ArrowError),
    #[error("the rows do not have the event schema: {0}")]
    Schema(String),
    #[error("the Arrow IPC reader failed on the message")]
    Panicked,
}

/// A repartition message's rows, with `ingest_partition` set to where they were read from
/// (`topic/partition`): the stream whose clock and key set they belong to.
pub fn decode_rows(payload: &[u8], stream: &Arc<str>) -> Result<RecordBatch, RowsError> {
    // The IPC reader is not hardened against every malformed input: a panic in it is a
    // refused message, never a crashed consumer.
    let read = std::panic::catch_unwind(|| -> Result<Vec<RecordBatch>, RowsError> {
        let reader = StreamReader::try_new(Cursor::new(payload), None)?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(b?);
        }
        Ok(batches)
    })
    .map_err(|_| RowsError::Panicked)??;
    let want = schema();
    let mut out = Vec::with_capacity(read.len());
    for b in read {
        let fields = b.schema_ref().fields().clone();
        if fields.len() != want.fields().len()
            || fields
                .iter()
                .zip(want.fields().iter())
                .any(|(got, w)| got.name() != w.name() || got.data_type() != w.data_type())
        {
            return Err(RowsError::Schema(format!(
                "{} columns, first mismatch at {:?}",
                fields.len(),
                fields
                    .iter()
                    .zip(want.fields().iter())
                    .find(|(g, w)| g.name() != w.name() || g.data_type() != w.data_type())
                    .map(|(g, _)| g.name().clone())
            )));
        }
        let mut columns: Vec<ArrayRef> = b.columns().to_vec();
        let at = want
            .index_of(col::INGEST_PARTITION)
            .map_err(|e| RowsError::Schema(e.to_string()))?;
        let keys = arrow::array::Int32Array::from(vec![0; b.num_rows()]);
        let values = arrow::array::StringArray::from(vec![stream.as_ref()]);
        let here: DictionaryArray<Int32Type> =
            DictionaryArray::try_new(keys, Arc::new(values)).map_err(RowsError::Ipc)?;
        if let Some(slot) = columns.get_mut(at) {
            *slot = Arc::new(here);
        }
        // Built against the schema itself: nullability and values are checked again here.
        out.push(RecordBatch::try_new(want.clone(), columns)?);
    }
    match out.len() {
        0 => Err(RowsError::Schema("no rows".into())),
        1 => Ok(out.remove(0)),
        _ => Ok(arrow::compute::concat_batches(&want, &out)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_model::{AccessEvent, EventBatchBuilder};

    fn rows(principals: &[Option<&str>]) -> RecordBatch {
        let mut b = EventBatchBuilder::with_capacity(principals.len());
        for (i, p) in principals.iter().enumerate() {
            b.append(&AccessEvent {
                event_time_ns: i64::try_from(i).unwrap(),
                source_principal: p.map(|p| p.into()),
                raw: format!("line {i}").into(),
                ingest_partition: Some(Arc::from("mesh/0")),
                ..Default::default()
            });
        }
        b.finish().unwrap()
    }

    #[test]
    fn rows_of_one_key_go_to_one_partition() {
        let b = rows(&[Some("a"), Some("b"), Some("a"), None, Some("b"), None, Some("c")]);
        let keys = vec![col::SOURCE_PRINCIPAL.to_string()];
        let parts = partition_rows(&b, &keys, 6).unwrap();
        let where_is = |row: u32| parts.iter().position(|p| p.contains(&row)).unwrap();
        assert_eq!(where_is(0), where_is(2));
        assert_eq!(where_is(1), where_is(4));
        assert_eq!(where_is(3), where_is(5));
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 7);
        // The same key lands in the same partition in another batch (another instance).
        let other = rows(&[Some("c")]);
        let again = partition_rows(&other, &keys, 6).unwrap();
        assert_eq!(again.iter().position(|p| p.contains(&0)).unwrap(), where_is(6));
    }

    #[test]
    fn rows_round_trip_and_take_the_partition_they_were_read_from() {
        let b = rows(&[Some("a"), None, Some("c")]);
        let encoded = encode(&b, &[0, 2]).unwrap();
        assert_eq!(encoded.len(), 1);
        let stream: Arc<str> = Arc::from("v-repartition-source_principal/4");
        let back = decode_rows(&encoded[0], &stream).unwrap();
        assert_eq!(back.num_rows(), 2);
        assert_eq!(back.schema(), schema());
        let json = verity_model::json::to_json_rows(&back).unwrap();
        assert_eq!(json[1]["source_principal"], "c");
        assert_eq!(json[1]["raw"], "line 2");
        assert_eq!(json[0]["ingest_partition"], "v-repartition-source_principal/4");
    }

    #[test]
    fn garbage_and_foreign_rows_are_refused_not_panicked_on() {
        let stream: Arc<str> = Arc::from("t/0");
        for junk in [&b""[..], b"\xff\xff\xff\xff", b"not arrow at all", &[0u8; 64]] {
            assert!(decode_rows(junk, &stream).is_err());
        }
        // A valid IPC stream of another schema.
        let other = RecordBatch::try_from_iter([("x", Arc::new(UInt32Array::from(vec![1u32])) as ArrayRef)]).unwrap();
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &other.schema()).unwrap();
            w.write(&other).unwrap();
            w.finish().unwrap();
        }
        assert!(matches!(decode_rows(&buf, &stream), Err(RowsError::Schema(_))));
        // Every truncation of a good message is refused or decoded, never a panic.
        let good = encode(&rows(&[Some("a"), Some("b")]), &[0, 1]).unwrap().remove(0);
        for cut in 0..good.len() {
            let _ = decode_rows(&good[..cut], &stream);
        }
    }
}
