//! OTLP/HTTP: `POST /v1/logs` and `POST /v1/metrics`, protobuf or JSON, optionally gzip.
//!
//! Answers follow the OTLP spec: the response uses the request's encoding; 415 for an
//! unsupported content type or encoding; 413 when the body or its decompressed form exceeds
//! the cap; 400 for an undecodable body; 503 with `Retry-After` when the pipeline is full;
//! 401 for a sender without credentials, 403 for one not allowed (see `sender.rs`); 503 too
//! when the requests in flight hold the whole memory budget (`budget.rs`). Error bodies are
//! `google.rpc.Status` messages.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use flate2::read::GzDecoder;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use verity_model::event::IngestSource;

use super::decoded_size;
use crate::ingest::Ingest;
use crate::ingest::budget::{Reservation, decoded_cost};
use crate::ingest::sender::{Denial, Sender, SenderAuth};
use crate::listener::PeerInfo;
use crate::metrics::Metrics;
use crate::pipeline::Handoff;
use tracing::Instrument;

/// `google.rpc.Status`, the body of OTLP/HTTP error answers.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

pub struct HttpState {
    pub ingest: Arc<Ingest>,
    pub max_bytes: usize,
    pub retry_after_secs: u32,
    pub metrics: Metrics,
    pub auth: SenderAuth,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/v1/logs", post(logs))
        .route("/v1/metrics", post(metrics))
        .with_state(state)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// An answer that is not a successful export.
struct Failure {
    status: StatusCode,
    message: String,
    encoding: Encoding,
    retry_after: Option<u32>,
    outcome: &'static str,
}

impl Failure {
    fn new(status: StatusCode, outcome: &'static str, encoding: Encoding, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            encoding,
            retry_after: None,
            outcome,
        }
    }

    fn into_response(self) -> Response {
        // gRPC codes, as google.rpc.Status carries them.
        let code = match self.status {
            StatusCode::BAD_REQUEST => 3,
            StatusCode::UNAUTHORIZED => 16,
            StatusCode::FORBIDDEN => 7,
            StatusCode::PAYLOAD_TOO_LARGE => 8,
            StatusCode::SERVICE_UNAVAILABLE => 14,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => 3,
            _ => 2,
        };
        let status = RpcStatus {
            code,
            message: self.message,
        };
        let body = match self.encoding {
            Encoding::Protobuf => status.encode_to_vec(),
            Encoding::Json => serde_json::to_vec(&status).unwrap_or_default(),
        };
        let mut res = (self.status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.encoding.content_type()),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

async fn logs(
    State(st): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("otlp_export", transport = "http", signal = "logs");
    handle(
        &st,
        "logs",
        &peer,
        headers,
        body,
        |st, bytes, enc, sender, reservation| {
            let req: ExportLogsServiceRequest = decode(
                st,
                bytes,
                enc,
                decoded_size::Msg::LogsRequest,
                "ExportLogsServiceRequest",
                reservation,
            )?;
            let (resp, handoff) = st
                .ingest
                .export_logs(&req, bytes, IngestSource::OtlpHttp, sender)
                .map_err(|b| unavailable(st, b, enc))?;
            Ok((resp.partial_success.is_some(), encode(&resp, enc), handoff))
        },
    )
    .instrument(span)
    .await
}

async fn metrics(
    State(st): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(
        &st,
        "metrics",
        &peer,
        headers,
        body,
        |st, bytes, enc, _sender, reservation| {
            let req: ExportMetricsServiceRequest = decode(
                st,
                bytes,
                enc,
                decoded_size::Msg::MetricsRequest,
                "ExportMetricsServiceRequest",
                reservation,
            )?;
            let (resp, handoff) = st
                .ingest
                .export_metrics(&req, IngestSource::OtlpHttp)
                .map_err(|b| unavailable(st, b, enc))?;
            Ok((resp.partial_success.is_some(), encode(&resp, enc), handoff))
        },
    )
    .await
}

/// 503 with `Retry-After`: the pipeline is full or the in-flight budget is spent.
fn unavailable(st: &HttpState, why: impl std::fmt::Display, enc: Encoding) -> Failure {
    let mut f = Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", enc, why.to_string());
    f.retry_after = Some(st.retry_after_secs);
    f
}

fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    st: &HttpState,
    bytes: &[u8],
    enc: Encoding,
    root: decoded_size::Msg,
    what: &str,
    reservation: &mut Reservation,
) -> Result<T, Failure> {
    let limit = st.ingest.limits().max_decoded_bytes;
    let measured = match enc {
        Encoding::Protobuf => decoded_size::protobuf(bytes, root, limit),
        Encoding::Json => decoded_size::json(bytes, limit),
    };
    if let Some(decoded) = measured {
        reservation
            .grow_by(decoded_cost(decoded))
            .map_err(|spent| unavailable(st, spent, enc))?;
    } else {
        return Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            enc,
            format!(
                "the {what} would take more than intake.limits.max_decoded_bytes ({limit}) once decoded; send fewer records per request"
            ),
        ));
    }
    match enc {
        Encoding::Protobuf => T::decode(bytes).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                enc,
                format!("could not decode {what}: {e}"),
            )
        }),
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                enc,
                format!("could not decode {what} JSON: {e}"),
            )
        }),
    }
}

