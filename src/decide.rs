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
    /// The secret's identity, which holds and gates are keyed by.
    #[serde(skip)]
    pub identity: Option<SecretIdentity>,
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
    /// Stale, but outside its maintenance window: the first pass inside the window rolls it.
    Scheduled {
        /// When the window opens.
        at: DateTime<Utc>,
        /// The window, as written.
        window: String,
        /// The stale references.
        findings: Vec<Finding>,
    },
    /// Stale, but its rollouts need approval (notify-only): reported with a `Rollout Pending`
    /// event; `reconcile --secret` or `--service` naming it is the approval that rolls it.
    Pending {
        /// Why it waits for approval.
        reason: String,
        /// The stale references.
        findings: Vec<Finding>,
    },
}

/// The kind of a decision, for counting and for the one spelling every output uses (table,
/// JSON, metrics and events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// See [`Decision::Stale`].
    Stale,
    /// See [`Decision::InSync`].
    InSync,
    /// See [`Decision::Pinned`].
    Pinned,
    /// See [`Decision::OptedOut`].
    OptedOut,
    /// See [`Decision::Settling`].
    Settling,
    /// See [`Decision::Skipped`].
    Skipped,
    /// See [`Decision::Unknown`].
    Unknown,
    /// See [`Decision::Held`].
    Held,
    /// See [`Decision::Scheduled`].
    Scheduled,
    /// See [`Decision::Pending`].
    Pending,
}

impl Kind {
    /// The spelling, the same as in JSON.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Stale => "stale",
            Kind::InSync => "in_sync",
            Kind::Pinned => "pinned",
            Kind::OptedOut => "opted_out",
            Kind::Settling => "settling",
            Kind::Skipped => "skipped",
            Kind::Unknown => "unknown",
            Kind::Held => "held",
            Kind::Scheduled => "scheduled",
            Kind::Pending => "pending",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl Decision {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Decision::Stale { .. } => Kind::Stale,
            Decision::InSync => Kind::InSync,
            Decision::Pinned => Kind::Pinned,
            Decision::OptedOut { .. } => Kind::OptedOut,
            Decision::Settling { .. } => Kind::Settling,
            Decision::Skipped { .. } => Kind::Skipped,
            Decision::Unknown { .. } => Kind::Unknown,
            Decision::Held { .. } => Kind::Held,
            Decision::Scheduled { .. } => Kind::Scheduled,
            Decision::Pending { .. } => Kind::Pending,
        }
    }

    /// A short label for tables: the kind's spelling.
    pub fn label(&self) -> &'static str {
        self.kind().label()
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
                let identity = r.state.as_ref().ok().map(RefState::identity);
                findings.push(Finding {
                    secret: identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
                    identity,
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
    if crate::deployment::busy(service) {
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

mod fleet;
pub use fleet::{
    apply_policy, deployed_after, fresh_from, gate, hold_failed, wave_of, Item, Policies,
    SecretChange, TAG_NOTIFY_ONLY, TAG_WAVE,
};

#[cfg(test)]
mod tests;
