//! Configuration: strict YAML structs, layered as embedded defaults < file < environment
//! (`VERITY__SECTION__KEY=value`), then a pure [`Config::validate`] that reports every error
//! with its path before anything binds a socket or opens a file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use verity_model::tls::ServerTlsConfig;

pub use verity_collector::ingest::binding::{IntakeConfig, SenderClass, TrustRule};
pub use verity_collector::ingest::sender::{TokenConfig, TrustedProxyConfig};

pub use verity_collector::dead_letter::DeadLetterConfig;
pub use verity_model::config_error::ConfigError;

mod layers;
#[cfg(test)]
mod tests;
mod validate;

pub use layers::{load, load_text};
pub use validate::{listener_tls, settings};

/// The embedded defaults: what `verity run` uses with no file and no environment.
pub const DEFAULTS_YAML: &str = include_str!("../../config/default.yaml");

/// Environment variables with this prefix override config keys: `VERITY__OTLP__GRPC__LISTEN`.
pub const ENV_PREFIX: &str = "VERITY__";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub otlp: OtlpConfig,
    pub intake: IntakeConfig,
    pub pipeline: PipelineConfig,
    pub admin: AdminConfig,
    pub archive: ArchiveConfig,
    pub dead_letter: DeadLetterConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub rules: RulesConfig,
    pub sinks: verity_sinks::SinksConfig,
    pub kafka: verity_collector::sources::kafka::KafkaConfig,
    pub telemetry: TelemetryConfig,
    pub control: verity_control::ControlConfig,
    pub policy: verity_policy::config::PolicyConfig,
}

/// Verity's own traces and metrics over OTLP (off by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub enabled: bool,
    /// OTLP/gRPC endpoint of a collector, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    pub service_name: String,
    /// How often metrics are exported (and the span batch delay).
    pub export_interval_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://127.0.0.1:4317".into(),
            service_name: "verity".into(),
            export_interval_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Evaluate the built-in zero-trust pack.
    pub builtin_pack: bool,
    /// More rule files or directories (one rule per YAML file).
    pub dirs: Vec<PathBuf>,
    /// Bounded out-of-orderness of event time, in seconds (the watermark trails by this).
    pub lateness_secs: u64,
    /// A sender silent this long no longer holds event time back (per-sender watermarks).
    pub sender_idle_secs: u64,
    /// … nor does one whose newest event is this far behind the wall clock.
    pub sender_max_lag_secs: u64,
    /// How often rule state (learned sets, open windows) is checkpointed to `state_dir`.
    pub checkpoint_secs: u64,
    /// Where stateful rules keep state across restarts (first_seen learned sets).
    pub state_dir: Option<PathBuf>,
    /// Principals on the revocation list (`is_revoked(...)` in rules).
    pub revoked: Vec<String>,
    /// How often rule files are checked for changes (0 disables; SIGHUP always reloads).
    pub reload_poll_secs: u64,
    /// Keys a stateful rule may hold before the least recently seen are evicted (a rule's
    /// own `max_keys` overrides it).
    pub max_keys: usize,
    /// How much of an event's line an alert's evidence keeps; a longer line is cut at a
    /// character boundary and its full length given as `raw_bytes`.
    pub max_evidence_bytes: usize,
    /// Threads evaluating the rules on each batch, each rule on one of them; 0: one per core.
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    pub enabled: bool,
    pub listen: String,
    /// TLS on this listener; unset: plain TCP.
    pub tls: Option<ServerTlsConfig>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: String::new(),
            tls: None,
        }
    }
}

impl ListenerConfig {
    /// Whether clients of this listener present certificates that identify them.
    pub fn client_certificates(&self) -> bool {
        self.tls.as_ref().is_some_and(ServerTlsConfig::asks_client_certificate)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    pub grpc: ListenerConfig,
    pub http: ListenerConfig,
    /// Cap on a request's decompressed size, in bytes.
    pub max_request_bytes: u64,
    /// What all OTLP requests in flight may hold in memory together (bodies, decoded
    /// requests, their rows until processed); past it requests get 503 / UNAVAILABLE.
    pub max_in_flight_bytes: u64,
    /// `Retry-After` seconds sent with 503 answers when the pipeline is full.
    pub retry_after_secs: u32,
    /// Bearer tokens senders may present; a token's `name` becomes the sender identity.
    pub tokens: Vec<TokenConfig>,
    /// Verity behind its own proxy (an Istio sidecar): requests from these addresses are
    /// identified by the URI in their `x-forwarded-client-cert` header.
    pub trusted_proxy: Option<TrustedProxyConfig>,
    /// Patterns (`*` wildcards) of sender identities allowed to send; empty: any
    /// authenticated sender.
    pub allowed_senders: Vec<String>,
    /// Keep requests without an identity (records get `sender_verified = false`) instead of
    /// refusing them with 401 / UNAUTHENTICATED once an authentication method is set.
    pub accept_unauthenticated: bool,
    /// Listen on non-loopback addresses without any sender authentication.
    pub allow_insecure: bool,
}

impl OtlpConfig {
    /// Whether senders on `listener` authenticate in a way the network cannot copy: a client
    /// certificate, a trusted proxy, or a bearer token inside TLS (in plain text anyone on the
    /// path can read and replay it). Unauthenticated senders must not be accepted.
    pub fn authenticates_beyond_loopback(&self, listener: &ListenerConfig) -> bool {
        let tokens_over_tls = !self.tokens.is_empty() && listener.tls.is_some();
        (listener.client_certificates() || tokens_over_tls || self.trusted_proxy.is_some())
            && !self.accept_unauthenticated
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub batch_max_rows: usize,
    pub batch_max_delay_ms: u64,
    /// Requests (or source batches) waiting to be coalesced.
    pub intake_capacity: usize,
    /// Coalesced batches waiting for the stages.
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    pub listen: String,
    /// Bearer token for the revocation API (`/revocations`); unset: that API is refused.
    pub token: Option<verity_secret::SecretRef>,
    /// TLS on the admin listener; unset: plain HTTP.
    pub tls: Option<ServerTlsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Directory for `events.jsonl` and `metrics.jsonl`; unset disables the archive.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,verity_collector=debug`.
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long draining may take after SIGTERM before Verity gives up and exits non-zero.
    pub drain_timeout_secs: u64,
}

/// A configuration that passed validation, with parsed values.
#[derive(Debug, Clone)]
pub struct Settings {
    pub raw: Config,
    pub grpc_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub max_request_bytes: usize,
    pub max_in_flight_bytes: usize,
    pub retry_after_secs: u32,
    pub pipeline: verity_collector::pipeline::PipelineSettings,
    pub archive_dir: Option<PathBuf>,
    pub dead_letter: verity_collector::dead_letter::DeadLetterConfig,
    pub log_format: LogFormat,
    pub log_level: String,
    pub drain_timeout: Duration,
    pub rules: RulesConfig,
    pub sinks: verity_sinks::SinksConfig,
    pub kafka: verity_collector::sources::kafka::KafkaConfig,
    pub telemetry: TelemetryConfig,
    pub control: verity_control::ControlConfig,
    pub policy: verity_policy::config::PolicyConfig,
}
