//! The staleness decision: a pure function from a service, the state of the secrets it resolves
//! and the current time to a [`Decision`].
//!
//! # The rule
//!
//! ECS resolves a task's secrets when the task starts, and every task of a deployment starts at
//! or after the deployment's `createdAt` (call it *d*). So a service is **stale** when a secret
//! version it resolves *became resolvable* after *d*: the version was created after *d*, or the
//! label the reference follows moved to it after *d*. Everything below derives that from AWS
//! metadata and the dates change events carry, never from a record of our own, so the decision
//! survives restarts, duplicate events and a second replica.
//!
//! What Secrets Manager reports, per secret: `LastChangedDate` (*U*: the last change of any kind —
//! a new version or a label move, but equally a description, tag, KMS key, rotation schedule or
//! replication edit, or the `AWSPENDING` version a failed rotation leaves behind) and
//! `LastRotatedDate` (*R*: set only when a rotation *completes successfully*, that is after its
//! last step moved `AWSCURRENT`; absent while rotation is off); per version, only `CreatedDate`
//! (*L*). No metadata dates a label move. Events do: `Secret Label Updated` (every label but
//! `AWSPENDING` / `AWSPREVIOUS`), `RotationSucceeded` (`AWSCURRENT` and `AWSPREVIOUS`),
//! `UpdateSecretVersionStage` (the label it moved, and `AWSPREVIOUS` with `AWSCURRENT`), as
//! [`crate::event::Change::label_moves`] reads them; the drivers hand those times in as
//! [`SmState::label_moves`] (*M*(S)). A resync has none.
//!
//! For a reference that follows stage *S* to version *v* (every comparison is `< date + 1 s`,
//! see *Granularity*):
//!
//! 1. *d* ≥ *U* + 1 s → **fresh**: nothing about the secret changed after the deployment (every
//!    version creation and every label move moves *U*). This is the only case in which the index
//!    skips `ListSecretVersionIds` (it asks [`needs_version_dates`]).
//! 2. *d* < *L*(v) + 1 s → **stale**: the deployment predates the version.
//! 3. *d* < *M*(S) + 1 s → **stale**: an event says *S* moved after the deployment (a promotion,
//!    a custom label moved, also *back* to an older version).
//!
//!    `AWSPREVIOUS` moves whenever `AWSCURRENT` does, so for it the creation of `AWSCURRENT`'s
//!    version and the dated moves of `AWSCURRENT` count in 2 and 3 as well.
//! 4. *S* is `AWSCURRENT` or `AWSPREVIOUS` and *d* < *R* + 1 s → **stale**: a rotation completed
//!    after the deployment, and completing is what moves these two labels. This is what catches,
//!    without any event, a deployment made between a rotation's two moments (the new version
//!    created as `AWSPENDING`, then promoted): the version predates the deployment, the promotion
//!    does not. After the rollout *d* > *R*, so it is rolled once, never twice. (A deployment made
//!    in the seconds between the promotion and the rotation's completion is rolled once more for
//!    nothing: *R* cannot be more precise.)
//! 5. Otherwise **fresh**, although the secret changed after the deployment (*d* < *U* + 1 s):
//!    what changed is undated, and it is one of a metadata-only edit, a failed or still-running
//!    rotation (`AWSPENDING` staged, `AWSCURRENT` never moved; every retry moves *U* again), or a
//!    label moved to an older version with no event and no completed rotation to date it (a
//!    manual two-step promotion — `PutSecretValue` with `AWSPENDING`, then
//!    `UpdateSecretVersionStage` — whose event was lost; a label moved back by hand). The metadata
//!    cannot tell these apart. **The trade-off**: the first two are routine and would roll every
//!    dependant of the secret for a value that did not change, on every resync after every edit
//!    or failed attempt; the third is rare, manual, and rolled by its event in `serve` and the
//!    Lambda. We choose fresh: ecs-reloader never rolls a fleet for a change that changed no
//!    value. The cost: an undated label move whose event is lost is not rolled until the secret
//!    changes again (a resync and `--secret` carry no event, so they cannot see it).
//! 6. A version id never rolls ([`Decision::Pinned`]).
//!
//! SSM parameters: for the latest version, its `LastModifiedDate` plays *L* (writing a version is
//! the only change that matters); `name:N` is pinned. For `name:label` (labels move without
//! changing `LastModifiedDate`):
//!
//! 1. *d* < *M*(label) + 1 s → **stale**: an event dated the label's move after the deployment
//!    ([`SsmState::label_moves`]).
//! 2. *d* ≥ `LastModifiedDate` + 1 s → **fresh**: no version was written after the deployment.
//!    A label moved without an event is invisible, as for custom stages above.
//! 3. Otherwise the labelled version's own date decides, as *L* does. Only
//!    `GetParameterHistory` shows labels, and it returns values too (plain text for `String`,
//!    ciphertext for `SecureString`), so the index calls it only in this case (it asks
//!    [`needs_label_history`]).
//!
//! S3 environment files (`environmentFiles[]`, see [`crate::sources::s3`]): *W* is the object's
//! `LastModified`, as listing the bucket with the key as prefix shows it (the object is never
//! read):
//!
//! 1. no object has the key (deleted; a delete marker is current) → **unresolved**: new tasks
//!    cannot start, the service is [`Decision::Unknown`] ([`Unresolved::ObjectMissing`]);
//! 2. *d* < *W* + 1 s → **stale**: the file was written after the deployment;
//! 3. otherwise **fresh**. Every write moves *W* (even one of identical bytes), and nothing else
//!    does: there is no undated case as for secrets' labels.
//!
//! **Granularity.** Secrets Manager dates are whole seconds and *d* has milliseconds. A version
//! created in the same second as *d* may be before or after it, so ties count as stale (the
//! `+ 1 s` above). The converse matters for idempotence: a rollout made in the same second as the
//! change would itself look stale afterwards and roll again. So when a service is stale but the
//! deployment we would create could still fall inside that second (plus [`Policy::clock_skew`]
//! for the distance between our clock and AWS's), the decision is [`Decision::Settling`] until it
//! cannot. That wait is at most about two seconds, and it covers every date that made the service
//! stale, so a rollout made when a service is found stale is never found stale again.
//!
//! **Rotation in progress.** A failed or running rotation makes nothing stale (clause 5). But if a
//! service *is* stale (say, a `PutSecretValue` after its deployment) while a version of that
//! secret sits in `AWSPENDING` created less than [`Policy::rotation_grace`] ago, rolling now would
//! read a value about to be replaced and need a second rollout minutes later: the service settles
//! until the rotation is promoted or the grace runs out.
//!
//! **Who rolls it** (clause 7 in [`decide`]). An `ECS`-controlled service is rolled with a forced
//! deployment, which runs its own strategy (rolling, blue/green, linear or canary); a
//! `CODE_DEPLOY` one with a CodeDeploy deployment of the same revision. For both, and for
//! `EXTERNAL` services, *d* is the creation of what new tasks start from: the primary deployment,
//! or the primary task set (an `EXTERNAL` controller that named none: its newest). An `EXTERNAL`
//! service (or a `CODE_DEPLOY` one with `[rollout] codedeploy = false`) that is stale can only be
//! rolled by its own controller: it is `skipped` *with* its findings, a dependant that needs
//! attention, and counts as a problem of the pass.
//!
//! **A deployment already in progress** (say, a CI deploy) is not stacked with another one: the
//! service settles and is decided again once it is done. If that deployment was created after
//! the change it is already fresh and the service is in sync. One in progress for longer than
//! [`Policy::stuck_after`] (`[rollout] timeout`) is stuck: the service is `held`, for a person,
//! instead of settling forever.
//!
//! **A reference that cannot be resolved** (not found, refused by IAM, a resource policy, an SCP
//! or KMS, a disabled or unknown region, retries exhausted, another account's parameter) makes
//! its service [`Decision::Unknown`] with an [`Unresolved`] reason naming the call, the resource
//! and what to grant or fix. It never stops the decision of any other service.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{Controller, ParameterVersion, Service};
use crate::reference::{
    ParamSelector, ParameterId, RefError, SecretIdentity, SecretRef, SecretsManagerId, Site,
    VersionSelector, AWSCURRENT, AWSPENDING, AWSPREVIOUS,
};

