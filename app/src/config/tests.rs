//! Layering, strictness and validation of the configuration.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn embedded_defaults_are_valid_and_local() {
    let s = settings(None, Vec::new()).expect("defaults valid");
    assert_eq!(s.grpc_listen, Some("127.0.0.1:4317".parse().expect("addr")));
    assert_eq!(s.http_listen, Some("127.0.0.1:4318".parse().expect("addr")));
    assert_eq!(s.max_request_bytes, 8 << 20);
}

#[test]
fn file_then_env_override_defaults() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("v.yaml");
    std::fs::write(
        &path,
        "otlp:\n  http:\n    listen: 127.0.0.1:9999\npipeline:\n  batch_max_rows: 10\n",
    )
    .expect("write");
    let s = settings(
        Some(&path),
        env(&[
            ("VERITY__PIPELINE__BATCH_MAX_ROWS", "20"),
            ("VERITY__OTLP__GRPC__ENABLED", "false"),
            ("OTHER", "x"),
        ]),
    )
    .expect("valid");
    assert_eq!(s.http_listen, Some("127.0.0.1:9999".parse().expect("addr")));
    assert_eq!(s.pipeline.batch_max_rows, 20);
    assert_eq!(s.grpc_listen, None);
}

#[test]
fn every_error_is_reported_with_its_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("v.yaml");
    std::fs::write(
        &path,
        "otlp:\n  grpc:\n    listen: nowhere\n  max_request_bytes: 5\npipeline:\n  batch_max_rowz: 1\nadmin:\n  listen: 127.0.0.1:4318\nbogus: 1\n",
    )
    .expect("write");
    let errors = load(Some(&path), Vec::new()).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"pipeline.batch_max_rowz"), "{errors:?}");
    assert!(paths.contains(&"bogus"), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.message.contains("batch_max_rowz")),
        "{errors:?}"
    );

    std::fs::write(
        &path,
        "otlp:\n  grpc:\n    listen: nowhere\n  max_request_bytes: 5\nadmin:\n  listen: 127.0.0.1:4318\n",
    )
    .expect("write");
    let errors = settings(Some(&path), Vec::new()).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["otlp.grpc.listen", "admin.listen", "otlp.max_request_bytes"],
        "{errors:?}"
    );
}

#[test]
fn env_type_errors_name_the_key() {
    let errors = settings(None, env(&[("VERITY__PIPELINE__QUEUE_CAPACITY", "lots")])).unwrap_err();
    assert_eq!(errors[0].path, "pipeline.queue_capacity");
}
