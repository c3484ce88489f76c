//! The rollout engine: canary, then waves, at most `max_concurrent` rollouts in flight (and
//! optionally per cluster), each watched until healthy, and a halt on the first failure.
//!
//! Rate limits and throttling retries are the guard's business ([`crate::aws::guard`]); this
//! engine only decides what to start when, and what became of it.
//!
//! *Subtle:* waves are barriers. Wave *n + 1* starts only when every rollout of wave *n* is
//! healthy, so "read replicas before writers" holds even with concurrency. After a failure, the
//! rollouts already in flight are still watched to their end (abandoning them would hide their
//! outcome), but nothing new starts: the rest of the change set is reported as halted and stays
//! stale, for a person to look at.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::{Outcome, Phase, Progress, Proof, Rollout};
use crate::aws::{Clients, Service};
use crate::clock::Clock;
use crate::decide::Policies;
use crate::deployment;
use crate::lease::Leadership;
use crate::plan::{Change, ChangeSet, ServiceKey};

/// How recently the pass must have described a service for the engine to roll it on that
/// description instead of describing it again (see [`Engine::look_again`]).
///
/// The look right before `UpdateService` catches a service that changed since the plan: deleted,
/// opted out, scaled to zero, deployed by someone else, moved out of its window. A change event's
/// pass describes its candidates and reaches the first one's turn within milliseconds; a second
/// `DescribeServices` then repeats the first and costs a read of a bucket that other tools share.
/// Well under a second is about as old as the look itself is when `UpdateService` leaves (the look
/// comes before the wait for an `UpdateService` token), so the window in which a change can slip
/// by is no wider than it was. Every later turn (a canary's watch, the 1/s `UpdateService` pace, a
/// wait for another rollout of the same service) is past it and looks again.
pub const RECENT_ENOUGH: Duration = Duration::from_millis(500);

/// How the engine rolls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Rollouts in flight at once.
    pub max_concurrent: usize,
    /// Rollouts in flight at once in one cluster (`None`: only the global limit).
    pub max_concurrent_per_cluster: Option<usize>,
    /// Roll the first service alone and go on only if it is healthy.
    pub canary: bool,
    /// Give up on a deployment that is not healthy after this long.
    pub timeout: Duration,
    /// Fail a deployment once this many of its tasks failed to start (0: never).
    pub failed_tasks_threshold: i32,
    /// How often to look at a deployment in flight.
    pub poll_interval: Duration,
    /// Watch health (`false`: trigger and return, as `--no-wait` and the Lambda do).
    pub wait: bool,
    /// Roll `CODE_DEPLOY` services through CodeDeploy (`[rollout] codedeploy`).
    pub codedeploy: bool,
}

/// The defaults of `[rollout]` too (`config` reads them here); a deployment's limits are the
/// reading's own.
impl Default for Settings {
    fn default() -> Self {
        let limits = crate::deployment::Limits::default();
        Settings {
            max_concurrent: 5,
            max_concurrent_per_cluster: None,
            canary: true,
            timeout: limits.stuck_after,
            failed_tasks_threshold: limits.failed_tasks_threshold,
            poll_interval: Duration::from_secs(15),
            wait: true,
            codedeploy: crate::decide::Policy::default().codedeploy,
        }
    }
}

/// The engine. Its limits hold across every change set it runs at once (`serve` runs several):
/// one global semaphore, one per cluster, and one lock per service.
pub struct Engine {
    clients: Clients,
    /// How each service is rolled and read ([`super::strategy`]).
    strategies: super::strategy::Context,
    settings: Settings,
    progress: Arc<dyn Progress>,
    clock: Arc<dyn Clock>,
    leadership: Arc<Leadership>,
    global: Arc<Semaphore>,
    per_cluster: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// A service's rollout in flight, so that another change set's rollout of it waits for it
    /// and then, looking again, finds it fresh: the two changes coalesce into one rollout (as
    /// kube-runtime's scheduler runs one reconcile per object at a time).
    services: Mutex<HashMap<ServiceKey, Arc<tokio::sync::Mutex<()>>>>,
    /// When this engine last started a rollout of each service (its call answered), kept for
    /// [`RECENT_ENOUGH`]: a plan that described the service before that must look again (the
    /// look is what makes two change sets of one service one rollout).
    started: Mutex<HashMap<ServiceKey, tokio::time::Instant>>,
}

