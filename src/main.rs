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
    /// Trigger the rollouts and return, without watching them become healthy (no canary).
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
    let cli = Cli::parse();
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref(), std::env::vars()).context("configuration")?;
    let (scope, dry_run, wait) = match cli.command {
        Command::Reconcile(a) => (a.scope, a.dry_run, !a.no_wait),
        Command::Plan(s) => (s, true, false),
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
