//! SSM parameters: `secrets[].valueFrom` naming a parameter by ARN or by name (a bare name in
//! `valueFrom` is always a parameter, of the task's own account and region), optionally pinned
//! to a version (`name:3`) or following a label (`name:label`). The reference forms are parsed
//! in [`crate::reference`]; the rule's SSM clauses are in [`crate::decide`].
//!
//! **Metadata only.** `DescribeParameters` by up to fifty names at once (dates and versions, no
//! values), and `GetParameterHistory` only for label references whose deployment the rule cannot
//! judge without it (its values are dropped as read; never `kms:Decrypt`). Another account's
//! parameter cannot be read at all (SSM shares parameters only through RAM, and ECS does not
//! resolve them across accounts by name): its references are unresolved with the reason.
//!
//! **Events:** the native `Parameter Store Change` (`detail.name`, `detail.operation`; a deletion
//! announces nothing a rollout could fix), and CloudTrail's `LabelParameterVersion`, which alone
//! says which labels moved.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::Wanted;
use super::{ChangeKind, Cx, EventView, Lookup, Missing, Read, Routing, Source, States, Subject};
use crate::aws::{AwsError, Clients, ParameterMeta};
use crate::decide::{needs_label_history, Fetched, RefState, SsmState, Unresolved};
use crate::reference::{
    canonical_param_name, Home, ParamSelector, ParameterId, SecretIdentity, SecretRef, SsmRef,
};

/// `DescribeParameters`' name filter takes at most this many values.
const DESCRIBE_PARAMETERS_BATCH: usize = 50;

/// The SSM Parameter Store source.
pub(crate) struct Ssm;

impl Source for Ssm {
    fn lookup(&self, r: &SecretRef, home: &Home) -> Option<(Lookup, bool)> {
        let SecretRef::Parameter(p) = r else {
            return None;
        };
        Some((
            Lookup::Parameter {
                region: p.region.clone().unwrap_or_else(|| home.region.clone()),
                account: home.foreign_account(p.account.as_deref()),
                name: p.name.clone(),
            },
            matches!(p.selector, ParamSelector::Label(_)),
        ))
    }

    fn named(&self, name: &str, home: &Home) -> Option<(Lookup, SecretRef)> {
        let name = canonical_param_name(name);
        Some((
            Lookup::Parameter {
                region: home.region.clone(),
                account: None,
                name: name.clone(),
            },
            SecretRef::Parameter(SsmRef {
                region: None,
                account: None,
                name,
                selector: ParamSelector::Latest,
            }),
        ))
    }

    fn answers(&self, lookup: &Lookup) -> bool {
        matches!(lookup, Lookup::Parameter { .. })
    }

    fn look_up<'a>(&'a self, cx: Cx<'a>, wanted: Vec<Wanted>) -> BoxFuture<'a, States> {
        Box::pin(look_up(cx, wanted))
    }

    fn names(&self, r: &SecretRef, id: &SecretIdentity, home: &Home) -> bool {
        let SecretIdentity::Parameter(id) = id else {
            return false;
        };
        match r {
            SecretRef::Parameter(p) => {
                p.region.as_deref().unwrap_or(&home.region) == id.region
                    && home.foreign_account(p.account.as_deref()) == id.account
                    && p.name == id.name
            }
            SecretRef::Named(n) => {
                id.region == home.region
                    && id.account.is_none()
                    && canonical_param_name(n) == id.name
            }
            _ => false,
        }
    }

