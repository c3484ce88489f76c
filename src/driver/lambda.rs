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
//! healthy, a later wave once an invocation sees the earlier one healthy, and if a rollout
//! failed or is stuck, the rest are held and a `Rollout Held` event says so (see
//! [`crate::decide::gate`] and [`crate::decide::hold_failed`]). What the deadline cuts short,
//! the next resync picks up. Outcome events are sent before the invocation answers.
//!
//! Cold start: nothing is scanned at init; the SDK clients and the task-definition cache are
//! built once and reused by every invocation of the execution environment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::aws::queue::{Queue, SdkQueue};
use crate::clock::SystemClock;
use crate::decide::Kind;
use crate::driver::setup::Parts;
use crate::event::{self, Changes, Parsed};
use crate::intake::{self, Taken};
use crate::lease::{DynamoStore, Keeper, Leadership, Role};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::plan::ServiceKey;
use crate::reconcile::{Mode, Pass, ReconcileError, Request};
use crate::rollout::Outcome;
use crate::targets::{Fleet, Managed};

/// One SQS record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `messageId`, the identifier `batchItemFailures` names.
    pub message_id: String,
    /// The body: an EventBridge event.
    pub body: String,
}

/// The answer to an SQS batch, for an event source mapping with `ReportBatchItemFailures`:
/// exactly the records to deliver again.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchResponse {
    /// The records that could not be parsed or processed.
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<ItemFailure>,
}

/// One record to deliver again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ItemFailure {
    /// The record's `messageId`.
    #[serde(rename = "itemIdentifier")]
    pub item_identifier: String,
}

/// What an invocation answers, typed: the runtime serialises it. A direct event's answer is
/// informational; an SQS batch's is the contract with the event source mapping.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// An SQS batch: exactly the records to deliver again.
    Batch(BatchResponse),
    /// A direct event that ran a pass: what the pass did.
    Pass(PassSummary),
    /// A direct event that needed no pass, and why.
    Note(Note),
}

impl Answer {
    /// The answer as JSON (what the runtime sends).
    pub fn to_value(&self) -> Value {
        match self {
            Answer::Batch(b) => b.clone().into_value(),
            Answer::Pass(p) => serde_json::to_value(p).unwrap_or(Value::Null),
            Answer::Note(n) => serde_json::to_value(n).unwrap_or(Value::Null),
        }
    }
}

/// Why a direct event needed no pass (`{"ignored": "..."}` and so on).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Note {
    /// Needs no action (or a later pass decided it already).
    Ignored(String),
    /// Another account's event: nothing rolled or dated.
    Foreign(String),
    /// Handed on: another invocation holds the lease.
    Deferred(String),
    /// Left to the next schedule: another invocation holds the lease.
    Skipped(String),
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PassSummary {
    /// Services decided.
    pub decided: usize,
    /// Decisions by kind.
    pub decisions: BTreeMap<&'static str, usize>,
    /// Services settling.
    pub settling: usize,
    /// Services held.
    pub held: usize,
    /// Services rolled (or no longer needing it).
    pub triggered: Vec<String>,
    /// Services whose rollout failed or was halted.
    pub failed: Vec<String>,
    /// Whether the deadline cut the pass short.
    pub cut_short_by_deadline: bool,
    /// When to look again, if something settles.
    pub look_again_after_s: Option<u64>,
}

impl std::fmt::Display for PassSummary {
    /// One line of JSON, for the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

impl BatchResponse {
    fn failing(ids: Vec<String>) -> Self {
        BatchResponse {
            batch_item_failures: ids
                .into_iter()
                .map(|item_identifier| ItemFailure { item_identifier })
                .collect(),
        }
    }

