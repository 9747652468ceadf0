//! Revocations shared between the instances of one deployment through the compacted topic
//! `<application_id>-revocations` (`kafka.repartition.share_revocations`): each instance
//! writes every change to its own revocations, keyed by revocation id, and reads everyone's,
//! so every instance's ext_authz denies what any of them revoked (see `verity_control::replica`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tracing::Instrument;
use verity_collector::sources::kafka::KafkaConfig;
use verity_collector::sources::kafka::shared_topic::{SharedTopic, SharedTopicMetrics};
use verity_control::{Revocation, Revoker};

use crate::wiring::AppError;

/// The shared topic, created when missing; `None` when revocations are not shared.
pub async fn prepare(kafka: &KafkaConfig, registry: &mut Registry) -> Result<Option<Arc<SharedTopic>>, AppError> {
    let Some(name) = kafka.revocations_topic() else {
        return Ok(None);
    };
    let signing = verity_collector::sources::kafka::signing_key(kafka)?;
    if signing.is_none() {
        tracing::warn!(
            "revocations are shared without kafka.repartition.signing_key: any client allowed to write \
             the revocations topic can make instances deny or lift a principal; set a signing key or restrict writes with ACLs"
        );
    }
    let topic = SharedTopic::new(name, SharedTopicMetrics::register(registry), signing);
    topic.prepare(kafka).await?;
    tracing::info!(topic = topic.topic(), "revocations are shared through Kafka");
    Ok(Some(topic))
}

/// Shares `revoker`'s changes through `topic`.
pub fn with_feed(revoker: Revoker, topic: &Arc<SharedTopic>) -> Revoker {
    let topic = topic.clone();
    revoker.with_feed(Arc::new(move |r: &Revocation| match serde_json::to_vec(r) {
        Ok(value) => topic.publish(&r.id, value),
        Err(error) => tracing::error!(%error, id = %r.id, "could not encode a revocation to share"),
    }))
}

/// Shares everything `control` holds, then writes its changes and reads the other
/// instances' until the control drain.
pub fn start(
    topic: Arc<SharedTopic>,
    kafka: &KafkaConfig,
    control: &Arc<Revoker>,
    tasks: &mut verity_drain::Trigger,
    drain: &verity_drain::Watcher,
) {
    control.publish_all();
    tasks.spawn(
        "revocations topic writer",
        topic
            .clone()
            .run_writer(kafka.clone(), drain.clone(), Duration::from_secs(5))
            .instrument(tracing::info_span!("revocations_writer")),
    );
    let control = control.clone();
    let handler = Arc::new(move |value: &[u8]| match serde_json::from_slice::<Revocation>(value) {
        Ok(r) => {
            let events = control.absorb(r, verity_collector::normalize::now_ns());
            control.audit_out(events);
            true
        }
        Err(error) => {
            tracing::warn!(%error, "a shared revocation that does not parse");
            false
        }
    });
    tasks.spawn(
        "revocations topic reader",
        topic
            .run_reader(kafka.clone(), handler, drain.clone())
            .instrument(tracing::info_span!("revocations_reader")),
    );
}
