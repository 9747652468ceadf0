//! An alert as an OCSF 1.3 Detection Finding (class 2004), for OCSF-native lakes and SIEMs
//! (AWS Security Lake, Splunk, Sentinel's OCSF tables).
//!
//! The alert lifecycle maps onto the finding's: firing creates it, unknown updates it,
//! resolved closes it. Every time is in epoch milliseconds, as OCSF's `timestamp_t` is. A time
//! that does not parse is left out rather than sent as a wrong instant.

use serde_json::{Value, json};

use verity_model::alert::{Alert, AlertStatus, Severity};
use verity_model::event::col;

use super::cef::{column, epoch_ms};

/// The OCSF schema version the document follows.
pub const OCSF_VERSION: &str = "1.3.0";

const CLASS_UID: u32 = 2004;
const CATEGORY_UID: u32 = 2;
/// OCSF observable type ids: "Hostname" and "Other".
const OBSERVABLE_HOSTNAME: u8 = 1;
const OBSERVABLE_OTHER: u8 = 99;

/// The Detection Finding for one alert; `product_version` is Verity's version.
pub fn detection_finding(alert: &Alert, product_version: &str) -> Value {
    let (activity_id, activity_name) = activity(alert.status);
    let (severity_id, severity) = severity(alert.severity);
    let (status_id, status) = status(alert.status);

    let mut finding_info = json!({
        "uid": alert.id,
        "title": alert.title,
        "desc": alert.description,
        "types": [alert.kind],
        "analytic": { "uid": alert.rule_id, "name": alert.title, "type_id": 1, "type": "Rule" },
    });
    insert_ms(&mut finding_info, "first_seen_time", Some(&alert.first_seen));
    insert_ms(&mut finding_info, "last_seen_time", Some(&alert.last_seen));

    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": { "name": "Verity", "vendor_name": "Verity", "version": product_version },
    });
    if !alert.tags.is_empty() {
        metadata["labels"] = json!(alert.tags);
    }

    let mut doc = json!({
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("Detection Finding: {activity_name}"),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "count": alert.count,
        "message": alert.summary,
        "metadata": metadata,
        "finding_info": finding_info,
        "evidences": alert.evidence.iter().map(evidence).collect::<Vec<_>>(),
        "unmapped": unmapped(alert),
    });
    insert_ms(&mut doc, "time", Some(&alert.last_seen));
    insert_ms(&mut doc, "start_time", alert.window_start.as_deref());
    insert_ms(&mut doc, "end_time", alert.window_end.as_deref());

    if let Some(service) = column(alert, col::DESTINATION_SERVICE) {
        let mut resource = json!({ "type": "service", "name": service });
        if let Some(ns) = column(alert, col::DESTINATION_NAMESPACE) {
            resource["namespace"] = json!(ns);
        }
        doc["resources"] = json!([resource]);
    }
    let observables = observables(alert);
    if !observables.is_empty() {
        doc["observables"] = Value::Array(observables);
    }
    doc
}

fn activity(status: AlertStatus) -> (u32, &'static str) {
    match status {
        AlertStatus::Firing => (1, "Create"),
        AlertStatus::Unknown => (2, "Update"),
        AlertStatus::Resolved => (3, "Close"),
    }
}

fn severity(severity: Severity) -> (u8, &'static str) {
    match severity {
        Severity::Info => (1, "Informational"),
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    }
}

/// "No telemetry, cannot tell" has no finding status of its own: it is `Other`, whose label
/// OCSF then requires in `status`.
fn status(status: AlertStatus) -> (u8, &'static str) {
    match status {
        AlertStatus::Firing => (1, "New"),
        AlertStatus::Resolved => (4, "Resolved"),
        AlertStatus::Unknown => (99, "Unknown"),
    }
}

