//! Authenticated intake: mutual TLS with SPIFFE client certificates (curl and a tonic client),
//! bearer tokens, a trusted proxy's `x-forwarded-client-cert`, certificate rotation under
//! load, and the refusal to listen beyond loopback without any of them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use verity_e2e::mesh_pki::{MeshPki, client_config, grpc_tls_channel};
use verity_e2e::{Verity, eventually, otlp, read_jsonl_lenient, repo_root, verity_command};

const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const PAY: &str = "spiffe://cluster.local/ns/pay/sa/pay";
const LINE: &str = r#"[2024-03-01T10:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "auth-1" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#;

/// curl POSTs the OTLP/JSON logs fixture; returns (curl exit code, HTTP status, body).
fn curl(url: &str, args: &[&str]) -> (i32, u16, String) {
    curl_file(url, &repo_root().join("tests/fixtures/otlp-logs.json"), args)
}

fn curl_file(url: &str, fixture: &Path, args: &[&str]) -> (i32, u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--max-time",
            "10",
        ])
        .args(args)
        .arg("--data-binary")
        .arg(format!("@{}", fixture.display()))
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_string(),
    )
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn sender_metric(v: &Verity, listener: &str, reason: &str) -> f64 {
    v.metric_value(&format!(
        r#"verity_intake_rejected_senders_total{{listener="{listener}",reason="{reason}"}}"#
    ))
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_names_the_sender_and_refuses_everyone_else() {
    let dir = tempfile::tempdir().expect("tmp");
    let mesh = MeshPki::new("mesh root");
    let rogue = MeshPki::new("rogue root");
    let ca = mesh.write_ca(dir.path(), "mesh-root");
    let (cert, key) = mesh.server().write(dir.path(), "verity");
    let (cart_cert, cart_key) = mesh.workload(CART).write(dir.path(), "cart");
    let (pay_cert, pay_key) = mesh.workload(PAY).write(dir.path(), "pay");
    let (rogue_cert, rogue_key) = rogue.workload(CART).write(dir.path(), "rogue");
    let mut env: Vec<(String, String)> = Vec::new();
    for listener in ["GRPC", "HTTP"] {
        let k = |key: &str| format!("VERITY__OTLP__{listener}__TLS__{key}");
        env.push((k("CERT_FILE"), p(&cert)));
        env.push((k("KEY_FILE"), p(&key)));
        env.push((k("CLIENT_CA_FILE"), p(&ca)));
        env.push((k("CLIENT_AUTH"), "required".into()));
    }
    env.push((
        "VERITY__OTLP__ALLOWED_SENDERS".into(),
        r#"["spiffe://cluster.local/ns/shop/*"]"#.into(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let v = Verity::start(&env);
    let url = format!("https://{}/v1/logs", v.http);

    // The cart sidecar's certificate: accepted, and its SPIFFE ID is every record's sender.
    let (exit, status, body) = curl(
        &url,
        &["--cacert", &p(&ca), "--cert", &p(&cart_cert), "--key", &p(&cart_key)],
    );
    assert_eq!((exit, status), (0, 200), "{body}");
    assert!(eventually(Duration::from_secs(10), || !v
        .archive_rows("events.jsonl")
        .is_empty()));
    let row = &v.archive_rows("events.jsonl")[0];
    assert_eq!(row["sender"], CART, "{row}");
    // The fixture's inbound record does not name the reporting proxy: kept, unverified.
    assert_eq!(row["sender_binding"], "unbound", "{row}");
    assert_eq!(row["sender_verified"], false, "{row}");

    // No certificate, or one from another CA: the handshake fails, nothing is read.
    let (exit, _, _) = curl(&url, &["--cacert", &p(&ca)]);
    assert_ne!(exit, 0, "a client without a certificate got through");
    let (exit, _, _) = curl(
        &url,
        &["--cacert", &p(&ca), "--cert", &p(&rogue_cert), "--key", &p(&rogue_key)],
    );
    assert_ne!(exit, 0, "a certificate from another CA got through");
    assert!(
        sender_metric(&v, "otlp_http", "tls_handshake") >= 2.0,
        "{}",
        v.metrics_text()
    );

    // A valid mesh identity outside allowed_senders: 403 with the reason.
    let (exit, status, body) = curl(
        &url,
        &["--cacert", &p(&ca), "--cert", &p(&pay_cert), "--key", &p(&pay_key)],
    );
    assert_eq!((exit, status), (0, 403), "{body}");
    assert!(body.contains("not in otlp.allowed_senders"), "{body}");
    assert_eq!(sender_metric(&v, "otlp_http", "sender_not_allowed"), 1.0);
    assert_eq!(
        v.metric_value(r#"verity_otlp_requests_total{transport="http",signal="logs",outcome="permission_denied"}"#),
        Some(1.0)
    );

    // gRPC: a tonic client with the cart certificate exports; the rogue certificate cannot
    // even connect; the pay identity is PERMISSION_DENIED.
    let request = || otlp::logs_request(vec![otlp::record(LINE, vec![])]);
    let mesh_ca = mesh.ca_pem.clone();
    let leaf = |path: &Path, key: &Path| verity_e2e::mesh_pki::Leaf {
        cert_pem: std::fs::read_to_string(path).expect("cert"),
        key_pem: std::fs::read_to_string(key).expect("key"),
    };
    let cart = leaf(&cart_cert, &cart_key);
    let channel = grpc_tls_channel(v.grpc, client_config(&mesh_ca, Some(&cart), b"h2"))
        .await
        .expect("mTLS connect");
    LogsServiceClient::new(channel)
        .export(request())
        .await
        .expect("export with the cart identity");
    let rogue_leaf = leaf(&rogue_cert, &rogue_key);
    let refused = match grpc_tls_channel(v.grpc, client_config(&mesh_ca, Some(&rogue_leaf), b"h2")).await {
        Err(_) => true,
        Ok(channel) => LogsServiceClient::new(channel).export(request()).await.is_err(),
    };
    assert!(refused, "a certificate from another CA exported over gRPC");
    let pay = leaf(&pay_cert, &pay_key);
    let channel = grpc_tls_channel(v.grpc, client_config(&mesh_ca, Some(&pay), b"h2"))
        .await
        .expect("connect");
    let err = LogsServiceClient::new(channel)
        .export(request())
        .await
        .expect_err("pay is not allowed");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(eventually(Duration::from_secs(10), || {
        v.archive_rows("events.jsonl")
            .iter()
            .any(|r| r["source"] == "otlp_grpc" && r["sender"] == CART)
    }));
    assert!(
        v.archive_rows("events.jsonl").iter().all(|r| r["sender"] == CART),
        "only the cart identity may have records"
    );
}

#[test]
fn bearer_tokens_and_a_trusted_proxy_identify_senders() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("collector.token");
    std::fs::write(&token, "a-long-random-token\n").expect("token");
    let tokens = format!(
        r#"[{{"name": "otel-collector", "secret": {{"file": "{}"}}}}]"#,
        p(&token)
    );
    let v = Verity::start(&[
        ("VERITY__OTLP__TOKENS", tokens.as_str()),
        ("VERITY__OTLP__TRUSTED_PROXY__ADDRESSES", r#"["127.0.0.6"]"#),
    ]);
    let url = v.otlp_http_url("/v1/logs");

    let (_, status, body) = curl(&url, &["-H", "Authorization: Bearer a-long-random-token"]);
    assert_eq!(status, 200, "{body}");
    let (_, status, body) = curl(&url, &["-H", "Authorization: Bearer a-long-random-tokem"]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("matches no configured token"), "{body}");
    let (_, status, _) = curl(&url, &[]);
    assert_eq!(status, 401);
    assert_eq!(sender_metric(&v, "otlp_http", "bad_token"), 1.0);
    assert!(sender_metric(&v, "otlp_http", "no_identity") >= 1.0);

    // The sidecar in front of Verity connects from 127.0.0.6 and says who its client was.
    let xfcc = format!("x-forwarded-client-cert: By=spiffe://cluster.local/ns/verity/sa/verity;Hash=ab;URI={PAY}");
    let (exit, status, body) = curl(&url, &["--interface", "127.0.0.6", "-H", &xfcc]);
    assert_eq!((exit, status), (0, 200), "{body}");
    // The same header from anywhere else is ignored (and counted): no identity, 401.
    let (_, status, _) = curl(&url, &["-H", &xfcc]);
    assert_eq!(status, 401);
    assert_eq!(sender_metric(&v, "otlp_http", "xfcc_untrusted_peer"), 1.0);

    assert!(eventually(Duration::from_secs(10), || v
        .archive_rows("events.jsonl")
        .len()
        >= 2));
    let senders: Vec<String> = v
        .archive_rows("events.jsonl")
        .iter()
        .map(|r| r["sender"].as_str().unwrap_or("null").to_string())
        .collect();
    assert_eq!(senders, vec!["otel-collector".to_string(), PAY.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_served_without_dropping_a_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let old = MeshPki::new("root 1");
    let new = MeshPki::new("root 2");
    let ca = old.write_ca(dir.path(), "client-ca");
    let (cert, key) = old.server().write(dir.path(), "verity");
    let (cert_s, key_s, ca_s) = (p(&cert), p(&key), p(&ca));
    let v = Verity::start(&[
        ("VERITY__OTLP__GRPC__TLS__CERT_FILE", cert_s.as_str()),
        ("VERITY__OTLP__GRPC__TLS__KEY_FILE", key_s.as_str()),
        ("VERITY__OTLP__GRPC__TLS__CLIENT_CA_FILE", ca_s.as_str()),
        ("VERITY__OTLP__GRPC__TLS__CLIENT_AUTH", "required"),
        ("VERITY__OTLP__GRPC__TLS__RELOAD_POLL_SECS", "1"),
    ]);
    // Clients that trust both roots, as during a real root rotation.
    let both = format!("{}{}", old.ca_pem, new.ca_pem);
    let old_client = old.workload(CART);
    let new_client = new.workload(CART);
    let channel = grpc_tls_channel(v.grpc, client_config(&both, Some(&old_client), b"h2"))
        .await
        .expect("connect");
    let mut streaming = LogsServiceClient::new(channel);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match streaming
                    .export(otlp::logs_request(vec![otlp::record(LINE, vec![])]))
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Only the new root's clients and server certificate from now on (written as
    // cert-manager does: new files, then renamed over the old ones).
    let staged = dir.path().join("staged");
    std::fs::create_dir(&staged).expect("mkdir");
    let (new_cert, new_key) = new.server().write(&staged, "verity");
    let new_ca = new.write_ca(&staged, "client-ca");
    std::fs::rename(new_key, &key).expect("rename key");
    std::fs::rename(new_cert, &cert).expect("rename cert");
    std::fs::rename(new_ca, &ca).expect("rename ca");

    // A client that trusts only the new root connects once the reload happened.
    let mut rotated = false;
    for _ in 0..100 {
        if let Ok(channel) = grpc_tls_channel(v.grpc, client_config(&new.ca_pem, Some(&new_client), b"h2")).await
            && LogsServiceClient::new(channel)
                .export(otlp::logs_request(vec![otlp::record(LINE, vec![])]))
                .await
                .is_ok()
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the new certificate was never served:\n{}", v.stderr());
    // New connections with the old client certificate are refused now.
    let old_refused = match grpc_tls_channel(v.grpc, client_config(&both, Some(&old_client), b"h2")).await {
        Err(_) => true,
        Ok(channel) => LogsServiceClient::new(channel)
            .export(otlp::logs_request(vec![otlp::record(LINE, vec![])]))
            .await
            .is_err(),
    };
    assert!(old_refused, "the old client CA is still trusted after the rotation");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = sender.await.expect("sender task");
    assert!(failed.is_empty(), "requests failed during the rotation: {failed:?}");
    assert!(ok >= 10, "only {ok} requests went through");
    assert_eq!(
        v.metric_value(r#"verity_tls_reloads_total{listener="otlp_grpc",outcome="reloaded"}"#),
        Some(1.0),
        "{}",
        v.metrics_text()
    );
}

#[test]
fn listening_beyond_loopback_needs_sender_authentication() {
    let validate = |env: &[(&str, &str)]| {
        let cwd = tempfile::tempdir().expect("tmp");
        let mut cmd = verity_command(cwd.path());
        cmd.arg("validate");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run verity validate");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = validate(&[("VERITY__OTLP__GRPC__LISTEN", "0.0.0.0:4317")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("otlp.grpc.listen") && text.contains("allow_insecure"),
        "{text}"
    );
    let (code, text) = validate(&[
        ("VERITY__OTLP__GRPC__LISTEN", "0.0.0.0:4317"),
        ("VERITY__OTLP__ALLOW_INSECURE", "true"),
    ]);
    assert_eq!(code, Some(0), "{text}");

    // `verity run` refuses the same way, before binding anything.
    let dir = tempfile::tempdir().expect("tmp");
    let out = verity_command(dir.path())
        .arg("run")
        .env("VERITY__OTLP__HTTP__LISTEN", "0.0.0.0:0")
        .output()
        .expect("run verity run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("otlp.http.listen"));

    // A TLS block whose files are missing or wrong names the key, the file and the reason.
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "not a key").expect("write");
    let key_s = p(&key);
    let (code, text) = validate(&[
        ("VERITY__OTLP__HTTP__TLS__CERT_FILE", "/nonexistent/verity.pem"),
        ("VERITY__OTLP__HTTP__TLS__KEY_FILE", key_s.as_str()),
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("otlp.http.tls") && text.contains("/nonexistent/verity.pem") && text.contains("cannot read"),
        "{text}"
    );
    let pki = MeshPki::new("root");
    let (cert, _) = pki.server().write(dir.path(), "server");
    let cert_s = p(&cert);
    let (code, text) = validate(&[
        ("VERITY__OTLP__HTTP__TLS__CERT_FILE", cert_s.as_str()),
        ("VERITY__OTLP__HTTP__TLS__KEY_FILE", key_s.as_str()),
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains(&p(&key)) && text.contains("private key"), "{text}");
}

/// Inbound RBAC denials at the pay workload, of calls from the frontend, as the pay sidecar
/// logs them in Istio's JSON encoding (with its own identity as the local SAN).
fn denial_at_pay(i: usize) -> String {
    format!(
        r#"{{"start_time":"2024-06-01T10:00:{:02}Z","upstream_cluster":"inbound|8080||","method":"GET","path":"/admin","protocol":"HTTP/1.1","response_code":403,"response_code_details":"rbac_access_denied_matched_policy[none]","x_request_id":"forge-{i}","downstream_peer_uri_san":"{FRONTEND}","downstream_local_uri_san":"{PAY}"}}"#,
        i % 60
    )
}

const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";

#[test]
fn a_sidecar_may_report_only_traffic_it_carried() {
    let dir = tempfile::tempdir().expect("tmp");
    let mesh = MeshPki::new("mesh root");
    let ca = mesh.write_ca(dir.path(), "mesh-root");
    let (cert, key) = mesh.server().write(dir.path(), "verity");
    let (pay_cert, pay_key) = mesh.workload(PAY).write(dir.path(), "pay");
    let (cart_cert, cart_key) = mesh.workload(CART).write(dir.path(), "cart");
    let alerts_file = dir.path().join("alerts.jsonl");
    let (cert_s, key_s, ca_s, alerts_s) = (p(&cert), p(&key), p(&ca), p(&alerts_file));
    let mut v = Verity::start(&[
        ("VERITY__OTLP__HTTP__TLS__CERT_FILE", cert_s.as_str()),
        ("VERITY__OTLP__HTTP__TLS__KEY_FILE", key_s.as_str()),
        ("VERITY__OTLP__HTTP__TLS__CLIENT_CA_FILE", ca_s.as_str()),
        ("VERITY__OTLP__HTTP__TLS__CLIENT_AUTH", "required"),
        ("VERITY__SINKS__OUTPUTS__FILE__PATH", alerts_s.as_str()),
    ]);
    let url = format!("https://{}/v1/logs", v.http);
    let request = |lines: Vec<String>, name: &str| {
        let records = lines.iter().map(|l| otlp::record(l, vec![])).collect();
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&otlp::logs_request(records)).expect("json")).expect("write");
        path
    };

    // The pay sidecar reports denials it enforced: bound to it, verified.
    let own = request((0..3).map(denial_at_pay).collect(), "own.json");
    let (exit, status, body) = curl_file(
        &url,
        &own,
        &["--cacert", &ca_s, "--cert", &p(&pay_cert), "--key", &p(&pay_key)],
    );
    assert_eq!((exit, status), (0, 200), "{body}");
    assert!(!body.contains("rejected"), "{body}");

    // The cart sidecar reports the same kind of denials at pay, a burst big enough to make
    // the frontend look like it is probing: every record is a forgery.
    let forged = request((10..22).map(denial_at_pay).collect(), "forged.json");
    let (exit, status, body) = curl_file(
        &url,
        &forged,
        &["--cacert", &ca_s, "--cert", &p(&cart_cert), "--key", &p(&cart_key)],
    );
    assert_eq!((exit, status), (0, 200), "{body}");
    assert!(
        body.contains("rejected 12 of 12") && body.contains("sender_not_party"),
        "{body}"
    );

    assert!(eventually(Duration::from_secs(10), || v
        .archive_rows("events.jsonl")
        .len()
        == 15));
    let rows = v.archive_rows("events.jsonl");
    let bound: Vec<_> = rows.iter().filter(|r| r["sender_binding"] == "bound").collect();
    assert_eq!(bound.len(), 3);
    assert!(bound.iter().all(|r| r["sender"] == PAY && r["sender_verified"] == true));
    let forgeries: Vec<_> = rows.iter().filter(|r| r["sender_binding"] == "not_party").collect();
    assert_eq!(forgeries.len(), 12);
    assert!(
        forgeries
            .iter()
            .all(|r| r["sender"] == CART && r["sender_verified"] == false)
    );

    let dead = v.dead_letters();
    assert_eq!(dead.len(), 12, "{dead:?}");
    assert!(
        dead.iter().all(|d| d["reason"] == "sender_not_party"
            && d["error"]
                .as_str()
                .is_some_and(|e| e.contains(CART) && e.contains(FRONTEND))),
        "{dead:?}"
    );
    assert_eq!(
        v.metric_value(r#"verity_records_rejected_total{source="otlp_http",reason="sender_not_party"}"#),
        Some(12.0)
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            read_jsonl_lenient(&alerts_file).iter().any(|a| {
                a["rule_id"] == "zt-telemetry-forgery"
                    && a["group"]["sender"] == CART
                    && a["evidence"][0]["sender"] == CART
                    && a["severity"] == "critical"
            })
        }),
        "{}",
        v.stderr()
    );

    // After the drain every window is closed: the forged burst never counted as probing.
    let (status, _) = v.terminate(Duration::from_secs(20));
    assert!(status.success());
    let alerts = read_jsonl_lenient(&alerts_file);
    assert!(
        !alerts.iter().any(|a| a["rule_id"] == "zt-rbac-denial-burst"),
        "forged denials raised a probing alert: {alerts:?}"
    );
}

/// The admin endpoint over TLS (curl scrapes /metrics with the CA) and the ext_authz deny
/// list over mutual TLS (an Envoy ext_authz client with a mesh certificate gets an answer;
/// one without a certificate cannot connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_ext_authz_listeners_take_the_same_tls_block() {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    let dir = tempfile::tempdir().expect("tmp");
    let mesh = MeshPki::new("mesh root");
    let ca = mesh.write_ca(dir.path(), "mesh-root");
    let (cert, key) = mesh.server().write(dir.path(), "verity");
    let (cert_s, key_s, ca_s) = (p(&cert), p(&key), p(&ca));
    let ext_authz = std::net::SocketAddr::from(([127, 0, 0, 1], verity_e2e::free_port()));
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], verity_e2e::free_port()));
    let (ext_s, admin_s) = (ext_authz.to_string(), admin.to_string());
    // The test helper waits on a plain admin endpoint, so admin TLS gets a process of its own
    // below.
    let v = Verity::start(&[
        ("VERITY__CONTROL__EXT_AUTHZ_LISTEN", ext_s.as_str()),
        ("VERITY__CONTROL__EXT_AUTHZ_TLS__CERT_FILE", cert_s.as_str()),
        ("VERITY__CONTROL__EXT_AUTHZ_TLS__KEY_FILE", key_s.as_str()),
        ("VERITY__CONTROL__EXT_AUTHZ_TLS__CLIENT_CA_FILE", ca_s.as_str()),
        ("VERITY__CONTROL__EXT_AUTHZ_TLS__CLIENT_AUTH", "required"),
    ]);
    let check = || CheckRequest {
        attributes: Some(AttributeContext::default()),
    };
    let istio_proxy = mesh.workload("spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway");
    let channel = grpc_tls_channel(ext_authz, client_config(&mesh.ca_pem, Some(&istio_proxy), b"h2"))
        .await
        .expect("mTLS to ext_authz");
    let answer = AuthorizationClient::new(channel).check(check()).await.expect("check");
    assert_eq!(answer.into_inner().status.map(|s| s.code), Some(0), "nobody is revoked");
    let refused = match grpc_tls_channel(ext_authz, client_config(&mesh.ca_pem, None, b"h2")).await {
        Err(_) => true,
        Ok(channel) => AuthorizationClient::new(channel).check(check()).await.is_err(),
    };
    assert!(refused, "ext_authz answered a client without a certificate");
    assert!(
        v.metric_value(r#"verity_intake_rejected_senders_total{listener="ext_authz",reason="tls_handshake"}"#)
            .is_some_and(|n| n >= 1.0),
        "{}",
        v.metrics_text()
    );
    drop(v);

    let data = tempfile::tempdir().expect("tmp");
    let mut child = verity_command(data.path())
        .arg("run")
        .env("VERITY__OTLP__GRPC__ENABLED", "false")
        .env("VERITY__OTLP__HTTP__ENABLED", "false")
        .env("VERITY__ADMIN__LISTEN", &admin_s)
        .env("VERITY__ADMIN__TLS__CERT_FILE", &cert_s)
        .env("VERITY__ADMIN__TLS__KEY_FILE", &key_s)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("verity run");
    let url = format!("https://{admin}/metrics");
    let scraped = eventually(Duration::from_secs(20), || {
        Command::new("curl")
            .args(["-sSf", "--max-time", "5", "--cacert", &ca_s, &url])
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("verity_ready 1"))
    });
    let plain = Command::new("curl")
        .args(["-sSf", "--max-time", "5", &format!("http://{admin}/metrics")])
        .output()
        .expect("curl");
    let _ = child.kill();
    let _ = child.wait();
    assert!(scraped, "the admin endpoint did not serve /metrics over TLS");
    assert!(!plain.status.success(), "the TLS admin endpoint answered plain HTTP");
}

/// A record dated centuries ahead is refused with its reason, so it cannot move event time
/// and make every honest record after it late; the good record beside it is kept.
#[test]
fn records_from_the_future_are_dead_lettered() {
    let dir = tempfile::tempdir().expect("tmp");
    let v = Verity::start(&[]);
    let future = LINE.replace("2024-03-01T10:00:00.000Z", "2261-01-01T00:00:00.000Z");
    let body = otlp::logs_request(vec![otlp::record(&future, vec![]), otlp::record(LINE, vec![])]);
    let path = dir.path().join("future.json");
    std::fs::write(&path, serde_json::to_vec(&body).expect("json")).expect("write");
    let (exit, status, body) = curl_file(&v.otlp_http_url("/v1/logs"), &path, &[]);
    assert_eq!((exit, status), (0, 200), "{body}");
    assert!(
        body.contains("rejected 1 of 2") && body.contains("future_timestamp"),
        "{body}"
    );
    assert!(eventually(Duration::from_secs(10), || v
        .archive_rows("events.jsonl")
        .len()
        == 1));
    let dead = v.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["error"].as_str().is_some_and(|e| e.contains("2261-01-01")),
        "{dead:?}"
    );
}
