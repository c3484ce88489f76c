//! A guard around the AWS traits: client-side token buckets that keep ecs-reloader under ECS's
//! own throttling, and retries with jittered exponential backoff (`backon`) for throttled and
//! transient errors, so that a throttle never surfaces as a failed rollout.
//!
//! ECS throttles per account and region with a token bucket per API action (UpdateService:
//! burst 50, refill 5/s; DescribeServices and ListServices: burst 100, refill 20/s;
//! DescribeTaskDefinition and ListClusters: burst 50, refill 20/s). Our read buckets default to
//! exactly those shapes, so that a scan alone on the account goes as fast as ECS allows; other
//! tools draw from the same buckets, so a throttle makes that call kind yield (its rate is cut
//! multiplicatively, then climbs back additively while calls succeed), the way the SDK's
//! adaptive retry mode does. `UpdateService` stays at 1/s with no burst: it changes production.
//!
//! **`UpdateService` is not idempotent**: a retry after a lost answer would force a second
//! deployment. The SDK's own retries are off for that call (see `sdk.rs`), throttling is retried
//! freely (a throttled request was not executed), and after an ambiguous failure (5xx, timeout,
//! dropped connection) the guard first looks at the service: if a deployment created since the
//! attempt began is there, the attempt took effect and is not repeated.
//!
//! Only what a retry can fix is retried: throttling and transient errors (5xx, timeouts, dropped
//! connections). A setup error (no credentials, an endpoint that does not resolve or refuses
//! connections) fails at once, and so does anything else. A person watching a retry that takes a
//! while is told at `warn` (operation, attempt, next wait); quick retries stay at `debug`.
//!
//! The buckets run on tokio's clock, so simulations with paused time are exact.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use governor::clock::Clock as GovernorClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{middleware::NoOpMiddleware, Quota, RateLimiter};

use super::{
    AwsError, AwsResult, Clients, ClusterTasks, Deployment, Ecs, ErrorKind, ObjectMeta, Objects,
    Page, ParameterMeta, ParameterVersion, Parameters, RunningTask, ScheduledRun, Schedules,
    SecretMeta, SecretVersion, Secrets, Service, Task, TaskDefinition,
};
use crate::clock::Clock;

/// Whether this replica may change production now: the single-writer lease's answer
/// ([`crate::lease::Leadership`] implements it), asked right before a call that changes
/// production leaves. A trait, so that the guard (a port) knows nothing of the lease (a driver's
/// concern).
pub trait Leading: Send + Sync {
    /// Whether this replica leads.
    fn is_leader(&self) -> bool;
}

/// A replica that never competes: always leads.
struct Sole;

impl Leading for Sole {
    fn is_leader(&self) -> bool {
        true
    }
}

/// Why an `UpdateService` was not sent: the replica no longer holds the single-writer lease.
pub(crate) const LOST_LEASE: &str = "this replica no longer holds the lease: the leader decides it";

/// A call kind: one ECS (or Secrets Manager, SSM) API action, paced by its own bucket, as ECS
/// throttles each action with its own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `ecs:ListClusters`
    ListClusters,
    /// `ecs:ListServices`
    ListServices,
    /// `ecs:DescribeServices`
    DescribeServices,
    /// `ecs:DescribeTaskDefinition`
    DescribeTaskDefinition,
    /// `ecs:ListTasks`
    ListTasks,
    /// `ecs:DescribeTasks`
    DescribeTasks,
    /// `ecs:UpdateService`
    UpdateService,
    /// `secretsmanager:DescribeSecret`
    DescribeSecret,
    /// `secretsmanager:ListSecretVersionIds`
    ListSecretVersionIds,
    /// `ssm:DescribeParameters`
    DescribeParameters,
    /// `ssm:GetParameterHistory`
    GetParameterHistory,
    /// `ecs:ListServiceDeployments`, each followed by one `ecs:DescribeServiceDeployments`
    /// (watching a blue/green, linear or canary rollout).
    ListServiceDeployments,
    /// CodeDeploy's reads (`ListApplications`, `ListDeploymentGroups`, `GetDeploymentGroup`,
    /// `GetDeployment`, `ListDeployments`).
    CodeDeployReads,
    /// `codedeploy:CreateDeployment`: a production change, paced like `UpdateService`.
    CreateDeployment,
    /// `ecr:DescribeImages`
    DescribeImages,
    /// `s3:ListObjectsV2` (environment files; IAM action `s3:ListBucket`)
    ListObjects,
    /// Scheduled tasks: `events:ListRules` / `ListTargetsByRule` and `scheduler:ListSchedules`
    /// / `GetSchedule`, read together once per full pass
    Schedules,
}

