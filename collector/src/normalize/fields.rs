//! Named fields (JSON keys, OTLP attribute keys) mapped onto the event, shared by the JSON
//! normalizer and the OTLP attribute enrichment so both understand the same names.
//!
//! The names understood are listed in `docs/schema.md` ("Attribute and key names"); keys are
//! matched case-insensitively. Keys not listed are kept in the `attributes` column.

use std::borrow::Cow;

use verity_model::event::Text;
use verity_model::time::parse_rfc3339_ns;
use verity_model::{AccessEvent, Direction, Reporter};

use super::{Extras, Rejection};

/// A value as found in JSON or in an OTLP attribute.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

impl<'a> Value<'a> {
    fn text(self) -> Text<'a> {
        match self {
            Value::Str(s) => opt_cow(s),
            Value::Int(i) => Some(Cow::Owned(i.to_string())),
            Value::Float(f) => Some(Cow::Owned(f.to_string())),
            Value::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
            Value::Null => None,
        }
    }

    fn int(self, field: &str, min: i64, max: i64) -> Result<Option<i64>, Rejection> {
        let v = match self {
            Value::Null => return Ok(None),
            Value::Int(i) => i,
            // Whole and well inside i64: the conversion is exact.
            #[allow(clippy::cast_possible_truncation)]
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() && f.abs() < 9.0e15 => f as i64,
            Value::Str(s) => match s.trim() {
                "" | "-" => return Ok(None),
                t => t.parse::<i64>().map_err(|_| Rejection::field(field, t))?,
            },
            other => return Err(Rejection::field(field, &format!("{other:?}"))),
        };
        if (min..=max).contains(&v) {
            Ok(Some(v))
        } else {
            Err(Rejection::field(field, &v.to_string()))
        }
    }

    fn float(self, field: &str) -> Result<Option<f64>, Rejection> {
        let v = match self {
            Value::Null => return Ok(None),
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
            Value::Str(s) => match s.trim() {
                "" | "-" => return Ok(None),
                t => t.parse::<f64>().map_err(|_| Rejection::field(field, t))?,
            },
            other => return Err(Rejection::field(field, &format!("{other:?}"))),
        };
        if v.is_finite() && v >= 0.0 {
            Ok(Some(v))
        } else {
            Err(Rejection::field(field, &v.to_string()))
        }
    }
}

/// `-` and empty strings are Envoy's way of printing "no value".
pub fn opt(s: &str) -> Text<'_> {
    match s {
        "" | "-" => None,
        s => Some(Cow::Borrowed(s)),
    }
}

pub fn opt_cow(s: Cow<'_, str>) -> Text<'_> {
    match &*s {
        "" | "-" => None,
        _ => Some(s),
    }
}

pub const MAX_BYTES: i64 = 1 << 50;
/// A week, in milliseconds: longer "durations" are corrupt data.
pub const MAX_DURATION_MS: f64 = 7.0 * 86_400_000.0;

pub fn status(field: &str, s: &str) -> Result<Option<i32>, Rejection> {
    match s {
        "" | "-" => Ok(None),
        s => match s.parse::<i32>() {
            Ok(0) => Ok(None),
            Ok(v) if (100..=999).contains(&v) => Ok(Some(v)),
            _ => Err(Rejection::field(field, s)),
        },
    }
}

pub fn count(field: &str, s: &str) -> Result<Option<i64>, Rejection> {
    match s {
        "" | "-" => Ok(None),
        s => match s.parse::<i64>() {
            Ok(v) if (0..=MAX_BYTES).contains(&v) => Ok(Some(v)),
            _ => Err(Rejection::field(field, s)),
        },
    }
}

pub fn duration_ms(field: &str, s: &str) -> Result<Option<f64>, Rejection> {
    match s {
        "" | "-" => Ok(None),
        s => match s.parse::<f64>() {
            Ok(v) if v.is_finite() && (0.0..=MAX_DURATION_MS).contains(&v) => Ok(Some(v)),
            _ => Err(Rejection::field(field, s)),
        },
    }
}

/// Splits `ip:port` (or `[v6]:port`, or a bare ip) into its parts.
pub fn split_addr(addr: &str) -> (Option<&str>, Option<i32>) {
    let addr = addr.trim();
    let addr = addr
        .strip_prefix("tcp://")
        .or_else(|| addr.strip_prefix("udp://"))
        .unwrap_or(addr);
    if addr.is_empty() || addr == "-" {
        return (None, None);
    }
    if let Some(rest) = addr.strip_prefix('[')
        && let Some((ip, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse::<u16>().ok());
        return (Some(ip), port.map(i32::from));
    }
    // The last colon, then whether there is another before it, found with `memchr` (every
    // sidecar and ztunnel line has two or three addresses).
    let parts = memchr::memrchr(b':', addr.as_bytes()).and_then(|at| super::split_around(addr, at, 1).ok());
    match parts {
        // A bare IPv6 address has several colons and no port.
        Some((ip, port)) if memchr::memchr(b':', ip.as_bytes()).is_none() => match port.parse::<u16>() {
            Ok(p) => (Some(ip), Some(i32::from(p))),
            Err(_) => (Some(addr), None),
        },
        _ => (Some(addr), None),
    }
}

/// The part `part` picks out of `text`: borrowed from the input when `text` is, so that
/// deriving a column from another (a service from a cluster name) allocates nothing per row.
pub fn sub_cow<'a>(text: &Text<'a>, part: impl for<'s> Fn(&'s str) -> Option<&'s str>) -> Text<'a> {
    match text.as_ref()? {
        Cow::Borrowed(s) => part(s).map(Cow::Borrowed),
        Cow::Owned(s) => part(s).map(|p| Cow::Owned(p.to_string())),
    }
}

