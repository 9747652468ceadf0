//! Rule state that moves with its repartition partition: the stateful rules' state of each
//! partition an instance owns is written, with the offset it covers, to the compacted topic
//! `<application_id>-state`; the partition's next owner restores it before reading on.
//!
//! - **Offsets follow snapshots.** While the state topic is on, the repartition consumer
//!   stores an offset only once a snapshot covering it is acknowledged by the broker, so the
//!   committed offset is never past the newest snapshot. A new owner restores the snapshot
//!   and skips the messages below its offset (already counted in it): an open window neither
//!   loses what the last owner counted nor counts a record twice.
//! - **When.** Every `kafka.repartition.state_snapshot_secs`, once every batch handed over is
//!   evaluated (reading waits meanwhile), and on every revocation, before the partitions go.
//!   A revocation that cannot wait for the pipeline, or whose snapshot fails, leaves the last
//!   snapshot in place: the next owner continues from it.
//! - **A lost instance** (SIGKILL) loses what happened since its last snapshot only in the
//!   sense that the next owner reads those records again from the snapshot's offset.
//! - **Format.** A partition's state is JSON ([`verity_rules::partition_state`]), cut into
//!   chunks of [`CHUNK_BYTES`] under keys `<repartition topic>/<partition>/<chunk>`. Each value
//!   names its partition, offset, generation and chunk count; chunk 0 is written last, so a
//!   reader takes the generation chunk 0 names and refuses a partition whose chunks are not
//!   all there (a write cut short) or larger than [`MAX_STATE_BYTES`]. Values are signed with
//!   the deployment's signing key when it has one; a bad signature is refused and counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use verity_rules::partition_state::{Partition, PartitionState};

use super::KafkaError;
use super::accumulate::Offsets;
use super::config::KafkaConfig;
use super::repartition::{Route, client_config};
use super::signing::MessageKey;
use crate::pipeline::rules::SharedEngine;

/// State bytes per message (Kafka's default limit is 1 MiB).
pub const CHUNK_BYTES: usize = 512 * 1024;
/// One partition's state at most this large is restored (its JSON is parsed into a tree
/// several times its size).
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;
const MAGIC: &[u8; 4] = b"VST1";
/// How long a restore may read the state topic.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SnapshotOutcome {
    written,
    failed,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RestoreOutcome {
    /// State found and taken.
    restored,
    /// No state for the partition yet.
    empty,
    /// Kept from before the rebalance: the partition came back to this instance.
    kept,
    /// State found but not usable (incomplete, too large, unreadable): started empty.
    refused,
    /// The topic could not be read: started empty.
    failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotLabel {
    outcome: SnapshotOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestoreLabel {
    outcome: RestoreOutcome,
}

/// State-topic metrics.
#[derive(Clone)]
pub struct StateTopicMetrics {
    snapshots: Family<SnapshotLabel, Counter>,
    restores: Family<RestoreLabel, Counter>,
    skipped: Counter,
    poison: Counter,
}

impl StateTopicMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            snapshots: Family::default(),
            restores: Family::default(),
            skipped: Counter::default(),
            poison: Counter::default(),
        };
        registry.register(
            "verity_kafka_state_snapshots",
            "Repartition partitions' rule state written to the state topic, by outcome",
            m.snapshots.clone(),
        );
        registry.register(
            "verity_kafka_state_restores",
            "Repartition partitions taken on, by where their rule state came from",
            m.restores.clone(),
        );
        registry.register(
            "verity_kafka_state_skipped_messages",
            "Repartition messages not evaluated again because a restored state already counts them",
            m.skipped.clone(),
        );
        registry.register(
            "verity_kafka_state_poison_messages",
            "State-topic messages refused: bad signature or framing",
            m.poison.clone(),
        );
        for outcome in [SnapshotOutcome::written, SnapshotOutcome::failed] {
            let _ = m.snapshots.get_or_create(&SnapshotLabel { outcome });
        }
        m
    }
}

type TopicPartition = (String, i32);

