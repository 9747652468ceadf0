//! The canonical access-event schema: one row per request or connection seen by one proxy.
//!
//! Enumerated columns (`reporter`, `direction`, `decision`, `source`, `format`) are plain UTF-8
//! strings with a fixed set of values so that rule expressions can compare them with string
//! literals (`decision = 'deny_rbac'`). `mtls` is a nullable boolean: null means the telemetry
//! could not tell (unknown), which rules must treat differently from `false`.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, DictionaryArray, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

/// An optional text field, borrowed from the input where possible.
pub type Text<'a> = Option<Cow<'a, str>>;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            #[default]
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order (for metric label sets and docs).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as it appears in the Arrow column and in metric labels.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// Which proxy wrote the record.
    Reporter {
        Unknown => "unknown",
        Source => "source",
        Destination => "destination",
        Waypoint => "waypoint",
        Ztunnel => "ztunnel",
        Gateway => "gateway",
    }
}

string_enum! {
    /// Direction of the traffic relative to the reporting proxy's workload.
    Direction {
        Unknown => "unknown",
        Inbound => "inbound",
        Outbound => "outbound",
    }
}

string_enum! {
    /// The policy decision the record shows, derived from response code details, flags and
    /// ztunnel errors (see `docs/schema.md`).
    Decision {
        Allow => "allow",
        DenyRbac => "deny_rbac",
        DenyExtAuthz => "deny_ext_authz",
        DenyJwt => "deny_jwt",
        DenyL4 => "deny_l4",
    }
}

string_enum! {
    /// The layout a record was parsed from.
    InputFormat {
        IstioText => "istio_text",
        IstioTextPre19 => "istio_text_pre19",
        EnvoyDefault => "envoy_default",
        EnvoyJson => "envoy_json",
        ZtunnelText => "ztunnel_text",
        ZtunnelTextLegacy => "ztunnel_text_legacy",
        ZtunnelJson => "ztunnel_json",
        OtelAttributes => "otel_attributes",
    }
}

string_enum! {
    /// How a record reached Verity.
    IngestSource {
        File => "file",
        OtlpGrpc => "otlp_grpc",
        OtlpHttp => "otlp_http",
        Kafka => "kafka",
    }
}

string_enum! {
    /// What a record's sender may say about it: whether the sender is the proxy that carried
    /// the traffic (`bound`), is trusted to report for others (`trusted`), or demonstrably was
    /// not a party to it (`not_party`: a forgery). See `docs/schema.md`, "Senders".
    SenderBinding {
        /// No authenticated sender (a file, an unauthenticated listener).
        None => "none",
        /// Authenticated, but no `intake.trust` entry names the sender.
        UnknownSender => "unknown_sender",
        /// A proxy sender whose record does not say which proxy reported it.
        Unbound => "unbound",
        /// A proxy sender reporting traffic it carried.
        Bound => "bound",
        /// A node or aggregator sender, trusted to report for others.
        Trusted => "trusted",
        /// A proxy sender reporting traffic between other identities.
        NotParty => "not_party",
    }
}

impl SenderBinding {
    /// Whether rules may take the record as the sender's verified evidence.
    pub const fn verified(self) -> bool {
        matches!(self, SenderBinding::Bound | SenderBinding::Trusted)
    }
}

