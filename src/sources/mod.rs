//! Sources of values a task resolves when it starts: Secrets Manager secrets, SSM parameters and
//! S3 environment files, each one file behind [`Source`].
//!
//! A source knows, for the references of its kind: which call answers for one and how to make
//! those calls for many at once ([`Source::lookup`], [`Source::look_up`]: metadata only, never a
//! value), which events announce a change, what they name and how the change is routed among
//! accounts ([`Source::read_event`], [`Source::subject_identity`], [`Source::routing`],
//! [`Source::owner`], [`Source::labels_moved`]), how an identity is matched ([`Source::names`],
//! [`Source::watch_keys`]), and what a user's `--secret` names ([`Source::identify`]). What it knows ends at evidence: the
//! state it builds ([`RefState`]) is judged by the rule in [`crate::decide`], which stays pure and
//! is the only place that says "stale".
//!
//! The shared vocabulary (a reference, an identity, a state, an event's subject) is a closed
//! enum per kind of thing, so that every match on it is checked by the compiler: a new source
//! adds one variant to each ([`SecretRef`], [`SecretIdentity`] and the parser's forms in
//! [`crate::reference`], [`RefState`] with its clauses and accessors in [`crate::decide`],
//! [`Subject`], [`ChangeKind`] and [`Lookup`] with their display arms here), one file here, and
//! one line in [`SOURCES`]. The modules that use sources (the index, the watch cache, events,
//! intake, targets, the reconciler) ask [`SOURCES`] and name no kind. Calls go out source by
//! source in [`SOURCES`]' order (secrets, parameters, objects), each source batching its own.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::aws::{AwsError, Clients, ErrorKind};
use crate::decide::{RefState, Unresolved};
use crate::reference::{Home, S3ObjectId, SecretIdentity, SecretRef};

pub(crate) mod s3;
pub(crate) mod secretsmanager;
pub(crate) mod ssm;

/// Every source, in the order an event is offered to them (the first that reads it wins).
pub(crate) const SOURCES: [&dyn Source; 3] = [&secretsmanager::SecretsManager, &ssm::Ssm, &s3::S3];

/// A kind of value a task resolves at start. Every method answers `None` (or `false`) for what
/// is not its own, so the callers ask each source in turn and name no kind.
pub(crate) trait Source: Sync {
    /// The lookup that answers for `r` read at `home`, and whether `r` selects a label (the
    /// rule may then need the label's history).
    fn lookup(&self, r: &SecretRef, home: &Home) -> Option<(Lookup, bool)>;

    /// What a bare name (the `ecs-reloader/secrets` tag, a `--secret` argument) means in this
    /// source, if it can mean anything: its lookup and the concrete reference.
    fn named(&self, name: &str, home: &Home) -> Option<(Lookup, SecretRef)>;

    /// Whether this source answers `lookup`.
    fn answers(&self, lookup: &Lookup) -> bool;

    /// Reads the metadata for every lookup of this source in `wanted` (batched as the API
    /// allows). Never fails as a whole: a refused or failed call makes exactly its lookups
    /// [`Unresolved`], with the call, the resource and the grant.
    fn look_up<'a>(&'a self, cx: Cx<'a>, wanted: Vec<Wanted>) -> BoxFuture<'a, States>;

    /// Whether `r` read at `home` names `id` exactly (partition, account, region and name; never
    /// by prefix). A bare name is asked of every source.
    fn names(&self, r: &SecretRef, id: &SecretIdentity, home: &Home) -> bool;

