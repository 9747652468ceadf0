//! OTLP log records (Envoy's OpenTelemetry access logger, or any shipper) to access events.
//!
//! The body is parsed first (a text line in any supported layout, or a key/value map); then
//! resource attributes and record attributes, in that order, enrich or override fields using
//! the names in [`super::fields`]. A record with no body is built from its attributes alone.
//!
//! A resource is prepared once for all of its records ([`Resource::prepare`]): its attributes
//! are checked against the limits, and those Verity does not map are rendered once and shared
//! by every record (`resource_attributes`), so a large resource over many small records costs
//! its size once, not once per record.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use verity_model::{AccessEvent, InputFormat};

use super::fields::{self, Value};
use super::limits::RecordLimits;
use super::{Ctx, Extras, FormatHint, RejectReason, Rejection, envoy_json};

/// The attributes of one OTLP resource, checked and split once for all of its records.
#[derive(Debug, Default)]
pub struct Resource<'a> {
    /// The attributes Verity maps to columns, applied to each record.
    mapped: Vec<&'a KeyValue>,
    /// The others, as one JSON object shared by every record.
    unmapped: Option<Arc<str>>,
}

impl<'a> Resource<'a> {
    /// Checks `attributes` against the limits before anything is copied, then splits them.
    pub fn prepare(attributes: &'a [KeyValue], limits: &RecordLimits) -> Result<Self, Rejection> {
        super::guarded(|| {
            check_attributes("the resource", attributes, limits)?;
            let mut mapped = Vec::new();
            let mut unmapped = fields::UnknownAttrs::default();
            let (mut scratch, mut scratch_extras) = (AccessEvent::default(), Extras::default());
            for kv in attributes {
                // Whether a name is mapped depends on the name only; a value the mapping
                // refuses is mapped too, so it rejects each record as it did before.
                match fields::apply(
                    &mut scratch,
                    &mut scratch_extras,
                    &kv.key,
                    any_to_value(kv.value.as_ref()),
                ) {
                    Ok(fields::Applied::Unknown) => unmapped.insert(&kv.key, any_json(kv.value.as_ref())),
                    Ok(fields::Applied::Mapped) | Err(_) => mapped.push(kv),
                }
            }
            Ok(Self {
                mapped,
                unmapped: unmapped.into_json().map(Arc::from),
            })
        })
    }

    /// Bytes of the shared part, stored once per batch whatever the number of records.
    pub fn shared_bytes(&self) -> usize {
        self.unmapped.as_deref().map_or(0, str::len)
    }
}

/// Normalizes one record of `resource` behind the panic boundary ([`super::guarded`]).
pub fn normalize<'a>(record: &'a LogRecord, resource: &Resource<'a>, ctx: &Ctx) -> Result<AccessEvent<'a>, Rejection> {
    super::guarded(|| normalize_unguarded(record, resource, ctx))
}

