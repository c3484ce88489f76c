//! Configuration: a TOML file, every key also settable by an environment variable
//! `ECS_RELOADER_<SECTION>_<KEY>` (e.g. `ECS_RELOADER_AWS_MAX_ATTEMPTS=5`), which wins over the file.
//!
//! Unknown or misspelt keys are errors, never silently ignored: in the file the error names the
//! key and its line; in the environment it names the variable. Values are read into their types
//! as the file is (a retry mode, maintenance windows, durations), so nothing later parses them
//! again or can fail on them. `config/ecs-reloader.toml` documents every key with its default.
//!
//! Each default is written once, by the module that uses the value (its `Default`: the guard's
//! [`Limits`], the rollout engine's and the reconciler's settings, the staleness [`Policy`], the
//! SDK's settings), and read from there below: so a unit test of that module on its defaults and
//! a run on the default configuration cannot disagree. Only what no module has a default for
//! (`[events]`, `[serve]`, `[lease]`, `reads_per_second`) is written here; `[resync] interval` is
//! the reconciler's `RESYNC_INTERVAL`, which its watch cache's trust is derived from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::aws::guard::{Kind, Limits};
use crate::aws::sdk::{RetryMode, SdkSettings};
use crate::decide::Policy;
use crate::rollout::engine;
use crate::window::Windows;

/// The prefix of environment overrides.
pub(crate) const ENV_PREFIX: &str = "ECS_RELOADER_";

/// A duration written like `"90s"`, `"15m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"90s\" or \"15m\": {e}"
            ))
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// AWS access.
    pub aws: AwsConfig,
    /// What to manage.
    pub scope: ScopeConfig,
    /// How fast each kind of AWS read call goes.
    pub pacing: PacingConfig,
    /// The staleness rule.
    pub decide: DecideConfig,
    /// How rollouts are paced and watched.
    pub rollout: RolloutConfig,
    /// Where `serve` hears of changes.
    pub events: EventsConfig,
    /// The periodic full resync.
    pub resync: ResyncConfig,
    /// Outcome events.
    pub notify: NotifyConfig,
    /// The `serve` process.
    pub serve: ServeConfig,
    /// The single-writer lease.
    pub lease: LeaseConfig,
    /// `[[targets]]`: the accounts and regions to manage. None: the operator's own account and
    /// region (`[aws] region`), with its own credentials.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetConfig>,
}

/// `[[targets]]`: one account (by the role to assume in it, or the operator's own credentials)
/// in one or more regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    /// The role to assume in the target account (`arn:aws:iam::111122223333:role/name`); none:
    /// the operator's own credentials and account.
    pub role_arn: Option<RoleArn>,
    /// The external ID the role's trust policy requires.
    pub external_id: Option<ExternalId>,
    /// The role session name (shows in the target account's CloudTrail as who acted).
    pub session_name: SessionName,
    /// Regions of the account to manage; empty: `[aws] region`.
    pub regions: Vec<RegionName>,
    /// Clusters to manage in each of them; absent: `[scope] clusters`.
    pub clusters: Option<Vec<String>>,
}

/// An IAM role ARN, checked when the file is read (so the error names its line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RoleArn(pub String);

impl RoleArn {
    /// The account of the role.
    pub fn account(&self) -> &str {
        crate::reference::arn_account(&self.0).unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for RoleArn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = crate::reference::Arn::parse(&s).is_some_and(|a| {
            a.partition.starts_with("aws")
                && a.service == "iam"
                && a.region.is_empty()
                && a.account.len() == 12
                && a.account.chars().all(|c| c.is_ascii_digit())
                && a.resource
                    .strip_prefix("role/")
                    .is_some_and(|n| !n.is_empty())
        });
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not an IAM role ARN like \"arn:aws:iam::111122223333:role/ecs-reloader-target\""
            )));
        }
        Ok(RoleArn(s))
    }
}

/// An STS external ID: 2 to 1224 characters of `\w+=,.@:/-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ExternalId(pub String);

impl<'de> Deserialize<'de> for ExternalId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = (2..=1224).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not an external ID (2 to 1224 letters, digits or _+=,.@:/-)"
            )));
        }
        Ok(ExternalId(s))
    }
}

/// An STS role session name: 2 to 64 characters of `\w+=,.@-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SessionName(pub String);

