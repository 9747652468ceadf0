//! Ingest, shared by every source: [`Ingest`] takes the decoded records of one request (an
//! OTLP export over gRPC or HTTP, or a Kafka message), stamps who sent them, normalizes them
//! into Arrow batches, counts and dead-letters what it rejects, and hands the batches to the
//! pipeline.
//!
//! - `sender.rs` and `binding.rs`: who sent a request and what that sender may report.
//! - `budget.rs`: the memory every request in flight shares.
//! - `deliveries.rs`: a re-sent request is recognized and answered once.
//!
//! Every export first reserves a pipeline slot, so a full pipeline is answered with a
//! retryable error before any work is done. Records that cannot be normalized are counted,
//! dead-lettered and reported through `partial_success`; they never fail the request.

pub mod binding;
pub mod budget;
pub mod deliveries;
pub mod sender;

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use verity_model::event::{AccessEvent, IngestSource, SenderBinding};
use verity_model::{EventBatchBuilder, InputFormat, MetricBatchBuilder};

use crate::dead_letter::DeadLetter;
use crate::metrics::Metrics;
use crate::normalize::limits::{ROW_OVERHEAD_BYTES, RecordLimits};
pub use crate::normalize::rejections::Origin;
use crate::normalize::rejections::Rejections;
use crate::normalize::{self, Ctx, RejectReason, Rejection};
use crate::pipeline::{Backpressure, Batch, Handoff, HeldAlerts, Intake};
pub use sender::Sender;

/// Shared by both transports.
pub struct Ingest {
    intake: Intake,
    dead_letter: Arc<DeadLetter>,
    metrics: Metrics,
    trust: binding::IntakeConfig,
    deliveries: Arc<deliveries::Deliveries>,
    held: HeldAlerts,
    budget: budget::InFlightBudget,
}

/// `otlp.max_in_flight_bytes` unless set with [`Ingest::with_in_flight_bytes`].
const DEFAULT_IN_FLIGHT_BYTES: usize = 256 << 20;

/// How many rejected records are described in `partial_success.error_message`.
const MAX_ERRORS_IN_MESSAGE: usize = 3;

impl Ingest {
    pub fn new(intake: Intake, dead_letter: Arc<DeadLetter>, metrics: Metrics, trust: binding::IntakeConfig) -> Self {
        Self {
            intake,
            dead_letter,
            budget: budget::InFlightBudget::new(DEFAULT_IN_FLIGHT_BYTES, metrics.otlp_in_flight.clone()),
            metrics,
            trust,
            deliveries: Arc::new(deliveries::Deliveries::new(HeldAlerts::default())),
            held: HeldAlerts::default(),
        }
    }

