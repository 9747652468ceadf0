//! JSON access logs: Istio's JSON encoding (typed numbers and nulls), custom JSON formats
//! (often every value a string, any key order, nested objects) and ztunnel's JSON layout.

use std::borrow::Cow;

use verity_model::{AccessEvent, InputFormat, Reporter};

use super::fields::{self, Value};
use super::limits::RecordLimits;
use super::{Extras, FormatHint, RejectReason, Rejection, ztunnel};

pub fn parse_line<'a>(
    line: &'a str,
    hint: FormatHint,
    limits: &RecordLimits,
) -> Result<(AccessEvent<'a>, Extras<'a>), Rejection> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, format!("not a JSON object: {e}")))?;
    let mut pairs = Vec::with_capacity(map.len().min(limits.max_fields));
    flatten("", map, 1, limits, &mut pairs)?;
    from_pairs(pairs, Cow::Borrowed(line), hint)
}

/// Nested objects become dotted names (`{"a":{"b":1}}` → `a.b`). Each name is checked
/// against the limits before it is built: a name repeats its parents' names, so a deep body
/// with long names and many leaves would otherwise cost far more than the line itself.
fn flatten(
    prefix: &str,
    map: serde_json::Map<String, serde_json::Value>,
    depth: usize,
    limits: &RecordLimits,
    out: &mut Vec<(String, Value<'static>)>,
) -> Result<(), Rejection> {
    limits.depth(depth)?;
    for (k, v) in map {
        let len = if prefix.is_empty() {
            k.len()
        } else {
            prefix.len().saturating_add(1).saturating_add(k.len())
        };
        limits.key(len)?;
        let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
        match v {
            serde_json::Value::Object(inner) => flatten(&key, inner, depth.saturating_add(1), limits, out)?,
            other => {
                limits.fields(out.len().saturating_add(1))?;
                out.push((key, json_value(other)));
            }
        }
    }
    Ok(())
}

pub fn json_value(v: serde_json::Value) -> Value<'static> {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Str(Cow::Owned(s)),
        // Arrays have no column; keep them readable in `attributes`.
        other => Value::Str(Cow::Owned(other.to_string())),
    }
}

/// Builds an event from named values (a JSON object or an OTLP kvlist body).
pub fn from_pairs<'a>(
    pairs: Vec<(String, Value<'a>)>,
    raw: Cow<'a, str>,
    hint: FormatHint,
) -> Result<(AccessEvent<'a>, Extras<'a>), Rejection> {
    let is_ztunnel = hint == FormatHint::Ztunnel
        || pairs.iter().any(|(k, v)| {
            k.starts_with("src.")
                || k.starts_with("dst.")
                || ((k == "scope" || k == "target") && matches!(v, Value::Str(s) if s == "access"))
        });
    let mut ev = AccessEvent {
        raw,
        ..Default::default()
    };
    let mut ex = Extras::default();
    let mut unknown = fields::UnknownAttrs::default();
    if is_ztunnel {
        ev.format = InputFormat::ZtunnelJson;
        ev.reporter = Reporter::Ztunnel;
        for (k, v) in pairs {
            ztunnel::apply_key(&mut ev, &mut ex, &k, v, &mut unknown)?;
        }
    } else {
        if hint == FormatHint::Ztunnel {
            return Err(Rejection::new(
                RejectReason::UnrecognizedFormat,
                "not a ztunnel JSON record",
            ));
        }
        ev.format = InputFormat::EnvoyJson;
        let mut mapped = 0usize;
        for (k, v) in pairs {
            match fields::apply(&mut ev, &mut ex, &k, v.clone())? {
                fields::Applied::Mapped => mapped = mapped.saturating_add(1),
                fields::Applied::Unknown => unknown.insert(&k, fields::value_to_json(&v)),
            }
        }
        if mapped == 0 {
            return Err(Rejection::new(
                RejectReason::UnrecognizedFormat,
                "JSON object has no access-log fields Verity understands",
            ));
        }
        if ev.method.is_none() && ev.path.is_none() && ev.status.is_none() && ev.protocol.is_none() {
            ev.protocol = Some(Cow::Borrowed("TCP"));
        }
    }
    ev.attributes = unknown.into_json();
    Ok((ev, ex))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn all_string_custom_format_any_order() {
        let line = r#"{"authority":"pay:8080","response_code":"403","method":"POST","start_time":"2024-01-02T03:04:05.000Z","path":"/charge","custom":{"team":"a"},"duration":"12","bytes_sent":"19"}"#;
        let (ev, _) = parse_line(line, FormatHint::Auto, &RecordLimits::default()).expect("parse");
        assert_eq!(ev.status, Some(403));
        assert_eq!(ev.duration_ms, Some(12.0));
        assert_eq!(ev.bytes_sent, Some(19));
        assert_eq!(ev.attributes.as_deref(), Some(r#"{"custom.team":"a"}"#));
    }

    #[test]
    fn rejects_unrelated_and_broken_json() {
        assert_eq!(
            parse_line(r#"{"hello":"world"}"#, FormatHint::Auto, &RecordLimits::default())
                .map(|_| ())
                .unwrap_err()
                .reason,
            RejectReason::UnrecognizedFormat
        );
        assert_eq!(
            parse_line(r#"{"method":"GET""#, FormatHint::Auto, &RecordLimits::default())
                .map(|_| ())
                .unwrap_err()
                .reason,
            RejectReason::MalformedJson
        );
        assert_eq!(
            parse_line(r#"{"response_code":1e400}"#, FormatHint::Auto, &RecordLimits::default())
                .map(|_| ())
                .unwrap_err()
                .reason,
            RejectReason::MalformedJson
        );
        assert_eq!(
            parse_line(r#"{"response_code":-3}"#, FormatHint::Auto, &RecordLimits::default())
                .map(|_| ())
                .unwrap_err()
                .reason,
            RejectReason::InvalidField
        );
    }

    #[test]
    fn wide_deep_and_long_named_bodies_are_refused_before_they_are_built() {
        let limits = RecordLimits::default();
        let reason = |line: &str| {
            parse_line(line, FormatHint::Auto, &limits)
                .map(|_| ())
                .unwrap_err()
                .reason
        };
        let deep = format!(
            "{}1{}",
            r#"{"method":"GET","a":"#.to_string() + &r#"{"a":"#.repeat(12),
            "}".repeat(13)
        );
        assert_eq!(reason(&deep), RejectReason::TooDeep);
        let wide: String = (0..300).map(|i| format!(r#""k{i}":1,"#)).collect();
        assert_eq!(
            reason(&format!(r#"{{{wide}"method":"GET"}}"#)),
            RejectReason::TooManyFields
        );
        let long = "n".repeat(300);
        assert_eq!(
            reason(&format!(r#"{{"method":"GET","{long}":1}}"#)),
            RejectReason::KeyTooLong
        );
        // Each level's name alone is short; together they pass the limit.
        let level = "m".repeat(60);
        let nested =
            format!(r#"{{"method":"GET","{level}":{{"{level}":{{"{level}":{{"{level}":{{"{level}":1}}}}}}}}}}"#);
        assert_eq!(reason(&nested), RejectReason::KeyTooLong);
        let big = format!(r#"{{"method":"GET","x":"{}"}}"#, "y".repeat(70_000));
        assert_eq!(
            crate::normalize::parse_line(&big, FormatHint::Auto, &limits)
                .map(|_| ())
                .unwrap_err()
                .reason,
            RejectReason::RecordTooLarge
        );
    }
}