impl Kind {
    /// Every kind, in index order.
    pub(crate) const ALL: [Kind; 17] = [
        Kind::ListClusters,
        Kind::ListServices,
        Kind::DescribeServices,
        Kind::DescribeTaskDefinition,
        Kind::ListTasks,
        Kind::DescribeTasks,
        Kind::UpdateService,
        Kind::DescribeSecret,
        Kind::ListSecretVersionIds,
        Kind::DescribeParameters,
        Kind::GetParameterHistory,
        Kind::ListServiceDeployments,
        Kind::CodeDeployReads,
        Kind::CreateDeployment,
        Kind::DescribeImages,
        Kind::ListObjects,
        Kind::Schedules,
    ];

    /// The operation's name, as in stats and metrics (`ecs:DescribeServices`).
    pub fn operation(self) -> &'static str {
        match self {
            Kind::ListClusters => "ecs:ListClusters",
            Kind::ListServices => "ecs:ListServices",
            Kind::DescribeServices => "ecs:DescribeServices",
            Kind::DescribeTaskDefinition => "ecs:DescribeTaskDefinition",
            Kind::ListTasks => "ecs:ListTasks",
            Kind::DescribeTasks => "ecs:DescribeTasks",
            Kind::UpdateService => "ecs:UpdateService",
            Kind::DescribeSecret => "secretsmanager:DescribeSecret",
            Kind::ListSecretVersionIds => "secretsmanager:ListSecretVersionIds",
            Kind::DescribeParameters => "ssm:DescribeParameters",
            Kind::GetParameterHistory => "ssm:GetParameterHistory",
            Kind::ListServiceDeployments => "ecs:ListServiceDeployments",
            Kind::CodeDeployReads => "codedeploy:reads",
            Kind::CreateDeployment => "codedeploy:CreateDeployment",
            Kind::DescribeImages => "ecr:DescribeImages",
            Kind::ListObjects => crate::reference::S3_LIST_CALL,
            Kind::Schedules => "events+scheduler:ListSchedules",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One kind's bucket: sustained rate and burst, as ECS documents its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Refill, calls per second.
    pub per_second: f64,
    /// Capacity: calls allowed at once after a quiet spell.
    pub burst: u32,
}

impl Pace {
    /// A bucket of `burst`, refilled at `per_second`.
    pub const fn new(per_second: f64, burst: u32) -> Pace {
        Pace { per_second, burst }
    }
}

/// Client-side rates, how they adapt to throttling, and the retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Each kind's bucket, indexed by [`Kind`] (see [`Limits::pace`]).
    paces: [Pace; Kind::ALL.len()],
    /// On a `ThrottlingException` a kind's rate is multiplied by this (0 < f < 1): someone else
    /// is drawing on the same bucket, so we yield.
    pub throttle_factor: f64,
    /// A kind's rate never drops below this fraction of its configured rate.
    pub floor_fraction: f64,
    /// While calls succeed, a throttled kind's rate climbs back additively, by its full
    /// configured rate over this long.
    pub recovery: Duration,
    /// First backoff delay.
    pub min_backoff: Duration,
    /// Longest backoff delay.
    pub max_backoff: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
}

impl Limits {
    /// The bucket of `kind`.
    pub fn pace(&self, kind: Kind) -> Pace {
        self.paces[kind.index()]
    }

    /// These limits with `kind` paced by `pace`.
    pub fn with(mut self, kind: Kind, pace: Pace) -> Limits {
        self.paces[kind.index()] = pace;
        self
    }
}

impl Default for Limits {
    /// ECS's documented buckets (the account's whole allowance: adaptation yields to other
    /// clients), except `UpdateService`: 1/s with no burst, because it changes production.
    /// Secrets Manager and SSM document no bucket shape for these calls; their defaults stay
    /// well under the documented rates.
    fn default() -> Self {
        let mut paces = [Pace::new(20.0, 100); Kind::ALL.len()];
        for (kind, pace) in [
            (Kind::ListClusters, Pace::new(20.0, 50)),
            (Kind::ListServices, Pace::new(20.0, 100)),
            (Kind::DescribeServices, Pace::new(20.0, 100)),
            (Kind::DescribeTaskDefinition, Pace::new(20.0, 50)),
            (Kind::ListTasks, Pace::new(20.0, 100)),
            (Kind::DescribeTasks, Pace::new(20.0, 100)),
            (Kind::UpdateService, Pace::new(1.0, 1)),
            (Kind::DescribeSecret, Pace::new(50.0, 50)),
            (Kind::ListSecretVersionIds, Pace::new(20.0, 20)),
            (Kind::DescribeParameters, Pace::new(10.0, 10)),
            (Kind::GetParameterHistory, Pace::new(10.0, 10)),
            (Kind::ListServiceDeployments, Pace::new(5.0, 10)),
            (Kind::CodeDeployReads, Pace::new(10.0, 10)),
            (Kind::CreateDeployment, Pace::new(1.0, 1)),
            (Kind::DescribeImages, Pace::new(10.0, 10)),
            // S3 allows thousands of listings per second per prefix; one per environment file
            // per pass needs no more than this.
            (Kind::ListObjects, Pace::new(50.0, 50)),
            (Kind::Schedules, Pace::new(1.0, 5)),
        ] {
            paces[kind.index()] = pace;
        }
        Limits {
            paces,
            throttle_factor: 0.5,
            floor_fraction: 0.05,
            recovery: Duration::from_secs(10),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            max_retries: 12,
        }
    }
}

