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
mod records;
pub mod sender;

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use verity_model::InputFormat;
use verity_model::event::{AccessEvent, IngestSource, SenderBinding};

use crate::dead_letter::DeadLetter;
use crate::metrics::Metrics;
use crate::normalize::limits::RecordLimits;
pub use crate::normalize::rejections::Origin;
use crate::normalize::rejections::Rejections;
use crate::normalize::{RejectReason, Rejection};
use crate::pipeline::{Backpressure, Handoff, HeldAlerts, Intake};
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

    /// Looks a request up among those already evaluated, by its bytes as received.
    /// `Ok(Some(digest))`: new, evaluate it (the digest settles it); `Ok(None)`: a resend to
    /// acknowledge as it is.
    fn recall(&self, sender: &Sender, received: &[u8]) -> Result<Option<deliveries::Digest>, Backpressure> {
        let d = self.deliveries.digest(sender.id.as_deref().unwrap_or(""), received);
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

    /// Evaluates a logs request: `req`, decoded from `received` (the request's bytes as they
    /// arrived, decompressed), which identify it when it is sent again.
    pub fn export_logs(
        &self,
        req: &ExportLogsServiceRequest,
        received: &[u8],
        source: IngestSource,
        sender: &Sender,
    ) -> Result<(ExportLogsServiceResponse, Option<Handoff>), Backpressure> {
        let permit = self.intake.try_reserve()?;
        let Some(digest) = self.recall(sender, received)? else {
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
