//! Elasticsearch and OpenSearch `_bulk` with ECS documents. Each alert is a `create` with the
//! alert id as `_id`, so a retried or replayed alert is answered 409 and never indexed twice.
//! Per-item answers decide: 429 and 5xx items are retried, other failures are dead-lettered.

use reqwest::StatusCode;
use serde::Deserialize;
use verity_model::alert::Alert;

use super::BuildError;
use crate::config::ElasticConfig;
use crate::format::ecs;
use crate::http::{Answer, classify, client, exchange};
use crate::{BoxFuture, ItemFailure, SendResult, Sink, SinkError};
use verity_secret::Secret;

enum Auth {
    None,
    ApiKey(Secret),
    Basic(String, Secret),
}

pub struct Elastic {
    client: reqwest::Client,
    base: String,
    index: String,
    auth: Auth,
}

#[derive(Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::BTreeMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The index for an alert: `%Y`, `%m`, `%d` from its last-seen date.
pub fn index_name(pattern: &str, last_seen: &str) -> String {
    let date = last_seen.get(..10).filter(|d| d.len() == 10 && d.as_bytes()[4] == b'-');
    let (y, m, d) = match date {
        Some(d) => (&d[0..4], &d[5..7], &d[8..10]),
        None => ("1970", "01", "01"),
    };
    pattern.replace("%Y", y).replace("%m", m).replace("%d", d)
}

impl Elastic {
    pub fn new(c: &ElasticConfig) -> Result<Self, BuildError> {
        let auth = match (&c.api_key, &c.username, &c.password) {
            (Some(k), _, _) => Auth::ApiKey(Secret::resolve(k).map_err(BuildError::secret("api_key"))?),
            (None, Some(u), Some(p)) => {
                Auth::Basic(u.clone(), Secret::resolve(p).map_err(BuildError::secret("password"))?)
            }
            _ => Auth::None,
        };
        Ok(Self {
            client: client(&c.tls, super::timeout(c.timeout_secs))?,
            base: c.endpoint.trim_end_matches('/').to_string(),
            index: c.index.clone(),
            auth,
        })
    }

    fn authed(&self, r: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, SinkError> {
        let secret_err = |e: verity_secret::SecretError| SinkError::retryable(format!("credentials: {e}"));
        Ok(match &self.auth {
            Auth::None => r,
            Auth::ApiKey(k) => r.header(
                reqwest::header::AUTHORIZATION,
                format!("ApiKey {}", k.value().map_err(secret_err)?),
            ),
            Auth::Basic(u, p) => r.basic_auth(u, Some(p.value().map_err(secret_err)?)),
        })
    }

    fn body(&self, alerts: &[Alert]) -> Result<Vec<u8>, SinkError> {
        let mut body = Vec::with_capacity(alerts.len() * 1500);
        for a in alerts {
            let action = serde_json::json!({"create": {"_index": index_name(&self.index, &a.last_seen), "_id": a.id}});
            let enc = |e: serde_json::Error| SinkError::permanent(e.to_string());
            serde_json::to_writer(&mut body, &action).map_err(enc)?;
            body.push(b'\n');
            serde_json::to_writer(&mut body, &ecs::document(a)).map_err(enc)?;
            body.push(b'\n');
        }
        Ok(body)
    }
}

/// Per-item outcome: `None` when the item is in (201, or 409 because it already was).
fn item_failure(index: usize, item: &BulkItem) -> Option<ItemFailure> {
    let status = StatusCode::from_u16(item.status).ok()?;
    if status.is_success() || status == StatusCode::CONFLICT {
        return None;
    }
    let reason = item.error.as_ref().map_or_else(String::new, |e| {
        format!(
            "{}: {}",
            e.get("type").and_then(|v| v.as_str()).unwrap_or("error"),
            e.get("reason").and_then(|v| v.as_str()).unwrap_or("")
        )
    });
    let message = format!("bulk item {status}: {reason}");
    let error = if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        SinkError::retryable(message)
    } else {
        SinkError::permanent(message)
    };
    Some(ItemFailure { index, error })
}

impl Sink for Elastic {
    fn kind(&self) -> &'static str {
        "elasticsearch"
    }

    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let body = self.body(alerts)?;
            let req = self
                .client
                .post(format!("{}/_bulk", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(body);
            let Answer { status, headers, text } = exchange(self.authed(req)?, "Elasticsearch").await?;
            if !status.is_success() {
                return Err(classify(status, &headers, "Elasticsearch _bulk", &text));
            }
            let answer: BulkAnswer = serde_json::from_str(&text)
                .map_err(|e| SinkError::retryable(format!("unreadable _bulk answer: {e}")))?;
            if !answer.errors {
                return Ok(Vec::new());
            }
            if answer.items.len() != alerts.len() {
                return Err(SinkError::retryable(format!(
                    "_bulk answered {} items for {} documents",
                    answer.items.len(),
                    alerts.len()
                )));
            }
            Ok(answer
                .items
                .iter()
                .enumerate()
                .filter_map(|(i, m)| m.values().next().and_then(|item| item_failure(i, item)))
                .collect())
        })
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<String, SinkError>> {
        Box::pin(async move {
            let req = self.client.get(format!("{}/", self.base));
            let Answer { status, headers, text } = exchange(self.authed(req)?, "Elasticsearch").await?;
            if !status.is_success() {
                return Err(classify(status, &headers, "Elasticsearch", &text));
            }
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            Ok(format!(
                "cluster {} (version {}) at {}",
                v["cluster_name"].as_str().unwrap_or("?"),
                v["version"]["number"].as_str().unwrap_or("?"),
                self.base
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_the_alert_date() {
        assert_eq!(
            index_name("verity-alerts-%Y.%m.%d", "2026-11-22T10:00:00Z"),
            "verity-alerts-2026.11.22"
        );
        assert_eq!(index_name("fixed", "2026-11-22T10:00:00Z"), "fixed");
        assert_eq!(index_name("a-%Y", "garbage"), "a-1970");
    }

    #[test]
    fn item_classification() {
        let item = |status, t: &str| BulkItem {
            status,
            error: Some(serde_json::json!({"type": t, "reason": "r"})),
        };
        assert!(item_failure(0, &item(201, "")).is_none());
        assert!(item_failure(0, &item(409, "version_conflict_engine_exception")).is_none());
        assert!(
            item_failure(0, &item(429, "es_rejected_execution_exception"))
                .unwrap()
                .error
                .is_retryable()
        );
        assert!(
            item_failure(0, &item(503, "unavailable_shards_exception"))
                .unwrap()
                .error
                .is_retryable()
        );
        assert!(
            !item_failure(0, &item(400, "mapper_parsing_exception"))
                .unwrap()
                .error
                .is_retryable()
        );
    }
}
