//! Rolling each service the way it deploys (#23), over the in-memory fake on tokio's paused
//! clock: ECS's blue/green (its bake time, rollback and lifecycle hooks read through its service
//! deployment), CodeDeploy (the same revision through `CreateDeployment`, never `UpdateService`),
//! `EXTERNAL` services (reported, never rolled, never failing the scan), what blue/green costs in
//! `max_concurrent`, and an image tag that moved since the deployment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ecs_reloader::aws::fake::{Behaviour, FakeAws};
use ecs_reloader::aws::{AwsResult, Controller, EcsStrategy};
use ecs_reloader::clock::Clock;
use ecs_reloader::config::{Config, Dur, ImageDrift};
use ecs_reloader::decide::Decision;
use ecs_reloader::driver::setup::{self, Parts};
use ecs_reloader::reconcile::{Mode, Pass, Request};
use ecs_reloader::reference::Site;
use ecs_reloader::rollout::{LogProgress, Outcome};

const ECR: &str = "111122223333.dkr.ecr.eu-west-1.amazonaws.com";

fn site(name: &str) -> Site {
    Site::Secret {
        container: "app".into(),
        name: name.into(),
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.rollout.poll_interval = Dur(Duration::from_secs(5));
    config
}

fn parts_with(fake: &FakeAws, clock: &Arc<dyn Clock>, config: &Config) -> Parts {
    setup::assemble(
        config,
        fake.clients(),
        clock.clone(),
        Arc::new(LogProgress),
        Mode::Watch,
    )
}

/// The parts as the Lambda and `--no-wait` run them: trigger, never watch.
fn without_waiting(fake: &FakeAws, clock: &Arc<dyn Clock>) -> Parts {
    setup::assemble(
        &config(),
        fake.clients(),
        clock.clone(),
        Arc::new(LogProgress),
        Mode::FireAndForget,
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

fn outcome<'a>(pass: &'a Pass, service: &str) -> Option<&'a Outcome> {
    pass.outcomes
        .iter()
        .find(|(k, _)| k.service == service)
        .map(|(_, o)| o)
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(5)).await;
}

/// A world: secret `app/s` and a task definition resolving it; `services` created; then `s`
/// changes. Returns the task definition.
async fn rotated_world(fake: &FakeAws, services: &[&str]) -> String {
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    for n in services {
        fake.create_service("prod", n, &td, 2, &[]);
    }
    settle().await;
    fake.put_secret_value("app/s", &[]);
    settle().await;
    td
}

fn blue_green(fake: &FakeAws, service: &str, bake: Duration) {
    fake.edit_service("prod", service, |s| {
        s.shape.strategy = EcsStrategy::BlueGreen;
        s.shape.bake_time = Some(bake);
    });
}

/// A blue/green service is done when its service deployment succeeded, after its bake time: not
/// when the `deployments` array says COMPLETED (the traffic shift), and not failed by
/// `[rollout] timeout` (15 min) for a 20-minute bake time it declares. The secret's next
/// dependant starts only after the canary's bake.
#[tokio::test(start_paused = true)]
async fn a_blue_green_rollout_is_done_after_its_bake_time() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["a-bg", "b-rolling"]).await;
    blue_green(&fake, "a-bg", Duration::from_secs(20 * 60));
    fake.set_behaviour("prod", "a-bg", Behaviour::Complete(Duration::from_secs(60)));
    let p = parts_with(&fake, &clock, &config());
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(outcome(&pass, "a-bg"), Some(Outcome::Healthy { .. })),
        "{:?}",
        pass.outcomes
    );
    assert!(matches!(
        outcome(&pass, "b-rolling"),
        Some(Outcome::Healthy { .. })
    ));
    let updates = fake.updates();
    let at = |s: &str| {
        updates
            .iter()
            .find(|u| u.service == s)
            .map(|u| u.at)
            .unwrap_or_else(|| panic!("{s} not rolled"))
    };
    let waited = at("prod/b-rolling") - at("prod/a-bg");
    assert!(
        waited >= chrono::Duration::minutes(21),
        "the next dependant started {waited} after the blue/green canary: before its bake time ended"
    );
    assert!(fake.calls("ecs:ListServiceDeployments") > 0);
}

