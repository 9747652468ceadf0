//! The bounded pipeline between sources and stages.
//!
//! Sources reserve a slot in the *intake* queue before doing any work ([`Intake::try_reserve`]);
//! when none is free they answer the client with a retryable error instead of buffering. A
//! batcher task coalesces intake batches by row count or age into the *pipeline* queue, and
//! one worker thread runs every [`Stage`] (the archive, the rules) over each batch in order.
//! When the worker is slow the pipeline queue fills, the batcher waits, the intake fills, and
//! sources push back: memory stays bounded by the two queue capacities.
//!
//! Hand-off: [`IntakePermit::send`] returns a [`Handoff`] that resolves once every stage has
//! processed the batch holding those rows, which for the rules stage means their alerts are in
//! the sinks' durable spools. Sources acknowledge their clients only then (at-least-once). The
//! batcher hands a batch on as soon as the intake has nothing more waiting, so a lone request
//! is not held for the batch delay, while under load batches grow up to their row limit.
//!
//! Draining: when every [`Intake`] handle is dropped, the batcher flushes what it holds, the
//! worker processes what is queued, flushes every stage, and [`PipelineHandle::join`] returns.

pub mod alerts;
pub mod archive;
pub mod policy_drift;
pub mod policy_learn;
pub mod policy_shadow;
pub mod posture;
pub mod rules;

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::Metrics;

/// A batch of normalized rows of one signal, or an idle tick.
#[derive(Debug, Clone)]
pub enum Batch {
    Events(RecordBatch),
    Metrics(RecordBatch),
    /// No data for a while: lets time-driven stages (event-time watermarks) move on.
    Idle,
}

impl Batch {
    pub fn signal(&self) -> &'static str {
        match self {
            Batch::Events(_) => "logs",
            Batch::Metrics(_) => "metrics",
            Batch::Idle => "idle",
        }
    }

    pub fn record_batch(&self) -> Option<&RecordBatch> {
        match self {
            Batch::Events(b) | Batch::Metrics(b) => Some(b),
            Batch::Idle => None,
        }
    }

    pub fn num_rows(&self) -> usize {
        self.record_batch().map_or(0, RecordBatch::num_rows)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{stage}: {source}")]
    Io {
        stage: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{stage}: {message}")]
    Other { stage: &'static str, message: String },
    /// The batch was evaluated (rule state counted it) but what it produced could not be kept
    /// yet; it is held and retried. Sources must not hand the same rows over again.
    #[error("{stage}: evaluated, output held for retry: {message}")]
    Held { stage: &'static str, message: String },
}

/// How many alerts the rules stage holds because a spool could not take them. While any are
/// held no new batch is evaluated (sources are answered "retry later"), so once it is back to
/// 0, the alerts of every batch evaluated before are spooled.
#[derive(Clone, Default)]
pub struct HeldAlerts(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl HeldAlerts {
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set(&self, n: usize) {
        self.0.store(n, std::sync::atomic::Ordering::Release);
    }

    /// Waits (polling; holding is rare) until nothing is held or `stop` says to give up.
    pub async fn cleared(&self) {
        while self.get() > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One step every batch goes through, on the pipeline's worker thread, in order.
pub trait Stage: Send {
    fn name(&self) -> &'static str;
    fn process(&mut self, batch: &Batch) -> Result<(), StageError>;
    /// Whether processing a batch successfully changes rule state (the rules stage): the rows
    /// must then never be handed over again, whatever later stages do.
    fn evaluates(&self) -> bool {
        false
    }
    /// Called once when the pipeline drains.
    fn flush(&mut self) -> Result<(), StageError>;
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub batch_max_rows: usize,
    pub batch_max_delay: Duration,
    pub intake_capacity: usize,
    pub queue_capacity: usize,
}

/// Why a source could not hand over a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Backpressure {
    #[error("the pipeline is full")]
    Full,
    #[error("Verity is shutting down")]
    Closed,
}

/// Why a batch could not be processed: the sources tell their clients to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandoffError {
    pub message: String,
    /// The rules stage evaluated the rows (see [`StageError::Held`]): handing them over again
    /// would count them twice.
    pub evaluated: bool,
}

impl HandoffError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            evaluated: false,
        }
    }
}

type Done = oneshot::Sender<Result<(), HandoffError>>;

/// Resolves when every stage has processed the rows a source sent.
pub struct Handoff(oneshot::Receiver<Result<(), HandoffError>>);

impl Handoff {
    /// A hand-off that is already complete (nothing was sent).
    pub fn done() -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        Handoff(rx)
    }

    /// A hand-off resolved by whoever holds the sender (a source that settles first).
    pub fn from_receiver(rx: oneshot::Receiver<Result<(), HandoffError>>) -> Self {
        Handoff(rx)
    }

    pub async fn wait(self) -> Result<(), HandoffError> {
        match self.0.await {
            Ok(r) => r,
            Err(_) => Err(HandoffError::new("the pipeline stopped before processing the batch")),
        }
    }
}

