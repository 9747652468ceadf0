//! Log files normalized on every core and handed on in file order (`verity normalize`,
//! `verity replay`).
//!
//! One thread reads the files and cuts them into chunks of whole lines; worker threads, one
//! per core by default, normalize each chunk into an Arrow batch; the caller receives the
//! chunks in file order, so what it does with them (writing events, running rules in event
//! time) sees exactly what reading line by line would. At most `in_flight` chunks are read
//! ahead of the caller, which bounds memory whatever the size of the files.
//!
//! Lines are read with the same bound as before ([`bounded_lines`]): an over-long line or one
//! that is not UTF-8 is a rejection at its line number, like a line no normalizer can read.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::ops::Range;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use verity_collector::bounded_lines;
use verity_collector::normalize::limits::RecordLimits;
use verity_collector::normalize::{self, Ctx, FormatHint, RejectReason, Rejection};
use verity_model::event::IngestSource;
use verity_model::{AccessEvent, EventBatchBuilder};

/// How the files are read and normalized.
#[derive(Debug, Clone)]
pub struct ReadSettings {
    pub format: FormatHint,
    /// The observed time given to every event; `None` for the time its chunk is normalized.
    pub observed_time_ns: Option<i64>,
    /// Threads normalizing chunks.
    pub workers: usize,
    /// Lines per chunk (and so rows per batch at most).
    pub lines_per_chunk: usize,
    pub limits: RecordLimits,
}

impl Default for ReadSettings {
    fn default() -> Self {
        Self {
            format: FormatHint::Auto,
            observed_time_ns: None,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            lines_per_chunk: 4096,
            limits: RecordLimits::default(),
        }
    }
}

/// What one chunk of one file held, normalized.
#[derive(Debug)]
pub struct Chunk {
    /// Index of the file in the list given.
    pub file: usize,
    /// Lines read, blank and rejected ones included.
    pub lines: u64,
    /// The events kept, in line order; `None` when there were none.
    pub batch: Option<RecordBatch>,
    pub events: u64,
    /// Lines that could not be read or normalized, in line order.
    pub rejects: Vec<LineReject>,
}

