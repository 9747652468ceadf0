//! Writes a realistic mesh access log for `verity replay` and the benchmarks: half Istio
//! sidecar lines in the default TEXT format, half ambient ztunnel lines, over many identities
//! and services, with a share of RBAC denials, ten thousand lines per second of event time.
//! The same arguments always write the same file.
//!
//!     verity-meshlog --lines 1000000 > mesh-1m.log
//!     /usr/bin/time -v verity replay mesh-1m.log > alerts.jsonl

use std::io::{BufWriter, Write};

use clap::Parser;

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
    /// Namespaces the identities and services are spread over.
    #[arg(long, default_value_t = 40)]
    namespaces: u64,
    /// Share of requests and connections denied by an AuthorizationPolicy, in percent.
    #[arg(long, default_value_t = 1.0)]
    deny_percent: f64,
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

/// SplitMix64: small, fast and good enough to spread identities; not for secrets.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `2024-05-01T10:00:00.123456Z` for nanoseconds since the epoch.
fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let micros = ns.rem_euclid(1_000_000_000) / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rng = SplitMix(args.seed);
    let out = std::io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let deny_per_million = (args.deny_percent.clamp(0.0, 100.0) * 10_000.0) as u64;
    const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
    const AGENTS: [&str; 3] = ["Go-http-client/1.1", "python-requests/2.31", "curl/8.4.0"];
    for n in 0..args.lines {
        let at = args.start.saturating_mul(1_000_000_000).saturating_add(
            i64::try_from(n.saturating_mul(1_000_000_000) / args.per_second.max(1)).unwrap_or(i64::MAX),
        );
        let time = rfc3339(at);
        let p = rng.below(args.principals);
        let src_ns = p % args.namespaces;
        let s = rng.below(args.services);
        let dst_ns = s % args.namespaces;
        let (a, b, c) = (rng.below(250), rng.below(250), rng.below(60_000) + 1024);
        if n % 2 == 0 {
            // An inbound sidecar record, as Istio's default TEXT format writes it.
            let method = METHODS[(rng.below(4)) as usize];
            let path = format!("/api/v1/items/{}", rng.below(997));
            let agent = AGENTS[(rng.below(3)) as usize];
            let denied = rng.below(1_000_000) < deny_per_million;
            let (status, flags, details, upstream) = if denied {
                (
                    403,
                    "-",
                    format!("rbac_access_denied_matched_policy[ns[ns{dst_ns}]-policy[deny-{s}]-rule[0]]"),
                    "\"-\"".to_string(),
                )
            } else {
                (200, "-", "via_upstream".to_string(), format!("\"10.2.{a}.{b}:8080\""))
            };
            writeln!(
                out,
                "[{time}] \"{method} {path} HTTP/1.1\" {status} {flags} {details} - \"-\" 0 {bytes} {dur} {dur} \"-\" \"{agent}\" \"req-{n}\" \"svc{s}.ns{dst_ns}:8080\" {upstream} inbound|8080|| 127.0.0.6:{c} 10.2.{a}.{b}:8080 10.1.{b}.{a}:{c} outbound_.8080_._.svc{s}.ns{dst_ns}.svc.cluster.local default",
                bytes = 100 + rng.below(4000),
                dur = rng.below(50),
            )?;
        } else {
            // An ambient ztunnel connection record; a denied one is closed by L4 policy.
            let denied = rng.below(1_000_000) < deny_per_million;
            let (level, error) = if denied {
                (
                    "error",
                    format!(
                        " error=\"connection closed due to policy rejection: explicitly denied by: ns{dst_ns}/deny-{s}\""
                    ),
                )
            } else {
                ("info", String::new())
            };
            writeln!(
                out,
                "{time}\t{level}\taccess\tconnection complete\tsrc.addr=10.1.{b}.{a}:{c} src.workload=\"sa{p}-7656cf8794-r7zb9\" src.namespace=\"ns{src_ns}\" src.identity=\"spiffe://cluster.local/ns/ns{src_ns}/sa/sa{p}\" dst.addr=10.2.{a}.{b}:15008 dst.hbone_addr=10.2.{a}.{b}:8080 dst.service=\"svc{s}.ns{dst_ns}.svc.cluster.local\" dst.workload=\"svc{s}-v1-87d54dd59-fn6vw\" dst.namespace=\"ns{dst_ns}\" dst.identity=\"spiffe://cluster.local/ns/ns{dst_ns}/sa/svc{s}\" direction=\"inbound\" bytes_sent={} bytes_recv={} duration=\"{}ms\"{error}",
                rng.below(5000),
                rng.below(5000),
                rng.below(50),
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_event_time_as_rfc3339() {
        assert_eq!(rfc3339(1_714_557_600 * 1_000_000_000), "2024-05-01T10:00:00.000000Z");
        assert_eq!(
            rfc3339(951_782_400 * 1_000_000_000 + 1_500),
            "2000-02-29T00:00:00.000001Z"
        );
    }
}
