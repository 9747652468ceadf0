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

/// The embedded defaults: what `verity run` uses with no file and no environment.
pub use verity_collector::dead_letter::DeadLetterConfig;

pub const DEFAULTS_YAML: &str = include_str!("../config/default.yaml");

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

/// One problem in the configuration, with the path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
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
}

/// Loads the layers: defaults, then `file` if given, then `env` (pass `std::env::vars()`).
pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, Vec<ConfigError>> {
    let Some(path) = file else {
        return load_text(None, env);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            path.display().to_string(),
            format!("cannot read: {e}"),
        )]
    })?;
    load_text(Some((&path.display().to_string(), &text)), env)
}

/// [`load`] with the file's text already read: `file` is `(name used in errors, YAML text)`.
pub fn load_text(
    file: Option<(&str, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, Vec<ConfigError>> {
    let mut tree: Value = serde_yaml::from_str(DEFAULTS_YAML)
        .map_err(|e| vec![ConfigError::new("<embedded defaults>", e.to_string())])?;
    if let Some((name, text)) = file {
        let overlay: Value =
            serde_yaml::from_str(text).map_err(|e| vec![ConfigError::new(name, format!("invalid YAML: {e}"))])?;
        if !overlay.is_null() {
            merge(&mut tree, overlay);
        }
    }
    let mut env_errors = Vec::new();
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in env {
        if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
            overrides.insert(rest.to_string(), v);
        }
    }
    for (rest, v) in overrides {
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            env_errors.push(ConfigError::new(
                format!("{ENV_PREFIX}{rest}"),
                "malformed variable name",
            ));
            continue;
        }
        let value: Value = serde_yaml::from_str(&v).unwrap_or(Value::String(v));
        set_path(&mut tree, &path, value);
    }
    if !env_errors.is_empty() {
        return Err(env_errors);
    }
    deserialize_sections(tree)
}

/// Deserializes section by section so that one bad section does not hide errors in others.
fn deserialize_sections(tree: Value) -> Result<Config, Vec<ConfigError>> {
    let Value::Mapping(map) = tree else {
        return Err(vec![ConfigError::new("<root>", "the configuration must be a mapping")]);
    };
    let mut errors = Vec::new();
    let mut cfg = Config::default();
    fn section<T: serde::de::DeserializeOwned>(name: &str, v: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." || inner.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}.{inner}")
                };
                errors.push(ConfigError::new(path, e.into_inner().to_string()));
                None
            }
        }
    }
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            errors.push(ConfigError::new("<root>", format!("non-string key {k:?}")));
            continue;
        };
        match key {
            "otlp" => cfg.otlp = section(key, v, &mut errors).unwrap_or_default(),
            "intake" => cfg.intake = section(key, v, &mut errors).unwrap_or_default(),
            "pipeline" => cfg.pipeline = section(key, v, &mut errors).unwrap_or_default(),
            "admin" => cfg.admin = section(key, v, &mut errors).unwrap_or_default(),
            "archive" => cfg.archive = section(key, v, &mut errors).unwrap_or_default(),
            "dead_letter" => cfg.dead_letter = section(key, v, &mut errors).unwrap_or_default(),
            "log" => cfg.log = section(key, v, &mut errors).unwrap_or_default(),
            "shutdown" => cfg.shutdown = section(key, v, &mut errors).unwrap_or_default(),
            "rules" => cfg.rules = section(key, v, &mut errors).unwrap_or_default(),
            "sinks" => cfg.sinks = section(key, v, &mut errors).unwrap_or_default(),
            "kafka" => cfg.kafka = section(key, v, &mut errors).unwrap_or_default(),
            "telemetry" => cfg.telemetry = section(key, v, &mut errors).unwrap_or_default(),
            "control" => cfg.control = section(key, v, &mut errors).unwrap_or_default(),
            other => errors.push(ConfigError::new(
                other,
                "unknown section; expected one of otlp, intake, pipeline, admin, archive, dead_letter, log, shutdown, rules, sinks, kafka, telemetry, control",
            )),
        }
    }
    if errors.is_empty() { Ok(cfg) } else { Err(errors) }
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn set_path(tree: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *tree = value;
        return;
    };
    if !tree.is_mapping() {
        *tree = Value::Mapping(Default::default());
    }
    if let Value::Mapping(m) = tree {
        let key = Value::String(first.clone());
        let child = m.entry(key).or_insert(Value::Null);
        set_path(child, rest, value);
    }
}

