//! Safety that holds across passes (#21), over the in-memory fake on tokio's paused clock: a
//! hold, a failed canary and a canary's guard mean the same to every pass, whatever secret or
//! event started it.

use std::sync::Arc;
use std::time::Duration;

use ecs_reloader::aws::fake::{Behaviour, FakeAws};
use ecs_reloader::clock::Clock;
use ecs_reloader::config::{Config, Dur};
use ecs_reloader::decide::Decision;
use ecs_reloader::driver::setup::{self, Parts};
use ecs_reloader::reconcile::{Mode, Pass, Request};
use ecs_reloader::reference::Site;
use ecs_reloader::rollout::{LogProgress, Outcome, Rollout};

fn site(name: &str) -> Site {
    Site::Secret {
        container: "app".into(),
        name: name.into(),
    }
}

fn parts(fake: &FakeAws, clock: &Arc<dyn Clock>) -> Parts {
    let mut config = Config::default();
    config.rollout.canary = true;
    config.rollout.poll_interval = Dur(Duration::from_secs(5));
    setup::assemble(
        &config,
        fake.clients(),
        clock.clone(),
        Arc::new(LogProgress),
        Mode::Watch,
    )
}

fn decision<'a>(pass: &'a Pass, service: &str) -> &'a Decision {
    &pass
        .assessment
        .services
        .iter()
        .find(|a| a.key.service == service)
        .unwrap_or_else(|| panic!("{service} was not decided"))
        .decision
}

/// `serve` over the fake and an in-memory queue, with `debounce`, resyncing once a day; ready.
struct Serving {
    queue: Arc<ecs_reloader::aws::fake::MemoryQueue>,
    metrics: Arc<ecs_reloader::metrics::Metrics>,
    stop: tokio::sync::watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
}

impl Serving {
    async fn start(fake: &FakeAws, clock: &Arc<dyn Clock>, debounce: Duration) -> Serving {
        use ecs_reloader::aws::fake::MemoryQueue;
        use ecs_reloader::aws::queue::Queue;
        use ecs_reloader::driver::serve::{Server, Settings};
        use ecs_reloader::metrics::Metrics;
        use ecs_reloader::notify::Notifier;
        let mut config = Config::default();
        config.events.debounce = Dur(debounce);
        config.rollout.poll_interval = Dur(Duration::from_secs(5));
        let metrics = Arc::new(Metrics::new());
        let notifier = Arc::new(Notifier::new(metrics.clone(), None));
        let assembled = setup::assemble(
            &config,
            fake.clients(),
            clock.clone(),
            notifier.clone(),
            Mode::Watch,
        );
        let queue = Arc::new(MemoryQueue::new(10));
        let mut settings = Settings::from_config(&config);
        settings.resync_interval = Duration::from_secs(24 * 3600);
        let server = Server::new(
            assembled,
            Some(queue.clone() as Arc<dyn Queue>),
            notifier,
            settings,
        );
        let status = server.status();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(server.run_until(rx));
        while status.not_ready().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Serving {
            queue,
            metrics,
            stop,
            serving,
        }
    }

    /// A line of /metrics, by its prefix (-1 when absent).
    fn metric(&self, prefix: &str) -> i64 {
        self.metrics
            .render(&Default::default())
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(-1)
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.serving.await;
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// `a-canary` and `b-held` resolve T; T rotates and the canary's rollout fails: `b-held` is
/// held. A description edit of T (which moves its `LastChangedDate` past the failure, and
/// changes no value) must not lift the hold; only a new value of T does.
#[tokio::test(start_paused = true)]
async fn a_metadata_edit_does_not_lift_a_hold() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let t = fake.create_secret("app/t");
    settle().await;
    let td = fake.register_task_definition("t", &[(site("T"), t.as_str())]);
    fake.create_service("prod", "a-canary", &td, 1, &[]);
    fake.create_service("prod", "b-held", &td, 1, &[]);
    fake.set_behaviour(
        "prod",
        "a-canary",
        Behaviour::Fail(Duration::from_secs(60), 3),
    );
    settle().await;
    fake.put_secret_value("app/t", &[]);
    settle().await;
    let p = parts(&fake, &clock);
    let first = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        first
            .outcomes
            .iter()
            .any(|(k, o)| k.service == "a-canary" && matches!(o, Outcome::Failed { .. })),
        "{:?}",
        first.outcomes
    );
    assert_eq!(fake.rollouts_of("prod", "b-held"), 0);
    let again = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&again, "b-held"), Decision::Held { .. }),
        "{:?}",
        decision(&again, "b-held")
    );

    fake.edit_metadata("app/t");
    settle().await;
    let after_edit = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&after_edit, "b-held"), Decision::Held { .. }),
        "a description edit lifted the hold: {:?}",
        decision(&after_edit, "b-held")
    );
    assert_eq!(
        fake.rollouts_of("prod", "b-held"),
        0,
        "rolled with the breaking value"
    );

    // A new value of T is a new change: the hold lifts (and a canary goes first again).
    fake.set_behaviour(
        "prod",
        "a-canary",
        Behaviour::Complete(Duration::from_secs(30)),
    );
    fake.put_secret_value("app/t", &[]);
    settle().await;
    p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(fake.rollouts_of("prod", "b-held"), 1);
}

