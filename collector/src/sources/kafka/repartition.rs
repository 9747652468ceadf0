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
use crate::pipeline::rules::Forward;

/// Aim for messages of about this size …
const TARGET_MESSAGE_BYTES: usize = 256 * 1024;
/// … and never above this (Kafka's default limit is 1 MiB, headers included).
pub const MAX_MESSAGE_BYTES: usize = 900 * 1024;

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

/// `rows` of `batch` as Arrow IPC streams of at most [`MAX_MESSAGE_BYTES`] each, with the
/// rows (by index) that do not fit in a message even alone.
pub fn encode(batch: &RecordBatch, rows: &[u32]) -> (Vec<Vec<u8>>, Vec<u32>) {
    let per_row = batch.get_array_memory_size() / batch.num_rows().max(1);
    let chunk = (TARGET_MESSAGE_BYTES / per_row.max(1)).max(1);
    let mut out = Vec::new();
    let mut oversized = Vec::new();
    for part in rows.chunks(chunk) {
        encode_fitting(batch, part, &mut out, &mut oversized);
    }
    (out, oversized)
}

/// Encodes `rows`, halving them until each message fits.
fn encode_fitting(batch: &RecordBatch, rows: &[u32], out: &mut Vec<Vec<u8>>, oversized: &mut Vec<u32>) {
    match encode_one(batch, rows) {
        Ok(buf) if buf.len() <= MAX_MESSAGE_BYTES => out.push(buf),
        result => {
            if let [row] = rows {
                if let Err(error) = result {
                    tracing::error!(%error, "cannot encode an event row for repartitioning");
                }
                oversized.push(*row);
                return;
            }
            let (a, b) = rows.split_at(rows.len() / 2);
            encode_fitting(batch, a, out, oversized);
            encode_fitting(batch, b, out, oversized);
        }
    }
}

fn encode_one(batch: &RecordBatch, rows: &[u32]) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let indices = UInt32Array::from(rows.to_vec());
    let columns = batch
        .columns()
        .iter()
        .map(|c| {
            let taken = arrow::compute::take(c.as_ref(), &indices, None)?;
            // `take` keeps a dictionary's every value; a message carries only its rows' own.
            match c.data_type() {
                DataType::Dictionary(_, value) => {
                    let plain = arrow::compute::cast(&taken, value)?;
                    arrow::compute::cast(&plain, c.data_type())
                }
                _ => Ok(taken),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let taken = RecordBatch::try_new(batch.schema(), columns)?;
    let mut buf = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut buf, &batch.schema())?;
        w.write(&taken)?;
        w.finish()?;
    }
    Ok(buf)
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
    #[error("not an Arrow IPC stream this message can hold: {0}")]
    Framing(&'static str),
}

/// Walks the stream's framing before the reader does: every message's metadata must be a
/// valid flatbuffer and its body must lie within the payload. The reader allocates a body's
/// declared length up front, so a 100-byte message claiming terabytes would abort the
/// process (an allocation failure is not a panic to catch).
fn check_framing(payload: &[u8]) -> Result<(), RowsError> {
    let word = |at: usize| -> Result<i32, RowsError> {
        let end = at.checked_add(4).ok_or(RowsError::Framing("overflow"))?;
        let bytes: [u8; 4] = payload
            .get(at..end)
            .and_then(|b| b.try_into().ok())
            .ok_or(RowsError::Framing("cut short"))?;
        Ok(i32::from_le_bytes(bytes))
    };
    let mut at = 0usize;
    while at < payload.len() {
        let mut len = word(at)?;
        at = at.saturating_add(4);
        if len == -1 {
            // The continuation marker, then the length.
            len = word(at)?;
            at = at.saturating_add(4);
        }
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| RowsError::Framing("negative length"))?;
        let meta_end = at.checked_add(len).ok_or(RowsError::Framing("overflow"))?;
        let meta = payload
            .get(at..meta_end)
            .ok_or(RowsError::Framing("metadata cut short"))?;
        let message = arrow::ipc::root_as_message(meta).map_err(|_| RowsError::Framing("invalid metadata"))?;
        let body = usize::try_from(message.bodyLength()).map_err(|_| RowsError::Framing("negative body length"))?;
        at = meta_end
            .checked_add(body)
            .filter(|end| *end <= payload.len())
            .ok_or(RowsError::Framing("body longer than the message"))?;
    }
    Ok(())
}

