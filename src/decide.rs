//! The staleness decision: a pure function from a service, the state of the secrets it resolves
//! and the current time to a [`Decision`].
//!
//! # The rule
//!
//! ECS resolves a task's secrets when the task starts, and every task of a deployment starts at
//! or after the deployment's `createdAt` (call it *d*). So a service is **stale** when a secret
//! version it resolves *became resolvable* after *d*. Everything below derives that from AWS
//! metadata alone, so the decision survives restarts, duplicate events and a second replica.
//!
//! Secrets Manager reports, per secret, `LastChangedDate` (*U*: the last change of any kind, stage
//! moves included) and per version only `CreatedDate` (*L*); it does not say when a label moved.
//! A rotation has two moments: the new version is created as `AWSPENDING` (*L*) and promoted to
//! `AWSCURRENT` later (≤ *U*). Hence, for a reference that follows stage *S* to version *v*:
//!
//! 1. *d* < *L*(v) + 1 s → **stale**: the deployment predates the version.
//! 2. *S* is `AWSCURRENT` or `AWSPREVIOUS` (labels that rotation and `PutSecretValue` move) and
//!    *d* < *U* + 1 s → **stale**: the secret changed after the deployment and the promotion may be
//!    that change. This is what catches a deployment made between a rotation's two moments. The
//!    cost: a metadata-only edit (description, tags, KMS key) made after the deployment is
//!    indistinguishable from a promotion and rolls the service once. We err toward the fresh value.
//! 3. Otherwise **fresh**. For a custom stage this means only rule 1 applies, plus what events
//!    tell: a custom label moved *back* to an older version is invisible to the metadata, so a
//!    `Secret Label Updated` event's time for that label stands in for it (stale if *d* < that
//!    time + 1 s). A resync without the event cannot see such a move. Rotating `AWSCURRENT` never
//!    rolls a service pinned to a custom stage.
//! 4. A version id never rolls ([`Judgement::Pinned`]).
//!
//! SSM parameters: the latest version's `LastModifiedDate` plays *L*; `name:N` is pinned;
//! `name:label` compares against the labelled version's date (label moves have no date either).
//!
//! **Granularity.** Secrets Manager dates are whole seconds and *d* has milliseconds. A version
//! created in the same second as *d* may be before or after it, so ties count as stale (the
//! `+ 1 s` above). The converse matters for idempotence: a rollout made in the same second as the
//! change would itself look stale afterwards and roll again. So when a service is stale but the
//! deployment we would create could still fall inside that second (plus [`Policy::clock_skew`]
//! for the distance between our clock and AWS's), the decision is [`Decision::Settling`] until it
//! cannot. That wait is at most about two seconds.
//!
//! **Rotation in progress.** If a secret has a version in `AWSPENDING` created less than
//! [`Policy::rotation_grace`] ago, a rotation is running; rolling now would read the old value and
//! need a second rollout minutes later, so a service made stale by that secret settles until the
//! rotation is promoted or the grace runs out (a failed rotation leaves `AWSPENDING` behind).
//!
//! **A deployment already in progress** (say, a CI deploy) is not stacked with another one: the
//! service settles and is decided again once it is done. If that deployment was created after
//! the change it is already fresh and the service is in sync.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{Controller, ParameterVersion, Service};
use crate::reference::{
    ParamSelector, SecretIdentity, SecretRef, SecretsManagerId, Site, VersionSelector, AWSCURRENT,
    AWSPENDING, AWSPREVIOUS,
};

/// Tag that opts a service out when set to `false`.
pub const TAG_ENABLED: &str = "ecs-reloader/enabled";

/// Tunables of the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Allowance for the difference between our clock and AWS's.
    pub clock_skew: Duration,
    /// How long an `AWSPENDING` version holds back a rollout.
    pub rotation_grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            clock_skew: Duration::from_secs(1),
            rotation_grace: Duration::from_secs(600),
        }
    }
}

/// The date granularity we assume for every metadata date (Secrets Manager's is one second).
const GRANULARITY: chrono::Duration = chrono::Duration::seconds(1);