/// One normalized access record. Normalizers fill it; [`EventBatchBuilder`] turns many into a
/// `RecordBatch`. Field meanings are documented on the schema columns of the same name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccessEvent<'a> {
    pub event_time_ns: i64,
    pub observed_time_ns: i64,
    pub reporter: Reporter,
    pub protocol: Text<'a>,
    pub direction: Direction,
    pub source_principal: Text<'a>,
    pub source_workload: Text<'a>,
    pub source_namespace: Text<'a>,
    pub source_ip: Text<'a>,
    pub source_port: Option<i32>,
    pub destination_principal: Text<'a>,
    pub destination_workload: Text<'a>,
    pub destination_namespace: Text<'a>,
    pub destination_ip: Text<'a>,
    pub destination_port: Option<i32>,
    pub destination_service: Text<'a>,
    pub mtls: Option<bool>,
    pub tls_version: Text<'a>,
    pub request_principal: Text<'a>,
    pub method: Text<'a>,
    pub path: Text<'a>,
    pub authority: Text<'a>,
    pub user_agent: Text<'a>,
    pub request_id: Text<'a>,
    pub x_forwarded_for: Text<'a>,
    pub status: Option<i32>,
    pub response_flags: Text<'a>,
    pub response_code_details: Text<'a>,
    pub connection_termination_details: Text<'a>,
    pub upstream_transport_failure_reason: Text<'a>,
    pub decision: Decision,
    pub decision_policy: Text<'a>,
    pub decision_reason: Text<'a>,
    pub upstream_cluster: Text<'a>,
    pub upstream_host: Text<'a>,
    pub route_name: Text<'a>,
    pub requested_server_name: Text<'a>,
    pub bytes_received: Option<i64>,
    pub bytes_sent: Option<i64>,
    pub duration_ms: Option<f64>,
    pub trace_id: Text<'a>,
    pub span_id: Text<'a>,
    pub cluster: Text<'a>,
    pub mesh_id: Text<'a>,
    pub source: IngestSource,
    /// Who sent the record: the authenticated identity of the client (a SPIFFE ID from its
    /// certificate or the name of its token), or the configured sender of a Kafka topic.
    pub sender: Text<'a>,
    /// `sender_binding.verified()`: the sender is the reporting proxy, or trusted to report
    /// for others.
    pub sender_verified: bool,
    pub sender_binding: SenderBinding,
    pub format: InputFormat,
    /// Attributes Verity did not map to a column, as a JSON object (text).
    pub attributes: Option<String>,
    /// The unmapped attributes of the record's OTLP resource, as a JSON object, rendered once
    /// per resource and shared by all of its records: [`EventBatchBuilder`] stores a run of
    /// events holding the same `Arc` once (a dictionary column), so a large resource does not
    /// multiply with the number of its records.
    pub resource_attributes: Option<Arc<str>>,
    pub raw: Cow<'a, str>,
}

impl AccessEvent<'_> {
    /// Bytes of text the event puts into a batch's string columns (what a batch of it costs
    /// beyond its fixed per-row part). `resource_attributes` is not counted: it is stored once
    /// per resource, so whoever prepares a resource counts it once.
    pub fn text_bytes(&self) -> usize {
        let texts = [
            &self.protocol,
            &self.source_principal,
            &self.source_workload,
            &self.source_namespace,
            &self.source_ip,
            &self.destination_principal,
            &self.destination_workload,
            &self.destination_namespace,
            &self.destination_ip,
            &self.destination_service,
            &self.tls_version,
            &self.request_principal,
            &self.method,
            &self.path,
            &self.authority,
            &self.user_agent,
            &self.request_id,
            &self.x_forwarded_for,
            &self.response_flags,
            &self.response_code_details,
            &self.connection_termination_details,
            &self.upstream_transport_failure_reason,
            &self.decision_policy,
            &self.decision_reason,
            &self.upstream_cluster,
            &self.upstream_host,
            &self.route_name,
            &self.requested_server_name,
            &self.trace_id,
            &self.span_id,
            &self.cluster,
            &self.mesh_id,
            &self.sender,
        ];
        let text: usize = texts.iter().map(|t| t.as_deref().map_or(0, str::len)).sum();
        text.saturating_add(self.attributes.as_deref().map_or(0, str::len))
            .saturating_add(self.raw.len())
    }
}