    /// What a concrete reference of this source names, confirmed by a lookup where only one can
    /// tell (a partial ARN, a name). `Ok(None)`: nothing of that name exists. `confirm`: a bare
    /// name that may be another source's must be seen to exist here.
    fn identify<'a>(
        &'a self,
        clients: &'a Clients,
        r: &'a SecretRef,
        home: &'a Home,
        confirm: bool,
    ) -> Option<BoxFuture<'a, Result<Option<SecretIdentity>, AwsError>>>;

    /// Reads an EventBridge event if it is one of this source's.
    fn read_event(&self, event: &EventView<'_>) -> Option<Result<Read, Missing>>;

    /// How a change to `subject` is routed among targets, if the subject is this source's.
    fn routing(&self, subject: &Subject) -> Option<Routing>;

    /// The identity this source's `subject` names where the subject alone says (a parameter's
    /// name, an object's bucket and key); `None`: the owning target must look it up.
    fn subject_identity(&self, subject: &Subject, own_region: &str) -> Option<SecretIdentity>;

    /// The account this source's `subject` says it belongs to, where it says one (an ARN): it
    /// must be an account the operator manages.
    fn owner(&self, subject: &Subject) -> Option<String>;

    /// The name that identifies `id` exactly in a subject of this source (a secret's full ARN),
    /// for [`Routing::Owner`].
    fn pin(&self, id: &SecretIdentity) -> Option<String>;

    /// The labels a change of this source's moved (the rule cannot date a label move from the
    /// metadata alone); `None` when `kind` is not this source's.
    fn labels_moved<'k>(&self, kind: &'k ChangeKind) -> Option<Vec<&'k str>>;

    /// The loose keys of the watch cache a reference read at `home` may match (several where
    /// forms differ: a partial ARN and a full one). A bare name is asked of every source.
    fn watch_keys(&self, r: &SecretRef, home: &Home) -> Option<Vec<String>>;

    /// The watch cache's key of an identity.
    fn identity_key(&self, id: &SecretIdentity) -> Option<String>;
}

/// The source of a reference (a bare name is none's: see [`Source::named`]).
pub(crate) fn of_ref(r: &SecretRef, home: &Home) -> Option<(Lookup, bool)> {
    SOURCES.iter().find_map(|s| s.lookup(r, home))
}

/// The lookups a reference needs, and whether each is for a label: one for a concrete
/// reference, one per source a bare name may belong to.
pub(crate) fn lookups_of(r: &SecretRef, home: &Home) -> Vec<(Lookup, bool)> {
    match r {
        SecretRef::Named(n) => SOURCES
            .iter()
            .filter_map(|s| s.named(n, home))
            .map(|(l, _)| (l, false))
            .collect(),
        concrete => of_ref(concrete, home).into_iter().collect(),
    }
}

/// Whether a reference read at `home` names an identity (a bare name: in any source).
pub(crate) fn names(r: &SecretRef, id: &SecretIdentity, home: &Home) -> bool {
    SOURCES.iter().any(|s| s.names(r, id, home))
}

/// The watch cache's loose keys of a reference (a bare name: in every source).
pub(crate) fn watch_keys(r: &SecretRef, home: &Home) -> Vec<String> {
    SOURCES
        .iter()
        .filter_map(|s| s.watch_keys(r, home))
        .flatten()
        .collect()
}

/// The watch cache's key of an identity.
pub(crate) fn identity_key(id: &SecretIdentity) -> String {
    SOURCES
        .iter()
        .find_map(|s| s.identity_key(id))
        .unwrap_or_else(|| id.to_string())
}

/// The source a subject is of.
fn of_subject(subject: &Subject) -> Option<&'static dyn Source> {
    SOURCES
        .iter()
        .copied()
        .find(|s| s.routing(subject).is_some())
}

/// How a change to a subject is routed among targets.
pub(crate) fn routing(subject: &Subject) -> Routing {
    of_subject(subject)
        .and_then(|s| s.routing(subject))
        .unwrap_or(Routing::Owner)
}

/// What a subject names where it says so itself; `None`: it must be looked up by its owner.
pub(crate) fn subject_identity(subject: &Subject, own_region: &str) -> Option<SecretIdentity> {
    of_subject(subject)?.subject_identity(subject, own_region)
}

