//! Microsoft Sentinel rows for the Logs Ingestion API: one flat object per alert, matching the
//! custom table's columns, and JSON-array request bodies kept under the API's size limit.
//!
//! Every column is always present (`null` when the alert lacks it), so the data collection
//! rule's stream declaration is one fixed list. Datetime columns are rewritten in UTC with
//! seven fractional digits, the 100 ns precision of a Kusto `datetime`.

use std::ops::Range;

use serde_json::{Value, json};

use verity_model::alert::Alert;
use verity_model::event::col;
use verity_model::time;

use super::cef::column;

/// The row for one alert.
pub fn row(alert: &Alert) -> Value {
    let evidence: Vec<&str> = alert.evidence.iter().map(|e| e.raw.as_str()).collect();
    json!({
        "TimeGenerated": datetime(Some(&alert.last_seen)),
        "AlertId": alert.id,
        "RuleId": alert.rule_id,
        "Title": alert.title,
        "Severity": alert.severity.as_str(),
        "Status": alert.status.as_str(),
        "Kind": alert.kind,
        "Tags": alert.tags,
        "Summary": alert.summary,
        "Description": alert.description,
        "Count": alert.count,
        "SourcePrincipal": column(alert, col::SOURCE_PRINCIPAL),
        "DestinationService": column(alert, col::DESTINATION_SERVICE),
        "DestinationNamespace": column(alert, col::DESTINATION_NAMESPACE),
        "Group": alert.group,
        "Evidence": evidence,
        "FirstSeen": datetime(Some(&alert.first_seen)),
        "LastSeen": datetime(Some(&alert.last_seen)),
        "WindowStart": datetime(alert.window_start.as_deref()),
        "WindowEnd": datetime(alert.window_end.as_deref()),
    })
}

/// Request bodies, each a JSON array of rows at most `max_bytes` long, with the range of
/// `alerts` each one carries. Rows keep their order; a row that alone exceeds `max_bytes` is
/// sent alone (the API then judges it) rather than dropped here.
pub fn encode_chunks(alerts: &[Alert], max_bytes: usize) -> Vec<(Range<usize>, Vec<u8>)> {
    let mut chunks = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut start = 0;
    for (i, alert) in alerts.iter().enumerate() {
        let row = row(alert).to_string();
        // With this row, the body would be what it is, a comma, the row and the closing `]`.
        if i > start && body.len() + 1 + row.len() + 1 > max_bytes {
            body.push(b']');
            chunks.push((start..i, std::mem::take(&mut body)));
            start = i;
        }
        body.push(if i == start { b'[' } else { b',' });
        body.extend_from_slice(row.as_bytes());
    }
    if start < alerts.len() {
        body.push(b']');
        chunks.push((start..alerts.len(), body));
    }
    chunks
}

/// `null` for a missing or malformed time, which the table stores as empty.
fn datetime(rfc3339: Option<&str>) -> Value {
    rfc3339
        .and_then(time::parse_rfc3339_ns)
        .map(time::format_rfc3339_ns)
        .and_then(|utc| utc.get(..27).map(|s| format!("{s}Z")))
        .map_or(Value::Null, Value::String)
}

#[cfg(test)]
mod tests {
    use verity_model::alert::AlertStatus;

    use super::super::cef::tests::sample;
    use super::*;

    #[test]
    fn writes_a_flat_row() {
        let r = row(&sample());
        assert_eq!(
            r,
            json!({
                "TimeGenerated": "2026-11-22T10:00:00.1230000Z",
                "AlertId": "unauth-payments-00000000deadbeef",
                "RuleId": "unauth-payments",
                "Title": "Unauthorized calls to payments",
                "Severity": "high",
                "Status": "firing",
                "Kind": "detection",
                "Tags": ["attack.t1078", "pci"],
                "Summary": "spiffe://cluster.local/ns/shop/sa/cart was denied 2 times",
                "Description": "A workload called payments without an ALLOW policy.",
                "Count": 2,
                "SourcePrincipal": "spiffe://cluster.local/ns/shop/sa/cart",
                "DestinationService": "payments.prod.svc.cluster.local",
                "DestinationNamespace": "prod",
                "Group": {
                    "destination_namespace": "prod",
                    "destination_service": "payments.prod.svc.cluster.local",
                    "source_namespace": null,
                    "source_principal": "spiffe://cluster.local/ns/shop/sa/cart",
                },
                "Evidence": [
                    "[2026-11-22T09:59:58.001Z] \"POST /charge HTTP/1.1\" 403 - rbac_access_denied_matched_policy[none]",
                    "[2026-11-22T10:00:00.123Z] \"POST /charge HTTP/1.1\" 403 - rbac_access_denied_matched_policy[none]",
                ],
                "FirstSeen": "2026-11-22T09:59:58.0010000Z",
                "LastSeen": "2026-11-22T10:00:00.1230000Z",
                "WindowStart": "2026-11-22T09:55:00.0000000Z",
                "WindowEnd": "2026-11-22T10:00:00.0000000Z",
            })
        );
    }

    #[test]
    fn keeps_every_column_when_values_are_missing() {
        let mut a = sample();
        a.group.clear();
        a.entity = None;
        a.window_start = None;
        a.window_end = Some("garbage".to_string());
        a.last_seen = "2026-11-22T11:00:00.123456789+01:00".to_string();
        let r = row(&a);
        assert_eq!(r.as_object().map(|m| m.len()), Some(20));
        for key in ["SourcePrincipal", "DestinationService", "WindowStart", "WindowEnd"] {
            assert_eq!(r[key], Value::Null, "{key}");
        }
        assert_eq!(r["TimeGenerated"], "2026-11-22T10:00:00.1234567Z");
    }

    fn body_len(alerts: &[Alert]) -> usize {
        let rows: Vec<Value> = alerts.iter().map(row).collect();
        Value::Array(rows).to_string().len()
    }

    #[test]
    fn splits_at_the_byte_limit() {
        let mut alerts = vec![sample(), sample(), sample()];
        alerts[1].status = AlertStatus::Resolved;
        alerts[2].summary.push_str(" ünïcødé 🚨 | = \\ \"");
        let two = body_len(&alerts[..2]);

        let chunks = encode_chunks(&alerts, two);
        let ranges: Vec<Range<usize>> = chunks.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, [0..2, 2..3]);
        assert_eq!(chunks[0].1.len(), two, "a body may be exactly the limit");
        for (range, body) in &chunks {
            assert!(body.len() <= two);
            let parsed: Vec<Value> = serde_json::from_slice(body).unwrap();
            assert_eq!(parsed.len(), range.len());
            assert_eq!(
                body,
                &Value::Array(alerts[range.clone()].iter().map(row).collect())
                    .to_string()
                    .into_bytes()
            );
        }

        let chunks = encode_chunks(&alerts, two - 1);
        let ranges: Vec<Range<usize>> = chunks.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, [0..1, 1..2, 2..3], "one byte short, the pair no longer fits");

        let all = encode_chunks(&alerts, body_len(&alerts));
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, 0..3);
    }

    #[test]
    fn sends_an_oversized_row_alone() {
        let alerts = vec![sample(), sample()];
        let chunks = encode_chunks(&alerts, 10);
        let ranges: Vec<Range<usize>> = chunks.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, [0..1, 1..2]);
        assert!(chunks.iter().all(|(_, b)| b.len() > 10 && b.first() == Some(&b'[')));
        assert!(encode_chunks(&[], 1_000_000).is_empty());
    }
}
