//! Bad input over OTLP/HTTP: each gets its documented answer and the server keeps serving.

use std::time::Duration;

use prost::Message;
use verity_e2e::{Verity, eventually, gzip, http_request, otlp};

const LINE: &str = r#"[2024-03-01T10:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "ok-1" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#;

fn good_request() -> Vec<u8> {
    otlp::logs_request(vec![otlp::record(LINE, vec![])]).encode_to_vec()
}

const PB: (&str, &str) = ("Content-Type", "application/x-protobuf");
const JSON: (&str, &str) = ("Content-Type", "application/json");

#[test]
fn each_bad_request_gets_its_answer_and_the_server_keeps_serving() {
    // A small cap so "oversize" is cheap to produce.
    let v = Verity::start(&[("VERITY__OTLP__MAX_REQUEST_BYTES", "65536")]);
    let good = good_request();
    let post =
        |headers: &[(&str, &str)], body: &[u8]| http_request(v.http, "POST", "/v1/logs", headers, body).expect("http");

    // Truncated protobuf.
    let r = post(&[PB], &good[..good.len() / 2]);
    assert_eq!(r.status, 400, "truncated protobuf");
    let status = verity_collector_status(&r.body);
    assert_eq!(status.0, 3, "google.rpc.Status code INVALID_ARGUMENT");
    assert!(status.1.contains("could not decode"), "{}", status.1);

    // Wrong content type.
    let r = post(&[("Content-Type", "text/plain")], &good);
    assert_eq!(r.status, 415);
    assert!(r.json()["message"].as_str().expect("message").contains("text/plain"));
    let r = post(&[], &good);
    assert_eq!(r.status, 415, "missing content type");

    // Unsupported content encoding.
    let r = post(&[PB, ("Content-Encoding", "br")], &good);
    assert_eq!(r.status, 415);

    // Oversize body, and a gzip bomb whose compressed size is small.
    let r = post(&[PB], &vec![0u8; 200_000]);
    assert_eq!(r.status, 413, "oversize body");
    let bomb = gzip(&vec![b'a'; 5_000_000]);
    assert!(
        bomb.len() < 65536,
        "bomb must fit under the cap compressed ({} bytes)",
        bomb.len()
    );
    let r = post(&[PB, ("Content-Encoding", "gzip")], &bomb);
    assert_eq!(r.status, 413, "gzip bomb");
    let r = post(&[PB, ("Content-Encoding", "gzip")], b"this is not gzip");
    assert_eq!(r.status, 400, "invalid gzip");

    // Invalid UTF-8: in a protobuf string field and in a JSON document.
    let mut bad_utf8 = good.clone();
    let at = bad_utf8.windows(4).position(|w| w == b"GET ").expect("body bytes");
    bad_utf8[at] = 0xff;
    let r = post(&[PB], &bad_utf8);
    assert_eq!(r.status, 400, "invalid UTF-8 in protobuf");
    let r = post(
        &[JSON],
        b"{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":[{\"body\":{\"stringValue\":\"\xff\xfe\"}}]}]}]}",
    );
    assert_eq!(r.status, 400, "invalid UTF-8 in JSON");
    let r = post(&[JSON], b"{\"resourceLogs\": [");
    assert_eq!(r.status, 400, "truncated JSON");

    // Absurd field values are per-record rejections, not request failures.
    let absurd = otlp::logs_request(vec![
        otlp::record(LINE, vec![otlp::kv("response_code", "99999")]),
        otlp::record(LINE, vec![otlp::kv("source_port", "-1")]),
        otlp::record(&LINE.replace("2024-03-01", "9999-99-99"), vec![]),
        otlp::record(&"x".repeat(10_000), vec![]),
        otlp::record(LINE, vec![]),
    ]);
    let r = post(&[PB], &absurd.encode_to_vec());
    assert_eq!(r.status, 200);
    let resp = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse::decode(&r.body[..])
        .expect("answer");
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_log_records, 4, "{}", partial.error_message);

    // Unknown paths and methods.
    assert_eq!(
        http_request(v.http, "POST", "/v1/traces", &[PB], &good)
            .expect("http")
            .status,
        404
    );
    assert_eq!(
        http_request(v.http, "GET", "/v1/logs", &[], b"").expect("http").status,
        405
    );

    // Still serving.
    let r = post(&[PB], &good);
    assert_eq!(r.status, 200);
    assert_eq!(
        http_request(v.admin, "GET", "/healthz", &[], b"")
            .expect("healthz")
            .status,
        200
    );
    assert!(eventually(Duration::from_secs(10), || v
        .archive_rows("events.jsonl")
        .len()
        == 2));
    assert_eq!(v.dead_letters().len(), 4);
    let metrics = v.metrics_text();
    for outcome in ["bad_request", "unsupported_media_type", "too_large", "partial", "ok"] {
        assert!(
            metrics.contains(&format!(
                r#"verity_otlp_requests_total{{transport="http",signal="logs",outcome="{outcome}"}}"#
            )),
            "no {outcome} count in:\n{metrics}"
        );
    }
}

/// Decodes a protobuf `google.rpc.Status` (code, message).
fn verity_collector_status(body: &[u8]) -> (i32, String) {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let s = Status::decode(body).expect("google.rpc.Status");
    (s.code, s.message)
}

/// Records built to multiply memory are refused by the limits, each with its own reason, next
/// to good records that are kept; a request of many bad records writes a bounded number of
/// dead-letter entries and still counts every one.
#[test]
fn records_built_to_multiply_memory_are_refused_and_counted() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::resource::v1::Resource;

    let v = Verity::start(&[]);
    let post = |req: &opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest| {
        let r = http_request(v.http, "POST", "/v1/logs", &[PB], &req.encode_to_vec()).expect("http");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        ExportLogsServiceResponse::decode(&r.body[..])
            .expect("answer")
            .partial_success
            .expect("partial success")
    };

    // The shapes that cost most: a 470 KB line of nested objects, a body nested past the
    // depth, one with more fields than allowed, names repeated down a deep path, and an
    // attribute with a very long value. A good record rides in the same request.
    let nested_object = |name: &str, depth: usize| {
        format!(
            r#"{{"method":"GET",{}"x":1{}}}"#,
            format!(r#""{name}":{{"#).repeat(depth),
            "}".repeat(depth)
        )
    };
    let huge: String = format!(
        r#"{{"method":"GET",{}"x":1}}"#,
        (0..9000)
            .map(|i| format!(r#""f{i}":{{"a":{{"b":"{}"}}}},"#, "v".repeat(30)))
            .collect::<String>()
    );
    assert!(huge.len() > 450_000);
    let wide = format!(
        r#"{{"method":"GET",{}"x":1}}"#,
        (0..400).map(|i| format!(r#""f{i}":1,"#)).collect::<String>()
    );
    let req = otlp::logs_request(vec![
        otlp::record(&huge, vec![]),
        otlp::record(&nested_object("a", 12), vec![]),
        otlp::record(&wide, vec![]),
        otlp::record(&nested_object(&"k".repeat(60), 6), vec![]),
        otlp::record(LINE, vec![otlp::kv("x", &"y".repeat(100_000))]),
        otlp::record(LINE, vec![]),
    ]);
    let partial = post(&req);
    assert_eq!(partial.rejected_log_records, 5, "{}", partial.error_message);
    let reasons: Vec<String> = v
        .dead_letters()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        reasons,
        [
            "record_too_large",
            "too_deep",
            "too_many_fields",
            "key_too_long",
            "record_too_large"
        ]
    );
    let first = &v.dead_letters()[0];
    assert_eq!(first["record_bytes"].as_u64(), Some(huge.len() as u64));
    assert_eq!(first["record"].as_str().map(str::len), Some(4096));

    // Empty records are two bytes on the wire and hundreds once decoded: a request of a
    // million is refused before it is decoded, and counted.
    let empty = otlp::logs_request(vec![LogRecord::default(); 1_000_000]).encode_to_vec();
    assert!(empty.len() < 2_100_000);
    let r = http_request(v.http, "POST", "/v1/logs", &[PB], &empty).expect("http");
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        v.metric_value(r#"verity_otlp_requests_total{transport="http",signal="logs",outcome="too_large"}"#)
            .unwrap_or(0.0)
            >= 1.0
    );

    // 100 000 records no normalizer accepts: every one is counted and answered, the
    // dead-letter file gets the first 100 and one entry for the rest.
    let bad: Vec<LogRecord> = (0..100_000).map(|_| otlp::record("?", vec![])).collect();
    let partial = post(&otlp::logs_request(bad));
    assert_eq!(partial.rejected_log_records, 100_000);
    let entries = v.dead_letters();
    assert_eq!(entries.len(), 5 + 100 + 1);
    let summary = entries.last().expect("summary");
    assert_eq!(summary["reason"], "omitted");
    assert!(
        summary["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("99900 more records"),
        "{summary}"
    );

    // A large resource attribute over 20 000 small records: stored once, not once per record
    // (1.2 GB), in memory and in the archive. Every record is kept.
    let mut req = otlp::logs_request((0..20_000).map(|_| otlp::record(LINE, vec![])).collect());
    req.resource_logs[0].resource = Some(Resource {
        attributes: vec![otlp::kv("note", &"n".repeat(60_000))],
        ..Default::default()
    });
    let r = http_request(v.http, "POST", "/v1/logs", &[PB], &req.encode_to_vec()).expect("http");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = ExportLogsServiceResponse::decode(r.body.as_slice()).expect("answer");
    assert!(answer.partial_success.is_none(), "{:?}", answer.partial_success);
    assert!(
        eventually(Duration::from_secs(10), || v.archive_rows("events.jsonl").len()
            == 20_001),
        "{} rows archived",
        v.archive_rows("events.jsonl").len()
    );
    let archive = v.dir.path().join("archive");
    let events_bytes = std::fs::metadata(archive.join("events.jsonl")).expect("events").len();
    assert!(
        events_bytes < 100_000_000,
        "events.jsonl is {events_bytes} bytes, not 1.2 GB"
    );
    let resources = v.archive_rows("resources.jsonl");
    assert_eq!(resources.len(), 1);
    let last = v.archive_rows("events.jsonl").pop().expect("row");
    assert_eq!(last["resource_attributes_id"], resources[0]["resource_attributes_id"]);

    // A large attribute that is mapped to a column (the cluster name) is copied into each row:
    // the request's rows budget keeps the first records and refuses the rest.
    let mut req = otlp::logs_request((0..20_000).map(|_| otlp::record(LINE, vec![])).collect());
    req.resource_logs[0].resource = Some(Resource {
        attributes: vec![otlp::kv("k8s.cluster.name", &"c".repeat(60_000))],
        ..Default::default()
    });
    let partial = post(&req);
    assert!(
        partial.error_message.contains("request_too_large"),
        "{}",
        partial.error_message
    );
    let kept = 20_000 - partial.rejected_log_records;
    assert!(kept > 100 && kept < 1_000, "kept {kept}");
    // The good record of the first request, the 20 000 of the second, those kept of this one.
    assert!(
        eventually(Duration::from_secs(10), || {
            v.archive_rows("events.jsonl").len() as i64 == 20_001 + kept
        }),
        "{} rows archived, {kept} kept",
        v.archive_rows("events.jsonl").len()
    );
    let rejected = |reason: &str| {
        v.metric_value(&format!(
            r#"verity_records_rejected_total{{source="otlp_http",reason="{reason}"}}"#
        ))
        .unwrap_or(0.0)
    };
    assert_eq!(rejected("request_too_large") as i64, 20_000 - kept);
    assert_eq!(rejected("unrecognized_format"), 100_000.0);
    assert!(
        v.metric_value("verity_dead_letter_omitted_records_total")
            .unwrap_or(0.0)
            >= 99_900.0
    );
}

/// Many connections cannot multiply the per-request limits: requests in flight share one
/// memory budget (`otlp.max_in_flight_bytes`), reserved before a body is read, and a request
/// past it is answered 503 / UNAVAILABLE at once; the budget comes back when they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_share_one_memory_budget() {
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use std::io::Write;

    let v = Verity::start(&[
        ("VERITY__OTLP__MAX_REQUEST_BYTES", "1048576"),
        ("VERITY__OTLP__MAX_IN_FLIGHT_BYTES", "2097152"),
    ]);
    // Two requests that announce 1 MiB bodies and send a little of them hold the budget.
    let stalled: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(v.http).expect("connect");
            write!(
                s,
                "POST /v1/logs HTTP/1.1\r\nHost: verity\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1048576\r\n\r\n"
            )
            .expect("headers");
            s.write_all(&[0u8; 1000]).expect("part of the body");
            s
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || v
            .metric_value("verity_otlp_in_flight_bytes")
            == Some(2_097_152.0)),
        "{:?}",
        v.metric_value("verity_otlp_in_flight_bytes")
    );

    let r = http_request(v.http, "POST", "/v1/logs", &[PB], &good_request()).expect("http");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("retry-after")));
    let (code, message) = verity_collector_status(&r.body);
    assert_eq!(code, 14, "UNAVAILABLE");
    assert!(message.contains("max_in_flight_bytes"), "{message}");

    let mut client = LogsServiceClient::connect(format!("http://{}", v.grpc))
        .await
        .expect("connect");
    let request = otlp::logs_request(vec![otlp::record(LINE, vec![])]);
    let err = client.export(request.clone()).await.expect_err("budget spent");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(
        v.metric_value(r#"verity_otlp_requests_total{transport="grpc",signal="logs",outcome="unavailable"}"#),
        Some(1.0)
    );

    // The stalled clients go away: their share comes back and requests are taken again.
    drop(stalled);
    assert!(
        eventually(Duration::from_secs(10), || v
            .metric_value("verity_otlp_in_flight_bytes")
            == Some(0.0)),
        "{:?}",
        v.metric_value("verity_otlp_in_flight_bytes")
    );
    client.export(request).await.expect("taken again");
    let r = http_request(v.http, "POST", "/v1/logs", &[PB], &good_request()).expect("http");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}