impl Default for SessionName {
    fn default() -> Self {
        SessionName("ecs-reloader".into())
    }
}

impl<'de> Deserialize<'de> for SessionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = (2..=64).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a role session name (2 to 64 letters, digits or _+=,.@-)"
            )));
        }
        Ok(SessionName(s))
    }
}

/// A region name, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RegionName(pub String);

impl<'de> Deserialize<'de> for RegionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.len() >= 4
            && s.len() <= 30
            && s.split('-').count() >= 3
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a region name like \"eu-west-1\""
            )));
        }
        Ok(RegionName(s))
    }
}

/// `[aws]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region; empty means the SDK's default chain (`AWS_REGION`, profile, IMDS).
    pub region: String,
    /// `standard` or `adaptive`: the SDK's retries of the calls the guard does not pace (SQS,
    /// EventBridge, DynamoDB, STS); the paced ones are retried by the guard alone.
    pub retry_mode: RetryMode,
    /// SDK attempts per call, first try included (the same calls as `retry_mode`).
    pub max_attempts: u32,
}

impl Default for AwsConfig {
    fn default() -> Self {
        let sdk = SdkSettings::default();
        AwsConfig {
            region: String::new(),
            retry_mode: sdk.retry_mode,
            max_attempts: sdk.max_attempts,
        }
    }
}

/// `[scope]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    /// Clusters to manage (names or ARNs); empty means every cluster of the region.
    pub clusters: Vec<String>,
    /// AWS calls in flight while scanning.
    pub scan_concurrency: usize,
    /// If above 0, caps every read kind's rate (`[pacing]`) at this many calls per second; 0:
    /// no cap. Kept for configurations written when it was the only read setting.
    pub reads_per_second: f64,
    /// Report standalone tasks that hold a changed value (`plan` and resyncs only: `ListTasks`
    /// and `DescribeTasks` per cluster); `false` opts out.
    pub tasks: bool,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        let r = crate::reconcile::Settings::default();
        ScopeConfig {
            clusters: r.clusters,
            scan_concurrency: r.scan_concurrency,
            reads_per_second: 0.0,
            tasks: r.tasks,
        }
    }
}

/// `[pacing]`: each AWS read call kind's bucket, and how pacing yields to throttling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PacingConfig {
    /// `ecs:ListClusters` calls per second (the bucket's refill).
    pub list_clusters_per_second: f64,
    /// `ecs:ListClusters` burst (the bucket's capacity).
    pub list_clusters_burst: u32,
    /// `ecs:ListServices` calls per second (the bucket's refill).
    pub list_services_per_second: f64,
    /// `ecs:ListServices` burst (the bucket's capacity).
    pub list_services_burst: u32,
    /// `ecs:DescribeServices` calls per second (the bucket's refill).
    pub describe_services_per_second: f64,
    /// `ecs:DescribeServices` burst (the bucket's capacity).
    pub describe_services_burst: u32,
    /// `ecs:DescribeTaskDefinition` calls per second (the bucket's refill).
    pub describe_task_definition_per_second: f64,
    /// `ecs:DescribeTaskDefinition` burst (the bucket's capacity).
    pub describe_task_definition_burst: u32,
    /// `ecs:ListTasks` calls per second (the bucket's refill).
    pub list_tasks_per_second: f64,
    /// `ecs:ListTasks` burst (the bucket's capacity).
    pub list_tasks_burst: u32,
    /// `ecs:DescribeTasks` calls per second (the bucket's refill).
    pub describe_tasks_per_second: f64,
    /// `ecs:DescribeTasks` burst (the bucket's capacity).
    pub describe_tasks_burst: u32,
    /// `secretsmanager:DescribeSecret` calls per second (the bucket's refill).
    pub describe_secret_per_second: f64,
    /// `secretsmanager:DescribeSecret` burst (the bucket's capacity).
    pub describe_secret_burst: u32,
    /// `secretsmanager:ListSecretVersionIds` calls per second (the bucket's refill).
    pub list_secret_version_ids_per_second: f64,
    /// `secretsmanager:ListSecretVersionIds` burst (the bucket's capacity).
    pub list_secret_version_ids_burst: u32,
    /// `ssm:DescribeParameters` calls per second (the bucket's refill).
    pub describe_parameters_per_second: f64,
    /// `ssm:DescribeParameters` burst (the bucket's capacity).
    pub describe_parameters_burst: u32,
    /// `ssm:GetParameterHistory` calls per second (the bucket's refill).
    pub get_parameter_history_per_second: f64,
    /// `ssm:GetParameterHistory` burst (the bucket's capacity).
    pub get_parameter_history_burst: u32,
    /// On a `ThrottlingException`, that call kind's rate is multiplied by this.
    pub throttle_factor: f64,
    /// A call kind's rate never drops below this fraction of its configured rate.
    pub floor_fraction: f64,
    /// While calls succeed, a throttled kind's rate climbs back by its whole configured rate
    /// over this long.
    pub recovery: Dur,
}

