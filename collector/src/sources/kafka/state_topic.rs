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

use std::collections::{HashMap, HashSet};
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

mod format;
use format::{Assembly, Snapshot, chunk_key, encode};
pub use format::{CHUNK_BYTES, MAX_STATE_BYTES, Value, ValueError, decode};

/// All the partitions taken on in one rebalance hold at most this much while the topic is read.
const MAX_READ_BYTES: usize = 4 * MAX_STATE_BYTES;
/// How far past the end of its partition, as the broker reports it, a snapshot may claim to
/// be: a snapshot claiming more would make its new owner skip records it never counted, and
/// is refused. Some brokers report a partition's end late (by the records of its last
/// batches), which must not cost a partition its state; a forged claim within this lead
/// hides at most this many new records.
const MAX_LEAD: i64 = 100_000;
/// How long a restore may read the state topic.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SnapshotOutcome {
    written,
    failed,
    /// Not taken: the pipeline did not catch up in time (the next interval tries again), or
    /// partitions were revoked before it did (their next owner continues from the last one).
    skipped,
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
        for outcome in [
            SnapshotOutcome::written,
            SnapshotOutcome::failed,
            SnapshotOutcome::skipped,
        ] {
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
    /// The generation and chunk count of this partition's snapshot in the topic: its chunks
    /// past the first are deleted (tombstones) once a newer snapshot is in.
    written: Option<(u64, u32)>,
    /// The topic could not be read when the partition was taken on: no snapshot is written
    /// (nor offset committed) for it here, so the one in the topic stays for the next owner.
    frozen: bool,
}

impl Owned {
    /// The offset a new snapshot would cover, when one is due: evaluated further than the
    /// last, and not frozen.
    fn due(&self) -> Option<i64> {
        let next = self.processed.filter(|_| !self.frozen)?;
        (self.snapshot != Some(next)).then_some(next)
    }
}

#[derive(Default)]
struct Ownership {
    owned: HashMap<TopicPartition, Owned>,
    /// Revoked partitions whose state is still in the engine and matches their last snapshot,
    /// until the next assignment says whether they stay here.
    parked: HashMap<TopicPartition, Owned>,
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
            .set("message.max.bytes", "1000000")
            // Snapshots are written inside rebalances: a broker that does not answer must not
            // hold one for librdkafka's default five minutes.
            .set("message.timeout.ms", "30000");
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

    /// A periodic snapshot not taken: the pipeline did not catch up in time.
    pub(super) fn skipped(&self) {
        self.metrics
            .snapshots
            .get_or_create(&SnapshotLabel {
                outcome: SnapshotOutcome::skipped,
            })
            .inc();
    }

    /// Writes a snapshot of every owned partition evaluated further since its last one; returns
    /// the offsets now safe to commit. Call only when every batch handed over is evaluated.
    pub(super) fn write_due(&self) -> TopicPartitionList {
        let due: Vec<(TopicPartition, i64)> = self
            .ownership()
            .owned
            .iter()
            .filter_map(|(tp, o)| Some((tp.clone(), o.due()?)))
            .collect();
        self.write(&due)
    }