impl Config {
    /// Checks everything that can be checked without I/O and returns parsed settings, or
    /// every error found.
    pub fn validate(&self) -> Result<Settings, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut addr = |path: &str, enabled: bool, s: &str| -> Option<SocketAddr> {
            if !enabled {
                return None;
            }
            match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(ConfigError::new(
                        path,
                        format!("{s:?} is not an ip:port socket address"),
                    ));
                    None
                }
            }
        };
        let grpc_listen = addr("otlp.grpc.listen", self.otlp.grpc.enabled, &self.otlp.grpc.listen);
        let http_listen = addr("otlp.http.listen", self.otlp.http.enabled, &self.otlp.http.listen);
        let admin_listen = addr("admin.listen", self.admin.enabled, &self.admin.listen);
        let bound: Vec<(&str, SocketAddr)> = [
            ("otlp.grpc.listen", grpc_listen),
            ("otlp.http.listen", http_listen),
            ("admin.listen", admin_listen),
        ]
        .into_iter()
        .filter_map(|(p, a)| a.map(|a| (p, a)))
        .collect();
        for (i, (p, a)) in bound.iter().enumerate() {
            for (q, b) in &bound[i + 1..] {
                if a == b && a.port() != 0 {
                    errors.push(ConfigError::new(*q, format!("{b} is already used by {p}")));
                }
            }
        }
        for (name, listener, addr) in [
            ("grpc", &self.otlp.grpc, grpc_listen),
            ("http", &self.otlp.http, http_listen),
        ] {
            if let Some(tls) = &listener.tls {
                errors.extend(
                    tls.validate(&format!("otlp.{name}.tls"))
                        .into_iter()
                        .map(|(p, m)| ConfigError::new(p, m)),
                );
            }
            if let Some(a) = addr
                && !a.ip().is_loopback()
                && !self.otlp.authenticates_beyond_loopback(listener)
                && !self.otlp.allow_insecure
            {
                errors.push(ConfigError::new(
                    format!("otlp.{name}.listen"),
                    format!(
                        "{a} is reachable from other hosts but senders are not authenticated: any pod could send records about anyone. \
                         Set otlp.{name}.tls with client_auth: required (mutual TLS), otlp.tokens together with otlp.{name}.tls, \
                         or otlp.trusted_proxy, and leave otlp.accept_unauthenticated off; \
                         or set otlp.allow_insecure: true to accept telemetry from anyone"
                    ),
                ));
            }
        }
        if let Some(tls) = &self.admin.tls {
            errors.extend(
                tls.validate("admin.tls")
                    .into_iter()
                    .map(|(p, m)| ConfigError::new(p, m)),
            );
        }
        let mut token_names = std::collections::BTreeSet::new();
        for (i, t) in self.otlp.tokens.iter().enumerate() {
            if t.name.trim().is_empty() {
                errors.push(ConfigError::new(format!("otlp.tokens[{i}].name"), "must not be empty"));
            } else if !token_names.insert(t.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("otlp.tokens[{i}].name"),
                    format!("{:?} is used by another token", t.name),
                ));
            }
            if t.secret.env.is_some() == t.secret.file.is_some() {
                errors.push(ConfigError::new(
                    format!("otlp.tokens[{i}].secret"),
                    "must name exactly one of env or file",
                ));
            }
        }
        if let Some(p) = &self.otlp.trusted_proxy
            && p.addresses.is_empty()
        {
            errors.push(ConfigError::new(
                "otlp.trusted_proxy.addresses",
                "must list the proxy's addresses (127.0.0.6 for an Istio sidecar)",
            ));
        }
        for (i, p) in self.otlp.allowed_senders.iter().enumerate() {
            if p.trim().is_empty() {
                errors.push(ConfigError::new(format!("otlp.allowed_senders[{i}]"), "empty pattern"));
            }
        }
        let max = self.otlp.max_request_bytes;
        if !(1024..=(1 << 30)).contains(&max) {
            errors.push(ConfigError::new(
                "otlp.max_request_bytes",
                format!("{max} must be between 1024 and 1073741824"),
            ));
        }
        let in_flight = self.otlp.max_in_flight_bytes;
        if in_flight < max || in_flight > (1 << 40) {
            errors.push(ConfigError::new(
                "otlp.max_in_flight_bytes",
                format!("{in_flight} must be at least otlp.max_request_bytes ({max}) and at most 1 TiB"),
            ));
        }
        if !(1..=3600).contains(&self.otlp.retry_after_secs) {
            errors.push(ConfigError::new("otlp.retry_after_secs", "must be between 1 and 3600"));
        }
        let p = &self.pipeline;
        if !(1..=1_000_000).contains(&p.batch_max_rows) {
            errors.push(ConfigError::new(
                "pipeline.batch_max_rows",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=60_000).contains(&p.batch_max_delay_ms) {
            errors.push(ConfigError::new(
                "pipeline.batch_max_delay_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(1..=100_000).contains(&p.intake_capacity) {
            errors.push(ConfigError::new(
                "pipeline.intake_capacity",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=10_000).contains(&p.queue_capacity) {
            errors.push(ConfigError::new(
                "pipeline.queue_capacity",
                "must be between 1 and 10000",
            ));
        }
        for (path, message) in self.dead_letter.validate() {
            let message = if path == "dead_letter.path" {
                "must be set: rejected records are never discarded".to_string()
            } else {
                message
            };
            errors.push(ConfigError::new(path, message));
        }
        if let Some(dir) = &self.archive.dir
            && dir.as_os_str().is_empty()
        {
            errors.push(ConfigError::new("archive.dir", "must be a directory path or null"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            errors.push(ConfigError::new(
                "log.level",
                format!("invalid filter {:?}: {e}", self.log.level),
            ));
        }
        if self.rules.lateness_secs > 3600 {
            errors.push(ConfigError::new("rules.lateness_secs", "must be at most 3600"));
        }
        if self.rules.checkpoint_secs > 3600 {
            errors.push(ConfigError::new("rules.checkpoint_secs", "must be at most 3600"));
        }
        if self.rules.sender_idle_secs > 86_400 {
            errors.push(ConfigError::new("rules.sender_idle_secs", "must be at most 86400"));
        }
        if !(100..=100_000_000).contains(&self.rules.max_keys) {
            errors.push(ConfigError::new("rules.max_keys", "must be between 100 and 100000000"));
        }
        if !(256..=(1 << 20)).contains(&self.rules.max_evidence_bytes) {
            errors.push(ConfigError::new(
                "rules.max_evidence_bytes",
                "must be between 256 and 1048576",
            ));
        }
        if self.rules.reload_poll_secs > 3600 {
            errors.push(ConfigError::new(
                "rules.reload_poll_secs",
                "must be at most 3600 (0 disables polling)",
            ));
        }
        for (i, p) in self.rules.revoked.iter().enumerate() {
            if p.trim().is_empty() {
                errors.push(ConfigError::new(format!("rules.revoked[{i}]"), "empty principal"));
            }
        }
        if !(1..=3600).contains(&self.shutdown.drain_timeout_secs) {
            errors.push(ConfigError::new(
                "shutdown.drain_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        for e in self.sinks.validate() {
            errors.push(ConfigError::new(e.path, e.message));
        }
        for (path, message) in self.kafka.validate() {
            errors.push(ConfigError::new(path, message));
        }
        for (path, message) in self.intake.validate() {
            errors.push(ConfigError::new(path, message));
        }
        for (path, message) in self.control.validate() {
            errors.push(ConfigError::new(path, message));
        }
        if self.telemetry.enabled {
            let e = &self.telemetry.endpoint;
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                errors.push(ConfigError::new(
                    "telemetry.endpoint",
                    format!("{e:?} is not an http(s):// URL"),
                ));
            }
            if !(1..=3600).contains(&self.telemetry.export_interval_secs) {
                errors.push(ConfigError::new(
                    "telemetry.export_interval_secs",
                    "must be between 1 and 3600",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Settings {
            raw: self.clone(),
            grpc_listen,
            http_listen,
            admin_listen,
            max_request_bytes: max as usize,
            max_in_flight_bytes: usize::try_from(in_flight).unwrap_or(usize::MAX),
            retry_after_secs: self.otlp.retry_after_secs,
            pipeline: verity_collector::pipeline::PipelineSettings {
                batch_max_rows: p.batch_max_rows,
                batch_max_delay: Duration::from_millis(p.batch_max_delay_ms),
                intake_capacity: p.intake_capacity,
                queue_capacity: p.queue_capacity,
            },
            archive_dir: self.archive.dir.clone(),
            dead_letter: self.dead_letter.clone(),
            log_format: self.log.format,
            log_level: self.log.level.clone(),
            drain_timeout: Duration::from_secs(self.shutdown.drain_timeout_secs),
            rules: self.rules.clone(),
            sinks: self.sinks.clone(),
            kafka: self.kafka.clone(),
            telemetry: self.telemetry.clone(),
            control: self.control.clone(),
        })
    }
}

/// Loads and validates in one step.
pub fn settings(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, Vec<ConfigError>> {
    load(file, env)?.validate()
}

/// Reads every certificate, key and CA file; errors name the config key, the file and the
/// reason. `verity validate` and `verity run` both call this before binding anything.
pub fn listener_tls(settings: &Settings) -> Result<verity_collector::listener::ListenerTls, Vec<ConfigError>> {
    let raw = &settings.raw;
    let mut errors = Vec::new();
    let mut one = |key: &str,
                   enabled: bool,
                   cfg: Option<&verity_model::tls::ServerTlsConfig>,
                   alpn: verity_collector::listener::Alpn| {
        let cfg = cfg.filter(|_| enabled)?;
        match verity_collector::listener::ServerTls::load(cfg, alpn) {
            Ok(tls) => Some(std::sync::Arc::new(tls)),
            Err(e) => {
                errors.push(ConfigError::new(key, e.to_string()));
                None
            }
        }
    };
    let loaded = verity_collector::listener::ListenerTls {
        otlp_grpc: one(
            "otlp.grpc.tls",
            settings.grpc_listen.is_some(),
            raw.otlp.grpc.tls.as_ref(),
            verity_collector::listener::Alpn::H2,
        ),
        otlp_http: one(
            "otlp.http.tls",
            settings.http_listen.is_some(),
            raw.otlp.http.tls.as_ref(),
            verity_collector::listener::Alpn::Http1,
        ),
        admin: one(
            "admin.tls",
            settings.admin_listen.is_some(),
            raw.admin.tls.as_ref(),
            verity_collector::listener::Alpn::Http1,
        ),
        ext_authz: one(
            "control.ext_authz_tls",
            settings.control.ext_authz_listen.is_some(),
            settings.control.ext_authz_tls.as_ref(),
            verity_collector::listener::Alpn::H2,
        ),
    };
    if errors.is_empty() { Ok(loaded) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn embedded_defaults_are_valid_and_local() {
        let s = settings(None, Vec::new()).expect("defaults valid");
        assert_eq!(s.grpc_listen, Some("127.0.0.1:4317".parse().expect("addr")));
        assert_eq!(s.http_listen, Some("127.0.0.1:4318".parse().expect("addr")));
        assert_eq!(s.max_request_bytes, 8 << 20);
    }

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("v.yaml");
        std::fs::write(
            &path,
            "otlp:\n  http:\n    listen: 127.0.0.1:9999\npipeline:\n  batch_max_rows: 10\n",
        )
        .expect("write");
        let s = settings(
            Some(&path),
            env(&[
                ("VERITY__PIPELINE__BATCH_MAX_ROWS", "20"),
                ("VERITY__OTLP__GRPC__ENABLED", "false"),
                ("OTHER", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.http_listen, Some("127.0.0.1:9999".parse().expect("addr")));
        assert_eq!(s.pipeline.batch_max_rows, 20);
        assert_eq!(s.grpc_listen, None);
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("v.yaml");
        std::fs::write(
            &path,
            "otlp:\n  grpc:\n    listen: nowhere\n  max_request_bytes: 5\npipeline:\n  batch_max_rowz: 1\nadmin:\n  listen: 127.0.0.1:4318\nbogus: 1\n",
        )
        .expect("write");
        let errors = load(Some(&path), Vec::new()).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"pipeline.batch_max_rowz"), "{errors:?}");
        assert!(paths.contains(&"bogus"), "{errors:?}");
        assert!(
            errors.iter().any(|e| e.message.contains("batch_max_rowz")),
            "{errors:?}"
        );

        std::fs::write(
            &path,
            "otlp:\n  grpc:\n    listen: nowhere\n  max_request_bytes: 5\nadmin:\n  listen: 127.0.0.1:4318\n",
        )
        .expect("write");
        let errors = settings(Some(&path), Vec::new()).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["otlp.grpc.listen", "admin.listen", "otlp.max_request_bytes"],
            "{errors:?}"
        );
    }

    #[test]
    fn env_type_errors_name_the_key() {
        let errors = settings(None, env(&[("VERITY__PIPELINE__QUEUE_CAPACITY", "lots")])).unwrap_err();
        assert_eq!(errors[0].path, "pipeline.queue_capacity");
    }
}
