//! The reconciler: one pass — resolve, decide, plan, act, summarise — that every driver (CLI,
//! `serve`, Lambda) runs. It holds the clients, the task-definition cache, the clock and the
//! rollout, and nothing that must survive a restart: every decision is derived from AWS state.
//!
//! A pass returns what happened and when to look again ([`Pass::requeue_after`], in the spirit
//! of kube-runtime's `Action::requeue`); what a driver does with that is its own business (`serve`
//! hides the message until then, the CLI exits 1 and says "run again later", the Lambda leaves it
//! to the scheduled resync).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{AwsError, Clients, Service};
use crate::clock::Clock;
use crate::decide::{self, decide, Decision, Item, Kind, Policies, Policy, SecretChange};
use crate::deployment::Limits;
use crate::event::{Changes, ServiceHint};
use crate::index::{self, resolve_target, Scope, Target, TargetError, TaskDefCache};
use crate::plan::{plan, ChangeSet, ServiceKey};
use crate::reference::SecretIdentity;
use crate::rollout::{Outcome, Rollout};
use crate::sources;
use crate::watch::Watch;
use crate::window::Windows;

/// Gives the resolved states the label moves that targets' events announced (Secrets Manager
/// stages, SSM parameter labels).
/// A move dated after `latest` (now, plus the allowed clock skew) is dropped with a warning: an
/// event cannot come from the future, and a date taken at its word would hold the service
/// settling until then (or, moved to now, would roll it again at every pass).
fn apply_label_moves(
    resolved: &mut [Vec<decide::ResolvedRef>],
    targets: &[Target],
    latest: DateTime<Utc>,
) {
    for t in targets.iter().filter(|t| !t.label_moves.is_empty()) {
        for refs in resolved.iter_mut() {
            for r in refs.iter_mut() {
                let Ok(state) = &mut r.state else { continue };
                // An object has no labels: its every write is dated by the listing.
                if !state.has_labels() || !t.identities.contains(&state.identity()) {
                    continue;
                }
                // Copied on write: the state is shared by every reference to the secret.
                let Some(moves) = Arc::make_mut(state).label_moves_mut() else {
                    continue;
                };
                for m in &t.label_moves {
                    if m.at > latest {
                        tracing::warn!(secret = %t.given, label = %m.label, at = %m.at, "an event dated in the future: its date is ignored");
                        continue;
                    }
                    let slot = moves.entry(m.label.clone()).or_insert(m.at);
                    *slot = (*slot).max(m.at);
                }
            }
        }
    }
}

/// Says where each finding's change comes from (see [`crate::event::Provenance`]): the events
/// that announced it, or, without one, how it was found.
fn attribute(assessment: &mut Assessment, targets: &[Target]) {
    let origin = |f: &decide::Finding| -> String {
        if targets.is_empty() {
            return "found by resync (no event)".into();
        }
        let events: Vec<String> = targets
            .iter()
            .filter(|t| {
                f.identity
                    .as_ref()
                    .is_some_and(|id| t.identities.contains(id))
            })
            .flat_map(|t| t.provenance.iter().map(|p| p.to_string()))
            .collect();
        if events.is_empty() {
            // Named by a person (`--secret`), or another changed secret of the same service.
            "found with the secrets asked for (no event of its own)".into()
        } else {
            format!("announced by {}", events.join("; "))
        }
    };
    for a in &mut assessment.services {
        if let Some(findings) = a.decision.findings_mut() {
            for f in findings {
                f.provenance = Some(origin(f));
            }
        }
    }
    for c in &mut assessment.change_set.changes {
        for f in &mut c.findings {
            f.provenance = Some(origin(f));
        }
    }
}

/// Why a pass could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// A secret named by the caller could not be resolved.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// `--service` named no service in scope that references a secret.
    #[error("--service {0}: no service in scope has that name (CLUSTER/SERVICE, a name, or a service ARN), or it references no secret")]
    NoSuchService(String),
}

/// `--service` arguments: a service ARN, `CLUSTER/SERVICE`, or a bare name in any cluster.
struct ServiceFilter<'a>(&'a [String]);

impl ServiceFilter<'_> {
    fn matches(f: &str, s: &Service) -> bool {
        if f.starts_with("arn:") {
            return f == s.arn;
        }
        match f.split_once('/') {
            Some((c, n)) => c == s.cluster_name() && n == s.name,
            None => f == s.name,
        }
    }

    fn admits(&self, s: &Service) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| Self::matches(f, s))
    }

    /// The first filter no service matched: a typo must not pass for "nothing to do".
    fn unmatched<'s>(&self, services: impl Iterator<Item = &'s Service> + Clone) -> Option<String> {
        self.0
            .iter()
            .find(|f| !services.clone().any(|s| Self::matches(f, s)))
            .cloned()
    }
}

/// How a driver lives with rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The pass watches each rollout until it is healthy (the CLI by default, `serve`): the
    /// engine rolls the canary alone and waits for each wave.
    Watch,
    /// The pass triggers and returns (`--no-wait`, the Lambda): the canary and the waves are
    /// gated through AWS state across passes instead ([`decide::gate`]).
    FireAndForget,
}

/// One service with its decision.
#[derive(Debug, Clone, Serialize)]
pub struct Assessed {
    /// Which service.
    pub key: ServiceKey,
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision,
    /// Every secret it resolves (display form), for the report.
    pub secrets: Vec<String>,
    /// The service as described (not serialised).
    #[serde(skip)]
    pub service: Service,
}

/// The state of a scope at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    /// When it was computed (our clock).
    pub at: DateTime<Utc>,
    /// Services that reference secrets (and, with targets, reference one of them).
    pub services: Vec<Assessed>,
    /// Services in scope that reference no secret.
    pub without_secrets: usize,
    /// The stale services in rollout order.
    #[serde(skip)]
    pub change_set: ChangeSet,
    /// Standalone tasks that hold a changed value (full passes only; see [`crate::tasks`]).
    #[serde(skip)]
    pub standalone_tasks: Vec<crate::tasks::StandaloneTask>,
    /// Scheduled tasks that resolve a changed value (full passes only).
    #[serde(skip)]
    pub scheduled_tasks: Vec<crate::tasks::ScheduledTask>,
}

impl Assessment {
    /// The earliest moment a settling service should be decided again, if any has one.
    pub(crate) fn next_settle(&self) -> Option<DateTime<Utc>> {
        self.services
            .iter()
            .filter_map(|a| match &a.decision {
                Decision::Settling { until, .. } => *until,
                _ => None,
            })
            .min()
    }

    /// How many services got each kind of decision.
    pub fn decisions(&self) -> BTreeMap<Kind, usize> {
        let mut out = BTreeMap::new();
        for a in &self.services {
            *out.entry(a.decision.kind()).or_default() += 1;
        }
        out
    }
}

