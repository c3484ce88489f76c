//! The `ecs-reloader` binary: argument parsing and choosing a driver; nothing else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ecs_reloader::aws::sdk::SdkSettings;
use ecs_reloader::clock::SystemClock;
use ecs_reloader::config::Config;
use ecs_reloader::driver::cli::{self, Output, TerminalProgress};
use ecs_reloader::driver::{healthcheck, lambda, serve, setup};
use ecs_reloader::reconcile::Mode;

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
        /// Address of `serve`'s endpoints (default: `[serve] listen`, on loopback when it
        /// listens on every address).
        #[arg(long)]
        addr: Option<String>,
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
    /// Only the targets of this account (repeatable; with [[targets]] in the configuration). The
    /// global --region likewise keeps only the targets of that region.
    #[arg(long = "account", value_name = "ACCOUNT")]
    accounts: Vec<String>,
    /// Only services that resolve this secret: a name, partial or full ARN, or SSM name/ARN (repeatable).
    /// Naming secrets approves notify-only services that resolve them.
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Only this service: CLUSTER/SERVICE, or a name in any cluster (repeatable). Naming a
    /// service approves it if it is notify-only.
    #[arg(long = "service")]
    services: Vec<String>,
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
    /// Roll now even outside maintenance windows: an emergency override, only with --secret or
    /// --service.
    #[arg(long)]
    ignore_windows: bool,
    /// Roll the services named with --service even if their rollout starts a different image
    /// than they run (a mutable tag moved since their deployment): the approval
    /// `[rollout] image_drift = "hold"` asks for.
    #[arg(long)]
    allow_image_drift: bool,
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
            ReconcileError::NoSuchService(_) => None,
        }
    });
    if let Some(aws) = aws.filter(|a| a.kind == ErrorKind::Setup) {
        return format!("{} ({})", aws.message, aws.operation);
    }
    // Some errors repeat their source in their own text: say each thing once.
    ecs_reloader::aws::sdk::causes(e.as_ref())
}

/// A line on stderr; a closed stderr is no reason to panic (`eprintln!` would).
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Worker threads of the runtime, at most. Everything the operator does waits on AWS (and on its
/// own pacing), so two workers are as fast as many (measured: one or two give the same resync time
/// and peak memory, BENCHMARKS.md §5); without a cap, tokio starts one per core of the host,
/// each with its stack and its own malloc arena, so that the footprint would grow with the
/// machine it lands on (an EC2 container instance) instead of with the fleet.
const MAX_WORKERS: usize = 2;

/// Blocking threads (DNS lookups, file reads), at most: tokio's default is 512.
const MAX_BLOCKING: usize = 8;

fn main() -> ExitCode {
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, MAX_WORKERS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(MAX_BLOCKING)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run_main()),
        Err(e) => {
            say(format_args!("error: cannot start the async runtime: {e}"));
            ExitCode::from(2)
        }
    }
}

async fn run_main() -> ExitCode {
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config =
        Config::load(cli.config.as_deref(), std::env::vars()).context("configuration")?;
    // With targets, --region also keeps only the targets of that region.
    let mut regions = Vec::new();
    if let Some(region) = cli.region {
        if !config.targets.is_empty() {
            regions.push(region.clone());
        }
        config.aws.region = region;
    }
    let aws = SdkSettings {
        profile: cli.profile,
        ..setup::sdk_settings(&config)
    };
    let (scope, dry_run, mode, ignore_windows, allow_image_drift) = match cli.command {
        Command::Reconcile(a) => {
            let mode = if a.no_wait {
                Mode::FireAndForget
            } else {
                Mode::Watch
            };
            if a.ignore_windows && a.scope.secrets.is_empty() && a.scope.services.is_empty() {
                anyhow::bail!(
                    "--ignore-windows rolls outside maintenance windows only what you name: add --secret or --service"
                );
            }
            if a.allow_image_drift && a.scope.services.is_empty() {
                anyhow::bail!(
                    "--allow-image-drift approves a different image only for the services you name: add --service"
                );
            }
            (
                a.scope,
                a.dry_run,
                mode,
                a.ignore_windows,
                a.allow_image_drift,
            )
        }
        // The same pass as `reconcile --dry-run`, so that the plan is what a run would do.
        Command::Plan(s) => (s, true, Mode::Watch, false, false),
        Command::Serve(a) => {
            let overrides = serve::Overrides {
                queue_url: a.queue_url,
                listen: a.listen,
                clusters: a.clusters,
            };
            serve::run(config, &aws, overrides, shutdown_signal()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Lambda => {
            lambda::run(&config, &aws).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Healthcheck { addr } => {
            let addr = addr.unwrap_or_else(|| healthcheck::local(&config.serve.listen));
            return Ok(match healthcheck::probe(&addr).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(why) => {
                    say(format_args!("healthcheck: {addr}: {why}"));
                    ExitCode::from(1)
                }
            });
        }
    };
    let sdk = setup::sdk(&config, &aws).await?;
    let fleet = setup::fleet(
        &config,
        &sdk,
        Arc::new(SystemClock),
        Arc::new(TerminalProgress::new()),
        mode,
        None,
        &scope.accounts,
        &regions,
    )
    .await?;
    let opts = cli::Options {
        clusters: scope.clusters,
        secrets: scope.secrets,
        services: scope.services,
        ignore_windows,
        allow_image_drift,
        dry_run,
        output: scope.output,
    };
    let mut stdout = std::io::stdout();
    let ending = cli::run(&fleet, &opts, &mut stdout).await?;
    if ending.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        say(format_args!("ecs-reloader: {}", ending.message));
        Ok(ExitCode::from(1))
    }
}
