//! Event time that one stream cannot move for the others.
//!
//! Each stream has its own clock: the newest event time it sent. A stream is one sender (the
//! `sender` column: an OTLP sender identity, a Kafka topic's producer, or none for files) in
//! one Kafka partition (the `ingest_partition` column; none outside Kafka), so a lagging
//! partition holds event time back instead of having its events made late by the others.
//! The watermark is the minimum over the streams heard from recently (arrival within the
//! idle timeout), minus the allowed lateness. A sender that dates its records ahead only moves its own clock; a sender
//! that goes quiet stops holding the others back once its idle timeout passes, and holds them
//! back again when it returns, so its events are not made late by the others (or by whoever
//! happened to send first).
//!
//! Without arrival times (replay, tests) every sender counts as active.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::Int32Type;
use verity_model::event::col;

/// At most this many streams are tracked; beyond, the one heard from longest ago is dropped.
pub const MAX_SENDERS: usize = 10_000;

/// A stream in a batch: its Kafka partition (`""` outside Kafka) and its sender (`""` for
/// none), borrowed from the batch's columns.
pub type Stream<'b> = (&'b str, &'b str);

#[derive(Debug, Clone, Copy)]
struct Clock {
    newest: i64,
    arrival: Option<i64>,
}

/// The oldest of `clocks`, leaving out those more than `max_lag_ns` behind `now` (wall clock)
/// unless every one is.
fn oldest(clocks: impl Iterator<Item = i64> + Clone, now: Option<i64>, max_lag_ns: i64) -> Option<i64> {
    let floor = now.map(|n| n.saturating_sub(max_lag_ns));
    clocks
        .clone()
        .filter(|t| floor.is_none_or(|f| *t >= f))
        .min()
        .or_else(|| clocks.min())
}

#[derive(Debug)]
pub struct EventClock {
    /// Clocks by partition, then sender: looked up with the batch's borrowed text.
    streams: HashMap<String, HashMap<String, Clock>>,
    count: usize,
    lateness_ns: i64,
    idle_ns: i64,
    /// A sender whose clock is further behind the wall clock than this does not hold the
    /// others back (one that keeps sending old records would otherwise stall every window).
    max_lag_ns: i64,
    watermark: Option<i64>,
    /// The minimum over active senders at the last batch, for idle advance.
    last_min: Option<i64>,
    /// How far silence (no batch at all) has moved event time: a floor for the watermark.
    idle_floor: Option<i64>,
}