/// What this instance knows of a partition it owns.
#[derive(Debug, Clone, Copy, Default)]
struct Owned {
    /// The next offset evaluated through the engine, when any was since the last snapshot.
    processed: Option<i64>,
    /// The offset the last snapshot (written or restored) covers.
    snapshot: Option<i64>,
    /// Messages below this offset are in the restored state already.
    skip_below: i64,
}

#[derive(Default)]
struct Ownership {
    owned: HashMap<TopicPartition, Owned>,
    /// Revoked partitions whose state is still in the engine and matches their last snapshot,
    /// until the next assignment says whether they stay here.
    parked: HashMap<TopicPartition, Option<i64>>,
    /// Revoked since the reading loop last looked: what it read ahead from them is dropped.
    revoked: Vec<TopicPartition>,
}

/// The state topic of one deployment, for the repartition consumer.
pub struct StateTopic {
    topic: String,
    engine: SharedEngine,
    /// Partition counts of the repartition topics.
    partitions: HashMap<String, usize>,
    producer: FutureProducer,
    reader: ClientConfig,
    signing: Option<Arc<MessageKey>>,
    ownership: Mutex<Ownership>,
    metrics: StateTopicMetrics,
}

impl StateTopic {
    pub fn new(
        cfg: &KafkaConfig,
        topic: String,
        engine: SharedEngine,
        routes: &[Route],
        metrics: StateTopicMetrics,
    ) -> Result<Arc<Self>, KafkaError> {
        let mut cc = client_config(cfg)?;
        cc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.max.bytes", "1000000");
        let producer = cc.create().map_err(|e| KafkaError::Create(e.to_string()))?;
        let mut reader = client_config(cfg)?;
        reader
            .set("group.id", format!("{}-state-reader", cfg.application_id()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        Ok(Arc::new(Self {
            topic,
            engine,
            partitions: routes
                .iter()
                .map(|r| (r.topic.clone(), usize::try_from(r.partitions).unwrap_or(1)))
                .collect(),
            producer,
            reader,
            signing: super::signing_key(cfg)?,
            ownership: Mutex::new(Ownership::default()),
            metrics,
        }))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn ownership(&self) -> MutexGuard<'_, Ownership> {
        match self.ownership.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn at<'a>(&self, tp: &'a TopicPartition) -> Option<Partition<'a>> {
        Some(Partition {
            stream: &tp.0,
            partition: usize::try_from(tp.1).ok()?,
            partitions: *self.partitions.get(&tp.0)?,
        })
    }

    /// The acknowledger's word that every record below `offsets` is evaluated.
    pub(super) fn processed(&self, offsets: &Offsets) {
        let mut o = self.ownership();
        for ((topic, partition), next) in offsets {
            if let Some(owned) = o.owned.get_mut(&(topic.clone(), *partition)) {
                owned.processed = Some(owned.processed.map_or(*next, |p| p.max(*next)));
            }
        }
    }

    /// Whether a message is already counted in the partition's restored state.
    pub(super) fn skip(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let o = self.ownership();
        let skip = o
            .owned
            .iter()
            .any(|((t, p), owned)| *p == partition && t == topic && offset < owned.skip_below);
        if skip {
            self.metrics.skipped.inc();
        }
        skip
    }

    /// Partitions revoked since the last call: the reading loop drops what it read ahead.
    pub(super) fn take_revoked(&self) -> Vec<TopicPartition> {
        std::mem::take(&mut self.ownership().revoked)
    }

    /// Writes a snapshot of every owned partition evaluated further since its last one; returns
    /// the offsets now safe to commit. Call only when every batch handed over is evaluated.
    pub(super) fn write_due(&self) -> TopicPartitionList {
        let due: Vec<(TopicPartition, i64)> = self
            .ownership()
            .owned
            .iter()
            .filter_map(|(tp, o)| {
                let next = o.processed?;
                (o.snapshot != Some(next)).then(|| (tp.clone(), next))
            })
            .collect();
        self.write(&due)
    }

    /// Snapshots `due` (partition, offset covered); returns the offsets of those written.
    fn write(&self, due: &[(TopicPartition, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (tp, next) in due {
            match self.write_one(tp, *next) {
                Ok(()) => {
                    self.metrics
                        .snapshots
                        .get_or_create(&SnapshotLabel {
                            outcome: SnapshotOutcome::written,
                        })
                        .inc();
                    if let Some(o) = self.ownership().owned.get_mut(tp) {
                        o.snapshot = Some(*next);
                    }
                    let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(*next));
                }
                Err(error) => {
                    self.metrics
                        .snapshots
                        .get_or_create(&SnapshotLabel {
                            outcome: SnapshotOutcome::failed,
                        })
                        .inc();
                    tracing::warn!(topic = %tp.0, partition = tp.1, %error, "could not write a partition's rule state; its offsets stay where the last snapshot is");
                }
            }
        }
        tpl
    }

    fn write_one(&self, tp: &TopicPartition, next: i64) -> Result<(), String> {
        let at = self.at(tp).ok_or("not a repartition topic")?;
        let state = self
            .engine
            .with_engine(|e| e.export_partition(at))
            .map_err(|e| e.to_string())?;
        let data = serde_json::to_vec(&state).map_err(|e| e.to_string())?;
        let name = format!("{}/{}", tp.0, tp.1);
        let generation = u64::try_from(crate::normalize::now_ns()).unwrap_or(0);
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[]]
        } else {
            data.chunks(CHUNK_BYTES).collect()
        };
        let count = u32::try_from(chunks.len()).map_err(|_| "state too large")?;
        // Chunk 0 names the generation readers take: it goes last, once the others are in.
        let mut order: Vec<usize> = (1..chunks.len()).collect();
        order.push(0);
        let mut waiting = Vec::new();
        for i in order {
            let chunk = chunks.get(i).copied().unwrap_or_default();
            let value = encode(&name, next, generation, u32::try_from(i).unwrap_or(0), count, chunk);
            let key = format!("{name}/{i}");
            let mut record = FutureRecord::to(&self.topic).key(key.as_bytes()).payload(&value);
            if let Some(k) = &self.signing {
                record = record.headers(k.sign(&self.topic, &value));
            }
            let delivery = self.producer.send_result(record).map_err(|(e, _)| e.to_string())?;
            if i == 0 {
                // Every other chunk first.
                for d in waiting.drain(..) {
                    wait(d)?;
                }
            }
            waiting.push(delivery);
        }
        for d in waiting {
            wait(d)?;
        }
        Ok(())
    }

