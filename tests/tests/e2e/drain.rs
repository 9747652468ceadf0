//! SIGTERM drains: intake stops, open event-time windows are flushed into alerts, the outputs
//! deliver what they spooled, and the process exits 0 within the deadline. A drain that cannot
//! finish (stalled archive) exits non-zero at the deadline instead of hanging.

use std::process::Command;
use std::time::Duration;

use prost::Message;
use verity_e2e::{Verity, http_request, otlp, read_jsonl};

const LINE: &str = r#"[2024-03-01T10:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "drain" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#;

#[test]
fn sigterm_flushes_windows_and_outputs_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    // An hour-long window: only the drain can close it.
    std::fs::write(
        rules.join("hourly.yaml"),
        "id: e2e-hourly\ntitle: Hourly count\nseverity: low\nkind: detection\ndetection:\n  where: user_agent = 'ua'\n  window: {type: tumbling, size: 1h}\n  having: count(*) >= 1\n",
    )
    .expect("rule");
    let alerts = dir.path().join("alerts.jsonl");
    let rules_env = format!("[{}]", rules.display());
    let mut v = Verity::start_in(
        dir,
        &[
            ("VERITY__RULES__DIRS", rules_env.as_str()),
            ("VERITY__RULES__BUILTIN_PACK", "false"),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__SINKS__OUTPUTS__FILE__PATH", alerts.to_str().expect("path")),
        ],
    );
    for i in 0..3 {
        // Distinct requests: the same content again would be recognised as a resend.
        let line = LINE.replace("\"drain\"", &format!("\"drain-{i}\""));
        let body = otlp::logs_request(vec![otlp::record(&line, vec![]), otlp::record(&line, vec![])]).encode_to_vec();
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
    // Answered only after processing: the rows are already through the stages.
    assert_eq!(v.archive_rows("events.jsonl").len(), 6);
    std::thread::sleep(Duration::from_millis(300));
    assert!(read_jsonl(&alerts).is_empty(), "the window is still open");
    let (status, took) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit {status}:\n{}", v.stderr());
    assert!(took < Duration::from_secs(10), "drain took {took:?}");
    let flushed = read_jsonl(&alerts);
    assert_eq!(flushed.len(), 1, "{}", v.stderr());
    assert_eq!(flushed[0]["rule_id"], "e2e-hourly");
    assert_eq!(flushed[0]["count"], 6);
    assert!(v.stderr().contains("drained"), "{}", v.stderr());
    // Intake is closed after drain: nothing listens any more.
    assert!(
        http_request(
            v.http,
            "POST",
            "/v1/logs",
            &[("Content-Type", "application/x-protobuf")],
            &otlp::logs_request(vec![otlp::record(LINE, vec![])]).encode_to_vec()
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
    // The request is taken in but cannot be processed, so it is never answered 200.
    let addr = v.http;
    let sender = std::thread::spawn(move || {
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
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sender.is_finished(),
        "a request whose batch is stuck must not be acknowledged"
    );
    let (status, took) = v.terminate(Duration::from_secs(15));
    assert!(!status.success(), "a stalled drain must not report success");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "took {took:?}"
    );
    assert!(v.stderr().contains("drain did not finish"), "{}", v.stderr());
    // The error names what was still running: the stuck pipeline and the source waiting on it.
    let error = v
        .stderr()
        .lines()
        .find(|l| l.contains("drain did not finish"))
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("pipeline") && error.contains("otlp_http"), "{error}");
    assert_ne!(sender.join().expect("sender"), 200);
}
