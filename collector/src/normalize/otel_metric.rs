//! OTLP metrics (typically Istio's `istio_*` metrics scraped by an OTel Collector) to metric
//! samples: one row per data point, Istio labels as columns.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric::Data, number_data_point};
use verity_model::metric::istio_label_index;
use verity_model::{MetricKind, MetricSample};

use super::fields::Value;
use super::limits::RecordLimits;
use super::otel_log::{any_json, any_to_value};
use super::{RejectReason, Rejection};

/// Converts one metric; `resource` attributes are kept with each point. Rejections go to
/// `rejected`, one per data point; the caller renders the metric for the dead-letter file
/// once, if at all.
pub fn normalize(
    metric: &Metric,
    resource: &[KeyValue],
    source: &'static str,
    observed_ns: i64,
    limits: &RecordLimits,
    out: &mut Vec<MetricSample>,
    rejected: &mut Vec<Rejection>,
) {
    let points = data_point_count(metric);
    if metric.name.trim().is_empty() {
        for _ in 0..points.max(1) {
            rejected.push(Rejection::new(RejectReason::InvalidMetric, "metric has no name"));
        }
        return;
    }
    if let Err(r) = limits.key(metric.name.len()) {
        rejected.extend(std::iter::repeat_n(r, points.max(1)));
        return;
    }
    let Some(data) = &metric.data else {
        rejected.push(Rejection::new(
            RejectReason::InvalidMetric,
            format!("metric {} has no data", metric.name),
        ));
        return;
    };
    let base = |kind: MetricKind, attrs: &[KeyValue], time: u64, start: u64| -> Result<MetricSample, Rejection> {
        super::otel_log::check_point_attributes(attrs, limits)?;
        let mut s = MetricSample {
            name: metric.name.clone(),
            kind,
            unit: (!metric.unit.is_empty()).then(|| metric.unit.clone()),
            source,
            ..Default::default()
        };
        s.time_ns = if time == 0 {
            observed_ns
        } else {
            i64::try_from(time).map_err(|_| {
                Rejection::new(
                    RejectReason::InvalidTimestamp,
                    format!("time_unix_nano {time} is out of range"),
                )
            })?
        };
        s.start_time_ns = (start != 0).then(|| i64::try_from(start).ok()).flatten();
        let mut other = serde_json::Map::new();
        for kv in resource.iter().chain(attrs.iter()) {
            match istio_label_index(&kv.key) {
                Some(i) => {
                    let Some(label) = s.labels.get_mut(i) else { continue };
                    *label = match any_to_value(kv.value.as_ref()) {
                        Value::Str(v) => Some(v.into_owned()),
                        Value::Int(v) => Some(v.to_string()),
                        Value::Float(v) => Some(v.to_string()),
                        Value::Bool(v) => Some(v.to_string()),
                        Value::Null => None,
                    }
                }
                None => {
                    other.insert(kv.key.clone(), any_json(kv.value.as_ref()));
                }
            }
        }
        s.attributes = (!other.is_empty()).then(|| serde_json::Value::Object(other).to_string());
        Ok(s)
    };
    let temporality = |t: i32| match t {
        1 => Some("delta"),
        2 => Some("cumulative"),
        _ => None,
    };
    let mut push = |r: Result<MetricSample, Rejection>| match r {
        Ok(s) => out.push(s),
        Err(rejection) => rejected.push(rejection),
    };
    match data {
        Data::Gauge(g) => {
            for p in &g.data_points {
                push(
                    base(
                        MetricKind::Gauge,
                        &p.attributes,
                        p.time_unix_nano,
                        p.start_time_unix_nano,
                    )
                    .and_then(|mut s| {
                        s.value = Some(number(&metric.name, p.value)?);
                        Ok(s)
                    }),
                );
            }
        }
        Data::Sum(sum) => {
            for p in &sum.data_points {
                push(
                    base(MetricKind::Sum, &p.attributes, p.time_unix_nano, p.start_time_unix_nano).and_then(|mut s| {
                        s.value = Some(number(&metric.name, p.value)?);
                        s.monotonic = Some(sum.is_monotonic);
                        s.temporality = temporality(sum.aggregation_temporality);
                        Ok(s)
                    }),
                );
            }
        }
        Data::Histogram(h) => {
            for p in &h.data_points {
                push(
                    base(
                        MetricKind::Histogram,
                        &p.attributes,
                        p.time_unix_nano,
                        p.start_time_unix_nano,
                    )
                    .and_then(|mut s| {
                        if !p.bucket_counts.is_empty()
                            && p.bucket_counts.len() != p.explicit_bounds.len().saturating_add(1)
                        {
                            return Err(Rejection::new(
                                RejectReason::InvalidMetric,
                                format!(
                                    "histogram {} has {} buckets for {} bounds",
                                    metric.name,
                                    p.bucket_counts.len(),
                                    p.explicit_bounds.len()
                                ),
                            ));
                        }
                        s.value = p.sum;
                        s.count = Some(p.count);
                        s.temporality = temporality(h.aggregation_temporality);
                        s.explicit_bounds = p.explicit_bounds.clone();
                        s.bucket_counts = p.bucket_counts.clone();
                        Ok(s)
                    }),
                );
            }
        }
        Data::ExponentialHistogram(h) => {
            for p in &h.data_points {
                push(
                    base(
                        MetricKind::ExponentialHistogram,
                        &p.attributes,
                        p.time_unix_nano,
                        p.start_time_unix_nano,
                    )
                    .map(|mut s| {
                        s.value = p.sum;
                        s.count = Some(p.count);
                        s.temporality = temporality(h.aggregation_temporality);
                        s
                    }),
                );
            }
        }
        Data::Summary(sm) => {
            for p in &sm.data_points {
                push(
                    base(
                        MetricKind::Summary,
                        &p.attributes,
                        p.time_unix_nano,
                        p.start_time_unix_nano,
                    )
                    .map(|mut s| {
                        s.value = Some(p.sum);
                        s.count = Some(p.count);
                        s
                    }),
                );
            }
        }
    }
}

fn number(name: &str, v: Option<number_data_point::Value>) -> Result<f64, Rejection> {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => Ok(d),
        Some(number_data_point::Value::AsInt(i)) => Ok(i as f64),
        None => Err(Rejection::new(
            RejectReason::InvalidMetric,
            format!("data point of {name} has no value"),
        )),
    }
}

/// How many data points a metric carries (what OTLP's `rejected_data_points` counts).
pub fn data_point_count(metric: &Metric) -> usize {
    match &metric.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}
