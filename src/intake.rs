//! Intake: what `serve` and the Lambda make of one message before any pass. Both drivers take
//! every body through here, so that they parse, weigh, count and log an event the same way.
//!
//! **An event is evidence about its own account only.** With `[[targets]]` and an
//! organisation's bus, events arrive from accounts the operator does not manage; a parameter or
//! a secret of the same name there is not ours. So an event whose account (CloudTrail's
//! `recipientAccountId`, else the envelope's `account`; and the envelope's too when a trail
//! recorded a call on another account's resource) is not one of [`Managed`] is dropped here: it
//! rolls nothing and dates nothing, is logged once at `info` and counted as
//! `events_received{kind="foreign"}`. An event that names no account is about the operator's
//! own account, and only that: it is given that account before it is routed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::event::{self, Change, Changes, EventError, LabelMove, Origin, Parsed, Subject};
use crate::metrics::Metrics;
use crate::targets::Managed;

/// How many times a change is tried again for a target that could not be worked on (its role
/// refused, its calls failing), or after a pass that failed as a whole, before it is left to the
/// resync: with the backoff below, about half an hour of retries.
pub(crate) const RETRIES: u32 = 5;

/// The longest wait between two retries: SQS delays a message 15 minutes at most.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// When a change is to be decided again after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Look {
    /// After this; `None`: never (done, or left to the resync).
    pub(crate) after: Option<Duration>,
    /// Whether that look is a retry, which counts toward [`RETRIES`].
    pub(crate) retry: bool,
}

/// When to decide a change again: after the pass's own wait (something settling), and, while
/// the change has had fewer than [`RETRIES`] retries, after `failed`'s backoff (a target that
/// failed, or a pass that failed as a whole; doubled at every retry). Past that the failure is
/// left to the resync, which reports it: nothing is re-polled forever. Shared by `serve` and the
/// Lambda.
pub(crate) fn next_look(own: Option<Duration>, failed: Option<Duration>, retries: u32) -> Look {
    let retry = failed.filter(|_| retries < RETRIES).map(|base| {
        base.saturating_mul(1u32 << retries.min(16))
            .min(MAX_BACKOFF)
    });
    if failed.is_some() && retry.is_none() {
        tracing::warn!(
            retries,
            "a change failed {RETRIES} retries: left to the resync (which reports the failure)"
        );
    }
    Look {
        after: own.into_iter().chain(retry).min(),
        retry: retry.is_some(),
    }
}

/// The retries a handed-on message has had, as the Lambda writes them into the event it sends
/// again (a top-level key EventBridge never sets, which the event parser ignores).
pub(crate) fn retries_of(body: &str) -> u32 {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/ecs-reloader/retries").and_then(|n| n.as_u64()))
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Whether `body` is a change this operator handed on itself (it carries its retry count): the
/// change's own carrier, never a copy to acknowledge as decided.
pub(crate) fn handed_on(body: &str) -> bool {
    body.contains("\"ecs-reloader\"")
        && serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .is_some_and(|v| v.get("ecs-reloader").is_some())
}

/// `body` with its retry count set to `retries` (unchanged when it is no JSON object).
pub(crate) fn with_retries(body: &str, retries: u32) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut v)) => {
            v.insert(
                "ecs-reloader".into(),
                serde_json::json!({ "retries": retries }),
            );
            serde_json::Value::Object(v).to_string()
        }
        _ => body.to_string(),
    }
}

/// Changes owned by a pass that began after them, remembered for a while: a copy of an event
/// arriving later (a duplicate delivery, a flood of replays, a looping sender's old events) needs
/// no pass of its own, since that pass reads AWS's state after the change and keeps the change
/// (waiting, handed on, or left to the resync) until it is done with it. A change the operator
/// handed on itself ([`handed_on`]) is never taken for a copy. Keyed by what changed and in which
/// account; bounded in time and size.
pub(crate) struct Recent {
    entries: Mutex<HashMap<(Subject, Option<String>), Covered>>,
    /// How long a pass is remembered.
    keep: chrono::Duration,
    /// How much earlier than a pass's start a change must be dated to count as seen by it: event
    /// times are whole seconds, and clocks differ.
    margin: chrono::Duration,
}

struct Covered {
    /// When the latest pass over the subject began.
    started: DateTime<Utc>,
    /// The label moves that pass applied (only an event can date one, so a copy is covered only
    /// if its moves were among them).
    moves: BTreeSet<(String, DateTime<Utc>)>,
}

/// At most this many subjects are remembered (the oldest are forgotten first).
const RECENT_MAX: usize = 4096;

