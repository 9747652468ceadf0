//! What an OTLP request will cost once decoded, measured on its encoded bytes before it is
//! decoded. Protobuf multiplies memory: an empty log record is 2 bytes on the wire and a
//! ~200-byte struct in memory, so a request of 8 MiB of empty records would decode into
//! ~800 MiB. The walk below follows the OTLP message tree (only the fields that are messages
//! or strings matter), adds each message's in-memory size and each string's length, and
//! stops as soon as the total passes the limit, so the request is refused (413 /
//! RESOURCE_EXHAUSTED) before any of it is decoded.
//!
//! For OTLP/JSON the same bound is taken from the number of JSON objects (outside strings),
//! each counted at the size of the largest OTLP message.

#![deny(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]

use std::mem::size_of;

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, exponential_histogram_data_point,
    summary_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// The OTLP messages whose fields hold other messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    LogsRequest,
    MetricsRequest,
    ResourceLogs,
    ResourceMetrics,
    Resource,
    ScopeLogs,
    ScopeMetrics,
    Scope,
    LogRecord,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    Metric,
    Gauge,
    Sum,
    Histogram,
    ExponentialHistogram,
    Summary,
    NumberDataPoint,
    HistogramDataPoint,
    ExponentialHistogramDataPoint,
    Buckets,
    SummaryDataPoint,
    ValueAtQuantile,
    Exemplar,
}

impl Msg {
    fn size(self) -> usize {
        match self {
            Msg::LogsRequest | Msg::MetricsRequest => 0,
            Msg::ResourceLogs => size_of::<ResourceLogs>(),
            Msg::ResourceMetrics => size_of::<ResourceMetrics>(),
            Msg::Resource => size_of::<Resource>(),
            Msg::ScopeLogs => size_of::<ScopeLogs>(),
            Msg::ScopeMetrics => size_of::<ScopeMetrics>(),
            Msg::Scope => size_of::<InstrumentationScope>(),
            Msg::LogRecord => size_of::<LogRecord>(),
            Msg::KeyValue => size_of::<KeyValue>(),
            Msg::AnyValue => size_of::<AnyValue>(),
            Msg::ArrayValue => size_of::<ArrayValue>(),
            Msg::KeyValueList => size_of::<KeyValueList>(),
            Msg::Metric => size_of::<Metric>(),
            Msg::Gauge => size_of::<Gauge>(),
            Msg::Sum => size_of::<Sum>(),
            Msg::Histogram => size_of::<Histogram>(),
            Msg::ExponentialHistogram => size_of::<ExponentialHistogram>(),
            Msg::Summary => size_of::<Summary>(),
            Msg::NumberDataPoint => size_of::<NumberDataPoint>(),
            Msg::HistogramDataPoint => size_of::<HistogramDataPoint>(),
            Msg::ExponentialHistogramDataPoint => size_of::<ExponentialHistogramDataPoint>(),
            Msg::Buckets => size_of::<exponential_histogram_data_point::Buckets>(),
            Msg::SummaryDataPoint => size_of::<SummaryDataPoint>(),
            Msg::ValueAtQuantile => size_of::<summary_data_point::ValueAtQuantile>(),
            Msg::Exemplar => size_of::<Exemplar>(),
        }
    }

    /// The message a length-delimited field holds, by the OTLP .proto field numbers; None
    /// for strings, bytes and packed numbers.
    fn child(self, field: u64) -> Option<Msg> {
        Some(match (self, field) {
            (Msg::LogsRequest, 1) => Msg::ResourceLogs,
            (Msg::MetricsRequest, 1) => Msg::ResourceMetrics,
            (Msg::ResourceLogs | Msg::ResourceMetrics, 1) => Msg::Resource,
            (Msg::ResourceLogs, 2) => Msg::ScopeLogs,
            (Msg::ResourceMetrics, 2) => Msg::ScopeMetrics,
            (Msg::Resource, 1) => Msg::KeyValue,
            (Msg::ScopeLogs | Msg::ScopeMetrics, 1) => Msg::Scope,
            (Msg::ScopeLogs, 2) => Msg::LogRecord,
            (Msg::ScopeMetrics, 2) => Msg::Metric,
            (Msg::Scope, 3) => Msg::KeyValue,
            (Msg::LogRecord, 5) => Msg::AnyValue,
            (Msg::LogRecord, 6) => Msg::KeyValue,
            (Msg::KeyValue, 2) => Msg::AnyValue,
            (Msg::AnyValue, 5) => Msg::ArrayValue,
            (Msg::AnyValue, 6) => Msg::KeyValueList,
            (Msg::ArrayValue, 1) => Msg::AnyValue,
            (Msg::KeyValueList, 1) => Msg::KeyValue,
            (Msg::Metric, 5) => Msg::Gauge,
            (Msg::Metric, 7) => Msg::Sum,
            (Msg::Metric, 9) => Msg::Histogram,
            (Msg::Metric, 10) => Msg::ExponentialHistogram,
            (Msg::Metric, 11) => Msg::Summary,
            (Msg::Metric, 12) => Msg::KeyValue,
            (Msg::Gauge | Msg::Sum, 1) => Msg::NumberDataPoint,
            (Msg::Histogram, 1) => Msg::HistogramDataPoint,
            (Msg::ExponentialHistogram, 1) => Msg::ExponentialHistogramDataPoint,
            (Msg::Summary, 1) => Msg::SummaryDataPoint,
            (Msg::NumberDataPoint, 7) => Msg::KeyValue,
            (Msg::NumberDataPoint, 5) => Msg::Exemplar,
            (Msg::HistogramDataPoint, 9) => Msg::KeyValue,
            (Msg::HistogramDataPoint, 8) => Msg::Exemplar,
            (Msg::ExponentialHistogramDataPoint, 1) => Msg::KeyValue,
            (Msg::ExponentialHistogramDataPoint, 8 | 9) => Msg::Buckets,
            (Msg::ExponentialHistogramDataPoint, 11) => Msg::Exemplar,
            (Msg::SummaryDataPoint, 7) => Msg::KeyValue,
            (Msg::SummaryDataPoint, 6) => Msg::ValueAtQuantile,
            (Msg::Exemplar, 7) => Msg::KeyValue,
            _ => return None,
        })
    }
}