struct Item {
    batch: Batch,
    done: Option<Done>,
    /// When a source handed the rows over (for a source that waits for room, before the
    /// wait): where the pipeline's latency is measured from.
    entered: Instant,
}

/// The sources' handle on the pipeline. Cloneable; the pipeline drains when all are dropped.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Item>,
    metrics: Metrics,
}

/// A reserved intake slot: the source does its work, then sends without waiting.
pub struct IntakePermit<'a> {
    permit: mpsc::Permit<'a, Item>,
}

impl IntakePermit<'_> {
    pub fn send(self, batch: Batch) -> Handoff {
        let (tx, rx) = oneshot::channel();
        self.permit.send(Item {
            batch,
            done: Some(tx),
            entered: Instant::now(),
        });
        Handoff(rx)
    }
}

impl Intake {
    pub fn try_reserve(&self) -> Result<IntakePermit<'_>, Backpressure> {
        let permit = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => Backpressure::Full,
            mpsc::error::TrySendError::Closed(()) => Backpressure::Closed,
        })?;
        self.metrics
            .queue_depth
            .get_or_create(&[("queue", "intake")])
            .set((self.tx.max_capacity() - self.tx.capacity()) as i64);
        Ok(IntakePermit { permit })
    }

    /// Waits for a slot (for sources that pause instead of answering, such as files).
    pub async fn send(&self, batch: Batch) -> Result<Handoff, Backpressure> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Item {
                batch,
                done: Some(tx),
                entered: Instant::now(),
            })
            .await
            .map_err(|_| Backpressure::Closed)?;
        Ok(Handoff(rx))
    }
}

pub struct PipelineHandle {
    batcher: JoinHandle<()>,
    worker: JoinHandle<()>,
    died: tokio::sync::watch::Receiver<bool>,
}

/// Sets the pipeline's `died` flag if dropped while its task unwinds: a stage that panics
/// (a bug) must not leave Verity serving with nothing behind its intake.
struct DeathWatch(tokio::sync::watch::Sender<bool>, &'static str);

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                task = self.1,
                "a pipeline task panicked; Verity stops taking input and exits non-zero after the drain"
            );
            let _ = self.0.send(true);
        }
    }
}

impl PipelineHandle {
    /// Resolves if a pipeline task dies (a panic); pending forever otherwise.
    pub fn died(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut died = self.died.clone();
        async move {
            if died.wait_for(|d| *d).await.is_err() {
                // The tasks finished without dying: nothing to report, ever.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until the pipeline has drained (all intakes dropped, every stage flushed).
    pub async fn join(self) {
        if let Err(e) = self.batcher.await {
            tracing::error!(error = %e, "pipeline batcher failed");
        }
        if let Err(e) = self.worker.await {
            tracing::error!(error = %e, "pipeline worker failed");
        }
    }
}

/// Starts the batcher task and the worker thread.
pub fn start(settings: PipelineSettings, stages: Vec<Box<dyn Stage>>, metrics: Metrics) -> (Intake, PipelineHandle) {
    let (intake_tx, intake_rx) = mpsc::channel(settings.intake_capacity.max(1));
    let (queue_tx, queue_rx) = mpsc::channel(settings.queue_capacity.max(1));
    let metrics_for_batcher = metrics.clone();
    let (died_tx, died) = tokio::sync::watch::channel(false);
    let batcher_watch = DeathWatch(died_tx.clone(), "batcher");
    let batcher = tokio::spawn(
        async move {
            let _watch = batcher_watch;
            run_batcher(settings, intake_rx, queue_tx, metrics_for_batcher).await;
        }
        .instrument(tracing::info_span!("pipeline_batcher")),
    );
    let worker_metrics = metrics.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let _watch = DeathWatch(died_tx, "worker");
        run_worker(queue_rx, stages, worker_metrics);
    });
    (
        Intake { tx: intake_tx, metrics },
        PipelineHandle { batcher, worker, died },
    )
}

#[derive(Default)]
struct Pending {
    batches: Vec<RecordBatch>,
    rows: usize,
    done: Vec<Done>,
    /// When the oldest of these rows entered the pipeline.
    entered: Option<Instant>,
}

impl Pending {
    fn push(&mut self, batch: RecordBatch, done: Option<Done>, entered: Instant) {
        self.rows += batch.num_rows();
        self.batches.push(batch);
        self.done.extend(done);
        self.entered = Some(self.entered.map_or(entered, |e| e.min(entered)));
    }

