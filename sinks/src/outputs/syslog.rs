//! Syslog RFC 5424 over TCP (RFC 6587 octet counting) or TLS (RFC 5425), with a CEF or LEEF
//! body. One connection is kept and re-established after any error.
//!
//! Syslog has no application-level acknowledgement: a write that the kernel accepted may still
//! be lost if the receiver dies before reading it. Before each batch the connection is checked
//! for a close from the other side, which catches a receiver that went away between batches.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use verity_model::alert::Alert;

use super::{BuildError, CaFileError};
use crate::config::{BodyFormat, SyslogConfig, SyslogTransport, TlsConfig, parse_delimiter};
use crate::format::cef::{self, CefOptions};
use crate::format::leef::{self, LeefOptions};
use crate::format::syslog::{Rfc5424, octet_frame};
use crate::{BoxFuture, SendResult, Sink, SinkError};

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }

    /// True when the peer has closed the connection (a read would return end of file).
    fn peer_closed(&self) -> bool {
        let tcp = match self {
            Conn::Tcp(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        };
        let mut buf = [0u8; 1];
        match tcp.try_read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

pub struct Syslog {
    address: String,
    tls: Option<(TlsConnector, rustls_pki_types::ServerName<'static>)>,
    header: Rfc5424,
    format: BodyFormat,
    cef: CefOptions,
    leef: LeefOptions,
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "-".to_string())
}

pub fn tls_connector(tls: &TlsConfig) -> Result<TlsConnector, BuildError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
                path: path.clone(),
                source,
            })?;
            use rustls_pki_types::pem::PemObject;
            let mut n = 0;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|source| CaFileError::Pem {
                    path: path.clone(),
                    source,
                })?;
                roots.add(cert).map_err(|source| CaFileError::Certificate {
                    path: path.clone(),
                    source,
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(CaFileError::Empty { path: path.clone() }.into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(BuildError::Tls)?;
    let config = if tls.insecure_skip_verify {
        tracing::warn!("TLS certificate verification is OFF for a syslog output (tls.insecure_skip_verify)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Accepts any server certificate: only for `tls.insecure_skip_verify`.
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Syslog {
    pub fn new(c: &SyslogConfig) -> Result<Self, BuildError> {
        let tls = match c.transport {
            SyslogTransport::Tcp => None,
            SyslogTransport::Tls => {
                let host = c.address.rsplit_once(':').map_or(c.address.as_str(), |(h, _)| h);
                let name = c
                    .tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
                let server_name = rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|source| BuildError::ServerName { name, source })?;
                Some((tls_connector(&c.tls)?, server_name))
            }
        };
        let delimiter = match &c.leef_delimiter {
            Some(d) => parse_delimiter(d).ok_or_else(|| BuildError::InvalidSetting {
                key: "leef_delimiter",
                value: d.clone(),
            })?,
            None => '\t',
        };
        Ok(Self {
            address: c.address.clone(),
            tls,
            header: Rfc5424 {
                facility: c.facility,
                hostname: c.hostname.clone().unwrap_or_else(host_name),
                app_name: c.app_name.clone(),
                procid: std::process::id().to_string(),
                ..Rfc5424::default()
            },
            format: c.format,
            cef: CefOptions::default(),
            leef: LeefOptions {
                delimiter,
                ..LeefOptions::default()
            },
            timeout: super::timeout(c.timeout_secs),
            conn: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| SinkError::retryable(format!("connecting to {} timed out", self.address)))?
            .map_err(|e| SinkError::retryable(format!("cannot connect to {}: {e}", self.address)))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Conn::Tcp(tcp)),
            Some((connector, name)) => {
                let s = tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| SinkError::retryable(format!("TLS handshake with {} timed out", self.address)))?
                    .map_err(|e| {
                        // A certificate the configured trust rejects will not fix itself.
                        let msg = format!("TLS handshake with {} failed: {e}", self.address);
                        if e.get_ref()
                            .is_some_and(|inner| inner.to_string().contains("certificate"))
                        {
                            SinkError::permanent(msg)
                        } else {
                            SinkError::retryable(msg)
                        }
                    })?;
                Ok(Conn::Tls(Box::new(s)))
            }
        }
    }

    pub fn encode(&self, alerts: &[Alert]) -> Vec<u8> {
        let ts = super::now_rfc3339();
        let mut out = Vec::with_capacity(alerts.len() * 600);
        for a in alerts {
            let body = match self.format {
                BodyFormat::Cef => cef::encode(a, &self.cef),
                BodyFormat::Leef => leef::encode(a, &self.leef),
            };
            out.extend_from_slice(&octet_frame(&self.header.message(a, &ts, &body)));
        }
        out
    }
}

impl Sink for Syslog {
    fn kind(&self) -> &'static str {
        "syslog"
    }

    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let frames = self.encode(alerts);
            let mut slot = self.conn.lock().await;
            if slot.as_ref().is_some_and(Conn::peer_closed) {
                *slot = None;
            }
            let mut conn = match slot.take() {
                Some(c) => c,
                None => self.connect().await?,
            };
            match tokio::time::timeout(self.timeout, conn.write_all(&frames)).await {
                Ok(Ok(())) => {
                    *slot = Some(conn);
                    Ok(Vec::new())
                }
                Ok(Err(e)) => Err(SinkError::retryable(format!("writing to {}: {e}", self.address))),
                Err(_) => Err(SinkError::retryable(format!("writing to {} timed out", self.address))),
            }
        })
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<String, SinkError>> {
        Box::pin(async move {
            let conn = self.connect().await?;
            let what = match conn {
                Conn::Tcp(_) => "TCP",
                Conn::Tls(_) => "TLS",
            };
            Ok(format!("{what} connection to {} established", self.address))
        })
    }
}
