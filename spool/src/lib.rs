//! A durable, bounded, append-only queue on disk: one per sink.
//!
//! Alerts are appended as framed records to segment files and fsynced (once per append call,
//! so a pipeline batch costs one fsync). The delivery task reads them in order and
//! acknowledges a sequence number once everything up to it is delivered or dead-lettered;
//! fully acknowledged segments are deleted. The acknowledged position is kept in a small file,
//! written without fsync: losing it on a crash only means resending (a duplicate with the same
//! alert id), never losing an alert.
//!
//! Frame: `len: u32 LE | crc32: u32 LE | seq: u64 LE | unix_ms: u64 LE | payload[len]`, the
//! CRC covering seq, time and payload. A torn frame at the end of the last segment (a crash in
//! the middle of a write) is cut off at open; its alert was never acknowledged upstream.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HEADER: usize = 24;
const ACK_FILE: &str = "ack";
const SEGMENT_SUFFIX: &str = ".seg";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {dir} is closed")]
    Closed { dir: PathBuf },
}

/// Size limits; when either is reached, appends wait for deliveries to make room.
#[derive(Debug, Clone, Copy)]
pub struct SpoolLimits {
    pub max_bytes: u64,
    pub max_events: u64,
    pub segment_bytes: u64,
    /// fsync after every append (the durable default); off only for throwaway outputs.
    pub sync: bool,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_events: 1_000_000,
            segment_bytes: 16 << 20,
            sync: true,
        }
    }
}

/// One spooled record.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub unix_ms: u64,
    pub payload: Vec<u8>,
}

/// What an open found on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    pub pending_events: u64,
    pub pending_bytes: u64,
    /// Bytes cut off a torn or corrupt tail.
    pub truncated_bytes: u64,
}

/// Current depth, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Depth {
    pub events: u64,
    pub bytes: u64,
    /// Append time of the oldest record not yet acknowledged.
    pub oldest_unix_ms: Option<u64>,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    /// Sequence numbers in this segment: `first_seq..end_seq`.
    end_seq: u64,
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug)]
struct Cursor {
    /// Index of the segment (by `first_seq`) and byte offset of the next unread frame.
    segment_first_seq: u64,
    offset: u64,
    next_seq: u64,
}

#[derive(Debug)]
struct Inner {
    segments: VecDeque<Segment>,
    writer: Option<File>,
    next_seq: u64,
    acked: u64,
    pending_events: u64,
    pending_bytes: u64,
    cursor: Cursor,
    reader: Option<(u64, File)>,
    /// Frames read but not acknowledged yet: (seq, frame bytes, unix_ms).
    unacked: VecDeque<(u64, u64, u64)>,
    closed: bool,
}

/// A spool directory. Appends come from the pipeline thread, reads and acks from the sink's
/// delivery task.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    inner: Mutex<Inner>,
    space: Condvar,
    data: tokio::sync::Notify,
    /// Woken when an acknowledgement or `close` may have emptied the spool.
    acked: tokio::sync::Notify,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

fn frame_crc(seq: u64, unix_ms: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&unix_ms.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Reads one frame at the reader's position. `Ok(None)` at a clean end of file; `Err` for a
/// torn or corrupt frame.
fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Entry>> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        let n = r.read(&mut header[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "torn frame header",
                ))
            };
        }
        got += n;
    }
    let word = |i: usize| -> [u8; 4] { [header[i], header[i + 1], header[i + 2], header[i + 3]] };
    let dword = |i: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        b
    };
    let len = u32::from_le_bytes(word(0)) as usize;
    let crc = u32::from_le_bytes(word(4));
    let seq = u64::from_le_bytes(dword(8));
    let unix_ms = u64::from_le_bytes(dword(16));
    if len > (1 << 30) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame length out of range",
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    if frame_crc(seq, unix_ms, &payload) != crc {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame checksum mismatch",
        ));
    }
    Ok(Some(Entry { seq, unix_ms, payload }))
}

