//! Health checks of the outputs: each sink's own check with a time limit, for
//! [`SinkSet::check_health`](super::SinkSet::check_health) and `verity validate --check-sinks`.

use std::sync::Arc;
use std::time::Duration;

use crate::config::SinksConfig;
use crate::outputs::{self, BuildError};
use crate::{Sink, SinkError};

/// How long one output's health check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// What one output found when it was checked.
#[derive(Debug, Clone)]
pub struct HealthReport {
    pub sink: String,
    pub kind: &'static str,
    pub result: Result<String, HealthError>,
}

/// Why an output's health check failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HealthError {
    /// The output could not be built (a secret, a CA file, a client, a setting).
    #[error(transparent)]
    Build(Arc<BuildError>),
    /// The destination answered the check with a failure, or could not be reached.
    #[error(transparent)]
    Check(SinkError),
    /// The check got no answer in time.
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// Builds each enabled output (no spool, no task) and runs its health check: for
/// `verity validate --check-sinks`.
pub async fn check_outputs(config: &SinksConfig) -> Vec<HealthReport> {
    let mut reports = Vec::new();
    let mut sinks = Vec::new();
    for (name, cfg) in config.outputs.iter().filter(|(_, c)| c.enabled) {
        match outputs::build(name, cfg) {
            Ok(s) => sinks.push((name.clone(), s)),
            Err(e) => reports.push(HealthReport {
                sink: name.clone(),
                kind: cfg.kind.name(),
                result: Err(HealthError::Build(Arc::new(e))),
            }),
        }
    }
    reports.extend(check_all(&sinks).await);
    reports
}

pub(super) async fn check_all(sinks: &[(String, Arc<dyn Sink>)]) -> Vec<HealthReport> {
    let mut out = Vec::new();
    for (name, sink) in sinks {
        let result = match tokio::time::timeout(CHECK_TIMEOUT, sink.health()).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(HealthError::Check(e)),
            Err(_) => Err(HealthError::Timeout(CHECK_TIMEOUT)),
        };
        out.push(HealthReport {
            sink: name.clone(),
            kind: sink.kind(),
            result,
        });
    }
    out
}
