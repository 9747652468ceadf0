//! ext_authz benchmark: `Check` RPCs/s and latency through real gRPC clients against Verity's
//! deny-list server, the time from a revocation decision until the deny list answers 403, and
//! the time from an alert until its `AuthorizationPolicy` exists on a Kubernetes API server
//! (the test server in `verity-e2e`, over TLS) and until Verity has the apply confirmed.
//!
//! ```sh
//! verity-authz-bench --seconds 10 --connections 4 --revoked 1000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use verity_control::denylist::{Denial, DenyList};
use verity_control::ext_authz::ExtAuthz;
use verity_control::{ControlConfig, DenyListResponder, Mode, RevokeRequest, Revoker};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent client connections (each runs requests back to back).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Principals on the deny list; a tenth of the requests come from them.
    #[arg(long, default_value_t = 1000)]
    revoked: usize,
    /// Alerts turned into Istio policies, one after the other.
    #[arg(long, default_value_t = 200)]
    policies: usize,
}

fn principal(i: usize) -> String {
    format!("spiffe://cluster.local/ns/bench/sa/svc-{i}")
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len().saturating_sub(1)) as f64 * q) as usize)
        .copied()
        .unwrap_or_default()
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deny = DenyList::default();
    for i in 0..args.revoked {
        deny.insert(
            &principal(i),
            Denial {
                revocation_id: format!("rev-{i}"),
                alert_id: Some(format!("alert-{i}")),
                reason: "bench".into(),
                expires_ns: i64::MAX,
            },
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let svc = ExtAuthz::new(deny.clone()).server();
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    let universe = args.revoked * 10;
    for c in 0..args.connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        tasks.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::new(channel);
            let mut lat = Vec::new();
            let mut denied = 0usize;
            let mut i = c * 7919;
            while Instant::now() < deadline {
                i = (i * 31 + 17) % universe.max(1);
                let req = CheckRequest {
                    attributes: Some(AttributeContext {
                        source: Some(Peer {
                            principal: principal(i),
                            ..Peer::default()
                        }),
                        ..AttributeContext::default()
                    }),
                };
                let t0 = Instant::now();
                let Ok(resp) = client.check(req).await else { continue };
                lat.push(t0.elapsed());
                if resp.into_inner().status.is_some_and(|s| s.code != 0) {
                    denied += 1;
                }
            }
            (lat, denied)
        }));
    }
    let mut all = Vec::new();
    let mut denied = 0;
    for t in tasks {
        let (lat, d) = t.await?;
        all.extend(lat);
        denied += d;
    }
    all.sort();
    println!(
        "Check: {} RPCs in {} s over {} connections = {:.0}/s; latency p50 {:?}, p99 {:?}, max {:?}; {:.1}% denied",
        all.len(),
        args.seconds,
        args.connections,
        all.len() as f64 / args.seconds as f64,
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0),
        denied as f64 * 100.0 / all.len().max(1) as f64
    );

    // Decision → effective: a revocation through the manager (guardrails, store with fsync,
    // deny list) until the deny list answers for that principal.
    let dir = tempfile::tempdir()?;
    let list = DenyList::default();
    let cfg = ControlConfig {
        mode: Mode::Enforce,
        store_path: dir.path().join("revocations.json"),
        max_per_window: usize::MAX,
        max_operator_per_window: usize::MAX,
        max_per_namespace_per_window: usize::MAX,
        max_operator_per_namespace_per_window: usize::MAX,
        ..ControlConfig::default()
    };
    let manager = Arc::new(Revoker::open(
        cfg,
        vec![Box::new(DenyListResponder(list.clone()))],
        Box::new(|_, _| {}),
    )?);
    let mut effective = Vec::new();
    for i in 0..200 {
        let p = format!("spiffe://cluster.local/ns/victims/sa/svc-{i}");
        let t0 = Instant::now();
        manager.revoke(
            &RevokeRequest {
                principal: &p,
                kind: "principal",
                reason: "bench",
                severity: verity_model::alert::Severity::Critical,
                ttl_ns: 3_600_000_000_000,
                alert: None,
                namespace: None,
                refusal: None,
                reporters: &[],
            },
            now_ns(),
        )?;
        while list.check(&p, now_ns()).is_none() {
            tokio::task::yield_now().await;
        }
        effective.push(t0.elapsed());
    }
    effective.sort();
    println!(
        "revocation decision → deny list effective ({} revocations, store fsync included): p50 {:?}, p99 {:?}",
        effective.len(),
        pct(&effective, 0.5),
        pct(&effective, 0.99)
    );
    istio(args.policies).await
}

