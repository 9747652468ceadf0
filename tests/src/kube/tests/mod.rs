//! Tests of the server through kube-rs, the client Verity uses, and the helpers they share.

mod faults;
mod validation;
mod verbs;
mod writes;

use super::*;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;

use super::state::api_version;

const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/reference/istio/security-crds.yaml"
);
const MANAGED: &str = "app.kubernetes.io/managed-by=verity";

fn ar(version: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: version.into(),
        api_version: api_version(version),
        kind: KIND.into(),
        plural: PLURAL.into(),
    }
}

fn policy(ns: &str, name: &str, action: &str) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": KIND,
        "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "verity"}},
        "spec": {"action": action, "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/cart"]}}]}]}})
}

fn server(with_crd: bool) -> KubeApiServer {
    KubeApiServer::start(KubeSettings {
        crd_path: with_crd.then(|| PathBuf::from(CRD)),
        namespaces: vec!["pay".into(), "shop".into()],
    })
}

async fn config(server: &KubeApiServer) -> kube::Config {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path);
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap()
}

async fn client(server: &KubeApiServer) -> kube::Client {
    kube::Client::try_from(config(server).await).unwrap()
}

/// A client without kube-rs's own retries of 429/503/504.
async fn client_without_retries(server: &KubeApiServer) -> kube::Client {
    let mut cfg = config(server).await;
    cfg.default_retry = false;
    kube::Client::try_from(cfg).unwrap()
}

fn api(c: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(c.clone(), ns, &ar("v1"))
}

fn pp() -> PatchParams {
    PatchParams::apply("verity").force()
}

fn api_status(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("not an API error: {other}"),
    }
}

/// A raw request through the kube client: status, headers, JSON body.
async fn raw(
    c: &kube::Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, hyper::HeaderMap, Value) {
    use http_body_util::BodyExt;
    let mut b = hyper::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let res = c
        .send(b.body(kube::client::Body::from(body.as_bytes().to_vec())).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn has_schema(server: &KubeApiServer) -> bool {
    if !server.schema_loaded() {
        eprintln!("SKIP: {CRD} is absent; schema assertions not run");
    }
    server.schema_loaded()
}

#[test]
fn usable_from_sync_code() {
    let server = server(false);
    let obj = server.apply_as("kubectl", &policy("pay", "p", "DENY"), false).unwrap();
    assert_eq!(obj["metadata"]["generation"], 1);
    assert_eq!(server.objects().len(), 1);
    let text = server.kubeconfig_yaml();
    assert!(text.contains(&format!("server: {}", server.url())) && text.contains(server.token()));
    assert!(server.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(server.wait_for(Duration::from_millis(50), |s| s.get("pay", "p").is_some()));
    assert!(!server.wait_for(Duration::from_millis(50), |s| s.get("pay", "q").is_some()));
}