fn encode<T: Message + serde::Serialize>(msg: &T, enc: Encoding) -> Vec<u8> {
    match enc {
        Encoding::Protobuf => msg.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(msg).unwrap_or_default(),
    }
}

async fn handle(
    st: &HttpState,
    signal: &'static str,
    peer: &PeerInfo,
    headers: HeaderMap,
    body: Body,
    export: impl FnOnce(
        &HttpState,
        &[u8],
        Encoding,
        &Sender,
        &mut Reservation,
    ) -> Result<(bool, Vec<u8>, Option<Handoff>), Failure>,
) -> Response {
    // The reservation is held until the rows are processed and the answer is ready.
    let result = match read_and_export(st, peer, headers, body, export).await {
        Ok((partial, body, enc, Some(handoff), _reservation)) => match handoff.wait().await {
            Ok(()) => Ok((partial, body, enc)),
            Err(e) => {
                let mut f = Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    enc,
                    format!("the records were received but not processed ({e}); retry"),
                );
                f.retry_after = Some(st.retry_after_secs);
                Err(f)
            }
        },
        Ok((partial, body, enc, None, _reservation)) => Ok((partial, body, enc)),
        Err(f) => Err(f),
    };
    let (outcome, response) = match result {
        Ok((partial, body, enc)) => {
            let mut res = (StatusCode::OK, body).into_response();
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(enc.content_type()));
            (if partial { "partial" } else { "ok" }, res)
        }
        Err(f) => {
            tracing::debug!(status = %f.status, message = %f.message, "OTLP/HTTP request refused");
            (f.outcome, f.into_response())
        }
    };
    st.metrics
        .otlp_requests
        .get_or_create(&[("transport", "http"), ("signal", signal), ("outcome", outcome)])
        .inc();
    response
}

async fn read_and_export(
    st: &HttpState,
    peer: &PeerInfo,
    headers: HeaderMap,
    body: Body,
    export: impl FnOnce(
        &HttpState,
        &[u8],
        Encoding,
        &Sender,
        &mut Reservation,
    ) -> Result<(bool, Vec<u8>, Option<Handoff>), Failure>,
) -> Result<(bool, Vec<u8>, Encoding, Option<Handoff>, Reservation), Failure> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let enc = match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                Encoding::Json,
                format!("unsupported content type {content_type:?}; use application/x-protobuf or application/json"),
            ));
        }
    };
    // Who is sending comes before any work on the body.
    let sender = st
        .auth
        .authenticate(
            peer,
            headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes),
            headers.get("x-forwarded-client-cert").map(HeaderValue::as_bytes),
        )
        .map_err(|refused| match refused.denial {
            Denial::Unauthenticated => Failure::new(StatusCode::UNAUTHORIZED, "unauthenticated", enc, refused.message),
            Denial::PermissionDenied => Failure::new(StatusCode::FORBIDDEN, "permission_denied", enc, refused.message),
        })?;
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                enc,
                format!("unsupported content encoding {other:?}; use gzip or none"),
            ));
        }
    };
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            enc,
            format!("request exceeds the {} byte limit", st.max_bytes),
        )
    };
    // Reserved before the body is read: what it says it holds, or the most it may, and room
    // to decompress it.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(st.max_bytes, |n| n.min(st.max_bytes));
    let mut reservation = st
        .ingest
        .budget()
        .try_reserve(declared.saturating_add(if gzip { st.max_bytes } else { 0 }))
        .map_err(|spent| unavailable(st, spent, enc))?;
    let raw: Bytes = axum::body::to_bytes(body, st.max_bytes).await.map_err(|e| {
        let is_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.downcast_ref::<http_body_util::LengthLimitError>().is_some())
            || e.to_string().contains("length limit");
        if is_limit {
            too_large()
        } else {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                enc,
                format!("could not read the request body: {e}"),
            )
        }
    })?;
    let decompressed;
    let bytes: &[u8] = if gzip {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(st.max_bytes));
        GzDecoder::new(&raw[..])
            .take(st.max_bytes as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    enc,
                    format!("invalid gzip body: {e}"),
                )
            })?;
        if out.len() > st.max_bytes {
            return Err(too_large());
        }
        decompressed = out;
        &decompressed
    } else {
        &raw
    };
    reservation.shrink_to(raw.len().saturating_add(if gzip { bytes.len() } else { 0 }));
    let (partial, body, handoff) = export(st, bytes, enc, &sender, &mut reservation)?;
    Ok((partial, body, enc, handoff, reservation))
}