impl Recent {
    /// Remembers passes for `keep`; `skew`: the clock skew allowed (`[policy] clock_skew`).
    pub(crate) fn new(keep: Duration, skew: Duration) -> Self {
        Recent {
            entries: Mutex::new(HashMap::new()),
            keep: chrono::Duration::from_std(keep).unwrap_or_else(|_| chrono::Duration::hours(1)),
            margin: chrono::Duration::seconds(1)
                + chrono::Duration::from_std(skew).unwrap_or_default(),
        }
    }

    /// Whether a pass that began after `change` (and applied its label moves) has decided it.
    pub(crate) fn covers(&self, change: &Change) -> bool {
        let Some(at) = change.at else {
            return false;
        };
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = entries.get(&(change.secret.clone(), change.origin.account.clone())) else {
            return false;
        };
        at + self.margin <= c.started
            && change
                .label_moves()
                .iter()
                .all(|m| c.moves.contains(&(m.label.clone(), m.at)))
    }

    /// Forgets every pass: their changes went back to the queue (a replica that stopped
    /// leading), and what comes back is no copy.
    pub(crate) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Records that a pass over `changes` began at `started`.
    pub(crate) fn record(&self, changes: &Changes, started: DateTime<Utc>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = started - self.keep;
        entries.retain(|_, c| c.started > oldest);
        for (subject, moves) in &changes.subjects {
            let moves: BTreeSet<(String, DateTime<Utc>)> = moves
                .iter()
                .map(|m: &LabelMove| (m.label.clone(), m.at))
                .collect();
            let accounts: Vec<Option<String>> = changes
                .origins
                .get(subject)
                .map(|o| o.iter().map(|o| o.account.clone()).collect())
                .unwrap_or_else(|| vec![None]);
            for account in accounts {
                let key = (subject.clone(), account);
                match entries.get_mut(&key) {
                    // A later pass replaces an earlier one; its moves are what it applied.
                    Some(c) if c.started <= started => {
                        c.started = started;
                        c.moves = moves.clone();
                    }
                    Some(_) => {}
                    None => {
                        entries.insert(
                            key,
                            Covered {
                                started,
                                moves: moves.clone(),
                            },
                        );
                    }
                }
            }
        }
        while entries.len() > RECENT_MAX {
            let Some(key) = entries
                .iter()
                .min_by_key(|(_, c)| c.started)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            entries.remove(&key);
        }
    }
}

/// One message, parsed and weighed.
#[derive(Debug)]
pub(crate) enum Taken {
    /// Work: a change (placed in a managed account), a resync, or a service ECS named.
    Work(Parsed),
    /// Well-formed, nothing to do: acknowledged.
    Ignored(String),
    /// From an account the operator does not manage: acknowledged, nothing done.
    Foreign(String),
    /// Unusable: left for the dead-letter path.
    Poison(EventError),
}

impl Taken {
    /// The `events_received` label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Taken::Work(Parsed::Change(c)) => c.kind.label(),
            Taken::Work(Parsed::Resync) => "scheduled",
            Taken::Work(Parsed::Service(_)) => "ecs_service",
            Taken::Work(Parsed::Ignored(_)) | Taken::Ignored(_) => "ignored",
            Taken::Foreign(_) => "foreign",
            Taken::Poison(_) => "poison",
        }
    }

    /// Whether the message is a change (what a driver hands on when it must wait).
    pub(crate) fn is_change(&self) -> bool {
        matches!(self, Taken::Work(Parsed::Change(_)))
    }
}

/// Parses and weighs one body.
pub(crate) fn take(body: &str, managed: &Managed) -> Taken {
    match event::parse_with_origin(body) {
        Ok((parsed, origin)) => admit(parsed, &origin, managed),
        Err(e) => Taken::Poison(e),
    }
}

/// [`take`], for an event already parsed as JSON (the Lambda's direct invocation).
pub(crate) fn take_value(value: serde_json::Value, managed: &Managed) -> Taken {
    match event::parse_value(value) {
        Ok((parsed, origin)) => admit(parsed, &origin, managed),
        Err(e) => Taken::Poison(e),
    }
}