/// Deeper than prost decodes; a message nested deeper is malformed anyway.
const MAX_DEPTH: usize = 100;

/// The decoded size of protobuf `buf` holding a `root` message, or None when it passes
/// `limit` (the walk stops there). Malformed bytes are measured as far as they go: the
/// decoder reports them.
pub fn protobuf(buf: &[u8], root: Msg, limit: usize) -> Option<usize> {
    let mut total = 0usize;
    match walk(buf, root, 0, &mut total, limit) {
        Walk::OverLimit => None,
        Walk::Done | Walk::Malformed => Some(total),
    }
}

enum Walk {
    Done,
    OverLimit,
    Malformed,
}

fn walk(mut buf: &[u8], msg: Msg, depth: usize, total: &mut usize, limit: usize) -> Walk {
    if depth > MAX_DEPTH {
        return Walk::Malformed;
    }
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else {
            return Walk::Malformed;
        };
        let field = key >> 3;
        match key & 7 {
            0 => {
                if varint(&mut buf).is_none() {
                    return Walk::Malformed;
                }
            }
            1 => match buf.get(8..) {
                Some(rest) => buf = rest,
                None => return Walk::Malformed,
            },
            5 => match buf.get(4..) {
                Some(rest) => buf = rest,
                None => return Walk::Malformed,
            },
            2 => {
                let Some(len) = varint(&mut buf).and_then(|l| usize::try_from(l).ok()) else {
                    return Walk::Malformed;
                };
                let (Some(inner), Some(rest)) = (buf.get(..len), buf.get(len..)) else {
                    return Walk::Malformed;
                };
                buf = rest;
                match msg.child(field) {
                    Some(child) => {
                        *total = total.saturating_add(child.size());
                        if *total > limit {
                            return Walk::OverLimit;
                        }
                        match walk(inner, child, depth.saturating_add(1), total, limit) {
                            Walk::Done => {}
                            other => return other,
                        }
                    }
                    None => *total = total.saturating_add(len),
                }
                if *total > limit {
                    return Walk::OverLimit;
                }
            }
            _ => return Walk::Malformed,
        }
    }
    Walk::Done
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in [0u32, 7, 14, 21, 28, 35, 42, 49, 56, 63] {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The decoded size of an OTLP/JSON body, bounded from above: every object (outside
/// strings) counted at the size of the largest OTLP message, plus the body's length; None
/// when that passes `limit`.
pub fn json(body: &[u8], limit: usize) -> Option<usize> {
    let per_object = [
        size_of::<LogRecord>(),
        size_of::<HistogramDataPoint>(),
        size_of::<ExponentialHistogramDataPoint>(),
        size_of::<Metric>(),
    ]
    .into_iter()
    .max()
    .unwrap_or(256);
    let mut total = body.len();
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => {
                total = total.saturating_add(per_object);
                if total > limit {
                    return None;
                }
            }
            _ => {}
        }
    }
    (total <= limit).then_some(total)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use prost::Message;

    fn request(records: Vec<LogRecord>) -> Vec<u8> {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn empty_records_are_counted_at_their_decoded_size() {
        let bytes = request(vec![LogRecord::default(); 1000]);
        assert!(bytes.len() < 2100);
        let size = protobuf(&bytes, Msg::LogsRequest, usize::MAX).expect("measured");
        assert!(size >= 1000 * size_of::<LogRecord>(), "{size}");
        assert_eq!(protobuf(&bytes, Msg::LogsRequest, 10_000), None);
    }

    #[test]
    fn a_real_request_measures_close_to_what_it_decodes_into() {
        let record = LogRecord {
            body: Some(AnyValue {
                value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                    "x".repeat(300),
                )),
            }),
            ..Default::default()
        };
        let bytes = request(vec![record; 10]);
        let size = protobuf(&bytes, Msg::LogsRequest, usize::MAX).expect("measured");
        let expected = 10 * (size_of::<LogRecord>() + size_of::<AnyValue>() + 300);
        assert!(size >= expected && size < expected + 1000, "{size} vs {expected}");
    }

    #[test]
    fn malformed_bytes_are_left_to_the_decoder() {
        assert!(protobuf(&[0x0a, 0xff], Msg::LogsRequest, 10).is_some());
        assert!(protobuf(&[0x0b], Msg::LogsRequest, 10).is_some());
    }

    #[test]
    fn json_objects_outside_strings_are_counted() {
        let per = json(b"{}", usize::MAX).expect("measured") - 2;
        let body = br#"{"a":"{{{{\"}}","b":[{},{}]}"#;
        assert_eq!(json(body, usize::MAX), Some(body.len() + 3 * per));
        assert_eq!(json(body, body.len() + per), None);
    }
}
