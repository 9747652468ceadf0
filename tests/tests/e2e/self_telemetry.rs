//! Verity's own telemetry over OTLP: with `telemetry.enabled`, its spans arrive as OTLP traces
//! and its metrics as OTLP metrics at a collector; by default nothing is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use verity_e2e::{Verity, eventually};

#[derive(Default, Clone)]
struct Received {
    spans: Arc<Mutex<Vec<(String, String)>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for rs in &req.get_ref().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    spans.push((service.clone(), s.name.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = self.metrics.lock().expect("lock");
        for rm in &req.get_ref().resource_metrics {
            for sm in &rm.scope_metrics {
                names.extend(sm.metrics.iter().map(|m| m.name.clone()));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A minimal OTLP/gRPC collector on a free port, on its own thread.
fn collector(received: Received) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(received.clone()))
                .add_service(MetricsServiceServer::new(received))
                .serve_with_incoming(incoming)
                .await;
        });
    });
    addr
}

const LINE: &str = r#"[2026-11-22T10:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "st" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#;

#[test]
fn own_traces_and_metrics_reach_an_otlp_collector() {
    let received = Received::default();
    let addr = collector(received.clone());
    let endpoint = format!("http://{addr}");
    let mut v = Verity::start(&[
        ("VERITY__TELEMETRY__ENABLED", "true"),
        ("VERITY__TELEMETRY__ENDPOINT", &endpoint),
        ("VERITY__TELEMETRY__SERVICE_NAME", "verity-e2e"),
        ("VERITY__TELEMETRY__EXPORT_INTERVAL_SECS", "1"),
    ]);
    for _ in 0..3 {
        assert_eq!(verity_e2e::post_log_lines(v.http, &[LINE]), 200);
    }
    assert!(
        eventually(Duration::from_secs(20), || {
            received
                .metrics
                .lock()
                .expect("lock")
                .iter()
                .any(|m| m == "verity_records_received_total")
        }),
        "metrics: {:?}\n{}",
        received.metrics.lock().expect("lock"),
        v.stderr()
    );
    assert!(
        eventually(Duration::from_secs(20), || {
            received
                .spans
                .lock()
                .expect("lock")
                .iter()
                .any(|(svc, name)| name == "otlp_export" && svc.contains("verity-e2e"))
        }),
        "spans: {:?}\n{}",
        received.spans.lock().expect("lock"),
        v.stderr()
    );
    let names = received.metrics.lock().expect("lock").clone();
    assert!(
        names.iter().any(|m| m == "verity_pipeline_batch_rows"),
        "histograms too: {names:?}"
    );
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", v.stderr());
}