impl Default for PacingConfig {
    fn default() -> Self {
        let l = Limits::default();
        PacingConfig {
            list_clusters_per_second: l.pace(Kind::ListClusters).per_second,
            list_clusters_burst: l.pace(Kind::ListClusters).burst,
            list_services_per_second: l.pace(Kind::ListServices).per_second,
            list_services_burst: l.pace(Kind::ListServices).burst,
            describe_services_per_second: l.pace(Kind::DescribeServices).per_second,
            describe_services_burst: l.pace(Kind::DescribeServices).burst,
            describe_task_definition_per_second: l.pace(Kind::DescribeTaskDefinition).per_second,
            describe_task_definition_burst: l.pace(Kind::DescribeTaskDefinition).burst,
            list_tasks_per_second: l.pace(Kind::ListTasks).per_second,
            list_tasks_burst: l.pace(Kind::ListTasks).burst,
            describe_tasks_per_second: l.pace(Kind::DescribeTasks).per_second,
            describe_tasks_burst: l.pace(Kind::DescribeTasks).burst,
            describe_secret_per_second: l.pace(Kind::DescribeSecret).per_second,
            describe_secret_burst: l.pace(Kind::DescribeSecret).burst,
            list_secret_version_ids_per_second: l.pace(Kind::ListSecretVersionIds).per_second,
            list_secret_version_ids_burst: l.pace(Kind::ListSecretVersionIds).burst,
            describe_parameters_per_second: l.pace(Kind::DescribeParameters).per_second,
            describe_parameters_burst: l.pace(Kind::DescribeParameters).burst,
            get_parameter_history_per_second: l.pace(Kind::GetParameterHistory).per_second,
            get_parameter_history_burst: l.pace(Kind::GetParameterHistory).burst,
            throttle_factor: l.throttle_factor,
            floor_fraction: l.floor_fraction,
            recovery: Dur(l.recovery),
        }
    }
}

impl PacingConfig {
    /// Each read kind with its rate, burst and key name.
    pub fn kinds(&self) -> [(Kind, f64, u32, &'static str); 10] {
        [
            (
                Kind::ListClusters,
                self.list_clusters_per_second,
                self.list_clusters_burst,
                "list_clusters",
            ),
            (
                Kind::ListServices,
                self.list_services_per_second,
                self.list_services_burst,
                "list_services",
            ),
            (
                Kind::DescribeServices,
                self.describe_services_per_second,
                self.describe_services_burst,
                "describe_services",
            ),
            (
                Kind::DescribeTaskDefinition,
                self.describe_task_definition_per_second,
                self.describe_task_definition_burst,
                "describe_task_definition",
            ),
            (
                Kind::ListTasks,
                self.list_tasks_per_second,
                self.list_tasks_burst,
                "list_tasks",
            ),
            (
                Kind::DescribeTasks,
                self.describe_tasks_per_second,
                self.describe_tasks_burst,
                "describe_tasks",
            ),
            (
                Kind::DescribeSecret,
                self.describe_secret_per_second,
                self.describe_secret_burst,
                "describe_secret",
            ),
            (
                Kind::ListSecretVersionIds,
                self.list_secret_version_ids_per_second,
                self.list_secret_version_ids_burst,
                "list_secret_version_ids",
            ),
            (
                Kind::DescribeParameters,
                self.describe_parameters_per_second,
                self.describe_parameters_burst,
                "describe_parameters",
            ),
            (
                Kind::GetParameterHistory,
                self.get_parameter_history_per_second,
                self.get_parameter_history_burst,
                "get_parameter_history",
            ),
        ]
    }
}

/// `[decide]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecideConfig {
    /// Allowance for the difference between our clock and AWS's.
    pub clock_skew: Dur,
    /// How long a rotation in progress (`AWSPENDING`) holds back a rollout.
    pub rotation_grace: Dur,
}