impl Engine {
    /// An engine over (guarded) clients; `clock` must be the one AWS's dates are compared with
    /// (the fake's, in tests).
    pub fn new(
        clients: Clients,
        settings: Settings,
        progress: Arc<dyn Progress>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Engine {
            strategies: super::strategy::Context::new(
                clients.clone(),
                deployment::Limits {
                    stuck_after: settings.timeout,
                    failed_tasks_threshold: settings.failed_tasks_threshold,
                },
                clock.clone(),
                settings.codedeploy,
            ),
            global: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            per_cluster: Mutex::new(HashMap::new()),
            services: Mutex::new(HashMap::new()),
            started: Mutex::new(HashMap::new()),
            clients,
            settings,
            progress,
            clock,
            leadership: Leadership::sole(),
        }
    }

    /// Rolls only while `leadership` says this replica leads (see [`crate::lease`]).
    pub(crate) fn with_leadership(mut self, leadership: Arc<Leadership>) -> Self {
        self.leadership = leadership;
        self
    }

    fn limits(&self) -> deployment::Limits {
        deployment::Limits {
            stuck_after: self.settings.timeout,
            failed_tasks_threshold: self.settings.failed_tasks_threshold,
        }
    }

    /// Describes the service again right before its turn: the fleet moves while a change set
    /// rolls. `Err` when it must not be rolled now; else the service to roll (as described now,
    /// or as planned when it could not be described again).
    async fn recheck(&self, change: &Change, policies: &Policies) -> Result<Service, Outcome> {
        match self.look_again(change, policies).await? {
            Some(service) => Ok(service),
            None => change
                .planned
                .as_deref()
                .cloned()
                .ok_or_else(|| Outcome::Deferred {
                    reason: "could not describe it again before rolling".into(),
                }),
        }
    }

