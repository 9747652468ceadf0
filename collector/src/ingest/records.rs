//! The records of one request into batches: OTLP log records and metric data points, and
//! raw log lines (Kafka), each normalized, admitted for its sender, and counted against the
//! request's limits.

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use verity_model::event::{AccessEvent, IngestSource};
use verity_model::{EventBatchBuilder, InputFormat, MetricBatchBuilder};

use crate::normalize::limits::{ROW_OVERHEAD_BYTES, RecordLimits};
use crate::normalize::{self, Ctx, RejectReason, Rejection};
use crate::pipeline::Batch;

use super::*;

impl Ingest {
    /// Normalizes a logs request (counting and dead-lettering what it rejects) without
    /// touching the pipeline: for sources that wait for a slot instead of refusing.
    pub fn logs_batch(
        &self,
        req: &ExportLogsServiceRequest,
        source: IngestSource,
        origin: Option<&Origin>,
        sender: &Sender,
    ) -> (Option<Batch>, ExportLogsServiceResponse) {
        let limits = self.trust.limits;
        let ctx = Ctx::now(source).with_limits(limits);
        let total: usize = req
            .resource_logs
            .iter()
            .flat_map(|r| r.scope_logs.iter())
            .map(|s| s.log_records.len())
            .sum();
        // Sized by what the request holds, capped: an empty record is two bytes on the wire
        // but a row costs hundreds, so the builder grows with the records kept instead.
        let mut builder = EventBatchBuilder::with_capacity(total.min(INITIAL_ROWS));
        let mut rows_bytes = 0usize;
        let mut per_format = [0u64; InputFormat::ALL.len()];
        let mut rejected = self.dead_letter.rejections();
        let mut reject = |r: Rejection, record: &LogRecord| {
            let text = if rejected.keeps_next() {
                record_text(record)
            } else {
                String::new()
            };
            rejected.push(r, &text, origin);
        };
        let class = self.class_of(sender);
        for rl in &req.resource_logs {
            let attributes = rl.resource.as_ref().map(|r| &r.attributes[..]).unwrap_or(&[]);
            let prepared = normalize::otel_log::Resource::prepare(attributes, &limits);
            if let Ok(r) = &prepared {
                // Its unmapped attributes are stored once, however many records share them.
                rows_bytes = rows_bytes.saturating_add(r.shared_bytes());
            }
            for sl in &rl.scope_logs {
                for record in &sl.log_records {
                    let resource = match &prepared {
                        Ok(r) => r,
                        Err(r) => {
                            reject(r.clone(), record);
                            continue;
                        }
                    };
                    if rows_bytes > limits.max_request_rows_bytes {
                        reject(request_too_large(&limits), record);
                        continue;
                    }
                    match normalize::otel_log::normalize(record, resource, &ctx) {
                        Ok(mut ev) => {
                            ev.ingest_partition = origin.map(|o| o.stream.clone());
                            rows_bytes = rows_bytes.saturating_add(row_cost(&ev));
                            if rows_bytes > limits.max_request_rows_bytes {
                                reject(request_too_large(&limits), record);
                                continue;
                            }
                            match self.admit(&mut ev, sender, class) {
                                Admission::Accepted => {
                                    per_format[ev.format as usize] += 1;
                                    builder.append(&ev);
                                }
                                Admission::Forged(r) => {
                                    reject(r, record);
                                    builder.append(&ev);
                                }
                                Admission::Refused(r) => reject(r, record),
                            }
                        }
                        Err(rejection) => reject(rejection, record),
                    }
                }
            }
        }
        self.metrics
            .records_received
            .get_or_create(&[("source", source.as_str()), ("signal", "logs")])
            .inc_by(total as u64);
        self.count_accepted(source, &per_format);
        self.reject(source, "logs", &rejected);
        let mut batch = None;
        if !builder.is_empty() {
            match builder.finish() {
                Ok(b) => batch = Some(Batch::Events(b)),
                Err(error) => tracing::error!(%error, "could not build an event batch"),
            }
        }
        let response = ExportLogsServiceResponse {
            partial_success: (!rejected.is_empty()).then(|| ExportLogsPartialSuccess {
                rejected_log_records: i64::try_from(rejected.total()).unwrap_or(i64::MAX),
                error_message: summary(&rejected, total, "log records"),
            }),
        };
        (batch, response)
    }