/// [`split_addr`] for a value that may be borrowed from the input or owned.
pub fn split_addr_cow<'a>(addr: &Cow<'a, str>) -> (Text<'a>, Option<i32>) {
    match addr {
        Cow::Borrowed(s) => {
            let (ip, port) = split_addr(s);
            (ip.map(Cow::Borrowed), port)
        }
        Cow::Owned(s) => {
            let (ip, port) = split_addr(s);
            (ip.map(|i| Cow::Owned(i.to_string())), port)
        }
    }
}

fn port(field: &str, v: Value<'_>) -> Result<Option<i32>, Rejection> {
    Ok(v.int(field, 0, 65_535)?.and_then(|p| i32::try_from(p).ok()))
}

fn time(field: &str, v: Value<'_>) -> Result<Option<i64>, Rejection> {
    match v {
        Value::Null => Ok(None),
        Value::Str(s) => match s.trim() {
            "" | "-" => Ok(None),
            t => parse_rfc3339_ns(t).map(Some).ok_or_else(|| {
                Rejection::new(
                    super::RejectReason::InvalidTimestamp,
                    format!(
                        "field {field} is not an RFC 3339 time: {:?}",
                        t.chars().take(40).collect::<String>()
                    ),
                )
            }),
        },
        // Epoch milliseconds are a common custom-format choice.
        Value::Int(ms) if (0..9_000_000_000_000).contains(&ms) => Ok(Some(ms.saturating_mul(1_000_000))),
        other => Err(Rejection::field(field, &format!("{other:?}"))),
    }
}

/// What [`apply`] did with a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Mapped,
    Unknown,
}