    /// The plan's own description of the service, when it may stand in for a look: the pass
    /// described it less than [`RECENT_ENOUGH`] ago, and this engine has started no rollout of it
    /// since.
    fn recent_enough<'c>(&self, change: &'c Change) -> Option<&'c Service> {
        let at = change.described_at?;
        if at.elapsed() >= RECENT_ENOUGH {
            return None;
        }
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if started.get(&change.key).is_some_and(|s| *s >= at) {
            return None;
        }
        change.planned.as_deref()
    }

    /// Notes that a rollout of `key` was started by now (see
    /// [`recent_enough`](Self::recent_enough)), forgetting starts too old to matter.
    fn note_start(&self, key: &ServiceKey) {
        let now = tokio::time::Instant::now();
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        started.retain(|_, s| now.duration_since(*s) < RECENT_ENOUGH);
        started.insert(key.clone(), now);
    }

    /// [`recheck`](Self::recheck)'s look: the service as described now, `None` when it could not
    /// be described again. A description the pass made moments ago ([`RECENT_ENOUGH`]) is used
    /// as it is, without a `DescribeServices`; every check below applies to it all the same.
    async fn look_again(
        &self,
        change: &Change,
        policies: &Policies,
    ) -> Result<Option<Service>, Outcome> {
        let key = &change.key;
        let skipped = |reason: String| {
            tracing::info!(service = %key, reason, "skipped: changed since the plan");
            Err(Outcome::Skipped { reason })
        };
        let recent = self.recent_enough(change).cloned();
        let service = if let Some(service) = recent {
            tracing::debug!(service = %key, "described by the pass moments ago: not described again");
            service
        } else {
            match self
                .clients
                .ecs
                .describe_services(&key.cluster, std::slice::from_ref(&key.service))
                .await
            {
                Ok(mut found) if !found.is_empty() => found.remove(0),
                Ok(_) => return skipped("the service no longer exists".into()),
                Err(e) if e.kind == crate::aws::ErrorKind::NotFound => {
                    return skipped(format!("the service no longer exists ({e})"))
                }
                // Still throttled (or unreachable) after the guard's retries: the look is a check
                // on a plan that is seconds old, not a reason to leave a stale service stale; roll
                // as planned (a throttle never surfaces as a failure or a skipped rollout).
                Err(e) if e.is_retryable() => {
                    tracing::warn!(service = %key, error = %e, "could not describe it again before rolling; rolling as planned");
                    return Ok(None);
                }
                Err(e) => {
                    return Err(Outcome::Deferred {
                        reason: format!("could not describe it again before rolling: {e}"),
                    })
                }
            }
        };
        if service.status != "ACTIVE" {
            return skipped(format!("the service is {} now", service.status));
        }
        if crate::decide::opted_out(&service) {
            return skipped(format!(
                "tagged {}=false since the plan",
                crate::decide::TAG_ENABLED
            ));
        }
        if service.desired_count == 0 {
            return skipped("scaled to 0 since the plan: no task holds an old value".into());
        }
        if let Err(why) = service.rolled_by(self.settings.codedeploy) {
            return skipped(format!("since the plan: {why}"));
        }
        // The fleet's policies, asked again: a window that closed while the change set rolled,
        // a notify-only tag added since the plan. Decided again later, it is `scheduled` or
        // `pending` then.
        match crate::decide::eligibility(&service, self.clock.now(), policies) {
            crate::decide::Eligibility::Now => {}
            crate::decide::Eligibility::Scheduled { at, window } => {
                return Err(Outcome::Deferred {
                    reason: format!(
                        "outside its maintenance window ({window}) since the plan: it rolls when the window opens ({})",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                })
            }
            crate::decide::Eligibility::Pending(why) => {
                return Err(Outcome::Deferred {
                    reason: format!("since the plan: {why}"),
                })
            }
            crate::decide::Eligibility::Unreadable(why) => {
                return Err(Outcome::Deferred {
                    reason: format!("since the plan: {why}"),
                })
            }
        }
        let Some(primary) = service.primary() else {
            return Ok(Some(service));
        };
        if let Some(fresh_from) = change.fresh_from.filter(|f| primary.created_at >= *f) {
            // A rollout after the change that failed, was rolled back or is stuck is the
            // change's failure (another pass's canary, say), for this pass too: never freshness.
            // Only a deployment that carries the change alone implicates it (see
            // `decide::hold_failed`).
            if let Some((dep, verdict)) =
                deployment::current(&service, self.clock.now(), &self.limits())
            {
                if let Some(problem) = verdict.problem(&dep.id).filter(|_| {
                    dep.created_at >= fresh_from
                        && crate::decide::carries_only_secrets(&service, dep)
                }) {
                    tracing::warn!(service = %key, problem, "its rollout after the change went wrong: the change set halts");
                    return Err(Outcome::Failed {
                        reason: format!("its rollout after the change went wrong: {problem}"),
                    });
                }
            }
            return skipped(format!(
                "already fresh: deployment {} was created after the change",
                primary.id
            ));
        }
        if deployment::busy(&service) {
            return Err(Outcome::Deferred {
                reason: format!(
                    "deployment {} started since the plan and is in progress: deciding again when it settles",
                    primary.id
                ),
            });
        }
        Ok(Some(service))
    }

    /// Triggers one service its own way ([`super::strategy`]) and, when waiting, watches it to
    /// its end.
    async fn roll_one(&self, change: &Change, policies: &Policies) -> Outcome {
        let service = match self.recheck(change, policies).await {
            Ok(s) => s,
            Err(outcome) => return outcome,
        };
        let key = &change.key;
        let strategy = match self.strategies.for_service(&service) {
            Ok(s) => s,
            Err(why) => return Outcome::Skipped { reason: why },
        };
        if let Some(why) = self.drifted_since_the_plan(change).await {
            tracing::warn!(service = %key, why, "an image tag moved since the plan: not rolled");
            return Outcome::Skipped {
                reason: format!("not rolled: {why}; the next pass holds it until `reconcile --service {key} --allow-image-drift`"),
            };
        }
        if let Some(why) = match change.fresh_from {
            Some(since) => strategy.failed_since(&service, since).await,
            None => None,
        } {
            tracing::warn!(service = %key, why, "its rollout after the change failed already: the change set halts");
            return Outcome::Failed { reason: why };
        }
        // The last moment to notice a lost lease: another replica may lead by now.
        if !self.leadership.is_leader() {
            return Outcome::Deferred {
                reason: "this replica no longer holds the lease: the leader decides it".into(),
            };
        }
        let started = strategy.start(&service).await;
        // From now on (the call has left, whatever its answer), a plan that described the service
        // before must look again to see this rollout.
        self.note_start(key);
        let started = match started {
            Ok(d) => d,
            Err(_) if !self.leadership.is_leader() => {
                return Outcome::Deferred {
                    reason: crate::aws::guard::LOST_LEASE.into(),
                }
            }
            // No CodeDeploy deployment group this operator may use deploys it: a fact about this
            // service (it needs its own controller, or a grant), not a failure of the change.
            Err(e)
                if e.operation.starts_with("codedeploy:")
                    && (e.kind == crate::aws::ErrorKind::AccessDenied
                        || (e.kind == crate::aws::ErrorKind::NotFound
                            && e.operation != "codedeploy:CreateDeployment")) =>
            {
                tracing::warn!(service = %key, error = %e, "no deployment group this operator may use deploys it: not rolled");
                return Outcome::Skipped {
                    reason: format!(
                        "not rolled: {e}; roll it through CodeDeploy, or name its application in CodeDeployApplications (infra/)"
                    ),
                };
            }
            Err(e) => {
                tracing::error!(service = %key, error = %e, strategy = strategy.name(), "could not start the rollout");
                return Outcome::Failed {
                    reason: e.to_string(),
                };
            }
        };
        tracing::info!(service = %key, deployment = %started.id, strategy = strategy.name(), "started a rollout");
        self.progress.update(
            key,
            &Phase::Rolling {
                deployment: started.id.clone(),
                why: super::why_of(change),
            },
        );
        if !self.settings.wait {
            return Outcome::Triggered {
                deployment: started.id,
            };
        }
        let limit = self.settings.timeout + strategy.allowance(&service);
        match self.watch(key, strategy.as_ref(), &started, limit).await {
            Outcome::Healthy { deployment, .. } => {
                let proof = self.prove(change).await;
                Outcome::Healthy {
                    deployment,
                    proof: Some(proof),
                }
            }
            other => other,
        }
    }

    /// Whether an image tag checked at plan time names another digest now (a push during the
    /// canary, say): what a rollout now would start is not what was approved.
    async fn drifted_since_the_plan(&self, change: &Change) -> Option<String> {
        use crate::decide::drift::{self, Image};
        for c in &change.images {
            let Image::Ecr(t) = drift::image(&c.image) else {
                continue;
            };
            let now = match crate::aws::current_digest(
                self.clients.registry.as_ref(),
                &t.region,
                &t.registry,
                &t.repository,
                &t.tag,
            )
            .await
            {
                Ok(now) => now,
                // Could not ask again: the plan's check stands.
                Err(_) => continue,
            };
            if now.as_ref().is_some_and(|d| c.running.contains(d)) {
                continue;
            }
            return Some(format!(
                "container {}: tag {} now names {}, its tasks run {}",
                c.container,
                c.image,
                now.as_deref().unwrap_or("nothing (the tag is gone)"),
                c.running.join(", ")
            ));
        }
        None
    }

    /// Checks that every running task of a healthy service started after the change it was
    /// rolled for (`ListTasks` paged, `DescribeTasks` by 100, through the guard's buckets).
    async fn prove(&self, change: &Change) -> Proof {
        let key = &change.key;
        let Some(changed) = change.fresh_from.map(|f| f - chrono::Duration::seconds(1)) else {
            return Proof::Unchecked {
                reason: "the change's time is unknown".into(),
            };
        };
        let arns = match crate::aws::all_pages(|t| {
            self.clients.ecs.list_tasks(&key.cluster, &key.service, t)
        })
        .await
        {
            Ok(a) => a,
            Err(e) => {
                return Proof::Unchecked {
                    reason: e.to_string(),
                }
            }
        };
        if arns.is_empty() {
            return Proof::NoTasks;
        }
        let mut older = Vec::new();
        for batch in arns.chunks(100) {
            match self.clients.ecs.describe_tasks(&key.cluster, batch).await {
                Ok(tasks) => older.extend(
                    tasks
                        .into_iter()
                        .filter(|t| t.started_at.is_some_and(|s| s < changed))
                        .map(|t| t.arn),
                ),
                Err(e) => {
                    return Proof::Unchecked {
                        reason: e.to_string(),
                    }
                }
            }
        }
        if older.is_empty() {
            tracing::info!(service = %key, tasks = arns.len(), "verified: every running task started after the change");
            Proof::Verified { tasks: arns.len() }
        } else {
            tracing::warn!(service = %key, older = ?older, "running tasks started before the change still hold the old value");
            Proof::Older { tasks: older }
        }
    }

    /// Reads a rollout until it is healthy, failed, or `limit` ran out: `[rollout] timeout`
    /// plus what the strategy takes by design (a bake time). A rollout still waiting for a
    /// lifecycle hook's action then is paused, not failed.
    async fn watch(
        &self,
        key: &ServiceKey,
        strategy: &dyn super::strategy::Strategy,
        started: &super::strategy::Started,
        limit: Duration,
    ) -> Outcome {
        use super::strategy::Reading;
        let deployment = started.id.as_str();
        let deadline = tokio::time::Instant::now() + limit;
        let mut awaiting: Option<String> = None;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                if let Some(hook) = awaiting {
                    tracing::warn!(service = %key, deployment, hook, "paused: waiting for someone's action");
                    return Outcome::Paused {
                        deployment: deployment.to_string(),
                        reason: hook,
                    };
                }
                return Outcome::Failed {
                    reason: format!(
                        "deployment {deployment} not healthy after {} (timeout)",
                        humantime::format_duration(limit)
                    ),
                };
            }
            tokio::time::sleep(self.settings.poll_interval.min(deadline - now)).await;
            match strategy.read(key, started).await {
                Reading::InProgress => awaiting = None,
                Reading::Awaiting(hook) => {
                    if awaiting.is_none() {
                        tracing::info!(service = %key, deployment, hook, "the rollout waits for someone's action");
                    }
                    awaiting = Some(hook);
                }
                Reading::Unreadable(e) => {
                    // The guard already retried; keep watching until the limit decides.
                    tracing::warn!(service = %key, error = %e, "could not read the rollout's state");
                }
                Reading::Healthy => {
                    return Outcome::Healthy {
                        deployment: deployment.to_string(),
                        proof: None,
                    }
                }
                Reading::Superseded(by) => {
                    tracing::info!(service = %key, deployment, by = %by, "superseded by a newer deployment");
                    return Outcome::Healthy {
                        deployment: deployment.to_string(),
                        proof: None,
                    };
                }
                Reading::Failed(reason) => return Outcome::Failed { reason },
            }
        }
    }

    /// The lock of a service's rollouts.
    fn service_lock(&self, key: &ServiceKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the locks nobody holds or waits for.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(key.clone()).or_default().clone()
    }

    /// Rolls a group concurrently within the limits; stops starting new ones once `halt` is set.
    async fn roll_group(
        self: &Arc<Self>,
        group: Vec<Change>,
        policies: &Arc<Policies>,
        halt: &Arc<HaltFlag>,
        outcomes: &Arc<Mutex<Vec<(ServiceKey, Outcome)>>>,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for change in group {
            let cluster_sem = self.settings.max_concurrent_per_cluster.map(|n| {
                self.per_cluster
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(change.key.cluster.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(n.max(1))))
                    .clone()
            });
            let service = self.service_lock(&change.key);
            let (engine, global, halt, outcomes, policies) = (
                self.clone(),
                self.global.clone(),
                halt.clone(),
                outcomes.clone(),
                policies.clone(),
            );
            tasks.spawn(async move {
                // The service first (another change set may be rolling it: this one then finds it
                // fresh), then the cluster's slot, so that waiting holds no global slot.
                let _s = service.lock().await;
                // A rollout that runs both revisions side by side (blue/green, linear, canary)
                // takes two slots: `max_concurrent` counts what rollouts cost the cluster.
                let cost = change
                    .planned
                    .as_ref()
                    .map_or(1, |s| s.rollout_cost())
                    .clamp(
                        1,
                        u32::try_from(engine.settings.max_concurrent.max(1)).unwrap_or(1),
                    );
                let _c = match &cluster_sem {
                    Some(s) => {
                        let n = engine
                            .settings
                            .max_concurrent_per_cluster
                            .unwrap_or(1)
                            .max(1);
                        let c = cost.min(u32::try_from(n).unwrap_or(1));
                        s.clone().acquire_many_owned(c).await.ok()
                    }
                    None => None,
                };
                let _g = global.acquire_many_owned(cost).await.ok();
                let outcome = match halt.reason() {
                    Some(reason) => Outcome::Halted { reason },
                    None => engine.roll_one(&change, &policies).await,
                };
                match &outcome {
                    Outcome::Failed { reason } => {
                        halt.set(format!("{} failed: {reason}", change.key))
                    }
                    Outcome::Paused { reason, .. } => halt.set(format!(
                        "{} waits for someone's action: {reason}",
                        change.key
                    )),
                    _ => {}
                }
                engine.progress.update_why(
                    &change.key,
                    &Phase::Done(outcome.clone()),
                    &super::why_of(&change),
                );
                outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((change.key, outcome));
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// The first failure's description, shared by a change set's rollouts.
#[derive(Default)]
struct HaltFlag {
    set: AtomicBool,
    reason: Mutex<String>,
}

impl HaltFlag {
    fn set(&self, reason: String) {
        if !self.set.swap(true, Ordering::SeqCst) {
            *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        }
    }

    fn reason(&self) -> Option<String> {
        self.set.load(Ordering::SeqCst).then(|| {
            self.reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }
}

/// Runs change sets through an [`Engine`]; what the drivers hold.
pub struct EngineRollout(Arc<Engine>);

impl EngineRollout {
    /// Wraps an engine.
    pub fn new(engine: Engine) -> Self {
        EngineRollout(Arc::new(engine))
    }
}

#[async_trait]
impl Rollout for EngineRollout {
    async fn execute(&self, set: &ChangeSet) -> Vec<(ServiceKey, Outcome)> {
        let engine = &self.0;
        // One rollout per service, whatever the change set repeats.
        let mut seen = HashSet::new();
        let changes: Vec<Change> = set
            .changes
            .iter()
            .filter(|c| seen.insert(c.key.clone()))
            .cloned()
            .collect();
        for c in &changes {
            engine.progress.update(&c.key, &Phase::Waiting);
        }
        let halt = Arc::new(HaltFlag::default());
        let policies = Arc::new(set.policies.clone());
        let outcomes = Arc::new(Mutex::new(Vec::with_capacity(changes.len())));

        let rest = ChangeSet {
            changes,
            policies: Policies::default(),
        }
        .waves_owned();
        // A canary guards a secret, not a change set: every changed secret of a wave that no
        // dependant has proved healthy yet gets one, its first dependant in plan order, rolled
        // alone; only once it is healthy do the secret's other dependants roll. (A finding whose
        // secret is unknown counts as a secret of its own.)
        let mut proven: HashSet<Option<crate::reference::SecretIdentity>> = HashSet::new();
        let secrets_of = |c: &Change| -> Vec<Option<crate::reference::SecretIdentity>> {
            let mut v: Vec<_> = c.findings.iter().map(|f| f.identity.clone()).collect();
            if v.is_empty() {
                v.push(None);
            }
            v
        };
        for mut wave in rest {
            if engine.settings.canary && engine.settings.wait {
                // A canary that turns out not to need a rollout (skipped or deferred when looked
                // at again) proves nothing: the secret's next dependant becomes its canary.
                while halt.reason().is_none() {
                    let Some(i) = wave
                        .iter()
                        .position(|c| secrets_of(c).iter().any(|s| !proven.contains(s)))
                    else {
                        break;
                    };
                    let canary = wave.remove(i);
                    let key = canary.key.clone();
                    let guards = secrets_of(&canary);
                    tracing::info!(service = %key, "rolling the canary alone");
                    engine
                        .roll_group(vec![canary], &policies, &halt, &outcomes)
                        .await;
                    let proved = outcomes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .any(|(k, o)| *k == key && matches!(o, Outcome::Healthy { .. }));
                    if proved {
                        proven.extend(guards);
                    }
                }
            }
            if wave.is_empty() {
                continue;
            }
            if let Some(reason) = halt.reason() {
                let mut out = outcomes.lock().unwrap_or_else(|p| p.into_inner());
                for c in wave {
                    let o = Outcome::Halted {
                        reason: reason.clone(),
                    };
                    engine
                        .progress
                        .update_why(&c.key, &Phase::Done(o.clone()), &super::why_of(&c));
                    out.push((c.key, o));
                }
                continue;
            }
            engine.roll_group(wave, &policies, &halt, &outcomes).await;
        }
        let mut out = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        // Report in plan order.
        let order: HashMap<ServiceKey, usize> = set
            .changes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key.clone(), i))
            .collect();
        out.sort_by_key(|(k, _)| order.get(k).copied().unwrap_or(usize::MAX));
        out
    }
}
