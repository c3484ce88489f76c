//! The `ecs-reloader` binary: argument parsing and choosing a driver; nothing else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ecs_reloader::aws::sdk::{self, SdkSettings};
use ecs_reloader::clock::SystemClock;
use ecs_reloader::config::Config;
use ecs_reloader::driver::cli::{self, Output, TerminalProgress};
use ecs_reloader::driver::setup;

#[derive(Parser)]
#[command(
    name = "ecs-reloader",
    version,
    about = "Roll ECS services whose secrets changed since their tasks started"
)]
struct Cli {
    /// Configuration file (TOML); every key can also be set as ECS_RELOADER_<SECTION>_<KEY>.
    #[arg(long, global = true, env = "ECS_RELOADER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ECS_RELOADER_LOG_FORMAT")]
    log_format: LogFormat,
    /// AWS region; wins over [aws] region, AWS_REGION and the profile's region.
    #[arg(long, global = true, value_name = "REGION")]
    region: Option<String>,
    /// Profile of the shared AWS config and credentials files (default: AWS_PROFILE, else `default`).
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Roll every stale service in scope.
    Reconcile(ReconcileArgs),
    /// Show what is stale and why; change nothing (same as `reconcile --dry-run`).
    Plan(ScopeArgs),
    /// Run as the long-lived operator: hear change events on an SQS queue, resync periodically.
    Serve(ServeArgs),
    /// Run as an AWS Lambda handler (also chosen when started as `bootstrap` by Lambda, i.e.
    /// with AWS_LAMBDA_RUNTIME_API set and no arguments).
    Lambda,
    /// Exit 0 if `serve` answers on its health endpoint: the container health check of an image
    /// with no shell or curl.
    Healthcheck {
        /// Address of `serve`'s endpoints.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The SQS queue EventBridge feeds (default: [events] queue_url).
    #[arg(long, env = "ECS_RELOADER_QUEUE_URL")]
    queue_url: Option<String>,
    /// Address of /healthz, /readyz and /metrics (default: [serve] listen).
    #[arg(long)]
    listen: Option<String>,
    /// Only this cluster (repeatable); default: [scope] clusters, or every cluster of the region.
    #[arg(long = "cluster")]
    clusters: Vec<String>,
}

#[derive(Args)]
struct ScopeArgs {
    /// Only this cluster (repeatable); default: [scope] clusters, or every cluster of the region.
    #[arg(long = "cluster")]
    clusters: Vec<String>,
    /// Only services that resolve this secret: a name, partial or full ARN, or SSM name/ARN (repeatable).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Args)]
struct ReconcileArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Show what would roll; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Trigger the rollouts and return, without watching health. With [rollout] canary, only a
    /// change's canary rolls until a later run sees it healthy.
    #[arg(long)]
    no_wait: bool,
}

/// Logs on stderr; colours only for a person at a terminal who has not asked for none
/// (<https://no-color.org>).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ECS_RELOADER_LOG")
        // aws-config logs at info and warn what a person does not need (which profile it read) or
        // what ecs-reloader says better itself (an invalid AWS_ENDPOINT_URL).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws_config=error"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        // A closed stderr (`2>&1 | head`) must not end in a panic.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// An error as one line for a person: its chain of causes, each once, no debug formatting. An
/// AWS call that could not be made at all says what to set, and which call found out.
fn one_line(e: &anyhow::Error) -> String {
    use ecs_reloader::aws::{AwsError, ErrorKind};
    use ecs_reloader::index::TargetError;
    use ecs_reloader::reconcile::ReconcileError;
    // AWS errors travel inside transparent wrappers, which hide them from `chain()`.
    fn target(t: &TargetError) -> Option<&AwsError> {
        match t {
            TargetError::Aws(a) => Some(a),
            _ => None,
        }
    }
    let aws = e.chain().find_map(|c| {
        if let Some(a) = c.downcast_ref::<AwsError>() {
            return Some(a);
        }
        if let Some(t) = c.downcast_ref::<TargetError>() {
            return target(t);
        }
        match c.downcast_ref::<ReconcileError>()? {
            ReconcileError::Aws(a) => Some(a),
            ReconcileError::Target(t) => target(t),
        }
    });
    if let Some(aws) = aws.filter(|a| a.kind == ErrorKind::Setup) {
        return format!("{} ({})", aws.message, aws.operation);
    }
    // Some errors repeat their source in their own text: say each thing once.
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// A line on stderr; a closed stderr is no reason to panic (`eprintln!` would).
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::main]
async fn main() -> ExitCode {
    // Lambda starts `bootstrap` with no arguments and AWS_LAMBDA_RUNTIME_API set.
    let cli =
        if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() && std::env::args_os().len() == 1 {
            Cli::parse_from(["ecs-reloader", "lambda"])
        } else {
            Cli::parse()
        };
    let log_format = cli.log_format;
    init_logging(log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            // Once: a structured line where logs are machine-read, a plain one for a person.
            match log_format {
                LogFormat::Json => tracing::error!(error = %one_line(&e), "exiting"),
                LogFormat::Text => say(format_args!("error: {}", one_line(&e))),
            }
            ExitCode::from(2)
        }
    }
}