    /// Snapshots `due` (partition, offset covered); returns the offsets of those written.
    fn write(&self, due: &[(TopicPartition, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (tp, next) in due {
            let previous = self.ownership().owned.get(tp).and_then(|o| o.written);
            match self.write_one(tp, *next, previous) {
                Ok(written) => {
                    self.metrics
                        .snapshots
                        .get_or_create(&SnapshotLabel {
                            outcome: SnapshotOutcome::written,
                        })
                        .inc();
                    if let Some(o) = self.ownership().owned.get_mut(tp) {
                        o.snapshot = Some(*next);
                        o.written = Some(written);
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

    /// Writes one partition's snapshot (chunk 0 last, so a reader never takes a generation
    /// whose other chunks are not in), then deletes `previous`'s other chunks. Chunk 0 is keyed
    /// by the partition alone, the others by generation too: compaction never drops a complete
    /// snapshot's chunk for one of a write cut short. Returns the generation and chunk count.
    fn write_one(&self, tp: &TopicPartition, next: i64, previous: Option<(u64, u32)>) -> Result<(u64, u32), String> {
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
            let key = chunk_key(&name, generation, i);
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
        if let Some((old, old_count)) = previous.filter(|(g, _)| *g != generation) {
            let mut gone = Vec::new();
            for i in 1..old_count {
                let key = chunk_key(&name, old, i as usize);
                let record = FutureRecord::<[u8], [u8]>::to(&self.topic).key(key.as_bytes());
                gone.push(self.producer.send_result(record).map_err(|(e, _)| e.to_string())?);
            }
            for d in gone {
                // A chunk left behind costs space until the next snapshot, nothing else.
                if let Err(error) = wait(d) {
                    tracing::debug!(%error, "could not delete an old snapshot chunk");
                }
            }
        }
        Ok((generation, count))
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
                .filter_map(|tp| Some((tp.clone(), o.owned.get(tp)?.due()?)))
                .collect()
        } else {
            if !revoked.is_empty() {
                self.metrics
                    .snapshots
                    .get_or_create(&SnapshotLabel {
                        outcome: SnapshotOutcome::skipped,
                    })
                    .inc();
                tracing::warn!(
                    partitions = revoked.len(),
                    "partitions revoked before the pipeline caught up: their rule state here is dropped, and their next owner continues from their last snapshot"
                );
            }
            Vec::new()
        };
        let written = self.write(&due);
        let mut o = self.ownership();
        for tp in &revoked {
            let Some(owned) = o.owned.remove(tp) else { continue };
            let current = owned.processed.is_none_or(|p| owned.snapshot == Some(p));
            if clean && current && !owned.frozen {
                o.parked.insert(tp.clone(), owned);
            } else {
                drop(o);
                self.forget(tp);
                o = self.ownership();
            }
        }
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
                Some(parked) => {
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
                            skip_below: parked.snapshot.unwrap_or(0),
                            ..*parked
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
        // A broker hiccup should not cost the partitions their state: a few tries.
        let mut found = self.read(&wanted);
        for attempt in 1..3u64 {
            if found.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500 * attempt));
            found = self.read(&wanted);
        }
        for tp in &wanted {
            // Whatever this instance held for the partition is older than the topic's.
            self.forget(tp);
            let (outcome, owned) = match &found {
                Err(error) => {
                    tracing::error!(topic = %tp.0, partition = tp.1, %error, "could not read the state topic; the partition runs with empty rule state here, and its snapshot in the topic is left for its next owner");
                    (
                        RestoreOutcome::failed,
                        Owned {
                            frozen: true,
                            ..Owned::default()
                        },
                    )
                }
                Ok(found) => match found.get(&format!("{}/{}", tp.0, tp.1)) {
                    None => (RestoreOutcome::empty, Owned::default()),
                    Some(Err(why)) => {
                        tracing::error!(topic = %tp.0, partition = tp.1, why = %why, "a partition's saved rule state is not usable; it starts empty");
                        (RestoreOutcome::refused, Owned::default())
                    }
                    Some(Ok(snapshot)) => match self.import(tp, &snapshot.data) {
                        Ok(()) => (
                            RestoreOutcome::restored,
                            Owned {
                                processed: None,
                                snapshot: Some(snapshot.next),
                                skip_below: snapshot.next,
                                written: Some((snapshot.generation, snapshot.chunks)),
                                frozen: false,
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
    fn read(&self, wanted: &[TopicPartition]) -> Result<HashMap<String, Result<Snapshot, String>>, String> {
        let names: HashSet<String> = wanted.iter().map(|(t, p)| format!("{t}/{p}")).collect();
        let consumer: BaseConsumer = self.reader.create().map_err(|e| e.to_string())?;
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let mut assembly: HashMap<String, Assembly> = HashMap::new();
        let mut read = 0u64;
        // Bytes held over every wanted partition.
        let mut held = 0usize;
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
                            let a = assembly.entry(v.name.to_string()).or_default();
                            held = held.saturating_sub(a.held);
                            a.add(&v, MAX_READ_BYTES.saturating_sub(held));
                            held = held.saturating_add(a.held);
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
            let complete = a.complete().and_then(|snapshot| {
                // A snapshot claiming offsets the partition has not reached would make this
                // instance skip records it never counted: refused.
                let (topic, partition) = wanted
                    .iter()
                    .find(|(t, p)| format!("{t}/{p}") == name)
                    .ok_or("not wanted")?;
                let (_, end) = consumer
                    .fetch_watermarks(topic, *partition, Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                if snapshot.next < 0 || snapshot.next > end.saturating_add(MAX_LEAD) {
                    return Err(format!(
                        "covers offset {}, past the partition's end {end}",
                        snapshot.next
                    ));
                }
                Ok(snapshot)
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
