//! The Istio responder against the Kubernetes API test server: policies applied by
//! server-side apply and checked against the `AuthorizationPolicy` schema, retries after API
//! failures, repair of out-of-band changes, deletion at expiry, dry-run, and the real binary
//! carrying a revocation from a replayed attack to a policy across a SIGKILL.

use std::sync::Arc;
use std::time::Duration;

use super::control::{CART, alerts, check, denials, has, line};
use serde_json::Value;
use verity_control::config::{IstioConfig, Scope};
use verity_control::istio::{IstioController, IstioResponder};
use verity_control::{ControlConfig, DenyListResponder, Mode, RevokeRequest, Revoker};
use verity_e2e::kube::{KubeApiServer, KubeSettings, istio_crd_path};
use verity_e2e::{Verity, eventually};

const S: i64 = 1_000_000_000;

fn server() -> KubeApiServer {
    KubeApiServer::start(KubeSettings {
        crd_path: Some(istio_crd_path()),
        namespaces: vec!["pay".into(), "shop".into()],
    })
}

/// Every object Verity sent passed validation: the only 4xx are the injected ones.
fn assert_schema_clean(server: &KubeApiServer, injected: &[u16]) {
    for r in server.rejections() {
        let code = r.status["code"].as_u64().unwrap_or(0) as u16;
        assert!(injected.contains(&code), "rejected: {} for {}", r.status, r.body);
    }
    if server.schema_loaded() {
        assert!(server.validated() > 0);
    } else {
        eprintln!(
            "SKIP: {} is absent; objects were checked for metadata only",
            istio_crd_path().display()
        );
    }
}

fn by_principal(server: &KubeApiServer, principal: &str) -> Option<Value> {
    server
        .objects()
        .into_iter()
        .find(|o| o["metadata"]["annotations"]["verity.dev/principal"] == principal)
}

fn revoke(m: &Revoker, principal: &str, kind: &str, ns: Option<&str>, now: i64) -> Vec<verity_model::Alert> {
    m.revoke(
        &RevokeRequest {
            principal,
            kind,
            reason: "RBAC denial burst",
            severity: verity_model::alert::Severity::High,
            ttl_ns: 60 * S,
            alert: Some(("zt-rbac-denial-burst-01", "zt-rbac-denial-burst")),
            namespace: ns,
            refusal: None,
            reporters: &[],
        },
        now,
    )
    .expect("revoke")
    .events
}

fn rules(events: &[verity_model::Alert]) -> Vec<String> {
    events.iter().map(|e| e.rule_id.clone()).collect()
}

