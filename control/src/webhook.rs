//! The webhook responder: signed JSON for any other control plane (SPIRE automation, a SOAR).
//! Each revocation and each removal is one POST of
//! `{"version":"1","action":"revoke"|"remove","revocation":{…}}` with the same
//! `X-Verity-Timestamp` / `X-Verity-Signature` headers as the webhook alert output. Deliveries
//! are queued and sent in order by a background task, retried with backoff, so a slow receiver
//! never holds up the pipeline.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::Revocation;
use crate::manager::Responder;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC-SHA256 key for the signature header.
    #[serde(default)]
    pub secret: Option<verity_sinks::config::SecretRef>,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_attempts() -> u32 {
    8
}

pub struct WebhookResponder {
    url: String,
    tx: mpsc::Sender<(&'static str, Revocation)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("control.webhook.secret: {0}")]
    Secret(String),
    #[error("control.webhook: {0}")]
    Client(String),
}

impl WebhookResponder {
    /// Starts the delivery task on the current Tokio runtime.
    pub fn start(cfg: &WebhookConfig) -> Result<Self, WebhookError> {
        let secret = cfg
            .secret
            .as_ref()
            .map(verity_sinks::secret::Secret::resolve)
            .transpose()
            .map_err(|e| WebhookError::Secret(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let (tx, mut rx) = mpsc::channel::<(&'static str, Revocation)>(1024);
        let (url, attempts) = (cfg.url.clone(), cfg.max_attempts.max(1));
        tokio::spawn(async move {
            while let Some((action, r)) = rx.recv().await {
                let body = serde_json::json!({"version": "1", "action": action, "revocation": r}).to_string();
                for attempt in 0..attempts {
                    let ts = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let mut req = client
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .header(verity_sinks::outputs::TIMESTAMP_HEADER, ts.to_string());
                    if let Some(s) = &secret {
                        match s.value() {
                            Ok(key) => {
                                req = req.header(
                                    verity_sinks::outputs::SIGNATURE_HEADER,
                                    verity_sinks::outputs::signature(key.as_bytes(), ts, body.as_bytes()),
                                )
                            }
                            Err(e) => tracing::error!(error = %e, "webhook responder secret"),
                        }
                    }
                    match req.body(body.clone()).send().await {
                        Ok(resp) if resp.status().is_success() => break,
                        Ok(resp) if resp.status().is_client_error() && resp.status().as_u16() != 429 => {
                            tracing::error!(status = %resp.status(), id = %r.id, "webhook responder refused the revocation");
                            break;
                        }
                        outcome => {
                            let why = match outcome {
                                Ok(resp) => resp.status().to_string(),
                                Err(e) => e.to_string(),
                            };
                            tracing::warn!(%why, attempt, id = %r.id, "webhook responder failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200u64 << attempt.min(8))).await;
                        }
                    }
                }
            }
        });
        Ok(Self {
            url: cfg.url.clone(),
            tx,
        })
    }

    fn queue(&self, action: &'static str, r: &Revocation) -> Result<String, String> {
        self.tx
            .try_send((action, r.clone()))
            .map(|()| format!("queued for {}", self.url))
            .map_err(|e| format!("webhook queue: {e}"))
    }
}

impl Responder for WebhookResponder {
    fn name(&self) -> &'static str {
        "webhook"
    }
    fn apply(&self, r: &Revocation) -> Result<String, String> {
        self.queue("revoke", r)
    }
    fn remove(&self, r: &Revocation) -> Result<String, String> {
        self.queue("remove", r)
    }
}