/// The account a subject says it belongs to, if it says.
pub(crate) fn owner(subject: &Subject) -> Option<String> {
    of_subject(subject)?.owner(subject)
}

/// The name pinning an identity in an event's subject, if its source pins.
pub(crate) fn pin(id: &SecretIdentity) -> Option<String> {
    SOURCES.iter().find_map(|s| s.pin(id))
}

/// The labels a change moved.
pub(crate) fn labels_moved(kind: &ChangeKind) -> Vec<&str> {
    SOURCES
        .iter()
        .find_map(|s| s.labels_moved(kind))
        .unwrap_or_default()
}

/// Whether an identity is of the source whose event named `subject` (a Secrets Manager event's
/// name may also be a parameter's, whose labels its label moves must never date).
pub(crate) fn same_source(subject: &Subject, id: &SecretIdentity) -> bool {
    of_subject(subject).is_some_and(|s| s.identity_key(id).is_some())
}

/// Looks up every wanted key, each with its own source.
pub(crate) async fn look_up(cx: Cx<'_>, wanted: Vec<Wanted>) -> States {
    let mut by_source: Vec<Vec<Wanted>> = SOURCES.iter().map(|_| Vec::new()).collect();
    for w in wanted {
        match SOURCES.iter().position(|s| s.answers(&w.key)) {
            Some(i) => by_source[i].push(w),
            None => tracing::error!(lookup = ?w.key, "no source answers this lookup"),
        }
    }
    let mut states = States::new();
    for (source, wanted) in SOURCES.iter().zip(by_source) {
        if !wanted.is_empty() {
            states.extend(source.look_up(cx, wanted).await);
        }
    }
    states
}

/// A lookup key: which call answers for a reference (many references share one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Lookup {
    /// `DescribeSecret` in `region` by name or ARN (another account's ARN included: the
    /// operator's credentials may read it if the secret's resource policy allows).
    Secret { region: String, id: String },
    /// A parameter of the operator's account (`account` is `None`) or of another (not read).
    Parameter {
        region: String,
        account: Option<String>,
        name: String,
    },
    /// `ListObjectsV2` of an environment file's bucket, with the key as prefix.
    Object(S3ObjectId),
}

impl Lookup {
    /// The resource, as reasons name it.
    pub(crate) fn resource(&self) -> String {
        match self {
            Lookup::Secret { id, .. } => id.clone(),
            Lookup::Parameter { name, .. } => name.clone(),
            Lookup::Object(o) => o.to_string(),
        }
    }
}

/// What the lookups answered, by lookup.
pub(crate) type States = HashMap<Lookup, Result<Arc<RefState>, Unresolved>>;

/// What a lookup is for: the oldest deployment that depends on it (the rule says from that
/// whether version dates or label histories are worth reading) and whether a label reference
/// does.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    /// The lookup.
    pub(crate) key: Lookup,
    /// The oldest deployment depending on it.
    pub(crate) oldest: Option<DateTime<Utc>>,
    /// Whether a reference to a label depends on it.
    pub(crate) label: bool,
}

/// What every lookup shares.
#[derive(Clone, Copy)]
pub(crate) struct Cx<'a> {
    /// The target's clients.
    pub(crate) clients: &'a Clients,
    /// The operator's home (display is relative to it).
    pub(crate) home: &'a Home,
    /// At most this many calls at once.
    pub(crate) concurrency: usize,
}

/// Whom a change is evidence for, among the targets (accounts and regions) of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routing {
    /// The targets owning the account and region it changed in look up exactly what it names
    /// (a name or partial ARN), and every target's dependants of that are decided.
    Owner,
    /// The targets of the account it changed in (a name means a resource of each account).
    OriginAccount,
    /// Every target: any account's services may name it, and each reads it with its own
    /// credentials. Who made the change is told only to the owner's targets.
    Everyone,
}

