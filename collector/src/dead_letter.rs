//! The dead-letter file: the records Verity could not use, one JSON object per line, with the
//! reason, so an operator can inspect and replay them. Writes are flushed per call so the
//! file is current while Verity runs.
//!
//! Everything about it is bounded, because what lands here is what an attacker sends: each
//! request writes at most `max_entries_per_request` entries and then one summary entry with
//! the count of the rest, each record is cut to `max_record_bytes` (its full length is
//! recorded), and the file rotates at `max_file_bytes`, keeping `max_files` files
//! (`dead-letter.jsonl`, `dead-letter.jsonl.1`, … oldest last).

#![deny(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use verity_model::config_error::ConfigError;
use verity_model::time::format_rfc3339_ns;

use crate::metrics::Metrics;
use crate::normalize::now_ns;
use crate::normalize::rejections::{Origin, Rejections};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    pub path: PathBuf,
    /// The file is rotated when it grows past this.
    pub max_file_bytes: u64,
    /// Files kept, the current one included; the oldest is deleted.
    pub max_files: usize,
    /// Entries one request (or source message) may write; the rest are counted in one
    /// summary entry.
    pub max_entries_per_request: usize,
    /// Bytes of each record kept; the entry records the full length.
    pub max_record_bytes: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("verity-data/dead-letter.jsonl"),
            max_file_bytes: 64 << 20,
            max_files: 4,
            max_entries_per_request: 100,
            max_record_bytes: 4096,
        }
    }
}

impl DeadLetterConfig {
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(ConfigError::new("dead_letter.path", "must not be empty"));
        }
        if !(1 << 16..=1 << 40).contains(&self.max_file_bytes) {
            errors.push(ConfigError::new(
                "dead_letter.max_file_bytes",
                "must be between 64 KiB and 1 TiB",
            ));
        }
        if !(1..=1000).contains(&self.max_files) {
            errors.push(ConfigError::new("dead_letter.max_files", "must be between 1 and 1000"));
        }
        if !(1..=100_000).contains(&self.max_entries_per_request) {
            errors.push(ConfigError::new(
                "dead_letter.max_entries_per_request",
                "must be between 1 and 100000",
            ));
        }
        if !(64..=16 << 20).contains(&self.max_record_bytes) {
            errors.push(ConfigError::new(
                "dead_letter.max_record_bytes",
                "must be between 64 and 16777216",
            ));
        }
        errors
    }
}

/// One dead-lettered record, or the summary of those a request had past the cap.
#[derive(Debug, Serialize)]
pub struct DeadLetterEntry<'a> {
    pub time: String,
    pub source: &'a str,
    pub signal: &'a str,
    /// A rejection reason, or `omitted` for a summary entry.
    pub reason: &'a str,
    pub error: &'a str,
    /// The record as received (the log line, or the OTLP record as JSON), cut to
    /// `max_record_bytes`.
    pub record: &'a str,
    /// The record's full length, when `record` was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_bytes: Option<usize>,
    /// Where it came from, for sources with positions (a Kafka topic, partition and offset).
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub origin: Option<&'a Origin>,
}

struct Current {
    file: BufWriter<File>,
    bytes: u64,
}

pub struct DeadLetter {
    config: DeadLetterConfig,
    current: Mutex<Current>,
    metrics: Metrics,
}

