//! TLS for a listener: loads the certificate, key and client CA named in its `tls:` block into
//! a rustls server config, and swaps in a new config when the files change on disk.
//!
//! A reload replaces the config new handshakes use; connections already open keep theirs, so
//! a rotation by cert-manager or SPIRE drops nothing. A reload that fails (a half-written file,
//! a key that does not match) keeps the previous config and is logged and counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use verity_model::tls::{ClientAuth, ServerTlsConfig, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the certificate and key do not make a TLS server config: {0}")]
    Config(#[from] rustls::Error),
}

/// Which application protocol the listener speaks, announced by ALPN (gRPC clients require
/// `h2` to be negotiated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http1,
}

/// The files' bytes, compared to notice a change (a rotation may keep mtimes, and Kubernetes
/// swaps a symlink rather than rewriting the file).
#[derive(PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// A listener's TLS settings, reloadable.
pub struct ServerTls {
    cfg: ServerTlsConfig,
    alpn: Alpn,
    current: ArcSwap<ServerConfig>,
    loaded: Mutex<Files>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the files; the error names the file and the reason.
    pub fn load(cfg: &ServerTlsConfig, alpn: Alpn) -> Result<Self, TlsError> {
        let files = read_files(cfg)?;
        let config = build(cfg, alpn, &files)?;
        Ok(Self {
            cfg: cfg.clone(),
            alpn,
            current: ArcSwap::from_pointee(config),
            loaded: Mutex::new(files),
        })
    }

    pub fn config(&self) -> &ServerTlsConfig {
        &self.cfg
    }

    /// What new handshakes use.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files; when they changed and make a valid config, new handshakes use it.
    /// Returns whether a new config was installed.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let files = read_files(&self.cfg)?;
        let mut loaded = match self.loaded.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if *loaded == files {
            return Ok(false);
        }
        let config = build(&self.cfg, self.alpn, &files)?;
        self.current.store(Arc::new(config));
        *loaded = files;
        Ok(true)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_files(cfg: &ServerTlsConfig) -> Result<Files, TlsError> {
    Ok(Files {
        cert: read(&cfg.cert_file)?,
        key: read(&cfg.key_file)?,
        client_ca: cfg.client_ca_file.as_deref().map(read).transpose()?,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn build(cfg: &ServerTlsConfig, alpn: Alpn, files: &Files) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&cfg.cert_file, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|e| invalid(&cfg.key_file, format!("no usable PEM private key: {e}")))?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match (cfg.client_auth, &cfg.client_ca_file, &files.client_ca) {
        (ClientAuth::None, _, _) => builder.with_no_client_auth(),
        (auth, Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certificates(path, pem)? {
                roots
                    .add(ca)
                    .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid(path, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        (_, _, _) => {
            return Err(invalid(
                Path::new("client_ca_file"),
                "must be set when client_auth is optional or required",
            ));
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            &cfg.key_file,
            format!("does not match the certificate in {}: {e}", cfg.cert_file.display()),
        )
    })?;
    config.alpn_protocols = match alpn {
        Alpn::H2 => vec![b"h2".to_vec()],
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}
