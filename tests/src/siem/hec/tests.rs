//! Tests of the HEC test server over HTTP.

use super::super::test_util::{base64, get, post};
use super::*;
use crate::gzip;

const CHANNEL: &str = "0aeeac95-ac74-4aa9-b30d-6c4c0ac581ba";

fn auth(token: &str) -> String {
    format!("Splunk {token}")
}

fn event(id: &str) -> String {
    json!({"time": 1_700_000_000.5, "sourcetype": "verity:alert", "event": {"id": id, "rule": "r1"}}).to_string()
}

#[test]
fn accepts_concatenated_envelopes() {
    let s = HecServer::start(HecSettings::default());
    let body = format!("{}\n{}  {}", event("a"), event("b"), event("c"));
    let r = post(
        s.addr(),
        "/services/collector/event",
        &[("Authorization", &auth(DEFAULT_HEC_TOKEN))],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"text": "Success", "code": 0}));
    assert_eq!(s.ids(), ["a", "b", "c"]);
    assert_eq!(s.received()[0]["sourcetype"], "verity:alert");
    assert_eq!(s.events()[1]["id"], "b");
    assert_eq!(s.requests(), 1);

    // `/services/collector`, gzip, and Basic auth with the token as the password.
    let basic = format!("Basic {}", base64(format!("x:{DEFAULT_HEC_TOKEN}").as_bytes()));
    let r = post(
        s.addr(),
        "/services/collector",
        &[("Authorization", &basic), ("Content-Encoding", "gzip")],
        &gzip(event("d").as_bytes()),
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.ids(), ["a", "b", "c", "d"]);
    assert_eq!(s.duplicates(), 0);
}

#[test]
fn authentication_failures() {
    let s = HecServer::start(HecSettings::new("good-token"));
    let body = event("a");
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u16, u32);
    let cases: [Case<'_>; 5] = [
        (&[], "/services/collector/event", 401, 2),
        (
            &[("Authorization", "Bearer good-token")],
            "/services/collector/event",
            401,
            3,
        ),
        (&[("Authorization", "Splunk")], "/services/collector/event", 401, 3),
        (
            &[("Authorization", "Splunk bad-token")],
            "/services/collector/event",
            403,
            4,
        ),
        (&[], "/services/collector/event?token=good-token", 400, 16),
    ];
    for (headers, path, status, code) in cases {
        let r = post(s.addr(), path, headers, body.as_bytes());
        assert_eq!(
            (r.status, r.json()["code"].as_u64()),
            (status, Some(u64::from(code))),
            "{headers:?}"
        );
    }
    let r = post(s.addr(), "/services/collector/event", &[], body.as_bytes());
    assert_eq!(r.json(), json!({"text": "Token is required", "code": 2}));
    let r = post(
        s.addr(),
        "/services/collector/event",
        &[("Authorization", "Splunk bad-token")],
        body.as_bytes(),
    );
    assert_eq!(r.json(), json!({"text": "Invalid token", "code": 4}));
    assert!(s.received().is_empty());
    assert_eq!(s.requests(), 7);
}

