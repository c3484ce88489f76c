//! Secrets Manager secrets: `secrets[].valueFrom`, `logConfiguration.secretOptions[].valueFrom`
//! and `repositoryCredentials.credentialsParameter` naming a secret by ARN (full or partial) or,
//! for the credentials and the tag, by name. The reference forms are parsed in
//! [`crate::reference`]; the rule's Secrets Manager clauses are in [`crate::decide`].
//!
//! **Metadata only.** `DescribeSecret` (stages, `LastChangedDate`, `LastRotatedDate`, deletion)
//! and, only when the rule needs version dates, `ListSecretVersionIds`; never `GetSecretValue`.
//! A name or a partial ARN is matched exactly only once `DescribeSecret` resolved it to a full
//! ARN.
//!
//! **Events** (EventBridge): `AWS Service Event via CloudTrail` `RotationSucceeded` (the ARN in
//! `additionalEventData.SecretId`), the native `Secret Label Updated` (ARN in `resources[0]`),
//! and CloudTrail's `PutSecretValue`, `UpdateSecret` and `UpdateSecretVersionStage` (the resolved
//! ARN in `responseElements.arn`, spelt `aRN` by older events, preferred to whatever the caller
//! passed); a failed call changed nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};

use super::{Cx, Lookup, Missing, Read, Routing, Source, States, Subject, Wanted};
use crate::aws::{all_pages, AwsError, Clients, ErrorKind};
use crate::decide::{needs_version_dates, Fetched, RefState, SmState, Unresolved};
use crate::reference::{
    arn_account, Home, SecretIdentity, SecretRef, SecretsManagerId, SmRef, VersionSelector,
    AWSCURRENT, AWSPREVIOUS,
};

use super::ChangeKind;
use super::EventView;

/// The Secrets Manager source.
pub(crate) struct SecretsManager;

impl Source for SecretsManager {
    fn lookup(&self, r: &SecretRef, home: &Home) -> Option<(Lookup, bool)> {
        let SecretRef::SecretsManager(sm) = r else {
            return None;
        };
        Some((
            Lookup::Secret {
                region: sm.region.clone().unwrap_or_else(|| home.region.clone()),
                id: sm.lookup_id(),
            },
            false,
        ))
    }

    fn named(&self, name: &str, home: &Home) -> Option<(Lookup, SecretRef)> {
        Some((
            Lookup::Secret {
                region: home.region.clone(),
                id: name.to_string(),
            },
            SecretRef::SecretsManager(SmRef {
                partition: None,
                region: None,
                account: None,
                tail: name.to_string(),
                json_key: None,
                selector: VersionSelector::Current,
            }),
        ))
    }

    fn answers(&self, lookup: &Lookup) -> bool {
        matches!(lookup, Lookup::Secret { .. })
    }

    fn look_up<'a>(&'a self, cx: Cx<'a>, wanted: Vec<Wanted>) -> BoxFuture<'a, States> {
        Box::pin(async move {
            stream::iter(wanted)
                .map(|w| async move {
                    let state = match &w.key {
                        Lookup::Secret { region, id } => {
                            secret_state(cx.clients, region, id, w.oldest, cx.home).await
                        }
                        other => Err(Unresolved::MissingMetadata {
                            resource: other.resource(),
                            what: "a Secrets Manager lookup",
                        }),
                    };
                    (w.key, state.map(Arc::new))
                })
                .buffer_unordered(cx.concurrency.max(1))
                .collect()
                .await
        })
    }

    fn names(&self, r: &SecretRef, id: &SecretIdentity, home: &Home) -> bool {
        let SecretIdentity::SecretsManager(id) = id else {
            return false;
        };
        match r {
            SecretRef::SecretsManager(sm) => sm.names_from(id, home),
            SecretRef::Named(n) => {
                id.region == home.region && home.owns(id.account.as_deref()) && *n == id.name
            }
            _ => false,
        }
    }

