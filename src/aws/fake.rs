//! An in-memory AWS for deterministic tests: ECS clusters, services and task definitions,
//! Secrets Manager secrets with versions and stages, SSM parameters.
//!
//! Unlike the emulator it models what the tests of the rollout engine need: pages of a chosen
//! size, `DescribeServices`' limit of ten, rollouts that progress with (tokio's, pausable) time and
//! complete, fail, roll back or hang, ECS-style token buckets that throttle, and injected faults.
//! It counts every call by operation and records every `UpdateService`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AwsError, AwsResult, Clients, Controller, Deployment, DeploymentStatus, Ecs, ErrorKind, Page,
    ParameterMeta, ParameterVersion, Parameters, RawRef, RolloutState, RunningTask, SecretMeta,
    SecretVersion, Secrets, Service, Task, TaskDefinition,
};
use crate::clock::Clock;
use crate::reference::{canonical_param_name, Site, AWSCURRENT, AWSPENDING, AWSPREVIOUS};

const ACCOUNT: &str = "111122223333";

mod s3;
mod tasks;

/// How a forced deployment of a service plays out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Reaches `COMPLETED` after the given time.
    Complete(Duration),
    /// Reaches `FAILED` after the given time, with this many failed tasks.
    Fail(Duration, i32),
    /// The circuit breaker rolls back after the given time: a new primary deployment appears
    /// and ours turns `ACTIVE` / `FAILED`.
    RollBack(Duration),
    /// Stays `IN_PROGRESS` forever.
    Stuck,
    /// Reports no `rolloutState` at all; after the given time running = desired and the old
    /// deployment is gone.
    NoRolloutState(Duration),
    /// A blue/green, linear or canary rollout whose lifecycle hook waits for someone's
    /// `ContinueServiceDeployment`: in progress forever, the hook awaiting action.
    AwaitHook,
}

/// A token bucket, as ECS documents per API action.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Burst capacity.
    pub burst: f64,
    /// Refill per second.
    pub refill: f64,
}

#[derive(Debug)]
struct BucketState {
    spec: Bucket,
    tokens: f64,
    at: DateTime<Utc>,
    /// The share of every refill that another client of the account takes (0: none).
    other_share: f64,
}

/// One call that reached the fake: its operation, when, and whether it was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRecord {
    /// e.g. `ecs:DescribeServices`.
    pub operation: &'static str,
    /// When (fake clock).
    pub at: DateTime<Utc>,
    /// Answered with a throttling error.
    pub throttled: bool,
}

impl BucketState {
    /// Adds what was refilled since the last look, less the other client's share.
    fn refill_to(&mut self, now: DateTime<Utc>) {
        let elapsed = (now - self.at).num_milliseconds().max(0) as f64 / 1000.0;
        let ours = elapsed * self.spec.refill * (1.0 - self.other_share);
        self.tokens = (self.tokens + ours).min(self.spec.burst);
        self.at = now;
    }
}

#[derive(Debug, Clone)]
struct FakeDeployment {
    dep: Deployment,
    started: DateTime<Utc>,
    behaviour: Option<Behaviour>,
    /// Each container's image digest, as the image tags named them when it started.
    digests: Vec<(String, String)>,
}

/// One CodeDeploy deployment the fake was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeDeployRecord {
    /// Its id.
    pub id: String,
    /// The application and group.
    pub group: (String, String),
    /// The AppSpec it was given.
    pub appspec: String,
    /// `cluster/service` it deploys.
    pub service: String,
    /// When.
    pub at: DateTime<Utc>,
    behaviour: Behaviour,
}

#[derive(Debug, Clone)]
struct FakeService {
    service: Service,
    behaviour: Behaviour,
    deployments: Vec<FakeDeployment>,
}

#[derive(Debug, Clone)]
struct FakeVersion {
    id: String,
    created: DateTime<Utc>,
    stages: Vec<String>,
}

#[derive(Debug, Clone)]
struct FakeSecret {
    arn: String,
    name: String,
    region: String,
    account: String,
    last_changed: DateTime<Utc>,
    last_rotated: Option<DateTime<Utc>>,
    versions: Vec<FakeVersion>,
}

/// A standing refusal: every call of `operation` whose resource contains `resource` fails.
#[derive(Debug, Clone)]
struct Refusal {
    operation: &'static str,
    resource: String,
    kind: ErrorKind,
    message: String,
}

#[derive(Debug, Clone)]
struct FakeParam {
    history: Vec<ParameterVersion>,
}

/// One recorded `UpdateService`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRecord {
    /// `cluster/service`.
    pub service: String,
    /// When (fake clock).
    pub at: DateTime<Utc>,
    /// Deployments in progress across the account right after this call, this one included.
    pub in_progress_after: usize,
    /// Deployments in progress in this service's cluster right after this call.
    pub in_progress_in_cluster: usize,
}

#[derive(Default)]
struct World {
    /// A round trip's time on `DescribeServices` and `UpdateService` (zero: answered at once).
    latency: Duration,
    clusters: BTreeMap<String, BTreeMap<String, FakeService>>,
    task_defs: HashMap<String, Vec<RawRef>>,
    families: HashMap<String, u32>,
    secrets: Vec<FakeSecret>,
    params: BTreeMap<(String, String), FakeParam>,
    /// S3 objects by (bucket, key): environment files (see `fake/s3.rs`).
    objects: BTreeMap<(String, String), s3::FakeObject>,
    /// Standalone tasks (`RunTask`) by cluster (see `fake/tasks.rs`).
    standalone: BTreeMap<String, Vec<RunningTask>>,
    /// Rules and schedules with ECS targets (see `fake/tasks.rs`).
    schedules: Vec<super::ScheduledRun>,
    calls: BTreeMap<&'static str, u64>,
    throttled: BTreeMap<&'static str, u64>,
    buckets: HashMap<&'static str, BucketState>,
    call_log: Vec<CallRecord>,
    faults: HashMap<&'static str, VecDeque<ErrorKind>>,
    refusals: Vec<Refusal>,
    lost_answers: HashMap<&'static str, usize>,
    updates: Vec<UpdateRecord>,
    /// Tasks that outlive their deployment, by (cluster, service): what a proof of rotation must
    /// name.
    lingering: HashMap<(String, String), Vec<Task>>,
    page_size: usize,
    seq: u64,
    /// The account `sts:GetCallerIdentity` answers (default: the fake's own).
    identity: Option<String>,
    /// Task definition ARN → each container's (name, image).
    images_of: HashMap<String, Vec<(String, String)>>,
    /// `repository:tag` → the digest it names now.
    tags: HashMap<String, String>,
    /// CodeDeploy deployment groups.
    groups: Vec<super::DeploymentGroup>,
    /// CodeDeploy deployments made.
    codedeploys: Vec<CodeDeployRecord>,
}

/// The fake. Cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeAws {
    world: Arc<Mutex<World>>,
    clock: Arc<dyn Clock>,
    region: String,
}

impl FakeAws {
    /// An empty account in `region`, on `clock`.
    pub fn new(region: &str, clock: Arc<dyn Clock>) -> Self {
        let world = World {
            page_size: 100,
            ..Default::default()
        };
        FakeAws {
            world: Arc::new(Mutex::new(world)),
            clock,
            region: region.to_string(),
        }
    }

