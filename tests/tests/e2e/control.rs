//! The closed loop end to end: probing by a principal → a revocation applied to the ext_authz
//! deny list (checked with a real Envoy ext_authz gRPC client) → traffic from it that still
//! succeeds raises "revocation not enforced"; the state survives a restart; the TTL lifts it;
//! protected identities are never revoked. Every action is an audit event at the outputs.

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use verity_e2e::{Verity, eventually, free_port, post_log_lines_as, read_jsonl_lenient};

pub(crate) const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const ISTIOD: &str = "spiffe://cluster.local/ns/istio-system/sa/istiod";

pub(crate) fn at(offset_ms: i64) -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
        + offset_ms * 1_000_000;
    verity_model::time::format_rfc3339_ns(ns - ns % 1_000_000)
}

/// An Istio JSON access-log line of a request to `api.pay` at now + `offset_ms`.
pub(crate) fn line(offset_ms: i64, principal: &str, status: u16, details: &str) -> String {
    line_at(&at(offset_ms), principal, status, details)
}

/// Six RBAC denials of `principal` at one instant 3 s ago. One instant, so that no boundary
/// of a rule's 1 s window can fall between them: spread over 50 ms, one run in a hundred cut
/// them three and three, and a burst of three fired twice.
pub(crate) fn denials(principal: &str) -> Vec<String> {
    let t = at(-3000);
    (0..6).map(|_| line_at(&t, principal, 403, DENIED)).collect()
}

/// [`line`] at an RFC 3339 time.
pub(crate) fn line_at(time: &str, principal: &str, status: u16, details: &str) -> String {
    format!(
        r#"{{"start_time":"{time}","method":"GET","path":"/admin","protocol":"HTTP/1.1","response_code":{status},"response_code_details":"{details}","upstream_cluster":"inbound|8080||","downstream_peer_uri_san":"{principal}","connection_security_policy":"mutual_tls","requested_server_name":"outbound_.8080_._.api.pay.svc.cluster.local","authority":"api.pay.svc.cluster.local:8080"}}"#
    )
}

pub(crate) const DENIED: &str = "rbac_access_denied_matched_policy[ns[pay]-policy[deny]-rule[0]]";

/// An ext_authz `Check` for `principal`; the gRPC status code of the answer.
pub(crate) fn check(addr: std::net::SocketAddr, principal: &str) -> i32 {
    check_with_headers(addr, principal, &[])
}

/// An ext_authz `Check` for `principal` carrying these HTTP request headers; the gRPC status
/// code of the answer.
pub(crate) fn check_with_headers(addr: std::net::SocketAddr, principal: &str, headers: &[(&str, &str)]) -> i32 {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut c = AuthorizationClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    principal: principal.to_string(),
                    ..Peer::default()
                }),
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        ..HttpRequest::default()
                    }),
                    ..AttrRequest::default()
                }),
                ..AttributeContext::default()
            }),
        };
        c.check(req)
            .await
            .expect("check")
            .into_inner()
            .status
            .expect("status")
            .code
    })
}

pub(crate) fn alerts(v: &Verity) -> Vec<serde_json::Value> {
    read_jsonl_lenient(&v.dir.path().join("alerts.jsonl"))
}

pub(crate) fn has(v: &Verity, rule: &str) -> bool {
    alerts(v).iter().any(|a| a["rule_id"] == rule)
}

/// Verity in `enforce` mode with only the `e2e-probe` rule (three RBAC denials of one
/// principal within a second revoke it for `ttl`), the ext_authz deny list on a free port,
/// alerts in `<dir>/alerts.jsonl` and three OTLP senders with tokens
/// ([`verity_e2e::post_log_lines_as`] 0, 1, 2), plus `env`; returns it and the ext_authz
/// address.
pub(crate) fn probing_verity(
    dir: tempfile::TempDir,
    ttl: &str,
    env: &[(&str, &str)],
) -> (Verity, std::net::SocketAddr) {
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    // Like the pack's denial burst, with a short window and the given TTL.
    std::fs::write(
        rules.join("probe.yaml"),
        format!("id: e2e-probe\ntitle: Probing\nseverity: high\nkind: detection\ndetection:\n  where: decision = 'deny_rbac'\n  group_by: [source_principal]\n  window: {{type: tumbling, size: 1s}}\n  having: count(*) >= 3\nrespond:\n  entity: source_principal\n  action: revoke\n  ttl: {ttl}\n"),
    )
    .expect("rule");
    let ext_authz = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (rules, listen, file, tokens) = (
        format!("[{}]", rules.display()),
        ext_authz.to_string(),
        dir.path().join("alerts.jsonl").display().to_string(),
        verity_e2e::sender_tokens_env(dir.path(), 3),
    );
    let mut all = vec![
        ("VERITY__OTLP__TOKENS", tokens.as_str()),
        ("VERITY__RULES__BUILTIN_PACK", "false"),
        ("VERITY__RULES__DIRS", rules.as_str()),
        ("VERITY__RULES__LATENESS_SECS", "0"),
        ("VERITY__CONTROL__MODE", "enforce"),
        ("VERITY__CONTROL__EXT_AUTHZ_LISTEN", listen.as_str()),
        ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
        ("VERITY__SINKS__OUTPUTS__FILE__PATH", file.as_str()),
    ];
    all.extend_from_slice(env);
    (Verity::start_in(dir, &all), ext_authz)
}

