//! Tests of the Elasticsearch test server over HTTP.

use super::super::test_util::{base64, get, post};
use super::*;
use crate::HttpResponse;
use serde_json::json;

const NDJSON: (&str, &str) = ("Content-Type", "application/x-ndjson");

fn doc(id: &str) -> String {
    json!({"@timestamp": "2024-05-01T10:00:00Z", "event": {"id": id, "kind": "alert"}, "message": "denied"}).to_string()
}

fn create(index: &str, id: &str) -> String {
    format!("{}\n{}\n", json!({"create": {"_index": index, "_id": id}}), doc(id))
}

fn bulk(s: &ElasticServer, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    post(s.addr(), "/_bulk", headers, body.as_bytes())
}

#[test]
fn info_and_health() {
    let s = ElasticServer::start(ElasticSettings::open());
    let r = get(s.addr(), "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-elastic-product"), Some("Elasticsearch"));
    let info = r.json();
    assert_eq!(info["version"]["number"], "8.15.0");
    assert_eq!(info["tagline"], "You Know, for Search");
    assert!(info["name"].is_string() && info["cluster_name"].is_string());
    assert_eq!(get(s.addr(), "/_cluster/health", &[]).json()["status"], "green");
    assert_eq!(s.requests(), 0, "only _bulk is ingestion");
}

#[test]
fn bulk_create_and_index() {
    let s = ElasticServer::start(ElasticSettings::open());
    let body = format!(
        "{}{}\n{}\n{}\n{}\n",
        create("alerts", "a"),
        json!({"index": {"_index": "alerts", "_id": "b"}}),
        doc("b"),
        json!({"index": {}}),
        doc("c"),
    );
    let r = post(s.addr(), "/alerts/_bulk", &[NDJSON], body.as_bytes());
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["errors"], false);
    assert!(v["took"].is_u64());
    let first = &v["items"][0]["create"];
    assert_eq!(
        (
            first["_index"].as_str(),
            first["_id"].as_str(),
            first["status"].as_u64()
        ),
        (Some("alerts"), Some("a"), Some(201))
    );
    assert_eq!(first["result"], "created");
    assert_eq!(first["_version"], 1);
    assert_eq!(first["_seq_no"], 0);
    assert_eq!(first["_primary_term"], 1);
    assert_eq!(first["_shards"], json!({"total": 2, "successful": 1, "failed": 0}));
    assert_eq!(v["items"][1]["index"]["status"], 201);
    let auto = v["items"][2]["index"]["_id"].as_str().expect("generated id");
    assert_eq!(auto.len(), 20);
    assert_eq!(s.ids(), ["a", "b", "c"]);
    assert_eq!(s.indices(), ["alerts"]);
    assert_eq!(s.docs_in("alerts").len(), 3);
    assert_eq!(s.doc_ids("alerts")[..2], ["a".to_string(), "b".to_string()]);

    // `index` of an existing id replaces it.
    let again = format!("{}\n{}\n", json!({"index": {"_index": "alerts", "_id": "b"}}), doc("b"));
    let item = &bulk(&s, &[NDJSON], &again).json()["items"][0]["index"];
    assert_eq!(
        (item["status"].as_u64(), item["result"].as_str()),
        (Some(200), Some("updated"))
    );
    assert_eq!(item["_version"], 2);
    assert_eq!(s.docs_in("alerts").len(), 3);
    assert_eq!(s.duplicates(), 1, "received() counts every accepted write");
}

#[test]
fn create_of_an_existing_id_conflicts() {
    let s = ElasticServer::start(ElasticSettings::open());
    assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "a")).json()["errors"], false);
    let v = bulk(
        &s,
        &[NDJSON],
        &format!("{}{}", create("alerts", "a"), create("alerts", "b")),
    )
    .json();
    assert_eq!(v["errors"], true);
    let item = &v["items"][0]["create"];
    assert_eq!(item["status"], 409);
    assert_eq!(item["error"]["type"], "version_conflict_engine_exception");
    assert_eq!(
        item["error"]["reason"],
        "[a]: version conflict, document already exists (current version [1])"
    );
    assert_eq!(item["_id"], "a");
    assert_eq!(v["items"][1]["create"]["status"], 201);
    assert_eq!(s.ids(), ["a", "b"]);
    assert_eq!(s.duplicates(), 0);
    assert_eq!(s.items_with_status(409), 1);
}