    /// Partitions being revoked. With the pipeline drained (`clean`), they are snapshotted and
    /// their state stays in the engine until the next assignment; otherwise the engine may hold
    /// records whose offsets are not known yet, so their state is dropped and the next owner
    /// continues from the last snapshot. Returns the offsets to commit.
    pub(super) fn on_revoke(&self, tpl: &TopicPartitionList, clean: bool) -> TopicPartitionList {
        let revoked: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let due: Vec<(TopicPartition, i64)> = if clean {
            let o = self.ownership();
            revoked
                .iter()
                .filter_map(|tp| {
                    let owned = o.owned.get(tp)?;
                    let next = owned.processed?;
                    (owned.snapshot != Some(next)).then(|| (tp.clone(), next))
                })
                .collect()
        } else {
            Vec::new()
        };
        let written = self.write(&due);
        let mut o = self.ownership();
        for tp in &revoked {
            let Some(owned) = o.owned.remove(tp) else { continue };
            let current = owned.processed.is_none_or(|p| owned.snapshot == Some(p));
            if clean && current {
                o.parked.insert(tp.clone(), owned.snapshot);
            } else {
                drop(o);
                self.forget(tp);
                o = self.ownership();
            }
        }
        o.revoked.extend(revoked);
        written
    }

    /// The state of a partition leaves the engine.
    fn forget(&self, tp: &TopicPartition) {
        if let Some(at) = self.at(tp) {
            let n = self.engine.with_engine(|e| e.forget_partition(at));
            tracing::debug!(topic = %tp.0, partition = tp.1, keys = n, "partition state handed on");
        }
    }

