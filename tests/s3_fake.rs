//! S3 environment files over the in-memory fake, on tokio's paused clock: a written file rolls
//! exactly its dependants, once, by a resync and by its event; a refused bucket or a deleted
//! object makes only its dependants `unknown`; the fake has no way to read an object at all, and
//! the calls made are listings.

use std::sync::Arc;
use std::time::Duration;

use ecs_reloader::aws::fake::FakeAws;
use ecs_reloader::aws::ErrorKind;
use ecs_reloader::config::Config;
use ecs_reloader::decide::Decision;
use ecs_reloader::driver::cli::{self, Options, Output};
use ecs_reloader::driver::fake_world::World;
use ecs_reloader::driver::setup::{self, Parts};
use ecs_reloader::event::{self, Changes};
use ecs_reloader::index::Scope;
use ecs_reloader::reconcile::{Mode, Request};
use ecs_reloader::reference::Site;
use ecs_reloader::rollout::LogProgress;

fn env_file() -> Site {
    Site::EnvironmentFile {
        container: "app".into(),
    }
}

fn secret() -> Site {
    Site::Secret {
        container: "app".into(),
        name: "S".into(),
    }
}

async fn pass(p: &Parts) -> cli::Ending {
    let mut out = Vec::new();
    let opts = Options {
        output: Output::Json,
        ..Default::default()
    };
    cli::run(&p.reconciler, &opts, &mut out)
        .await
        .expect("pass runs")
}

fn object_event(kind: &str, bucket: &str, key: &str) -> String {
    serde_json::json!({
        "version": "0", "id": "s3-event-1", "detail-type": kind, "source": "aws.s3",
        "account": "111122223333", "time": "2026-01-01T00:00:20Z", "region": "eu-west-1",
        "resources": [format!("arn:aws:s3:::{bucket}")],
        "detail": {"version": "0", "bucket": {"name": bucket}, "object": {"key": key},
            "requester": "111122223333", "reason": "PutObject"}
    })
    .to_string()
}

/// A world of four services: `api` and `worker` read `conf/app.env`, `other` reads
/// `conf/other.env`, `plain` reads a secret only.
async fn world(fake: &FakeAws) {
    fake.put_object("conf", "app.env");
    fake.put_object("conf", "other.env");
    fake.put_object("locked", "team.env");
    let db = fake.create_secret("app/db");
    // Written well before the deployments (a write in their own second would count as after).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td_app = fake.register_task_definition(
        "app",
        &[
            (env_file(), "arn:aws:s3:::conf/app.env"),
            (secret(), db.as_str()),
        ],
    );
    let td_other =
        fake.register_task_definition("other", &[(env_file(), "arn:aws:s3:::conf/other.env")]);
    let td_plain = fake.register_task_definition("plain", &[(secret(), db.as_str())]);
    fake.create_service("prod", "api", &td_app, 2, &[]);
    fake.create_service("prod", "worker", &td_app, 2, &[]);
    fake.create_service("prod", "other", &td_other, 2, &[]);
    fake.create_service("prod", "plain", &td_plain, 2, &[]);
}

#[tokio::test(start_paused = true)]
async fn a_written_env_file_rolls_its_dependants_once_and_a_second_pass_nothing() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    world(&fake).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let ending = pass(&r).await;
    assert!(ending.ok, "{}", ending.message);
    assert!(fake.updates().is_empty(), "in sync: nothing to roll");

    fake.put_object("conf", "app.env");
    let ending = pass(&r).await;
    assert!(ending.ok, "{}", ending.message);
    let rolled: Vec<String> = fake.updates().iter().map(|u| u.service.clone()).collect();
    assert_eq!(
        rolled,
        ["prod/api", "prod/worker"],
        "exactly the file's dependants"
    );

    let ending = pass(&r).await;
    assert!(ending.ok, "{}", ending.message);
    assert_eq!(fake.updates().len(), 2, "a second pass rolls nothing");
    assert!(fake.calls("s3:ListObjectsV2") > 0, "dated by listing");
    assert!(
        fake.all_calls().keys().all(|op| !op.starts_with("s3:Get")),
        "no object is ever read: {:?}",
        fake.all_calls()
    );
}

#[tokio::test(start_paused = true)]
async fn an_object_created_event_rolls_only_that_objects_dependants() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    world(&fake).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Both files are written; only one event arrives: the pass for it looks at its dependants
    // alone (the resync catches the other).
    fake.put_object("conf", "app.env");
    fake.put_object("conf", "other.env");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut changes = Changes::default();
    let parsed =
        event::parse(&object_event("Object Created", "conf", "other.env")).expect("parsed");
    assert!(changes.add(&parsed));
    let done = r
        .reconciler
        .pass(&Request::changes(changes))
        .await
        .expect("pass");
    let rolled: Vec<String> = fake.updates().iter().map(|u| u.service.clone()).collect();
    assert_eq!(rolled, ["prod/other"], "{:?}", done.assessment.services);
    let finding = done
        .assessment
        .services
        .iter()
        .find(|a| a.key.service == "other")
        .and_then(|a| match &a.decision {
            Decision::Stale { findings } => findings.first().cloned(),
            _ => None,
        });
    // Decided before rolling, so it was stale, and its reason names the file.
    let finding = finding.expect("other was stale");
    assert_eq!(finding.secret, "s3://conf/other.env");
    assert!(finding
        .reason
        .contains("environment file s3://conf/other.env written"));
}

