//! The pure checks of a loaded [`Config`] into [`Settings`], every error with its key path,
//! and the one check that reads files before anything binds: the listeners' TLS material.

use super::*;

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
                errors.extend(tls.validate(&format!("otlp.{name}.tls")));
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
            errors.extend(tls.validate("admin.tls"));
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
        for mut e in self.dead_letter.validate() {
            // Emptying the path reads as turning dead-lettering off: say why there is no such switch.
            if e.path == "dead_letter.path" {
                e.message = "must be set: rejected records are never discarded".to_string();
            }
            errors.push(e);
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
        if self.rules.threads > 256 {
            errors.push(ConfigError::new(
                "rules.threads",
                "must be at most 256 (0: one per core)",
            ));
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
        errors.extend(self.sinks.validate());
        errors.extend(self.kafka.validate());
        errors.extend(self.intake.validate());
        errors.extend(self.control.validate());
        errors.extend(self.policy.validate());
        if self.policy.drift.from_cluster && self.control.istio.is_none() {
            errors.push(ConfigError::new(
                "policy.drift.from_cluster",
                "listing the cluster's policies needs control.istio",
            ));
        }
        if self.policy.shadow.stage && self.control.istio.is_none() {
            errors.push(ConfigError::new(
                "policy.shadow.stage",
                "staging applies candidates through the Kubernetes API: configure control.istio",
            ));
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
            policy: self.policy.clone(),
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
