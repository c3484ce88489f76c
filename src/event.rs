//! EventBridge events that announce a secret change, parsed with our own serde types (the
//! CloudTrail structure of `aws_lambda_events` requires fields that service events lack). Each
//! source of values reads its own events ([`crate::sources`]: `secretsmanager.rs` shapes 1 to 3,
//! `ssm.rs` shape 4 and `LabelParameterVersion`, `s3.rs` `Object Created` / `Object Deleted`);
//! this module reads the envelope, ECS's and the scheduler's events.
//!
//! Accepted shapes (envelope fields other than `source`, `detail-type` and `detail` are optional,
//! as some deliveries omit `account`):
//!
//! 1. `AWS Service Event via CloudTrail` from `aws.secretsmanager`, `eventName` `RotationSucceeded`:
//!    the secret's ARN is in `detail.additionalEventData.SecretId` (`requestParameters` and
//!    `responseElements` are null);
//! 2. `Secret Label Updated` (native): `detail.name`, `detail.labelUpdated`, `detail.versionId`,
//!    the ARN in `resources[0]`;
//! 3. `AWS API Call via CloudTrail` for `PutSecretValue`, `UpdateSecret`, `UpdateSecretVersionStage`:
//!    `requestParameters.secretId` is whatever the caller passed (name, partial or full ARN), so the
//!    resolved ARN in `responseElements.arn` (spelt `aRN` by some older events) is preferred. A call
//!    that failed (`errorCode`) changed nothing and is ignored;
//! 4. `Parameter Store Change` from `aws.ssm`: `detail.name`, `detail.operation`;
//!
//! and, for the Lambda's periodic resync, `Scheduled Event` from `aws.events`.
//!
//! ECS's own events keep the watch cache ([`crate::watch`]) fresh; they change no secret and
//! roll nothing ([`Parsed::Service`]):
//!
//! 5. `ECS Deployment State Change` from `aws.ecs` (sent when a deployment starts, also a
//!    service's first): the service ARN in `resources[0]`;
//! 6. `AWS API Call via CloudTrail` from `aws.ecs` for `CreateService`, `UpdateService`,
//!    `DeleteService` (`responseElements.service`), and `TagResource` / `UntagResource` on a
//!    service (`requestParameters.resourceArn`: the tag can declare references).
//!
//! Events of a known source that announce nothing relevant (another API call, a deleted
//! parameter, a failed call) are [`Parsed::Ignored`] and can be deleted; anything else is an
//! [`EventError`]: a poison message, left for the dead-letter queue.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::sources::{EventView, Missing, Read, SOURCES};

/// What changed, as an event tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The secret as the event names it: preferably a full ARN, else a name or partial ARN.
    pub secret: Subject,
    /// What happened.
    pub kind: ChangeKind,
    /// The event's `time`, if present.
    pub at: Option<DateTime<Utc>>,
    /// The envelope's account and region: where the change happened (routes it among targets).
    pub origin: Origin,
    /// Who made the change, as the event tells it (boxed: a parsed event stays small).
    pub provenance: Box<Provenance>,
}

/// Where a change comes from, for the people who ask "why did my service restart, and who
/// caused it?": the event's kind, id and time, and who acted (CloudTrail's `userIdentity`: an
/// `arn`, or `invokedBy` for a service such as a rotation function). Shown in reports, logs and
/// outcome events; never a metric label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Provenance {
    /// The kind of event (`events_received`'s label).
    pub event: String,
    /// The event's `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The event's `time`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// Who acted, where the event says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The account the change happened in (routing keeps each account's actors to its own
    /// targets).
    #[serde(skip)]
    pub account: Option<String>,
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} event", self.event)?;
        if let Some(id) = &self.id {
            write!(f, " {id}")?;
        }
        if let Some(actor) = &self.actor {
            write!(f, " by {actor}")?;
        }
        if let Some(at) = &self.at {
            write!(
                f,
                " at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )?;
        }
        Ok(())
    }
}

/// At most this many events' provenance is kept per changed subject in a batch (a flood need
/// not be listed whole).
const PROVENANCE_PER_SUBJECT: usize = 3;

