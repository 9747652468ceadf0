//! Writes a realistic mesh access log for `verity replay` and the benchmarks: half Istio
//! sidecar lines in the default TEXT format, half ambient ztunnel lines, over many identities
//! and services, with a share of RBAC denials, ten thousand lines per second of event time,
//! and on request a share of attacks the built-in rules detect. The same arguments always write
//! the same file. The lines come from `verity_bench::mesh_traffic`, which `verity-loadgen`
//! sends over OTLP too.
//!
//!     verity-meshlog --lines 1000000 > mesh-1m.log
//!     verity-meshlog --lines 1000000 --calls-per-identity 5 > mesh-1m-graph.log
//!     /usr/bin/time -v verity replay mesh-1m.log > alerts.jsonl

use std::io::{BufWriter, Write};

use clap::Parser;
use verity_bench::mesh_traffic::{MeshTraffic, Profile};

#[derive(Parser)]
struct Args {
    /// Lines to write.
    #[arg(long, default_value_t = 1_000_000)]
    lines: u64,
    /// Distinct workload identities (SPIFFE IDs) sending requests.
    #[arg(long, default_value_t = 10_000)]
    principals: u64,
    /// Distinct destination services.
    #[arg(long, default_value_t = 500)]
    services: u64,
    /// How many services each identity calls (its call graph); 0 lets every line name any
    /// service, so almost every (identity, service) edge is new.
    #[arg(long, default_value_t = 0)]
    calls_per_identity: u64,
    /// Namespaces the identities and services are spread over.
    #[arg(long, default_value_t = 40)]
    namespaces: u64,
    /// Share of requests and connections denied by an AuthorizationPolicy, in percent.
    #[arg(long, default_value_t = 1.0)]
    deny_percent: f64,
    /// Share of sidecar requests carrying an attack the built-in rules detect (a path
    /// traversal, an SQL injection, a Log4Shell user agent, in turn), in percent.
    #[arg(long, default_value_t = 0.0)]
    attack_percent: f64,
    /// Seed of the pseudo-random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Lines per second of event time.
    #[arg(long, default_value_t = 10_000)]
    per_second: u64,
    /// Event time of the first line, in seconds since the Unix epoch.
    #[arg(long, default_value_t = 1_714_557_600)]
    start: i64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut traffic = MeshTraffic::new(Profile {
        principals: args.principals,
        services: args.services,
        calls_per_identity: args.calls_per_identity,
        namespaces: args.namespaces,
        deny_percent: args.deny_percent,
        attack_percent: args.attack_percent,
        seed: args.seed,
        per_second: args.per_second,
        start: args.start,
    });
    let out = std::io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut line = String::with_capacity(1024);
    for n in 0..args.lines {
        line.clear();
        traffic.write_line(n, &mut line);
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
