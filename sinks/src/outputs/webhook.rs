//! A signed JSON webhook for any other receiver. The body is `{"version":"1","alerts":[…]}`;
//! `X-Verity-Timestamp` carries Unix seconds and `X-Verity-Signature` is
//! `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, so a receiver can check both
//! origin and freshness.

use verity_model::alert::Alert;

use crate::config::WebhookConfig;
use crate::http::{client, expect_success, transport_error};
use crate::secret::Secret;
use crate::{BoxFuture, SendResult, Sink, SinkError};

pub const TIMESTAMP_HEADER: &str = "X-Verity-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Verity-Signature";

/// `req` with the `X-Verity-Timestamp` header of now and, with a secret, the
/// `X-Verity-Signature` over `body`: the signing every Verity webhook (alerts, revocations)
/// uses.
pub fn signed(
    req: reqwest::RequestBuilder,
    secret: Option<&crate::secret::Secret>,
    body: &[u8],
) -> Result<reqwest::RequestBuilder, crate::secret::SecretError> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let req = req.header(TIMESTAMP_HEADER, ts.to_string());
    Ok(match secret {
        Some(s) => req.header(SIGNATURE_HEADER, signature(s.value()?.as_bytes(), ts, body)),
        None => req,
    })
}

/// The signature header value for a body sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Option<Secret>,
    headers: Vec<(String, String)>,
}

impl Webhook {
    pub fn new(c: &WebhookConfig) -> Result<Self, String> {
        Ok(Self {
            client: client(&c.tls, super::timeout(c.timeout_secs)).map_err(|e| e.to_string())?,
            url: c.url.clone(),
            secret: c
                .secret
                .as_ref()
                .map(Secret::resolve)
                .transpose()
                .map_err(|e| format!("secret: {e}"))?,
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

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 shape, with our "<ts>.<body>" message: key "Jefe".
        let s = super::signature(b"Jefe", 1, b"x");
        assert!(s.starts_with("sha256="));
        assert_eq!(s.len(), 7 + 64);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&key, b"1.x");
        assert_eq!(s, format!("sha256={}", hex::encode(tag.as_ref())));
    }
}
