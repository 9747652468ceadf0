//! `envoy.service.auth.v3.Authorization/Check` for Istio's CUSTOM action
//! (`envoyExtAuthzGrpc` provider): a revoked caller gets 403 with the reason and the alert id;
//! everyone else is allowed. A revocation is effective as soon as it is in the [`DenyList`].
//!
//! The caller is the peer's SPIFFE identity (`attributes.source.principal`) and, when the
//! request carried a validated JWT, its end user `iss/sub`, read from the JWT payload that
//! Envoy's `jwt_authn` filter hands on: the dynamic metadata of
//! `envoy.filters.http.jwt_authn` (`payload_in_metadata`) when Envoy sends metadata with the
//! check, else the payload header (`outputPayloadToHeader` in an Istio
//! `RequestAuthentication`, sent with the check through the provider's
//! `includeRequestHeadersInCheck`; see `docs/control.md`). A client cannot use the header to
//! escape a revocation: with a JWT, `jwt_authn` overwrites it with the validated payload.

use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpStatusCode};
use envoy_types::ext_authz::v3::{CheckResponseExt, DeniedHttpResponseBuilder};
use tonic::{Request, Response, Status};

use crate::denylist::DenyList;

/// Header carrying the revocation id on a denial.
pub const REVOCATION_HEADER: &str = "x-verity-revocation";
/// Header carrying the id of the alert that caused it.
pub const ALERT_HEADER: &str = "x-verity-alert";

/// The header Istio's `outputPayloadToHeader` is usually set to.
pub const DEFAULT_JWT_PAYLOAD_HEADER: &str = "x-jwt-payload";

#[derive(Clone)]
pub struct ExtAuthz {
    deny: DenyList,
    jwt_header: String,
}

/// The end user `iss/sub` from a JWT payload (JSON), if it has both.
fn user_from_claims(iss: Option<&str>, sub: Option<&str>) -> Option<String> {
    match (iss, sub) {
        (Some(i), Some(s)) if !i.is_empty() && !s.is_empty() => Some(format!("{i}/{s}")),
        _ => None,
    }
}

/// The `iss/sub` of a base64url (or standard base64) encoded JWT payload.
fn user_from_header(value: &str) -> Option<String> {
    use base64::Engine as _;
    // Bounded: a JWT payload header is a few hundred bytes; refuse to decode megabytes.
    if value.len() > 16 * 1024 {
        return None;
    }
    let trimmed = value.trim().trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    user_from_claims(v.get("iss")?.as_str(), v.get("sub")?.as_str())
}

/// The `iss/sub` in `jwt_authn`'s dynamic metadata: any payload struct with both claims.
fn user_from_metadata(req: &CheckRequest) -> Option<String> {
    let md = req.attributes.as_ref()?.metadata_context.as_ref()?;
    let jwt = md.filter_metadata.get("envoy.filters.http.jwt_authn")?;
    let text = |s: &envoy_types::pb::google::protobuf::Struct, k: &str| -> Option<String> {
        match s.fields.get(k)?.kind.as_ref()? {
            envoy_types::pb::google::protobuf::value::Kind::StringValue(v) => Some(v.clone()),
            _ => None,
        }
    };
    jwt.fields.values().find_map(|v| match v.kind.as_ref()? {
        envoy_types::pb::google::protobuf::value::Kind::StructValue(payload) => {
            user_from_claims(text(payload, "iss").as_deref(), text(payload, "sub").as_deref())
        }
        _ => None,
    })
}

impl ExtAuthz {
    pub fn new(deny: DenyList) -> Self {
        Self {
            deny,
            jwt_header: DEFAULT_JWT_PAYLOAD_HEADER.to_string(),
        }
    }

    /// Reads the JWT payload from this request header instead of the default.
    pub fn with_jwt_header(mut self, header: &str) -> Self {
        self.jwt_header = header.to_ascii_lowercase();
        self
    }

    /// The request's end user (`iss/sub`), from `jwt_authn` metadata or the payload header.
    fn request_principal(&self, req: &CheckRequest) -> Option<String> {
        user_from_metadata(req).or_else(|| {
            let headers = &req.attributes.as_ref()?.request.as_ref()?.http.as_ref()?.headers;
            user_from_header(headers.get(&self.jwt_header)?)
        })
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
        let user = self.request_principal(req);
        let denied = (!principal.is_empty())
            .then(|| self.deny.check(principal, now_ns))
            .flatten()
            .map(|d| (d, principal))
            .or_else(|| {
                let user = user.as_deref()?;
                self.deny.check(user, now_ns).map(|d| (d, user))
            });
        match denied {
            None => CheckResponse::with_status(Status::ok("allowed")),
            Some((d, principal)) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denylist::Denial;
    use base64::Engine as _;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as AttrRequest};

    fn revoked(list: &DenyList, who: &str) {
        list.insert(
            who,
            Denial {
                revocation_id: "rev-1".into(),
                alert_id: None,
                reason: "test".into(),
                expires_ns: i64::MAX,
            },
        );
    }

    fn request(peer: &str, headers: &[(&str, &str)], metadata: Option<Metadata>) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    principal: peer.into(),
                    ..Default::default()
                }),
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                metadata_context: metadata,
                ..Default::default()
            }),
        }
    }

    fn allowed(r: &CheckResponse) -> bool {
        r.status.as_ref().is_some_and(|s| s.code == 0)
    }

    #[test]
    fn a_revoked_end_user_is_denied_through_any_workload() {
        let list = DenyList::default();
        revoked(&list, "https://idp.example.com/user-7");
        let authz = ExtAuthz::new(list);
        let peer = "spiffe://cluster.local/ns/edge/sa/istio-ingressgateway-service-account";
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"iss":"https://idp.example.com","sub":"user-7","aud":"shop"}"#);
        assert!(!allowed(
            &authz.decide(&request(peer, &[("x-jwt-payload", &payload)], None), 0)
        ));
        let other = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"iss":"https://idp.example.com","sub":"user-8"}"#);
        assert!(allowed(
            &authz.decide(&request(peer, &[("x-jwt-payload", &other)], None), 0)
        ));
        assert!(allowed(
            &authz.decide(&request(peer, &[("x-jwt-payload", "%%%")], None), 0)
        ));
        assert!(allowed(&authz.decide(&request(peer, &[], None), 0)));

        let claims = envoy_types::pb::google::protobuf::Struct {
            fields: [("iss", "https://idp.example.com"), ("sub", "user-7")]
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        envoy_types::pb::google::protobuf::Value {
                            kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(v.into())),
                        },
                    )
                })
                .collect(),
        };
        let jwt = envoy_types::pb::google::protobuf::Struct {
            fields: [(
                "jwt_payload".to_string(),
                envoy_types::pb::google::protobuf::Value {
                    kind: Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(claims)),
                },
            )]
            .into_iter()
            .collect(),
        };
        let md = Metadata {
            filter_metadata: [("envoy.filters.http.jwt_authn".to_string(), jwt)]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        assert!(!allowed(&authz.decide(&request(peer, &[], Some(md)), 0)));
    }
}