/// A retry is worth a `warn` line once the call has taken, or the next wait will take, this long.
const SLOW_RETRY: Duration = Duration::from_secs(2);

/// Tells about one retry: at `warn` when the call is becoming slow, else at `debug`.
fn report_retry(
    operation: &'static str,
    resource: &str,
    attempt: u32,
    started: tokio::time::Instant,
    error: &AwsError,
    wait: Duration,
) {
    let elapsed = started.elapsed();
    // Whole milliseconds: backon's jittered waits have nanoseconds nobody wants to read.
    let next_wait = humantime::format_duration(Duration::from_millis(wait.as_millis() as u64));
    if wait >= SLOW_RETRY || elapsed >= SLOW_RETRY {
        tracing::warn!(
            operation,
            resource,
            attempt,
            next_wait = %next_wait,
            elapsed = %humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
            error = %error.message,
            "AWS call failed, retrying"
        );
    } else {
        tracing::debug!(operation, resource, attempt, next_wait = %next_wait, error = %error.message, "AWS call failed, retrying");
    }
}

/// Calls, throttles and retries by operation, for reports and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<BTreeMap<&'static str, OpStats>>,
    /// Other guards' counters this one adds up (one guard per target: see [`Stats::sum_of`]).
    parts: Vec<Arc<Stats>>,
}

/// Counters of one operation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpStats {
    /// Attempts made.
    pub calls: u64,
    /// Attempts answered with throttling.
    pub throttled: u64,
    /// Attempts that were retries.
    pub retries: u64,
}

impl Stats {
    fn record(&self, op: &'static str, f: impl FnOnce(&mut OpStats)) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(op).or_default());
    }

    /// A copy of the counters (with those of its parts added).
    pub fn snapshot(&self) -> BTreeMap<&'static str, OpStats> {
        let mut out = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for part in &self.parts {
            for (op, s) in part.snapshot() {
                let o = out.entry(op).or_default();
                o.calls += s.calls;
                o.throttled += s.throttled;
                o.retries += s.retries;
            }
        }
        out
    }

    /// Counters that add up `parts`, live: the whole process's calls when each target has a
    /// guard of its own.
    pub fn sum_of(parts: Vec<Arc<Stats>>) -> Arc<Stats> {
        Arc::new(Stats {
            inner: Mutex::default(),
            parts,
        })
    }
}

/// governor's clock, on tokio's (pausable) time.
#[derive(Debug, Clone, Copy)]
struct TokioTime {
    start: tokio::time::Instant,
}

impl GovernorClock for TokioTime {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioTime, NoOpMiddleware<Duration>>;

/// ECS's bucket shape on our side (governor), so that by itself we never send more than the
/// bucket allows in any window.
struct Bucket {
    limiter: Limiter,
    clock: TokioTime,
}

impl Bucket {
    fn new(per_second: f64, burst: u32) -> Bucket {
        let clock = TokioTime {
            start: tokio::time::Instant::now(),
        };
        let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Bucket {
            limiter: RateLimiter::direct_with_clock(quota, clock),
            clock,
        }
    }

    /// Takes every token there is.
    fn drain(&self) {
        while self.limiter.check().is_ok() {}
    }

