//! What one request (or source message) rejected: every rejection is counted by reason, but
//! only the first `dead_letter.max_entries_per_request` keep their record text for the
//! dead-letter file, each cut to `dead_letter.max_record_bytes`. A request of a million bad
//! records costs a million counts, not a million copies of the records.

use serde::Serialize;

use super::{RejectReason, Rejection};

/// A record's position in its source.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// `topic/partition`, shared by the message's records (their `ingest_partition`).
    #[serde(skip)]
    pub stream: std::sync::Arc<str>,
}

impl Origin {
    pub fn new(topic: &str, partition: i32, offset: i64) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
            offset,
            stream: std::sync::Arc::from(format!("{topic}/{partition}")),
        }
    }
}

/// A rejection kept for the dead-letter file.
#[derive(Debug)]
pub struct KeptRejection<'o> {
    pub rejection: Rejection,
    /// The record as received, cut to the configured size at a character boundary.
    pub record: String,
    /// The record's length before it was cut.
    pub record_bytes: usize,
    pub origin: Option<&'o Origin>,
}

#[derive(Debug)]
pub struct Rejections<'o> {
    max_kept: usize,
    max_record_bytes: usize,
    by_reason: [u64; RejectReason::ALL.len()],
    kept: Vec<KeptRejection<'o>>,
}

impl<'o> Rejections<'o> {
    pub fn new(max_kept: usize, max_record_bytes: usize) -> Self {
        Self {
            max_kept,
            max_record_bytes,
            by_reason: [0; RejectReason::ALL.len()],
            kept: Vec::new(),
        }
    }

    /// Whether the next rejection keeps its record text: callers render a record (an OTLP
    /// record as JSON) only when it does.
    pub fn keeps_next(&self) -> bool {
        self.kept.len() < self.max_kept
    }

    pub fn push(&mut self, rejection: Rejection, record: &str, origin: Option<&'o Origin>) {
        if let Some(n) = self.by_reason.get_mut(rejection.reason as usize) {
            *n = n.saturating_add(1);
        }
        if self.keeps_next() {
            self.kept.push(KeptRejection {
                record: cut(record, self.max_record_bytes).to_string(),
                record_bytes: record.len(),
                rejection,
                origin,
            });
        }
    }

    pub fn total(&self) -> u64 {
        self.by_reason.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Rejections counted but not kept.
    pub fn omitted(&self) -> u64 {
        self.total().saturating_sub(self.kept.len() as u64)
    }

    pub fn kept(&self) -> &[KeptRejection<'o>] {
        &self.kept
    }

    /// Counts by reason, for metrics and the summary line.
    pub fn by_reason(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL
            .iter()
            .zip(self.by_reason)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (*r, n))
    }
}

pub use verity_model::text::cut;

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn counts_everything_and_keeps_only_the_first_records_cut_short() {
        let mut r = Rejections::new(2, 4);
        for _ in 0..5 {
            r.push(Rejection::new(RejectReason::Empty, "empty"), "ab€cd", None);
        }
        r.push(Rejection::new(RejectReason::TooDeep, "deep"), "x", None);
        assert_eq!(r.total(), 6);
        assert_eq!(r.omitted(), 4);
        assert_eq!(r.kept().len(), 2);
        // "ab€" is 5 bytes: the cut backs off to the character boundary.
        assert_eq!(r.kept()[0].record, "ab");
        assert_eq!(r.kept()[0].record_bytes, 7);
        assert!(!r.keeps_next());
        let counts: Vec<_> = r.by_reason().collect();
        assert_eq!(counts, vec![(RejectReason::Empty, 5), (RejectReason::TooDeep, 1)]);
    }

    #[test]
    fn cut_never_splits_a_character() {
        let s = "é".repeat(10);
        for max in 0..25 {
            let c = cut(&s, max);
            assert!(c.len() <= max);
            assert!(s.starts_with(c));
        }
    }
}
