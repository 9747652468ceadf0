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

//!
//! This file holds the `sinks` section, the keys every output shares and how an output is
//! parsed; each type's own keys are in `outputs.rs` and [`SinksConfig::validate`] in
//! `validate.rs`.

mod outputs;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verity_model::alert::{AlertStatus, Severity};

pub use self::outputs::{
    BodyFormat, ElasticConfig, FileConfig, HecAckConfig, HecConfig, KafkaConfig, OcsfConfig, SentinelConfig,
    StdoutConfig, SyslogConfig, SyslogTransport, TlsConfig, WebhookConfig, is_guid, parse_delimiter,
};

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
fn serde_path_to_error_free<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, serde_yaml::Error> {
    serde_yaml::from_value(v)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a `sinks` section, for the tests of this module and its children.
    pub(super) fn parse(y: &str) -> Result<SinksConfig, String> {
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
}
