//! The AWS boundary: small traits over the handful of API calls ecs-reloader makes, plain data
//! types for their answers, one real implementation over the AWS SDK for Rust ([`sdk`]) and one
//! in-memory fake for deterministic tests ([`fake`]).
//!
//! Nothing outside this module sees an SDK type. The traits work page by page where AWS pages,
//! so that the paging loop lives in the core and the fake can test it with tiny pages.

#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod guard;
pub mod queue;
pub mod sdk;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One page of a paginated listing.
#[derive(Debug, Clone, Default)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The token for the next page; `None` (or an empty string, which some emulators send) ends it.
    pub next: Option<String>,
}

/// The kind of an AWS error, as far as ecs-reloader cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The API's rate limit was hit (`ThrottlingException` and kin): retry later.
    Throttled,
    /// A transient failure (5xx, timeout, dropped connection): retry.
    Transient,
    /// The resource does not exist.
    NotFound,
    /// Credentials or permissions are missing.
    AccessDenied,
    /// The call could not be made at all: no credentials, an endpoint whose name does not
    /// resolve (an unknown region, a wrong `AWS_ENDPOINT_URL`), or a connection refused. Retrying
    /// only delays the message; what fixes it is in the environment, and the message says what.
    Setup,
    /// Anything else: a bad request, a conflict; retrying will not help.
    Other,
}

/// An error from one AWS call, naming the call and the resource it was about.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} {resource}: {message}")]
pub struct AwsError {
    /// The API operation, e.g. `ecs:DescribeServices`.
    pub operation: &'static str,
    /// The resource the call was about (a cluster, a service, a secret id).
    pub resource: String,
    /// What went wrong.
    pub kind: ErrorKind,
    /// The service's message or error code.
    pub message: String,
}

impl AwsError {
    /// Builds an error.
    pub fn new(
        operation: &'static str,
        resource: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        AwsError {
            operation,
            resource: resource.into(),
            kind,
            message: message.into(),
        }
    }

    /// Whether retrying the same call may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::Transient)
    }
}

/// Result of an AWS call.
pub type AwsResult<T> = Result<T, AwsError>;

/// The deployment controller of a service; only `ECS` can be rolled with `forceNewDeployment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Controller {
    /// Rolling updates driven by ECS.
    Ecs,
    /// Blue/green through CodeDeploy.
    CodeDeploy,
    /// A third-party controller.
    External,
}

/// A deployment's place in its service, as ECS reports it. Read once here, so that nothing
/// else compares strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    /// New tasks start from it.
    Primary,
    /// An older deployment still running tasks.
    Active,
    /// Drained.
    Inactive,
}

impl DeploymentStatus {
    /// From ECS's string; anything unknown is read as `Active` (present, not the one new tasks
    /// start from), which makes the service look busy rather than healthy.
    pub(crate) fn from_ecs(s: &str) -> Self {
        match s {
            "PRIMARY" => DeploymentStatus::Primary,
            "INACTIVE" => DeploymentStatus::Inactive,
            _ => DeploymentStatus::Active,
        }
    }
}

/// `rolloutState` of a deployment (reported by services with the circuit breaker or the
/// newer deployment API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    /// Done.
    Completed,
    /// Under way.
    InProgress,
    /// Given up by ECS.
    Failed,
}

impl RolloutState {
    /// From ECS's string; an unknown state is read as in progress (never as healthy).
    pub(crate) fn from_ecs(s: &str) -> Self {
        match s {
            "COMPLETED" => RolloutState::Completed,
            "FAILED" => RolloutState::Failed,
            _ => RolloutState::InProgress,
        }
    }
}

/// A service deployment, as `DescribeServices` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    /// The deployment id (`ecs-svc/…`).
    pub id: String,
    /// Primary, active or inactive.
    pub status: DeploymentStatus,
    /// The task definition ARN this deployment runs.
    pub task_definition: String,
    /// When ECS created the deployment; tasks it starts resolve secrets at or after this moment.
    pub created_at: DateTime<Utc>,
    /// Where the service reports it.
    pub rollout_state: Option<RolloutState>,
    /// Why the rollout is in its state (e.g. a circuit-breaker rollback).
    pub rollout_state_reason: Option<String>,
    /// Tasks the deployment wants.
    pub desired_count: i32,
    /// Tasks running.
    pub running_count: i32,
    /// Tasks that failed to start.
    pub failed_tasks: i32,
}

