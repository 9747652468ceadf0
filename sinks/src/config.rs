//! Sink configuration: the `sinks` section. Strict structs; [`SinksConfig::validate`] checks
//! everything that needs no I/O and reports every problem with its path.
//!
//! ```yaml
//! sinks:
//!   spool_dir: verity-data/spool
//!   outputs:
//!     splunk:
//!       type: splunk_hec
//!       endpoint: https://splunk.example:8088
//!       token: {env: SPLUNK_HEC_TOKEN}
//!       routing: {min_severity: medium}
//! ```
//!
//! Each output has the common keys `type`, `enabled`, `routing`, `batch`, `retry` and `spool`,
//! and the keys of its type. Secrets are never written inline: they name an environment
//! variable or a file, are resolved at start, and print as `<redacted>`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verity_model::alert::{AlertStatus, Severity};
use verity_secret::SecretRef;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Each output keeps its spool and dead-letter file in `<spool_dir>/<name>/`.
    pub spool_dir: PathBuf,
    pub outputs: BTreeMap<String, OutputConfig>,
}

/// One output: common delivery settings plus its type's settings.
#[derive(Debug, Clone, Serialize)]
pub struct OutputConfig {
    pub enabled: bool,
    pub routing: Routing,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub spool: SpoolConfig,
    #[serde(flatten)]
    pub kind: OutputKind,
}

/// The keys every output has; everything else belongs to its type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    routing: Routing,
    #[serde(default)]
    batch: BatchConfig,
    #[serde(default)]
    retry: RetryConfig,
    #[serde(default)]
    spool: SpoolConfig,
}

fn yes() -> bool {
    true
}

const COMMON_KEYS: &[&str] = &["enabled", "routing", "batch", "retry", "spool"];

impl<'de> Deserialize<'de> for OutputConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = serde_yaml::Mapping::deserialize(d)?;
        let mut common = serde_yaml::Mapping::new();
        let mut own = serde_yaml::Mapping::new();
        for (k, v) in map {
            if k.as_str().is_some_and(|k| COMMON_KEYS.contains(&k)) {
                common.insert(k, v);
            } else {
                own.insert(k, v);
            }
        }
        let c: Common = serde_path_to_error_free(serde_yaml::Value::Mapping(common)).map_err(D::Error::custom)?;
        if !own.contains_key("type") {
            return Err(D::Error::custom(format!(
                "missing `type`; expected one of {}",
                OutputKind::NAMES.join(", ")
            )));
        }
        let kind: OutputKind = serde_path_to_error_free(serde_yaml::Value::Mapping(own)).map_err(D::Error::custom)?;
        Ok(OutputConfig {
            enabled: c.enabled,
            routing: c.routing,
            batch: c.batch,
            retry: c.retry,
            spool: c.spool,
            kind,
        })
    }
}

/// Deserializes a sub-tree, keeping the nested key path in the message.
fn serde_path_to_error_free<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, String> {
    serde_yaml::from_value(v).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputKind {
    Stdout(StdoutConfig),
    File(FileConfig),
    SplunkHec(HecConfig),
    Elasticsearch(ElasticConfig),
    Syslog(SyslogConfig),
    Kafka(KafkaConfig),
    Webhook(WebhookConfig),
    Ocsf(OcsfConfig),
    Sentinel(SentinelConfig),
}

impl OutputKind {
    pub const NAMES: &'static [&'static str] = &[
        "stdout",
        "file",
        "splunk_hec",
        "elasticsearch",
        "syslog",
        "kafka",
        "webhook",
        "ocsf",
        "sentinel",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            OutputKind::Stdout(_) => "stdout",
            OutputKind::File(_) => "file",
            OutputKind::SplunkHec(_) => "splunk_hec",
            OutputKind::Elasticsearch(_) => "elasticsearch",
            OutputKind::Syslog(_) => "syslog",
            OutputKind::Kafka(_) => "kafka",
            OutputKind::Webhook(_) => "webhook",
            OutputKind::Ocsf(_) => "ocsf",
            OutputKind::Sentinel(_) => "sentinel",
        }
    }
}

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

/// Which alerts an output gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    pub min_severity: Severity,
    pub statuses: Vec<AlertStatus>,
    /// Rule ids (`*` wildcards) to send; empty means all.
    pub include_rules: Vec<String>,
    pub exclude_rules: Vec<String>,
    /// Tags of which an alert must have at least one; empty means any.
    pub include_tags: Vec<String>,
    pub exclude_tags: Vec<String>,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            min_severity: Severity::Info,
            statuses: vec![AlertStatus::Firing, AlertStatus::Resolved, AlertStatus::Unknown],
            include_rules: Vec::new(),
            exclude_rules: Vec::new(),
            include_tags: Vec::new(),
            exclude_tags: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_events: usize,
    pub max_bytes: usize,
    /// How long a partial batch may wait for more alerts.
    pub max_wait_ms: u64,
    /// Batches in flight at once.
    pub concurrency: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 500,
            max_bytes: 1 << 20,
            max_wait_ms: 200,
            concurrency: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// After this long failing, a batch's alerts go to the output's dead-letter file.
    pub max_elapsed_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            max_elapsed_secs: 86_400,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub max_bytes: u64,
    pub max_events: u64,
    /// fsync every append. Turning it off trades crash safety for speed.
    pub fsync: bool,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_events: 1_000_000,
            fsync: true,
        }
    }
}

