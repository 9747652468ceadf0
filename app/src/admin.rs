//! The admin endpoint: `/healthz` (the process is alive), `/readyz` (it accepts input; 503
//! while starting and draining), `/metrics` (Prometheus/OpenMetrics text) and the
//! authenticated revocation API (`/revocations`), whose answers are counted by outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub struct AdminState {
    pub registry: Registry,
    pub ready: Arc<AtomicBool>,
    pub metrics: AdminMetrics,
    /// The revocation API: the manager, where its audit events go, and the token it needs.
    pub control: Option<ControlApi>,
    /// Promotion of staged candidate policies (same token).
    pub staging: Option<crate::policy_stages::StagingApi>,
    /// Live learning's edges, proposed as policies on request (same token).
    pub learned: Option<Arc<verity_collector::pipeline::policy_learn::LearnedEdges>>,
}

pub struct ControlApi {
    pub manager: Arc<verity_control::Revoker>,
    pub alerts: Arc<verity_collector::pipeline::alerts::AlertBus>,
    pub token: Option<verity_secret::Secret>,
}

/// A revocation API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    List,
    Add,
    Lift,
}

impl Action {
    const ALL: [Action; 3] = [Action::List, Action::Add, Action::Lift];
    fn as_str(self) -> &'static str {
        match self {
            Action::List => "list",
            Action::Add => "add",
            Action::Lift => "lift",
        }
    }
}

/// How a revocation API call was answered, from its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Refused,
    Error,
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::BadRequest,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::NotFound,
        Outcome::Refused,
        Outcome::Error,
    ];
    fn of(status: StatusCode) -> Self {
        match status {
            s if s.is_success() => Outcome::Ok,
            StatusCode::BAD_REQUEST => Outcome::BadRequest,
            StatusCode::UNAUTHORIZED => Outcome::Unauthorized,
            StatusCode::FORBIDDEN => Outcome::Forbidden,
            StatusCode::NOT_FOUND => Outcome::NotFound,
            // The guardrails refused the revocation.
            StatusCode::CONFLICT => Outcome::Refused,
            _ => Outcome::Error,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::NotFound => "not_found",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// The revocation API's metrics, registered into the registry the binary passes in.
#[derive(Clone)]
pub struct AdminMetrics {
    requests: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl AdminMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
        };
        for a in Action::ALL {
            for o in Outcome::ALL {
                let _ = m
                    .requests
                    .get_or_create(&vec![("action", a.as_str()), ("outcome", o.as_str())]);
            }
        }
        registry.register(
            "verity_revocation_api_requests",
            "Requests to the revocation API, by action and how they were answered",
            m.requests.clone(),
        );
        m
    }

    /// Counts the answer and passes it on; a rejected request is logged with its reason code.
    fn answered(&self, action: Action, res: Response) -> Response {
        let outcome = Outcome::of(res.status());
        self.requests
            .get_or_create(&vec![("action", action.as_str()), ("outcome", outcome.as_str())])
            .inc();
        if outcome != Outcome::Ok {
            tracing::warn!(action = action.as_str(), outcome = outcome.as_str(), status = %res.status(), "revocation API request not carried out");
        }
        res
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/revocations", get(list_revocations).post(add_revocation))
        .route("/revocations/{id}/lift", post(lift_revocation))
        .route("/policies/promote", post(promote_policy))
        .route("/policies/learned", get(learned_policies))
        .with_state(state)
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// The revocation API requires `Authorization: Bearer <admin.token>`; compared in constant time
/// (`Secret::matches`).
fn authorize<'a>(st: &'a AdminState, headers: &HeaderMap) -> Result<&'a ControlApi, Box<Response>> {
    let Some(api) = &st.control else {
        return Err(Box::new(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "revocations are not available"}),
        )));
    };
    let Some(token) = &api.token else {
        return Err(Box::new(json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "set admin.token to enable the revocation API"}),
        )));
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = token.matches(got.as_bytes()).map_err(|e| {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": format!("admin token: {e}")}),
        )
    })?;
    if same {
        Ok(api)
    } else {
        Err(Box::new(json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": "missing or wrong bearer token"}),
        )))
    }
}

async fn list_revocations(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let res = match authorize(&st, &headers) {
        Ok(api) => json(StatusCode::OK, &serde_json::json!(api.manager.list())),
        Err(r) => *r,
    };
    st.metrics.answered(Action::List, res)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRevocation {
    principal: String,
    ttl: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

async fn deliver(api: &ControlApi, events: Vec<verity_model::Alert>) {
    let alerts = api.alerts.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(error) = alerts.publish(&events) {
            tracing::error!(%error, "could not deliver revocation audit events");
        }
    })
    .await;
}

async fn add_revocation(State(st): State<Arc<AdminState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let res = add(&st, &headers, &body).await;
    st.metrics.answered(Action::Add, res)
}