    /// An empty account on a clock that starts at 2026-01-01 and runs on tokio's (pausable)
    /// time: the usual set-up of deterministic tests. Returns the clock too, for the reconciler.
    pub fn on_tokio_clock(region: &str) -> (Self, Arc<dyn Clock>) {
        let start = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::TokioClock::starting_at(start));
        (FakeAws::new(region, clock.clone()), clock)
    }

    /// The three clients over this fake.
    pub fn clients(&self) -> Clients {
        Clients {
            ecs: Arc::new(self.clone()),
            secrets: Arc::new(self.clone()),
            parameters: Arc::new(self.clone()),
            objects: Arc::new(self.clone()),
            tasks: Arc::new(self.clone()),
            schedules: Arc::new(self.clone()),
            identity: Arc::new(self.clone()),
            codedeploy: Arc::new(self.clone()),
            registry: Arc::new(self.clone()),
            region: self.region.clone(),
        }
    }

    fn w(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Page size for every listing (AWS uses up to 100; small pages test the paging loop).
    pub fn set_page_size(&self, n: usize) {
        self.w().page_size = n.max(1);
    }

    /// Makes `DescribeServices` and `UpdateService` take this long (tokio time), as a network
    /// round trip does: other tasks run meanwhile, so races between them become possible.
    pub fn set_latency(&self, latency: Duration) {
        self.w().latency = latency;
    }

    async fn round_trip(&self) {
        let latency = self.w().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Throttle `operation` (e.g. `ecs:UpdateService`) with a token bucket, full at start.
    pub fn set_bucket(&self, operation: &'static str, spec: Bucket) {
        let at = self.now();
        self.w().buckets.insert(
            operation,
            BucketState {
                spec,
                tokens: spec.burst,
                at,
                other_share: 0.0,
            },
        );
    }

    /// Another client of the account draws on `operation`'s bucket, taking `share` (0 to 1) of
    /// every refill from now on; 0 stops it. The bucket's level is brought up to now first.
    pub fn share_bucket(&self, operation: &str, share: f64) {
        let now = self.now();
        let mut w = self.w();
        if let Some(b) = w.buckets.get_mut(operation) {
            b.refill_to(now);
            b.other_share = share.clamp(0.0, 1.0);
        }
    }

    /// Every call that reached the fake, in order, with its time and whether it was throttled.
    pub fn call_log(&self) -> Vec<CallRecord> {
        self.w().call_log.clone()
    }

    /// ECS's documented buckets for the calls ecs-reloader makes.
    pub fn use_ecs_buckets(&self) {
        self.set_bucket(
            "ecs:UpdateService",
            Bucket {
                burst: 50.0,
                refill: 5.0,
            },
        );
        self.set_bucket(
            "ecs:DescribeServices",
            Bucket {
                burst: 100.0,
                refill: 20.0,
            },
        );
        self.set_bucket(
            "ecs:ListServices",
            Bucket {
                burst: 100.0,
                refill: 20.0,
            },
        );
        self.set_bucket(
            "ecs:DescribeTaskDefinition",
            Bucket {
                burst: 50.0,
                refill: 20.0,
            },
        );
    }

    /// The next `n` calls of `operation` fail with `kind`.
    pub fn fail_next(&self, operation: &'static str, n: usize, kind: ErrorKind) {
        let mut w = self.w();
        let q = w.faults.entry(operation).or_default();
        for _ in 0..n {
            q.push_back(kind);
        }
    }

    /// Every call of `operation` about a resource containing `resource` fails with `kind` and
    /// `message` (an IAM or resource-policy denial, a KMS refusal, a disabled region…), until
    /// the end of the test.
    pub fn refuse(&self, operation: &'static str, resource: &str, kind: ErrorKind, message: &str) {
        self.w().refusals.push(Refusal {
            operation,
            resource: resource.to_string(),
            kind,
            message: message.to_string(),
        });
    }

    /// The next call of `operation` takes effect but its answer is lost (a transient error).
    pub fn lose_next_answer(&self, operation: &'static str) {
        *self.w().lost_answers.entry(operation).or_default() += 1;
    }

    /// Calls made of `operation` (throttled ones included).
    pub fn calls(&self, operation: &str) -> u64 {
        self.w().calls.get(operation).copied().unwrap_or(0)
    }

    /// All calls by operation.
    pub fn all_calls(&self) -> BTreeMap<&'static str, u64> {
        self.w().calls.clone()
    }

    /// Calls of `operation` answered with a throttling error.
    pub fn throttled(&self, operation: &str) -> u64 {
        self.w().throttled.get(operation).copied().unwrap_or(0)
    }

    /// Every successful `UpdateService`, in order.
    pub fn updates(&self) -> Vec<UpdateRecord> {
        self.w().updates.clone()
    }

    /// Successful `UpdateService` calls for one service.
    pub fn rollouts_of(&self, cluster: &str, service: &str) -> usize {
        let key = format!("{cluster}/{service}");
        self.w().updates.iter().filter(|u| u.service == key).count()
    }

    fn next_id(w: &mut World, prefix: &str) -> String {
        w.seq += 1;
        format!("{prefix}{:012}", w.seq)
    }

    // ---- Secrets Manager -------------------------------------------------------------------

    /// Creates a secret with one `AWSCURRENT` version now; returns its full ARN.
    pub fn create_secret(&self, name: &str) -> String {
        self.create_secret_in(&self.region.clone(), name)
    }

    /// Creates a secret in another region.
    pub fn create_secret_in(&self, region: &str, name: &str) -> String {
        self.create_secret_in_account(ACCOUNT, region, name)
    }

    /// Makes `sts:GetCallerIdentity` answer `account`: the operator's credentials belong to
    /// another account than the one whose resources the fake plays (a target reached by role).
    pub fn set_caller_account(&self, account: &str) {
        self.w().identity = Some(account.to_string());
    }

    /// The account the fake plays (its ECS resources and its own secrets live there).
    pub fn account(&self) -> &'static str {
        ACCOUNT
    }

    /// Creates a secret in another account (readable with the operator's credentials, as a
    /// resource policy allowing them would make it; [`refuse`](Self::refuse) plays one that
    /// does not).
    pub fn create_secret_in_account(&self, account: &str, region: &str, name: &str) -> String {
        let now = self.now();
        let mut w = self.w();
        let n = w.seq;
        let suffix: String = format!("{:06}", n % 1_000_000)
            .chars()
            .map(|c| (b'A' + (c as u8 - b'0')) as char)
            .collect();
        let arn = format!("arn:aws:secretsmanager:{region}:{account}:secret:{name}-{suffix}");
        let id = Self::next_id(&mut w, "v");
        w.secrets.push(FakeSecret {
            arn: arn.clone(),
            name: name.to_string(),
            region: region.to_string(),
            account: account.to_string(),
            last_changed: now,
            last_rotated: None,
            versions: vec![FakeVersion {
                id,
                created: now,
                stages: vec![AWSCURRENT.into()],
            }],
        });
        arn
    }

    fn secret_mut<'a>(w: &'a mut World, name: &str) -> Option<&'a mut FakeSecret> {
        w.secrets
            .iter_mut()
            .find(|s| (s.name == name && s.account == ACCOUNT) || s.arn == name)
    }

    /// `PutSecretValue` with `stages` (default `AWSCURRENT`): returns the new version id.
    pub fn put_secret_value(&self, name: &str, stages: &[&str]) -> String {
        let now = self.now();
        let mut w = self.w();
        let id = Self::next_id(&mut w, "v");
        let stages: Vec<String> = if stages.is_empty() {
            vec![AWSCURRENT.into()]
        } else {
            stages.iter().map(|s| s.to_string()).collect()
        };
        let Some(s) = Self::secret_mut(&mut w, name) else {
            return id;
        };
        for st in &stages {
            Self::detach(s, st);
        }
        s.versions.push(FakeVersion {
            id: id.clone(),
            created: now,
            stages: stages.clone(),
        });
        s.last_changed = now;
        id
    }

    fn detach(s: &mut FakeSecret, stage: &str) {
        let mut from = None;
        for v in &mut s.versions {
            if let Some(pos) = v.stages.iter().position(|x| x == stage) {
                v.stages.remove(pos);
                from = Some(v.id.clone());
            }
        }
        if stage == AWSCURRENT {
            for v in &mut s.versions {
                v.stages.retain(|x| x != AWSPREVIOUS);
            }
            if let Some(from) = from {
                if let Some(v) = s.versions.iter_mut().find(|v| v.id == from) {
                    v.stages.push(AWSPREVIOUS.into());
                }
            }
        }
    }

    /// `UpdateSecretVersionStage`: moves `stage` to `version`.
    pub fn move_stage(&self, name: &str, stage: &str, version: &str) {
        let now = self.now();
        let mut w = self.w();
        let Some(s) = Self::secret_mut(&mut w, name) else {
            return;
        };
        Self::detach(s, stage);
        if let Some(v) = s.versions.iter_mut().find(|v| v.id == version) {
            v.stages.retain(|x| x != AWSPREVIOUS || stage != AWSCURRENT);
            v.stages.push(stage.to_string());
        }
        s.last_changed = now;
    }

    /// A full rotation's first step: a new `AWSPENDING` version. Returns its id. Alone, it is
    /// what a failed rotation leaves behind.
    pub fn start_rotation(&self, name: &str) -> String {
        self.put_secret_value(name, &[AWSPENDING])
    }

    /// A rotation's last step and its completion: `AWSCURRENT` moves to the `AWSPENDING` version
    /// (`AWSPREVIOUS` to the old one), `AWSPENDING` goes, and `LastRotatedDate` is set, as
    /// Secrets Manager does when a rotation succeeds.
    pub fn finish_rotation(&self, name: &str) {
        let now = self.now();
        let mut w = self.w();
        let Some(s) = Self::secret_mut(&mut w, name) else {
            return;
        };
        let Some(pending) = s
            .versions
            .iter()
            .find(|v| v.stages.iter().any(|x| x == AWSPENDING))
            .map(|v| v.id.clone())
        else {
            return;
        };
        Self::detach(s, AWSCURRENT);
        Self::detach(s, AWSPENDING);
        if let Some(v) = s.versions.iter_mut().find(|v| v.id == pending) {
            v.stages.retain(|x| x != AWSPREVIOUS);
            v.stages.push(AWSCURRENT.into());
        }
        s.last_changed = now;
        s.last_rotated = Some(now);
    }

    /// A metadata-only edit (description, tags, KMS key, rotation schedule, replication): only
    /// `LastChangedDate` moves.
    pub fn edit_metadata(&self, name: &str) {
        let now = self.now();
        if let Some(s) = Self::secret_mut(&mut self.w(), name) {
            s.last_changed = now;
        }
    }

    /// The version id carrying `stage`.
    pub fn version_with(&self, name: &str, stage: &str) -> Option<String> {
        let w = self.w();
        let s = w.secrets.iter().find(|s| s.name == name)?;
        s.versions
            .iter()
            .find(|v| v.stages.iter().any(|x| x == stage))
            .map(|v| v.id.clone())
    }

    // ---- SSM --------------------------------------------------------------------------------

    /// `PutParameter` (creating or overwriting): returns the new version number.
    pub fn put_parameter(&self, name: &str) -> i64 {
        self.put_parameter_in(&self.region.clone(), name)
    }

    /// `PutParameter` in another region.
    pub fn put_parameter_in(&self, region: &str, name: &str) -> i64 {
        let now = self.now();
        let key = (region.to_string(), canonical_param_name(name));
        let mut w = self.w();
        let p = w.params.entry(key).or_insert(FakeParam { history: vec![] });
        let version = p.history.len() as i64 + 1;
        p.history.push(ParameterVersion {
            version,
            last_modified: Some(now),
            labels: vec![],
        });
        version
    }

    /// `LabelParameterVersion`: moves `label` to `version` (the parameter's dates do not move).
    pub fn label_parameter(&self, name: &str, version: i64, label: &str) {
        let key = (self.region.clone(), canonical_param_name(name));
        let mut w = self.w();
        if let Some(p) = w.params.get_mut(&key) {
            for v in &mut p.history {
                v.labels.retain(|l| l != label);
                if v.version == version {
                    v.labels.push(label.to_string());
                }
            }
        }
    }

    // ---- ECS --------------------------------------------------------------------------------

    /// Registers a task definition revision with these references; returns its ARN.
    pub fn register_task_definition(&self, family: &str, refs: &[(Site, &str)]) -> String {
        let mut w = self.w();
        let rev = w.families.entry(family.to_string()).or_insert(0);
        *rev += 1;
        let arn = format!(
            "arn:aws:ecs:{}:{ACCOUNT}:task-definition/{family}:{rev}",
            self.region
        );
        let raw = refs
            .iter()
            .map(|(site, v)| RawRef {
                site: site.clone(),
                value: v.to_string(),
            })
            .collect();
        w.task_defs.insert(arn.clone(), raw);
        arn
    }

    /// Gives a task definition's containers images (`repository:tag` or `…@sha256:…`).
    pub fn set_images(&self, task_def: &str, images: &[(&str, &str)]) {
        self.w().images_of.insert(
            task_def.to_string(),
            images
                .iter()
                .map(|(c, i)| (c.to_string(), i.to_string()))
                .collect(),
        );
        // What runs now is what the tags name now.
        let mut w = self.w();
        let digests = digests_of(&w, task_def);
        for s in w.clusters.values_mut().flat_map(|c| c.values_mut()) {
            for d in &mut s.deployments {
                if d.dep.task_definition == task_def {
                    d.digests = digests.clone();
                }
            }
        }
    }

    /// Points an image tag (`repository:tag`, the repository as a task definition names it) at
    /// a digest: pushing a new image with that tag.
    pub fn push_image(&self, image: &str, digest: &str) {
        self.w().tags.insert(image.to_string(), digest.to_string());
    }

    /// Makes a service `CODE_DEPLOY`-controlled, deployed by `application`/`group`, with a load
    /// balancer on `container`:`port`.
    pub fn deploy_with_codedeploy(
        &self,
        cluster: &str,
        name: &str,
        application: &str,
        group: &str,
        (container, port): (&str, i32),
    ) {
        self.edit_service(cluster, name, |s| {
            s.controller = Controller::CodeDeploy;
            s.shape.load_balancers = vec![super::LoadBalancer {
                container_name: container.into(),
                container_port: port,
            }];
        });
        self.w().groups.push(super::DeploymentGroup {
            application: application.into(),
            name: group.into(),
            services: vec![(cluster.into(), name.into())],
        });
    }

    /// Deletes the deployment groups that deploy a service (a group replaced by its IaC).
    pub fn forget_groups_of(&self, cluster: &str, name: &str) {
        let key = (cluster.to_string(), name.to_string());
        self.w().groups.retain(|g| !g.services.contains(&key));
    }

    /// The CodeDeploy deployments made so far.
    pub fn codedeploys(&self) -> Vec<CodeDeployRecord> {
        self.w().codedeploys.clone()
    }

    /// Creates a service whose (completed) deployment was created now.
    pub fn create_service(
        &self,
        cluster: &str,
        name: &str,
        task_def: &str,
        desired: i32,
        tags: &[(&str, &str)],
    ) {
        let now = self.now();
        let region = self.region.clone();
        let mut w = self.w();
        let id = Self::next_id(&mut w, "ecs-svc/");
        let cluster_arn = format!("arn:aws:ecs:{region}:{ACCOUNT}:cluster/{cluster}");
        let service = Service {
            arn: format!("arn:aws:ecs:{region}:{ACCOUNT}:service/{cluster}/{name}"),
            name: name.to_string(),
            cluster_arn,
            status: "ACTIVE".into(),
            task_definition: task_def.to_string(),
            desired_count: desired,
            controller: Controller::Ecs,
            shape: Default::default(),
            deployments: vec![],
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let dep = FakeDeployment {
            dep: Deployment {
                id,
                status: DeploymentStatus::Primary,
                task_definition: task_def.to_string(),
                created_at: now,
                rollout_state: Some(RolloutState::Completed),
                rollout_state_reason: None,
                desired_count: desired,
                running_count: desired,
                failed_tasks: 0,
            },
            started: now,
            behaviour: None,
            digests: digests_of(&w, task_def),
        };
        w.clusters.entry(cluster.to_string()).or_default().insert(
            name.to_string(),
            FakeService {
                service,
                behaviour: Behaviour::Complete(Duration::from_secs(60)),
                deployments: vec![dep],
            },
        );
    }

    /// How future forced deployments of a service play out (default: complete after 60 s).
    pub fn set_behaviour(&self, cluster: &str, name: &str, b: Behaviour) {
        if let Some(s) = self
            .w()
            .clusters
            .get_mut(cluster)
            .and_then(|c| c.get_mut(name))
        {
            s.behaviour = b;
        }
    }

    /// Changes a service (controller, desired count, tags, …) in place.
    pub fn edit_service(&self, cluster: &str, name: &str, f: impl FnOnce(&mut Service)) {
        if let Some(s) = self
            .w()
            .clusters
            .get_mut(cluster)
            .and_then(|c| c.get_mut(name))
        {
            f(&mut s.service);
        }
    }

    /// Keeps a task that started at `started_at` running in the service whatever its
    /// deployments do (a task ECS failed to stop, say).
    pub fn add_lingering_task(&self, cluster: &str, service: &str, started_at: DateTime<Utc>) {
        let mut w = self.w();
        let n = Self::next_id(&mut w, "lingering-");
        let arn = format!("arn:aws:ecs:{}:{ACCOUNT}:task/{cluster}/{n}", self.region);
        w.lingering
            .entry((cluster.to_string(), service.to_string()))
            .or_default()
            .push(Task {
                arn,
                started_at: Some(started_at),
                digests: Vec::new(),
            });
    }

    /// The running tasks of a service now: each deployment's running count, started a second
    /// after the deployment was created, and the lingering ones.
    fn tasks_of(&self, w: &World, cluster: &str, service: &str) -> Vec<Task> {
        let now = self.now();
        let mut out = Vec::new();
        if let Some(s) = w.clusters.get(cluster).and_then(|c| c.get(service)) {
            for d in view(s, now).deployments {
                let id = d.id.rsplit('/').next().unwrap_or(&d.id).to_string();
                let digests = s
                    .deployments
                    .iter()
                    .find(|f| f.dep.id == d.id)
                    .map(|f| f.digests.clone())
                    .unwrap_or_default();
                for i in 0..d.running_count.max(0) {
                    out.push(Task {
                        arn: format!(
                            "arn:aws:ecs:{}:{ACCOUNT}:task/{cluster}/{id}-{i}",
                            self.region
                        ),
                        started_at: Some(d.created_at + chrono::Duration::seconds(1)),
                        digests: digests.clone(),
                    });
                }
            }
        }
        if let Some(l) = w.lingering.get(&(cluster.to_string(), service.to_string())) {
            out.extend(l.iter().cloned());
        }
        out
    }

    /// Deletes a cluster and its services: calls naming it fail with `ClusterNotFoundException`.
    pub fn delete_cluster(&self, cluster: &str) {
        self.w().clusters.remove(cluster);
    }

    /// Deletes a service: `DescribeServices` no longer returns it (as after ECS's INACTIVE
    /// period).
    pub fn delete_service(&self, cluster: &str, name: &str) {
        if let Some(c) = self.w().clusters.get_mut(cluster) {
            c.remove(name);
        }
    }

    /// The service as `DescribeServices` would show it now.
    pub fn service(&self, cluster: &str, name: &str) -> Option<Service> {
        let now = self.now();
        let w = self.w();
        w.clusters
            .get(cluster)
            .and_then(|c| c.get(name))
            .map(|s| view(s, now))
    }

    fn gate(&self, operation: &'static str, resource: &str) -> AwsResult<()> {
        let now = self.now();
        let mut w = self.w();
        *w.calls.entry(operation).or_default() += 1;
        if let Some(r) = w
            .refusals
            .iter()
            .find(|r| r.operation == operation && resource.contains(&r.resource))
        {
            return Err(AwsError::new(
                operation,
                resource,
                r.kind,
                r.message.clone(),
            ));
        }
        if let Some(kind) = w.faults.get_mut(operation).and_then(|q| q.pop_front()) {
            if kind == ErrorKind::Throttled {
                *w.throttled.entry(operation).or_default() += 1;
            }
            return Err(AwsError::new(operation, resource, kind, "injected fault"));
        }
        if let Some(b) = w.buckets.get_mut(operation) {
            b.refill_to(now);
            if b.tokens < 1.0 {
                *w.throttled.entry(operation).or_default() += 1;
                w.call_log.push(CallRecord {
                    operation,
                    at: now,
                    throttled: true,
                });
                return Err(AwsError::new(
                    operation,
                    resource,
                    ErrorKind::Throttled,
                    "ThrottlingException: Rate exceeded",
                ));
            }
            b.tokens -= 1.0;
        }
        w.call_log.push(CallRecord {
            operation,
            at: now,
            throttled: false,
        });
        Ok(())
    }

    fn page<T: Clone>(w: &World, items: &[T], next: Option<String>) -> Page<T> {
        let start: usize = next.and_then(|t| t.parse().ok()).unwrap_or(0);
        let end = (start + w.page_size).min(items.len());
        let next = (end < items.len()).then(|| end.to_string());
        Page {
            items: items.get(start..end).unwrap_or_default().to_vec(),
            next,
        }
    }
}