/// Column names, in schema order. Rules and docs refer to these.
pub mod col {
    pub const EVENT_TIME: &str = "event_time";
    pub const OBSERVED_TIME: &str = "observed_time";
    pub const REPORTER: &str = "reporter";
    pub const PROTOCOL: &str = "protocol";
    pub const DIRECTION: &str = "direction";
    pub const SOURCE_PRINCIPAL: &str = "source_principal";
    pub const SOURCE_WORKLOAD: &str = "source_workload";
    pub const SOURCE_NAMESPACE: &str = "source_namespace";
    pub const SOURCE_IP: &str = "source_ip";
    pub const SOURCE_PORT: &str = "source_port";
    pub const DESTINATION_PRINCIPAL: &str = "destination_principal";
    pub const DESTINATION_WORKLOAD: &str = "destination_workload";
    pub const DESTINATION_NAMESPACE: &str = "destination_namespace";
    pub const DESTINATION_IP: &str = "destination_ip";
    pub const DESTINATION_PORT: &str = "destination_port";
    pub const DESTINATION_SERVICE: &str = "destination_service";
    pub const MTLS: &str = "mtls";
    pub const TLS_VERSION: &str = "tls_version";
    pub const REQUEST_PRINCIPAL: &str = "request_principal";
    pub const METHOD: &str = "method";
    pub const PATH: &str = "path";
    pub const AUTHORITY: &str = "authority";
    pub const USER_AGENT: &str = "user_agent";
    pub const REQUEST_ID: &str = "request_id";
    pub const X_FORWARDED_FOR: &str = "x_forwarded_for";
    pub const STATUS: &str = "status";
    pub const RESPONSE_FLAGS: &str = "response_flags";
    pub const RESPONSE_CODE_DETAILS: &str = "response_code_details";
    pub const CONNECTION_TERMINATION_DETAILS: &str = "connection_termination_details";
    pub const UPSTREAM_TRANSPORT_FAILURE_REASON: &str = "upstream_transport_failure_reason";
    pub const DECISION: &str = "decision";
    pub const DECISION_POLICY: &str = "decision_policy";
    pub const DECISION_REASON: &str = "decision_reason";
    pub const UPSTREAM_CLUSTER: &str = "upstream_cluster";
    pub const UPSTREAM_HOST: &str = "upstream_host";
    pub const ROUTE_NAME: &str = "route_name";
    pub const REQUESTED_SERVER_NAME: &str = "requested_server_name";
    pub const BYTES_RECEIVED: &str = "bytes_received";
    pub const BYTES_SENT: &str = "bytes_sent";
    pub const DURATION_MS: &str = "duration_ms";
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const CLUSTER: &str = "cluster";
    pub const MESH_ID: &str = "mesh_id";
    pub const SOURCE: &str = "source";
    pub const SENDER: &str = "sender";
    pub const SENDER_VERIFIED: &str = "sender_verified";
    pub const SENDER_BINDING: &str = "sender_binding";
    pub const FORMAT: &str = "format";
    pub const ATTRIBUTES: &str = "attributes";
    pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
    pub const RAW: &str = "raw";
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
}

/// The access-event Arrow schema (shared, built once).
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use DataType::*;
            let s = |name: &str| Field::new(name, Utf8, true);
            let req = |name: &str, t: DataType| Field::new(name, t, false);
            Arc::new(Schema::new(vec![
                req(col::EVENT_TIME, ts()),
                req(col::OBSERVED_TIME, ts()),
                req(col::REPORTER, Utf8),
                s(col::PROTOCOL),
                req(col::DIRECTION, Utf8),
                s(col::SOURCE_PRINCIPAL),
                s(col::SOURCE_WORKLOAD),
                s(col::SOURCE_NAMESPACE),
                s(col::SOURCE_IP),
                Field::new(col::SOURCE_PORT, Int32, true),
                s(col::DESTINATION_PRINCIPAL),
                s(col::DESTINATION_WORKLOAD),
                s(col::DESTINATION_NAMESPACE),
                s(col::DESTINATION_IP),
                Field::new(col::DESTINATION_PORT, Int32, true),
                s(col::DESTINATION_SERVICE),
                Field::new(col::MTLS, Boolean, true),
                s(col::TLS_VERSION),
                s(col::REQUEST_PRINCIPAL),
                s(col::METHOD),
                s(col::PATH),
                s(col::AUTHORITY),
                s(col::USER_AGENT),
                s(col::REQUEST_ID),
                s(col::X_FORWARDED_FOR),
                Field::new(col::STATUS, Int32, true),
                s(col::RESPONSE_FLAGS),
                s(col::RESPONSE_CODE_DETAILS),
                s(col::CONNECTION_TERMINATION_DETAILS),
                s(col::UPSTREAM_TRANSPORT_FAILURE_REASON),
                req(col::DECISION, Utf8),
                s(col::DECISION_POLICY),
                s(col::DECISION_REASON),
                s(col::UPSTREAM_CLUSTER),
                s(col::UPSTREAM_HOST),
                s(col::ROUTE_NAME),
                s(col::REQUESTED_SERVER_NAME),
                Field::new(col::BYTES_RECEIVED, Int64, true),
                Field::new(col::BYTES_SENT, Int64, true),
                Field::new(col::DURATION_MS, Float64, true),
                s(col::TRACE_ID),
                s(col::SPAN_ID),
                s(col::CLUSTER),
                s(col::MESH_ID),
                req(col::SOURCE, Utf8),
                s(col::SENDER),
                req(col::SENDER_VERIFIED, Boolean),
                req(col::SENDER_BINDING, Utf8),
                req(col::FORMAT, Utf8),
                s(col::ATTRIBUTES),
                Field::new(
                    col::RESOURCE_ATTRIBUTES,
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(Utf8)),
                    true,
                ),
                req(col::RAW, Utf8),
            ]))
        })
        .clone()
}

