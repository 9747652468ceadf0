//! [`SinksConfig::validate`]: the checks of the `sinks` section that need no I/O, each problem
//! reported with the path of its key.

use verity_model::config_error::ConfigError;
use verity_secret::SecretRef;

use super::{OutputKind, SinksConfig, is_guid, parse_delimiter};

fn is_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len() - 1 && !s.contains(' ')
}

impl SinksConfig {
    /// Checks what needs no I/O; every error has a path such as `sinks.outputs.splunk.endpoint`.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |path: String, message: String| errors.push(ConfigError::new(path, message));
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

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

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
}