#[tokio::test(start_paused = true)]
async fn a_refused_bucket_or_a_deleted_object_makes_only_its_dependants_unknown() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    world(&fake).await;
    let td_locked =
        fake.register_task_definition("locked", &[(env_file(), "arn:aws:s3:::locked/team.env")]);
    fake.create_service("prod", "locked", &td_locked, 2, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.refuse(
        "s3:ListObjectsV2",
        "locked/",
        ErrorKind::AccessDenied,
        "AccessDenied: Access Denied",
    );
    fake.put_object("conf", "app.env");
    fake.put_secret_value("app/db", &[]);
    fake.delete_object("conf", "other.env");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let a = r
        .reconciler
        .assess(&Scope::default(), &[])
        .await
        .expect("assess");
    let decision = |name: &str| {
        a.services
            .iter()
            .find(|s| s.key.service == name)
            .map(|s| s.decision.clone())
            .expect("assessed")
    };
    match decision("locked") {
        Decision::Unknown { problems } => {
            let p = problems.join("; ");
            assert!(
                p.contains("s3:ListObjectsV2")
                    && p.contains("s3://locked/team.env")
                    && p.contains("allow s3:ListBucket on arn:aws:s3:::locked"),
                "{p}"
            );
        }
        other => panic!("locked: {other:?}"),
    }
    match decision("other") {
        Decision::Unknown { problems } => {
            assert!(problems
                .join("; ")
                .contains("no object s3://conf/other.env"));
        }
        other => panic!("other: {other:?}"),
    }
    for name in ["api", "worker", "plain"] {
        assert!(decision(name).is_stale(), "{name}: {:?}", decision(name));
    }

    let ending = pass(&r).await;
    assert!(!ending.ok, "unknown services end the run with 1");
    let mut rolled: Vec<String> = fake.updates().iter().map(|u| u.service.clone()).collect();
    rolled.sort();
    assert_eq!(rolled, ["prod/api", "prod/plain", "prod/worker"]);
}

/// Two targets (the operator's own account and a member's) whose `prod/api` names the same
/// object. The bucket's `Object Created` event reaches both; each lists the bucket with its own
/// credentials. The member's listing is refused: only its dependant is `unknown`, and the own
/// account's dependant is rolled at once.
#[tokio::test(start_paused = true)]
async fn an_object_event_reaches_every_target_and_a_refusal_stays_in_its_target() {
    use ecs_reloader::driver::setup::TargetSpec;

    let (own, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let member = FakeAws::new("eu-west-1", clock.clone());
    for fake in [&own, &member] {
        fake.put_object("shared", "app.env");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for fake in [&own, &member] {
        let td =
            fake.register_task_definition("api", &[(env_file(), "arn:aws:s3:::shared/app.env")]);
        fake.create_service("prod", "api", &td, 1, &[]);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    member.refuse(
        "s3:ListObjectsV2",
        "shared/",
        ErrorKind::AccessDenied,
        "AccessDenied: Access Denied",
    );
    for fake in [&own, &member] {
        fake.put_object("shared", "app.env");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spec = |account: &str| TargetSpec {
        account: account.into(),
        region: "eu-west-1".into(),
        role: None,
        clusters: vec!["prod".into()],
    };
    let fleet = setup::assemble_fleet(
        &Config::default(),
        vec![
            (spec(""), own.clients()),
            (spec("222233334444"), member.clients()),
        ],
        clock.clone(),
        Arc::new(LogProgress),
        Mode::Watch,
        None,
    )
    .with_identity(own.clients().identity);

    let mut changes = Changes::default();
    let parsed =
        event::parse(&object_event("Object Created", "shared", "app.env")).expect("parsed");
    assert!(changes.add(&parsed));
    let pass = fleet.pass(&Request::changes(changes)).await.expect("pass");
    assert_eq!(
        own.rollouts_of("prod", "api"),
        1,
        "the own account's dependant"
    );
    assert!(
        member.updates().is_empty(),
        "the refused target rolls nothing"
    );
    let unknown: Vec<String> = pass
        .assessment
        .services
        .iter()
        .filter_map(|a| match &a.decision {
            Decision::Unknown { problems } => Some(problems.join("; ")),
            _ => None,
        })
        .collect();
    assert_eq!(unknown.len(), 1, "{:?}", pass.assessment.services);
    assert!(
        unknown[0].contains("allow s3:ListBucket on arn:aws:s3:::shared"),
        "{}",
        unknown[0]
    );
    assert!(
        member.calls("s3:ListObjectsV2") > 0,
        "the member listed with its own credentials"
    );
}
