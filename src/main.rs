//! The `ecs-reloader` binary: argument parsing and choosing a driver; nothing else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
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
    /// The SQS queue EventBridge feeds (default: [events] queue_url, which the variable
    /// ECS_RELOADER_EVENTS_QUEUE_URL sets like any other key: one name, checked by the loader).
    #[arg(long)]
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ECS_RELOADER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
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

async fn serve(mut config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    use ecs_reloader::aws::queue::{Bus, Queue, SdkBus, SdkQueue};
    use ecs_reloader::aws::sdk;
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
    let sdk_config = sdk::load(&setup::sdk_settings(&config)).await;
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

async fn lambda(config: Config) -> anyhow::Result<ExitCode> {
    use ecs_reloader::aws::queue::{Bus, SdkBus};
    use ecs_reloader::aws::sdk;
    use ecs_reloader::driver::lambda::Handler;
    use ecs_reloader::driver::serve::NotifyProgress;
    use ecs_reloader::metrics::Metrics;
    use lambda_runtime::{service_fn, LambdaEvent};

    // Built once per execution environment: clients, and the task-definition cache within.
    let sdk_config = sdk::load(&setup::sdk_settings(&config)).await;
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
    .map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))?;
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
            eprintln!("healthcheck: {addr}: {e}");
            Ok(ExitCode::from(1))
        }
        Err(_) => {
            eprintln!("healthcheck: {addr}: no answer within 3 s");
            Ok(ExitCode::from(1))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref(), std::env::vars()).context("configuration")?;
    let (scope, dry_run, wait) = match cli.command {
        Command::Reconcile(a) => (a.scope, a.dry_run, !a.no_wait),
        Command::Plan(s) => (s, true, false),
        Command::Serve(a) => return serve(config, a).await,
        Command::Lambda => return lambda(config).await,
        Command::Healthcheck { addr } => return healthcheck(&addr).await,
    };
    let clients = setup::sdk_clients(&config).await?;
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
        eprintln!("ecs-reloader: {}", ending.message);
        Ok(ExitCode::from(1))
    }
}
