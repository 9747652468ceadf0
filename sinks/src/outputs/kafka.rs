//! A Kafka topic: one JSON message per alert, keyed by alert id, through librdkafka's
//! idempotent producer. A batch counts as delivered when every message is acknowledged by the
//! brokers (`acks=all`).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use verity_model::alert::Alert;

use super::BuildError;
use crate::config::KafkaConfig;
use crate::{BoxFuture, ItemFailure, SendResult, Sink, SinkError};
use verity_secret::Secret;

pub struct Kafka {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

/// Errors a retry cannot fix: the message or the topic is wrong, or we are not allowed.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidTopic
    )
}

fn classify(e: &KafkaError) -> SinkError {
    let msg = format!("Kafka: {e}");
    match e.rdkafka_error_code() {
        Some(code) if is_permanent(code) => SinkError::permanent(msg),
        _ => SinkError::retryable(msg),
    }
}

impl Kafka {
    pub fn new(c: &KafkaConfig) -> Result<Self, BuildError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &c.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                (super::timeout(c.timeout_secs).as_millis()).to_string(),
            )
            .set("linger.ms", "5");
        for (k, v) in &c.properties {
            cfg.set(k, v);
        }
        for (k, s) in &c.secret_properties {
            let key = format!("secret_properties.{k}");
            let v = Secret::resolve(s).map_err(BuildError::secret(key.clone()))?;
            cfg.set(k, v.value().map_err(BuildError::secret(key))?);
        }
        let producer: FutureProducer = cfg.create().map_err(BuildError::KafkaProducer)?;
        Ok(Self {
            producer,
            topic: c.topic.clone(),
            timeout: super::timeout(c.timeout_secs),
        })
    }
}

impl Sink for Kafka {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn send<'a>(&'a self, alerts: &'a [Alert]) -> BoxFuture<'a, SendResult> {
        Box::pin(async move {
            let mut pending = Vec::with_capacity(alerts.len());
            let mut failures = Vec::new();
            for (i, a) in alerts.iter().enumerate() {
                let payload = serde_json::to_vec(a).map_err(|e| SinkError::permanent(e.to_string()))?;
                let record = FutureRecord::to(&self.topic).key(&a.id).payload(&payload);
                match self.producer.send_result(record) {
                    Ok(f) => pending.push((i, f)),
                    Err((e, _)) => failures.push(ItemFailure {
                        index: i,
                        error: classify(&e),
                    }),
                }
            }
            for (i, f) in pending {
                match f.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => failures.push(ItemFailure {
                        index: i,
                        error: classify(&e),
                    }),
                    Err(_) => failures.push(ItemFailure {
                        index: i,
                        error: SinkError::retryable("Kafka producer dropped the message"),
                    }),
                }
            }
            Ok(failures)
        })
    }

    fn health<'a>(&'a self) -> BoxFuture<'a, Result<String, SinkError>> {
        Box::pin(async move {
            let producer = self.producer.clone();
            let topic = self.topic.clone();
            let timeout = self.timeout;
            let md = tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(Some(&topic), timeout).map(|m| {
                    (
                        m.brokers().len(),
                        m.topics().first().map_or(0, |t| t.partitions().len()),
                    )
                })
            })
            .await
            .map_err(|e| SinkError::retryable(e.to_string()))?
            .map_err(|e| classify(&e))?;
            if md.1 == 0 {
                return Err(SinkError::permanent(format!(
                    "topic {} has no partitions (does it exist?)",
                    self.topic
                )));
            }
            Ok(format!(
                "{} broker(s); topic {} has {} partition(s)",
                md.0, self.topic, md.1
            ))
        })
    }
}