/// `ingest_partition` for rows read from `stream` (`topic/partition` of a repartition topic):
/// that stream, then `<` and the input partition the row was first read from, if any
/// (`verity-repartition-source_principal/3<mesh/0`). The key set's rules find their rows by
/// the first part; event time is kept per whole value and sender, so a lagging input
/// partition still holds the watermark back rather than having its rows made late.
fn where_read(original: Option<&ArrayRef>, stream: &str, rows: usize) -> Result<DictionaryArray<Int32Type>, RowsError> {
    let original = original.and_then(|c| c.as_dictionary_opt::<Int32Type>());
    let mut values: Vec<String> = vec![stream.to_string()];
    let mut keys: Vec<i32> = vec![0; rows];
    if let Some(d) = original
        && let Some(names) = d.values().as_string_opt::<i32>()
    {
        values.extend(names.iter().map(|v| format!("{stream}<{}", v.unwrap_or_default())));
        for (i, key) in keys.iter_mut().enumerate() {
            if d.keys().is_valid(i)
                && let Some(k) = d
                    .keys()
                    .values()
                    .get(i)
                    .and_then(|k| usize::try_from(*k).ok())
                    .filter(|k| *k < names.len())
            {
                *key = i32::try_from(k.saturating_add(1)).unwrap_or(0);
            }
        }
    }
    let keys = arrow::array::Int32Array::from(keys);
    let values = arrow::array::StringArray::from(values);
    DictionaryArray::try_new(keys, Arc::new(values)).map_err(RowsError::Ipc)
}

/// A repartition message's rows, with `ingest_partition` saying where they were read from
/// (see [`where_read`]): the stream whose clock and key set they belong to.
pub fn decode_rows(payload: &[u8], stream: &Arc<str>) -> Result<RecordBatch, RowsError> {
    check_framing(payload)?;
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
        let here = where_read(columns.get(at), stream, b.num_rows())?;
        if let Some(slot) = columns.get_mut(at) {
            *slot = Arc::new(here);
        }
        // The reader's arrays are views into one buffer per message: each would report the
        // whole buffer as its size, and the in-flight budget would count it once per column.
        // One copy into buffers of their own (a `take` of every row) makes the accounting true.
        let every = UInt32Array::from_iter_values(0..u32::try_from(b.num_rows()).unwrap_or(u32::MAX));
        let columns = columns
            .iter()
            .map(|c| arrow::compute::take(c.as_ref(), &every, None))
            .collect::<Result<Vec<_>, _>>()?;
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
    fn messages_carry_only_their_rows_dictionary_values_and_fit() {
        // Every row of a batch with its own large resource: a message of a few rows must not
        // carry the others' resources.
        let mut b = EventBatchBuilder::with_capacity(64);
        for i in 0..64 {
            let resource: Arc<str> = Arc::from(format!("{{\"r\":\"{}\"}}", "x".repeat(60_000 + i)));
            b.append(&AccessEvent {
                event_time_ns: 1,
                source_principal: Some("p".into()),
                resource_attributes: Some(resource),
                raw: "l".into(),
                ..Default::default()
            });
        }
        let b = b.finish().unwrap();
        let (one, _) = encode(&b, &[3]);
        assert!(one[0].len() < 80_000, "{}", one[0].len());
        let all: Vec<u32> = (0..64).collect();
        let (messages, oversized) = encode(&b, &all);
        assert!(oversized.is_empty());
        assert!(messages.iter().all(|m| m.len() <= MAX_MESSAGE_BYTES));
        let stream: Arc<str> = Arc::from("t/0");
        let back: usize = messages
            .iter()
            .map(|m| decode_rows(m, &stream).unwrap().num_rows())
            .sum();
        assert_eq!(back, 64);
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
        let (encoded, oversized) = encode(&b, &[0, 2]);
        assert!(oversized.is_empty());
        assert_eq!(encoded.len(), 1);
        let stream: Arc<str> = Arc::from("v-repartition-source_principal/4");
        let back = decode_rows(&encoded[0], &stream).unwrap();
        assert_eq!(back.num_rows(), 2);
        assert_eq!(back.schema(), schema());
        let json = verity_model::json::to_json_rows(&back).unwrap();
        assert_eq!(json[1]["source_principal"], "c");
        assert_eq!(json[1]["raw"], "line 2");
        assert_eq!(json[0]["ingest_partition"], "v-repartition-source_principal/4<mesh/0");
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
        let good = encode(&rows(&[Some("a"), Some("b")]), &[0, 1]).0.remove(0);
        // A body length claiming far more than the message holds is refused before any
        // allocation: here, the record batch message's body claims 2^60 bytes.
        let mut claim = good.clone();
        let meta_len = usize::try_from(i32::from_le_bytes(claim[4..8].try_into().unwrap())).unwrap();
        let schema_end = 8 + meta_len;
        let schema_body =
            usize::try_from(arrow::ipc::root_as_message(&good[8..schema_end]).unwrap().bodyLength()).unwrap();
        let batch_at = schema_end + schema_body;
        let batch_len = usize::try_from(i32::from_le_bytes(
            claim[batch_at + 4..batch_at + 8].try_into().unwrap(),
        ))
        .unwrap();
        let meta = &good[batch_at + 8..batch_at + 8 + batch_len];
        let body = arrow::ipc::root_as_message(meta).unwrap().bodyLength();
        let at = meta
            .windows(8)
            .position(|w| w == body.to_le_bytes())
            .expect("the body length in the metadata");
        claim[batch_at + 8 + at..batch_at + 16 + at].copy_from_slice(&(1i64 << 60).to_le_bytes());
        assert!(matches!(decode_rows(&claim, &stream), Err(RowsError::Framing(_))));
        for cut in 0..good.len() {
            let _ = decode_rows(&good[..cut], &stream);
        }
    }
}
