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

use crate::null_runs::NullRuns;

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

/// How each kind of column is held in [`AccessEvent`], typed in Arrow, built and measured.
/// Used by [`event_columns!`] only.
macro_rules! column_kind {
    (ty Time) => { i64 };
    (ty Enum($t:ty)) => { $t };
    (ty Text) => { Text<'a> };
    (ty I32) => { Option<i32> };
    (ty I64) => { Option<i64> };
    (ty F64) => { Option<f64> };
    (ty OptBool) => { Option<bool> };
    (ty Bool) => { bool };
    (ty Json) => { Option<String> };
    (ty Shared) => { Option<Arc<str>> };
    (ty Raw) => { Cow<'a, str> };

    (field Time, $name:expr) => { Field::new($name, DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into())), false) };
    (field Enum, $name:expr) => { Field::new($name, DataType::Utf8, false) };
    (field Text, $name:expr) => { Field::new($name, DataType::Utf8, true) };
    (field I32, $name:expr) => { Field::new($name, DataType::Int32, true) };
    (field I64, $name:expr) => { Field::new($name, DataType::Int64, true) };
    (field F64, $name:expr) => { Field::new($name, DataType::Float64, true) };
    (field OptBool, $name:expr) => { Field::new($name, DataType::Boolean, true) };
    (field Bool, $name:expr) => { Field::new($name, DataType::Boolean, false) };
    (field Json, $name:expr) => { Field::new($name, DataType::Utf8, true) };
    (field Shared, $name:expr) => {
        Field::new($name, DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true)
    };
    (field Raw, $name:expr) => { Field::new($name, DataType::Utf8, false) };

    (builder Time) => { TimestampNanosecondBuilder };
    (builder Enum) => { StringBuilder };
    (builder Text) => { NullRuns<StringBuilder> };
    (builder I32) => { NullRuns<Int32Builder> };
    (builder I64) => { NullRuns<Int64Builder> };
    (builder F64) => { NullRuns<Float64Builder> };
    (builder OptBool) => { NullRuns<BooleanBuilder> };
    (builder Bool) => { BooleanBuilder };
    (builder Json) => { NullRuns<StringBuilder> };
    (builder Shared) => { SharedText };
    (builder Raw) => { StringBuilder };

    (new Time, $rows:expr) => { TimestampNanosecondBuilder::with_capacity($rows).with_timezone("+00:00") };
    (new Raw, $rows:expr) => { StringBuilder::with_capacity($rows, $rows.saturating_mul(256)) };
    (new Shared, $rows:expr) => { SharedText::with_capacity($rows) };
    (new I32, $rows:expr) => { NullRuns::new(Int32Builder::with_capacity($rows)) };
    (new I64, $rows:expr) => { NullRuns::new(Int64Builder::with_capacity($rows)) };
    (new F64, $rows:expr) => { NullRuns::new(Float64Builder::with_capacity($rows)) };
    (new OptBool, $rows:expr) => { NullRuns::new(BooleanBuilder::with_capacity($rows)) };
    (new Bool, $rows:expr) => { BooleanBuilder::with_capacity($rows) };
    (new Enum, $rows:expr) => { StringBuilder::with_capacity($rows, $rows.saturating_mul(16)) };
    (new $text:ident, $rows:expr) => { NullRuns::new(StringBuilder::with_capacity($rows, $rows.saturating_mul(16))) };

    (append Time, $b:expr, $v:expr) => { $b.append_value($v) };
    (append Enum, $b:expr, $v:expr) => { $b.append_value($v.as_str()) };
    (append Text, $b:expr, $v:expr) => { $b.append($v.as_deref(), |b, v| b.append_value(v)) };
    (append Json, $b:expr, $v:expr) => { $b.append($v.as_deref(), |b, v| b.append_value(v)) };
    (append Shared, $b:expr, $v:expr) => { $b.append($v.as_ref()) };
    (append Raw, $b:expr, $v:expr) => { $b.append_value(&$v) };
    (append Bool, $b:expr, $v:expr) => { $b.append_value($v) };
    (append $option:ident, $b:expr, $v:expr) => { $b.append($v, |b, v| b.append_value(v)) };

    (finish Shared, $b:expr) => { $b.finish()? };
    (finish $other:ident, $b:expr) => { $b.finish() };

    // Text a row puts into the batch's string columns. `resource_attributes` is stored once
    // per resource, so whoever prepares a resource counts it once.
    (text Text, $v:expr) => { $v.as_deref().map_or(0, str::len) };
    (text Json, $v:expr) => { $v.as_deref().map_or(0, str::len) };
    (text Raw, $v:expr) => { $v.len() };
    (text $other:ident, $v:expr) => { 0usize };
}