fn admit(parsed: Parsed, origin: &Origin, managed: &Managed) -> Taken {
    // A scheduled resync claims nothing about any account: it asks for AWS's state to be read
    // again, which rolls only what that state shows stale (and the bus lets no other account
    // send `aws.events` events).
    if let Parsed::Resync = parsed {
        return Taken::Work(parsed);
    }
    if let Some(other) = origin.accounts().find(|a| !managed.accounts.contains(*a)) {
        let what = match &parsed {
            Parsed::Change(c) => format!("{:?} ({})", c.secret, c.kind.label()),
            Parsed::Service(h) => format!("service {}", h.service),
            Parsed::Resync => "a scheduled resync".to_string(),
            Parsed::Ignored(why) => why.clone(),
        };
        return Taken::Foreign(format!(
            "{what} from account {other}, which this operator does not manage (it manages {})",
            managed
                .accounts
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // What an event names must be ours too: a secret's ARN in an account not managed is not
    // evidence this operator may act on, whoever relays it. (Its source says which account a
    // subject names, if it names one.)
    if let Parsed::Change(Change { secret, .. }) = &parsed {
        if let Some(owner) = crate::sources::owner(secret).filter(|a| !managed.accounts.contains(a))
        {
            return Taken::Foreign(format!(
                "{} of account {owner}, which this operator does not manage",
                secret.given()
            ));
        }
    }
    match parsed {
        Parsed::Ignored(why) => Taken::Ignored(why),
        Parsed::Change(mut c) => {
            if c.origin.account.is_none() {
                c.origin.account = Some(managed.own.clone());
                c.provenance.account = Some(managed.own.clone());
            }
            Taken::Work(Parsed::Change(c))
        }
        other => Taken::Work(other),
    }
}

/// Counts a message and logs what became of it, the same way in every driver. A poison message
/// is counted here and logged by its driver, which knows where it goes (a redrive policy, a
/// batch item failure).
pub(crate) fn record(taken: &Taken, message: &str, metrics: &Metrics) {
    metrics.event(taken.kind());
    match taken {
        Taken::Work(parsed) => tracing::info!(message, event = ?parsed, "change event"),
        Taken::Ignored(why) => tracing::info!(message, why, "event needs no action"),
        Taken::Foreign(why) => {
            tracing::info!(
                message,
                why,
                "event from an account not managed: nothing rolled or dated"
            )
        }
        Taken::Poison(_) => {}
    }
}

/// A record that asks for work: its own handle (a message, a batch record id), its body, how
/// many retries it has had, and whether it is a change (rather than a resync or an ECS event).
pub(crate) struct Used<T> {
    /// The driver's handle of the record.
    pub(crate) handle: T,
    /// The body, as handed on if the change must wait.
    pub(crate) body: String,
    /// Retries so far ([`retries_of`]).
    pub(crate) retries: u32,
    /// A change of a secret or parameter (what may be handed on to wait).
    pub(crate) is_change: bool,
}

/// A batch of records sorted once, the same way for `serve` and the Lambda: counted and logged
/// ([`record`]), copies of a change a later pass already decided acknowledged, unusable ones set
/// apart for the dead-letter path, and the rest gathered into one [`Changes`].
pub(crate) struct Sorted<T> {
    /// What the records that ask for work change.
    pub(crate) changes: Changes,
    /// The records that ask for work.
    pub(crate) used: Vec<Used<T>>,
    /// Records done with now: ignored, another account's, or decided already by a later pass.
    pub(crate) done: Vec<T>,
    /// Records no pass can use: for the dead-letter path, never acknowledged.
    pub(crate) poison: Vec<T>,
}

impl<T> Sorted<T> {
    /// The fewest retries of the records used: a fresh change never inherits another's
    /// exhausted count (`serve` retries a batch as one).
    pub(crate) fn fewest_retries(&self) -> u32 {
        self.used.iter().map(|u| u.retries).min().unwrap_or(0)
    }
}

/// Sorts `records` (handle, id for the log line, body): see [`Sorted`].
pub(crate) fn sort<T>(
    records: impl IntoIterator<Item = (T, String, String)>,
    managed: &Managed,
    metrics: &Metrics,
    recent: &Recent,
) -> Sorted<T> {
    let mut sorted = Sorted {
        changes: Changes::default(),
        used: Vec::new(),
        done: Vec::new(),
        poison: Vec::new(),
    };
    for (handle, id, body) in records {
        let taken = take(&body, managed);
        record(&taken, &id, metrics);
        let is_change = taken.is_change();
        match taken {
            Taken::Work(Parsed::Change(c)) if !handed_on(&body) && recent.covers(&c) => {
                tracing::info!(message = %id, "a pass that began after this change has decided it: acknowledged");
                sorted.done.push(handle);
            }
            Taken::Work(parsed) => {
                sorted.changes.add(&parsed);
                let retries = retries_of(&body);
                sorted.used.push(Used {
                    handle,
                    body,
                    retries,
                    is_change,
                });
            }
            Taken::Ignored(_) | Taken::Foreign(_) => sorted.done.push(handle),
            Taken::Poison(e) => {
                tracing::warn!(message = %id, error = %e, "unusable event: left for the dead-letter path");
                sorted.poison.push(handle);
            }
        }
    }
    sorted
}

/// The `reconciles` label of a pass over `changes`: ECS's events alone only refresh the watch
/// cache, and are counted apart from decisions.
pub(crate) fn pass_kind(changes: &Changes) -> &'static str {
    match (changes.resync, changes.may_roll()) {
        (true, _) => "resync",
        (false, true) => "event",
        (false, false) => "watch_refresh",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::arn_account;

    fn managed() -> Managed {
        Managed {
            own: "111122223333".into(),
            accounts: ["111122223333".to_string(), "444455556666".to_string()]
                .into_iter()
                .collect(),
        }
    }

    fn label_call(account: Option<&str>, recipient: Option<&str>) -> String {
        let mut v = serde_json::json!({
            "source": "aws.ssm", "detail-type": "AWS API Call via CloudTrail",
            "region": "eu-west-1", "time": "2026-12-01T10:00:00Z",
            "detail": {"eventName": "LabelParameterVersion",
                       "requestParameters": {"name": "/app/flag", "labels": ["live"]}}
        });
        if let Some(a) = account {
            v["account"] = serde_json::json!(a);
        }
        if let Some(r) = recipient {
            v["detail"]["recipientAccountId"] = serde_json::json!(r);
        }
        v.to_string()
    }

    #[test]
    fn another_accounts_event_is_foreign_whatever_it_names() {
        let m = managed();
        for (account, recipient) in [
            (Some("999988887777"), None),
            (None, Some("999988887777")),
            // A managed account's trail recording a call on an unmanaged account's resource.
            (Some("111122223333"), Some("999988887777")),
            // An unmanaged account's trail naming a managed recipient: the sender is not ours.
            (Some("999988887777"), Some("111122223333")),
        ] {
            let taken = take(&label_call(account, recipient), &m);
            assert!(
                matches!(&taken, Taken::Foreign(why) if why.contains("999988887777")),
                "{account:?} {recipient:?}: {taken:?}"
            );
            assert_eq!(taken.kind(), "foreign");
        }
        // ECS's hints are weighed the same way.
        let ecs = r#"{"source":"aws.ecs","detail-type":"ECS Deployment State Change","account":"999988887777","resources":["arn:aws:ecs:eu-west-1:999988887777:service/prod/api"],"detail":{}}"#;
        assert!(matches!(take(ecs, &m), Taken::Foreign(_)));
        // A managed account's (or no account's) event naming an unmanaged account's secret.
        let relayed = r#"{"source":"aws.secretsmanager","detail-type":"AWS Service Event via CloudTrail","account":"111122223333","detail":{"eventName":"RotationSucceeded","additionalEventData":{"SecretId":"arn:aws:secretsmanager:eu-west-1:999988887777:secret:app/db-AbCdEf"}}}"#;
        assert!(matches!(take(relayed, &m), Taken::Foreign(why) if why.contains("999988887777")));
        let ours = relayed.replace("999988887777", "444455556666");
        assert!(matches!(take(&ours, &m), Taken::Work(_)));
        assert_eq!(arn_account("app/db"), None);
        assert_eq!(arn_account("arn:aws:ssm:eu-west-1::parameter/x"), None);
        // A scheduled resync claims nothing about an account: it reads AWS's state again.
        let tick = r#"{"source":"aws.events","detail-type":"Scheduled Event","account":"999988887777","detail":{}}"#;
        assert!(matches!(take(tick, &m), Taken::Work(Parsed::Resync)));
    }

    #[test]
    fn a_managed_accounts_event_is_placed_there_and_one_naming_none_is_the_operators() {
        let m = managed();
        let placed = |body: &str| match take(body, &m) {
            Taken::Work(Parsed::Change(c)) => c.origin.account,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            placed(&label_call(Some("444455556666"), None)),
            Some("444455556666".into())
        );
        assert_eq!(
            placed(&label_call(None, Some("444455556666"))),
            Some("444455556666".into())
        );
        assert_eq!(placed(&label_call(None, None)), Some("111122223333".into()));
        assert!(matches!(take("not json", &m), Taken::Poison(_)));
        let failed = r#"{"source":"aws.ssm","detail-type":"AWS API Call via CloudTrail","account":"111122223333","detail":{"eventName":"LabelParameterVersion","errorCode":"AccessDenied"}}"#;
        assert!(matches!(take(failed, &m), Taken::Ignored(_)));
    }
}
