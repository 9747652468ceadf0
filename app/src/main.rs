//! The `verity` command line: `run`, `validate` and `normalize`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use verity::config::{self, LogFormat, Settings};
use verity::log_files::{self, ReadSettings};
use verity_collector::normalize::FormatHint;

#[derive(Parser)]
#[command(
    name = "verity",
    version,
    about = "Continuous zero-trust verification for service meshes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Rule files or directories (in addition to the built-in pack unless --no-builtin).
    #[arg(long)]
    rules: Vec<PathBuf>,
    /// Do not evaluate the built-in zero-trust pack.
    #[arg(long)]
    no_builtin: bool,
    /// Only events at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only events before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Treat this principal as revoked (repeatable).
    #[arg(long)]
    revoked: Vec<String>,
    /// Allowed event-time disorder, in seconds.
    #[arg(long, default_value_t = 5)]
    lateness_secs: u64,
    /// Keys a stateful rule may hold before the least recently seen are evicted (as
    /// `rules.max_keys`).
    #[arg(long, default_value_t = 100_000)]
    max_keys: usize,
    /// Threads reading and normalizing lines (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Threads evaluating the rules on each batch, each rule on one of them (default 1, as
    /// `rules.threads`; 0: one per core). The alerts do not depend on it.
    #[arg(long)]
    rule_threads: Option<usize>,
    /// Log files; `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector (OTLP gRPC and HTTP, admin endpoint) until SIGTERM or SIGINT.
    Run {
        /// YAML config file layered over the embedded defaults (env VERITY__* wins over both).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration and print every error with its path.
    Validate {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also print the effective configuration.
        #[arg(long)]
        print: bool,
        /// Also connect to every enabled output and run its health check (HEC health and
        /// token, Elasticsearch cluster, TCP/TLS connect, Kafka metadata, …), and to the
        /// Kubernetes API of `control.istio` (list, and a dry-run apply).
        #[arg(long)]
        check_sinks: bool,
    },
    /// A one-minute tour: Verity on embedded defaults, a synthetic mesh with scripted
    /// incidents, alerts as they happen, and a summary. Nothing to install or configure.
    Demo {
        /// How long the demo runs, in seconds.
        #[arg(long, default_value_t = 40)]
        seconds: u64,
        /// Plain text without terminal colours.
        #[arg(long)]
        no_color: bool,
    },
    /// List, add or lift revocations through a running Verity's admin API (needs
    /// `admin.token`; pass it in VERITY_ADMIN_TOKEN or --token-file).
    Revocations {
        /// The admin endpoint of the running Verity.
        #[arg(long, default_value = "http://127.0.0.1:9464", global = true)]
        admin: String,
        /// A file holding the admin token (else VERITY_ADMIN_TOKEN).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: RevocationsCommand,
    },
    /// Check or test rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Run rules over log files in event time and print alerts as JSON lines.
    Replay(ReplayArgs),
    /// Least privilege from evidence: learn AuthorizationPolicies from recorded traffic, and
    /// check recorded traffic against policies before applying them.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Normalize access-log lines from files (or - for stdin) and print events as JSON lines.
    Normalize {
        /// Input layout; `auto` detects it per line.
        #[arg(long, value_enum, default_value_t = FormatHint::Auto)]
        format: FormatHint,
        /// Files to read; `-` reads standard input.
        #[arg(required = true)]
        files: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Propose ALLOW AuthorizationPolicies, one per destination workload, from the requests
    /// the mesh allowed in these log files; each rule carries its evidence in annotations.
    /// Prints the policies as YAML (or writes one file each with --out) and, on stderr, what
    /// was left out and why.
    Learn {
        /// Workloads and their labels: `kubectl get pods,deployments,services -A -o yaml`, or
        /// Verity's short form (docs/policy.md). Selectors come from it.
        #[arg(long)]
        workloads: Option<PathBuf>,
        /// Leave out source -> destination edges with fewer allowed requests.
        #[arg(long, default_value_t = 1)]
        min_requests: u64,
        /// Distinct paths per source, method and port kept exact before they are generalized
        /// to prefixes.
        #[arg(long, default_value_t = 8)]
        max_paths: usize,
        /// Write one file per policy into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Annotate the proposals `istio.io/dry-run: "true"`: applying them stages them.
        #[arg(long)]
        dry_run: bool,
        /// Propose from the live traffic a running Verity has learned (`policy.learn.enabled`),
        /// through its admin API, instead of from files.
        #[arg(long, conflicts_with = "files")]
        live: bool,
        /// The running Verity, for --live.
        #[command(flatten)]
        endpoint: AdminEndpoint,
        /// Threads normalizing lines (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Access logs to learn from (any supported format).
        #[arg(required_unless_present = "live")]
        files: Vec<String>,
    },
    /// Evaluate recorded traffic against AuthorizationPolicies and report which requests would
    /// change outcome compared with what the mesh did. Exits 1 when any allowed request would
    /// be denied, so a policy change can be checked in CI before it is applied.
    Whatif {
        /// Policy files or directories (YAML, multi-document or `kubectl get -o yaml` lists).
        #[arg(long, required = true)]
        policies: Vec<PathBuf>,
        /// Workloads and their labels, to resolve selectors (see `learn`).
        #[arg(long)]
        workloads: Option<PathBuf>,
        /// The mesh's root namespace (`meshConfig.rootNamespace`).
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
        /// Treat dry-run policies as enforced (what promoting them would do).
        #[arg(long)]
        enforce_dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        workers: Option<usize>,
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Compare the policies in force with the traffic of an observation period: ALLOW rules
    /// no request used, DENY rules that never matched, and workloads without an ALLOW policy.
    Drift(DriftArgs),
    /// Promote a staged candidate policy (remove its dry-run annotation) through a running
    /// Verity's admin API; refused while its shadow assertion is violated.
    Promote {
        /// The candidate, `namespace/name`.
        policy: String,
        /// Why, for the audit event.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        endpoint: AdminEndpoint,
    },
}

/// A running Verity's admin API and its token.
#[derive(clap::Args)]
struct AdminEndpoint {
    /// The admin endpoint of the running Verity.
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    admin: String,
    /// A file holding the admin token (else VERITY_ADMIN_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DriftArgs {
    /// Policy files or directories in force.
    #[arg(long)]
    policies: Vec<PathBuf>,
    /// Read the policies in force from the cluster (every namespace), through the
    /// Kubernetes API.
    #[arg(long)]
    cluster: bool,
    /// The kubeconfig for --cluster (else in-cluster, $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context for --cluster.
    #[arg(long)]
    context: Option<String>,
    /// The AuthorizationPolicy API version for --cluster (`v1`, or `v1beta1` before Istio 1.22).
    #[arg(long, default_value = "v1")]
    api_version: String,
    /// Workloads and their labels, to resolve selectors and list workloads without an ALLOW
    /// policy (see `learn`).
    #[arg(long)]
    workloads: Option<PathBuf>,
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    workers: Option<usize>,
    /// Access logs of the observation period.
    #[arg(required = true)]
    files: Vec<String>,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate rule files; non-zero exit with precise errors.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run every rule's test cases; ends with `N passed, N failed`.
    Test {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Validate {
            config,
            print,
            check_sinks,
        } => validate(config, print, check_sinks),
        Command::Normalize { format, files } => normalize_files(format, &files),
        Command::Rules {
            command: RulesCommand::Check { paths },
        } => {
            let errors = verity::rules_cli::check(&paths, &mut std::io::stdout().lock());
            errors
                .map(|n| if n == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
                .map_err(Into::into)
        }
        Command::Rules {
            command: RulesCommand::Test { paths },
        } => {
            let r = verity::rules_cli::test(&paths, &mut std::io::stdout().lock());
            r.map(|(_, failed)| {
                if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
            .map_err(Into::into)
        }
        Command::Demo { seconds, no_color } => demo(seconds, !no_color),
        Command::Revocations {
            admin,
            token_file,
            command,
        } => revocations(&admin, token_file, command),
        Command::Replay(args) => replay(args),
        Command::Policy { command } => policy(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("verity: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<&PathBuf>) -> Result<Settings, ExitCode> {
    config::settings(config.map(PathBuf::as_path), std::env::vars()).map_err(|errors| {
        for e in &errors {
            eprintln!("config error: {e}");
        }
        ExitCode::from(2)
    })
}

/// Logs to stderr (text or JSON); with `telemetry.enabled`, spans also go out over OTLP.
fn init_logging(settings: &Settings) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = if settings.telemetry.enabled {
        Some(verity::telemetry::tracer_provider(&settings.telemetry)?)
    } else {
        None
    };
    let otel = provider.as_ref().map(verity::telemetry::tracing_layer);
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).init();
    Ok(provider)
}

fn run(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = match load(config.as_ref()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verity")
        .build()
        .context("cannot start the async runtime")?;
    // The OTLP span exporter's channel lives on the runtime.
    let tracer = {
        let _guard = runtime.enter();
        init_logging(&settings)?
    };
    tracing::info!(config = %settings.raw.redacted(), "effective configuration");
    let result = runtime.block_on(verity::wiring::run(settings, shutdown_signal(), |_| {}));
    if let Some(provider) = tracer {
        // Sends the spans still batched.
        let _ = runtime.block_on(async move { tokio::task::spawn_blocking(move || provider.shutdown()).await });
    }
    // A stage stuck in blocking I/O must not keep the process alive past the drain deadline.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop Verity");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn validate(config: Option<PathBuf>, print: bool, check_sinks: bool) -> anyhow::Result<ExitCode> {
    let s = match load(config.as_ref()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    // The certificate, key and CA files of every TLS listener must load as they would at start.
    if let Err(errors) = verity::config::listener_tls(&s) {
        for e in &errors {
            eprintln!("config error: {e}");
        }
        return Ok(ExitCode::from(2));
    }
    println!("configuration is valid");
    if print {
        println!("{}", serde_yaml::to_string(&s.raw.redacted())?);
    }
    if !check_sinks {
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reports = rt.block_on(verity_sinks::delivery::check_outputs(&s.sinks));
    let mut failed = 0;
    for r in &reports {
        match &r.result {
            Ok(what) => println!("output {} ({}): ok: {what}", r.sink, r.kind),
            Err(why) => {
                failed += 1;
                println!("output {} ({}): FAILED: {why}", r.sink, r.kind);
            }
        }
    }
    let mut checks = reports.len();
    if let Some(cfg) = &s.control.istio {
        checks += 1;
        let result = rt.block_on(async {
            let c = verity_control::istio::IstioController::connect(cfg.clone())
                .await
                .map_err(|e| e.to_string())?;
            c.check().await.map_err(|e| e.to_string())
        });
        match result {
            Ok(what) => println!("control.istio: ok: {what}"),
            Err(why) => {
                failed += 1;
                println!("control.istio: FAILED: {why}");
            }
        }
    }
    if failed > 0 {
        println!("{failed} of {checks} checks failed");
        return Ok(ExitCode::from(1));
    }
    println!("all {checks} checks passed");
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum RevocationsCommand {
    /// Every revocation with its state.
    List,
    /// Revoke a principal (SPIFFE identity, with or without spiffe://) for a time.
    Add {
        principal: String,
        #[arg(long)]
        ttl: String,
        #[arg(long)]
        reason: Option<String>,
        /// `principal` (a workload's SPIFFE identity) or `request_principal` (a JWT `iss/sub`).
        #[arg(long, default_value = "principal")]
        kind: String,
        /// The destination namespace (used by the Istio responder with `scope: destination`).
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Lift a revocation before its TTL.
    Lift { id: String },
}

fn revocations(admin: &str, token_file: Option<PathBuf>, command: RevocationsCommand) -> anyhow::Result<ExitCode> {
    let (path, body) = match &command {
        RevocationsCommand::List => ("/revocations".to_string(), None),
        RevocationsCommand::Add {
            principal,
            ttl,
            reason,
            kind,
            namespace,
        } => (
            "/revocations".to_string(),
            Some(
                serde_json::json!({"principal": principal, "ttl": ttl, "reason": reason, "kind": kind, "namespace": namespace}),
            ),
        ),
        RevocationsCommand::Lift { id } => (format!("/revocations/{id}/lift"), Some(serde_json::Value::Null)),
    };
    admin_call(admin, token_file, &path, body)
}

/// Calls the admin API with the admin token (a GET without a body, else a POST) and prints
/// the JSON answer; non-zero exit on an error status.
fn admin_call(
    admin: &str,
    token_file: Option<PathBuf>,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    let token = admin_token(token_file)?;
    let url = format!("{}{path}", admin.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = runtime.block_on(async move {
        let client = reqwest::Client::new();
        let req = match body {
            None => client.get(url),
            Some(serde_json::Value::Null) => client.post(url),
            Some(b) => client
                .post(url)
                .header("Content-Type", "application/json")
                .body(b.to_string()),
        };
        let resp = req
            .bearer_auth(token)
            .send()
            .await
            .context("cannot reach the admin API")?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::Ok((status, body))
    })?;
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn demo(seconds: u64, color: bool) -> anyhow::Result<ExitCode> {
    // Verity's own logs would interleave with the demo's view; keep only warnings.
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut out = std::io::stdout();
    let all = runtime.block_on(verity::demo::run(
        verity::demo::DemoOptions { seconds, color },
        &mut out,
    ))?;
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let ReplayArgs {
        rules,
        no_builtin,
        since,
        until,
        revoked,
        lateness_secs,
        max_keys,
        workers,
        rule_threads,
        files,
    } = args;
    let time = |s: Option<String>, what: &str| -> anyhow::Result<Option<i64>> {
        s.map(|t| {
            verity_model::time::parse_rfc3339_ns(&t).with_context(|| format!("--{what} {t:?} is not an RFC 3339 time"))
        })
        .transpose()
    };
    let opts = verity::replay::ReplayOptions {
        rules,
        builtin_pack: !no_builtin,
        since_ns: time(since, "since")?,
        until_ns: time(until, "until")?,
        revoked,
        lateness_ns: i64::try_from(lateness_secs).unwrap_or(5).saturating_mul(1_000_000_000),
        max_keys: max_keys.max(1),
        workers: workers.unwrap_or(ReadSettings::default().workers).max(1),
        rule_threads: rule_threads.unwrap_or(1).min(256),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    verity::replay::replay(&opts, &files, &mut out, &mut std::io::stderr())?;
    Ok(ExitCode::SUCCESS)
}

fn policy(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let default_workers = ReadSettings::default().workers;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        PolicyCommand::Learn {
            workloads,
            min_requests,
            max_paths,
            out: out_dir,
            dry_run,
            live,
            endpoint,
            workers,
            files,
        } => {
            if live {
                let (policies, report) = learned_live(endpoint, min_requests, max_paths, dry_run)?;
                verity::policy_cli::write_proposals(
                    &policies,
                    report,
                    out_dir.as_deref(),
                    &mut out,
                    &mut std::io::stderr(),
                )?;
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            let opts = verity::policy_cli::LearnOptions {
                workloads,
                settings: verity_policy::learn::LearnSettings {
                    min_requests: min_requests.max(1),
                    max_paths: max_paths.max(1),
                    dry_run,
                },
                out_dir,
                workers: workers.unwrap_or(default_workers).max(1),
            };
            verity::policy_cli::learn(&opts, &files, &mut out, &mut std::io::stderr())?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Whatif {
            policies,
            workloads,
            root_namespace,
            enforce_dry_run,
            json,
            workers,
            files,
        } => {
            let opts = verity::policy_cli::WhatifOptions {
                policies,
                workloads,
                root_namespace,
                enforce_dry_run,
                json,
                workers: workers.unwrap_or(default_workers).max(1),
            };
            let report = verity::policy_cli::whatif(&opts, &files, &mut out, &mut std::io::stderr())?;
            out.flush()?;
            Ok(if report.breaks_traffic() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        PolicyCommand::Promote {
            policy,
            reason,
            endpoint,
        } => admin_call(
            &endpoint.admin,
            endpoint.token_file,
            "/policies/promote",
            Some(serde_json::json!({"policy": policy, "reason": reason})),
        ),
        PolicyCommand::Drift(args) => {
            if args.policies.is_empty() && !args.cluster {
                anyhow::bail!("give --policies or --cluster");
            }
            let (mut policies, _) = verity_policy::object::read_paths(&args.policies)?;
            if args.cluster {
                policies.extend(cluster_policies(&args)?);
            }
            let opts = verity::policy_cli::DriftOptions {
                workloads: args.workloads,
                root_namespace: args.root_namespace,
                json: args.json,
                workers: args.workers.unwrap_or(default_workers).max(1),
            };
            verity::policy_cli::drift(&opts, &policies, &args.files, &mut out, &mut std::io::stderr())?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The policies a running Verity proposes from the live traffic it has learned.
fn learned_live(
    AdminEndpoint { admin, token_file }: AdminEndpoint,
    min_requests: u64,
    max_paths: usize,
    dry_run: bool,
) -> anyhow::Result<(
    Vec<verity_policy::AuthorizationPolicy>,
    verity_policy::learn::LearnReport,
)> {
    let token = admin_token(token_file)?;
    let url = format!(
        "{}/policies/learned?min_requests={min_requests}&max_paths={max_paths}&dry_run={dry_run}",
        admin.trim_end_matches('/')
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = runtime.block_on(async move {
        let resp = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .context("cannot reach the admin API")?;
        let status = resp.status();
        anyhow::Ok((status, resp.text().await.unwrap_or_default()))
    })?;
    if !status.is_success() {
        anyhow::bail!("admin API answered {status}: {body}");
    }
    #[derive(serde::Deserialize)]
    struct Learned {
        policies: Vec<verity_policy::AuthorizationPolicy>,
        report: verity_policy::learn::LearnReport,
    }
    let learned: Learned = serde_json::from_str(&body).context("the admin API's answer is not a proposal")?;
    Ok((learned.policies, learned.report))
}

fn admin_token(token_file: Option<PathBuf>) -> anyhow::Result<String> {
    Ok(match token_file {
        Some(p) => std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .trim()
            .to_string(),
        None => std::env::var("VERITY_ADMIN_TOKEN").context("set VERITY_ADMIN_TOKEN or pass --token-file")?,
    })
}

/// Lists every AuthorizationPolicy through the Kubernetes API.
fn cluster_policies(args: &DriftArgs) -> anyhow::Result<Vec<verity_policy::AuthorizationPolicy>> {
    let cfg = verity_control::config::IstioConfig {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        api_version: args.api_version.clone(),
        ..verity_control::config::IstioConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let objects = runtime.block_on(async {
        let controller = verity_control::istio::IstioController::connect(cfg).await?;
        anyhow::Ok(controller.list_all_policies().await?)
    })?;
    let (policies, _) = verity_policy::object::from_api_objects(objects).map_err(anyhow::Error::msg)?;
    eprintln!("drift: {} AuthorizationPolicies read from the cluster", policies.len());
    Ok(policies)
}

fn normalize_files(format: FormatHint, files: &[String]) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut stderr = std::io::stderr().lock();
    let (mut ok, mut failed) = (0u64, 0u64);
    let settings = ReadSettings {
        format,
        ..ReadSettings::default()
    };
    log_files::for_each_chunk(files, &settings, &|_| true, |chunk| -> anyhow::Result<()> {
        let name = files.get(chunk.file).map_or("-", String::as_str);
        for r in &chunk.rejects {
            failed += 1;
            writeln!(stderr, "{name}:{}: {}", r.line, r.rejection)?;
        }
        ok += chunk.events;
        if let Some(batch) = &chunk.batch {
            verity_model::json::write_jsonl(&mut out, batch)?;
        }
        Ok(())
    })?;
    out.flush()?;
    writeln!(stderr, "normalized {ok} lines, rejected {failed}")?;
    Ok(if ok == 0 && failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
