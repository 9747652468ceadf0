//! OTLP/gRPC: `LogsService/Export` and `MetricsService/Export` on tonic.
//!
//! The services are written by hand around tonic's `Grpc` rather than generated, for two
//! answers OTLP requires and the generated code does not give: an undecodable request is
//! INVALID_ARGUMENT (tonic's prost codec says INTERNAL), and an oversized request is
//! RESOURCE_EXHAUSTED whether or not it was compressed (tonic says OUT_OF_RANGE for an
//! uncompressed one). tonic still does the framing, gzip and the size cap while reading.
//! The sender is authenticated (`sender.rs`) before the message is read: UNAUTHENTICATED
//! without credentials, PERMISSION_DENIED when not allowed. Then the request reserves its
//! share of the in-flight memory budget (`budget.rs`), UNAVAILABLE when it is spent.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use prost::Message;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Request, Response, Status};
use verity_model::event::IngestSource;

use super::decoded_size;
use crate::ingest::Ingest;
use crate::ingest::budget::{Reservation, decoded_cost, grpc_body_bytes};
use crate::ingest::sender::{Denial, Sender, SenderAuth};
use crate::listener::PeerInfo;
use crate::metrics::Metrics;
use crate::pipeline::{Backpressure, Handoff};
use tracing::Instrument;

pub const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
pub const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

struct Shared {
    ingest: Arc<Ingest>,
    max_bytes: usize,
    metrics: Metrics,
    auth: SenderAuth,
}

/// `opentelemetry.proto.collector.logs.v1.LogsService`.
#[derive(Clone)]
pub struct LogsGrpc(Arc<Shared>);

/// `opentelemetry.proto.collector.metrics.v1.MetricsService`.
#[derive(Clone)]
pub struct MetricsGrpc(Arc<Shared>);

pub fn services(ingest: Arc<Ingest>, max_bytes: usize, metrics: Metrics, auth: SenderAuth) -> (LogsGrpc, MetricsGrpc) {
    let shared = Arc::new(Shared {
        ingest,
        max_bytes,
        metrics,
        auth,
    });
    (LogsGrpc(shared.clone()), MetricsGrpc(shared))
}

