//! SIGTERM drains: intake stops, batches still held by the batcher are flushed through the
//! stages, and the process exits 0 within the deadline. A drain that cannot finish (stalled
//! archive) exits non-zero at the deadline instead of hanging.

use std::process::Command;
use std::time::Duration;

use prost::Message;
use verity_e2e::{Verity, http_request, otlp};

const LINE: &str = r#"[2024-03-01T10:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "drain" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#;

#[test]
fn sigterm_flushes_pending_batches_and_exits_zero() {
    let mut v = Verity::start(&[
        // Nothing leaves the batcher on its own during this test.
        ("VERITY__PIPELINE__BATCH_MAX_DELAY_MS", "60000"),
        ("VERITY__PIPELINE__BATCH_MAX_ROWS", "1000000"),
    ]);
    let body = otlp::logs_request(vec![otlp::record(LINE, vec![]), otlp::record(LINE, vec![])]).encode_to_vec();
    for _ in 0..3 {
        let r = http_request(
            v.http,
            "POST",
            "/v1/logs",
            &[("Content-Type", "application/x-protobuf")],
            &body,
        )
        .expect("http");
        assert_eq!(r.status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        v.archive_rows("events.jsonl").is_empty(),
        "rows should still be pending in the batcher"
    );
    let (status, took) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit {status}:\n{}", v.stderr());
    assert!(took < Duration::from_secs(10), "drain took {took:?}");
    assert_eq!(v.archive_rows("events.jsonl").len(), 6, "{}", v.stderr());
    assert!(v.stderr().contains("drained"), "{}", v.stderr());
    // Intake is closed after drain: nothing listens any more.
    assert!(
        http_request(
            v.http,
            "POST",
            "/v1/logs",
            &[("Content-Type", "application/x-protobuf")],
            &body
        )
        .is_err()
    );
}

#[test]
fn a_drain_that_cannot_finish_exits_nonzero_at_the_deadline() {
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).expect("mkdir");
    assert!(
        Command::new("mkfifo")
            .arg(archive.join("events.jsonl"))
            .status()
            .expect("mkfifo")
            .success()
    );
    let mut v = Verity::start_in(dir, &[("VERITY__SHUTDOWN__DRAIN_TIMEOUT_SECS", "2")]);
    let body = otlp::logs_request(vec![otlp::record(LINE, vec![])]).encode_to_vec();
    let r = http_request(
        v.http,
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/x-protobuf")],
        &body,
    )
    .expect("http");
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let (status, took) = v.terminate(Duration::from_secs(15));
    assert!(!status.success(), "a stalled drain must not report success");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "took {took:?}"
    );
    assert!(v.stderr().contains("drain did not finish"), "{}", v.stderr());
}
