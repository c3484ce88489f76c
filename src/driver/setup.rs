//! Building the parts from a [`Config`]: the same for every driver.

use std::sync::Arc;

use crate::aws::guard::{self, Limits, Stats};
use crate::aws::sdk::{self, RetryMode, SdkSettings, SdkSetupError};
use crate::aws::Clients;
use crate::clock::Clock;
use crate::config::Config;
use crate::decide::Policy;
use crate::reconcile::{Reconciler, Settings};
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

/// The guard's limits.
pub fn limits(config: &Config) -> Limits {
    Limits {
        updates_per_second: config.rollout.updates_per_second,
        reads_per_second: config.scope.reads_per_second,
        ..Limits::default()
    }
}

/// The engine's settings; `wait` is false for `--no-wait` and the Lambda.
pub fn engine_settings(config: &Config, wait: bool) -> engine::Settings {
    let r = &config.rollout;
    engine::Settings {
        max_concurrent: r.max_concurrent,
        max_concurrent_per_cluster: (r.max_concurrent_per_cluster > 0)
            .then_some(r.max_concurrent_per_cluster),
        canary: r.canary,
        timeout: r.timeout.0,
        failed_tasks_threshold: i32::try_from(r.failed_tasks_threshold).unwrap_or(i32::MAX),
        poll_interval: r.poll_interval.0,
        wait,
    }
}

/// The reconciler's settings.
pub fn reconcile_settings(config: &Config) -> Settings {
    Settings {
        policy: Policy {
            clock_skew: config.decide.clock_skew.0,
            rotation_grace: config.decide.rotation_grace.0,
        },
        scan_concurrency: config.scope.scan_concurrency,
        stuck_after: config.rollout.timeout.0,
        failed_tasks_threshold: i32::try_from(config.rollout.failed_tasks_threshold)
            .unwrap_or(i32::MAX),
        gate_canary: false,
    }
}

/// Everything a driver runs.
pub struct Parts {
    /// The reconcile core.
    pub reconciler: Reconciler,
    /// The rollout engine.
    pub rollout: EngineRollout,
    /// API call counters of the guard.
    pub stats: Arc<Stats>,
}

/// Assembles the parts over raw `clients` (the SDK's or a fake's).
pub fn assemble(
    config: &Config,
    clients: Clients,
    clock: Arc<dyn Clock>,
    progress: Arc<dyn Progress>,
    wait: bool,
) -> Parts {
    let (guarded, stats) = guard::guard(clients, limits(config), clock.clone());
    // Without waiting, the canary is gated through AWS state across runs instead.
    let settings = Settings {
        gate_canary: !wait && config.rollout.canary,
        ..reconcile_settings(config)
    };
    let reconciler = Reconciler::new(guarded.clone(), clock, settings);
    let rollout = EngineRollout::new(Engine::new(
        guarded,
        engine_settings(config, wait),
        progress,
    ));
    Parts {
        reconciler,
        rollout,
        stats,
    }
}

/// The SDK's clients for this configuration.
pub async fn sdk_clients(config: &Config) -> Result<Clients, SdkSetupError> {
    sdk::clients(&sdk_settings(config)).await
}