/// Appends [`AccessEvent`]s column by column and finishes them into a `RecordBatch`.
pub struct EventBatchBuilder {
    len: usize,
    event_time: TimestampNanosecondBuilder,
    observed_time: TimestampNanosecondBuilder,
    reporter: StringBuilder,
    protocol: StringBuilder,
    direction: StringBuilder,
    source_principal: StringBuilder,
    source_workload: StringBuilder,
    source_namespace: StringBuilder,
    source_ip: StringBuilder,
    source_port: Int32Builder,
    destination_principal: StringBuilder,
    destination_workload: StringBuilder,
    destination_namespace: StringBuilder,
    destination_ip: StringBuilder,
    destination_port: Int32Builder,
    destination_service: StringBuilder,
    mtls: BooleanBuilder,
    tls_version: StringBuilder,
    request_principal: StringBuilder,
    method: StringBuilder,
    path: StringBuilder,
    authority: StringBuilder,
    user_agent: StringBuilder,
    request_id: StringBuilder,
    x_forwarded_for: StringBuilder,
    status: Int32Builder,
    response_flags: StringBuilder,
    response_code_details: StringBuilder,
    connection_termination_details: StringBuilder,
    upstream_transport_failure_reason: StringBuilder,
    decision: StringBuilder,
    decision_policy: StringBuilder,
    decision_reason: StringBuilder,
    upstream_cluster: StringBuilder,
    upstream_host: StringBuilder,
    route_name: StringBuilder,
    requested_server_name: StringBuilder,
    bytes_received: Int64Builder,
    bytes_sent: Int64Builder,
    duration_ms: Float64Builder,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    cluster: StringBuilder,
    mesh_id: StringBuilder,
    source: StringBuilder,
    sender: StringBuilder,
    sender_verified: BooleanBuilder,
    sender_binding: StringBuilder,
    format: StringBuilder,
    attributes: StringBuilder,
    resource_attributes: SharedText,
    raw: StringBuilder,
}

impl Default for EventBatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

