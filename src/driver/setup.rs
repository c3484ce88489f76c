//! Wiring: the parts every driver runs, built in one place from a [`Config`] and a [`Mode`].
//!
//! [`sdk`] loads the SDK configuration and builds the clients and the outcome-event bus once;
//! [`assemble`] puts the guard, the rollout engine and the reconciler together over any clients
//! (the SDK's or the fake's).

use std::sync::Arc;

use crate::aws::guard::{self, Kind, Limits, Pace, Stats};
use crate::aws::queue::{Bus, SdkBus};
use crate::aws::sdk::{self, SdkSettings, SdkSetupError};
use crate::aws::Clients;
use crate::clock::Clock;
use crate::config::Config;
use crate::decide::Policy;
use crate::deployment;
use crate::lease::Leadership;
use crate::reconcile::{Mode, Reconciler, Settings};
use crate::rollout::engine::{self, Engine, EngineRollout};
use crate::rollout::Progress;
use crate::targets::{Fleet, Member, RoutedSecrets};

/// What the SDK needs from the configuration.
pub fn sdk_settings(config: &Config) -> SdkSettings {
    SdkSettings {
        region: (!config.aws.region.is_empty()).then(|| config.aws.region.clone()),
        // `--profile` only; the SDK reads AWS_PROFILE itself.
        profile: None,
        retry_mode: config.aws.retry_mode,
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
        codedeploy: r.codedeploy,
    }
}