impl DeadLetter {
    pub fn open(config: &DeadLetterConfig, metrics: Metrics) -> std::io::Result<Self> {
        let path = &config.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let bytes = file.metadata()?.len();
        Ok(Self {
            config: config.clone(),
            current: Mutex::new(Current {
                file: BufWriter::new(file),
                bytes,
            }),
            metrics,
        })
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// An empty record of what one request rejects, with this file's caps.
    pub fn rejections<'o>(&self) -> Rejections<'o> {
        Rejections::new(self.config.max_entries_per_request, self.config.max_record_bytes)
    }

    /// Writes what a request rejected (the kept entries, then a summary of the rest) and
    /// flushes. A failing write is logged and counted, never fatal: the rejections are still
    /// counted and reported to the client.
    pub fn write(&self, source: &str, signal: &str, rejected: &Rejections<'_>) {
        if rejected.is_empty() {
            return;
        }
        let time = format_rfc3339_ns(now_ns());
        let mut lines: Vec<u8> = Vec::new();
        for kept in rejected.kept() {
            let entry = DeadLetterEntry {
                time: time.clone(),
                source,
                signal,
                reason: kept.rejection.reason.as_str(),
                error: &kept.rejection.detail,
                record: &kept.record,
                record_bytes: (kept.record.len() < kept.record_bytes).then_some(kept.record_bytes),
                origin: kept.origin,
            };
            push_line(&mut lines, &entry);
        }
        let omitted = rejected.omitted();
        if omitted > 0 {
            let reasons: Vec<String> = rejected
                .by_reason()
                .map(|(r, n)| format!("{}={n}", r.as_str()))
                .collect();
            let error = format!(
                "{omitted} more records rejected with this one request were counted but not written \
                 (dead_letter.max_entries_per_request = {}); all rejections by reason: {}",
                self.config.max_entries_per_request,
                reasons.join(", ")
            );
            let entry = DeadLetterEntry {
                time,
                source,
                signal,
                reason: "omitted",
                error: &error,
                record: "",
                record_bytes: None,
                origin: rejected.kept().last().and_then(|k| k.origin),
            };
            push_line(&mut lines, &entry);
            self.metrics.dead_letter_omitted.inc_by(omitted);
        }
        let mut current = match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let result = current.file.write_all(&lines).and_then(|()| current.file.flush());
        match result {
            Ok(()) => {
                current.bytes = current.bytes.saturating_add(lines.len() as u64);
                self.metrics.dead_letter_records.inc_by(rejected.kept().len() as u64);
                self.metrics.dead_letter_bytes.inc_by(lines.len() as u64);
            }
            Err(error) => {
                self.metrics.dead_letter_errors.inc();
                tracing::error!(path = %self.config.path.display(), %error, records = rejected.total(), "could not write dead-letter records");
            }
        }
        if current.bytes >= self.config.max_file_bytes {
            match self.rotate() {
                Ok(file) => {
                    *current = Current {
                        file: BufWriter::new(file),
                        bytes: 0,
                    };
                    self.metrics.dead_letter_rotations.inc();
                }
                Err(error) => {
                    self.metrics.dead_letter_errors.inc();
                    tracing::error!(path = %self.config.path.display(), %error, "could not rotate the dead-letter file");
                }
            }
        }
    }

    /// Shifts `path.N` to `path.N+1` (the last one is deleted), `path` to `path.1`, and opens
    /// a new `path`.
    fn rotate(&self) -> std::io::Result<File> {
        let path = &self.config.path;
        let numbered = |n: usize| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let keep = self.config.max_files.saturating_sub(1);
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            match std::fs::remove_file(numbered(keep)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for n in (1..keep).rev() {
                match std::fs::rename(numbered(n), numbered(n.saturating_add(1))) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(path, numbered(1))?;
        }
        OpenOptions::new().create(true).append(true).open(path)
    }
}

fn push_line(out: &mut Vec<u8>, entry: &DeadLetterEntry<'_>) {
    // Serializing a struct of strings into memory cannot fail.
    if serde_json::to_writer(&mut *out, entry).is_ok() {
        out.push(b'\n');
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::normalize::{RejectReason, Rejection};

    fn dead_letter(dir: &Path, max_file_bytes: u64) -> DeadLetter {
        let config = DeadLetterConfig {
            path: dir.join("dl.jsonl"),
            max_file_bytes,
            max_files: 3,
            max_entries_per_request: 2,
            max_record_bytes: 8,
        };
        DeadLetter::open(
            &config,
            Metrics::new(&mut prometheus_client::registry::Registry::default()),
        )
        .expect("open")
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }

    #[test]
    fn a_request_writes_its_first_entries_cut_short_and_a_summary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dl = dead_letter(dir.path(), 1 << 20);
        let mut r = dl.rejections();
        for i in 0..1000 {
            r.push(
                Rejection::new(RejectReason::Empty, "empty"),
                &format!("record number {i}"),
                None,
            );
        }
        dl.write("otlp_http", "logs", &r);
        let entries = lines(&dir.path().join("dl.jsonl"));
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["record"], "record n");
        assert_eq!(entries[0]["record_bytes"], 15);
        assert_eq!(entries[2]["reason"], "omitted");
        let error = entries[2]["error"].as_str().expect("error");
        assert!(error.starts_with("998 more records"), "{error}");
        assert!(error.contains("empty=1000"), "{error}");
    }

    #[test]
    fn the_file_rotates_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dl = dead_letter(dir.path(), 1);
        for i in 0..10 {
            let mut r = dl.rejections();
            r.push(Rejection::new(RejectReason::Empty, "empty"), &format!("{i}"), None);
            dl.write("file", "logs", &r);
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["dl.jsonl", "dl.jsonl.1", "dl.jsonl.2"]);
        assert!(lines(&dir.path().join("dl.jsonl")).is_empty());
        assert_eq!(lines(&dir.path().join("dl.jsonl.1"))[0]["record"], "9");
        assert_eq!(lines(&dir.path().join("dl.jsonl.2"))[0]["record"], "8");
    }
}