/// Resolves on SIGTERM (what ECS sends) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops serve");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn serve(mut config: Config, aws: SdkSettings, args: ServeArgs) -> anyhow::Result<ExitCode> {
    use ecs_reloader::aws::queue::{Bus, Queue, SdkBus, SdkQueue};
    use ecs_reloader::driver::serve::{NotifyProgress, Server, Settings};
    use ecs_reloader::metrics::Metrics;

    if let Some(url) = args.queue_url {
        config.events.queue_url = url;
    }
    if let Some(listen) = args.listen {
        config.serve.listen = listen;
    }
    if !args.clusters.is_empty() {
        config.scope.clusters = args.clusters;
    }
    let listen: std::net::SocketAddr = config.serve.listen.parse().with_context(|| {
        format!(
            "--listen {:?} is not an address like 0.0.0.0:8080",
            config.serve.listen
        )
    })?;
    let sdk_config = sdk::load(&aws).await;
    let clients = sdk::clients_from(&sdk_config)?;
    let metrics = Arc::new(Metrics::new());
    let bus = (!config.notify.event_bus.is_empty())
        .then(|| Arc::new(SdkBus::new(&sdk_config, &config.notify.event_bus)) as Arc<dyn Bus>);
    let queue = (!config.events.queue_url.is_empty())
        .then(|| Arc::new(SdkQueue::new(&sdk_config, &config.events.queue_url)) as Arc<dyn Queue>);
    let progress = Arc::new(NotifyProgress::new(metrics.clone(), bus));
    let parts = setup::assemble(&config, clients, Arc::new(SystemClock), progress, true);
    let settings = Settings {
        clusters: config.scope.clusters.clone(),
        resync_interval: config.resync.interval.0,
        debounce: config.events.debounce.0,
        visibility: config.events.visibility_timeout.0,
        long_poll: Duration::from_secs(20),
        shutdown_grace: config.serve.shutdown_grace.0,
        settle_recheck: config.rollout.poll_interval.0.max(Duration::from_secs(30)),
    };
    let server = Server::new(parts, queue, metrics, settings);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let http = server.bind_http(listen, rx.clone()).await?;
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    server.run_until(rx).await;
    let _ = http.await;
    Ok(ExitCode::SUCCESS)
}

/// The variables the Lambda runtime sets: without them `lambda_runtime` would panic.
const LAMBDA_VARIABLES: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
];

/// Checks, before the runtime starts, that this is a Lambda execution environment.
fn lambda_environment(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let missing: Vec<&str> = LAMBDA_VARIABLES
        .into_iter()
        .filter(|k| env(k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "not in an AWS Lambda environment: {} not set (Lambda sets them for the `bootstrap` \
             of a provided.al2023 function); outside Lambda use `serve`, `reconcile` or `plan`",
            missing.join(", ")
        );
    }
    let memory = env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").unwrap_or_default();
    if memory.parse::<i32>().is_err() {
        anyhow::bail!("AWS_LAMBDA_FUNCTION_MEMORY_SIZE={memory:?} is not a number of megabytes");
    }
    let api = env("AWS_LAMBDA_RUNTIME_API").unwrap_or_default();
    if axum::http::Uri::try_from(api.as_str()).is_err() {
        anyhow::bail!("AWS_LAMBDA_RUNTIME_API={api:?} is not a host:port");
    }
    Ok(())
}