/// A blue/green rollout that ECS rolls back (an alarm during the bake) is the change's failure:
/// the rest of the change set is halted, and held by the next pass.
#[tokio::test(start_paused = true)]
async fn a_rolled_back_blue_green_rollout_halts_the_change() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["a-bg", "b-rolling"]).await;
    blue_green(&fake, "a-bg", Duration::from_secs(300));
    fake.set_behaviour("prod", "a-bg", Behaviour::RollBack(Duration::from_secs(90)));
    let p = parts_with(&fake, &clock, &config());
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(outcome(&pass, "a-bg"), Some(Outcome::Failed { reason }) if reason.contains("rolled back")),
        "{:?}",
        pass.outcomes
    );
    assert_eq!(fake.rollouts_of("prod", "b-rolling"), 0);
    let again = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&again, "b-rolling"), Decision::Held { .. }),
        "{:?}",
        decision(&again, "b-rolling")
    );
    assert_eq!(fake.rollouts_of("prod", "b-rolling"), 0);
}

/// A lifecycle hook awaiting someone's action is its own state: when the time runs out the
/// rollout is `paused` (not failed, not a timeout), nothing further starts, and the pass says
/// what to do.
#[tokio::test(start_paused = true)]
async fn a_hook_awaiting_action_pauses_the_change() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["a-bg", "b-rolling"]).await;
    blue_green(&fake, "a-bg", Duration::from_secs(60));
    fake.set_behaviour("prod", "a-bg", Behaviour::AwaitHook);
    let bus = Arc::new(Recorded::default());
    let notifier = Arc::new(ecs_reloader::notify::Notifier::new(
        Arc::new(ecs_reloader::metrics::Metrics::new()),
        Some(bus.clone()),
    ));
    let p = setup::assemble(
        &config(),
        fake.clients(),
        clock.clone(),
        notifier.clone(),
        Mode::Watch,
    );
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    notifier.flush().await;
    assert!(
        bus.0
            .lock()
            .expect("lock")
            .iter()
            .any(|(t, d)| t == "Rollout Paused" && d["service"] == "a-bg"),
        "no Rollout Paused event"
    );
    let paused = outcome(&pass, "a-bg").expect("a-bg rolled");
    assert!(
        matches!(paused, Outcome::Paused { reason, .. } if reason.contains("ContinueServiceDeployment")),
        "{paused:?}"
    );
    assert!(!paused.is_failure() && !paused.is_success());
    assert_eq!(fake.rollouts_of("prod", "b-rolling"), 0);
    assert!(
        pass.problems()
            .iter()
            .any(|p| p.contains("someone's action")),
        "{:?}",
        pass.problems()
    );
}

/// `max_concurrent` counts what a rollout costs: a blue/green rollout runs both revisions, so
/// two slots. With `max_concurrent = 2`, four blue/green services roll one at a time; four
/// rolling ones two at a time.
#[tokio::test(start_paused = true)]
async fn blue_green_rollouts_take_two_slots() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let names = ["bg-1", "bg-2", "bg-3", "bg-4", "r-1", "r-2", "r-3", "r-4"];
    rotated_world(&fake, &names).await;
    for n in &names[..4] {
        blue_green(&fake, n, Duration::from_secs(60));
    }
    let mut cfg = config();
    cfg.rollout.canary = false;
    cfg.rollout.max_concurrent = 2;
    let p = parts_with(&fake, &clock, &cfg);
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(
        pass.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Healthy { .. }))
            .count(),
        8,
        "{:?}",
        pass.outcomes
    );
    let updates = fake.updates();
    let most = |prefix: &str| {
        updates
            .iter()
            .filter(|u| u.service.starts_with(prefix))
            .map(|u| u.in_progress_after)
            .max()
            .unwrap_or(0)
    };
    assert_eq!(most("prod/bg-"), 1, "{updates:?}");
    assert_eq!(most("prod/r-"), 2, "{updates:?}");
}