    pub fn metrics_batch(
        &self,
        req: &ExportMetricsServiceRequest,
        source: IngestSource,
        origin: Option<&Origin>,
    ) -> (Option<Batch>, ExportMetricsServiceResponse) {
        let limits = self.trust.limits;
        let observed = normalize::now_ns();
        let mut samples = Vec::new();
        let mut rows_bytes = 0usize;
        let mut point_rejections = Vec::new();
        let mut rejected = self.dead_letter.rejections();
        let mut total = 0usize;
        for rm in &req.resource_metrics {
            let resource = rm.resource.as_ref().map(|r| &r.attributes[..]).unwrap_or(&[]);
            let resource_ok = normalize::otel_log::check_resource(resource, &limits);
            for sm in &rm.scope_metrics {
                for metric in &sm.metrics {
                    let points = normalize::otel_metric::data_point_count(metric);
                    total = total.saturating_add(points);
                    if let Err(r) = &resource_ok {
                        point_rejections.extend(std::iter::repeat_n(r.clone(), points.max(1)));
                    } else if total > limits.max_data_points || rows_bytes > limits.max_request_rows_bytes {
                        point_rejections.extend(std::iter::repeat_n(request_too_large(&limits), points.max(1)));
                    } else {
                        let first = samples.len();
                        normalize::otel_metric::normalize(
                            metric,
                            resource,
                            source.as_str(),
                            observed,
                            &limits,
                            &mut samples,
                            &mut point_rejections,
                        );
                        let mut kept = first;
                        for s in samples.get(first..).unwrap_or_default() {
                            rows_bytes = rows_bytes
                                .saturating_add(s.text_bytes())
                                .saturating_add(ROW_OVERHEAD_BYTES);
                            if rows_bytes > limits.max_request_rows_bytes {
                                break;
                            }
                            kept += 1;
                        }
                        let over = samples.len().saturating_sub(kept);
                        samples.truncate(kept);
                        point_rejections.extend(std::iter::repeat_n(request_too_large(&limits), over));
                    }
                    // The metric is rendered for the dead-letter file once, and only if an
                    // entry keeps it.
                    let mut text: Option<String> = None;
                    for r in point_rejections.drain(..) {
                        let shown = if rejected.keeps_next() {
                            text.get_or_insert_with(|| {
                                serde_json::to_string(metric).unwrap_or_else(|_| metric.name.clone())
                            })
                            .as_str()
                        } else {
                            ""
                        };
                        rejected.push(r, shown, origin);
                    }
                }
            }
        }
        self.metrics
            .records_received
            .get_or_create(&[("source", source.as_str()), ("signal", "metrics")])
            .inc_by(total as u64);
        if !samples.is_empty() {
            self.metrics
                .records_accepted
                .get_or_create(&[("source", source.as_str()), ("format", "otlp_metrics")])
                .inc_by(samples.len() as u64);
        }
        self.reject(source, "metrics", &rejected);
        let mut batch = None;
        if !samples.is_empty() {
            let mut builder = MetricBatchBuilder::default();
            for s in &samples {
                builder.append(s);
            }
            match builder.finish() {
                Ok(b) => batch = Some(Batch::Metrics(b)),
                Err(error) => tracing::error!(%error, "could not build a metric batch"),
            }
        }
        let rejected_points = usize::try_from(rejected.total()).unwrap_or(usize::MAX);
        let response = ExportMetricsServiceResponse {
            partial_success: (!rejected.is_empty()).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: i64::try_from(rejected_points).unwrap_or(i64::MAX),
                error_message: summary(&rejected, total.max(rejected_points), "data points"),
            }),
        };
        (batch, response)
    }

    /// Normalizes raw log lines (any format the normalizers detect) into an event batch;
    /// returns it with the positions of the lines rejected (counted and dead-lettered).
    pub fn lines_batch<'a>(
        &self,
        lines: impl Iterator<Item = (&'a str, Option<&'a Origin>, &'a Sender)>,
        source: IngestSource,
    ) -> (Option<Batch>, Vec<usize>) {
        let limits = self.trust.limits;
        let ctx = Ctx::now(source).with_limits(limits);
        let mut builder = EventBatchBuilder::default();
        let mut rows_bytes = 0usize;
        let mut per_format = [0u64; InputFormat::ALL.len()];
        let mut rejected = self.dead_letter.rejections();
        let mut positions: Vec<usize> = Vec::new();
        let mut total = 0u64;
        // Lines come in runs from one sender (a Kafka message, a topic): classify it once.
        let mut classified: Option<(&Sender, Option<binding::SenderClass>)> = None;
        for (i, (line, origin, sender)) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            total += 1;
            let normalized = if rows_bytes > limits.max_request_rows_bytes {
                Err(request_too_large(&limits))
            } else {
                normalize::normalize_line(line, normalize::FormatHint::Auto, &ctx)
            };
            match normalized {
                Ok(mut ev) => {
                    ev.ingest_partition = origin.map(|o| o.stream.clone());
                    rows_bytes = rows_bytes.saturating_add(row_cost(&ev));
                    let class = match classified {
                        Some((s, class)) if std::ptr::eq(s, sender) => class,
                        _ => {
                            let class = self.class_of(sender);
                            classified = Some((sender, class));
                            class
                        }
                    };
                    let (rejection, keep) = match self.admit(&mut ev, sender, class) {
                        Admission::Accepted => {
                            per_format[ev.format as usize] += 1;
                            (None, true)
                        }
                        Admission::Forged(r) => (Some(r), true),
                        Admission::Refused(r) => (Some(r), false),
                    };
                    if let Some(r) = rejection {
                        rejected.push(r, line, origin);
                        positions.push(i);
                    }
                    if keep {
                        builder.append(&ev);
                    }
                }
                Err(r) => {
                    rejected.push(r, line, origin);
                    positions.push(i);
                }
            }
        }
        self.metrics
            .records_received
            .get_or_create(&[("source", source.as_str()), ("signal", "logs")])
            .inc_by(total);
        self.count_accepted(source, &per_format);
        self.reject(source, "logs", &rejected);
        let batch = if builder.is_empty() {
            None
        } else {
            match builder.finish() {
                Ok(b) => Some(Batch::Events(b)),
                Err(error) => {
                    tracing::error!(%error, "could not build an event batch");
                    None
                }
            }
        };
        (batch, positions)
    }
}

/// Rows a builder starts with; it grows as records are kept.
pub(super) const INITIAL_ROWS: usize = 1024;

/// What an event costs in a batch, counted against `intake.limits.max_request_rows_bytes`.
pub(super) fn row_cost(ev: &AccessEvent<'_>) -> usize {
    ev.text_bytes().saturating_add(ROW_OVERHEAD_BYTES)
}

pub(super) fn request_too_large(limits: &RecordLimits) -> Rejection {
    Rejection::new(
        RejectReason::RequestTooLarge,
        format!(
            "the request's records pass intake.limits.max_request_rows_bytes ({}) or max_data_points ({}); \
             send fewer per request",
            limits.max_request_rows_bytes, limits.max_data_points
        ),
    )
}

/// What goes to the dead-letter file: the body text when there is one, else the record.
pub(super) fn record_text(record: &LogRecord) -> String {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Any::StringValue(s)) if record.attributes.is_empty() => s.clone(),
        _ => serde_json::to_string(record).unwrap_or_default(),
    }
}
