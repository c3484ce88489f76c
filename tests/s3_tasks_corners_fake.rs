//! Corners of the S3 environment-file source and the task reports (#24), over the fake on
//! paused time: keys as S3's events spell them, keys with spaces, and the scope of scheduled
//! tasks.

use std::time::Duration;

use ecs_reloader::aws::ScheduleKind;
use ecs_reloader::config::Config;
use ecs_reloader::driver::cli::{self, Options, Output};
use ecs_reloader::driver::fake_world::World;
use ecs_reloader::driver::setup::Parts;
use ecs_reloader::reference::Site;

fn secret() -> Site {
    Site::Secret {
        container: "job".into(),
        name: "DB".into(),
    }
}

async fn json_pass(p: &Parts) -> serde_json::Value {
    let mut out = Vec::new();
    let opts = Options {
        output: Output::Json,
        dry_run: true,
        ..Default::default()
    };
    let ending = cli::run(&p.reconciler, &opts, &mut out)
        .await
        .expect("pass runs");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(ending.ok, "{}: {text}", ending.message);
    serde_json::from_str(&text).expect("JSON")
}

/// `[scope] clusters = ["prod"]`: a rule that runs in cluster `batch` (outside scope) is not
/// reported, as standalone tasks of `batch` are not read.
#[tokio::test(start_paused = true)]
async fn a_scheduled_task_in_a_cluster_outside_scope_is_not_reported() {
    let mut config = Config::default();
    config.scope.clusters = vec!["prod".into()];
    let World { fake, parts: r, .. } = World::builder().config(config).build().await;
    let db = fake.create_secret("app/db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("job", &[(secret(), db.as_str())]);
    fake.create_service("prod", "web", &td, 1, &[]);
    fake.create_service("batch", "other", &td, 1, &[]);
    fake.schedule_task(ScheduleKind::EventbridgeRule, "in-scope", "prod", &td);
    fake.schedule_task(ScheduleKind::EventbridgeRule, "out-of-scope", "batch", &td);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let report = json_pass(&r).await;
    let names: Vec<&str> = report["scheduled_tasks"]
        .as_array()
        .expect("key")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["in-scope"],
        "a rule of a cluster outside [scope] clusters: {report}"
    );
}

/// S3's notifications URL-encode the object key (`c++.env` arrives as `c%2B%2B.env`): the
/// event still names the object the task definition names, and its dependant rolls.
#[tokio::test(start_paused = true)]
async fn an_object_event_with_an_encoded_key_rolls_its_dependants() {
    use ecs_reloader::event::{self, Changes};
    use ecs_reloader::reconcile::Request;
    let World { fake, parts: r, .. } = World::builder().build().await;
    fake.put_object("conf", "c++.env");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition(
        "app",
        &[(
            Site::EnvironmentFile {
                container: "app".into(),
            },
            "arn:aws:s3:::conf/c++.env",
        )],
    );
    fake.create_service("prod", "api", &td, 2, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_object("conf", "c++.env");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let body = serde_json::json!({
        "version": "0", "id": "s3-event-1", "detail-type": "Object Created", "source": "aws.s3",
        "account": "111122223333", "time": "2026-01-01T00:00:20Z", "region": "eu-west-1",
        "resources": ["arn:aws:s3:::conf"],
        "detail": {"version": "0", "bucket": {"name": "conf"}, "object": {"key": "c%2B%2B.env"},
            "requester": "111122223333", "reason": "PutObject"}
    })
    .to_string();
    let mut changes = Changes::default();
    assert!(changes.add(&event::parse(&body).expect("parsed")));
    let done = r
        .reconciler
        .pass(&Request::changes(changes))
        .await
        .expect("pass");
    let rolled: Vec<String> = fake.updates().iter().map(|u| u.service.clone()).collect();
    assert_eq!(
        rolled,
        ["prod/api"],
        "the event's object is s3://conf/c++.env: {:?}",
        done.assessment.services
    );
}

/// A key with a space is a valid S3 key, and ECS reads it as an environment file: it is judged
/// like any other (only control characters are refused).
#[tokio::test(start_paused = true)]
async fn an_env_file_key_with_a_space_is_judged() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    fake.put_object("conf", "my app.env");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition(
        "app",
        &[(
            Site::EnvironmentFile {
                container: "app".into(),
            },
            "arn:aws:s3:::conf/my app.env",
        )],
    );
    fake.create_service("prod", "api", &td, 2, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = json_pass(&r).await;
    assert_eq!(report["services"][0]["decision"], "in_sync", "{report}");
}
