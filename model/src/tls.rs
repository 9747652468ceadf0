//! The `tls` block every Verity listener takes (OTLP gRPC and HTTP, admin, ext_authz).
//!
//! Only the shape and the checks that need no I/O live here, so that every crate whose
//! config has a listener can carry the same block; the collector loads the files, serves the
//! handshakes and reloads them when they change on disk.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config_error::ConfigError;

/// Whether clients must present a certificate that chains to `client_ca_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for and verified when presented; connections without one are
    /// accepted (their requests must then authenticate another way).
    Optional,
    /// A handshake without a valid client certificate fails.
    Required,
}

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[default]
    #[serde(rename = "1.3")]
    V1_3,
}

/// `tls:` of one listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle client certificates must chain to (the mesh root or a SPIRE bundle).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub min_version: TlsVersion,
    /// How often the files are checked for changes (cert-manager and SPIRE rotate them).
    #[serde(default = "default_reload_poll_secs")]
    pub reload_poll_secs: u64,
}

fn default_reload_poll_secs() -> u64 {
    5
}

impl ServerTlsConfig {
    /// Whether clients are asked for a certificate at all.
    pub fn asks_client_certificate(&self) -> bool {
        self.client_auth != ClientAuth::None
    }

    /// Problems found without touching the files, each with its path under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.cert_file.as_os_str().is_empty() {
            errors.push(ConfigError::new(format!("{prefix}.cert_file"), "must be a file path"));
        }
        if self.key_file.as_os_str().is_empty() {
            errors.push(ConfigError::new(format!("{prefix}.key_file"), "must be a file path"));
        }
        match (&self.client_ca_file, self.client_auth) {
            (None, ClientAuth::Optional | ClientAuth::Required) => errors.push(ConfigError::new(
                format!("{prefix}.client_ca_file"),
                "must be set when client_auth is optional or required",
            )),
            (Some(p), _) if p.as_os_str().is_empty() => errors.push(ConfigError::new(
                format!("{prefix}.client_ca_file"),
                "must be a file path or null",
            )),
            (Some(_), ClientAuth::None) => errors.push(ConfigError::new(
                format!("{prefix}.client_auth"),
                "is none, so client_ca_file would be ignored; set optional or required",
            )),
            _ => {}
        }
        if !(1..=3600).contains(&self.reload_poll_secs) {
            errors.push(ConfigError::new(
                format!("{prefix}.reload_poll_secs"),
                "must be between 1 and 3600",
            ));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_auth_needs_a_ca() {
        let cfg: ServerTlsConfig =
            serde_json::from_str(r#"{"cert_file":"c.pem","key_file":"k.pem","client_auth":"required"}"#)
                .expect("parse");
        assert_eq!(cfg.min_version, TlsVersion::V1_3);
        let errors = cfg.validate("otlp.grpc.tls");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "otlp.grpc.tls.client_ca_file");
    }

    #[test]
    fn unknown_keys_and_versions_are_refused() {
        assert!(serde_json::from_str::<ServerTlsConfig>(r#"{"cert_file":"c","key_file":"k","ca":"x"}"#).is_err());
        assert!(
            serde_json::from_str::<ServerTlsConfig>(r#"{"cert_file":"c","key_file":"k","min_version":"1.1"}"#).is_err()
        );
        let ok: ServerTlsConfig =
            serde_json::from_str(r#"{"cert_file":"c","key_file":"k","min_version":"1.2"}"#).expect("parse");
        assert!(ok.validate("admin.tls").is_empty());
    }
}
