//! Normalizers: every supported telemetry layout in, one [`AccessEvent`] out.
//!
//! A record goes through two steps. A *parser* for its layout (auto-detected per record, see
//! [`detect`]) copies what the record says into the event, leaving raw facts that need
//! context (addresses, peer certificate SANs, pod labels) in [`Extras`]. Then
//! [`derive::derive`] works out direction, reporter, normalized principals, mTLS, destination
//! service and the policy decision, exactly once, after every source of facts (the line
//! itself, then OTLP attributes) has been applied.
//!
//! A record that cannot be parsed yields a [`Rejection`] with a reason from a fixed set; the
//! caller counts it, dead-letters it and reports it upstream. Nothing here panics on input.

#![deny(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation
)]

pub mod derive;
pub mod envoy_json;
pub mod fields;
pub mod istio_text;
pub mod limits;
pub mod otel_log;
pub mod otel_metric;
pub mod rejections;
pub mod ztunnel;

use verity_model::event::{IngestSource, Text};
use verity_model::{AccessEvent, InputFormat};

/// Why a record was rejected. Values are metric labels, so the set is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Empty,
    InvalidUtf8,
    UnrecognizedFormat,
    MalformedText,
    MalformedJson,
    InvalidTimestamp,
    /// Dated further after its arrival than `intake.max_future_secs`.
    FutureTimestamp,
    /// Dated further before its arrival than `intake.max_past_secs`.
    PastTimestamp,
    InvalidField,
    MissingBody,
    InvalidMetric,
    /// A whole source message (e.g. a Kafka record) that is not valid OTLP.
    UndecodableMessage,
    /// A proxy sender reported traffic it was not a party to (see `ingest/binding.rs`).
    SenderNotParty,
    /// Normalizing the record hit a bug (a panic), caught at the record's boundary.
    InternalError,
    /// A line, body or attribute value longer than `intake.limits.max_record_bytes`.
    RecordTooLarge,
    /// More attributes or body fields than `intake.limits` allow.
    TooManyFields,
    /// A field name longer than `intake.limits.max_key_bytes`.
    KeyTooLong,
    /// A body nested deeper than `intake.limits.max_depth`.
    TooDeep,
    /// Past what one request may cost (`intake.limits.max_request_rows_bytes`,
    /// `max_data_points`).
    RequestTooLarge,
}

impl RejectReason {
    pub const ALL: &'static [RejectReason] = &[
        RejectReason::Empty,
        RejectReason::InvalidUtf8,
        RejectReason::UnrecognizedFormat,
        RejectReason::MalformedText,
        RejectReason::MalformedJson,
        RejectReason::InvalidTimestamp,
        RejectReason::FutureTimestamp,
        RejectReason::PastTimestamp,
        RejectReason::InvalidField,
        RejectReason::MissingBody,
        RejectReason::InvalidMetric,
        RejectReason::UndecodableMessage,
        RejectReason::SenderNotParty,
        RejectReason::InternalError,
        RejectReason::RecordTooLarge,
        RejectReason::TooManyFields,
        RejectReason::KeyTooLong,
        RejectReason::TooDeep,
        RejectReason::RequestTooLarge,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::Empty => "empty",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::UnrecognizedFormat => "unrecognized_format",
            RejectReason::MalformedText => "malformed_text",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::PastTimestamp => "past_timestamp",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::MissingBody => "missing_body",
            RejectReason::InvalidMetric => "invalid_metric",
            RejectReason::UndecodableMessage => "undecodable_message",
            RejectReason::SenderNotParty => "sender_not_party",
            RejectReason::InternalError => "internal_error",
            RejectReason::RecordTooLarge => "record_too_large",
            RejectReason::TooManyFields => "too_many_fields",
            RejectReason::KeyTooLong => "key_too_long",
            RejectReason::TooDeep => "too_deep",
            RejectReason::RequestTooLarge => "request_too_large",
        }
    }
}

/// `s` split around a delimiter found at `at`: what is before it, and what is after it and
/// the `skip` bytes it spans. A delimiter found by searching for an ASCII byte always lies on
/// character boundaries; anything else is a malformed record, never a panic.
pub(crate) fn split_around(s: &str, at: usize, skip: usize) -> Result<(&str, &str), Rejection> {
    let head = s.get(..at);
    let tail = at.checked_add(skip).and_then(|from| s.get(from..));
    match (head, tail) {
        (Some(h), Some(t)) => Ok((h, t)),
        _ => Err(Rejection::new(
            RejectReason::MalformedText,
            "a field boundary falls inside a character",
        )),
    }
}

/// A record that could not be normalized, with a human-readable explanation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }

    pub(crate) fn field(name: &str, value: &str) -> Self {
        let shown: String = value.chars().take(64).collect();
        Self::new(
            RejectReason::InvalidField,
            format!("field {name} has an invalid value {shown:?}"),
        )
    }
}

/// Facts a parser found that only mean something once direction is known.
#[derive(Debug, Default, Clone)]
pub struct Extras<'a> {
    pub downstream_local_address: Text<'a>,
    pub downstream_remote_address: Text<'a>,
    /// `%DOWNSTREAM_PEER_URI_SAN%`: the caller at an inbound proxy.
    pub downstream_peer_uri_san: Text<'a>,
    /// `%DOWNSTREAM_LOCAL_URI_SAN%`: the proxy's own identity.
    pub downstream_local_uri_san: Text<'a>,
    /// `%UPSTREAM_PEER_URI_SAN%`: the callee at an outbound proxy.
    pub upstream_peer_uri_san: Text<'a>,
    pub x_forwarded_client_cert: Text<'a>,
    /// `connection_security_policy` (`mutual_tls`, `none`, `unknown`).
    pub connection_security_policy: Text<'a>,
    /// The reporting proxy's own pod and namespace (`%ENVIRONMENT(POD_NAME)%`).
    pub pod: Text<'a>,
    pub pod_namespace: Text<'a>,
    /// Whether the peer SAN was reported at all (an explicit `-` is evidence of plaintext).
    pub peer_san_reported: bool,
}