/// Which services a pass looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every service in scope (a resync, `plan`).
    All,
    /// Services that resolve one of these secrets, as a person named them: one that does not
    /// exist is an error.
    Secrets(Vec<String>),
    /// Services that resolve what events said changed: a secret that no longer exists is
    /// skipped (nothing can depend on it). A resync among them selects everything.
    Changes(Changes),
}

/// What a driver asks of a pass.
#[derive(Debug, Clone)]
pub struct Request {
    /// Which services.
    pub selection: Selection,
    /// Clusters (empty: the reconciler's default scope).
    pub clusters: Vec<String>,
    /// Decide and plan, change nothing.
    pub dry_run: bool,
    /// The most a pass may spend (deciding, waiting out short settles and acting); `None`:
    /// unbounded. The Lambda's remaining time.
    pub budget: Option<Duration>,
    /// Only these services (`CLUSTER/SERVICE`, or a service name in any cluster).
    pub services: Vec<String>,
    /// Roll outside maintenance windows (an emergency, named by a person).
    pub ignore_windows: bool,
    /// With `services`: roll them even if a rollout starts a different image than they run
    /// (a person's approval of image drift).
    pub allow_image_drift: bool,
}

impl Request {
    /// Whether a person named what to roll (secrets or services): that approves notify-only
    /// services. Events and resyncs never do.
    fn approves(&self) -> bool {
        !self.services.is_empty()
            || matches!(&self.selection, Selection::Secrets(s) if !s.is_empty())
    }
}

impl Request {
    /// Everything in the default scope.
    pub fn all() -> Self {
        Request {
            selection: Selection::All,
            clusters: Vec::new(),
            dry_run: false,
            budget: None,
            services: Vec::new(),
            ignore_windows: false,
            allow_image_drift: false,
        }
    }

    /// The dependants of what `changes` name.
    pub fn changes(changes: Changes) -> Self {
        Request {
            selection: Selection::Changes(changes),
            ..Request::all()
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone)]
pub struct Pass {
    /// The decisions (after holds and gates) and the change set.
    pub assessment: Assessment,
    /// What became of each service of the change set (empty for a dry run).
    pub outcomes: Vec<(ServiceKey, Outcome)>,
    /// The budget ran out before the change set was done: the rest waits for the next pass.
    pub cut_short: bool,
    /// When to look again: something is settling (a rotation, a deployment, a canary or an
    /// earlier wave in progress) or was cut short. `None`: nothing will change by waiting.
    pub requeue_after: Option<Duration>,
    /// With several targets ([`crate::targets::Fleet`]): each target (account, region) and
    /// whether its pass ran. Empty for one reconciler's own pass.
    pub targets: Vec<TargetStatus>,
    /// A target could not be worked on (its role refused, its calls failed): its part of the
    /// change may be tried again after this. Apart from [`Pass::requeue_after`] because the
    /// drivers bound these retries ([`crate::intake::next_look`]) and the resync ignores them: a
    /// target that stays down is left to the resync's schedule, never re-polled forever.
    pub target_retry: Option<Duration>,
    /// Changed secrets that could not be read (refused by a resource policy or an SCP), each
    /// with the call, the secret and the grant: reported, left to the resync (which shows their
    /// dependants `unknown`), and never a reason to fail the rest of the pass.
    pub unread: Vec<String>,
}

impl Pass {
    /// A pass that found nothing to look at.
    pub(crate) fn empty(at: DateTime<Utc>) -> Self {
        Pass {
            assessment: Assessment {
                at,
                services: Vec::new(),
                without_secrets: 0,
                change_set: ChangeSet::default(),
                standalone_tasks: Vec::new(),
                scheduled_tasks: Vec::new(),
            },
            outcomes: Vec::new(),
            cut_short: false,
            requeue_after: None,
            targets: Vec::new(),
            target_retry: None,
            unread: Vec::new(),
        }
    }

    /// How many services got each kind of decision.
    pub fn decisions(&self) -> BTreeMap<Kind, usize> {
        self.assessment.decisions()
    }

    /// Rollouts that failed or were halted.
    pub fn failed(&self) -> impl Iterator<Item = &(ServiceKey, Outcome)> {
        self.outcomes.iter().filter(|(_, o)| o.is_failure())
    }

    fn deferred(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Deferred { .. }))
            .count()
    }

    /// Why the scope is not in sync after this pass, one phrase per reason; empty when it is.
    pub fn problems(&self) -> Vec<String> {
        let d = self.decisions();
        let n = |k: Kind| d.get(&k).copied().unwrap_or(0);
        let mut out = Vec::new();
        for t in &self.targets {
            if let Some(problem) = &t.problem {
                out.push(format!("target {t} could not be worked on: {problem}"));
            }
        }
        out.extend(self.unread.iter().cloned());
        let failed = self.failed().count();
        if failed > 0 {
            out.push(format!("{failed} rollout(s) failed or were halted"));
        }
        if n(Kind::Unknown) > 0 {
            out.push(format!(
                "{} service(s) reference secrets that could not be resolved",
                n(Kind::Unknown)
            ));
        }
        if n(Kind::Settling) > 0 {
            out.push(format!(
                "{} service(s) still settling (a deployment, rotation, canary or earlier wave in progress): run again later",
                n(Kind::Settling)
            ));
        }
        if self.deferred() > 0 {
            out.push(format!(
                "{} service(s) deferred: a deployment started since the plan; run again later",
                self.deferred()
            ));
        }
        if n(Kind::Pending) > 0 {
            out.push(format!(
                "{} service(s) pending approval (notify-only): reconcile --service or --secret rolls them",
                n(Kind::Pending)
            ));
        }
        if n(Kind::Held) > 0 {
            out.push(format!(
                "{} service(s) held: another rollout of the same change went wrong, or an image tag moved",
                n(Kind::Held)
            ));
        }
        let attention = self
            .assessment
            .services
            .iter()
            .filter(|a| a.decision.needs_attention())
            .count();
        if attention > 0 {
            out.push(format!(
                "{attention} service(s) resolve a changed value that only their own controller can roll (EXTERNAL, or CODE_DEPLOY with [rollout] codedeploy = false)"
            ));
        }
        let paused = self
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Paused { .. }))
            .count();
        if paused > 0 {
            out.push(format!(
                "{paused} rollout(s) wait for someone's action (a lifecycle hook): ContinueServiceDeployment, or stop it"
            ));
        }
        if self.cut_short {
            out.push("the time ran out before every stale service was rolled".into());
        }
        out
    }
}