/// Two passes planned the same change set (C, D, E). The first rolls its canary C, whose
/// rollout is rolled back. The second, which waited on C's lock, must see that rollback as the
/// change's failure, not as C being "already fresh", and roll neither D nor E.
#[tokio::test(start_paused = true)]
async fn a_failed_canary_is_failed_for_every_pass() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    for n in ["c", "d", "e"] {
        fake.create_service("prod", n, &td, 1, &[]);
    }
    fake.set_behaviour("prod", "c", Behaviour::RollBack(Duration::from_secs(60)));
    settle().await;
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let p = parts(&fake, &clock);
    let scope = ecs_reloader::index::Scope::default();
    let first = p.reconciler.assess(&scope, &[]).await.expect("plan");
    let second = p.reconciler.assess(&scope, &[]).await.expect("plan");
    assert_eq!(first.change_set.changes.len(), 3);
    fake.set_latency(Duration::from_millis(50));
    let (one, two) = tokio::join!(
        p.rollout.execute(&first.change_set),
        p.rollout.execute(&second.change_set)
    );
    assert_eq!(fake.rollouts_of("prod", "c"), 1, "{one:?} {two:?}");
    assert_eq!(
        fake.rollouts_of("prod", "d") + fake.rollouts_of("prod", "e"),
        0,
        "the second pass took the rolled-back canary for fresh: {two:?}"
    );
}

/// One change set for two secrets: S1's canary is healthy, S2's dependants have not proved it.
/// S2's first dependant must roll alone, as S2's canary; its failure keeps S2's other dependant
/// from rolling.
#[tokio::test(start_paused = true)]
async fn a_canary_guards_a_secret_not_a_change_set() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s1 = fake.create_secret("app/s1");
    let s2 = fake.create_secret("app/s2");
    settle().await;
    let td1 = fake.register_task_definition("one", &[(site("S1"), s1.as_str())]);
    let td2 = fake.register_task_definition("two", &[(site("S2"), s2.as_str())]);
    fake.create_service("prod", "a1", &td1, 1, &[]);
    fake.create_service("prod", "b1", &td1, 1, &[]);
    fake.create_service("prod", "c2", &td2, 1, &[]);
    fake.create_service("prod", "d2", &td2, 1, &[]);
    fake.set_behaviour("prod", "c2", Behaviour::Fail(Duration::from_secs(60), 3));
    settle().await;
    fake.put_secret_value("app/s1", &[]);
    fake.put_secret_value("app/s2", &[]);
    settle().await;
    let p = parts(&fake, &clock);
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(fake.rollouts_of("prod", "c2"), 1);
    assert_eq!(
        fake.rollouts_of("prod", "d2"),
        0,
        "rolled beside S2's failing first dependant on S1's canary's word: {:?}",
        pass.outcomes
    );
    assert_eq!(fake.rollouts_of("prod", "a1"), 1, "S1's canary");
}