/// What an event names as changed, as the event names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A Secrets Manager secret: full ARN, partial ARN or name.
    Secret(String),
    /// An SSM parameter in a region (the event's, if it says).
    Parameter {
        /// The event's region.
        region: Option<String>,
        /// The parameter name.
        name: String,
    },
    /// An S3 object (an environment file), by bucket and key; the region gives the partition.
    S3Object {
        /// The event's region.
        region: Option<String>,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
}

impl Subject {
    /// The same subject, named by the full ARN its owner resolved it to (a subject the event
    /// names exactly stays as it is).
    pub(crate) fn pinned(&self, full: String) -> Subject {
        match self {
            Subject::Secret(_) => Subject::Secret(full),
            other => other.clone(),
        }
    }

    /// What the event gave, as reports and logs show it.
    pub(crate) fn given(&self) -> String {
        match self {
            Subject::Secret(id) => id.clone(),
            Subject::Parameter { name, .. } => name.clone(),
            Subject::S3Object { bucket, key, .. } => format!("s3://{bucket}/{key}"),
        }
    }
}

/// The kind of change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A rotation finished.
    RotationSucceeded,
    /// A staging label moved to a version.
    LabelUpdated {
        /// The label.
        label: String,
        /// The version it moved to.
        version_id: Option<String>,
    },
    /// A CloudTrail-recorded API call.
    ApiCall {
        /// `PutSecretValue`, `UpdateSecret` or `UpdateSecretVersionStage`.
        name: String,
        /// For `UpdateSecretVersionStage` that moved a label to a version: the label
        /// (`requestParameters.versionStage`).
        moved_stage: Option<String>,
    },
    /// SSM labels moved (`LabelParameterVersion`, as CloudTrail records it: the native
    /// `Parameter Store Change` event does not say which labels).
    ParameterLabels {
        /// The labels now on the version.
        labels: Vec<String>,
    },
    /// An SSM parameter changed.
    Parameter {
        /// `Create`, `Update` or `LabelParameterVersion`.
        operation: String,
    },
    /// An S3 object was written (`Object Created`) or deleted (`Object Deleted`: its
    /// dependants become `unknown`, since new tasks cannot start).
    S3Object {
        /// Whether it was a deletion.
        deleted: bool,
    },
}

impl ChangeKind {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ChangeKind::RotationSucceeded => "rotation_succeeded",
            ChangeKind::LabelUpdated { .. } => "label_updated",
            ChangeKind::ApiCall { .. } => "api_call",
            ChangeKind::Parameter { .. } => "parameter_change",
            ChangeKind::ParameterLabels { .. } => "parameter_labels",
            ChangeKind::S3Object { deleted: false } => "s3_object_created",
            ChangeKind::S3Object { deleted: true } => "s3_object_deleted",
        }
    }
}

/// The parts of an EventBridge event a source reads.
pub(crate) struct EventView<'a> {
    /// `source`.
    pub(crate) source: &'a str,
    /// `detail-type`.
    pub(crate) detail_type: &'a str,
    /// `region`.
    pub(crate) region: Option<&'a str>,
    /// `resources`.
    pub(crate) resources: &'a [String],
    /// `detail`.
    pub(crate) detail: &'a serde_json::Value,
}

impl EventView<'_> {
    /// A non-blank string at `path` in `detail`.
    pub(crate) fn text(&self, path: &[&str]) -> Option<&str> {
        let mut cur = self.detail;
        for p in path {
            cur = cur.get(*p)?;
        }
        cur.as_str().filter(|s| !s.trim().is_empty())
    }
}

/// What a source read in one of its events.
#[derive(Debug)]
pub(crate) enum Read {
    /// Something it names changed.
    Change(Subject, ChangeKind),
    /// Well-formed, but it changes no value; the text says why.
    Ignored(String),
}

/// A source's event without a field it needs: a poison message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Missing {
    /// Which shape.
    pub(crate) shape: &'static str,
    /// Which field.
    pub(crate) field: &'static str,
}