/// Tag that opts a service out when set to `false`.
pub(crate) const TAG_ENABLED: &str = "ecs-reloader/enabled";

/// Tunables of the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Allowance for the difference between our clock and AWS's.
    pub clock_skew: Duration,
    /// How long an `AWSPENDING` version holds back a rollout that is due anyway.
    pub rotation_grace: Duration,
    /// A deployment in progress longer than this (`[rollout] timeout`) is stuck: a stale
    /// service waiting on it is `held`, for a person, rather than decided again forever.
    pub stuck_after: Duration,
    /// Roll `CODE_DEPLOY` services through CodeDeploy (`[rollout] codedeploy`); when off they
    /// are reported as dependants nobody rolls, as `EXTERNAL` ones are.
    pub codedeploy: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            clock_skew: Duration::from_secs(1),
            rotation_grace: Duration::from_secs(600),
            stuck_after: crate::deployment::Limits::default().stuck_after,
            codedeploy: true,
        }
    }
}

/// The date granularity we assume for every metadata date (Secrets Manager's is one second).
const GRANULARITY: chrono::Duration = chrono::Duration::seconds(1);

/// Whether a date may be after the deployment `d`, at whole-second granularity.
pub(crate) fn after(d: DateTime<Utc>, date: DateTime<Utc>) -> bool {
    d < date + GRANULARITY
}