/// A `CODE_DEPLOY` service is rolled with a CodeDeploy deployment of its current task definition
/// behind its load balancer's container and port, on the group that deploys it; `UpdateService`
/// is never sent to it; the groups are read once for several rollouts.
#[tokio::test(start_paused = true)]
async fn a_codedeploy_service_is_rolled_through_codedeploy() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let td = rotated_world(&fake, &["cd-1", "cd-2"]).await;
    fake.deploy_with_codedeploy("prod", "cd-1", "app", "dg-1", ("web", 8080));
    fake.deploy_with_codedeploy("prod", "cd-2", "app", "dg-2", ("web", 8080));
    // An application this operator may not deploy (not granted in infra/): skipped, not fatal.
    let other_td = fake.register_task_definition("o", &[]);
    fake.create_service("other", "theirs", &other_td, 1, &[]);
    fake.deploy_with_codedeploy("other", "theirs", "not-ours", "dg", ("web", 80));
    fake.refuse(
        "codedeploy:ListDeploymentGroups",
        "not-ours",
        ecs_reloader::aws::ErrorKind::AccessDenied,
        "AccessDeniedException",
    );
    let p = parts_with(&fake, &clock, &config());
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    for s in ["cd-1", "cd-2"] {
        assert!(
            matches!(outcome(&pass, s), Some(Outcome::Healthy { .. })),
            "{s}: {:?}",
            pass.outcomes
        );
    }
    assert_eq!(fake.calls("ecs:UpdateService"), 0, "UpdateService sent");
    let made = fake.codedeploys();
    assert_eq!(made.len(), 2, "{made:?}");
    let first = made
        .iter()
        .find(|m| m.service == "prod/cd-1")
        .expect("cd-1");
    assert_eq!(first.group, ("app".to_string(), "dg-1".to_string()));
    let spec: serde_json::Value = serde_json::from_str(&first.appspec).expect("JSON AppSpec");
    let props = &spec["Resources"][0]["TargetService"]["Properties"];
    assert_eq!(props["TaskDefinition"], td.as_str(), "{spec}");
    assert_eq!(props["LoadBalancerInfo"]["ContainerName"], "web");
    assert_eq!(props["LoadBalancerInfo"]["ContainerPort"], 8080);
    assert_eq!(
        fake.calls("codedeploy:ListApplications"),
        1,
        "groups read once"
    );
    // Fresh now: a second pass rolls nothing.
    let again = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(again.outcomes.is_empty(), "{:?}", again.outcomes);
    assert_eq!(fake.codedeploys().len(), 2);
}

/// A failed CodeDeploy deployment halts the rest of the change like any other failure. CodeDeploy
/// then deletes the replacement task set, so ECS keeps no trace of the failure: the next pass
/// reads it from CodeDeploy (`ListDeployments`) and neither deploys that service again nor rolls
/// the rest.
#[tokio::test(start_paused = true)]
async fn a_failed_codedeploy_deployment_is_not_tried_again_and_halts_the_rest() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["a-cd", "b-rolling"]).await;
    fake.deploy_with_codedeploy("prod", "a-cd", "app", "dg", ("web", 80));
    fake.set_behaviour("prod", "a-cd", Behaviour::Fail(Duration::from_secs(60), 2));
    let p = parts_with(&fake, &clock, &config());
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(outcome(&pass, "a-cd"), Some(Outcome::Failed { reason }) if reason.contains("CodeDeploy deployment")),
        "{:?}",
        pass.outcomes
    );
    assert_eq!(fake.rollouts_of("prod", "b-rolling"), 0);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(600)).await;
        let again = p.reconciler.pass(&Request::all()).await.expect("pass");
        assert!(
            matches!(outcome(&again, "a-cd"), Some(Outcome::Failed { reason }) if reason.contains("not tried again")),
            "{:?}",
            again.outcomes
        );
    }
    assert_eq!(fake.codedeploys().len(), 1, "deployed again");
    assert_eq!(fake.rollouts_of("prod", "b-rolling"), 0);
}