#[test]
fn controller_applies_retries_repairs_and_deletes() {
    let server = server();
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let istio = IstioConfig {
        kubeconfig: Some(kubeconfig),
        scope: Scope::Destination,
        resync_secs: 3,
        max_backoff_secs: 1,
        ..IstioConfig::default()
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let deny = verity_control::denylist::DenyList::default();
    let manager = Arc::new(
        Revoker::open(
            ControlConfig {
                mode: Mode::Enforce,
                store_path: dir.path().join("revocations.json"),
                istio: Some(istio.clone()),
                ..ControlConfig::default()
            },
            vec![
                Box::new(DenyListResponder(deny.clone())),
                Box::new(IstioResponder::new(istio.clone(), wake)),
            ],
            Box::new(|_, _| {}),
        )
        .expect("manager"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut c = IstioController::connect(istio).await.expect("connect");
        let t0 = verity_model::time::now_ns();

        // Recorded: effective on the deny list at once, pending until the API server has it.
        let ev = revoke(
            &manager,
            "spiffe://cluster.local/ns/shop/sa/cart",
            "principal",
            Some("pay"),
            t0,
        );
        assert_eq!(rules(&ev), vec!["verity-revocation-recorded"]);
        assert!(ev[0].summary.contains("waiting for istio"), "{}", ev[0].summary);
        assert!(deny.check("cluster.local/ns/shop/sa/cart", t0).is_some());
        let ev = c.pass(&manager, t0).await;
        assert_eq!(rules(&ev), vec!["verity-revocation-applied"]);
        let p = by_principal(&server, "cluster.local/ns/shop/sa/cart").expect("policy");
        assert_eq!(p["metadata"]["namespace"], "pay", "scope destination");
        assert_eq!(p["spec"]["action"], "DENY");
        assert_eq!(
            p["spec"]["rules"][0]["from"][0]["source"]["principals"][0],
            "cluster.local/ns/shop/sa/cart"
        );
        assert_eq!(p["metadata"]["labels"]["app.kubernetes.io/managed-by"], "verity");
        assert_eq!(
            p["metadata"]["annotations"]["verity.dev/alert-id"],
            "zt-rbac-denial-burst-01"
        );
        assert!(p["metadata"]["annotations"].get("istio.io/dry-run").is_none());
        let fm = &p["metadata"]["managedFields"][0];
        assert_eq!(fm["manager"], "verity");
        let stored = &manager.store().list()[0];
        assert_eq!(stored.state, verity_control::State::Applied);
        assert!(stored.results["istio"].ok, "{:?}", stored.results);

        // A JWT principal, mesh-wide since the alert names no namespace; the API server is
        // failing: the revocation is failed (audited once) and retried with backoff.
        server.fail_next(&[500]);
        revoke(&manager, "https://idp.example/alice", "request_principal", None, t0);
        let ev = c.pass(&manager, t0).await;
        assert_eq!(rules(&ev), vec!["verity-revocation-failed"]);
        assert!(ev[0].summary.contains("HTTP 500"), "{}", ev[0].summary);
        assert!(
            c.pass(&manager, t0).await.is_empty(),
            "backing off, no second failure event"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let ev = c.pass(&manager, t0).await;
        assert_eq!(rules(&ev), vec!["verity-revocation-applied"]);
        let p = by_principal(&server, "https://idp.example/alice").expect("policy");
        assert_eq!(p["metadata"]["namespace"], "istio-system");
        assert_eq!(
            p["spec"]["rules"][0]["from"][0]["source"]["requestPrincipals"][0],
            "https://idp.example/alice"
        );

        // Out of band: one policy deleted by an operator, the other's action changed by
        // another field manager. The resync repairs both.
        let cart = by_principal(&server, "cluster.local/ns/shop/sa/cart").expect("policy");
        let cart_name = cart["metadata"]["name"].as_str().expect("name").to_string();
        assert!(server.delete_as_admin("pay", &cart_name));
        let mut edited = p.clone();
        edited["spec"]["action"] = "ALLOW".into();
        for k in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
        ] {
            edited["metadata"].as_object_mut().expect("meta").remove(k);
        }
        server.apply_as("kubectl", &edited, true).expect("kubectl apply");
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(c.pass(&manager, t0).await.is_empty(), "no state change");
        assert!(server.get("pay", &cart_name).is_some(), "re-created");
        assert_eq!(
            by_principal(&server, "https://idp.example/alice").expect("policy")["spec"]["action"],
            "DENY",
            "taken back with force"
        );

        // Lifted: deleted.
        let alice = manager.store().active_for("https://idp.example/alice").expect("active");
        manager.lift(&alice.id, t0).expect("lift");
        c.pass(&manager, t0).await;
        assert!(by_principal(&server, "https://idp.example/alice").is_none());
        // Expired: deleted, with the removal recorded.
        let ev = manager.reconcile(t0 + 61 * S);
        assert_eq!(rules(&ev), vec!["verity-revocation-expired"]);
        c.pass(&manager, t0 + 61 * S).await;
        assert!(server.objects().is_empty(), "{:?}", server.objects());
        let r = manager
            .store()
            .list()
            .into_iter()
            .find(|r| r.principal.contains("cart"))
            .expect("cart");
        assert!(r.results["istio"].detail.contains("deleted"), "{:?}", r.results);

        // RBAC missing: failed, with the API server's reason, until it is granted.
        server.set_forbidden(true);
        revoke(
            &manager,
            "spiffe://cluster.local/ns/shop/sa/web",
            "principal",
            Some("shop"),
            t0 + 62 * S,
        );
        let ev = c.pass(&manager, t0 + 62 * S).await;
        assert_eq!(rules(&ev), vec!["verity-revocation-failed"]);
        assert!(ev[0].summary.contains("forbidden"), "{}", ev[0].summary);
        server.set_forbidden(false);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let ev = c.pass(&manager, t0 + 62 * S).await;
        assert_eq!(rules(&ev), vec!["verity-revocation-applied"]);
        assert_eq!(
            by_principal(&server, "cluster.local/ns/shop/sa/web").expect("policy")["metadata"]["namespace"],
            "shop"
        );
    });
    assert_schema_clean(&server, &[403, 500]);
}

#[test]
fn binary_revokes_through_istio_and_reconciles_across_a_sigkill() {
    let server = server();
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).expect("mkdir");
    std::fs::write(
        rules_dir.join("probe.yaml"),
        "id: e2e-probe\ntitle: Probing\nseverity: high\nkind: detection\ndetection:\n  where: decision = 'deny_rbac'\n  group_by: [source_principal]\n  window: {type: tumbling, size: 1s}\n  having: count(*) >= 3\nrespond:\n  entity: source_principal\n  action: revoke\n  ttl: 20s\n",
    )
    .expect("rule");
    std::fs::copy(
        verity_e2e::repo_root().join("rules/pack/zt-revoked-identity-succeeds.yaml"),
        rules_dir.join("zt-revoked-identity-succeeds.yaml"),
    )
    .expect("copy rule");
    let istio = format!(
        "{{kubeconfig: '{}', scope: destination, resync_secs: 1, max_backoff_secs: 1}}",
        kubeconfig.display()
    );
    let (rules, file, tokens) = (
        format!("[{}]", rules_dir.display()),
        dir.path().join("alerts.jsonl").display().to_string(),
        verity_e2e::sender_tokens_env(dir.path(), 1),
    );
    let mut v = Verity::start_in(
        dir,
        &[
            ("VERITY__OTLP__TOKENS", &tokens),
            ("VERITY__RULES__BUILTIN_PACK", "false"),
            ("VERITY__RULES__DIRS", &rules),
            ("VERITY__RULES__LATENESS_SECS", "0"),
            ("VERITY__CONTROL__MODE", "enforce"),
            ("VERITY__CONTROL__ISTIO", &istio),
            ("VERITY__CONTROL__GRACE_SECS", "1"),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__SINKS__OUTPUTS__FILE__PATH", &file),
        ],
    );
    // The attack: probing, denied by the mesh.
    // Six within 50 ms: if a one-second window boundary splits them, one side still has 3.
    let mut lines: Vec<String> = denials(CART);
    lines.push(line(-500, "spiffe://cluster.local/ns/shop/sa/web", 200, "via_upstream"));
    assert_eq!(verity_e2e::post_log_lines_as(v.http, 0, &lines), 200);
    assert!(
        server.wait_for(Duration::from_secs(20), |s| by_principal(
            s,
            "cluster.local/ns/shop/sa/cart"
        )
        .is_some()),
        "{}",
        v.stderr()
    );
    let p = by_principal(&server, "cluster.local/ns/shop/sa/cart").expect("policy");
    let (ns, name) = (
        p["metadata"]["namespace"].as_str().expect("ns").to_string(),
        p["metadata"]["name"].as_str().expect("name").to_string(),
    );
    assert_eq!(ns, "pay", "the destination namespace of the evidence");
    assert_eq!(p["metadata"]["annotations"]["verity.dev/rule-id"], "e2e-probe");
    assert!(
        eventually(Duration::from_secs(10), || has(&v, "verity-revocation-applied")),
        "{}",
        v.stderr()
    );
    // The test API server does not enforce anything: traffic from cart that still succeeds
    // after the grace period is caught.
    assert!(
        eventually(Duration::from_secs(15), || {
            assert_eq!(
                verity_e2e::post_log_lines_as(v.http, 0, &[line(0, CART, 200, "via_upstream")]),
                200
            );
            std::thread::sleep(Duration::from_millis(200));
            has(&v, "zt-revoked-identity-succeeds")
        }),
        "{}",
        v.stderr()
    );
    assert_eq!(
        v.metric_value("verity_istio_api_requests_total{op=\"apply\",outcome=\"ok\"}")
            .map(|x| x >= 1.0),
        Some(true)
    );

    // SIGKILL; meanwhile an operator deletes the policy. The restart puts it back.
    v.kill9();
    assert!(server.delete_as_admin(&ns, &name));
    v.restart();
    assert!(
        server.wait_for(Duration::from_secs(20), |s| s.get(&ns, &name).is_some()),
        "re-applied after the restart\n{}",
        v.stderr()
    );
    // The TTL removes it.
    assert!(
        server.wait_for(Duration::from_secs(40), |s| s.get(&ns, &name).is_none()),
        "deleted at expiry\n{}",
        v.stderr()
    );
    assert!(eventually(Duration::from_secs(10), || has(
        &v,
        "verity-revocation-expired"
    )));
    assert_eq!(v.metric_value("verity_alerts_dropped_total"), Some(0.0));
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", v.stderr());
    assert_schema_clean(&server, &[]);
}

