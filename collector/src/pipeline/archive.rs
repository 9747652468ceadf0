//! The archive stage: normalized rows as JSON lines in a directory, for forensics.
//!
//! - `events.jsonl`: one access event per line, the columns of `docs/schema.md`, except that
//!   `resource_attributes` is written as `resource_attributes_id`;
//! - `resources.jsonl`: each distinct `resource_attributes` value once, with its id (the first
//!   128 bits of its SHA-256, in hex), written before the first event that refers to it;
//! - `metrics.jsonl`: one metric sample per line.
//!
//! Why the indirection: records of one OTLP resource share its attributes, and a sender can
//! attach a 60 KB resource to 20,000 tiny records. Written out per event that would be a
//! thousand times the request on disk; written once it costs its own size.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use arrow::error::ArrowError;
use verity_model::event::col;

use crate::metrics::Metrics;
use crate::pipeline::{Batch, Stage, StageError};

/// How many resource ids the stage remembers as written; one seen again after that is
/// written again (harmless: the same id and value).
const REMEMBERED_RESOURCES: usize = 4096;

/// Archives normalized rows as JSON lines: see the module documentation.
pub struct ArchiveStage {
    dir: PathBuf,
    events: Option<BufWriter<File>>,
    resources: Option<BufWriter<File>>,
    metrics_out: Option<BufWriter<File>>,
    written: RecentIds,
    metrics: Metrics,
}

impl ArchiveStage {
    pub fn new(dir: PathBuf, metrics: Metrics) -> Self {
        Self {
            dir,
            events: None,
            resources: None,
            metrics_out: None,
            written: RecentIds::default(),
            metrics,
        }
    }

    fn writer<'a>(
        dir: &Path,
        slot: &'a mut Option<BufWriter<File>>,
        name: &str,
    ) -> std::io::Result<&'a mut BufWriter<File>> {
        if slot.is_none() {
            std::fs::create_dir_all(dir)?;
            // Opened lazily on the worker thread: the target may be a FIFO or slow disk.
            let f = OpenOptions::new().create(true).append(true).open(dir.join(name))?;
            *slot = Some(BufWriter::with_capacity(1 << 20, f));
        }
        slot.as_mut()
            .ok_or_else(|| std::io::Error::other("archive writer missing"))
    }

    fn write_events(&mut self, batch: &RecordBatch) -> std::io::Result<()> {
        let (rows, resources) = with_resource_ids(batch).map_err(std::io::Error::other)?;
        let fresh: Vec<&(String, String)> = resources.iter().filter(|(id, _)| self.written.insert(id)).collect();
        if !fresh.is_empty() {
            let w = Self::writer(&self.dir, &mut self.resources, "resources.jsonl")?;
            for (id, attributes) in fresh {
                let line = serde_json::json!({
                    "resource_attributes_id": id,
                    "resource_attributes": attributes,
                });
                serde_json::to_writer(&mut *w, &line)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
        }
        let w = Self::writer(&self.dir, &mut self.events, "events.jsonl")?;
        verity_model::json::write_jsonl(&mut *w, &rows).map_err(std::io::Error::other)?;
        w.flush()
    }
}

impl Stage for ArchiveStage {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn process(&mut self, batch: &Batch) -> Result<(), StageError> {
        let result = match batch {
            Batch::Events(b) => self.write_events(b),
            Batch::Metrics(b) => Self::writer(&self.dir, &mut self.metrics_out, "metrics.jsonl").and_then(|w| {
                verity_model::json::write_jsonl(&mut *w, b).map_err(std::io::Error::other)?;
                w.flush()
            }),
            Batch::Idle => return Ok(()),
        };
        result.map_err(|source| {
            self.metrics.archive_errors.inc();
            StageError::Io {
                stage: "archive",
                source,
            }
        })
    }

    fn flush(&mut self) -> Result<(), StageError> {
        for w in [self.events.as_mut(), self.resources.as_mut(), self.metrics_out.as_mut()]
            .into_iter()
            .flatten()
        {
            w.flush().map_err(|source| StageError::Io {
                stage: "archive",
                source,
            })?;
        }
        Ok(())
    }
}

