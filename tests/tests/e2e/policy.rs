//! `verity policy learn` and `verity policy whatif` on a recorded scenario: the proposal allows
//! everything observed, and a new edge shows up as traffic the proposal would deny.

use std::path::Path;

use verity_e2e::verity_command;

/// An inbound sidecar record in Envoy's JSON format, with the peer identity logged.
fn sidecar(time: &str, peer: &str, service: &str, method: &str, path: &str, status: u16) -> String {
    let details = if status == 403 {
        r#","response_code_details":"rbac_access_denied_matched_policy[ns[shop]-policy[deny-all]-rule[0]]""#
    } else {
        ""
    };
    format!(
        r#"{{"start_time":"{time}","method":"{method}","path":"{path}","protocol":"HTTP/1.1","response_code":{status}{details},"upstream_cluster":"inbound|8080||","downstream_peer_uri_san":"spiffe://cluster.local/ns/shop/sa/{peer}","downstream_remote_address":"10.1.0.7:5555","downstream_local_address":"10.2.0.9:8080","requested_server_name":"outbound_.8080_._.{service}.shop.svc.cluster.local","authority":"{service}.shop:8080"}}"#
    )
}

/// An inbound ztunnel record (L4).
fn ztunnel(time: &str, peer: &str) -> String {
    format!(
        "{time}\tinfo\taccess\tconnection complete\tsrc.addr=10.1.0.9:40000 src.workload=\"{peer}-7d9f8c6b5-q2w3e\" src.namespace=\"shop\" src.identity=\"spiffe://cluster.local/ns/shop/sa/{peer}\" dst.addr=10.3.0.4:5432 dst.hbone_addr=10.3.0.4:5432 dst.service=\"db.data.svc.cluster.local\" dst.workload=\"db-5d9c8b7f6-abcde\" dst.namespace=\"data\" dst.identity=\"spiffe://cluster.local/ns/data/sa/db\" direction=\"inbound\" bytes_sent=100 bytes_recv=50 duration=\"3ms\""
    )
}

fn pod(name: &str, namespace: &str, app: &str, hash: &str) -> String {
    format!(
        "  - apiVersion: v1\n    kind: Pod\n    metadata:\n      name: {name}\n      namespace: {namespace}\n      labels: {{app: {app}, pod-template-hash: {hash}}}\n      ownerReferences: [{{kind: ReplicaSet, name: {app}-{hash}, controller: true}}]\n"
    )
}

fn week_one() -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..20 {
        lines.push(sidecar(
            &format!("2026-11-20T10:00:{i:02}Z"),
            "frontend",
            "cart",
            "GET",
            &format!("/cart/{i}?view=full"),
            200,
        ));
    }
    for i in 0..3 {
        lines.push(sidecar(
            &format!("2026-11-20T10:01:{i:02}Z"),
            "frontend",
            "cart",
            "POST",
            "/cart/items",
            200,
        ));
        lines.push(ztunnel(&format!("2026-11-20T10:02:{i:02}.000000Z"), "cart"));
    }
    for i in 0..5 {
        lines.push(sidecar(
            &format!("2026-11-20T10:03:{i:02}Z"),
            "cart",
            "pay",
            "POST",
            "/pay/charge",
            200,
        ));
    }
    lines
}

fn write(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write log");
}