/// The metadata of a Secrets Manager secret the rule needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SmState {
    /// The secret's identity.
    pub id: SecretsManagerId,
    /// `LastChangedDate`.
    pub last_changed: Option<DateTime<Utc>>,
    /// Stage → version id.
    pub stages: BTreeMap<String, String>,
    /// Version id → creation date. Empty when not fetched: the index fetches it only when some
    /// dependent deployment is older than `last_changed + 1 s`, since otherwise nothing reads it.
    pub created: BTreeMap<String, DateTime<Utc>>,
    /// Label → when it moved, as `Secret Label Updated` events tell (the metadata cannot date a
    /// label move). Empty on a resync.
    pub label_moves: BTreeMap<String, DateTime<Utc>>,
}

impl SmState {
    /// The version carrying `stage`.
    pub fn version_with(&self, stage: &str) -> Option<&str> {
        self.stages.get(stage).map(String::as_str)
    }
}

/// The metadata of an SSM parameter the rule needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SsmState {
    /// Region.
    pub region: String,
    /// Canonical name.
    pub name: String,
    /// When the latest version was written.
    pub last_modified: Option<DateTime<Utc>>,
    /// Latest version.
    pub version: i64,
    /// Version history (labels), fetched only for label references.
    pub history: Option<Vec<ParameterVersion>>,
}

/// The resolved state behind one reference.
#[derive(Debug, Clone, PartialEq)]
pub enum RefState {
    /// A Secrets Manager secret.
    SecretsManager(SmState),
    /// An SSM parameter.
    Parameter(SsmState),
}

impl RefState {
    /// The identity of what this state describes.
    pub fn identity(&self) -> SecretIdentity {
        match self {
            RefState::SecretsManager(s) => SecretIdentity::SecretsManager(s.id.clone()),
            RefState::Parameter(p) => SecretIdentity::Parameter {
                region: p.region.clone(),
                name: p.name.clone(),
            },
        }
    }
}

/// One reference of a service with the state it resolved to (or why it did not resolve).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRef {
    /// Where the reference sits.
    pub site: Site,
    /// The text as written.
    pub text: String,
    /// The parsed reference (concrete: never [`SecretRef::Named`]) or the parse error.
    pub reference: Result<SecretRef, String>,
    /// The state it resolved to, or why it could not be read.
    pub state: Result<RefState, String>,
}

/// Why a single reference makes its service stale (or would, for an opted-out service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The secret's identity, for display.
    pub secret: String,
    /// Where the service references it.
    pub site: String,
    /// Why it is stale.
    pub reason: String,
}

/// The decision for one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Roll it: at least one resolved version is newer than its deployment.
    Stale {
        /// The stale references.
        findings: Vec<Finding>,
    },
    /// Every reference resolves what the deployment resolved.
    InSync,
    /// Every reference is pinned to a version id: rotations never concern it.
    Pinned,
    /// Tagged `ecs-reloader/enabled=false`: never rolled; `findings` say whether it would be.
    OptedOut {
        /// What would make it stale.
        findings: Vec<Finding>,
    },
    /// Stale, but rolling now would be premature; decide again later.
    Settling {
        /// When to decide again, if known (otherwise: when the in-progress deployment ends).
        until: Option<DateTime<Utc>>,
        /// Why it waits.
        reason: String,
        /// The stale references.
        findings: Vec<Finding>,
    },
    /// Not a candidate at all.
    Skipped {
        /// Why.
        reason: String,
    },
    /// A reference could not be parsed or resolved: rolling would start tasks that may fail to
    /// fetch their secrets, so the service is left alone and reported.
    Unknown {
        /// What could not be resolved.
        problems: Vec<String>,
    },
    /// Stale, but another service's rollout for the same change failed or is stuck: rolling
    /// this one too would likely break it as well. Held until that service is healthy again or
    /// the secret changes again.
    Held {
        /// Which rollout failed, and how.
        reason: String,
        /// The stale references.
        findings: Vec<Finding>,
    },
}

