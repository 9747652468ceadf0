//! Wiring for `verity run`: builds every component from validated settings, binds the
//! listeners, starts every task under one of three drain triggers (intake, control, serving;
//! see `verity_drain`), and owns the one drain sequence. On shutdown readiness goes false,
//! then, in order and all within one deadline: the sources stop accepting and finish in-flight
//! requests, the pipeline flushes its batches and stages, the control tasks apply the last
//! revocations, the outputs deliver what is spooled, and the admin and ext_authz servers stop.
//! What overruns the deadline is forced and named, and `run` returns an error.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::admin::{self, AdminState};
use crate::config::Settings;
use verity_collector::dead_letter::DeadLetter;
use verity_collector::ingest::Ingest;
use verity_collector::listener::{ListenerName, SecureListener, ServerTls};
use verity_collector::metrics::Metrics;
use verity_collector::pipeline::alerts::AlertBus;
use verity_collector::pipeline::archive::ArchiveStage;
use verity_collector::pipeline::rules::{RuleMetrics, RulePart, RuleSetSpec, RulesStage, SharedEngine};
use verity_collector::pipeline::{self, Stage};
use verity_collector::sources::{Source, otlp};
use verity_rules::{EngineSettings, RevocationList};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the dead-letter file {path}: {source}")]
    DeadLetter {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("drain did not finish within {:?} ({}); exiting with work possibly unflushed", .0, .1.join(", "))]
    DrainTimeout(std::time::Duration, Vec<String>),
    #[error("tasks failed while draining (a bug, see the log): {}", .0.join(", "))]
    TaskFailed(Vec<String>),
    #[error("a pipeline task died (a bug, see the log); Verity stopped taking input and drained what it could")]
    PipelineDied,
    #[error("the rule set does not compile:\n  {}", .0.join("\n  "))]
    Rules(Vec<String>),
    #[error("{0}: {1}")]
    Policies(&'static str, String),
    #[error("{0}")]
    Responder(String),
    #[error("admin.token: {0}")]
    AdminToken(String),
    #[error("TLS files do not load:\n  {}", .0.join("\n  "))]
    Tls(Vec<String>),
    #[error("{0}")]
    Tokens(#[from] verity_collector::ingest::sender::TokenError),
    #[error("cannot open the revocation store: {0}")]
    Control(#[from] verity_control::store::StoreError),
    #[error("cannot start the outputs: {0}")]
    Sinks(#[from] verity_sinks::delivery::BuildError),
    #[error("{0}")]
    Kafka(#[from] verity_collector::sources::kafka::KafkaError),
}

/// Addresses actually bound (ports may have been 0 in the config).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

async fn bind(
    what: &'static str,
    name: ListenerName,
    addr: Option<SocketAddr>,
    tls: Option<&Arc<ServerTls>>,
    metrics: &Metrics,
) -> Result<Option<SecureListener>, AppError> {
    match addr {
        None => Ok(None),
        Some(addr) => SecureListener::bind(name, addr, tls.cloned(), metrics.clone())
            .await
            .map(Some)
            .map_err(|source| AppError::Bind { what, addr, source }),
    }
}

/// What a running Verity lets its embedder act on.
#[derive(Clone)]
pub struct Handles {
    pub bound: Bound,
    /// The revocation list rules see through `is_revoked()`; changes take effect at once.
    pub revocations: RevocationList,
}

/// Runs until `shutdown` resolves, then drains. `on_bound` learns the bound addresses.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> Result<(), AppError> {
    run_with(settings, shutdown, |h: Handles| on_bound(h.bound)).await
}

/// Like [`run`], handing the embedder the running instance's [`Handles`].
pub async fn run_with(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(Handles),
) -> Result<(), AppError> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    crate::build_info(&mut registry);
    let tls = crate::config::listener_tls(&settings)
        .map_err(|errors| AppError::Tls(errors.iter().map(ToString::to_string).collect()))?;
    let otlp = &settings.raw.otlp;
    let sender_auth = |name: ListenerName, listener: &crate::config::ListenerConfig| {
        verity_collector::ingest::sender::SenderAuth::new(
            name,
            &verity_collector::ingest::sender::SenderPolicy {
                client_certificates: listener.client_certificates(),
                tokens: &otlp.tokens,
                trusted_proxy: otlp.trusted_proxy.as_ref(),
                allowed_senders: &otlp.allowed_senders,
                accept_unauthenticated: otlp.accept_unauthenticated,
            },
            metrics.clone(),
        )
    };
    let grpc_auth = sender_auth(ListenerName::OtlpGrpc, &otlp.grpc)?;
    let http_auth = sender_auth(ListenerName::OtlpHttp, &otlp.http)?;

    let dead_letter = Arc::new(
        DeadLetter::open(&settings.dead_letter, metrics.clone()).map_err(|source| AppError::DeadLetter {
            path: settings.dead_letter.path.display().to_string(),
            source,
        })?,
    );
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    let rule_metrics = RuleMetrics::new(&mut registry);
    let revocations = RevocationList::new(settings.rules.revoked.iter().cloned());
    let revocation_handle = revocations.clone();
    let kafka = &settings.kafka;
    let repartitioning = kafka.enabled && kafka.repartition.enabled;
    let spec = RuleSetSpec {
        builtin_pack: settings.rules.builtin_pack,
        dirs: settings.rules.dirs.clone(),
        part: if repartitioning {
            RulePart::Stateless
        } else {
            RulePart::All
        },
    };
    let engine_settings = EngineSettings {
        lateness_ns: i64::try_from(settings.rules.lateness_secs)
            .unwrap_or(5)
            .saturating_mul(1_000_000_000),
        state_dir: settings.rules.state_dir.clone(),
        sender_idle_ns: i64::try_from(settings.rules.sender_idle_secs.max(1))
            .unwrap_or(60)
            .saturating_mul(1_000_000_000),
        sender_max_lag_ns: i64::try_from(settings.rules.sender_max_lag_secs.max(1))
            .unwrap_or(300)
            .saturating_mul(1_000_000_000),
        max_keys: settings.rules.max_keys,
        max_evidence_bytes: settings.rules.max_evidence_bytes,
        threads: settings.rules.threads,
        keyed_streams: None,
    };
    // With repartitioning, stateful rules run on the rows the repartition topics bring: one
    // engine for them, fed by its own consumer and pipeline (see `sources::kafka::repartition`).
    let keyed = if repartitioning {
        let key_sets = spec.key_sets().map_err(AppError::Rules)?;
        let routes = verity_collector::sources::kafka::repartition::prepare_routes(kafka, &key_sets).await?;
        tracing::info!(topics = ?routes.iter().map(|r| &r.topic).collect::<Vec<_>>(), "repartitioning through Kafka");
        let stateful = SharedEngine::new(
            RuleSetSpec {
                part: RulePart::Stateful { key_sets },
                ..spec.clone()
            },
            EngineSettings {
                keyed_streams: Some(kafka.application_id().to_string()),
                // With a state topic, partitions' state lives there and moves with them; a
                // local checkpoint would bring back keys of partitions now owned elsewhere.
                state_dir: if kafka.state_topic().is_some() {
                    None
                } else {
                    engine_settings.state_dir.clone()
                },
                ..engine_settings.clone()
            },
            revocations.clone(),
            rule_metrics.clone(),
        )
        .map_err(AppError::Rules)?;
        Some((routes, stateful))
    } else {
        None
    };
    let engine = SharedEngine::new(spec, engine_settings, revocations, rule_metrics).map_err(AppError::Rules)?;
    let sink_metrics = verity_sinks::SinkMetrics::register(&mut registry);
    let sinks = Arc::new(verity_sinks::SinkSet::start(&settings.sinks, sink_metrics)?);
    let alerts = Arc::new(AlertBus::new(sinks.clone(), &mut registry));
    let deny = verity_control::denylist::DenyList::default();
    let verify_list = revocation_handle.clone();
    let verify_engine = engine.clone();
    let control_metrics = verity_control::ControlMetrics::register(&mut registry);
    let mut responders: Vec<Box<dyn verity_control::Responder>> =
        vec![Box::new(verity_control::DenyListResponder(deny.clone()))];
    // Shutdown runs in phases, one drain trigger each; see the end of this function.
    let (mut intake_tasks, intake_drain) = verity_drain::channel();
    let (mut control_tasks, control_drain) = verity_drain::channel();
    let (mut serving_tasks, serving_drain) = verity_drain::channel();
    let mut webhook_slot = None;
    if let Some(w) = &settings.control.webhook {
        let (webhook, delivery) =
            verity_control::webhook::WebhookResponder::open(w, &settings.sinks.spool_dir.join("control-webhook"))
                .map_err(|e| AppError::Responder(e.to_string()))?;
        webhook_slot = Some(webhook.revoker_slot());
        responders.push(Box::new(webhook));
        control_tasks.spawn(
            "control webhook delivery",
            delivery
                .run(control_drain.clone())
                .instrument(tracing::info_span!("control_webhook")),
        );
    }
    // The Istio responder: the manager only wakes it; the controller applies and confirms.
    let istio_wake = Arc::new(tokio::sync::Notify::new());
    let istio = match &settings.control.istio {
        Some(cfg) if settings.control.mode != verity_control::Mode::LogOnly => {
            responders.push(Box::new(verity_control::istio::IstioResponder::new(
                cfg.clone(),
                istio_wake.clone(),
            )));
            let controller = verity_control::istio::IstioController::connect(cfg.clone())
                .await
                .map_err(|e| AppError::Responder(e.to_string()))?
                .with_metrics(verity_control::istio::IstioMetrics::register(&mut registry));
            Some(controller)
        }
        Some(_) => {
            tracing::warn!("control.istio is configured but control.mode is log_only: no policy is applied");
            None
        }
        None => None,
    };
    let shared_revocations = crate::shared_revocations::prepare(&settings.kafka, &mut registry).await?;
    let revoker = verity_control::Revoker::open(
        settings.control.clone(),
        responders,
        // Verification starts in event time: from the watermark when the grace period has
        // passed (or that moment on the wall clock, if event time is ahead of it), so
        // events from before (late or replayed data) never read as not enforced.
        Box::new(move |principal, since| match since {
            Some(since) => {
                let at = verify_engine.watermark().map_or(since, |w| w.min(since));
                verify_list.add_since_if_absent(principal, at);
            }
            None => verify_list.remove(principal),
        }),
    )?
    .with_metrics(control_metrics)
    .with_audit_sink({
        let alerts = alerts.clone();
        Box::new(move |events| {
            if let Err(error) = alerts.publish(&events) {
                tracing::error!(%error, "could not deliver revocation audit events");
            }
        })
    });
    let control = Arc::new(match &shared_revocations {
        Some(topic) => crate::shared_revocations::with_feed(revoker, topic),
        None => revoker,
    });
    if let Some(slot) = webhook_slot {
        let _ = slot.set(Arc::downgrade(&control));
    }
    // Restoring reads and may rewrite the revocation store, and the audit events are spooled
    // (fsync): on the blocking pool, like every other caller of the revoker.
    let _ = tokio::task::spawn_blocking({
        let control = control.clone();
        move || {
            let restored = control.restore(verity_collector::normalize::now_ns());
            control.audit_out(restored);
        }
    })
    .await;
    if let Some(topic) = shared_revocations {
        crate::shared_revocations::start(topic, &settings.kafka, &control, &mut control_tasks, &control_drain);
    }
    let checkpoint_every = std::time::Duration::from_secs(settings.rules.checkpoint_secs.max(1));
    let mut rules_stage = RulesStage::new(engine.clone(), alerts.clone())
        .with_control(control.clone())
        .with_checkpoint_interval(checkpoint_every);
    let held_alerts = rules_stage.held_alerts();
    // The input's rows go to the repartition topics when the input's rules stage evaluates
    // them (see `pipeline::rules::Forward`): sent once per evaluation, never on a refusal.
    let mut keyed_pipeline = None;
    let mut keyed_source = None;
    let mut engines = vec![engine.clone()];
    if let Some((routes, stateful)) = keyed {
        let repartition_metrics =
            verity_collector::sources::kafka::repartition::RepartitionMetrics::register(&mut registry);
        rules_stage = rules_stage.with_forward(Box::new(
            verity_collector::sources::kafka::repartition::Repartitioner::new(
                kafka,
                routes.clone(),
                repartition_metrics,
            )?,
        ));
        let keyed_stage = RulesStage::new(stateful.clone(), alerts.clone())
            .with_control(control.clone())
            .with_checkpoint_interval(checkpoint_every);
        let keyed_held = keyed_stage.held_alerts();
        let (keyed_intake, handle) =
            pipeline::start(settings.pipeline.clone(), vec![Box::new(keyed_stage)], metrics.clone());
        keyed_pipeline = Some(handle);
        let keyed_ingest = Arc::new(
            Ingest::new(
                keyed_intake,
                dead_letter.clone(),
                metrics.clone(),
                settings.raw.intake.clone(),
            )
            .with_held_alerts(keyed_held)
            .with_in_flight_bytes(settings.max_in_flight_bytes),
        );
        let state = match kafka.state_topic() {
            Some(topic) => {
                verity_collector::sources::kafka::shared_topic::create_compacted(kafka, &topic).await?;
                tracing::info!(%topic, "repartition partitions' rule state is kept in Kafka");
                if kafka.repartition.signing_key.is_none() {
                    tracing::warn!(
                        %topic,
                        "rule state is shared without kafka.repartition.signing_key: any client allowed to write \
                         the state topic can give a partition any state; set a signing key or restrict writes with ACLs"
                    );
                }
                Some(verity_collector::sources::kafka::state_topic::StateTopic::new(
                    kafka,
                    topic,
                    stateful.clone(),
                    &routes,
                    verity_collector::sources::kafka::state_topic::StateTopicMetrics::register(&mut registry),
                )?)
            }
            None => None,
        };
        keyed_source = Some((
            verity_collector::sources::kafka::repartition::consumer_config(kafka, &routes),
            keyed_ingest,
            state,
        ));
        engines.push(stateful);
    }
    stages.push(Box::new(rules_stage));
    stages.push(Box::new(verity_collector::pipeline::posture::PostureStage::new(
        verity_collector::pipeline::posture::PostureMetrics::register(&mut registry),
    )));
    let policy =
        crate::policy_stages::build(&settings, &mut registry, &alerts, &mut control_tasks, &control_drain).await?;
    stages.extend(policy.stages);
    if let Some(dir) = &settings.archive_dir {
        stages.push(Box::new(ArchiveStage::new(dir.clone(), metrics.clone())));
    }
    let (intake, pipeline) = pipeline::start(settings.pipeline.clone(), stages, metrics.clone());
    let ingest = Arc::new(
        Ingest::new(
            intake,
            dead_letter.clone(),
            metrics.clone(),
            settings.raw.intake.clone(),
        )
        .with_held_alerts(held_alerts)
        .with_in_flight_bytes(settings.max_in_flight_bytes),
    );

    let grpc_listener = bind(
        "OTLP/gRPC",
        ListenerName::OtlpGrpc,
        settings.grpc_listen,
        tls.otlp_grpc.as_ref(),
        &metrics,
    )
    .await?;
    let http_listener = bind(
        "OTLP/HTTP",
        ListenerName::OtlpHttp,
        settings.http_listen,
        tls.otlp_http.as_ref(),
        &metrics,
    )
    .await?;
    let admin_listener = bind(
        "admin",
        ListenerName::Admin,
        settings.admin_listen,
        tls.admin.as_ref(),
        &metrics,
    )
    .await?;
    let bound = Bound {
        grpc: grpc_listener.as_ref().map(SecureListener::local_addr),
        http: http_listener.as_ref().map(SecureListener::local_addr),
        admin: admin_listener.as_ref().map(SecureListener::local_addr),
    };

    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if let Some(listener) = grpc_listener {
        let (logs, metrics_svc) =
            otlp::grpc::services(ingest.clone(), settings.max_request_bytes, metrics.clone(), grpc_auth);
        sources.push(Box::new(otlp::GrpcSource {
            listener,
            logs,
            metrics: metrics_svc,
        }));
    }
    if let Some(listener) = http_listener {
        let state = Arc::new(otlp::http::HttpState {
            ingest: ingest.clone(),
            max_bytes: settings.max_request_bytes,
            retry_after_secs: settings.retry_after_secs,
            metrics: metrics.clone(),
            auth: http_auth,
        });
        sources.push(Box::new(otlp::HttpSource { listener, state }));
    }
    if settings.kafka.enabled {
        // Repartitioning serves every key set whatever the topics' keying.
        let rules = if repartitioning {
            Vec::new()
        } else {
            engine.rule_files()
        };
        for topic in &settings.kafka.topics {
            for warning in verity_collector::sources::kafka::partitioning_warnings(&rules, topic) {
                tracing::warn!("{warning}");
            }
        }
        let kafka_metrics = verity_collector::sources::kafka::KafkaMetrics::register(&mut registry);
        sources.push(Box::new(verity_collector::sources::kafka::KafkaSource {
            config: settings.kafka.clone(),
            ingest: ingest.clone(),
            metrics: kafka_metrics.clone(),
            state: None,
        }));
        if let Some((config, ingest, state)) = keyed_source.take() {
            sources.push(Box::new(verity_collector::sources::kafka::KafkaSource {
                config,
                ingest,
                metrics: kafka_metrics,
                state,
            }));
        }
    }
    for source in sources {
        let name = source.name();
        let run = source.run(intake_drain.clone());
        intake_tasks.spawn(name, async move {
            if let Err(error) = run.await {
                let error = verity_model::error_chain::one_line(&error);
                tracing::error!(source = name, %error, "source failed");
            }
        });
    }
    intake_tasks.spawn(
        "rules reload",
        watch_rules(engines, settings.rules.reload_poll_secs, intake_drain.signaled())
            .instrument(tracing::info_span!("rules_reload")),
    );
    // The sources hold the only intake handles now: when they stop, the pipeline drains.
    drop(ingest);

    // Expiry, retries and the start of verification, on a timer; audit events go out too.
    control_tasks.spawn("revocation timer", {
        let (control, alerts, mut drain) = (control.clone(), alerts.clone(), control_drain.clone());
        let every = std::time::Duration::from_secs(settings.control.reconcile_interval_secs.max(1));
        async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = drain.wait() => break,
                }
                let (c, a) = (control.clone(), alerts.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    let events = c.reconcile(verity_collector::normalize::now_ns());
                    if let Err(error) = a.publish(&events) {
                        tracing::error!(%error, "could not deliver revocation audit events");
                    }
                })
                .await;
            }
        }
        .instrument(tracing::info_span!("revocations"))
    });
    if let Some(controller) = istio {
        let (control, alerts) = (control.clone(), alerts.clone());
        control_tasks.spawn(
            "istio responder",
            controller
                .run(control, istio_wake.clone(), control_drain.clone(), move |events| {
                    let a = alerts.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(error) = a.publish(&events) {
                            tracing::error!(%error, "could not deliver revocation audit events");
                        }
                    });
                })
                .instrument(tracing::info_span!("istio_responder")),
        );
    }

    // What Envoy asks and operators read stays up until the end: ext_authz keeps enforcing
    // revocations, /readyz says "draining", /metrics shows the drain.
    if let Some(listen) = &settings.control.ext_authz_listen {
        let addr: SocketAddr = listen.parse().map_err(|_| AppError::Bind {
            what: "ext_authz",
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source: std::io::Error::other(format!("{listen:?} is not ip:port")),
        })?;
        let listener = bind(
            "ext_authz",
            ListenerName::ExtAuthz,
            Some(addr),
            tls.ext_authz.as_ref(),
            &metrics,
        )
        .await?;
        if let Some(listener) = listener {
            let svc = verity_control::ext_authz::ExtAuthz::new(deny.clone())
                .with_jwt_header(&settings.control.ext_authz_jwt_header)
                .server();
            let signal = serving_drain.clone().signaled();
            tracing::info!(listen = %addr, "ext_authz deny list serving");
            serving_tasks.spawn(
                "ext_authz",
                async move {
                    let incoming = listener.into_incoming();
                    if let Err(error) = tonic::transport::Server::builder()
                        .add_service(svc)
                        .serve_with_incoming_shutdown(incoming, signal)
                        .await
                    {
                        tracing::error!(%error, "ext_authz server failed");
                    }
                }
                .instrument(tracing::info_span!("ext_authz")),
            );
        }
    }
    let ready = Arc::new(AtomicBool::new(false));
    let admin_token = match &settings.raw.admin.token {
        Some(t) => Some(verity_secret::Secret::resolve(t).map_err(|e| AppError::AdminToken(e.to_string()))?),
        None => None,
    };
    let admin_metrics = admin::AdminMetrics::register(&mut registry);
    let admin_state = Arc::new(AdminState {
        registry,
        ready: ready.clone(),
        metrics: admin_metrics,
        control: Some(admin::ControlApi {
            manager: control.clone(),
            alerts: alerts.clone(),
            token: admin_token,
        }),
        staging: policy.staging,
        learned: policy.learned,
    });
    if settings.telemetry.enabled {
        serving_tasks.spawn(
            "self-telemetry export",
            crate::telemetry::export_metrics(
                settings.telemetry.clone(),
                admin_state.clone(),
                serving_drain.clone().signaled(),
            )
            .instrument(tracing::info_span!("self_telemetry")),
        );
    }
    if let Some(listener) = admin_listener {
        let router = admin::router(admin_state.clone());
        let signal = serving_drain.clone().signaled();
        serving_tasks.spawn(
            "admin",
            async move {
                if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(signal).await {
                    tracing::error!(%error, "admin server failed");
                }
            }
            .instrument(tracing::info_span!("admin")),
        );
    }
    // Certificate rotation: every TLS listener re-reads its files until the end.
    for (name, tls) in [
        (ListenerName::OtlpGrpc, &tls.otlp_grpc),
        (ListenerName::OtlpHttp, &tls.otlp_http),
        (ListenerName::Admin, &tls.admin),
        (ListenerName::ExtAuthz, &tls.ext_authz),
    ] {
        if let Some(tls) = tls.clone() {
            serving_tasks.spawn(
                "certificate reload",
                verity_collector::listener::watch_certificates(
                    name,
                    tls,
                    metrics.clone(),
                    serving_drain.clone().signaled(),
                ),
            );
        }
    }

    tracing::info!(
        otlp_grpc = ?bound.grpc,
        otlp_http = ?bound.http,
        admin = ?bound.admin,
        dead_letter = %dead_letter.path().display(),
        archive = ?settings.archive_dir,
        outputs = ?sinks.names(),
        "verity is running"
    );
    on_ready(Handles {
        bound,
        revocations: revocation_handle,
    });
    ready.store(true, Ordering::Release);
    metrics.ready.set(1);

    let died = pipeline.died();
    let keyed_died = async {
        match &keyed_pipeline {
            Some(p) => p.died().await,
            None => std::future::pending().await,
        }
    };
    let pipeline_died = tokio::select! {
        () = shutdown => false,
        () = died => true,
        () = keyed_died => true,
    };
    tracing::info!(deadline = ?settings.drain_timeout, "draining: intake stopped, flushing");
    ready.store(false, Ordering::Release);
    metrics.ready.set(0);

    // One deadline for every phase; a phase that overruns it is forced and the rest still
    // runs, each collecting what finished and forcing what did not.
    let deadline = tokio::time::Instant::now() + settings.drain_timeout;
    // 1. Intake: sources stop taking work and answer what they accepted once the pipeline
    //    has it; the rules reload stops.
    let mut drained = intake_tasks.drain(deadline).await;
    // 2. The pipeline flushes its batches through every stage (its intake handles are gone).
    if tokio::time::timeout_at(deadline, pipeline.join()).await.is_err() {
        tracing::warn!("pipeline still flushing at the drain deadline");
        drained.forced.push("pipeline".into());
    }
    if let Some(keyed) = keyed_pipeline
        && tokio::time::timeout_at(deadline, keyed.join()).await.is_err()
    {
        tracing::warn!("the repartition topics' pipeline still flushing at the drain deadline");
        drained.forced.push("repartition pipeline".into());
    }
    // 3. Control: the last revocations are applied and their audit events published.
    drained.merge(control_tasks.drain(deadline).await);
    // 4. Outputs: what is spooled is delivered; what is left stays on disk and goes out after
    //    the next start, so it is not lost.
    let left = sinks.drain(deadline).await;
    for (sink, n) in &left {
        tracing::warn!(%sink, alerts = n, "output not drained before the deadline; alerts stay spooled for the next start");
    }
    // 5. What served the outside until now: admin, ext_authz, self-telemetry's last export.
    drained.merge(serving_tasks.drain(deadline).await);
    if pipeline_died {
        Err(AppError::PipelineDied)
    } else if !drained.failed.is_empty() {
        Err(AppError::TaskFailed(drained.failed))
    } else if !drained.forced.is_empty() {
        Err(AppError::DrainTimeout(settings.drain_timeout, drained.forced))
    } else {
        tracing::info!("drained");
        Ok(())
    }
}

/// Reloads the rule sets (one, or the stateless and stateful parts with repartitioning) on
/// SIGHUP and when rule files change (polled), until `stop`.
async fn watch_rules(engines: Vec<SharedEngine>, poll_secs: u64, stop: impl Future<Output = ()>) {
    let Some(engine) = engines.first().cloned() else { return };
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP; rules reload only on file change");
            None
        }
    };
    let poll = std::time::Duration::from_secs(poll_secs.max(1));
    let mut last = engine.spec().fingerprint();
    tokio::pin!(stop);
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let changed = tokio::select! {
            () = &mut stop => break,
            _ = hup_recv => {
                tracing::info!("SIGHUP: reloading rules");
                true
            }
            () = tokio::time::sleep(poll), if poll_secs > 0 => {
                let now = engine.spec().fingerprint();
                let changed = now != last;
                if changed {
                    tracing::info!("rule files changed: reloading rules");
                }
                changed
            }
        };
        if changed {
            last = engine.spec().fingerprint();
            let parts = engines.clone();
            // Compiling DataFusion expressions is CPU work; keep it off the I/O threads.
            let _ = tokio::task::spawn_blocking(move || SharedEngine::reload_together(&parts)).await;
        }
    }
}