fn normalize_unguarded<'a>(
    record: &'a LogRecord,
    resource: &Resource<'a>,
    ctx: &Ctx,
) -> Result<AccessEvent<'a>, Rejection> {
    let limits = &ctx.limits;
    check_attributes("the record", &record.attributes, limits)?;
    let body = record.body.as_ref().and_then(|b| b.value.as_ref());
    let (mut ev, mut ex) = match body {
        Some(Any::StringValue(s)) if !s.trim().is_empty() => super::parse_line(s, FormatHint::Auto, limits)?,
        Some(Any::BytesValue(b)) if !b.is_empty() => {
            limits.record_bytes("the body", b.len())?;
            let s = std::str::from_utf8(b)
                .map_err(|e| Rejection::new(RejectReason::InvalidUtf8, format!("bytes body is not UTF-8: {e}")))?;
            super::parse_line(s, FormatHint::Auto, limits)?
        }
        Some(Any::KvlistValue(kv)) => {
            let mut fields = 0usize;
            check_kvlist(&kv.values, 1, limits, &mut fields)?;
            let pairs = kv
                .values
                .iter()
                .map(|k| (k.key.clone(), any_to_value(k.value.as_ref())))
                .collect();
            let raw = serde_json::to_string(&kvlist_json(&kv.values)).unwrap_or_default();
            envoy_json::from_pairs(pairs, Cow::Owned(raw), FormatHint::Auto)?
        }
        None | Some(Any::StringValue(_)) | Some(Any::BytesValue(_)) => {
            if record.attributes.is_empty() {
                return Err(Rejection::new(
                    RejectReason::MissingBody,
                    "log record has neither a body nor attributes",
                ));
            }
            let raw = serde_json::to_string(&kvlist_json(&record.attributes)).unwrap_or_default();
            let ev = AccessEvent {
                format: InputFormat::OtelAttributes,
                raw: Cow::Owned(raw),
                ..Default::default()
            };
            (ev, Extras::default())
        }
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::UnrecognizedFormat,
                format!("log body of type {} is not an access log", any_kind(other)),
            ));
        }
    };

    let mut unknown = fields::UnknownAttrs::default();
    let mut mapped = 0usize;
    for kv in resource.mapped.iter().copied().chain(record.attributes.iter()) {
        let value = any_to_value(kv.value.as_ref());
        match fields::apply(&mut ev, &mut ex, &kv.key, value.clone())? {
            fields::Applied::Mapped => mapped = mapped.saturating_add(1),
            fields::Applied::Unknown => unknown.insert(&kv.key, any_json(kv.value.as_ref())),
        }
    }
    if ev.format == InputFormat::OtelAttributes && mapped == 0 {
        return Err(Rejection::new(
            RejectReason::MissingBody,
            "log record has no body and no access-log attributes Verity understands",
        ));
    }
    merge_attributes(&mut ev, unknown);
    ev.resource_attributes = resource.unmapped.clone();

    if ev.event_time_ns == 0 {
        let t = if record.time_unix_nano != 0 {
            record.time_unix_nano
        } else {
            record.observed_time_unix_nano
        };
        if t != 0 {
            ev.event_time_ns = i64::try_from(t).map_err(|_| {
                Rejection::new(
                    RejectReason::InvalidTimestamp,
                    format!("time_unix_nano {t} is out of range"),
                )
            })?;
        }
    }
    if ev.trace_id.is_none() && record.trace_id.iter().any(|b| *b != 0) {
        ev.trace_id = Some(Cow::Owned(hex(&record.trace_id)));
    }
    if ev.span_id.is_none() && record.span_id.iter().any(|b| *b != 0) {
        ev.span_id = Some(Cow::Owned(hex(&record.span_id)));
    }
    super::finish(&mut ev, &ex, ctx);
    Ok(ev)
}

/// Attributes (of a record or of its resource) within the limits: how many, how long their
/// names, and how large and deep their values, checked before any of them is copied.
fn check_attributes(what: &str, attributes: &[KeyValue], limits: &RecordLimits) -> Result<(), Rejection> {
    limits.attributes(what, attributes.len())?;
    let mut fields = 0usize;
    for kv in attributes {
        limits.key(kv.key.len())?;
        if let Some(v) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            check_value(v, 1, limits, &mut fields)?;
        }
    }
    Ok(())
}

/// A resource's attributes within the limits: the check of [`Resource::prepare`], for
/// resources whose attributes are applied to each data point (metrics).
pub fn check_resource(resource: &[KeyValue], limits: &RecordLimits) -> Result<(), Rejection> {
    check_attributes("the resource", resource, limits)
}

/// A metric data point's attributes within the limits.
pub fn check_point_attributes(attributes: &[KeyValue], limits: &RecordLimits) -> Result<(), Rejection> {
    check_attributes("the data point", attributes, limits)
}

/// A key/value body: every name, every value, and the count of fields at every level.
fn check_kvlist(values: &[KeyValue], depth: usize, limits: &RecordLimits, fields: &mut usize) -> Result<(), Rejection> {
    limits.depth(depth)?;
    for kv in values {
        *fields = fields.saturating_add(1);
        limits.fields(*fields)?;
        limits.key(kv.key.len())?;
        if let Some(v) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            check_value(v, depth, limits, fields)?;
        }
    }
    Ok(())
}

