//! The repartition message format: which partition each row goes to, and event rows as
//! Arrow IPC streams of at most [`MAX_MESSAGE_BYTES`] (dictionaries compacted to the rows
//! sent; halved until they fit), decoded only after their framing is checked, so a foreign
//! message is refused rather than read.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Int32Type};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use verity_model::event::{col, schema};
use verity_rules::key_sets::key_partition;

/// Aim for messages of about this size …
const TARGET_MESSAGE_BYTES: usize = 256 * 1024;
/// … and never above this (Kafka's default limit is 1 MiB, headers included).
pub const MAX_MESSAGE_BYTES: usize = 900 * 1024;

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
    let mut scratch = Vec::new();
    for row in 0..batch.num_rows() {
        let values = texts.iter().map(|t| (!t.is_null(row)).then(|| t.value(row).as_bytes()));
        let p = key_partition(values, n, &mut scratch);
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