async fn lambda(config: Config, aws: SdkSettings) -> anyhow::Result<ExitCode> {
    use ecs_reloader::aws::queue::{Bus, SdkBus};
    use ecs_reloader::driver::lambda::Handler;
    use ecs_reloader::driver::serve::NotifyProgress;
    use ecs_reloader::metrics::Metrics;
    use lambda_runtime::{service_fn, LambdaEvent};

    lambda_environment(|k| std::env::var(k).ok())?;
    // Built once per execution environment: clients, and the task-definition cache within.
    let sdk_config = sdk::load(&aws).await;
    let clients = sdk::clients_from(&sdk_config)?;
    let bus = (!config.notify.event_bus.is_empty())
        .then(|| Arc::new(SdkBus::new(&sdk_config, &config.notify.event_bus)) as Arc<dyn Bus>);
    let progress = Arc::new(NotifyProgress::new(Arc::new(Metrics::new()), bus));
    let parts = setup::assemble(&config, clients, Arc::new(SystemClock), progress, false);
    let handler = Arc::new(Handler::new(parts, config.scope.clusters.clone()));
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<serde_json::Value>| {
        let handler = handler.clone();
        async move {
            let deadline = i64::try_from(ev.context.deadline)
                .ok()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::seconds(60));
            handler
                .handle(ev.payload, deadline)
                .await
                .map_err(|e| -> lambda_runtime::Error { Box::new(e) })
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("Lambda runtime: {}", sdk::causes(&*e)))?;
    Ok(ExitCode::SUCCESS)
}

async fn healthcheck(addr: &str) -> anyhow::Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        Ok::<_, std::io::Error>(answer.starts_with("HTTP/1.1 200"))
    };
    match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Ok(true)) => Ok(ExitCode::SUCCESS),
        Ok(Ok(false)) => Ok(ExitCode::from(1)),
        Ok(Err(e)) => {
            say(format_args!("healthcheck: {addr}: {e}"));
            Ok(ExitCode::from(1))
        }
        Err(_) => {
            say(format_args!("healthcheck: {addr}: no answer within 3 s"));
            Ok(ExitCode::from(1))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config =
        Config::load(cli.config.as_deref(), std::env::vars()).context("configuration")?;
    if let Some(region) = cli.region {
        config.aws.region = region;
    }
    let aws = SdkSettings {
        profile: cli.profile,
        ..setup::sdk_settings(&config)
    };
    let (scope, dry_run, wait) = match cli.command {
        Command::Reconcile(a) => (a.scope, a.dry_run, !a.no_wait),
        Command::Plan(s) => (s, true, false),
        Command::Serve(a) => return serve(config, aws, a).await,
        Command::Lambda => return lambda(config, aws).await,
        Command::Healthcheck { addr } => return healthcheck(&addr).await,
    };
    let clients = sdk::clients(&aws).await?;
    let parts = setup::assemble(
        &config,
        clients,
        Arc::new(SystemClock),
        Arc::new(TerminalProgress::new()),
        wait,
    );
    let opts = cli::Options {
        clusters: if scope.clusters.is_empty() {
            config.scope.clusters.clone()
        } else {
            scope.clusters
        },
        secrets: scope.secrets,
        dry_run,
        output: scope.output,
        max_settle_wait: Duration::from_secs(15),
    };
    let mut stdout = std::io::stdout();
    let ending = cli::run(&parts.reconciler, &parts.rollout, &opts, &mut stdout).await?;
    if ending.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        say(format_args!("ecs-reloader: {}", ending.message));
        Ok(ExitCode::from(1))
    }
}
