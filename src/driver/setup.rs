//! Wiring: the parts every driver runs, built in one place from a [`Config`] and a [`Mode`].
//!
//! [`sdk`] loads the SDK configuration and builds the clients and the outcome-event bus once;
//! [`assemble`] puts the guard, the rollout engine and the reconciler together over any clients
//! (the SDK's or the fake's).

use std::sync::Arc;

use crate::aws::guard::{self, Kind, Limits, Pace, Stats};
use crate::aws::queue::{Bus, SdkBus};
use crate::aws::sdk::{self, RetryMode, SdkSettings, SdkSetupError};
use crate::aws::Clients;
use crate::clock::Clock;
use crate::config::Config;
use crate::decide::Policy;
use crate::deployment;
use crate::lease::Leadership;
use crate::reconcile::{Mode, Reconciler, Settings};
use crate::rollout::engine::{self, Engine, EngineRollout};
use crate::rollout::Progress;

/// What the SDK needs from the configuration.
pub fn sdk_settings(config: &Config) -> SdkSettings {
    SdkSettings {
        region: (!config.aws.region.is_empty()).then(|| config.aws.region.clone()),
        // `--profile` only; the SDK reads AWS_PROFILE itself.
        profile: None,
        retry_mode: if config.aws.retry_mode == "adaptive" {
            RetryMode::Adaptive
        } else {
            RetryMode::Standard
        },
        max_attempts: config.aws.max_attempts,
    }
}

/// The guard's limits: each read kind's bucket from `[pacing]` (capped by `[scope]
/// reads_per_second` when set), `UpdateService` at `[rollout] updates_per_second` with no burst.
pub fn limits(config: &Config) -> Limits {
    let p = &config.pacing;
    let cap = config.scope.reads_per_second;
    let mut limits = Limits::default().with(
        Kind::UpdateService,
        Pace::new(config.rollout.updates_per_second, 1),
    );
    for (kind, rate, burst, _) in p.kinds() {
        let rate = if cap > 0.0 { rate.min(cap) } else { rate };
        limits = limits.with(kind, Pace::new(rate, burst));
    }
    limits.throttle_factor = p.throttle_factor;
    limits.floor_fraction = p.floor_fraction;
    limits.recovery = p.recovery.0;
    limits
}

fn deployment_limits(config: &Config) -> deployment::Limits {
    deployment::Limits {
        stuck_after: config.rollout.timeout.0,
        failed_tasks_threshold: i32::try_from(config.rollout.failed_tasks_threshold)
            .unwrap_or(i32::MAX),
    }
}

/// The engine's settings for a mode.
fn engine_settings(config: &Config, mode: Mode) -> engine::Settings {
    let r = &config.rollout;
    let limits = deployment_limits(config);
    engine::Settings {
        max_concurrent: r.max_concurrent,
        max_concurrent_per_cluster: (r.max_concurrent_per_cluster > 0)
            .then_some(r.max_concurrent_per_cluster),
        canary: r.canary,
        timeout: limits.stuck_after,
        failed_tasks_threshold: limits.failed_tasks_threshold,
        poll_interval: r.poll_interval.0,
        wait: mode == Mode::Watch,
    }
}

/// The reconciler's settings for a mode.
fn reconcile_settings(config: &Config, mode: Mode) -> Settings {
    Settings {
        policy: Policy {
            clock_skew: config.decide.clock_skew.0,
            rotation_grace: config.decide.rotation_grace.0,
        },
        scan_concurrency: config.scope.scan_concurrency,
        limits: deployment_limits(config),
        mode,
        canary: config.rollout.canary,
        clusters: config.scope.clusters.clone(),
        // Validated when the configuration was loaded.
        windows: crate::window::Windows::parse(&config.rollout.windows).unwrap_or_default(),
        notify_only: config.rollout.notify_only,
        // Two resync periods: one missed resync is tolerated, two are not.
        watch_max_age: config.resync.interval.0 * 2,
        settle_recheck: config
            .rollout
            .poll_interval
            .0
            .max(std::time::Duration::from_secs(1)),
        ..Settings::default()
    }
}

/// Everything a driver runs.
pub struct Parts {
    /// The reconcile core, with the rollout engine inside.
    pub reconciler: Reconciler,
    /// The rollout engine the reconciler acts through (for tests that drive it directly).
    pub rollout: Arc<EngineRollout>,
    /// API call counters of the guard.
    pub stats: Arc<Stats>,
}

/// Assembles the parts over raw `clients` (the SDK's or a fake's), for a sole replica.
pub fn assemble(
    config: &Config,
    clients: Clients,
    clock: Arc<dyn Clock>,
    progress: Arc<dyn Progress>,
    mode: Mode,
) -> Parts {
    assemble_with(config, clients, clock, progress, mode, Leadership::sole())
}

/// [`assemble`], for a replica that rolls only while `leadership` says it leads.
pub fn assemble_with(
    config: &Config,
    clients: Clients,
    clock: Arc<dyn Clock>,
    progress: Arc<dyn Progress>,
    mode: Mode,
    leadership: Arc<Leadership>,
) -> Parts {
    let (guarded, stats) =
        guard::guard_with(clients, limits(config), clock.clone(), leadership.clone());
    let rollout = Arc::new(EngineRollout::new(
        Engine::new(
            guarded.clone(),
            engine_settings(config, mode),
            progress,
            clock.clone(),
        )
        .with_leadership(leadership),
    ));
    let reconciler = Reconciler::new(
        guarded,
        clock,
        rollout.clone(),
        reconcile_settings(config, mode),
    );
    Parts {
        reconciler,
        rollout,
        stats,
    }
}

/// The SDK side of the wiring, built once per process.
pub struct Sdk {
    /// The shared SDK configuration (one HTTP client for every service client).
    pub config: aws_config::SdkConfig,
    /// The ECS, Secrets Manager and SSM clients.
    pub clients: Clients,
    /// The outcome-event bus, when `[notify] event_bus` names one.
    pub bus: Option<Arc<dyn Bus>>,
}

/// Loads the SDK configuration (`aws`: [`sdk_settings`] with the command line's `--profile`)
/// and builds the clients and the bus.
pub async fn sdk(config: &Config, aws: &SdkSettings) -> Result<Sdk, SdkSetupError> {
    let sdk_config = sdk::load(aws).await;
    let clients = sdk::clients_from(&sdk_config)?;
    let bus = (!config.notify.event_bus.is_empty())
        .then(|| Arc::new(SdkBus::new(&sdk_config, &config.notify.event_bus)) as Arc<dyn Bus>);
    Ok(Sdk {
        config: sdk_config,
        clients,
        bus,
    })
}