impl Deployment {
    /// Whether this is the deployment new tasks are started from.
    pub(crate) fn is_primary(&self) -> bool {
        self.status == DeploymentStatus::Primary
    }
}

/// How ECS itself rolls a service with the `ECS` controller (`deploymentConfiguration.strategy`).
/// All but `Rolling` run the new revision beside the old one before traffic moves, so a forced
/// deployment runs the whole strategy: bake time, alarms, lifecycle hooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EcsStrategy {
    /// Replace tasks in place (the default, and what an absent strategy means).
    #[default]
    Rolling,
    /// Start the whole new revision, shift traffic at once, bake.
    BlueGreen,
    /// Shift traffic in equal steps.
    Linear,
    /// Shift a small share first, then the rest.
    Canary,
}

impl EcsStrategy {
    /// From ECS's string; an unknown one is read as a strategy that runs both revisions (the
    /// costlier assumption for capacity, and watched through its service deployment).
    pub(crate) fn from_ecs(s: &str) -> Self {
        match s {
            "ROLLING" | "" => EcsStrategy::Rolling,
            "LINEAR" => EcsStrategy::Linear,
            "CANARY" => EcsStrategy::Canary,
            _ => EcsStrategy::BlueGreen,
        }
    }
}

/// A load balancer a service registers a container port with: what a CodeDeploy AppSpec must
/// name to redeploy the same revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadBalancer {
    /// The container that receives the traffic.
    pub container_name: String,
    /// Its port.
    pub container_port: i32,
}

/// How a service deploys, beyond its controller: what its rollout strategy needs to start and
/// watch a rollout, and what a rollout costs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Shape {
    /// ECS's own strategy (meaningful for the `ECS` controller only).
    pub strategy: EcsStrategy,
    /// How long ECS's strategy waits by design before it calls a deployment successful:
    /// `bakeTimeInMinutes`, plus a linear strategy's step bakes or a canary's bake.
    pub bake_time: Option<std::time::Duration>,
    /// Its load balancers' containers and ports.
    pub load_balancers: Vec<LoadBalancer>,
}

/// One of ECS's service deployments (`ListServiceDeployments` / `DescribeServiceDeployments`):
/// how a blue/green, linear or canary rollout is read, since the `deployments` array does not
/// show its bake time, hooks or rollback.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceDeployment {
    /// Its ARN.
    pub arn: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// `status`, as ECS spells it (`PENDING`, `IN_PROGRESS`, `SUCCESSFUL`, `STOPPED`,
    /// `ROLLBACK_*`, …).
    pub status: String,
    /// Why it is in its status.
    pub status_reason: Option<String>,
    /// `lifecycleStage` (`BAKE_TIME`, `PRODUCTION_TRAFFIC_SHIFT`, …).
    pub stage: Option<String>,
    /// A lifecycle hook awaiting someone's action (`ContinueServiceDeployment`): which, at which
    /// stage.
    pub awaiting: Option<String>,
    /// `targetServiceRevision.arn`: the service revision it deploys (its last part is the
    /// number of the `ecs-svc/…` deployment id; the service deployment's own ARN has an id of
    /// its own).
    pub revision: Option<String>,
}

/// An ECS service with what ecs-reloader needs of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// The service ARN.
    pub arn: String,
    /// The service name.
    pub name: String,
    /// The cluster ARN.
    pub cluster_arn: String,
    /// `ACTIVE`, `DRAINING` or `INACTIVE`.
    pub status: String,
    /// The task definition of the service (the primary deployment's, normally).
    pub task_definition: String,
    /// Desired task count.
    pub desired_count: i32,
    /// The deployment controller.
    pub controller: Controller,
    /// ECS's strategy, bake time and load balancers.
    pub shape: Shape,
    /// All current deployments. For `CODE_DEPLOY` and `EXTERNAL` services, their task sets read
    /// as deployments (the `PRIMARY` one as the primary), since those services have no
    /// deployments of their own and their task sets carry the task definitions.
    pub deployments: Vec<Deployment>,
    /// Tags on the service.
    pub tags: BTreeMap<String, String>,
}

/// How a service is rolled, from its controller and strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolledBy {
    /// `UpdateService(forceNewDeployment)`, watched through the `deployments` array.
    ForcedRolling,
    /// `UpdateService(forceNewDeployment)` running ECS's blue/green, linear or canary strategy,
    /// watched through its service deployment.
    ForcedNative(EcsStrategy),
    /// A CodeDeploy deployment of the same revision.
    CodeDeploy,
}

