//! Cases a review found: each asserts the intended behaviour (they failed before their fixes).
use ecs_reloader::aws::fake::FakeAws;
use ecs_reloader::clock::Clock;
use ecs_reloader::config::Config;
use ecs_reloader::driver::setup::{assemble, assemble_with, Parts};
use ecs_reloader::event::{self, Changes};
use ecs_reloader::reconcile::{Mode, Request};
use ecs_reloader::reference::Site;
use ecs_reloader::rollout::LogProgress;
use std::{sync::Arc, time::Duration};
use tokio::time::sleep;

fn site() -> Site {
    Site::Secret {
        container: "app".into(),
        name: "S".into(),
    }
}
fn parts(f: &FakeAws, c: &Arc<dyn Clock>, m: Mode) -> Parts {
    assemble(
        &Config::default(),
        f.clients(),
        c.clone(),
        Arc::new(LogProgress),
        m,
    )
}
fn changes(body: serde_json::Value) -> Changes {
    let mut c = Changes::default();
    assert!(c.add(&event::parse(&body.to_string()).expect("parses")));
    c
}
const S5: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn an_ssm_label_moved_back_is_rolled() {
    for mode in [Mode::Watch, Mode::FireAndForget] {
        let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
        let v1 = fake.put_parameter("/app/flag");
        let v2 = fake.put_parameter("/app/flag");
        fake.label_parameter("/app/flag", v2, "prod");
        sleep(S5).await;
        let td = fake.register_task_definition("p", &[(site(), "/app/flag:prod")]);
        fake.create_service("prod", "api", &td, 1, &[]);
        sleep(S5).await;
        fake.label_parameter("/app/flag", v1, "prod");
        let at = clock.now().to_rfc3339();
        sleep(S5).await;
        let c = changes(
            serde_json::json!({"source": "aws.ssm", "detail-type": "AWS API Call via CloudTrail",
            "time": at, "region": "eu-west-1", "detail": {"eventName": "LabelParameterVersion",
            "requestParameters": {"name": "/app/flag", "parameterVersion": v1, "labels": ["prod"]}}}),
        );
        let pass = parts(&fake, &clock, mode)
            .reconciler
            .pass(&Request::changes(c))
            .await
            .expect("pass");
        assert!(pass.assessment.services[0].decision.is_stale());
        assert_eq!(
            fake.rollouts_of("prod", "api"),
            1,
            "{mode:?}: {:?}",
            pass.outcomes
        );
    }
}

