//! The webhook responder: signed JSON for any other control plane (SPIRE automation, a SOAR).
//! Each revocation and each removal is one POST of
//! `{"version":"1","action":"revoke"|"remove","revocation":{…}}` with the same
//! `X-Verity-Timestamp` / `X-Verity-Signature` headers as the webhook alert output.
//!
//! Delivery goes through a durable spool, the same one the alert outputs use
//! (`<sinks.spool_dir>/control-webhook/`): each message is appended and fsynced before the
//! responder answers, sent in order by a background task ([`WebhookDelivery`]), retried with
//! backoff until the receiver answers, and acknowledged in the spool only then, so a crash or an outage never
//! loses one. A revocation is reported applied only on the receiver's 2xx. After
//! `max_attempts` failures it is reported failed (and still retried). A 4xx other than
//! 408/429 is a refusal retrying will not change: the message goes to the spool's
//! `dead-letter.jsonl` and the revocation is marked failed for an operator.

use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verity_spool::{Spool, SpoolLimits};

use crate::Revocation;
use crate::config::WebhookConfig;
use crate::responder::{Applied, Responder, ResponderError};
use crate::revoker::Revoker;

/// The responder's name in each revocation's results.
pub const NAME: &str = "webhook";

pub struct WebhookResponder {
    url: String,
    spool: Arc<Spool>,
    revoker: RevokerSlot,
    /// Revocations to spool once they are in the store (see [`Responder::stored`]): a fast
    /// receiver's confirmation must find the revocation there.
    staged: std::sync::Mutex<Vec<Revocation>>,
}

/// At most this many revocations wait to be spooled.
const MAX_STAGED: usize = 1024;

/// The revoker a delivery reports to, set once it exists (it owns the responders).
pub type RevokerSlot = Arc<OnceLock<Weak<Revoker>>>;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("control.webhook.secret: {0}")]
    Secret(String),
    #[error("control.webhook: {0}")]
    Client(String),
    #[error("control.webhook spool: {0}")]
    Spool(String),
}

/// One spooled message.
#[derive(Serialize, Deserialize)]
struct Message {
    version: String,
    action: String,
    revocation: Revocation,
}

/// How one POST ended.
enum Answer {
    Delivered(String),
    Refused(String),
    Retry(String),
}

struct Sender {
    client: reqwest::Client,
    url: String,
    secret: Option<verity_secret::Secret>,
}

impl Sender {
    async fn post(&self, body: &[u8]) -> Answer {
        let req = self.client.post(&self.url).header("Content-Type", "application/json");
        let req = match verity_secret::signature::signed(req, self.secret.as_ref(), body) {
            Ok(r) => r,
            Err(e) => return Answer::Retry(format!("secret: {e}")),
        };
        match req.body(body.to_vec()).send().await {
            Ok(resp) if resp.status().is_success() => {
                Answer::Delivered(format!("delivered to {} (HTTP {})", self.url, resp.status().as_u16()))
            }
            Ok(resp) if resp.status().is_client_error() && !matches!(resp.status().as_u16(), 408 | 429) => {
                Answer::Refused(format!("{} refused it (HTTP {})", self.url, resp.status().as_u16()))
            }
            Ok(resp) => Answer::Retry(format!("{}: HTTP {}", self.url, resp.status().as_u16())),
            Err(e) => Answer::Retry(format!("{}: {e}", self.url)),
        }
    }
}