/// A `CODE_DEPLOY` service no deployment group this operator may use deploys (its application is
/// not granted) costs only itself: it is not rolled (skipped, with what to do), and the rest of
/// the change rolls.
#[tokio::test(start_paused = true)]
async fn a_codedeploy_group_not_ours_costs_only_its_service() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["a-cd", "b-rolling"]).await;
    fake.deploy_with_codedeploy("prod", "a-cd", "not-ours", "dg", ("web", 80));
    fake.refuse(
        "codedeploy:ListDeploymentGroups",
        "not-ours",
        ecs_reloader::aws::ErrorKind::AccessDenied,
        "AccessDeniedException",
    );
    let p = parts_with(&fake, &clock, &config());
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(outcome(&pass, "a-cd"), Some(Outcome::Skipped { reason }) if reason.contains("CodeDeployApplications")),
        "{:?}",
        pass.outcomes
    );
    assert_eq!(fake.rollouts_of("prod", "b-rolling"), 1);
    assert!(fake.codedeploys().is_empty());
}

/// A deployment group replaced since it was read (the old one gone, a new one deploys the
/// service): the groups are read again once, and the rollout goes through the new group.
#[tokio::test(start_paused = true)]
async fn a_replaced_deployment_group_is_read_again() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["cd"]).await;
    fake.deploy_with_codedeploy("prod", "cd", "app", "dg-old", ("web", 80));
    let p = parts_with(&fake, &clock, &config());
    let first = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(matches!(
        outcome(&first, "cd"),
        Some(Outcome::Healthy { .. })
    ));
    fake.refuse(
        "codedeploy:CreateDeployment",
        "app/dg-old",
        ecs_reloader::aws::ErrorKind::NotFound,
        "DeploymentGroupDoesNotExistException",
    );
    fake.forget_groups_of("prod", "cd");
    fake.deploy_with_codedeploy("prod", "cd", "app", "dg-new", ("web", 80));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(outcome(&pass, "cd"), Some(Outcome::Healthy { .. })),
        "{:?}",
        pass.outcomes
    );
    let groups: Vec<String> = fake.codedeploys().into_iter().map(|c| c.group.1).collect();
    assert_eq!(groups, ["dg-old", "dg-new"]);
}

/// An outcome bus that records what it is given.
#[derive(Default)]
struct Recorded(Mutex<Vec<(String, serde_json::Value)>>);

#[async_trait]
impl ecs_reloader::aws::queue::Bus for Recorded {
    async fn put(&self, detail_type: &str, detail: &serde_json::Value) -> AwsResult<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((detail_type.to_string(), detail.clone()));
        Ok(())
    }
}

/// A stale `EXTERNAL` service (and a `CODE_DEPLOY` one with `[rollout] codedeploy = false`) is
/// never rolled: it is `skipped` with what changed, counted as needing attention in the pass's
/// problems, the outcome events and the metrics; the rest of the fleet rolls.
#[tokio::test(start_paused = true)]
async fn a_service_nobody_here_may_roll_needs_attention() {
    use ecs_reloader::metrics::Metrics;
    use ecs_reloader::notify::Notifier;
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["ext", "cd", "rolling"]).await;
    fake.edit_service("prod", "ext", |s| s.controller = Controller::External);
    fake.deploy_with_codedeploy("prod", "cd", "app", "dg", ("web", 80));
    let mut cfg = config();
    cfg.rollout.codedeploy = false;
    let p = parts_with(&fake, &clock, &cfg);
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    for (s, why) in [("ext", "EXTERNAL"), ("cd", "codedeploy = false")] {
        let d = decision(&pass, s);
        assert!(
            matches!(d, Decision::Skipped { reason, findings } if reason.contains(why) && !findings.is_empty()),
            "{s}: {d:?}"
        );
        assert!(outcome(&pass, s).is_none(), "{s} rolled");
    }
    assert!(matches!(
        outcome(&pass, "rolling"),
        Some(Outcome::Healthy { .. })
    ));
    assert_eq!(fake.codedeploys().len(), 0);
    assert!(
        pass.problems()
            .iter()
            .any(|p| p.starts_with("2 service(s)") && p.contains("own controller")),
        "{:?}",
        pass.problems()
    );
    let bus = Arc::new(Recorded::default());
    let metrics = Arc::new(Metrics::new());
    let notifier = Notifier::new(metrics.clone(), Some(bus.clone()));
    notifier.after_pass(&pass);
    notifier.flush().await;
    let events = bus.0.lock().expect("lock").clone();
    let attention: Vec<&serde_json::Value> = events
        .iter()
        .filter(|(t, _)| t == "Rollout Needs Attention")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(attention.len(), 2, "{events:?}");
    assert!(attention
        .iter()
        .any(|d| d["service"] == "ext" && d["secrets"][0].as_str().is_some()));
    let text = metrics.render(&Default::default());
    assert!(
        text.lines()
            .any(|l| l.contains("kind=\"needs_attention\"") && l.ends_with(" 2")),
        "{text}"
    );
}

