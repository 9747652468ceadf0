//! Messages read but not yet handed over: their batches, raw lines and per-partition
//! positions, handed over by row count, bytes or age.

use std::collections::HashMap;
use std::time::Instant;

use crate::ingest::Origin;
use crate::pipeline::{Batch, Handoff};

/// Offsets of the messages in one batch: the next offset to read, per partition.
pub(super) type Offsets = HashMap<(String, i32), i64>;

pub(super) struct Pending {
    pub(super) handoff: Handoff,
    pub(super) batch: Batch,
    pub(super) offsets: Offsets,
    /// The batch's share of the in-flight memory budget, until it is acknowledged.
    pub(super) _budget: Option<crate::ingest::budget::Reservation>,
}

/// A raw-lines message, kept until the batch is normalized in one go (a builder per message
/// would cost more than the lines themselves).
pub(super) struct RawMsg {
    pub(super) text: String,
    pub(super) origin: Origin,
    pub(super) key: Option<Vec<u8>>,
    pub(super) sender: crate::ingest::Sender,
}

/// What the messages read so far turned into.
pub(super) struct Accum {
    pub(super) events: Vec<arrow::array::RecordBatch>,
    /// The partition each of `events` came from, where it came from one alone (repartition
    /// messages): what is dropped when that partition is revoked before hand-over.
    events_from: Vec<Option<(String, i32)>>,
    pub(super) metrics: Vec<arrow::array::RecordBatch>,
    pub(super) raw: Vec<RawMsg>,
    pub(super) rows: usize,
    /// What the accumulated batches and raw messages hold: a batch is handed over at
    /// `intake.limits.max_request_rows_bytes` whatever its record count.
    pub(super) bytes: usize,
    /// Per partition read: next offset, messages and bytes since the last hand-over. A short
    /// list scanned linearly: no allocation per message.
    pub(super) positions: Vec<Position>,
    pub(super) started: Option<Instant>,
}

pub(super) struct Position {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) next: i64,
    pub(super) messages: u64,
    pub(super) bytes: u64,
}

impl Accum {
    pub(super) fn new() -> Self {
        Self {
            events: Vec::new(),
            events_from: Vec::new(),
            metrics: Vec::new(),
            raw: Vec::new(),
            rows: 0,
            bytes: 0,
            positions: Vec::new(),
            started: None,
        }
    }

    pub(super) fn position(&mut self, topic: &str, partition: i32, offset: i64, bytes: usize) {
        let p = match self
            .positions
            .iter_mut()
            .position(|p| p.partition == partition && p.topic == topic)
        {
            Some(i) => &mut self.positions[i],
            None => {
                self.positions.push(Position {
                    topic: topic.to_string(),
                    partition,
                    next: 0,
                    messages: 0,
                    bytes: 0,
                });
                let last = self.positions.len() - 1;
                &mut self.positions[last]
            }
        };
        p.next = offset + 1;
        p.messages += 1;
        p.bytes += bytes as u64;
    }

    /// A message already counted in its partition's restored state: its offset moves on, and
    /// nothing of it is evaluated.
    pub(super) fn skip(&mut self, topic: &str, partition: i32, offset: i64) {
        self.started.get_or_insert_with(Instant::now);
        self.position(topic, partition, offset, 0);
    }

    /// Event rows from one partition's message.
    pub(super) fn add_from(&mut self, batch: arrow::array::RecordBatch, topic: &str, partition: i32) {
        self.add(Some(Batch::Events(batch)));
        if let Some(last) = self.events_from.last_mut() {
            *last = Some((topic.to_string(), partition));
        }
    }

    /// Drops what was read from `partitions` and not handed over yet: they were revoked, and
    /// their next owner reads it again.
    pub(super) fn drop_partitions(&mut self, partitions: &[(String, i32)]) {
        if partitions.is_empty() {
            return;
        }
        let gone = |from: &Option<(String, i32)>| from.as_ref().is_some_and(|tp| partitions.contains(tp));
        let mut kept = Vec::with_capacity(self.events.len());
        let mut kept_from = Vec::with_capacity(self.events.len());
        for (b, from) in self.events.drain(..).zip(self.events_from.drain(..)) {
            if gone(&from) {
                self.rows = self.rows.saturating_sub(b.num_rows());
                self.bytes = self.bytes.saturating_sub(b.get_array_memory_size());
            } else {
                kept.push(b);
                kept_from.push(from);
            }
        }
        self.events = kept;
        self.events_from = kept_from;
        self.positions
            .retain(|p| !partitions.iter().any(|(t, n)| *n == p.partition && *t == p.topic));
    }

    pub(super) fn add(&mut self, batch: Option<Batch>) {
        match batch {
            Some(Batch::Events(b)) => {
                self.rows += b.num_rows();
                self.bytes = self.bytes.saturating_add(b.get_array_memory_size());
                self.events.push(b);
                self.events_from.push(None);
            }
            Some(Batch::Metrics(b)) => {
                self.rows += b.num_rows();
                self.bytes = self.bytes.saturating_add(b.get_array_memory_size());
                self.metrics.push(b);
            }
            _ => {}
        }
    }

    /// The batches to hand over, each carrying the offsets (all offsets go with the last).
    pub(super) fn take(&mut self) -> Vec<(Batch, Offsets)> {
        let mut out = Vec::new();
        let concat = |v: Vec<arrow::array::RecordBatch>| -> Option<arrow::array::RecordBatch> {
            let schema = v.first()?.schema();
            match arrow::compute::concat_batches(&schema, &v) {
                Ok(b) => Some(b),
                Err(error) => {
                    tracing::error!(%error, "could not coalesce Kafka batches");
                    None
                }
            }
        };
        self.events_from.clear();
        if let Some(b) = concat(std::mem::take(&mut self.events)) {
            out.push((Batch::Events(b), HashMap::new()));
        }
        if let Some(b) = concat(std::mem::take(&mut self.metrics)) {
            out.push((Batch::Metrics(b), HashMap::new()));
        }
        let offsets: Offsets = self
            .positions
            .drain(..)
            .map(|p| ((p.topic, p.partition), p.next))
            .collect();
        match out.last_mut() {
            Some(last) => last.1 = offsets,
            // Only poison or empty messages: their offsets still need storing, after
            // everything handed over before them.
            None if !offsets.is_empty() => out.push((Batch::Idle, offsets)),
            None => {}
        }
        self.rows = 0;
        self.bytes = 0;
        self.started = None;
        out
    }
}
