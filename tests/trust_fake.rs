//! Trust boundaries, over the in-memory fake on tokio's paused clock, through both drivers
//! (`serve` over an in-memory queue, the Lambda handler over SQS-shaped batches): an event is
//! evidence about its own account only; a target that stays down costs a bounded number of
//! passes; a flood of copies of one change costs one pass.

use std::sync::Arc;
use std::time::Duration;

use ecs_reloader::aws::fake::{FakeAws, MemoryQueue, SentQueue};
use ecs_reloader::aws::queue::Queue;
use ecs_reloader::aws::ErrorKind;
use ecs_reloader::clock::Clock;
use ecs_reloader::config::{Config, Dur};
use ecs_reloader::driver::lambda::Handler;
use ecs_reloader::driver::serve::{Server, Settings};
use ecs_reloader::driver::setup::{self, TargetSpec};
use ecs_reloader::metrics::Metrics;
use ecs_reloader::notify::Notifier;
use ecs_reloader::reconcile::Mode;
use ecs_reloader::reference::Site;
use ecs_reloader::targets::Fleet;
use serde_json::{json, Value};

/// An account this operator does not manage (another member of the organisation).
const STRANGER: &str = "999988887777";
/// A second managed account, reached as a target.
const MEMBER: &str = "444455556666";

