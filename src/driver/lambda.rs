//! The Lambda driver: the same binary, started as `bootstrap` on `provided.al2023`.
//!
//! Accepted payloads ([`dispatch`]):
//! 1. an EventBridge event delivered directly by a rule (the four change shapes of `serve`);
//! 2. an SQS batch (`Records[]` whose bodies are EventBridge events): the answer names exactly
//!    the records that could not be parsed or processed in `batchItemFailures` (the event source
//!    mapping uses `ReportBatchItemFailures`), so good records are never retried and poison ones
//!    reach the dead-letter queue;
//! 3. a `Scheduled Event` from `aws.events`: a full resync.
//!
//! **A Lambda cannot wait fifteen minutes for a rollout.** Because staleness is derived from AWS
//! state, the handler triggers what is due within its remaining time and records nothing of its
//! own. Health is judged by later invocations: with `[rollout] canary`, a change first rolls
//! only its canary, the rest roll once a later invocation (the scheduled resync) sees the canary
//! healthy, and if it failed or is stuck, the rest are held (see [`crate::decide::gate_canary`]
//! and [`crate::decide::hold_failed`]). What the deadline cuts short, the next resync picks up.
//!
//! Cold start: nothing is scanned at init; the SDK clients and the task-definition cache are
//! built once and reused by every invocation of the execution environment.

use std::time::Duration;

use serde_json::{json, Value};

use crate::driver::setup::Parts;
use crate::event::{self, Parsed};
use crate::index::Scope;
use crate::reconcile::ReconcileError;
use crate::rollout::{Outcome, Rollout};

/// One SQS record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `messageId`, the identifier `batchItemFailures` names.
    pub message_id: String,
    /// The body: an EventBridge event.
    pub body: String,
}

/// What an invocation carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// An EventBridge event (a change, or a scheduled resync).
    Event(Value),
    /// An SQS batch.
    SqsBatch(Vec<Record>),
}

/// A payload that cannot be handled at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not a JSON object.
    #[error("the payload is not a JSON object")]
    NotAnObject,
    /// A batch record without a `messageId` cannot even be reported as failed.
    #[error("SQS record {0} has no messageId")]
    RecordWithoutId(usize),
    /// The event is not one ecs-reloader handles.
    #[error(transparent)]
    Event(#[from] event::EventError),
}

/// Tells the payload kinds apart. Pure.
pub fn dispatch(v: Value) -> Result<Payload, PayloadError> {
    if let Some(records) = v.get("Records").and_then(Value::as_array) {
        let mut out = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let message_id = r
                .get("messageId")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or(PayloadError::RecordWithoutId(i))?;
            let body = r.get("body").and_then(Value::as_str).unwrap_or_default();
            out.push(Record {
                message_id: message_id.to_string(),
                body: body.to_string(),
            });
        }
        return Ok(Payload::SqsBatch(out));
    }
    if v.is_object() {
        Ok(Payload::Event(v))
    } else {
        Err(PayloadError::NotAnObject)
    }
}

/// The secrets changes name, with the label moves they announce.
fn named_of(changes: impl IntoIterator<Item = event::Change>) -> crate::reconcile::Named {
    let mut named = crate::reconcile::Named::new();
    for c in changes {
        let moves = named.entry(c.secret).or_default();
        if let (event::ChangeKind::LabelUpdated { label, .. }, Some(at)) = (&c.kind, c.at) {
            moves.push((label.clone(), at));
        }
    }
    named
}

/// Why an invocation failed as a whole (Lambda reports it; the caller retries or dead-letters).
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The payload is unusable.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// AWS failed while deciding.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

/// The handler, built once per execution environment.
pub struct Handler {
    parts: Parts,
    scope: Scope,
    /// Time kept back from the deadline for answering.
    margin: Duration,
}

/// What one pass did, for the answer and the logs.
#[derive(Debug, Default)]
struct Summary {
    decided: usize,
    triggered: Vec<String>,
    failed: Vec<String>,
    settling: usize,
    held: usize,
    cut_short: bool,
}

impl Summary {
    fn to_json(&self) -> Value {
        json!({
            "decided": self.decided,
            "triggered": self.triggered,
            "failed": self.failed,
            "settling": self.settling,
            "held": self.held,
            "cut_short_by_deadline": self.cut_short,
        })
    }
}

impl Handler {
    /// A handler over assembled parts (assembled with `wait = false`).
    pub fn new(parts: Parts, clusters: Vec<String>) -> Self {
        Handler {
            parts,
            scope: Scope { clusters },
            margin: Duration::from_secs(5),
        }
    }

    /// Handles one invocation; `deadline` is the invocation's, as a wall-clock time.
    pub async fn handle(
        &self,
        payload: Value,
        deadline: chrono::DateTime<chrono::Utc>,
    ) -> Result<Value, InvocationError> {
        let now = self.parts.reconciler.clock().now();
        let budget = (deadline - now)
            .to_std()
            .unwrap_or_default()
            .saturating_sub(self.margin);
        match dispatch(payload)? {
            Payload::Event(v) => match event::parse_value(v).map_err(PayloadError::from)? {
                Parsed::Change(c) => {
                    tracing::info!(secret = ?c.secret, kind = c.kind.label(), "change event");
                    let named = named_of([c]);
                    Ok(self.run(Some(&named), budget).await?.to_json())
                }
                Parsed::Resync => {
                    tracing::info!("scheduled resync");
                    Ok(self.run(None, budget).await?.to_json())
                }
                Parsed::Ignored(why) => {
                    tracing::info!(why, "event needs no action");
                    Ok(json!({ "ignored": why }))
                }
            },
            Payload::SqsBatch(records) => Ok(self.batch(records, budget).await),
        }
    }

