//! The keys of each output type (`splunk_hec`, `elasticsearch`, `syslog`, …) and the TLS
//! settings they share, with the value formats they accept (LEEF delimiters, GUIDs).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use verity_secret::SecretRef;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Alerts are appended as JSON lines.
    pub path: PathBuf,
}

/// TLS settings for outputs that connect out.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with extra CA certificates to trust (besides the built-in web roots).
    pub ca_file: Option<PathBuf>,
    /// The name to verify in the server's certificate, when it differs from the host.
    pub server_name: Option<String>,
    /// Accept any certificate. For tests only; logged loudly.
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecConfig {
    /// Base URL, e.g. `https://splunk.example:8088`.
    pub endpoint: String,
    pub token: SecretRef,
    #[serde(default = "default_source")]
    pub source: String,
    #[serde(default = "default_sourcetype")]
    pub sourcetype: String,
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    /// Indexer acknowledgement: an alert counts as delivered only once Splunk acks it.
    #[serde(default)]
    pub ack: Option<HecAckConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_source() -> String {
    "verity".into()
}
fn default_sourcetype() -> String {
    "verity:alert".into()
}
fn default_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecAckConfig {
    /// The channel GUID; generated at start when unset.
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default = "default_ack_poll_ms")]
    pub poll_interval_ms: u64,
    /// How long to wait for an ack before sending the batch again.
    #[serde(default = "default_ack_timeout")]
    pub timeout_secs: u64,
}

fn default_ack_poll_ms() -> u64 {
    500
}
fn default_ack_timeout() -> u64 {
    60
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticConfig {
    /// Base URL of the cluster, e.g. `https://es.example:9200`.
    pub endpoint: String,
    /// Index name; `%Y`, `%m` and `%d` are replaced by the alert's date (UTC).
    #[serde(default = "default_index")]
    pub index: String,
    #[serde(default)]
    pub api_key: Option<SecretRef>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretRef>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_index() -> String {
    "verity-alerts-%Y.%m.%d".into()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyslogTransport {
    #[default]
    Tcp,
    Tls,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    #[default]
    Cef,
    Leef,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `host:port` of the receiver.
    pub address: String,
    #[serde(default)]
    pub transport: SyslogTransport,
    #[serde(default)]
    pub format: BodyFormat,
    /// LEEF attribute delimiter: one character, or hex such as `x09`.
    #[serde(default)]
    pub leef_delimiter: Option<String>,
    #[serde(default = "default_facility")]
    pub facility: u8,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// HOSTNAME field; this machine's host name when unset.
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_facility() -> u8 {
    4
}
fn default_app_name() -> String {
    "verity".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// librdkafka properties passed through (e.g. `security.protocol`, `sasl.mechanism`).
    #[serde(default, deserialize_with = "verity_model::scalar_map::scalar_map")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets (e.g. `sasl.password`).
    #[serde(default)]
    pub secret_properties: BTreeMap<String, SecretRef>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC-SHA256 key for the `X-Verity-Signature` header.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcsfConfig {
    /// Append Detection Findings as JSON lines to this file …
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// … or POST them as a JSON array to this URL.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub token: Option<SecretRef>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The data collection endpoint, e.g. `https://my-dce.eastus-1.ingest.monitor.azure.com`.
    pub endpoint: String,
    /// The immutable id of the data collection rule (`dcr-…`).
    pub dcr_id: String,
    /// The stream, e.g. `Custom-VerityAlerts_CL`.
    pub stream: String,
    /// A bearer token for `https://monitor.azure.com` (a file kept fresh by a token helper).
    pub token: SecretRef,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

/// A LEEF delimiter: a single character, or `xHH` / `0xHH`.
pub fn parse_delimiter(s: &str) -> Option<char> {
    let mut chars = s.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return Some(c);
    }
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix('x'))?;
    let n = u8::from_str_radix(hex, 16).ok()?;
    Some(char::from(n))
}

pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12].iter().zip(&parts).all(|(n, p)| p.len() == *n)
        && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = SecretRef {
            env: Some("TOKEN_VAR".into()),
            file: None,
        };
        assert_eq!(format!("{s:?}"), "SecretRef(env TOKEN_VAR)");
        assert_eq!(parse_delimiter("x09"), Some('\t'));
        assert_eq!(parse_delimiter("^"), Some('^'));
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
    }
}
