//! What one access event says about each attribute a policy can test, read from the columns of
//! an event batch: a value, known absence, or unknown (the telemetry did not record it).
//!
//! The distinction is the point: a plaintext request has no peer principal, so `principals:
//! ["*"]` is false for it; a sidecar record in Istio's default log format does not log the
//! peer principal at all, so the same match is unknown there, never guessed.

use std::net::IpAddr;

use arrow::array::{Array, AsArray, BooleanArray, Int32Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, TimestampNanosecondType};
use verity_model::event::col;

use crate::pattern::parse_logged_ip;

/// What a record says about one attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    Value(&'a str),
    /// Known not to be there (no peer identity on a plaintext request, a header that the log
    /// format records as `-`).
    Absent,
    /// Not recorded.
    Unknown,
}

/// Text attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextAttr {
    /// The peer's SPIFFE id without `spiffe://` (`cluster.local/ns/foo/sa/bar`), as Istio
    /// writes `principals`. mTLS only.
    Principal,
    /// The namespace in the peer's SPIFFE id. mTLS only.
    Namespace,
    /// `ns/<ns>/sa/<sa>` from the peer's SPIFFE id (`serviceAccounts` are compared with it).
    /// mTLS only.
    ServiceAccountPath,
    /// The trust domain of the peer's SPIFFE id. mTLS only.
    TrustDomain,
    /// The JWT principal (`iss/sub`).
    RequestPrincipal,
    /// The `:authority` (host) header.
    Host,
    Method,
    /// The path without its query string.
    Path,
    UserAgent,
    XForwardedFor,
    /// The TLS server name the peer asked for. mTLS only.
    Sni,
}

/// Address attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpAttr {
    /// The direct peer (`ipBlocks`, `source.ip`).
    Source,
    /// The original client (`remoteIpBlocks`, `remote.ip`).
    Remote,
    Destination,
}

/// Which proxy's record this is, as far as enforcement goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Enforcer {
    /// The destination's sidecar (inbound).
    Sidecar,
    /// The destination node's ztunnel (inbound, L4 only).
    Ztunnel,
    /// A waypoint proxy.
    Waypoint,
    /// A record that is not where policies are enforced (a client's sidecar, an outbound
    /// ztunnel record, a gateway), or one its authenticated sender was not a party to (a
    /// forgery, see docs/schema.md "Senders"): not evaluated.
    Elsewhere,
}

/// Borrowed columns of one event batch.
pub struct EventView<'a> {
    rows: usize,
    event_time: Option<&'a TimestampNanosecondArray>,
    reporter: Option<&'a StringArray>,
    direction: Option<&'a StringArray>,
    protocol: Option<&'a StringArray>,
    format: Option<&'a StringArray>,
    mtls: Option<&'a BooleanArray>,
    source_principal: Option<&'a StringArray>,
    source_ip: Option<&'a StringArray>,
    destination_ip: Option<&'a StringArray>,
    destination_port: Option<&'a Int32Array>,
    request_principal: Option<&'a StringArray>,
    method: Option<&'a StringArray>,
    path: Option<&'a StringArray>,
    authority: Option<&'a StringArray>,
    user_agent: Option<&'a StringArray>,
    x_forwarded_for: Option<&'a StringArray>,
    sni: Option<&'a StringArray>,
    pub(crate) destination_namespace: Option<&'a StringArray>,
    pub(crate) destination_workload: Option<&'a StringArray>,
    pub(crate) destination_service: Option<&'a StringArray>,
    pub(crate) decision: Option<&'a StringArray>,
    decision_policy: Option<&'a StringArray>,
    sender_binding: Option<&'a StringArray>,
}

fn text<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch
        .column_by_name(name)
        .filter(|c| c.data_type() == &DataType::Utf8)
        .map(|c| c.as_string::<i32>())
}

pub(crate) fn cell(array: Option<&StringArray>, row: usize) -> Option<&str> {
    array
        .filter(|a| row < a.len() && a.is_valid(row))
        .map(|a| a.value(row))
        .filter(|v| !v.is_empty())
}

