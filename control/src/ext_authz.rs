//! `envoy.service.auth.v3.Authorization/Check` for Istio's CUSTOM action
//! (`envoyExtAuthzGrpc` provider): a revoked caller gets 403 with the reason and the alert id;
//! everyone else is allowed. A revocation is effective as soon as it is in the [`DenyList`].

use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpStatusCode};
use envoy_types::ext_authz::v3::{CheckResponseExt, DeniedHttpResponseBuilder};
use tonic::{Request, Response, Status};

use crate::denylist::DenyList;

/// Header carrying the revocation id on a denial.
pub const REVOCATION_HEADER: &str = "x-verity-revocation";
/// Header carrying the id of the alert that caused it.
pub const ALERT_HEADER: &str = "x-verity-alert";

#[derive(Clone)]
pub struct ExtAuthz {
    deny: DenyList,
}

impl ExtAuthz {
    pub fn new(deny: DenyList) -> Self {
        Self { deny }
    }

    pub fn server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }

    /// The decision for one request; separate from the gRPC plumbing so it can be measured.
    pub fn decide(&self, req: &CheckRequest, now_ns: i64) -> CheckResponse {
        let principal = req
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .map(|s| s.principal.as_str())
            .unwrap_or("");
        match (!principal.is_empty())
            .then(|| self.deny.check(principal, now_ns))
            .flatten()
        {
            None => CheckResponse::with_status(Status::ok("allowed")),
            Some(d) => {
                let mut denied = DeniedHttpResponseBuilder::new();
                denied
                    .set_http_status(HttpStatusCode::Forbidden)
                    .add_header(REVOCATION_HEADER, d.revocation_id.clone(), None, false)
                    .set_body(format!(
                        "access revoked by Verity: {}{}\n",
                        d.reason,
                        d.alert_id
                            .as_deref()
                            .map(|a| format!(" (alert {a})"))
                            .unwrap_or_default()
                    ));
                if let Some(a) = &d.alert_id {
                    denied.add_header(ALERT_HEADER, a.clone(), None, false);
                }
                let mut resp = CheckResponse::with_status(Status::permission_denied(format!(
                    "{} is revoked ({})",
                    crate::normalize_principal(principal),
                    d.revocation_id
                )));
                resp.set_http_response(denied.build());
                resp
            }
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.decide(request.get_ref(), now_ns())))
    }
}