/// A label moved back, which only its event can tell, on a service outside its window: the
/// Lambda hands the event on (delayed, at most 15 minutes at a time), so that the pass inside the
/// window still knows the move and rolls it.
#[tokio::test(start_paused = true)]
async fn a_label_moved_back_outside_the_window_rolls_when_it_opens() {
    use ecs_reloader::aws::fake::SentQueue;
    use ecs_reloader::driver::lambda::Handler;
    use ecs_reloader::metrics::Metrics;
    use ecs_reloader::notify::Notifier;

    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1"); // Thursday 00:00 UTC
    let arn = fake.create_secret("app/staged");
    let first = fake.put_secret_value("app/staged", &["blue"]);
    sleep(S5).await;
    fake.put_secret_value("app/staged", &["blue"]);
    sleep(S5).await;
    let td = fake.register_task_definition("p", &[(site(), &format!("{arn}::blue:"))]);
    fake.create_service(
        "prod",
        "api",
        &td,
        1,
        &[("ecs-reloader/window", "Sat 02:00-04:00 UTC")],
    );
    sleep(S5).await;
    fake.move_stage("app/staged", "blue", &first);
    let at = clock
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    sleep(S5).await;

    let queue = Arc::new(SentQueue::default());
    let notifier = Arc::new(Notifier::new(Arc::new(Metrics::new()), None));
    let parts = assemble(
        &Config::default(),
        fake.clients(),
        clock.clone(),
        notifier.clone(),
        Mode::FireAndForget,
    );
    let h = Handler::new(parts, notifier, Some(queue.clone()));
    let moved = serde_json::json!({"version": "0", "id": "l", "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager", "time": at, "region": "eu-west-1", "resources": [arn],
        "detail": {"name": "app/staged", "labelUpdated": "blue", "versionId": first}});
    let deadline = |c: &Arc<dyn Clock>| c.now() + chrono::Duration::seconds(60);
    let r = h.handle(moved, deadline(&clock)).await.expect("answers");
    assert_eq!(r["decisions"]["scheduled"], 1, "{r}");
    let mut carried = queue.sent();
    assert_eq!(carried.len(), 1, "handed on: {carried:?}");
    assert_eq!(
        carried[0].1,
        Duration::from_secs(15 * 60),
        "at most 15 minutes at a time"
    );
    // Delivered every 15 minutes until the window opens (Saturday 02:00, 50 h on).
    let mut deliveries = 0;
    while fake.rollouts_of("prod", "api") == 0 {
        assert!(deliveries < 250, "never rolled");
        let (body, delay) = carried.pop().expect("the change is carried forward");
        sleep(delay).await;
        queue.clear();
        let batch =
            serde_json::json!({"Records": [{"messageId": format!("m{deliveries}"), "body": body}]});
        let r = h.handle(batch, deadline(&clock)).await.expect("answers");
        assert_eq!(r, serde_json::json!({"batchItemFailures": []}));
        carried = queue.sent();
        deliveries += 1;
    }
    assert_eq!(
        fake.rollouts_of("prod", "api"),
        1,
        "rolled once, inside the window"
    );
    let at = fake.updates()[0].at;
    assert!(
        at >= "2026-01-03T02:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .expect("t")
            && at
                < "2026-01-03T04:00:00Z"
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .expect("t"),
        "inside the window: {at}"
    );
    assert!(carried.is_empty(), "done: nothing carried any more");
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_earlier_wave_holds_back_later_waves() {
    for mode in [Mode::Watch, Mode::FireAndForget] {
        let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
        let arn = fake.create_secret("app/db");
        let td = fake.register_task_definition("p", &[(site(), arn.as_str())]);
        let tags = [
            ("ecs-reloader/wave", "1"),
            ("ecs-reloader/window", "Sat 02:00-04:00 UTC"),
        ];
        fake.create_service("prod", "replica", &td, 1, &tags);
        fake.create_service("prod", "writer", &td, 1, &[("ecs-reloader/wave", "2")]);
        sleep(S5).await;
        fake.put_secret_value("app/db", &[]);
        sleep(S5).await;
        parts(&fake, &clock, mode)
            .reconciler
            .pass(&Request::all())
            .await
            .expect("pass");
        assert_eq!(
            fake.rollouts_of("prod", "writer"),
            0,
            "{mode:?}: wave 2 rolled before wave 1"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn no_update_service_after_the_lease_is_no_longer_trusted() {
    use ecs_reloader::lease::{Keeper, MemoryStore};
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let arn = fake.create_secret("app/db");
    let td = fake.register_task_definition("p", &[(site(), arn.as_str())]);
    for n in ["a", "b", "c", "d"] {
        fake.create_service("prod", n, &td, 1, &[]);
    }
    sleep(S5).await;
    fake.put_secret_value("app/db", &[]);
    sleep(S5).await;
    let keeper = Keeper::new(
        Arc::new(MemoryStore::default()),
        clock.clone(),
        Duration::from_secs(30),
        "a".into(),
    );
    keeper.step().await; // leads, trusted for 20 s; no renewal follows (DynamoDB unreachable)
    let trusted_until = clock.now() + chrono::Duration::seconds(20);
    let mut config = Config::default();
    config.rollout.updates_per_second = 0.05;
    config.rollout.canary = false;
    let p = assemble_with(
        &config,
        fake.clients(),
        clock.clone(),
        Arc::new(LogProgress),
        Mode::FireAndForget,
        keeper.leadership(),
    );
    p.reconciler.pass(&Request::all()).await.expect("pass");
    let late: Vec<_> = fake
        .updates()
        .into_iter()
        .filter(|u| u.at >= trusted_until)
        .collect();
    assert!(
        late.is_empty(),
        "UpdateService without a trusted lease: {late:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_filter_that_matches_nothing_is_reported() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let arn = fake.create_secret("app/db");
    let td = fake.register_task_definition("p", &[(site(), arn.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    sleep(S5).await;
    fake.put_secret_value("app/db", &[]);
    sleep(S5).await;
    let p = parts(&fake, &clock, Mode::Watch);
    let typo = Request {
        services: vec!["prod/apii".into()],
        ..Request::all()
    };
    let err = p
        .reconciler
        .pass(&typo)
        .await
        .expect_err("a typo is an error");
    assert!(err.to_string().contains("prod/apii"), "{err}");
    assert!(fake.updates().is_empty());
    // A service ARN names the service.
    let by_arn = Request {
        services: vec!["arn:aws:ecs:eu-west-1:111122223333:service/prod/api".into()],
        ..Request::all()
    };
    let pass = p.reconciler.pass(&by_arn).await.expect("pass");
    assert!(pass.problems().is_empty(), "{:?}", pass.problems());
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
}

#[test]
fn a_window_inside_the_spring_forward_gap_opens() {
    use chrono::{DateTime, Utc};
    use ecs_reloader::window::{Opening, Windows};
    let w = Windows::parse("Sun 02:00-02:30 America/New_York").expect("parses");
    let t = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
    let Opening::At { start, .. } = w.opening(t("2026-03-08T06:30:00Z")) else {
        panic!()
    };
    assert_eq!(start, t("2026-03-08T07:00:00Z"));
    assert_eq!(
        w.opening(start),
        Opening::Open,
        "serve wakes at the start and finds it closed"
    );
}