impl<'a> EventView<'a> {
    /// Views a batch in the access-event schema. Columns that are missing (a batch built by
    /// hand in a test) read as unknown.
    pub fn new(batch: &'a RecordBatch) -> Self {
        Self {
            rows: batch.num_rows(),
            event_time: batch
                .column_by_name(col::EVENT_TIME)
                .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>()),
            reporter: text(batch, col::REPORTER),
            direction: text(batch, col::DIRECTION),
            protocol: text(batch, col::PROTOCOL),
            format: text(batch, col::FORMAT),
            mtls: batch.column_by_name(col::MTLS).and_then(|c| c.as_boolean_opt()),
            source_principal: text(batch, col::SOURCE_PRINCIPAL),
            source_ip: text(batch, col::SOURCE_IP),
            destination_ip: text(batch, col::DESTINATION_IP),
            destination_port: batch
                .column_by_name(col::DESTINATION_PORT)
                .and_then(|c| c.as_primitive_opt()),
            request_principal: text(batch, col::REQUEST_PRINCIPAL),
            method: text(batch, col::METHOD),
            path: text(batch, col::PATH),
            authority: text(batch, col::AUTHORITY),
            user_agent: text(batch, col::USER_AGENT),
            x_forwarded_for: text(batch, col::X_FORWARDED_FOR),
            sni: text(batch, col::REQUESTED_SERVER_NAME),
            destination_namespace: text(batch, col::DESTINATION_NAMESPACE),
            destination_workload: text(batch, col::DESTINATION_WORKLOAD),
            destination_service: text(batch, col::DESTINATION_SERVICE),
            decision: text(batch, col::DECISION),
            decision_policy: text(batch, col::DECISION_POLICY),
            sender_binding: text(batch, col::SENDER_BINDING),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The record's event time, in nanoseconds since the epoch.
    pub fn event_time_ns(&self, row: usize) -> Option<i64> {
        self.event_time
            .filter(|t| row < t.len() && t.is_valid(row))
            .map(|t| t.value(row))
    }

    /// Whether the record's authenticated sender demonstrably was not a party to the traffic
    /// it reports: a compromised workload writing records about others.
    pub fn forged(&self, row: usize) -> bool {
        cell(self.sender_binding, row) == Some("not_party")
    }

    pub fn enforcer(&self, row: usize) -> Enforcer {
        if self.forged(row) {
            return Enforcer::Elsewhere;
        }
        let inbound = cell(self.direction, row) == Some("inbound");
        match cell(self.reporter, row) {
            Some("destination") => Enforcer::Sidecar,
            Some("ztunnel") if inbound => Enforcer::Ztunnel,
            Some("waypoint") => Enforcer::Waypoint,
            _ => Enforcer::Elsewhere,
        }
    }

    /// Whether the request is HTTP (policies' HTTP-only fields apply), TCP, or unknown.
    pub fn is_http(&self, row: usize) -> Option<bool> {
        if cell(self.reporter, row) == Some("ztunnel") {
            return Some(false);
        }
        match cell(self.protocol, row) {
            Some(p) if p.len() >= 4 && p.get(..4).is_some_and(|h| h.eq_ignore_ascii_case("http")) => Some(true),
            Some(p) if p.eq_ignore_ascii_case("grpc") => Some(true),
            Some(p) if p.eq_ignore_ascii_case("tcp") => Some(false),
            _ if cell(self.method, row).is_some() => Some(true),
            _ => None,
        }
    }

    fn mtls(&self, row: usize) -> Option<bool> {
        self.mtls
            .filter(|a| row < a.len() && a.is_valid(row))
            .map(|a| a.value(row))
    }

    /// Whether the log format writes `-` for a missing header (so a null header column is a
    /// header that was not sent, not one that was not logged).
    fn logs_headers(&self, row: usize) -> bool {
        matches!(
            cell(self.format, row),
            Some("istio_text" | "istio_text_pre19" | "envoy_default")
        )
    }

    fn peer_identity(&self, row: usize) -> Seen<'a> {
        match cell(self.source_principal, row) {
            Some(p) => Seen::Value(p.strip_prefix("spiffe://").unwrap_or(p)),
            None if self.mtls(row) == Some(false) => Seen::Absent,
            None => Seen::Unknown,
        }
    }

    pub fn text(&self, attr: TextAttr, row: usize) -> Seen<'a> {
        let optional = |v: Option<&'a str>| v.map_or(Seen::Unknown, Seen::Value);
        match attr {
            TextAttr::Principal => self.peer_identity(row),
            TextAttr::Namespace => spiffe_part(self.peer_identity(row), |p| {
                let (_, path) = p.split_once('/')?;
                path.strip_prefix("ns/")?.split('/').next()
            }),
            TextAttr::ServiceAccountPath => {
                spiffe_part(self.peer_identity(row), |p| p.split_once('/').map(|(_, path)| path))
            }
            TextAttr::TrustDomain => spiffe_part(self.peer_identity(row), |p| p.split('/').next()),
            TextAttr::RequestPrincipal => optional(cell(self.request_principal, row)),
            TextAttr::Host => optional(cell(self.authority, row)),
            TextAttr::Method => optional(cell(self.method, row)),
            TextAttr::Path => optional(cell(self.path, row).map(|p| p.split(['?', '#']).next().unwrap_or(p))),
            TextAttr::UserAgent | TextAttr::XForwardedFor => {
                let column = if attr == TextAttr::UserAgent {
                    self.user_agent
                } else {
                    self.x_forwarded_for
                };
                match cell(column, row) {
                    Some(v) => Seen::Value(v),
                    None if self.logs_headers(row) => Seen::Absent,
                    None => Seen::Unknown,
                }
            }
            TextAttr::Sni => match cell(self.sni, row) {
                Some(v) => Seen::Value(v),
                None if self.mtls(row) == Some(false) => Seen::Absent,
                None => Seen::Unknown,
            },
        }
    }

    /// `None` when unknown.
    pub fn ip(&self, attr: IpAttr, row: usize) -> Option<IpAddr> {
        match attr {
            IpAttr::Source => cell(self.source_ip, row).and_then(parse_logged_ip),
            IpAttr::Destination => cell(self.destination_ip, row).and_then(parse_logged_ip),
            // Without X-Forwarded-For (L4 traffic, or a format that logs the header and shows
            // none) the original client is the direct peer. With it, which entry counts
            // depends on the gateway's trusted-proxy setting, which no record carries.
            IpAttr::Remote => {
                let no_xff = self.is_http(row) == Some(false)
                    || (cell(self.x_forwarded_for, row).is_none() && self.logs_headers(row));
                if no_xff { self.ip(IpAttr::Source, row) } else { None }
            }
        }
    }

    /// The policy the mesh's denial names (`namespace/name`, or `none` when no ALLOW policy
    /// matched).
    pub fn decision_policy(&self, row: usize) -> Option<&'a str> {
        cell(self.decision_policy, row)
    }

    pub fn destination_port(&self, row: usize) -> Option<i32> {
        self.destination_port
            .filter(|a| row < a.len() && a.is_valid(row))
            .map(|a| a.value(row))
    }
}

fn spiffe_part<'a>(identity: Seen<'a>, part: impl Fn(&'a str) -> Option<&'a str>) -> Seen<'a> {
    match identity {
        Seen::Value(p) => part(p).map_or(Seen::Absent, Seen::Value),
        other => other,
    }
}