    /// The answer as the runtime sends it (built without a fallible serialisation, so that no
    /// error path could ever answer "nothing failed").
    fn into_value(self) -> Value {
        let items: Vec<Value> = self
            .batch_item_failures
            .into_iter()
            .map(|f| json!({ "itemIdentifier": f.item_identifier }))
            .collect();
        json!({ "batchItemFailures": items })
    }
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

/// Why an invocation failed as a whole (Lambda reports it; the caller retries or dead-letters).
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The payload is unusable.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// AWS failed while deciding.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// A change must wait and could not be handed to a later invocation: failing makes the
    /// caller deliver the event again.
    #[error("a change that must wait could not be sent to the change queue")]
    Deferral,
    /// The operator's own account is unknown, so no event can be told to be ours.
    #[error("cannot learn the operator's own account")]
    Identity(#[source] crate::aws::AwsError),
}

/// The handler, built once per execution environment.
pub struct Handler {
    reconciler: Fleet,
    notifier: Arc<Notifier>,
    /// The change queue (`[events] queue_url`): where a change that must wait is handed to a
    /// later invocation.
    queue: Option<Arc<dyn Queue>>,
    stats: Arc<crate::aws::guard::Stats>,
    /// The single-writer lease, when `[lease] table` names one: concurrent invocations take
    /// turns.
    keeper: Option<Arc<Keeper>>,
    /// What the metric documents have reported so far.
    sent: std::sync::Mutex<crate::emf::Sent>,
    /// Time kept back from the deadline for answering.
    margin: Duration,
    /// Changes a pass of this execution environment has decided.
    recent: intake::Recent,
}

/// A batch whose pass failed as a whole is handed on to be tried again after this (doubled at
/// each retry, [`intake::RETRIES`] at most).
const FAILED_PASS_RETRY: Duration = Duration::from_secs(30);

/// How long to delay a change that must wait before it is decided again: its wait, but at most
/// the 15 minutes SQS can delay a message. A longer wait (a maintenance window tomorrow) is
/// carried forward 15 minutes at a time, so that what only the event can tell (a label moved
/// back) is still known when the window opens.
fn deferrable(pass: &Pass) -> Option<Duration> {
    pass.requeue_after
        .map(|d| d.min(Duration::from_secs(15 * 60)))
}

/// What one pass did, as the invocation answers it.
fn summary(pass: &Pass) -> PassSummary {
    let decisions: BTreeMap<&'static str, usize> = pass
        .decisions()
        .into_iter()
        .map(|(k, n)| (k.label(), n))
        .collect();
    let n = |k: Kind| pass.decisions().get(&k).copied().unwrap_or(0);
    let (ok, bad): (Vec<_>, Vec<_>) = pass.outcomes.iter().partition(|(_, o)| o.is_success());
    let names = |v: Vec<&(ServiceKey, Outcome)>| -> Vec<String> {
        v.into_iter().map(|(k, _)| k.to_string()).collect()
    };
    PassSummary {
        decided: pass.assessment.services.len(),
        decisions,
        settling: n(Kind::Settling),
        held: n(Kind::Held),
        triggered: names(ok),
        failed: names(bad),
        cut_short_by_deadline: pass.cut_short,
        look_again_after_s: pass.requeue_after.map(|d| d.as_secs()),
    }
}

impl Handler {
    /// A handler over parts assembled in [`Mode::FireAndForget`](crate::reconcile::Mode), whose
    /// progress is `notifier`.
    pub fn new(parts: Parts, notifier: Arc<Notifier>, queue: Option<Arc<dyn Queue>>) -> Self {
        Self::over(
            Fleet::single(parts.reconciler, parts.stats),
            notifier,
            queue,
        )
    }

    /// A handler over every target of `fleet` (assembled in
    /// [`Mode::FireAndForget`](crate::reconcile::Mode)).
    pub fn over(fleet: Fleet, notifier: Arc<Notifier>, queue: Option<Arc<dyn Queue>>) -> Self {
        Handler {
            stats: fleet.stats().clone(),
            reconciler: fleet,
            notifier,
            queue,
            keeper: None,
            sent: std::sync::Mutex::default(),
            margin: Duration::from_secs(5),
            // Remembered for `[resync] interval`'s default, with the default allowed skew;
            // `with_clock_skew` sets both from the configuration.
            recent: intake::Recent::new(
                crate::config::ResyncConfig::default().interval.0,
                crate::config::DecideConfig::default().clock_skew.0,
            ),
        }
    }

