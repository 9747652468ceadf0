//! An alert as an Elastic Common Schema document, for Elasticsearch and OpenSearch `_bulk`.
//!
//! Standard fields use ECS names only (nested objects, never dotted keys); everything ECS has
//! no field for, and the SPIFFE principals again, lives under `verity.*`. Categorization
//! follows ECS's allowed values: `intrusion_detection` expects the event types `allowed`,
//! `denied` and `info` (`indicator` belongs to the `threat` category), so an alert is `info`,
//! plus `allowed`/`denied` when all its evidence agrees.

use serde_json::{Map, Value, json};

use verity_model::alert::Alert;
use verity_model::event::col;

use super::cef::{Access, access, column, ip_column, port_column, severity_0_10};

/// The ECS version whose field set this document uses (`service.target` needs 8.5 or later).
pub const ECS_VERSION: &str = "8.11.0";

/// The ECS document for one alert.
pub fn document(alert: &Alert) -> Value {
    let access = access(alert);
    let web = alert.evidence.iter().any(|e| e.status.is_some());

    let mut category = vec!["intrusion_detection", "network"];
    if web {
        category.push("web");
    }
    let mut types = vec!["info"];
    match access {
        Some(Access::Allowed) => types.push("allowed"),
        Some(Access::Denied) => types.push("denied"),
        None => {}
    }

    let mut event = json!({
        "kind": "alert",
        "category": category,
        "type": types,
        "severity": severity_0_10(alert.severity),
        "id": alert.id,
        "action": alert.status.as_str(),
        "dataset": "verity.alert",
        "module": "verity",
    });
    insert_opt(&mut event, "start", alert.window_start.as_deref());
    insert_opt(&mut event, "end", alert.window_end.as_deref());

    let mut doc = json!({
        "@timestamp": alert.last_seen,
        "ecs": { "version": ECS_VERSION },
        "event": event,
        "rule": {
            "id": alert.rule_id,
            "name": alert.title,
            "description": alert.description,
            "category": alert.kind,
        },
        "tags": alert.tags,
        "message": alert.summary,
        "observer": { "vendor": "Verity", "product": "Verity" },
        "verity": verity(alert),
    });

    let mut source = Map::new();
    if let Some(ip) = ip_column(alert, col::SOURCE_IP) {
        source.insert("ip".to_string(), json!(ip.to_string()));
    }
    if let Some(principal) = column(alert, col::SOURCE_PRINCIPAL) {
        source.insert("user".to_string(), json!({ "name": principal }));
    }
    insert_object(&mut doc, "source", source);

    let mut destination = Map::new();
    if let Some(ip) = ip_column(alert, col::DESTINATION_IP) {
        destination.insert("ip".to_string(), json!(ip.to_string()));
    }
    if let Some(port) = port_column(alert, col::DESTINATION_PORT) {
        destination.insert("port".to_string(), json!(port));
    }
    if let Some(service) = column(alert, col::DESTINATION_SERVICE) {
        destination.insert("domain".to_string(), json!(service));
        doc["service"] = json!({ "target": { "name": service } });
    }
    insert_object(&mut doc, "destination", destination);

    // The end user a request carried a token for: ECS's `user` is the actor of the event.
    if let Some(principal) = column(alert, col::REQUEST_PRINCIPAL) {
        doc["user"] = json!({ "name": principal });
    }
    if let Some(status) = common_status(alert) {
        doc["http"] = json!({ "response": { "status_code": status } });
    }
    doc
}

/// What ECS has no field for. Aggregates become a list because their keys are expression
/// text, whose dots Elasticsearch would read as object paths.
fn verity(alert: &Alert) -> Value {
    let aggregates: Vec<Value> = alert
        .aggregates
        .iter()
        .map(|(expr, value)| json!({ "expression": expr, "value": value }))
        .collect();
    let evidence: Vec<&str> = alert.evidence.iter().map(|e| e.raw.as_str()).collect();
    let mut v = json!({
        "status": alert.status.as_str(),
        "severity": alert.severity.as_str(),
        "count": alert.count,
        "group": alert.group,
        "first_seen": alert.first_seen,
        "last_seen": alert.last_seen,
        "evidence": evidence,
    });
    if !aggregates.is_empty() {
        v["aggregates"] = Value::Array(aggregates);
    }
    for (key, name) in [
        ("source_principal", col::SOURCE_PRINCIPAL),
        ("request_principal", col::REQUEST_PRINCIPAL),
        ("destination_principal", col::DESTINATION_PRINCIPAL),
    ] {
        insert_opt(&mut v, key, column(alert, name));
    }
    if let Some(entity) = &alert.entity {
        v["entity"] = json!({ "kind": entity.kind, "value": entity.value });
    }
    if let Some(respond) = &alert.respond {
        v["respond"] = json!({ "action": respond.action, "ttl": respond.ttl });
    }
    v
}

/// An HTTP status only describes the alert when every piece of evidence has the same one.
fn common_status(alert: &Alert) -> Option<i32> {
    let first = alert.evidence.first()?.status?;
    alert.evidence.iter().all(|e| e.status == Some(first)).then_some(first)
}

