//! OTLP load generator: pushes log batches over gRPC at full speed to a running
//! `verity run` and reports accepted records per second, request latency (p50, p99) and
//! the server's peak RSS when given its pid.
//!
//!     verity-loadgen --endpoint http://127.0.0.1:4317 --seconds 20 --batch 1000 \
//!         --connections 4 --pid $(pgrep -f 'verity run')
//!
//! Over mutual TLS: `--make-pki DIR` writes a throwaway mesh PKI (ca.pem, server.pem/.key
//! for 127.0.0.1, client.pem/.key with a SPIFFE ID) and exits; point Verity's
//! `otlp.grpc.tls` at it and run the load with `--tls-dir DIR`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use prost::Message;
use verity_e2e::otlp::{self, LOGS_EXPORT, RawCodec};

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
    /// What each request holds: `mesh` (access-log lines as a sidecar sends them) or a
    /// request built to cost the server most within `--request-bytes`: `tiny` (empty
    /// records), `wide` (64 KiB JSON bodies nested to the limits), `shared` (a resource with
    /// large attributes over many small records).
    #[arg(long, value_enum, default_value_t = Shape::Mesh)]
    shape: Shape,
    /// Size the hostile shapes fill (keep it under the server's `otlp.max_request_bytes`).
    #[arg(long, default_value_t = 8 << 20)]
    request_bytes: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Shape {
    Mesh,
    Tiny,
    Wide,
    Shared,
}

/// The records of one request of a hostile shape (`--shape`), numbered like the mesh one.
fn hostile_request(
    shape: Shape,
    bytes: usize,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    let numbered = || otlp::record(LINE, vec![otlp::kv("loadgen.request", SEQ_PLACEHOLDER)]);
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

const LINE: &str = r#"[2024-03-01T10:00:00.000Z] "GET /api/orders/42 HTTP/1.1" 200 - via_upstream - "-" 0 512 7 6 "-" "python-requests/2.31" "6c1a2f0e-7d1b-4bb8-9d3c-2f5b1a7e9c01" "orders.shop:8080" "10.1.0.7:8080" inbound|8080|| 127.0.0.6:51515 10.1.0.7:8080 10.1.0.3:44312 outbound_.8080_._.orders.shop.svc.cluster.local default"#;

/// Where each request's number goes (16 digits).
const SEQ_PLACEHOLDER: &str = "0000000000000000";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.make_pki {
        return make_pki(dir);
    }
    let request = if !matches!(args.shape, Shape::Mesh) {
        hostile_request(args.shape, args.request_bytes)
    } else {
        otlp::logs_request(
            (0..args.batch)
                .map(|i| {
                    let mut attrs = vec![otlp::kv(
                        "downstream_peer_uri_san",
                        "spiffe://cluster.local/ns/shop/sa/cart",
                    )];
                    if i == 0 {
                        attrs.push(otlp::kv("loadgen.request", SEQ_PLACEHOLDER));
                    }
                    otlp::record(LINE, attrs)
                })
                .collect(),
        )
    };
    // Encoded once: the generator should spend its CPU on sending, not on protobuf. Each
    // request gets its own number written over a fixed-width placeholder, so no two are
    // alike (Verity acknowledges a repeated request without evaluating it again).
    let records = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum::<u64>();
    let body = Bytes::from(request.encode_to_vec());
    let seq_at = body
        .windows(SEQ_PLACEHOLDER.len())
        .position(|w| w == SEQ_PLACEHOLDER.as_bytes())
        .ok_or_else(|| anyhow::anyhow!("request number placeholder not found"))?;
    // Numbers start from the clock, so a second run does not repeat the first one's requests.
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0));
    let next_seq = Arc::new(AtomicU64::new(first % 10_000_000_000_000_000));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let too_large = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let channel = connect(&args).await?;
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX);
        let (body, accepted, refused, next_seq) = (body.clone(), accepted.clone(), refused.clone(), next_seq.clone());
        let too_large = too_large.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                if let Err(e) = grpc.ready().await {
                    eprintln!("connection failed: {e}");
                    break;
                }
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(LOGS_EXPORT);
                let sent = Instant::now();
                let mut numbered = bytes::BytesMut::from(&body[..]);
                let seq = format!("{:016}", next_seq.fetch_add(1, Ordering::Relaxed));
                if let Some(slot) = numbered.get_mut(seq_at..seq_at + SEQ_PLACEHOLDER.len()) {
                    slot.copy_from_slice(seq.as_bytes());
                }
                match grpc.unary(tonic::Request::new(numbered.freeze()), path, RawCodec).await {
                    Ok(r) => {
                        latencies.push(sent.elapsed());
                        let resp = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse::decode(
                            r.into_inner(),
                        );
                        let rejected = resp
                            .ok()
                            .and_then(|r| r.partial_success)
                            .map(|p| p.rejected_log_records)
                            .unwrap_or(0);
                        accepted.fetch_add(records - rejected as u64, Ordering::Relaxed);
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // A hostile shape past the server's limits: keep sending, as an attacker
                    // would; the refusals are what is measured.
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        latencies.push(sent.elapsed());
                        too_large.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => {
                        eprintln!("export failed: {s}");
                        break;
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    latencies.sort();
    let quantile = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let secs = start.elapsed().as_secs_f64();
    let n = accepted.load(Ordering::Relaxed);
    println!(
        "accepted {n} records in {secs:.1} s = {:.0} records/s ({} connections, {} records/request, {} requests refused with UNAVAILABLE, {} with RESOURCE_EXHAUSTED)",
        n as f64 / secs,
        args.connections,
        records,
        refused.load(Ordering::Relaxed),
        too_large.load(Ordering::Relaxed)
    );
    println!(
        "request latency: p50 {:.1} ms, p99 {:.1} ms over {} requests",
        quantile(0.5),
        quantile(0.99),
        latencies.len()
    );
    if let Some(pid) = args.pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:")) {
            println!("server peak RSS: {}", hwm.trim_start_matches("VmHWM:").trim());
        }
    }
    Ok(())
}