impl Default for DecideConfig {
    fn default() -> Self {
        let p = Policy::default();
        DecideConfig {
            clock_skew: Dur(p.clock_skew),
            rotation_grace: Dur(p.rotation_grace),
        }
    }
}

/// `[rollout]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// `UpdateService` calls per second (ECS's bucket refills 5/s, shared by the whole account).
    pub updates_per_second: f64,
    /// Rollouts in flight at once.
    pub max_concurrent: usize,
    /// Rollouts in flight at once per cluster; 0 means no per-cluster limit.
    pub max_concurrent_per_cluster: usize,
    /// Roll the first service of a change set alone, and the rest only if it is healthy.
    pub canary: bool,
    /// A rollout not healthy after this long has failed.
    pub timeout: Dur,
    /// A rollout with this many failed tasks has failed (0: never by count).
    pub failed_tasks_threshold: u32,
    /// How often a rollout in flight is looked at.
    pub poll_interval: Dur,
    /// Maintenance windows, `;`-separated (`"Mon-Fri 02:00-05:00 Europe/Berlin; Sun 00:00-04:00
    /// UTC"`); empty: any time. The service tag `ecs-reloader/window` overrides it.
    pub windows: Windows,
    /// Decide and report, but roll only what a person approves (`reconcile --service` /
    /// `--secret`). The service tag `ecs-reloader/notify-only` overrides it.
    pub notify_only: bool,
    /// Roll `CODE_DEPLOY` services with a CodeDeploy deployment of their current revision;
    /// `false` reports them as dependants that need attention instead.
    pub codedeploy: bool,
    /// What to do when a rollout would start a different image than the one running (a
    /// mutable tag such as `:latest` moved since the deployment).
    pub image_drift: ImageDrift,
}

pub use crate::decide::drift::ImageDrift;

impl Default for RolloutConfig {
    fn default() -> Self {
        let e = engine::Settings::default();
        let r = crate::reconcile::Settings::default();
        RolloutConfig {
            updates_per_second: Limits::default().pace(Kind::UpdateService).per_second,
            max_concurrent: e.max_concurrent,
            max_concurrent_per_cluster: e.max_concurrent_per_cluster.unwrap_or(0),
            canary: e.canary,
            timeout: Dur(e.timeout),
            failed_tasks_threshold: u32::try_from(e.failed_tasks_threshold).unwrap_or(0),
            poll_interval: Dur(e.poll_interval),
            windows: r.windows,
            notify_only: r.notify_only,
            codedeploy: e.codedeploy,
            image_drift: r.image_drift,
        }
    }
}

/// `[events]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// The SQS queue EventBridge feeds; empty: `serve` only resyncs periodically.
    pub queue_url: String,
    /// After the first message of a burst, keep gathering messages this long, so that a burst
    /// (duplicates, several secrets of one service) becomes one decision.
    pub debounce: Dur,
    /// How long messages in work stay hidden from other consumers; extended while work goes on.
    pub visibility_timeout: Dur,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            queue_url: String::new(),
            debounce: Dur(Duration::from_secs(2)),
            visibility_timeout: Dur(Duration::from_secs(120)),
        }
    }
}

/// `[resync]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResyncConfig {
    /// How often `serve` reconciles everything, events or not.
    pub interval: Dur,
}

impl Default for ResyncConfig {
    fn default() -> Self {
        ResyncConfig {
            interval: Dur(crate::reconcile::RESYNC_INTERVAL),
        }
    }
}

/// `[notify]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// EventBridge bus (name or ARN) for outcome events; empty: none.
    pub event_bus: String,
}

/// `[serve]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
    /// On SIGTERM, how long in-flight work may run on to a safe point.
    pub shutdown_grace: Dur,
}