/// Which parser to use; `Auto` detects per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FormatHint {
    #[default]
    Auto,
    /// Istio TEXT (current and pre-1.9 layouts) and Envoy's default format.
    EnvoyText,
    /// Istio JSON encoding and custom JSON formats.
    EnvoyJson,
    /// ztunnel access logs, plain or JSON.
    Ztunnel,
}

/// Context a record is normalized in.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub observed_time_ns: i64,
    pub source: IngestSource,
    pub limits: limits::RecordLimits,
}

impl Ctx {
    /// Now, with the default limits.
    pub fn now(source: IngestSource) -> Self {
        Self {
            observed_time_ns: now_ns(),
            source,
            limits: limits::RecordLimits::default(),
        }
    }

    pub fn with_limits(self, limits: limits::RecordLimits) -> Self {
        Self { limits, ..self }
    }
}

pub fn now_ns() -> i64 {
    verity_model::time::now_ns()
}

/// Detected layout of a line, before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    EnvoyText,
    Json,
    ZtunnelText,
}

/// Picks a parser from the first bytes of a line.
pub fn detect(line: &str) -> Option<Detected> {
    let b = line.as_bytes();
    match b.first()? {
        b'[' => Some(Detected::EnvoyText),
        b'{' => Some(Detected::Json),
        c if c.is_ascii_digit() && ztunnel::looks_like_ztunnel(line) => Some(Detected::ZtunnelText),
        _ => None,
    }
}

/// Parses a line without deriving: the caller may add facts (OTLP attributes) before
/// calling [`finish`].
pub fn parse_line<'a>(
    line: &'a str,
    hint: FormatHint,
    limits: &limits::RecordLimits,
) -> Result<(AccessEvent<'a>, Extras<'a>), Rejection> {
    limits.record_bytes("the line", line.len())?;
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.trim_end().is_empty() {
        return Err(Rejection::new(RejectReason::Empty, "empty record"));
    }
    let detected = detect(trimmed);
    match (hint, detected) {
        (FormatHint::Auto | FormatHint::EnvoyText, Some(Detected::EnvoyText)) => istio_text::parse(trimmed),
        (FormatHint::Auto | FormatHint::EnvoyJson | FormatHint::Ztunnel, Some(Detected::Json)) => {
            envoy_json::parse_line(trimmed, hint, limits)
        }
        (FormatHint::Auto | FormatHint::Ztunnel, Some(Detected::ZtunnelText)) => ztunnel::parse_text(trimmed),
        (FormatHint::Auto, None) => Err(Rejection::new(
            RejectReason::UnrecognizedFormat,
            "not an Envoy/Istio access log, Istio JSON or ztunnel line",
        )),
        (hint, _) => Err(Rejection::new(
            RejectReason::UnrecognizedFormat,
            format!("line does not match the requested format {hint:?}"),
        )),
    }
}

/// Stamps ingest context on a parsed event and derives the zero-trust columns.
pub fn finish<'a>(ev: &mut AccessEvent<'a>, ex: &Extras<'a>, ctx: &Ctx) {
    ev.observed_time_ns = ctx.observed_time_ns;
    ev.source = ctx.source;
    if ev.event_time_ns == 0 {
        ev.event_time_ns = ctx.observed_time_ns;
    }
    derive::derive(ev, ex);
}

/// Parses and derives one line: the full normalization of a log line from a file or Kafka.
pub fn normalize_line<'a>(line: &'a str, hint: FormatHint, ctx: &Ctx) -> Result<AccessEvent<'a>, Rejection> {
    guarded(|| {
        let (mut ev, ex) = parse_line(line, hint, &ctx.limits)?;
        finish(&mut ev, &ex, ctx);
        Ok(ev)
    })
}

/// Runs one record's normalization behind a boundary: a panic (a bug reachable from input)
/// becomes a rejection with reason `internal_error` and the panic message, so the record is
/// dead-lettered and counted and the rest of the request goes on. Nothing is shared across
/// the boundary but the record itself, so nothing is left half-updated.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, Rejection>) -> Result<T, Rejection> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            let message: String = message.chars().take(300).collect();
            tracing::error!(%message, "normalizing a record panicked; dead-lettered as internal_error");
            Err(Rejection::new(
                RejectReason::InternalError,
                format!("internal error while normalizing this record (a bug, please report it): {message}"),
            ))
        }
    }
}

/// The formats a normalizer can report, for docs and metric label pre-registration.
pub const FORMATS: &[InputFormat] = InputFormat::ALL;

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod boundary_tests {
    use super::*;

    #[test]
    fn a_panic_while_normalizing_becomes_an_internal_error_rejection() {
        let r: Result<(), Rejection> = guarded(|| {
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            // An out-of-bounds index, as a parser bug reachable from input would make.
            #[allow(clippy::indexing_slicing)]
            let _ = v[i];
            Ok(())
        });
        let e = r.expect_err("rejected");
        assert_eq!(e.reason, RejectReason::InternalError);
        assert!(e.detail.contains("index out of bounds"), "{}", e.detail);
        assert_eq!(guarded(|| Ok::<_, Rejection>(7)), Ok(7));
    }
}
