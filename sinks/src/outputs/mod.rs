//! The outputs: one module per destination, each a [`Sink`] built from its config.

mod elastic;
pub mod file;
mod hec;
mod kafka;
mod ocsf;
mod sentinel;
mod syslog;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use verity_secret::SecretError;

use crate::Sink;
use crate::config::{OutputConfig, OutputKind};
pub use crate::http::ClientError;

/// Why an output could not be built. Each variant names the config key (relative to the
/// output) or the file at fault; the caller adds the output's name.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A secret (`token`, `api_key`, `password`, `secret`, `secret_properties.<key>`) does not
    /// resolve.
    #[error("{key}: {source}")]
    Secret {
        key: String,
        #[source]
        source: SecretError,
    },
    /// The CA file of a syslog output's `tls.ca_file` is unusable.
    #[error(transparent)]
    CaFile(#[from] CaFileError),
    /// The HTTP client (with its TLS trust, `tls.ca_file` included) cannot be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The TLS client configuration cannot be built.
    #[error(transparent)]
    Tls(rustls::Error),
    /// `tls.server_name` (or the host of `address`) is not a valid TLS server name.
    #[error("tls.server_name {name:?}: {source}")]
    ServerName {
        name: String,
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// A setting has a value the output cannot use.
    #[error("{key} {value:?} is not valid")]
    InvalidSetting { key: &'static str, value: String },
    /// Both or neither of two settings that exclude each other are given.
    #[error("give exactly one of `{0}` or `{1}`")]
    ExactlyOne(&'static str, &'static str),
    /// The file (or its directory) an output appends to cannot be created or opened.
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// librdkafka refused the producer configuration.
    #[error("cannot create the Kafka producer: {0}")]
    KafkaProducer(#[source] rdkafka::error::KafkaError),
}

/// An unusable CA file, for the outputs that build their own TLS client configuration.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read CA file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA file {path}: {source}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("CA file {path} holds no certificate")]
    Empty { path: PathBuf },
}

impl BuildError {
    /// A secret under `key` that did not resolve.
    fn secret(key: impl Into<String>) -> impl FnOnce(SecretError) -> Self {
        let key = key.into();
        move |source| Self::Secret { key, source }
    }

    /// A file at `path` that could not be created or opened.
    fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::File { path, source }
    }
}

/// Builds an output's sink: resolves secrets, reads CA files, creates clients. No connection
/// is made here; the first delivery or the health check does that.
pub fn build(name: &str, cfg: &OutputConfig) -> Result<Arc<dyn Sink>, BuildError> {
    let _ = name;
    Ok(match &cfg.kind {
        OutputKind::Stdout(_) => Arc::new(file::JsonLines::stdout()),
        OutputKind::File(c) => Arc::new(file::JsonLines::file(&c.path).map_err(BuildError::file(&c.path))?),
        OutputKind::SplunkHec(c) => Arc::new(hec::Hec::new(c)?),
        OutputKind::Elasticsearch(c) => Arc::new(elastic::Elastic::new(c)?),
        OutputKind::Syslog(c) => Arc::new(syslog::Syslog::new(c)?),
        OutputKind::Kafka(c) => Arc::new(kafka::Kafka::new(c)?),
        OutputKind::Webhook(c) => Arc::new(webhook::Webhook::new(c)?),
        OutputKind::Ocsf(c) => Arc::new(ocsf::Ocsf::new(c)?),
        OutputKind::Sentinel(c) => Arc::new(sentinel::Sentinel::new(c)?),
    })
}

fn timeout(secs: u64) -> Duration {
    Duration::from_secs(secs.clamp(1, 600))
}

/// The current time as RFC 3339 with milliseconds, for wire formats that want send time.
fn now_rfc3339() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    verity_model::time::format_rfc3339_ns(ns - ns % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(yaml: &str) -> OutputConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn build_errors_name_what_failed() {
        let e = build(
            "hec",
            &output("{type: splunk_hec, endpoint: 'https://h:8088', token: {env: VERITY_UNIT_NO_SUCH_TOKEN}}"),
        )
        .err()
        .unwrap();
        assert!(matches!(&e, BuildError::Secret { key, .. } if key == "token"), "{e:?}");
        assert_eq!(
            e.to_string(),
            "token: environment variable VERITY_UNIT_NO_SUCH_TOKEN is not set"
        );
        assert!(std::error::Error::source(&e).is_some());

        let e = build("o", &output("{type: ocsf}")).err().unwrap();
        assert_eq!(e.to_string(), "give exactly one of `path` or `url`");

        let e = build(
            "s",
            &output("{type: syslog, address: 'h:514', format: leef, leef_delimiter: 'xyz'}"),
        )
        .err()
        .unwrap();
        assert_eq!(e.to_string(), "leef_delimiter \"xyz\" is not valid");

        let e = build(
            "s",
            &output("{type: syslog, address: 'h:6514', transport: tls, tls: {ca_file: /nonexistent/verity-ca.pem}}"),
        )
        .err()
        .unwrap();
        assert!(matches!(e, BuildError::CaFile(CaFileError::Read { .. })), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("cannot read CA file /nonexistent/verity-ca.pem: "),
            "{e}"
        );
    }
}