    fn take(&mut self) -> Option<(RecordBatch, Vec<Done>, Option<Instant>)> {
        let batches = std::mem::take(&mut self.batches);
        let done = std::mem::take(&mut self.done);
        let entered = self.entered.take();
        self.rows = 0;
        let batch = match batches.len() {
            0 => None,
            1 => batches.into_iter().next(),
            _ => {
                let schema = batches[0].schema();
                match concat_batches(&schema, &batches) {
                    Ok(b) => Some(b),
                    Err(error) => {
                        // Same schema by construction; never expected.
                        tracing::error!(%error, "could not coalesce batches");
                        for d in done {
                            let _ = d.send(Err(HandoffError::new(format!("could not coalesce batches: {error}"))));
                        }
                        return None;
                    }
                }
            }
        };
        batch.map(|b| (b, done, entered))
    }
}

/// A batch on its way to the stages, with the sources waiting for it.
struct Queued {
    batch: Batch,
    done: Vec<Done>,
    /// When its oldest rows entered the pipeline (None for an idle tick).
    entered: Option<Instant>,
}

/// How long without data before the stages get an idle tick.
const IDLE_TICK: Duration = Duration::from_secs(1);

async fn run_batcher(
    settings: PipelineSettings,
    mut rx: mpsc::Receiver<Item>,
    tx: mpsc::Sender<Queued>,
    metrics: Metrics,
) {
    let mut events = Pending::default();
    let mut samples = Pending::default();
    let mut deadline: Option<Instant> = None;
    let mut last_forward = Instant::now();
    let intake_gauge = metrics.queue_depth.get_or_create(&[("queue", "intake")]).clone();
    let queue_gauge = metrics.queue_depth.get_or_create(&[("queue", "pipeline")]).clone();
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let idle = tokio::time::sleep_until(last_forward + IDLE_TICK);
        tokio::select! {
            () = idle, if deadline.is_none() => {
                // Best effort: a full queue means the worker is busy, not idle.
                let _ = tx.try_send(Queued { batch: Batch::Idle, done: Vec::new(), entered: None });
                last_forward = Instant::now();
            }
            item = rx.recv() => {
                intake_gauge.set(rx.len() as i64);
                let Some(item) = item else { break };
                last_forward = Instant::now();
                let (pending, is_events) = match item.batch {
                    Batch::Events(b) => { events.push(b, item.done, item.entered); (&mut events, true) }
                    Batch::Metrics(b) => { samples.push(b, item.done, item.entered); (&mut samples, false) }
                    Batch::Idle => {
                        if let Some(d) = item.done { let _ = d.send(Ok(())); }
                        continue;
                    }
                };
                if pending.rows >= settings.batch_max_rows
                    && let Some((b, done, entered)) = pending.take() {
                        let batch = if is_events { Batch::Events(b) } else { Batch::Metrics(b) };
                        if forward(&tx, Queued { batch, done, entered }, &metrics).await.is_err() { break; }
                    }
                // Sources are waiting for their hand-off: with nothing more queued behind
                // them, waiting for the batch delay would only add latency.
                let waiting = !events.done.is_empty() || !samples.done.is_empty();
                if waiting && rx.is_empty() {
                    deadline = None;
                    if flush_all(&tx, &mut events, &mut samples, &metrics).await.is_err() { break; }
                    queue_gauge.set((tx.max_capacity() - tx.capacity()) as i64);
                    continue;
                }
                if deadline.is_none() && (events.rows > 0 || samples.rows > 0) {
                    deadline = Some(Instant::now() + settings.batch_max_delay);
                }
            }
            () = sleep => {
                deadline = None;
                if flush_all(&tx, &mut events, &mut samples, &metrics).await.is_err() { break; }
            }
        }
        queue_gauge.set((tx.max_capacity() - tx.capacity()) as i64);
    }
    let _ = flush_all(&tx, &mut events, &mut samples, &metrics).await;
    tracing::debug!("pipeline batcher drained");
}

async fn flush_all(
    tx: &mpsc::Sender<Queued>,
    events: &mut Pending,
    samples: &mut Pending,
    metrics: &Metrics,
) -> Result<(), ()> {
    if let Some((b, done, entered)) = events.take() {
        forward(
            tx,
            Queued {
                batch: Batch::Events(b),
                done,
                entered,
            },
            metrics,
        )
        .await?;
    }
    if let Some((b, done, entered)) = samples.take() {
        forward(
            tx,
            Queued {
                batch: Batch::Metrics(b),
                done,
                entered,
            },
            metrics,
        )
        .await?;
    }
    Ok(())
}

