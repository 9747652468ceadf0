//! Splunk HTTP Event Collector envelopes (`POST /services/collector/event`): the alert as the
//! event, with its rule, severity and status also as indexed fields for fast `tstats` searches.

use serde_json::{Map, Value, json};

use verity_model::alert::Alert;

use super::cef::epoch_ms;

/// The envelope metadata Splunk files the event under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HecOptions {
    /// `None` lets Splunk use the token's default (the sender's address).
    pub host: Option<String>,
    pub source: String,
    pub sourcetype: String,
    /// `None` uses the token's default index.
    pub index: Option<String>,
}

impl Default for HecOptions {
    fn default() -> Self {
        Self {
            host: None,
            source: "verity".to_string(),
            sourcetype: "verity:alert".to_string(),
            index: None,
        }
    }
}

/// `{"time","host"?,"source","sourcetype","index"?,"event","fields"}`. `time` is epoch seconds
/// with millisecond decimals, from `last_seen`; when that does not parse it is left out and
/// Splunk stamps the event on receipt.
pub fn envelope(alert: &Alert, opts: &HecOptions) -> Value {
    let mut env = Map::new();
    if let Some(ms) = epoch_ms(&alert.last_seen) {
        // Division rounds to the double nearest the exact value, whose shortest decimal form
        // is then the three-decimal one: no 0.12299999 on the wire.
        env.insert("time".to_string(), json!(ms as f64 / 1000.0));
    }
    if let Some(host) = opts.host.as_deref().filter(|h| !h.is_empty()) {
        env.insert("host".to_string(), json!(host));
    }
    env.insert("source".to_string(), json!(opts.source));
    env.insert("sourcetype".to_string(), json!(opts.sourcetype));
    if let Some(index) = opts.index.as_deref().filter(|i| !i.is_empty()) {
        env.insert("index".to_string(), json!(index));
    }
    // An alert has only string keys and plain values, so serializing it cannot fail; `null`
    // would make HEC reject the event (code 12) rather than lose it silently.
    env.insert("event".to_string(), serde_json::to_value(alert).unwrap_or(Value::Null));
    env.insert(
        "fields".to_string(),
        json!({
            "rule_id": alert.rule_id,
            "severity": alert.severity.as_str(),
            "status": alert.status.as_str(),
        }),
    );
    Value::Object(env)
}

/// A request body: envelopes one after another, each ending in a newline. HEC reads
/// concatenated objects and rejects a JSON array.
pub fn encode_batch(alerts: &[Alert], opts: &HecOptions) -> Vec<u8> {
    let mut body = Vec::with_capacity(alerts.len() * 2048);
    for alert in alerts {
        body.extend_from_slice(envelope(alert, opts).to_string().as_bytes());
        body.push(b'\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use verity_model::alert::AlertStatus;

    use super::super::cef::tests::sample;
    use super::*;

    #[test]
    fn wraps_the_alert_with_its_metadata() {
        let env = envelope(&sample(), &HecOptions::default());
        assert_eq!(env["time"].to_string(), "1795341600.123");
        assert_eq!(env["source"], "verity");
        assert_eq!(env["sourcetype"], "verity:alert");
        assert!(env.get("host").is_none() && env.get("index").is_none());
        assert_eq!(env["event"], serde_json::to_value(sample()).unwrap());
        assert_eq!(
            env["fields"],
            json!({ "rule_id": "unauth-payments", "severity": "high", "status": "firing" })
        );
    }

    #[test]
    fn adds_host_and_index_when_set() {
        let opts = HecOptions {
            host: Some("verity-0".to_string()),
            index: Some("security".to_string()),
            ..HecOptions::default()
        };
        let env = envelope(&sample(), &opts);
        assert_eq!(
            (env["host"].as_str(), env["index"].as_str()),
            (Some("verity-0"), Some("security"))
        );
        let blank = HecOptions {
            host: Some(String::new()),
            index: Some(String::new()),
            ..HecOptions::default()
        };
        let env = envelope(&sample(), &blank);
        assert!(env.get("host").is_none() && env.get("index").is_none());
    }

    #[test]
    fn keeps_millisecond_precision_and_drops_a_bad_time() {
        let mut a = sample();
        a.last_seen = "2026-11-22T10:00:00.001999Z".to_string();
        assert_eq!(
            envelope(&a, &HecOptions::default())["time"].to_string(),
            "1795341600.001"
        );
        a.last_seen = "2026-11-22T10:00:00Z".to_string();
        assert_eq!(envelope(&a, &HecOptions::default())["time"].to_string(), "1795341600.0");
        a.last_seen = "2026-11-22T11:00:00.999+01:00".to_string();
        assert_eq!(
            envelope(&a, &HecOptions::default())["time"].to_string(),
            "1795341600.999"
        );
        a.last_seen = "whenever".to_string();
        assert!(envelope(&a, &HecOptions::default()).get("time").is_none());
    }

    #[test]
    fn a_batch_is_concatenated_objects_not_an_array() {
        let mut resolved = sample();
        resolved.status = AlertStatus::Resolved;
        resolved.summary = "line\nbreak ünïcødé 🚨 \"quoted\"".to_string();
        let body = encode_batch(&[sample(), resolved], &HecOptions::default());
        assert_eq!(body.first(), Some(&b'{'));
        assert_eq!(body.last(), Some(&b'\n'));
        assert!(serde_json::from_slice::<Vec<Value>>(&body).is_err());

        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "a newline inside a value is escaped, not written");
        let envelopes: Vec<Value> = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(envelopes.len(), 2);
        assert_eq!(envelopes[1]["fields"]["status"], "resolved");
        assert_eq!(envelopes[1]["event"]["summary"], "line\nbreak ünïcødé 🚨 \"quoted\"");
        assert!(encode_batch(&[], &HecOptions::default()).is_empty());
    }
}
