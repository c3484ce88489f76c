//! The watch cache over the in-memory fake: a change event costs its dependants, and the cache
//! stays fresh through ECS's events, with the resync as the safety net.

use std::sync::Arc;
use std::time::Duration;

use ecs_reloader::aws::fake::FakeAws;
use ecs_reloader::config::Config;
use ecs_reloader::driver::fake_world::World;
use ecs_reloader::event::{self, Changes};
use ecs_reloader::reconcile::{Mode, Request};
use ecs_reloader::reference::Site;

const READS: [&str; 4] = [
    "ecs:ListClusters",
    "ecs:ListServices",
    "ecs:DescribeServices",
    "ecs:DescribeTaskDefinition",
];

fn secret() -> Site {
    Site::Secret {
        container: "app".into(),
        name: "S".into(),
    }
}

/// What a batch of EventBridge events hands to a pass.
fn changes(bodies: &[String]) -> Changes {
    let mut c = Changes::default();
    for b in bodies {
        assert!(c.add(&event::parse(b).expect("a usable event")), "{b}");
    }
    c
}

fn rotated(arn: &str) -> String {
    format!(
        r#"{{"source":"aws.secretsmanager","detail-type":"AWS Service Event via CloudTrail","detail":{{"eventName":"RotationSucceeded","additionalEventData":{{"SecretId":"{arn}"}}}}}}"#
    )
}

fn deployment_started(fake: &FakeAws, cluster: &str, service: &str) -> String {
    let arn = fake.service(cluster, service).expect("exists").arn;
    format!(
        r#"{{"source":"aws.ecs","detail-type":"ECS Deployment State Change","resources":["{arn}"],"detail":{{"eventType":"INFO","eventName":"SERVICE_DEPLOYMENT_IN_PROGRESS","deploymentId":"ecs-svc/9"}}}}"#
    )
}