fn encode_frame(out: &mut Vec<u8>, seq: u64, unix_ms: u64, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame_crc(seq, unix_ms, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&unix_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

impl Spool {
    /// Opens (or creates) a spool directory and recovers what it holds.
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<(Self, Recovery), SpoolError> {
        let io = |source| SpoolError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let acked = match std::fs::read_to_string(dir.join(ACK_FILE)) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(e)),
        };
        let mut firsts: Vec<u64> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX)
                && let Ok(first) = stem.parse::<u64>()
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments = VecDeque::new();
        let mut cursor: Option<Cursor> = None;
        let mut next_seq = acked + 1;
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = segment_path(dir, first);
            let mut file = File::open(&path).map_err(io)?;
            let total = file.metadata().map_err(io)?.len();
            let mut reader = std::io::BufReader::new(&mut file);
            let mut offset = 0u64;
            let mut end_seq = first;
            loop {
                match read_frame(&mut reader) {
                    Ok(Some(e)) => {
                        let size = (HEADER + e.payload.len()) as u64;
                        if e.seq > acked {
                            if cursor.is_none() {
                                cursor = Some(Cursor {
                                    segment_first_seq: first,
                                    offset,
                                    next_seq: e.seq,
                                });
                            }
                            recovery.pending_events += 1;
                            recovery.pending_bytes += size;
                        }
                        offset += size;
                        end_seq = e.seq + 1;
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(
                            segment = %path.display(),
                            %error,
                            last_segment = i + 1 == count,
                            "spool segment ends in a torn or corrupt frame; cutting it off"
                        );
                        break;
                    }
                }
            }
            drop(reader);
            if offset < total {
                recovery.truncated_bytes += total - offset;
                let f = OpenOptions::new().write(true).open(&path).map_err(io)?;
                f.set_len(offset).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            next_seq = next_seq.max(end_seq);
            if end_seq <= acked + 1 && i + 1 < count {
                // Fully delivered before the last shutdown.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            segments.push_back(Segment {
                first_seq: first,
                end_seq,
                path,
                bytes: offset,
            });
        }
        let cursor = cursor.unwrap_or(Cursor {
            segment_first_seq: segments.back().map_or(next_seq, |s| s.first_seq),
            offset: segments.back().map_or(0, |s| s.bytes),
            next_seq,
        });
        let spool = Self {
            dir: dir.to_path_buf(),
            limits,
            inner: Mutex::new(Inner {
                segments,
                writer: None,
                next_seq,
                // Everything before the cursor is delivered, whatever the ack file said.
                acked: cursor.next_seq.saturating_sub(1),
                pending_events: recovery.pending_events,
                pending_bytes: recovery.pending_bytes,
                cursor,
                reader: None,
                unacked: VecDeque::new(),
                closed: false,
            }),
            space: Condvar::new(),
            data: tokio::sync::Notify::new(),
            acked: tokio::sync::Notify::new(),
        };
        Ok((spool, recovery))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends records durably, waiting while the spool is full. Returns the last sequence
    /// number written. A single append larger than the limits is let through when the spool is
    /// empty, so that it cannot wait forever.
    pub fn append(&self, payloads: &[Vec<u8>]) -> Result<u64, SpoolError> {
        if payloads.is_empty() {
            return Ok(self.lock().next_seq - 1);
        }
        let bytes: u64 = payloads.iter().map(|p| (HEADER + p.len()) as u64).sum();
        let events = payloads.len() as u64;
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return Err(SpoolError::Closed { dir: self.dir.clone() });
            }
            let fits = inner.pending_events + events <= self.limits.max_events
                && inner.pending_bytes + bytes <= self.limits.max_bytes;
            if fits || inner.pending_events == 0 {
                break;
            }
            inner = match self.space.wait_timeout(inner, Duration::from_millis(250)) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        let rotate = match inner.segments.back() {
            None => true,
            Some(s) => s.bytes >= self.limits.segment_bytes,
        };
        if rotate || inner.writer.is_none() {
            let first = if rotate {
                inner.next_seq
            } else {
                inner.segments.back().map_or(inner.next_seq, |s| s.first_seq)
            };
            let path = segment_path(&self.dir, first);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| self.io(e))?;
            if rotate {
                if let Some(old) = inner.writer.take()
                    && self.limits.sync
                {
                    old.sync_all().map_err(|e| self.io(e))?;
                }
                inner.segments.push_back(Segment {
                    first_seq: first,
                    end_seq: first,
                    path,
                    bytes: 0,
                });
                if self.limits.sync {
                    // The new file's directory entry must survive a crash too.
                    if let Ok(d) = File::open(&self.dir) {
                        let _ = d.sync_all();
                    }
                }
            }
            inner.writer = Some(file);
        }
        let ms = now_ms();
        let mut buf = Vec::with_capacity(bytes as usize);
        let first_seq = inner.next_seq;
        for (i, p) in payloads.iter().enumerate() {
            encode_frame(&mut buf, first_seq + i as u64, ms, p);
        }
        let sync = self.limits.sync;
        let result = match inner.writer.as_mut() {
            Some(w) => w
                .write_all(&buf)
                .and_then(|()| if sync { w.sync_data() } else { Ok(()) }),
            None => Err(std::io::Error::other("no open segment")),
        };
        if let Err(e) = result {
            // The segment may now end in a partial frame: start a fresh one next time, and cut
            // this one back at the next open.
            inner.writer = None;
            if let Some(seg) = inner.segments.back_mut()
                && let Ok(f) = OpenOptions::new().write(true).open(&seg.path)
            {
                let _ = f.set_len(seg.bytes);
            }
            return Err(self.io(e));
        }
        let last = first_seq + events - 1;
        inner.next_seq = last + 1;
        inner.pending_events += events;
        inner.pending_bytes += bytes;
        if let Some(seg) = inner.segments.back_mut() {
            seg.bytes += bytes;
            seg.end_seq = last + 1;
        }
        drop(inner);
        self.data.notify_one();
        Ok(last)
    }

    /// Reads up to `max_events` / `max_bytes` records after those already read, without
    /// waiting. The first record is returned even when it alone exceeds `max_bytes`.
    pub fn read(&self, max_events: usize, max_bytes: usize) -> Result<Vec<Entry>, SpoolError> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        let mut size = 0usize;
        while out.len() < max_events && inner.cursor.next_seq < inner.next_seq {
            let seg_first = inner.cursor.segment_first_seq;
            let Some(seg_idx) = inner.segments.iter().position(|s| s.first_seq == seg_first) else {
                // The segment was read to its end and deleted on ack: go on with the next one.
                match inner.segments.iter().find(|s| s.first_seq > seg_first) {
                    Some(next) => {
                        inner.cursor.segment_first_seq = next.first_seq;
                        inner.cursor.offset = 0;
                        continue;
                    }
                    None => break,
                }
            };
            if inner.cursor.offset >= inner.segments[seg_idx].bytes {
                match inner.segments.get(seg_idx + 1) {
                    Some(next) => {
                        inner.cursor.segment_first_seq = next.first_seq;
                        inner.cursor.offset = 0;
                        continue;
                    }
                    None => break,
                }
            }
            if inner.reader.as_ref().map(|(f, _)| *f) != Some(seg_first) {
                let path = inner.segments[seg_idx].path.clone();
                let f = File::open(&path).map_err(|e| self.io(e))?;
                inner.reader = Some((seg_first, f));
            }
            let offset = inner.cursor.offset;
            let entry = {
                let Some((_, f)) = inner.reader.as_mut() else { break };
                f.seek(SeekFrom::Start(offset)).map_err(|e| self.io(e))?;
                read_frame(f).map_err(|e| self.io(e))?
            };
            let Some(entry) = entry else { break };
            let frame = (HEADER + entry.payload.len()) as u64;
            if !out.is_empty() && size + entry.payload.len() > max_bytes {
                break;
            }
            size += entry.payload.len();
            inner.cursor.offset += frame;
            inner.cursor.next_seq = entry.seq + 1;
            inner.unacked.push_back((entry.seq, frame, entry.unix_ms));
            out.push(entry);
        }
        Ok(out)
    }

    /// Waits until there is something to read (or `timeout` passes).
    pub async fn wait_for_data(&self, timeout: Duration) {
        {
            let inner = self.lock();
            if inner.cursor.next_seq < inner.next_seq || inner.closed {
                return;
            }
        }
        let _ = tokio::time::timeout(timeout, self.data.notified()).await;
    }

    /// Marks every record up to and including `seq` as delivered.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        if seq <= inner.acked {
            return Ok(());
        }
        inner.acked = seq;
        while let Some(&(s, bytes, _)) = inner.unacked.front() {
            if s > seq {
                break;
            }
            inner.unacked.pop_front();
            inner.pending_events = inner.pending_events.saturating_sub(1);
            inner.pending_bytes = inner.pending_bytes.saturating_sub(bytes);
        }
        // Delete segments that are fully delivered, except the one being written.
        while inner.segments.len() > 1 {
            let Some(front) = inner.segments.front() else { break };
            if front.end_seq > seq + 1 {
                break;
            }
            let path = front.path.clone();
            if inner.reader.as_ref().map(|(f, _)| *f) == Some(front.first_seq) {
                inner.reader = None;
            }
            inner.segments.pop_front();
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(segment = %path.display(), error = %e, "could not delete a delivered spool segment");
            }
        }
        let tmp = self.dir.join(format!("{ACK_FILE}.tmp"));
        std::fs::write(&tmp, seq.to_string())
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(ACK_FILE)))
            .map_err(|e| self.io(e))?;
        drop(inner);
        self.space.notify_all();
        self.acked.notify_waiters();
        Ok(())
    }

    pub fn depth(&self) -> Depth {
        let inner = self.lock();
        Depth {
            events: inner.pending_events,
            bytes: inner.pending_bytes,
            oldest_unix_ms: inner.unacked.front().map(|&(_, _, ms)| ms),
        }
    }

    /// True when every appended record is acknowledged.
    pub fn is_drained(&self) -> bool {
        let inner = self.lock();
        inner.acked + 1 >= inner.next_seq
    }

    /// [`Spool::read`] on Tokio's blocking pool: for the async delivery tasks, whose worker
    /// threads must not wait on the disk.
    pub async fn read_blocking(
        self: &Arc<Self>,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, SpoolError> {
        let spool = self.clone();
        self.off_runtime(move || spool.read(max_events, max_bytes)).await
    }

    /// [`Spool::ack`] on Tokio's blocking pool (it rewrites the acknowledgement file and
    /// deletes delivered segments).
    pub async fn ack_blocking(self: &Arc<Self>, seq: u64) -> Result<(), SpoolError> {
        let spool = self.clone();
        self.off_runtime(move || spool.ack(seq)).await
    }

    async fn off_runtime<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        match tokio::task::spawn_blocking(f).await {
            Ok(result) => result,
            // A panic is a bug: let it surface where it happened in the caller's task.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the runtime shuts down.
            Err(_) => Err(SpoolError::Closed { dir: self.dir.clone() }),
        }
    }

    /// Waits until every appended record is acknowledged, or the spool is closed.
    pub async fn wait_drained(&self) {
        loop {
            // Registered before the check, so an acknowledgement in between is not missed.
            let acked = self.acked.notified();
            tokio::pin!(acked);
            acked.as_mut().enable();
            if self.is_drained() || self.lock().closed {
                return;
            }
            acked.await;
        }
    }

    /// Wakes and fails waiting appends; used when Verity gives up at the drain deadline.
    pub fn close(&self) {
        self.lock().closed = true;
        self.space.notify_all();
        self.data.notify_waiters();
        self.acked.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