impl Decision {
    /// The decision's name: the same in the table, the JSON document (serde's tag), logs,
    /// metrics and events.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Stale { .. } => "stale",
            Decision::InSync => "in_sync",
            Decision::Pinned => "pinned",
            Decision::OptedOut { .. } => "opted_out",
            Decision::Settling { .. } => "settling",
            Decision::Skipped { .. } => "skipped",
            Decision::Unknown { .. } => "unknown",
            Decision::Held { .. } => "held",
        }
    }

    /// Whether the service should be rolled now.
    pub fn is_stale(&self) -> bool {
        matches!(self, Decision::Stale { .. })
    }

    /// Whether the service needs nothing, now or later.
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            Decision::InSync
                | Decision::Pinned
                | Decision::OptedOut { .. }
                | Decision::Skipped { .. }
        )
    }
}

/// The judgement of a single reference.
#[derive(Debug, Clone, PartialEq)]
enum Judgement {
    Pinned,
    Fresh,
    Stale {
        reason: String,
        fresh_after: DateTime<Utc>,
        rotating_since: Option<DateTime<Utc>>,
    },
    Error(String),
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn judge_sm(sel: &VersionSelector, s: &SmState, d: DateTime<Utc>) -> Judgement {
    let stage = match sel {
        VersionSelector::VersionId(_) => return Judgement::Pinned,
        VersionSelector::Current => AWSCURRENT,
        VersionSelector::Stage(st) => st.as_str(),
    };
    let Some(version) = s.version_with(stage) else {
        return Judgement::Error(format!("{}: no version carries stage {stage}", s.id.name));
    };
    let follows_promotion = stage == AWSCURRENT || stage == AWSPREVIOUS;
    let changed_after = s.last_changed.is_some_and(|u| d < u + GRANULARITY);
    if !changed_after {
        // L ≤ U always (creating a version is a change), so both rules say fresh.
        return Judgement::Fresh;
    }
    let Some(created) = s.created.get(version).copied() else {
        if follows_promotion {
            // Rule 2 decides without the creation date.
            return stale_by_change(s, stage, d);
        }
        return Judgement::Error(format!(
            "{}: creation date of version {version} unknown",
            s.id.name
        ));
    };
    if d < created + GRANULARITY {
        return Judgement::Stale {
            reason: format!(
                "{stage} is version {version}, created {}, after the deployment ({})",
                fmt_time(created),
                fmt_time(d)
            ),
            fresh_after: created + GRANULARITY,
            rotating_since: pending_since(s, follows_promotion),
        };
    }
    if follows_promotion {
        return stale_by_change(s, stage, d);
    }
    if let Some(moved) = s.label_moves.get(stage).copied() {
        if d < moved + GRANULARITY {
            return Judgement::Stale {
                reason: format!(
                    "label {stage} moved to version {version} at {} (event), after the deployment ({})",
                    fmt_time(moved),
                    fmt_time(d)
                ),
                fresh_after: moved + GRANULARITY,
                rotating_since: None,
            };
        }
    }
    Judgement::Fresh
}

fn stale_by_change(s: &SmState, stage: &str, d: DateTime<Utc>) -> Judgement {
    let u = s.last_changed.unwrap_or(d);
    Judgement::Stale {
        reason: format!(
            "secret changed {}, after the deployment ({}); {stage} may have moved then",
            fmt_time(u),
            fmt_time(d)
        ),
        fresh_after: u + GRANULARITY,
        rotating_since: pending_since(s, true),
    }
}

/// When a rotation in progress started: an `AWSPENDING` version that is not also current.
fn pending_since(s: &SmState, follows_promotion: bool) -> Option<DateTime<Utc>> {
    if !follows_promotion {
        return None;
    }
    let pending = s.version_with(AWSPENDING)?;
    if Some(pending) == s.version_with(AWSCURRENT) {
        return None;
    }
    s.created.get(pending).copied().or(s.last_changed)
}

fn judge_ssm(sel: &ParamSelector, p: &SsmState, d: DateTime<Utc>) -> Judgement {
    let (written, what) = match sel {
        ParamSelector::Version(_) => return Judgement::Pinned,
        ParamSelector::Latest => (p.last_modified, format!("version {}", p.version)),
        ParamSelector::Label(label) => {
            let Some(history) = &p.history else {
                return Judgement::Error(format!("{}: label history not fetched", p.name));
            };
            let Some(v) = history.iter().find(|v| v.labels.iter().any(|l| l == label)) else {
                return Judgement::Error(format!("{}: no version carries label {label}", p.name));
            };
            (
                v.last_modified,
                format!("version {} (label {label})", v.version),
            )
        }
    };
    match written {
        Some(w) if d < w + GRANULARITY => Judgement::Stale {
            reason: format!(
                "{what} written {}, after the deployment ({})",
                fmt_time(w),
                fmt_time(d)
            ),
            fresh_after: w + GRANULARITY,
            rotating_since: None,
        },
        Some(_) => Judgement::Fresh,
        None => Judgement::Error(format!("{}: no modification date", p.name)),
    }
}

fn judge(r: &ResolvedRef, d: DateTime<Utc>) -> Judgement {
    let reference = match &r.reference {
        Ok(x) => x,
        Err(e) => return Judgement::Error(format!("{} ({}): {e}", r.text, r.site)),
    };
    let state = match &r.state {
        Ok(s) => s,
        Err(e) => return Judgement::Error(format!("{} ({}): {e}", r.text, r.site)),
    };
    match (reference, state) {
        (SecretRef::SecretsManager(sm), RefState::SecretsManager(s)) => {
            judge_sm(&sm.selector, s, d)
        }
        (SecretRef::Parameter(p), RefState::Parameter(s)) => judge_ssm(&p.selector, s, d),
        _ => Judgement::Error(format!(
            "{}: reference and state disagree on the service",
            r.text
        )),
    }
}

impl RefState {
    /// When what this state describes last changed (the secret's `LastChangedDate`, the
    /// parameter's `LastModifiedDate`).
    pub fn changed_at(&self) -> Option<DateTime<Utc>> {
        match self {
            RefState::SecretsManager(s) => s.last_changed,
            RefState::Parameter(p) => p.last_modified,
        }
    }
}

/// A service, the secrets it resolves with when each last changed, and its decision: what the
/// cross-service refinements ([`hold_failed`], [`gate_canary`]) work on.
pub type Item<'a> = (
    &'a Service,
    Vec<(SecretIdentity, Option<DateTime<Utc>>)>,
    Decision,
);

