//! The metric-sample schema: one row per OTLP data point (sum, gauge, histogram, summary),
//! with the Istio standard labels promoted to columns and every other attribute kept as JSON.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

/// The Istio standard metric labels that become columns (FORMATS §3), in schema order.
pub const ISTIO_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    #[default]
    Gauge,
    Sum,
    Histogram,
    ExponentialHistogram,
    Summary,
}

impl MetricKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Sum => "sum",
            MetricKind::Histogram => "histogram",
            MetricKind::ExponentialHistogram => "exponential_histogram",
            MetricKind::Summary => "summary",
        }
    }
}

/// One data point. For histograms and summaries `value` is the sum of observations and
/// `count` the number of observations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub time_ns: i64,
    pub start_time_ns: Option<i64>,
    pub kind: MetricKind,
    pub value: Option<f64>,
    pub count: Option<u64>,
    pub monotonic: Option<bool>,
    /// `delta` or `cumulative` for sums and histograms.
    pub temporality: Option<&'static str>,
    pub unit: Option<String>,
    /// Values for [`ISTIO_LABELS`], index-aligned.
    pub labels: [Option<String>; ISTIO_LABELS.len()],
    pub explicit_bounds: Vec<f64>,
    pub bucket_counts: Vec<u64>,
    /// Remaining point and resource attributes as a JSON object.
    pub attributes: Option<String>,
    pub source: &'static str,
}

impl MetricSample {
    /// Bytes of text and lists the sample puts into a batch beyond its fixed per-row part.
    pub fn text_bytes(&self) -> usize {
        let labels: usize = self.labels.iter().map(|l| l.as_deref().map_or(0, str::len)).sum();
        self.name
            .len()
            .saturating_add(labels)
            .saturating_add(self.unit.as_deref().map_or(0, str::len))
            .saturating_add(self.attributes.as_deref().map_or(0, str::len))
            .saturating_add(self.explicit_bounds.len().saturating_mul(8))
            .saturating_add(self.bucket_counts.len().saturating_mul(8))
    }
}

pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()));
            let mut fields = vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("time", ts.clone(), false),
                Field::new("start_time", ts, true),
                Field::new("kind", DataType::Utf8, false),
                Field::new("value", DataType::Float64, true),
                Field::new("count", DataType::UInt64, true),
                Field::new("monotonic", DataType::Boolean, true),
                Field::new("temporality", DataType::Utf8, true),
                Field::new("unit", DataType::Utf8, true),
            ];
            fields.extend(ISTIO_LABELS.iter().map(|l| Field::new(*l, DataType::Utf8, true)));
            fields.push(Field::new(
                "explicit_bounds",
                DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
                true,
            ));
            fields.push(Field::new(
                "bucket_counts",
                DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true))),
                true,
            ));
            fields.push(Field::new("attributes", DataType::Utf8, true));
            fields.push(Field::new("source", DataType::Utf8, false));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

pub struct MetricBatchBuilder {
    len: usize,
    name: StringBuilder,
    time: TimestampNanosecondBuilder,
    start_time: TimestampNanosecondBuilder,
    kind: StringBuilder,
    value: Float64Builder,
    count: UInt64Builder,
    monotonic: BooleanBuilder,
    temporality: StringBuilder,
    unit: StringBuilder,
    labels: Vec<StringBuilder>,
    explicit_bounds: ListBuilder<Float64Builder>,
    bucket_counts: ListBuilder<UInt64Builder>,
    attributes: StringBuilder,
    source: StringBuilder,
}

impl Default for MetricBatchBuilder {
    fn default() -> Self {
        let t = || TimestampNanosecondBuilder::new().with_timezone("+00:00");
        Self {
            len: 0,
            name: StringBuilder::new(),
            time: t(),
            start_time: t(),
            kind: StringBuilder::new(),
            value: Float64Builder::new(),
            count: UInt64Builder::new(),
            monotonic: BooleanBuilder::new(),
            temporality: StringBuilder::new(),
            unit: StringBuilder::new(),
            labels: ISTIO_LABELS.iter().map(|_| StringBuilder::new()).collect(),
            explicit_bounds: ListBuilder::new(Float64Builder::new()),
            bucket_counts: ListBuilder::new(UInt64Builder::new()),
            attributes: StringBuilder::new(),
            source: StringBuilder::new(),
        }
    }
}

impl MetricBatchBuilder {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn append(&mut self, s: &MetricSample) {
        self.len += 1;
        self.name.append_value(&s.name);
        self.time.append_value(s.time_ns);
        self.start_time.append_option(s.start_time_ns);
        self.kind.append_value(s.kind.as_str());
        self.value.append_option(s.value);
        self.count.append_option(s.count);
        self.monotonic.append_option(s.monotonic);
        self.temporality.append_option(s.temporality);
        self.unit.append_option(s.unit.as_deref());
        for (b, v) in self.labels.iter_mut().zip(s.labels.iter()) {
            b.append_option(v.as_deref());
        }
        if s.explicit_bounds.is_empty() && s.bucket_counts.is_empty() {
            self.explicit_bounds.append_null();
            self.bucket_counts.append_null();
        } else {
            self.explicit_bounds.values().append_slice(&s.explicit_bounds);
            self.explicit_bounds.append(true);
            self.bucket_counts.values().append_slice(&s.bucket_counts);
            self.bucket_counts.append(true);
        }
        self.attributes.append_option(s.attributes.as_deref());
        self.source.append_value(s.source);
    }

    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.len = 0;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.name.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.start_time.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.count.finish()),
            Arc::new(self.monotonic.finish()),
            Arc::new(self.temporality.finish()),
            Arc::new(self.unit.finish()),
        ];
        columns.extend(self.labels.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.explicit_bounds.finish()));
        columns.push(Arc::new(self.bucket_counts.finish()));
        columns.push(Arc::new(self.attributes.finish()));
        columns.push(Arc::new(self.source.finish()));
        RecordBatch::try_new(schema(), columns)
    }
}

/// Index of an Istio label column in [`ISTIO_LABELS`].
pub fn istio_label_index(name: &str) -> Option<usize> {
    ISTIO_LABELS.iter().position(|l| *l == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_histogram_and_gauge_rows() {
        let mut b = MetricBatchBuilder::default();
        let mut s = MetricSample {
            name: "istio_requests_total".into(),
            kind: MetricKind::Sum,
            value: Some(5.0),
            source: "otlp_http",
            ..Default::default()
        };
        s.labels[0] = Some("destination".into());
        b.append(&s);
        b.append(&MetricSample {
            name: "istio_request_duration_milliseconds".into(),
            kind: MetricKind::Histogram,
            explicit_bounds: vec![1.0, 5.0],
            bucket_counts: vec![1, 2, 0],
            count: Some(3),
            source: "otlp_http",
            ..Default::default()
        });
        let batch = b.finish().expect("batch");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), schema());
    }
}
