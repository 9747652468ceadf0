//! JSON-lines rendering of event and metric batches: the forensic view printed by
//! `verity normalize` and written by the archive, one object per row, nulls omitted.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use arrow::json::LineDelimitedWriter;

/// Writes every row of `batch` as one JSON object per line.
pub fn write_jsonl<W: Write>(out: W, batch: &RecordBatch) -> Result<(), ArrowError> {
    let mut writer = LineDelimitedWriter::new(out);
    writer.write(batch)?;
    writer.finish()
}

/// Renders every row of `batch` as JSON objects (for tests and small outputs).
pub fn to_json_rows(batch: &RecordBatch) -> Result<Vec<serde_json::Value>, ArrowError> {
    let mut buf = Vec::new();
    write_jsonl(&mut buf, batch)?;
    buf.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| ArrowError::JsonError(e.to_string())))
        .collect()
}
