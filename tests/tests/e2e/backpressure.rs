//! With the pipeline stalled (its archive is a FIFO nobody reads yet), the endpoint answers
//! retryable errors (HTTP 503 + Retry-After, gRPC UNAVAILABLE) instead of buffering; the
//! requests it took in are answered only once processed; once the stall clears, every
//! accepted record comes out.

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
    // Every request distinct (its request id): the same content again would be recognised as
    // a resend of one already taken in.
    let body = |i: usize| {
        otlp::logs_request(vec![otlp::record(
            &LINE.replace("\"bp\"", &format!("\"bp-{i}\"")),
            vec![],
        )])
        .encode_to_vec()
    };
    let sent = std::sync::atomic::AtomicUsize::new(1000);
    let post = || {
        http_request(
            v.http,
            "POST",
            "/v1/logs",
            &[("Content-Type", "application/x-protobuf")],
            &body(sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        )
        .expect("http")
    };

    // A request is answered only after its records are processed, so with the pipeline
    // stalled the accepted ones wait; each sender runs on its own thread.
    let senders: Vec<std::thread::JoinHandle<u16>> = (0..12)
        .map(|i| {
            let (addr, body) = (v.http, body(i));
            let t = std::thread::spawn(move || {
                http_request(
                    addr,
                    "POST",
                    "/v1/logs",
                    &[("Content-Type", "application/x-protobuf")],
                    &body,
                )
                .map(|r| r.status)
                .unwrap_or(0)
            });
            std::thread::sleep(Duration::from_millis(50));
            t
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let waiting = senders.iter().filter(|t| !t.is_finished()).count();
    let refused = post();
    assert_eq!(refused.status, 503, "a full pipeline must answer 503");
    assert_eq!(refused.header("retry-after"), Some("3"));
    assert!(
        (1..=8).contains(&waiting),
        "{waiting} requests were taken in by a stalled pipeline of capacity 2+1"
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
    let statuses: Vec<u16> = senders.into_iter().map(|t| t.join().expect("sender")).collect();
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        accepted, waiting,
        "every request taken in is answered 200 once processed: {statuses:?}"
    );
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
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
