//! A signed JSON webhook for any other receiver. The body is `{"version":"1","alerts":[…]}`;
//! `X-Verity-Timestamp` carries Unix seconds and `X-Verity-Signature` is
//! `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, so a receiver can check both
//! origin and freshness.

use verity_model::alert::Alert;

use super::BuildError;
use crate::config::WebhookConfig;
use crate::http::{client, expect_success, transport_error};
use crate::{BoxFuture, SendResult, Sink, SinkError};
use verity_secret::Secret;
use verity_secret::signature::signed;

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Option<Secret>,
    headers: Vec<(String, String)>,
}

impl Webhook {
    pub fn new(c: &WebhookConfig) -> Result<Self, BuildError> {
        Ok(Self {
            client: client(&c.tls, super::timeout(c.timeout_secs))?,
            url: c.url.clone(),
            secret: c
                .secret
                .as_ref()
                .map(Secret::resolve)
                .transpose()
                .map_err(BuildError::secret("secret"))?,
            headers: c.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }
}

impl Sink for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let body = serde_json::to_vec(&serde_json::json!({"version": "1", "alerts": alerts}))
                .map_err(|e| SinkError::permanent(e.to_string()))?;
            let mut req = signed(
                self.client
                    .post(&self.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json"),
                self.secret.as_ref(),
                &body,
            )
            .map_err(|e| SinkError::retryable(format!("secret: {e}")))?;
            for (k, v) in &self.headers {
                req = req.header(k, v);
            }
            expect_success(req.body(body), "webhook").await.map(|()| Vec::new())
        })
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<String, SinkError>> {
        Box::pin(async move {
            // Any HTTP answer proves the receiver is reachable; only a POST is meaningful to it.
            let resp = self
                .client
                .head(&self.url)
                .send()
                .await
                .map_err(|e| transport_error("webhook", &e))?;
            Ok(format!("{} reachable (HEAD answered {})", self.url, resp.status()))
        })
    }
}
