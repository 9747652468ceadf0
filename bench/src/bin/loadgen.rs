//! OTLP load generator: pushes log batches over gRPC to a running `verity run` and reports
//! accepted records per second, request latency (p50, p99) and the server's peak RSS when
//! given its pid.
//!
//! `--shape mesh` (the default) sends realistic mesh traffic, the lines `verity-meshlog` writes
//! (`verity_bench::mesh_traffic`: sidecar and ztunnel lines over many identities and services,
//! `--deny-percent` of them denied, `--attack-percent` of the sidecar requests attacks): a pool
//! of `--distinct-requests` requests of `--batch` records each, encoded once; every send copies
//! one and sets its request number and every record's event time to the wall clock (see
//! `request_pool`), so event time advances with real time as in a live mesh.
//!
//! Without `--rate`, every connection sends its next request as soon as the last one is
//! answered. With `--rate R`, the connections together send R records per second on a fixed
//! schedule (open loop): each connection has its own send times, which never move; one that is
//! still waiting for an answer sends as soon as it comes and counts as behind schedule, and
//! request latency is counted from the scheduled time, so a stalling server shows in the
//! percentiles instead of slowing the load down (no coordinated omission). Sends still due when
//! `--seconds` are over are counted, not made.
//!
//! Alert latency, `--alert-listen ADDR`: loadgen receives Verity's alerts on a webhook (start
//! Verity with the environment it prints; `--print-alert-env` prints only that, ready for
//! `env`) and replaces one record of every `--canary-every`th request by a canary, a path
//! traversal the built-in rule `zt-path-traversal` raises an alert for (see `canary`). It
//! reports the time from sending each canary to its alert arriving at the webhook; that
//! includes Verity's output batching and the delivery, so it is an upper bound of the time from
//! receipt to the alert being spooled (see `alert_receiver`).
//!
//!     verity-loadgen --endpoint http://127.0.0.1:4317 --seconds 20 --batch 1000 \
//!         --connections 4 --pid $(pgrep -f 'verity run')
//!     env $(verity-loadgen --alert-listen 127.0.0.1:9099 --print-alert-env) verity run &
//!     verity-loadgen --rate 20000 --alert-listen 127.0.0.1:9099 --seconds 30
//!
//! Over mutual TLS: `--make-pki DIR` writes a throwaway mesh PKI (ca.pem, server.pem/.key
//! for 127.0.0.1, client.pem/.key with a SPIFFE ID) and exits; point Verity's
//! `otlp.grpc.tls` at it and run the load with `--tls-dir DIR`.

// The binary's own modules, in loadgen/ beside it.
#[path = "loadgen/alert_receiver.rs"]
mod alert_receiver;
#[path = "loadgen/canary.rs"]
mod canary;
#[path = "loadgen/request_pool.rs"]
mod request_pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use bytes::Bytes;
use clap::Parser;
use prost::Message;
use tonic::client::Grpc;
use tonic::transport::Channel;
use verity_bench::mesh_traffic::{self, LineKind, MeshTraffic, Profile};
use verity_e2e::otlp::{self, LOGS_EXPORT, RawCodec};