    fn identify<'a>(
        &'a self,
        clients: &'a Clients,
        r: &'a SecretRef,
        home: &'a Home,
        _confirm: bool,
    ) -> Option<BoxFuture<'a, Result<Option<SecretIdentity>, AwsError>>> {
        let SecretRef::SecretsManager(sm) = r else {
            return None;
        };
        Some(Box::pin(async move {
            let region = sm.region.as_deref().unwrap_or(&home.region);
            match clients
                .secrets
                .describe_secret(region, &sm.lookup_id())
                .await
            {
                Ok(meta) => identity(&meta.arn, &meta.name, home).map(Some),
                Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        }))
    }

    fn read_event(&self, e: &EventView<'_>) -> Option<Result<Read, Missing>> {
        if e.source != "aws.secretsmanager" {
            return None;
        }
        match e.detail_type {
            "AWS Service Event via CloudTrail" => Some(service_event(e)),
            "Secret Label Updated" => Some(label_updated(e)),
            "AWS API Call via CloudTrail" => Some(api_call(e)),
            _ => None,
        }
    }

    fn routing(&self, s: &Subject) -> Option<Routing> {
        // A name or partial ARN: only a `DescribeSecret` in its own account tells what it is.
        matches!(s, Subject::Secret(_)).then_some(Routing::Owner)
    }

    fn subject_identity(&self, _s: &Subject, _own_region: &str) -> Option<SecretIdentity> {
        None
    }

    fn owner(&self, s: &Subject) -> Option<String> {
        let Subject::Secret(id) = s else {
            return None;
        };
        arn_account(id).map(String::from)
    }

    fn pin(&self, id: &SecretIdentity) -> Option<String> {
        let SecretIdentity::SecretsManager(s) = id else {
            return None;
        };
        Some(s.arn.clone())
    }

    /// `Secret Label Updated` dates its label; `RotationSucceeded` dates `AWSCURRENT` and
    /// `AWSPREVIOUS` (completing a rotation moves both); `UpdateSecretVersionStage` dates the
    /// label it moved, and `AWSPREVIOUS` with `AWSCURRENT`. `PutSecretValue` and `UpdateSecret`
    /// date nothing: a new version carries its own creation date, and an edit without a value (a
    /// description, a KMS key) moves no label a task follows.
    fn labels_moved<'k>(&self, kind: &'k ChangeKind) -> Option<Vec<&'k str>> {
        Some(match kind {
            ChangeKind::LabelUpdated { label, .. } => vec![label.as_str()],
            ChangeKind::RotationSucceeded => vec![AWSCURRENT, AWSPREVIOUS],
            ChangeKind::ApiCall {
                moved_stage: Some(stage),
                ..
            } if stage == AWSCURRENT => vec![AWSCURRENT, AWSPREVIOUS],
            ChangeKind::ApiCall {
                moved_stage: Some(stage),
                ..
            } => vec![stage.as_str()],
            ChangeKind::ApiCall { .. } => Vec::new(),
            _ => return None,
        })
    }

    fn watch_keys(&self, r: &SecretRef, home: &Home) -> Option<Vec<String>> {
        match r {
            SecretRef::SecretsManager(sm) => {
                let region = sm.region.as_deref().unwrap_or(&home.region);
                let mut keys = vec![key(region, &sm.tail)];
                if let Some(base) = strip_suffix(&sm.tail) {
                    keys.push(key(region, base));
                }
                Some(keys)
            }
            SecretRef::Named(n) => Some(vec![key(&home.region, n)]),
            _ => None,
        }
    }

    fn identity_key(&self, id: &SecretIdentity) -> Option<String> {
        let SecretIdentity::SecretsManager(s) = id else {
            return None;
        };
        Some(key(&s.region, &s.name))
    }
}

fn key(region: &str, name: &str) -> String {
    format!("sm {region} {name}")
}

/// `name` without a full ARN's `-XXXXXX` suffix, when it has the shape of one.
fn strip_suffix(tail: &str) -> Option<&str> {
    let (base, suffix) = tail.rsplit_once('-')?;
    (suffix.len() == 6 && suffix.chars().all(|c| c.is_ascii_alphanumeric()) && !base.is_empty())
        .then_some(base)
}

/// The identity `DescribeSecret` answered with, seen from `home`.
pub(crate) fn identity(arn: &str, name: &str, home: &Home) -> Result<SecretIdentity, AwsError> {
    SecretsManagerId::new(arn, name)
        .map(|id| SecretIdentity::SecretsManager(id.seen_from(home)))
        .map_err(|e| {
            AwsError::new(
                "secretsmanager:DescribeSecret",
                arn,
                ErrorKind::Other,
                e.to_string(),
            )
        })
}

/// What to allow when a Secrets Manager metadata call was refused.
fn grant(call: &'static str, home: &Home, owner: Option<&str>) -> String {
    match home.foreign_account(owner) {
        Some(account) => format!(
            "the secret belongs to account {account}: its resource policy must allow the operator's role secretsmanager:DescribeSecret and secretsmanager:ListSecretVersionIds, and so must the operator's IAM policy; the KMS key policy is not involved in these metadata reads (only the tasks' execution role needs kms:Decrypt on the secret's key)"
        ),
        None => format!(
            "allow {call} on this secret in the operator's IAM policy; if it already does, an explicit deny in an SCP, a permissions boundary or the secret's resource policy refuses it"
        ),
    }
}