/// A failed or stuck rollout visible on a service: when its deployment was created, and how it
/// failed. Failed: `rolloutState` `FAILED` on any deployment, a circuit-breaker rollback, or
/// `failedTasks` at the threshold on a deployment in progress. Stuck: in progress for longer
/// than `stuck_after`.
pub fn failed_rollout(
    service: &Service,
    now: DateTime<Utc>,
    stuck_after: Duration,
    failed_tasks_threshold: i32,
) -> Option<(DateTime<Utc>, String)> {
    for d in &service.deployments {
        if d.rollout_state.as_deref() == Some("FAILED") {
            let why = d
                .rollout_state_reason
                .as_deref()
                .unwrap_or("rolloutState FAILED");
            return Some((d.created_at, format!("deployment {} failed: {why}", d.id)));
        }
    }
    let p = service.primary()?;
    let reason = p
        .rollout_state_reason
        .as_deref()
        .unwrap_or("")
        .to_ascii_lowercase();
    if reason.contains("circuit breaker") || reason.contains("rolling back") {
        return Some((
            p.created_at,
            format!("deployment {} is a circuit-breaker rollback", p.id),
        ));
    }
    let in_progress =
        p.rollout_state.as_deref() == Some("IN_PROGRESS") || service.deployments.len() > 1;
    if in_progress && failed_tasks_threshold > 0 && p.failed_tasks >= failed_tasks_threshold {
        return Some((
            p.created_at,
            format!(
                "deployment {}: {} task(s) failed to start",
                p.id, p.failed_tasks
            ),
        ));
    }
    let stuck = chrono::Duration::from_std(stuck_after).unwrap_or(chrono::Duration::MAX);
    if in_progress && now - p.created_at > stuck {
        return Some((
            p.created_at,
            format!(
                "deployment {} in progress since {}",
                p.id,
                fmt_time(p.created_at)
            ),
        ));
    }
    None
}

