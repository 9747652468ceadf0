//! Microsoft Sentinel through the Azure Monitor Logs Ingestion API: rows POSTed as JSON arrays
//! (each call kept under the API's 1 MB limit) to a data collection rule's stream.

use verity_model::alert::Alert;

use super::BuildError;
use crate::config::SentinelConfig;
use crate::format::sentinel::encode_chunks;
use crate::http::{client, expect_success, transport_error};
use crate::{BoxFuture, ItemFailure, SendResult, Sink, SinkError};
use verity_secret::Secret;

/// The API refuses calls over 1 MB; stay a little below.
const MAX_CALL_BYTES: usize = 1_000_000;
const API_VERSION: &str = "2023-01-01";

pub struct Sentinel {
    client: reqwest::Client,
    url: String,
    endpoint: String,
    token: Secret,
}

impl Sentinel {
    pub fn new(c: &SentinelConfig) -> Result<Self, BuildError> {
        Ok(Self {
            client: client(&c.tls, super::timeout(c.timeout_secs))?,
            url: format!(
                "{}/dataCollectionRules/{}/streams/{}?api-version={API_VERSION}",
                c.endpoint.trim_end_matches('/'),
                c.dcr_id,
                c.stream
            ),
            endpoint: c.endpoint.clone(),
            token: Secret::resolve(&c.token).map_err(BuildError::secret("token"))?,
        })
    }
}

impl Sink for Sentinel {
    fn kind(&self) -> &'static str {
        "sentinel"
    }

    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let token = self
                .token
                .value()
                .map_err(|e| SinkError::retryable(format!("token: {e}")))?;
            let chunks = encode_chunks(alerts, MAX_CALL_BYTES);
            let mut failures = Vec::new();
            let single = chunks.len() == 1;
            for (range, body) in chunks {
                let req = self
                    .client
                    .post(&self.url)
                    .bearer_auth(&token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body);
                let result = expect_success(req, "Sentinel Logs Ingestion").await;
                if let Err(e) = result {
                    if single {
                        return Err(e);
                    }
                    failures.extend(range.map(|index| ItemFailure {
                        index,
                        error: e.clone(),
                    }));
                }
            }
            Ok(failures)
        })
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<String, SinkError>> {
        Box::pin(async move {
            self.token
                .value()
                .map_err(|e| SinkError::permanent(format!("token: {e}")))?;
            let resp = self
                .client
                .head(&self.endpoint)
                .send()
                .await
                .map_err(|e| transport_error("Sentinel", &e))?;
            Ok(format!(
                "{} reachable (HEAD answered {}); token readable",
                self.endpoint,
                resp.status()
            ))
        })
    }
}