impl Service {
    /// How it is rolled, or why nobody here may roll it. The one place that knows which
    /// controller allows what: the decision and the rollout both ask it.
    pub fn rolled_by(&self, codedeploy: bool) -> Result<RolledBy, String> {
        match self.controller {
            Controller::Ecs if self.shape.strategy == EcsStrategy::Rolling => {
                Ok(RolledBy::ForcedRolling)
            }
            Controller::Ecs => Ok(RolledBy::ForcedNative(self.shape.strategy)),
            Controller::CodeDeploy if codedeploy => Ok(RolledBy::CodeDeploy),
            Controller::CodeDeploy => Err(
                "deployment controller CODE_DEPLOY and [rollout] codedeploy = false: roll it through CodeDeploy".into(),
            ),
            Controller::External => Err(
                "deployment controller EXTERNAL: only its controller can start new tasks; roll it through that controller".into(),
            ),
        }
    }

    /// How many of `[rollout] max_concurrent`'s slots a rollout of it takes: two while both
    /// revisions run side by side (blue/green, linear and canary, ECS's or CodeDeploy's).
    pub fn rollout_cost(&self) -> u32 {
        match self.rolled_by(true) {
            Ok(RolledBy::ForcedRolling) | Err(_) => 1,
            Ok(RolledBy::ForcedNative(_)) | Ok(RolledBy::CodeDeploy) => 2,
        }
    }

    /// The primary deployment.
    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.is_primary())
    }

    /// The cluster's name (the last part of its ARN).
    pub fn cluster_name(&self) -> &str {
        self.cluster_arn
            .rsplit('/')
            .next()
            .unwrap_or(&self.cluster_arn)
    }
}

/// Identifies a service: cluster and name within its account and region, which its ARN gives
/// (empty when unknown). With several targets, two services of one name in two accounts or
/// regions are two keys; the display stays `CLUSTER/SERVICE` (reports show account and region
/// in columns of their own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServiceKey {
    /// Cluster name.
    pub cluster: String,
    /// Service name.
    pub service: String,
    /// The service's account (from its ARN).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub account: String,
    /// The service's region (from its ARN).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub region: String,
}

impl ServiceKey {
    /// The key of a described service.
    pub fn of(s: &Service) -> Self {
        let home = crate::reference::Home::of_arn(&s.arn, "");
        ServiceKey {
            cluster: s.cluster_name().to_string(),
            service: s.name.clone(),
            account: home.account.unwrap_or_default(),
            region: home.region,
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.cluster, self.service)
    }
}

/// A raw secret reference from a task definition: where it sits and the string as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRef {
    /// Where in the task definition it was found.
    pub site: crate::reference::Site,
    /// The `valueFrom` / `credentialsParameter` string.
    pub value: String,
}

/// What ecs-reloader keeps of a task definition revision: its secret references. Revisions are
/// immutable, so this is fetched once per ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinition {
    /// The revision's ARN.
    pub arn: String,
    /// Every secret reference it holds.
    pub refs: Vec<RawRef>,
    /// Each container's name and image as written (`repo:tag`, `repo@sha256:…`).
    pub images: Vec<(String, String)>,
}

/// Metadata of a Secrets Manager secret (never its value).
#[derive(Debug, Clone, PartialEq)]
pub struct SecretMeta {
    /// Full ARN.
    pub arn: String,
    /// Name.
    pub name: String,
    /// `LastChangedDate`: the last modification of any kind, stage moves and metadata edits
    /// included.
    pub last_changed: Option<DateTime<Utc>>,
    /// `LastRotatedDate`: when a rotation last completed successfully (absent while rotation is
    /// off). Secrets Manager sets it only at the end of a successful rotation, after its last step
    /// moved `AWSCURRENT`, so it dates that move.
    pub last_rotated: Option<DateTime<Utc>>,
    /// `VersionIdsToStages`.
    pub version_stages: BTreeMap<String, Vec<String>>,
    /// Set when the secret is scheduled for deletion.
    pub deleted: Option<DateTime<Utc>>,
}

/// One version from `ListSecretVersionIds`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretVersion {
    /// The version id.
    pub id: String,
    /// When the version was created.
    pub created: Option<DateTime<Utc>>,
    /// Its staging labels.
    pub stages: Vec<String>,
}