/// X resolves S and T; Y resolves T only. T rotates, Y's rollout fails, X is held. Then S
/// changes: a pass for S alone (an S event, `reconcile --secret S`) must still see Y's failure
/// and hold X, rather than roll it with T's breaking value.
#[tokio::test(start_paused = true)]
async fn another_secrets_change_does_not_lift_a_hold() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s = fake.create_secret("app/s");
    let t = fake.create_secret("app/t");
    settle().await;
    let td_x =
        fake.register_task_definition("x", &[(site("S"), s.as_str()), (site("T"), t.as_str())]);
    let td_y = fake.register_task_definition("y", &[(site("T"), t.as_str())]);
    fake.create_service("prod", "b-x", &td_x, 1, &[]);
    fake.create_service("prod", "a-y", &td_y, 1, &[]);
    fake.set_behaviour("prod", "a-y", Behaviour::Fail(Duration::from_secs(60), 3));
    settle().await;
    fake.put_secret_value("app/t", &[]);
    settle().await;
    let p = parts(&fake, &clock);
    p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(fake.rollouts_of("prod", "a-y"), 1, "Y, the canary, failed");
    assert_eq!(fake.rollouts_of("prod", "b-x"), 0);

    fake.put_secret_value("app/s", &[]);
    settle().await;
    for req in [
        Request {
            selection: ecs_reloader::reconcile::Selection::Secrets(vec!["app/s".into()]),
            ..Request::all()
        },
        Request::changes({
            let mut c = ecs_reloader::event::Changes::default();
            c.add(
                &ecs_reloader::event::parse(
                    &serde_json::json!({
                        "source": "aws.secretsmanager", "detail-type": "AWS Service Event via CloudTrail",
                        "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": s}}
                    })
                    .to_string(),
                )
                .expect("event"),
            );
            c
        }),
    ] {
        let pass = p.reconciler.pass(&req).await.expect("pass");
        assert!(
            matches!(decision(&pass, "b-x"), Decision::Held { .. }),
            "{:?}",
            decision(&pass, "b-x")
        );
        assert!(
            pass.assessment
                .services
                .iter()
                .all(|a| a.key.service != "a-y"),
            "Y is looked at, not reported, by a pass for S"
        );
    }
    assert_eq!(
        fake.rollouts_of("prod", "b-x"),
        0,
        "rolled with T's breaking value"
    );
}

/// Two rotation events in one batch, one for a secret the operator may not `DescribeSecret` (a
/// resource policy, an SCP): that change is reported and skipped, the other is rolled, and the
/// batch's messages are acknowledged (before: the whole pass failed, was retried every 30 s,
/// and nothing was rolled).
#[tokio::test(start_paused = true)]
async fn one_unreadable_changed_secret_does_not_stop_its_batch() {
    use ecs_reloader::aws::ErrorKind;

    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let ok = fake.create_secret("app/ok");
    let refused = fake.create_secret("app/refused");
    settle().await;
    let td_ok = fake.register_task_definition("ok", &[(site("OK"), ok.as_str())]);
    let td_refused = fake.register_task_definition("no", &[(site("NO"), refused.as_str())]);
    fake.create_service("prod", "reads-ok", &td_ok, 1, &[]);
    fake.create_service("prod", "reads-refused", &td_refused, 1, &[]);
    settle().await;
    let serving = Serving::start(&fake, &clock, Duration::from_secs(2)).await;
    let queue = serving.queue.clone();
    fake.put_secret_value("app/ok", &[]);
    fake.put_secret_value("app/refused", &[]);
    settle().await;
    fake.refuse(
        "secretsmanager:DescribeSecret",
        &refused,
        ErrorKind::AccessDenied,
        "no resource-based policy allows the secretsmanager:DescribeSecret action",
    );
    for arn in [&ok, &refused] {
        queue.push(
            &serde_json::json!({
                "source": "aws.secretsmanager", "detail-type": "AWS Service Event via CloudTrail",
                "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": arn}}
            })
            .to_string(),
        );
    }
    // The readable change rolls at once (not at the next resync, ten minutes on).
    let sent = tokio::time::Instant::now();
    while fake.rollouts_of("prod", "reads-ok") == 0 && sent.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        fake.rollouts_of("prod", "reads-ok"),
        1,
        "the readable change was not rolled with its batch"
    );
    // Both messages are acknowledged once that rollout is healthy.
    for _ in 0..6000 {
        if queue.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(queue.deleted(), 2, "both messages acknowledged");
    assert_eq!(fake.rollouts_of("prod", "reads-refused"), 0);
    serving.stop().await;
}

