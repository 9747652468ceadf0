//! `verity replay`: the rules over recorded log files, in event time, with alerts written as
//! JSON lines. Lines are read and normalized on every core ([`crate::log_files`]); the rules
//! run over batches of a fixed size in file order (each rule of a batch on one of
//! `rule_threads`), so the alerts are the same whatever the number of threads.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use arrow::compute::BatchCoalescer;
use verity_model::Alert;
use verity_rules::{Engine, EngineSettings, RevocationList};

use crate::log_files::{self, Chunk, ReadError, ReadSettings};

pub struct ReplayOptions {
    pub rules: Vec<PathBuf>,
    pub builtin_pack: bool,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub revoked: Vec<String>,
    pub lateness_ns: i64,
    pub max_keys: usize,
    /// Threads normalizing lines.
    pub workers: usize,
    /// Threads evaluating the rules on a batch.
    pub rule_threads: usize,
}

/// Totals of a replay.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    pub lines: u64,
    pub events: u64,
    pub rejected: u64,
    pub alerts: u64,
}

/// Rows per batch the rules see: independent of how the files were cut into chunks, so batch
/// boundaries (and with them lateness and eviction) are those of reading line by line.
const BATCH_ROWS: usize = 8192;

/// Rejected lines reported one by one before replay only counts them (a large file of
/// another format must not flood the terminal).
const MAX_REPORTED_REJECTS: u64 = 100;

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{}", .0.join("\n"))]
    Rules(Vec<String>),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("cannot build a batch")]
    Batch(#[source] arrow::error::ArrowError),
    #[error("cannot write alerts")]
    Write(#[source] std::io::Error),
}

/// The rules and what they have seen so far.
struct Replay<'o, O: Write, P: Write> {
    engine: Engine,
    batches: BatchCoalescer,
    summary: ReplaySummary,
    files: &'o [String],
    out: &'o mut O,
    progress: &'o mut P,
    started: Instant,
    last_report: Instant,
}

impl<O: Write, P: Write> Replay<'_, O, P> {
    fn take(&mut self, chunk: Chunk) -> Result<(), ReplayError> {
        self.summary.lines = self.summary.lines.saturating_add(chunk.lines);
        self.summary.events = self.summary.events.saturating_add(chunk.events);
        let name = self.files.get(chunk.file).map_or("-", String::as_str);
        for r in &chunk.rejects {
            self.summary.rejected = self.summary.rejected.saturating_add(1);
            if self.summary.rejected <= MAX_REPORTED_REJECTS {
                let _ = writeln!(self.progress, "{name}:{}: {}", r.line, r.rejection);
            } else if self.summary.rejected == MAX_REPORTED_REJECTS + 1 {
                let _ = writeln!(
                    self.progress,
                    "replay: more rejected lines; only counting them from here"
                );
            }
        }
        if let Some(batch) = chunk.batch {
            self.batches.push_batch(batch).map_err(ReplayError::Batch)?;
        }
        self.evaluate_completed()?;
        if self.last_report.elapsed().as_secs() >= 2 {
            self.last_report = Instant::now();
            let s = &self.summary;
            let _ = writeln!(
                self.progress,
                "replay: {} lines, {} events, {} alerts, {:.0} lines/s",
                s.lines,
                s.events,
                s.alerts,
                s.lines as f64 / self.started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Runs the rules over every full batch the coalescer holds.
    fn evaluate_completed(&mut self) -> Result<(), ReplayError> {
        while let Some(batch) = self.batches.next_completed_batch() {
            let alerts = self.engine.process(&batch);
            self.write(alerts)?;
        }
        Ok(())
    }

    fn write(&mut self, alerts: Vec<Alert>) -> Result<(), ReplayError> {
        for a in alerts {
            self.summary.alerts = self.summary.alerts.saturating_add(1);
            serde_json::to_writer(&mut *self.out, &a).map_err(|e| ReplayError::Write(e.into()))?;
            self.out.write_all(b"\n").map_err(ReplayError::Write)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<ReplaySummary, ReplayError> {
        self.batches.finish_buffered_batch().map_err(ReplayError::Batch)?;
        self.evaluate_completed()?;
        let alerts = self.engine.flush();
        self.write(alerts)?;
        self.out.flush().map_err(ReplayError::Write)?;
        let secs = self.started.elapsed().as_secs_f64();
        let s = &self.summary;
        let _ = writeln!(
            self.progress,
            "replay: {} lines ({} rejected), {} events, {} alerts in {secs:.1} s ({:.0} lines/s)",
            s.lines,
            s.rejected,
            s.events,
            s.alerts,
            s.lines as f64 / secs.max(1e-9)
        );
        Ok(self.summary)
    }
}

/// Runs the rules over log files in event time and writes alerts as JSON lines.
pub fn replay(
    opts: &ReplayOptions,
    files: &[String],
    out: &mut impl Write,
    progress: &mut impl Write,
) -> Result<ReplaySummary, ReplayError> {
    let spec = verity_collector::pipeline::rules::RuleSetSpec {
        builtin_pack: opts.builtin_pack,
        dirs: opts.rules.clone(),
        part: verity_collector::pipeline::rules::RulePart::All,
    };
    let revocations = RevocationList::new(opts.revoked.iter().cloned());
    let rules = spec.load(&revocations).map_err(ReplayError::Rules)?;
    let engine = Engine::new(
        rules,
        EngineSettings {
            lateness_ns: opts.lateness_ns,
            state_dir: None,
            max_keys: opts.max_keys,
            threads: opts.rule_threads,
            ..EngineSettings::default()
        },
    );
    let mut replay = Replay {
        engine,
        batches: BatchCoalescer::new(verity_model::event::schema(), BATCH_ROWS),
        summary: ReplaySummary::default(),
        files,
        out,
        progress,
        started: Instant::now(),
        last_report: Instant::now(),
    };
    let settings = ReadSettings {
        workers: opts.workers,
        // A fixed observed time: replaying the same files twice gives the same output.
        observed_time_ns: Some(0),
        ..ReadSettings::default()
    };
    let (since, until) = (opts.since_ns, opts.until_ns);
    let keep = move |ev: &verity_model::AccessEvent<'_>| {
        since.is_none_or(|s| ev.event_time_ns >= s) && until.is_none_or(|u| ev.event_time_ns < u)
    };
    log_files::for_each_chunk(files, &settings, &keep, |chunk| replay.take(chunk))?;
    replay.finish()
}