impl EventBatchBuilder {
    pub fn with_capacity(rows: usize) -> Self {
        let s = || StringBuilder::with_capacity(rows, rows * 16);
        let t = || TimestampNanosecondBuilder::with_capacity(rows).with_timezone("+00:00");
        Self {
            len: 0,
            event_time: t(),
            observed_time: t(),
            reporter: s(),
            protocol: s(),
            direction: s(),
            source_principal: s(),
            source_workload: s(),
            source_namespace: s(),
            source_ip: s(),
            source_port: Int32Builder::with_capacity(rows),
            destination_principal: s(),
            destination_workload: s(),
            destination_namespace: s(),
            destination_ip: s(),
            destination_port: Int32Builder::with_capacity(rows),
            destination_service: s(),
            mtls: BooleanBuilder::with_capacity(rows),
            tls_version: s(),
            request_principal: s(),
            method: s(),
            path: s(),
            authority: s(),
            user_agent: s(),
            request_id: s(),
            x_forwarded_for: s(),
            status: Int32Builder::with_capacity(rows),
            response_flags: s(),
            response_code_details: s(),
            connection_termination_details: s(),
            upstream_transport_failure_reason: s(),
            decision: s(),
            decision_policy: s(),
            decision_reason: s(),
            upstream_cluster: s(),
            upstream_host: s(),
            route_name: s(),
            requested_server_name: s(),
            bytes_received: Int64Builder::with_capacity(rows),
            bytes_sent: Int64Builder::with_capacity(rows),
            duration_ms: Float64Builder::with_capacity(rows),
            trace_id: s(),
            span_id: s(),
            cluster: s(),
            mesh_id: s(),
            source: s(),
            sender: s(),
            sender_verified: BooleanBuilder::with_capacity(rows),
            sender_binding: s(),
            format: s(),
            attributes: s(),
            resource_attributes: SharedText::with_capacity(rows),
            raw: StringBuilder::with_capacity(rows, rows * 256),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn append(&mut self, e: &AccessEvent<'_>) {
        self.len += 1;
        self.event_time.append_value(e.event_time_ns);
        self.observed_time.append_value(e.observed_time_ns);
        self.reporter.append_value(e.reporter.as_str());
        self.protocol.append_option(e.protocol.as_deref());
        self.direction.append_value(e.direction.as_str());
        self.source_principal.append_option(e.source_principal.as_deref());
        self.source_workload.append_option(e.source_workload.as_deref());
        self.source_namespace.append_option(e.source_namespace.as_deref());
        self.source_ip.append_option(e.source_ip.as_deref());
        self.source_port.append_option(e.source_port);
        self.destination_principal
            .append_option(e.destination_principal.as_deref());
        self.destination_workload
            .append_option(e.destination_workload.as_deref());
        self.destination_namespace
            .append_option(e.destination_namespace.as_deref());
        self.destination_ip.append_option(e.destination_ip.as_deref());
        self.destination_port.append_option(e.destination_port);
        self.destination_service.append_option(e.destination_service.as_deref());
        self.mtls.append_option(e.mtls);
        self.tls_version.append_option(e.tls_version.as_deref());
        self.request_principal.append_option(e.request_principal.as_deref());
        self.method.append_option(e.method.as_deref());
        self.path.append_option(e.path.as_deref());
        self.authority.append_option(e.authority.as_deref());
        self.user_agent.append_option(e.user_agent.as_deref());
        self.request_id.append_option(e.request_id.as_deref());
        self.x_forwarded_for.append_option(e.x_forwarded_for.as_deref());
        self.status.append_option(e.status);
        self.response_flags.append_option(e.response_flags.as_deref());
        self.response_code_details
            .append_option(e.response_code_details.as_deref());
        self.connection_termination_details
            .append_option(e.connection_termination_details.as_deref());
        self.upstream_transport_failure_reason
            .append_option(e.upstream_transport_failure_reason.as_deref());
        self.decision.append_value(e.decision.as_str());
        self.decision_policy.append_option(e.decision_policy.as_deref());
        self.decision_reason.append_option(e.decision_reason.as_deref());
        self.upstream_cluster.append_option(e.upstream_cluster.as_deref());
        self.upstream_host.append_option(e.upstream_host.as_deref());
        self.route_name.append_option(e.route_name.as_deref());
        self.requested_server_name
            .append_option(e.requested_server_name.as_deref());
        self.bytes_received.append_option(e.bytes_received);
        self.bytes_sent.append_option(e.bytes_sent);
        self.duration_ms.append_option(e.duration_ms);
        self.trace_id.append_option(e.trace_id.as_deref());
        self.span_id.append_option(e.span_id.as_deref());
        self.cluster.append_option(e.cluster.as_deref());
        self.mesh_id.append_option(e.mesh_id.as_deref());
        self.source.append_value(e.source.as_str());
        self.sender.append_option(e.sender.as_deref());
        self.sender_verified.append_value(e.sender_verified);
        self.sender_binding.append_value(e.sender_binding.as_str());
        self.format.append_value(e.format.as_str());
        self.attributes.append_option(e.attributes.as_deref());
        self.resource_attributes.append(e.resource_attributes.as_ref());
        self.raw.append_value(&e.raw);
    }

    /// Finishes the rows appended so far into a batch and leaves the builder empty.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.len = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_time.finish()),
            Arc::new(self.observed_time.finish()),
            Arc::new(self.reporter.finish()),
            Arc::new(self.protocol.finish()),
            Arc::new(self.direction.finish()),
            Arc::new(self.source_principal.finish()),
            Arc::new(self.source_workload.finish()),
            Arc::new(self.source_namespace.finish()),
            Arc::new(self.source_ip.finish()),
            Arc::new(self.source_port.finish()),
            Arc::new(self.destination_principal.finish()),
            Arc::new(self.destination_workload.finish()),
            Arc::new(self.destination_namespace.finish()),
            Arc::new(self.destination_ip.finish()),
            Arc::new(self.destination_port.finish()),
            Arc::new(self.destination_service.finish()),
            Arc::new(self.mtls.finish()),
            Arc::new(self.tls_version.finish()),
            Arc::new(self.request_principal.finish()),
            Arc::new(self.method.finish()),
            Arc::new(self.path.finish()),
            Arc::new(self.authority.finish()),
            Arc::new(self.user_agent.finish()),
            Arc::new(self.request_id.finish()),
            Arc::new(self.x_forwarded_for.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.response_flags.finish()),
            Arc::new(self.response_code_details.finish()),
            Arc::new(self.connection_termination_details.finish()),
            Arc::new(self.upstream_transport_failure_reason.finish()),
            Arc::new(self.decision.finish()),
            Arc::new(self.decision_policy.finish()),
            Arc::new(self.decision_reason.finish()),
            Arc::new(self.upstream_cluster.finish()),
            Arc::new(self.upstream_host.finish()),
            Arc::new(self.route_name.finish()),
            Arc::new(self.requested_server_name.finish()),
            Arc::new(self.bytes_received.finish()),
            Arc::new(self.bytes_sent.finish()),
            Arc::new(self.duration_ms.finish()),
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.cluster.finish()),
            Arc::new(self.mesh_id.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.sender.finish()),
            Arc::new(self.sender_verified.finish()),
            Arc::new(self.sender_binding.finish()),
            Arc::new(self.format.finish()),
            Arc::new(self.attributes.finish()),
            Arc::new(self.resource_attributes.finish()?),
            Arc::new(self.raw.finish()),
        ];
        RecordBatch::try_new(schema(), columns)
    }
}

