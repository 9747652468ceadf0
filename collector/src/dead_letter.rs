//! The dead-letter file: every record Verity could not use, one JSON object per line, with
//! the reason, so an operator can inspect and replay it. Writes are flushed per call so the
//! file is current while Verity runs.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use verity_model::time::format_rfc3339_ns;

use crate::metrics::Metrics;
use crate::normalize::{Rejection, now_ns};

/// One dead-lettered record.
#[derive(Debug, Serialize)]
pub struct DeadLetterEntry<'a> {
    pub time: String,
    pub source: &'a str,
    pub signal: &'a str,
    pub reason: &'a str,
    pub error: &'a str,
    /// The record as received (the log line, or the OTLP record as JSON).
    pub record: &'a str,
    /// Where it came from, for sources with positions (a Kafka topic, partition and offset).
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub origin: Option<&'a Origin>,
}

/// A record's position in its source.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl<'a> DeadLetterEntry<'a> {
    pub fn new(source: &'a str, signal: &'a str, rejection: &'a Rejection, record: &'a str) -> Self {
        Self {
            time: format_rfc3339_ns(now_ns()),
            source,
            signal,
            reason: rejection.reason.as_str(),
            error: &rejection.detail,
            record,
            origin: None,
        }
    }

    pub fn with_origin(mut self, origin: Option<&'a Origin>) -> Self {
        self.origin = origin;
        self
    }
}

pub struct DeadLetter {
    path: PathBuf,
    file: Mutex<BufWriter<File>>,
    metrics: Metrics,
}

impl DeadLetter {
    pub fn open(path: &Path, metrics: Metrics) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(BufWriter::new(file)),
            metrics,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends entries and flushes. A failing write is logged and counted, never fatal:
    /// the rejection is still counted and reported to the client.
    pub fn write(&self, entries: &[DeadLetterEntry<'_>]) {
        if entries.is_empty() {
            return;
        }
        let mut guard = match self.file.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut result = Ok(());
        for e in entries {
            result = serde_json::to_writer(&mut *guard, e)
                .map_err(std::io::Error::other)
                .and_then(|()| guard.write_all(b"\n"));
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| guard.flush());
        match result {
            Ok(()) => {
                self.metrics.dead_letter_records.inc_by(entries.len() as u64);
            }
            Err(error) => {
                self.metrics.dead_letter_errors.inc();
                tracing::error!(path = %self.path.display(), %error, records = entries.len(), "could not write dead-letter records");
            }
        }
    }
}