/// A target and how its last pass went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetStatus {
    /// The account (empty: the operator's own credentials, whose account no service showed).
    pub account: String,
    /// The region.
    pub region: String,
    /// The role assumed in it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// Why its pass could not run; `None` when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl std::fmt::Display for TargetStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.account.is_empty() {
            write!(f, "(own account) {}", self.region)
        } else {
            write!(f, "{} {}", self.account, self.region)
        }
    }
}

/// Knobs of the reconciler.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The staleness rule's tunables.
    pub policy: Policy,
    /// AWS calls in flight during a scan.
    pub scan_concurrency: usize,
    /// What makes a deployment stuck or failed (`[rollout] timeout`, `failed_tasks_threshold`).
    pub limits: Limits,
    /// Watch rollouts, or trigger and gate through AWS state.
    pub mode: Mode,
    /// `[rollout] canary` (used by the gates; the engine has its own copy for watching).
    pub canary: bool,
    /// Clusters when a request names none (empty: every cluster of the region).
    pub clusters: Vec<String>,
    /// How long a pass waits for changes made within the last second or two to settle before
    /// deciding without them (see [`crate::decide`]); less when the budget is short.
    pub settle_wait: Duration,
    /// When a settling service has no known end (a deployment, canary or wave in progress), look
    /// again after this.
    pub settle_recheck: Duration,
    /// `[rollout] windows`.
    pub windows: Windows,
    /// `[rollout] notify_only`.
    pub notify_only: bool,
    /// `[rollout] image_drift`.
    pub image_drift: crate::decide::drift::ImageDrift,
    /// A watch cache no full scan has replaced for this long is not trusted: a change pass scans
    /// instead (and so refills it). Covers a Lambda execution environment that never gets the
    /// scheduled resync, and a `serve` whose resyncs keep failing.
    pub watch_max_age: Duration,
    /// `[scope] tasks`: full passes report standalone tasks that hold a changed value.
    pub tasks: bool,
}

/// How often the full resync runs by default (`[resync] interval`): the watch cache is trusted
/// for twice that.
pub(crate) const RESYNC_INTERVAL: Duration = Duration::from_secs(600);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: Policy::default(),
            scan_concurrency: 8,
            limits: Limits::default(),
            mode: Mode::Watch,
            canary: crate::rollout::engine::Settings::default().canary,
            clusters: Vec::new(),
            settle_wait: Duration::from_secs(15),
            // As often as a rollout in flight is looked at (`[rollout] poll_interval`).
            settle_recheck: crate::rollout::engine::Settings::default().poll_interval,
            windows: Windows::any(),
            image_drift: Default::default(),
            notify_only: false,
            watch_max_age: RESYNC_INTERVAL * 2,
            tasks: true,
        }
    }
}

/// The reconcile core.
pub struct Reconciler {
    clients: Clients,
    cache: Arc<TaskDefCache>,
    /// Where each secret's dependants are (see [`crate::watch`]): filled by full scans of the
    /// default scope, kept fresh by ECS's events, consulted by change passes.
    watch: Watch,
    /// The account of the services it has seen (from their ARNs): a target on the operator's
    /// own credentials learns its account so.
    account: std::sync::Mutex<Option<String>>,
    clock: Arc<dyn Clock>,
    rollout: Arc<dyn Rollout>,
    settings: Settings,
    /// Label moves only an event can date (an SSM label, a custom Secrets Manager stage moved
    /// back), remembered for [`EVIDENCE_KEEP`] and applied by every pass, the resync included:
    /// a service this pass could not see (the watch cache did not know it yet) is still rolled
    /// by the next pass that sees it.
    evidence: std::sync::Mutex<Vec<(DateTime<Utc>, Target)>>,
}

/// How long a label move only an event dated is remembered: two resync periods and more, so
/// that the resync after a missed service sees it.
const EVIDENCE_KEEP: Duration = Duration::from_secs(3600);

/// How many changes' label moves are remembered at most (the oldest go first).
const EVIDENCE_MAX: usize = 4096;

