//! Reading values out of an event batch row: group keys and evidence.

use std::borrow::Cow;
use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType, UInt32Type, UInt64Type};
use arrow::util::display::array_value_to_string;
use verity_model::alert::Evidence;
use verity_model::event::col;
use verity_model::time::format_rfc3339_ns;

use crate::packed_evidence::PackedEvidence;
use crate::state_key::Key;

/// How many evidence events an alert carries at most.
pub const MAX_EVIDENCE: usize = 5;

/// `rules.max_evidence_bytes` unless set: how much of an event's line its evidence keeps.
pub const DEFAULT_EVIDENCE_BYTES: usize = 4096;

pub struct Rows<'b> {
    pub batch: &'b RecordBatch,
    time: &'b arrow::array::PrimitiveArray<TimestampNanosecondType>,
    sender_verified: Option<&'b arrow::array::BooleanArray>,
    raw: Option<&'b arrow::array::StringArray>,
    max_raw: usize,
    /// Each column as text where it holds text: looked up once per batch rather than
    /// downcast again for every row's key.
    texts: Vec<Option<&'b arrow::array::StringArray>>,
}

impl<'b> Rows<'b> {
    pub fn new(batch: &'b RecordBatch) -> Option<Self> {
        let idx = batch.schema().index_of(col::EVENT_TIME).ok()?;
        let time = batch.column(idx).as_primitive_opt::<TimestampNanosecondType>()?;
        let sender_verified = batch
            .column_by_name(col::SENDER_VERIFIED)
            .and_then(|c| c.as_boolean_opt());
        let raw = batch.column_by_name(col::RAW).and_then(|c| c.as_string_opt::<i32>());
        Some(Self {
            batch,
            time,
            sender_verified,
            raw,
            max_raw: DEFAULT_EVIDENCE_BYTES,
            texts: batch.columns().iter().map(|c| c.as_string_opt::<i32>()).collect(),
        })
    }

    /// How much of an event's line its evidence keeps (`rules.max_evidence_bytes`).
    pub fn with_max_evidence_bytes(mut self, max: usize) -> Self {
        self.max_raw = max;
        self
    }