fn check_value(v: &Any, depth: usize, limits: &RecordLimits, fields: &mut usize) -> Result<(), Rejection> {
    match v {
        Any::StringValue(s) => limits.record_bytes("a value", s.len()),
        Any::BytesValue(b) => limits.record_bytes("a value", b.len()),
        Any::KvlistValue(kv) => check_kvlist(&kv.values, depth.saturating_add(1), limits, fields),
        Any::ArrayValue(a) => {
            limits.depth(depth.saturating_add(1))?;
            for item in &a.values {
                *fields = fields.saturating_add(1);
                limits.fields(*fields)?;
                if let Some(v) = item.value.as_ref() {
                    check_value(v, depth.saturating_add(1), limits, fields)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn merge_attributes(ev: &mut AccessEvent<'_>, extra: fields::UnknownAttrs) {
    let Some(extra) = extra.into_json() else { return };
    ev.attributes = match ev.attributes.take() {
        None => Some(extra),
        Some(existing) => {
            let mut a: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&existing).unwrap_or_default();
            let b: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&extra).unwrap_or_default();
            a.extend(b);
            serde_json::to_string(&a).ok()
        }
    };
}

pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len().saturating_mul(2));
    for byte in b {
        for nibble in [byte >> 4, byte & 0xf] {
            s.push(DIGITS.get(usize::from(nibble)).map_or('0', |d| char::from(*d)));
        }
    }
    s
}

fn any_kind(v: &Any) -> &'static str {
    match v {
        Any::StringValue(_) => "string",
        Any::BoolValue(_) => "bool",
        Any::IntValue(_) => "int",
        Any::DoubleValue(_) => "double",
        Any::ArrayValue(_) => "array",
        Any::KvlistValue(_) => "kvlist",
        Any::BytesValue(_) => "bytes",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

pub fn any_to_value(v: Option<&AnyValue>) -> Value<'_> {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => Value::Str(Cow::Borrowed(s)),
        Some(Any::IntValue(i)) => Value::Int(*i),
        Some(Any::DoubleValue(d)) => Value::Float(*d),
        Some(Any::BoolValue(b)) => Value::Bool(*b),
        Some(other) => Value::Str(Cow::Owned(any_json_inner(other).to_string())),
        None => Value::Null,
    }
}

pub fn any_json(v: Option<&AnyValue>) -> serde_json::Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(inner) => any_json_inner(inner),
        None => serde_json::Value::Null,
    }
}

fn any_json_inner(v: &Any) -> serde_json::Value {
    match v {
        Any::StringValue(s) => serde_json::Value::String(s.clone()),
        Any::BoolValue(b) => serde_json::Value::Bool(*b),
        Any::IntValue(i) => serde_json::Value::from(*i),
        Any::DoubleValue(d) => serde_json::Number::from_f64(*d)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Any::ArrayValue(a) => serde_json::Value::Array(a.values.iter().map(|v| any_json(Some(v))).collect()),
        Any::KvlistValue(kv) => serde_json::Value::Object(kvlist_json(&kv.values)),
        Any::BytesValue(b) => serde_json::Value::String(hex(b)),
        #[allow(unreachable_patterns)]
        _ => serde_json::Value::Null,
    }
}

