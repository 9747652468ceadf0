//! The `verity validate` and `verity normalize` commands.

use std::process::Stdio;

use verity_e2e::{repo_root, verity_command};

#[test]
fn validate_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "otlp:\n  grpc:\n    listen: not-an-address\n  max_request_bytes: 10\npipeline:\n  queue_capacity: 0\n",
    )
    .expect("write");
    let out = verity_command(dir.path())
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in ["otlp.grpc.listen", "otlp.max_request_bytes", "pipeline.queue_capacity"] {
        assert!(
            err.contains(&format!("config error: {path}:")),
            "missing {path} in:\n{err}"
        );
    }

    let out = verity_command(dir.path())
        .args(["validate", "--print"])
        .env("VERITY__OTLP__HTTP__LISTEN", "127.0.0.1:14318")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("configuration is valid") && text.contains("127.0.0.1:14318"),
        "{text}"
    );

    let out = verity_command(dir.path())
        .args(["validate"])
        .env("VERITY__OTLP__NOPE", "1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("otlp.nope"));
}

#[test]
fn normalize_prints_events_and_reports_rejects() {
    let dir = tempfile::tempdir().expect("tmp");
    let fixture = repo_root().join("tests/fixtures/mesh.log");
    let out = verity_command(dir.path())
        .arg("normalize")
        .arg(&fixture)
        .output()
        .expect("run");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["decision"], "deny_rbac");
    assert_eq!(rows[2]["format"], "ztunnel_text");
    assert_eq!(rows[2]["mtls"], false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mesh.log:4: unrecognized_format"), "{stderr}");

    // stdin, all lines bad: non-zero.
    let mut child = verity_command(dir.path())
        .args(["normalize", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"nope\n\xff\xfe\n").expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("-:2: invalid_utf8"), "{stderr}");
}