/// ECS reads from the `from`-th logged call up to the first `UpdateService` after it.
fn reads_before_first_update(fake: &FakeAws, from: usize) -> usize {
    fake.call_log()
        .into_iter()
        .skip(from)
        .take_while(|c| c.operation != "ecs:UpdateService")
        .filter(|c| READS.contains(&c.operation))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_rotation_costs_its_three_dependants_not_a_scan_of_a_thousand_services() {
    // 1,010 services in 10 clusters over 20 secrets; three (in three clusters) use the shared
    // secret.
    let w = World::builder()
        .ecs_buckets()
        .clusters(10)
        .cluster_names(|c| format!("c{c}"))
        .services(1010)
        .service_names(|s| format!("s{:03}", s.nth))
        .task_defs(20)
        .secrets(20)
        .dependants(
            "app/shared",
            &[("c0", "s050"), ("c1", "s050"), ("c2", "s050")],
        )
        .build()
        .await;
    let shared = w.secret_arn("app/shared").expect("created").to_string();
    let World { fake, parts: r, .. } = w;

    // The startup resync fills the cache.
    let startup = r.reconciler.pass(&Request::all()).await.expect("resync");
    assert!(startup.outcomes.is_empty(), "nothing was stale");
    assert_eq!(r.reconciler.watched(), Some(1010));
    let scan_reads: u64 = READS.iter().map(|op| fake.calls(op)).sum();

    fake.put_secret_value("app/shared", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mark = fake.call_log().len();
    let pass = r
        .reconciler
        .pass(&Request::changes(changes(&[rotated(&shared)])))
        .await
        .expect("pass");
    let rolled: Vec<String> = fake.updates().iter().map(|u| u.service.clone()).collect();
    assert_eq!(
        {
            let mut r = rolled.clone();
            r.sort();
            r
        },
        ["c0/s050", "c1/s050", "c2/s050"],
        "exactly the dependants"
    );
    assert_eq!(pass.failed().count(), 0);
    let reads = reads_before_first_update(&fake, mark);
    println!("scan: {scan_reads} ECS reads; the event: {reads} before its first UpdateService");
    // One DescribeServices per cluster holding a candidate; the canary's look right before its
    // UpdateService is that description, made moments ago.
    assert!(
        reads <= 3,
        "{reads} ECS reads before the first UpdateService (a scan took {scan_reads})"
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_that_starts_referencing_a_secret_is_rolled_for_a_later_change() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    let db = fake.create_secret("app/db");
    let other = fake.create_secret("app/other");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td_db = fake.register_task_definition("db", &[(secret(), db.as_str())]);
    let td_other = fake.register_task_definition("other", &[(secret(), other.as_str())]);
    fake.create_service("prod", "api", &td_db, 1, &[]);
    fake.create_service("prod", "late", &td_other, 1, &[]);
    fake.create_service("prod", "tagged", &td_other, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.reconciler.pass(&Request::all()).await.expect("resync");
    assert_eq!(r.reconciler.watched(), Some(3));

    // After the resync, `late` deploys a revision that references app/db, and `tagged` declares
    // it in its tag; ECS's events say so.
    let td_late = fake.register_task_definition(
        "late",
        &[(secret(), db.as_str()), (secret(), other.as_str())],
    );
    fake.create_service("prod", "late", &td_late, 1, &[]);
    fake.edit_service("prod", "tagged", |s| {
        s.tags
            .insert("ecs-reloader/secrets".into(), "app/db".into());
    });
    let tag_event = format!(
        r#"{{"source":"aws.ecs","detail-type":"AWS API Call via CloudTrail","detail":{{"eventName":"TagResource","requestParameters":{{"resourceArn":"{}"}}}}}}"#,
        fake.service("prod", "tagged").expect("exists").arn
    );
    let hints = changes(&[deployment_started(&fake, "prod", "late"), tag_event]);
    let refreshed = r
        .reconciler
        .pass(&Request::changes(hints))
        .await
        .expect("refresh");
    assert!(
        refreshed.assessment.services.is_empty() && fake.updates().is_empty(),
        "ECS's events only refresh the cache: nothing is decided or rolled"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.reconciler
        .pass(&Request::changes(changes(&[rotated(&db)])))
        .await
        .expect("pass");
    for s in ["api", "late", "tagged"] {
        assert_eq!(fake.rollouts_of("prod", s), 1, "{s}");
    }
}

#[tokio::test(start_paused = true)]
async fn without_ecs_events_the_resync_is_the_safety_net() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    let db = fake.create_secret("app/db");
    let other = fake.create_secret("app/other");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td_db = fake.register_task_definition("db", &[(secret(), db.as_str())]);
    let td_other = fake.register_task_definition("other", &[(secret(), other.as_str())]);
    fake.create_service("prod", "api", &td_db, 1, &[]);
    fake.create_service("prod", "late", &td_other, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.reconciler.pass(&Request::all()).await.expect("resync");

    // `late` starts referencing app/db, and its event is lost.
    let td_late = fake.register_task_definition("late", &[(secret(), db.as_str())]);
    fake.create_service("prod", "late", &td_late, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.reconciler
        .pass(&Request::changes(changes(&[rotated(&db)])))
        .await
        .expect("pass");
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
    assert_eq!(
        fake.rollouts_of("prod", "late"),
        0,
        "the cache did not know `late` depends on app/db"
    );
    // The next resync sees it stale and rolls it, once.
    r.reconciler.pass(&Request::all()).await.expect("resync");
    assert_eq!(fake.rollouts_of("prod", "late"), 1);
    assert_eq!(fake.rollouts_of("prod", "api"), 1, "api was rolled already");
}

#[tokio::test(start_paused = true)]
async fn a_candidate_deleted_since_the_resync_is_dropped_and_the_rest_roll() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    let db = fake.create_secret("app/db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("db", &[(secret(), db.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    fake.create_service("prod", "gone", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.reconciler.pass(&Request::all()).await.expect("resync");
    assert_eq!(r.reconciler.watched(), Some(2));

    fake.delete_service("prod", "gone");
    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pass = r
        .reconciler
        .pass(&Request::changes(changes(&[rotated(&db)])))
        .await
        .expect("a deleted candidate fails nothing");
    assert_eq!(pass.failed().count(), 0);
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
    assert_eq!(r.reconciler.watched(), Some(1), "the deleted service left");
}

#[tokio::test(start_paused = true)]
async fn a_warm_lambda_keeps_the_cache_between_invocations() {
    use ecs_reloader::driver::lambda::Handler;
    use ecs_reloader::metrics::Metrics;
    use ecs_reloader::notify::Notifier;

    let mut config = Config::default();
    config.rollout.canary = false;
    let notifier = Arc::new(Notifier::new(Arc::new(Metrics::new()), None));
    // 100 services in 5 clusters; the first of each uses app/db, the rest another secret.
    let w = World::builder()
        .clusters(5)
        .cluster_names(|c| format!("c{c}"))
        .services(100)
        .service_names(|s| format!("s{:02}", s.nth))
        .task_defs(1)
        .secrets(1)
        .dependants(
            "app/db",
            &[
                ("c0", "s00"),
                ("c1", "s00"),
                ("c2", "s00"),
                ("c3", "s00"),
                ("c4", "s00"),
            ],
        )
        .config(config)
        .mode(Mode::FireAndForget)
        .progress(notifier.clone())
        .build()
        .await;
    let db = w.secret_arn("app/db").expect("created").to_string();
    let World {
        fake, clock, parts, ..
    } = w;
    let h = Handler::new(parts, notifier, None);
    let deadline = || clock.now() + chrono::Duration::seconds(60);
    let scheduled =
        serde_json::json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
    h.handle(scheduled, deadline()).await.expect("resync");
    let listed = fake.calls("ecs:ListServices");

    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let event: serde_json::Value = serde_json::from_str(&rotated(&db)).expect("json");
    h.handle(event, deadline()).await.expect("event");
    assert_eq!(fake.updates().len(), 5, "the five dependants");
    assert_eq!(
        fake.calls("ecs:ListServices"),
        listed,
        "the warm invocation listed nothing: the cache from the resync said where to look"
    );
}

#[tokio::test(start_paused = true)]
async fn a_candidate_whose_cluster_was_deleted_fails_nothing() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    let db = fake.create_secret("app/db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("db", &[(secret(), db.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    fake.create_service("preview-42", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.reconciler.pass(&Request::all()).await.expect("resync");
    assert_eq!(r.reconciler.watched(), Some(2));

    // The preview environment is torn down; its events are late or lost.
    fake.delete_cluster("preview-42");
    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pass = r
        .reconciler
        .pass(&Request::changes(changes(&[rotated(&db)])))
        .await
        .expect("ClusterNotFoundException for one candidate fails nothing");
    assert_eq!(pass.failed().count(), 0);
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
    assert_eq!(
        r.reconciler.watched(),
        Some(1),
        "the deleted cluster's service left"
    );
}

#[tokio::test(start_paused = true)]
async fn another_accounts_secret_it_may_not_read_does_not_stop_its_own_changes() {
    use ecs_reloader::aws::ErrorKind;
    let World { fake, parts: r, .. } = World::builder().build().await;
    let db = fake.create_secret("app/db");
    let foreign = fake.create_secret_in_account("999999999999", "eu-west-1", "shared/key");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("db", &[(secret(), db.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.reconciler.pass(&Request::all()).await.expect("resync");
    assert_eq!(r.reconciler.account().as_deref(), Some(fake.account()));

    // The other account's secret changes too, and this account may not describe it.
    fake.refuse(
        "secretsmanager:DescribeSecret",
        "999999999999",
        ErrorKind::AccessDenied,
        "AccessDeniedException: not authorized",
    );
    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pass = r
        .reconciler
        .pass(&Request::changes(changes(&[
            rotated(&foreign),
            rotated(&db),
        ])))
        .await
        .expect("the refused foreign secret is skipped, the rest decided");
    assert_eq!(pass.failed().count(), 0);
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
}