    /// What all requests in flight may hold together (see [`budget`]).
    pub fn with_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.budget = budget::InFlightBudget::new(bytes, self.metrics.otlp_in_flight.clone());
        self
    }

    /// The in-flight memory budget every source reserves from.
    pub fn budget(&self) -> &budget::InFlightBudget {
        &self.budget
    }

    /// Resends are recognised against the rules stage's held alerts (see [`deliveries`]).
    pub fn with_held_alerts(mut self, held: HeldAlerts) -> Self {
        self.deliveries = Arc::new(deliveries::Deliveries::new(held.clone()));
        self.held = held;
        self
    }

    /// The rules stage's held alerts (sources wait for them before acknowledging evaluated
    /// batches again).
    pub fn held_alerts(&self) -> &HeldAlerts {
        &self.held
    }

    /// Looks a request up among those already evaluated. `Ok(Some(digest))`: new, evaluate it
    /// (the digest settles it); `Ok(None)`: a resend to acknowledge as it is.
    fn recall(&self, sender: &Sender, req: &impl prost::Message) -> Result<Option<deliveries::Digest>, Backpressure> {
        let d = self
            .deliveries
            .digest(sender.id.as_deref().unwrap_or(""), &req.encode_to_vec());
        match self.deliveries.begin(d) {
            deliveries::Verdict::New => Ok(Some(d)),
            deliveries::Verdict::Duplicate => {
                self.metrics
                    .duplicate_requests
                    .get_or_create(&[("outcome", "acknowledged")])
                    .inc();
                Ok(None)
            }
            deliveries::Verdict::RetryLater => {
                self.metrics
                    .duplicate_requests
                    .get_or_create(&[("outcome", "retry_later")])
                    .inc();
                Err(Backpressure::Full)
            }
        }
    }

    /// Settles `digest` once `handoff` resolves, and hands the outcome on.
    fn settled(&self, digest: deliveries::Digest, handoff: Handoff) -> Handoff {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deliveries = self.deliveries.clone();
        tokio::spawn(async move {
            let outcome = handoff.wait().await;
            deliveries.settle(digest, &outcome);
            let _ = tx.send(outcome);
        });
        Handoff::from_receiver(rx)
    }

    /// Stamps the sender on a normalized record and decides whether the batch takes it.
    fn admit<'a>(
        &self,
        ev: &mut AccessEvent<'a>,
        sender: &'a Sender,
        class: Option<binding::SenderClass>,
    ) -> Admission {
        if !stamp_sender(ev, sender, class) {
            return Admission::Forged(not_party(ev, sender));
        }
        match self.too_far_ahead(ev) {
            Some(r) => Admission::Refused(r),
            None => Admission::Accepted,
        }
    }

    /// A rejection for a record dated too far after (or before) it arrived.
    fn too_far_ahead(&self, ev: &AccessEvent<'_>) -> Option<Rejection> {
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1_000_000_000);
        let past = self.trust.max_past_secs;
        if past > 0 && ev.event_time_ns < ev.observed_time_ns.saturating_sub(secs(past)) {
            return Some(Rejection::new(
                RejectReason::PastTimestamp,
                format!(
                    "event time {} is more than {past} s before the record arrived ({})",
                    verity_model::time::format_rfc3339_ns(ev.event_time_ns),
                    verity_model::time::format_rfc3339_ns(ev.observed_time_ns)
                ),
            ));
        }
        let limit_ns = secs(self.trust.max_future_secs);
        (ev.event_time_ns > ev.observed_time_ns.saturating_add(limit_ns)).then(|| {
            Rejection::new(
                RejectReason::FutureTimestamp,
                format!(
                    "event time {} is more than {} s after the record arrived ({})",
                    verity_model::time::format_rfc3339_ns(ev.event_time_ns),
                    self.trust.max_future_secs,
                    verity_model::time::format_rfc3339_ns(ev.observed_time_ns)
                ),
            )
        })
    }

    fn class_of(&self, sender: &Sender) -> Option<binding::SenderClass> {
        sender
            .id
            .as_deref()
            .filter(|_| sender.authenticated)
            .and_then(|id| self.trust.class_of(id))
    }

    pub fn intake(&self) -> &Intake {
        &self.intake
    }

    pub fn limits(&self) -> &RecordLimits {
        &self.trust.limits
    }

    pub fn export_logs(
        &self,
        req: &ExportLogsServiceRequest,
        source: IngestSource,
        sender: &Sender,
    ) -> Result<(ExportLogsServiceResponse, Option<Handoff>), Backpressure> {
        let permit = self.intake.try_reserve()?;
        let Some(digest) = self.recall(sender, req)? else {
            return Ok((ExportLogsServiceResponse::default(), None));
        };
        let (batch, response) = self.logs_batch(req, source, None, sender);
        match batch {
            Some(b) => Ok((response, Some(self.settled(digest, permit.send(b))))),
            None => {
                self.deliveries.settle(digest, &Ok(()));
                Ok((response, None))
            }
        }
    }

    pub fn export_metrics(
        &self,
        req: &ExportMetricsServiceRequest,
        source: IngestSource,
    ) -> Result<(ExportMetricsServiceResponse, Option<Handoff>), Backpressure> {
        let permit = self.intake.try_reserve()?;
        let (batch, response) = self.metrics_batch(req, source, None);
        Ok((response, batch.map(|b| permit.send(b))))
    }

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

    /// Dead-letters a whole message that could not be decoded at all.
    pub fn reject_message(
        &self,
        source: IngestSource,
        signal: &str,
        rejection: Rejection,
        raw: String,
        origin: Option<&Origin>,
    ) {
        let mut rejected = self.dead_letter.rejections();
        rejected.push(rejection, &raw, origin);
        self.reject(source, signal, &rejected);
    }

    fn count_accepted(&self, source: IngestSource, per_format: &[u64; InputFormat::ALL.len()]) {
        for (format, n) in InputFormat::ALL.iter().zip(per_format) {
            if *n > 0 {
                self.metrics
                    .records_accepted
                    .get_or_create(&[("source", source.as_str()), ("format", format.as_str())])
                    .inc_by(*n);
            }
        }
    }

    fn reject(&self, source: IngestSource, signal: &str, rejected: &Rejections<'_>) {
        if rejected.is_empty() {
            return;
        }
        for (reason, n) in rejected.by_reason() {
            self.metrics
                .records_rejected
                .get_or_create(&[("source", source.as_str()), ("reason", reason.as_str())])
                .inc_by(n);
        }
        self.dead_letter.write(source.as_str(), signal, rejected);
        tracing::debug!(
            source = source.as_str(),
            signal,
            rejected = rejected.total(),
            "records rejected"
        );
    }
}