async fn add(st: &AdminState, headers: &HeaderMap, body: &[u8]) -> Response {
    let api = match authorize(st, headers) {
        Ok(api) => api,
        Err(r) => return *r,
    };
    let req: AddRevocation = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e.to_string()})),
    };
    let Some(ttl_ns) = verity_control::parse_ttl_ns(&req.ttl) else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "ttl must look like 30s, 15m, 1h or 1d"}),
        );
    };
    let kind = req.kind.as_deref().unwrap_or("principal");
    if !matches!(kind, "principal" | "request_principal") {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "kind must be principal or request_principal"}),
        );
    }
    if req.principal.trim().is_empty() {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "principal is empty"}),
        );
    }
    let now = verity_collector::normalize::now_ns();
    let reason = req.reason.unwrap_or_else(|| "revoked by an operator".into());
    let revoke = verity_control::RevokeRequest {
        principal: &req.principal,
        kind,
        reason: &reason,
        severity: verity_model::alert::Severity::Critical,
        ttl_ns,
        alert: None,
        namespace: req.namespace.as_deref(),
        refusal: None,
        reporters: &[],
    };
    match api.manager.revoke(&revoke, now) {
        Ok(verity_control::Outcome { events, refusal }) => {
            let refused = refusal.is_some();
            let summary: Vec<String> = events.iter().map(|e| e.summary.clone()).collect();
            deliver(api, events).await;
            let current = api
                .manager
                .active_for(verity_control::normalize_principal(&req.principal));
            let status = if refused { StatusCode::CONFLICT } else { StatusCode::OK };
            json(status, &serde_json::json!({"events": summary, "revocation": current}))
        }
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": e.to_string()}),
        ),
    }
}

async fn lift_revocation(State(st): State<Arc<AdminState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let res = lift(&st, &headers, &id).await;
    st.metrics.answered(Action::Lift, res)
}

async fn lift(st: &AdminState, headers: &HeaderMap, id: &str) -> Response {
    let api = match authorize(st, headers) {
        Ok(api) => api,
        Err(r) => return *r,
    };
    match api.manager.lift(id, verity_collector::normalize::now_ns()) {
        Ok(events) => {
            deliver(api, events).await;
            json(StatusCode::OK, &serde_json::json!(api.manager.get(id)))
        }
        Err(verity_control::store::StoreError::NotFound(_)) => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": format!("no revocation {id}")}),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": e.to_string()}),
        ),
    }
}

async fn readyz(State(st): State<Arc<AdminState>>) -> Response {
    if st.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(st): State<Arc<AdminState>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &st.registry) {
        Ok(()) => {
            let mut res = (StatusCode::OK, body).into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            res
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Promote {
    /// `namespace/name` of a staged candidate.
    policy: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Promotes a staged candidate: 202 once the command is queued (the audit event says when it
/// is applied), 409 while the candidate is violated or a command for it is under way.
async fn promote_policy(State(st): State<Arc<AdminState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorize(&st, &headers) {
        return *r;
    }
    let Some(staging) = &st.staging else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "staging is off (policy.shadow.stage)"}),
        );
    };
    let req: Promote = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e.to_string()})),
    };
    use verity_policy::shadow::ShadowState;
    match staging.board.state(&req.policy) {
        None => {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": format!("{} is not a candidate policy", req.policy)}),
            );
        }
        Some(ShadowState::Violated) => {
            return json(
                StatusCode::CONFLICT,
                &serde_json::json!({"error": format!("{} is violated: it would deny legitimate traffic", req.policy)}),
            );
        }
        Some(_) => {}
    }
    if staging.board.is_promoted(&req.policy) {
        return json(
            StatusCode::OK,
            &serde_json::json!({"policy": req.policy, "promoted": true}),
        );
    }
    if !staging.board.begin(&req.policy) {
        return json(
            StatusCode::CONFLICT,
            &serde_json::json!({"error": format!("a command for {} is under way", req.policy)}),
        );
    }
    let command = verity_collector::pipeline::policy_shadow::StagingCommand::Promote {
        policy: req.policy.clone(),
        reason: req.reason.unwrap_or_else(|| "promoted by an operator".into()),
    };
    if staging.commands.try_send(command).is_err() {
        staging.board.abandon(&req.policy);
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "staging is busy; try again"}),
        );
    }
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"policy": req.policy, "promoting": true}),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnedQuery {
    #[serde(default)]
    min_requests: Option<u64>,
    #[serde(default)]
    max_paths: Option<usize>,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// The policies live learning proposes from the traffic seen so far, with what it left out.
async fn learned_policies(
    State(st): State<Arc<AdminState>>,
    headers: HeaderMap,
    query: axum::extract::Query<LearnedQuery>,
) -> Response {
    if let Err(r) = authorize(&st, &headers) {
        return *r;
    }
    let Some(learned) = st.learned.clone() else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "live learning is off (policy.learn.enabled)"}),
        );
    };
    let settings = verity_policy::learn::LearnSettings {
        min_requests: query.min_requests.unwrap_or(1).max(1),
        max_paths: query.max_paths.unwrap_or(8).max(1),
        dry_run: query.dry_run.unwrap_or(false),
    };
    // Proposing walks everything learned: off the async workers.
    let proposed = tokio::task::spawn_blocking(move || learned.propose(&settings)).await;
    match proposed {
        Ok((policies, report)) => json(
            StatusCode::OK,
            &serde_json::json!({"policies": policies, "report": report}),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": e.to_string()}),
        ),
    }
}