/// Whether deciding the dependants of a secret needs its versions' creation dates
/// (`ListSecretVersionIds`): only if the secret changed after some dependant's deployment
/// (clause 1). The predicate only grows towards older deployments, so the oldest dependant's
/// deployment answers for all of them. Unknown dates need them.
pub(crate) fn needs_version_dates(
    last_changed: Option<DateTime<Utc>>,
    oldest_deployment: Option<DateTime<Utc>>,
) -> bool {
    match (last_changed, oldest_deployment) {
        (Some(u), Some(d)) => after(d, u),
        _ => true,
    }
}

/// Whether deciding the `name:label` dependants of a parameter needs its label history
/// (`GetParameterHistory`, which returns values as well): only if a version was written after
/// some dependant's deployment (SSM clause 2); the oldest dependant's deployment answers for all.
pub(crate) fn needs_label_history(
    last_modified: Option<DateTime<Utc>>,
    oldest_deployment: Option<DateTime<Utc>>,
) -> bool {
    needs_version_dates(last_modified, oldest_deployment)
}

/// Why a reference could not be resolved. Each reason names the call and the resource and says
/// what to grant or fix; the service becomes [`Decision::Unknown`] and no other is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    /// The text is not a reference ECS accepts at that place.
    #[error("{0}")]
    Unparsable(RefError),
    /// The call answered that the resource does not exist.
    #[error(
        "{call} {resource}: not found in {region}: fix the reference, or restore what it names"
    )]
    NotFound {
        /// The API call.
        call: &'static str,
        /// What it was about.
        resource: String,
        /// Where it looked.
        region: String,
    },
    /// The secret is scheduled for deletion: tasks can no longer fetch it.
    #[error("secret {name} is scheduled for deletion ({at}): restore it (secretsmanager:RestoreSecret) or change the reference")]
    ScheduledForDeletion {
        /// The secret.
        name: String,
        /// When it was deleted.
        at: String,
    },
    /// Refused: an IAM policy, the resource's policy, a permissions boundary or an SCP.
    #[error("{call} {resource} was refused ({message}): {fix}")]
    Denied {
        /// The API call.
        call: &'static str,
        /// What it was about.
        resource: String,
        /// AWS's message.
        message: String,
        /// What to grant, and where.
        fix: String,
    },
    /// KMS refused on behalf of the call.
    #[error("{call} {resource}: KMS refused ({message}): the key that encrypts it is disabled or pending deletion, or its key policy denies the operator; fix the key or its key policy")]
    Kms {
        /// The API call.
        call: &'static str,
        /// What it was about.
        resource: String,
        /// AWS's message.
        message: String,
    },
    /// The region refused the credentials (a disabled opt-in region) or could not be reached (an
    /// unknown region).
    #[error("{call} {resource}: region {region}: {message}: {fix}")]
    Region {
        /// The API call.
        call: &'static str,
        /// What it was about.
        resource: String,
        /// The region.
        region: String,
        /// What happened.
        message: String,
        /// What to check.
        fix: String,
    },
    /// Throttled or failing still after every retry.
    #[error("{call} {resource}: still failing after retries ({message}): decided again on the next pass")]
    Unavailable {
        /// The API call.
        call: &'static str,
        /// What it was about.
        resource: String,
        /// The last error.
        message: String,
    },
    /// Any other refusal.
    #[error("{call} {resource}: {message}")]
    Failed {
        /// The API call.
        call: &'static str,
        /// What it was about.
        resource: String,
        /// AWS's message.
        message: String,
    },
    /// An SSM parameter of another account: never confused with the operator's own parameter of
    /// the same name, and not read.
    #[error("SSM parameter {name} belongs to account {account} ({region}), not the operator's: ecs-reloader reads only its own account's parameters, so it cannot tell when this one changes; reference a Secrets Manager secret (another account's can be read, given its resource policy) or opt the service out")]
    ForeignParameter {
        /// The parameter name.
        name: String,
        /// Its account.
        account: String,
        /// Its region.
        region: String,
    },
    /// A name in the `ecs-reloader/secrets` tag that is neither a secret nor a parameter.
    #[error("no Secrets Manager secret or SSM parameter named {name} in {region}: fix the ecs-reloader/secrets tag")]
    NeitherFound {
        /// The name.
        name: String,
        /// Where it was looked for.
        region: String,
    },
    /// The stage the reference follows is on no version.
    #[error("no version of secret {secret} carries stage {stage}, so ECS cannot resolve it: move the stage to a version, or fix the reference")]
    NoSuchStage {
        /// The secret.
        secret: String,
        /// The stage.
        stage: String,
    },
    /// No object has the key an environment file names (deleted, or a delete marker is
    /// current): ECS cannot start new tasks of the service (S3 clause 1).
    #[error("no object {object} (listed with its key as prefix): ECS cannot start new tasks that name it as an environment file; restore the object or fix environmentFiles")]
    ObjectMissing {
        /// The object, `s3://bucket/key`.
        object: String,
    },
    /// The label the reference follows is on no version.
    #[error("no version of SSM parameter {name} carries label {label}, so ECS cannot resolve it: label a version (ssm:LabelParameterVersion), or fix the reference")]
    NoSuchLabel {
        /// The parameter.
        name: String,
        /// The label.
        label: String,
    },
    /// Metadata the decision needs is missing from an answer (or was not fetched).
    #[error("{resource}: {what} unknown")]
    MissingMetadata {
        /// What it is about.
        resource: String,
        /// Which date or list.
        what: &'static str,
    },
}

