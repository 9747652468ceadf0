//! What the HTTP outputs share: a client with the configured TLS trust, and the mapping of
//! answers to retryable or permanent failures (429 and 5xx retry, honoring `Retry-After`;
//! other 4xx are permanent).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::SinkError;
use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {0} holds no usable PEM certificate")]
    CaPem(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

pub fn client(tls: &TlsConfig, timeout: Duration) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("verity/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &tls.ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
            path: path.display().to_string(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| ClientError::CaPem(path.display().to_string()))?;
        if certs.is_empty() {
            return Err(ClientError::CaPem(path.display().to_string()));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if tls.insecure_skip_verify {
        tracing::warn!("TLS certificate verification is OFF for an output (tls.insecure_skip_verify)");
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| ClientError::Build(e.to_string()))
}

/// `Retry-After` as seconds (the HTTP-date form is rare from these APIs and treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s.min(3600)))
}

/// Classifies a non-success answer.
pub fn classify(status: StatusCode, headers: &HeaderMap, what: &str, body: &str) -> SinkError {
    let snippet: String = body.chars().take(300).collect();
    let message = format!("{what} answered {status}: {snippet}");
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        SinkError::retry_after(message, retry_after(headers))
    } else {
        SinkError::permanent(message)
    }
}

/// An answer read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

/// Sends a request and reads the whole answer. Failing to get one is a transport error
/// ([`transport_error`]); what the answer says is the caller's to judge.
pub async fn exchange(req: reqwest::RequestBuilder, what: &str) -> Result<Answer, SinkError> {
    let resp = req.send().await.map_err(|e| transport_error(what, &e))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    Ok(Answer { status, headers, text })
}

/// Sends a request whose only good answer is a 2xx; anything else is classified.
pub async fn expect_success(req: reqwest::RequestBuilder, what: &str) -> Result<(), SinkError> {
    let a = exchange(req, what).await?;
    if a.status.is_success() {
        Ok(())
    } else {
        Err(classify(a.status, &a.headers, what, &a.text))
    }
}

/// Connection failures and timeouts are worth retrying; anything else about the request is not.
pub fn transport_error(what: &str, e: &reqwest::Error) -> SinkError {
    let message = format!("{what}: {}", verity_model::error_chain::one_line(e));
    if e.is_builder() {
        SinkError::permanent(message)
    } else {
        SinkError::retryable(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        let e = classify(StatusCode::SERVICE_UNAVAILABLE, &h, "x", "busy");
        assert_eq!(
            e.retry,
            crate::Retry::Retryable {
                after: Some(Duration::from_secs(7))
            }
        );
        assert!(classify(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), "x", "").is_retryable());
        assert!(!classify(StatusCode::BAD_REQUEST, &HeaderMap::new(), "x", "").is_retryable());
        assert!(!classify(StatusCode::FORBIDDEN, &HeaderMap::new(), "x", "").is_retryable());
    }
}