    /// Partitions assigned: those parked here keep their state, the others' state is read from
    /// the topic and taken in before any of their messages is evaluated.
    pub(super) fn on_assign(&self, tpl: &TopicPartitionList) {
        let assigned: HashSet<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let parked = std::mem::take(&mut self.ownership().parked);
        for (tp, _) in parked.iter().filter(|(tp, _)| !assigned.contains(*tp)) {
            self.forget(tp);
        }
        let mut wanted = Vec::new();
        for tp in &assigned {
            match parked.get(tp) {
                Some(snapshot) => {
                    self.metrics
                        .restores
                        .get_or_create(&RestoreLabel {
                            outcome: RestoreOutcome::kept,
                        })
                        .inc();
                    self.ownership().owned.insert(
                        tp.clone(),
                        Owned {
                            processed: None,
                            snapshot: *snapshot,
                            skip_below: snapshot.unwrap_or(0),
                        },
                    );
                }
                None => wanted.push(tp.clone()),
            }
        }
        if wanted.is_empty() {
            return;
        }
        let started = Instant::now();
        let found = self.read(&wanted);
        for tp in &wanted {
            // Whatever this instance held for the partition is older than the topic's.
            self.forget(tp);
            let (outcome, owned) = match &found {
                Err(error) => {
                    tracing::error!(topic = %tp.0, partition = tp.1, %error, "could not read the state topic; the partition starts with empty rule state");
                    (RestoreOutcome::failed, Owned::default())
                }
                Ok(found) => match found.get(&format!("{}/{}", tp.0, tp.1)) {
                    None => (RestoreOutcome::empty, Owned::default()),
                    Some(Err(why)) => {
                        tracing::error!(topic = %tp.0, partition = tp.1, why = %why, "a partition's saved rule state is not usable; it starts empty");
                        (RestoreOutcome::refused, Owned::default())
                    }
                    Some(Ok((next, data))) => match self.import(tp, data) {
                        Ok(()) => (
                            RestoreOutcome::restored,
                            Owned {
                                processed: None,
                                snapshot: Some(*next),
                                skip_below: *next,
                            },
                        ),
                        Err(why) => {
                            tracing::error!(topic = %tp.0, partition = tp.1, why = %why, "a partition's saved rule state does not parse; it starts empty");
                            (RestoreOutcome::refused, Owned::default())
                        }
                    },
                },
            };
            self.metrics.restores.get_or_create(&RestoreLabel { outcome }).inc();
            self.ownership().owned.insert(tp.clone(), owned);
        }
        tracing::info!(
            partitions = wanted.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "partition rule state restored"
        );
    }

    fn import(&self, tp: &TopicPartition, data: &[u8]) -> Result<(), serde_json::Error> {
        let state: PartitionState = serde_json::from_slice(data)?;
        let summary = self.engine.with_engine(|e| e.import_partition(state));
        tracing::debug!(topic = %tp.0, partition = tp.1, ?summary, "partition state taken over");
        Ok(())
    }

    /// The newest complete snapshot of each of `wanted` in the topic: its offset and data, or
    /// why it is not usable.
    #[allow(clippy::type_complexity)]
    fn read(&self, wanted: &[TopicPartition]) -> Result<HashMap<String, Result<(i64, Vec<u8>), String>>, String> {
        let names: HashSet<String> = wanted.iter().map(|(t, p)| format!("{t}/{p}")).collect();
        let consumer: BaseConsumer = self.reader.create().map_err(|e| e.to_string())?;
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let mut assembly: HashMap<String, Assembly> = HashMap::new();
        let mut read = 0u64;
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            consumer.assign(&tpl).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + RESTORE_TIMEOUT;
            loop {
                if Instant::now() > deadline {
                    return Err(format!(
                        "the state topic was not read to its end within {RESTORE_TIMEOUT:?}"
                    ));
                }
                let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let m = m.map_err(|e| e.to_string())?;
                let offset = m.offset();
                read += 1;
                if let Some(payload) = m.payload() {
                    let signed = self
                        .signing
                        .as_ref()
                        .map_or(Ok(()), |k| k.verify(&self.topic, payload, m.headers()));
                    match signed
                        .map_err(|e| e.to_string())
                        .and_then(|()| decode(payload).map_err(|e| e.to_string()))
                    {
                        Ok(v) if names.contains(v.name) => {
                            assembly.entry(v.name.to_string()).or_default().add(&v);
                        }
                        Ok(_) => {}
                        Err(why) => {
                            self.metrics.poison.inc();
                            tracing::warn!(offset, why = %why, "a state-topic message refused");
                        }
                    }
                }
                if offset + 1 >= high {
                    break;
                }
            }
        }
        tracing::info!(low, high, read, partitions = assembly.len(), "state topic read");
        let mut found = HashMap::new();
        for (name, a) in assembly {
            let complete = a.complete().and_then(|(next, data)| {
                // A snapshot claiming offsets the partition has not reached would make this
                // instance skip records it never counted: refused.
                let (topic, partition) = wanted
                    .iter()
                    .find(|(t, p)| format!("{t}/{p}") == name)
                    .ok_or("not wanted")?;
                let (_, end) = consumer
                    .fetch_watermarks(topic, *partition, Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                if next < 0 || next > end {
                    return Err(format!("covers offset {next}, past the partition's end {end}"));
                }
                Ok((next, data))
            });
            found.insert(name, complete);
        }
        Ok(found)
    }
}