    /// The metrics `serve` shows on `/metrics`, as embedded-metric-format documents on stdout
    /// (one JSON document per line, which CloudWatch Logs turns into metrics). Not `tracing`:
    /// CloudWatch reads a document only when it is the whole line.
    fn emit_metrics(&self) {
        let text = self.notifier.metrics().render(&self.stats);
        let now = self.reconciler.clock().now().timestamp_millis();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        for doc in crate::emf::documents(&text, &mut sent, now) {
            println!("{doc}");
        }
    }

    /// Dates the memory of decided changes with the allowed clock skew (`[decide] clock_skew`)
    /// and keeps it for `keep` (the resync period).
    pub fn with_clock_skew(mut self, skew: Duration, keep: Duration) -> Self {
        self.recent = intake::Recent::new(keep, skew);
        self
    }

    /// Takes turns with concurrent invocations through `keeper` (whose leadership the parts'
    /// engine must have been assembled with).
    pub fn with_lease(mut self, keeper: Arc<Keeper>) -> Self {
        self.keeper = Some(keeper);
        self
    }

    /// Hands the events of a change that must wait to a later invocation: each distinct body is
    /// sent again to the change queue, visible after `after` (at most 15 minutes), so that what
    /// only an event can tell (a label moved back to an older version) survives until its whole
    /// change set is done. The new message's receive count starts again: waiting never sends a
    /// valid event to the dead-letter queue. Returns the bodies that could not be handed on.
    async fn defer(&self, bodies: &[String], after: Duration) -> Vec<String> {
        let Some(queue) = &self.queue else {
            tracing::warn!(
                "a change must wait, and no [events] queue_url is configured to hand it on: the scheduled resync will decide it (a label moved back to an older version is then missed)"
            );
            return Vec::new();
        };
        let mut distinct: Vec<&String> = bodies.iter().collect();
        distinct.sort();
        distinct.dedup();
        let mut failed = Vec::new();
        for body in distinct {
            match queue.send(body, after).await {
                Ok(()) => tracing::info!(
                    after_s = after.as_secs(),
                    "change handed to a later invocation"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not hand a waiting change on");
                    failed.push(body.clone());
                }
            }
        }
        failed
    }

    /// [`answer`](Self::answer), as JSON.
    pub async fn handle(
        &self,
        payload: Value,
        deadline: chrono::DateTime<chrono::Utc>,
    ) -> Result<Value, InvocationError> {
        self.answer(payload, deadline).await.map(|a| a.to_value())
    }

    /// Handles one invocation; `deadline` is the invocation's, as a wall-clock time. Every
    /// outcome event is sent before it returns.
    pub async fn answer(
        &self,
        payload: Value,
        deadline: chrono::DateTime<chrono::Utc>,
    ) -> Result<Answer, InvocationError> {
        let now = self.reconciler.clock().now();
        let budget = (deadline - now)
            .to_std()
            .unwrap_or_default()
            .saturating_sub(self.margin);
        let answer = match self.keeper.clone() {
            None => self.dispatched(payload, budget).await,
            Some(keeper) => self.in_turn(keeper, payload, budget).await,
        };
        self.notifier.flush().await;
        self.emit_metrics();
        answer
    }