/// Maps one named value onto the event. Unknown names are left to the caller (kept as
/// attributes); known names with invalid values reject the record.
pub fn apply<'a>(
    ev: &mut AccessEvent<'a>,
    ex: &mut Extras<'a>,
    key: &str,
    value: Value<'a>,
) -> Result<Applied, Rejection> {
    let lower;
    let key = if key.bytes().any(|b| b.is_ascii_uppercase()) {
        lower = key.to_ascii_lowercase();
        lower.as_str()
    } else {
        key
    };
    match key {
        "start_time" | "timestamp" | "@timestamp" | "time" => {
            if let Some(t) = time(key, value)? {
                ev.event_time_ns = t;
            }
        }
        "method" | "request_method" | "http.request.method" | ":method" | "http.method" => set(&mut ev.method, value),
        "path" | "x_envoy_original_path" | "url.path" | "request_path" | "http.target" => set(&mut ev.path, value),
        "protocol" | "request_protocol" | "network.protocol.name" => set(&mut ev.protocol, value),
        "response_code" | "status" | "status_code" | "http.response.status_code" | "http.status_code" => {
            if let Some(v) = value.int(key, 0, 999)? {
                ev.status = if v == 0 { None } else { i32::try_from(v).ok() };
            }
        }
        "response_flags" => set(&mut ev.response_flags, value),
        "response_code_details" => set(&mut ev.response_code_details, value),
        "connection_termination_details" => set(&mut ev.connection_termination_details, value),
        "upstream_transport_failure_reason" => set(&mut ev.upstream_transport_failure_reason, value),
        "bytes_received" | "request_bytes" => {
            if let Some(v) = value.int(key, 0, MAX_BYTES)? {
                ev.bytes_received = Some(v);
            }
        }
        "bytes_sent" | "response_bytes" => {
            if let Some(v) = value.int(key, 0, MAX_BYTES)? {
                ev.bytes_sent = Some(v);
            }
        }
        "duration" | "duration_ms" => {
            if let Some(v) = value.float(key)? {
                if v > MAX_DURATION_MS {
                    return Err(Rejection::field(key, &v.to_string()));
                }
                ev.duration_ms = Some(v);
            }
        }
        "x_forwarded_for" | "x-forwarded-for" => set(&mut ev.x_forwarded_for, value),
        "user_agent" | "user_agent.original" | "user-agent" | "http.user_agent" => set(&mut ev.user_agent, value),
        "request_id" | "x_request_id" | "x-request-id" => set(&mut ev.request_id, value),
        "authority" | ":authority" | "host" | "http.host" => set(&mut ev.authority, value),
        "upstream_host" => set(&mut ev.upstream_host, value),
        "upstream_cluster" | "upstream_cluster_raw" => set(&mut ev.upstream_cluster, value),
        "requested_server_name" | "sni" => set(&mut ev.requested_server_name, value),
        "route_name" => set(&mut ev.route_name, value),
        "downstream_local_address" => set(&mut ex.downstream_local_address, value),
        "downstream_remote_address" | "downstream_peer_address" => set(&mut ex.downstream_remote_address, value),
        "downstream_peer_uri_san" | "peer_uri_san" => {
            ex.peer_san_reported = true;
            set(&mut ex.downstream_peer_uri_san, value)
        }
        "downstream_local_uri_san" | "local_uri_san" => set(&mut ex.downstream_local_uri_san, value),
        "upstream_peer_uri_san" => set(&mut ex.upstream_peer_uri_san, value),
        "x_forwarded_client_cert" | "xfcc" | "x-forwarded-client-cert" => set(&mut ex.x_forwarded_client_cert, value),
        "connection_security_policy" => set(&mut ex.connection_security_policy, value),
        "source_principal" | "source.principal" | "peer_principal" => set(&mut ev.source_principal, value),
        "destination_principal" | "destination.principal" => set(&mut ev.destination_principal, value),
        "request_principal" | "request.auth.principal" | "jwt_principal" => set(&mut ev.request_principal, value),
        "tls_version" | "downstream_tls_version" | "tls.version" => set(&mut ev.tls_version, value),
        "mtls" => match value {
            Value::Bool(b) => ev.mtls = Some(b),
            Value::Str(s) if s.eq_ignore_ascii_case("true") => ev.mtls = Some(true),
            Value::Str(s) if s.eq_ignore_ascii_case("false") => ev.mtls = Some(false),
            _ => {}
        },
        "source_workload" => set(&mut ev.source_workload, value),
        "source_namespace" | "source_workload_namespace" => set(&mut ev.source_namespace, value),
        "source_ip" | "source.address" | "client.address" => set(&mut ev.source_ip, value),
        "source_port" | "source.port" | "client.port" => {
            if let Some(p) = port(key, value)? {
                ev.source_port = Some(p);
            }
        }
        "destination_workload" => set(&mut ev.destination_workload, value),
        "destination_namespace" | "destination_workload_namespace" => set(&mut ev.destination_namespace, value),
        "destination_ip" | "destination.address" | "server.address" => set(&mut ev.destination_ip, value),
        "destination_port" | "destination.port" | "server.port" => {
            if let Some(p) = port(key, value)? {
                ev.destination_port = Some(p);
            }
        }
        "destination_service" | "destination_service_name" => set(&mut ev.destination_service, value),
        "pod" | "pod_name" | "k8s.pod.name" => set(&mut ex.pod, value),
        "namespace" | "pod_namespace" | "k8s.namespace.name" => set(&mut ex.pod_namespace, value),
        "reporter" => {
            if let Some(r) = value.text() {
                ev.reporter = match &*r {
                    "source" => Reporter::Source,
                    "destination" => Reporter::Destination,
                    "waypoint" => Reporter::Waypoint,
                    "ztunnel" => Reporter::Ztunnel,
                    "gateway" => Reporter::Gateway,
                    other => return Err(Rejection::field(key, other)),
                };
            }
        }
        "direction" => {
            if let Some(d) = value.text() {
                ev.direction = parse_direction(&d).ok_or_else(|| Rejection::field(key, &d))?;
            }
        }
        "cluster" | "cluster_id" | "k8s.cluster.name" | "istio.cluster_id" => set(&mut ev.cluster, value),
        "mesh_id" | "mesh" | "istio.mesh_id" => set(&mut ev.mesh_id, value),
        "trace_id" | "traceid" => set(&mut ev.trace_id, value),
        "span_id" | "spanid" => set(&mut ev.span_id, value),
        _ => return Ok(Applied::Unknown),
    }
    Ok(Applied::Mapped)
}

pub fn parse_direction(s: &str) -> Option<Direction> {
    match s.to_ascii_lowercase().as_str() {
        "inbound" => Some(Direction::Inbound),
        "outbound" => Some(Direction::Outbound),
        "unknown" | "" | "-" => Some(Direction::Unknown),
        _ => None,
    }
}

fn set<'a>(slot: &mut Text<'a>, value: Value<'a>) {
    if let Some(v) = value.text() {
        *slot = Some(v);
    }
}

