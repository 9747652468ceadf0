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
    /// The partition each of `events` came from, where it came from one alone (one
    /// message's rows): what is dropped when that partition is revoked before hand-over.
    events_from: Vec<Option<(String, i32)>>,
    pub(super) metrics: Vec<arrow::array::RecordBatch>,
    metrics_from: Vec<Option<(String, i32)>>,
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
            metrics_from: Vec::new(),
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

    /// Rows from one partition's message (OTLP or repartitioned rows): dropped if that
    /// partition is revoked before hand-over.
    pub(super) fn add_from(&mut self, batch: Option<Batch>, topic: &str, partition: i32) {
        self.push(batch, Some((topic.to_string(), partition)));
    }

    /// Rows of several partitions' messages (raw lines normalized together at hand-over).
    pub(super) fn add(&mut self, batch: Option<Batch>) {
        self.push(batch, None);
    }

    fn push(&mut self, batch: Option<Batch>, from: Option<(String, i32)>) {
        let (batches, froms, b) = match batch {
            Some(Batch::Events(b)) => (&mut self.events, &mut self.events_from, b),
            Some(Batch::Metrics(b)) => (&mut self.metrics, &mut self.metrics_from, b),
            _ => return,
        };
        self.rows += b.num_rows();
        self.bytes = self.bytes.saturating_add(b.get_array_memory_size());
        batches.push(b);
        froms.push(from);
    }

    /// Drops what was read from `partitions` and not handed over yet: they were revoked, and
    /// their next owner reads it again from the committed offset. Returns the positions dropped
    /// (with the messages read from each).
    pub(super) fn drop_partitions(&mut self, partitions: &[(String, i32)]) -> Vec<Position> {
        if partitions.is_empty() {
            return Vec::new();
        }
        let revoked = |topic: &str, partition: i32| partitions.iter().any(|(t, p)| *p == partition && t == topic);
        let gone = |from: &Option<(String, i32)>| from.as_ref().is_some_and(|(t, p)| revoked(t, *p));
        let (rows, bytes) = (&mut self.rows, &mut self.bytes);
        for (batches, from) in [
            (&mut self.events, &mut self.events_from),
            (&mut self.metrics, &mut self.metrics_from),
        ] {
            let mut kept = Vec::with_capacity(batches.len());
            let mut kept_from = Vec::with_capacity(batches.len());
            for (b, f) in batches.drain(..).zip(from.drain(..)) {
                if gone(&f) {
                    *rows = rows.saturating_sub(b.num_rows());
                    *bytes = bytes.saturating_sub(b.get_array_memory_size());
                } else {
                    kept.push(b);
                    kept_from.push(f);
                }
            }
            *batches = kept;
            *from = kept_from;
        }
        self.raw.retain(|m| {
            let keep = !revoked(&m.origin.topic, m.origin.partition);
            if !keep {
                *rows = rows.saturating_sub(m.text.lines().count());
                *bytes = bytes.saturating_sub(m.text.len());
            }
            keep
        });
        let (dropped, kept) = std::mem::take(&mut self.positions)
            .into_iter()
            .partition(|p| revoked(&p.topic, p.partition));
        self.positions = kept;
        if self.positions.is_empty() {
            self.started = None;
        }
        dropped
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
        self.metrics_from.clear();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn rows(n: i32) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from_iter_values(0..n))]).expect("batch")
    }

    fn raw(accum: &mut Accum, topic: &str, partition: i32, offset: i64, text: &str) {
        accum.position(topic, partition, offset, text.len());
        accum.rows += text.lines().count();
        accum.bytes += text.len();
        accum.raw.push(RawMsg {
            text: text.to_string(),
            origin: Origin::new(topic, partition, offset),
            key: None,
            sender: crate::ingest::Sender::configured(None),
        });
    }

    fn from(accum: &mut Accum, batch: Batch, topic: &str, partition: i32, offset: i64) {
        accum.position(topic, partition, offset, 10);
        accum.add_from(Some(batch), topic, partition);
    }

    /// Whatever a message held (raw lines, OTLP logs or metrics, repartitioned rows), a revoked
    /// partition's read-ahead leaves the batch, its rows and its offsets: the next owner reads
    /// it again, and handing it over here too would count it twice.
    #[test]
    fn a_revoked_partitions_read_ahead_is_dropped_whatever_it_holds() {
        let mut accum = Accum::new();
        raw(&mut accum, "in", 0, 7, "a\nb\n");
        raw(&mut accum, "in", 1, 3, "c\n");
        from(&mut accum, Batch::Events(rows(5)), "in", 1, 4);
        from(&mut accum, Batch::Metrics(rows(2)), "in", 1, 5);
        from(&mut accum, Batch::Events(rows(4)), "in", 2, 9);
        from(&mut accum, Batch::Metrics(rows(3)), "in", 2, 10);
        assert_eq!(accum.rows, 2 + 1 + 5 + 2 + 4 + 3);

        let dropped = accum.drop_partitions(&[("in".into(), 1), ("other".into(), 0)]);
        let dropped: Vec<(&str, i32, u64)> = dropped
            .iter()
            .map(|p| (p.topic.as_str(), p.partition, p.messages))
            .collect();
        assert_eq!(dropped, vec![("in", 1, 3)]);
        assert_eq!(accum.rows, 2 + 4 + 3);
        assert_eq!(accum.raw.len(), 1);
        assert_eq!(accum.raw[0].origin.partition, 0);
        assert!(accum.drop_partitions(&[]).is_empty());

        let taken = accum.take();
        let events: usize = taken
            .iter()
            .map(|(b, _)| match b {
                Batch::Events(b) | Batch::Metrics(b) => b.num_rows(),
                _ => 0,
            })
            .sum();
        assert_eq!(events, 4 + 3, "partition 1's events and metrics are gone");
        let offsets: Offsets = taken.into_iter().flat_map(|(_, o)| o).collect();
        assert_eq!(
            offsets,
            Offsets::from([(("in".into(), 0), 8), (("in".into(), 2), 11)]),
            "no offset of the revoked partition is stored"
        );
    }

    #[test]
    fn dropping_everything_read_leaves_no_batch_to_age() {
        let mut accum = Accum::new();
        raw(&mut accum, "in", 0, 1, "a\n");
        accum.started = Some(Instant::now());
        assert_eq!(accum.drop_partitions(&[("in".into(), 0)]).len(), 1);
        assert!(accum.started.is_none());
        assert_eq!((accum.rows, accum.bytes), (0, 0));
        assert!(accum.take().is_empty());
    }
}
