//! Alert delivery benchmark: pushes N alerts through one output (spool, batching, encoding and
//! the real transport) into a local receiver and reports alerts/s until all are delivered.
//!
//! ```sh
//! verity-sink-bench --target rsyslog-tcp --alerts 100000
//! verity-sink-bench --target hec --alerts 100000
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use verity_model::alert::{Alert, AlertStatus, Evidence, Severity};
use verity_sinks::config::SinksConfig;

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Target {
    File,
    RsyslogTcp,
    RsyslogTls,
    Hec,
    Elastic,
    Webhook,
    Kafka,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    target: Target,
    #[arg(long, default_value_t = 100_000)]
    alerts: usize,
    /// Alerts per submit call (a pipeline batch's worth).
    #[arg(long, default_value_t = 100)]
    per_submit: usize,
    /// Kafka bootstrap servers, for `--target kafka`.
    #[arg(long)]
    brokers: Option<String>,
}

fn alert(i: usize) -> Alert {
    let mut group = BTreeMap::new();
    group.insert(
        "source_principal".to_string(),
        Some(format!("spiffe://cluster.local/ns/shop/sa/svc-{}", i % 50)),
    );
    let raw = format!(
        r#"[2026-11-22T10:00:00.000Z] "GET /admin/{i} HTTP/1.1" 403 - rbac_access_denied_matched_policy[ns[pay]-policy[deny]-rule[0]] - "-" 0 19 0 - "-" "curl/8.4.0" "id-{i}" "pay.pay:8080" "-" inbound|8080|| - 10.1.0.8:8080 10.1.0.4:41000 outbound_.8080_._.pay.pay.svc.cluster.local -"#
    );
    Alert {
        id: format!("bench-{i:016x}"),
        rule_id: "zt-rbac-denial-burst".into(),
        title: "RBAC denial burst from one principal".into(),
        severity: Severity::High,
        kind: "detection".into(),
        status: AlertStatus::Firing,
        tags: vec!["attack.t1046".into(), "zt.identity".into()],
        description: "A principal is probing services it is not allowed to reach.".into(),
        group,
        count: 12,
        aggregates: BTreeMap::new(),
        window_start: Some("2026-11-22T10:00:00Z".into()),
        window_end: Some("2026-11-22T10:01:00Z".into()),
        first_seen: "2026-11-22T10:00:00.000Z".into(),
        last_seen: "2026-11-22T10:00:40.000Z".into(),
        evidence: (0..5)
            .map(|_| Evidence {
                event_time: "2026-11-22T10:00:00.000Z".into(),
                source_principal: Some("spiffe://cluster.local/ns/shop/sa/cart".into()),
                destination_service: Some("pay.pay.svc.cluster.local".into()),
                status: Some(403),
                decision: "deny_rbac".into(),
                raw: raw.clone(),
                sender: None,
                sender_verified: false,
                ..Evidence::default()
            })
            .collect(),
        entity: None,
        respond: None,
        summary: "12 denials in a minute".into(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let spool = dir.path().join("spool");
    let token = dir.path().join("token");
    std::fs::write(&token, "bench-token")?;
    let secret = format!("{{file: '{}'}}", token.display());
    // Receivers live as long as the run.
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let (output, count): (String, Box<dyn Fn() -> usize>) = match args.target {
        Target::File => {
            let path = dir.path().join("alerts.jsonl");
            let p = path.clone();
            (
                format!("{{type: file, path: '{}'}}", path.display()),
                Box::new(move || std::fs::read_to_string(&p).map_or(0, |s| s.lines().count())),
            )
        }
        Target::RsyslogTcp | Target::RsyslogTls => {
            let r = verity_e2e::rsyslog::Rsyslog::start().map_err(anyhow::Error::msg)?;
            let cfg = match args.target {
                Target::RsyslogTcp => format!("{{type: syslog, address: '127.0.0.1:{}', format: cef}}", r.tcp_port()),
                _ => format!(
                    "{{type: syslog, address: '127.0.0.1:{}', transport: tls, format: leef, tls: {{ca_file: '{}', server_name: {}}}}}",
                    r.tls_port(),
                    r.ca_pem_path().display(),
                    r.server_name()
                ),
            };
            let r = std::sync::Arc::new(r);
            keep.push(Box::new(r.clone()));
            (cfg, Box::new(move || r.messages().len()))
        }
        Target::Hec => {
            let s = verity_e2e::siem::hec::HecServer::start(verity_e2e::siem::hec::HecSettings::new("bench-token"));
            let cfg = format!("{{type: splunk_hec, endpoint: '{}', token: {secret}}}", s.url());
            let s = std::sync::Arc::new(s);
            keep.push(Box::new(s.clone()));
            (cfg, Box::new(move || s.ids().len()))
        }
        Target::Elastic => {
            let s = verity_e2e::siem::elastic::ElasticServer::start(verity_e2e::siem::elastic::ElasticSettings::open());
            let cfg = format!("{{type: elasticsearch, endpoint: '{}'}}", s.url());
            let s = std::sync::Arc::new(s);
            keep.push(Box::new(s.clone()));
            (cfg, Box::new(move || s.ids().len()))
        }
        Target::Webhook => {
            let s = verity_e2e::siem::webhook::WebhookServer::start(
                verity_e2e::siem::webhook::WebhookSettings::signed(b"bench-token".to_vec()),
            );
            let cfg = format!("{{type: webhook, url: '{}/hook', secret: {secret}}}", s.url());
            let s = std::sync::Arc::new(s);
            keep.push(Box::new(s.clone()));
            (cfg, Box::new(move || s.ids().len()))
        }
        Target::Kafka => {
            let brokers = args
                .brokers
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--brokers is required"))?;
            (
                format!("{{type: kafka, brokers: '{brokers}', topic: verity-bench-alerts}}"),
                Box::new(|| 0),
            )
        }
    };
    let yaml = format!("spool_dir: '{}'\noutputs:\n  bench: {output}\n", spool.display());
    let config: SinksConfig = serde_yaml::from_str(&yaml)?;
    let errors = config.validate();
    anyhow::ensure!(errors.is_empty(), "{errors:?}");
    let rt = tokio::runtime::Runtime::new()?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = verity_sinks::SinkMetrics::register(&mut registry);
    let sinks = {
        let _guard = rt.enter();
        verity_sinks::SinkSet::start(&config, metrics)?
    };
    let alerts: Vec<Alert> = (0..args.alerts).map(alert).collect();
    let t0 = Instant::now();
    for chunk in alerts.chunks(args.per_submit.max(1)) {
        sinks.submit(chunk)?;
    }
    let spooled = t0.elapsed();
    while !sinks.is_drained() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let delivered = t0.elapsed();
    let received = count();
    println!(
        "{:?}: {} alerts spooled in {spooled:.2?} ({:.0}/s), delivered in {delivered:.2?} ({:.0}/s); receiver counted {received}",
        args.target,
        args.alerts,
        args.alerts as f64 / spooled.as_secs_f64(),
        args.alerts as f64 / delivered.as_secs_f64(),
    );
    rt.block_on(sinks.drain(tokio::time::Instant::now() + Duration::from_secs(5)));
    drop(keep);
    Ok(())
}