    fn identify<'a>(
        &'a self,
        clients: &'a Clients,
        r: &'a SecretRef,
        home: &'a Home,
        confirm: bool,
    ) -> Option<BoxFuture<'a, Result<Option<SecretIdentity>, AwsError>>> {
        let SecretRef::Parameter(p) = r else {
            return None;
        };
        Some(Box::pin(async move {
            let region = p.region.as_deref().unwrap_or(&home.region);
            let id = SecretIdentity::Parameter(ParameterId::new(
                region,
                p.account.as_deref(),
                &p.name,
                home,
            ));
            if !confirm {
                // Identified by its name alone: nothing to look up.
                return Ok(Some(id));
            }
            let found = clients
                .parameters
                .describe_parameters(region, std::slice::from_ref(&p.name))
                .await?;
            Ok(found.iter().any(|f| f.name == p.name).then_some(id))
        }))
    }

    fn read_event(&self, e: &EventView<'_>) -> Option<Result<Read, Missing>> {
        if e.source != "aws.ssm" {
            return None;
        }
        match e.detail_type {
            "Parameter Store Change" => Some(parameter_change(e)),
            "AWS API Call via CloudTrail" => Some(label_call(e)),
            _ => None,
        }
    }

    fn routing(&self, s: &Subject) -> Option<Routing> {
        // A name means a parameter of each account: the event's account's.
        matches!(s, Subject::Parameter { .. }).then_some(Routing::OriginAccount)
    }

    fn subject_identity(&self, s: &Subject, own_region: &str) -> Option<SecretIdentity> {
        let Subject::Parameter { region, name } = s else {
            return None;
        };
        Some(SecretIdentity::Parameter(ParameterId::own(
            region.as_deref().unwrap_or(own_region),
            &canonical_param_name(name),
            own_region,
        )))
    }

    fn owner(&self, _s: &Subject) -> Option<String> {
        // Its events name a parameter by name, in the account that sent them.
        None
    }

    fn pin(&self, _id: &SecretIdentity) -> Option<String> {
        None
    }

    fn labels_moved<'k>(&self, kind: &'k ChangeKind) -> Option<Vec<&'k str>> {
        Some(match kind {
            ChangeKind::ParameterLabels { labels } => labels.iter().map(String::as_str).collect(),
            ChangeKind::Parameter { .. } => Vec::new(),
            _ => return None,
        })
    }

    fn watch_keys(&self, r: &SecretRef, home: &Home) -> Option<Vec<String>> {
        match r {
            SecretRef::Parameter(p) => Some(vec![key(
                p.region.as_deref().unwrap_or(&home.region),
                &p.name,
            )]),
            SecretRef::Named(n) => Some(vec![key(&home.region, &canonical_param_name(n))]),
            _ => None,
        }
    }

    fn identity_key(&self, id: &SecretIdentity) -> Option<String> {
        let SecretIdentity::Parameter(p) = id else {
            return None;
        };
        Some(key(&p.region, &p.name))
    }
}

fn key(region: &str, name: &str) -> String {
    format!("ssm {region} {name}")
}

/// What to allow when an SSM metadata call was refused.
fn grant(call: &'static str, resource: &str, region: &str, home: &Home) -> String {
    match call {
        "ssm:DescribeParameters" => "allow ssm:DescribeParameters (it takes Resource \"*\") in the operator's IAM policy; if it already does, an SCP or a permissions boundary denies it".into(),
        "ssm:GetParameterHistory" => format!(
            "allow ssm:GetParameterHistory on arn:{}:ssm:{region}:{}:parameter{} in the operator's IAM policy (needed only for name:label references; never kms:Decrypt); if it already does, an SCP or a permissions boundary denies it",
            home.partition,
            home.account.as_deref().unwrap_or("<account>"),
            if resource.starts_with('/') { resource.to_string() } else { format!("/{resource}") },
        ),
        c => format!("allow {c} in the operator's IAM policy, or lift the SCP that denies it"),
    }
}

fn unresolved(e: &AwsError, name: &str, region: &str, home: &Home) -> Unresolved {
    super::unresolved(e, name, region, home, || {
        grant(e.operation, name, region, home)
    })
}