/// A line that could not be read or normalized.
#[derive(Debug)]
pub struct LineReject {
    /// Line number in its file, from 1.
    pub line: u64,
    pub rejection: Rejection,
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open {name}")]
    Open {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {name}")]
    Read {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build a batch")]
    Batch(#[source] ArrowError),
    #[error("a thread reading the files stopped unexpectedly")]
    ThreadFailed,
}

/// A chunk as read, before normalization.
struct RawChunk {
    seq: u64,
    file: usize,
    lines: u64,
    /// The chunk's lines as read, one after the other: checked as UTF-8 by the worker that
    /// normalizes them, so the reader copies each line once and checks nothing.
    bytes: Vec<u8>,
    items: Vec<RawLine>,
}

enum RawLine {
    /// A line's bytes in the chunk.
    Text {
        line: u64,
        range: Range<usize>,
    },
    Rejected(LineReject),
}

/// Reads `files` (`-` is standard input), normalizes their lines on `settings.workers`
/// threads, keeps the events `keep` accepts, and calls `each` with every chunk in file order.
/// Stops at the first error, from reading or from `each`.
pub fn for_each_chunk<E: From<ReadError>>(
    files: &[String],
    settings: &ReadSettings,
    keep: &(dyn Fn(&AccessEvent<'_>) -> bool + Sync),
    mut each: impl FnMut(Chunk) -> Result<(), E>,
) -> Result<(), E> {
    let workers = settings.workers.max(1);
    // Enough for every worker to hold a chunk while one is read and one is handed on; more
    // only costs memory (a chunk is a few MB of lines and their batch).
    let in_flight = workers.saturating_add(2);
    std::thread::scope(|scope| {
        let (work_tx, work_rx) = sync_channel::<RawChunk>(workers);
        let (done_tx, done_rx) = sync_channel::<(u64, Result<Chunk, ArrowError>)>(in_flight);
        // A token per chunk the reader may be ahead of the caller.
        let (token_tx, token_rx) = sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            let _ = token_tx.send(());
        }
        let reader = scope.spawn(move || read_files(files, settings, &work_tx, &token_rx));
        let work_rx = Arc::new(Mutex::new(work_rx));
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let work_rx = Arc::clone(&work_rx);
                let done_tx = done_tx.clone();
                scope.spawn(move || normalize_chunks(&work_rx, &done_tx, settings, keep))
            })
            .collect();
        // Only the workers hold the work queue and the results' senders now: when they are
        // gone, the reader's sends fail and the caller's loop below ends.
        drop((work_rx, done_tx));
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let mut handed = || -> Result<(), E> {
            for (seq, chunk) in done_rx.iter() {
                pending.insert(seq, chunk);
                while let Some(chunk) = pending.remove(&next) {
                    next = next.saturating_add(1);
                    let _ = token_tx.send(());
                    each(chunk.map_err(ReadError::Batch)?)?;
                }
            }
            Ok(())
        };
        let handed = handed();
        // Stops the reader (no more tokens) and the workers (no one takes their results).
        drop((done_rx, token_tx));
        let read = reader.join().unwrap_or(Err(ReadError::ThreadFailed));
        let workers_ok = handles.into_iter().all(|h| h.join().is_ok());
        handed?;
        let sent = read?;
        if !workers_ok || sent != next {
            return Err(ReadError::ThreadFailed.into());
        }
        Ok(())
    })
}

/// The reader: returns how many chunks it sent.
fn read_files(
    files: &[String],
    settings: &ReadSettings,
    work: &SyncSender<RawChunk>,
    tokens: &Receiver<()>,
) -> Result<u64, ReadError> {
    let max = settings.limits.max_record_bytes;
    let per_chunk = settings.lines_per_chunk.max(1);
    let mut seq = 0u64;
    let send = |chunk: RawChunk| -> bool { tokens.recv().is_ok() && work.send(chunk).is_ok() };
    for (file, name) in files.iter().enumerate() {
        let reader: Box<dyn Read> = if name == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(name).map_err(|source| ReadError::Open {
                name: name.clone(),
                source,
            })?)
        };
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let fresh = |seq| RawChunk {
            seq,
            file,
            lines: 0,
            bytes: Vec::new(),
            items: Vec::with_capacity(per_chunk),
        };
        let mut chunk = fresh(seq);
        let mut line = 0u64;
        loop {
            let start = chunk.bytes.len();
            let read =
                bounded_lines::read_line(&mut reader, &mut chunk.bytes, max.saturating_add(1)).map_err(|source| {
                    ReadError::Read {
                        name: name.clone(),
                        source,
                    }
                })?;
            let Some(len) = read else { break };
            line = line.saturating_add(1);
            chunk.lines = chunk.lines.saturating_add(1);
            if len > max as u64 {
                chunk.bytes.truncate(start);
                chunk.items.push(RawLine::Rejected(LineReject {
                    line,
                    rejection: Rejection::new(
                        RejectReason::RecordTooLarge,
                        format!("line is {len} bytes, more than {max}"),
                    ),
                }));
            } else {
                let range = start..chunk.bytes.len();
                chunk.items.push(RawLine::Text { line, range });
            }
            if chunk.items.len() >= per_chunk {
                seq = seq.saturating_add(1);
                // The next chunk will hold about as many bytes: one allocation with an eighth
                // to spare, rather than doubling from empty (or past a slightly longer chunk).
                let mut next = fresh(seq);
                next.bytes
                    .reserve(chunk.bytes.len().saturating_add(chunk.bytes.len() / 8));
                if !send(std::mem::replace(&mut chunk, next)) {
                    return Ok(seq);
                }
            }
        }
        if chunk.lines > 0 {
            seq = seq.saturating_add(1);
            if !send(chunk) {
                return Ok(seq);
            }
        }
    }
    Ok(seq)
}