async fn secret_state(
    clients: &Clients,
    region: &str,
    id: &str,
    oldest_deployment: Option<DateTime<Utc>>,
    home: &Home,
) -> Result<RefState, Unresolved> {
    let owner = arn_account(id);
    let meta = clients
        .secrets
        .describe_secret(region, id)
        .await
        .map_err(|e| super::unresolved(&e, id, region, home, || grant(e.operation, home, owner)))?;
    if let Some(when) = meta.deleted {
        return Err(Unresolved::ScheduledForDeletion {
            name: meta.name,
            at: when.to_rfc3339(),
        });
    }
    let sm_id = SecretsManagerId::new(&meta.arn, &meta.name)
        .map_err(Unresolved::Unparsable)?
        .seen_from(home);
    let mut stages = BTreeMap::new();
    for (version, labels) in &meta.version_stages {
        for l in labels {
            stages.insert(l.clone(), version.clone());
        }
    }
    let created = if needs_version_dates(meta.last_changed, oldest_deployment) {
        let arn = meta.arn.clone();
        match all_pages(|t| clients.secrets.list_secret_versions(region, &arn, t)).await {
            Ok(versions) => Fetched::Done(
                versions
                    .into_iter()
                    .filter_map(|v| Some((v.id, v.created?)))
                    .collect(),
            ),
            Err(e) => Fetched::Failed(super::unresolved(&e, &meta.arn, region, home, || {
                grant(e.operation, home, owner)
            })),
        }
    } else {
        Fetched::Skipped
    };
    Ok(RefState::SecretsManager(SmState {
        id: sm_id,
        last_changed: meta.last_changed,
        last_rotated: meta.last_rotated,
        stages,
        created,
        label_moves: BTreeMap::new(),
    }))
}

/// 1. `RotationSucceeded`, as CloudTrail records the service's own event.
fn service_event(e: &EventView<'_>) -> Result<Read, Missing> {
    match e.text(&["eventName"]) {
        Some("RotationSucceeded") => {
            let id = e
                .text(&["additionalEventData", "SecretId"])
                .ok_or(Missing {
                    shape: "RotationSucceeded",
                    field: "detail.additionalEventData.SecretId",
                })?;
            Ok(Read::Change(
                Subject::Secret(id.to_string()),
                ChangeKind::RotationSucceeded,
            ))
        }
        Some(other) => Ok(Read::Ignored(format!(
            "service event {other} changes no secret value"
        ))),
        None => Err(Missing {
            shape: "CloudTrail service",
            field: "detail.eventName",
        }),
    }
}

/// 2. `Secret Label Updated`: a staging label moved to a version.
fn label_updated(e: &EventView<'_>) -> Result<Read, Missing> {
    let shape = "Secret Label Updated";
    let label = e.text(&["labelUpdated"]).ok_or(Missing {
        shape,
        field: "detail.labelUpdated",
    })?;
    let id = e
        .resources
        .first()
        .filter(|r| !r.trim().is_empty())
        .map(String::as_str)
        .or_else(|| e.text(&["name"]))
        .ok_or(Missing {
            shape,
            field: "resources[0] or detail.name",
        })?;
    Ok(Read::Change(
        Subject::Secret(id.to_string()),
        ChangeKind::LabelUpdated {
            label: label.to_string(),
            version_id: e.text(&["versionId"]).map(String::from),
        },
    ))
}

/// 3. The API calls that change a value or move a label, as CloudTrail records them.
fn api_call(e: &EventView<'_>) -> Result<Read, Missing> {
    let shape = "CloudTrail API call";
    let name = e.text(&["eventName"]).ok_or(Missing {
        shape,
        field: "detail.eventName",
    })?;
    if !matches!(
        name,
        "PutSecretValue" | "UpdateSecret" | "UpdateSecretVersionStage"
    ) {
        return Ok(Read::Ignored(format!(
            "API call {name} changes no secret value"
        )));
    }
    if let Some(code) = e.text(&["errorCode"]) {
        return Ok(Read::Ignored(format!(
            "{name} failed ({code}): nothing changed"
        )));
    }
    let id = e
        .text(&["responseElements", "arn"])
        .or_else(|| e.text(&["responseElements", "aRN"]))
        .or_else(|| e.text(&["requestParameters", "secretId"]))
        .ok_or(Missing {
            shape,
            field: "responseElements.arn or requestParameters.secretId",
        })?;
    // A label moved only if it was moved *to* a version (a removal alone moves none).
    let moved_stage = (name == "UpdateSecretVersionStage"
        && e.text(&["requestParameters", "moveToVersionId"]).is_some())
    .then(|| e.text(&["requestParameters", "versionStage"]))
    .flatten()
    .map(String::from);
    Ok(Read::Change(
        Subject::Secret(id.to_string()),
        ChangeKind::ApiCall {
            name: name.to_string(),
            moved_stage,
        },
    ))
}