#[test]
fn items_rejected_once_succeed_when_retried() {
    let s = ElasticServer::start(ElasticSettings::open());
    s.reject_items_once(ItemFilter::every_nth(2), 429);
    let body: String = ["a", "b", "c", "d"].iter().map(|id| create("alerts", id)).collect();
    let v = bulk(&s, &[NDJSON], &body).json();
    assert_eq!(v["errors"], true);
    let statuses: Vec<u64> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["create"]["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [201, 429, 201, 429]);
    let error = &v["items"][1]["create"]["error"];
    assert_eq!(error["type"], "es_rejected_execution_exception");
    assert!(
        error["reason"]
            .as_str()
            .expect("reason")
            .starts_with("rejected execution of")
    );
    assert_eq!(s.ids(), ["a", "c"]);

    // The retry of b and d lands on positions 6 and 7 … b would be the 6th item: not
    // rejected again because it was rejected once already.
    let retry = format!("{}{}", create("alerts", "b"), create("alerts", "d"));
    let v = bulk(&s, &[NDJSON], &retry).json();
    assert_eq!(v["errors"], false, "{v}");
    assert_eq!(s.ids(), ["a", "c", "b", "d"]);
    assert_eq!(s.items_with_status(429), 2);

    s.reject_items_once(ItemFilter::matching(|d| d["event"]["id"] == "e"), 503);
    let v = bulk(&s, &[NDJSON], &create("alerts", "e")).json();
    assert_eq!(v["items"][0]["create"]["error"]["type"], "unavailable_shards_exception");
}

#[test]
fn permanent_rejection_and_data_streams() {
    let s = ElasticServer::start(ElasticSettings::open().data_stream("logs-verity-*"));
    s.reject_permanently("POISON");
    let poison = format!(
        "{}\n{}\n",
        json!({"create": {"_index": "alerts", "_id": "p"}}),
        json!({"event": {"id": "p"}, "source": {"port": "POISON"}})
    );
    for _ in 0..2 {
        let item = &bulk(&s, &[NDJSON], &poison).json()["items"][0]["create"];
        assert_eq!(item["status"], 400);
        assert_eq!(item["error"]["type"], "document_parsing_exception");
        let reason = item["error"]["reason"].as_str().expect("reason");
        assert!(reason.contains("failed to parse field [source.port]"), "{reason}");
    }

    let v = bulk(&s, &[NDJSON], &create("logs-verity-default", "a")).json();
    let item = &v["items"][0]["create"];
    assert_eq!(item["status"], 201);
    assert!(
        item["_index"]
            .as_str()
            .expect("index")
            .starts_with(".ds-logs-verity-default-")
    );
    assert_eq!(s.docs_in("logs-verity-default").len(), 1);
    let index_op = format!(
        "{}\n{}\n",
        json!({"index": {"_index": "logs-verity-default"}}),
        doc("b")
    );
    assert_eq!(
        bulk(&s, &[NDJSON], &index_op).json()["items"][0]["index"]["status"],
        400
    );
    let untimed = format!(
        "{}\n{}\n",
        json!({"create": {"_index": "logs-verity-default"}}),
        json!({"event": {"id": "c"}})
    );
    let item = &bulk(&s, &[NDJSON], &untimed).json()["items"][0]["create"];
    assert_eq!(
        item["error"]["reason"],
        "data stream timestamp field [@timestamp] is missing"
    );
    let upper = bulk(&s, &[NDJSON], &create("Alerts", "x")).json();
    assert_eq!(
        upper["items"][0]["create"]["error"]["type"],
        "invalid_index_name_exception"
    );
    assert_eq!(s.ids(), ["a"]);
}

#[test]
fn whole_request_failures_index_nothing() {
    let s = ElasticServer::start(ElasticSettings::open());
    let r = bulk(&s, &[NDJSON], create("alerts", "a").trim_end());
    assert_eq!(r.status, 400);
    let reason = "The bulk request must be terminated by a newline [\\n]";
    let cause = json!({"type": "illegal_argument_exception", "reason": reason});
    assert_eq!(
        r.json(),
        json!({"error": {"root_cause": [cause], "type": "illegal_argument_exception", "reason": reason}, "status": 400})
    );
    assert_eq!(bulk(&s, &[NDJSON], "").json()["error"]["type"], "parse_exception");
    let r = bulk(&s, &[("Content-Type", "text/plain")], &create("alerts", "a"));
    assert_eq!(
        (r.status, r.json()),
        (
            406,
            json!({"error": "Content-Type header [text/plain] is not supported", "status": 406})
        )
    );
    assert_eq!(bulk(&s, &[], &create("alerts", "a")).status, 406);
    let bad_json = format!("{}{{\"create\": \n{}\n", create("alerts", "a"), doc("b"));
    assert_eq!(bulk(&s, &[NDJSON], &bad_json).status, 400);
    let unknown = format!("{}{}\n", create("alerts", "a"), json!({"upsert": {"_index": "alerts"}}));
    let r = bulk(&s, &[NDJSON], &unknown);
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["reason"]
            .as_str()
            .expect("reason")
            .contains("Malformed action/metadata line [3]")
    );
    let no_index = format!("{}{}\n{}\n", create("alerts", "a"), json!({"create": {}}), doc("b"));
    let r = bulk(&s, &[NDJSON], &no_index);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "action_request_validation_exception");
    assert_eq!(r.json()["error"]["reason"], "Validation Failed: 1: index is missing;");
    assert!(s.received().is_empty());
    assert!(s.indices().is_empty());

    s.set_busy(true);
    let r = bulk(&s, &[NDJSON], &create("alerts", "a"));
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "es_rejected_execution_exception");
    assert_eq!(r.json()["status"], 429);
    s.set_busy(false);
    s.fail_next(1, 503);
    assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "a")).status, 503);
    assert!(s.received().is_empty());
    assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "a")).status, 200);
    assert_eq!(s.ids(), ["a"]);
}