/// An evidence artifact: the event's own fields and line under `data`, the destination as an
/// endpoint so OCSF queries on `dst_endpoint.svc_name` find it.
fn evidence(e: &verity_model::alert::Evidence) -> Value {
    let mut data = json!({ "event_time": e.event_time, "decision": e.decision, "raw": e.raw });
    if let Some(p) = &e.source_principal {
        data["source_principal"] = json!(p);
    }
    if let Some(s) = &e.destination_service {
        data["destination_service"] = json!(s);
    }
    if let Some(status) = e.status {
        data["status"] = json!(status);
    }
    let mut artifact = json!({ "data": data });
    if let Some(s) = &e.destination_service {
        artifact["dst_endpoint"] = json!({ "svc_name": s });
    }
    artifact
}

/// What OCSF has no attribute for. Group keys and the entity come first since observables
/// point into them.
fn unmapped(alert: &Alert) -> Value {
    let mut u = json!({ "group": alert.group, "alert_status": alert.status.as_str() });
    if !alert.aggregates.is_empty() {
        u["aggregates"] = json!(alert.aggregates);
    }
    if let Some(entity) = &alert.entity {
        u["entity"] = json!({ "kind": entity.kind, "value": entity.value });
    }
    if let Some(respond) = &alert.respond {
        u["respond"] = json!({ "action": respond.action, "ttl": respond.ttl });
    }
    u
}

/// Principals (SPIFFE IDs and JWT `iss/sub`, which OCSF has no type for) and the destination
/// service, each named by where it sits in this document.
fn observables(alert: &Alert) -> Vec<Value> {
    let mut out = Vec::new();
    for name in [
        col::SOURCE_PRINCIPAL,
        col::REQUEST_PRINCIPAL,
        col::DESTINATION_PRINCIPAL,
    ] {
        let from_group = alert
            .group
            .get(name)
            .and_then(|v| v.as_deref())
            .filter(|v| !v.is_empty());
        let path = if from_group.is_some() {
            format!("unmapped.group.{name}")
        } else {
            "unmapped.entity.value".to_string()
        };
        if let Some(value) = column(alert, name) {
            out.push(json!({ "name": path, "type_id": OBSERVABLE_OTHER, "type": "Other", "value": value }));
        }
    }
    if let Some(service) = column(alert, col::DESTINATION_SERVICE) {
        out.push(json!({
            "name": "resources.name",
            "type_id": OBSERVABLE_HOSTNAME,
            "type": "Hostname",
            "value": service,
        }));
    }
    out
}

fn insert_ms(obj: &mut Value, key: &str, rfc3339: Option<&str>) {
    if let (Some(map), Some(ms)) = (obj.as_object_mut(), rfc3339.and_then(epoch_ms)) {
        map.insert(key.to_string(), json!(ms));
    }
}

#[cfg(test)]
mod tests {
    use verity_model::alert::Entity;

    use super::super::cef::tests::sample;
    use super::*;

    #[test]
    fn carries_every_required_attribute() {
        let doc = detection_finding(&sample(), "1.2.3");
        for key in [
            "class_uid",
            "category_uid",
            "activity_id",
            "type_uid",
            "severity_id",
            "time",
            "metadata",
            "finding_info",
        ] {
            assert!(doc.get(key).is_some(), "{key} missing");
        }
        assert_eq!(doc["class_uid"], 2004);
        assert_eq!(doc["category_uid"], 2);
        assert_eq!(doc["metadata"]["version"], "1.3.0");
        assert_eq!(
            doc["metadata"]["product"],
            json!({ "name": "Verity", "vendor_name": "Verity", "version": "1.2.3" })
        );
        assert_eq!(doc["finding_info"]["uid"], "unauth-payments-00000000deadbeef");
        assert_eq!(doc["finding_info"]["title"], "Unauthorized calls to payments");
    }

    #[test]
    fn writes_times_in_epoch_milliseconds() {
        let doc = detection_finding(&sample(), "1.2.3");
        assert_eq!(doc["time"], 1_795_341_600_123_i64);
        assert_eq!(doc["start_time"], 1_795_341_300_000_i64);
        assert_eq!(doc["end_time"], 1_795_341_600_000_i64);
        assert_eq!(doc["finding_info"]["first_seen_time"], 1_795_341_598_001_i64);
        assert_eq!(doc["finding_info"]["last_seen_time"], 1_795_341_600_123_i64);

        let mut a = sample();
        a.last_seen = "later".to_string();
        a.window_start = None;
        let doc = detection_finding(&a, "1.2.3");
        assert!(doc.get("time").is_none() && doc.get("start_time").is_none());
        assert!(doc["finding_info"].get("last_seen_time").is_none());
    }