pub fn kvlist_json(kvs: &[KeyValue]) -> serde_json::Map<String, serde_json::Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_json(kv.value.as_ref())))
        .collect()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use verity_model::event::IngestSource;
    use verity_model::{Decision, Direction};

    fn s(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Any::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    const INBOUND: &str = r#"[2024-03-01T10:00:00.000Z] "GET /admin HTTP/1.1" 403 - rbac_access_denied_matched_policy[none] - "-" 0 19 0 - "-" "curl/8.0" "r1" "pay:8080" "-" inbound|8080|| - 10.0.0.5:8080 10.0.0.9:40000 outbound_.8080_._.pay.pay.svc.cluster.local -"#;

    #[test]
    fn attributes_enrich_the_parsed_body() {
        let record = LogRecord {
            time_unix_nano: 5,
            body: Some(AnyValue {
                value: Some(Any::StringValue(INBOUND.into())),
            }),
            attributes: vec![
                s("source_principal", "spiffe://cluster.local/ns/shop/sa/cart"),
                s("tls_version", "TLSv1.3"),
                s("pod", "pay-7d9"),
                s("team", "payments"),
            ],
            trace_id: vec![0xab; 16],
            ..Default::default()
        };
        let attrs = vec![s("k8s.cluster.name", "prod-eu"), s("host.name", "node-3")];
        let resource = Resource::prepare(&attrs, &RecordLimits::default()).expect("resource");
        let ev = normalize(&record, &resource, &Ctx::now(IngestSource::OtlpGrpc)).expect("normalize");
        assert_eq!(ev.direction, Direction::Inbound);
        assert_eq!(
            ev.source_principal.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/cart")
        );
        assert_eq!(ev.mtls, Some(true));
        assert_eq!(ev.decision, Decision::DenyRbac);
        assert_eq!(ev.decision_policy.as_deref(), Some("none"));
        assert_eq!(ev.destination_workload.as_deref(), Some("pay-7d9"));
        assert_eq!(ev.destination_service.as_deref(), Some("pay.pay.svc.cluster.local"));
        assert_eq!(ev.cluster.as_deref(), Some("prod-eu"));
        assert_eq!(ev.tls_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(ev.attributes.as_deref(), Some(r#"{"team":"payments"}"#));
        assert_eq!(ev.resource_attributes.as_deref(), Some(r#"{"host.name":"node-3"}"#));
        let again = normalize(&record, &resource, &Ctx::now(IngestSource::OtlpGrpc)).expect("normalize");
        assert!(
            std::sync::Arc::ptr_eq(
                ev.resource_attributes.as_ref().expect("shared"),
                again.resource_attributes.as_ref().expect("shared")
            ),
            "records of one resource share its rendered attributes"
        );
        assert_eq!(ev.trace_id.as_deref(), Some("abababababababababababababababab"));
        assert_eq!(ev.event_time_ns, 1_709_287_200_000_000_000, "body time wins");
    }

    #[test]
    fn bodies_that_are_not_access_logs_are_rejected() {
        let record = LogRecord {
            body: Some(AnyValue {
                value: Some(Any::StringValue("Example log record".into())),
            }),
            ..Default::default()
        };
        let err = normalize(&record, &Resource::default(), &Ctx::now(IngestSource::OtlpHttp)).unwrap_err();
        assert_eq!(err.reason, RejectReason::UnrecognizedFormat);
        let empty = LogRecord::default();
        assert_eq!(
            normalize(&empty, &Resource::default(), &Ctx::now(IngestSource::OtlpHttp))
                .unwrap_err()
                .reason,
            RejectReason::MissingBody
        );
    }

    #[test]
    fn attribute_only_records() {
        let record = LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000,
            attributes: vec![
                s("method", "GET"),
                s("response_code", "200"),
                s("upstream_cluster", "outbound|80||web.shop.svc.cluster.local"),
            ],
            ..Default::default()
        };
        let ev = normalize(&record, &Resource::default(), &Ctx::now(IngestSource::OtlpHttp)).expect("normalize");
        assert_eq!(ev.format, InputFormat::OtelAttributes);
        assert_eq!(ev.event_time_ns, 1_700_000_000_000_000_000);
        assert_eq!(ev.destination_namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn attributes_and_key_value_bodies_past_the_limits_are_rejected() {
        let ctx = Ctx::now(IngestSource::OtlpHttp);
        let many: Vec<KeyValue> = (0..200).map(|i| s(&format!("k{i}"), "v")).collect();
        let record = LogRecord {
            attributes: many.clone(),
            ..Default::default()
        };
        assert_eq!(
            normalize(&record, &Resource::default(), &ctx).unwrap_err().reason,
            RejectReason::TooManyFields
        );
        assert_eq!(
            Resource::prepare(&many, &ctx.limits).unwrap_err().reason,
            RejectReason::TooManyFields
        );
        let mut nested = AnyValue {
            value: Some(Any::StringValue("GET".into())),
        };
        for _ in 0..12 {
            nested = AnyValue {
                value: Some(Any::KvlistValue(opentelemetry_proto::tonic::common::v1::KeyValueList {
                    values: vec![KeyValue {
                        key: "method".into(),
                        value: Some(nested),
                        ..Default::default()
                    }],
                })),
            };
        }
        let deep = LogRecord {
            body: Some(nested),
            ..Default::default()
        };
        assert_eq!(
            normalize(&deep, &Resource::default(), &ctx).unwrap_err().reason,
            RejectReason::TooDeep
        );
        let long_value = LogRecord {
            attributes: vec![s("method", "GET"), s("x", &"y".repeat(70_000))],
            ..Default::default()
        };
        assert_eq!(
            normalize(&long_value, &Resource::default(), &ctx).unwrap_err().reason,
            RejectReason::RecordTooLarge
        );
    }
}