fn site(name: &str) -> Site {
    Site::Secret {
        container: "app".into(),
        name: name.into(),
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.events.debounce = Dur(Duration::ZERO);
    config.rollout.canary = false;
    config.rollout.poll_interval = Dur(Duration::from_secs(5));
    config
}

/// `/app/flag`, labelled `live` on its first version, resolved by `api` as `/app/flag:live`;
/// then a second version is written and not labelled (yet). Nothing is stale.
async fn labelled_world(fake: &FakeAws) {
    let v1 = fake.put_parameter("/app/flag");
    fake.label_parameter("/app/flag", v1, "live");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("api", &[(site("FLAG"), "/app/flag:live")]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_parameter("/app/flag");
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// CloudTrail's record of `LabelParameterVersion` moving `live` on `/app/flag`, in `account`.
fn label_moved(clock: &Arc<dyn Clock>, account: Option<&str>) -> String {
    let mut v = json!({
        "version": "0", "id": "l", "source": "aws.ssm", "detail-type": "AWS API Call via CloudTrail",
        "region": "eu-west-1",
        "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "detail": {"eventName": "LabelParameterVersion", "eventSource": "ssm.amazonaws.com",
                   "requestParameters": {"name": "/app/flag", "labels": ["live"]}}
    });
    if let Some(a) = account {
        v["account"] = json!(a);
        v["detail"]["recipientAccountId"] = json!(a);
    }
    v.to_string()
}

fn counter(metrics: &Metrics, line: &str) -> i64 {
    metrics
        .render(&Default::default())
        .lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn foreign(metrics: &Metrics) -> i64 {
    counter(
        metrics,
        r#"ecs_reloader_events_received_total{kind="foreign"}"#,
    )
}

fn event_passes(metrics: &Metrics) -> i64 {
    counter(metrics, r#"ecs_reloader_reconciles_total{kind="event"}"#)
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.serving.await;
    }
}

/// `serve` over `fleet` (assembled with `notifier`), resyncing once a day.
async fn serve(fleet: Fleet, notifier: Arc<Notifier>, queue: Arc<MemoryQueue>) -> Running {
    let mut settings = Settings::from_config(&config());
    settings.resync_interval = Duration::from_secs(24 * 3600);
    let server = Server::over(fleet, Some(queue as Arc<dyn Queue>), notifier, settings);
    let status = server.status();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(server.run_until(rx));
    while status.not_ready().is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Running { stop, serving }
}

/// One target: the operator's own account and region.
fn single(fake: &FakeAws, clock: &Arc<dyn Clock>, notifier: &Arc<Notifier>, mode: Mode) -> Fleet {
    let parts = setup::assemble(
        &config(),
        fake.clients(),
        clock.clone(),
        notifier.clone(),
        mode,
    );
    Fleet::single(parts.reconciler, parts.stats)
}

/// Two targets: the operator's own account (`own`) and [`MEMBER`] (`member`), one region.
fn pair(
    own: &FakeAws,
    member: &FakeAws,
    clock: &Arc<dyn Clock>,
    notifier: &Arc<Notifier>,
    mode: Mode,
) -> Fleet {
    let spec = |account: &str| TargetSpec {
        account: account.into(),
        region: "eu-west-1".into(),
        role: None,
        clusters: vec!["prod".into()],
    };
    setup::assemble_fleet(
        &config(),
        vec![(spec(""), own.clients()), (spec(MEMBER), member.clients())],
        clock.clone(),
        notifier.clone(),
        mode,
        None,
    )
    .with_identity(own.clients().identity)
}

fn observed() -> (Arc<Metrics>, Arc<Notifier>) {
    let metrics = Arc::new(Metrics::new());
    (metrics.clone(), Arc::new(Notifier::new(metrics, None)))
}

async fn drained(queue: &MemoryQueue) {
    for _ in 0..10_000 {
        if queue.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the queue was never drained");
}

/// The issue's reproduction: another account's `LabelParameterVersion` on a parameter that has
/// our parameter's name moved our `name:label` dependant. It rolls nothing now, in `serve` with
/// one target; the same move made in our own account still rolls it.
#[tokio::test(start_paused = true)]
async fn serve_with_one_target_drops_another_accounts_event() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    labelled_world(&fake).await;
    let (metrics, notifier) = observed();
    let queue = Arc::new(MemoryQueue::new(10));
    let running = serve(
        single(&fake, &clock, &notifier, Mode::Watch),
        notifier,
        queue.clone(),
    )
    .await;

    queue.push(&label_moved(&clock, Some(STRANGER)));
    drained(&queue).await;
    assert!(fake.updates().is_empty(), "nothing rolled");
    assert_eq!(queue.deleted(), 1, "acknowledged, not dead-lettered");
    assert_eq!(foreign(&metrics), 1);
    assert_eq!(event_passes(&metrics), 0, "no pass for it");

    // Our own account's move of the same label, with and without an envelope account.
    let v2 = fake.put_parameter("/app/flag");
    fake.label_parameter("/app/flag", v2, "live");
    tokio::time::sleep(Duration::from_secs(2)).await;
    queue.push(&label_moved(&clock, Some(fake.account())));
    drained(&queue).await;
    assert_eq!(fake.rollouts_of("prod", "api"), 1, "our own move rolls it");
    assert_eq!(foreign(&metrics), 1);
    running.stop().await;
}

/// With several targets, an event of an unmanaged account is dropped, and a managed member's
/// goes to that member's target only.
#[tokio::test(start_paused = true)]
async fn serve_with_several_targets_drops_another_accounts_event_and_routes_a_members() {
    let (own, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let member = FakeAws::new("eu-west-1", clock.clone());
    labelled_world(&own).await;
    labelled_world(&member).await;
    let (metrics, notifier) = observed();
    let queue = Arc::new(MemoryQueue::new(10));
    let running = serve(
        pair(&own, &member, &clock, &notifier, Mode::Watch),
        notifier,
        queue.clone(),
    )
    .await;

    queue.push(&label_moved(&clock, Some(STRANGER)));
    drained(&queue).await;
    assert!(own.updates().is_empty() && member.updates().is_empty());
    assert_eq!(foreign(&metrics), 1);

    let v2 = member.put_parameter("/app/flag");
    member.label_parameter("/app/flag", v2, "live");
    tokio::time::sleep(Duration::from_secs(2)).await;
    queue.push(&label_moved(&clock, Some(MEMBER)));
    drained(&queue).await;
    assert_eq!(
        member.rollouts_of("prod", "api"),
        1,
        "the member's dependant"
    );
    assert!(own.updates().is_empty(), "not the own account's namesake");
    running.stop().await;
}

fn batch(bodies: &[String]) -> Value {
    let records: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| json!({"messageId": format!("m{i}"), "body": b}))
        .collect();
    json!({ "Records": records })
}

fn deadline(clock: &Arc<dyn Clock>) -> chrono::DateTime<chrono::Utc> {
    clock.now() + chrono::Duration::seconds(60)
}

#[tokio::test(start_paused = true)]
async fn the_lambda_drops_another_accounts_event_with_one_target_and_with_several() {
    // One target.
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    labelled_world(&fake).await;
    let (metrics, notifier) = observed();
    let fleet = single(&fake, &clock, &notifier, Mode::FireAndForget);
    let h = Handler::over(fleet, notifier, Some(Arc::new(SentQueue::default())));
    let r = h
        .handle(
            batch(&[label_moved(&clock, Some(STRANGER))]),
            deadline(&clock),
        )
        .await
        .expect("answers");
    assert_eq!(r, json!({"batchItemFailures": []}), "acknowledged");
    let direct: Value = serde_json::from_str(&label_moved(&clock, Some(STRANGER))).expect("json");
    let r = h.handle(direct, deadline(&clock)).await.expect("answers");
    assert!(fake.updates().is_empty());
    assert!(r.get("foreign").is_some(), "{r}");
    assert_eq!(foreign(&metrics), 2);
    let v2 = fake.put_parameter("/app/flag");
    fake.label_parameter("/app/flag", v2, "live");
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.handle(batch(&[label_moved(&clock, None)]), deadline(&clock))
        .await
        .expect("answers");
    assert_eq!(
        fake.rollouts_of("prod", "api"),
        1,
        "an event naming no account is the operator's own"
    );

    // Several targets.
    let (own, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let member = FakeAws::new("eu-west-1", clock.clone());
    labelled_world(&own).await;
    labelled_world(&member).await;
    let (metrics, notifier) = observed();
    let fleet = pair(&own, &member, &clock, &notifier, Mode::FireAndForget);
    let h = Handler::over(fleet, notifier, Some(Arc::new(SentQueue::default())));
    h.handle(
        batch(&[label_moved(&clock, Some(STRANGER))]),
        deadline(&clock),
    )
    .await
    .expect("answers");
    assert!(own.updates().is_empty() && member.updates().is_empty());
    assert_eq!(foreign(&metrics), 1);
}

/// The operator's own account and a member's, each with `prod/api` resolving its `app/db`;
/// returns the last secret's ARN (the fake's ARNs do not name the member's account).
async fn two_accounts() -> (FakeAws, FakeAws, Arc<dyn Clock>, String) {
    let (own, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let member = FakeAws::new("eu-west-1", clock.clone());
    let mut secret = String::new();
    for fake in [&own, &member] {
        secret = fake.create_secret("app/db");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let td = fake.register_task_definition("api", &[(site("DB"), secret.as_str())]);
        fake.create_service("prod", "api", &td, 1, &[]);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    (own, member, clock, secret)
}

/// A member account whose calls are refused for an hour: its change is retried a bounded
/// number of times with backoff, then left to the resync; the other target's dependant is
/// rolled at once, and the message is acknowledged.
#[tokio::test(start_paused = true)]
async fn serve_gives_a_failing_target_a_bounded_number_of_retries() {
    let (own, member, clock, secret) = two_accounts().await;
    let (metrics, notifier) = observed();
    let queue = Arc::new(MemoryQueue::new(10));
    let running = serve(
        pair(&own, &member, &clock, &notifier, Mode::Watch),
        notifier,
        queue.clone(),
    )
    .await;
    member.fail_next("ecs:ListServices", 100_000, ErrorKind::AccessDenied);
    member.fail_next("ecs:DescribeServices", 100_000, ErrorKind::AccessDenied);
    own.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    queue.push(&json!({
        "source": "aws.secretsmanager", "detail-type": "AWS Service Event via CloudTrail",
        "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": secret}}
    }).to_string());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        own.rollouts_of("prod", "api"),
        1,
        "the healthy target rolled"
    );
    assert!(queue.is_empty(), "the message was acknowledged in the end");
    let passes = event_passes(&metrics);
    assert_eq!(
        passes, 6,
        "one pass and five retries in an hour (every 60 s this was sixty)"
    );
    running.stop().await;
}

/// The Lambda's retries of a failing target travel with the events it hands on: five, with
/// backoff, then the change is acknowledged and left to the scheduled resync.
#[tokio::test(start_paused = true)]
async fn the_lambda_gives_a_failing_target_a_bounded_number_of_retries() {
    let (own, member, clock, secret) = two_accounts().await;
    member.fail_next("ecs:ListServices", 100_000, ErrorKind::AccessDenied);
    member.fail_next("ecs:DescribeServices", 100_000, ErrorKind::AccessDenied);
    own.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (metrics, notifier) = observed();
    let queue = Arc::new(SentQueue::default());
    let fleet = pair(&own, &member, &clock, &notifier, Mode::FireAndForget);
    let h = Handler::over(fleet, notifier, Some(queue.clone()));
    let mut body = json!({
        "source": "aws.secretsmanager", "detail-type": "AWS Service Event via CloudTrail",
        "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": secret}}
    })
    .to_string();
    let mut delays = Vec::new();
    for round in 0..20 {
        queue.clear();
        let r = h
            .handle(batch(std::slice::from_ref(&body)), deadline(&clock))
            .await
            .expect("answers");
        assert_eq!(r, json!({"batchItemFailures": []}), "round {round}");
        let sent = queue.sent();
        let Some((next, delay)) = sent.into_iter().next() else {
            break;
        };
        delays.push(delay.as_secs());
        tokio::time::sleep(delay).await;
        body = next;
    }
    assert_eq!(
        delays,
        [60, 120, 240, 480, 900],
        "five retries with backoff, then left to the resync"
    );
    assert_eq!(event_passes(&metrics), 6);
    assert_eq!(
        own.rollouts_of("prod", "api"),
        1,
        "the healthy target rolled once"
    );
}

/// A Secrets Manager event naming `appflag` by name dates no label of the SSM parameter of that
/// name: before, its `live` label "moved" with the secret's and the parameter's dependant rolled.
#[tokio::test(start_paused = true)]
async fn a_secrets_manager_event_never_dates_a_parameter_of_the_same_name() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let v1 = fake.put_parameter("appflag");
    fake.label_parameter("appflag", v1, "live");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("api", &[(site("FLAG"), "appflag:live")]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_parameter("appflag");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, notifier) = observed();
    let h = Handler::over(
        single(&fake, &clock, &notifier, Mode::FireAndForget),
        notifier,
        Some(Arc::new(SentQueue::default())),
    );
    let moved = json!({
        "source": "aws.secretsmanager", "detail-type": "Secret Label Updated",
        "region": "eu-west-1", "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "detail": {"name": "appflag", "labelUpdated": "live"}
    });
    h.handle(batch(&[moved.to_string()]), deadline(&clock))
        .await
        .expect("answers");
    assert!(fake.updates().is_empty(), "{:?}", fake.updates());
    // The parameter's own label move, as CloudTrail records it, does roll it.
    let v2 = fake.put_parameter("appflag");
    fake.label_parameter("appflag", v2, "live");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let label = json!({
        "source": "aws.ssm", "detail-type": "AWS API Call via CloudTrail", "region": "eu-west-1",
        "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "detail": {"eventName": "LabelParameterVersion",
                   "requestParameters": {"name": "appflag", "labels": ["live"]}}
    });
    h.handle(batch(&[label.to_string()]), deadline(&clock))
        .await
        .expect("answers");
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
}