fn wait(d: rdkafka::producer::DeliveryFuture) -> Result<(), String> {
    match futures::executor::block_on(d) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("the producer was dropped".into()),
    }
}

/// One state-topic value: a chunk of one partition's state.
#[derive(Debug)]
pub struct Value<'a> {
    /// `<repartition topic>/<partition>`.
    pub name: &'a str,
    /// The offset the state covers: the partition's next message not in it.
    pub next: i64,
    pub generation: u64,
    pub chunk: u32,
    pub chunks: u32,
    pub data: &'a [u8],
}

/// Why a state-topic value was refused.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("not a state value")]
    NotState,
    #[error("truncated")]
    Truncated,
    #[error("partition name is not UTF-8")]
    Name,
    #[error("chunk {chunk} of {chunks}")]
    Chunk { chunk: u32, chunks: u32 },
}

fn encode(name: &str, next: i64, generation: u64, chunk: u32, chunks: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + name.len() + 34);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_le_bytes());
    v.extend_from_slice(name.as_bytes().get(..usize::from(u16::MAX)).unwrap_or(name.as_bytes()));
    v.extend_from_slice(&next.to_le_bytes());
    v.extend_from_slice(&generation.to_le_bytes());
    v.extend_from_slice(&chunk.to_le_bytes());
    v.extend_from_slice(&chunks.to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// Reads a state-topic value; refuses anything else without panicking.
pub fn decode(v: &[u8]) -> Result<Value<'_>, ValueError> {
    fn take<const N: usize>(v: &mut &[u8]) -> Result<[u8; N], ValueError> {
        let head = v.get(..N).ok_or(ValueError::Truncated)?;
        *v = v.get(N..).unwrap_or_default();
        head.try_into().map_err(|_| ValueError::Truncated)
    }
    let mut rest = v;
    if take::<4>(&mut rest)? != *MAGIC {
        return Err(ValueError::NotState);
    }
    let len = usize::from(u16::from_le_bytes(take::<2>(&mut rest)?));
    let name = rest.get(..len).ok_or(ValueError::Truncated)?;
    rest = rest.get(len..).unwrap_or_default();
    let name = std::str::from_utf8(name).map_err(|_| ValueError::Name)?;
    let next = i64::from_le_bytes(take::<8>(&mut rest)?);
    let generation = u64::from_le_bytes(take::<8>(&mut rest)?);
    let chunk = u32::from_le_bytes(take::<4>(&mut rest)?);
    let chunks = u32::from_le_bytes(take::<4>(&mut rest)?);
    if chunk >= chunks {
        return Err(ValueError::Chunk { chunk, chunks });
    }
    Ok(Value {
        name,
        next,
        generation,
        chunk,
        chunks,
        data: rest,
    })
}