/// Metadata of an SSM parameter from `DescribeParameters` (never its value).
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterMeta {
    /// Canonical name.
    pub name: String,
    /// When the latest version was written.
    pub last_modified: Option<DateTime<Utc>>,
    /// The latest version number.
    pub version: i64,
}

/// One version from `GetParameterHistory`, its value dropped in the adapter: the call returns
/// every version's value (plain text for `String`, ciphertext for `SecureString`, since we never
/// ask for decryption), and nothing of it is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterVersion {
    /// Version number.
    pub version: i64,
    /// When it was written.
    pub last_modified: Option<DateTime<Utc>>,
    /// Labels on it.
    pub labels: Vec<String>,
}

/// A running task, as `DescribeTasks` reports what ecs-reloader needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task ARN.
    pub arn: String,
    /// When it started (its containers resolved their secrets then); `None` while pending.
    pub started_at: Option<DateTime<Utc>>,
    /// Each container's name and the image digest it runs (what a moved tag is compared with).
    pub digests: Vec<(String, String)>,
}

/// The ECS calls ecs-reloader makes.
#[async_trait]
pub trait Ecs: Send + Sync {
    /// One page of `ListClusters`.
    async fn list_clusters(&self, next: Option<String>) -> AwsResult<Page<String>>;
    /// One page of `ListServices` in a cluster.
    async fn list_services(&self, cluster: &str, next: Option<String>) -> AwsResult<Page<String>>;
    /// `DescribeServices` (with tags) for at most 10 services of one cluster; missing ones are
    /// left out of the answer.
    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> AwsResult<Vec<Service>>;
    /// `DescribeTaskDefinition`, reduced to its secret references.
    async fn describe_task_definition(&self, arn: &str) -> AwsResult<TaskDefinition>;
    /// `UpdateService(forceNewDeployment = true)`; returns the new primary deployment.
    async fn force_new_deployment(&self, cluster: &str, service: &str) -> AwsResult<Deployment>;
    /// One page of `ListTasks` of a service's running tasks.
    async fn list_tasks(
        &self,
        cluster: &str,
        service: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>>;
    /// `DescribeTasks` for at most 100 tasks; missing ones are left out.
    async fn describe_tasks(&self, cluster: &str, tasks: &[String]) -> AwsResult<Vec<Task>>;
    /// `ListServiceDeployments` of a service created at or after `since`, then
    /// `DescribeServiceDeployments` of those (at most 20, newest first).
    async fn service_deployments(
        &self,
        cluster: &str,
        service: &str,
        since: DateTime<Utc>,
    ) -> AwsResult<Vec<ServiceDeployment>>;
}

/// A CodeDeploy deployment group that deploys ECS services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentGroup {
    /// The application.
    pub application: String,
    /// The group.
    pub name: String,
    /// The services it deploys, as (cluster name, service name).
    pub services: Vec<(String, String)>,
}

/// Where a CodeDeploy deployment stands (`GetDeployment`'s `status`, read once here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CodeDeployStatus {
    /// `Created`, `Queued`, `InProgress`, `Baking`, `Ready`: under way.
    InProgress(String),
    /// `Succeeded`.
    Succeeded,
    /// `Failed` or `Stopped`, with CodeDeploy's error message.
    Failed(String),
}

/// The CodeDeploy calls ecs-reloader makes for services whose controller is `CODE_DEPLOY`.
#[async_trait]
pub trait CodeDeploy: Send + Sync {
    /// One page of `ListApplications`.
    async fn list_applications(&self, next: Option<String>) -> AwsResult<Page<String>>;
    /// One page of `ListDeploymentGroups`.
    async fn list_deployment_groups(
        &self,
        application: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>>;
    /// `GetDeploymentGroup`.
    async fn get_deployment_group(
        &self,
        application: &str,
        group: &str,
    ) -> AwsResult<DeploymentGroup>;
    /// `CreateDeployment` with an AppSpec given as content; returns the deployment id. Never
    /// retried (a retry after a lost answer would deploy twice).
    async fn create_deployment(
        &self,
        application: &str,
        group: &str,
        appspec: &str,
    ) -> AwsResult<String>;
    /// `GetDeployment`.
    async fn get_deployment(&self, id: &str) -> AwsResult<CodeDeployStatus>;
    /// `ListDeployments` of a group that failed or were stopped, created at or after `since`
    /// (one page: a handful at most). CodeDeploy deletes a failed deployment's replacement task
    /// set, so ECS keeps no trace of the failure: this is where it is read.
    async fn failed_since(
        &self,
        application: &str,
        group: &str,
        since: DateTime<Utc>,
    ) -> AwsResult<Vec<String>>;
}

/// One image tag as the registry names it now (`ecr:DescribeImages`: metadata, never layers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedImage {
    /// The tag.
    pub tag: String,
    /// The digest the tag names now.
    pub digest: String,
}

