//! Time per line of each normalization stage over a log file, on one core: parsing, deriving
//! the zero-trust columns, and appending to an Arrow batch. Where `verity replay` spends its
//! normalizing workers' time, without the reader, the threads or the rules.
//!
//! `verity-normalize-bench FILE [--rounds N]`; make a file with `verity-meshlog`. The whole file
//! is read into memory first (about 400 MB for a million lines), so reading is never timed.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use verity_collector::normalize::{self, Ctx, FormatHint, limits::RecordLimits};
use verity_model::EventBatchBuilder;
use verity_model::event::IngestSource;

#[derive(Parser)]
struct Args {
    /// A log file (Istio/Envoy text or JSON, ztunnel), one record per line.
    file: String,
    /// Passes over the file per stage; the fastest pass is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Rows per batch appended before it is finished.
    #[arg(long, default_value_t = 4096)]
    batch_rows: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(!lines.is_empty(), "{} has no lines", args.file);
    let limits = RecordLimits::default();
    let mut ctx = Ctx::now(IngestSource::File);
    ctx.observed_time_ns = 0;

    let parse = || {
        lines
            .iter()
            .filter(|l| normalize::parse_line(l, FormatHint::Auto, &limits).is_ok())
            .count()
    };
    let derive = || {
        lines
            .iter()
            .filter(|l| normalize::normalize_line(l, FormatHint::Auto, &ctx).is_ok())
            .count()
    };
    let append = || {
        let mut rows = 0usize;
        for chunk in lines.chunks(args.batch_rows.max(1)) {
            // A builder per batch, sized for its rows, as `verity replay`'s workers make them.
            let mut builder = EventBatchBuilder::with_capacity(chunk.len());
            for l in chunk {
                if let Ok(ev) = normalize::normalize_line(l, FormatHint::Auto, &ctx) {
                    builder.append(&ev);
                }
            }
            rows += builder.finish().map_or(0, |b| b.num_rows());
        }
        rows
    };
    let stages: [(&str, &dyn Fn() -> usize); 3] = [
        ("parse", &parse),
        ("parse + derive", &derive),
        ("parse + derive + append", &append),
    ];
    // The stages take turns within each round, so a slow spell of the machine falls on all
    // of them; each stage's fastest pass is reported.
    let mut fastest = [f64::INFINITY; 3];
    let mut ok = [0usize; 3];
    for _ in 0..args.rounds.max(1) {
        for (i, (_, stage)) in stages.iter().enumerate() {
            let t = Instant::now();
            let n = stage();
            let secs = t.elapsed().as_secs_f64();
            if let (Some(f), Some(o)) = (fastest.get_mut(i), ok.get_mut(i)) {
                *f = f.min(secs);
                *o = n;
            }
        }
    }
    let n = lines.len() as f64;
    let mut previous = 0.0;
    println!(
        "{} lines of {}, fastest of {} rounds",
        lines.len(),
        args.file,
        args.rounds
    );
    println!("{:<28} {:>10} {:>12} {:>12}", "stage", "ok", "ns/line", "added");
    for (((name, _), secs), ok) in stages.iter().zip(fastest).zip(ok) {
        let per = secs * 1e9 / n;
        println!("{name:<28} {ok:>10} {per:>12.0} {:>12.0}", per - previous);
        previous = per;
    }
    Ok(())
}