/// One service whose task definition cannot be read makes only that service `unknown`: the
/// scan goes on, and the others roll.
#[tokio::test(start_paused = true)]
async fn an_unreadable_task_definition_costs_only_its_service() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["ok"]).await;
    fake.create_service(
        "prod",
        "broken",
        "arn:aws:ecs:eu-west-1:111122223333:task-definition/gone:1",
        1,
        &[],
    );
    let p = parts_with(&fake, &clock, &config());
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    let d = decision(&pass, "broken");
    assert!(
        matches!(d, Decision::Unknown { problems } if problems[0].contains("ecs:DescribeTaskDefinition")),
        "{d:?}"
    );
    assert!(matches!(
        outcome(&pass, "ok"),
        Some(Outcome::Healthy { .. })
    ));
}

/// The image-drift world: `app:latest` named sha256:aaa when `svc` deployed, and the secret
/// changed; `pinned` names its image by digest.
async fn drifted_world(fake: &FakeAws) {
    let image = format!("{ECR}/app:latest");
    fake.push_image(&image, "sha256:aaa");
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    fake.set_images(&td, &[("app", image.as_str())]);
    let pinned = fake.register_task_definition("p", &[(site("S"), s.as_str())]);
    let by_digest = format!("{ECR}/app@sha256:aaa");
    fake.set_images(&pinned, &[("app", by_digest.as_str())]);
    fake.create_service("prod", "svc", &td, 1, &[]);
    fake.create_service("prod", "pinned", &pinned, 1, &[]);
    settle().await;
    fake.push_image(&image, "sha256:bbb");
    fake.put_secret_value("app/s", &[]);
    settle().await;
}

/// A rollout for a secret must not ship an image by accident: `svc`'s tag moved since its
/// deployment, so it is held, with a reason naming the container, the tag and both digests, and
/// not rolled; the service whose image is named by digest rolls. `--allow-image-drift` with
/// `--service` is the approval; `image_drift = "warn"` rolls and says so.
#[tokio::test(start_paused = true)]
async fn a_moved_image_tag_holds_the_rollout() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    drifted_world(&fake).await;
    let mut cfg = config();
    cfg.rollout.canary = false;
    let p = parts_with(&fake, &clock, &cfg);
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    let d = decision(&pass, "svc");
    assert!(
        matches!(d, Decision::Held { reason, .. }
            if reason.contains("container app") && reason.contains("app:latest")
                && reason.contains("sha256:aaa") && reason.contains("sha256:bbb")
                && reason.contains("--allow-image-drift")),
        "{d:?}"
    );
    assert_eq!(fake.rollouts_of("prod", "svc"), 0);
    assert_eq!(fake.rollouts_of("prod", "pinned"), 1);

    // The approval, by name.
    let approved = Request {
        services: vec!["prod/svc".into()],
        allow_image_drift: true,
        ..Request::all()
    };
    let pass = p.reconciler.pass(&approved).await.expect("pass");
    assert!(
        matches!(outcome(&pass, "svc"), Some(Outcome::Healthy { .. })),
        "{:?}",
        pass.outcomes
    );
    assert_eq!(fake.rollouts_of("prod", "svc"), 1);
}