/// The ECR calls ecs-reloader makes to notice a moved image tag before a rollout would start
/// a different image.
#[async_trait]
pub trait Registry: Send + Sync {
    /// `DescribeImages` of `tags` in a repository (`region`, registry id = account); unknown
    /// tags are left out.
    async fn describe_images(
        &self,
        region: &str,
        registry: &str,
        repository: &str,
        tags: &[String],
    ) -> AwsResult<Vec<TaggedImage>>;
}

/// The Secrets Manager calls ecs-reloader makes. `region` is where the secret lives.
#[async_trait]
pub trait Secrets: Send + Sync {
    /// `DescribeSecret`; `id` is a name, partial or full ARN.
    async fn describe_secret(&self, region: &str, id: &str) -> AwsResult<SecretMeta>;
    /// One page of `ListSecretVersionIds`.
    async fn list_secret_versions(
        &self,
        region: &str,
        arn: &str,
        next: Option<String>,
    ) -> AwsResult<Page<SecretVersion>>;
}

/// The SSM calls ecs-reloader makes. `region` is where the parameter lives.
#[async_trait]
pub trait Parameters: Send + Sync {
    /// `DescribeParameters` filtered by exact names (at most 50); unknown names are left out.
    async fn describe_parameters(
        &self,
        region: &str,
        names: &[String],
    ) -> AwsResult<Vec<ParameterMeta>>;
    /// `GetParameterHistory` without decryption, values dropped on receipt. Only for `name:label`
    /// references whose decision needs it ([`crate::decide::needs_label_history`]).
    async fn parameter_history(&self, region: &str, name: &str)
        -> AwsResult<Vec<ParameterVersion>>;
}

/// The digest an image tag names now (`None`: the tag, or its repository, does not exist).
pub(crate) async fn current_digest(
    registry: &dyn Registry,
    region: &str,
    account: &str,
    repository: &str,
    tag: &str,
) -> AwsResult<Option<String>> {
    match registry
        .describe_images(region, account, repository, &[tag.to_string()])
        .await
    {
        Ok(found) => Ok(found.into_iter().find(|i| i.tag == tag).map(|i| i.digest)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Drains a paginated call: `call(token)` until the token runs out. An empty token ends the
/// listing as an absent one does (moto sends `""`).
/// A running task of a cluster, as `DescribeTasks` tells it: enough to say whether it belongs
/// to a service and what it resolved when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningTask {
    /// The task's ARN.
    pub arn: String,
    /// Its task definition revision.
    pub task_definition: String,
    /// `group`: `service:<name>` for a service's task, `family:<name>` (or what `RunTask` was
    /// given) for a standalone one.
    pub group: Option<String>,
    /// `startedBy`: `ecs-svc/…` for a service's task, `events-rule/…` for a scheduled one.
    pub started_by: Option<String>,
    /// When it started (its values were resolved just before).
    pub started_at: Option<DateTime<Utc>>,
}

impl RunningTask {
    /// Whether it belongs to a service (rolled with it, so not reported apart).
    pub fn of_service(&self) -> bool {
        self.group
            .as_deref()
            .is_some_and(|g| g.starts_with("service:"))
            || self
                .started_by
                .as_deref()
                .is_some_and(|s| s.starts_with("ecs-svc/"))
    }
}

/// Every running task of a cluster, services' and standalone ones alike (`RunTask`,
/// `StartTask`, scheduled): read on `plan` and resyncs only, to report standalone tasks that
/// hold an old value. Apart from [`Ecs`], whose task calls are per service.
#[async_trait]
pub trait ClusterTasks: Send + Sync {
    /// One page of `ListTasks` of `cluster` (desired status `RUNNING`).
    async fn list_cluster_tasks(
        &self,
        cluster: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>>;
    /// `DescribeTasks` (at most 100).
    async fn describe_cluster_tasks(
        &self,
        cluster: &str,
        tasks: &[String],
    ) -> AwsResult<Vec<RunningTask>>;
}

/// What starts a scheduled ECS task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// An EventBridge rule (on the default bus) with an ECS target.
    EventbridgeRule,
    /// An EventBridge Scheduler schedule with an ECS target.
    SchedulerSchedule,
}

/// A rule or schedule that runs an ECS task: which revision, in which cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScheduledRun {
    /// A rule or a schedule.
    pub kind: ScheduleKind,
    /// Its name (`group/name` for a schedule outside the default group).
    pub name: String,
    /// The target cluster's ARN.
    pub cluster: String,
    /// The task definition it runs (a revision, or a family for its latest).
    pub task_definition: String,
}

/// Which task definitions scheduled tasks run: EventBridge rules and EventBridge Scheduler
/// schedules with an ECS target. Read on full passes only. The adapters page through both
/// services themselves and keep only the target's cluster and task definition: a target's
/// `Input` (container overrides, which may carry environment values) is dropped on receipt.
#[async_trait]
pub trait Schedules: Send + Sync {
    /// Every rule and schedule with an ECS target.
    async fn ecs_schedules(&self) -> AwsResult<Vec<ScheduledRun>>;
}

/// One S3 object's entry in a bucket listing: when it was written, never what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    /// `LastModified`.
    pub last_modified: Option<DateTime<Utc>>,
    /// `ETag`.
    pub etag: Option<String>,
}

