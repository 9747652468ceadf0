//! One Kafka message: decoded as OTLP (protobuf or JSON) or split into raw log lines, and,
//! when undecodable, dead-lettered with its topic, partition and offset.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use verity_model::event::IngestSource;

use crate::ingest::{Ingest, Origin};
use crate::normalize::{RejectReason, Rejection};

use super::accumulate::{Accum, RawMsg};
use super::config::{Encoding, Signal, TopicConfig};
use super::metrics::{KafkaMetrics, TopicLabel};

pub(super) async fn handle_message(
    m: &BorrowedMessage<'_>,
    topics: &HashMap<String, TopicConfig>,
    signing: Option<&super::signing::MessageKey>,
    ingest: &Ingest,
    metrics: &KafkaMetrics,
    dlq: Option<&(FutureProducer, String)>,
    accum: &mut Accum,
) {
    let topic = m.topic();
    let origin = Origin::new(topic, m.partition(), m.offset());
    let payload = m.payload().unwrap_or_default();
    accum.started.get_or_insert_with(Instant::now);
    accum.position(topic, m.partition(), m.offset(), payload.len());
    let Some(tc) = topics.get(topic) else {
        return;
    };
    let poison = |why: String| {
        metrics
            .poison
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
        why
    };
    let signal = match tc.signal {
        Signal::Logs => "logs",
        Signal::Metrics => "metrics",
    };
    let failure: Option<String> = match (tc.encoding, tc.signal) {
        // Rows another instance normalized and sent here for their key (repartitioning).
        (Encoding::ArrowIpc, _) => match signing
            .map_or(Ok(()), |key| key.verify(topic, payload, m.headers()))
            .map_err(|e| e.to_string())
            .and_then(|()| super::repartition::decode_rows(payload, &origin.stream).map_err(|e| e.to_string()))
        {
            Ok(rows) => {
                accum.add_from(Some(crate::pipeline::Batch::Events(rows)), topic, m.partition());
                None
            }
            Err(why) => Some(undecodable(ingest, &origin, signal, payload, poison(why))),
        },
        (Encoding::Raw, _) => match std::str::from_utf8(payload) {
            Ok(text) => {
                accum.rows += text.lines().count();
                accum.bytes = accum.bytes.saturating_add(text.len());
                accum.raw.push(RawMsg {
                    text: text.to_string(),
                    origin: origin.clone(),
                    key: m.key().map(<[u8]>::to_vec),
                    sender: crate::ingest::Sender::configured(tc.sender.as_deref()),
                });
                None
            }
            Err(e) => {
                let why = poison(format!("message is not UTF-8: {e}"));
                ingest.reject_message(
                    IngestSource::Kafka,
                    signal,
                    Rejection::new(RejectReason::InvalidUtf8, why.clone()),
                    String::from_utf8_lossy(payload).into_owned(),
                    Some(&origin),
                );
                Some(why)
            }
        },
        (enc, Signal::Logs) => match decode::<ExportLogsServiceRequest>(
            enc,
            payload,
            crate::sources::otlp::decoded_size::Msg::LogsRequest,
            ingest.limits().max_decoded_bytes,
        ) {
            Ok(req) => {
                accum.add_from(
                    ingest
                        .logs_batch(
                            &req,
                            IngestSource::Kafka,
                            Some(&origin),
                            &crate::ingest::Sender::configured(tc.sender.as_deref()),
                        )
                        .0,
                    topic,
                    m.partition(),
                );
                None
            }
            Err(e) => Some(undecodable(ingest, &origin, signal, payload, poison(e.to_string()))),
        },
        (enc, Signal::Metrics) => match decode::<ExportMetricsServiceRequest>(
            enc,
            payload,
            crate::sources::otlp::decoded_size::Msg::MetricsRequest,
            ingest.limits().max_decoded_bytes,
        ) {
            Ok(req) => {
                accum.add_from(
                    ingest.metrics_batch(&req, IngestSource::Kafka, Some(&origin)).0,
                    topic,
                    m.partition(),
                );
                None
            }
            Err(e) => Some(undecodable(ingest, &origin, signal, payload, poison(e.to_string()))),
        },
    };
    if let (Some(why), Some(dlq)) = (failure, dlq) {
        to_dead_letter_topic(dlq, &origin, m.key(), payload, &why).await;
    }
}

