//! The OTLP source: OTLP/gRPC (`grpc.rs`, the logs and metrics services) and OTLP/HTTP
//! (`http.rs`, protobuf and JSON bodies, gzip) decode export requests, answer them with
//! `partial_success`, and hand their records to [`crate::ingest::Ingest`]. `decoded_size.rs`
//! measures what a request will cost once decoded, before it is decoded.

pub mod decoded_size;
pub mod grpc;
pub mod http;