impl NamedService for LogsGrpc {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

impl NamedService for MetricsGrpc {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

/// Passes the (decompressed, size-checked) message bytes through undecoded.
struct RawCodec<T>(PhantomData<T>);

struct ProstEncoder<T>(PhantomData<T>);

struct RawDecoder;

impl<T: Message + Send + 'static> Codec for RawCodec<T> {
    type Encode = T;
    type Decode = Bytes;
    type Encoder = ProstEncoder<T>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl<T: Message> Encoder for ProstEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

#[derive(Clone, Copy)]
enum Signal {
    Logs,
    Metrics,
}

impl Signal {
    fn as_str(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

struct LogsExport(Arc<Shared>, Sender, Option<Reservation>);
/// Metric samples carry no sender column; the request was authenticated all the same.
struct MetricsExport(Arc<Shared>, Option<Reservation>);

fn backpressure_status(b: Backpressure) -> Status {
    match b {
        Backpressure::Full => Status::unavailable("the Verity pipeline is full; retry with backoff"),
        Backpressure::Closed => Status::unavailable("Verity is shutting down; retry against another instance"),
    }
}

/// Decodes the message, runs the export, waits for the hand-off and counts the outcome: the
/// part both services share.
async fn export<Req, Resp>(
    shared: &Shared,
    bytes: Bytes,
    reservation: Option<Reservation>,
    signal: Signal,
    what: &str,
    run: impl FnOnce(&Ingest, &Req, &[u8]) -> Result<(Resp, Option<Handoff>), Backpressure>,
    partial: impl FnOnce(&Resp) -> bool,
) -> Result<Response<Resp>, Status>
where
    Req: Message + Default,
{
    let root = match signal {
        Signal::Logs => decoded_size::Msg::LogsRequest,
        Signal::Metrics => decoded_size::Msg::MetricsRequest,
    };
    let limit = shared.ingest.limits().max_decoded_bytes;
    // Held until the answer: the body, then the decoded request and its rows.
    let mut reservation = reservation;
    let started = match decoded_size::protobuf(&bytes, root, limit) {
        None => Err(Status::resource_exhausted(format!(
            "the {what} would take more than intake.limits.max_decoded_bytes ({limit}) once decoded; send fewer records per request"
        ))),
        Some(decoded) => match reservation
            .as_mut()
            .map(|r| r.grow_by(decoded_cost(decoded)))
        {
            Some(Err(spent)) => Err(Status::unavailable(spent.to_string())),
            // `Bytes` clones share the buffer: the message bytes stay for the request digest.
            _ => Req::decode(bytes.clone()).map_err(|e| Status::invalid_argument(format!("could not decode {what}: {e}"))),
        },
    }
    .and_then(|req| run(&shared.ingest, &req, &bytes).map_err(backpressure_status));
    // Digested and decoded: the message bytes are not needed while the batch is processed.
    drop(bytes);
    let result = match started {
        Ok((resp, Some(handoff))) => match handoff.wait().await {
            Ok(()) => Ok(resp),
            Err(e) => Err(Status::unavailable(format!(
                "the records were received but not processed ({e}); retry"
            ))),
        },
        Ok((resp, None)) => Ok(resp),
        Err(s) => Err(s),
    };
    let outcome = match &result {
        Ok(resp) if partial(resp) => "partial",
        Ok(_) => "ok",
        Err(s) if s.code() == Code::InvalidArgument => "bad_request",
        Err(s) if s.code() == Code::Unavailable => "unavailable",
        Err(s) if s.code() == Code::ResourceExhausted => "too_large",
        Err(_) => "error",
    };
    count(&shared.metrics, signal, outcome);
    result.map(Response::new)
}

impl UnaryService<Bytes> for LogsExport {
    type Response = ExportLogsServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let (shared, sender) = (self.0.clone(), self.1.clone());
        let reservation = self.2.take();
        Box::pin(async move {
            let bytes = request.into_inner();
            let reservation = reservation.map(|mut r| {
                r.shrink_to(grpc_body_bytes(bytes.len()));
                r
            });
            export(
                &shared,
                bytes,
                reservation,
                Signal::Logs,
                "ExportLogsServiceRequest",
                |ingest, req: &ExportLogsServiceRequest, received| {
                    ingest.export_logs(req, received, IngestSource::OtlpGrpc, &sender)
                },
                |resp| resp.partial_success.is_some(),
            )
            .instrument(tracing::info_span!("otlp_export", transport = "grpc"))
            .await
        })
    }
}

impl UnaryService<Bytes> for MetricsExport {
    type Response = ExportMetricsServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let shared = self.0.clone();
        let reservation = self.1.take();
        Box::pin(async move {
            let bytes = request.into_inner();
            let reservation = reservation.map(|mut r| {
                r.shrink_to(grpc_body_bytes(bytes.len()));
                r
            });
            export(
                &shared,
                bytes,
                reservation,
                Signal::Metrics,
                "ExportMetricsServiceRequest",
                |ingest, req: &ExportMetricsServiceRequest, _| ingest.export_metrics(req, IngestSource::OtlpGrpc),
                |resp| resp.partial_success.is_some(),
            )
            .instrument(tracing::info_span!("otlp_export", transport = "grpc"))
            .await
        })
    }
}

fn count(metrics: &Metrics, signal: Signal, outcome: &'static str) {
    metrics
        .otlp_requests
        .get_or_create(&[("transport", "grpc"), ("signal", signal.as_str()), ("outcome", outcome)])
        .inc();
}

fn grpc<T: Message + Send + 'static>(max_bytes: usize) -> Grpc<RawCodec<T>> {
    let mut accept = EnabledCompressionEncodings::default();
    accept.enable(CompressionEncoding::Gzip);
    Grpc::new(RawCodec(PhantomData))
        .apply_compression_config(accept, EnabledCompressionEncodings::default())
        .apply_max_message_size_config(Some(max_bytes), None)
}

/// tonic rejects an oversized uncompressed message with OUT_OF_RANGE before any handler
/// runs; OTLP specifies RESOURCE_EXHAUSTED (not retryable without RetryInfo).
fn oversize_is_resource_exhausted(
    mut res: http::Response<Body>,
    shared: &Shared,
    signal: Signal,
) -> http::Response<Body> {
    let status = res
        .headers()
        .get(Status::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    match status {
        Some(s) if s == Code::OutOfRange as i32 => {
            res.headers_mut()
                .insert(Status::GRPC_STATUS, (Code::ResourceExhausted as i32).into());
            count(&shared.metrics, signal, "too_large");
        }
        Some(s) if s == Code::ResourceExhausted as i32 => count(&shared.metrics, signal, "too_large"),
        Some(s) if s == Code::Internal as i32 || s == Code::Unimplemented as i32 => {
            count(&shared.metrics, signal, "error")
        }
        _ => {}
    }
    res
}

/// The request's sender, from the connection tonic recorded and the request's metadata.
fn authenticate<B>(shared: &Shared, req: &http::Request<B>) -> Result<Sender, Status> {
    let unknown = PeerInfo {
        remote: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        tls: false,
        spiffe_id: None,
    };
    let peer = req.extensions().get::<PeerInfo>().unwrap_or(&unknown);
    let header = |name: &str| req.headers().get(name).map(|v| v.as_bytes());
    shared
        .auth
        .authenticate(peer, header("authorization"), header("x-forwarded-client-cert"))
        .map_err(|refused| match refused.denial {
            Denial::Unauthenticated => Status::unauthenticated(refused.message),
            Denial::PermissionDenied => Status::permission_denied(refused.message),
        })
}

macro_rules! otlp_service {
    ($svc:ident, $path:expr, $export:expr, $msg:ty, $signal:expr) => {
        impl<B> Service<http::Request<B>> for $svc
        where
            B: http_body::Body<Data = Bytes> + Send + 'static,
            B::Error: Into<StdError> + Send + 'static,
        {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = BoxFuture<Self::Response, Self::Error>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: http::Request<B>) -> Self::Future {
                let shared = self.0.clone();
                Box::pin(async move {
                    if req.uri().path() != $path {
                        return Ok(Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http());
                    }
                    let sender = match authenticate(&shared, &req) {
                        Ok(sender) => sender,
                        Err(status) => {
                            let outcome = if status.code() == Code::PermissionDenied {
                                "permission_denied"
                            } else {
                                "unauthenticated"
                            };
                            count(&shared.metrics, $signal, outcome);
                            return Ok(status.into_http());
                        }
                    };
                    // Before the message is read: its size is known only once it is.
                    let reservation = match shared
                        .ingest
                        .budget()
                        .try_reserve(grpc_body_bytes(shared.max_bytes))
                    {
                        Ok(r) => r,
                        Err(spent) => {
                            count(&shared.metrics, $signal, "unavailable");
                            return Ok(Status::unavailable(spent.to_string()).into_http());
                        }
                    };
                    let mut grpc = grpc::<$msg>(shared.max_bytes);
                    let res = grpc
                        .unary(($export)(shared.clone(), sender, reservation), req)
                        .await;
                    Ok(oversize_is_resource_exhausted(res, &shared, $signal))
                })
            }
        }
    };
}

otlp_service!(
    LogsGrpc,
    LOGS_EXPORT,
    |shared, sender, reservation| LogsExport(shared, sender, Some(reservation)),
    ExportLogsServiceResponse,
    Signal::Logs
);
otlp_service!(
    MetricsGrpc,
    METRICS_EXPORT,
    |shared, _sender: Sender, reservation| MetricsExport(shared, Some(reservation)),
    ExportMetricsServiceResponse,
    Signal::Metrics
);