/// Where an event says a change happened: the account whose resource changed and the region.
/// An event is evidence about this account and region only ([`crate::intake`] drops one from an
/// account the operator does not manage, and gives one that names no account the operator's
/// own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// The account the change happened in: CloudTrail's `recipientAccountId` (the owner of the
    /// resource called) where the event has one, else the envelope's `account`.
    pub account: Option<String>,
    /// The envelope's `account` where it differs from [`Origin::account`]: the account whose
    /// trail recorded a call on another account's resource. It must be managed too.
    pub sender: Option<String>,
    /// The envelope's `region`.
    pub region: Option<String>,
}

impl Origin {
    /// Every account the event names: each must be one the operator manages.
    pub(crate) fn accounts(&self) -> impl Iterator<Item = &str> {
        self.account.iter().chain(&self.sender).map(String::as_str)
    }
}

pub use crate::sources::{ChangeKind, Subject};

/// A staging label an event says moved, and when: the metadata cannot date a label move, so
/// this is the only evidence of one (see [`crate::decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMove {
    /// The label.
    pub label: String,
    /// The event's time.
    pub at: DateTime<Utc>,
}

/// The changes of a batch of events, gathered: each subject once, with every label move its
/// events announced, and whether a full resync was asked for. What `serve` and the Lambda both
/// hand to a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Changed secrets and parameters, with their label moves.
    pub subjects: std::collections::BTreeMap<Subject, Vec<LabelMove>>,
    /// A scheduled event asked for a full resync.
    pub resync: bool,
    /// Services ECS's events named, to refresh in the watch cache.
    pub services: std::collections::BTreeSet<ServiceHint>,
    /// Where each subject's events came from (see [`Origin`]).
    pub origins: std::collections::BTreeMap<Subject, std::collections::BTreeSet<Origin>>,
    /// Who made each subject's changes (a few events' worth).
    pub provenance: std::collections::BTreeMap<Subject, Vec<Provenance>>,
}

impl Changes {
    /// Adds a parsed event; returns whether it asks for work (an ignored event does not).
    pub fn add(&mut self, parsed: &Parsed) -> bool {
        match parsed {
            Parsed::Change(c) => {
                self.subjects
                    .entry(c.secret.clone())
                    .or_default()
                    .extend(c.label_moves());
                self.origins
                    .entry(c.secret.clone())
                    .or_default()
                    .insert(c.origin.clone());
                self.note(&c.secret, std::slice::from_ref(&*c.provenance));
                true
            }
            Parsed::Resync => {
                self.resync = true;
                true
            }
            Parsed::Service(h) => {
                self.services.insert(h.clone());
                true
            }
            Parsed::Ignored(_) => false,
        }
    }

    /// Keeps who made a subject's changes: the newest few, without repeats (the change now
    /// live is the last one).
    pub(crate) fn note(&mut self, subject: &Subject, provenance: &[Provenance]) {
        let kept = self.provenance.entry(subject.clone()).or_default();
        for p in provenance {
            if !kept.contains(p) {
                kept.push(p.clone());
            }
        }
        if kept.len() > PROVENANCE_PER_SUBJECT {
            kept.sort_by_key(|p| p.at);
            let excess = kept.len() - PROVENANCE_PER_SUBJECT;
            kept.drain(..excess);
        }
    }

    /// Takes in another batch's changes: one decision for both.
    pub(crate) fn absorb(&mut self, other: Changes) {
        for (subject, provenance) in &other.provenance {
            self.note(subject, provenance);
        }
        for (subject, moves) in other.subjects {
            self.subjects.entry(subject).or_default().extend(moves);
        }
        for (subject, origins) in other.origins {
            self.origins.entry(subject).or_default().extend(origins);
        }
        self.services.extend(other.services);
        self.resync |= other.resync;
    }

    /// Whether nothing asks for work.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty() && !self.resync && self.services.is_empty()
    }

    /// Whether something may need a rollout (ECS's events alone only refresh the watch cache).
    pub fn may_roll(&self) -> bool {
        !self.subjects.is_empty() || self.resync
    }
}