/// S3, for environment files: listing only. There is deliberately no call that reads an
/// object (`GetObject`): ecs-reloader never reads a value.
#[async_trait]
pub trait Objects: Send + Sync {
    /// `ListObjectsV2` of `bucket` with `key` as prefix (IAM: `s3:ListBucket`): the entry whose
    /// key is exactly `key`, or `None` when there is none (deleted, or a delete marker current).
    async fn object_meta(&self, bucket: &str, key: &str) -> AwsResult<Option<ObjectMeta>>;
}

pub(crate) async fn all_pages<T, F, Fut>(mut call: F) -> AwsResult<Vec<T>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = AwsResult<Page<T>>>,
{
    let mut out = Vec::new();
    let mut token = None;
    // A service that hands back the same token forever would loop us forever; bail out instead.
    let mut seen = std::collections::HashSet::new();
    loop {
        let page = call(token.take()).await?;
        out.extend(page.items);
        match page.next.filter(|t| !t.is_empty()) {
            Some(t) if seen.insert(t.clone()) => token = Some(t),
            Some(t) => {
                return Err(AwsError::new(
                    "pagination",
                    t,
                    ErrorKind::Other,
                    "the service returned the same page token twice",
                ))
            }
            None => return Ok(out),
        }
    }
}

/// Whose credentials these are. The operator asks once (`sts:GetCallerIdentity`, which needs no
/// grant) so that it knows its own account before the first event: an event is evidence about
/// its own account only, and one that names no account is about the operator's.
#[async_trait]
pub trait Identity: Send + Sync {
    /// The account the credentials belong to.
    async fn account(&self) -> AwsResult<String>;
}

/// The clients together, as the core takes them.
#[derive(Clone)]
pub struct Clients {
    /// ECS.
    pub ecs: std::sync::Arc<dyn Ecs>,
    /// Secrets Manager.
    pub secrets: std::sync::Arc<dyn Secrets>,
    /// SSM Parameter Store.
    pub parameters: std::sync::Arc<dyn Parameters>,
    /// S3 listings, for environment files (never an object's content).
    pub objects: std::sync::Arc<dyn Objects>,
    /// Every task of a cluster, for the standalone-task report.
    pub tasks: std::sync::Arc<dyn ClusterTasks>,
    /// Scheduled tasks' rules and schedules.
    pub schedules: std::sync::Arc<dyn Schedules>,
    /// Who the credentials are (not paced: asked once).
    pub identity: std::sync::Arc<dyn Identity>,
    /// CodeDeploy, for `CODE_DEPLOY` services.
    pub codedeploy: std::sync::Arc<dyn CodeDeploy>,
    /// ECR, to compare image tags with what runs.
    pub registry: std::sync::Arc<dyn Registry>,
    /// The region the clients default to (for references without one).
    pub region: String,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}