/// `image_drift = "warn"` rolls a drifted service; `"allow"` does not even ask the registry.
#[tokio::test(start_paused = true)]
async fn image_drift_warn_and_allow_roll() {
    for (mode, asks) in [(ImageDrift::Warn, true), (ImageDrift::Allow, false)] {
        let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
        drifted_world(&fake).await;
        let mut cfg = config();
        cfg.rollout.canary = false;
        cfg.rollout.image_drift = mode;
        let p = parts_with(&fake, &clock, &cfg);
        p.reconciler.pass(&Request::all()).await.expect("pass");
        assert_eq!(fake.rollouts_of("prod", "svc"), 1, "{mode:?}");
        assert_eq!(fake.calls("ecr:DescribeImages") > 0, asks, "{mode:?}");
    }
}

/// A plan over a fleet mixing all five kinds shows each with its own decision and reason:
/// rolling, ECS blue/green and CodeDeploy are stale (each rolled its own way), `EXTERNAL` needs
/// its controller, and the service whose `:latest` moved is held.
#[tokio::test(start_paused = true)]
async fn a_plan_over_every_kind_shows_each_its_own_decision() {
    use ecs_reloader::report::Report;
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let image = format!("{ECR}/app:latest");
    fake.push_image(&image, "sha256:aaa");
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    let latest = fake.register_task_definition("l", &[(site("S"), s.as_str())]);
    fake.set_images(&latest, &[("app", image.as_str())]);
    for n in ["rolling", "bluegreen", "codedeploy", "external"] {
        fake.create_service("prod", n, &td, 1, &[]);
    }
    fake.create_service("prod", "latest", &latest, 1, &[]);
    blue_green(&fake, "bluegreen", Duration::from_secs(600));
    fake.deploy_with_codedeploy("prod", "codedeploy", "app", "dg", ("web", 80));
    fake.edit_service("prod", "external", |s| s.controller = Controller::External);
    settle().await;
    fake.push_image(&image, "sha256:bbb");
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let mut cfg = config();
    cfg.rollout.canary = false;
    let p = parts_with(&fake, &clock, &cfg);
    let plan = Request {
        dry_run: true,
        ..Request::all()
    };
    let pass = p.reconciler.pass(&plan).await.expect("plan");
    assert!(pass.outcomes.is_empty());
    let table = Report::new(&pass.assessment, &pass.outcomes, true).to_table();
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} not in the plan:\n{table}"))
            .to_string()
    };
    for n in ["rolling", "bluegreen", "codedeploy"] {
        assert!(
            line(n).contains("stale") && line(n).contains("would_roll"),
            "{table}"
        );
    }
    assert!(
        line("external").contains("skipped")
            && line("external").contains("needs_controller")
            && table.contains("EXTERNAL"),
        "{table}"
    );
    assert!(
        line("latest").contains("held") && table.contains("image drift"),
        "{table}"
    );
    assert_eq!(fake.calls("ecs:UpdateService"), 0);
    assert!(fake.codedeploys().is_empty());
}

/// `CreateDeployment` has no idempotency token: a failed attempt is reported, never retried
/// (a retry after a lost answer would deploy twice).
#[tokio::test(start_paused = true)]
async fn create_deployment_is_never_retried() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["cd"]).await;
    fake.deploy_with_codedeploy("prod", "cd", "app", "dg", ("web", 80));
    fake.fail_next(
        "codedeploy:CreateDeployment",
        1,
        ecs_reloader::aws::ErrorKind::Transient,
    );
    let p = parts_with(&fake, &clock, &config());
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(outcome(&pass, "cd"), Some(Outcome::Failed { .. })),
        "{:?}",
        pass.outcomes
    );
    assert_eq!(fake.calls("codedeploy:CreateDeployment"), 1);
}