/// What a failed metadata call means for the references that needed it, in the words every
/// source shares: the call, the resource, and what to fix. `grant` says what to allow when the
/// call was refused; the rest (a region not enabled, KMS, throttling) reads the same for all.
pub(crate) fn unresolved(
    e: &AwsError,
    resource: &str,
    region: &str,
    home: &Home,
    grant: impl FnOnce() -> String,
) -> Unresolved {
    let call = e.operation;
    let resource = resource.to_string();
    let message = e.message.clone();
    let elsewhere = region != home.region;
    let kms = message.contains("KMS") || message.contains("kms:");
    let bad_token = [
        "security token",
        "UnrecognizedClient",
        "InvalidClientTokenId",
    ]
    .iter()
    .any(|m| message.contains(m));
    match e.kind {
        ErrorKind::NotFound => Unresolved::NotFound {
            call,
            resource,
            region: region.to_string(),
        },
        ErrorKind::AccessDenied if bad_token && elsewhere => Unresolved::Region {
            call,
            resource,
            region: region.to_string(),
            message: format!("the operator's credentials were refused ({message})"),
            fix: "the region is probably not enabled for this account (an opt-in region): enable it, or fix the region in the reference".into(),
        },
        _ if kms => Unresolved::Kms {
            call,
            resource,
            message,
        },
        ErrorKind::AccessDenied => Unresolved::Denied {
            call,
            resource,
            message,
            fix: grant(),
        },
        ErrorKind::Transient if elsewhere => Unresolved::Region {
            call,
            resource,
            region: region.to_string(),
            message: format!("could not be reached ({message})"),
            fix: "check the region in the reference (a typo, or a region this partition does not have) and that it is enabled for this account".into(),
        },
        // Another region's endpoint that cannot be reached at all (no such region: DNS).
        ErrorKind::Setup if elsewhere => Unresolved::Region {
            call,
            resource,
            region: region.to_string(),
            message: format!("could not be reached ({message})"),
            fix: "check the region in the reference (a typo, or a region this partition does not have)".into(),
        },
        ErrorKind::Throttled | ErrorKind::Transient | ErrorKind::Setup => Unresolved::Unavailable {
            call,
            resource,
            message,
        },
        ErrorKind::Other => Unresolved::Failed {
            call,
            resource,
            message,
        },
    }
}