/// A dictionary column of text shared by runs of rows: each distinct `Arc` (by identity, not
/// content) in a run becomes one dictionary value, and every row of the run holds only its
/// key. Holding the `Arc` of the current run keeps identity meaningful (its address cannot be
/// reused while it is compared against).
struct SharedText {
    keys: Int32Builder,
    values: StringBuilder,
    current: Option<(Arc<str>, i32)>,
}

impl SharedText {
    fn with_capacity(rows: usize) -> Self {
        Self {
            keys: Int32Builder::with_capacity(rows),
            values: StringBuilder::new(),
            current: None,
        }
    }

    fn append(&mut self, text: Option<&Arc<str>>) {
        let Some(text) = text else {
            self.keys.append_null();
            return;
        };
        match &self.current {
            Some((shared, key)) if Arc::ptr_eq(shared, text) => self.keys.append_value(*key),
            _ => match i32::try_from(self.values.len()) {
                Ok(key) => {
                    self.values.append_value(text);
                    self.keys.append_value(key);
                    self.current = Some((Arc::clone(text), key));
                }
                // More distinct values than an i32 key can name: no batch gets near this.
                Err(_) => self.keys.append_null(),
            },
        }
    }

    fn finish(&mut self) -> Result<DictionaryArray<Int32Type>, ArrowError> {
        self.current = None;
        DictionaryArray::try_new(self.keys.finish(), Arc::new(self.values.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_matches_schema() {
        let mut b = EventBatchBuilder::with_capacity(2);
        let e = AccessEvent {
            event_time_ns: 1,
            observed_time_ns: 2,
            status: Some(403),
            decision: Decision::DenyRbac,
            raw: "line".into(),
            ..Default::default()
        };
        b.append(&e);
        b.append(&e);
        let batch = b.finish().expect("batch");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), schema());
        assert!(b.is_empty());
    }

    #[test]
    fn events_of_one_resource_store_its_attributes_once() {
        use arrow::array::{Array, AsArray};
        let big: Arc<str> = Arc::from(format!(r#"{{"host.name":"{}"}}"#, "h".repeat(10_000)));
        let other: Arc<str> = Arc::from(r#"{"host.name":"b"}"#);
        let mut b = EventBatchBuilder::with_capacity(4);
        for shared in [Some(&big), Some(&big), Some(&big), None, Some(&other), Some(&other)] {
            b.append(&AccessEvent {
                resource_attributes: shared.cloned(),
                raw: "line".into(),
                ..Default::default()
            });
        }
        let batch = b.finish().expect("batch");
        let column = batch
            .column_by_name(col::RESOURCE_ATTRIBUTES)
            .expect("column")
            .as_dictionary::<Int32Type>();
        assert_eq!(column.values().len(), 2, "one value per resource");
        assert_eq!(column.keys().values().to_vec(), vec![0, 0, 0, 0, 1, 1]);
        assert!(column.is_null(3));
        assert!(column.values().as_string::<i32>().value_data().len() < 11_000);
        let rows = crate::json::to_json_rows(&batch).expect("json");
        assert_eq!(rows[2]["resource_attributes"].as_str(), Some(&*big));
        assert!(rows[3].get("resource_attributes").is_none());
        assert_eq!(rows[5]["resource_attributes"], r#"{"host.name":"b"}"#);
    }

    #[test]
    fn enum_text_round_trips() {
        for d in Decision::ALL {
            let json = serde_json::to_string(d).expect("ser");
            assert_eq!(json, format!("\"{}\"", d.as_str()));
        }
    }
}