impl EventClock {
    pub fn new(lateness_ns: i64, idle_ns: i64, max_lag_ns: i64) -> Self {
        Self {
            streams: HashMap::new(),
            count: 0,
            lateness_ns,
            idle_ns,
            max_lag_ns,
            watermark: None,
            last_min: None,
            idle_floor: None,
        }
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// How many streams' clocks are kept.
    pub fn senders(&self) -> usize {
        self.count
    }

    fn get(&self, (partition, sender): Stream<'_>) -> Option<&Clock> {
        self.streams.get(partition).and_then(|p| p.get(sender))
    }

    fn clocks(&self) -> impl Iterator<Item = (Stream<'_>, &Clock)> + Clone {
        self.streams
            .iter()
            .flat_map(|(p, senders)| senders.iter().map(move |(s, c)| ((p.as_str(), s.as_str()), c)))
    }

    /// The oldest and newest event time of each stream in a batch (rows in `skip` are left
    /// out: forged records).
    pub fn batch_senders<'b>(
        batch: &'b RecordBatch,
        times: &arrow::array::TimestampNanosecondArray,
        skip: Option<&BooleanArray>,
    ) -> HashMap<Stream<'b>, (i64, i64)> {
        let senders = batch.column_by_name(col::SENDER).and_then(|c| c.as_string_opt::<i32>());
        let partitions = batch
            .column_by_name(col::INGEST_PARTITION)
            .and_then(|c| c.as_dictionary_opt::<Int32Type>())
            .and_then(|d| Some((d.keys(), d.values().as_string_opt::<i32>()?)));
        let partition_of = |i: usize| -> &'b str {
            let Some((keys, values)) = partitions else { return "" };
            if !keys.is_valid(i) {
                return "";
            }
            usize::try_from(keys.value(i))
                .ok()
                .filter(|k| *k < values.len())
                .map_or("", |k| values.value(k))
        };
        let mut span: HashMap<Stream<'b>, (i64, i64)> = HashMap::new();
        let rows = batch.num_rows().min(times.len());
        if partitions.is_none() && senders.is_none_or(|s| s.null_count() == s.len()) {
            // One stream (files, an unauthenticated listener): its span without looking at
            // the stream of each row.
            let kept = |i: &usize| !skip.is_some_and(|f| f.is_valid(*i) && f.value(*i));
            let values = times.values();
            let (lo, hi) = (0..rows)
                .filter(kept)
                .filter_map(|i| values.get(i).copied())
                .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
            if lo <= hi {
                span.insert(("", ""), (lo, hi));
            }
            return span;
        }
        // A batch holds runs of rows from one stream (a request's records, a Kafka message):
        // a run is measured with one comparison per row and enters the map once.
        let mut run: Option<(Stream<'b>, i64, i64)> = None;
        let mut close = |run: (Stream<'b>, i64, i64)| {
            let (sender, lo, hi) = run;
            span.entry(sender)
                .and_modify(|(l, h)| {
                    *l = (*l).min(lo);
                    *h = (*h).max(hi);
                })
                .or_insert((lo, hi));
        };
        for i in 0..rows {
            if skip.is_some_and(|f| f.is_valid(i) && f.value(i)) {
                continue;
            }
            let sender = (
                partition_of(i),
                senders.filter(|s| s.is_valid(i)).map_or("", |s| s.value(i)),
            );
            let t = times.value(i);
            match &mut run {
                Some((current, lo, hi)) if *current == sender => {
                    *lo = (*lo).min(t);
                    *hi = (*hi).max(t);
                }
                _ => {
                    if let Some(done) = run.replace((sender, t, t)) {
                        close(done);
                    }
                }
            }
        }
        if let Some(done) = run {
            close(done);
        }
        span
    }

    /// The watermark a batch's rows are judged late against: as before the batch, except that
    /// a stream new (or back from idle) is not held to the others' time, only to its own
    /// oldest event in the batch.
    pub fn watermark_for(&self, batch: &HashMap<Stream<'_>, (i64, i64)>, arrival_ns: Option<i64>) -> Option<i64> {
        let active = |c: &Clock| match (arrival_ns, c.arrival) {
            (Some(now), Some(a)) => a >= now.saturating_sub(self.idle_ns),
            _ => true,
        };
        let others = self
            .clocks()
            .filter(|(k, c)| !batch.contains_key(k) && active(c))
            .map(|(_, c)| c.newest);
        let own = batch.iter().map(|(k, (lo, _))| match self.get(*k) {
            Some(c) if active(c) => c.newest,
            _ => *lo,
        });
        let w = oldest(others.chain(own), arrival_ns, self.max_lag_ns).map(|m| m.saturating_sub(self.lateness_ns));
        w.max(self.idle_floor)
    }

    /// Takes in a batch's streams (from [`EventClock::batch_senders`]), arrived at
    /// `arrival_ns`. Returns whether any row counted.
    pub fn observe(&mut self, batch: &HashMap<Stream<'_>, (i64, i64)>, arrival_ns: Option<i64>) -> bool {
        if batch.is_empty() {
            return false;
        }
        for ((partition, sender), (_, t)) in batch {
            match self.streams.get_mut(*partition).and_then(|p| p.get_mut(*sender)) {
                Some(c) => {
                    c.newest = c.newest.max(*t);
                    c.arrival = arrival_ns;
                }
                None => {
                    if self.count >= MAX_SENDERS {
                        self.evict_oldest();
                    }
                    self.streams.entry((*partition).to_string()).or_default().insert(
                        (*sender).to_string(),
                        Clock {
                            newest: *t,
                            arrival: arrival_ns,
                        },
                    );
                    self.count = self.count.saturating_add(1);
                }
            }
        }
        self.last_min = self.active_min(arrival_ns);
        if let Some(m) = self.last_min {
            self.watermark = Some(m.saturating_sub(self.lateness_ns)).max(self.idle_floor);
        }
        true
    }

    /// With no events for `idle_ns` of wall-clock time, event time moves on by as much from
    /// the slowest active sender's clock, so silence is noticed.
    pub fn advance_idle(&mut self, idle_ns: i64) -> bool {
        let Some(last) = self.last_min else { return false };
        if idle_ns <= self.lateness_ns {
            return false;
        }
        let before = self.watermark;
        let floor = last.saturating_add(idle_ns).saturating_sub(self.lateness_ns);
        self.idle_floor = self.idle_floor.max(Some(floor));
        self.watermark = self.watermark.max(self.idle_floor);
        self.watermark != before
    }

    fn active_min(&mut self, now: Option<i64>) -> Option<i64> {
        let idle = self.idle_ns;
        let active = |c: &Clock| match (now, c.arrival) {
            (Some(now), Some(a)) => a >= now.saturating_sub(idle),
            _ => true,
        };
        // Streams silent for long are forgotten: they no longer hold anyone back.
        if let Some(now) = now {
            let horizon = now.saturating_sub(idle.saturating_mul(10));
            for senders in self.streams.values_mut() {
                senders.retain(|_, c| c.arrival.is_none_or(|a| a >= horizon));
            }
            self.streams.retain(|_, senders| !senders.is_empty());
            self.count = self.streams.values().map(HashMap::len).sum();
        }
        let lag = self.max_lag_ns;
        oldest(
            self.clocks().filter(|(_, c)| active(c)).map(|(_, c)| c.newest),
            now,
            lag,
        )
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .clocks()
            .min_by_key(|(_, c)| c.arrival.unwrap_or(i64::MIN))
            .map(|((p, s), _)| (p.to_string(), s.to_string()));
        if let Some((partition, sender)) = oldest
            && let Some(senders) = self.streams.get_mut(&partition)
        {
            senders.remove(&sender);
            if senders.is_empty() {
                self.streams.remove(&partition);
            }
            self.count = self.count.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    const S: i64 = 1_000_000_000;

    fn observe(c: &mut EventClock, b: &RecordBatch, t: &TimestampNanosecondArray, at: Option<i64>) {
        let senders = EventClock::batch_senders(b, t, None);
        c.observe(&senders, at);
    }

    fn batch(rows: &[(&str, i64)]) -> (RecordBatch, TimestampNanosecondArray) {
        let times = TimestampNanosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let schema = Schema::new(vec![
            Field::new(col::SENDER, DataType::Utf8, true),
            Field::new(col::EVENT_TIME, DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        ]);
        let b = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(times.clone()),
            ],
        )
        .unwrap();
        (b, times)
    }

    proptest::proptest! {
        /// Each stream's span is the oldest and newest time of its rows not skipped, whether
        /// the batch holds senders or none (one stream, measured without reading them).
        #[test]
        fn spans_are_the_oldest_and_newest_of_each_stream(
            rows in proptest::collection::vec(
                (proptest::option::of("[ab]"), -5i64..5, proptest::option::of(proptest::bool::ANY)),
                0..40,
            ),
            no_senders in proptest::bool::ANY,
        ) {
            let rows: Vec<(Option<String>, i64, Option<bool>)> = rows
                .into_iter()
                .map(|(s, t, k)| (s.filter(|_| !no_senders), t, k))
                .collect();
            let times = TimestampNanosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
            let schema = Schema::new(vec![Field::new(col::SENDER, DataType::Utf8, true)]);
            let senders = StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>());
            let b = RecordBatch::try_new_with_options(
                Arc::new(schema),
                vec![Arc::new(senders)],
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
            )
            .unwrap();
            let skip: BooleanArray = rows.iter().map(|r| r.2).collect();
            let mut expected: HashMap<Stream<'_>, (i64, i64)> = HashMap::new();
            for (sender, t, skipped) in &rows {
                if *skipped == Some(true) {
                    continue;
                }
                let e = expected.entry(("", sender.as_deref().unwrap_or(""))).or_insert((*t, *t));
                *e = (e.0.min(*t), e.1.max(*t));
            }
            proptest::prop_assert_eq!(EventClock::batch_senders(&b, &times, Some(&skip)), expected);
        }
    }

    #[test]
    fn one_sender_cannot_move_time_for_the_others() {
        let mut c = EventClock::new(5 * S, 60 * S, 3600 * S);
        let (b, t) = batch(&[("a", 100 * S), ("b", 100 * S)]);
        observe(&mut c, &b, &t, Some(0));
        assert_eq!(c.watermark(), Some(95 * S));
        // `b` dates its records a year ahead: only its own clock moves.
        let (b, t) = batch(&[("b", 365 * 86_400 * S)]);
        observe(&mut c, &b, &t, Some(S));
        assert_eq!(c.watermark(), Some(95 * S));
        let (b, t) = batch(&[("a", 110 * S)]);
        observe(&mut c, &b, &t, Some(2 * S));
        assert_eq!(c.watermark(), Some(105 * S));
    }

    #[test]
    fn a_sender_of_old_records_does_not_stall_the_others() {
        let mut c = EventClock::new(5 * S, 60 * S, 600 * S);
        let now = 10_000 * S;
        let (b, t) = batch(&[("stale", now - 3600 * S), ("honest", now - S)]);
        observe(&mut c, &b, &t, Some(now));
        assert_eq!(c.watermark(), Some(now - 6 * S));
        // Alone, even a lagging sender moves time (a backlog being caught up).
        let mut c = EventClock::new(5 * S, 60 * S, 600 * S);
        let (b, t) = batch(&[("backlog", now - 3600 * S)]);
        observe(&mut c, &b, &t, Some(now));
        assert_eq!(c.watermark(), Some(now - 3605 * S));
    }

    #[test]
    fn whoever_sends_first_does_not_set_the_time() {
        let mut c = EventClock::new(5 * S, 60 * S, 3600 * S);
        let (b, t) = batch(&[("ahead", 340 * S)]);
        observe(&mut c, &b, &t, Some(0));
        assert_eq!(c.watermark(), Some(335 * S));
        let (b, t) = batch(&[("honest", 100 * S), ("honest", 90 * S)]);
        let senders = EventClock::batch_senders(&b, &t, None);
        assert_eq!(
            c.watermark_for(&senders, Some(S)),
            Some(85 * S),
            "a new sender's rows are not late because another sender was ahead"
        );
        c.observe(&senders, Some(S));
        assert_eq!(c.watermark(), Some(95 * S));
    }

    #[test]
    fn a_quiet_sender_stops_holding_the_others_back() {
        let mut c = EventClock::new(5 * S, 60 * S, 3600 * S);
        let (b, t) = batch(&[("slow", 10 * S), ("a", 100 * S)]);
        observe(&mut c, &b, &t, Some(0));
        assert_eq!(c.watermark(), Some(5 * S));
        let (b, t) = batch(&[("a", 200 * S)]);
        observe(&mut c, &b, &t, Some(61 * S));
        assert_eq!(c.watermark(), Some(195 * S), "slow was last heard from 61 s ago");
        // When the slow sender returns, it holds the others back again: its events are not
        // late because the others moved on.
        let (b, t) = batch(&[("slow", 20 * S)]);
        observe(&mut c, &b, &t, Some(62 * S));
        assert_eq!(c.watermark(), Some(15 * S));
    }

    fn partitioned(rows: &[(&str, &str, i64)]) -> (RecordBatch, TimestampNanosecondArray) {
        use arrow::array::DictionaryArray;
        let times = TimestampNanosecondArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>());
        let partitions: DictionaryArray<Int32Type> = rows.iter().map(|r| r.0).collect();
        let schema = Schema::new(vec![
            Field::new(col::SENDER, DataType::Utf8, true),
            Field::new(col::EVENT_TIME, DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new(col::INGEST_PARTITION, partitions.data_type().clone(), true),
        ]);
        let b = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(times.clone()),
                Arc::new(partitions),
            ],
        )
        .unwrap();
        (b, times)
    }

    #[test]
    fn a_lagging_partition_holds_time_back_instead_of_being_late() {
        let mut c = EventClock::new(5 * S, 60 * S, 3600 * S);
        // One producer (one sender) writes to two partitions; partition 1 is a backlog.
        let (b, t) = partitioned(&[("logs/0", "collector", 100 * S), ("logs/1", "collector", 10 * S)]);
        observe(&mut c, &b, &t, Some(0));
        assert_eq!(c.watermark(), Some(5 * S), "the oldest partition's clock");
        let (b, t) = partitioned(&[("logs/0", "collector", 200 * S)]);
        observe(&mut c, &b, &t, Some(S));
        assert_eq!(c.watermark(), Some(5 * S), "partition 0 alone cannot move time");
        let (b, t) = partitioned(&[("logs/1", "collector", 20 * S)]);
        let streams = EventClock::batch_senders(&b, &t, None);
        assert!(
            c.watermark_for(&streams, Some(2 * S)).is_some_and(|w| w <= 20 * S),
            "the backlog's records are not late"
        );
        c.observe(&streams, Some(2 * S));
        assert_eq!(c.watermark(), Some(15 * S));
        assert_eq!(c.senders(), 2);
        // Without the partition column, the same records are one stream: the backlog is late.
        let mut one = EventClock::new(5 * S, 60 * S, 3600 * S);
        let (b, t) = batch(&[("collector", 100 * S), ("collector", 10 * S)]);
        observe(&mut one, &b, &t, Some(0));
        let (b, t) = batch(&[("collector", 200 * S)]);
        observe(&mut one, &b, &t, Some(S));
        let (b, t) = batch(&[("collector", 20 * S)]);
        let streams = EventClock::batch_senders(&b, &t, None);
        assert_eq!(one.watermark_for(&streams, Some(2 * S)), Some(195 * S));
    }

    #[test]
    fn a_quiet_partition_is_forgotten_and_the_count_follows() {
        let mut c = EventClock::new(5 * S, 60 * S, 3600 * S);
        let (b, t) = partitioned(&[("logs/0", "a", 100 * S), ("logs/1", "a", 10 * S)]);
        observe(&mut c, &b, &t, Some(0));
        assert_eq!(c.senders(), 2);
        // Ten idle timeouts later, partition 1 is forgotten.
        let (b, t) = partitioned(&[("logs/0", "a", 700 * S)]);
        observe(&mut c, &b, &t, Some(601 * S));
        assert_eq!(c.senders(), 1);
        assert_eq!(c.watermark(), Some(695 * S));
    }

    #[test]
    fn the_number_of_senders_is_bounded() {
        let mut c = EventClock::new(5 * S, 60 * S, 3600 * S);
        for i in 0..(MAX_SENDERS + 10) {
            let name = format!("s{i}");
            let (b, t) = batch(&[(name.as_str(), 100 * S)]);
            observe(&mut c, &b, &t, Some(i64::try_from(i).unwrap()));
        }
        assert_eq!(c.senders(), MAX_SENDERS);
    }
}