fn insert_opt(obj: &mut Value, key: &str, value: Option<&str>) {
    if let (Some(map), Some(value)) = (obj.as_object_mut(), value) {
        map.insert(key.to_string(), json!(value));
    }
}

fn insert_object(obj: &mut Value, key: &str, value: Map<String, Value>) {
    if let (Some(map), false) = (obj.as_object_mut(), value.is_empty()) {
        map.insert(key.to_string(), Value::Object(value));
    }
}

#[cfg(test)]
mod tests {
    use verity_model::alert::{Entity, Severity};

    use super::super::cef::tests::sample;
    use super::*;

    #[test]
    fn maps_an_alert_to_ecs_fields() {
        let doc = document(&sample());
        assert_eq!(doc["@timestamp"], "2026-11-22T10:00:00.123Z");
        assert_eq!(doc["ecs"]["version"], ECS_VERSION);
        assert_eq!(
            doc["event"],
            json!({
                "kind": "alert",
                "category": ["intrusion_detection", "network", "web"],
                "type": ["info", "denied"],
                "severity": 8,
                "id": "unauth-payments-00000000deadbeef",
                "action": "firing",
                "dataset": "verity.alert",
                "module": "verity",
                "start": "2026-11-22T09:55:00Z",
                "end": "2026-11-22T10:00:00Z",
            })
        );
        assert_eq!(
            doc["rule"],
            json!({
                "id": "unauth-payments",
                "name": "Unauthorized calls to payments",
                "description": "A workload called payments without an ALLOW policy.",
                "category": "detection",
            })
        );
        assert_eq!(doc["tags"], json!(["attack.t1078", "pci"]));
        assert_eq!(
            doc["message"],
            "spiffe://cluster.local/ns/shop/sa/cart was denied 2 times"
        );
        assert_eq!(
            doc["source"],
            json!({ "user": { "name": "spiffe://cluster.local/ns/shop/sa/cart" } })
        );
        assert_eq!(
            doc["destination"],
            json!({ "domain": "payments.prod.svc.cluster.local" })
        );
        assert_eq!(
            doc["service"],
            json!({ "target": { "name": "payments.prod.svc.cluster.local" } })
        );
        assert_eq!(doc["http"], json!({ "response": { "status_code": 403 } }));
        assert!(doc.get("user").is_none());
    }

    #[test]
    fn keeps_what_ecs_lacks_under_verity() {
        let doc = document(&sample());
        let v = &doc["verity"];
        assert_eq!(v["status"], "firing");
        assert_eq!(v["count"], 2);
        assert_eq!(v["group"]["destination_namespace"], "prod");
        assert_eq!(v["group"]["source_namespace"], Value::Null);
        assert_eq!(v["aggregates"], json!([{ "expression": "count()", "value": 2.0 }]));
        assert_eq!(v["source_principal"], "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(v["evidence"].as_array().map(Vec::len), Some(2));
        assert!(v["evidence"][0].as_str().is_some_and(|r| r.contains("POST /charge")));
        assert_eq!(v["entity"]["kind"], "source_principal");
    }

    /// Every key is a plain name: no dotted keys anywhere in the document.
    #[test]
    fn nests_objects_instead_of_dotting_keys() {
        fn check(v: &Value, path: &str) {
            if let Value::Object(map) = v {
                for (k, child) in map {
                    let inside_group = path == "verity.group";
                    assert!(inside_group || !k.contains('.'), "dotted key {path}.{k}");
                    check(child, &format!("{path}.{k}"));
                }
            }
        }
        let mut a = sample();
        a.aggregates.insert("avg(duration.ms)".to_string(), 1.5);
        check(&document(&a), "");
    }

    #[test]
    fn adds_user_addresses_and_allowed_when_present() {
        let mut a = sample();
        a.group.clear();
        a.group.insert("source_ip".to_string(), Some("2001:db8::1".to_string()));
        a.group
            .insert("destination_ip".to_string(), Some("10.1.2.3".to_string()));
        a.group
            .insert("destination_port".to_string(), Some("99999".to_string()));
        a.entity = Some(Entity {
            kind: "request_principal".to_string(),
            value: "https://issuer.example/ünïcødé".to_string(),
        });
        for e in &mut a.evidence {
            e.decision = "allow".to_string();
            e.status = None;
        }
        a.severity = Severity::Low;
        let doc = document(&a);
        assert_eq!(doc["source"], json!({ "ip": "2001:db8::1" }));
        assert_eq!(
            doc["destination"],
            json!({ "ip": "10.1.2.3" }),
            "an invalid port is left out"
        );
        assert_eq!(doc["user"], json!({ "name": "https://issuer.example/ünïcødé" }));
        assert_eq!(doc["event"]["category"], json!(["intrusion_detection", "network"]));
        assert_eq!(doc["event"]["type"], json!(["info", "allowed"]));
        assert_eq!(doc["event"]["severity"], 3);
        assert!(doc.get("http").is_none() && doc.get("service").is_none());
    }

    #[test]
    fn leaves_out_a_status_the_evidence_disagrees_on() {
        let mut a = sample();
        a.evidence[1].status = Some(401);
        a.evidence[1].decision = "allow".to_string();
        let doc = document(&a);
        assert!(doc.get("http").is_none());
        assert_eq!(doc["event"]["type"], json!(["info"]));
    }
}