impl Reconciler {
    /// A reconciler over `clients`, acting through `rollout`.
    pub fn new(
        clients: Clients,
        clock: Arc<dyn Clock>,
        rollout: Arc<dyn Rollout>,
        settings: Settings,
    ) -> Self {
        Reconciler {
            clients,
            cache: Arc::new(TaskDefCache::new()),
            watch: Watch::default(),
            account: std::sync::Mutex::new(None),
            clock,
            rollout,
            settings,
            evidence: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Remembers the label moves of `targets` (see [`Reconciler::evidence`]).
    fn remember(&self, targets: &[Target]) {
        let now = self.clock.now();
        let mut evidence = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
        let skew = chrono::Duration::from_std(self.settings.policy.clock_skew).unwrap_or_default();
        for t in targets {
            // A move dated in the future is ignored when applied (with a warning): not kept.
            let moves: Vec<crate::event::LabelMove> = t
                .label_moves
                .iter()
                .filter(|m| m.at <= now + skew)
                .cloned()
                .collect();
            if !moves.is_empty() {
                // Copies of one change's events are one piece of evidence (a flood must not
                // push out other changes' moves).
                evidence.retain(|(_, old)| {
                    !(old.identities == t.identities && old.label_moves == moves)
                });
                evidence.push((
                    now,
                    Target {
                        label_moves: moves,
                        ..t.clone()
                    },
                ));
            }
        }
        let excess = evidence.len().saturating_sub(EVIDENCE_MAX);
        evidence.drain(..excess);
    }

    /// The label moves remembered, as targets (only their moves are used), once the old ones
    /// are forgotten.
    fn remembered(&self) -> Vec<Target> {
        let keep = chrono::Duration::from_std(EVIDENCE_KEEP.max(self.settings.watch_max_age))
            .unwrap_or_default();
        let oldest = self.clock.now() - keep;
        let mut evidence = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
        evidence.retain(|(at, _)| *at > oldest);
        evidence.iter().map(|(_, t)| t.clone()).collect()
    }

    /// The clients it calls AWS with (guarded).
    pub(crate) fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The task-definition cache (shared across passes, warm for the life of the process).
    pub fn cache(&self) -> &TaskDefCache {
        &self.cache
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The account of its services, once it has seen one.
    pub fn account(&self) -> Option<String> {
        self.account
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the account its credentials belong to, when known before any service is seen (a
    /// role's account, or the operator's own from `sts:GetCallerIdentity`): a cold Lambda
    /// environment then tells another account's secret from its own at its first event.
    pub(crate) fn know_account(&self, account: &str) {
        let mut known = self.account.lock().unwrap_or_else(|p| p.into_inner());
        if known.is_none() && !account.is_empty() {
            *known = Some(account.to_string());
        }
    }

    fn learn_account(&self, inv: &index::Inventory) {
        let arn = inv
            .entries
            .first()
            .map(|e| e.service.arn.as_str())
            .or(inv.plain.first().map(String::as_str));
        if let Some(account) = arn.and_then(crate::reference::arn_account) {
            *self.account.lock().unwrap_or_else(|p| p.into_inner()) = Some(account.to_string());
        }
    }

    /// How many services the watch cache holds, once a full scan has filled it.
    pub fn watched(&self) -> Option<usize> {
        self.watch.is_built().then(|| self.watch.len())
    }

    /// Brings the watch cache's entries of services ECS's events named up to date (their
    /// deployments or tags changed, or they were created or deleted). Nothing is decided: the
    /// entries only say where a later change must look. Before the first full scan there is
    /// nothing to refresh (that scan will see them); a failure is logged and left to the resync.
    async fn refresh(&self, hints: &std::collections::BTreeSet<ServiceHint>) {
        if hints.is_empty() || !self.watch.is_built() {
            return;
        }
        let in_scope = |cluster: &str| {
            self.settings.clusters.is_empty()
                || self
                    .settings
                    .clusters
                    .iter()
                    .any(|c| c == cluster || c.rsplit('/').next() == cluster.rsplit('/').next())
        };
        let mut by_cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for h in hints.iter().filter(|h| in_scope(&h.cluster)) {
            by_cluster
                .entry(h.cluster.clone())
                .or_default()
                .push(h.service.clone());
        }
        if by_cluster.is_empty() {
            return;
        }
        let conc = self.settings.scan_concurrency;
        let stamp = self.watch.reserve();
        match index::describe(&self.clients, &self.cache, &by_cluster, conc).await {
            Ok((inv, mut gone)) => {
                gone.extend(inv.plain.iter().cloned());
                tracing::debug!(
                    services = inv.entries.len(),
                    gone = gone.len(),
                    "watch cache refreshed from ECS events"
                );
                self.watch
                    .observe(stamp, &inv.entries, &gone, &self.clients.region);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh the watch cache from ECS events; the next resync will")
            }
        }
    }

    /// Runs one pass.
    pub async fn pass(&self, req: &Request) -> Result<Pass, ReconcileError> {
        let started = tokio::time::Instant::now();
        if let Selection::Changes(c) = &req.selection {
            self.refresh(&c.services).await;
            if c.subjects.is_empty() && !c.resync {
                return Ok(Pass::empty(self.clock.now()));
            }
        }
        let mut unread = Vec::new();
        let targets = match &req.selection {
            Selection::All => Vec::new(),
            Selection::Changes(c) if c.resync => Vec::new(),
            Selection::Secrets(given) => self.resolve_targets(given).await?,
            Selection::Changes(c) => {
                let targets;
                (targets, unread) = self.resolve_changes(c).await?;
                self.remember(&targets);
                if targets.is_empty() {
                    tracing::info!("no changed secret that can be read exists: nothing to do");
                    return Ok(Pass {
                        unread,
                        ..Pass::empty(self.clock.now())
                    });
                }
                targets
            }
        };
        let scope = Scope {
            clusters: if req.clusters.is_empty() {
                self.settings.clusters.clone()
            } else {
                req.clusters.clone()
            },
        };
        // A dry run waits out short settles too, so that it shows what the real pass would do.
        let settle_wait = match req.budget {
            Some(b) => self.settings.settle_wait.min(b / 3),
            None => self.settings.settle_wait,
        };
        let policies = Policies {
            windows: self.settings.windows.clone(),
            notify_only: self.settings.notify_only,
            approved: req.approves(),
            ignore_windows: req.ignore_windows,
            image_drift: self.settings.image_drift,
            allow_image_drift: req.allow_image_drift && !req.services.is_empty(),
        };
        let filter = ServiceFilter(&req.services);
        let mut assessment = self
            .assess_settled(&scope, &targets, &filter, &policies, settle_wait)
            .await?;
        attribute(&mut assessment, &targets);
        let mut pass = Pass {
            outcomes: Vec::new(),
            cut_short: false,
            requeue_after: None,
            targets: Vec::new(),
            target_retry: None,
            unread,
            assessment,
        };
        let set = &pass.assessment.change_set;
        if !req.dry_run && !set.is_empty() {
            tracing::info!(services = set.changes.len(), "rolling stale services");
            let act = self.rollout.execute(set);
            match req.budget {
                None => pass.outcomes = act.await,
                Some(b) => {
                    let left = b
                        .saturating_sub(started.elapsed())
                        .saturating_sub(Duration::from_millis(200));
                    match tokio::time::timeout(left, act).await {
                        Ok(outcomes) => pass.outcomes = outcomes,
                        Err(_) => {
                            tracing::warn!("the time ran out first: the next pass rolls the rest");
                            pass.cut_short = true;
                        }
                    }
                }
            }
        }
        // Tasks outside services cannot be rolled: reported by full passes only (never per
        // event), after the rollouts so as never to delay one, and within what is left of the
        // budget (the Lambda's next resync reports them otherwise).
        let full = matches!(&req.selection, Selection::All)
            || matches!(&req.selection, Selection::Changes(c) if c.resync);
        if full && self.settings.tasks && req.services.is_empty() && !pass.cut_short {
            let report = async {
                let standalone = crate::tasks::standalone(
                    &self.clients,
                    &self.cache,
                    &scope.clusters,
                    self.settings.scan_concurrency,
                )
                .await;
                let mut changed = crate::tasks::changed_identities(
                    pass.assessment.services.iter().map(|a| &a.decision),
                );
                changed.extend(
                    standalone
                        .iter()
                        .flat_map(|t| t.findings.iter().filter_map(|f| f.identity.clone())),
                );
                let scheduled = crate::tasks::scheduled(
                    &self.clients,
                    &self.cache,
                    &scope.clusters,
                    &changed,
                    self.clock.now(),
                    self.settings.scan_concurrency,
                )
                .await;
                (standalone, scheduled)
            };
            let left = req.budget.map(|b| {
                b.saturating_sub(started.elapsed())
                    .saturating_sub(Duration::from_millis(200))
            });
            let found = match left {
                None => Some(report.await),
                Some(left) => tokio::time::timeout(left, report).await.ok(),
            };
            match found {
                Some((standalone, scheduled)) => {
                    pass.assessment.standalone_tasks = standalone;
                    pass.assessment.scheduled_tasks = scheduled;
                }
                None => tracing::warn!(
                    "the time ran out before tasks outside services were read: the next resync reports them"
                ),
            }
        }
        pass.requeue_after = self.requeue_after(&pass);
        Ok(pass)
    }

    fn requeue_after(&self, pass: &Pass) -> Option<Duration> {
        let now = self.clock.now();
        let settling = pass
            .assessment
            .services
            .iter()
            .filter_map(|a| match &a.decision {
                Decision::Settling { until, .. } => Some(
                    until
                        .and_then(|u| (u - now).to_std().ok())
                        .unwrap_or(self.settings.settle_recheck)
                        .max(Duration::from_secs(1)),
                ),
                Decision::Scheduled { at, .. } => Some(
                    (*at - now)
                        .to_std()
                        .unwrap_or_default()
                        .max(Duration::from_secs(1)),
                ),
                _ => None,
            })
            .min();
        let cut = (pass.cut_short || pass.deferred() > 0).then_some(self.settings.settle_recheck);
        settling.into_iter().chain(cut).min()
    }

    /// Resolves secret names given by a person into targets; one that does not exist is an
    /// error.
    pub(crate) async fn resolve_targets(
        &self,
        given: &[String],
    ) -> Result<Vec<Target>, ReconcileError> {
        let mut out = Vec::with_capacity(given.len());
        for g in given {
            out.push(resolve_target(&self.clients, g).await?);
        }
        Ok(out)
    }

    /// Whether `id` is an ARN of an account other than this reconciler's (when it knows its own).
    fn foreign(&self, id: &str) -> bool {
        let Some(own) = self.account() else {
            return false;
        };
        crate::reference::arn_account(id).is_some_and(|a| a != own)
    }

    /// Resolves what events said changed into targets. A secret that no longer exists, or a name
    /// that is not a secret at all, is logged and skipped: nothing can depend on it.
    /// A changed secret whose metadata is refused (a resource policy, an SCP) is that change's
    /// problem alone: reported (second of the pair) and skipped, and the batch's other changes
    /// are decided and rolled. What a retry may fix (throttling, a dropped connection) still
    /// fails the pass, to be tried again.
    async fn resolve_changes(
        &self,
        changes: &Changes,
    ) -> Result<(Vec<Target>, Vec<String>), ReconcileError> {
        let mut out = Vec::new();
        let mut unread = Vec::new();
        for (subject, label_moves) in &changes.subjects {
            // What the subject names, where it says so itself (a parameter's name, an object's
            // bucket and key); a secret's name or partial ARN is looked up below.
            if let Some(identity) = sources::subject_identity(subject, &self.clients.region) {
                out.push(Target {
                    given: subject.given(),
                    identities: vec![identity],
                    label_moves: label_moves.clone(),
                    provenance: changes.provenance.get(subject).cloned().unwrap_or_default(),
                });
                continue;
            }
            let given = subject.given();
            let id = &given;
            {
                match resolve_target(&self.clients, id).await {
                    // A Secrets Manager event is about a secret: a name it gives may also be an
                    // SSM parameter's, whose labels its label moves must never date.
                    Ok(t) => {
                        let identities: Vec<SecretIdentity> = t
                            .identities
                            .into_iter()
                            .filter(|i| sources::same_source(subject, i))
                            .collect();
                        if identities.is_empty() {
                            tracing::info!(secret = %id, "the event names nothing of its own source here (only another source's value of that name)");
                            continue;
                        }
                        out.push(Target {
                            identities,
                            label_moves: label_moves.clone(),
                            provenance: changes
                                .provenance
                                .get(subject)
                                .cloned()
                                .unwrap_or_default(),
                            ..t
                        })
                    }
                    Err(TargetError::NotFound(_)) => {
                        tracing::info!(secret = %id, "changed secret no longer exists")
                    }
                    Err(TargetError::Parse { given, source }) => {
                        tracing::warn!(secret = %given, error = %source, "event names no usable secret")
                    }
                    // Another account's secret this target's credentials may not read (its own
                    // target, if there is one, decides and reports it): one bad corner must not
                    // stop this target's other changes. Its dependants here, if any, are decided
                    // by the resync, as unknown until it can be read.
                    Err(TargetError::Aws(e)) if self.foreign(id) => {
                        tracing::warn!(secret = %id, error = %e, "another account's changed secret cannot be read with this target's credentials: skipped here")
                    }
                    Err(TargetError::Aws(e))
                        if !e.is_retryable() && e.kind != crate::aws::ErrorKind::Setup =>
                    {
                        let problem = if e.kind == crate::aws::ErrorKind::AccessDenied {
                            format!(
                                "changed secret {id} could not be read ({e}): grant {} on it to the operator's role (its resource policy and SCPs must allow it too); its dependants are left to the resync",
                                e.operation
                            )
                        } else {
                            format!(
                                "changed secret {id} could not be read ({e}); its dependants are left to the resync"
                            )
                        };
                        tracing::warn!(secret = %id, error = %e, "a changed secret cannot be read: its change is skipped, the others go on");
                        unread.push(problem);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok((out, unread))
    }

    /// Decides every service of `scope`; with `targets`, only services that reference one of
    /// them (a service so selected is decided on all its secrets: one rollout fixes all). Holds,
    /// and in [`Mode::FireAndForget`] the gates, are applied; nothing is changed.
    pub async fn assess(
        &self,
        scope: &Scope,
        targets: &[Target],
    ) -> Result<Assessment, ReconcileError> {
        let policies = Policies {
            windows: self.settings.windows.clone(),
            notify_only: self.settings.notify_only,
            image_drift: self.settings.image_drift,
            ..Policies::default()
        };
        let mut assessment = self
            .assess_with(scope, targets, &ServiceFilter(&[]), &policies)
            .await?;
        // Handed out, a change set is rolled whenever its caller chooses: the engine always looks
        // at its services again (only a pass rolling its own plan at once may skip that look).
        for change in &mut assessment.change_set.changes {
            change.described_at = None;
        }
        Ok(assessment)
    }

    async fn assess_with(
        &self,
        scope: &Scope,
        targets: &[Target],
        services: &ServiceFilter<'_>,
        policies: &Policies,
    ) -> Result<Assessment, ReconcileError> {
        let conc = self.settings.scan_concurrency;
        // Before the first DescribeServices leaves: what the plan's changes are as old as (see
        // `Change::described_at`).
        let described = tokio::time::Instant::now();
        let (inventory, scanned) = self.inventory(scope, targets, services).await?;
        if let Some(f) = services.unmatched(inventory.entries.iter().map(|e| &e.service)) {
            return Err(ReconcileError::NoSuchService(f));
        }
        let home = self.clients.region.as_str();
        let without_secrets = inventory.without_secrets;
        // What `--service` does not admit is still context: a pass over one service must see
        // the others' failed rollouts of a change it would roll with.
        let selected = |e: &index::Entry| {
            services.admits(&e.service)
                && (targets.is_empty()
                    || targets
                        .iter()
                        .flat_map(|t| &t.identities)
                        .any(|id| e.references(id, home)))
        };
        // A resync selects everything: the inventory as it is, rather than a second vector of
        // ten thousand entries grown by `push` beside it.
        let (mut entries, rest): (Vec<_>, Vec<_>) = if inventory.entries.iter().all(selected) {
            (inventory.entries, Vec::new())
        } else {
            inventory.entries.into_iter().partition(selected)
        };
        self.read_native_rollouts(&mut entries).await;
        let mut resolved = index::resolve_taking(&self.clients, &mut entries, conc).await;
        let now = self.clock.now();
        let skew = chrono::Duration::from_std(self.settings.policy.clock_skew).unwrap_or_default();
        let remembered = self.remembered();
        apply_label_moves(&mut resolved, targets, now + skew);
        apply_label_moves(&mut resolved, &remembered, now + skew);
        let decisions: Vec<Decision> = entries
            .iter()
            .zip(&resolved)
            .map(|(entry, refs)| decide_entry(entry, refs, now, &self.settings.policy))
            .collect();
        // Every other changed secret the selected services would roll with: its other
        // dependants are looked at too, so that its hold or canary means the same here as in a
        // pass over it (they are neither reported nor rolled by this pass).
        let (mut context, mut context_resolved) = self
            .context(
                scope, targets, services, &entries, &decisions, rest, scanned, policies,
            )
            .await?;
        self.read_native_rollouts(&mut context).await;
        apply_label_moves(&mut context_resolved, targets, now + skew);
        apply_label_moves(&mut context_resolved, &remembered, now + skew);
        let context_keys: std::collections::HashSet<ServiceKey> =
            context.iter().map(|e| ServiceKey::of(&e.service)).collect();
        let context_decisions: Vec<Decision> = context
            .iter()
            .zip(&context_resolved)
            .map(|(entry, refs)| decide_entry(entry, refs, now, &self.settings.policy))
            .collect();
        // Paired with their states now: only the services are needed from here on, and a
        // resync of ten thousand services holds a few megabytes of written references.
        for e in entries.iter_mut().chain(context.iter_mut()) {
            e.refs = Vec::new();
        }
        // Each service's resolved references are read once, for what the decisions' holds and
        // gates need and for what the report shows, and freed at once: at ten thousand services
        // they, the items and the report's lines are otherwise all held together, the pass's
        // peak.
        let mut interned: std::collections::HashMap<SecretIdentity, Arc<SecretIdentity>> =
            std::collections::HashMap::new();
        let mut changes: Vec<Vec<SecretChange>> =
            Vec::with_capacity(resolved.len() + context_resolved.len());
        let mut displays: Vec<Vec<String>> = Vec::with_capacity(resolved.len());
        for refs in resolved {
            changes.push(secret_changes(&refs, &mut interned));
            displays.push(display_secrets(&refs));
        }
        for refs in context_resolved {
            changes.push(secret_changes(&refs, &mut interned));
        }
        let mut items: Vec<Item<'_>> = entries
            .iter()
            .chain(context.iter())
            .zip(changes)
            .zip(decisions.into_iter().chain(context_decisions))
            .map(|((entry, secrets), decision)| Item::new(&entry.service, secrets, decision))
            .collect();
        for item in &mut items {
            item.context = context_keys.contains(&ServiceKey::of(item.service));
        }
        // In plan order, so that a gate's canary is the service the plan would roll first.
        items.sort_by_key(Item::order);
        let checked_images = self.hold_drifted(&mut items, now, policies).await;
        decide::hold_failed(&mut items, now, &self.settings.limits);
        decide::apply_policy(&mut items, now, policies);
        decide::gate(
            &mut items,
            self.settings.canary,
            self.settings.mode == Mode::Watch,
            now,
            &self.settings.limits,
        );
        // The context has done its part.
        items.retain(|i| !context_keys.contains(&ServiceKey::of(i.service)));
        let mut change_set = plan(&items);
        // What each rollout's image tags named when checked: asked again right before acting.
        for c in &mut change_set.changes {
            if let Some(images) = checked_images.get(&c.key) {
                c.images = images.clone();
            }
        }
        change_set.policies = policies.clone();
        for change in &mut change_set.changes {
            change.described_at = Some(described);
        }
        let decisions: BTreeMap<ServiceKey, Decision> = items
            .into_iter()
            .map(|i| (ServiceKey::of(i.service), i.decision))
            .collect();
        let mut decisions = decisions;
        let services = entries
            .into_iter()
            .zip(displays)
            .map(|(entry, secrets)| {
                let key = ServiceKey::of(&entry.service);
                let decision = decisions.remove(&key).unwrap_or(Decision::InSync);
                Assessed {
                    key,
                    decision,
                    secrets,
                    service: entry.service,
                }
            })
            .collect();
        Ok(Assessment {
            at: now,
            services,
            without_secrets,
            change_set,
            standalone_tasks: Vec::new(),
            scheduled_tasks: Vec::new(),
        })
    }

    /// ECS's blue/green, linear and canary rollouts, read where they can be: the `deployments`
    /// array says `COMPLETED` once traffic moved, before the bake time ends, and nothing of a
    /// hook awaiting action or an alarm's rollback. For each such service whose primary
    /// deployment may still be in flight (created within `[rollout] timeout` plus its bake time),
    /// its service deployment sets the primary's state: in progress until it succeeded, failed
    /// when it rolled back or stopped. So a canary means the same without waiting (the Lambda,
    /// `--no-wait`) as with it. One `ListServiceDeployments` (+ `DescribeServiceDeployments`)
    /// per such service; a read that fails leaves the array's reading.
    async fn read_native_rollouts(&self, entries: &mut [index::Entry]) {
        use crate::aws::{EcsStrategy, RolloutState};
        let now = self.clock.now();
        for e in entries.iter_mut() {
            let s = &mut e.service;
            if s.controller != crate::aws::Controller::Ecs
                || s.shape.strategy == EcsStrategy::Rolling
            {
                continue;
            }
            // In flight for up to `timeout` plus its bake; read a while longer, so that one held
            // past its time says what it waits for (a hook awaiting action).
            let window =
                (self.settings.limits.stuck_after + s.shape.bake_time.unwrap_or_default()) * 2;
            let Some(primary) = s.primary().cloned() else {
                continue;
            };
            if now - primary.created_at
                > chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX)
            {
                continue;
            }
            let since = primary.created_at - chrono::Duration::seconds(30);
            let found = match self
                .clients
                .ecs
                .service_deployments(s.cluster_name(), &s.name, since)
                .await
            {
                Ok(f) => f,
                Err(err) => {
                    tracing::warn!(service = %s.name, error = %err, "could not read its service deployment: judged by its deployments");
                    continue;
                }
            };
            let id = primary
                .id
                .rsplit('/')
                .next()
                .unwrap_or(&primary.id)
                .to_string();
            let tail = |arn: &str| arn.rsplit('/').next().map(str::to_string);
            let Some(sd) = found.iter().find(|d| {
                tail(&d.arn).as_deref() == Some(id.as_str())
                    || d.revision.as_deref().and_then(tail).as_deref() == Some(id.as_str())
            }) else {
                continue;
            };
            let (state, reason) = match sd.status.as_str() {
                "SUCCESSFUL" => (RolloutState::Completed, None),
                "ROLLBACK_REQUESTED"
                | "ROLLBACK_IN_PROGRESS"
                | "ROLLBACK_SUCCESSFUL"
                | "ROLLBACK_FAILED"
                | "STOPPED"
                | "STOP_REQUESTED" => (
                    RolloutState::Failed,
                    Some(format!(
                        "service deployment {} {}{}",
                        sd.arn,
                        sd.status.to_lowercase(),
                        sd.status_reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )),
                ),
                _ => (RolloutState::InProgress, sd.awaiting.clone()),
            };
            if let Some(d) = s.deployments.iter_mut().find(|d| d.id == primary.id) {
                d.rollout_state = Some(state);
                if reason.is_some() {
                    d.rollout_state_reason = reason;
                }
            }
        }
    }

    /// Holds each stale service that may roll now and whose rollout would start a different
    /// image than it runs ([`decide::drift`]), unless `[rollout] image_drift` says otherwise or a
    /// person approved it (`--allow-image-drift`). Reads, for those services only: one page of
    /// `ListTasks` and one `DescribeTasks`, and one `ecr:DescribeImages` per repository. What
    /// cannot be read is logged (`warn`), never held: a registry we cannot ask says nothing.
    async fn hold_drifted(
        &self,
        items: &mut [Item<'_>],
        now: chrono::DateTime<chrono::Utc>,
        policies: &Policies,
    ) -> BTreeMap<ServiceKey, Vec<crate::plan::CheckedImage>> {
        use crate::decide::drift::{self, EcrTag, Image, ImageDrift};
        let mut checked: BTreeMap<ServiceKey, Vec<crate::plan::CheckedImage>> = BTreeMap::new();
        if policies.image_drift == ImageDrift::Allow {
            return checked;
        }
        let mut tags: BTreeMap<EcrTag, Option<String>> = BTreeMap::new();
        for item in items.iter_mut() {
            if item.context
                || !item.decision.is_stale()
                || decide::eligibility(item.service, now, policies) != decide::Eligibility::Now
            {
                continue;
            }
            let key = ServiceKey::of(item.service);
            let images = self.cache.images_of(&index::revision_of(item.service));
            let wanted: Vec<EcrTag> = images
                .iter()
                .filter_map(|(_, i)| match drift::image(i) {
                    Image::Ecr(t) => Some(t),
                    _ => None,
                })
                .collect();
            for (container, image) in images
                .iter()
                .filter(|(_, i)| drift::image(i) == Image::Elsewhere)
            {
                // Said once per pass and service, not a warning: most fleets run public images.
                tracing::info!(service = %key, container, image, "image drift unchecked: not an ECR tag ecs-reloader can ask about");
            }
            if wanted.is_empty() {
                continue;
            }
            let running = match self.running_digests(item.service).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(service = %key, error = %e, "could not read which images its tasks run: image drift unchecked");
                    continue;
                }
            };
            let mut unreadable = false;
            for t in wanted {
                if tags.contains_key(&t) {
                    continue;
                }
                match crate::aws::current_digest(
                    self.clients.registry.as_ref(),
                    &t.region,
                    &t.registry,
                    &t.repository,
                    &t.tag,
                )
                .await
                {
                    Ok(digest) => {
                        tags.insert(t, digest);
                    }
                    Err(e) => {
                        tracing::warn!(service = %key, error = %e, "could not ask the registry: image drift unchecked");
                        unreadable = true;
                    }
                }
            }
            let drifted = drift::drifted(&images, &running, &tags);
            if drifted.is_empty() {
                if unreadable {
                    tracing::warn!(service = %key, "rolling without knowing whether its image tags moved");
                } else if policies.image_drift == ImageDrift::Hold && !policies.allow_image_drift {
                    // Asked again right before its rollout: a tag may move during a canary.
                    checked.insert(
                        key.clone(),
                        images
                            .iter()
                            .filter(|(_, i)| matches!(drift::image(i), Image::Ecr(_)))
                            .map(|(c, i)| crate::plan::CheckedImage {
                                container: c.clone(),
                                image: i.clone(),
                                running: running.get(c).cloned().unwrap_or_default(),
                            })
                            .collect(),
                    );
                }
                continue;
            }
            let what = drifted
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if policies.image_drift == ImageDrift::Warn || policies.allow_image_drift {
                tracing::warn!(service = %key, drift = %what, "its rollout starts a different image than it runs (allowed)");
                continue;
            }
            let findings = item
                .decision
                .findings_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            item.decision = Decision::Held {
                reason: format!(
                    "held: image drift: a rollout would start a different image than it runs ({what}); `reconcile --service {key} --allow-image-drift` approves it"
                ),
                findings,
            };
        }
        checked
    }

    /// Container → the image digests its running tasks report (one page of tasks).
    async fn running_digests(
        &self,
        service: &Service,
    ) -> Result<BTreeMap<String, Vec<String>>, crate::aws::AwsError> {
        let cluster = service.cluster_name();
        let page = self
            .clients
            .ecs
            .list_tasks(cluster, &service.name, None)
            .await?;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if page.items.is_empty() {
            return Ok(out);
        }
        let batch: Vec<String> = page.items.into_iter().take(100).collect();
        for t in self.clients.ecs.describe_tasks(cluster, &batch).await? {
            for (c, d) in t.digests {
                let seen = out.entry(c).or_default();
                if !seen.contains(&d) {
                    seen.push(d);
                }
            }
        }
        Ok(out)
    }

    /// The services a targeted pass looks at beyond its selection (see
    /// [`assess_with`](Self::assess_with)): the other dependants of every secret that the
    /// selected stale services would roll with and that the pass was not started for. Empty for
    /// a pass over everything, and when no selected service is stale for another secret (the
    /// usual rotation costs nothing more). From the scan when there was one (`rest`), else from
    /// the watch cache's candidates, described afresh.
    #[allow(clippy::too_many_arguments)]
    async fn context(
        &self,
        scope: &Scope,
        targets: &[Target],
        services: &ServiceFilter<'_>,
        entries: &[index::Entry],
        decisions: &[Decision],
        rest: Vec<index::Entry>,
        scanned: bool,
        policies: &Policies,
    ) -> Result<(Vec<index::Entry>, Vec<Vec<decide::ResolvedRef>>), ReconcileError> {
        // A pass over everything in the fleet's scope sees every dependant already.
        let whole_fleet = scope.clusters == self.settings.clusters;
        if targets.is_empty() && services.0.is_empty() && whole_fleet {
            return Ok((Vec::new(), Vec::new()));
        }
        let now = self.clock.now();
        let targeted: std::collections::HashSet<&SecretIdentity> =
            targets.iter().flat_map(|t| &t.identities).collect();
        // Only services that may roll now need it (one waiting for a person or a window does
        // not pay for it at every event).
        let others: std::collections::BTreeSet<SecretIdentity> = entries
            .iter()
            .zip(decisions)
            .filter(|(e, _)| {
                decide::eligibility(&e.service, now, policies) == decide::Eligibility::Now
            })
            .filter_map(|(_, d)| match d {
                Decision::Stale { findings } => Some(findings),
                _ => None,
            })
            .flatten()
            .filter_map(|f| f.identity.clone())
            .filter(|id| !targeted.contains(id))
            .collect();
        if others.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let home = self.clients.region.as_str();
        let selected: std::collections::HashSet<ServiceKey> =
            entries.iter().map(|e| ServiceKey::of(&e.service)).collect();
        // The other dependants across the fleet's whole scope, whatever `--cluster` narrowed
        // the selection to: from the scan when it covered that scope, else from the watch
        // cache (or a scan of that scope).
        let pool = if scanned && whole_fleet {
            rest
        } else {
            let look = Target {
                given: "(the other secrets of the selected services)".into(),
                identities: others.iter().cloned().collect(),
                label_moves: Vec::new(),
                provenance: Vec::new(),
            };
            let fleet = Scope {
                clusters: self.settings.clusters.clone(),
            };
            self.inventory(&fleet, std::slice::from_ref(&look), &ServiceFilter(&[]))
                .await?
                .0
                .entries
        };
        let mut context: Vec<index::Entry> = pool
            .into_iter()
            .filter(|e| !selected.contains(&ServiceKey::of(&e.service)))
            .filter(|e| others.iter().any(|id| e.references(id, home)))
            .collect();
        tracing::debug!(
            secrets = others.len(),
            services = context.len(),
            "looked at the other dependants of the selected services' other changed secrets"
        );
        let resolved =
            index::resolve_taking(&self.clients, &mut context, self.settings.scan_concurrency)
                .await;
        Ok((context, resolved))
    }

    /// The services to decide: with targets, and the watch cache filled for this scope, only the
    /// candidates it names, described afresh; else a scan of the scope (which, of the default
    /// scope, fills the cache).
    /// Also says whether it scanned (the inventory then holds every service of the scope).
    async fn inventory(
        &self,
        scope: &Scope,
        targets: &[Target],
        services: &ServiceFilter<'_>,
    ) -> Result<(index::Inventory, bool), ReconcileError> {
        let conc = self.settings.scan_concurrency;
        let region = self.clients.region.as_str();
        let default_scope = scope.clusters == self.settings.clusters;
        // `--service` must tell a typo from a service that is not a candidate: it scans.
        if default_scope && !targets.is_empty() && services.0.is_empty() {
            let max_age = self.settings.watch_max_age;
            if let Some(candidates) = self
                .watch
                .candidates(targets.iter().flat_map(|t| &t.identities), max_age)
            {
                let stamp = self.watch.reserve();
                let (inv, mut gone) =
                    index::describe(&self.clients, &self.cache, &candidates, conc).await?;
                gone.extend(inv.plain.iter().cloned());
                self.watch.observe(stamp, &inv.entries, &gone, region);
                tracing::debug!(
                    candidates = candidates.values().map(Vec::len).sum::<usize>(),
                    "described the watch cache's candidates"
                );
                return Ok((inv, false));
            }
        }
        let scan = default_scope.then(|| self.watch.begin_scan());
        let inv = index::scan(&self.clients, &self.cache, scope, conc).await?;
        self.learn_account(&inv);
        if let Some(scan) = scan {
            scan.finish(&inv.entries, region);
        }
        Ok((inv, true))
    }

    /// Like [`assess`](Self::assess), but waits out settles that end within `max_wait` (a change
    /// made within the last second or two: see [`crate::decide`]) and decides again.
    async fn assess_settled(
        &self,
        scope: &Scope,
        targets: &[Target],
        services: &ServiceFilter<'_>,
        policies: &Policies,
        max_wait: Duration,
    ) -> Result<Assessment, ReconcileError> {
        let deadline = self.clock.now() + chrono::Duration::from_std(max_wait).unwrap_or_default();
        let mut assessment = self.assess_with(scope, targets, services, policies).await?;
        while let Some(until) = assessment.next_settle() {
            if until > deadline {
                break;
            }
            let wait = (until - self.clock.now()).to_std().unwrap_or_default();
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                "waiting for recent changes to settle"
            );
            tokio::time::sleep(wait + Duration::from_millis(50)).await;
            assessment = self.assess_with(scope, targets, services, policies).await?;
        }
        Ok(assessment)
    }
}

/// A service's changed secrets as the decisions' holds and gates count them, each identity shared
/// through `interned`.
fn secret_changes(
    refs: &[decide::ResolvedRef],
    interned: &mut std::collections::HashMap<SecretIdentity, Arc<SecretIdentity>>,
) -> Vec<SecretChange> {
    refs.iter()
        .filter_map(|r| r.state.as_ref().ok().map(|s| (r, s)))
        .map(|(r, s)| SecretChange {
            secret: interned
                .entry(s.identity())
                .or_insert_with_key(|k| Arc::new(k.clone()))
                .clone(),
            changed_at: decide::value_changed_at(r),
        })
        .collect()
}

/// What the report shows of a service's secrets: each identity, or the text as written when it
/// could not be resolved; sorted, once each.
fn display_secrets(refs: &[decide::ResolvedRef]) -> Vec<String> {
    let mut secrets: Vec<String> = refs
        .iter()
        .map(|r| match &r.state {
            Ok(s) => s.identity().to_string(),
            Err(_) => r.text.clone(),
        })
        .collect();
    secrets.sort();
    secrets.dedup();
    secrets
}

/// The rule's decision, unless what the service resolves could not be read at all.
fn decide_entry(
    entry: &index::Entry,
    refs: &[crate::decide::ResolvedRef],
    now: chrono::DateTime<chrono::Utc>,
    policy: &Policy,
) -> Decision {
    match &entry.unreadable {
        Some(why) => Decision::Unknown {
            problems: vec![why.clone()],
        },
        None => decide(&entry.service, refs, now, policy),
    }
}