/// Collects keys that [`apply`] did not map, rendered as one JSON object.
#[derive(Default)]
pub struct UnknownAttrs(serde_json::Map<String, serde_json::Value>);

impl UnknownAttrs {
    pub fn insert(&mut self, key: &str, value: serde_json::Value) {
        self.0.insert(key.to_string(), value);
    }

    pub fn into_json(self) -> Option<String> {
        if self.0.is_empty() {
            None
        } else {
            serde_json::to_string(&self.0).ok()
        }
    }
}

pub fn value_to_json(v: &Value<'_>) -> serde_json::Value {
    match v {
        Value::Str(s) => serde_json::Value::String(s.to_string()),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Null => serde_json::Value::Null,
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    /// A part of text borrowed from the line stays borrowed (no allocation per row); a part
    /// of text the normalizer had to build is copied out of it.
    #[test]
    fn parts_borrow_from_borrowed_text() {
        fn host(s: &str) -> Option<&str> {
            s.rsplit('|').next().filter(|h| !h.is_empty())
        }
        let line = String::from("outbound|80||pay.svc");
        let borrowed: Text<'_> = Some(Cow::Borrowed(&line));
        assert!(matches!(sub_cow(&borrowed, host), Some(Cow::Borrowed("pay.svc"))));
        let owned: Text<'_> = Some(Cow::Owned(line.clone()));
        assert_eq!(sub_cow(&owned, host), Some(Cow::Owned("pay.svc".to_string())));
        assert_eq!(sub_cow(&None, host), None);
        assert_eq!(sub_cow(&Some(Cow::Borrowed("inbound|80||")), host), None);
    }

    #[test]
    fn splits_addresses() {
        assert_eq!(split_addr("10.0.0.1:80"), (Some("10.0.0.1"), Some(80)));
        assert_eq!(split_addr("[fd00::1]:8080"), (Some("fd00::1"), Some(8080)));
        assert_eq!(split_addr("fd00::1"), (Some("fd00::1"), None));
        assert_eq!(split_addr("tcp://10.0.2.1:80"), (Some("10.0.2.1"), Some(80)));
        assert_eq!(split_addr("-"), (None, None));
        assert_eq!(split_addr("10.0.0.1:99999"), (Some("10.0.0.1:99999"), None));
        assert_eq!(split_addr(":80"), (Some(""), Some(80)));
        assert_eq!(split_addr("é:1"), (Some("é"), Some(1)));
    }

    /// `split_addr` as it was written with `rsplit_once` and `contains`: the oracle for the
    /// `memchr` version.
    fn split_addr_by_rsplit(addr: &str) -> (Option<&str>, Option<i32>) {
        let addr = addr.trim();
        let addr = addr
            .strip_prefix("tcp://")
            .or_else(|| addr.strip_prefix("udp://"))
            .unwrap_or(addr);
        if addr.is_empty() || addr == "-" {
            return (None, None);
        }
        if let Some(rest) = addr.strip_prefix('[')
            && let Some((ip, tail)) = rest.split_once(']')
        {
            let port = tail.strip_prefix(':').and_then(|p| p.parse::<u16>().ok());
            return (Some(ip), port.map(i32::from));
        }
        match addr.rsplit_once(':') {
            Some((ip, port)) if !ip.contains(':') => match port.parse::<u16>() {
                Ok(p) => (Some(ip), Some(i32::from(p))),
                Err(_) => (Some(addr), None),
            },
            _ => (Some(addr), None),
        }
    }

    proptest::proptest! {
        /// An address splits where `rsplit_once(':')` splits it, a port only when no other
        /// colon comes before it: on any text, schemes, brackets and multi-byte characters
        /// included.
        #[test]
        fn addresses_split_as_rsplit_once_splits_them(s in "(tcp://)?[0-9a:\\[\\]é -]{0,24}") {
            proptest::prop_assert_eq!(split_addr(&s), split_addr_by_rsplit(&s));
        }
    }

    #[test]
    fn rejects_absurd_numbers() {
        assert!(status("response_code", "70000").is_err());
        assert!(status("response_code", "abc").is_err());
        assert_eq!(status("response_code", "0"), Ok(None));
        assert!(count("bytes_sent", "-5").is_err());
        assert!(duration_ms("duration", "1e300").is_err());
        let mut ev = AccessEvent::default();
        let mut ex = Extras::default();
        assert!(apply(&mut ev, &mut ex, "response_code", Value::Int(-1)).is_err());
        assert!(apply(&mut ev, &mut ex, "source_port", Value::Int(70_000)).is_err());
        assert_eq!(
            apply(&mut ev, &mut ex, "Response_Code", Value::Str("404".into())),
            Ok(Applied::Mapped)
        );
        assert_eq!(ev.status, Some(404));
    }
}