#[test]
fn probing_revocation_enforcement_verification_and_expiry() {
    // A TTL short enough to watch it expire, and long enough to outlast the restart below on
    // a loaded machine (6 s did not, once, with the build and a fuzzer beside the test).
    let (mut v, ext_authz) = probing_verity(
        tempfile::tempdir().expect("tmp"),
        "20s",
        &[("VERITY__CONTROL__GRACE_SECS", "1")],
    );
    // The revocation-not-enforced check is a pack rule; load it beside ours.
    std::fs::copy(
        verity_e2e::repo_root().join("rules/pack/zt-revoked-identity-succeeds.yaml"),
        v.dir.path().join("rules/zt-revoked-identity-succeeds.yaml"),
    )
    .expect("copy rule");
    assert!(eventually(Duration::from_secs(10), || v
        .stderr()
        .contains("rules reloaded")));

    assert_eq!(check(ext_authz, CART), 0, "allowed before anything happened");
    // Probing by cart and by istiod (protected), then a later event closes the window.
    // Six within 50 ms: if a one-second window boundary splits them, one side still has 3.
    let mut lines: Vec<String> = denials(CART);
    // The late success below is timed from now, not from when it is sent: on a loaded machine
    // the revocation can take long enough to apply that "2.5 s before sending" is after it.
    let before_revocation = at(-2500);
    lines.extend(denials(ISTIOD));
    lines.push(line(-500, "spiffe://cluster.local/ns/shop/sa/web", 200, "via_upstream"));
    assert_eq!(post_log_lines_as(v.http, 0, &lines), 200);
    assert!(
        eventually(Duration::from_secs(15), || has(&v, "verity-revocation-applied")),
        "{:?}\n{}",
        alerts(&v).iter().map(|a| a["rule_id"].clone()).collect::<Vec<_>>(),
        v.stderr()
    );
    assert_eq!(
        check(ext_authz, CART),
        tonic::Code::PermissionDenied as i32,
        "denied at once"
    );
    assert!(has(&v, "verity-revocation-refused"), "istiod is protected");
    assert_eq!(check(ext_authz, ISTIOD), 0, "a protected identity is never revoked");

    // A request that succeeded before the revocation took effect (late data) is not a
    // failure to enforce it, even once verification has started.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        post_log_lines_as(v.http, 0, &[line_at(&before_revocation, CART, 200, "via_upstream")]),
        200
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !has(&v, "zt-revoked-identity-succeeds"),
        "an event from before the revocation raised it"
    );
    // Once the grace period has passed, a request from cart that still succeeds (the mesh is
    // not enforcing) is caught. Traffic keeps coming, as it would.
    assert!(
        eventually(Duration::from_secs(10), || {
            assert_eq!(post_log_lines_as(v.http, 0, &[line(0, CART, 200, "via_upstream")]), 200);
            std::thread::sleep(Duration::from_millis(200));
            has(&v, "zt-revoked-identity-succeeds")
        }),
        "{}",
        v.stderr()
    );

    // A restart keeps the revocation in force.
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", v.stderr());
    v.restart();
    assert_eq!(
        check(ext_authz, CART),
        tonic::Code::PermissionDenied as i32,
        "restored after restart"
    );
    let store: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(v.dir.path().join("verity-data/revocations.json")).expect("store"),
    )
    .expect("json");
    assert_eq!(store[0]["principal"], "cluster.local/ns/shop/sa/cart");
    assert_eq!(store[0]["state"], "applied");

    // The TTL lifts it.
    assert!(
        eventually(Duration::from_secs(40), || has(&v, "verity-revocation-expired")),
        "{}",
        v.stderr()
    );
    assert_eq!(check(ext_authz, CART), 0, "allowed again after expiry");
    assert_eq!(v.metric_value("verity_alerts_dropped_total"), Some(0.0));
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", v.stderr());
}

