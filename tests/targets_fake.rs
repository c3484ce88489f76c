//! Targets over the in-memory fake, on tokio's paused clock: each target paces its calls with
//! token buckets of its own (ECS's and Secrets Manager's quotas are per account and region).

use std::sync::Arc;
use std::time::Duration;

use ecs_reloader::aws::fake::FakeAws;
use ecs_reloader::config::Config;
use ecs_reloader::driver::setup::{self, TargetSpec};
use ecs_reloader::reconcile::{Mode, Request};
use ecs_reloader::reference::Site;
use ecs_reloader::rollout::LogProgress;

/// 20 services in cluster prod, all resolving one secret.
fn world(fake: &FakeAws) {
    let arn = fake.create_secret("app/db");
    let site = Site::Secret {
        container: "app".into(),
        name: "DB".into(),
    };
    let td = fake.register_task_definition("api", &[(site, arn.as_str())]);
    for s in 0..20 {
        fake.create_service("prod", &format!("svc-{s:02}"), &td, 1, &[]);
    }
}

#[tokio::test(start_paused = true)]
async fn each_target_paces_with_buckets_of_its_own() {
    let (east, clock) = FakeAws::on_tokio_clock("us-east-1");
    let west = FakeAws::new("eu-west-1", clock.clone());
    world(&east);
    world(&west);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // DescribeServices takes 10 services a call: two calls per target, the second waiting 10 s
    // for its bucket. Shared buckets would make four calls wait 30 s.
    let mut config = Config::default();
    config.pacing.describe_services_per_second = 0.1;
    config.pacing.describe_services_burst = 1;
    let spec = |region: &str| TargetSpec {
        account: String::new(),
        region: region.into(),
        role: None,
        clusters: vec!["prod".into()],
    };
    let fleet = setup::assemble_fleet(
        &config,
        vec![
            (spec("us-east-1"), east.clients()),
            (spec("eu-west-1"), west.clients()),
        ],
        clock,
        Arc::new(LogProgress),
        Mode::Watch,
        None,
    );
    let started = tokio::time::Instant::now();
    let pass = fleet
        .pass(&Request {
            dry_run: true,
            ..Request::all()
        })
        .await
        .expect("pass");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(20),
        "each target waits for its own bucket only: {took:?}"
    );
    assert_eq!(pass.assessment.services.len(), 40);
    let mut targets: Vec<String> = pass
        .targets
        .iter()
        .map(|t| format!("{} {} {:?}", t.account, t.region, t.problem))
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        ["111122223333 eu-west-1 None", "111122223333 us-east-1 None"]
    );
    let calls = fleet.stats().snapshot();
    assert_eq!(
        calls.get("ecs:DescribeServices").map(|s| s.calls),
        Some(4),
        "the process's counters add up every target's: {calls:?}"
    );
}

/// A service in prod resolving the SSM parameter /app/flag.
fn parameter_world(fake: &FakeAws) {
    fake.put_parameter("/app/flag");
    let site = Site::Secret {
        container: "app".into(),
        name: "FLAG".into(),
    };
    let td = fake.register_task_definition("flagged", &[(site, "/app/flag")]);
    fake.create_service("prod", "flagged", &td, 1, &[]);
}

#[tokio::test(start_paused = true)]
async fn a_parameter_change_goes_to_the_targets_of_its_account_only() {
    use ecs_reloader::event::{self, Changes};
    let (one, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let two = FakeAws::new("eu-west-1", clock.clone());
    parameter_world(&one);
    parameter_world(&two);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // The same parameter name changed in both accounts; the event comes from the second.
    one.put_parameter("/app/flag");
    two.put_parameter("/app/flag");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let spec = |account: &str| TargetSpec {
        account: account.into(),
        region: "eu-west-1".into(),
        role: None,
        clusters: vec!["prod".into()],
    };
    let fleet = setup::assemble_fleet(
        &Config::default(),
        vec![
            (spec("111111111111"), one.clients()),
            (spec("222222222222"), two.clients()),
        ],
        clock,
        Arc::new(LogProgress),
        Mode::Watch,
        None,
    );
    let body = serde_json::json!({
        "source": "aws.ssm", "detail-type": "Parameter Store Change",
        "account": "222222222222", "region": "eu-west-1",
        "detail": {"name": "/app/flag", "operation": "Update"}
    });
    let mut changes = Changes::default();
    changes.add(&event::parse(&body.to_string()).expect("event"));
    let pass = fleet
        .pass(&Request {
            dry_run: true,
            ..Request::changes(changes)
        })
        .await
        .expect("pass");
    assert_eq!(
        pass.assessment.change_set.changes.len(),
        1,
        "only the second account's dependant: {:?}",
        pass.assessment.change_set.changes
    );
    let worked: Vec<(String, bool)> = pass
        .targets
        .iter()
        .map(|t| (t.account.clone(), t.problem.is_none()))
        .collect();
    assert_eq!(
        worked,
        [("111111111111".into(), true), ("222222222222".into(), true)]
    );
    // Both are stale by their metadata: a resync rolls both.
    let all = fleet
        .pass(&Request {
            dry_run: true,
            ..Request::all()
        })
        .await
        .expect("pass");
    assert_eq!(all.assessment.change_set.changes.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_target_that_fails_is_reported_and_looked_at_again_within_a_minute() {
    use ecs_reloader::aws::ErrorKind;
    let (one, clock) = FakeAws::on_tokio_clock("us-east-1");
    let two = FakeAws::new("eu-west-1", clock.clone());
    world(&one);
    world(&two);
    tokio::time::sleep(Duration::from_secs(10)).await;
    two.fail_next("ecs:ListServices", 100, ErrorKind::AccessDenied);
    let spec = |region: &str| TargetSpec {
        account: String::new(),
        region: region.into(),
        role: None,
        clusters: vec!["prod".into()],
    };
    let fleet = setup::assemble_fleet(
        &Config::default(),
        vec![
            (spec("us-east-1"), one.clients()),
            (spec("eu-west-1"), two.clients()),
        ],
        clock,
        Arc::new(LogProgress),
        Mode::Watch,
        None,
    );
    let pass = fleet
        .pass(&Request {
            dry_run: true,
            ..Request::all()
        })
        .await
        .expect("one target's failure does not fail the pass");
    assert_eq!(pass.assessment.services.len(), 20, "the other target's");
    let problems: Vec<(String, bool)> = pass
        .targets
        .iter()
        .map(|t| (t.region.clone(), t.problem.is_some()))
        .collect();
    assert_eq!(
        problems,
        [("us-east-1".into(), false), ("eu-west-1".into(), true)]
    );
    assert!(
        pass.problems()
            .iter()
            .any(|p| p.contains("eu-west-1") && p.contains("ecs:ListServices")),
        "{:?}",
        pass.problems()
    );
    // Looked at again within a minute: a retry of the failed target (bounded by the drivers),
    // not a wait of the pass's own.
    assert_eq!(pass.target_retry, Some(Duration::from_secs(60)));
    assert_eq!(pass.requeue_after, None);
}