/// The ids written lately, oldest first out.
#[derive(Default)]
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    /// Remembers `id`; false if it was already remembered.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= REMEMBERED_RESOURCES
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// `batch` with its `resource_attributes` dictionary column replaced by the id of each row's
/// value, and the `(id, value)` of every value some row refers to.
fn with_resource_ids(batch: &RecordBatch) -> Result<(RecordBatch, Vec<(String, String)>), ArrowError> {
    let schema = batch.schema();
    let Ok(index) = schema.index_of(col::RESOURCE_ATTRIBUTES) else {
        return Ok((batch.clone(), Vec::new()));
    };
    let Some(column) = batch.columns().get(index) else {
        return Ok((batch.clone(), Vec::new()));
    };
    let Some(dictionary) = column.as_dictionary_opt::<Int32Type>() else {
        return Err(ArrowError::SchemaError(format!(
            "{} is {}, not a dictionary of strings",
            col::RESOURCE_ATTRIBUTES,
            column.data_type()
        )));
    };
    let values = dictionary
        .values()
        .as_string_opt::<i32>()
        .ok_or_else(|| ArrowError::SchemaError(format!("{} values are not strings", col::RESOURCE_ATTRIBUTES)))?;
    let mut ids: Vec<Option<String>> = vec![None; values.len()];
    let mut referenced = Vec::new();
    let row_ids: StringArray = dictionary
        .keys()
        .iter()
        .map(|key| {
            let key = usize::try_from(key?).ok()?;
            let slot = ids.get_mut(key)?;
            if slot.is_none() {
                let value = values.is_valid(key).then(|| values.value(key))?;
                let id = resource_id(value);
                referenced.push((id.clone(), value.to_string()));
                *slot = Some(id);
            }
            slot.clone()
        })
        .collect();
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    if let (Some(field), Some(column)) = (fields.get_mut(index), columns.get_mut(index)) {
        *field = Arc::new(Field::new("resource_attributes_id", DataType::Utf8, true));
        *column = Arc::new(row_ids);
    }
    let rows = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok((rows, referenced))
}

/// The first 128 bits of the value's SHA-256, in hex: an id a sender cannot make collide.
fn resource_id(value: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    digest.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_model::{AccessEvent, EventBatchBuilder};

    #[test]
    fn a_resource_shared_by_many_events_is_written_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let mut stage = ArchiveStage::new(dir.path().to_path_buf(), metrics);
        let big: Arc<str> = Arc::from(format!(r#"{{"note":"{}"}}"#, "n".repeat(60_000)));
        let mut b = EventBatchBuilder::default();
        for i in 0..1000 {
            b.append(&AccessEvent {
                resource_attributes: (i != 7).then(|| Arc::clone(&big)),
                raw: "line".into(),
                ..Default::default()
            });
        }
        let batch = Batch::Events(b.finish().expect("batch"));
        stage.process(&batch).expect("archived");
        stage.process(&batch).expect("archived again");
        stage.flush().expect("flushed");

        let events = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("events");
        assert_eq!(events.lines().count(), 2000);
        // Written per event, the resource alone would be 120 MB.
        assert!(events.len() < 2_000_000, "events.jsonl is {} bytes", events.len());
        let first: serde_json::Value = serde_json::from_str(events.lines().next().expect("line")).expect("json");
        let id = first["resource_attributes_id"].as_str().expect("id").to_string();
        assert_eq!(id.len(), 32);
        assert!(first.get("resource_attributes").is_none());
        let eighth: serde_json::Value = serde_json::from_str(events.lines().nth(7).expect("line")).expect("json");
        assert!(eighth.get("resource_attributes_id").is_none());

        let resources = std::fs::read_to_string(dir.path().join("resources.jsonl")).expect("resources");
        assert_eq!(resources.lines().count(), 1, "written once across both batches");
        let resource: serde_json::Value = serde_json::from_str(resources.trim()).expect("json");
        assert_eq!(resource["resource_attributes_id"], id.as_str());
        assert_eq!(resource["resource_attributes"].as_str(), Some(&*big));
    }

    #[test]
    fn recent_ids_stay_bounded() {
        let mut ids = RecentIds::default();
        for i in 0..(REMEMBERED_RESOURCES * 2) {
            assert!(ids.insert(&i.to_string()));
        }
        assert_eq!(ids.set.len(), REMEMBERED_RESOURCES);
        assert!(!ids.insert(&(REMEMBERED_RESOURCES * 2 - 1).to_string()));
        assert!(ids.insert("0"), "forgotten, written again");
    }
}