/// The outward view of a service at `now`: deployments progress according to their behaviour.
fn view(s: &FakeService, now: DateTime<Utc>) -> Service {
    // CodeDeploy deletes a failed deployment's replacement task set: the original stays
    // primary, and ECS shows no trace of the failure.
    if s.service.controller == Controller::CodeDeploy {
        if let Some(last) = s.deployments.last() {
            let failed = matches!(last.behaviour, Some(Behaviour::Fail(t, _)) | Some(Behaviour::RollBack(t)) if elapsed(last, now) >= t);
            if failed && s.deployments.len() > 1 {
                let mut kept = s.clone();
                kept.deployments.pop();
                if let Some(prev) = kept.deployments.last_mut() {
                    prev.dep.status = DeploymentStatus::Primary;
                    prev.behaviour = None;
                }
                return view(&kept, now);
            }
        }
    }
    let mut out = s.service.clone();
    let mut deployments = Vec::new();
    let primary_done = |d: &FakeDeployment| -> bool {
        match d.behaviour {
            Some(Behaviour::Complete(t)) | Some(Behaviour::NoRolloutState(t)) => {
                elapsed(d, now) >= t
            }
            None => true,
            _ => false,
        }
    };
    let newest = s.deployments.last();
    for (i, d) in s.deployments.iter().enumerate() {
        let is_newest = i + 1 == s.deployments.len();
        let mut dep = d.dep.clone();
        if !is_newest {
            // An older deployment drains once the newest is done.
            if newest.is_some_and(primary_done) {
                continue;
            }
            dep.status = DeploymentStatus::Active;
            deployments.push(dep);
            continue;
        }
        match d.behaviour {
            Some(Behaviour::Complete(t)) if elapsed(d, now) >= t => {
                dep.rollout_state = Some(RolloutState::Completed);
                dep.running_count = dep.desired_count;
            }
            Some(Behaviour::NoRolloutState(t)) => {
                dep.rollout_state = None;
                if elapsed(d, now) >= t {
                    dep.running_count = dep.desired_count;
                }
            }
            Some(Behaviour::Fail(t, n)) if elapsed(d, now) >= t => {
                dep.rollout_state = Some(RolloutState::Failed);
                dep.rollout_state_reason = Some("tasks failed to start".into());
                dep.failed_tasks = n;
            }
            Some(Behaviour::RollBack(t)) if elapsed(d, now) >= t => {
                let since = d.started + chrono::Duration::from_std(t).unwrap_or_default();
                dep.status = DeploymentStatus::Active;
                dep.rollout_state = Some(RolloutState::Failed);
                dep.rollout_state_reason = Some(format!(
                    "ECS deployment circuit breaker: rolling back to the previous deployment (rolled back {since})"
                ));
                let mut back = dep.clone();
                back.id = format!("{}-rollback", dep.id);
                back.status = DeploymentStatus::Primary;
                back.rollout_state = Some(RolloutState::InProgress);
                back.created_at = since;
                deployments.push(back);
            }
            _ => {}
        }
        deployments.push(dep);
    }
    // A CODE_DEPLOY service as ECS shows its task sets: until CodeDeploy reroutes traffic, the
    // replacement is ACTIVE (in progress) and the original stays PRIMARY (steady).
    if s.service.controller == Controller::CodeDeploy {
        deployments.sort_by_key(|d| d.created_at);
        let n = deployments.len();
        if n > 1 && deployments[n - 1].rollout_state == Some(RolloutState::InProgress) {
            for d in &mut deployments {
                d.status = DeploymentStatus::Active;
            }
            deployments[n - 2].status = DeploymentStatus::Primary;
            deployments[n - 2].rollout_state = Some(RolloutState::Completed);
        }
    }
    // ECS lists the primary first.
    deployments.sort_by_key(|d| d.status != DeploymentStatus::Primary);
    out.deployments = deployments;
    out
}

