//! Secrets in Verity's configuration: where one comes from ([`SecretRef`]) and its resolved
//! value ([`Secret`]). A value from the environment is read once at start; a value from a file
//! is re-read when the file changes, so a token helper can rotate it. The value never appears
//! in `Debug` output, logs or metrics. [`signature`] signs webhook bodies with one.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub mod signature;

/// Where a secret comes from. Exactly one of `env` or `file`; a file is re-read when it
/// changes, so rotated tokens are picked up without a restart.
#[derive(Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.env, &self.file) {
            (Some(e), _) => write!(f, "SecretRef(env {e})"),
            (None, Some(p)) => write!(f, "SecretRef(file {})", p.display()),
            (None, None) => write!(f, "SecretRef(unset)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret {0} is empty")]
    Empty(String),
    #[error("secret reference names neither `env` nor `file`")]
    Unset,
}

pub struct Secret {
    source: SecretRef,
    cached: Mutex<(Option<SystemTime>, String)>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({:?}, <redacted>)", self.source)
    }
}

impl Secret {
    /// Resolves the reference now, so a missing secret fails at start rather than at the first
    /// alert.
    pub fn resolve(source: &SecretRef) -> Result<Self, SecretError> {
        let s = Self {
            source: source.clone(),
            cached: Mutex::new((None, String::new())),
        };
        s.value()?;
        Ok(s)
    }

    pub fn value(&self) -> Result<String, SecretError> {
        let mut cached = match self.cached.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match (&self.source.env, &self.source.file) {
            (Some(var), _) => {
                if cached.1.is_empty() {
                    let v = std::env::var(var).map_err(|_| SecretError::MissingEnv(var.clone()))?;
                    if v.trim().is_empty() {
                        return Err(SecretError::Empty(var.clone()));
                    }
                    cached.1 = v.trim().to_string();
                }
                Ok(cached.1.clone())
            }
            (None, Some(path)) => {
                let err = |source| SecretError::File {
                    path: path.clone(),
                    source,
                };
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).map_err(err)?;
                if cached.0 != Some(mtime) || cached.1.is_empty() {
                    let v = std::fs::read_to_string(path).map_err(err)?;
                    if v.trim().is_empty() {
                        return Err(SecretError::Empty(path.display().to_string()));
                    }
                    *cached = (Some(mtime), v.trim().to_string());
                }
                Ok(cached.1.clone())
            }
            (None, None) => Err(SecretError::Unset),
        }
    }

    /// Whether `presented` is the secret. SHA-256 digests of both are compared in constant
    /// time, so the timing says neither the secret nor its length.
    pub fn matches(&self, presented: &[u8]) -> Result<bool, SecretError> {
        use ring::digest::{SHA256, digest};
        let want = self.value()?;
        let (a, b) = (digest(&SHA256, presented), digest(&SHA256, want.as_bytes()));
        let diff = a.as_ref().iter().zip(b.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        Ok(diff == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secrets_are_reread_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let s = Secret::resolve(&SecretRef {
            env: None,
            file: Some(path.clone()),
        })
        .unwrap();
        assert_eq!(s.value().unwrap(), "first");
        assert!(s.matches(b"first").unwrap());
        assert!(!s.matches(b"firs").unwrap());
        assert!(!format!("{s:?}").contains("first"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "second").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(s.value().unwrap(), "second");
        let missing = Secret::resolve(&SecretRef {
            env: Some("VERITY_TEST_SURELY_UNSET_VAR".into()),
            file: None,
        });
        assert!(matches!(missing, Err(SecretError::MissingEnv(_))));
    }
}
