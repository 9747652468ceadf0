//! The webhook responder: signed JSON for any other control plane (SPIRE automation, a SOAR).
//! Each revocation and each removal is one POST of
//! `{"version":"1","action":"revoke"|"remove","revocation":{…}}` with the same
//! `X-Verity-Timestamp` / `X-Verity-Signature` headers as the webhook alert output. Deliveries
//! are queued and sent in order by a background task, retried with backoff, so a slow receiver
//! never holds up the pipeline.
//!
//! A revocation is reported applied only once the receiver answered 2xx: until then it is
//! pending in the revocation store, which is what makes delivery durable. A delivery that ran
//! out of attempts marks it failed, and the revoker queues it again; after a restart every
//! revocation not yet confirmed is queued again. A 4xx other than 408/429 is a refusal
//! retrying will not change: the revocation is marked failed for an operator to look at.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::Revocation;
use crate::responder::{Applied, Responder, ResponderError};
use crate::revoker::Revoker;

/// The responder's name in each revocation's results.
pub const NAME: &str = "webhook";

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
    revoker: RevokerSlot,
    /// Revocations to send once they are in the store (see [`Responder::stored`]): a fast
    /// receiver's confirmation must find the revocation there.
    staged: std::sync::Mutex<Vec<Revocation>>,
}

/// At most this many revocations wait to be queued.
const MAX_STAGED: usize = 1024;

/// The revoker a delivery reports to, set once it exists (it owns the responders).
pub type RevokerSlot = Arc<OnceLock<Weak<Revoker>>>;

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
        let revoker: RevokerSlot = Arc::default();
        let report_to = revoker.clone();
        tokio::spawn(async move {
            while let Some((action, r)) = rx.recv().await {
                let body = serde_json::json!({"version": "1", "action": action, "revocation": r}).to_string();
                let mut outcome = Err(ResponderError::retry(format!("{url}: not delivered")));
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
                        Ok(resp) if resp.status().is_success() => {
                            outcome = Ok(format!("delivered to {url} (HTTP {})", resp.status().as_u16()));
                            break;
                        }
                        Ok(resp) if resp.status().is_client_error() && !matches!(resp.status().as_u16(), 408 | 429) => {
                            tracing::error!(status = %resp.status(), id = %r.id, "webhook responder refused the revocation");
                            outcome = Err(ResponderError::permanent(format!(
                                "{url} refused it (HTTP {})",
                                resp.status().as_u16()
                            )));
                            break;
                        }
                        answer => {
                            let why = match answer {
                                Ok(resp) => format!("HTTP {}", resp.status().as_u16()),
                                Err(e) => e.to_string(),
                            };
                            tracing::warn!(%why, attempt, id = %r.id, "webhook responder failed; retrying");
                            outcome = Err(ResponderError::retry(format!("{url}: {why}")));
                            tokio::time::sleep(Duration::from_millis(200u64 << attempt.min(8))).await;
                        }
                    }
                }
                let Some(revoker) = report_to.get().and_then(Weak::upgrade) else {
                    continue;
                };
                let now = verity_model::time::now_ns();
                // The revoker writes its store (fsync) and the audit events go to the sinks:
                // off the async workers.
                let _ = tokio::task::spawn_blocking(move || match action {
                    "revoke" => {
                        let events = revoker.confirm(&r.id, NAME, outcome, now);
                        revoker.audit_out(events);
                    }
                    _ => {
                        let detail = match outcome {
                            Ok(d) => format!("removal {d}"),
                            Err(e) => format!("removal not delivered: {e}"),
                        };
                        revoker.note(&r.id, NAME, detail, now);
                    }
                })
                .await;
            }
        });
        Ok(Self {
            url: cfg.url.clone(),
            tx,
            revoker,
            staged: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Vec<Revocation>> {
        match self.staged.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Where deliveries report their outcome; set once the revoker exists.
    pub fn revoker_slot(&self) -> RevokerSlot {
        self.revoker.clone()
    }

    fn queue(&self, action: &'static str, r: &Revocation) -> Result<String, ResponderError> {
        self.tx
            .try_send((action, r.clone()))
            .map(|()| format!("queued for {}", self.url))
            .map_err(|e| ResponderError::retry(format!("webhook queue: {e}")))
    }
}

impl Responder for WebhookResponder {
    fn name(&self) -> &'static str {
        NAME
    }
    fn apply(&self, r: &Revocation) -> Result<Applied, ResponderError> {
        let mut staged = self.staged();
        if staged.len() >= MAX_STAGED {
            return Err(ResponderError::retry("webhook queue is full"));
        }
        staged.retain(|s| s.id != r.id);
        staged.push(r.clone());
        Ok(Applied::Later(format!("queued for {}", self.url)))
    }
    fn remove(&self, r: &Revocation) -> Result<String, ResponderError> {
        self.staged().retain(|s| s.id != r.id);
        self.queue("remove", r)
    }
    fn stored(&self, id: &str) {
        let mut staged = self.staged();
        // Only this revocation: another one staged by a concurrent caller may not be in the
        // store yet, and a fast receiver's confirmation must find it there.
        let Some(i) = staged.iter().position(|r| r.id == id) else {
            return;
        };
        if let Some(r) = staged.get(i).cloned() {
            if self.queue("revoke", &r).is_err() {
                // Full: it stays staged; the revoker calls again while it is pending.
                tracing::warn!(id = %r.id, "webhook queue is full; sending later");
                return;
            }
            staged.remove(i);
        }
    }
}