#[test]
fn learn_then_whatif_allows_what_was_seen_and_catches_a_new_edge() {
    let dir = tempfile::tempdir().expect("tmp");
    let inventory = dir.path().join("pods.yaml");
    let mut pods = String::from("apiVersion: v1\nkind: List\nitems:\n");
    pods.push_str(&pod("frontend-6c7d8e9f0-aaaaa", "shop", "frontend", "6c7d8e9f0"));
    pods.push_str(&pod("cart-7d9f8c6b5-bbbbb", "shop", "cart", "7d9f8c6b5"));
    pods.push_str(&pod("pay-6d4f9c7b8-ccccc", "shop", "pay", "6d4f9c7b8"));
    pods.push_str(&pod("db-5d9c8b7f6-abcde", "data", "db", "5d9c8b7f6"));
    for (name, ns) in [("cart", "shop"), ("pay", "shop"), ("db", "data")] {
        pods.push_str(&format!(
            "  - apiVersion: v1\n    kind: Service\n    metadata: {{name: {name}, namespace: {ns}}}\n    spec: {{selector: {{app: {name}}}}}\n"
        ));
    }
    std::fs::write(&inventory, pods).expect("inventory");
    let week1 = dir.path().join("week1.log");
    write(&week1, &week_one());

    let proposals = dir.path().join("proposed");
    let out = verity_command(dir.path())
        .args(["policy", "learn", "--workloads"])
        .arg(&inventory)
        .arg("--out")
        .arg(&proposals)
        .arg(&week1)
        .output()
        .expect("run learn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "learn failed: {stderr}");
    assert!(stderr.contains("3 policies with 3 rules"), "{stderr}");
    let read =
        |name: &str| std::fs::read_to_string(proposals.join(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{stderr}"));
    let cart = read("shop.verity-allow-cart.yaml");
    assert!(
        cart.contains("app: cart") && cart.contains("cluster.local/ns/shop/sa/frontend"),
        "{cart}"
    );
    // Twenty cart ids generalize to a prefix; the query string is not part of a path.
    assert!(
        cart.contains("/cart/*") && cart.contains("/cart/items") && !cart.contains("view=full"),
        "{cart}"
    );
    assert!(
        cart.contains("verity.dev/rule-0") && cart.contains("23 allowed requests"),
        "{cart}"
    );
    let db = read("data.verity-allow-db.yaml");
    assert!(
        db.contains("'5432'") && !db.contains("paths:") && db.contains("verity.dev/l4-only"),
        "{db}"
    );
    assert!(read("shop.verity-allow-pay.yaml").contains("/pay/charge"));

    // The proposal allows everything it was learned from.
    let whatif = |log: &Path, json: bool| {
        let mut cmd = verity_command(dir.path());
        cmd.args(["policy", "whatif", "--policies"])
            .arg(&proposals)
            .arg("--workloads")
            .arg(&inventory);
        if json {
            cmd.arg("--json");
        }
        cmd.arg(log).output().expect("run whatif")
    };
    let out = whatif(&week1, false);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("allowed -> denied: 0") && report.contains("unchanged: 31 allowed"),
        "{report}"
    );

    // A week later: a new edge (frontend calls pay directly), a new identity on cart, and a
    // request the mesh denied that the proposal would allow.
    let mut lines = week_one();
    lines.push(sidecar(
        "2026-11-27T09:00:00Z",
        "frontend",
        "pay",
        "POST",
        "/pay/charge",
        200,
    ));
    lines.push(sidecar(
        "2026-11-27T09:00:01Z",
        "intruder",
        "cart",
        "GET",
        "/cart/1",
        200,
    ));
    lines.push(sidecar(
        "2026-11-27T09:00:02Z",
        "cart",
        "pay",
        "POST",
        "/pay/charge",
        403,
    ));
    let week2 = dir.path().join("week2.log");
    write(&week2, &lines);
    let out = whatif(&week2, false);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "whatif must fail when it would deny allowed traffic:\n{report}"
    );
    assert!(
        report
            .contains("spiffe://cluster.local/ns/shop/sa/frontend → shop/pay: 1 requests; no ALLOW policy matched (1)"),
        "{report}"
    );
    assert!(
        report.contains("spiffe://cluster.local/ns/shop/sa/intruder → shop/cart"),
        "{report}"
    );
    assert!(report.contains("/pay/charge"), "samples show the records:\n{report}");

    let out = whatif(&week2, true);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(json["allowed_to_denied"], 2, "{json}");
    assert_eq!(json["denied_to_allowed"], 1, "{json}");
    assert_eq!(json["allowed_unchanged"], 31, "{json}");
}

#[test]
fn shadow_mode_turns_violated_when_a_new_edge_appears_and_live_drift_counts_rule_use() {
    use std::time::Duration;
    use verity_e2e::{Verity, eventually, read_jsonl};

    let dir = tempfile::tempdir().expect("tmp");
    let candidates = dir.path().join("candidates");
    std::fs::create_dir(&candidates).expect("mkdir");
    std::fs::write(
        candidates.join("cart.yaml"),
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-allow, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: cart}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
"#,
    )
    .expect("candidate");
    let workloads = dir.path().join("workloads.yaml");
    std::fs::write(
        &workloads,
        "workloads: [{namespace: shop, name: cart, labels: {app: cart}}]\nservices: [{namespace: shop, name: cart, selector: {app: cart}}]\n",
    )
    .expect("workloads");
    let in_force = dir.path().join("in-force.yaml");
    std::fs::write(
        &in_force,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-cart, namespace: shop}\nspec:\n  selector: {matchLabels: {app: cart}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-legacy, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/legacy/*]}}]\n",
    )
    .expect("in force");
    let alerts_file = dir.path().join("alerts.jsonl");
    let candidates_list = format!("[{:?}]", candidates.display().to_string());
    let in_force_list = format!("[{:?}]", in_force.display().to_string());
    let v = Verity::start_in(
        dir,
        &[
            (
                "VERITY__SINKS__OUTPUTS__FILE__PATH",
                alerts_file.to_str().expect("path"),
            ),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__POLICY__SHADOW__ENABLED", "true"),
            ("VERITY__POLICY__SHADOW__CANDIDATES", &candidates_list),
            ("VERITY__POLICY__WORKLOADS", workloads.to_str().expect("path")),
            ("VERITY__POLICY__DRIFT__ENABLED", "true"),
            ("VERITY__POLICY__IN_FORCE", &in_force_list),
        ],
    );
    let state = |s: &str| format!(r#"verity_policy_shadow_state{{policy="shop/cart-allow",state="{s}"}}"#);
    assert_eq!(v.metric_value(&state("unknown")), Some(1.0), "{}", v.metrics_text());

    let good: Vec<String> = (0..3)
        .map(|i| {
            sidecar(
                &format!("2026-11-27T10:00:0{i}Z"),
                "frontend",
                "cart",
                "GET",
                "/cart",
                200,
            )
        })
        .collect();
    assert_eq!(verity_e2e::post_log_lines(v.http, &good), 200);
    assert!(
        eventually(Duration::from_secs(10), || v.metric_value(&state("holding"))
            == Some(1.0)),
        "{}",
        v.metrics_text()
    );

    let new_edge = [sidecar("2026-11-27T10:00:05Z", "intruder", "cart", "GET", "/cart", 200)];
    assert_eq!(verity_e2e::post_log_lines(v.http, &new_edge), 200);
    let firing = || {
        read_jsonl(&alerts_file)
            .into_iter()
            .find(|a| a["rule_id"] == "policy-shadow" && a["status"] == "firing")
    };
    assert!(
        eventually(Duration::from_secs(10), || firing().is_some()),
        "{}",
        v.stderr()
    );
    let alert = firing().expect("alert");
    assert_eq!(alert["group"]["policy"], "shop/cart-allow", "{alert}");
    assert_eq!(
        alert["evidence"][0]["source_principal"], "spiffe://cluster.local/ns/shop/sa/intruder",
        "{alert}"
    );
    assert_eq!(v.metric_value(&state("violated")), Some(1.0));
    assert_eq!(
        v.metric_value(r#"verity_policy_shadow_requests_total{policy="shop/cart-allow",outcome="would_deny"}"#),
        Some(1.0)
    );
    // Live drift: the in-force ALLOW rule matched frontend's three requests; the DENY rule none.
    assert_eq!(
        v.metric_value(r#"verity_policy_rule_matches_total{policy="shop/allow-cart",rule="0",action="ALLOW"}"#),
        Some(3.0),
        "{}",
        v.metrics_text()
    );
    assert_eq!(
        v.metric_value(r#"verity_policy_rule_matches_total{policy="shop/deny-legacy",rule="0",action="DENY"}"#),
        Some(0.0)
    );
    assert_eq!(
        v.metric_value(r#"verity_policy_rules_unused{action="DENY"}"#),
        Some(1.0)
    );
    assert_eq!(
        v.metric_value(r#"verity_policy_rules_unused{action="ALLOW"}"#),
        Some(0.0)
    );
}

#[test]
fn drift_reads_the_cluster_and_reports_unused_rules_and_unprotected_workloads() {
    use verity_e2e::kube::{KubeApiServer, KubeSettings, istio_crd_path};

    let dir = tempfile::tempdir().expect("tmp");
    let server = KubeApiServer::start(KubeSettings {
        crd_path: Some(istio_crd_path()),
        namespaces: vec!["shop".into(), "data".into()],
    });
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let policy = |yaml: &str| -> serde_json::Value { serde_yaml::from_str(yaml).expect("policy yaml") };
    for object in [
        // Used by frontend → cart.
        policy(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-cart, namespace: shop}\nspec:\n  selector: {matchLabels: {app: cart}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]\n",
        ),
        // The second rule (a retired batch job) is never used.
        policy(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-pay, namespace: shop}\nspec:\n  selector: {matchLabels: {app: pay}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/cart]}}]\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/old-batch]}}]\n",
        ),
        policy(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-legacy, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/legacy/*]}}]\n",
        ),
    ] {
        server.apply_as("kubectl", &object, false).expect("seeded");
    }
    let inventory = dir.path().join("workloads.yaml");
    std::fs::write(
        &inventory,
        "workloads:\n  - {namespace: shop, name: frontend, labels: {app: frontend}}\n  - {namespace: shop, name: cart, labels: {app: cart}}\n  - {namespace: shop, name: pay, labels: {app: pay}}\n  - {namespace: data, name: db, labels: {app: db}}\nservices:\n  - {namespace: shop, name: cart, selector: {app: cart}}\n  - {namespace: shop, name: pay, selector: {app: pay}}\n",
    )
    .expect("inventory");
    let log = dir.path().join("week.log");
    write(&log, &week_one());
    let out = verity_command(dir.path())
        .args(["policy", "drift", "--cluster", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--workloads")
        .arg(&inventory)
        .arg(&log)
        .output()
        .expect("run drift");
    let report = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("3 AuthorizationPolicies read from the cluster"),
        "{stderr}"
    );
    assert!(
        report.contains("ALLOW rules no allowed request used (over-broad or dead): 1\n  shop/allow-pay rules[1]"),
        "{report}"
    );
    assert!(
        report.contains("DENY rules that never matched: 1\n  shop/deny-legacy rules[0]"),
        "{report}"
    );
    assert!(
        report.contains("ALLOW shop/allow-cart rules[0]: 23 matched"),
        "{report}"
    );
    // db is reached (through ztunnel) with no ALLOW policy; frontend and db have none at all.
    assert!(report.contains("data/db-5d9c8b7f6-abcde: 3 requests"), "{report}");
    assert!(
        report.contains("Inventory workloads no ALLOW policy selects: 2\n  data/db\n  shop/frontend"),
        "{report}"
    );
}

#[test]
fn staged_candidates_are_promoted_after_holding_and_demoted_on_violation() {
    use std::time::Duration;
    use verity_e2e::kube::{KubeApiServer, KubeSettings, istio_crd_path};
    use verity_e2e::{Verity, eventually, read_jsonl};

    let server = KubeApiServer::start(KubeSettings {
        crd_path: Some(istio_crd_path()),
        namespaces: vec!["shop".into()],
    });
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let candidates = dir.path().join("candidates");
    std::fs::create_dir(&candidates).expect("mkdir");
    for (name, app, peer) in [("cart-allow", "cart", "frontend"), ("pay-allow", "pay", "cart")] {
        std::fs::write(
            candidates.join(format!("{name}.yaml")),
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/{peer}]}}}}]\n"
            ),
        )
        .expect("candidate");
    }
    let workloads = dir.path().join("workloads.yaml");
    std::fs::write(
        &workloads,
        "workloads: [{namespace: shop, name: cart, labels: {app: cart}}, {namespace: shop, name: pay, labels: {app: pay}}]\nservices: [{namespace: shop, name: cart, selector: {app: cart}}, {namespace: shop, name: pay, selector: {app: pay}}]\n",
    )
    .expect("workloads");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "stage-token").expect("token");
    let alerts_file = dir.path().join("alerts.jsonl");
    let env = [
        (
            "VERITY__SINKS__OUTPUTS__FILE__PATH".to_string(),
            alerts_file.display().to_string(),
        ),
        (
            "VERITY__SINKS__OUTPUTS__STDOUT__ENABLED".to_string(),
            "false".to_string(),
        ),
        (
            "VERITY__ADMIN__TOKEN".to_string(),
            format!("{{file: '{}'}}", token.display()),
        ),
        (
            "VERITY__CONTROL__ISTIO".to_string(),
            format!("{{kubeconfig: '{}'}}", kubeconfig.display()),
        ),
        ("VERITY__POLICY__WORKLOADS".to_string(), workloads.display().to_string()),
        ("VERITY__POLICY__SHADOW__ENABLED".to_string(), "true".to_string()),
        (
            "VERITY__POLICY__SHADOW__CANDIDATES".to_string(),
            format!("[{:?}]", candidates.display().to_string()),
        ),
        ("VERITY__POLICY__SHADOW__STAGE".to_string(), "true".to_string()),
        (
            "VERITY__POLICY__SHADOW__PROMOTE_AFTER_SECS".to_string(),
            "60".to_string(),
        ),
        ("VERITY__POLICY__LEARN__ENABLED".to_string(), "true".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut v = Verity::start_in(dir, &env);
    let dry_run = |name: &str| -> Option<bool> {
        let object = server.get("shop", name)?;
        Some(object["metadata"]["annotations"]["istio.io/dry-run"] == "true")
    };
    // Both candidates are staged as dry-run, labelled as Verity's candidates.
    assert!(
        eventually(Duration::from_secs(15), || dry_run("cart-allow") == Some(true)
            && dry_run("pay-allow") == Some(true)),
        "{}",
        v.stderr()
    );
    let staged = server.get("shop", "cart-allow").expect("staged");
    assert_eq!(staged["metadata"]["labels"]["verity.dev/candidate"], "true", "{staged}");

    // Held for 70 s of event time: promoted.
    let good: Vec<String> = [0, 1, 2, 70]
        .iter()
        .map(|s| {
            sidecar(
                &format!("2026-11-27T10:{:02}:{:02}Z", s / 60, s % 60),
                "frontend",
                "cart",
                "GET",
                "/cart",
                200,
            )
        })
        .collect();
    assert_eq!(verity_e2e::post_log_lines(v.http, &good[..3]), 200);
    assert_eq!(verity_e2e::post_log_lines(v.http, &good[3..]), 200);
    assert!(
        eventually(Duration::from_secs(15), || dry_run("cart-allow") == Some(false)),
        "{}",
        v.stderr()
    );
    let audit = |rule: &str| read_jsonl(&alerts_file).into_iter().any(|a| a["rule_id"] == rule);
    assert!(eventually(Duration::from_secs(10), || audit("verity-policy-staged")
        && audit("verity-policy-promoted")));

    // A new edge: violated, so demoted back to dry-run.
    let bad = [sidecar("2026-11-27T10:01:15Z", "intruder", "cart", "GET", "/cart", 200)];
    assert_eq!(verity_e2e::post_log_lines(v.http, &bad), 200);
    assert!(
        eventually(Duration::from_secs(15), || dry_run("cart-allow") == Some(true)),
        "{}",
        v.stderr()
    );
    assert!(eventually(Duration::from_secs(10), || audit("verity-policy-demoted")));

    // By hand: a violated candidate is refused; another one is promoted.
    let promote = |policy: &str| {
        verity_command(Path::new("."))
            .args([
                "policy",
                "promote",
                policy,
                "--admin",
                &format!("http://{}", v.admin),
                "--token-file",
            ])
            .arg(&token)
            .output()
            .expect("run promote")
    };
    let refused = promote("shop/cart-allow");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("violated"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let ok = promote("shop/pay-allow");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    assert!(
        eventually(Duration::from_secs(15), || dry_run("pay-allow") == Some(false)),
        "{}",
        v.stderr()
    );
    // The server has the policy before Verity, having heard back, counts the promotion.
    assert!(
        eventually(Duration::from_secs(5), || {
            v.metric_value(r#"verity_policy_staging_total{action="promoted",outcome="ok"}"#) == Some(2.0)
        }),
        "{}",
        v.metrics_text()
    );

    // Live learning saw the same traffic: cart is reached by frontend and by intruder.
    let learned = tempfile::tempdir().expect("tmp");
    let out = verity_command(Path::new("."))
        .args([
            "policy",
            "learn",
            "--live",
            "--admin",
            &format!("http://{}", v.admin),
            "--token-file",
        ])
        .arg(&token)
        .arg("--out")
        .arg(learned.path())
        .output()
        .expect("run learn --live");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cart = std::fs::read_to_string(learned.path().join("shop.verity-allow-cart.yaml")).expect("proposal");
    assert!(
        cart.contains("cluster.local/ns/shop/sa/frontend")
            && cart.contains("cluster.local/ns/shop/sa/intruder")
            && cart.contains("app: cart"),
        "{cart}"
    );

    // A restart keeps the promotion: pay-allow stays enforced, cart-allow (demoted) is staged
    // again as dry-run.
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", v.stderr());
    v.restart();
    assert!(
        eventually(Duration::from_secs(15), || {
            v.metric_value(r#"verity_policy_staging_total{action="staged",outcome="ok"}"#) == Some(1.0)
        }),
        "{}",
        v.metrics_text()
    );
    assert_eq!(dry_run("pay-allow"), Some(false), "{}", v.stderr());
    assert_eq!(dry_run("cart-allow"), Some(true));
}

#[test]
fn live_drift_reads_the_policies_in_force_from_the_cluster() {
    use std::time::Duration;
    use verity_e2e::kube::{KubeApiServer, KubeSettings, istio_crd_path};
    use verity_e2e::{Verity, eventually};

    let server = KubeApiServer::start(KubeSettings {
        crd_path: Some(istio_crd_path()),
        namespaces: vec!["shop".into()],
    });
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let policy = |yaml: &str| -> serde_json::Value { serde_yaml::from_str(yaml).expect("policy yaml") };
    server
        .apply_as(
            "kubectl",
            &policy("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-cart, namespace: shop}\nspec:\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]\n"),
            false,
        )
        .expect("seeded");
    let env = [
        (
            "VERITY__CONTROL__ISTIO".to_string(),
            format!("{{kubeconfig: '{}'}}", kubeconfig.display()),
        ),
        ("VERITY__POLICY__DRIFT__ENABLED".to_string(), "true".to_string()),
        ("VERITY__POLICY__DRIFT__FROM_CLUSTER".to_string(), "true".to_string()),
        ("VERITY__POLICY__DRIFT__REFRESH_SECS".to_string(), "1".to_string()),
        (
            "VERITY__SINKS__OUTPUTS__STDOUT__ENABLED".to_string(),
            "false".to_string(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let v = Verity::start_in(dir, &env);
    let matches = |policy: &str, action: &str| {
        v.metric_value(&format!(
            r#"verity_policy_rule_matches_total{{policy="{policy}",rule="0",action="{action}"}}"#
        ))
    };
    // The set comes from the cluster; the stage takes it before its next batch. Each try
    // sends a request of its own: Verity acknowledges a request sent again without
    // evaluating it, so a repeated one would never carry a batch to the stage.
    let sent = std::cell::Cell::new(0u32);
    let post_another = || {
        sent.set(sent.get() + 1);
        let line = sidecar(
            &format!("2026-11-27T11:00:00.{:06}Z", sent.get()),
            "frontend",
            "cart",
            "GET",
            "/cart",
            200,
        );
        assert_eq!(verity_e2e::post_log_lines(v.http, &[line]), 200);
    };
    assert!(
        eventually(Duration::from_secs(15), || {
            post_another();
            matches("shop/allow-cart", "ALLOW").is_some_and(|n| n >= 1.0)
        }),
        "{}\n{}",
        v.metrics_text(),
        v.stderr()
    );
    // A policy added in the cluster is picked up; the first one keeps its count.
    let before = matches("shop/allow-cart", "ALLOW").unwrap_or(0.0);
    server
        .apply_as(
            "kubectl",
            &policy("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-legacy, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/legacy/*]}}]\n"),
            false,
        )
        .expect("seeded");
    assert!(
        eventually(Duration::from_secs(15), || {
            post_another();
            matches("shop/deny-legacy", "DENY") == Some(0.0)
        }),
        "{}",
        v.metrics_text()
    );
    assert!(matches("shop/allow-cart", "ALLOW").unwrap_or(0.0) >= before);
    assert_eq!(
        v.metric_value(r#"verity_policy_rules_unused{action="DENY"}"#),
        Some(1.0)
    );
    // Two distinct sets applied; the listings in between found nothing new.
    assert_eq!(
        v.metric_value(r#"verity_policy_in_force_refreshes_total{outcome="applied"}"#),
        Some(2.0)
    );
}