impl RetryConfig {
    pub fn initial(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }
    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }
    pub fn max_elapsed(&self) -> Duration {
        Duration::from_secs(self.max_elapsed_secs)
    }
}

/// A problem in the `sinks` section, with the path of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfigError {
    pub path: String,
    pub message: String,
}

fn is_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len() - 1 && !s.contains(' ')
}

impl SinksConfig {
    /// Checks what needs no I/O; every error has a path such as `sinks.outputs.splunk.endpoint`.
    pub fn validate(&self) -> Vec<SinkConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: String, message: String| errors.push(SinkConfigError { path, message });
        if self.spool_dir.as_os_str().is_empty() {
            err(
                "sinks.spool_dir".into(),
                "must be set: alerts are spooled on disk before delivery".into(),
            );
        }
        if !self.outputs.values().any(|o| o.enabled) {
            err(
                "sinks.outputs".into(),
                "no enabled output: alerts would have nowhere to go".into(),
            );
        }
        for (name, o) in &self.outputs {
            let p = |k: &str| format!("sinks.outputs.{name}.{k}");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                err(
                    format!("sinks.outputs.{name}"),
                    "output names may only use letters, digits, '_' and '-'".into(),
                );
            }
            if !(1..=100_000).contains(&o.batch.max_events) {
                err(p("batch.max_events"), "must be between 1 and 100000".into());
            }
            if !(1024..=(64 << 20)).contains(&o.batch.max_bytes) {
                err(p("batch.max_bytes"), "must be between 1024 and 67108864".into());
            }
            if o.batch.max_wait_ms > 60_000 {
                err(p("batch.max_wait_ms"), "must be at most 60000".into());
            }
            if !(1..=64).contains(&o.batch.concurrency) {
                err(p("batch.concurrency"), "must be between 1 and 64".into());
            }
            if o.retry.initial_backoff_ms == 0 || o.retry.initial_backoff_ms > o.retry.max_backoff_ms {
                err(
                    p("retry.initial_backoff_ms"),
                    "must be at least 1 and at most retry.max_backoff_ms".into(),
                );
            }
            if o.spool.max_events == 0 || o.spool.max_bytes < 4096 {
                err(
                    p("spool"),
                    "max_events must be at least 1 and max_bytes at least 4096".into(),
                );
            }
            if o.routing.statuses.is_empty() {
                err(p("routing.statuses"), "empty: the output would get nothing".into());
            }
            let mut secrets: Vec<(String, &SecretRef)> = Vec::new();
            let mut urls: Vec<(&str, &str)> = Vec::new();
            match &o.kind {
                OutputKind::Stdout(_) => {}
                OutputKind::File(f) => {
                    if f.path.as_os_str().is_empty() {
                        err(p("path"), "must be a file path".into());
                    }
                }
                OutputKind::SplunkHec(h) => {
                    urls.push(("endpoint", &h.endpoint));
                    secrets.push(("token".to_string(), &h.token));
                    if let Some(a) = &h.ack
                        && let Some(c) = &a.channel
                        && !is_guid(c)
                    {
                        err(p("ack.channel"), format!("{c:?} is not a GUID"));
                    }
                }
                OutputKind::Elasticsearch(e) => {
                    urls.push(("endpoint", &e.endpoint));
                    if let Some(k) = &e.api_key {
                        secrets.push(("api_key".to_string(), k));
                    }
                    if let Some(pw) = &e.password {
                        secrets.push(("password".to_string(), pw));
                    }
                    if e.username.is_some() != e.password.is_some() {
                        err(p("username"), "username and password go together".into());
                    }
                    if e.api_key.is_some() && e.username.is_some() {
                        err(p("api_key"), "use either api_key or username/password".into());
                    }
                    let sample = e.index.replace("%Y", "2026").replace("%m", "01").replace("%d", "01");
                    if sample.is_empty()
                        || sample
                            .chars()
                            .any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#".contains(c))
                    {
                        err(
                            p("index"),
                            "must be a lowercase Elasticsearch index name (no \\ / * ? \" < > | , # or spaces)".into(),
                        );
                    }
                }
                OutputKind::Syslog(s) => {
                    if s.address
                        .rsplit_once(':')
                        .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
                    {
                        err(p("address"), format!("{:?} is not host:port", s.address));
                    }
                    if s.facility > 23 {
                        err(p("facility"), "must be between 0 and 23".into());
                    }
                    if let Some(d) = &s.leef_delimiter
                        && parse_delimiter(d).is_none()
                    {
                        err(p("leef_delimiter"), "one character, or hex such as x09".into());
                    }
                }
                OutputKind::Kafka(k) => {
                    if k.brokers.trim().is_empty() {
                        err(p("brokers"), "must list at least one host:port".into());
                    }
                    if k.topic.trim().is_empty() {
                        err(p("topic"), "must be set".into());
                    }
                    for (key, s) in &k.secret_properties {
                        secrets.push((format!("secret_properties.{key}"), s));
                    }
                }
                OutputKind::Webhook(w) => {
                    urls.push(("url", &w.url));
                    if let Some(s) = &w.secret {
                        secrets.push(("secret".to_string(), s));
                    }
                }
                OutputKind::Ocsf(c) => {
                    match (&c.path, &c.url) {
                        (Some(_), None) => {}
                        (None, Some(u)) => urls.push(("url", u)),
                        _ => err(p("path"), "give exactly one of `path` or `url`".into()),
                    }
                    if let Some(t) = &c.token {
                        secrets.push(("token".to_string(), t));
                    }
                }
                OutputKind::Sentinel(s) => {
                    urls.push(("endpoint", &s.endpoint));
                    secrets.push(("token".to_string(), &s.token));
                    if s.dcr_id.is_empty() || s.stream.is_empty() {
                        err(p("dcr_id"), "dcr_id and stream must be set".into());
                    }
                }
            }
            for (key, s) in secrets {
                match (&s.env, &s.file) {
                    (Some(_), Some(_)) | (None, None) => err(
                        p(&key),
                        "give exactly one of `env` (a variable name) or `file` (a path)".into(),
                    ),
                    (Some(e), None) if e.is_empty() => err(p(&key), "empty variable name".into()),
                    _ => {}
                }
            }
            for (key, u) in urls {
                if !is_url(u) {
                    err(p(key), format!("{u:?} is not an http:// or https:// URL"));
                }
            }
        }
        errors
    }
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

    fn parse(y: &str) -> Result<SinksConfig, String> {
        serde_yaml::from_str(y).map_err(|e| e.to_string())
    }

    #[test]
    fn outputs_parse_with_common_and_own_keys() {
        let c = parse(
            "spool_dir: /tmp/s\noutputs:\n  hec:\n    type: splunk_hec\n    endpoint: https://h:8088\n    token: {env: T}\n    routing: {min_severity: high}\n    batch: {max_events: 10}\n",
        )
        .unwrap();
        let o = &c.outputs["hec"];
        assert_eq!(o.routing.min_severity, Severity::High);
        assert_eq!(o.batch.max_events, 10);
        assert!(matches!(&o.kind, OutputKind::SplunkHec(h) if h.sourcetype == "verity:alert"));
        let es = parse(
            "spool_dir: s\noutputs:\n  es: {type: elasticsearch, endpoint: 'http://h:9200', index: 'a-%Y.%m.%d'}\n",
        )
        .unwrap();
        assert!(es.validate().is_empty(), "{:?}", es.validate());
        let bad =
            parse("spool_dir: s\noutputs:\n  es: {type: elasticsearch, endpoint: 'http://h:9200', index: 'Alerts'}\n")
                .unwrap();
        assert_eq!(bad.validate()[0].path, "sinks.outputs.es.index");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn unknown_keys_and_types_are_errors() {
        let e =
            parse("outputs:\n  x:\n    type: splunk_hec\n    endpiont: https://h\n    token: {env: T}\n").unwrap_err();
        assert!(e.contains("endpiont"), "{e}");
        let e = parse("outputs:\n  x:\n    type: splunk\n").unwrap_err();
        assert!(e.contains("splunk_hec"), "{e}");
        let e = parse("outputs:\n  x:\n    path: /tmp/a\n").unwrap_err();
        assert!(e.contains("missing `type`"), "{e}");
        let e = parse("outputs:\n  x:\n    type: stdout\n    batch: {max_event: 1}\n").unwrap_err();
        assert!(e.contains("max_event"), "{e}");
    }

    #[test]
    fn validate_reports_paths() {
        let c = parse(
            "spool_dir: s\noutputs:\n  a:\n    type: webhook\n    url: ftp://x\n    secret: {env: A, file: /b}\n  b:\n    type: syslog\n    address: nohost\n    facility: 30\n",
        )
        .unwrap();
        let paths: Vec<String> = c.validate().into_iter().map(|e| e.path).collect();
        assert!(paths.contains(&"sinks.outputs.a.url".to_string()), "{paths:?}");
        assert!(paths.contains(&"sinks.outputs.a.secret".to_string()), "{paths:?}");
        assert!(paths.contains(&"sinks.outputs.b.address".to_string()), "{paths:?}");
        assert!(paths.contains(&"sinks.outputs.b.facility".to_string()), "{paths:?}");
    }

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