#[test]
fn dry_run_annotates_and_leaves_the_deny_list_alone() {
    let server = server();
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin\n").expect("token");
    let ext_authz = std::net::SocketAddr::from(([127, 0, 0, 1], verity_e2e::free_port()));
    let istio = format!("{{kubeconfig: '{}'}}", kubeconfig.display());
    let (listen, file, token_ref) = (
        ext_authz.to_string(),
        dir.path().join("alerts.jsonl").display().to_string(),
        format!("{{file: '{}'}}", token.display()),
    );
    let v = Verity::start_in(
        dir,
        &[
            ("VERITY__CONTROL__MODE", "dry_run"),
            ("VERITY__CONTROL__ISTIO", &istio),
            ("VERITY__CONTROL__EXT_AUTHZ_LISTEN", &listen),
            ("VERITY__ADMIN__TOKEN", &token_ref),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__SINKS__OUTPUTS__FILE__PATH", &file),
        ],
    );
    let (ok, out) = verity_e2e::revocations_cli(
        v.admin,
        &token,
        &[
            "add",
            "https://idp.example/alice",
            "--kind",
            "request_principal",
            "--ttl",
            "1h",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        server.wait_for(Duration::from_secs(15), |s| by_principal(
            s,
            "https://idp.example/alice"
        )
        .is_some()),
        "{}",
        v.stderr()
    );
    let p = by_principal(&server, "https://idp.example/alice").expect("policy");
    assert_eq!(p["metadata"]["annotations"]["istio.io/dry-run"], "true");
    assert_eq!(
        p["spec"]["rules"][0]["from"][0]["source"]["requestPrincipals"][0],
        "https://idp.example/alice"
    );
    assert!(
        eventually(Duration::from_secs(10), || alerts(&v)
            .iter()
            .any(|a| a["rule_id"] == "verity-revocation-applied"
                && a["summary"].as_str().unwrap_or("").contains("dry run"))),
        "{:?}",
        alerts(&v)
    );
    // Not on the deny list: a dry run enforces nothing.
    let code = check(ext_authz, "https://idp.example/alice");
    assert_eq!(code, 0);

    // `verity validate --check-sinks` reaches the API: a list and a dry-run apply.
    let validate = || {
        let cwd = tempfile::tempdir().expect("tmp");
        let out = verity_e2e::verity_command(cwd.path())
            .args(["validate", "--check-sinks"])
            .env("VERITY__CONTROL__ISTIO", &istio)
            .env("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false")
            .output()
            .expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let objects = server.objects().len();
    let (code, stdout) = validate();
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "control.istio: ok: 1 AuthorizationPolicies managed; server-side apply (dry run) accepted in istio-system"
        ),
        "{stdout}"
    );
    assert_eq!(server.objects().len(), objects, "a dry run stores nothing");
    server.set_forbidden(true);
    let (code, stdout) = validate();
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("control.istio: FAILED: list: HTTP 403 Forbidden"),
        "{stdout}"
    );
    server.set_forbidden(false);
    assert_schema_clean(&server, &[403]);
}