impl Change {
    /// The labels this change moved, each with the event's time: the dates the staleness rule
    /// cannot read from the metadata ([`crate::decide::SmState::label_moves`]). Which labels a
    /// kind of change moves is its source's to say (`Source::labels_moved`); a version staged
    /// `AWSPENDING` moves no label a task follows. Empty without the event's time.
    pub(crate) fn label_moves(&self) -> Vec<LabelMove> {
        use crate::reference::AWSPENDING;
        let Some(at) = self.at else {
            return Vec::new();
        };
        let labels = crate::sources::labels_moved(&self.kind);
        labels
            .into_iter()
            .filter(|l| *l != AWSPENDING)
            .map(|l| LabelMove {
                label: l.to_string(),
                at,
            })
            .collect()
    }
}

/// A service ECS's events say changed: its deployment, its tags, or whether it exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceHint {
    /// Its cluster (name or ARN).
    pub cluster: String,
    /// Its ARN.
    pub service: String,
}

impl ServiceHint {
    /// From a service ARN of the long form (`service/CLUSTER/NAME`), which names its cluster.
    fn of_arn(arn: &str, cluster: Option<&str>) -> Option<ServiceHint> {
        let (_, resource) = arn.split_once(":service/")?;
        let cluster = match (resource.split_once('/'), cluster) {
            (_, Some(c)) if !c.is_empty() => c.to_string(),
            (Some((c, _)), _) if !c.is_empty() => c.to_string(),
            _ => return None,
        };
        Some(ServiceHint {
            cluster,
            service: arn.to_string(),
        })
    }
}

/// The outcome of parsing one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A change to act on.
    Change(Change),
    /// ECS says a service changed: refresh its entry in the watch cache.
    Service(ServiceHint),
    /// A scheduled event: run a full resync.
    Resync,
    /// Well-formed, but nothing to do; the text says why.
    Ignored(String),
}

/// Why an event could not be used: a poison message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or not an EventBridge envelope.
    #[error("not an EventBridge event: {0}")]
    NotAnEvent(String),
    /// An EventBridge event of a kind ecs-reloader does not handle.
    #[error("unsupported event: source {event_source:?}, detail-type {detail_type:?}")]
    Unsupported {
        /// The event's source.
        event_source: String,
        /// The event's detail-type.
        detail_type: String,
    },
    /// A handled kind, but a field it needs is missing or empty.
    #[error("{shape} event without {field}")]
    Missing {
        /// Which shape.
        shape: &'static str,
        /// Which field.
        field: &'static str,
    },
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<String>,
    source: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    detail: serde_json::Value,
}

/// An event's text as reports may show it: one line, at most 256 characters (an ARN is at most
/// about 2 KB; anything longer, or with control characters, did not come from AWS as such).
fn shown(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(256) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

fn text<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str().filter(|s| !s.trim().is_empty())
}

/// Parses an event given as JSON text.
pub fn parse(body: &str) -> Result<Parsed, EventError> {
    parse_with_origin(body).map(|(parsed, _)| parsed)
}

/// Parses an event given as JSON text, with where it says it comes from (for every kind of
/// event, not only changes: whose events count is decided on it, see [`crate::intake`]).
pub fn parse_with_origin(body: &str) -> Result<(Parsed, Origin), EventError> {
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| EventError::NotAnEvent(format!("invalid JSON: {e}")))?;
    parse_value(value)
}

/// Parses an event given as a JSON value, with its origin.
pub(crate) fn parse_value(value: serde_json::Value) -> Result<(Parsed, Origin), EventError> {
    let env: Envelope =
        serde_json::from_value(value).map_err(|e| EventError::NotAnEvent(e.to_string()))?;
    let origin = origin_of(&env);
    parse_envelope(env, origin.clone()).map(|parsed| (parsed, origin))
}

/// The account a change happened in: for a CloudTrail event the resource owner
/// (`recipientAccountId`), which is the envelope's account unless a trail recorded a call on
/// another account's resource; then both are kept, and both must be managed.
fn origin_of(env: &Envelope) -> Origin {
    let nonempty = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty()).map(String::from);
    let envelope = nonempty(env.account.as_deref());
    let recipient = nonempty(text(&env.detail, &["recipientAccountId"]));
    let (account, sender) = match (recipient, envelope) {
        (Some(r), Some(e)) if r != e => (Some(r), Some(e)),
        (Some(r), _) => (Some(r), None),
        (None, e) => (e, None),
    };
    Origin {
        account,
        sender,
        region: nonempty(env.region.as_deref()),
    }
}

