//! Helpers for the end-to-end tests: start the real `verity` binary on free loopback ports
//! with its files in a temporary directory, talk raw HTTP/1.1 and gRPC to it, stop it with
//! SIGTERM and read what it wrote.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `verity` binary under test: `$VERITY_BIN`, else the `verity` built into the same
/// target directory as this test (`target/debug/deps/<test>` → `target/debug/verity`).
pub fn verity_bin() -> PathBuf {
    if let Ok(p) = std::env::var("VERITY_BIN") {
        return PathBuf::from(p);
    }
    let beside_tests = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(|dir| dir.join("verity")));
    let bin = beside_tests.unwrap_or_else(|| repo_root().join("target/debug/verity"));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` before the end-to-end tests",
        bin.display()
    );
    bin
}

/// A [`Command`] for [`verity_bin`] whose working directory is `dir`.
///
/// A run writes its data (alerts, spool, archive: `./verity-data` by default) under the working
/// directory, so a test must never run the binary in the source tree: pass a temporary
/// directory that outlives the command, and give the binary absolute paths.
pub fn verity_command(dir: &Path) -> Command {
    let mut cmd = Command::new(verity_bin());
    cmd.current_dir(dir);
    cmd
}

/// `../shared/reference` beside the repository, if present.
pub fn shared_reference() -> Option<PathBuf> {
    let dir = repo_root().join("../shared/reference");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP: {} is absent; this conformance check needs it", dir.display());
        None
    }
}

/// A loopback port nothing listens on now and this process has not handed out before.
///
/// The kernel may hand the same free port to two `bind(0)` calls in a row once the first
/// socket is closed, and two ports of one Verity config must differ, so ports already given
/// to a test in this process are skipped.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// A running `verity run`.
pub struct Verity {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    stderr_path: PathBuf,
    env: Vec<(String, String)>,
}

impl Verity {
    /// Starts Verity with an archive and dead-letter file in a fresh directory, plus `env`
    /// overrides (`VERITY__…`). Waits until `/readyz` answers 200.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, env)
    }

    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let (grpc, http, admin) = (free_port(), free_port(), free_port());
        let stderr_path = dir.path().join("verity.stderr");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let child = Self::spawn(dir.path(), &stderr_path, (grpc, http, admin), &env);
        let mut v = Verity {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            dir,
            stderr_path,
            env,
        };
        v.wait_ready(Duration::from_secs(30));
        v
    }

    /// Kills the process with SIGKILL: no drain, no flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the binary again in the same directory, on the same ports, with the same
    /// environment (after [`Verity::kill9`] or [`Verity::terminate`]).
    pub fn restart(&mut self) {
        let _ = self.child.try_wait();
        let ports = (self.grpc.port(), self.http.port(), self.admin.port());
        self.child = Self::spawn(self.dir.path(), &self.stderr_path, ports, &self.env);
        self.wait_ready(Duration::from_secs(30));
    }

    fn spawn(dir: &Path, stderr_path: &Path, (grpc, http, admin): (u16, u16, u16), env: &[(String, String)]) -> Child {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_path)
            .expect("stderr file");
        let mut cmd = verity_command(dir);
        cmd.arg("run")
            .env("VERITY__OTLP__GRPC__LISTEN", format!("127.0.0.1:{grpc}"))
            .env("VERITY__OTLP__HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("VERITY__ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
            .env("VERITY__ARCHIVE__DIR", dir.join("archive"))
            .env("VERITY__DEAD_LETTER__PATH", dir.join("dead-letter.jsonl"))
            .env("VERITY__PIPELINE__BATCH_MAX_DELAY_MS", "20")
            .env("VERITY__LOG__LEVEL", "info,verity_collector=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn verity")
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("verity exited early with {status}:\n{}", self.stderr());
            }
            if let Ok(r) = http_request(self.admin, "GET", "/readyz", &[], b"")
                && r.status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("verity did not become ready:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns status and time taken.
    pub fn terminate(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -TERM failed");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, start.elapsed());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("verity did not exit within {timeout:?} of SIGTERM:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn archive_rows(&self, file: &str) -> Vec<serde_json::Value> {
        read_jsonl(&self.dir.path().join("archive").join(file))
    }

    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.dir.path().join("dead-letter.jsonl"))
    }

    /// The admin endpoint's metrics text.
    pub fn metrics_text(&self) -> String {
        let r = http_request(self.admin, "GET", "/metrics", &[], b"").expect("metrics");
        assert_eq!(r.status, 200);
        String::from_utf8_lossy(&r.body).into_owned()
    }

    /// The value of one sample line in `/metrics`, e.g. `verity_records_rejected_total{...}`.
    pub fn metric_value(&self, name_and_labels: &str) -> Option<f64> {
        metric_value(&self.metrics_text(), name_and_labels)
    }

    /// Resident-set high-water mark of the process, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    pub fn otlp_http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }
}

impl Drop for Verity {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn metric_value(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Like [`read_jsonl`], but skips lines that are not complete JSON: a file being appended to
/// can end in a partial line, and one killed with SIGKILL in the middle of a write keeps it.
pub fn read_jsonl_lenient(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad JSON line {l:?}: {e}", path.display())))
        .collect()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A minimal HTTP/1.1 client (one request per connection), enough to send exact bytes.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // The server may answer (413) before reading everything; ignore a reset on write.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        std::io::Error::other(format!(
            "no HTTP response header in {:?}",
            String::from_utf8_lossy(&raw)
        ))
    })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < nl + 2 + size {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[(nl + 4 + size).min(b.len())..];
    }
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// Runs `verity revocations --admin http://<admin> --token-file <token> <args…>`: whether it
/// succeeded, and what it printed.
pub fn revocations_cli(admin: SocketAddr, token: &Path, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = verity_command(dir.path())
        .arg("revocations")
        .args(["--admin", &format!("http://{admin}"), "--token-file"])
        .arg(token)
        .args(args)
        .output()
        .expect("run verity revocations");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

pub mod kafka;
pub mod kube;
pub mod mesh_pki;

/// A throwaway PKI for TLS test servers: an ECDSA P-256 CA and a server certificate signed by
/// it for `names` (DNS names) and 127.0.0.1 (made by [`mesh_pki::MeshPki`]).
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    /// PKCS#8.
    pub key_der: Vec<u8>,
}