/// A revision that cannot be read this once (throttled beyond the guard's retries) during an
/// event-driven refresh leaves the watch cache as it was: the next change of the secret still
/// finds the service and rolls it.
#[tokio::test(start_paused = true)]
async fn an_unreadable_revision_keeps_the_service_watched() {
    use ecs_reloader::event::{self, Changes};
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let p = parts_with(&fake, &clock, &Config::default());
    let db = fake.create_secret("app/db");
    settle().await;
    let td1 = fake.register_task_definition("api", &[(site("S"), db.as_str())]);
    fake.create_service("prod", "api", &td1, 1, &[]);
    settle().await;
    p.reconciler.pass(&Request::all()).await.expect("resync");
    assert_eq!(p.reconciler.watched(), Some(1));
    let td2 = fake.register_task_definition("api", &[(site("S"), db.as_str())]);
    fake.create_service("prod", "api", &td2, 1, &[]);
    let arn = fake.service("prod", "api").expect("exists").arn;
    let started = format!(
        r#"{{"source":"aws.ecs","detail-type":"ECS Deployment State Change","resources":["{arn}"],"detail":{{"eventType":"INFO","eventName":"SERVICE_DEPLOYMENT_IN_PROGRESS","deploymentId":"ecs-svc/9"}}}}"#
    );
    let mut c = Changes::default();
    assert!(c.add(&event::parse(&started).expect("event")));
    fake.fail_next(
        "ecs:DescribeTaskDefinition",
        13,
        ecs_reloader::aws::ErrorKind::Throttled,
    );
    p.reconciler
        .pass(&Request::changes(c))
        .await
        .expect("refresh");
    assert_eq!(
        p.reconciler.watched(),
        Some(1),
        "the service left the cache"
    );
    settle().await;
    fake.put_secret_value("app/db", &[]);
    settle().await;
    let rotated = format!(
        r#"{{"source":"aws.secretsmanager","detail-type":"AWS Service Event via CloudTrail","detail":{{"eventName":"RotationSucceeded","additionalEventData":{{"SecretId":"{db}"}}}}}}"#
    );
    let mut c = Changes::default();
    assert!(c.add(&event::parse(&rotated).expect("event")));
    p.reconciler.pass(&Request::changes(c)).await.expect("pass");
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
}

/// Without waiting (the Lambda, `--no-wait`), a blue/green canary guards its change until its
/// service deployment succeeded: the `deployments` array says COMPLETED once traffic moved, but
/// the bake time has not passed, so the rest of the change waits.
#[tokio::test(start_paused = true)]
async fn without_waiting_a_blue_green_canary_guards_until_its_bake_ends() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["a-bg", "b-rolling"]).await;
    blue_green(&fake, "a-bg", Duration::from_secs(20 * 60));
    fake.set_behaviour("prod", "a-bg", Behaviour::Complete(Duration::from_secs(60)));
    let p = without_waiting(&fake, &clock);
    p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(fake.rollouts_of("prod", "a-bg"), 1);
    // Traffic moved a minute in; the bake runs twenty.
    tokio::time::sleep(Duration::from_secs(120)).await;
    p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(
        fake.rollouts_of("prod", "b-rolling"),
        0,
        "rolled during the bake"
    );
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(
        fake.rollouts_of("prod", "b-rolling"),
        1,
        "never rolled after the bake"
    );
}