/// `[lease]`: one writer among `serve` replicas or concurrent Lambda invocations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// A DynamoDB table (partition key `lease`, a string) holding the single-writer lease:
    /// one `serve` replica (or Lambda invocation) acts, the others stand by. Empty: no lease (run
    /// one replica, and a function with a reserved concurrency of one).
    pub table: String,
    /// The lease time: a dead holder is replaced within this plus a quarter of it.
    pub ttl: Dur,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            table: String::new(),
            ttl: Dur(Duration::from_secs(30)),
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "0.0.0.0:8080".into(),
            shutdown_grace: Dur(Duration::from_secs(20)),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a bad value (the message gives the
    /// line and the key).
    #[error("configuration file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An environment variable names no key, or has a bad value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("configuration key {key}: {message}")]
    Invalid {
        /// `section.key`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads the file (if any), then applies `ECS_RELOADER_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.to_path_buf(),
                    source,
                })?;
                // Deserialising the typed struct first gives errors with the line of the key.
                let file_err = |e: toml::de::Error| ConfigError::File {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                };
                toml::from_str::<Config>(&text).map_err(file_err)?;
                toml::from_str::<toml::Table>(&text).map_err(file_err)?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    key: "-".into(),
                    message: e.message().to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.aws.max_attempts == 0 {
            return Err(invalid("aws.max_attempts", "must be at least 1"));
        }
        if self.scope.scan_concurrency == 0 {
            return Err(invalid("scope.scan_concurrency", "must be at least 1"));
        }
        if !(self.scope.reads_per_second >= 0.0 && self.scope.reads_per_second.is_finite()) {
            return Err(invalid(
                "scope.reads_per_second",
                "must be 0 (no cap) or a positive number",
            ));
        }
        let p = &self.pacing;
        for (_, rate, burst, key) in p.kinds() {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(invalid(
                    &format!("pacing.{key}_per_second"),
                    "must be a positive number",
                ));
            }
            if burst == 0 {
                return Err(invalid(
                    &format!("pacing.{key}_burst"),
                    "must be at least 1",
                ));
            }
        }
        if !(p.throttle_factor > 0.0 && p.throttle_factor < 1.0) {
            return Err(invalid(
                "pacing.throttle_factor",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if !(p.floor_fraction > 0.0 && p.floor_fraction <= 1.0) {
            return Err(invalid(
                "pacing.floor_fraction",
                "must be above 0 and at most 1",
            ));
        }
        if p.recovery.0 < Duration::from_secs(1) {
            return Err(invalid("pacing.recovery", "must be at least 1s"));
        }
        let r = &self.rollout;
        if !(r.updates_per_second > 0.0 && r.updates_per_second.is_finite()) {
            return Err(invalid(
                "rollout.updates_per_second",
                "must be a positive number",
            ));
        }
        if r.max_concurrent == 0 {
            return Err(invalid("rollout.max_concurrent", "must be at least 1"));
        }
        if self.lease.ttl.0 < Duration::from_secs(4) {
            return Err(invalid("lease.ttl", "must be at least 4s"));
        }
        if r.poll_interval.0 < Duration::from_secs(1) {
            return Err(invalid("rollout.poll_interval", "must be at least 1s"));
        }
        if self.serve.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "serve.listen",
                "must be an address like 0.0.0.0:8080",
            ));
        }
        if self.events.visibility_timeout.0 < Duration::from_secs(10) {
            return Err(invalid("events.visibility_timeout", "must be at least 10s"));
        }
        if self.resync.interval.0 < Duration::from_secs(10) {
            return Err(invalid("resync.interval", "must be at least 10s"));
        }
        if r.timeout.0 < r.poll_interval.0 {
            return Err(invalid(
                "rollout.timeout",
                "must be at least rollout.poll_interval",
            ));
        }
        // One target per account and region: two would roll the same services twice over.
        let mut seen = std::collections::BTreeMap::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = format!("targets[{}]", i + 1);
            let account = t.role_arn.as_ref().map(RoleArn::account).unwrap_or("");
            if t.external_id.is_some() && t.role_arn.is_none() {
                return Err(invalid(
                    &format!("{key}.external_id"),
                    "only means something with role_arn (the role whose trust policy asks for it)",
                ));
            }
            let regions: Vec<&str> = if t.regions.is_empty() {
                vec![self.aws.region.as_str()]
            } else {
                t.regions.iter().map(|r| r.0.as_str()).collect()
            };
            for region in regions {
                if let Some(first) = seen.insert((account.to_string(), region.to_string()), i + 1) {
                    let who = if account.is_empty() {
                        "the operator's own account".to_string()
                    } else {
                        format!("account {account}")
                    };
                    let region = if region.is_empty() {
                        "the default region".to_string()
                    } else {
                        format!("region {region}")
                    };
                    return Err(invalid(
                        &key,
                        &format!("{who} in {region} is already targets[{first}]: one target per account and region"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Overlays `ECS_RELOADER_<SECTION>_<KEY>` variables on the table. Which keys exist, and their
/// types, are read off the defaults, so this needs no list of its own.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let found = defaults.iter().find_map(|(section, keys)| {
            let key = rest.strip_prefix(section.as_str())?.strip_prefix('_')?;
            let default = keys.as_table()?.get(key)?;
            Some((section.clone(), key.to_string(), default.clone()))
        });
        let Some((section, key, default)) = found else {
            // Variables the other drivers read are not configuration keys.
            if OTHER_VARS.contains(&var.as_str()) {
                continue;
            }
            let message = match RENAMED_VARS.iter().find(|(old, _)| *old == var) {
                Some((_, new)) => format!("names no configuration key; the setting is {new}"),
                None => "names no configuration key".into(),
            };
            return Err(ConfigError::Env { var, message });
        };
        let value = env_value(&raw, &default).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry.as_table_mut() {
            Some(t) => {
                t.insert(key.clone(), value);
            }
            None => {
                return Err(ConfigError::Env {
                    var,
                    message: format!("[{section}] in the file is not a table"),
                })
            }
        }
        // Check each override as it lands, so that a bad value is blamed on its variable (and
        // the key it sets: the deserialiser's message does not say where it was).
        if let Err(e) = toml::Value::Table(table.clone()).try_into::<Config>() {
            return Err(ConfigError::Env {
                var,
                message: format!("{section}.{key}: {}", e.message()),
            });
        }
    }
    Ok(())
}

/// `ECS_RELOADER_*` variables that are flags of the command line, not configuration keys.
const OTHER_VARS: &[&str] = &[
    "ECS_RELOADER_CONFIG",
    "ECS_RELOADER_LOG",
    "ECS_RELOADER_LOG_FORMAT",
];

/// Names that earlier versions (and their templates) used, with the one variable that sets the
/// key now. Rejected, not aliased: one name per setting, so that a template and the loader can
/// never disagree silently; the error says what to write instead.
const RENAMED_VARS: &[(&str, &str)] =
    &[("ECS_RELOADER_QUEUE_URL", "ECS_RELOADER_EVENTS_QUEUE_URL")];

fn env_value(raw: &str, default: &toml::Value) -> Result<toml::Value, String> {
    let raw = raw.trim();
    match default {
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_string())),
        toml::Value::Integer(_) => raw
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{raw:?} is not an integer")),
        toml::Value::Float(_) => raw
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("{raw:?} is not a number")),
        toml::Value::Boolean(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("{raw:?} is not true or false")),
        },
        // Lists: comma- or space-separated.
        toml::Value::Array(_) => Ok(toml::Value::Array(
            raw.split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )),
        other => Err(format!(
            "cannot set a {} from the environment",
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile_lite::TempFile {
        let f = tempfile_lite::TempFile::new();
        f.file().write_all(text.as_bytes()).expect("write");
        f
    }

    /// A tiny temporary file helper (no extra crate for two tests' worth of files).
    mod tempfile_lite {
        use std::fs::File;
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        static N: AtomicU32 = AtomicU32::new(0);

        pub(super) struct TempFile(pub(super) PathBuf);

        impl TempFile {
            pub(super) fn new() -> Self {
                let n = N.fetch_add(1, Ordering::Relaxed);
                TempFile(
                    std::env::temp_dir()
                        .join(format!("ecs-reloader-test-{}-{n}.toml", std::process::id())),
                )
            }
            pub(super) fn file(&self) -> File {
                File::create(&self.0).expect("create")
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_without_a_file() {
        assert_eq!(
            Config::load(None, vec![]).expect("defaults"),
            Config::default()
        );
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let f = file("");
        assert_eq!(
            Config::load(Some(&f.0), vec![]).expect("defaults"),
            Config::default()
        );
        // What the environment overlay reads the keys' types from writes and reads back as is.
        let table = toml::Table::try_from(Config::default()).expect("writes");
        assert_eq!(
            toml::Value::Table(table)
                .try_into::<Config>()
                .expect("reads"),
            Config::default()
        );
    }

    #[test]
    fn a_bad_retry_mode_or_window_names_the_key_and_line() {
        for (text, key, says) in [
            ("[aws]\nretry_mode = \"eager\"\n", "retry_mode", "adaptive"),
            (
                "[rollout]\nwindows = \"Mon-Fry 02:00-05:00 UTC\"\n",
                "windows",
                "\"Fry\" is not a day",
            ),
        ] {
            let f = file(text);
            let err = Config::load(Some(&f.0), vec![]).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("line 2") && err.contains(says),
                "{text}: {err}"
            );
        }
        let err = Config::load(
            None,
            vec![(
                "ECS_RELOADER_ROLLOUT_WINDOWS".into(),
                "Mon 02:00-05:00 Mars/Olympus".into(),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ECS_RELOADER_ROLLOUT_WINDOWS")
                && err.contains("rollout.windows")
                && err.contains("not an IANA time zone"),
            "{err}"
        );
        let c = Config::load(
            None,
            vec![
                ("ECS_RELOADER_AWS_RETRY_MODE".into(), "adaptive".into()),
                (
                    "ECS_RELOADER_ROLLOUT_WINDOWS".into(),
                    "Sun 00:00-04:00 UTC".into(),
                ),
            ],
        )
        .expect("loads");
        assert_eq!(c.aws.retry_mode, RetryMode::Adaptive);
        assert_eq!(
            c.rollout.windows,
            Windows::parse("Sun 00:00-04:00 UTC").expect("parses")
        );
    }

    #[test]
    fn a_misspelt_key_is_named_with_its_line() {
        let f = file("[aws]\nregion = \"eu-west-1\"\nmax_atempts = 4\n");
        let err = Config::load(Some(&f.0), vec![]).unwrap_err().to_string();
        assert!(err.contains("max_atempts"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn an_unknown_section_is_named() {
        let f = file("[aws]\nregion = \"x\"\n\n[rolout]\ncanary = true\n");
        let err = Config::load(Some(&f.0), vec![]).unwrap_err().to_string();
        assert!(err.contains("rolout") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn a_bad_duration_is_explained() {
        let f = file("[decide]\nrotation_grace = \"ten minutes\"\n");
        let err = Config::load(Some(&f.0), vec![]).unwrap_err().to_string();
        assert!(
            err.contains("rotation_grace") || err.contains("line 2"),
            "{err}"
        );
        assert!(err.contains("not a duration"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let f = file("[aws]\nmax_attempts = 4\n[scope]\nclusters = [\"a\"]\n");
        let env = vec![
            ("ECS_RELOADER_AWS_MAX_ATTEMPTS".to_string(), "7".to_string()),
            (
                "ECS_RELOADER_SCOPE_CLUSTERS".to_string(),
                "prod, staging".to_string(),
            ),
            (
                "ECS_RELOADER_DECIDE_ROTATION_GRACE".to_string(),
                "5m".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load(Some(&f.0), env).expect("loads");
        assert_eq!(c.aws.max_attempts, 7);
        assert_eq!(c.scope.clusters, ["prod", "staging"]);
        assert_eq!(c.decide.rotation_grace, Dur(Duration::from_secs(300)));
    }

    #[test]
    fn an_unknown_or_bad_variable_is_named() {
        let err = Config::load(
            None,
            vec![("ECS_RELOADER_AWS_MAX_ATEMPTS".into(), "3".into())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("ECS_RELOADER_AWS_MAX_ATEMPTS"),
            "{err}"
        );
        let err = Config::load(
            None,
            vec![("ECS_RELOADER_AWS_MAX_ATTEMPTS".into(), "many".into())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("ECS_RELOADER_AWS_MAX_ATTEMPTS")
                && err.to_string().contains("many"),
            "{err}"
        );
    }

    #[test]
    fn the_queue_url_has_one_variable_and_the_old_name_says_which() {
        let c = Config::load(
            None,
            vec![(
                "ECS_RELOADER_EVENTS_QUEUE_URL".into(),
                "http://127.0.0.1:1/123456789012/q".into(),
            )],
        )
        .expect("loads");
        assert_eq!(c.events.queue_url, "http://127.0.0.1:1/123456789012/q");
        let err = Config::load(None, vec![("ECS_RELOADER_QUEUE_URL".into(), "x".into())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ECS_RELOADER_QUEUE_URL") && err.contains("ECS_RELOADER_EVENTS_QUEUE_URL"),
            "{err}"
        );
    }

    #[test]
    fn pacing_keys_load_and_a_bad_one_is_named() {
        let f = file("[pacing]\ndescribe_services_per_second = 5.0\ndescribe_service_burst = 9\n");
        let err = Config::load(Some(&f.0), vec![]).unwrap_err().to_string();
        assert!(
            err.contains("describe_service_burst") && err.contains("line 3"),
            "{err}"
        );
        let f = file("[pacing]\ndescribe_services_per_second = 5.0\nrecovery = \"30s\"\n");
        let env = vec![(
            "ECS_RELOADER_PACING_DESCRIBE_TASK_DEFINITION_BURST".to_string(),
            "7".to_string(),
        )];
        let c = Config::load(Some(&f.0), env).expect("loads");
        assert_eq!(c.pacing.describe_services_per_second, 5.0);
        assert_eq!(c.pacing.describe_task_definition_burst, 7);
        assert_eq!(c.pacing.recovery, Dur(Duration::from_secs(30)));
        let err = Config::load(
            None,
            vec![("ECS_RELOADER_PACING_LIST_TASKS_BURST".into(), "0".into())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("pacing.list_tasks_burst"), "{err}");
        let err = Config::load(
            None,
            vec![("ECS_RELOADER_PACING_THROTTLE_FACTOR".into(), "1.5".into())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("pacing.throttle_factor"), "{err}");
    }

    #[test]
    fn targets_load_and_bad_ones_name_the_key_and_line() {
        let f = file(
            "[aws]\nregion = \"us-east-1\"\n\n[[targets]]\nregions = [\"us-east-1\", \"eu-west-1\"]\n\n[[targets]]\nrole_arn = \"arn:aws:iam::111122223333:role/ecs-reloader-target\"\nexternal_id = \"org-1\"\nclusters = [\"prod\"]\n",
        );
        let c = Config::load(Some(&f.0), vec![]).expect("loads");
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[0].role_arn, None);
        assert_eq!(
            c.targets[1].role_arn.as_ref().map(RoleArn::account),
            Some("111122223333")
        );
        assert_eq!(
            c.targets[1].session_name.0, "ecs-reloader",
            "the default names us"
        );
        for (text, key, line, says) in [
            ("[[targets]]\nrole_arn = \"arn:aws:iam::1111:role/x\"\n", "role_arn", "line 2", "not an IAM role ARN"),
            ("[[targets]]\nregions = [\"us-east-1\"]\n\n[[targets]]\nregions = [\"Europe\"]\n", "regions", "line 5", "not a region name"),
            ("[[targets]]\nrole_arn = \"arn:aws:iam::111122223333:role/x\"\nsession_name = \"a b\"\n", "session_name", "line 3", "not a role session name"),
            ("[[targets]]\nrole_arn = \"arn:aws:iam::111122223333:role/x\"\nexternal_id = \"x\"\n", "external_id", "line 3", "not an external ID"),
            ("[[targets]]\nrole_ARN = \"arn:aws:iam::111122223333:role/x\"\n", "role_ARN", "line 2", "unknown field"),
        ] {
            let f = file(text);
            let err = Config::load(Some(&f.0), vec![]).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(line) && err.contains(says),
                "{text}: {err}"
            );
        }
        let f = file("[[targets]]\nrole_arn = \"arn:aws:iam::111122223333:role/a\"\nregions = [\"eu-west-1\"]\n\n[[targets]]\nrole_arn = \"arn:aws:iam::111122223333:role/b\"\nregions = [\"us-east-1\", \"eu-west-1\"]\n");
        let err = Config::load(Some(&f.0), vec![]).unwrap_err().to_string();
        assert!(
            err.contains("targets[2]")
                && err.contains("account 111122223333 in region eu-west-1 is already targets[1]"),
            "{err}"
        );
        let f = file("[[targets]]\nexternal_id = \"org-1\"\n");
        let err = Config::load(Some(&f.0), vec![]).unwrap_err().to_string();
        assert!(err.contains("targets[1].external_id"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let err = Config::load(
            None,
            vec![("ECS_RELOADER_AWS_RETRY_MODE".into(), "eager".into())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("aws.retry_mode"), "{err}");
    }
}