#[test]
fn authentication() {
    let s = ElasticServer::start(ElasticSettings {
        api_key: Some("a2V5aWQ6c2VjcmV0".into()),
        basic: Some(("elastic".into(), "changeme".into())),
        data_streams: Vec::new(),
    });
    let r = bulk(&s, &[NDJSON], &create("alerts", "a"));
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["status"], 401);
    assert_eq!(v["error"]["type"], "security_exception");
    assert_eq!(
        v["error"]["reason"],
        "missing authentication credentials for REST request [/_bulk]"
    );
    assert_eq!(v["error"]["root_cause"][0]["type"], "security_exception");
    let challenges: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(challenges.contains(&"ApiKey") && challenges.iter().any(|c| c.starts_with("Basic")));
    assert_eq!(get(s.addr(), "/", &[]).status, 401);

    let wrong = bulk(&s, &[NDJSON, ("Authorization", "ApiKey nope")], &create("alerts", "a"));
    assert_eq!(
        (wrong.status, wrong.json()["error"]["type"].as_str()),
        (401, Some("security_exception"))
    );
    let ok = bulk(
        &s,
        &[NDJSON, ("Authorization", "ApiKey a2V5aWQ6c2VjcmV0")],
        &create("alerts", "a"),
    );
    assert_eq!(ok.status, 200);
    let basic = format!("Basic {}", base64(b"elastic:changeme"));
    let ok = bulk(&s, &[NDJSON, ("Authorization", &basic)], &create("alerts", "b"));
    assert_eq!(ok.status, 200);
    let bad_basic = format!("Basic {}", base64(b"elastic:wrong"));
    let r = bulk(&s, &[NDJSON, ("Authorization", &bad_basic)], &create("alerts", "c"));
    assert_eq!(r.status, 401);
    assert_eq!(s.ids(), ["a", "b"]);
}

#[test]
fn down_then_up_keeps_the_documents() {
    let s = ElasticServer::start(ElasticSettings::open());
    assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "a")).status, 200);
    s.set_down(true);
    let err = crate::http_request(s.addr(), "GET", "/", &[], b"").expect_err("refused while down");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    s.set_down(false);
    assert_eq!(bulk(&s, &[NDJSON], &create("alerts", "b")).status, 200);
    assert_eq!(s.doc_ids("alerts"), ["a", "b"]);
}