#[test]
fn invalid_bodies_index_nothing() {
    let s = HecServer::start(HecSettings::default().with_allowed_indexes(["security"]));
    let a = [("Authorization", auth(DEFAULT_HEC_TOKEN))];
    let h: Vec<(&str, &str)> = a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let send = |body: &str| post(s.addr(), "/services/collector/event", &h, body.as_bytes());

    assert_eq!(send("").json(), json!({"text": "No data", "code": 5}));
    assert_eq!(send(" \n ").json()["code"], 5);
    assert_eq!(
        send(&format!("{}{{\"event\": ", event("a"))).json(),
        json!({"text": "Invalid data format", "code": 6, "invalid-event-number": 1})
    );
    assert_eq!(send(&format!("[{}]", event("a"))).json()["code"], 6);
    let r = send(&format!("{}{{\"time\":1}}", event("a")));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"text": "Event field is required", "code": 12, "invalid-event-number": 1})
    );
    assert_eq!(send(r#"{"event":""}"#).json()["code"], 13);
    assert_eq!(send(r#"{"event":null}"#).json()["code"], 13);
    assert_eq!(send(r#"{"event":"x","time":"soon"}"#).json()["code"], 6);
    assert_eq!(send(r#"{"event":"x","fields":{"a":{"b":1}}}"#).json()["code"], 15);
    let r = send(&format!(r#"{}{{"event":"x","index":"main"}}"#, event("a")));
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"text": "Incorrect index", "code": 7, "invalid-event-number": 1})
        )
    );
    assert!(s.received().is_empty(), "a failed request indexes nothing");

    assert_eq!(
        send(r#"{"event":"x","index":"security","fields":{"a":["b",1]}}"#).status,
        200
    );
    assert_eq!(s.received().len(), 1);
}

#[test]
fn indexer_acknowledgement() {
    let s = HecServer::start(HecSettings::default().with_ack(Duration::from_millis(1000)));
    let token = auth(DEFAULT_HEC_TOKEN);
    let body = event("a");
    let r = post(
        s.addr(),
        "/services/collector/event",
        &[("Authorization", &token)],
        body.as_bytes(),
    );
    assert_eq!(r.json(), json!({"text": "Data channel is missing", "code": 10}));
    let r = post(
        s.addr(),
        "/services/collector/event",
        &[("Authorization", &token), ("X-Splunk-Request-Channel", "not-a-guid")],
        body.as_bytes(),
    );
    assert_eq!(r.json(), json!({"text": "Invalid data channel", "code": 11}));

    let with_channel = [("Authorization", token.as_str()), ("X-Splunk-Request-Channel", CHANNEL)];
    let r = post(s.addr(), "/services/collector/event", &with_channel, body.as_bytes());
    assert_eq!(r.json(), json!({"text": "Success", "code": 0, "ackId": 0}));
    let r = post(
        s.addr(),
        &format!("/services/collector/event?channel={CHANNEL}"),
        &[("Authorization", &token)],
        event("b").as_bytes(),
    );
    assert_eq!(r.json()["ackId"], 1);
    assert_eq!(s.pending_acks(), 2);

    let ack = |ids: &str| post(s.addr(), "/services/collector/ack", &with_channel, ids.as_bytes());
    assert_eq!(
        ack(r#"{"acks":[0,1,7]}"#).json(),
        json!({"acks": {"0": false, "1": false, "7": false}})
    );
    std::thread::sleep(Duration::from_millis(1050));
    assert_eq!(ack(r#"{"acks":[0,1]}"#).json(), json!({"acks": {"0": true, "1": true}}));
    // Released once reported.
    assert_eq!(ack(r#"{"acks":[0]}"#).json(), json!({"acks": {"0": false}}));
    assert_eq!(ack("nope").json()["code"], 6);
    assert_eq!(s.pending_acks(), 0);
    assert_eq!(s.ack_requests(), 4);
    assert_eq!(s.requests(), 4, "acks are not ingestion requests");

    // Another channel counts from 0 again; an indexer crash loses what is not yet acked.
    let other = "1aeeac95-ac74-4aa9-b30d-6c4c0ac581bb";
    let r = post(
        s.addr(),
        "/services/collector/event",
        &[("Authorization", &token), ("X-Splunk-Request-Channel", other)],
        event("c").as_bytes(),
    );
    assert_eq!(r.json()["ackId"], 0);
    assert_eq!(s.lose_unindexed(), 1);
    assert_eq!(s.ids(), ["a", "b"]);
    std::thread::sleep(Duration::from_millis(1050));
    let r = post(
        s.addr(),
        "/services/collector/ack",
        &[("Authorization", &token), ("X-Splunk-Request-Channel", other)],
        br#"{"acks":[0]}"#,
    );
    assert_eq!(r.json(), json!({"acks": {"0": false}}));
}

#[test]
fn ack_disabled() {
    let s = HecServer::start(HecSettings::default());
    let r = post(
        s.addr(),
        "/services/collector/ack",
        &[
            ("Authorization", &auth(DEFAULT_HEC_TOKEN)),
            ("X-Splunk-Request-Channel", CHANNEL),
        ],
        br#"{"acks":[0]}"#,
    );
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"text": "ACK is disabled", "code": 14}))
    );
}

#[test]
fn busy_health_and_scripted_failures() {
    let s = HecServer::start(HecSettings::default());
    let token = auth(DEFAULT_HEC_TOKEN);
    let h = [("Authorization", token.as_str())];
    let r = get(s.addr(), "/services/collector/health/1.0", &[]);
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"text": "HEC is healthy", "code": 17}))
    );

    s.set_busy(true);
    let r = post(s.addr(), "/services/collector/event", &h, event("a").as_bytes());
    assert_eq!(
        (r.status, r.json()),
        (503, json!({"text": "Server is busy", "code": 9}))
    );
    let r = get(s.addr(), "/services/collector/health", &[]);
    assert_eq!(
        (r.status, r.json()),
        (503, json!({"text": "HEC is unhealthy, queues are full", "code": 18}))
    );
    s.set_busy(false);

    s.fail_next(1, 500);
    let r = post(s.addr(), "/services/collector/event", &h, event("a").as_bytes());
    assert_eq!((r.status, r.json()["code"].as_u64()), (500, Some(8)));
    assert!(s.received().is_empty());
    assert_eq!(
        post(s.addr(), "/services/collector/event", &h, event("a").as_bytes()).status,
        200
    );
    assert_eq!(get(s.addr(), "/services/collector/raw", &[]).status, 404);
}

#[test]
fn down_then_up_on_the_same_port() {
    let s = HecServer::start(HecSettings::default());
    let token = auth(DEFAULT_HEC_TOKEN);
    s.set_down(true);
    let err = post_err(s.addr());
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    s.set_down(false);
    let r = post(
        s.addr(),
        "/services/collector/event",
        &[("Authorization", &token)],
        event("a").as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.ids(), ["a"]);
}

fn post_err(addr: std::net::SocketAddr) -> std::io::Error {
    crate::http_request(addr, "POST", "/services/collector/event", &[], b"").expect_err("refused")
}
