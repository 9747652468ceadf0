//! The OTLP source: OTLP/gRPC (`grpc.rs`, the logs and metrics services) and OTLP/HTTP
//! (`http.rs`, protobuf and JSON bodies, gzip) decode export requests, answer them with
//! `partial_success`, and hand their records to [`crate::ingest::Ingest`]. `decoded_size.rs`
//! measures what a request will cost once decoded, before it is decoded.

pub mod decoded_size;
pub mod grpc;
pub mod http;

use std::sync::Arc;

use tracing::Instrument;
use verity_drain::Watcher;

use crate::listener::{PeerInfo, SecureListener};
use crate::sources::{Source, SourceError, SourceFuture};

/// OTLP/gRPC: the logs and metrics services on one listener.
pub struct GrpcSource {
    pub listener: SecureListener,
    pub logs: grpc::LogsGrpc,
    pub metrics: grpc::MetricsGrpc,
}

impl Source for GrpcSource {
    fn name(&self) -> &'static str {
        "otlp_grpc"
    }

    fn run(self: Box<Self>, drain: Watcher) -> SourceFuture {
        let this = *self;
        Box::pin(
            async move {
                tonic::transport::Server::builder()
                    .http2_adaptive_window(Some(true))
                    .add_service(this.logs)
                    .add_service(this.metrics)
                    .serve_with_incoming_shutdown(this.listener.into_incoming(), drain.signaled())
                    .await
                    .map_err(|e| SourceError::Serve {
                        source_name: "otlp_grpc",
                        source: Box::new(e),
                    })
            }
            .instrument(tracing::info_span!("otlp_grpc")),
        )
    }
}

/// OTLP/HTTP: `/v1/logs` and `/v1/metrics` on one listener.
pub struct HttpSource {
    pub listener: SecureListener,
    pub state: Arc<http::HttpState>,
}

impl Source for HttpSource {
    fn name(&self) -> &'static str {
        "otlp_http"
    }

    fn run(self: Box<Self>, drain: Watcher) -> SourceFuture {
        let this = *self;
        let router = http::router(this.state).into_make_service_with_connect_info::<PeerInfo>();
        Box::pin(
            async move {
                axum::serve(this.listener, router)
                    .with_graceful_shutdown(drain.signaled())
                    .await
                    .map_err(|e| SourceError::Serve {
                        source_name: "otlp_http",
                        source: Box::new(e),
                    })
            }
            .instrument(tracing::info_span!("otlp_http")),
        )
    }
}