use alert_receiver::AlertReceiver;
use request_pool::{NUMBER_ATTRIBUTE, NUMBER_MODULUS, NUMBER_PLACEHOLDER, RequestTemplate};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Records per export request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent gRPC connections, one in-flight request each.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Pid of the server, to report its peak RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Connect over mutual TLS with DIR/ca.pem, DIR/client.pem and DIR/client.key.
    #[arg(long)]
    tls_dir: Option<std::path::PathBuf>,
    /// Write a throwaway PKI into this directory and exit.
    #[arg(long)]
    make_pki: Option<std::path::PathBuf>,
    /// What each request holds: `mesh` (access-log lines as sidecars and ztunnel send them) or a
    /// request built to cost the server most within `--request-bytes`: `tiny` (empty
    /// records), `wide` (64 KiB JSON bodies nested to the limits), `shared` (a resource with
    /// large attributes over many small records).
    #[arg(long, value_enum, default_value_t = Shape::Mesh)]
    shape: Shape,
    /// Size the hostile shapes fill (keep it under the server's `otlp.max_request_bytes`).
    #[arg(long, default_value_t = 8 << 20)]
    request_bytes: usize,
    /// Distinct mesh requests, generated and encoded before the load starts and sent in turn.
    #[arg(long, default_value_t = 64)]
    distinct_requests: usize,
    /// Distinct workload identities (SPIFFE IDs) in the mesh traffic.
    #[arg(long, default_value_t = 10_000)]
    principals: u64,
    /// Distinct destination services in the mesh traffic.
    #[arg(long, default_value_t = 500)]
    services: u64,
    /// How many services each identity of the mesh traffic calls (its call graph); 0 lets
    /// every line name any service.
    #[arg(long, default_value_t = 0)]
    calls_per_identity: u64,
    /// Share of mesh requests and connections denied by an AuthorizationPolicy, in percent.
    #[arg(long, default_value_t = 1.0)]
    deny_percent: f64,
    /// Share of sidecar requests carrying an attack the built-in rules detect (a path
    /// traversal, an SQL injection, a Log4Shell user agent, in turn), in percent.
    #[arg(long, default_value_t = 0.0)]
    attack_percent: f64,
    /// Records per second over all connections, sent on a fixed schedule with latency counted
    /// from each send's scheduled time; 0: as fast as the server answers.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Receive Verity's alerts on this address (an HTTP webhook) and measure the latency from
    /// sending a canary to its alert arriving. Verity needs the environment printed at start.
    #[arg(long)]
    alert_listen: Option<SocketAddr>,
    /// With `--alert-listen`: one record of every Nth request is a canary.
    #[arg(long, default_value_t = 10)]
    canary_every: u64,
    /// Print the environment (KEY=VALUE lines) that points Verity's webhook output at
    /// `--alert-listen`, and exit.
    #[arg(long, requires = "alert_listen")]
    print_alert_env: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Shape {
    Mesh,
    Tiny,
    Wide,
    Shared,
}

