//! Realistic, reproducible service-mesh access-log lines: what `verity-meshlog` writes to a file
//! for `verity replay` and what `verity-loadgen --shape mesh` sends over OTLP.
//!
//! Half the lines are inbound requests as an Istio sidecar logs them in the default TEXT format,
//! half are ambient ztunnel connection records; they are spread over many workload identities,
//! services and namespaces ([`Profile`]), a share of them is denied by policy (an RBAC 403 from
//! the sidecar, a policy rejection from ztunnel) and, when asked for, a share of the sidecar
//! requests carries an attack the built-in rule pack detects ([`Attack`], in turn).
//!
//! The same [`Profile`] always gives the same lines: [`MeshTraffic`] draws its choices from a
//! seeded pseudo-random sequence, one line after the other, so line `n` is only reproduced when
//! lines `0..n` were asked for before it, in order. Every line carries its event time as
//! [`TIMESTAMP_LEN`] bytes at [`LineKind::timestamp_offset`], so a sender can overwrite it in
//! place with the current time without changing the line's length.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Length of an event time as the lines carry it: `2024-05-01T10:00:00.123456Z`.
pub const TIMESTAMP_LEN: usize = "2024-05-01T10:00:00.123456Z".len();

/// The path of a [`Attack::PathTraversal`] request.
pub const PATH_TRAVERSAL_PATH: &str = "/static/../../etc/passwd";
/// The path of a [`Attack::SqlInjection`] request (`id=1' or 1=1`).
pub const SQL_INJECTION_PATH: &str = "/api/items?id=1%27%20or%201=1";
/// The user agent of a [`Attack::Log4Shell`] request.
pub const LOG4SHELL_USER_AGENT: &str = "${jndi:ldap://x/a}";

/// What the traffic looks like; the same profile always gives the same lines.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Distinct workload identities (SPIFFE IDs) sending requests.
    pub principals: u64,
    /// Distinct destination services.
    pub services: u64,
    /// How many services each identity calls: its call graph. Identity `p` calls services
    /// `(p × 7919 + k) mod services` for `k < calls_per_identity`, so the (identity, service)
    /// edges number `principals × calls_per_identity`, as in a mesh where each workload talks
    /// to a few others. At 0 each line's service is any of them (about `principals × services`
    /// edges, almost every one new in a million lines), and the lines are the ones written
    /// before this existed.
    pub calls_per_identity: u64,
    /// Namespaces the identities and services are spread over.
    pub namespaces: u64,
    /// Share of requests and connections denied by an AuthorizationPolicy, in percent.
    pub deny_percent: f64,
    /// Share of sidecar requests carrying an [`Attack`], in percent. At 0 no random number is
    /// drawn for it, so the lines are the same as before attacks existed.
    pub attack_percent: f64,
    /// Seed of the pseudo-random choices.
    pub seed: u64,
    /// Lines per second of event time.
    pub per_second: u64,
    /// Event time of line 0, in seconds since the Unix epoch.
    pub start: i64,
}

impl Default for Profile {
    /// `verity-meshlog`'s defaults: 10,000 identities, 500 services in 40 namespaces, 1 % denied,
    /// no attacks, 10,000 lines per second from 2024-05-01T10:00:00Z.
    fn default() -> Self {
        Self {
            principals: 10_000,
            services: 500,
            calls_per_identity: 0,
            namespaces: 40,
            deny_percent: 1.0,
            attack_percent: 0.0,
            seed: 1,
            per_second: 10_000,
            start: 1_714_557_600,
        }
    }
}

/// Which proxy wrote a line, and so where its event time is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// An Istio sidecar's inbound request, default TEXT format: `[<time>] "GET /path …`.
    Sidecar,
    /// An ambient ztunnel connection record: `<time>\tinfo\taccess\tconnection complete\t…`.
    Ztunnel,
}

