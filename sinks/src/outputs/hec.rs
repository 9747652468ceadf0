//! Splunk HTTP Event Collector: batched event envelopes to `/services/collector/event`, with
//! optional indexer acknowledgement (a batch counts as delivered only when Splunk acks it).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use verity_model::alert::Alert;

use super::BuildError;
use crate::config::HecConfig;
use crate::format::hec::{HecOptions, encode_batch};
use crate::http::{Answer, classify, client, exchange, retry_after};
use crate::{BoxFuture, SendResult, Sink, SinkError};
use verity_secret::Secret;

pub struct Hec {
    client: reqwest::Client,
    base: String,
    token: Secret,
    opts: HecOptions,
    ack: Option<Ack>,
}

struct Ack {
    channel: String,
    poll: Duration,
    timeout: Duration,
}

#[derive(Deserialize)]
struct HecAnswer {
    #[serde(default)]
    text: String,
    #[serde(default)]
    code: i64,
    #[serde(default, rename = "ackId")]
    ack_id: Option<u64>,
}

#[derive(Deserialize)]
struct AckAnswer {
    #[serde(default)]
    acks: std::collections::BTreeMap<String, bool>,
}

/// A random version-4 GUID for the acknowledgement channel.
fn new_channel() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = t.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Hec {
    pub fn new(c: &HecConfig) -> Result<Self, BuildError> {
        let token = Secret::resolve(&c.token).map_err(BuildError::secret("token"))?;
        let client = client(&c.tls, super::timeout(c.timeout_secs))?;
        Ok(Self {
            client,
            base: c.endpoint.trim_end_matches('/').to_string(),
            token,
            opts: HecOptions {
                host: c.host.clone(),
                source: c.source.clone(),
                sourcetype: c.sourcetype.clone(),
                index: c.index.clone(),
            },
            ack: c.ack.as_ref().map(|a| Ack {
                channel: a.channel.clone().unwrap_or_else(new_channel),
                poll: Duration::from_millis(a.poll_interval_ms.max(50)),
                timeout: Duration::from_secs(a.timeout_secs.max(1)),
            }),
        })
    }

    fn request(&self, path: &str, body: Vec<u8>) -> Result<reqwest::RequestBuilder, SinkError> {
        let token = self
            .token
            .value()
            .map_err(|e| SinkError::retryable(format!("token: {e}")))?;
        let mut r = self
            .client
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, format!("Splunk {token}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(a) = &self.ack {
            r = r.header("X-Splunk-Request-Channel", &a.channel);
        }
        Ok(r)
    }

    async fn post_events(&self, alerts: &[Alert]) -> Result<Option<u64>, SinkError> {
        let body = encode_batch(alerts, &self.opts);
        let Answer { status, headers, text } =
            exchange(self.request("/services/collector/event", body)?, "Splunk HEC").await?;
        let answer: Option<HecAnswer> = serde_json::from_str(&text).ok();
        if status == StatusCode::OK && answer.as_ref().is_none_or(|a| a.code == 0) {
            return Ok(answer.and_then(|a| a.ack_id));
        }
        Err(match answer {
            // 9: server busy. Splunk documents it as the one to retry with backoff.
            Some(a) if a.code == 9 => {
                SinkError::retry_after(format!("Splunk HEC busy (code 9): {}", a.text), retry_after(&headers))
            }
            Some(a) if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS => SinkError::permanent(
                format!("Splunk HEC rejected the batch: {status} code {} {:?}", a.code, a.text),
            ),
            _ => classify(status, &headers, "Splunk HEC", &text),
        })
    }

    async fn wait_for_ack(&self, ack: &Ack, id: u64) -> Result<(), SinkError> {
        let started = Instant::now();
        loop {
            tokio::time::sleep(ack.poll).await;
            let body = serde_json::to_vec(&serde_json::json!({ "acks": [id] }))
                .map_err(|e| SinkError::permanent(e.to_string()))?;
            let Answer { status, headers, text } =
                exchange(self.request("/services/collector/ack", body)?, "Splunk HEC ack").await?;
            if status != StatusCode::OK {
                // The events were accepted; an ack we cannot read means sending them again.
                let e = classify(status, &headers, "Splunk HEC ack", &text);
                return Err(SinkError::retry_after(e.message, retry_after(&headers)));
            }
            let answer: AckAnswer = serde_json::from_str(&text)
                .map_err(|e| SinkError::retryable(format!("Splunk HEC ack answer unreadable: {e}")))?;
            if answer.acks.get(&id.to_string()).copied().unwrap_or(false) {
                return Ok(());
            }
            if started.elapsed() >= ack.timeout {
                return Err(SinkError::retryable(format!(
                    "Splunk HEC did not acknowledge ackId {id} within {:?}; sending again",
                    ack.timeout
                )));
            }
        }
    }
}

impl Sink for Hec {
    fn kind(&self) -> &'static str {
        "splunk_hec"
    }

    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let ack_id = self.post_events(alerts).await?;
            if let Some(ack) = &self.ack {
                let id = ack_id.ok_or_else(|| {
                    SinkError::permanent("indexer acknowledgement is configured but Splunk returned no ackId; is it enabled on the token?")
                })?;
                self.wait_for_ack(ack, id).await?;
            }
            Ok(Vec::new())
        })
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<String, SinkError>> {
        Box::pin(async move {
            let url = format!("{}/services/collector/health/1.0", self.base);
            let Answer { status, headers, text } = exchange(self.client.get(&url), "Splunk HEC").await?;
            if status != StatusCode::OK {
                return Err(classify(status, &headers, "Splunk HEC health", &text));
            }
            // An empty event post checks the token: 400 "No data" (code 5) means it was accepted.
            let Answer { status, text, .. } =
                exchange(self.request("/services/collector/event", Vec::new())?, "Splunk HEC").await?;
            let answer: Option<HecAnswer> = serde_json::from_str(&text).ok();
            match answer {
                Some(a) if a.code == 5 || a.code == 0 => Ok(format!("{} is healthy and accepts the token", self.base)),
                Some(a) => Err(SinkError::permanent(format!(
                    "{} is up but refused the token check: {status} code {} {:?}",
                    self.base, a.code, a.text
                ))),
                None => Err(SinkError::permanent(format!("unexpected answer {status}: {text}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn channels_are_guids() {
        let c = super::new_channel();
        assert!(crate::config::is_guid(&c), "{c}");
        assert_ne!(c, super::new_channel());
    }
}