impl WebhookResponder {
    /// Opens the spool in `spool_dir` (what a previous run left is delivered first). The
    /// returned [`WebhookDelivery`] sends what is spooled; the caller runs it.
    pub fn open(cfg: &WebhookConfig, spool_dir: &Path) -> Result<(Self, WebhookDelivery), WebhookError> {
        let secret = cfg
            .secret
            .as_ref()
            .map(verity_secret::Secret::resolve)
            .transpose()
            .map_err(|e| WebhookError::Secret(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let (spool, recovered) =
            Spool::open(spool_dir, SpoolLimits::default()).map_err(|e| WebhookError::Spool(e.to_string()))?;
        if recovered.pending_events > 0 {
            tracing::info!(
                messages = recovered.pending_events,
                "webhook responder resumes delivery"
            );
        }
        let spool = Arc::new(spool);
        let revoker: RevokerSlot = Arc::default();
        let sender = Sender {
            client,
            url: cfg.url.clone(),
            secret,
        };
        let delivery = WebhookDelivery {
            spool: spool.clone(),
            sender,
            revoker: revoker.clone(),
            attempts: cfg.max_attempts.max(1),
            dead_letter: spool_dir.join("dead-letter.jsonl"),
        };
        let responder = Self {
            url: cfg.url.clone(),
            spool,
            revoker,
            staged: std::sync::Mutex::new(Vec::new()),
        };
        Ok((responder, delivery))
    }

    /// Where deliveries report their outcome; set once the revoker exists.
    pub fn revoker_slot(&self) -> RevokerSlot {
        self.revoker.clone()
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Vec<Revocation>> {
        match self.staged.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Appends a message to the spool (fsynced): from then on it is delivered, whatever
    /// happens.
    fn spool(&self, action: &str, r: &Revocation) -> Result<String, ResponderError> {
        let body = serde_json::to_vec(&Message {
            version: "1".into(),
            action: action.into(),
            revocation: r.clone(),
        })
        .map_err(|e| ResponderError::permanent(format!("webhook message: {e}")))?;
        self.spool
            .append(&[body])
            .map(|_| format!("spooled for {}", self.url))
            .map_err(|e| ResponderError::retry(format!("webhook spool: {e}")))
    }
}

/// The task that sends the webhook responder's spooled messages.
pub struct WebhookDelivery {
    spool: Arc<Spool>,
    sender: Sender,
    revoker: RevokerSlot,
    attempts: u32,
    dead_letter: std::path::PathBuf,
}

impl WebhookDelivery {
    /// Sends spooled messages in order. Once the drain starts it sends what is left while the
    /// receiver takes it and returns when the spool is empty or a send fails; what is not
    /// delivered stays spooled for the next start.
    pub async fn run(self, mut drain: verity_drain::Watcher) {
        let WebhookDelivery {
            spool,
            sender,
            revoker,
            attempts,
            dead_letter,
        } = self;
        loop {
            if drain.is_draining() && spool.is_drained() {
                return;
            }
            let entry = match spool.read_blocking(1, 1 << 20).await {
                Ok(mut e) => e.pop(),
                Err(error) => {
                    tracing::error!(%error, "webhook responder cannot read its spool");
                    if drain.is_draining() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(entry) = entry else {
                tokio::select! {
                    () = spool.wait_for_data(Duration::from_secs(1)) => {}
                    () = drain.wait() => {}
                }
                continue;
            };
            let message: Option<Message> = serde_json::from_slice(&entry.payload).ok();
            let mut attempt = 0u32;
            let outcome = loop {
                match sender.post(&entry.payload).await {
                    Answer::Delivered(d) => break Ok(d),
                    Answer::Refused(why) => {
                        tracing::error!(%why, "webhook responder's receiver refused a message");
                        write_dead_letter(&dead_letter, &entry.payload, &why, attempt.saturating_add(1));
                        break Err(ResponderError::permanent(why));
                    }
                    Answer::Retry(why) => {
                        attempt = attempt.saturating_add(1);
                        tracing::warn!(%why, attempt, "webhook responder failed; retrying");
                        if attempt == attempts
                            && let Some(m) = &message
                        {
                            report(&revoker, m, Err(ResponderError::retry(why.clone()))).await;
                        }
                        // Draining: a failing receiver is not retried until the deadline; the
                        // message stays spooled and goes out after the next start.
                        if drain.is_draining() {
                            tracing::warn!(
                                messages = spool.depth().events,
                                "webhook receiver failing while draining; messages stay spooled"
                            );
                            return;
                        }
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(200u64 << attempt.min(7))) => {}
                            () = drain.wait() => {}
                        }
                    }
                }
            };
            if let Err(error) = spool.ack_blocking(entry.seq).await {
                tracing::error!(%error, "webhook responder cannot acknowledge a delivered message");
            }
            if let Some(m) = &message {
                report(&revoker, m, outcome).await;
            }
        }
    }
}

/// Tells the revoker how a message's delivery ended.
async fn report(revoker: &RevokerSlot, m: &Message, outcome: Result<String, ResponderError>) {
    let Some(revoker) = revoker.get().and_then(Weak::upgrade) else {
        return;
    };
    let (id, action) = (m.revocation.id.clone(), m.action.clone());
    let now = verity_model::time::now_ns();
    // The revoker writes its store (fsync) and the audit events go to the sinks: off the
    // async workers.
    let _ = tokio::task::spawn_blocking(move || {
        if action == "revoke" {
            let events = revoker.confirm(&id, NAME, outcome, now);
            revoker.audit_out(events);
        } else {
            let detail = match outcome {
                Ok(d) => format!("removal {d}"),
                Err(e) => format!("removal not delivered: {e}"),
            };
            revoker.note(&id, NAME, detail, now);
        }
    })
    .await;
}

fn write_dead_letter(path: &Path, payload: &[u8], error: &str, attempts: u32) {
    use std::io::Write;
    let line = serde_json::json!({
        "time": verity_model::time::format_rfc3339_ns(verity_model::time::now_ns()),
        "sink": "control.webhook",
        "error": error,
        "attempts": attempts,
        "message": serde_json::from_slice::<serde_json::Value>(payload).unwrap_or(serde_json::Value::Null),
    });
    let written = serde_json::to_vec(&line)
        .map_err(std::io::Error::other)
        .and_then(|mut buf| {
            buf.push(b'\n');
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .write_all(&buf)
        });
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "cannot write the webhook responder's dead-letter file");
    }
}

impl Responder for WebhookResponder {
    fn name(&self) -> &'static str {
        NAME
    }
    fn apply(&self, r: &Revocation) -> Result<Applied, ResponderError> {
        let mut staged = self.staged();
        if staged.len() >= MAX_STAGED {
            return Err(ResponderError::retry(
                "too many revocations waiting for the webhook spool",
            ));
        }
        staged.retain(|s| s.id != r.id);
        staged.push(r.clone());
        Ok(Applied::Later(format!("to be spooled for {}", self.url)))
    }
    fn remove(&self, r: &Revocation) -> Result<String, ResponderError> {
        self.staged().retain(|s| s.id != r.id);
        self.spool("remove", r)
    }
    /// The spool retries until the receiver answers; the revoker must not queue it again.
    fn retries_itself(&self) -> bool {
        true
    }
    fn stored(&self, id: &str) {
        let mut staged = self.staged();
        // Only this revocation: another one staged by a concurrent caller may not be in the
        // store yet, and a fast receiver's confirmation must find it there.
        let Some(i) = staged.iter().position(|r| r.id == id) else {
            return;
        };
        if let Some(r) = staged.get(i).cloned() {
            if let Err(error) = self.spool("revoke", &r) {
                // It stays staged; the revoker calls again while it is pending.
                tracing::warn!(id = %r.id, %error, "could not spool a revocation for the webhook; trying later");
                return;
            }
            staged.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn config(url: String) -> WebhookConfig {
        WebhookConfig {
            url,
            secret: None,
            max_attempts: 3,
        }
    }

    /// Answers every request with 200 and counts them (one request per connection).
    fn receiver(answered: Arc<AtomicUsize>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/revocations", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the body its Content-Length announces.
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                answered.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        url
    }

    #[tokio::test]
    async fn draining_delivers_what_is_spooled_while_the_receiver_takes_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let answered = Arc::new(AtomicUsize::new(0));
        let (responder, delivery) =
            WebhookResponder::open(&config(receiver(answered.clone())), dir.path()).expect("open");
        responder
            .spool
            .append(&[b"{}".to_vec(), b"{}".to_vec(), b"{}".to_vec()])
            .expect("spool");
        let (trigger, drain) = verity_drain::channel();
        // The drain has started before delivery even runs: what is spooled still goes out.
        drop(trigger);
        tokio::time::timeout(Duration::from_secs(20), delivery.run(drain))
            .await
            .expect("returns once the spool is empty");
        assert_eq!(answered.load(Ordering::SeqCst), 3);
        assert!(responder.spool.is_drained());
    }

    #[tokio::test]
    async fn draining_gives_up_on_a_failing_receiver_and_keeps_the_message() {
        let dir = tempfile::tempdir().expect("tmp");
        // A port nothing listens on any more: every send is refused at once.
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/revocations", closed.local_addr().expect("addr"));
        drop(closed);
        let (responder, delivery) = WebhookResponder::open(&config(url), dir.path()).expect("open");
        responder.spool.append(&[b"{}".to_vec()]).expect("spool");
        let (mut tasks, drain) = verity_drain::channel();
        tasks.spawn("control webhook delivery", delivery.run(drain));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        let drained = tasks.drain(tokio::time::Instant::now() + Duration::from_secs(20)).await;
        assert!(drained.is_clean(), "{drained:?}");
        // Not retried until the deadline: the next failed attempt ends it.
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert_eq!(responder.spool.depth().events, 1, "kept for the next start");
        drop(responder);
        let (_, recovered) = Spool::open(dir.path(), SpoolLimits::default()).expect("reopen");
        assert_eq!(recovered.pending_events, 1);
    }
}