fn parse_envelope(env: Envelope, origin: Origin) -> Result<Parsed, EventError> {
    let at = env
        .time
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let change = |secret: Subject, kind: ChangeKind, provenance: Box<Provenance>| {
        Ok(Parsed::Change(Change {
            secret,
            kind,
            at,
            origin: origin.clone(),
            provenance,
        }))
    };
    let d = &env.detail;
    let actor = text(d, &["userIdentity", "arn"])
        .or_else(|| text(d, &["userIdentity", "invokedBy"]))
        // S3's own events name only the requester (an account id or a service principal).
        .or_else(|| text(d, &["requester"]))
        .map(shown);
    let id = env
        .id
        .as_deref()
        .filter(|i| !i.trim().is_empty())
        .map(shown);
    let account = origin.account.clone();
    let change = |secret: Subject, kind: ChangeKind| {
        let provenance = Box::new(Provenance {
            event: kind.label().to_string(),
            id: id.clone(),
            at,
            actor: actor.clone(),
            account: account.clone(),
        });
        change(secret, kind, provenance)
    };
    let view = EventView {
        source: &env.source,
        detail_type: &env.detail_type,
        region: env.region.as_deref(),
        resources: &env.resources,
        detail: d,
    };
    if let Some(read) = SOURCES.iter().find_map(|s| s.read_event(&view)) {
        return match read {
            Ok(Read::Change(subject, kind)) => change(subject, kind),
            Ok(Read::Ignored(why)) => Ok(Parsed::Ignored(why)),
            Err(Missing { shape, field }) => Err(EventError::Missing { shape, field }),
        };
    }
    match (env.source.as_str(), env.detail_type.as_str()) {
        ("aws.events", "Scheduled Event") => Ok(Parsed::Resync),
        ("aws.ecs", "ECS Deployment State Change") => {
            let arn = env.resources.first().map(String::as_str).unwrap_or("");
            if arn.is_empty() {
                return Err(EventError::Missing {
                    shape: "ECS Deployment State Change",
                    field: "resources[0]",
                });
            }
            Ok(match ServiceHint::of_arn(arn, None) {
                Some(h) => Parsed::Service(h),
                None => {
                    Parsed::Ignored(format!("{arn} is not a service ARN that names its cluster"))
                }
            })
        }
        ("aws.ecs", "AWS API Call via CloudTrail") => {
            let name = text(d, &["eventName"]).unwrap_or("");
            if let Some(code) = text(d, &["errorCode"]) {
                return Ok(Parsed::Ignored(format!("{name} failed ({code})")));
            }
            let (arn, cluster) = match name {
                "CreateService" | "UpdateService" | "DeleteService" => (
                    text(d, &["responseElements", "service", "serviceArn"]),
                    text(d, &["responseElements", "service", "clusterArn"]),
                ),
                "TagResource" | "UntagResource" => {
                    (text(d, &["requestParameters", "resourceArn"]), None)
                }
                other => {
                    return Ok(Parsed::Ignored(format!(
                        "ECS call {other} changes no service's references"
                    )))
                }
            };
            let Some(arn) = arn else {
                return Err(EventError::Missing {
                    shape: "ECS CloudTrail",
                    field: "responseElements.service.serviceArn or requestParameters.resourceArn",
                });
            };
            Ok(match ServiceHint::of_arn(arn, cluster) {
                Some(h) => Parsed::Service(h),
                None => {
                    Parsed::Ignored(format!("{arn} is not a service ARN that names its cluster"))
                }
            })
        }
        (source, detail_type) => Err(EventError::Unsupported {
            event_source: source.to_string(),
            detail_type: detail_type.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:us-west-2:012345678901:secret:app/db-a1b2c3";

    #[test]
    fn ecs_events_name_the_service_to_refresh() {
        let svc = "arn:aws:ecs:us-west-2:012345678901:service/prod/api";
        let hint = ServiceHint {
            cluster: "prod".into(),
            service: svc.into(),
        };
        let deployment = format!(
            r#"{{"source":"aws.ecs","detail-type":"ECS Deployment State Change","resources":["{svc}"],"detail":{{"eventType":"INFO","eventName":"SERVICE_DEPLOYMENT_IN_PROGRESS","deploymentId":"ecs-svc/1","reason":"ECS deployment ecs-svc/1 in progress."}}}}"#
        );
        assert_eq!(parse(&deployment), Ok(Parsed::Service(hint.clone())));
        let deleted = format!(
            r#"{{"source":"aws.ecs","detail-type":"AWS API Call via CloudTrail","detail":{{"eventName":"DeleteService","requestParameters":{{"cluster":"prod","service":"api"}},"responseElements":{{"service":{{"serviceArn":"{svc}","clusterArn":"arn:aws:ecs:us-west-2:012345678901:cluster/prod"}}}}}}}}"#
        );
        match parse(&deleted) {
            Ok(Parsed::Service(h)) => assert_eq!(h.service, svc),
            other => panic!("{other:?}"),
        }
        let tagged = format!(
            r#"{{"source":"aws.ecs","detail-type":"AWS API Call via CloudTrail","detail":{{"eventName":"TagResource","requestParameters":{{"resourceArn":"{svc}","tags":[{{"key":"ecs-reloader/secrets","value":"app/db"}}]}},"responseElements":{{}}}}}}"#
        );
        assert_eq!(parse(&tagged), Ok(Parsed::Service(hint)));
        // A tag on a cluster or task definition, a failed call, another call: nothing to refresh.
        for body in [
            r#"{"source":"aws.ecs","detail-type":"AWS API Call via CloudTrail","detail":{"eventName":"TagResource","requestParameters":{"resourceArn":"arn:aws:ecs:us-west-2:012345678901:cluster/prod"}}}"#,
            r#"{"source":"aws.ecs","detail-type":"AWS API Call via CloudTrail","detail":{"eventName":"DeleteService","errorCode":"AccessDeniedException"}}"#,
            r#"{"source":"aws.ecs","detail-type":"AWS API Call via CloudTrail","detail":{"eventName":"RunTask"}}"#,
        ] {
            assert!(matches!(parse(body), Ok(Parsed::Ignored(_))), "{body}");
        }
        // A deployment event without its service is unusable.
        assert!(parse(
            r#"{"source":"aws.ecs","detail-type":"ECS Deployment State Change","detail":{}}"#
        )
        .is_err());
        // The fixtures the infra rules are tested against parse the same way.
        for body in [
            include_str!("../tests/fixtures/events/ecs_deployment_in_progress.json"),
            include_str!("../tests/fixtures/events/ecs_delete_service.json"),
            include_str!("../tests/fixtures/events/ecs_tag_resource.json"),
        ] {
            assert_eq!(
                parse(body),
                Ok(Parsed::Service(ServiceHint {
                    cluster: if body.contains("clusterArn") {
                        "arn:aws:ecs:us-west-2:012345678901:cluster/prod".into()
                    } else {
                        "prod".into()
                    },
                    service: "arn:aws:ecs:us-west-2:012345678901:service/prod/api".into(),
                })),
                "{body}"
            );
        }
        let mut changes = Changes::default();
        assert!(changes.add(&parse(&deployment).expect("parses")));
        assert!(!changes.is_empty() && !changes.may_roll());
    }

    /// Found by review: a flood keeps the newest events' provenance (the change now live is
    /// the last one), and what an event says of who acted is one bounded line.
    #[test]
    fn provenance_keeps_the_newest_and_stays_one_short_line() {
        let ev = |id: &str, secs: u32, actor: &str| {
            serde_json::json!({
                "id": id, "source": "aws.secretsmanager", "detail-type": "AWS API Call via CloudTrail",
                "time": format!("2026-12-07T12:00:{secs:02}Z"),
                "detail": {"eventName": "PutSecretValue", "userIdentity": {"arn": actor},
                           "responseElements": {"arn": ARN}}
            })
            .to_string()
        };
        let mut c = Changes::default();
        for (id, secs) in [("r-1", 1), ("r-2", 2), ("r-3", 3)] {
            c.add(&parse(&ev(id, secs, "arn:aws:sts::1:assumed-role/rotator/fn")).expect("event"));
        }
        c.add(&parse(&ev("h-1", 9, "arn:aws:sts::1:assumed-role/Admin/mallory")).expect("event"));
        let kept: Vec<String> = c
            .provenance
            .values()
            .flatten()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().any(|p| p.contains("mallory")), "{kept:?}");
        assert!(!kept.iter().any(|p| p.contains("r-1")), "{kept:?}");
        let huge = format!("arn:aws:iam::1:user/x\n<b>{}", "A".repeat(200_000));
        let mut c = Changes::default();
        c.add(&parse(&ev("a", 1, &huge)).expect("event"));
        let p = c
            .provenance
            .values()
            .flatten()
            .next()
            .expect("kept")
            .to_string();
        assert!(p.len() < 400 && !p.contains('\n'), "{} bytes", p.len());
    }

    fn change(body: &str) -> Change {
        match parse(body) {
            Ok(Parsed::Change(c)) => c,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn rotation_succeeded_service_event() {
        let c = change(include_str!(
            "../tests/fixtures/events/rotation_succeeded.json"
        ));
        assert_eq!(c.secret, Subject::Secret(ARN.into()));
        assert_eq!(c.kind, ChangeKind::RotationSucceeded);
        assert!(c.at.is_some());
    }

    #[test]
    fn secret_label_updated_prefers_the_arn() {
        let c = change(include_str!(
            "../tests/fixtures/events/secret_label_updated.json"
        ));
        assert_eq!(c.secret, Subject::Secret(ARN.into()));
        assert_eq!(
            c.kind,
            ChangeKind::LabelUpdated {
                label: "AWSCURRENT".into(),
                version_id: Some("a1b2c3d4-5678-90ab-cdef-EXAMPLE11111".into())
            }
        );
    }

    #[test]
    fn label_updated_without_account_or_resources_falls_back_to_the_name() {
        let c = change(
            r#"{"source":"aws.secretsmanager","detail-type":"Secret Label Updated","detail":{"name":"app/db","labelUpdated":"blue"}}"#,
        );
        assert_eq!(c.secret, Subject::Secret("app/db".into()));
        assert_eq!(c.at, None);
    }

    #[test]
    fn api_calls_prefer_the_resolved_arn_in_either_spelling() {
        let c = change(include_str!(
            "../tests/fixtures/events/put_secret_value.json"
        ));
        assert_eq!(
            c.secret,
            Subject::Secret(ARN.into()),
            "responseElements.arn over the name passed"
        );
        assert_eq!(
            c.kind,
            ChangeKind::ApiCall {
                name: "PutSecretValue".into(),
                moved_stage: None,
            }
        );
        let c = change(include_str!(
            "../tests/fixtures/events/update_secret_version_stage_aRN.json"
        ));
        assert_eq!(
            c.secret,
            Subject::Secret(ARN.into()),
            "the old aRN spelling"
        );
        let c = change(include_str!(
            "../tests/fixtures/events/update_secret_partial_arn.json"
        ));
        assert_eq!(
            c.secret,
            Subject::Secret("arn:aws:secretsmanager:us-west-2:012345678901:secret:app/db".into())
        );
    }

    #[test]
    fn events_date_the_labels_they_moved() {
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .expect("time")
        };
        let moves = |body: &str| -> Vec<(String, DateTime<Utc>)> {
            change(body)
                .label_moves()
                .into_iter()
                .map(|m| (m.label, m.at))
                .collect()
        };
        let rotated = at("2026-11-02T03:14:07Z");
        assert_eq!(
            moves(include_str!(
                "../tests/fixtures/events/rotation_succeeded.json"
            )),
            [
                ("AWSCURRENT".to_string(), rotated),
                ("AWSPREVIOUS".to_string(), rotated)
            ]
        );
        let staged = at("2026-11-02T09:30:00Z");
        assert_eq!(
            moves(include_str!(
                "../tests/fixtures/events/update_secret_version_stage_aRN.json"
            )),
            [
                ("AWSCURRENT".to_string(), staged),
                ("AWSPREVIOUS".to_string(), staged)
            ]
        );
        assert_eq!(
            moves(include_str!(
                "../tests/fixtures/events/secret_label_updated.json"
            )),
            [("AWSCURRENT".to_string(), at("2024-02-06T16:43:48Z"))]
        );
        // A new version dates itself; staging AWSPENDING (a rotation's first step, all a failed
        // rotation does) and removing a label move nothing a task follows.
        assert!(moves(include_str!(
            "../tests/fixtures/events/put_secret_value.json"
        ))
        .is_empty());
        let custom = r#"{"source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","time":"2026-11-02T10:00:00Z","detail":{"eventName":"UpdateSecretVersionStage","requestParameters":{"secretId":"app/db","versionStage":"blue","moveToVersionId":"v1"}}}"#;
        assert_eq!(
            moves(custom),
            [("blue".to_string(), at("2026-11-02T10:00:00Z"))]
        );
        for body in [
            r#"{"source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","time":"2026-11-02T10:00:00Z","detail":{"eventName":"UpdateSecretVersionStage","requestParameters":{"secretId":"app/db","versionStage":"AWSPENDING","moveToVersionId":"v2"}}}"#,
            r#"{"source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","time":"2026-11-02T10:00:00Z","detail":{"eventName":"UpdateSecretVersionStage","requestParameters":{"secretId":"app/db","versionStage":"blue","removeFromVersionId":"v1"}}}"#,
            r#"{"source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","time":"2026-11-02T10:00:00Z","detail":{"eventName":"UpdateSecret","requestParameters":{"secretId":"app/db","description":"x"}}}"#,
            r#"{"source":"aws.secretsmanager","detail-type":"AWS Service Event via CloudTrail","detail":{"eventName":"RotationSucceeded","additionalEventData":{"SecretId":"app/db"}}}"#,
        ] {
            assert!(moves(body).is_empty(), "{body}");
        }
    }

    #[test]
    fn failed_and_unrelated_calls_are_ignored() {
        assert!(matches!(
            parse(include_str!(
                "../tests/fixtures/events/put_secret_value_failed.json"
            )),
            Ok(Parsed::Ignored(_))
        ));
        let get = r#"{"source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","detail":{"eventName":"GetSecretValue"}}"#;
        assert!(matches!(parse(get), Ok(Parsed::Ignored(_))));
        let started = r#"{"source":"aws.secretsmanager","detail-type":"AWS Service Event via CloudTrail","detail":{"eventName":"RotationStarted"}}"#;
        assert!(matches!(parse(started), Ok(Parsed::Ignored(_))));
    }

    #[test]
    fn parameter_store_change() {
        let c = change(include_str!(
            "../tests/fixtures/events/parameter_store_change.json"
        ));
        assert_eq!(
            c.secret,
            Subject::Parameter {
                region: Some("us-east-1".into()),
                name: "/app/feature-flags".into()
            }
        );
        assert_eq!(
            c.kind,
            ChangeKind::Parameter {
                operation: "Update".into()
            }
        );
        let deleted = r#"{"source":"aws.ssm","detail-type":"Parameter Store Change","detail":{"name":"/x","operation":"Delete"}}"#;
        assert!(matches!(parse(deleted), Ok(Parsed::Ignored(_))));
    }

    #[test]
    fn a_cloudtrail_label_parameter_version_dates_its_labels() {
        let body = r#"{"source":"aws.ssm","detail-type":"AWS API Call via CloudTrail","time":"2026-11-02T10:00:00Z","region":"us-east-1","detail":{"eventName":"LabelParameterVersion","requestParameters":{"name":"/app/flag","parameterVersion":1,"labels":["prod"]},"responseElements":{"invalidLabels":[],"parameterVersion":1}}}"#;
        let c = change(body);
        assert_eq!(
            c.secret,
            Subject::Parameter {
                region: Some("us-east-1".into()),
                name: "/app/flag".into()
            }
        );
        let moves = c.label_moves();
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].label, "prod");
        let failed = body.replace(
            r#""eventName":"LabelParameterVersion","#,
            r#""eventName":"LabelParameterVersion","errorCode":"ParameterVersionNotFound","#,
        );
        assert!(matches!(parse(&failed), Ok(Parsed::Ignored(_))));
        let other = body.replace("LabelParameterVersion", "PutParameter");
        assert!(matches!(parse(&other), Ok(Parsed::Ignored(_))));
        let no_labels = body.replace(r#""labels":["prod"]"#, r#""labels":[]"#);
        assert!(parse(&no_labels).is_err());
    }

    #[test]
    fn scheduled_events_ask_for_a_resync() {
        assert_eq!(
            parse(include_str!("../tests/fixtures/events/scheduled.json")),
            Ok(Parsed::Resync)
        );
    }

    #[test]
    fn s3_object_events_name_bucket_and_key_and_who_wrote() {
        let event = |kind: &str| {
            serde_json::json!({
                "version": "0", "id": "e-1", "detail-type": kind, "source": "aws.s3",
                "account": "111122223333", "time": "2026-12-07T12:00:03Z", "region": "eu-west-1",
                "resources": ["arn:aws:s3:::conf"],
                "detail": {"version": "0", "bucket": {"name": "conf"},
                    "object": {"key": "app/prod.env", "size": 12, "etag": "abc"},
                    "requester": "111122223333", "reason": "PutObject"}
            })
            .to_string()
        };
        let Parsed::Change(c) = parse(&event("Object Created")).expect("parsed") else {
            panic!("a change");
        };
        assert_eq!(
            c.secret,
            Subject::S3Object {
                region: Some("eu-west-1".into()),
                bucket: "conf".into(),
                key: "app/prod.env".into()
            }
        );
        assert_eq!(c.kind, ChangeKind::S3Object { deleted: false });
        assert_eq!(c.provenance.actor.as_deref(), Some("111122223333"));
        assert!(c.label_moves().is_empty());
        let Parsed::Change(d) = parse(&event("Object Deleted")).expect("parsed") else {
            panic!("a change");
        };
        assert_eq!(d.kind, ChangeKind::S3Object { deleted: true });
        assert_eq!(d.kind.label(), "s3_object_deleted");
    }

    #[test]
    fn poison_is_rejected_with_a_reason() {
        let cases = [
            ("not json at all", "invalid JSON"),
            ("{}", "missing field"),
            (
                r#"{"source":"aws.s3","detail-type":"Object Restore Completed","detail":{}}"#,
                "unsupported event",
            ),
            (
                r#"{"source":"aws.s3","detail-type":"Object Created","detail":{}}"#,
                "detail.bucket.name",
            ),
            (
                r#"{"source":"aws.secretsmanager","detail-type":"AWS Service Event via CloudTrail","detail":{"eventName":"RotationSucceeded","additionalEventData":{}}}"#,
                "SecretId",
            ),
            (
                r#"{"source":"aws.secretsmanager","detail-type":"Secret Label Updated","detail":{"name":"x"}}"#,
                "labelUpdated",
            ),
            (
                r#"{"source":"aws.ssm","detail-type":"Parameter Store Change","detail":{"operation":"Update"}}"#,
                "detail.name",
            ),
            (
                r#"{"source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","detail":{"eventName":"PutSecretValue","requestParameters":null,"responseElements":null}}"#,
                "secretId",
            ),
            ("[1,2,3]", "EventBridge"),
        ];
        for (body, needle) in cases {
            let err = parse(body).expect_err(body);
            assert!(err.to_string().contains(needle), "{body}: {err}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn envelope_noise_never_panics(
            source in "(aws\\.secretsmanager|aws\\.ssm|aws\\.events|x)",
            dt in "(Secret Label Updated|AWS API Call via CloudTrail|AWS Service Event via CloudTrail|Parameter Store Change|Scheduled Event|y)",
            detail in "\\PC{0,60}",
        ) {
            let body = serde_json::json!({"source": source, "detail-type": dt, "detail": {"eventName": detail, "name": detail, "labelUpdated": detail, "operation": detail}});
            let _ = parse(&body.to_string());
        }
    }
}
