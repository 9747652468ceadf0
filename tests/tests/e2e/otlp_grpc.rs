//! OTLP/gRPC answers from a tonic client: success, partial success, INVALID_ARGUMENT for
//! undecodable messages and RESOURCE_EXHAUSTED for oversized ones (plain and gzip bombs).

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use prost::Message;
use tonic::Code;
use verity_e2e::otlp::{self, LOGS_EXPORT, METRICS_EXPORT, raw_unary};
use verity_e2e::{Verity, eventually};

const LINE: &str = r#"[2024-03-01T10:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "grpc-1" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers() {
    let v = Verity::start(&[("VERITY__OTLP__MAX_REQUEST_BYTES", "65536")]);
    let mut client = LogsServiceClient::connect(format!("http://{}", v.grpc))
        .await
        .expect("connect");
    let ok = client
        .export(otlp::logs_request(vec![
            otlp::record(LINE, vec![]),
            otlp::record("garbage", vec![]),
        ]))
        .await
        .expect("export")
        .into_inner();
    let partial = ok.partial_success.expect("partial success for the garbage record");
    assert_eq!(partial.rejected_log_records, 1);

    let good = otlp::logs_request(vec![otlp::record(LINE, vec![])]).encode_to_vec();
    let truncated = Bytes::copy_from_slice(&good[..good.len() - 7]);
    let err = raw_unary(v.grpc, LOGS_EXPORT, truncated, false)
        .await
        .expect_err("truncated");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = raw_unary(v.grpc, METRICS_EXPORT, Bytes::from_static(b"\xff\xff\xff"), false)
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let err = raw_unary(v.grpc, LOGS_EXPORT, Bytes::from(vec![0u8; 200_000]), false)
        .await
        .expect_err("oversize");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let mut bomb = Vec::new();
    // A valid request whose decompressed size is far above the cap.
    let big = otlp::logs_request(vec![otlp::record(&"a".repeat(2_000_000), vec![])]).encode_to_vec();
    bomb.extend_from_slice(&big);
    let err = raw_unary(v.grpc, LOGS_EXPORT, Bytes::from(bomb), true)
        .await
        .expect_err("gzip bomb");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Still serving, gzip accepted.
    let resp = raw_unary(v.grpc, LOGS_EXPORT, Bytes::from(good.clone()), true)
        .await
        .expect("gzip export");
    let resp = ExportLogsServiceResponse::decode(resp).expect("answer");
    assert!(resp.partial_success.is_none());
    assert!(eventually(Duration::from_secs(10), || v
        .archive_rows("events.jsonl")
        .len()
        == 2));
    // The same message again, uncompressed this time: the bytes as received are the same, so
    // it is a resend, acknowledged without being evaluated again.
    let again = raw_unary(v.grpc, LOGS_EXPORT, Bytes::from(good), false)
        .await
        .expect("resend");
    assert!(
        ExportLogsServiceResponse::decode(again)
            .expect("answer")
            .partial_success
            .is_none()
    );
    assert_eq!(
        v.metric_value(r#"verity_intake_duplicate_requests_total{outcome="acknowledged"}"#),
        Some(1.0),
        "{}",
        v.metrics_text()
    );
    let rows = v.archive_rows("events.jsonl");
    assert_eq!(rows.len(), 2, "the resend adds no row");
    assert!(rows.iter().all(|r| r["source"] == "otlp_grpc"));
    let metrics = v.metrics_text();
    assert!(
        metrics.contains(r#"verity_otlp_requests_total{transport="grpc",signal="logs",outcome="too_large"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"verity_otlp_requests_total{transport="grpc",signal="logs",outcome="bad_request"} 1"#),
        "{metrics}"
    );
}
