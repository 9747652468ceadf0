//! Verity's own telemetry over OTLP (off by default): `tracing` spans exported as traces with
//! `opentelemetry-otlp`, and the metrics of the admin registry pushed periodically as OTLP
//! metrics, so an operator can watch Verity in the same backend as the rest of the platform.
//!
//! The metrics are converted from the registry's OpenMetrics text rather than recorded twice:
//! counters become cumulative monotonic sums, gauges gauges, histograms explicit-bucket
//! histograms, with the same names and labels as on `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::registry::Registry;

use crate::config::TelemetryConfig;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP span exporter for {endpoint}: {message}")]
    Traces { endpoint: String, message: String },
}

/// Builds the tracer provider whose spans go to the OTLP endpoint. Call within the Tokio
/// runtime: the gRPC channel lives on it.
pub fn tracer_provider(cfg: &TelemetryConfig) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&cfg.endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Traces {
            endpoint: cfg.endpoint.clone(),
            message: e.to_string(),
        })?;
    let batch = opentelemetry_sdk::trace::BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_secs(cfg.export_interval_secs.max(1)))
        .build();
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// The `tracing` layer that turns spans into OTLP traces.
pub fn tracing_layer<S>(
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("verity"))
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..KeyValue::default()
    }
}

type Labels = Vec<(String, String)>;

/// Parses `{a="x",b="y"}` (with OpenMetrics escapes) into pairs.
fn parse_labels(s: &str) -> Labels {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim_start_matches([',', ' ']).to_string();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
    }
    out
}

/// One sample line: name, labels, value.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    match head.find('{') {
        Some(i) => {
            let labels = head[i + 1..].strip_suffix('}')?;
            Some((&head[..i], parse_labels(labels), value))
        }
        None => Some((head, Vec::new(), value)),
    }
}

#[derive(Default)]
struct HistogramAcc {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// Converts the registry's OpenMetrics text into OTLP metrics.
pub fn to_otlp(text: &str, service_name: &str, time_ns: u64) -> ExportMetricsServiceRequest {
    let mut metrics = Vec::new();
    let mut family = String::new();
    let mut kind = "unknown";
    let mut help = String::new();
    let mut points: Vec<NumberDataPoint> = Vec::new();
    let mut hist: BTreeMap<Labels, HistogramAcc> = BTreeMap::new();
    let flush = |metrics: &mut Vec<Metric>,
                 family: &str,
                 kind: &str,
                 help: &str,
                 points: &mut Vec<NumberDataPoint>,
                 hist: &mut BTreeMap<Labels, HistogramAcc>| {
        if family.is_empty() {
            return;
        }
        let data = match kind {
            "counter" if !points.is_empty() => Some(metric::Data::Sum(Sum {
                data_points: std::mem::take(points),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            "histogram" if !hist.is_empty() => Some(metric::Data::Histogram(Histogram {
                data_points: std::mem::take(hist)
                    .into_iter()
                    .map(|(labels, mut h)| {
                        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                        let mut counts = Vec::new();
                        let mut prev = 0.0;
                        for (_, c) in &h.buckets {
                            counts.push((c - prev).max(0.0) as u64);
                            prev = *c;
                        }
                        HistogramDataPoint {
                            attributes: labels.iter().map(|(k, v)| kv(k, v)).collect(),
                            time_unix_nano: time_ns,
                            count: h.count as u64,
                            sum: Some(h.sum),
                            bucket_counts: counts,
                            explicit_bounds: h
                                .buckets
                                .iter()
                                .map(|(le, _)| *le)
                                .filter(|le| le.is_finite())
                                .collect(),
                            ..HistogramDataPoint::default()
                        }
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            _ if !points.is_empty() => Some(metric::Data::Gauge(Gauge {
                data_points: std::mem::take(points),
            })),
            _ => None,
        };
        if let Some(data) = data {
            let name = match kind {
                "counter" => format!("{family}_total"),
                _ => family.to_string(),
            };
            metrics.push(Metric {
                name,
                description: help.to_string(),
                data: Some(data),
                ..Metric::default()
            });
        }
        points.clear();
        hist.clear();
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            flush(&mut metrics, &family, kind, &help, &mut points, &mut hist);
            let (name, k) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = name.to_string();
            kind = match k {
                "counter" => "counter",
                "histogram" => "histogram",
                "gauge" => "gauge",
                _ => "unknown",
            };
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').map_or(String::new(), |(_, h)| h.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        if kind == "histogram" {
            let base: Labels = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            let acc = hist.entry(base).or_default();
            if name.ends_with("_bucket") {
                let le = labels.iter().find(|(k, _)| k == "le").and_then(|(_, v)| {
                    if v == "+Inf" {
                        Some(f64::INFINITY)
                    } else {
                        v.parse().ok()
                    }
                });
                if let Some(le) = le {
                    acc.buckets.push((le, value));
                }
            } else if name.ends_with("_sum") {
                acc.sum = value;
            } else if name.ends_with("_count") {
                acc.count = value;
            }
            continue;
        }
        if kind == "counter" && name.ends_with("_created") {
            continue;
        }
        points.push(NumberDataPoint {
            attributes: labels.iter().map(|(k, v)| kv(k, v)).collect(),
            time_unix_nano: time_ns,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..NumberDataPoint::default()
        });
    }
    flush(&mut metrics, &family, kind, &help, &mut points, &mut hist);
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service_name)],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "verity".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

/// Pushes the registry's metrics every interval until `stop`, and once more at the end.
pub async fn export_metrics(
    cfg: TelemetryConfig,
    registry: Arc<crate::admin::AdminState>,
    stop: impl std::future::Future<Output = ()>,
) {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone()) else {
        tracing::error!(endpoint = %cfg.endpoint, "telemetry.endpoint is not a valid URI");
        return;
    };
    let mut client = MetricsServiceClient::new(endpoint.connect_lazy());
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.export_interval_secs.max(1)));
    tokio::pin!(stop);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = &mut stop => true,
        };
        let text = encode(&registry.registry);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        if let Err(status) = client.export(to_otlp(&text, &cfg.service_name, now)).await {
            tracing::debug!(%status, "could not export Verity's metrics over OTLP");
        }
        if last {
            break;
        }
    }
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(%error, "could not encode metrics for OTLP export");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_text_becomes_otlp() {
        let text = "# HELP verity_things Things.\n# TYPE verity_things counter\nverity_things_total{kind=\"a\\\"b\"} 3\n# TYPE verity_depth gauge\nverity_depth{queue=\"intake\"} 2\n# HELP verity_rows Rows.\n# TYPE verity_rows histogram\nverity_rows_sum 7.0\nverity_rows_count 3\nverity_rows_bucket{le=\"1.0\"} 1\nverity_rows_bucket{le=\"5.0\"} 3\nverity_rows_bucket{le=\"+Inf\"} 3\n# EOF\n";
        let req = to_otlp(text, "verity", 42);
        let m = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].name, "verity_things_total");
        let Some(metric::Data::Sum(sum)) = &m[0].data else {
            panic!("sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points[0].attributes[0].key, "kind");
        assert_eq!(
            sum.data_points[0].attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("a\"b".into()))
        );
        assert!(matches!(m[1].data, Some(metric::Data::Gauge(_))));
        let Some(metric::Data::Histogram(h)) = &m[2].data else {
            panic!("histogram")
        };
        assert_eq!(h.data_points[0].bucket_counts, vec![1, 2, 0]);
        assert_eq!(h.data_points[0].explicit_bounds, vec![1.0, 5.0]);
        assert_eq!(h.data_points[0].count, 3);
    }
}