/// The reconciler's settings for a mode.
fn reconcile_settings(config: &Config, mode: Mode) -> Settings {
    Settings {
        policy: Policy {
            clock_skew: config.decide.clock_skew.0,
            rotation_grace: config.decide.rotation_grace.0,
            stuck_after: config.rollout.timeout.0,
            codedeploy: config.rollout.codedeploy,
        },
        scan_concurrency: config.scope.scan_concurrency,
        limits: deployment_limits(config),
        mode,
        canary: config.rollout.canary,
        clusters: config.scope.clusters.clone(),
        windows: config.rollout.windows.clone(),
        notify_only: config.rollout.notify_only,
        image_drift: config.rollout.image_drift,
        tasks: config.scope.tasks,
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

/// One target of the configuration: an account (a role to assume in it, or the operator's own
/// credentials) in one region, with its clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// The account (empty: the operator's own, not named).
    pub account: String,
    /// The region (empty: the SDK's default region).
    pub region: String,
    /// The role to assume, if any.
    pub role: Option<sdk::AssumeRole>,
    /// Clusters (empty: every cluster of the region).
    pub clusters: Vec<String>,
}

/// The configuration's targets, one per account and region; without `[[targets]]`, the
/// operator's own account in `[aws] region`.
pub fn target_specs(config: &Config) -> Vec<TargetSpec> {
    if config.targets.is_empty() {
        return vec![TargetSpec {
            account: String::new(),
            region: config.aws.region.clone(),
            role: None,
            clusters: config.scope.clusters.clone(),
        }];
    }
    let mut out = Vec::new();
    for t in &config.targets {
        let role = t.role_arn.as_ref().map(|arn| sdk::AssumeRole {
            arn: arn.0.clone(),
            external_id: t.external_id.as_ref().map(|e| e.0.clone()),
            session_name: t.session_name.0.clone(),
        });
        let account = t
            .role_arn
            .as_ref()
            .map(|a| a.account().to_string())
            .unwrap_or_default();
        let regions: Vec<String> = if t.regions.is_empty() {
            vec![config.aws.region.clone()]
        } else {
            t.regions.iter().map(|r| r.0.clone()).collect()
        };
        for region in regions {
            out.push(TargetSpec {
                account: account.clone(),
                region,
                role: role.clone(),
                clusters: t
                    .clusters
                    .clone()
                    .unwrap_or_else(|| config.scope.clusters.clone()),
            });
        }
    }
    out
}

/// Why `--account` / `--region` selected nothing.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value}: no configured target has it (targets: {known})")]
pub struct NoSuchTarget {
    /// `--account` or `--region`.
    pub flag: &'static str,
    /// What was given.
    pub value: String,
    /// The configured targets, for the message.
    pub known: String,
}

/// Keeps the targets of `accounts` (none: all) in `regions` (none: all); a value that matches no
/// target is an error, so that a typo does not pass for "nothing to do".
pub fn select_targets(
    specs: Vec<TargetSpec>,
    accounts: &[String],
    regions: &[String],
) -> Result<Vec<TargetSpec>, NoSuchTarget> {
    let known = specs
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                if s.account.is_empty() {
                    "(own account)"
                } else {
                    &s.account
                },
                if s.region.is_empty() {
                    "(default region)"
                } else {
                    &s.region
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    for (flag, values, field) in [
        (
            "--account",
            accounts,
            (|s: &TargetSpec| s.account.clone()) as fn(&TargetSpec) -> String,
        ),
        ("--region", regions, |s: &TargetSpec| s.region.clone()),
    ] {
        if let Some(v) = values
            .iter()
            .find(|v| !specs.iter().any(|s| field(s) == **v))
        {
            return Err(NoSuchTarget {
                flag,
                value: v.clone(),
                known,
            });
        }
    }
    Ok(specs
        .into_iter()
        .filter(|s| accounts.is_empty() || accounts.contains(&s.account))
        .filter(|s| regions.is_empty() || regions.contains(&s.region))
        .collect())
}

/// The SDK clients of each target, all from `sdk`'s configuration (one HTTP client and TLS
/// set-up for every target); one STS session per role, shared by its regions.
pub async fn target_clients(
    sdk: &Sdk,
    specs: Vec<TargetSpec>,
) -> Result<Vec<(TargetSpec, Clients)>, SdkSetupError> {
    let mut roles: std::collections::HashMap<
        sdk::AssumeRole,
        aws_credential_types::provider::SharedCredentialsProvider,
    > = std::collections::HashMap::new();
    let mut out = Vec::new();
    for spec in specs {
        let provider = match &spec.role {
            Some(r) => Some(match roles.get(r) {
                Some(p) => p.clone(),
                None => {
                    let p = sdk::assume_role(&sdk.config, r).await;
                    roles.insert(r.clone(), p.clone());
                    p
                }
            }),
            None => None,
        };
        let own_region = spec.region.is_empty() || spec.region == sdk.clients.region;
        let clients = if own_region && provider.is_none() {
            sdk.clients.clone()
        } else {
            let region = if spec.region.is_empty() {
                sdk.clients.region.clone()
            } else {
                spec.region.clone()
            };
            let config = sdk::target_config(&sdk.config, &region, provider.as_ref());
            sdk::clients_as(&config, spec.role.as_ref().map(|r| r.arn.as_str()))?
        };
        out.push((spec, clients));
    }
    Ok(out)
}

/// Assembles one reconciler per target over its raw clients, each with its own guard (token
/// buckets per account and region) and rollout engine, into a [`Fleet`]. A secret of another
/// target's account is read with that target's (guarded) clients ([`RoutedSecrets`]).
pub fn assemble_fleet(
    config: &Config,
    targets: Vec<(TargetSpec, Clients)>,
    clock: Arc<dyn Clock>,
    progress: Arc<dyn Progress>,
    mode: Mode,
    leadership: Option<Arc<Leadership>>,
) -> Fleet {
    let leadership = leadership.unwrap_or_else(Leadership::sole);
    let guarded: Vec<(TargetSpec, Clients, Arc<Stats>)> = targets
        .into_iter()
        .map(|(spec, clients)| {
            let (g, stats) =
                guard::guard_with(clients, limits(config), clock.clone(), leadership.clone());
            (spec, g, stats)
        })
        .collect();
    let mut by_account: std::collections::HashMap<String, Arc<dyn crate::aws::Secrets>> =
        std::collections::HashMap::new();
    for (spec, g, _) in &guarded {
        if !spec.account.is_empty() {
            by_account
                .entry(spec.account.clone())
                .or_insert_with(|| g.secrets.clone());
        }
    }
    let mut all_stats = Vec::new();
    let mut members = Vec::new();
    for (spec, mut g, stats) in guarded {
        let others = by_account
            .iter()
            .filter(|(a, _)| **a != spec.account)
            .map(|(a, s)| (a.clone(), s.clone()))
            .collect();
        g.secrets = Arc::new(RoutedSecrets::new(g.secrets.clone(), others));
        let rollout = Arc::new(EngineRollout::new(
            Engine::new(
                g.clone(),
                engine_settings(config, mode),
                progress.clone(),
                clock.clone(),
            )
            .with_leadership(leadership.clone()),
        ));
        let settings = Settings {
            clusters: spec.clusters.clone(),
            ..reconcile_settings(config, mode)
        };
        let region = g.region.clone();
        members.push(Member {
            account: spec.account.clone(),
            region,
            role_arn: spec.role.as_ref().map(|r| r.arn.clone()),
            reconciler: Reconciler::new(g, clock.clone(), rollout, settings),
        });
        all_stats.push(stats);
    }
    Fleet::new(members, clock, Stats::sum_of(all_stats))
}

/// Why the targets could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FleetSetupError {
    /// The SDK configuration.
    #[error(transparent)]
    Sdk(#[from] SdkSetupError),
    /// `--account` / `--region` named no target.
    #[error(transparent)]
    Select(#[from] NoSuchTarget),
}

/// Every configured target (of `accounts` in `regions`, when given) assembled over the SDK's
/// clients: what each driver runs. `leadership`: `None` for a sole replica.
#[allow(clippy::too_many_arguments)]
pub async fn fleet(
    config: &Config,
    sdk: &Sdk,
    clock: Arc<dyn Clock>,
    progress: Arc<dyn Progress>,
    mode: Mode,
    leadership: Option<Arc<Leadership>>,
    accounts: &[String],
    regions: &[String],
) -> Result<Fleet, FleetSetupError> {
    let specs = select_targets(target_specs(config), accounts, regions)?;
    let targets = target_clients(sdk, specs).await?;
    Ok(
        assemble_fleet(config, targets, clock, progress, mode, leadership)
            .with_identity(sdk.clients.identity.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run on the default configuration is the modules' own defaults, which their unit tests
    /// exercise: a default written again somewhere and changed in one place only fails here.
    #[test]
    fn the_default_configuration_assembles_each_modules_defaults() {
        let config = Config::default();
        let sdk = sdk_settings(&config);
        let sdk_default = SdkSettings::default();
        assert_eq!(
            (sdk.region, sdk.retry_mode, sdk.max_attempts),
            (None, sdk_default.retry_mode, sdk_default.max_attempts)
        );
        assert_eq!(limits(&config), Limits::default());
        assert_eq!(deployment_limits(&config), deployment::Limits::default());
        assert_eq!(
            engine_settings(&config, Mode::Watch),
            engine::Settings::default()
        );
        let ours = reconcile_settings(&config, Mode::Watch);
        let theirs = Settings::default();
        assert_eq!(ours.policy, theirs.policy);
        assert_eq!(ours.scan_concurrency, theirs.scan_concurrency);
        assert_eq!(ours.limits, theirs.limits);
        assert_eq!(ours.mode, theirs.mode);
        assert_eq!(ours.canary, theirs.canary);
        assert_eq!(ours.clusters, theirs.clusters);
        assert_eq!(ours.settle_wait, theirs.settle_wait);
        assert_eq!(ours.windows, theirs.windows);
        assert_eq!(ours.notify_only, theirs.notify_only);
        assert_eq!(ours.image_drift, theirs.image_drift);
        assert_eq!(ours.watch_max_age, theirs.watch_max_age);
        assert_eq!(ours.tasks, theirs.tasks);
    }

    /// `settle_recheck`, which the test above left out, was a default written twice and
    /// disagreeing: 30 s in the reconciler's own default, `[rollout] poll_interval` (15 s) from
    /// the default configuration.
    #[test]
    fn the_default_configuration_rechecks_settling_services_at_the_reconcilers_default() {
        let ours = reconcile_settings(&Config::default(), Mode::Watch);
        assert_eq!(
            ours.settle_recheck,
            Settings::default().settle_recheck,
            "the default configuration and reconcile::Settings::default() disagree"
        );
    }
}