/// The oldest of two deployment dates (unknown counts as none).
pub(crate) fn oldest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{parse_at, parse_declared, Site};

    fn home() -> Home {
        Home::of_arn(
            "arn:aws:ecs:eu-west-1:111122223333:service/c/s",
            "eu-west-1",
        )
    }

    /// One reference of every kind, as a task definition or the tag writes it.
    fn every_kind() -> Vec<SecretRef> {
        let secret = Site::Secret {
            container: "app".into(),
            name: "X".into(),
        };
        let file = Site::EnvironmentFile {
            container: "app".into(),
        };
        vec![
            parse_at(
                &secret,
                "arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/db-AbCdEf",
            )
            .expect("a secret"),
            parse_at(&secret, "/app/db").expect("a parameter"),
            parse_at(&file, "arn:aws:s3:::bucket/app.env").expect("an object"),
        ]
    }

    #[test]
    fn every_reference_has_exactly_one_source_and_it_answers_its_own_lookup() {
        let home = home();
        for r in every_kind() {
            let claims: Vec<_> = SOURCES.iter().filter_map(|s| s.lookup(&r, &home)).collect();
            assert_eq!(claims.len(), 1, "{r}: {claims:?}");
            let (key, _) = &claims[0];
            let answering = SOURCES.iter().filter(|s| s.answers(key)).count();
            assert_eq!(answering, 1, "{key:?}");
            assert!(!watch_keys(&r, &home).is_empty(), "{r} has watch keys");
        }
    }

    #[test]
    fn a_bare_name_is_asked_of_every_source_that_has_names() {
        let home = home();
        let r = parse_declared("db_password").expect("a bare name");
        let lookups = lookups_of(&r, &home);
        // A secret and a parameter may both be called that; an object never is.
        assert_eq!(lookups.len(), 2, "{lookups:?}");
        for (key, _) in &lookups {
            assert_eq!(SOURCES.iter().filter(|s| s.answers(key)).count(), 1);
        }
    }

    #[test]
    fn every_change_event_is_read_by_exactly_one_source() {
        let events = [
            ("aws.secretsmanager", "Secret Label Updated"),
            ("aws.secretsmanager", "AWS API Call via CloudTrail"),
            ("aws.secretsmanager", "AWS Service Event via CloudTrail"),
            ("aws.ssm", "Parameter Store Change"),
            ("aws.ssm", "AWS API Call via CloudTrail"),
            ("aws.s3", "Object Created"),
            ("aws.s3", "Object Deleted"),
        ];
        let detail = serde_json::json!({});
        for (source, detail_type) in events {
            let view = EventView {
                source,
                detail_type,
                region: Some("eu-west-1"),
                resources: &[],
                detail: &detail,
            };
            let readers = SOURCES
                .iter()
                .filter(|s| s.read_event(&view).is_some())
                .count();
            assert_eq!(readers, 1, "{source} {detail_type}");
        }
        // ECS's and the scheduler's events are nobody's here.
        let view = EventView {
            source: "aws.ecs",
            detail_type: "ECS Deployment State Change",
            region: None,
            resources: &[],
            detail: &detail,
        };
        assert!(SOURCES.iter().all(|s| s.read_event(&view).is_none()));
    }

    #[test]
    fn every_kind_of_change_is_one_sources_to_say_which_labels_it_moved() {
        let kinds = [
            ChangeKind::RotationSucceeded,
            ChangeKind::LabelUpdated {
                label: "blue".into(),
                version_id: None,
            },
            ChangeKind::ApiCall {
                name: "PutSecretValue".into(),
                moved_stage: None,
            },
            ChangeKind::ParameterLabels {
                labels: vec!["live".into()],
            },
            ChangeKind::Parameter {
                operation: "Update".into(),
            },
            ChangeKind::S3Object { deleted: false },
        ];
        for k in &kinds {
            let sayers = SOURCES
                .iter()
                .filter(|s| s.labels_moved(k).is_some())
                .count();
            assert_eq!(sayers, 1, "{k:?}");
        }
        assert_eq!(labels_moved(&kinds[0]), ["AWSCURRENT", "AWSPREVIOUS"]);
        assert_eq!(labels_moved(&kinds[3]), ["live"]);
        assert!(labels_moved(&kinds[5]).is_empty());
    }

    #[test]
    fn each_subject_routes_by_its_source() {
        let secret = Subject::Secret("app/db".into());
        let parameter = Subject::Parameter {
            region: None,
            name: "/app/db".into(),
        };
        let object = Subject::S3Object {
            region: Some("eu-west-1".into()),
            bucket: "b".into(),
            key: "k.env".into(),
        };
        assert_eq!(routing(&secret), Routing::Owner);
        assert_eq!(subject_identity(&secret, "eu-west-1"), None);
        assert_eq!(routing(&parameter), Routing::OriginAccount);
        let id = subject_identity(&parameter, "eu-west-1").expect("a parameter names itself");
        assert!(same_source(&parameter, &id));
        assert!(!same_source(&secret, &id));
        assert_eq!(routing(&object), Routing::Everyone);
        assert!(subject_identity(&object, "eu-west-1").is_some());
        // Every subject is exactly one source's.
        for s in [&secret, &parameter, &object] {
            assert_eq!(SOURCES.iter().filter(|x| x.routing(s).is_some()).count(), 1);
        }
    }
}