/// Metadata the index fetches only when some decision needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched<T> {
    /// Not fetched: no dependant's decision needs it (see [`needs_version_dates`],
    /// [`needs_label_history`]).
    Skipped,
    /// Fetched.
    Done(T),
    /// The call failed: the decisions that need it are [`Decision::Unknown`].
    Failed(Unresolved),
}

impl<T> Fetched<T> {
    fn get(&self, resource: &str, what: &'static str) -> Result<&T, Unresolved> {
        match self {
            Fetched::Done(t) => Ok(t),
            Fetched::Failed(e) => Err(e.clone()),
            Fetched::Skipped => Err(Unresolved::MissingMetadata {
                resource: resource.to_string(),
                what,
            }),
        }
    }
}

/// The metadata of a Secrets Manager secret the rule needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SmState {
    /// The secret's identity.
    pub id: SecretsManagerId,
    /// `LastChangedDate` (*U*).
    pub last_changed: Option<DateTime<Utc>>,
    /// `LastRotatedDate` (*R*): when a rotation last completed successfully.
    pub last_rotated: Option<DateTime<Utc>>,
    /// Stage → version id.
    pub stages: BTreeMap<String, String>,
    /// Version id → `CreatedDate` (*L*).
    pub created: Fetched<BTreeMap<String, DateTime<Utc>>>,
    /// Label → when it moved (*M*), as change events tell (the metadata cannot date a label
    /// move): `Secret Label Updated` for its label, `RotationSucceeded` for `AWSCURRENT` and
    /// `AWSPREVIOUS`, `UpdateSecretVersionStage` for the label it moved. Empty on a resync.
    pub label_moves: BTreeMap<String, DateTime<Utc>>,
}

impl SmState {
    /// The version carrying `stage`.
    pub(crate) fn version_with(&self, stage: &str) -> Option<&str> {
        self.stages.get(stage).map(String::as_str)
    }

    fn created_at(&self, version: &str) -> Option<DateTime<Utc>> {
        match &self.created {
            Fetched::Done(m) => m.get(version).copied(),
            _ => None,
        }
    }
}

/// The metadata of an SSM parameter the rule needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SsmState {
    /// The parameter's identity.
    pub id: ParameterId,
    /// When the latest version was written.
    pub last_modified: Option<DateTime<Utc>>,
    /// Latest version.
    pub version: i64,
    /// Version history with labels (values dropped), for `name:label` references.
    pub history: Fetched<Vec<ParameterVersion>>,
    /// Label → when it moved, as `Parameter Store Change` events tell. Empty on a resync.
    pub label_moves: BTreeMap<String, DateTime<Utc>>,
}

/// The resolved state behind one reference.
#[derive(Debug, Clone, PartialEq)]
pub enum RefState {
    /// A Secrets Manager secret.
    SecretsManager(SmState),
    /// An SSM parameter.
    Parameter(SsmState),
    /// An S3 object (an environment file): its listing entry, never its content.
    S3Object(crate::reference::S3State),
}

impl RefState {
    /// Whether what this state describes has labels an event may say moved (a Secrets Manager
    /// stage, an SSM parameter label): an object has none.
    pub(crate) fn has_labels(&self) -> bool {
        !matches!(self, RefState::S3Object(_))
    }