    async fn batch(&self, records: Vec<Record>, budget: Duration) -> Value {
        let mut failures: Vec<String> = Vec::new();
        let mut used: Vec<String> = Vec::new();
        let mut changes = Vec::new();
        let mut full = false;
        for r in records {
            match event::parse(&r.body) {
                Ok(Parsed::Change(c)) => {
                    changes.push(c);
                    used.push(r.message_id);
                }
                Ok(Parsed::Resync) => {
                    full = true;
                    used.push(r.message_id);
                }
                Ok(Parsed::Ignored(why)) => {
                    tracing::info!(message = %r.message_id, why, "event needs no action")
                }
                Err(e) => {
                    tracing::warn!(message = %r.message_id, error = %e, "unusable record: reported as a batch item failure");
                    failures.push(r.message_id);
                }
            }
        }
        let named = named_of(changes);
        if full || !named.is_empty() {
            let filter = if full { None } else { Some(&named) };
            match self.run(filter, budget).await {
                Ok(summary) => tracing::info!(summary = %summary.to_json(), "batch handled"),
                Err(e) => {
                    tracing::error!(error = %e, "could not reconcile the batch: its records will be retried");
                    failures.extend(used);
                }
            }
        }
        let items: Vec<Value> = failures
            .into_iter()
            .map(|id| json!({ "itemIdentifier": id }))
            .collect();
        json!({ "batchItemFailures": items })
    }

    /// One pass, bounded by the budget. `named: None` is a full resync.
    async fn run(
        &self,
        named: Option<&crate::reconcile::Named>,
        budget: Duration,
    ) -> Result<Summary, ReconcileError> {
        let r = &self.parts.reconciler;
        let targets = match named {
            Some(n) => {
                let t = r.resolve_named(n).await?;
                if t.is_empty() {
                    return Ok(Summary::default());
                }
                t
            }
            None => Vec::new(),
        };
        let settle = (budget / 3).min(Duration::from_secs(15));
        let assessment = r.assess_settled(&self.scope, &targets, settle).await?;
        let mut summary = Summary {
            decided: assessment.services.len(),
            settling: assessment
                .services
                .iter()
                .filter(|a| a.decision.label() == "settling")
                .count(),
            held: assessment
                .services
                .iter()
                .filter(|a| a.decision.label() == "held")
                .count(),
            ..Default::default()
        };
        let set = assessment.change_set();
        if set.is_empty() {
            return Ok(summary);
        }
        let left = budget.saturating_sub(Duration::from_millis(200));
        match tokio::time::timeout(left, self.parts.rollout.execute(&set)).await {
            Ok(outcomes) => {
                for (key, o) in outcomes {
                    match o {
                        Outcome::Triggered { .. } | Outcome::Healthy { .. } => {
                            summary.triggered.push(key.to_string())
                        }
                        Outcome::Failed { .. } | Outcome::Halted { .. } => {
                            summary.failed.push(key.to_string())
                        }
                    }
                }
            }
            Err(_) => {
                tracing::warn!(
                    "the invocation's deadline came first: the next resync rolls the rest"
                );
                summary.cut_short = true;
            }
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventbridge_events_sqs_batches_schedules_and_garbage() {
        let direct: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/events/rotation_succeeded.json"
        ))
        .expect("fixture");
        assert!(matches!(dispatch(direct.clone()), Ok(Payload::Event(_))));
        let schedule: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/events/scheduled.json"))
                .expect("fixture");
        match dispatch(schedule) {
            Ok(Payload::Event(v)) => assert_eq!(event::parse_value(v), Ok(Parsed::Resync)),
            other => panic!("{other:?}"),
        }
        let batch: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/lambda/sqs_batch.json"))
                .expect("fixture");
        match dispatch(batch) {
            Ok(Payload::SqsBatch(records)) => {
                assert_eq!(records.len(), 3);
                assert_eq!(
                    records[0].message_id,
                    "059f36b4-87a3-44ab-83d2-661975830a7d"
                );
                assert!(event::parse(&records[0].body).is_ok());
                assert!(event::parse(&records[1].body).is_err(), "the poison record");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dispatch(json!("hello")), Err(PayloadError::NotAnObject));
        assert_eq!(dispatch(json!([1, 2])), Err(PayloadError::NotAnObject));
        assert_eq!(
            dispatch(json!({"Records": [{"body": "{}"}]})),
            Err(PayloadError::RecordWithoutId(0))
        );
        // An object that is no EventBridge event dispatches as one, and is then rejected.
        match dispatch(json!({"hello": "world"})) {
            Ok(Payload::Event(v)) => assert!(event::parse_value(v).is_err()),
            other => panic!("{other:?}"),
        }
    }
}
