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