    #[test]
    fn maps_the_lifecycle_onto_activity_and_status() {
        let mut a = sample();
        let cases = [
            (AlertStatus::Firing, 1, "Create", 200_401, 1, "New"),
            (AlertStatus::Unknown, 2, "Update", 200_402, 99, "Unknown"),
            (AlertStatus::Resolved, 3, "Close", 200_403, 4, "Resolved"),
        ];
        for (status, activity_id, activity_name, type_uid, status_id, status_name) in cases {
            a.status = status;
            let doc = detection_finding(&a, "1");
            assert_eq!(doc["activity_id"], activity_id);
            assert_eq!(doc["activity_name"], activity_name);
            assert_eq!(doc["type_uid"], type_uid);
            assert_eq!(doc["type_name"], format!("Detection Finding: {activity_name}"));
            assert_eq!(doc["status_id"], status_id);
            assert_eq!(doc["status"], status_name);
        }
    }

    #[test]
    fn maps_every_severity() {
        let mut a = sample();
        let want = [
            (1, "Informational"),
            (2, "Low"),
            (3, "Medium"),
            (4, "High"),
            (5, "Critical"),
        ];
        for (s, (id, name)) in Severity::ALL.iter().zip(want) {
            a.severity = *s;
            let doc = detection_finding(&a, "1");
            assert_eq!(
                (doc["severity_id"].clone(), doc["severity"].clone()),
                (json!(id), json!(name))
            );
        }
    }

    #[test]
    fn keeps_evidence_lines_and_points_observables_at_their_fields() {
        let doc = detection_finding(&sample(), "1");
        let ev = &doc["evidences"][0];
        assert_eq!(ev["data"]["decision"], "deny_rbac");
        assert_eq!(ev["data"]["status"], 403);
        assert!(ev["data"]["raw"].as_str().is_some_and(|r| r.contains("POST /charge")));
        assert_eq!(ev["dst_endpoint"]["svc_name"], "payments.prod.svc.cluster.local");
        assert_eq!(
            doc["observables"],
            json!([
                {
                    "name": "unmapped.group.source_principal",
                    "type_id": 99,
                    "type": "Other",
                    "value": "spiffe://cluster.local/ns/shop/sa/cart",
                },
                {
                    "name": "resources.name",
                    "type_id": 1,
                    "type": "Hostname",
                    "value": "payments.prod.svc.cluster.local",
                },
            ])
        );
        assert_eq!(
            doc["resources"],
            json!([{ "type": "service", "name": "payments.prod.svc.cluster.local", "namespace": "prod" }])
        );
        assert_eq!(doc["unmapped"]["group"]["destination_namespace"], "prod");
        assert_eq!(doc["unmapped"]["aggregates"]["count()"], 2.0);
        assert_eq!(doc["metadata"]["labels"], json!(["attack.t1078", "pci"]));
        assert_eq!(doc["finding_info"]["types"], json!(["detection"]));
        assert_eq!(doc["finding_info"]["analytic"]["uid"], "unauth-payments");
        assert_eq!(
            doc["message"],
            "spiffe://cluster.local/ns/shop/sa/cart was denied 2 times"
        );
    }

    #[test]
    fn an_entity_outside_the_group_is_observed_where_it_is_written() {
        let mut a = sample();
        a.group.clear();
        a.evidence.clear();
        a.tags.clear();
        a.entity = Some(Entity {
            kind: "request_principal".to_string(),
            value: "https://issuer.example/ünïcødé 🚨".to_string(),
        });
        let doc = detection_finding(&a, "1");
        assert_eq!(
            doc["observables"],
            json!([{
                "name": "unmapped.entity.value",
                "type_id": 99,
                "type": "Other",
                "value": "https://issuer.example/ünïcødé 🚨",
            }])
        );
        assert_eq!(doc["evidences"], json!([]));
        assert!(doc.get("resources").is_none() && doc["metadata"].get("labels").is_none());
    }
}