    /// Runs the invocation holding the lease (renewed while it works, given up after), or, when
    /// another invocation holds it, hands its changes on.
    async fn in_turn(
        &self,
        keeper: Arc<Keeper>,
        payload: Value,
        budget: Duration,
    ) -> Result<Answer, InvocationError> {
        if let Role::Standby { leader } = keeper.step().await {
            tracing::info!(leader = ?leader, "another invocation holds the lease: handing this one's changes on");
            return self.not_my_turn(payload, keeper.ttl()).await;
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let renewing = {
            let keeper = keeper.clone();
            tokio::spawn(async move { keeper.run(stopped).await })
        };
        let answer = self.dispatched(payload, budget).await;
        let _ = stop.send(true);
        let _ = renewing.await;
        answer
    }

    /// What an invocation that does not hold the lease does: change events go back to the queue,
    /// delayed by the lease time (a new message, so no receive count grows); a scheduled resync
    /// is left to the next schedule; unusable records are still reported.
    async fn not_my_turn(
        &self,
        payload: Value,
        after: Duration,
    ) -> Result<Answer, InvocationError> {
        let managed = self.managed().await?;
        // What is handed on is counted by the invocation that decides it; what is dropped here
        // (another account's event, one that needs nothing) is counted now.
        let seen = |taken: &Taken, id: &str| {
            if matches!(taken, Taken::Foreign(_) | Taken::Ignored(_)) {
                intake::record(taken, id, self.notifier.metrics());
            }
        };
        match dispatch(payload)? {
            Payload::Event(v) => {
                let body = v.to_string();
                let taken = intake::take_value(v, &managed);
                seen(&taken, "-");
                match taken {
                    Taken::Poison(e) => Err(PayloadError::from(e).into()),
                    Taken::Work(Parsed::Change(_)) => {
                        if self.queue.is_none() || !self.defer(&[body], after).await.is_empty() {
                            return Err(InvocationError::Deferral);
                        }
                        Ok(Answer::Note(Note::Deferred(
                            "another invocation holds the lease".into(),
                        )))
                    }
                    _ => Ok(Answer::Note(Note::Skipped(
                        "another invocation holds the lease".into(),
                    ))),
                }
            }
            Payload::SqsBatch(records) => {
                let mut failures = Vec::new();
                let mut changes = Vec::new();
                for r in records {
                    let taken = intake::take(&r.body, &managed);
                    seen(&taken, &r.message_id);
                    match taken {
                        Taken::Work(Parsed::Change(_)) => changes.push((r.message_id, r.body)),
                        Taken::Poison(_) => failures.push(r.message_id),
                        _ => {}
                    }
                }
                let bodies: Vec<String> = changes.iter().map(|(_, b)| b.clone()).collect();
                let not_handed = if self.queue.is_some() {
                    self.defer(&bodies, after).await
                } else {
                    bodies
                };
                failures.extend(
                    changes
                        .into_iter()
                        .filter(|(_, b)| not_handed.contains(b))
                        .map(|(id, _)| id),
                );
                Ok(Answer::Batch(BatchResponse::failing(failures)))
            }
        }
    }

    async fn dispatched(
        &self,
        payload: Value,
        budget: Duration,
    ) -> Result<Answer, InvocationError> {
        let payload = dispatch(payload).inspect_err(|_| self.notifier.metrics().event("poison"))?;
        let managed = self.managed().await?;
        match payload {
            Payload::Event(v) => {
                let body = v.to_string();
                let taken = intake::take_value(v, &managed);
                intake::record(&taken, "-", self.notifier.metrics());
                let parsed = match taken {
                    Taken::Work(parsed) => parsed,
                    Taken::Ignored(why) => return Ok(Answer::Note(Note::Ignored(why))),
                    Taken::Foreign(why) => return Ok(Answer::Note(Note::Foreign(why))),
                    Taken::Poison(e) => return Err(PayloadError::from(e).into()),
                };
                if let Parsed::Change(c) = &parsed {
                    if !intake::handed_on(&body) && self.recent.covers(c) {
                        tracing::info!("a pass that began after this change has decided it");
                        return Ok(Answer::Note(Note::Ignored(
                            "decided already by a later pass".into(),
                        )));
                    }
                }
                let retries = intake::retries_of(&body);
                let mut changes = Changes::default();
                changes.add(&parsed);
                let resync = changes.resync;
                let started = self.reconciler.clock().now();
                // A failed pass answers with an error: the caller delivers the event again, and
                // that delivery is no copy (nothing is remembered).
                let pass = self.run(&changes, budget).await?;
                let look = intake::next_look(deferrable(&pass), pass.target_retry, retries);
                if let (Some(after), false) = (look.after, resync) {
                    let body = intake::with_retries(&body, retries + u32::from(look.retry));
                    if !self.defer(&[body], after).await.is_empty() {
                        return Err(InvocationError::Deferral);
                    }
                }
                // Done with, or handed on: a later copy needs no pass of its own.
                self.recent.record(&changes, started);
                Ok(Answer::Pass(summary(&pass)))
            }
            Payload::SqsBatch(records) => {
                Ok(Answer::Batch(self.batch(records, budget, &managed).await))
            }
        }
    }

    /// Whose events count (learned at init; remembered).
    async fn managed(&self) -> Result<Managed, InvocationError> {
        self.reconciler
            .managed()
            .await
            .map_err(InvocationError::Identity)
    }

    async fn batch(
        &self,
        records: Vec<Record>,
        budget: Duration,
        managed: &Managed,
    ) -> BatchResponse {
        let sorted = intake::sort(
            records
                .into_iter()
                .map(|r| (r.message_id.clone(), r.message_id, r.body)),
            managed,
            self.notifier.metrics(),
            &self.recent,
        );
        // Unusable records are reported as batch item failures: the queue's redrive policy
        // dead-letters them; everything else is acknowledged or handed on.
        let mut failures: Vec<String> = sorted.poison;
        let changes = sorted.changes;
        let used = sorted.used;
        if !changes.is_empty() {
            let started = self.reconciler.clock().now();
            let result = self.run(&changes, budget).await;
            // A target that failed, or a pass that failed as a whole, is retried a bounded
            // number of times (each record's count travels with the event it hands on), then
            // left to the scheduled resync: nothing is re-sent forever, and no usable event is
            // dead-lettered.
            let (own, failed) = match &result {
                Ok(pass) => {
                    tracing::info!(summary = %summary(pass), "batch handled");
                    (deferrable(pass), pass.target_retry)
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not reconcile the batch");
                    (None, Some(FAILED_PASS_RETRY))
                }
            };
            let mut later: BTreeMap<Duration, Vec<(String, String)>> = BTreeMap::new();
            for u in used.iter().filter(|u| u.is_change) {
                let look = intake::next_look(own, failed, u.retries);
                if let Some(after) = look.after {
                    let next = u.retries + u32::from(look.retry);
                    later
                        .entry(after)
                        .or_default()
                        .push((u.handle.clone(), intake::with_retries(&u.body, next)));
                }
            }
            let mut kept = true;
            for (after, bodies) in later {
                let sent: Vec<String> = bodies.iter().map(|(_, b)| b.clone()).collect();
                let not_handed = self.defer(&sent, after).await;
                // What could not be handed on stays on the queue and comes back.
                kept &= not_handed.is_empty();
                failures.extend(
                    bodies
                        .into_iter()
                        .filter(|(_, b)| not_handed.contains(b))
                        .map(|(id, _)| id),
                );
            }
            // Done with, or handed on whole: a later copy needs no pass of its own. (A record
            // left on the queue comes back as itself, and must be decided again.)
            if kept {
                self.recent.record(&changes, started);
            }
        }
        BatchResponse::failing(failures)
    }

    /// One pass, bounded by the budget.
    async fn run(&self, changes: &Changes, budget: Duration) -> Result<Pass, ReconcileError> {
        self.notifier
            .metrics()
            .reconcile(intake::pass_kind(changes));
        let req = Request {
            budget: Some(budget),
            ..Request::changes(changes.clone())
        };
        let pass = self.reconciler.pass(&req).await?;
        self.notifier.after_pass(&pass);
        Ok(pass)
    }
}

/// Runs the Lambda runtime with a handler built once from the configuration: SDK clients, the
/// task-definition cache and the notifier live as long as the execution environment.
pub async fn run(
    config: &crate::config::Config,
    aws: &crate::aws::sdk::SdkSettings,
) -> Result<(), LambdaError> {
    use lambda_runtime::{service_fn, LambdaEvent};
    lambda_environment(|k| std::env::var(k).ok())?;
    let sdk = crate::driver::setup::sdk(config, aws).await?;
    let notifier = Arc::new(Notifier::new(Arc::new(Metrics::new()), sdk.bus.clone()));
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(SystemClock);
    let keeper = (!config.lease.table.is_empty()).then(|| {
        let store = Arc::new(DynamoStore::new(&sdk.config, &config.lease.table, "serve"));
        Arc::new(Keeper::new(
            store,
            clock.clone(),
            config.lease.ttl.0,
            crate::driver::serve::replica_name(),
        ))
    });
    let leadership = keeper
        .as_ref()
        .map_or_else(Leadership::sole, |k| k.leadership());
    let fleet = crate::driver::setup::fleet(
        config,
        &sdk,
        clock,
        notifier.clone(),
        Mode::FireAndForget,
        Some(leadership),
        &[],
        &[],
    )
    .await?;
    // At init, once: which events are ours.
    let own = fleet.own_account().await.map_err(LambdaError::Identity)?;
    tracing::info!(account = %own, "the operator's own account: events of accounts not managed are dropped");
    let queue = (!config.events.queue_url.is_empty())
        .then(|| Arc::new(SdkQueue::new(&sdk.config, &config.events.queue_url)) as Arc<dyn Queue>);
    let mut handler = Handler::over(fleet, notifier, queue)
        .with_clock_skew(config.decide.clock_skew.0, config.resync.interval.0);
    if let Some(k) = keeper {
        handler = handler.with_lease(k);
    }
    let handler = Arc::new(handler);
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<Value>| {
        let handler = handler.clone();
        async move {
            let deadline = i64::try_from(ev.context.deadline)
                .ok()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::seconds(60));
            handler
                .answer(ev.payload, deadline)
                .await
                .map_err(|e| -> lambda_runtime::Error { Box::new(e) })
        }
    }))
    .await
    .map_err(|e| LambdaError::Runtime(e.to_string()))
}

