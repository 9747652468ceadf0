//! The event endpoint's body: HEC envelopes parsed and validated (all or nothing), and each one's
//! alert id.

use serde_json::Value;

use super::{hec, hec_event};
use crate::siem::{Reply, id_string};

/// Parses and validates every envelope; the first bad one fails the whole request.
pub(super) fn parse_envelopes(body: &[u8], allowed_indexes: Option<&[String]>) -> Result<Vec<Value>, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(hec(400, 5, "No data"));
    }
    let mut envelopes = Vec::new();
    for (n, item) in serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .enumerate()
    {
        let invalid = || hec_event(400, 6, "Invalid data format", n);
        let envelope = item.map_err(|_| invalid())?;
        let Value::Object(fields) = &envelope else {
            return Err(invalid());
        };
        match fields.get("event") {
            None => return Err(hec_event(400, 12, "Event field is required", n)),
            Some(Value::Null) => return Err(hec_event(400, 13, "Event field cannot be blank", n)),
            Some(Value::String(s)) if s.is_empty() => {
                return Err(hec_event(400, 13, "Event field cannot be blank", n));
            }
            Some(_) => {}
        }
        for key in ["host", "source", "sourcetype"] {
            if fields.get(key).is_some_and(|v| !v.is_string()) {
                return Err(invalid());
            }
        }
        match fields.get("time") {
            None | Some(Value::Number(_)) => {}
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => {}
            Some(_) => return Err(invalid()),
        }
        match (fields.get("index"), allowed_indexes) {
            (None, _) => {}
            (Some(Value::String(index)), Some(allowed)) if !allowed.iter().any(|a| a == index) => {
                return Err(hec_event(400, 7, "Incorrect index", n));
            }
            (Some(Value::String(_)), _) => {}
            (Some(_), _) => return Err(invalid()),
        }
        if let Some(indexed) = fields.get("fields") {
            let flat = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
            let ok = indexed.as_object().is_some_and(|m| {
                m.values()
                    .all(|v| flat(v) || v.as_array().is_some_and(|a| a.iter().all(flat)))
            });
            if !ok {
                return Err(hec_event(400, 15, "Error in handling indexed fields", n));
            }
        }
        envelopes.push(envelope);
    }
    Ok(envelopes)
}

/// `event.id`, also when `event` is a string holding a JSON object.
pub(super) fn envelope_id(envelope: &Value) -> Option<String> {
    match envelope.get("event")? {
        Value::Object(event) => event.get("id").and_then(id_string),
        Value::String(text) => serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("id").and_then(id_string)),
        _ => None,
    }
}