/// A stale service whose pre-change deployment is stuck `IN_PROGRESS` (no circuit breaker) is
/// reported `held` once that deployment is older than `[rollout] timeout`, instead of settling
/// (and being decided again) forever.
#[tokio::test(start_paused = true)]
async fn a_service_waiting_on_a_stuck_deployment_is_reported_not_polled_forever() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    fake.create_service("prod", "slow", &td, 1, &[]);
    // A deployment (CI's, say, with no circuit breaker) that never finishes.
    fake.set_behaviour("prod", "slow", Behaviour::Stuck);
    fake.clients()
        .ecs
        .force_new_deployment("prod", "slow")
        .await
        .expect("deploys");
    settle().await;
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let p = parts(&fake, &clock);
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&pass, "slow"), Decision::Settling { .. }),
        "{:?}",
        decision(&pass, "slow")
    );
    assert!(
        pass.requeue_after.is_some(),
        "decided again when it settles"
    );
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    match decision(&pass, "slow") {
        Decision::Held { reason, .. } => assert!(reason.contains("stuck"), "{reason}"),
        other => panic!("still waiting on a stuck deployment: {other:?}"),
    }
    assert_eq!(pass.requeue_after, None, "nothing to wait for");
    assert_eq!(
        fake.rollouts_of("prod", "slow"),
        1,
        "the stuck deployment alone: none stacked on it"
    );
}

/// The one eligibility check, asked again right before each `UpdateService`: a maintenance
/// window that closes while the change set rolls stops it (the rest are scheduled for the next
/// window), and a notify-only tag added after the plan keeps its service from rolling.
#[tokio::test(start_paused = true)]
async fn a_window_that_closes_mid_change_set_stops_it() {
    // The fake's clock starts on Thursday 2026-01-01 at 00:00 UTC.
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    for n in ["a", "b", "c"] {
        fake.create_service("prod", n, &td, 1, &[]);
    }
    // The canary takes twelve minutes to be healthy; the window closes after ten.
    fake.set_behaviour(
        "prod",
        "a",
        Behaviour::Complete(Duration::from_secs(12 * 60)),
    );
    settle().await;
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let mut config = Config::default();
    config.rollout.canary = true;
    config.rollout.poll_interval = Dur(Duration::from_secs(5));
    config.rollout.windows =
        ecs_reloader::window::Windows::parse("Thu 00:00-00:10 UTC").expect("a window");
    let p = setup::assemble(
        &config,
        fake.clients(),
        clock.clone(),
        Arc::new(LogProgress),
        Mode::Watch,
    );
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(
        fake.rollouts_of("prod", "a"),
        1,
        "the canary, inside the window"
    );
    assert_eq!(
        fake.rollouts_of("prod", "b") + fake.rollouts_of("prod", "c"),
        0,
        "rolled after the window closed: {:?}",
        pass.outcomes
    );
    assert!(
        pass.outcomes
            .iter()
            .filter(|(k, _)| k.service != "a")
            .all(|(_, o)| matches!(o, Outcome::Deferred { reason } if reason.contains("window"))),
        "{:?}",
        pass.outcomes
    );
    let next = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&next, "b"), Decision::Scheduled { .. }),
        "{:?}",
        decision(&next, "b")
    );

    // A notify-only tag added after the plan.
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    settle().await;
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let p = parts(&fake, &clock);
    let plan = p
        .reconciler
        .assess(&ecs_reloader::index::Scope::default(), &[])
        .await
        .expect("plan");
    assert_eq!(plan.change_set.changes.len(), 1);
    fake.edit_service("prod", "api", |svc| {
        svc.tags
            .insert("ecs-reloader/notify-only".into(), "true".into());
    });
    let out = p.rollout.execute(&plan.change_set).await;
    assert_eq!(fake.rollouts_of("prod", "api"), 0, "{out:?}");
}

/// A change that waits for a person is not polled: with a notify-only service in wave 0 and
/// another in wave 1, `serve` decides the change once (wave 1 is `pending` behind wave 0) and
/// acknowledges its message; approval is a person's act, and the resync reports it again.
/// (Before: decided again every 30 s, its message kept in flight.)
#[tokio::test(start_paused = true)]
async fn a_change_waiting_for_a_person_is_not_polled() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    fake.create_service(
        "prod",
        "replica",
        &td,
        1,
        &[
            ("ecs-reloader/notify-only", "true"),
            ("ecs-reloader/wave", "0"),
        ],
    );
    fake.create_service("prod", "writer", &td, 1, &[("ecs-reloader/wave", "1")]);
    settle().await;
    let serving = Serving::start(&fake, &clock, Duration::ZERO).await;
    let queue = serving.queue.clone();
    fake.put_secret_value("app/s", &[]);
    settle().await;
    queue.push(
        &serde_json::json!({
            "source": "aws.secretsmanager", "detail-type": "AWS Service Event via CloudTrail",
            "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": s}}
        })
        .to_string(),
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let passes = serving.metric(r#"ecs_reloader_reconciles_total{kind="event"}"#);
    assert_eq!(passes, 1, "decided once in a minute");
    assert!(queue.is_empty(), "its message acknowledged");
    assert_eq!(
        fake.rollouts_of("prod", "writer") + fake.rollouts_of("prod", "replica"),
        0
    );
    serving.stop().await;
    // What a pass says of it: wave 1 pending behind wave 0's approval, nothing to look at again.
    let p = parts(&fake, &clock);
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&pass, "writer"), Decision::Pending { reason, .. } if reason.contains("approval")),
        "{:?}",
        decision(&pass, "writer")
    );
    assert_eq!(pass.requeue_after, None);
}