impl LineKind {
    /// Where the [`TIMESTAMP_LEN`] bytes of event time start in a line of this kind.
    pub fn timestamp_offset(self) -> usize {
        match self {
            LineKind::Sidecar => 1,
            LineKind::Ztunnel => 0,
        }
    }
}

/// An attack a sidecar request can carry, each one the built-in rule pack detects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// [`PATH_TRAVERSAL_PATH`], raised by `zt-path-traversal`.
    PathTraversal,
    /// [`SQL_INJECTION_PATH`], raised by `zt-sql-injection`.
    SqlInjection,
    /// [`LOG4SHELL_USER_AGENT`], raised by `zt-log4shell`.
    Log4Shell,
}

impl Attack {
    /// The order attacks take turns in.
    pub const ROTATION: [Attack; 3] = [Attack::PathTraversal, Attack::SqlInjection, Attack::Log4Shell];

    /// The built-in rule that raises an alert for this attack.
    pub fn rule_id(self) -> &'static str {
        match self {
            Attack::PathTraversal => "zt-path-traversal",
            Attack::SqlInjection => "zt-sql-injection",
            Attack::Log4Shell => "zt-log4shell",
        }
    }
}

/// One inbound HTTP request as an Istio sidecar logs it in the default TEXT access-log format
/// (its [`fmt::Display`] is the line, without a newline).
#[derive(Clone, Debug)]
pub struct SidecarRequest<'a> {
    /// Start time, [`TIMESTAMP_LEN`] bytes (see [`rfc3339`]).
    pub time: &'a str,
    pub method: &'a str,
    /// Path and query as the client sent them.
    pub path: &'a str,
    pub status: u16,
    /// `%RESPONSE_CODE_DETAILS%`: `via_upstream`, or the RBAC policy that denied the request.
    pub response_details: &'a str,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub user_agent: &'a str,
    /// `%REQ(X-REQUEST-ID)%`.
    pub request_id: &'a str,
    /// The destination service as `<name>.<namespace>`: the authority without its port, and the
    /// service part of the SNI (`outbound_.8080_._.<service>.svc.cluster.local`).
    pub service: &'a str,
    /// The client: `%DOWNSTREAM_REMOTE_ADDRESS%`.
    pub source: SocketAddrV4,
    /// The pod the sidecar serves (port 8080).
    pub destination: Ipv4Addr,
    /// Whether the request reached the application; one the sidecar's RBAC filter denied did
    /// not, and its upstream host is `-`.
    pub reached_upstream: bool,
}

impl fmt::Display for SidecarRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            time,
            method,
            path,
            status,
            response_details,
            bytes_sent,
            duration_ms,
            user_agent,
            request_id,
            service,
            source,
            destination,
            reached_upstream,
        } = self;
        write!(
            f,
            "[{time}] \"{method} {path} HTTP/1.1\" {status} - {response_details} - \"-\" 0 {bytes_sent} {duration_ms} {duration_ms} \"-\" \"{user_agent}\" \"{request_id}\" \"{service}:8080\" "
        )?;
        if *reached_upstream {
            write!(f, "\"{destination}:8080\"")?;
        } else {
            f.write_str("\"-\"")?;
        }
        write!(
            f,
            " inbound|8080|| 127.0.0.6:{port} {destination}:8080 {source} outbound_.8080_._.{service}.svc.cluster.local default",
            port = source.port(),
        )
    }
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

    /// Uniform enough in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An address octet in `0..250`.
    fn octet(&mut self) -> u8 {
        u8::try_from(self.below(250)).unwrap_or(u8::MAX)
    }
}