/// The variables the Lambda runtime sets: without them `lambda_runtime` would panic.
const LAMBDA_VARIABLES: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
];

/// Checks, before the runtime starts, that this is a Lambda execution environment.
fn lambda_environment(env: impl Fn(&str) -> Option<String>) -> Result<(), LambdaError> {
    let missing: Vec<&str> = LAMBDA_VARIABLES
        .into_iter()
        .filter(|k| env(k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Err(LambdaError::NotInLambda(format!(
            "{} not set (Lambda sets them for the `bootstrap` of a provided.al2023 function); \
             outside Lambda use `serve`, `reconcile` or `plan`",
            missing.join(", ")
        )));
    }
    let memory = env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").unwrap_or_default();
    if memory.parse::<i32>().is_err() {
        return Err(LambdaError::NotInLambda(format!(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE={memory:?} is not a number of megabytes"
        )));
    }
    let api = env("AWS_LAMBDA_RUNTIME_API").unwrap_or_default();
    if axum::http::Uri::try_from(api.as_str()).is_err() {
        return Err(LambdaError::NotInLambda(format!(
            "AWS_LAMBDA_RUNTIME_API={api:?} is not a host:port"
        )));
    }
    Ok(())
}

/// Why the Lambda driver could not run.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// Started outside a Lambda execution environment.
    #[error("not in an AWS Lambda environment: {0}")]
    NotInLambda(String),
    /// The SDK could not be set up.
    #[error(transparent)]
    Setup(#[from] crate::aws::sdk::SdkSetupError),
    /// The targets could not be set up.
    #[error(transparent)]
    Targets(#[from] crate::driver::setup::FleetSetupError),
    /// The Lambda runtime stopped with an error.
    #[error("Lambda runtime: {0}")]
    Runtime(String),
    /// The operator's own account could not be learned at init.
    #[error("cannot learn the operator's own account")]
    Identity(#[source] crate::aws::AwsError),
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
            Ok(Payload::Event(v)) => {
                assert_eq!(event::parse_value(v).map(|(p, _)| p), Ok(Parsed::Resync))
            }
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