/// Rows a builder starts with; it grows as records are kept.
const INITIAL_ROWS: usize = 1024;

/// What an event costs in a batch, counted against `intake.limits.max_request_rows_bytes`.
fn row_cost(ev: &AccessEvent<'_>) -> usize {
    ev.text_bytes().saturating_add(ROW_OVERHEAD_BYTES)
}

fn request_too_large(limits: &RecordLimits) -> Rejection {
    Rejection::new(
        RejectReason::RequestTooLarge,
        format!(
            "the request's records pass intake.limits.max_request_rows_bytes ({}) or max_data_points ({}); \
             send fewer per request",
            limits.max_request_rows_bytes, limits.max_data_points
        ),
    )
}

/// What happens to a normalized record once its sender is known.
enum Admission {
    /// Into the batch.
    Accepted,
    /// Into the batch for the rules that read `sender_binding`, and rejected (dead-lettered).
    Forged(Rejection),
    /// Rejected only.
    Refused(Rejection),
}

/// Stamps the sender and its binding on a record; false for a forgery, which stays in the
/// batch (only rules that ask about `sender_binding` see it) but is rejected and
/// dead-lettered like any record Verity cannot use.
pub fn stamp_sender<'a>(ev: &mut AccessEvent<'a>, sender: &'a Sender, class: Option<binding::SenderClass>) -> bool {
    let b = binding::bind(ev, sender, class);
    if b == SenderBinding::NotParty {
        // The claimed time is the forger's choice; the forgery happened when it arrived.
        ev.event_time_ns = ev.observed_time_ns;
    }
    ev.sender = sender.id.as_deref().map(Cow::Borrowed);
    ev.sender_verified = b.verified();
    ev.sender_binding = b;
    b != SenderBinding::NotParty
}

fn not_party(ev: &AccessEvent<'_>, sender: &Sender) -> Rejection {
    let name = |p: Option<&str>| p.unwrap_or("-").chars().take(256).collect::<String>();
    Rejection::new(
        RejectReason::SenderNotParty,
        format!(
            "sender {} reported {} traffic from {} to {} that it did not carry",
            name(sender.id.as_deref()),
            ev.reporter,
            name(ev.source_principal.as_deref()),
            name(ev.destination_principal.as_deref()),
        ),
    )
}

/// What goes to the dead-letter file: the body text when there is one, else the record.
fn record_text(record: &LogRecord) -> String {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Any::StringValue(s)) if record.attributes.is_empty() => s.clone(),
        _ => serde_json::to_string(record).unwrap_or_default(),
    }
}

fn summary(rejected: &Rejections<'_>, total: usize, what: &str) -> String {
    let mut msg = format!("rejected {} of {} {what}", rejected.total(), total);
    for (i, kept) in rejected.kept().iter().take(MAX_ERRORS_IN_MESSAGE).enumerate() {
        msg.push_str(if i == 0 { ": " } else { "; " });
        msg.push_str(&kept.rejection.to_string());
    }
    if rejected.total() > MAX_ERRORS_IN_MESSAGE as u64 {
        msg.push_str("; …");
    }
    msg
}