/// `serve`'s waiting list is keyed by what changed: a second event of a change that already
/// waits (a rotation in progress holds it back) joins that wait instead of adding another.
#[tokio::test(start_paused = true)]
async fn two_waits_for_one_change_are_one() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    settle().await;
    let serving = Serving::start(&fake, &clock, Duration::ZERO).await;
    let queue = serving.queue.clone();
    // A new value, and a rotation in progress right behind it: the service settles.
    fake.put_secret_value("app/s", &[]);
    fake.start_rotation("app/s");
    settle().await;
    let event = |clock: &Arc<dyn Clock>| {
        serde_json::json!({
            "source": "aws.secretsmanager", "detail-type": "AWS API Call via CloudTrail",
            "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "detail": {"eventName": "PutSecretValue", "responseElements": {"arn": s}}
        })
        .to_string()
    };
    let waiting = || serving.metric("ecs_reloader_changes_waiting");
    queue.push(&event(&clock));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(waiting(), 1);
    queue.push(&event(&clock));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(waiting(), 1, "the second wait joined the first");
    assert_eq!(fake.rollouts_of("prod", "api"), 0, "still settling");
    serving.stop().await;
}

/// Evidence only an event carries is kept and applied by every pass: a custom label moved back
/// to an older version, dated by its event, while a service resolving that label was not yet
/// known to the watch cache (its ECS event lost). The change pass cannot see the service; the
/// next resync sees it and, remembering the move, rolls it (before: in sync by the metadata,
/// never rolled).
#[tokio::test(start_paused = true)]
async fn a_label_move_only_an_event_dates_is_applied_by_the_next_resync() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let arn = fake.create_secret("app/staged");
    let first = fake.put_secret_value("app/staged", &["blue"]);
    settle().await;
    fake.put_secret_value("app/staged", &["blue"]);
    settle().await;
    let td = fake.register_task_definition("p", &[(site("S"), &format!("{arn}::blue:"))]);
    fake.create_service("prod", "known", &td, 1, &[]);
    settle().await;
    let p = parts(&fake, &clock);
    // The startup resync fills the watch cache.
    p.reconciler.pass(&Request::all()).await.expect("pass");
    // A service created since; its ECS event is lost.
    fake.create_service("prod", "unseen", &td, 1, &[]);
    settle().await;
    fake.move_stage("app/staged", "blue", &first);
    let moved = serde_json::json!({
        "source": "aws.secretsmanager", "detail-type": "Secret Label Updated",
        "time": clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": "eu-west-1", "resources": [arn],
        "detail": {"name": "app/staged", "labelUpdated": "blue", "versionId": first}
    });
    settle().await;
    let mut changes = ecs_reloader::event::Changes::default();
    changes.add(&ecs_reloader::event::parse(&moved.to_string()).expect("event"));
    p.reconciler
        .pass(&Request::changes(changes))
        .await
        .expect("pass");
    assert_eq!(fake.rollouts_of("prod", "known"), 1, "the known dependant");
    assert_eq!(
        fake.rollouts_of("prod", "unseen"),
        0,
        "not among the candidates"
    );
    let resync = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(
        fake.rollouts_of("prod", "unseen"),
        1,
        "the resync forgot the move: {:?}",
        decision(&resync, "unseen")
    );
    assert_eq!(fake.rollouts_of("prod", "known"), 1, "once");
}