/// An alert asking for a revocation of `principal`, as the rules engine emits it.
fn alert(i: usize, principal: &str) -> verity_model::Alert {
    use verity_model::alert::{AlertStatus, Entity, Response, Severity};
    verity_model::Alert {
        id: format!("bench-alert-{i}"),
        rule_id: "zt-rbac-denial-burst".into(),
        title: "RBAC denial burst".into(),
        severity: Severity::High,
        kind: "detection".into(),
        status: AlertStatus::Firing,
        tags: vec![],
        description: String::new(),
        group: [("destination_namespace".to_string(), Some("pay".to_string()))].into(),
        count: 10,
        aggregates: Default::default(),
        window_start: None,
        window_end: None,
        first_seen: String::new(),
        last_seen: String::new(),
        evidence: vec![],
        entity: Some(Entity {
            kind: "source_principal".into(),
            value: principal.into(),
        }),
        respond: Some(Response {
            action: "revoke".into(),
            ttl: "1h".into(),
            backing: None,
        }),
        summary: String::new(),
    }
}

async fn istio(n: usize) -> anyhow::Result<()> {
    use verity_control::config::{IstioConfig, Scope};
    use verity_control::istio::{IstioController, IstioResponder, policy};
    let server = verity_e2e::kube::KubeApiServer::start(verity_e2e::kube::KubeSettings {
        crd_path: Some(verity_e2e::kube::istio_crd_path()),
        namespaces: vec!["pay".into()],
    });
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let cfg = IstioConfig {
        kubeconfig: Some(kubeconfig),
        scope: Scope::Destination,
        ..IstioConfig::default()
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let manager = Arc::new(Revoker::open(
        ControlConfig {
            mode: Mode::Enforce,
            store_path: dir.path().join("revocations.json"),
            max_per_window: usize::MAX,
            max_operator_per_window: usize::MAX,
            max_per_namespace_per_window: usize::MAX,
            max_operator_per_namespace_per_window: usize::MAX,
            istio: Some(cfg.clone()),
            ..ControlConfig::default()
        },
        vec![Box::new(IstioResponder::new(cfg.clone(), wake.clone()))],
        Box::new(|_, _| {}),
    )?);
    let controller = IstioController::connect(cfg.clone()).await?;
    let (mut controller_task, drain) = verity_drain::channel();
    controller_task.spawn("istio controller", controller.run(manager.clone(), wake, drain, |_| {}));
    let (mut on_server, mut confirmed) = (Vec::new(), Vec::new());
    for i in 0..n {
        let p = format!("spiffe://cluster.local/ns/attackers/sa/svc-{i}");
        let t0 = Instant::now();
        manager.on_alerts(&[alert(i, &p)], now_ns());
        let r = manager
            .store()
            .active_for(verity_control::normalize_principal(&p))
            .ok_or_else(|| anyhow::anyhow!("no revocation recorded"))?;
        let want = policy(&r, &cfg);
        let deadline = Instant::now() + Duration::from_secs(30);
        let seen = loop {
            if let Some(at) = server.first_seen(&want.namespace, &want.name) {
                break at;
            }
            anyhow::ensure!(Instant::now() < deadline, "policy {} never appeared", want.name);
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        on_server.push(seen.saturating_duration_since(t0));
        while manager.store().get(&r.id).map(|r| r.state) != Some(verity_control::State::Applied) {
            anyhow::ensure!(Instant::now() < deadline, "revocation {} never confirmed", r.id);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        confirmed.push(t0.elapsed());
    }
    controller_task
        .drain(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    on_server.sort();
    confirmed.sort();
    println!(
        "alert → AuthorizationPolicy stored by the API server ({n} alerts, server-side apply over TLS): p50 {:?}, p99 {:?}",
        pct(&on_server, 0.5),
        pct(&on_server, 0.99)
    );
    println!(
        "alert → revocation confirmed applied (response read, store fsync): p50 {:?}, p99 {:?}",
        pct(&confirmed, 0.5),
        pct(&confirmed, 0.99)
    );
    let rejected = server.rejections().len();
    println!(
        "objects validated against the CRD schema: {} (schema loaded: {}), rejected: {rejected}",
        server.validated(),
        server.schema_loaded()
    );
    Ok(())
}