/// Image drift is asked again right before each rollout: a tag pushed while the canary rolls is
/// not shipped with the next dependant (skipped, then held by the next pass).
#[tokio::test(start_paused = true)]
async fn a_tag_moved_during_the_canary_is_not_shipped() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let image = format!("{ECR}/app:latest");
    fake.push_image(&image, "sha256:aaa");
    let s = fake.create_secret("app/s");
    settle().await;
    let td = fake.register_task_definition("s", &[(site("S"), s.as_str())]);
    fake.set_images(&td, &[("app", image.as_str())]);
    fake.create_service("prod", "a-svc", &td, 1, &[]);
    fake.create_service("prod", "b-svc", &td, 1, &[]);
    settle().await;
    fake.put_secret_value("app/s", &[]);
    settle().await;
    let p = parts_with(&fake, &clock, &config());
    let all = Request::all();
    let (pass, _) = tokio::join!(p.reconciler.pass(&all), async {
        // The canary (a-svc) rolls for 60 s; CI pushes :latest meanwhile.
        tokio::time::sleep(Duration::from_secs(30)).await;
        fake.push_image(&image, "sha256:bbb");
    });
    let pass = pass.expect("pass");
    assert!(
        matches!(outcome(&pass, "b-svc"), Some(Outcome::Skipped { reason }) if reason.contains("sha256:bbb")),
        "{:?}",
        pass.outcomes
    );
    assert_eq!(fake.rollouts_of("prod", "b-svc"), 0);
    let again = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&again, "b-svc"), Decision::Held { reason, .. } if reason.contains("image drift")),
        "{:?}",
        decision(&again, "b-svc")
    );
    assert_eq!(fake.rollouts_of("prod", "b-svc"), 0);
}

/// Without waiting, a CodeDeploy canary in flight (its replacement task set beside the original,
/// which still serves traffic) guards its change: the next pass neither picks another canary nor
/// calls the CodeDeploy service stuck; once it succeeded, the rest rolls.
#[tokio::test(start_paused = true)]
async fn without_waiting_a_codedeploy_canary_in_flight_guards_its_change() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["a-cd", "b-rolling"]).await;
    fake.deploy_with_codedeploy("prod", "a-cd", "app", "dg", ("web", 80));
    fake.set_behaviour(
        "prod",
        "a-cd",
        Behaviour::Complete(Duration::from_secs(600)),
    );
    // Deployed long before the change.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let p = without_waiting(&fake, &clock);
    p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(fake.codedeploys().len(), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let again = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(
        fake.rollouts_of("prod", "b-rolling"),
        0,
        "rolled beside the canary in flight"
    );
    assert!(
        !matches!(decision(&again, "a-cd"), Decision::Held { .. }),
        "{:?}",
        decision(&again, "a-cd")
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(fake.rollouts_of("prod", "b-rolling"), 1);
    assert_eq!(fake.codedeploys().len(), 1);
}

/// A CodeDeploy deployment `Ready` (waiting for someone to reroute traffic) is someone's action,
/// not a slow rollout: paused when the time is up, not failed.
#[tokio::test(start_paused = true)]
async fn a_codedeploy_deployment_waiting_to_reroute_is_paused() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["cd"]).await;
    fake.deploy_with_codedeploy("prod", "cd", "app", "dg", ("web", 80));
    fake.set_behaviour("prod", "cd", Behaviour::AwaitHook);
    let p = parts_with(&fake, &clock, &config());
    let pass = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(outcome(&pass, "cd"), Some(Outcome::Paused { reason, .. }) if reason.contains("ContinueDeployment")),
        "{:?}",
        pass.outcomes
    );
}

/// Without waiting, a blue/green canary whose lifecycle hook awaits someone's action past its
/// time holds the rest of its change, and the hold says what it waits for.
#[tokio::test(start_paused = true)]
async fn without_waiting_a_hook_awaiting_action_holds_the_change_saying_so() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    rotated_world(&fake, &["a-bg", "b-rolling"]).await;
    blue_green(&fake, "a-bg", Duration::from_secs(60));
    fake.set_behaviour("prod", "a-bg", Behaviour::AwaitHook);
    let p = without_waiting(&fake, &clock);
    p.reconciler.pass(&Request::all()).await.expect("pass");
    assert_eq!(fake.rollouts_of("prod", "a-bg"), 1);
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    let waiting = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&waiting, "b-rolling"), Decision::Settling { .. }),
        "{:?}",
        decision(&waiting, "b-rolling")
    );
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let held = p.reconciler.pass(&Request::all()).await.expect("pass");
    assert!(
        matches!(decision(&held, "b-rolling"), Decision::Held { reason, .. } if reason.contains("awaits action")),
        "{:?}",
        decision(&held, "b-rolling")
    );
    assert_eq!(fake.rollouts_of("prod", "b-rolling"), 0);
}