#[test]
fn manual_revocations_through_the_authenticated_admin_api() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin\n").expect("token");
    let ext_authz = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Another control plane behind a signed webhook.
    use verity_e2e::siem::webhook::{IdField, WebhookFormat, WebhookServer, WebhookSettings};
    let hook = WebhookServer::start(WebhookSettings {
        format: WebhookFormat::Json,
        id: IdField::Pointer("/action".into()),
        ..WebhookSettings::signed(b"hook-key".to_vec())
    });
    let hook_key = dir.path().join("hook-key");
    std::fs::write(&hook_key, "hook-key").expect("key");
    let webhook = format!(
        "{{url: '{}', secret: {{file: '{}'}}}}",
        hook.url_for("/revocations"),
        hook_key.display()
    );
    let (listen, file, token_ref) = (
        ext_authz.to_string(),
        dir.path().join("alerts.jsonl").display().to_string(),
        format!("{{file: '{}'}}", token.display()),
    );
    let v = Verity::start_in(
        dir,
        &[
            ("VERITY__CONTROL__MODE", "enforce"),
            ("VERITY__CONTROL__EXT_AUTHZ_LISTEN", &listen),
            ("VERITY__ADMIN__TOKEN", &token_ref),
            ("VERITY__CONTROL__WEBHOOK", &webhook),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__SINKS__OUTPUTS__FILE__PATH", &file),
        ],
    );
    let cli = |args: &[&str]| verity_e2e::revocations_cli(v.admin, &token, args);
    // No token, wrong token: refused.
    let r = verity_e2e::http_request(v.admin, "GET", "/revocations", &[], b"").expect("get");
    assert_eq!(r.status, 401);
    let r = verity_e2e::http_request(v.admin, "GET", "/revocations", &[("Authorization", "Bearer nope")], b"")
        .expect("get");
    assert_eq!(r.status, 401);
    // Bad input: a clear answer, counted.
    let auth = [
        ("Authorization", "Bearer s3cret-admin"),
        ("Content-Type", "application/json"),
    ];
    for (body, error) in [
        (&br#"{"principal": "x", "ttl": "forever"}"#[..], "ttl must look like"),
        (br#"{"principal": "x", "ttl": "1h", "kind": "user"}"#, "kind must be"),
        (br#"{"principal": " ", "ttl": "1h"}"#, "principal is empty"),
        (br#"{"principal": "x", "ttl": "1h", "colour": "red"}"#, "unknown field"),
        (b"not json", "expected"),
    ] {
        let r = verity_e2e::http_request(v.admin, "POST", "/revocations", &auth, body).expect("post");
        assert_eq!(r.status, 400);
        let text = String::from_utf8_lossy(&r.body);
        assert!(text.contains(error), "{text}");
    }
    let r = verity_e2e::http_request(v.admin, "POST", "/revocations/rev-nothing/lift", &auth, b"").expect("lift");
    assert_eq!(r.status, 404);
    let requests = |action: &str, outcome: &str| {
        v.metric_value(&format!(
            "verity_revocation_api_requests_total{{action=\"{action}\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(requests("list", "unauthorized"), Some(2.0));
    assert_eq!(requests("add", "bad_request"), Some(5.0));
    assert_eq!(requests("lift", "not_found"), Some(1.0));
    assert_eq!(requests("add", "ok"), Some(0.0));

    // The webhook answers 503 three times: the revocation is in force at ext_authz at once,
    // but reported applied only once the webhook's receiver answered 2xx.
    hook.fail_next(3, 503);
    let (ok, out) = cli(&["add", CART, "--ttl", "1h", "--reason", "incident 4711"]);
    assert!(ok, "{out}");
    assert_eq!(check(ext_authz, CART), tonic::Code::PermissionDenied as i32);
    let (ok, out) = cli(&["list"]);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(list[0]["state"], "pending", "{list}");
    assert_eq!(list[0]["results"]["webhook"]["pending"], true, "{list}");
    assert!(
        eventually(Duration::from_secs(15), || {
            let (_, out) = cli(&["list"]);
            serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|l| l[0]["state"] == "applied")
        }),
        "{}",
        v.stderr()
    );
    assert_eq!(hook.pending_failures(), 0);
    assert!(eventually(Duration::from_secs(5), || has(
        &v,
        "verity-revocation-applied"
    )));
    let (ok, out) = cli(&["add", ISTIOD, "--ttl", "1h"]);
    assert!(!ok, "a protected identity is refused: {out}");
    assert!(out.contains("protected"), "{out}");
    let (ok, out) = cli(&["list"]);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    let id = list[0]["id"].as_str().expect("id").to_string();
    assert_eq!(list[0]["reason"], "incident 4711");
    let (ok, out) = cli(&["lift", &id]);
    assert!(ok, "{out}");
    assert_eq!(check(ext_authz, CART), 0, "lifted: allowed again");
    // The webhook got the revocation and its removal, signed (a bad signature is refused).
    assert!(
        eventually(Duration::from_secs(10), || hook.ids()
            == vec!["revoke".to_string(), "remove".to_string()]),
        "{:?}",
        hook.received()
    );
    assert_eq!(hook.rejected_signatures(), 0);
    assert_eq!(
        hook.received()[0]["revocation"]["principal"],
        "cluster.local/ns/shop/sa/cart"
    );
    assert_eq!(requests("add", "ok"), Some(1.0));
    assert_eq!(requests("add", "refused"), Some(1.0));
    assert!(
        requests("list", "ok").is_some_and(|n| n >= 2.0),
        "the CLI listed more than once"
    );
    assert_eq!(requests("lift", "ok"), Some(1.0));
    assert!(eventually(Duration::from_secs(10), || has(
        &v,
        "verity-revocation-lifted"
    ) && has(
        &v,
        "verity-revocation-applied"
    ) && has(
        &v,
        "verity-revocation-refused"
    )));
}

/// The forged burst "from" `*`: a rule asks to revoke the wildcard, Verity refuses and audits
/// it, and nobody is denied (with the Istio responder that would have been a DENY for every
/// mTLS caller in the mesh).
#[test]
fn a_wildcard_is_never_revoked() {
    let (v, ext_authz) = probing_verity(tempfile::tempdir().expect("tmp"), "1h", &[]);
    let mut lines: Vec<String> = denials("*");
    lines.push(line(-500, "spiffe://cluster.local/ns/shop/sa/web", 200, "via_upstream"));
    assert_eq!(post_log_lines_as(v.http, 0, &lines), 200);
    assert!(
        eventually(Duration::from_secs(15), || has(&v, "verity-revocation-refused")),
        "{:?}\n{}",
        alerts(&v).iter().map(|a| a["rule_id"].clone()).collect::<Vec<_>>(),
        v.stderr()
    );
    let refused = alerts(&v)
        .into_iter()
        .find(|a| a["rule_id"] == "verity-revocation-refused")
        .expect("refusal");
    assert_eq!(refused["severity"], "critical", "{refused}");
    assert!(
        refused["summary"]
            .as_str()
            .is_some_and(|s| s.contains("not one complete identity")),
        "{refused}"
    );
    assert!(!has(&v, "verity-revocation-applied"));
    assert_eq!(check(ext_authz, CART), 0, "nobody is denied");
    assert_eq!(check(ext_authz, "*"), 0);
    assert_eq!(
        v.metric_value(r#"verity_revocation_events_total{action="refused"}"#),
        Some(1.0),
        "{}",
        v.metrics_text()
    );
}

/// Telemetry that makes rules fire can use up the rule-driven budget, never the operator's:
/// with one rule-driven revocation allowed, the second probing principal is refused, and an
/// operator's revocation still goes through at once.
#[test]
fn an_attacker_cannot_use_up_the_operator_budget() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin\n").expect("token");
    let token_ref = format!("{{file: '{}'}}", token.display());
    let (v, ext_authz) = probing_verity(
        dir,
        "1h",
        &[
            ("VERITY__CONTROL__MAX_PER_WINDOW", "1"),
            ("VERITY__ADMIN__TOKEN", &token_ref),
        ],
    );
    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    const PAY: &str = "spiffe://cluster.local/ns/pay/sa/pay";
    let mut lines: Vec<String> = denials(CART);
    lines.extend(denials(WEB));
    lines.push(line(
        -500,
        "spiffe://cluster.local/ns/shop/sa/other",
        200,
        "via_upstream",
    ));
    assert_eq!(post_log_lines_as(v.http, 0, &lines), 200);
    assert!(
        eventually(Duration::from_secs(15), || has(&v, "verity-revocation-refused")),
        "{}",
        v.stderr()
    );
    let refused = alerts(&v)
        .into_iter()
        .find(|a| a["rule_id"] == "verity-revocation-refused")
        .expect("refusal");
    assert!(
        refused["summary"].as_str().is_some_and(|s| s.contains("rule-driven")),
        "{refused}"
    );
    let denied = [CART, WEB]
        .iter()
        .filter(|p| check(ext_authz, p) == tonic::Code::PermissionDenied as i32)
        .count();
    assert_eq!(denied, 1, "exactly one rule-driven revocation fits the budget");
    let (ok, out) = verity_e2e::revocations_cli(v.admin, &token, &["add", PAY, "--ttl", "1h"]);
    assert!(ok, "the operator's revocation was refused: {out}");
    assert_eq!(check(ext_authz, PAY), tonic::Code::PermissionDenied as i32);
}
