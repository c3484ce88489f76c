//! The reconciler over the in-memory fake, on tokio's paused clock: deterministic, no I/O.

use std::time::Duration;

use ecs_reloader::decide::Decision;
use ecs_reloader::driver::cli::{self, Options, Output};
use ecs_reloader::driver::fake_world::World;
use ecs_reloader::driver::setup::Parts;
use ecs_reloader::index::Scope;
use ecs_reloader::reference::Site;

fn secret(container: &str) -> Site {
    Site::Secret {
        container: container.into(),
        name: "S".into(),
    }
}

async fn pass(p: &Parts, opts: &Options) -> cli::Ending {
    let mut out = Vec::new();
    cli::run(&p.reconciler, opts, &mut out)
        .await
        .expect("pass runs")
}

fn opts() -> Options {
    Options {
        output: Output::Json,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn pages_batches_and_a_warm_cache() {
    // 25 services over two task definitions, alternating between two clusters.
    let World { fake, parts: r, .. } = World::builder()
        .page_size(3)
        .clusters(2)
        .cluster_names(|c| ["east", "west"][c].into())
        .services(25)
        .service_names(|s| format!("s{:02}", s.index))
        .task_defs(2)
        .secrets(2)
        .build()
        .await;

    let first = r
        .reconciler
        .assess(&Scope::default(), &[])
        .await
        .expect("assess");
    assert_eq!(first.services.len(), 25, "every page of every cluster");
    assert!(first
        .services
        .iter()
        .all(|s| s.decision == Decision::InSync));
    assert_eq!(fake.calls("ecs:DescribeTaskDefinition"), 2);
    // 13 + 12 services in pages of 3: 5 + 4 ListServices pages; batches of 10: 2 + 2.
    assert_eq!(fake.calls("ecs:ListServices"), 9);
    assert_eq!(fake.calls("ecs:DescribeServices"), 4);

    let second = r
        .reconciler
        .assess(&Scope::default(), &[])
        .await
        .expect("assess");
    assert_eq!(second.services.len(), 25);
    assert_eq!(
        fake.calls("ecs:DescribeTaskDefinition"),
        2,
        "a warm scan describes no revision again"
    );
    assert_eq!(r.reconciler.cache().fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rotation_rolls_each_dependent_once_and_a_second_pass_nothing() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    let db = fake.create_secret("app/db");
    let replica = fake.create_secret("app/db-replica");
    fake.put_parameter("/app/flag");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let partial = db
        .rsplit_once('-')
        .map(|(b, _)| b.to_string())
        .expect("suffix");
    let td_db = fake.register_task_definition(
        "db",
        &[(secret("app"), &partial), (secret("side"), "app/flag")],
    );
    let td_replica = fake.register_task_definition("replica", &[(secret("app"), &replica)]);
    fake.create_service("prod", "api", &td_db, 2, &[]);
    fake.create_service("prod", "worker", &td_db, 2, &[("ecs-reloader/wave", "1")]);
    fake.create_service("prod", "replica", &td_replica, 2, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;

    fake.put_secret_value("app/db", &[]);
    fake.put_parameter("/app/flag");
    let ending = pass(&r, &opts()).await;
    assert!(ending.ok, "{}", ending.message);
    assert_eq!(fake.rollouts_of("prod", "api"), 1);
    assert_eq!(fake.rollouts_of("prod", "worker"), 1);
    assert_eq!(
        fake.rollouts_of("prod", "replica"),
        0,
        "app/db never matches app/db-replica"
    );
    let order: Vec<String> = fake.updates().iter().map(|u| u.service.clone()).collect();
    assert_eq!(order, ["prod/api", "prod/worker"], "wave 0 before wave 1");

    // The pass waited out the whole-second ambiguity before rolling, so it is now unambiguous.
    let ending = pass(&r, &opts()).await;
    assert!(ending.ok, "{}", ending.message);
    assert_eq!(fake.updates().len(), 2, "a second pass rolls nothing");
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_changes_nothing_and_a_scoped_run_touches_only_dependents() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    let a = fake.create_secret("a");
    let b = fake.create_secret("b");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td_a = fake.register_task_definition("a", &[(secret("app"), a.as_str())]);
    let td_b = fake.register_task_definition("b", &[(secret("app"), b.as_str())]);
    fake.create_service("c", "uses-a", &td_a, 1, &[]);
    fake.create_service("c", "uses-b", &td_b, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_secret_value("a", &[]);
    fake.put_secret_value("b", &[]);

    let dry = pass(
        &r,
        &Options {
            dry_run: true,
            ..opts()
        },
    )
    .await;
    assert!(dry.ok);
    assert!(fake.updates().is_empty());

    let scoped = pass(
        &r,
        &Options {
            secrets: vec!["a".into()],
            ..opts()
        },
    )
    .await;
    assert!(scoped.ok, "{}", scoped.message);
    assert_eq!(fake.rollouts_of("c", "uses-a"), 1);
    assert_eq!(fake.rollouts_of("c", "uses-b"), 0);
}

#[tokio::test(start_paused = true)]
async fn tag_declared_names_resolve_to_a_secret_or_a_parameter() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    fake.create_secret("conjur/token");
    fake.put_parameter("/phase/export");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let plain = fake.register_task_definition("plain", &[]);
    fake.create_service(
        "c",
        "sidecar",
        &plain,
        1,
        &[("ecs-reloader/secrets", "conjur/token")],
    );
    fake.create_service(
        "c",
        "init",
        &plain,
        1,
        &[("ecs-reloader/secrets", "/phase/export")],
    );
    fake.create_service(
        "c",
        "typo",
        &plain,
        1,
        &[("ecs-reloader/secrets", "conjur/tokne")],
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_secret_value("conjur/token", &[]);
    fake.put_parameter("/phase/export");
    tokio::time::sleep(Duration::from_secs(5)).await;

    let a = r
        .reconciler
        .assess(&Scope::default(), &[])
        .await
        .expect("assess");
    let by = |name: &str| {
        a.services
            .iter()
            .find(|s| s.key.service == name)
            .map(|s| s.decision.clone())
            .expect(name)
    };
    assert!(by("sidecar").is_stale());
    assert!(by("init").is_stale());
    match by("typo") {
        Decision::Unknown { problems } => {
            assert!(problems[0].contains("conjur/tokne"), "{problems:?}")
        }
        other => panic!("a name that exists nowhere is reported: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_scan_names_the_call_and_the_resource() {
    let World { fake, parts: r, .. } = World::builder().build().await;
    fake.create_service("c", "s", "td", 1, &[]);
    fake.fail_next(
        "ecs:ListServices",
        1,
        ecs_reloader::aws::ErrorKind::AccessDenied,
    );
    let err = r
        .reconciler
        .assess(&Scope::default(), &[])
        .await
        .expect_err("denied");
    let text = err.to_string();
    assert!(
        text.contains("ecs:ListServices") && text.contains("c"),
        "{text}"
    );
}
