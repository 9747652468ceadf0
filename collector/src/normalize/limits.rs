//! What one record may cost: limits checked while a record is normalized, each before the
//! memory it guards is spent, so a record built to multiply memory (a wide or deep JSON body,
//! thousands of attributes, a key as long as the line) is rejected with its own reason
//! instead of growing Verity.
//!
//! The limits are `intake.limits.*` in the configuration; the defaults leave room for any
//! access log a mesh proxy writes (an Envoy line is a few KiB) and stop what no proxy writes.

use serde::{Deserialize, Serialize};
use verity_model::config_error::ConfigError;

use super::{RejectReason, Rejection};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordLimits {
    /// Longest log line, string body or attribute value, in bytes.
    pub max_record_bytes: usize,
    /// Most attributes on one record, and on one resource.
    pub max_attributes: usize,
    /// Most fields in a JSON body or key/value body, counted after flattening nested objects.
    pub max_fields: usize,
    /// Longest field or attribute name (a flattened JSON name counts whole), in bytes.
    pub max_key_bytes: usize,
    /// Deepest nesting of objects in a JSON body or of lists and maps in an OTLP value.
    pub max_depth: usize,
    /// Most bytes of columns the records of one request may fill; records past it are
    /// rejected (`request_too_large`). Bounds what any mix of small records and large values
    /// can cost. A log resource's unmapped attributes are stored once and count once; the
    /// mapped ones (a cluster name) and a metrics resource's attributes are copied into every
    /// row and count every time.
    pub max_request_rows_bytes: usize,
    /// Most metric data points in one request; points past it are rejected.
    pub max_data_points: usize,
    /// Most bytes one OTLP request (or Kafka message) may take once decoded, measured on
    /// the encoded bytes before decoding (see `sources/otlp/decoded_size.rs`); larger requests are
    /// refused whole with 413 / RESOURCE_EXHAUSTED.
    pub max_decoded_bytes: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            max_record_bytes: 64 * 1024,
            max_attributes: 128,
            max_fields: 256,
            max_key_bytes: 256,
            max_depth: 8,
            max_request_rows_bytes: 32 << 20,
            max_data_points: 50_000,
            max_decoded_bytes: 64 << 20,
        }
    }
}

/// The fixed cost of one row in an event batch besides its text (offsets, validity bits,
/// numbers and timestamps), counted against `max_request_rows_bytes`.
pub const ROW_OVERHEAD_BYTES: usize = 320;

impl RecordLimits {
    pub fn validate(&self, prefix: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut within = |key: &str, value: usize, min: usize, max: usize| {
            if !(min..=max).contains(&value) {
                errors.push(ConfigError::new(
                    format!("{prefix}.{key}"),
                    format!("must be between {min} and {max}"),
                ));
            }
        };
        within("max_record_bytes", self.max_record_bytes, 1024, 16 << 20);
        within("max_attributes", self.max_attributes, 8, 100_000);
        within("max_fields", self.max_fields, 8, 100_000);
        within("max_key_bytes", self.max_key_bytes, 32, 65_536);
        within("max_depth", self.max_depth, 1, 64);
        within("max_request_rows_bytes", self.max_request_rows_bytes, 1 << 20, 4 << 30);
        within("max_data_points", self.max_data_points, 1, 10_000_000);
        within("max_decoded_bytes", self.max_decoded_bytes, 1 << 20, 16 << 30);
        errors
    }

    pub fn record_bytes(&self, what: &str, len: usize) -> Result<(), Rejection> {
        if len > self.max_record_bytes {
            return Err(Rejection::new(
                RejectReason::RecordTooLarge,
                format!(
                    "{what} is {len} bytes, more than intake.limits.max_record_bytes ({})",
                    self.max_record_bytes
                ),
            ));
        }
        Ok(())
    }

    pub fn attributes(&self, what: &str, count: usize) -> Result<(), Rejection> {
        if count > self.max_attributes {
            return Err(Rejection::new(
                RejectReason::TooManyFields,
                format!(
                    "{what} has {count} attributes, more than intake.limits.max_attributes ({})",
                    self.max_attributes
                ),
            ));
        }
        Ok(())
    }

    pub fn fields(&self, count: usize) -> Result<(), Rejection> {
        if count > self.max_fields {
            return Err(Rejection::new(
                RejectReason::TooManyFields,
                format!(
                    "the body has more than intake.limits.max_fields ({}) fields",
                    self.max_fields
                ),
            ));
        }
        Ok(())
    }

    pub fn key(&self, len: usize) -> Result<(), Rejection> {
        if len > self.max_key_bytes {
            return Err(Rejection::new(
                RejectReason::KeyTooLong,
                format!(
                    "a field name is {len} bytes, more than intake.limits.max_key_bytes ({})",
                    self.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    pub fn depth(&self, depth: usize) -> Result<(), Rejection> {
        if depth > self.max_depth {
            return Err(Rejection::new(
                RejectReason::TooDeep,
                format!(
                    "the body nests deeper than intake.limits.max_depth ({})",
                    self.max_depth
                ),
            ));
        }
        Ok(())
    }
}