/// One partition's chunks as read: the generation the newest chunk 0 names, and the chunks
/// of it and of newer generations still being written. Older generations are dropped as the
/// topic is read, so a long uncompacted history costs no more than two snapshots.
#[derive(Default)]
struct Assembly {
    /// The generation of the newest chunk 0: (offset covered, chunk count).
    head: Option<(u64, i64, u32)>,
    chunks: BTreeMap<u64, BTreeMap<u32, Vec<u8>>>,
    too_large: bool,
}

impl Assembly {
    fn add(&mut self, v: &Value<'_>) {
        if self.head.is_some_and(|(g, _, _)| v.generation < g) {
            return;
        }
        if v.chunk == 0 {
            self.head = Some((v.generation, v.next, v.chunks));
            let g = v.generation;
            self.chunks.retain(|gen_, _| *gen_ >= g);
        }
        let held: usize = self.chunks.values().flat_map(|c| c.values()).map(Vec::len).sum();
        if held.saturating_add(v.data.len()) > MAX_STATE_BYTES.saturating_mul(2) {
            self.too_large = true;
            return;
        }
        self.chunks
            .entry(v.generation)
            .or_default()
            .insert(v.chunk, v.data.to_vec());
    }

    fn complete(self) -> Result<(i64, Vec<u8>), String> {
        let Some((generation, next, count)) = self.head else {
            return Err("no complete snapshot (a write cut short)".into());
        };
        let Some(chunks) = self.chunks.get(&generation) else {
            return Err("snapshot chunks missing".into());
        };
        if self.too_large {
            return Err(format!("over {MAX_STATE_BYTES} bytes"));
        }
        let mut data = Vec::new();
        for i in 0..count {
            let Some(c) = chunks.get(&i) else {
                return Err(format!("chunk {i} of {count} missing (a write cut short)"));
            };
            data.extend_from_slice(c);
        }
        if data.len() > MAX_STATE_BYTES {
            return Err(format!("over {MAX_STATE_BYTES} bytes"));
        }
        Ok((next, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(name: &str, next: i64, generation: u64, chunk: u32, chunks: u32, data: &[u8]) -> Vec<u8> {
        encode(name, next, generation, chunk, chunks, data)
    }

    #[test]
    fn a_value_round_trips_and_garbage_is_refused() {
        let v = value("t/3", 42, 7, 1, 2, b"abc");
        let d = decode(&v).expect("decode");
        assert_eq!(
            (d.name, d.next, d.generation, d.chunk, d.chunks, d.data),
            ("t/3", 42, 7, 1, 2, &b"abc"[..])
        );
        for cut in 0..v.len() - 3 {
            assert!(decode(&v[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(b"VST1\xff\xff").is_err());
        assert!(decode(&value("t/3", 1, 1, 2, 2, b"")).is_err(), "chunk past the count");
        assert!(decode(b"garbage that is long enough to have every field in it").is_err());
    }

    fn add(a: &mut Assembly, v: &[u8]) {
        a.add(&decode(v).expect("decode"));
    }

    #[test]
    fn the_newest_complete_generation_is_taken() {
        let mut a = Assembly::default();
        add(&mut a, &value("t/0", 10, 1, 1, 2, b"def"));
        add(&mut a, &value("t/0", 10, 1, 0, 2, b"abc"));
        // Generation 2 cut short: chunk 1 written, chunk 0 never.
        add(&mut a, &value("t/0", 20, 2, 1, 2, b"XYZ"));
        assert_eq!(a.complete().expect("complete"), (10, b"abcdef".to_vec()));

        let mut b = Assembly::default();
        add(&mut b, &value("t/0", 10, 1, 1, 2, b"def"));
        add(&mut b, &value("t/0", 10, 1, 0, 2, b"abc"));
        add(&mut b, &value("t/0", 30, 3, 0, 1, b"new"));
        assert_eq!(b.complete().expect("complete"), (30, b"new".to_vec()));

        // Chunk 0 of a generation whose chunk 1 was compacted away by a newer one's.
        let mut c = Assembly::default();
        add(&mut c, &value("t/0", 10, 1, 0, 2, b"abc"));
        assert!(c.complete().is_err());
        assert!(Assembly::default().complete().is_err());
    }
}