async fn forward(tx: &mpsc::Sender<Queued>, queued: Queued, metrics: &Metrics) -> Result<(), ()> {
    metrics.batch_rows.observe(queued.batch.num_rows() as f64);
    tx.send(queued).await.map_err(|_| {
        tracing::error!("pipeline worker is gone; stopping the batcher");
    })
}

fn run_worker(mut rx: mpsc::Receiver<Queued>, mut stages: Vec<Box<dyn Stage>>, metrics: Metrics) {
    let queue_gauge = metrics.queue_depth.get_or_create(&[("queue", "pipeline")]).clone();
    while let Some(Queued { batch, done, entered }) = rx.blocking_recv() {
        queue_gauge.set(rx.len() as i64);
        let mut failure: Option<HandoffError> = None;
        let mut evaluated = false;
        for stage in stages.iter_mut() {
            match stage.process(&batch) {
                Ok(()) => evaluated |= stage.evaluates(),
                Err(error) => {
                    tracing::error!(stage = stage.name(), %error, "pipeline stage failed on a batch");
                    evaluated |= matches!(error, StageError::Held { .. });
                    failure.get_or_insert_with(|| HandoffError::new(error.to_string()));
                }
            }
        }
        if let Some(f) = failure.as_mut() {
            f.evaluated = evaluated;
        }
        // Only a batch every stage processed has its alerts in the spools; a failed one is
        // handed back, and its rows come again.
        if let (Some(entered), None) = (entered, &failure) {
            metrics
                .pipeline_latency
                .get_or_create(&[("signal", batch.signal())])
                .observe(entered.elapsed().as_secs_f64());
        }
        for d in done {
            let _ = d.send(match &failure {
                None => Ok(()),
                Some(e) => Err(e.clone()),
            });
        }
        if !matches!(batch, Batch::Idle) {
            metrics
                .pipeline_rows
                .get_or_create(&[("signal", batch.signal())])
                .inc_by(batch.num_rows() as u64);
        }
    }
    for stage in stages.iter_mut() {
        if let Err(error) = stage.flush() {
            tracing::error!(stage = stage.name(), %error, "pipeline stage failed to flush");
        }
    }
    tracing::debug!("pipeline worker drained");
}

#[cfg(test)]
mod death_tests {
    use super::*;

    /// A stage with a bug that panics on the first batch.
    struct Panicking;

    impl Stage for Panicking {
        fn name(&self) -> &'static str {
            "panicking"
        }
        fn process(&mut self, _batch: &Batch) -> Result<(), StageError> {
            panic!("a bug in a stage");
        }
        fn flush(&mut self) -> Result<(), StageError> {
            Ok(())
        }
    }

    /// A stage that takes 20 ms over every batch.
    struct Slow;

    impl Stage for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn process(&mut self, _batch: &Batch) -> Result<(), StageError> {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        }
        fn flush(&mut self) -> Result<(), StageError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_batch_s_latency_is_measured_from_intake_to_the_last_stage() {
        let settings = PipelineSettings {
            batch_max_rows: 1,
            batch_max_delay: Duration::from_millis(10),
            intake_capacity: 4,
            queue_capacity: 4,
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let (intake, handle) = start(settings, vec![Box::new(Slow)], metrics);
        for _ in 0..3 {
            let mut b = verity_model::EventBatchBuilder::default();
            b.append(&verity_model::AccessEvent::default());
            let handoff = intake
                .send(Batch::Events(b.finish().expect("batch")))
                .await
                .expect("sent");
            handoff.wait().await.expect("processed");
        }
        drop(intake);
        handle.join().await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("verity_pipeline_latency_seconds_count{signal=\"logs\"} 3"),
            "{text}"
        );
        // Each batch spent at least the stage's 20 ms in the pipeline.
        assert!(
            text.contains("verity_pipeline_latency_seconds_bucket{le=\"0.016\",signal=\"logs\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_stage_that_panics_is_noticed() {
        let settings = PipelineSettings {
            batch_max_rows: 1,
            batch_max_delay: Duration::from_millis(10),
            intake_capacity: 4,
            queue_capacity: 4,
        };
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let (intake, handle) = start(settings, vec![Box::new(Panicking)], metrics);
        let mut b = verity_model::EventBatchBuilder::default();
        b.append(&verity_model::AccessEvent::default());
        let batch = Batch::Events(b.finish().expect("batch"));
        let handoff = intake.send(batch).await.expect("sent");
        assert!(handoff.wait().await.is_err(), "the batch is not reported as processed");
        tokio::time::timeout(Duration::from_secs(5), handle.died())
            .await
            .expect("the death is noticed");
        drop(intake);
        handle.join().await;
    }
}