/// What each container of `task_def` would run if started now: its image's digest, as the tag
/// names it now (an image named by digest is that digest).
fn digests_of(w: &World, task_def: &str) -> Vec<(String, String)> {
    w.images_of
        .get(task_def)
        .map(|images| {
            images
                .iter()
                .filter_map(|(c, image)| {
                    let digest = match image.split_once('@') {
                        Some((_, d)) => d.to_string(),
                        None => w.tags.get(image)?.clone(),
                    };
                    Some((c.clone(), digest))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A service deployment as ECS's blue/green, linear and canary strategies report it, played
/// from a forced deployment's behaviour: the traffic shift takes the behaviour's time, then the
/// bake time passes before it is successful.
fn service_deployment(
    d: &FakeDeployment,
    s: &FakeService,
    cluster: &str,
    region: &str,
    now: DateTime<Utc>,
) -> super::ServiceDeployment {
    let id = d.dep.id.rsplit('/').next().unwrap_or(&d.dep.id);
    let bake = s.service.shape.bake_time.unwrap_or_default();
    let e = elapsed(d, now);
    let (status, stage, reason, awaiting) = match d.behaviour {
        Some(Behaviour::Complete(t)) | Some(Behaviour::NoRolloutState(t)) if e >= t + bake => {
            ("SUCCESSFUL", None, None, None)
        }
        Some(Behaviour::Complete(t)) | Some(Behaviour::NoRolloutState(t)) if e >= t => {
            ("IN_PROGRESS", Some("BAKE_TIME"), None, None)
        }
        Some(Behaviour::Fail(t, _)) | Some(Behaviour::RollBack(t)) if e >= t => (
            "ROLLBACK_SUCCESSFUL",
            None,
            Some("alarm in ALARM state during bake time: rolled back".to_string()),
            None,
        ),
        Some(Behaviour::AwaitHook) => (
            "IN_PROGRESS",
            Some("POST_TEST_TRAFFIC_SHIFT"),
            None,
            Some("lifecycle hook hook-1 (PAUSE) awaits action (ContinueServiceDeployment) at POST_TEST_TRAFFIC_SHIFT".to_string()),
        ),
        _ => ("IN_PROGRESS", Some("PRODUCTION_TRAFFIC_SHIFT"), None, None),
    };
    // As AWS shows them: the service deployment has a random id of its own; the deployment's
    // number is the tail of the service revision it deploys.
    let own: String = id
        .chars()
        .rev()
        .map(|c| match c {
            '0'..='9' => char::from(b'a' + (c as u8 - b'0')),
            other => other,
        })
        .collect();
    super::ServiceDeployment {
        arn: format!(
            "arn:aws:ecs:{region}:{ACCOUNT}:service-deployment/{cluster}/{}/{own}",
            s.service.name
        ),
        created_at: d.dep.created_at,
        status: status.to_string(),
        status_reason: reason,
        stage: stage.map(str::to_string),
        awaiting,
        revision: Some(format!(
            "arn:aws:ecs:{region}:{ACCOUNT}:service-revision/{cluster}/{}/{id}",
            s.service.name
        )),
    }
}

fn elapsed(d: &FakeDeployment, now: DateTime<Utc>) -> Duration {
    (now - d.started).to_std().unwrap_or_default()
}

fn in_progress(s: &FakeService, now: DateTime<Utc>) -> bool {
    let v = view(s, now);
    v.deployments.len() > 1
        || v.primary()
            .is_some_and(|d| d.rollout_state == Some(RolloutState::InProgress))
}

fn cluster_name(c: &str) -> &str {
    c.rsplit('/').next().unwrap_or(c)
}

#[async_trait]
impl Ecs for FakeAws {
    async fn list_clusters(&self, next: Option<String>) -> AwsResult<Page<String>> {
        self.gate("ecs:ListClusters", "-")?;
        let w = self.w();
        let arns: Vec<String> = w
            .clusters
            .keys()
            .map(|c| format!("arn:aws:ecs:{}:{ACCOUNT}:cluster/{c}", self.region))
            .collect();
        Ok(Self::page(&w, &arns, next))
    }

    async fn list_services(&self, cluster: &str, next: Option<String>) -> AwsResult<Page<String>> {
        self.gate("ecs:ListServices", cluster)?;
        let w = self.w();
        let Some(c) = w.clusters.get(cluster_name(cluster)) else {
            return Err(AwsError::new(
                "ecs:ListServices",
                cluster,
                ErrorKind::NotFound,
                "ClusterNotFoundException",
            ));
        };
        let arns: Vec<String> = c.values().map(|s| s.service.arn.clone()).collect();
        Ok(Self::page(&w, &arns, next))
    }

    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> AwsResult<Vec<Service>> {
        self.round_trip().await;
        self.gate("ecs:DescribeServices", cluster)?;
        if services.len() > 10 {
            return Err(AwsError::new(
                "ecs:DescribeServices",
                cluster,
                ErrorKind::Other,
                "InvalidParameterException: at most 10 services",
            ));
        }
        let now = self.now();
        let w = self.w();
        let Some(c) = w.clusters.get(cluster_name(cluster)) else {
            return Err(AwsError::new(
                "ecs:DescribeServices",
                cluster,
                ErrorKind::NotFound,
                "ClusterNotFoundException",
            ));
        };
        Ok(services
            .iter()
            .filter_map(|s| c.get(s.rsplit('/').next().unwrap_or(s)))
            .map(|s| view(s, now))
            .collect())
    }

    async fn describe_task_definition(&self, arn: &str) -> AwsResult<TaskDefinition> {
        self.gate("ecs:DescribeTaskDefinition", arn)?;
        let w = self.w();
        match w.task_defs.get(arn) {
            Some(refs) => Ok(TaskDefinition {
                arn: arn.to_string(),
                refs: refs.clone(),
                images: w.images_of.get(arn).cloned().unwrap_or_default(),
            }),
            None => Err(AwsError::new(
                "ecs:DescribeTaskDefinition",
                arn,
                ErrorKind::Other,
                "ClientException: unknown task definition",
            )),
        }
    }

    async fn list_tasks(
        &self,
        cluster: &str,
        service: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>> {
        self.gate("ecs:ListTasks", service)?;
        let w = self.w();
        let arns: Vec<String> = self
            .tasks_of(&w, cluster_name(cluster), service)
            .into_iter()
            .map(|t| t.arn)
            .collect();
        Ok(Self::page(&w, &arns, next))
    }

    async fn describe_tasks(&self, cluster: &str, tasks: &[String]) -> AwsResult<Vec<Task>> {
        self.gate("ecs:DescribeTasks", cluster)?;
        if tasks.len() > 100 {
            return Err(AwsError::new(
                "ecs:DescribeTasks",
                cluster,
                ErrorKind::Other,
                "InvalidParameterException: at most 100 tasks",
            ));
        }
        let w = self.w();
        let c = cluster_name(cluster);
        let all: Vec<Task> = w
            .clusters
            .get(c)
            .map(|svcs| {
                svcs.keys()
                    .flat_map(|name| self.tasks_of(&w, c, name))
                    .collect()
            })
            .unwrap_or_default();
        Ok(all.into_iter().filter(|t| tasks.contains(&t.arn)).collect())
    }

    async fn service_deployments(
        &self,
        cluster: &str,
        service: &str,
        since: DateTime<Utc>,
    ) -> AwsResult<Vec<super::ServiceDeployment>> {
        self.gate("ecs:ListServiceDeployments", service)?;
        let now = self.now();
        let w = self.w();
        let c = cluster_name(cluster);
        let Some(s) = w.clusters.get(c).and_then(|svcs| svcs.get(service)) else {
            return Err(AwsError::new(
                "ecs:ListServiceDeployments",
                service,
                ErrorKind::NotFound,
                "ServiceNotFoundException",
            ));
        };
        let mut out: Vec<super::ServiceDeployment> = s
            .deployments
            .iter()
            .filter(|d| d.behaviour.is_some() && d.dep.created_at >= since)
            .map(|d| service_deployment(d, s, c, &self.region, now))
            .collect();
        out.sort_by_key(|d| std::cmp::Reverse(d.created_at));
        Ok(out)
    }

    async fn force_new_deployment(&self, cluster: &str, service: &str) -> AwsResult<Deployment> {
        self.round_trip().await;
        let resource = format!("{}/{service}", cluster_name(cluster));
        self.gate("ecs:UpdateService", &resource)?;
        let now = self.now();
        let mut w = self.w();
        let id = Self::next_id(&mut w, "ecs-svc/");
        let Some(s) = w
            .clusters
            .get_mut(cluster_name(cluster))
            .and_then(|c| c.get_mut(service))
        else {
            return Err(AwsError::new(
                "ecs:UpdateService",
                resource,
                ErrorKind::NotFound,
                "ServiceNotFoundException",
            ));
        };
        if s.service.controller != Controller::Ecs {
            return Err(AwsError::new(
                "ecs:UpdateService",
                resource,
                ErrorKind::Other,
                "InvalidParameterException: Cannot force a new deployment on services with a CODE_DEPLOY or EXTERNAL deployment controller. Use AWS CodeDeploy or the controller to trigger a new deployment.",
            ));
        }
        // What ECS would show now becomes history, and a new primary starts.
        let current = view(s, now);
        let desired = s.service.desired_count;
        s.deployments = current
            .deployments
            .into_iter()
            .map(|dep| FakeDeployment {
                dep,
                started: now,
                behaviour: None,
                digests: Vec::new(),
            })
            .collect();
        for d in &mut s.deployments {
            d.dep.status = DeploymentStatus::Active;
        }
        let dep = Deployment {
            id,
            status: DeploymentStatus::Primary,
            task_definition: s.service.task_definition.clone(),
            created_at: now,
            rollout_state: Some(RolloutState::InProgress),
            rollout_state_reason: None,
            desired_count: desired,
            running_count: 0,
            failed_tasks: 0,
        };
        let behaviour = s.behaviour;
        s.deployments.push(FakeDeployment {
            dep: dep.clone(),
            started: now,
            behaviour: Some(behaviour),
            digests: Vec::new(),
        });
        let task_def = dep.task_definition.clone();
        let digests = digests_of(&w, &task_def);
        if let Some(d) = w
            .clusters
            .get_mut(cluster_name(cluster))
            .and_then(|c| c.get_mut(service))
            .and_then(|s| s.deployments.last_mut())
        {
            d.digests = digests;
        }
        let in_progress_after = w
            .clusters
            .values()
            .flat_map(|c| c.values())
            .filter(|s| in_progress(s, now))
            .count();
        let in_progress_in_cluster = w
            .clusters
            .get(cluster_name(cluster))
            .map(|c| c.values().filter(|s| in_progress(s, now)).count())
            .unwrap_or(0);
        w.updates.push(UpdateRecord {
            service: resource.clone(),
            at: now,
            in_progress_after,
            in_progress_in_cluster,
        });
        if let Some(n) = w
            .lost_answers
            .get_mut("ecs:UpdateService")
            .filter(|n| **n > 0)
        {
            *n -= 1;
            return Err(AwsError::new(
                "ecs:UpdateService",
                resource,
                ErrorKind::Transient,
                "connection reset (answer lost)",
            ));
        }
        Ok(dep)
    }
}

#[async_trait]
impl super::Identity for FakeAws {
    async fn account(&self) -> AwsResult<String> {
        self.gate("sts:GetCallerIdentity", "-")?;
        Ok(self
            .w()
            .identity
            .clone()
            .unwrap_or_else(|| ACCOUNT.to_string()))
    }
}

#[async_trait]
impl Secrets for FakeAws {
    async fn describe_secret(&self, region: &str, id: &str) -> AwsResult<SecretMeta> {
        self.gate("secretsmanager:DescribeSecret", id)?;
        let w = self.w();
        // Exact name (of the fake's own account), full ARN, or ARN without the suffix: never by
        // prefix.
        let found = w.secrets.iter().find(|s| {
            s.region == region
                && ((s.name == id && s.account == ACCOUNT)
                    || s.arn == id
                    || s.arn.rsplit_once('-').is_some_and(|(base, _)| {
                        base == id && base.ends_with(&format!(":secret:{}", s.name))
                    }))
        });
        let Some(s) = found else {
            return Err(AwsError::new(
                "secretsmanager:DescribeSecret",
                id,
                ErrorKind::NotFound,
                "ResourceNotFoundException",
            ));
        };
        let version_stages = s
            .versions
            .iter()
            .filter(|v| !v.stages.is_empty())
            .map(|v| (v.id.clone(), v.stages.clone()))
            .collect();
        Ok(SecretMeta {
            arn: s.arn.clone(),
            name: s.name.clone(),
            last_changed: Some(truncate(s.last_changed)),
            last_rotated: s.last_rotated.map(truncate),
            version_stages,
            deleted: None,
        })
    }

    async fn list_secret_versions(
        &self,
        region: &str,
        arn: &str,
        next: Option<String>,
    ) -> AwsResult<Page<SecretVersion>> {
        self.gate("secretsmanager:ListSecretVersionIds", arn)?;
        let w = self.w();
        let Some(s) = w
            .secrets
            .iter()
            .find(|s| s.region == region && s.arn == arn)
        else {
            return Err(AwsError::new(
                "secretsmanager:ListSecretVersionIds",
                arn,
                ErrorKind::NotFound,
                "ResourceNotFoundException",
            ));
        };
        let versions: Vec<SecretVersion> = s
            .versions
            .iter()
            .filter(|v| !v.stages.is_empty())
            .map(|v| SecretVersion {
                id: v.id.clone(),
                created: Some(truncate(v.created)),
                stages: v.stages.clone(),
            })
            .collect();
        Ok(Self::page(&w, &versions, next))
    }
}

/// Secrets Manager reports whole seconds.
fn truncate(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

#[async_trait]
impl Parameters for FakeAws {
    async fn describe_parameters(
        &self,
        region: &str,
        names: &[String],
    ) -> AwsResult<Vec<ParameterMeta>> {
        self.gate("ssm:DescribeParameters", &names.join(","))?;
        let w = self.w();
        Ok(names
            .iter()
            .filter_map(|n| {
                let p = w.params.get(&(region.to_string(), n.clone()))?;
                let last = p.history.last()?;
                Some(ParameterMeta {
                    name: n.clone(),
                    last_modified: last.last_modified,
                    version: last.version,
                })
            })
            .collect())
    }

    async fn parameter_history(
        &self,
        region: &str,
        name: &str,
    ) -> AwsResult<Vec<ParameterVersion>> {
        self.gate("ssm:GetParameterHistory", name)?;
        let w = self.w();
        match w.params.get(&(region.to_string(), name.to_string())) {
            Some(p) => Ok(p.history.clone()),
            None => Err(AwsError::new(
                "ssm:GetParameterHistory",
                name,
                ErrorKind::NotFound,
                "ParameterNotFound",
            )),
        }
    }
}

/// A queue that records what is sent to it and receives nothing: where a test sees the changes
/// a Lambda invocation hands on to later ones.
#[derive(Default)]
pub struct SentQueue(Mutex<Vec<(String, Duration)>>);

impl SentQueue {
    /// What was sent so far: (body, delay).
    pub fn sent(&self) -> Vec<(String, Duration)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets what was sent.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[async_trait]
impl super::queue::Queue for SentQueue {
    async fn receive(&self, _: i32, _: Duration) -> AwsResult<Vec<super::queue::Message>> {
        Ok(Vec::new())
    }
    async fn delete(&self, _: &str) -> AwsResult<()> {
        Ok(())
    }
    async fn extend(&self, _: &str, _: Duration) -> AwsResult<()> {
        Ok(())
    }
    async fn depth(&self) -> AwsResult<u64> {
        Ok(0)
    }
    async fn send(&self, body: &str, delay: Duration) -> AwsResult<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((body.to_string(), delay));
        Ok(())
    }
}

/// An in-memory SQS queue on tokio's clock: what a test pushes is received, hidden for the
/// visibility timeout (extended by heartbeats), and gone once deleted; sends are delayed. At
/// most `per_receive` messages come back from one receive, so a test can make a burst arrive in
/// separate batches.
pub struct MemoryQueue {
    state: Mutex<MemoryQueueState>,
    per_receive: usize,
    visibility: Duration,
}

#[derive(Default)]
struct MemoryQueueState {
    next: u64,
    /// id → (body, visible from, receive count, current receipt).
    messages: BTreeMap<u64, (String, tokio::time::Instant, u32, String)>,
    deleted: u64,
}

impl MemoryQueue {
    /// A queue returning at most `per_receive` messages per receive, with a 30-second default
    /// visibility.
    pub fn new(per_receive: usize) -> Self {
        MemoryQueue {
            state: Mutex::new(MemoryQueueState::default()),
            per_receive: per_receive.max(1),
            visibility: Duration::from_secs(30),
        }
    }

    fn s(&self) -> MutexGuard<'_, MemoryQueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues a body, visible now.
    pub fn push(&self, body: &str) {
        self.push_at(body, tokio::time::Instant::now());
    }

    fn push_at(&self, body: &str, at: tokio::time::Instant) {
        let mut s = self.s();
        s.next += 1;
        let id = s.next;
        s.messages
            .insert(id, (body.to_string(), at, 0, String::new()));
    }

    /// Messages not yet deleted (visible or not).
    pub fn len(&self) -> usize {
        self.s().messages.len()
    }

    /// Whether every message was deleted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many deletes succeeded.
    pub fn deleted(&self) -> u64 {
        self.s().deleted
    }
}

#[async_trait]
impl super::queue::Queue for MemoryQueue {
    async fn receive(&self, max: i32, wait: Duration) -> AwsResult<Vec<super::queue::Message>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = tokio::time::Instant::now();
            let out: Vec<super::queue::Message> = {
                let mut s = self.s();
                let n = self
                    .per_receive
                    .min(usize::try_from(max).unwrap_or(1).max(1));
                let mut out = Vec::new();
                let next = s.next;
                for (id, (body, visible, count, receipt)) in s.messages.iter_mut() {
                    if out.len() >= n {
                        break;
                    }
                    if *visible > now {
                        continue;
                    }
                    *count += 1;
                    *visible = now + self.visibility;
                    *receipt = format!("{id}-{count}-{next}");
                    out.push(super::queue::Message {
                        id: id.to_string(),
                        receipt: receipt.clone(),
                        body: body.clone(),
                        receive_count: *count,
                        sent_at: None,
                    });
                }
                out
            };
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(20).min(deadline - now)).await;
        }
    }
    async fn delete(&self, receipt: &str) -> AwsResult<()> {
        let mut s = self.s();
        let id = s
            .messages
            .iter()
            .find(|(_, m)| m.3 == receipt)
            .map(|(id, _)| *id);
        match id {
            Some(id) => {
                s.messages.remove(&id);
                s.deleted += 1;
                Ok(())
            }
            None => Err(AwsError::new(
                "sqs:DeleteMessage",
                receipt,
                ErrorKind::Other,
                "ReceiptHandleIsInvalid",
            )),
        }
    }
    async fn extend(&self, receipt: &str, visibility: Duration) -> AwsResult<()> {
        let now = tokio::time::Instant::now();
        let mut s = self.s();
        if let Some(m) = s.messages.values_mut().find(|m| m.3 == receipt) {
            m.1 = now + visibility;
        }
        Ok(())
    }
    async fn depth(&self) -> AwsResult<u64> {
        Ok(self.len() as u64)
    }
    async fn send(&self, body: &str, delay: Duration) -> AwsResult<()> {
        self.push_at(body, tokio::time::Instant::now() + delay);
        Ok(())
    }
}

#[async_trait]
impl super::CodeDeploy for FakeAws {
    async fn list_applications(&self, next: Option<String>) -> AwsResult<Page<String>> {
        self.gate("codedeploy:ListApplications", "-")?;
        let w = self.w();
        let mut apps: Vec<String> = w.groups.iter().map(|g| g.application.clone()).collect();
        apps.sort();
        apps.dedup();
        Ok(Self::page(&w, &apps, next))
    }

    async fn list_deployment_groups(
        &self,
        application: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>> {
        self.gate("codedeploy:ListDeploymentGroups", application)?;
        let w = self.w();
        let groups: Vec<String> = w
            .groups
            .iter()
            .filter(|g| g.application == application)
            .map(|g| g.name.clone())
            .collect();
        Ok(Self::page(&w, &groups, next))
    }

    async fn get_deployment_group(
        &self,
        application: &str,
        group: &str,
    ) -> AwsResult<super::DeploymentGroup> {
        let resource = format!("{application}/{group}");
        self.gate("codedeploy:GetDeploymentGroup", &resource)?;
        self.w()
            .groups
            .iter()
            .find(|g| g.application == application && g.name == group)
            .cloned()
            .ok_or_else(|| {
                AwsError::new(
                    "codedeploy:GetDeploymentGroup",
                    resource,
                    ErrorKind::NotFound,
                    "DeploymentGroupDoesNotExistException",
                )
            })
    }

    /// Deploys like CodeDeploy's ECS blue/green: a new primary task set of the AppSpec's task
    /// definition, which the service's behaviour plays out.
    async fn create_deployment(
        &self,
        application: &str,
        group: &str,
        appspec: &str,
    ) -> AwsResult<String> {
        let resource = format!("{application}/{group}");
        self.gate("codedeploy:CreateDeployment", &resource)?;
        let now = self.now();
        let mut w = self.w();
        let Some((cluster, service)) = w
            .groups
            .iter()
            .find(|g| g.application == application && g.name == group)
            .and_then(|g| g.services.first().cloned())
        else {
            return Err(AwsError::new(
                "codedeploy:CreateDeployment",
                resource,
                ErrorKind::NotFound,
                "DeploymentGroupDoesNotExistException",
            ));
        };
        let id = Self::next_id(&mut w, "d-");
        let task_def = serde_json::from_str::<serde_json::Value>(appspec)
            .ok()
            .and_then(|v| {
                v["Resources"][0]["TargetService"]["Properties"]["TaskDefinition"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let digests = digests_of(&w, &task_def);
        let Some(s) = w
            .clusters
            .get_mut(&cluster)
            .and_then(|c| c.get_mut(&service))
        else {
            return Err(AwsError::new(
                "codedeploy:CreateDeployment",
                resource,
                ErrorKind::Other,
                "the group's service does not exist",
            ));
        };
        let behaviour = s.behaviour;
        for d in &mut s.deployments {
            d.dep.status = DeploymentStatus::Active;
        }
        s.deployments.push(FakeDeployment {
            dep: Deployment {
                id: format!("ecs-svc/{id}"),
                status: DeploymentStatus::Primary,
                task_definition: task_def,
                created_at: now,
                rollout_state: Some(RolloutState::InProgress),
                rollout_state_reason: None,
                desired_count: s.service.desired_count,
                running_count: 0,
                failed_tasks: 0,
            },
            started: now,
            behaviour: Some(behaviour),
            digests,
        });
        w.codedeploys.push(CodeDeployRecord {
            id: id.clone(),
            group: (application.to_string(), group.to_string()),
            appspec: appspec.to_string(),
            service: format!("{cluster}/{service}"),
            at: now,
            behaviour,
        });
        Ok(id)
    }

    async fn failed_since(
        &self,
        application: &str,
        group: &str,
        since: DateTime<Utc>,
    ) -> AwsResult<Vec<String>> {
        self.gate("codedeploy:ListDeployments", group)?;
        let now = self.now();
        Ok(self
            .w()
            .codedeploys
            .iter()
            .filter(|r| r.group == (application.to_string(), group.to_string()))
            .filter(|r| r.at >= since && Self::codedeploy_failed(r, now))
            .map(|r| r.id.clone())
            .collect())
    }

    async fn get_deployment(&self, id: &str) -> AwsResult<super::CodeDeployStatus> {
        self.gate("codedeploy:GetDeployment", id)?;
        let now = self.now();
        let w = self.w();
        let Some(r) = w.codedeploys.iter().find(|r| r.id == id) else {
            return Err(AwsError::new(
                "codedeploy:GetDeployment",
                id,
                ErrorKind::NotFound,
                "DeploymentDoesNotExistException",
            ));
        };
        let e = (now - r.at).to_std().unwrap_or_default();
        Ok(match r.behaviour {
            Behaviour::Complete(t) | Behaviour::NoRolloutState(t) if e >= t => {
                super::CodeDeployStatus::Succeeded
            }
            Behaviour::Fail(t, _) | Behaviour::RollBack(t) if e >= t => {
                super::CodeDeployStatus::Failed(
                    "failed: The deployment failed because a specified health check failed".into(),
                )
            }
            // Traffic waits for someone to reroute it.
            Behaviour::AwaitHook => super::CodeDeployStatus::InProgress("Ready".into()),
            _ => super::CodeDeployStatus::InProgress("InProgress".into()),
        })
    }
}

impl FakeAws {
    fn codedeploy_failed(r: &CodeDeployRecord, now: DateTime<Utc>) -> bool {
        let e = (now - r.at).to_std().unwrap_or_default();
        matches!(r.behaviour, Behaviour::Fail(t, _) | Behaviour::RollBack(t) if e >= t)
    }
}

#[async_trait]
impl super::Registry for FakeAws {
    async fn describe_images(
        &self,
        _region: &str,
        _registry: &str,
        repository: &str,
        tags: &[String],
    ) -> AwsResult<Vec<super::TaggedImage>> {
        self.gate("ecr:DescribeImages", repository)?;
        let w = self.w();
        Ok(tags
            .iter()
            .filter_map(|t| {
                let key = w.tags.keys().find(|k| {
                    k.ends_with(&format!("/{repository}:{t}")) || **k == format!("{repository}:{t}")
                })?;
                Some(super::TaggedImage {
                    tag: t.clone(),
                    digest: w.tags.get(key)?.clone(),
                })
            })
            .collect())
    }
}