/// Every wanted parameter: the operator's own by batches of names per region, another
/// account's unresolved with the reason.
async fn look_up(cx: Cx<'_>, wanted: Vec<Wanted>) -> States {
    let mut states = States::new();
    let mut by_region: BTreeMap<String, Vec<Wanted>> = BTreeMap::new();
    for w in wanted {
        match &w.key {
            Lookup::Parameter {
                region,
                account: None,
                ..
            } => by_region.entry(region.clone()).or_default().push(w),
            Lookup::Parameter {
                region,
                account: Some(account),
                name,
            } => {
                let reason = Unresolved::ForeignParameter {
                    name: name.clone(),
                    account: account.clone(),
                    region: region.clone(),
                };
                states.insert(w.key, Err(reason));
            }
            _ => {}
        }
    }
    for (region, wanted) in by_region {
        for batch in wanted.chunks(DESCRIBE_PARAMETERS_BATCH) {
            let names: Vec<String> = batch
                .iter()
                .filter_map(|w| match &w.key {
                    Lookup::Parameter { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect();
            let found = describe_parameters(cx.clients, &region, &names, cx.home).await;
            for (w, (name, found)) in batch.iter().zip(found) {
                let state = match found {
                    Ok(Some(p)) => {
                        let wanted = w.label && needs_label_history(p.last_modified, w.oldest);
                        let history = if wanted {
                            match cx
                                .clients
                                .parameters
                                .parameter_history(&region, &name)
                                .await
                            {
                                Ok(h) => Fetched::Done(h),
                                Err(e) => Fetched::Failed(unresolved(&e, &name, &region, cx.home)),
                            }
                        } else {
                            Fetched::Skipped
                        };
                        Ok(RefState::Parameter(SsmState {
                            id: ParameterId::new(&region, None, &name, cx.home),
                            last_modified: p.last_modified,
                            version: p.version,
                            history,
                            label_moves: BTreeMap::new(),
                        }))
                    }
                    Ok(None) => Err(Unresolved::NotFound {
                        call: "ssm:DescribeParameters",
                        resource: format!("parameter {name}"),
                        region: region.clone(),
                    }),
                    Err(e) => Err(e),
                };
                states.insert(w.key.clone(), state.map(Arc::new));
            }
        }
    }
    states
}

/// `DescribeParameters` for a batch of names, each name with what was found for it (in the
/// batch's order). A failed batch is retried name by name (unless the failure is throttling or
/// an unreachable endpoint, which would fail the same way), so that one name that the call
/// refuses does not take the other forty-nine with it.
async fn describe_parameters(
    clients: &Clients,
    region: &str,
    batch: &[String],
    home: &Home,
) -> Vec<(String, Result<Option<ParameterMeta>, Unresolved>)> {
    let pick = |found: &[ParameterMeta], name: &str| found.iter().find(|p| p.name == name).cloned();
    match clients.parameters.describe_parameters(region, batch).await {
        Ok(found) => batch
            .iter()
            .map(|n| (n.clone(), Ok(pick(&found, n))))
            .collect(),
        Err(e) if batch.len() > 1 && !e.is_retryable() => {
            let mut out = Vec::with_capacity(batch.len());
            for n in batch {
                let one = clients
                    .parameters
                    .describe_parameters(region, std::slice::from_ref(n))
                    .await
                    .map(|found| pick(&found, n))
                    .map_err(|e| unresolved(&e, n, region, home));
                out.push((n.clone(), one));
            }
            out
        }
        Err(e) => batch
            .iter()
            .map(|n| (n.clone(), Err(unresolved(&e, n, region, home))))
            .collect(),
    }
}

/// 4. `Parameter Store Change`: a parameter was created or updated, or a label moved.
fn parameter_change(e: &EventView<'_>) -> Result<Read, Missing> {
    let shape = "Parameter Store Change";
    let name = e.text(&["name"]).ok_or(Missing {
        shape,
        field: "detail.name",
    })?;
    let operation = e.text(&["operation"]).ok_or(Missing {
        shape,
        field: "detail.operation",
    })?;
    if operation == "Delete" {
        return Ok(Read::Ignored(format!(
            "parameter {name} was deleted: no rollout can help (its dependents show as unknown)"
        )));
    }
    Ok(Read::Change(
        Subject::Parameter {
            region: e.region.map(String::from),
            name: name.to_string(),
        },
        ChangeKind::Parameter {
            operation: operation.to_string(),
        },
    ))
}

/// `LabelParameterVersion` as CloudTrail records it: which labels moved.
fn label_call(e: &EventView<'_>) -> Result<Read, Missing> {
    let shape = "SSM CloudTrail API call";
    let name = e.text(&["eventName"]).ok_or(Missing {
        shape,
        field: "detail.eventName",
    })?;
    if name != "LabelParameterVersion" {
        return Ok(Read::Ignored(format!(
            "SSM API call {name}: a Parameter Store Change event announces value changes"
        )));
    }
    if let Some(code) = e.text(&["errorCode"]) {
        return Ok(Read::Ignored(format!(
            "{name} failed ({code}): nothing changed"
        )));
    }
    let param = e.text(&["requestParameters", "name"]).ok_or(Missing {
        shape,
        field: "requestParameters.name",
    })?;
    let labels: Vec<String> = e
        .detail
        .pointer("/requestParameters/labels")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str())
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if labels.is_empty() {
        return Err(Missing {
            shape,
            field: "requestParameters.labels",
        });
    }
    Ok(Read::Change(
        Subject::Parameter {
            region: e.region.map(String::from),
            name: param.to_string(),
        },
        ChangeKind::ParameterLabels { labels },
    ))
}