    fn text(&self, name: &str, row: usize) -> Option<&'b str> {
        let a = self.batch.column_by_name(name)?.as_string_opt::<i32>()?;
        (row < a.len() && a.is_valid(row)).then(|| a.value(row))
    }

    /// Whether the row is evidence its sender was entitled to report about `entity` (the
    /// column naming the identity acted on): verified, and from a trusted node or aggregator,
    /// the destination that enforced the decision, or the acting identity itself. Returns it
    /// with the sender and whether the sender is a trusted node or aggregator.
    pub fn entitled(&self, row: usize, entity_col: Option<usize>) -> (bool, Option<&'b str>, bool) {
        let sender = self.text(col::SENDER, row).filter(|s| !s.is_empty());
        let Some(s) = sender.filter(|_| self.sender_verified(row)) else {
            return (false, sender, false);
        };
        if self.text(col::SENDER_BINDING, row) == Some("trusted") {
            return (true, sender, true);
        }
        let bare = |p: &'b str| p.strip_prefix("spiffe://").unwrap_or(p);
        let me = bare(s);
        let destination = self.text(col::DESTINATION_PRINCIPAL, row).map(bare);
        let entity = entity_col
            .and_then(|c| self.batch.column(c).as_string_opt::<i32>())
            .filter(|a| row < a.len() && a.is_valid(row))
            .map(|a| bare(a.value(row)));
        (destination == Some(me) || entity == Some(me), sender, false)
    }

    /// Whether the row is its sender's verified evidence (false when the batch cannot say).
    pub fn sender_verified(&self, row: usize) -> bool {
        self.sender_verified
            .is_some_and(|v| row < v.len() && v.is_valid(row) && v.value(row))
    }

    pub fn times(&self) -> &'b arrow::array::PrimitiveArray<TimestampNanosecondType> {
        self.time
    }

    pub fn time(&self, row: usize) -> i64 {
        self.time.value(row)
    }

    pub fn value(&self, column: usize, row: usize) -> Option<String> {
        let a: &ArrayRef = self.batch.column(column);
        if a.is_null(row) {
            return None;
        }
        // Most key columns are strings: copy them directly rather than through the
        // general-purpose display formatter.
        if let Some(s) = a.as_string_opt::<i32>() {
            return Some(s.value(row).to_string());
        }
        array_value_to_string(a, row).ok()
    }

    /// Like [`Rows::value`], borrowed from the batch when the column holds strings.
    pub fn text_value(&self, column: usize, row: usize) -> Option<Cow<'b, str>> {
        if let Some(Some(text)) = self.texts.get(column) {
            return (row < text.len() && text.is_valid(row)).then(|| Cow::Borrowed(text.value(row)));
        }
        let a: &'b ArrayRef = self.batch.column(column);
        if row >= a.len() || a.is_null(row) {
            return None;
        }
        if let Some(s) = a.as_string_opt::<i32>() {
            return Some(Cow::Borrowed(s.value(row)));
        }
        array_value_to_string(a, row).ok().map(Cow::Owned)
    }

    /// Whether `column` has a value at `row`.
    pub fn is_valid(&self, column: usize, row: usize) -> bool {
        let a = self.batch.column(column);
        row < a.len() && a.is_valid(row)
    }

    /// The value at `row` as a number: integers and floats directly, anything else parsed
    /// from its text (as `sum`, `min` and `max` always did).
    pub fn number(&self, column: usize, row: usize) -> Option<f64> {
        let a: &ArrayRef = self.batch.column(column);
        if row >= a.len() || a.is_null(row) {
            return None;
        }
        macro_rules! primitive {
            ($($t:ty),*) => {
                $(if let Some(p) = a.as_primitive_opt::<$t>() {
                    return Some(p.value(row) as f64);
                })*
            };
        }
        primitive!(Int32Type, Int64Type, UInt32Type, UInt64Type, Float64Type);
        self.text_value(column, row)?.parse::<f64>().ok()
    }

    fn named(&self, name: &str, row: usize) -> Option<Cow<'b, str>> {
        let i = self.batch.schema().index_of(name).ok()?;
        self.text_value(i, row)
    }

    /// The row as evidence: its key facts and its line, cut to the configured size (the line
    /// can be as long as `intake.limits.max_record_bytes`).
    pub fn evidence(&self, row: usize) -> Evidence {
        self.packed_evidence(row).unpack()
    }

    /// The row as evidence kept in rule state (up to five per open group or key): one
    /// allocation for all its texts.
    pub fn packed_evidence(&self, row: usize) -> PackedEvidence {
        let line = self
            .raw
            .filter(|a| row < a.len() && a.is_valid(row))
            .map_or("", |a| a.value(row));
        let status = self.batch.schema().index_of(col::STATUS).ok().and_then(|i| {
            self.batch
                .column(i)
                .as_primitive_opt::<Int32Type>()
                .filter(|a| row < a.len() && !a.is_null(row))
                .map(|a| a.value(row))
        });
        let raw = verity_model::text::cut(line, self.max_raw);
        let time = format_rfc3339_ns(self.time(row));
        let [source, service, decision, sender, binding, destination, request] = [
            col::SOURCE_PRINCIPAL,
            col::DESTINATION_SERVICE,
            col::DECISION,
            col::SENDER,
            col::SENDER_BINDING,
            col::DESTINATION_PRINCIPAL,
            col::REQUEST_PRINCIPAL,
        ]
        .map(|name| self.named(name, row));
        let texts = [
            Some(time.as_str()),
            source.as_deref(),
            service.as_deref(),
            Some(decision.as_deref().unwrap_or_default()),
            Some(raw),
            sender.as_deref(),
            binding.as_deref(),
            destination.as_deref(),
            request.as_deref(),
        ];
        let raw_bytes = (line.len() > self.max_raw).then_some(line.len());
        PackedEvidence::new(texts, status, raw_bytes, self.sender_verified(row))
    }
}

pub fn group_map(columns: &[(String, usize)], key: &Key) -> BTreeMap<String, Option<String>> {
    columns
        .iter()
        .zip(key.values())
        .map(|((n, _), v)| (n.clone(), v.map(str::to_owned)))
        .collect()
}

pub fn push_evidence<E>(list: &mut Vec<E>, e: impl FnOnce() -> E) {
    if list.len() < MAX_EVIDENCE {
        list.push(e());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_model::{AccessEvent, EventBatchBuilder};

    #[test]
    fn evidence_keeps_a_cut_line_and_its_length() {
        let long = format!("{}é{}", "a".repeat(99), "b".repeat(10_000));
        let mut b = EventBatchBuilder::default();
        for raw in [long.as_str(), "short line"] {
            b.append(&AccessEvent {
                raw: raw.into(),
                ..Default::default()
            });
        }
        let batch = b.finish().expect("batch");
        let rows = Rows::new(&batch).expect("rows").with_max_evidence_bytes(100);
        let cut = rows.evidence(0);
        assert_eq!(cut.raw, "a".repeat(99), "never inside the two-byte character");
        assert_eq!(cut.raw_bytes, Some(long.len()));
        let whole = rows.evidence(1);
        assert_eq!(whole.raw, "short line");
        assert_eq!(whole.raw_bytes, None);
        let default = Rows::new(&batch).expect("rows").evidence(0);
        assert_eq!(default.raw.len(), DEFAULT_EVIDENCE_BYTES);
    }
}
