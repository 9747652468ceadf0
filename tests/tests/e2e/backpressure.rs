//! With the pipeline stalled (its archive is a FIFO nobody reads yet), the endpoint answers
//! retryable errors (HTTP 503 + Retry-After, gRPC UNAVAILABLE) instead of buffering; once the
//! stall clears, every accepted record comes out.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use prost::Message;
use verity_e2e::{Verity, eventually, http_request, otlp};

const LINE: &str = r#"[2024-03-01T10:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "bp" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#;

#[test]
fn stalled_pipeline_pushes_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).expect("mkdir");
    let fifo = archive.join("events.jsonl");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let mut v = Verity::start_in(
        dir,
        &[
            ("VERITY__PIPELINE__INTAKE_CAPACITY", "2"),
            ("VERITY__PIPELINE__QUEUE_CAPACITY", "1"),
            ("VERITY__PIPELINE__BATCH_MAX_ROWS", "1"),
            ("VERITY__OTLP__RETRY_AFTER_SECS", "3"),
        ],
    );
    let body = otlp::logs_request(vec![otlp::record(LINE, vec![])]).encode_to_vec();
    let post = || {
        http_request(
            v.http,
            "POST",
            "/v1/logs",
            &[("Content-Type", "application/x-protobuf")],
            &body,
        )
        .expect("http")
    };

    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..100 {
        let r = post();
        match r.status {
            200 => accepted += 1,
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = refused.expect("a full pipeline must answer 503");
    assert_eq!(refused.header("retry-after"), Some("3"));
    assert!(
        accepted <= 8,
        "accepted {accepted} requests with a stalled pipeline of capacity 2+1"
    );

    // gRPC answers UNAVAILABLE (retryable) too.
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let grpc_addr = v.grpc;
    let err = rt
        .block_on(async move {
            let mut c = LogsServiceClient::connect(format!("http://{grpc_addr}"))
                .await
                .expect("connect");
            c.export(otlp::logs_request(vec![otlp::record(LINE, vec![])])).await
        })
        .expect_err("stalled");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // Memory stays flat while refusing.
    let before = v.peak_rss_kib().expect("rss");
    for _ in 0..300 {
        assert_eq!(post().status, 503);
    }
    let after = v.peak_rss_kib().expect("rss");
    assert!(
        after < before + 20 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB while refusing"
    );

    // Unstall: read the FIFO; everything accepted arrives, and new requests are accepted.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&fifo).expect("open fifo");
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("lock").push(line);
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(15), || lines.lock().expect("lock").len()
            == accepted),
        "expected {accepted} archived records, got {}",
        lines.lock().expect("lock").len()
    );
    assert!(
        eventually(Duration::from_secs(10), || post().status == 200),
        "accepting again after the stall"
    );
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}\n{}", v.stderr());
    reader.join().expect("reader");
    assert_eq!(lines.lock().expect("lock").len(), accepted + 1);
}