/// `2024-05-01T10:00:00.123456Z` for nanoseconds since the epoch: always [`TIMESTAMP_LEN`]
/// bytes for years 0 to 9999.
pub fn rfc3339(ns: i64) -> String {
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

/// Parts of one per million, from a percentage clamped to 0–100.
fn per_million(percent: f64) -> u64 {
    (percent.clamp(0.0, 100.0) * 10_000.0) as u64
}

/// Spreads the services one identity calls ([`Profile::calls_per_identity`]) over all of them:
/// a prime, so neighbouring identities do not call the same services.
const CALLEE_STRIDE: u64 = 7919;

/// Writes the lines of a [`Profile`], one at a time and in order.
pub struct MeshTraffic {
    profile: Profile,
    rng: SplitMix,
    deny_per_million: u64,
    attack_per_million: u64,
    /// Attacks written so far: the next one is `Attack::ROTATION[attacks_written % 3]`.
    attacks_written: u64,
}

impl MeshTraffic {
    pub fn new(profile: Profile) -> Self {
        Self {
            rng: SplitMix(profile.seed),
            deny_per_million: per_million(profile.deny_percent),
            attack_per_million: per_million(profile.attack_percent),
            attacks_written: 0,
            profile,
        }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Event time of line `n`, in nanoseconds since the epoch.
    pub fn event_time_ns(&self, n: u64) -> i64 {
        let offset = n.saturating_mul(1_000_000_000) / self.profile.per_second.max(1);
        self.profile
            .start
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
    }

    /// Line `n` as a new string (without a newline); see [`MeshTraffic::write_line`].
    pub fn line(&mut self, n: u64) -> (String, LineKind) {
        let mut text = String::with_capacity(640);
        let kind = self.write_line(n, &mut text);
        (text, kind)
    }

    /// Appends line `n` (without a newline) to `out` and says which kind it is: a sidecar
    /// request for even `n`, a ztunnel connection for odd `n`. Lines are only reproducible when
    /// asked for in order from 0 (each draws from the same pseudo-random sequence).
    pub fn write_line(&mut self, n: u64, out: &mut String) -> LineKind {
        let time = rfc3339(self.event_time_ns(n));
        let namespaces = self.profile.namespaces.max(1);
        let rng = &mut self.rng;
        let principal = rng.below(self.profile.principals);
        let src_ns = principal % namespaces;
        let service = match self.profile.calls_per_identity {
            0 => rng.below(self.profile.services),
            calls => {
                let callee = principal.wrapping_mul(CALLEE_STRIDE).wrapping_add(rng.below(calls));
                callee % self.profile.services.max(1)
            }
        };
        let dst_ns = service % namespaces;
        let (a, b, port) = (rng.octet(), rng.octet(), rng.below(60_000) + 1024);
        let port = u16::try_from(port).unwrap_or(u16::MAX);
        let source = SocketAddrV4::new(Ipv4Addr::new(10, 1, b, a), port);
        let destination = Ipv4Addr::new(10, 2, a, b);
        // Writing to a String cannot fail.
        if n.is_multiple_of(2) {
            const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
            const AGENTS: [&str; 3] = ["Go-http-client/1.1", "python-requests/2.31", "curl/8.4.0"];
            let method = METHODS[rng.below(4) as usize];
            let mut path = format!("/api/v1/items/{}", rng.below(997));
            let mut user_agent = AGENTS[rng.below(3) as usize];
            let denied = rng.below(1_000_000) < self.deny_per_million;
            if self.attack_per_million > 0 && rng.below(1_000_000) < self.attack_per_million {
                match Attack::ROTATION[(self.attacks_written % 3) as usize] {
                    Attack::PathTraversal => path = PATH_TRAVERSAL_PATH.to_owned(),
                    Attack::SqlInjection => path = SQL_INJECTION_PATH.to_owned(),
                    Attack::Log4Shell => user_agent = LOG4SHELL_USER_AGENT,
                }
                self.attacks_written += 1;
            }
            let (status, response_details) = if denied {
                (
                    403,
                    format!("rbac_access_denied_matched_policy[ns[ns{dst_ns}]-policy[deny-{service}]-rule[0]]"),
                )
            } else {
                (200, "via_upstream".to_owned())
            };
            let bytes_sent = 100 + rng.below(4000);
            let duration_ms = rng.below(50);
            let request = SidecarRequest {
                time: &time,
                method,
                path: &path,
                status,
                response_details: &response_details,
                bytes_sent,
                duration_ms,
                user_agent,
                request_id: &format!("req-{n}"),
                service: &format!("svc{service}.ns{dst_ns}"),
                source,
                destination,
                reached_upstream: !denied,
            };
            let _ = write!(out, "{request}");
            LineKind::Sidecar
        } else {
            // A denied connection is closed by L4 policy.
            let denied = rng.below(1_000_000) < self.deny_per_million;
            let level = if denied { "error" } else { "info" };
            let _ = write!(
                out,
                "{time}\t{level}\taccess\tconnection complete\tsrc.addr={source} src.workload=\"sa{principal}-7656cf8794-r7zb9\" src.namespace=\"ns{src_ns}\" src.identity=\"spiffe://cluster.local/ns/ns{src_ns}/sa/sa{principal}\" dst.addr={destination}:15008 dst.hbone_addr={destination}:8080 dst.service=\"svc{service}.ns{dst_ns}.svc.cluster.local\" dst.workload=\"svc{service}-v1-87d54dd59-fn6vw\" dst.namespace=\"ns{dst_ns}\" dst.identity=\"spiffe://cluster.local/ns/ns{dst_ns}/sa/svc{service}\" direction=\"inbound\" bytes_sent={} bytes_recv={} duration=\"{}ms\"",
                rng.below(5000),
                rng.below(5000),
                rng.below(50),
            );
            if denied {
                let _ = write!(
                    out,
                    " error=\"connection closed due to policy rejection: explicitly denied by: ns{dst_ns}/deny-{service}\""
                );
            }
            LineKind::Ztunnel
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(profile: &Profile, count: u64) -> Vec<(String, LineKind)> {
        let mut traffic = MeshTraffic::new(profile.clone());
        (0..count).map(|n| traffic.line(n)).collect()
    }

    #[test]
    fn formats_event_time_as_rfc3339() {
        assert_eq!(rfc3339(1_714_557_600 * 1_000_000_000), "2024-05-01T10:00:00.000000Z");
        assert_eq!(
            rfc3339(951_782_400 * 1_000_000_000 + 1_500),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(rfc3339(0).len(), TIMESTAMP_LEN);
    }

    /// The first lines `verity-meshlog --deny-percent 50` wrote before the generator moved here.
    #[test]
    fn writes_the_lines_meshlog_always_wrote() {
        let profile = Profile {
            deny_percent: 50.0,
            ..Profile::default()
        };
        let got = lines(&profile, 2);
        assert_eq!(
            got[0],
            (
                r#"[2024-05-01T10:00:00.000000Z] "GET /api/v1/items/482 HTTP/1.1" 403 - rbac_access_denied_matched_policy[ns[ns19]-policy[deny-19]-rule[0]] - "-" 0 1050 37 37 "-" "Go-http-client/1.1" "req-0" "svc19.ns19:8080" "-" inbound|8080|| 127.0.0.6:29785 10.2.90.235:8080 10.1.235.90:29785 outbound_.8080_._.svc19.ns19.svc.cluster.local default"#.to_owned(),
                LineKind::Sidecar
            )
        );
        assert_eq!(
            got[1],
            (
                "2024-05-01T10:00:00.000100Z\tinfo\taccess\tconnection complete\tsrc.addr=10.1.66.22:20763 src.workload=\"sa3870-7656cf8794-r7zb9\" src.namespace=\"ns30\" src.identity=\"spiffe://cluster.local/ns/ns30/sa/sa3870\" dst.addr=10.2.22.66:15008 dst.hbone_addr=10.2.22.66:8080 dst.service=\"svc284.ns4.svc.cluster.local\" dst.workload=\"svc284-v1-87d54dd59-fn6vw\" dst.namespace=\"ns4\" dst.identity=\"spiffe://cluster.local/ns/ns4/sa/svc284\" direction=\"inbound\" bytes_sent=241 bytes_recv=14 duration=\"42ms\"".to_owned(),
                LineKind::Ztunnel
            )
        );
    }

    #[test]
    fn the_same_profile_gives_the_same_lines() {
        let profile = Profile {
            deny_percent: 10.0,
            attack_percent: 5.0,
            ..Profile::default()
        };
        let first = lines(&profile, 2000);
        assert_eq!(first, lines(&profile, 2000));
        let other_seed = lines(&Profile { seed: 2, ..profile }, 2000);
        assert_ne!(first, other_seed);
        let denied = first
            .iter()
            .filter(|(l, _)| l.contains(" 403 ") || l.contains("\terror\t"))
            .count();
        assert!((100..300).contains(&denied), "{denied} of 2000 denied at 10 %");
    }

    /// With a call graph each identity calls only its own few services, and different
    /// identities call different ones.
    #[test]
    fn a_call_graph_bounds_the_services_each_identity_calls() {
        use std::collections::{BTreeMap, BTreeSet};
        let profile = Profile {
            calls_per_identity: 3,
            principals: 50,
            ..Profile::default()
        };
        let mut callees: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (line, kind) in lines(&profile, 4000) {
            if kind != LineKind::Ztunnel {
                continue;
            }
            let field = |name: &str| {
                let start = line.find(name).map(|i| i + name.len()).expect("field");
                let value = line.get(start..).expect("value");
                value.get(..value.find('"').expect("end")).expect("value").to_owned()
            };
            callees
                .entry(field("src.identity=\""))
                .or_default()
                .insert(field("dst.service=\""));
        }
        assert_eq!(callees.len(), 50, "every identity sends");
        assert!(callees.values().all(|s| s.len() <= 3), "{callees:?}");
        let services: BTreeSet<_> = callees.values().flatten().collect();
        assert!(
            services.len() > 100,
            "identities call different services: {}",
            services.len()
        );
    }

    #[test]
    fn event_time_sits_at_the_kinds_offset() {
        let mut traffic = MeshTraffic::new(Profile::default());
        for n in 0..100 {
            let (line, kind) = traffic.line(n);
            assert_eq!(
                kind,
                if n % 2 == 0 {
                    LineKind::Sidecar
                } else {
                    LineKind::Ztunnel
                }
            );
            let at = kind.timestamp_offset();
            assert_eq!(
                line[at..at + TIMESTAMP_LEN],
                rfc3339(traffic.event_time_ns(n)),
                "{line}"
            );
        }
    }

    #[test]
    fn attacks_take_turns_on_sidecar_lines_only() {
        let all = lines(
            &Profile {
                attack_percent: 100.0,
                ..Profile::default()
            },
            12,
        );
        let sidecar: Vec<&str> = all.iter().step_by(2).map(|(l, _)| l.as_str()).collect();
        for (i, line) in sidecar.iter().enumerate() {
            let needle = match Attack::ROTATION[i % 3] {
                Attack::PathTraversal => format!(" {PATH_TRAVERSAL_PATH} "),
                Attack::SqlInjection => format!(" {SQL_INJECTION_PATH} "),
                Attack::Log4Shell => format!("\"{LOG4SHELL_USER_AGENT}\""),
            };
            assert!(line.contains(&needle), "{line} lacks {needle}");
        }
        assert!(
            all.iter()
                .skip(1)
                .step_by(2)
                .all(|(l, _)| !l.contains("..") && !l.contains("jndi"))
        );
        // None at 0 %.
        let clean = lines(&Profile::default(), 1000);
        assert!(
            clean
                .iter()
                .all(|(l, _)| !l.contains("..") && !l.contains("%27") && !l.contains("jndi"))
        );
    }
}