    /// The label moves events announced, to be added to.
    pub(crate) fn label_moves_mut(&mut self) -> Option<&mut BTreeMap<String, DateTime<Utc>>> {
        match self {
            RefState::SecretsManager(s) => Some(&mut s.label_moves),
            RefState::Parameter(p) => Some(&mut p.label_moves),
            RefState::S3Object(_) => None,
        }
    }

    /// The identity of what this state describes.
    pub fn identity(&self) -> SecretIdentity {
        match self {
            RefState::SecretsManager(s) => SecretIdentity::SecretsManager(s.id.clone()),
            RefState::Parameter(p) => SecretIdentity::Parameter(p.id.clone()),
            RefState::S3Object(o) => SecretIdentity::S3Object(o.id.clone()),
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
    pub reference: Result<SecretRef, RefError>,
    /// The state it resolved to, or why it could not be read. Shared: every reference to one
    /// secret points at the same state (ten thousand services may share a hundred secrets).
    pub state: Result<std::sync::Arc<RefState>, Unresolved>,
}

/// Why a single reference makes its service stale (or would, for an opted-out service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The secret's identity, for display (qualified with account and region outside home).
    pub secret: String,
    /// The secret's identity, which holds and gates are keyed by.
    #[serde(skip)]
    pub identity: Option<SecretIdentity>,
    /// A deployment created at or after this carries what made it stale: the rule's own
    /// evidence (a version's creation, a dated label move, a rotation), plus the granularity.
    /// What the engine checks right before rolling, in case someone deployed since the plan.
    #[serde(skip)]
    pub fresh_after: Option<DateTime<Utc>>,
    /// Where the service references it.
    pub site: String,
    /// Why it is stale.
    pub reason: String,
    /// Where the change comes from: the events that announced it (their kind, id, time and
    /// who acted) or how it was found without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
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
    /// Not a candidate: nothing holds an old value (scaled to 0, draining), or nobody here may
    /// roll it (an `EXTERNAL` controller). With `findings`, it resolves a changed value all
    /// the same: a dependant that needs attention (its own controller must roll it).
    Skipped {
        /// Why.
        reason: String,
        /// What it resolves that changed after its deployment (empty: nothing).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        findings: Vec<Finding>,
    },
    /// A reference could not be parsed or resolved: rolling would start tasks that may fail to
    /// fetch their secrets, so the service is left alone and reported.
    Unknown {
        /// What could not be resolved: the reference, where it sits, and the [`Unresolved`]
        /// reason.
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
    /// The stale references behind it, where it has any (to say where their changes come from).
    pub(crate) fn findings_mut(&mut self) -> Option<&mut Vec<Finding>> {
        match self {
            Decision::Stale { findings }
            | Decision::OptedOut { findings }
            | Decision::Settling { findings, .. }
            | Decision::Held { findings, .. }
            | Decision::Scheduled { findings, .. }
            | Decision::Pending { findings, .. }
            | Decision::Skipped { findings, .. } => Some(findings),
            _ => None,
        }
    }

    /// Whether it resolves a changed value that nobody here may roll (see
    /// [`Decision::Skipped`]): a person, or its own controller, must.
    pub fn needs_attention(&self) -> bool {
        matches!(self, Decision::Skipped { findings, .. } if !findings.is_empty())
    }

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
}

/// S3 clauses 2 and 3 for a deployment created at `d`: the date that makes it stale, with why,
/// or `None` when it is fresh.
pub(crate) fn judge_s3(
    s: &crate::reference::S3State,
    d: DateTime<Utc>,
) -> Result<Option<(DateTime<Utc>, String)>, Unresolved> {
    let Some(w) = s.last_modified else {
        return Err(Unresolved::MissingMetadata {
            resource: s.id.to_string(),
            what: "LastModified",
        });
    };
    // 2. Written after the deployment.
    if after(d, w) {
        let etag = s
            .etag
            .as_deref()
            .map(|e| format!(" (ETag {})", e.trim_matches('"')))
            .unwrap_or_default();
        return Ok(Some((
            w,
            format!(
                "environment file {} written {}{etag}, {}",
                s.id,
                fmt_time(w),
                relative(w, d, "S3 dates")
            ),
        )));
    }
    // 3. Otherwise fresh.
    Ok(None)
}

/// The judgement of a single reference.
#[derive(Debug, Clone, PartialEq)]
enum Judgement {
    Pinned,
    Fresh,
    Stale {
        reason: String,
        /// When a new deployment is certainly after every date that made it stale.
        fresh_after: DateTime<Utc>,
        rotating_since: Option<DateTime<Utc>>,
    },
    Error(Unresolved),
}

pub(crate) fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// "after the deployment (…)", or, for a date in the deployment's own second (a whole-second
/// date that reads as earlier than the deployment's milliseconds), why it counts as after:
/// otherwise the reason would read as a contradiction.
pub(crate) fn relative(date: DateTime<Utc>, d: DateTime<Utc>, dates: &str) -> String {
    if date <= d {
        format!(
            "in the same second as the deployment ({}); {dates} are whole seconds, so it counts as after",
            fmt_time(d)
        )
    } else {
        format!("after the deployment ({})", fmt_time(d))
    }
}

const SM_DATES: &str = "Secrets Manager dates";
const EVENT_DATES: &str = "event times";

/// The dates that make a reference stale, each with why; stale if any, fresh otherwise.
struct Evidence(Vec<(DateTime<Utc>, String)>);

impl Evidence {
    fn judge(self, rotating_since: Option<DateTime<Utc>>) -> Judgement {
        let Some(latest) = self.0.iter().map(|(t, _)| *t).max() else {
            return Judgement::Fresh;
        };
        let reason = self
            .0
            .into_iter()
            .map(|(_, why)| why)
            .collect::<Vec<_>>()
            .join("; ");
        Judgement::Stale {
            reason,
            fresh_after: latest + GRANULARITY,
            rotating_since,
        }
    }
}

fn judge_sm(sel: &VersionSelector, s: &SmState, d: DateTime<Utc>) -> Judgement {
    let stage = match sel {
        VersionSelector::VersionId(_) => return Judgement::Pinned,
        VersionSelector::Current => AWSCURRENT,
        VersionSelector::Stage(st) => st.as_str(),
    };
    let Some(version) = s.version_with(stage) else {
        return Judgement::Error(Unresolved::NoSuchStage {
            secret: s.id.name.clone(),
            stage: stage.to_string(),
        });
    };
    // 1. Nothing changed after the deployment.
    if !needs_version_dates(s.last_changed, Some(d)) {
        return Judgement::Fresh;
    }
    let created = match s.created.get(&s.id.name, "version creation dates") {
        Ok(m) => m.get(version).copied(),
        Err(e) => return Judgement::Error(e),
    };
    let Some(created) = created else {
        return Judgement::Error(Unresolved::MissingMetadata {
            resource: s.id.name.clone(),
            what: "creation date of the version it resolves",
        });
    };
    let follows_rotation = stage == AWSCURRENT || stage == AWSPREVIOUS;
    let mut evidence = Vec::new();
    // 2. The version is newer than the deployment.
    if after(d, created) {
        evidence.push((
            created,
            format!(
                "{stage} is version {version}, created {}, {}",
                fmt_time(created),
                relative(created, d, SM_DATES)
            ),
        ));
    }
    // 3. An event dates the label's move.
    if let Some(moved) = s.label_moves.get(stage).copied().filter(|m| after(d, *m)) {
        evidence.push((
            moved,
            format!(
                "{stage} moved to version {version} at {} (change event), {}",
                fmt_time(moved),
                relative(moved, d, EVENT_DATES)
            ),
        ));
    }
    // 2 and 3 for AWSPREVIOUS through AWSCURRENT: it moves whenever AWSCURRENT does, so at or
    // after the creation of AWSCURRENT's version and at every dated move of AWSCURRENT.
    if stage == AWSPREVIOUS {
        let current = s.version_with(AWSCURRENT);
        let current_created = current.and_then(|v| s.created_at(v));
        let current_moved = s.label_moves.get(AWSCURRENT).copied();
        for (at, how, dates) in [
            (
                current_created,
                "the version AWSCURRENT moved to was created",
                SM_DATES,
            ),
            (
                current_moved,
                "AWSCURRENT moved (change event)",
                EVENT_DATES,
            ),
        ] {
            if let Some(at) = at.filter(|a| after(d, *a)) {
                evidence.push((
                    at,
                    format!(
                        "{how} at {}, {}, moving AWSPREVIOUS to version {version}",
                        fmt_time(at),
                        relative(at, d, dates)
                    ),
                ));
            }
        }
    }
    // 4. A rotation completed after the deployment.
    if let Some(rotated) = s.last_rotated.filter(|r| follows_rotation && after(d, *r)) {
        evidence.push((
            rotated,
            format!(
                "a rotation completed at {} (LastRotatedDate), {}, moving {stage} to version {version}",
                fmt_time(rotated),
                relative(rotated, d, SM_DATES)
            ),
        ));
    }
    // 5. Otherwise fresh: whatever changed after the deployment is undated.
    Evidence(evidence).judge(pending_since(s, follows_rotation))
}

/// When a rotation in progress started: an `AWSPENDING` version that is not also current.
fn pending_since(s: &SmState, follows_rotation: bool) -> Option<DateTime<Utc>> {
    if !follows_rotation {
        return None;
    }
    let pending = s.version_with(AWSPENDING)?;
    if Some(pending) == s.version_with(AWSCURRENT) {
        return None;
    }
    s.created_at(pending).or(s.last_changed)
}

fn judge_ssm(sel: &ParamSelector, p: &SsmState, d: DateTime<Utc>) -> Judgement {
    let name = &p.id.name;
    let (written, what, moved) = match sel {
        ParamSelector::Version(_) => return Judgement::Pinned,
        ParamSelector::Latest => (p.last_modified, format!("version {}", p.version), None),
        ParamSelector::Label(label) => {
            let moved = p.label_moves.get(label).copied().filter(|m| after(d, *m));
            // 2. No version written after the deployment (and no event dating a move).
            if moved.is_none() && !needs_label_history(p.last_modified, Some(d)) {
                return Judgement::Fresh;
            }
            let labelled = match p.history.get(name, "label history") {
                Ok(h) => h.iter().find(|v| v.labels.iter().any(|l| l == label)),
                Err(e) if moved.is_none() => return Judgement::Error(e),
                // The event alone says the label moved after the deployment.
                Err(_) => None,
            };
            match labelled {
                Some(v) => (
                    v.last_modified,
                    format!("version {} (label {label})", v.version),
                    moved.map(|m| (m, label)),
                ),
                None if moved.is_some() => {
                    (None, format!("label {label}"), moved.map(|m| (m, label)))
                }
                None => {
                    return Judgement::Error(Unresolved::NoSuchLabel {
                        name: name.clone(),
                        label: label.clone(),
                    })
                }
            }
        }
    };
    let mut evidence = Vec::new();
    // 1. An event dates the label's move.
    if let Some((m, label)) = moved {
        evidence.push((
            m,
            format!(
                "label {label} moved at {} (change event), {}",
                fmt_time(m),
                relative(m, d, EVENT_DATES)
            ),
        ));
    }
    match written {
        Some(w) if after(d, w) => evidence.push((
            w,
            format!(
                "{what} written {}, {}",
                fmt_time(w),
                relative(w, d, "SSM dates as compared here")
            ),
        )),
        Some(_) => {}
        None if evidence.is_empty() => {
            return Judgement::Error(Unresolved::MissingMetadata {
                resource: format!("SSM parameter {name}"),
                what: "modification date",
            })
        }
        None => {}
    }
    Evidence(evidence).judge(None)
}

fn judge(r: &ResolvedRef, d: DateTime<Utc>) -> Judgement {
    let reference = match &r.reference {
        Ok(x) => x,
        Err(e) => return Judgement::Error(Unresolved::Unparsable(e.clone())),
    };
    let state: &RefState = match &r.state {
        Ok(s) => s,
        Err(e) => return Judgement::Error(e.clone()),
    };
    match (reference, state) {
        (SecretRef::SecretsManager(sm), RefState::SecretsManager(s)) => {
            judge_sm(&sm.selector, s, d)
        }
        (SecretRef::Parameter(p), RefState::Parameter(s)) => judge_ssm(&p.selector, s, d),
        // S3 clauses 2 and 3 (clause 1, a missing object, is an unresolved state).
        (SecretRef::S3File(_), RefState::S3Object(o)) => match judge_s3(o, d) {
            Ok(found) => Evidence(found.into_iter().collect()).judge(None),
            Err(e) => Judgement::Error(e),
        },
        _ => Judgement::Error(Unresolved::MissingMetadata {
            resource: r.text.clone(),
            what: "a state of the same service as the reference",
        }),
    }
}

/// When the value a reference resolves last changed, as the rule dates it: the resolved
/// version's creation, a dated label move, a completed rotation (clauses 2 to 4 with every date
/// counted). Not the secret's `LastChangedDate`: a description, tag or KMS key edit, or a
/// rotation that failed after staging `AWSPENDING`, moves that date and changes no value (clause
/// 5), so it must neither implicate a failed rollout nor lift a hold. A pinned reference's value
/// never changes (`None`). Where the dates were not read (no dependant needed them), the state's
/// own date ([`RefState::changed_at`]) stands in.
pub(crate) fn value_changed_at(r: &ResolvedRef) -> Option<DateTime<Utc>> {
    let state = r.state.as_ref().ok()?;
    match judge(r, DateTime::<Utc>::MIN_UTC) {
        Judgement::Stale { fresh_after, .. } => Some(fresh_after - GRANULARITY),
        Judgement::Pinned | Judgement::Fresh => None,
        Judgement::Error(_) => state.changed_at(),
    }
}

impl RefState {
    /// When what this state describes last changed: the secret's `LastChangedDate`, the
    /// parameter's `LastModifiedDate`, or a label move an event dated later (moving an SSM label
    /// changes no date the metadata shows). The holds and gates test "deployed after the change"
    /// against it.
    pub(crate) fn changed_at(&self) -> Option<DateTime<Utc>> {
        let (date, moves) = match self {
            RefState::SecretsManager(s) => (s.last_changed, &s.label_moves),
            RefState::Parameter(p) => (p.last_modified, &p.label_moves),
            RefState::S3Object(o) => return o.last_modified,
        };
        date.into_iter().chain(moves.values().copied()).max()
    }
}

/// The references among `refs` that changed after `d`, as findings: what a task started at `d`
/// outside any service still holds (reported, never rolled: see [`crate::tasks`]). The same
/// rule as for a service's deployment; references that cannot be judged are left out (the
/// services that share them report why).
pub(crate) fn findings_at(refs: &[ResolvedRef], d: DateTime<Utc>) -> Vec<Finding> {
    refs.iter()
        .filter_map(|r| match judge(r, d) {
            Judgement::Stale {
                reason,
                fresh_after,
                ..
            } => {
                let identity = r.state.as_ref().ok().map(|s| s.identity());
                Some(Finding {
                    provenance: None,
                    secret: identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
                    identity,
                    fresh_after: Some(fresh_after),
                    site: r.site.to_string(),
                    reason,
                })
            }
            _ => None,
        })
        .collect()
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
            findings: Vec::new(),
        };
    }
    let Some(primary) = service.primary() else {
        return Decision::Skipped {
            reason: match service.controller {
                Controller::Ecs => "no primary deployment".into(),
                _ => "no primary task set: nothing runs".into(),
            },
            findings: Vec::new(),
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
            Judgement::Error(e) => problems.push(format!("{} ({}): {e}", r.text, r.site)),
            Judgement::Stale {
                reason,
                fresh_after,
                rotating_since,
            } => {
                let identity = r.state.as_ref().ok().map(|s| s.identity());
                findings.push(Finding {
                    provenance: None,
                    secret: identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
                    identity,
                    fresh_after: Some(fresh_after),
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
            findings: Vec::new(),
        };
    }
    // 7. A stale service nobody here may roll: its tasks keep the old value until its own
    //    controller starts new ones, so it is reported as a dependant that needs attention.
    if let Err(why) = service.rolled_by(policy.codedeploy) {
        return Decision::Skipped {
            reason: format!("{why}; its tasks keep the old value until then"),
            findings,
        };
    }
    if crate::deployment::busy(service) {
        // A strategy's designed wait (a blue/green bake time) is not being stuck.
        let stuck = chrono::Duration::from_std(
            policy.stuck_after + service.shape.bake_time.unwrap_or_default(),
        )
        .unwrap_or(chrono::Duration::MAX);
        if let Some(oldest) = service
            .deployments
            .iter()
            .filter(|dep| now - dep.created_at > stuck)
            // A rollout in flight: one in progress, or (ECS's deployments) the primary of a busy
            // service, which an older deployment that never drains keeps busy. A task set's
            // steady original awaiting termination beside its replacement is no rollout of its
            // own: only the replacement's age counts there.
            .filter(|dep| {
                dep.rollout_state == Some(crate::aws::RolloutState::InProgress)
                    || (dep.is_primary()
                        && (service.controller == Controller::Ecs || dep.rollout_state.is_none()))
            })
            .min_by_key(|dep| dep.created_at)
        {
            return Decision::Held {
                reason: format!(
                    "held: deployment {} has been in progress since {}, longer than [rollout] timeout ({}): it is stuck, and no deployment is stacked on it; fix or stop it",
                    oldest.id,
                    fmt_time(oldest.created_at),
                    humantime::format_duration(policy.stuck_after)
                ),
                findings,
            };
        }
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

pub mod drift;
mod fleet;
#[cfg(test)]
pub(crate) use fleet::TAG_WAVE;
pub(crate) use fleet::{apply_policy, carries_only_secrets, eligibility, hold_failed, Eligibility};
pub use fleet::{fresh_from, gate, Item, Policies, SecretChange};

#[cfg(test)]
mod tests;