    /// Waits for a token (on tokio's clock, not governor's own timer).
    async fn take(&self) {
        while let Err(not_until) = self.limiter.check() {
            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
        }
    }
}

/// One kind's pacing: its bucket, and below it, once ECS has throttled the kind (someone else
/// draws on the same bucket), an adaptive rate in the manner of the SDK's adaptive retry mode:
/// cut multiplicatively on each throttle, raised additively while calls succeed, until it is
/// back at the bucket's rate and the bucket alone paces again.
///
/// The adaptive rate is a plain spacing of calls, written here rather than with governor because
/// governor's quota is fixed when the limiter is built: rebuilding it at every change would hand
/// out a fresh token each time, i.e. calls the rate does not allow.
struct Paced {
    op: &'static str,
    bucket: Bucket,
    ceiling: f64,
    floor: f64,
    factor: f64,
    /// Calls per second gained per second of success.
    climb: f64,
    adapt: Mutex<Adapt>,
}

struct Adapt {
    /// `None` while not throttled lately: the bucket alone paces.
    rate: Option<f64>,
    /// The earliest moment of the next call at `rate`.
    next: tokio::time::Instant,
    /// When `rate` last changed.
    changed: tokio::time::Instant,
    /// Bumped by each cut, so that the throttles of calls sent before a cut (at the old rate)
    /// do not cut again: one cut per episode, not one per call in flight.
    epoch: u64,
}

impl Paced {
    fn new(op: &'static str, pace: Pace, limits: &Limits) -> Paced {
        let ceiling = pace.per_second.max(0.001);
        let now = tokio::time::Instant::now();
        Paced {
            op,
            bucket: Bucket::new(ceiling, pace.burst),
            ceiling,
            floor: (ceiling * limits.floor_fraction).clamp(0.001, ceiling),
            factor: limits.throttle_factor.clamp(0.01, 0.99),
            climb: ceiling / limits.recovery.as_secs_f64().max(0.001),
            adapt: Mutex::new(Adapt {
                rate: None,
                next: now,
                changed: now,
                epoch: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Adapt> {
        self.adapt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the adaptive rate's slot, then for a token; returns the epoch the call is sent in.
    async fn take(&self) -> u64 {
        let (slot, epoch) = {
            let mut st = self.state();
            let epoch = st.epoch;
            match st.rate {
                None => (None, epoch),
                Some(rate) => {
                    let slot = st.next.max(tokio::time::Instant::now());
                    st.next = slot + Duration::from_secs_f64(1.0 / rate);
                    (Some(slot), epoch)
                }
            }
        };
        if let Some(slot) = slot {
            tokio::time::sleep_until(slot).await;
        }
        self.bucket.take().await;
        epoch
    }

    /// ECS throttled a call sent in `epoch`: yield.
    fn throttled(&self, epoch: u64) {
        // ECS's bucket is empty: so is ours from now on. Else, once the rate has climbed back,
        // ours would still hold the tokens it saved while we went slowly, and spend them in a
        // burst that ECS's bucket, drained by the other client, refuses.
        self.bucket.drain();
        let mut st = self.state();
        if st.epoch != epoch {
            return;
        }
        let now = tokio::time::Instant::now();
        let rate = (st.rate.unwrap_or(self.ceiling) * self.factor).max(self.floor);
        st.rate = Some(rate);
        st.epoch += 1;
        st.changed = now;
        // The bucket is empty now: the next call waits a whole interval at the new rate.
        st.next = st.next.max(now + Duration::from_secs_f64(1.0 / rate));
        tracing::debug!(
            operation = self.op,
            rate,
            "throttled: pacing this call kind slower"
        );
    }

    /// A call succeeded: climb back toward the bucket's rate.
    fn succeeded(&self) {
        let mut st = self.state();
        let Some(rate) = st.rate else { return };
        let now = tokio::time::Instant::now();
        let rate = rate + self.climb * (now - st.changed).as_secs_f64();
        st.changed = now;
        st.rate = (rate < self.ceiling).then_some(rate);
    }

    /// The adaptive rate (calls per second), or `None` when the bucket alone paces.
    fn rate(&self) -> Option<f64> {
        self.state().rate
    }
}

struct Shared {
    ecs: Arc<dyn Ecs>,
    secrets: Arc<dyn Secrets>,
    parameters: Arc<dyn Parameters>,
    codedeploy: Arc<dyn crate::aws::CodeDeploy>,
    registry: Arc<dyn crate::aws::Registry>,
    objects: Arc<dyn Objects>,
    tasks: Arc<dyn ClusterTasks>,
    schedules: Arc<dyn Schedules>,
    paced: Vec<Paced>,
    limits: Limits,
    stats: Arc<Stats>,
    clock: Arc<dyn Clock>,
    leadership: Arc<dyn Leading>,
}

impl Shared {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.limits.min_backoff)
            .with_max_delay(self.limits.max_backoff)
            .with_max_times(self.limits.max_retries)
            .with_jitter()
    }

    fn paced(&self, kind: Kind) -> &Paced {
        &self.paced[kind.index()]
    }

    /// One attempt of `call`, paced as `kind`: the pacing learns from its outcome.
    async fn attempt<T, Fut>(&self, kind: Kind, call: Fut) -> AwsResult<T>
    where
        Fut: std::future::Future<Output = AwsResult<T>>,
    {
        let paced = self.paced(kind);
        let op = kind.operation();
        let epoch = paced.take().await;
        self.stats.record(op, |s| s.calls += 1);
        let r = call.await;
        match &r {
            Err(e) if e.kind == ErrorKind::Throttled => {
                self.stats.record(op, |s| s.throttled += 1);
                paced.throttled(epoch);
            }
            Err(_) => {}
            Ok(_) => paced.succeeded(),
        }
        r
    }

    /// Runs `call` paced as `kind`, retrying retryable errors.
    async fn guarded<T, F, Fut>(&self, kind: Kind, resource: &str, call: F) -> AwsResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = AwsResult<T>>,
    {
        let op = kind.operation();
        let attempt = || self.attempt(kind, call());
        let started = tokio::time::Instant::now();
        let mut failed = 0;
        attempt
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(AwsError::is_retryable)
            .notify(|e: &AwsError, wait: Duration| {
                failed += 1;
                self.stats.record(op, |s| s.retries += 1);
                report_retry(op, resource, failed, started, e, wait);
            })
            .await
    }
}

/// The adaptive rate of each kind that ECS has throttled lately (calls per second); a kind that
/// is absent is paced by its bucket alone.
pub struct Pacing(Arc<Shared>);

impl Pacing {
    /// The adaptive rate of `kind`, if throttling has slowed it.
    pub fn rate(&self, kind: Kind) -> Option<f64> {
        self.0.paced(kind).rate()
    }
}

/// Wraps clients in the guard. `clock` is the wall clock used to tell whether an ambiguous
/// `UpdateService` took effect.
pub fn guard(clients: Clients, limits: Limits, clock: Arc<dyn Clock>) -> (Clients, Arc<Stats>) {
    guard_with(clients, limits, clock, Arc::new(Sole))
}

/// [`guard`], for a replica that may call `UpdateService` only while `leadership` says it leads:
/// checked after the pacing wait and before every attempt, the last moments before a call leaves
/// (a wait for a token, or a backoff, can outlast a lease).
pub(crate) fn guard_with(
    clients: Clients,
    limits: Limits,
    clock: Arc<dyn Clock>,
    leadership: Arc<dyn Leading>,
) -> (Clients, Arc<Stats>) {
    let (guarded, stats, _) = guard_full(clients, limits, clock, leadership);
    (guarded, stats)
}

/// [`guard`], with a view of the adaptive pacing (for tests and benchmarks).
pub fn guard_with_pacing(
    clients: Clients,
    limits: Limits,
    clock: Arc<dyn Clock>,
) -> (Clients, Arc<Stats>, Pacing) {
    guard_full(clients, limits, clock, Arc::new(Sole))
}

fn guard_full(
    clients: Clients,
    limits: Limits,
    clock: Arc<dyn Clock>,
    leadership: Arc<dyn Leading>,
) -> (Clients, Arc<Stats>, Pacing) {
    let stats = Arc::new(Stats::default());
    let shared = Arc::new(Shared {
        ecs: clients.ecs,
        secrets: clients.secrets,
        parameters: clients.parameters,
        codedeploy: clients.codedeploy,
        registry: clients.registry,
        objects: clients.objects,
        tasks: clients.tasks,
        schedules: clients.schedules,
        paced: Kind::ALL
            .iter()
            .map(|k| Paced::new(k.operation(), limits.pace(*k), &limits))
            .collect(),
        limits,
        stats: stats.clone(),
        clock,
        leadership,
    });
    let guarded = Clients {
        ecs: Arc::new(GuardedEcs(shared.clone())),
        secrets: Arc::new(GuardedSecrets(shared.clone())),
        parameters: Arc::new(GuardedParameters(shared.clone())),
        codedeploy: Arc::new(GuardedCodeDeploy(shared.clone())),
        registry: Arc::new(GuardedRegistry(shared.clone())),
        objects: Arc::new(GuardedObjects(shared.clone())),
        tasks: Arc::new(GuardedTasks(shared.clone())),
        schedules: Arc::new(GuardedSchedules(shared.clone())),
        identity: clients.identity,
        region: clients.region,
    };
    (guarded, stats, Pacing(shared))
}

struct GuardedEcs(Arc<Shared>);

struct GuardedCodeDeploy(Arc<Shared>);

#[async_trait]
impl crate::aws::CodeDeploy for GuardedCodeDeploy {
    async fn list_applications(&self, next: Option<String>) -> AwsResult<Page<String>> {
        let s = &self.0;
        s.guarded(Kind::CodeDeployReads, "-", || {
            s.codedeploy.list_applications(next.clone())
        })
        .await
    }

    async fn list_deployment_groups(
        &self,
        application: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>> {
        let s = &self.0;
        s.guarded(Kind::CodeDeployReads, application, || {
            s.codedeploy
                .list_deployment_groups(application, next.clone())
        })
        .await
    }

    async fn get_deployment_group(
        &self,
        application: &str,
        group: &str,
    ) -> AwsResult<crate::aws::DeploymentGroup> {
        let s = &self.0;
        s.guarded(Kind::CodeDeployReads, group, || {
            s.codedeploy.get_deployment_group(application, group)
        })
        .await
    }

    /// Paced and sent once: CodeDeploy has no idempotency token for it, and no `took_effect`
    /// reading tells a lost answer from a refused call, so a failure is reported, never retried.
    async fn create_deployment(
        &self,
        application: &str,
        group: &str,
        appspec: &str,
    ) -> AwsResult<String> {
        let s = &self.0;
        let call = async {
            if !s.leadership.is_leader() {
                return Err(AwsError::new(
                    "codedeploy:CreateDeployment",
                    format!("{application}/{group}"),
                    ErrorKind::Other,
                    LOST_LEASE,
                ));
            }
            s.codedeploy
                .create_deployment(application, group, appspec)
                .await
        };
        s.attempt(Kind::CreateDeployment, call).await
    }

    async fn get_deployment(&self, id: &str) -> AwsResult<crate::aws::CodeDeployStatus> {
        let s = &self.0;
        s.guarded(Kind::CodeDeployReads, id, || {
            s.codedeploy.get_deployment(id)
        })
        .await
    }

    async fn failed_since(
        &self,
        application: &str,
        group: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> AwsResult<Vec<String>> {
        let s = &self.0;
        s.guarded(Kind::CodeDeployReads, group, || {
            s.codedeploy.failed_since(application, group, since)
        })
        .await
    }
}

struct GuardedRegistry(Arc<Shared>);

#[async_trait]
impl crate::aws::Registry for GuardedRegistry {
    async fn describe_images(
        &self,
        region: &str,
        registry: &str,
        repository: &str,
        tags: &[String],
    ) -> AwsResult<Vec<crate::aws::TaggedImage>> {
        let s = &self.0;
        s.guarded(Kind::DescribeImages, repository, || {
            s.registry
                .describe_images(region, registry, repository, tags)
        })
        .await
    }
}

#[async_trait]
impl Ecs for GuardedEcs {
    async fn list_clusters(&self, next: Option<String>) -> AwsResult<Page<String>> {
        let s = &self.0;
        s.guarded(Kind::ListClusters, "-", || {
            s.ecs.list_clusters(next.clone())
        })
        .await
    }

    async fn list_services(&self, cluster: &str, next: Option<String>) -> AwsResult<Page<String>> {
        let s = &self.0;
        s.guarded(Kind::ListServices, cluster, || {
            s.ecs.list_services(cluster, next.clone())
        })
        .await
    }

    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> AwsResult<Vec<Service>> {
        let s = &self.0;
        s.guarded(Kind::DescribeServices, cluster, || {
            s.ecs.describe_services(cluster, services)
        })
        .await
    }

    async fn describe_task_definition(&self, arn: &str) -> AwsResult<TaskDefinition> {
        let s = &self.0;
        s.guarded(Kind::DescribeTaskDefinition, arn, || {
            s.ecs.describe_task_definition(arn)
        })
        .await
    }

    async fn list_tasks(
        &self,
        cluster: &str,
        service: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>> {
        let s = &self.0;
        s.guarded(Kind::ListTasks, service, || {
            s.ecs.list_tasks(cluster, service, next.clone())
        })
        .await
    }

    async fn describe_tasks(&self, cluster: &str, tasks: &[String]) -> AwsResult<Vec<Task>> {
        let s = &self.0;
        s.guarded(Kind::DescribeTasks, cluster, || {
            s.ecs.describe_tasks(cluster, tasks)
        })
        .await
    }

    async fn service_deployments(
        &self,
        cluster: &str,
        service: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> AwsResult<Vec<crate::aws::ServiceDeployment>> {
        let s = &self.0;
        s.guarded(Kind::ListServiceDeployments, service, || {
            s.ecs.service_deployments(cluster, service, since)
        })
        .await
    }

    async fn force_new_deployment(&self, cluster: &str, service: &str) -> AwsResult<Deployment> {
        let s = &self.0;
        let started = s.clock.now() - chrono::Duration::seconds(1);
        let attempt = || async {
            // The lease is looked at after the pacing wait, right before the call leaves.
            let call = async {
                if !s.leadership.is_leader() {
                    return Err(AwsError::new(
                        "ecs:UpdateService",
                        format!("{cluster}/{service}"),
                        ErrorKind::Other,
                        LOST_LEASE,
                    ));
                }
                s.ecs.force_new_deployment(cluster, service).await
            };
            match s.attempt(Kind::UpdateService, call).await {
                Ok(d) => Ok(d),
                Err(e) if e.kind == ErrorKind::Transient => {
                    // The request may have been executed and only its answer lost.
                    match self.took_effect(cluster, service, started).await {
                        Some(d) => {
                            tracing::info!(cluster, service, deployment = %d.id, "UpdateService answer was lost but it took effect");
                            Ok(d)
                        }
                        None => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        };
        let began = tokio::time::Instant::now();
        let resource = format!("{cluster}/{service}");
        let mut failed = 0;
        attempt
            .retry(s.backoff())
            .sleep(tokio::time::sleep)
            .when(AwsError::is_retryable)
            .notify(|e: &AwsError, wait: Duration| {
                failed += 1;
                s.stats.record("ecs:UpdateService", |st| st.retries += 1);
                report_retry("ecs:UpdateService", &resource, failed, began, e, wait);
            })
            .await
    }
}

impl GuardedEcs {
    /// The primary deployment, if it was created since `since` (our clock, less a second for skew).
    async fn took_effect(
        &self,
        cluster: &str,
        service: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Option<Deployment> {
        let found = self
            .describe_services(cluster, &[service.to_string()])
            .await
            .ok()?;
        let primary = found.first()?.primary()?.clone();
        (primary.created_at >= since).then_some(primary)
    }
}

struct GuardedSecrets(Arc<Shared>);

#[async_trait]
impl Secrets for GuardedSecrets {
    async fn describe_secret(&self, region: &str, id: &str) -> AwsResult<SecretMeta> {
        let s = &self.0;
        s.guarded(Kind::DescribeSecret, id, || {
            s.secrets.describe_secret(region, id)
        })
        .await
    }

    async fn list_secret_versions(
        &self,
        region: &str,
        arn: &str,
        next: Option<String>,
    ) -> AwsResult<Page<SecretVersion>> {
        let s = &self.0;
        s.guarded(Kind::ListSecretVersionIds, arn, || {
            s.secrets.list_secret_versions(region, arn, next.clone())
        })
        .await
    }
}

struct GuardedParameters(Arc<Shared>);

#[async_trait]
impl Parameters for GuardedParameters {
    async fn describe_parameters(
        &self,
        region: &str,
        names: &[String],
    ) -> AwsResult<Vec<ParameterMeta>> {
        let s = &self.0;
        s.guarded(Kind::DescribeParameters, &names.join(","), || {
            s.parameters.describe_parameters(region, names)
        })
        .await
    }

    async fn parameter_history(
        &self,
        region: &str,
        name: &str,
    ) -> AwsResult<Vec<ParameterVersion>> {
        let s = &self.0;
        s.guarded(Kind::GetParameterHistory, name, || {
            s.parameters.parameter_history(region, name)
        })
        .await
    }
}

/// Paced as the proof of rotation's task calls: the same ECS buckets.
struct GuardedTasks(Arc<Shared>);

#[async_trait]
impl ClusterTasks for GuardedTasks {
    async fn list_cluster_tasks(
        &self,
        cluster: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>> {
        let s = &self.0;
        s.guarded(Kind::ListTasks, cluster, || {
            s.tasks.list_cluster_tasks(cluster, next.clone())
        })
        .await
    }

    async fn describe_cluster_tasks(
        &self,
        cluster: &str,
        tasks: &[String],
    ) -> AwsResult<Vec<RunningTask>> {
        let s = &self.0;
        s.guarded(Kind::DescribeTasks, cluster, || {
            s.tasks.describe_cluster_tasks(cluster, tasks)
        })
        .await
    }
}

/// One paced, retried reading of every rule and schedule (a handful of calls per full pass).
struct GuardedSchedules(Arc<Shared>);

#[async_trait]
impl Schedules for GuardedSchedules {
    async fn ecs_schedules(&self) -> AwsResult<Vec<ScheduledRun>> {
        let s = &self.0;
        s.guarded(Kind::Schedules, "-", || s.schedules.ecs_schedules())
            .await
    }
}

struct GuardedObjects(Arc<Shared>);

#[async_trait]
impl Objects for GuardedObjects {
    async fn object_meta(&self, bucket: &str, key: &str) -> AwsResult<Option<ObjectMeta>> {
        let s = &self.0;
        s.guarded(Kind::ListObjects, &format!("{bucket}/{key}"), || {
            s.objects.object_meta(bucket, key)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake::{Bucket as FakeBucket, FakeAws};

    fn world() -> (FakeAws, Arc<dyn Clock>) {
        let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
        (fake, clock)
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_never_surfaced() {
        let (fake, clock) = world();
        fake.create_service("c", "s", "td", 1, &[]);
        fake.fail_next("ecs:DescribeServices", 5, ErrorKind::Throttled);
        let (clients, stats) = guard(fake.clients(), Limits::default(), clock);
        let found = clients
            .ecs
            .describe_services("c", &["s".into()])
            .await
            .expect("retried through");
        assert_eq!(found.len(), 1);
        let st = stats.snapshot()["ecs:DescribeServices"];
        assert_eq!((st.calls, st.throttled, st.retries), (6, 5, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let (fake, clock) = world();
        fake.fail_next("ecs:ListServices", 1, ErrorKind::AccessDenied);
        let (clients, stats) = guard(fake.clients(), Limits::default(), clock);
        let err = clients
            .ecs
            .list_services("c", None)
            .await
            .expect_err("denied");
        assert_eq!(err.kind, ErrorKind::AccessDenied);
        assert_eq!(stats.snapshot()["ecs:ListServices"].calls, 1);
    }

    /// No credentials, a refused connection, an endpoint that does not resolve: the old guard
    /// retried them twelve times with backoff up to 20 s (about 220 s) before saying anything.
    #[tokio::test(start_paused = true)]
    async fn setup_errors_fail_at_once() {
        let (fake, clock) = world();
        fake.fail_next("ecs:ListClusters", 1, ErrorKind::Setup);
        fake.fail_next("ecs:UpdateService", 1, ErrorKind::Setup);
        fake.create_service("c", "s", "td", 1, &[]);
        let (clients, stats) = guard(fake.clients(), Limits::default(), clock);
        let started = tokio::time::Instant::now();
        let err = clients.ecs.list_clusters(None).await.expect_err("setup");
        assert_eq!(err.kind, ErrorKind::Setup);
        let err = clients
            .ecs
            .force_new_deployment("c", "s")
            .await
            .expect_err("setup");
        assert_eq!(err.kind, ErrorKind::Setup);
        assert_eq!(started.elapsed(), Duration::ZERO, "no backoff at all");
        let st = stats.snapshot();
        assert_eq!(st["ecs:ListClusters"].calls, 1);
        assert_eq!(st["ecs:UpdateService"].calls, 1);
        assert_eq!(fake.rollouts_of("c", "s"), 0);
    }

    /// Log lines written while `f` runs.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_takes_a_while_is_told_at_warn() {
        let (fake, clock) = world();
        fake.create_service("c", "s", "td", 1, &[]);
        // 200 ms, 400 ms, 800 ms, 1.6 s, then over 2 s: the last two retries are slow.
        fake.fail_next("ecs:DescribeServices", 6, ErrorKind::Transient);
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let (clients, _) = guard(fake.clients(), Limits::default(), clock);
        clients
            .ecs
            .describe_services("c", &["s".into()])
            .await
            .expect("retried through");
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let warns: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
        assert!(!warns.is_empty(), "no warning: {text}");
        assert!(warns.len() < 6, "quick retries stay at debug: {text}");
        for w in &warns {
            assert!(w.contains("AWS call failed, retrying"), "{w}");
            assert!(w.contains("operation=\"ecs:DescribeServices\""), "{w}");
            assert!(w.contains("resource=\"c\""), "{w}");
            assert!(w.contains("attempt=") && w.contains("next_wait="), "{w}");
        }
        assert!(warns.last().unwrap().contains("attempt=6"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_update_bucket_spaces_calls() {
        let (fake, clock) = world();
        for i in 0..10 {
            fake.create_service("c", &format!("s{i}"), "td", 1, &[]);
        }
        let limits = Limits::default().with(Kind::UpdateService, Pace::new(2.0, 1));
        let (clients, _) = guard(fake.clients(), limits, clock);
        for i in 0..10 {
            clients
                .ecs
                .force_new_deployment("c", &format!("s{i}"))
                .await
                .expect("rolls");
        }
        let at: Vec<_> = fake.updates().iter().map(|u| u.at).collect();
        for pair in at.windows(2) {
            assert!(
                pair[1] - pair[0] >= chrono::Duration::milliseconds(499),
                "{pair:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn server_side_buckets_are_absorbed() {
        let (fake, clock) = world();
        for i in 0..20 {
            fake.create_service("c", &format!("s{i}"), "td", 1, &[]);
        }
        // The account's bucket is nearly empty (other tools use it): our fast local rate hits it.
        fake.set_bucket(
            "ecs:UpdateService",
            FakeBucket {
                burst: 2.0,
                refill: 0.5,
            },
        );
        let limits = Limits::default().with(Kind::UpdateService, Pace::new(50.0, 50));
        let (clients, stats) = guard(fake.clients(), limits, clock);
        for i in 0..20 {
            clients
                .ecs
                .force_new_deployment("c", &format!("s{i}"))
                .await
                .expect("throttles are retried");
        }
        assert_eq!(fake.updates().len(), 20, "each exactly once");
        assert!(stats.snapshot()["ecs:UpdateService"].throttled > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_update_answer_is_not_repeated() {
        let (fake, clock) = world();
        fake.create_service("c", "s", "td", 1, &[]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        // The call executes, but its answer is lost.
        fake.lose_next_answer("ecs:UpdateService");
        let (clients, _) = guard(fake.clients(), Limits::default(), clock);
        clients
            .ecs
            .force_new_deployment("c", "s")
            .await
            .expect("recognised as done");
        assert_eq!(fake.rollouts_of("c", "s"), 1, "no second forced deployment");
        // A transient failure before execution is retried and rolls once.
        fake.fail_next("ecs:UpdateService", 2, ErrorKind::Transient);
        tokio::time::sleep(Duration::from_secs(10)).await;
        clients
            .ecs
            .force_new_deployment("c", "s")
            .await
            .expect("retried");
        assert_eq!(fake.rollouts_of("c", "s"), 2);
    }
}