/// `/app/flag` (no label) resolved by `api`, then written again: `api` is stale once.
async fn flag_world(fake: &FakeAws) {
    fake.put_parameter("/app/flag");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("api", &[(site("FLAG"), "/app/flag")]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_parameter("/app/flag");
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn flag_changed(clock: &Arc<dyn Clock>) -> String {
    json!({
        "source": "aws.ssm", "detail-type": "Parameter Store Change", "region": "eu-west-1",
        "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "detail": {"name": "/app/flag", "operation": "Update"}
    })
    .to_string()
}

/// A flood of one change's events (duplicate deliveries, a replay, a looping relay) costs one
/// pass and one rollout, however many copies arrive and however late.
#[tokio::test(start_paused = true)]
async fn a_flood_of_copies_costs_one_pass() {
    // serve: fifty copies at once, then fifty more after the first pass.
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    flag_world(&fake).await;
    let body = flag_changed(&clock);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (metrics, notifier) = observed();
    let queue = Arc::new(MemoryQueue::new(10));
    let running = serve(
        single(&fake, &clock, &notifier, Mode::Watch),
        notifier,
        queue.clone(),
    )
    .await;
    for _ in 0..50 {
        queue.push(&body);
    }
    drained(&queue).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    for _ in 0..50 {
        queue.push(&body);
    }
    drained(&queue).await;
    assert_eq!(queue.deleted(), 100, "every copy acknowledged");
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
    assert_eq!(
        event_passes(&metrics),
        1,
        "five batches of ten at once (debounce 0), and fifty more later: one pass"
    );
    running.stop().await;

    // The Lambda: five batches of ten copies.
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    flag_world(&fake).await;
    let body = flag_changed(&clock);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (metrics, notifier) = observed();
    let h = Handler::over(
        single(&fake, &clock, &notifier, Mode::FireAndForget),
        notifier,
        Some(Arc::new(SentQueue::default())),
    );
    for _ in 0..5 {
        let r = h
            .handle(batch(&vec![body.clone(); 10]), deadline(&clock))
            .await
            .expect("answers");
        assert_eq!(r, json!({"batchItemFailures": []}));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(event_passes(&metrics), 1);
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
}

/// v1, v2; `live` on v2; `api` deployed resolving `/app/flag:live`; then `live` moved back to
/// v1, older than the deployment: only the event can date that move (a resync cannot see it).
async fn moved_back(fake: &FakeAws) {
    let v1 = fake.put_parameter("/app/flag");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v2 = fake.put_parameter("/app/flag");
    fake.label_parameter("/app/flag", v2, "live");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("api", &[(site("FLAG"), "/app/flag:live")]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    fake.label_parameter("/app/flag", v1, "live");
}

fn scheduled() -> Value {
    json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})
}

fn lambda(fake: &FakeAws, clock: &Arc<dyn Clock>, queue: Arc<dyn Queue>) -> Handler {
    let (_, notifier) = observed();
    Handler::over(
        single(fake, clock, &notifier, Mode::FireAndForget),
        notifier,
        Some(queue),
    )
}

/// A queue whose `SendMessage` fails (throttled, or refused by the queue's policy).
struct NoSend;

#[async_trait::async_trait]
impl Queue for NoSend {
    async fn receive(
        &self,
        _: i32,
        _: Duration,
    ) -> ecs_reloader::aws::AwsResult<Vec<ecs_reloader::aws::queue::Message>> {
        Ok(Vec::new())
    }
    async fn delete(&self, _: &str) -> ecs_reloader::aws::AwsResult<()> {
        Ok(())
    }
    async fn extend(&self, _: &str, _: Duration) -> ecs_reloader::aws::AwsResult<()> {
        Ok(())
    }
    async fn depth(&self) -> ecs_reloader::aws::AwsResult<u64> {
        Ok(0)
    }
    async fn send(&self, _: &str, _: Duration) -> ecs_reloader::aws::AwsResult<()> {
        Err(ecs_reloader::aws::AwsError::new(
            "sqs:SendMessage",
            "q",
            ErrorKind::Transient,
            "injected",
        ))
    }
}

/// Found by review: a change whose pass failed goes back to its sender (Lambda's retry of a
/// direct event, SQS's redelivery of a record whose hand-on failed); that delivery is the
/// change itself, never a copy of a decided one.
#[tokio::test(start_paused = true)]
async fn a_change_given_back_after_a_failed_pass_is_decided_again() {
    // A direct event: the failed pass answers an error, Lambda delivers the event again.
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    moved_back(&fake).await;
    let event: Value =
        serde_json::from_str(&label_moved(&clock, Some(fake.account()))).expect("json");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h = lambda(&fake, &clock, Arc::new(SentQueue::default()));
    fake.fail_next("ecs:ListServices", 1, ErrorKind::AccessDenied);
    assert!(h.handle(event.clone(), deadline(&clock)).await.is_err());
    tokio::time::sleep(Duration::from_secs(60)).await;
    h.handle(event, deadline(&clock)).await.expect("answers");
    h.handle(scheduled(), deadline(&clock))
        .await
        .expect("answers");
    assert_eq!(
        fake.rollouts_of("prod", "api"),
        1,
        "the retry was taken for a copy"
    );

    // An SQS record whose pass failed and whose hand-on failed: left on the queue, delivered
    // again.
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    moved_back(&fake).await;
    let body = label_moved(&clock, Some(fake.account()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h = lambda(&fake, &clock, Arc::new(NoSend));
    fake.fail_next("ecs:ListServices", 1, ErrorKind::AccessDenied);
    let r = h
        .handle(batch(std::slice::from_ref(&body)), deadline(&clock))
        .await
        .expect("answers");
    assert_eq!(r, json!({"batchItemFailures": [{"itemIdentifier": "m0"}]}));
    tokio::time::sleep(Duration::from_secs(1800)).await;
    h.handle(batch(&[body]), deadline(&clock))
        .await
        .expect("answers");
    assert_eq!(
        fake.rollouts_of("prod", "api"),
        1,
        "the redelivery was taken for a copy"
    );
}

/// Found by review: each record keeps its own retry count, so a fresh change batched with a
/// handed-on change that has used up its retries is still retried.
#[tokio::test(start_paused = true)]
async fn a_fresh_change_does_not_inherit_another_records_retries() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    moved_back(&fake).await;
    let fresh = label_moved(&clock, Some(fake.account()));
    let mut tired = json!({"source": "aws.ssm", "detail-type": "Parameter Store Change",
        "region": "eu-west-1", "account": fake.account(), "time": "2025-12-31T23:00:00Z",
        "detail": {"name": "/other", "operation": "Update"}});
    tired["ecs-reloader"] = json!({"retries": 5});
    tokio::time::sleep(Duration::from_secs(3)).await;
    let queue = Arc::new(SentQueue::default());
    let h = lambda(&fake, &clock, queue.clone());
    fake.fail_next("ecs:ListServices", 1, ErrorKind::AccessDenied);
    h.handle(batch(&[tired.to_string(), fresh]), deadline(&clock))
        .await
        .expect("answers");
    let sent = queue.sent();
    assert_eq!(
        sent.len(),
        1,
        "the fresh change is handed on, the tired one left: {sent:?}"
    );
    let (again, delay) = sent[0].clone();
    tokio::time::sleep(delay).await;
    h.handle(batch(&[again]), deadline(&clock))
        .await
        .expect("answers");
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
}

/// `serve` and the Lambda take messages through the same intake: the same batch counts the same
/// events by kind and the same passes.
#[tokio::test(start_paused = true)]
async fn serve_and_the_lambda_count_a_batch_the_same_way() {
    let bodies = |fake: &FakeAws, clock: &Arc<dyn Clock>, secret: &str| -> Vec<String> {
        let at = clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        vec![
            json!({"source": "aws.secretsmanager", "detail-type": "AWS Service Event via CloudTrail",
                   "time": at, "account": fake.account(),
                   "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": secret}}})
            .to_string(),
            json!({"source": "aws.ecs", "detail-type": "ECS Deployment State Change",
                   "account": fake.account(),
                   "resources": [format!("arn:aws:ecs:eu-west-1:{}:service/prod/api", fake.account())],
                   "detail": {}})
            .to_string(),
            json!({"source": "aws.secretsmanager", "detail-type": "AWS API Call via CloudTrail",
                   "account": fake.account(), "detail": {"eventName": "GetSecretValue"}})
            .to_string(),
            label_moved(clock, Some(STRANGER)),
            "not an event".to_string(),
        ]
    };
    let counts = |m: &Metrics| -> Vec<String> {
        let mut v: Vec<String> = m
            .render(&Default::default())
            .lines()
            .filter(|l| {
                l.starts_with("ecs_reloader_events_received_total")
                    || l.starts_with("ecs_reloader_reconciles_total")
            })
            .map(String::from)
            .collect();
        v.sort();
        v
    };

    let (fake, clock, secret) = rotated_world().await;
    let (serve_metrics, notifier) = observed();
    let queue = Arc::new(MemoryQueue::new(10));
    let running = serve(
        single(&fake, &clock, &notifier, Mode::Watch),
        notifier,
        queue.clone(),
    )
    .await;
    for b in bodies(&fake, &clock, &secret) {
        queue.push(&b);
    }
    // Everything but the poison message is acknowledged.
    for _ in 0..10_000 {
        if queue.len() <= 1 && fake.rollouts_of("prod", "api") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;

    let (fake, clock, secret) = rotated_world().await;
    let (lambda_metrics, notifier) = observed();
    let h = Handler::over(
        single(&fake, &clock, &notifier, Mode::FireAndForget),
        notifier,
        Some(Arc::new(SentQueue::default())),
    );
    let r = h
        .handle(batch(&bodies(&fake, &clock, &secret)), deadline(&clock))
        .await
        .expect("answers");
    assert_eq!(r, json!({"batchItemFailures": [{"itemIdentifier": "m4"}]}));
    // serve's startup resync is its own: compare what the batch did.
    let serve_counts: Vec<String> = counts(&serve_metrics)
        .into_iter()
        .filter(|l| !l.contains("resync"))
        .collect();
    let lambda_counts: Vec<String> = counts(&lambda_metrics)
        .into_iter()
        .filter(|l| !l.contains("resync"))
        .collect();
    assert_eq!(serve_counts, lambda_counts);
    for kind in [
        "rotation_succeeded",
        "ecs_service",
        "ignored",
        "foreign",
        "poison",
    ] {
        assert!(
            serve_counts
                .iter()
                .any(|l| l.contains(&format!("kind=\"{kind}\"")) && l.ends_with(" 1")),
            "{kind}: {serve_counts:?}"
        );
    }
}

/// `prod/api` resolving `app/db`, which has since been written again: `api` is stale.
async fn rotated_world() -> (FakeAws, Arc<dyn Clock>, String) {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let secret = fake.create_secret("app/db");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let td = fake.register_task_definition("api", &[(site("DB"), secret.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    (fake, clock, secret)
}

/// CloudTrail's record of `actor`'s `PutSecretValue` on `secret`, as event `id`.
fn put_by(fake: &FakeAws, clock: &Arc<dyn Clock>, secret: &str, id: &str, actor: &str) -> Value {
    json!({
        "version": "0", "id": id, "source": "aws.secretsmanager",
        "detail-type": "AWS API Call via CloudTrail", "account": fake.account(),
        "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "detail": {"eventName": "PutSecretValue", "userIdentity": {"type": "AssumedRole", "arn": actor},
                   "responseElements": {"arn": secret}}
    })
}

/// Who made a change travels from its event to every decision it causes (#25): the table's
/// reason and the JSON document name the event and the actor; a change found by a resync says
/// so.
#[tokio::test(start_paused = true)]
async fn a_decision_says_who_made_the_change() {
    use ecs_reloader::decide::Decision;
    use ecs_reloader::event::{self, Changes};
    use ecs_reloader::reconcile::Request;
    let (fake, clock, secret) = rotated_world().await;
    let rotator = "arn:aws:sts::111122223333:assumed-role/rotator/lambda";
    let body = put_by(&fake, &clock, &secret, "e-42", rotator);
    let (_, notifier) = observed();
    let fleet = single(&fake, &clock, &notifier, Mode::Watch);
    let mut changes = Changes::default();
    changes.add(&event::parse(&body.to_string()).expect("event"));
    let pass = fleet
        .pass(&Request {
            dry_run: true,
            ..Request::changes(changes)
        })
        .await
        .expect("pass");
    let finding = match &pass.assessment.services[0].decision {
        Decision::Stale { findings } => findings[0].clone(),
        other => panic!("{other:?}"),
    };
    let said = finding.provenance.clone().expect("provenance");
    for needle in ["api_call event e-42", rotator, "at 2026-"] {
        assert!(said.contains(needle), "{needle}: {said}");
    }
    let doc = serde_json::to_value(&finding).expect("json");
    assert_eq!(doc["provenance"], json!(said));
    let report = ecs_reloader::report::Report::new(&pass.assessment, &pass.outcomes, true);
    let json = serde_json::to_string(&report).expect("json");
    assert!(json.contains(rotator), "{json}");

    let resync = fleet
        .pass(&Request {
            dry_run: true,
            ..Request::all()
        })
        .await
        .expect("pass");
    match &resync.assessment.services[0].decision {
        Decision::Stale { findings } => assert_eq!(
            findings[0].provenance.as_deref(),
            Some("found by resync (no event)")
        ),
        other => panic!("{other:?}"),
    }
}

/// A recording event bus.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<(String, Value)>>);

#[async_trait::async_trait]
impl ecs_reloader::aws::queue::Bus for Recorded {
    async fn put(&self, detail_type: &str, detail: &Value) -> ecs_reloader::aws::AwsResult<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((detail_type.to_string(), detail.clone()));
        Ok(())
    }
}

/// Every outcome event of a rollout says who made the change it rolled for (#25).
#[tokio::test(start_paused = true)]
async fn every_outcome_event_says_who_made_the_change() {
    let (fake, clock, secret) = rotated_world().await;
    let rotator = "arn:aws:sts::111122223333:assumed-role/rotator/lambda";
    let body = put_by(&fake, &clock, &secret, "e-7", rotator);
    let bus = Arc::new(Recorded::default());
    let notifier = Arc::new(Notifier::new(Arc::new(Metrics::new()), Some(bus.clone())));
    let h = Handler::over(
        single(&fake, &clock, &notifier, Mode::FireAndForget),
        notifier,
        Some(Arc::new(SentQueue::default())),
    );
    h.handle(batch(&[body.to_string()]), deadline(&clock))
        .await
        .expect("answers");
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
    let seen = bus.0.lock().expect("lock").clone();
    let rollout_events: Vec<&(String, Value)> = seen
        .iter()
        .filter(|(t, _)| t.starts_with("Rollout"))
        .collect();
    assert!(rollout_events.len() >= 2, "started and succeeded: {seen:?}");
    for (kind, detail) in rollout_events {
        let changes = detail["changes"].to_string();
        assert!(
            changes.contains(rotator) && changes.contains("e-7"),
            "{kind}: {detail}"
        );
    }
}

/// Found by review: one parameter name changed in two managed accounts in one batch; each
/// account's dependant is told its own account's actor, not the other's.
#[tokio::test(start_paused = true)]
async fn each_account_is_told_its_own_actor() {
    use ecs_reloader::decide::Decision;
    use ecs_reloader::event::{self, Changes};
    use ecs_reloader::reconcile::Request;
    let (own, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let member = FakeAws::new("eu-west-1", clock.clone());
    labelled_world(&own).await;
    labelled_world(&member).await;
    for fake in [&own, &member] {
        let v = fake.put_parameter("/app/flag");
        fake.label_parameter("/app/flag", v, "live");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let event = |account: &str, actor: &str| {
        let mut v: Value = serde_json::from_str(&label_moved(&clock, Some(account))).expect("json");
        v["detail"]["userIdentity"] = json!({"arn": actor});
        v.to_string()
    };
    let alice = "arn:aws:sts::111122223333:assumed-role/a/alice";
    let bob = "arn:aws:sts::444455556666:assumed-role/b/bob";
    let mut changes = Changes::default();
    changes.add(&event::parse(&event(own.account(), alice)).expect("event"));
    changes.add(&event::parse(&event(MEMBER, bob)).expect("event"));
    let (_, notifier) = observed();
    let fleet = pair(&own, &member, &clock, &notifier, Mode::Watch);
    let pass = fleet
        .pass(&Request {
            dry_run: true,
            ..Request::changes(changes)
        })
        .await
        .expect("pass");
    let said: Vec<(String, String)> = pass
        .assessment
        .services
        .iter()
        .filter_map(|a| match &a.decision {
            Decision::Stale { findings } => Some((
                a.key.account.clone(),
                findings[0].provenance.clone().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(said.len(), 2, "{said:?}");
    // The fake plays both accounts with one ARN account; the targets tell them apart by order.
    let texts: Vec<&String> = said.iter().map(|(_, p)| p).collect();
    assert!(
        texts
            .iter()
            .any(|p| p.contains("alice") && !p.contains("bob"))
            && texts
                .iter()
                .any(|p| p.contains("bob") && !p.contains("alice")),
        "{said:?}"
    );
}