/// X (S, T) held by Y's (T) failed rollout after T's change; Y in `y_cluster`.
async fn held_x(y_cluster: &str) -> (FakeAws, Parts) {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s = fake.create_secret("app/s");
    let t = fake.create_secret("app/t");
    settle().await;
    let td_x =
        fake.register_task_definition("x", &[(site("S"), s.as_str()), (site("T"), t.as_str())]);
    let td_y = fake.register_task_definition("y", &[(site("T"), t.as_str())]);
    fake.create_service("prod", "b-x", &td_x, 1, &[]);
    fake.create_service(y_cluster, "a-y", &td_y, 1, &[]);
    fake.set_behaviour(
        y_cluster,
        "a-y",
        Behaviour::Fail(Duration::from_secs(60), 3),
    );
    settle().await;
    fake.put_secret_value("app/t", &[]);
    settle().await;
    let p = parts(&fake, &clock);
    p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(
        fake.rollouts_of(y_cluster, "a-y"),
        1,
        "Y, the canary, failed"
    );
    let again = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&again, "b-x"), Decision::Held { .. }),
        "{:?}",
        decision(&again, "b-x")
    );
    (fake, p)
}

/// Found by review: narrowing a pass (`--service`, `--cluster`) must not narrow what it looks
/// at to know a hold: the held service is not rolled with the breaking value.
#[tokio::test(start_paused = true)]
async fn a_narrowed_pass_still_sees_the_hold() {
    use ecs_reloader::reconcile::Selection;
    // `reconcile --service prod/b-x`.
    let (fake, p) = held_x("prod").await;
    let pass = p
        .reconciler
        .pass(&Request {
            services: vec!["prod/b-x".into()],
            ..Request::all()
        })
        .await
        .expect("pass");
    assert_eq!(fake.rollouts_of("prod", "b-x"), 0, "{:?}", pass.outcomes);
    assert!(pass
        .assessment
        .services
        .iter()
        .all(|a| a.key.service == "b-x"));

    // `reconcile --secret app/s --service prod/b-x`, S having changed.
    let (fake, p) = held_x("prod").await;
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let pass = p
        .reconciler
        .pass(&Request {
            selection: Selection::Secrets(vec!["app/s".into()]),
            services: vec!["prod/b-x".into()],
            ..Request::all()
        })
        .await
        .expect("pass");
    assert_eq!(fake.rollouts_of("prod", "b-x"), 0, "{:?}", pass.outcomes);

    // `reconcile --secret app/s --cluster prod`, Y in another cluster of the fleet.
    let (fake, p) = held_x("other").await;
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let pass = p
        .reconciler
        .pass(&Request {
            selection: Selection::Secrets(vec!["app/s".into()]),
            clusters: vec!["prod".into()],
            ..Request::all()
        })
        .await
        .expect("pass");
    assert_eq!(fake.rollouts_of("prod", "b-x"), 0, "{:?}", pass.outcomes);
}

/// Found by review: a service looked at only for another secret's sake is never made that
/// secret's canary (the pass would not roll it, and the selected service would wait for it).
/// In a pass that cannot wait (the Lambda), X (S, T) is the canary of both; Y (T only, named to
/// sort first) is context.
#[tokio::test(start_paused = true)]
async fn a_context_service_is_never_the_canary() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let s = fake.create_secret("app/s");
    let t = fake.create_secret("app/t");
    settle().await;
    let td_x =
        fake.register_task_definition("x", &[(site("S"), s.as_str()), (site("T"), t.as_str())]);
    let td_y = fake.register_task_definition("y", &[(site("T"), t.as_str())]);
    fake.create_service("prod", "b-x", &td_x, 1, &[]);
    fake.create_service("prod", "a-y", &td_y, 1, &[]);
    settle().await;
    fake.put_secret_value("app/t", &[]);
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let mut config = Config::default();
    config.rollout.canary = true;
    let p = setup::assemble(
        &config,
        fake.clients(),
        clock.clone(),
        Arc::new(LogProgress),
        Mode::FireAndForget,
    );
    let pass = p
        .reconciler
        .pass(&Request {
            selection: ecs_reloader::reconcile::Selection::Secrets(vec!["app/s".into()]),
            ..Request::all()
        })
        .await
        .expect("pass");
    assert_eq!(
        fake.rollouts_of("prod", "b-x"),
        1,
        "X waited for a canary this pass would never roll: {:?}",
        decision(&pass, "b-x")
    );
    assert_eq!(
        fake.rollouts_of("prod", "a-y"),
        0,
        "context is never rolled"
    );
}