impl TestPki {
    pub fn generate(ca_name: &str, names: &[&str]) -> Result<Self, String> {
        let pki = mesh_pki::MeshPki::new(ca_name);
        let leaf = pki.server_for(names);
        Ok(Self {
            ca_pem: pki.ca_pem.clone(),
            cert_der: leaf.cert_der(),
            key_der: leaf.key_der(),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        })
    }
}
pub mod rsyslog;
pub mod siem;

pub mod otlp {
    //! Building OTLP requests and a raw-bytes gRPC client.

    use bytes::{Buf, BufMut, Bytes};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    pub fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    pub fn record(body: &str, attrs: Vec<KeyValue>) -> LogRecord {
        LogRecord {
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body.into())),
            }),
            attributes: attrs,
            ..Default::default()
        }
    }

    pub fn logs_request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Sends arbitrary bytes as the gRPC message and returns the raw response bytes.
    #[derive(Clone, Default)]
    pub struct RawCodec;

    pub struct RawEnc;
    pub struct RawDec;

    impl Codec for RawCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = RawEnc;
        type Decoder = RawDec;
        fn encoder(&mut self) -> RawEnc {
            RawEnc
        }
        fn decoder(&mut self) -> RawDec {
            RawDec
        }
    }

    impl Encoder for RawEnc {
        type Item = Bytes;
        type Error = tonic::Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for RawDec {
        type Item = Bytes;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    /// Calls a unary gRPC method with raw message bytes.
    pub async fn raw_unary(
        addr: std::net::SocketAddr,
        path: &'static str,
        message: Bytes,
        gzip: bool,
    ) -> Result<Bytes, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
        if gzip {
            grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.unary(tonic::Request::new(message), path, RawCodec)
            .await
            .map(|r| r.into_inner())
    }

    pub const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    pub const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
}

/// A prerequisite that may be missing on a developer machine (a broker, rsyslog): returns it,
/// or skips the test with a message, unless `VERITY_E2E_REQUIRE=1` (set by scripts/test.sh)
/// makes that a failure.
pub fn require<T>(r: Result<T, String>, what: &str) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(why) => {
            assert!(
                std::env::var("VERITY_E2E_REQUIRE").as_deref() != Ok("1"),
                "{what} is required (VERITY_E2E_REQUIRE=1) but unavailable: {why}"
            );
            eprintln!("SKIPPED: {what} unavailable: {why}");
            None
        }
    }
}

/// An OTLP/JSON logs request whose records' bodies are these lines.
pub fn otlp_json_logs<S: AsRef<str>>(lines: &[S]) -> String {
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::json!({"body": {"stringValue": l.as_ref()}}))
        .collect();
    serde_json::json!({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}).to_string()
}

/// Bearer tokens e2e senders use, one per sender name (`e2e-sender-<n>`).
pub fn sender_token(n: usize) -> String {
    format!("e2e-sender-token-{n}-0123456789abcdef")
}

/// `VERITY__OTLP__TOKENS` accepting [`sender_token`] 0..`count`, each kept in a file in `dir`.
/// Senders with a token count as aggregators by default: their records are verified evidence.
pub fn sender_tokens_env(dir: &Path, count: usize) -> String {
    let entries: Vec<String> = (0..count)
        .map(|n| {
            let f = dir.join(format!("sender-{n}.token"));
            std::fs::write(&f, sender_token(n)).expect("token file");
            format!(
                r#"{{"name": "e2e-sender-{n}", "secret": {{"file": "{}"}}}}"#,
                f.display()
            )
        })
        .collect();
    format!("[{}]", entries.join(", "))
}

/// Posts lines as OTLP/JSON with sender `n`'s bearer token; the HTTP status.
pub fn post_log_lines_as<S: AsRef<str>>(http: SocketAddr, sender: usize, lines: &[S]) -> u16 {
    post_logs_body_as(http, sender, otlp_json_logs(lines).as_bytes())
}

/// Posts an OTLP/JSON logs body with sender `n`'s bearer token; the HTTP status.
pub fn post_logs_body_as(http: SocketAddr, sender: usize, body: &[u8]) -> u16 {
    let auth = format!("Bearer {}", sender_token(sender));
    http_request(
        http,
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/json"), ("Authorization", &auth)],
        body,
    )
    .map_or(0, |r| r.status)
}

/// Posts lines to an OTLP/HTTP endpoint as OTLP/JSON; the HTTP status (0 when unreachable).
pub fn post_log_lines<S: AsRef<str>>(http: SocketAddr, lines: &[S]) -> u16 {
    http_request(
        http,
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/json")],
        otlp_json_logs(lines).as_bytes(),
    )
    .map_or(0, |r| r.status)
}
