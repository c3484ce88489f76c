//! Standalone tasks over the in-memory fake, on tokio's paused clock: a task started before a
//! change it resolves is reported (JSON under its own key, and the table) and left running; one
//! started after is not; services' own tasks are never reported apart; the reads happen on full
//! passes only, and `[scope] tasks = false` makes none.

use std::time::Duration;

use ecs_reloader::aws::fake::FakeAws;
use ecs_reloader::aws::ScheduleKind;
use ecs_reloader::config::Config;
use ecs_reloader::driver::cli::{self, Options, Output};
use ecs_reloader::driver::fake_world::World;
use ecs_reloader::driver::setup::Parts;
use ecs_reloader::event::{self, Changes};
use ecs_reloader::reconcile::Request;
use ecs_reloader::reference::Site;

fn secret() -> Site {
    Site::Secret {
        container: "job".into(),
        name: "DB".into(),
    }
}

async fn run(p: &Parts, dry_run: bool, output: Output) -> (cli::Ending, String) {
    let mut out = Vec::new();
    let opts = Options {
        output,
        dry_run,
        ..Default::default()
    };
    let ending = cli::run(&p.reconciler, &opts, &mut out)
        .await
        .expect("pass runs");
    (ending, String::from_utf8_lossy(&out).into_owned())
}

/// A service `web` and a standalone task `old` resolving `app/db`, and a task of a revision
/// without references; then `app/db` rotates and a task `new` starts after it. Returns the
/// two tasks' ARNs.
async fn world(fake: &FakeAws) -> (String, String) {
    let db = fake.create_secret("app/db");
    fake.put_object("conf", "job.env");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition(
        "job",
        &[
            (secret(), db.as_str()),
            (
                Site::EnvironmentFile {
                    container: "job".into(),
                },
                "arn:aws:s3:::conf/job.env",
            ),
        ],
    );
    let plain = fake.register_task_definition("plain", &[]);
    fake.create_service("prod", "web", &td, 2, &[]);
    let old = fake.run_task("prod", &td);
    fake.run_task("prod", &plain);
    fake.schedule_task(ScheduleKind::EventbridgeRule, "nightly", "prod", &td);
    fake.schedule_task(ScheduleKind::SchedulerSchedule, "hourly", "prod", &plain);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let new = fake.run_task("prod", &td);
    (old, new)
}

#[tokio::test(start_paused = true)]
async fn a_standalone_task_holding_a_rotated_secret_is_reported_and_left_alone() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    let (old, new) = world(&fake).await;

    let (ending, json) = run(&r, false, Output::Json).await;
    assert!(ending.ok, "{}", ending.message);
    let rolled: Vec<String> = fake.updates().iter().map(|u| u.service.clone()).collect();
    assert_eq!(
        rolled,
        ["prod/web"],
        "the service rolls; no task is a service"
    );
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let tasks = report["standalone_tasks"]
        .as_array()
        .expect("under their own key");
    let ids: Vec<&str> = tasks
        .iter()
        .filter_map(|t| t["task_arn"].as_str())
        .collect();
    assert_eq!(
        ids,
        [old.as_str()],
        "only the task started before the change: {json}"
    );
    let t = &tasks[0];
    assert_eq!(t["cluster"], "prod");
    assert!(t["task_definition"]
        .as_str()
        .is_some_and(|d| d.ends_with("job:1")));
    assert!(t["started_at"].is_string());
    let findings = t["findings"].as_array().expect("findings");
    assert_eq!(
        findings.len(),
        1,
        "the secret changed, the file did not: {t}"
    );
    assert_eq!(findings[0]["secret"], "app/db");
    assert!(findings[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("AWSCURRENT")));

    // Left alone: still running, and never in an UpdateService.
    let clients = fake.clients();
    let page = clients
        .tasks
        .list_cluster_tasks("prod", None)
        .await
        .expect("list");
    assert!(page.items.contains(&old) && page.items.contains(&new));
    assert_eq!(fake.updates().len(), 1);

    // The rule that runs the same revision picks the new value up at its next run; the
    // schedule whose revision resolves nothing is not mentioned.
    let scheduled = report["scheduled_tasks"]
        .as_array()
        .expect("under their own key");
    assert_eq!(scheduled.len(), 1, "{json}");
    assert_eq!(scheduled[0]["kind"], "eventbridge_rule");
    assert_eq!(scheduled[0]["name"], "nightly");
    assert_eq!(scheduled[0]["cluster"], "prod");
    assert_eq!(scheduled[0]["secrets"], serde_json::json!(["app/db"]));

    // The table says both.
    let (ending, table) = run(&r, true, Output::Text).await;
    assert!(ending.ok, "information, not a problem: {}", ending.message);
    let task_id = old.rsplit('/').next().expect("id");
    assert!(
        table.contains("STANDALONE TASKS") && table.contains(&format!("prod/{task_id}")),
        "{table}"
    );
    assert!(
        table.contains("SCHEDULED TASKS") && table.contains("rule nightly  prod  job:1  app/db"),
        "{table}"
    );
}

#[tokio::test(start_paused = true)]
async fn tasks_are_read_on_full_passes_only_and_not_at_all_when_opted_out() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    world(&fake).await;
    // An event pass (dry run: no proof of rotation, which lists a service's tasks) reads no
    // cluster's tasks.
    let mut changes = Changes::default();
    let body = serde_json::json!({
        "version": "0", "id": "e", "detail-type": "Secret Label Updated", "source": "aws.secretsmanager",
        "account": "111122223333", "time": "2026-01-01T00:00:12Z", "region": "eu-west-1",
        "resources": [], "detail": {"name": "app/db", "labelUpdated": "AWSCURRENT"}
    })
    .to_string();
    assert!(changes.add(&event::parse(&body).expect("parsed")));
    let pass = r
        .reconciler
        .pass(&Request {
            dry_run: true,
            ..Request::changes(changes)
        })
        .await
        .expect("pass");
    assert!(pass
        .assessment
        .services
        .iter()
        .any(|a| a.key.service == "web"));
    assert!(pass.assessment.standalone_tasks.is_empty());
    assert_eq!(fake.calls("ecs:ListTasks"), 0, "not per event");
    assert_eq!(
        fake.calls("events+scheduler:ListSchedules"),
        0,
        "not per event"
    );

    let (_, json) = run(&r, true, Output::Json).await;
    assert!(fake.calls("ecs:ListTasks") > 0 && fake.calls("ecs:DescribeTasks") > 0);
    assert_eq!(fake.calls("events+scheduler:ListSchedules"), 1);
    assert!(json.contains("standalone_tasks"));

    let mut off = Config::default();
    off.scope.tasks = false;
    let World { fake, parts: r, .. } = World::builder().config(off).build().await;
    world(&fake).await;
    let (_, json) = run(&r, true, Output::Json).await;
    assert_eq!(fake.calls("ecs:ListTasks"), 0, "opted out: no reads");
    assert_eq!(fake.calls("events+scheduler:ListSchedules"), 0);
    assert!(!json.contains("standalone_tasks"), "{json}");
}