/// Holds stale services whose change already broke another service's rollout.
///
/// For each secret, a failed or stuck rollout of a dependent whose deployment was created after
/// the secret last changed means "this change breaks rollouts". Every other service made stale
/// by that secret becomes [`Decision::Held`]. Derived from AWS state only: the hold lifts when the
/// failed service is healthy again (its failed deployment leaves the list) or the secret changes
/// again (the failure predates the new change). This is how a canary that failed in one run (or
/// one Lambda invocation) keeps the next run from sacrificing another service.
///
/// `items` are (service, its secrets with their change times, its decision), decisions updated
/// in place.
pub fn hold_failed(
    items: &mut [Item<'_>],
    now: DateTime<Utc>,
    stuck_after: Duration,
    failed_tasks_threshold: i32,
) {
    let mut failing: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (svc, secrets, _) in items.iter() {
        let Some((at, why)) = failed_rollout(svc, now, stuck_after, failed_tasks_threshold) else {
            continue;
        };
        for (id, changed) in secrets {
            if changed.is_none_or(|c| at > c) {
                failing.entry(id.to_string()).or_insert_with(|| {
                    (format!("{}/{}", svc.cluster_name(), svc.name), why.clone())
                });
            }
        }
    }
    if failing.is_empty() {
        return;
    }
    for (svc, _, decision) in items.iter_mut() {
        let Decision::Stale { findings } = decision else {
            continue;
        };
        let me = format!("{}/{}", svc.cluster_name(), svc.name);
        let hit = findings.iter().find_map(|f| {
            failing
                .get(&f.secret)
                .filter(|(who, _)| *who != me)
                .map(|w| (f.secret.clone(), w))
        });
        if let Some((secret, (who, why))) = hit {
            let reason = format!("held: the rollout of {who} after this change of {secret} failed ({why}); fix it, then run again");
            *decision = Decision::Held {
                reason,
                findings: std::mem::take(findings),
            };
        }
    }
}

/// Whether a deployment is healthy as far as one look tells: `COMPLETED`, or (without a rollout
/// state) primary, alone, with running = desired.
fn looks_healthy(service: &Service) -> bool {
    let Some(p) = service.primary() else {
        return false;
    };
    match p.rollout_state.as_deref() {
        Some("COMPLETED") => true,
        Some(_) => false,
        None => service.deployments.len() == 1 && p.running_count >= p.desired_count,
    }
}

/// The canary gate for drivers that cannot wait for health (the Lambda, `reconcile --no-wait`).
///
/// Per changed secret, from AWS state only: if some dependent already runs a deployment created
/// after the change and it is healthy, the canary has passed and every stale dependent rolls. If
/// such a deployment is still in progress, the others settle. Otherwise only the first stale
/// dependent (in plan order) rolls, as the canary, and the others settle until a later run sees
/// it healthy (or [`hold_failed`] sees it fail). `items` must be in plan order.
pub fn gate_canary(items: &mut [Item<'_>]) {
    let mut passed: BTreeMap<String, bool> = BTreeMap::new();
    let mut rolling: BTreeMap<String, String> = BTreeMap::new();
    for (svc, secrets, decision) in items.iter() {
        if decision.is_stale() {
            continue;
        }
        let Some(p) = svc.primary() else { continue };
        for (id, changed) in secrets {
            let after = changed.is_some_and(|c| p.created_at >= c + GRANULARITY);
            if !after {
                continue;
            }
            if looks_healthy(svc) {
                passed.insert(id.to_string(), true);
            } else {
                rolling
                    .entry(id.to_string())
                    .or_insert_with(|| format!("{}/{}", svc.cluster_name(), svc.name));
            }
        }
    }
    let mut canary_of: BTreeMap<String, String> = BTreeMap::new();
    for (svc, _, decision) in items.iter_mut() {
        let Decision::Stale { findings } = decision else {
            continue;
        };
        let me = format!("{}/{}", svc.cluster_name(), svc.name);
        let mut wait: Option<String> = None;
        for f in findings.iter() {
            if passed.contains_key(&f.secret) {
                continue;
            }
            if let Some(who) = rolling.get(&f.secret) {
                wait = Some(format!(
                    "canary {who} for {} is rolling: waiting for it to be healthy",
                    f.secret
                ));
                break;
            }
            let canary = canary_of
                .entry(f.secret.clone())
                .or_insert_with(|| me.clone());
            if *canary != me {
                wait = Some(format!("canary {canary} for {} goes first", f.secret));
                break;
            }
        }
        if let Some(reason) = wait {
            *decision = Decision::Settling {
                until: None,
                reason,
                findings: std::mem::take(findings),
            };
        }
    }
}

/// Whether the service's tags opt it out.
pub fn opted_out(service: &Service) -> bool {
    service
        .tags
        .get(TAG_ENABLED)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

/// Decides one service. `refs` are all its references, resolved; `now` is our clock.
pub fn decide(
    service: &Service,
    refs: &[ResolvedRef],
    now: DateTime<Utc>,
    policy: &Policy,
) -> Decision {
    if service.status != "ACTIVE" {
        return Decision::Skipped {
            reason: format!("service is {}", service.status),
        };
    }
    if service.controller != Controller::Ecs {
        return Decision::Skipped {
            reason: format!(
                "deployment controller {:?}: forceNewDeployment does not apply",
                service.controller
            ),
        };
    }
    let Some(primary) = service.primary() else {
        return Decision::Skipped {
            reason: "no primary deployment".into(),
        };
    };
    let d = primary.created_at;

    let mut findings = Vec::new();
    let mut problems = Vec::new();
    let mut all_pinned = true;
    let mut settle_until: Option<DateTime<Utc>> = None;
    let mut settle_reason = String::new();
    let skew = chrono::Duration::from_std(policy.clock_skew).unwrap_or(GRANULARITY);
    let grace = chrono::Duration::from_std(policy.rotation_grace).unwrap_or_default();

    for r in refs {
        let j = judge(r, d);
        if j != Judgement::Pinned {
            all_pinned = false;
        }
        match j {
            Judgement::Pinned | Judgement::Fresh => {}
            Judgement::Error(e) => problems.push(e),
            Judgement::Stale {
                reason,
                fresh_after,
                rotating_since,
            } => {
                let secret = r
                    .state
                    .as_ref()
                    .map(|s| s.identity().to_string())
                    .unwrap_or_default();
                findings.push(Finding {
                    secret,
                    site: r.site.to_string(),
                    reason,
                });
                // Our deployment must land after `fresh_after` on AWS's clock.
                let ready = fresh_after + skew;
                let mut wait = (now < ready).then_some((ready, "changed within the last second: waiting so that the new deployment is unambiguously later"));
                if let Some(since) = rotating_since {
                    if now < since + grace {
                        wait = Some((
                            since + grace,
                            "rotation in progress (AWSPENDING): rolling once it is promoted",
                        ));
                    }
                }
                if let Some((until, why)) = wait {
                    if settle_until.is_none_or(|u| until > u) {
                        settle_until = Some(until);
                        settle_reason = why.to_string();
                    }
                }
            }
        }
    }

    if !problems.is_empty() {
        return Decision::Unknown { problems };
    }
    if opted_out(service) {
        return Decision::OptedOut { findings };
    }
    if findings.is_empty() {
        return if all_pinned && !refs.is_empty() {
            Decision::Pinned
        } else {
            Decision::InSync
        };
    }
    if service.desired_count == 0 {
        return Decision::Skipped {
            reason: "desired count is 0: no task holds an old value".into(),
        };
    }
    let in_progress =
        service.deployments.len() > 1 || primary.rollout_state.as_deref() == Some("IN_PROGRESS");
    if in_progress {
        return Decision::Settling {
            until: None,
            reason: format!(
                "deployment {} is in progress: deciding again when it settles",
                primary.id
            ),
            findings,
        };
    }
    if let Some(until) = settle_until {
        return Decision::Settling {
            until: Some(until),
            reason: settle_reason,
            findings,
        };
    }
    Decision::Stale { findings }
}

#[cfg(test)]
mod tests;
