//! The closed loop under attack, against the real binary: telemetry a compromised workload
//! can send must not make Verity revoke the wrong identity, go blind, count a record twice or
//! lose an alert. Each test is one attack and what Verity must do about it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use verity_e2e::{Verity, eventually, otlp_json_logs, post_log_lines, post_log_lines_as, post_logs_body_as};

use super::control::{
    CART, DENIED, alerts, at, check, check_with_headers, denials, has, line, line_at, probing_verity,
};

const GATEWAY: &str = "spiffe://cluster.local/ns/edge/sa/istio-ingressgateway-service-account";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const USER: &str = "https://idp.example.com/user-7";

/// [`line`] carrying an authenticated end user (`request_principal`).
fn line_with_user(offset_ms: i64, principal: &str, user: &str) -> String {
    line(offset_ms, principal, 403, DENIED).replacen('{', &format!(r#"{{"request_principal":"{user}","#), 1)
}

/// An ext_authz `Check` from `peer` carrying a JWT payload for `iss`/`sub` in `x-jwt-payload`.
fn check_with_jwt(addr: std::net::SocketAddr, peer: &str, iss: &str, sub: &str) -> i32 {
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::json!({"iss": iss, "sub": sub, "exp": 4_102_444_800u64}).to_string());
    check_with_headers(addr, peer, &[("x-jwt-payload", &payload)])
}

fn rule_ids(v: &Verity) -> Vec<String> {
    alerts(v)
        .iter()
        .filter_map(|a| a["rule_id"].as_str().map(str::to_string))
        .collect()
}

/// A burst reported by no authenticated sender is an alert, never a revocation.
#[test]
fn unverified_evidence_revokes_no_one() {
    let (v, ext_authz) = probing_verity(
        tempfile::tempdir().expect("tmp"),
        "1h",
        &[("VERITY__OTLP__ACCEPT_UNAUTHENTICATED", "true")],
    );
    let mut lines: Vec<String> = denials(CART);
    lines.push(line(-500, WEB, 200, "via_upstream"));
    assert_eq!(post_log_lines(v.http, &lines), 200, "anonymous, kept as unverified");
    assert!(
        eventually(Duration::from_secs(15), || has(&v, "verity-revocation-refused")),
        "{:?}\n{}",
        rule_ids(&v),
        v.stderr()
    );
    assert!(has(&v, "e2e-probe"), "the detection itself still fires");
    let refused = alerts(&v)
        .into_iter()
        .find(|a| a["rule_id"] == "verity-revocation-refused")
        .expect("refusal");
    assert!(
        refused["summary"]
            .as_str()
            .is_some_and(|s| s.contains("not acted on: unverified evidence")),
        "{refused}"
    );
    assert_eq!(check(ext_authz, CART), 0, "nobody is denied");
    assert!(!has(&v, "verity-revocation-applied"));
    assert_eq!(
        v.metric_value(r#"verity_revocation_refusals_total{reason="evidence"}"#),
        Some(1.0),
        "{}",
        v.metrics_text()
    );
}

/// A gateway forwards other identities' requests: an alert about it never revokes it. With
/// no end user in the evidence a person is asked to review; with one, the end user is
/// revoked, and ext_authz denies that user's JWT through any workload.
#[test]
fn an_intermediary_is_never_revoked() {
    let (v, ext_authz) = probing_verity(tempfile::tempdir().expect("tmp"), "1h", &[]);
    let mut lines: Vec<String> = denials(GATEWAY);
    lines.push(line(-1500, WEB, 200, "via_upstream"));
    assert_eq!(post_log_lines_as(v.http, 0, &lines), 200);
    assert!(
        eventually(Duration::from_secs(15), || has(&v, "verity-revocation-review")),
        "{:?}\n{}",
        rule_ids(&v),
        v.stderr()
    );
    assert_eq!(check(ext_authz, GATEWAY), 0, "the gateway is never revoked");
    assert_eq!(
        v.metric_value(r#"verity_revocation_refusals_total{reason="intermediary"}"#),
        Some(1.0)
    );

    // The same probing through the gateway, now by an authenticated end user.
    let mut lines: Vec<String> = (0..6).map(|i| line_with_user(-1000 + i * 10, GATEWAY, USER)).collect();
    lines.push(line(500, WEB, 200, "via_upstream"));
    assert_eq!(post_log_lines_as(v.http, 0, &lines), 200);
    assert!(
        eventually(Duration::from_secs(15), || has(&v, "verity-revocation-applied")),
        "{:?}\n{}",
        rule_ids(&v),
        v.stderr()
    );
    let applied = alerts(&v)
        .into_iter()
        .find(|a| a["rule_id"] == "verity-revocation-applied")
        .expect("applied");
    assert_eq!(applied["entity"]["kind"], "request_principal", "{applied}");
    assert_eq!(applied["entity"]["value"], USER, "{applied}");
    assert_eq!(check(ext_authz, GATEWAY), 0, "still not the gateway");
    let denied = tonic::Code::PermissionDenied as i32;
    assert_eq!(
        check_with_jwt(ext_authz, GATEWAY, "https://idp.example.com", "user-7"),
        denied
    );
    assert_eq!(
        check_with_jwt(ext_authz, WEB, "https://idp.example.com", "user-7"),
        denied
    );
    assert_eq!(
        check_with_jwt(ext_authz, GATEWAY, "https://idp.example.com", "user-8"),
        0
    );
}

/// One sender dates its records ahead (within the intake's five minutes, or centuries ahead):
/// the other senders' events are not made late, and a real burst that follows is caught.
#[test]
fn a_future_dated_record_does_not_blind_detection() {
    let (v, ext_authz) = probing_verity(tempfile::tempdir().expect("tmp"), "1h", &[]);
    let far = r#"{"start_time":"2261-01-01T00:00:00.000Z","method":"GET","path":"/","protocol":"HTTP/1.1","response_code":200,"response_code_details":"via_upstream","upstream_cluster":"inbound|8080||","downstream_peer_uri_san":"spiffe://cluster.local/ns/shop/sa/web","requested_server_name":"outbound_.8080_._.api.pay.svc.cluster.local"}"#;
    assert_eq!(post_log_lines_as(v.http, 1, &[far.to_string()]), 200);
    assert!(
        eventually(Duration::from_secs(10), || v
            .dead_letters()
            .iter()
            .any(|d| d["reason"] == "future_timestamp")),
        "{:?}",
        v.dead_letters()
    );
    // Four minutes ahead passes the intake check; it moves only sender 1's clock.
    assert_eq!(
        post_log_lines_as(v.http, 1, &[line(240_000, WEB, 200, "via_upstream")]),
        200
    );
    let mut lines: Vec<String> = denials(CART);
    lines.push(line(-500, WEB, 200, "via_upstream"));
    assert_eq!(post_log_lines_as(v.http, 0, &lines), 200);
    assert!(
        eventually(Duration::from_secs(15), || has(&v, "e2e-probe")),
        "the burst after the future-dated record was not detected: {:?}\n{}",
        rule_ids(&v),
        v.stderr()
    );
    assert!(eventually(Duration::from_secs(10), || check(ext_authz, CART)
        == tonic::Code::PermissionDenied as i32));
    assert_eq!(
        v.metric_value("verity_rules_late_events_total"),
        Some(0.0),
        "{}",
        v.metrics_text()
    );
}

/// Verity with one rule, `yaml`, alerts in `<dir>/alerts.jsonl`, one token sender, plus `env`.
fn verity_with_rule(dir: tempfile::TempDir, yaml: &str, env: &[(&str, &str)]) -> Verity {
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    std::fs::write(rules.join("rule.yaml"), yaml).expect("rule");
    let (rules, file, tokens) = (
        format!("[{}]", rules.display()),
        dir.path().join("alerts.jsonl").display().to_string(),
        verity_e2e::sender_tokens_env(dir.path(), 1),
    );
    let mut all = vec![
        ("VERITY__OTLP__TOKENS", tokens.as_str()),
        ("VERITY__RULES__BUILTIN_PACK", "false"),
        ("VERITY__RULES__DIRS", rules.as_str()),
        ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
        ("VERITY__SINKS__OUTPUTS__FILE__PATH", file.as_str()),
    ];
    all.extend_from_slice(env);
    Verity::start_in(dir, &all)
}

const BURST_OF_FIVE: &str = "id: e2e-burst\ntitle: Burst\nseverity: high\nkind: detection\ndetection:\n  where: decision = 'deny_rbac'\n  group_by: [source_principal]\n  window: {type: tumbling, size: 1h}\n  having: count(*) >= 5\n";

/// Four denials delivered three times (a client resending after lost answers) are four
/// denials: no burst of five. A fifth, new one then completes the burst.
#[test]
fn a_retried_request_is_counted_once() {
    let mut v = verity_with_rule(tempfile::tempdir().expect("tmp"), BURST_OF_FIVE, &[]);
    // Every denial at one moment, so no window boundary can split them.
    let t = at(-3000);
    let four: Vec<String> = (0..4).map(|_| line_at(&t, CART, 403, DENIED)).collect();
    let body = otlp_json_logs(&four);
    for _ in 0..3 {
        assert_eq!(post_logs_body_as(v.http, 0, body.as_bytes()), 200);
    }
    assert_eq!(
        v.metric_value(r#"verity_intake_duplicate_requests_total{outcome="acknowledged"}"#),
        Some(2.0),
        "{}",
        v.metrics_text()
    );
    assert_eq!(
        v.metric_value(r#"verity_records_accepted_total{source="otlp_http",format="envoy_json"}"#),
        Some(4.0),
        "{}",
        v.metrics_text()
    );
    // The positive control: one more, new denial makes five.
    assert_eq!(post_log_lines_as(v.http, 0, &[line_at(&t, CART, 403, DENIED)]), 200);
    let (status, _) = v.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", v.stderr());
    let bursts: Vec<serde_json::Value> = alerts(&v).into_iter().filter(|a| a["rule_id"] == "e2e-burst").collect();
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    assert_eq!(bursts[0]["count"], 5, "{}", bursts[0]);
}

/// A tmpfs of `size`, mounted at `dir` until dropped (needs root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self(dir.to_path_buf()))
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The spool's disk fills up while a burst is evaluated: the alerts are held (not dropped),
/// the sender is told to retry, nothing new is evaluated meanwhile; once space is freed the
/// held alerts are spooled and delivered, the resent request is acknowledged without being
/// counted again, and `verity_alerts_dropped_total` stays 0.
#[test]
fn alerts_survive_a_full_spool_disk() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = dir.path().join("spool");
    let Some(tmpfs) = verity_e2e::require(Tmpfs::mount(&spool, "2m"), "a tmpfs mount (root)") else {
        return;
    };
    let spool_env = spool.display().to_string();
    let mut v = verity_with_rule(
        dir,
        &BURST_OF_FIVE.replace("size: 1h", "size: 1s").replace(">= 5", ">= 3"),
        &[
            ("VERITY__SINKS__SPOOL_DIR", spool_env.as_str()),
            ("VERITY__RULES__LATENESS_SECS", "0"),
        ],
    );
    let filler = tmpfs.fill();
    let mut lines: Vec<String> = denials(CART);
    lines.push(line(-500, WEB, 200, "via_upstream"));
    let body = otlp_json_logs(&lines);
    assert_eq!(
        post_logs_body_as(v.http, 0, body.as_bytes()),
        503,
        "evaluated, alerts held: retry later"
    );
    assert!(
        v.metric_value("verity_alerts_held").is_some_and(|n| n >= 1.0),
        "{}",
        v.metrics_text()
    );
    assert_eq!(
        post_log_lines_as(v.http, 0, &[line(-400, WEB, 200, "via_upstream")]),
        503,
        "nothing new is evaluated while alerts are held"
    );
    assert_eq!(
        post_logs_body_as(v.http, 0, body.as_bytes()),
        503,
        "the resend waits too"
    );
    std::fs::remove_file(&filler).expect("free the disk");
    assert!(
        eventually(Duration::from_secs(15), || has(&v, "e2e-burst")),
        "{}",
        v.stderr()
    );
    assert_eq!(v.metric_value("verity_alerts_held"), Some(0.0));
    assert_eq!(
        post_logs_body_as(v.http, 0, body.as_bytes()),
        200,
        "acknowledged, not evaluated again"
    );
    assert_eq!(v.metric_value("verity_alerts_dropped_total"), Some(0.0));
    assert!(
        v.metric_value("verity_sink_spool_failures_total")
            .is_some_and(|n| n >= 1.0)
    );
    let (status, _) = v.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", v.stderr());
    let bursts = alerts(&v).into_iter().filter(|a| a["rule_id"] == "e2e-burst").count();
    assert_eq!(bursts, 1, "{:?}", rule_ids(&v));
    drop(tmpfs);
}

/// A SIGKILL loses at most one checkpoint interval of rule state: four denials before the
/// kill and one after still make the burst of five.
#[test]
fn open_windows_survive_a_sigkill() {
    let mut v = verity_with_rule(
        tempfile::tempdir().expect("tmp"),
        BURST_OF_FIVE,
        &[("VERITY__RULES__CHECKPOINT_SECS", "1")],
    );
    let t = at(-3000);
    let four: Vec<String> = (0..4).map(|_| line_at(&t, CART, 403, DENIED)).collect();
    assert_eq!(post_log_lines_as(v.http, 0, &four), 200);
    let checkpoint = v.dir.path().join("verity-data/state/e2e-burst.windows.json");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&checkpoint)
            .is_ok_and(|s| s.contains("\"count\":4"))),
        "no checkpoint of the open window: {}",
        v.stderr()
    );
    v.kill9();
    v.restart();
    assert_eq!(post_log_lines_as(v.http, 0, &[line_at(&t, CART, 403, DENIED)]), 200);
    let (status, _) = v.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", v.stderr());
    let bursts: Vec<serde_json::Value> = alerts(&v).into_iter().filter(|a| a["rule_id"] == "e2e-burst").collect();
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    assert_eq!(bursts[0]["count"], 5, "{}", bursts[0]);
}

/// The webhook responder delivers from a durable spool: a revocation made while the receiver
/// is down survives a SIGKILL, is delivered once the receiver is back, and only then reported
/// applied.
#[test]
fn webhook_revocations_survive_an_outage_and_a_sigkill() {
    use verity_e2e::siem::webhook::{IdField, WebhookFormat, WebhookServer, WebhookSettings};
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin\n").expect("token");
    let hook = WebhookServer::start(WebhookSettings {
        format: WebhookFormat::Json,
        id: IdField::Pointer("/action".into()),
        ..WebhookSettings::default()
    });
    hook.set_down(true);
    let webhook = format!("{{url: '{}', max_attempts: 2}}", hook.url_for("/revocations"));
    let token_ref = format!("{{file: '{}'}}", token.display());
    let mut v = Verity::start_in(
        dir,
        &[
            ("VERITY__CONTROL__MODE", "enforce"),
            ("VERITY__ADMIN__TOKEN", &token_ref),
            ("VERITY__CONTROL__WEBHOOK", &webhook),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
        ],
    );
    let cli = |v: &Verity, args: &[&str]| verity_e2e::revocations_cli(v.admin, &token, args);
    let state = |v: &Verity| {
        let (_, out) = cli(v, &["list"]);
        serde_json::from_str::<serde_json::Value>(&out).map_or(serde_json::Value::Null, |l| l[0]["state"].clone())
    };
    let (ok, out) = cli(&v, &["add", CART, "--ttl", "1h"]);
    assert!(ok, "{out}");
    assert_eq!(state(&v), "pending");
    assert!(
        v.dir.path().join("verity-data/spool/control-webhook").is_dir(),
        "the webhook spool"
    );
    v.kill9();
    v.restart();
    assert!(
        eventually(Duration::from_secs(15), || state(&v) == "failed"),
        "max_attempts failures are reported: {}",
        v.stderr()
    );
    hook.set_down(false);
    assert!(
        eventually(Duration::from_secs(30), || state(&v) == "applied"),
        "{}",
        v.stderr()
    );
    assert_eq!(hook.ids(), vec!["revoke".to_string()], "delivered once, from the spool");
}