pub(super) async fn to_dead_letter_topic(
    (producer, dlq_topic): &(FutureProducer, String),
    origin: &Origin,
    key: Option<&[u8]>,
    payload: &[u8],
    why: &str,
) {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "verity.source.topic",
            value: Some(&origin.topic),
        })
        .insert(Header {
            key: "verity.source.partition",
            value: Some(&origin.partition.to_string()),
        })
        .insert(Header {
            key: "verity.source.offset",
            value: Some(&origin.offset.to_string()),
        })
        .insert(Header {
            key: "verity.error",
            value: Some(why),
        });
    let mut record = FutureRecord::to(dlq_topic).payload(payload).headers(headers);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Err((error, _)) = producer.send(record, Duration::from_secs(10)).await {
        // The dead-letter file has it regardless.
        tracing::warn!(%error, "could not produce to the dead-letter topic");
    }
}

/// Normalizes the raw-lines messages read so far in one pass. A message none of whose lines
/// could be used is a poison message.
pub(super) async fn normalize_raw(
    accum: &mut Accum,
    ingest: &Ingest,
    metrics: &KafkaMetrics,
    dlq: Option<&(FutureProducer, String)>,
) {
    if accum.raw.is_empty() {
        return;
    }
    let raw = std::mem::take(&mut accum.raw);
    let mut owner: Vec<usize> = Vec::new();
    let mut lines_per_msg = vec![0usize; raw.len()];
    let mut lines: Vec<(&str, Option<&Origin>, &crate::ingest::Sender)> = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        for l in m.text.lines().filter(|l| !l.trim().is_empty()) {
            owner.push(i);
            lines_per_msg[i] += 1;
            lines.push((l, Some(&m.origin), &m.sender));
        }
    }
    let (batch, rejected) = ingest.lines_batch(lines.into_iter(), IngestSource::Kafka);
    accum.add(batch);
    let mut rejected_per_msg = vec![0usize; raw.len()];
    for pos in rejected {
        if let Some(&i) = owner.get(pos) {
            rejected_per_msg[i] += 1;
        }
    }
    for (i, m) in raw.iter().enumerate() {
        let n = lines_per_msg[i];
        if n > 0 && rejected_per_msg[i] == n {
            metrics
                .poison
                .get_or_create(&TopicLabel {
                    topic: m.origin.topic.clone(),
                })
                .inc();
            if let Some(dlq) = dlq {
                let why = format!("none of the {n} line(s) could be normalized");
                to_dead_letter_topic(dlq, &m.origin, m.key.as_deref(), m.text.as_bytes(), &why).await;
            }
        }
    }
}

pub(super) fn undecodable(ingest: &Ingest, origin: &Origin, signal: &str, payload: &[u8], why: String) -> String {
    let raw = match std::str::from_utf8(payload) {
        Ok(s) => s.to_string(),
        Err(_) => format!("base16:{}", hex_prefix(payload)),
    };
    ingest.reject_message(
        IngestSource::Kafka,
        signal,
        Rejection::new(RejectReason::UndecodableMessage, why.clone()),
        raw,
        Some(origin),
    );
    why
}

/// The first 4 KiB of a binary payload as hex: enough to inspect, bounded in size.
pub(super) fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(4096).map(|x| format!("{x:02x}")).collect()
}

/// Why a Kafka message's payload is not an OTLP request. A poison message: it is dead-lettered
/// (file and topic) and its offset committed like any other.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the message would take more than intake.limits.max_decoded_bytes ({limit}) once decoded")]
    TooLarge { limit: usize },
    #[error("not OTLP protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not OTLP/JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("raw lines and event rows are not OTLP encodings")]
    NotOtlp,
}

/// Decodes one message's payload as the topic's OTLP encoding, after checking what it would
/// cost once decoded (`otlp::decoded_size`), so a small message cannot claim a large one.
pub fn decode<T: prost::Message + Default + serde::de::DeserializeOwned>(
    enc: Encoding,
    payload: &[u8],
    root: crate::sources::otlp::decoded_size::Msg,
    limit: usize,
) -> Result<T, DecodeError> {
    let measured = match enc {
        Encoding::OtlpProto => crate::sources::otlp::decoded_size::protobuf(payload, root, limit),
        Encoding::OtlpJson => crate::sources::otlp::decoded_size::json(payload, limit),
        Encoding::Raw | Encoding::ArrowIpc => return Err(DecodeError::NotOtlp),
    };
    if measured.is_none() {
        return Err(DecodeError::TooLarge { limit });
    }
    match enc {
        Encoding::OtlpProto => Ok(T::decode(payload)?),
        Encoding::OtlpJson => Ok(serde_json::from_slice(payload)?),
        Encoding::Raw | Encoding::ArrowIpc => Err(DecodeError::NotOtlp),
    }
}