/// Declares the access-event schema once, in column order: each entry is
/// `field: Kind => CONSTANT = "column"`. From it come [`AccessEvent`], the [`col`] names,
/// [`schema`], and [`EventBatchBuilder`] with its `append` and `finish`. `docs/schema.md`
/// documents the same columns in the same order (checked by a test).
macro_rules! event_columns {
    ($( $(#[$doc:meta])* $field:ident : $kind:ident $(($enum:ty))? => $konst:ident = $name:literal ),+ $(,)?) => {
        /// One normalized access record. Normalizers fill it; [`EventBatchBuilder`] turns many
        /// into a `RecordBatch`. Field meanings are documented on the schema columns of the
        /// same name (`docs/schema.md`).
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct AccessEvent<'a> {
            $( $(#[$doc])* pub $field: column_kind!(ty $kind $(($enum))?), )+
        }

        impl AccessEvent<'_> {
            /// Bytes of text the event puts into a batch's string columns (what a batch of it
            /// costs beyond its fixed per-row part). `resource_attributes` is not counted: it
            /// is stored once per resource, so whoever prepares a resource counts it once.
            pub fn text_bytes(&self) -> usize {
                0usize $( .saturating_add(column_kind!(text $kind, self.$field)) )+
            }
        }

        /// Column names, in schema order. Rules and docs refer to these.
        pub mod col {
            $( pub const $konst: &str = $name; )+
        }

        fn fields() -> Vec<Field> {
            vec![ $( column_kind!(field $kind, col::$konst), )+ ]
        }

        /// Appends [`AccessEvent`]s column by column and finishes them into a `RecordBatch`.
        pub struct EventBatchBuilder {
            len: usize,
            $( $field: column_kind!(builder $kind), )+
        }

        impl EventBatchBuilder {
            pub fn with_capacity(rows: usize) -> Self {
                Self {
                    len: 0,
                    $( $field: column_kind!(new $kind, rows), )+
                }
            }

            pub fn append(&mut self, e: &AccessEvent<'_>) {
                self.len += 1;
                $( column_kind!(append $kind, self.$field, e.$field); )+
            }

            /// Finishes the rows appended so far into a batch and leaves the builder empty.
            pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
                self.len = 0;
                let columns: Vec<ArrayRef> = vec![ $( Arc::new(column_kind!(finish $kind, self.$field)), )+ ];
                RecordBatch::try_new(schema(), columns)
            }
        }
    };
}

event_columns! {
    event_time_ns: Time => EVENT_TIME = "event_time",
    observed_time_ns: Time => OBSERVED_TIME = "observed_time",
    reporter: Enum(Reporter) => REPORTER = "reporter",
    protocol: Text => PROTOCOL = "protocol",
    direction: Enum(Direction) => DIRECTION = "direction",
    source_principal: Text => SOURCE_PRINCIPAL = "source_principal",
    source_workload: Text => SOURCE_WORKLOAD = "source_workload",
    source_namespace: Text => SOURCE_NAMESPACE = "source_namespace",
    source_ip: Text => SOURCE_IP = "source_ip",
    source_port: I32 => SOURCE_PORT = "source_port",
    destination_principal: Text => DESTINATION_PRINCIPAL = "destination_principal",
    destination_workload: Text => DESTINATION_WORKLOAD = "destination_workload",
    destination_namespace: Text => DESTINATION_NAMESPACE = "destination_namespace",
    destination_ip: Text => DESTINATION_IP = "destination_ip",
    destination_port: I32 => DESTINATION_PORT = "destination_port",
    destination_service: Text => DESTINATION_SERVICE = "destination_service",
    mtls: OptBool => MTLS = "mtls",
    tls_version: Text => TLS_VERSION = "tls_version",
    request_principal: Text => REQUEST_PRINCIPAL = "request_principal",
    method: Text => METHOD = "method",
    path: Text => PATH = "path",
    authority: Text => AUTHORITY = "authority",
    user_agent: Text => USER_AGENT = "user_agent",
    request_id: Text => REQUEST_ID = "request_id",
    x_forwarded_for: Text => X_FORWARDED_FOR = "x_forwarded_for",
    status: I32 => STATUS = "status",
    response_flags: Text => RESPONSE_FLAGS = "response_flags",
    response_code_details: Text => RESPONSE_CODE_DETAILS = "response_code_details",
    connection_termination_details: Text => CONNECTION_TERMINATION_DETAILS = "connection_termination_details",
    upstream_transport_failure_reason: Text => UPSTREAM_TRANSPORT_FAILURE_REASON = "upstream_transport_failure_reason",
    decision: Enum(Decision) => DECISION = "decision",
    decision_policy: Text => DECISION_POLICY = "decision_policy",
    decision_reason: Text => DECISION_REASON = "decision_reason",
    upstream_cluster: Text => UPSTREAM_CLUSTER = "upstream_cluster",
    upstream_host: Text => UPSTREAM_HOST = "upstream_host",
    route_name: Text => ROUTE_NAME = "route_name",
    requested_server_name: Text => REQUESTED_SERVER_NAME = "requested_server_name",
    bytes_received: I64 => BYTES_RECEIVED = "bytes_received",
    bytes_sent: I64 => BYTES_SENT = "bytes_sent",
    duration_ms: F64 => DURATION_MS = "duration_ms",
    trace_id: Text => TRACE_ID = "trace_id",
    span_id: Text => SPAN_ID = "span_id",
    cluster: Text => CLUSTER = "cluster",
    mesh_id: Text => MESH_ID = "mesh_id",
    source: Enum(IngestSource) => SOURCE = "source",
    /// The Kafka topic and partition the record was read from, as `topic/partition`; null for
    /// other sources. Event time is kept per partition (and sender), so a lagging partition
    /// does not make the others' records late.
    ingest_partition: Shared => INGEST_PARTITION = "ingest_partition",
    /// Who sent the record: the authenticated identity of the client (a SPIFFE ID from its
    /// certificate or the name of its token), or the configured sender of a Kafka topic.
    sender: Text => SENDER = "sender",
    /// `sender_binding.verified()`: the sender is the reporting proxy, or trusted to report
    /// for others.
    sender_verified: Bool => SENDER_VERIFIED = "sender_verified",
    sender_binding: Enum(SenderBinding) => SENDER_BINDING = "sender_binding",
    format: Enum(InputFormat) => FORMAT = "format",
    /// Attributes Verity did not map to a column, as a JSON object (text).
    attributes: Json => ATTRIBUTES = "attributes",
    /// The unmapped attributes of the record's OTLP resource, as a JSON object, rendered once
    /// per resource and shared by all of its records: [`EventBatchBuilder`] stores a run of
    /// events holding the same `Arc` once (a dictionary column), so a large resource does not
    /// multiply with the number of its records.
    resource_attributes: Shared => RESOURCE_ATTRIBUTES = "resource_attributes",
    raw: Raw => RAW = "raw",
}

/// The access-event Arrow schema (shared, built once).
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA.get_or_init(|| Arc::new(Schema::new(fields()))).clone()
}

impl Default for EventBatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

impl EventBatchBuilder {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

    /// `docs/schema.md` documents exactly the schema's columns, in the schema's order: the
    /// first cell of each row of its "Access events" table names one or more columns.
    #[test]
    fn the_schema_page_lists_every_column_in_order() {
        let page =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/schema.md")).expect("docs/schema.md");
        let table = page
            .split("## Access events")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("an Access events section");
        let documented: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| {
                cell.split(',')
                    .filter_map(|c| c.trim().strip_prefix('`')?.strip_suffix('`'))
            })
            .collect();
        let columns: Vec<String> = schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(documented, columns);
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
