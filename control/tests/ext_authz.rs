//! The ext_authz server through a real gRPC client built from `envoy-types`: a revoked caller
//! is denied with 403, its reason and the alert id; others are allowed; expiry restores access.

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use verity_control::denylist::{Denial, DenyList};
use verity_control::ext_authz::{ALERT_HEADER, ExtAuthz, REVOCATION_HEADER};

fn request(principal: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.to_string(),
                ..Peer::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
}

#[tokio::test]
async fn revoked_principals_are_denied_until_expiry() {
    let deny = DenyList::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = ExtAuthz::new(deny.clone()).server();
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    let mut client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";

    let ok = client.check(request(cart)).await.expect("check").into_inner();
    assert_eq!(ok.status.expect("status").code, 0, "not revoked yet: allowed");

    deny.insert(
        cart,
        Denial {
            revocation_id: "rev-0123".into(),
            alert_id: Some("zt-rbac-denial-burst-00ff".into()),
            reason: "RBAC denial burst".into(),
            expires_ns: now_ns() + 700_000_000,
        },
    );
    let denied = client.check(request(cart)).await.expect("check").into_inner();
    assert_eq!(
        denied.status.as_ref().expect("status").code,
        tonic::Code::PermissionDenied as i32
    );
    let Some(HttpResponse::DeniedResponse(d)) = denied.http_response else {
        panic!("a denied HTTP response: {denied:?}")
    };
    assert_eq!(d.status.expect("http status").code, 403);
    assert!(
        d.body.contains("RBAC denial burst") && d.body.contains("zt-rbac-denial-burst-00ff"),
        "{}",
        d.body
    );
    let header = |name: &str| {
        d.headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.clone())
    };
    assert_eq!(header(REVOCATION_HEADER).as_deref(), Some("rev-0123"));
    assert_eq!(header(ALERT_HEADER).as_deref(), Some("zt-rbac-denial-burst-00ff"));

    // Others are unaffected; so is a request with no peer identity.
    let other = client
        .check(request("spiffe://cluster.local/ns/shop/sa/web"))
        .await
        .expect("check");
    assert_eq!(other.into_inner().status.expect("status").code, 0);
    let anonymous = client.check(CheckRequest::default()).await.expect("check");
    assert_eq!(anonymous.into_inner().status.expect("status").code, 0);

    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = client.check(request(cart)).await.expect("check").into_inner();
    assert_eq!(after.status.expect("status").code, 0, "the TTL passed: allowed again");
}