/// A worker: normalizes chunks until the reader is done or the caller has stopped.
fn normalize_chunks(
    work: &Mutex<Receiver<RawChunk>>,
    done: &SyncSender<(u64, Result<Chunk, ArrowError>)>,
    settings: &ReadSettings,
    keep: &(dyn Fn(&AccessEvent<'_>) -> bool + Sync),
) {
    loop {
        let next = match work.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(raw) = next else { return };
        let seq = raw.seq;
        if done.send((seq, normalize_chunk(raw, settings, keep))).is_err() {
            return;
        }
    }
}

fn normalize_chunk(
    raw: RawChunk,
    settings: &ReadSettings,
    keep: &(dyn Fn(&AccessEvent<'_>) -> bool + Sync),
) -> Result<Chunk, ArrowError> {
    let mut ctx = Ctx::now(IngestSource::File);
    ctx.limits = settings.limits;
    if let Some(t) = settings.observed_time_ns {
        ctx.observed_time_ns = t;
    }
    let mut builder = EventBatchBuilder::with_capacity(raw.items.len());
    let mut rejects = Vec::new();
    for item in raw.items {
        match item {
            RawLine::Text { line, range } => {
                let text = match std::str::from_utf8(raw.bytes.get(range).unwrap_or_default()) {
                    Ok(text) if text.trim().is_empty() => continue,
                    Ok(text) => text,
                    Err(e) => {
                        let rejection = Rejection::new(RejectReason::InvalidUtf8, format!("line is not UTF-8: {e}"));
                        rejects.push(LineReject { line, rejection });
                        continue;
                    }
                };
                match normalize::normalize_line(text, settings.format, &ctx) {
                    Ok(event) if keep(&event) => builder.append(&event),
                    Ok(_) => {}
                    Err(rejection) => rejects.push(LineReject { line, rejection }),
                }
            }
            RawLine::Rejected(reject) => rejects.push(reject),
        }
    }
    let events = builder.len() as u64;
    let batch = (!builder.is_empty()).then(|| builder.finish()).transpose()?;
    Ok(Chunk {
        file: raw.file,
        lines: raw.lines,
        batch,
        events,
        rejects,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn line(i: usize) -> String {
        format!(
            r#"{{"authority":"pay:8080","response_code":"200","method":"GET","start_time":"2026-01-01T00:00:{:02}.000Z","path":"/p{i}"}}"#,
            i % 60
        )
    }

    fn read_all(files: &[String], settings: &ReadSettings) -> Result<Vec<Chunk>, ReadError> {
        let mut chunks = Vec::new();
        for_each_chunk(files, settings, &|_| true, |c| {
            chunks.push(c);
            Ok::<(), ReadError>(())
        })?;
        Ok(chunks)
    }

    #[test]
    fn chunks_come_back_in_file_order_whatever_the_workers() {
        let dir = tempfile::tempdir().expect("dir");
        let mut names = Vec::new();
        for f in 0..3 {
            let path = dir.path().join(format!("{f}.log"));
            let mut file = std::fs::File::create(&path).expect("create");
            for i in 0..1000 {
                writeln!(file, "{}", line(f * 1000 + i)).expect("write");
            }
            writeln!(file, "not a log line").expect("write");
            file.write_all(b"\xff\xfe\n\n").expect("write");
            names.push(path.display().to_string());
        }
        for workers in [1, 2, 5] {
            let settings = ReadSettings {
                workers,
                lines_per_chunk: 97,
                observed_time_ns: Some(0),
                ..ReadSettings::default()
            };
            let chunks = read_all(&names, &settings).expect("read");
            let files: Vec<usize> = chunks.iter().map(|c| c.file).collect();
            assert!(files.windows(2).all(|w| w[0] <= w[1]), "{files:?}");
            assert_eq!(chunks.iter().map(|c| c.lines).sum::<u64>(), 3 * 1003);
            assert_eq!(chunks.iter().map(|c| c.events).sum::<u64>(), 3000);
            let paths: Vec<String> = chunks
                .iter()
                .filter_map(|c| c.batch.as_ref())
                .flat_map(|b| verity_model::json::to_json_rows(b).expect("rows"))
                .filter_map(|r| r.get("path").and_then(|p| p.as_str()).map(str::to_owned))
                .collect();
            let expected: Vec<String> = (0..3000).map(|i| format!("/p{i}")).collect();
            assert_eq!(paths, expected, "{workers} workers keep line order");
            let rejects: Vec<(usize, u64, RejectReason)> = chunks
                .iter()
                .flat_map(|c| c.rejects.iter().map(move |r| (c.file, r.line, r.rejection.reason)))
                .collect();
            assert_eq!(rejects.len(), 6, "{rejects:?}");
            for f in 0..3 {
                assert!(rejects.contains(&(f, 1002, RejectReason::InvalidUtf8)), "{rejects:?}");
                assert!(rejects.iter().any(|r| r.0 == f && r.1 == 1001), "{rejects:?}");
            }
        }
    }

    #[test]
    fn a_missing_file_stops_after_the_files_before_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, format!("{}\n", line(1))).expect("write");
        let names = [
            path.display().to_string(),
            dir.path().join("missing").display().to_string(),
        ];
        let mut events = 0;
        let result = for_each_chunk(&names, &ReadSettings::default(), &|_| true, |c| {
            events += c.events;
            Ok::<(), ReadError>(())
        });
        assert!(matches!(result, Err(ReadError::Open { .. })), "{result:?}");
        assert_eq!(events, 1);
    }

    #[derive(Debug)]
    struct Stop;
    impl From<ReadError> for Stop {
        fn from(_: ReadError) -> Self {
            Stop
        }
    }

    #[test]
    fn a_caller_that_stops_stops_the_threads() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("big.log");
        let mut file = std::fs::File::create(&path).expect("create");
        for i in 0..20_000 {
            writeln!(file, "{}", line(i)).expect("write");
        }
        let settings = ReadSettings {
            lines_per_chunk: 100,
            ..ReadSettings::default()
        };
        let mut calls = 0;
        let result = for_each_chunk(&[path.display().to_string()], &settings, &|_| true, |_| {
            calls += 1;
            Err(Stop)
        });
        assert!(result.is_err());
        assert_eq!(calls, 1, "returns at the caller's first error, without hanging");
    }
}