/// The records of one request of a hostile shape (`--shape`), numbered like the mesh ones.
fn hostile_request(
    shape: Shape,
    bytes: usize,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    let numbered = || otlp::record(LINE, vec![otlp::kv(NUMBER_ATTRIBUTE, NUMBER_PLACEHOLDER)]);
    let mut request = match shape {
        Shape::Mesh => unreachable!("not a hostile shape"),
        // Two bytes on the wire each.
        Shape::Tiny => otlp::logs_request(
            std::iter::once(numbered())
                .chain((0..bytes / 2).map(|_| Default::default()))
                .collect(),
        ),
        Shape::Wide => {
            // 255 fields under nested objects, names near the length limit, ~64 KiB.
            let level = "n".repeat(28);
            let prefix = format!(r#""{level}":{{"#).repeat(7);
            let fields: String = (0..254)
                .map(|i| format!(r#""f{i:03}{}":"{}","#, "k".repeat(20), "v".repeat(200)))
                .collect();
            let body = format!(r#"{{"method":"GET",{prefix}{fields}"x":1{}}}"#, "}".repeat(7));
            let body = body.get(..body.len().min(65_000)).unwrap_or_default().to_string();
            let n = bytes / (body.len() + 16);
            otlp::logs_request(
                std::iter::once(numbered())
                    .chain((0..n).map(|_| otlp::record(&body, vec![])))
                    .collect(),
            )
        }
        Shape::Shared => {
            let n = (bytes / 2) / (LINE.len() + 8);
            otlp::logs_request(
                std::iter::once(numbered())
                    .chain((0..n).map(|_| otlp::record(LINE, vec![])))
                    .collect(),
            )
        }
    };
    if let Shape::Shared = shape {
        let attributes = (0..(bytes / 2) / 60_000)
            .map(|i| otlp::kv(&format!("note.{i}"), &"n".repeat(60_000)))
            .collect();
        request.resource_logs[0].resource = Some(opentelemetry_proto::tonic::resource::v1::Resource {
            attributes,
            ..Default::default()
        });
    }
    request
}

fn make_pki(dir: &std::path::Path) -> anyhow::Result<()> {
    use verity_e2e::mesh_pki::MeshPki;
    std::fs::create_dir_all(dir)?;
    let pki = MeshPki::new("loadgen root");
    pki.write_ca(dir, "ca");
    pki.server().write(dir, "server");
    pki.workload("spiffe://cluster.local/ns/istio-system/sa/loadgen")
        .write(dir, "client");
    println!("wrote {}/{{ca,server,client}}.pem and keys", dir.display());
    Ok(())
}

async fn connect(args: &Args) -> anyhow::Result<tonic::transport::Channel> {
    let Some(dir) = &args.tls_dir else {
        return Ok(tonic::transport::Endpoint::from_shared(args.endpoint.clone())?
            .connect()
            .await?);
    };
    let addr: std::net::SocketAddr = args
        .endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .parse()?;
    let leaf = verity_e2e::mesh_pki::Leaf {
        cert_pem: std::fs::read_to_string(dir.join("client.pem"))?,
        key_pem: std::fs::read_to_string(dir.join("client.key"))?,
    };
    let ca = std::fs::read_to_string(dir.join("ca.pem"))?;
    let config = verity_e2e::mesh_pki::client_config(&ca, Some(&leaf), b"h2");
    Ok(verity_e2e::mesh_pki::grpc_tls_channel(addr, config).await?)
}

/// The one line of the hostile shapes.
const LINE: &str = r#"[2024-03-01T10:00:00.000Z] "GET /api/orders/42 HTTP/1.1" 200 - via_upstream - "-" 0 512 7 6 "-" "python-requests/2.31" "6c1a2f0e-7d1b-4bb8-9d3c-2f5b1a7e9c01" "orders.shop:8080" "10.1.0.7:8080" inbound|8080|| 127.0.0.6:51515 10.1.0.7:8080 10.1.0.3:44312 outbound_.8080_._.orders.shop.svc.cluster.local default"#;

/// Canary templates at most (each a copy of a pool request with a canary slot).
const CANARY_TEMPLATES: usize = 8;
/// A send that starts later than this after its scheduled time counts as behind schedule.
const BEHIND_SCHEDULE: Duration = Duration::from_millis(2);
/// How long to wait for the last canaries' alerts once the load has stopped.
const ALERT_WAIT: Duration = Duration::from_secs(5);

/// The mesh requests sent in turn and, with `with_canaries`, the canary templates: copies of
/// the first [`CANARY_TEMPLATES`] of them that hold a sidecar line, the first one replaced by a
/// canary slot.
fn mesh_pool(args: &Args, with_canaries: bool) -> anyhow::Result<(Vec<RequestTemplate>, Vec<RequestTemplate>)> {
    let mut traffic = MeshTraffic::new(Profile {
        principals: args.principals,
        services: args.services,
        calls_per_identity: args.calls_per_identity,
        deny_percent: args.deny_percent,
        attack_percent: args.attack_percent,
        ..Profile::default()
    });
    // Every canary has the same length: this one's.
    let canary_placeholder = canary::line(&mesh_traffic::rfc3339(0), 0, 0);
    let batch = args.batch as u64;
    let mut pool = Vec::with_capacity(args.distinct_requests);
    let mut canaries = Vec::new();
    for first_line in (0..args.distinct_requests as u64).map(|i| i * batch) {
        let lines: Vec<_> = (first_line..first_line + batch).map(|n| traffic.line(n)).collect();
        pool.push(RequestTemplate::mesh(&lines, None)?);
        if with_canaries && canaries.len() < CANARY_TEMPLATES && lines.iter().any(|(_, k)| *k == LineKind::Sidecar) {
            canaries.push(RequestTemplate::mesh(&lines, Some(&canary_placeholder))?);
        }
    }
    ensure!(
        !with_canaries || !canaries.is_empty(),
        "no request holds a sidecar line for a canary to replace"
    );
    Ok((pool, canaries))
}

/// What every connection's sender shares.
struct Load {
    /// The requests sent in turn.
    pool: Vec<RequestTemplate>,
    /// Requests with a canary slot, used in turn for every `canary_every`th send.
    canary_pool: Vec<RequestTemplate>,
    canary_every: u64,
    alerts: Option<AlertReceiver>,
    /// The next request number. Numbers start from the clock, so a second run does not repeat
    /// the first one's requests (nor its canaries).
    next_number: AtomicU64,
    /// Sends so far over all connections: picks the pool request and the canaries' turns.
    sends: AtomicU64,
    /// Canaries so far: picks each one's source address.
    canaries: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    too_large: AtomicU64,
}

/// A request ready to send.
struct Outgoing {
    body: Bytes,
    records: u64,
    /// The request number of the canary it carries.
    canary: Option<u64>,
}

impl Load {
    fn next_request(&self) -> anyhow::Result<Outgoing> {
        let turn = self.sends.fetch_add(1, Ordering::Relaxed);
        let number = self.next_number.fetch_add(1, Ordering::Relaxed) % NUMBER_MODULUS;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let time = mesh_traffic::rfc3339(now);
        let canary_turn =
            self.alerts.is_some() && !self.canary_pool.is_empty() && (turn + 1).is_multiple_of(self.canary_every);
        if canary_turn {
            let index = self.canaries.fetch_add(1, Ordering::Relaxed);
            let template = &self.canary_pool[(index % self.canary_pool.len() as u64) as usize];
            let line = canary::line(&time, number, index);
            Ok(Outgoing {
                body: template.render(number, &time, Some(&line))?,
                records: template.records(),
                canary: Some(number),
            })
        } else {
            let template = &self.pool[(turn % self.pool.len() as u64) as usize];
            Ok(Outgoing {
                body: template.render(number, &time, None)?,
                records: template.records(),
                canary: None,
            })
        }
    }
}

/// When one connection sends: at `first`, then every `interval`.
#[derive(Clone, Copy)]
struct Schedule {
    first: Instant,
    interval: Duration,
}

/// What one connection measured.
#[derive(Default)]
struct ConnectionReport {
    /// From the scheduled send time (or the send, without a schedule) to the answer.
    latencies: Vec<Duration>,
    sends: u64,
    /// Sends that started more than [`BEHIND_SCHEDULE`] after their scheduled time.
    behind: u64,
    /// The latest start after a scheduled time.
    worst_lag: Duration,
    /// Scheduled sends not made because the deadline came first (the server fell behind).
    missed: u64,
}

/// Sends on one connection until `deadline`: on `schedule`, or as fast as answers come.
async fn drive(
    mut grpc: Grpc<Channel>,
    load: Arc<Load>,
    schedule: Option<Schedule>,
    deadline: Instant,
) -> ConnectionReport {
    let mut report = ConnectionReport::default();
    let mut next_at = schedule.map(|s| s.first);
    loop {
        let scheduled = match (schedule, next_at) {
            (Some(s), Some(at)) => {
                if at >= deadline || Instant::now() >= deadline {
                    // Sends due before the deadline that could not go out in time.
                    let due = deadline.saturating_duration_since(at);
                    report.missed =
                        u64::try_from(due.as_nanos().div_ceil(s.interval.as_nanos().max(1))).unwrap_or(u64::MAX);
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                next_at = Some(at + s.interval);
                Some(at)
            }
            _ if Instant::now() >= deadline => break,
            _ => None,
        };
        if let Err(e) = grpc.ready().await {
            eprintln!("connection failed: {e}");
            break;
        }
        let started = Instant::now();
        if let Some(at) = scheduled {
            let lag = started.saturating_duration_since(at);
            report.worst_lag = report.worst_lag.max(lag);
            if lag > BEHIND_SCHEDULE {
                report.behind += 1;
            }
        }
        report.sends += 1;
        let outgoing = match load.next_request() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("cannot build a request: {e:#}");
                break;
            }
        };
        let canary = outgoing.canary.zip(load.alerts.as_ref());
        if let Some((number, alerts)) = canary {
            alerts.sending(number);
        }
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(LOGS_EXPORT);
        let result = grpc.unary(tonic::Request::new(outgoing.body), path, RawCodec).await;
        let latency = scheduled.unwrap_or(started).elapsed();
        match result {
            Ok(r) => {
                report.latencies.push(latency);
                let resp =
                    opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse::decode(r.into_inner());
                let rejected = resp
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0));
                load.accepted
                    .fetch_add(outgoing.records.saturating_sub(rejected), Ordering::Relaxed);
                if let Some((_, alerts)) = canary {
                    alerts.sent();
                }
            }
            Err(s) => {
                if let Some((number, alerts)) = canary {
                    alerts.not_sent(number);
                }
                match s.code() {
                    tonic::Code::Unavailable => {
                        load.refused.fetch_add(1, Ordering::Relaxed);
                        // On a schedule the next send has its own time; without one, back off.
                        if schedule.is_none() {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    // A hostile shape past the server's limits: keep sending, as an attacker
                    // would; the refusals are what is measured.
                    tonic::Code::ResourceExhausted => {
                        report.latencies.push(latency);
                        load.too_large.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        eprintln!("export failed: {s}");
                        break;
                    }
                }
            }
        }
    }
    report
}

/// The `q` quantile of sorted durations, in milliseconds (0 when there are none).
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn max_ms(sorted: &[Duration]) -> f64 {
    sorted.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.make_pki {
        return make_pki(dir);
    }
    if let (true, Some(listen)) = (args.print_alert_env, args.alert_listen) {
        ensure!(
            listen.port() != 0,
            "--alert-listen needs a port for Verity to deliver to"
        );
        for (key, value) in alert_receiver::verity_env(&alert_receiver::url(listen)) {
            println!("{key}={value}");
        }
        return Ok(());
    }
    ensure!(args.batch > 0, "--batch must be at least 1");
    ensure!(args.distinct_requests > 0, "--distinct-requests must be at least 1");
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.canary_every > 0, "--canary-every must be at least 1");
    let mesh = matches!(args.shape, Shape::Mesh);
    ensure!(
        mesh || args.alert_listen.is_none(),
        "--alert-listen needs --shape mesh (canaries are mesh lines)"
    );
    let alerts = args.alert_listen.map(AlertReceiver::start).transpose()?;
    if let Some(alerts) = &alerts {
        eprintln!(
            "alert receiver on {}; Verity must run with this environment:",
            alerts.url()
        );
        for (key, value) in alert_receiver::verity_env(alerts.url()) {
            eprintln!("  {key}={value}");
        }
    }
    // Encoded once: the generator should spend its CPU on sending, not on protobuf.
    let (pool, canary_pool) = if mesh {
        mesh_pool(&args, alerts.is_some())?
    } else {
        (
            vec![RequestTemplate::fixed(&hostile_request(
                args.shape,
                args.request_bytes,
            ))?],
            Vec::new(),
        )
    };
    let records = pool[0].records();
    let first_number = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0));
    let load = Arc::new(Load {
        pool,
        canary_pool,
        canary_every: args.canary_every,
        alerts,
        next_number: AtomicU64::new(first_number % NUMBER_MODULUS),
        sends: AtomicU64::new(0),
        canaries: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        too_large: AtomicU64::new(0),
    });
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(connect(&args).await?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    // Each connection sends every `connections` requests' worth of records at the rate, the
    // connections staggered evenly over that interval.
    let request_interval = (args.rate > 0).then(|| Duration::from_secs_f64(records as f64 / args.rate as f64));
    let mut tasks = Vec::new();
    for (i, channel) in channels.into_iter().enumerate() {
        let grpc = Grpc::new(channel)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX);
        let schedule = request_interval.map(|every| Schedule {
            first: start + every * u32::try_from(i).unwrap_or(u32::MAX),
            interval: every * u32::try_from(args.connections).unwrap_or(u32::MAX),
        });
        tasks.push(tokio::spawn(drive(grpc, load.clone(), schedule, deadline)));
    }
    let mut latencies = Vec::new();
    let (mut sends, mut behind, mut worst_lag, mut missed) = (0, 0, Duration::ZERO, 0);
    for t in tasks {
        let report = t.await?;
        latencies.extend(report.latencies);
        sends += report.sends;
        behind += report.behind;
        worst_lag = worst_lag.max(report.worst_lag);
        missed += report.missed;
    }
    // On a schedule the run lasts the schedule, however early the last answer came.
    let mut secs = start.elapsed().as_secs_f64();
    if request_interval.is_some() {
        secs = secs.max(args.seconds as f64);
    }
    latencies.sort();
    let n = load.accepted.load(Ordering::Relaxed);
    println!(
        "accepted {n} records in {secs:.1} s = {:.0} records/s ({} connections, {} records/request, {} requests refused with UNAVAILABLE, {} with RESOURCE_EXHAUSTED)",
        n as f64 / secs,
        args.connections,
        records,
        load.refused.load(Ordering::Relaxed),
        load.too_large.load(Ordering::Relaxed)
    );
    println!(
        "request latency: p50 {:.1} ms, p99 {:.1} ms over {} requests",
        quantile_ms(&latencies, 0.5),
        quantile_ms(&latencies, 0.99),
        latencies.len()
    );
    if let Some(every) = request_interval {
        println!(
            "rate: {} records/s offered ({:.1} requests/s over {} connections, open loop); request latency counted from each send's scheduled time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {behind} of {sends} sends started behind schedule (more than {} ms late; worst {:.1} ms), {missed} more were due but not sent by the end",
            args.rate,
            1.0 / every.as_secs_f64(),
            args.connections,
            quantile_ms(&latencies, 0.5),
            quantile_ms(&latencies, 0.99),
            max_ms(&latencies),
            BEHIND_SCHEDULE.as_millis(),
            worst_lag.as_secs_f64() * 1000.0,
        );
    }
    if let Some(alerts) = &load.alerts {
        alerts.wait_for_alerts(ALERT_WAIT).await;
        let r = alerts.report();
        println!(
            "canaries: {} sent, {} alerted, {} without an alert {} s after the load stopped; {} alerts received in {} webhook requests ({} naming no awaited canary, {} requests refused)",
            r.canaries_sent,
            r.latencies.len(),
            r.canaries_missing,
            ALERT_WAIT.as_secs(),
            r.alerts,
            r.deliveries,
            r.stray_canary_alerts,
            r.refused_requests,
        );
        println!(
            "alert latency (canary sent -> alert delivered to the webhook; includes Verity's output batching and delivery, so an upper bound of receipt -> alert spooled): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} canaries",
            quantile_ms(&r.latencies, 0.5),
            quantile_ms(&r.latencies, 0.99),
            max_ms(&r.latencies),
            r.latencies.len()
        );
    }
    if let Some(pid) = args.pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:")) {
            println!("server peak RSS: {}", hwm.trim_start_matches("VmHWM:").trim());
        }
    }
    Ok(())
}
