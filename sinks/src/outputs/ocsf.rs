//! OCSF Detection Findings (class 2004): JSON lines in a file, or a JSON array POSTed to an
//! HTTP endpoint (a data lake's ingest, a security lake connector).

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use verity_model::alert::Alert;

use super::BuildError;
use crate::config::OcsfConfig;
use crate::format::ocsf::detection_finding;
use crate::http::{client, expect_success, transport_error};
use crate::{BoxFuture, SendResult, Sink, SinkError};
use verity_secret::Secret;

enum Target {
    File(String, Mutex<File>),
    Http {
        client: reqwest::Client,
        url: String,
        token: Option<Secret>,
    },
}

pub struct Ocsf {
    target: Target,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Ocsf {
    pub fn new(c: &OcsfConfig) -> Result<Self, BuildError> {
        let target = match (&c.path, &c.url) {
            (Some(p), None) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(BuildError::file(dir))?;
                }
                let f = super::file::open_lines(p).map_err(BuildError::file(p))?;
                Target::File(p.display().to_string(), Mutex::new(f))
            }
            (None, Some(u)) => Target::Http {
                client: client(&c.tls, super::timeout(c.timeout_secs))?,
                url: u.clone(),
                token: c
                    .token
                    .as_ref()
                    .map(Secret::resolve)
                    .transpose()
                    .map_err(BuildError::secret("token"))?,
            },
            _ => return Err(BuildError::ExactlyOne("path", "url")),
        };
        Ok(Self { target })
    }
}

impl Sink for Ocsf {
    fn kind(&self) -> &'static str {
        "ocsf"
    }

    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let findings: Vec<serde_json::Value> = alerts.iter().map(|a| detection_finding(a, VERSION)).collect();
            match &self.target {
                Target::File(_, f) => {
                    let mut buf = Vec::new();
                    for v in &findings {
                        serde_json::to_writer(&mut buf, v).map_err(|e| SinkError::permanent(e.to_string()))?;
                        buf.push(b'\n');
                    }
                    let mut f = match f.lock() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    f.write_all(&buf)
                        .and_then(|()| f.flush())
                        .map_err(|e| SinkError::retryable(format!("write failed: {e}")))?;
                    Ok(Vec::new())
                }
                Target::Http { client, url, token } => {
                    let body = serde_json::to_vec(&findings).map_err(|e| SinkError::permanent(e.to_string()))?;
                    let mut req = client
                        .post(url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body);
                    if let Some(t) = token {
                        let t = t.value().map_err(|e| SinkError::retryable(format!("token: {e}")))?;
                        req = req.bearer_auth(t);
                    }
                    expect_success(req, "OCSF endpoint").await.map(|()| Vec::new())
                }
            }
        })
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<String, SinkError>> {
        Box::pin(async move {
            match &self.target {
                Target::File(p, _) => Ok(format!("appending OCSF findings to {p}")),
                Target::Http { client, url, .. } => {
                    let resp = client
                        .head(url)
                        .send()
                        .await
                        .map_err(|e| transport_error("OCSF endpoint", &e))?;
                    Ok(format!("{url} reachable (HEAD answered {})", resp.status()))
                }
            }
        })
    }
}
