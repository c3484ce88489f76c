//! Deterministic simulations of the rollout engine over the in-memory fake, whose ECS model plays
//! rollouts that complete, fail, roll back or hang, and throttles with ECS's token buckets; tokio
//! time is paused, so fifteen simulated minutes take milliseconds.

use std::sync::Arc;
use std::time::Duration;

use ecs_reloader::aws::fake::{Behaviour, Bucket, FakeAws};
use ecs_reloader::config::{Config, Dur};
use ecs_reloader::driver::cli::{self, Options, Output};
use ecs_reloader::driver::setup::{self, Parts};
use ecs_reloader::plan::{Change, ChangeSet, ServiceKey};
use ecs_reloader::reconcile::Mode;
use ecs_reloader::reference::Site;
use ecs_reloader::rollout::{LogProgress, Outcome, Rollout};

struct Sim {
    fake: FakeAws,
    parts: Parts,
}

/// `n` services (named `s00`…) over `clusters`, all using one secret, which then rotates: every
/// service is stale. `tag` gives a service its tags.
fn sim(
    config: Config,
    n: usize,
    clusters: &[&str],
    tag: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Sim {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let arn = fake.create_secret("db");
    let td = fake.register_task_definition(
        "app",
        &[(
            Site::Secret {
                container: "app".into(),
                name: "DB".into(),
            },
            arn.as_str(),
        )],
    );
    // Created at t0; the secret (also t0) rotates later, in `stale()`.
    for i in 0..n {
        let tags = tag(i);
        let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
        fake.create_service(
            clusters[i % clusters.len()],
            &format!("s{i:02}"),
            &td,
            2,
            &tags,
        );
    }
    let parts = setup::assemble(
        &config,
        fake.clients(),
        clock,
        Arc::new(LogProgress),
        Mode::Watch,
    );
    Sim { fake, parts }
}

impl Sim {
    async fn rotate(&self) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.fake.put_secret_value("db", &[]);
    }

    async fn reconcile(&self) -> (cli::Ending, serde_json::Value) {
        let mut out = Vec::new();
        let opts = Options {
            output: Output::Json,
            ..Default::default()
        };
        let ending = cli::run(&self.parts.reconciler, &opts, &mut out)
            .await
            .expect("runs");
        let json = serde_json::from_slice(&out).expect("json report");
        (ending, json)
    }
}

fn outcomes(report: &serde_json::Value) -> Vec<(String, String)> {
    report["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| {
            let name = s["key"]["service"].as_str()?.to_string();
            let o = s.get("outcome")?;
            Some((name, o["outcome"].as_str()?.to_string()))
        })
        .collect()
}

fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    c.rollout.poll_interval = Dur(Duration::from_secs(5));
    f(&mut c);
    c
}

#[tokio::test(start_paused = true)]
async fn rate_and_concurrency_limits_hold_and_every_service_rolls_once() {
    let s = sim(
        config(|c| {
            c.rollout.updates_per_second = 2.0;
            c.rollout.max_concurrent = 4;
            c.rollout.max_concurrent_per_cluster = 3;
        }),
        40,
        &["east", "west"],
        |_| vec![],
    );
    s.fake.use_ecs_buckets();
    for i in 0..40 {
        let cluster = if i % 2 == 0 { "east" } else { "west" };
        s.fake.set_behaviour(
            cluster,
            &format!("s{i:02}"),
            Behaviour::Complete(Duration::from_secs(45)),
        );
    }
    s.rotate().await;
    let (ending, report) = s.reconcile().await;
    assert!(ending.ok, "{}", ending.message);

    let updates = s.fake.updates();
    assert_eq!(updates.len(), 40, "each service exactly once");
    let mut names: Vec<&str> = updates.iter().map(|u| u.service.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 40);
    for u in &updates {
        assert!(u.in_progress_after <= 4, "max_concurrent exceeded: {u:?}");
        assert!(
            u.in_progress_in_cluster <= 3,
            "per-cluster limit exceeded: {u:?}"
        );
    }
    // 2 per second with a burst of 1: any two updates are at least 0.5 s apart, in every window.
    for w in updates.windows(2) {
        assert!(
            w[1].at - w[0].at >= chrono::Duration::milliseconds(499),
            "{w:?}"
        );
    }
    assert_eq!(
        s.fake.throttled("ecs:UpdateService"),
        0,
        "our buckets stay under ECS's"
    );
    assert!(outcomes(&report).iter().all(|(_, o)| o == "healthy"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_canary_touches_no_other_service() {
    for bad in [
        Behaviour::Fail(Duration::from_secs(60), 3),
        Behaviour::RollBack(Duration::from_secs(90)),
    ] {
        let s = sim(config(|_| {}), 10, &["prod"], |_| vec![]);
        s.fake.set_behaviour("prod", "s00", bad);
        s.rotate().await;
        let (ending, report) = s.reconcile().await;
        assert!(!ending.ok);
        assert_eq!(
            s.fake.updates().len(),
            1,
            "only the canary was touched ({bad:?})"
        );
        let o = outcomes(&report);
        assert_eq!(o[0], ("s00".to_string(), "failed".to_string()));
        assert!(o[1..].iter().all(|(_, x)| x == "halted"), "{o:?}");
        assert_eq!(o.len(), 10);

        // The next run (a resync, the next Lambda invocation) sees the failure in AWS state and
        // holds the others back instead of sacrificing another canary.
        let (again, report) = s.reconcile().await;
        assert!(!again.ok);
        assert_eq!(s.fake.updates().len(), 1, "no second canary ({bad:?})");
        let held = report["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter(|r| r["decision"] == "held")
            .count();
        assert_eq!(held, 9, "{report}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stuck_rollout_ends_at_the_timeout() {
    let s = sim(
        config(|c| c.rollout.timeout = Dur(Duration::from_secs(300))),
        3,
        &["prod"],
        |_| vec![],
    );
    s.fake.set_behaviour("prod", "s00", Behaviour::Stuck);
    s.rotate().await;
    let started = tokio::time::Instant::now();
    let (ending, report) = s.reconcile().await;
    let took = started.elapsed();
    assert!(!ending.ok);
    assert!(
        took >= Duration::from_secs(300) && took < Duration::from_secs(330),
        "{took:?}"
    );
    let row = &report["services"][0];
    assert!(
        row["outcome"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("timeout"),
        "{row}"
    );
    assert_eq!(s.fake.updates().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn waves_are_barriers_and_a_failure_halts_the_later_waves() {
    // s00–s02 wave 0 (s01 fails), s03–s05 wave 1.
    let s = sim(config(|c| c.rollout.canary = false), 6, &["prod"], |i| {
        vec![("ecs-reloader/wave", (i / 3).to_string())]
    });
    s.fake
        .set_behaviour("prod", "s01", Behaviour::Fail(Duration::from_secs(30), 1));
    s.rotate().await;
    let (ending, report) = s.reconcile().await;
    assert!(!ending.ok);
    let rolled: Vec<String> = s.fake.updates().iter().map(|u| u.service.clone()).collect();
    assert_eq!(rolled.len(), 3, "{rolled:?}");
    assert!(rolled
        .iter()
        .all(|r| ["prod/s00", "prod/s01", "prod/s02"].contains(&r.as_str())));
    let o = outcomes(&report);
    for (name, outcome) in &o {
        match name.as_str() {
            "s00" | "s02" => assert_eq!(outcome, "healthy"),
            "s01" => assert_eq!(outcome, "failed"),
            _ => assert_eq!(outcome, "halted", "{name}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_later_wave_starts_only_when_the_earlier_is_healthy() {
    let s = sim(config(|c| c.rollout.canary = false), 4, &["prod"], |i| {
        vec![(
            "ecs-reloader/wave",
            if i < 2 { "1".into() } else { "2".into() },
        )]
    });
    for i in 0..4 {
        s.fake.set_behaviour(
            "prod",
            &format!("s{i:02}"),
            Behaviour::Complete(Duration::from_secs(120)),
        );
    }
    s.rotate().await;
    let (ending, _) = s.reconcile().await;
    assert!(ending.ok, "{}", ending.message);
    let u = s.fake.updates();
    let first_wave_end =
        u[..2].iter().map(|x| x.at).max().expect("two") + chrono::Duration::seconds(120);
    assert!(u[2..].iter().all(|x| x.at >= first_wave_end), "{u:?}");
}

#[tokio::test(start_paused = true)]
async fn throttling_slows_but_loses_nothing() {
    let s = sim(
        config(|c| c.rollout.updates_per_second = 5.0),
        20,
        &["prod"],
        |_| vec![],
    );
    // Another tool has drained the account's buckets.
    s.fake.set_bucket(
        "ecs:UpdateService",
        Bucket {
            burst: 1.0,
            refill: 0.2,
        },
    );
    s.fake.set_bucket(
        "ecs:DescribeServices",
        Bucket {
            burst: 2.0,
            refill: 0.5,
        },
    );
    s.rotate().await;
    let (ending, report) = s.reconcile().await;
    assert!(
        ending.ok,
        "throttling is never a failure: {}\n{report:#}\n{:?}",
        ending.message,
        s.fake.updates()
    );
    assert_eq!(s.fake.updates().len(), 20);
    assert!(
        s.fake.throttled("ecs:UpdateService") > 0,
        "the scenario did throttle"
    );
    assert!(outcomes(&report).iter().all(|(_, o)| o == "healthy"));
    assert_eq!(
        s.parts.stats.snapshot()["ecs:UpdateService"].throttled,
        s.fake.throttled("ecs:UpdateService")
    );
}

#[tokio::test(start_paused = true)]
async fn services_without_rollout_state_are_healthy_when_running_equals_desired() {
    let s = sim(config(|_| {}), 2, &["prod"], |_| vec![]);
    s.fake.set_behaviour(
        "prod",
        "s00",
        Behaviour::NoRolloutState(Duration::from_secs(40)),
    );
    s.fake.set_behaviour(
        "prod",
        "s01",
        Behaviour::NoRolloutState(Duration::from_secs(40)),
    );
    s.rotate().await;
    let (ending, report) = s.reconcile().await;
    assert!(ending.ok, "{}", ending.message);
    assert!(outcomes(&report).iter().all(|(_, o)| o == "healthy"));
}

#[tokio::test(start_paused = true)]
async fn duplicates_in_a_change_set_roll_once() {
    let s = sim(config(|_| {}), 2, &["prod"], |_| vec![]);
    let key = |n: &str| ServiceKey {
        cluster: "prod".into(),
        service: n.into(),
        ..ServiceKey::default()
    };
    let change = |n: &str| Change {
        key: key(n),
        wave: 0,
        findings: vec![],
        fresh_from: None,
        planned: None,
        images: Vec::new(),
        described_at: None,
    };
    let set = ChangeSet {
        policies: Default::default(),
        changes: vec![
            change("s00"),
            change("s01"),
            change("s00"),
            change("s01"),
            change("s00"),
        ],
    };
    let out = s.parts.rollout.execute(&set).await;
    assert_eq!(out.len(), 2);
    assert_eq!(s.fake.rollouts_of("prod", "s00"), 1);
    assert_eq!(s.fake.rollouts_of("prod", "s01"), 1);
    assert!(out
        .iter()
        .all(|(_, o)| matches!(o, Outcome::Healthy { .. })));
}

#[tokio::test(start_paused = true)]
async fn no_wait_triggers_without_watching() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    for i in 0..3 {
        fake.create_service("prod", &format!("s{i}"), "td", 1, &[]);
        fake.set_behaviour("prod", &format!("s{i}"), Behaviour::Stuck);
    }
    let parts = setup::assemble(
        &Config::default(),
        fake.clients(),
        clock,
        Arc::new(LogProgress),
        Mode::FireAndForget,
    );
    let set = ChangeSet {
        policies: Default::default(),
        changes: (0..3)
            .map(|i| Change {
                key: ServiceKey {
                    cluster: "prod".into(),
                    service: format!("s{i}"),
                    ..ServiceKey::default()
                },
                wave: 0,
                findings: vec![],
                fresh_from: None,
                planned: None,
                images: Vec::new(),
                described_at: None,
            })
            .collect(),
    };
    let out = parts.rollout.execute(&set).await;
    assert!(
        out.iter()
            .all(|(_, o)| matches!(o, Outcome::Triggered { .. })),
        "{out:?}"
    );
    assert_eq!(
        fake.calls("ecs:DescribeServices"),
        3,
        "one look right before each rollout, nothing watched"
    );
    assert_eq!(fake.updates().len(), 3);
}

/// Each service is described again right before its turn: what changed since the plan is
/// skipped with its reason (opted out, deleted, scaled to 0, already deployed by someone else),
/// none of it is a failure, and the rest of the change set still rolls.
#[tokio::test(start_paused = true)]
async fn the_fleet_moves_while_a_change_set_rolls() {
    let s = sim(
        config(|c| {
            c.rollout.max_concurrent = 1;
        }),
        6,
        &["prod"],
        |_| vec![],
    );
    for i in 0..6 {
        s.fake.set_behaviour(
            "prod",
            &format!("s{i:02}"),
            Behaviour::Complete(Duration::from_secs(60)),
        );
    }
    s.rotate().await;
    let moves = async {
        // The plan is made and the canary s00 is being watched.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(s.fake.updates().len(), 1, "only the canary so far");
        s.fake.edit_service("prod", "s01", |svc| {
            svc.tags
                .insert("ecs-reloader/enabled".into(), "false".into());
        });
        s.fake.delete_service("prod", "s02");
        s.fake
            .edit_service("prod", "s03", |svc| svc.desired_count = 0);
        s.fake
            .clients()
            .ecs
            .force_new_deployment("prod", "s04")
            .await
            .expect("someone else deploys");
    };
    let ((ending, report), ()) = tokio::join!(s.reconcile(), moves);
    assert!(ending.ok, "skips are not failures: {}", ending.message);
    let got: std::collections::BTreeMap<String, String> = outcomes(&report).into_iter().collect();
    let expect = [
        ("s00", "healthy"),
        ("s01", "skipped"),
        ("s02", "skipped"),
        ("s03", "skipped"),
        ("s04", "skipped"),
        ("s05", "healthy"),
    ];
    for (name, outcome) in expect {
        assert_eq!(
            got.get(name).map(String::as_str),
            Some(outcome),
            "{name}: {got:?}"
        );
    }
    let reason = |name: &str| -> String {
        report["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["key"]["service"] == name)
            .map(|r| {
                r["outcome"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    };
    assert!(
        reason("s01").contains("ecs-reloader/enabled=false"),
        "{}",
        reason("s01")
    );
    assert!(
        reason("s02").contains("no longer exists"),
        "{}",
        reason("s02")
    );
    assert!(reason("s03").contains("scaled to 0"), "{}", reason("s03"));
    assert!(reason("s04").contains("already fresh"), "{}", reason("s04"));
    let mut rolled: Vec<String> = s.fake.updates().iter().map(|u| u.service.clone()).collect();
    rolled.sort();
    assert_eq!(
        rolled,
        ["prod/s00", "prod/s04", "prod/s05"],
        "s04 only by its owner"
    );
}

/// The look right before `UpdateService` is skipped only for a description the pass made moments
/// ago (`RECENT_ENOUGH`), never for one older, and never once this engine has started a rollout
/// of the service since that description: two change sets planned together still make one
/// rollout, even when nothing is watched (the service's lock is then held only for the call).
#[tokio::test(start_paused = true)]
async fn a_description_moments_old_stands_in_for_the_look_and_nothing_older_does() {
    use ecs_reloader::rollout::engine::RECENT_ENOUGH;
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    for i in 0..3 {
        fake.create_service("prod", &format!("s{i}"), "td", 1, &[]);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let parts = setup::assemble(
        &Config::default(),
        fake.clients(),
        clock.clone(),
        Arc::new(LogProgress),
        Mode::FireAndForget,
    );
    let change = |n: &str, described_at: tokio::time::Instant| Change {
        key: ServiceKey {
            cluster: "prod".into(),
            service: n.into(),
            ..ServiceKey::default()
        },
        wave: 0,
        findings: vec![],
        fresh_from: Some(clock.now()),
        planned: Some(Box::new(fake.service("prod", n).expect("exists"))),
        images: Vec::new(),
        described_at: Some(described_at),
    };
    let set = |changes: Vec<Change>| ChangeSet {
        policies: Default::default(),
        changes,
    };

    // Described just now: rolled on that description.
    let out = parts
        .rollout
        .execute(&set(vec![change("s0", tokio::time::Instant::now())]))
        .await;
    assert!(matches!(out[0].1, Outcome::Triggered { .. }), "{out:?}");
    assert_eq!(fake.calls("ecs:DescribeServices"), 0, "no second look");

    // Described longer ago: looked at again.
    let old = tokio::time::Instant::now();
    tokio::time::sleep(RECENT_ENOUGH).await;
    let out = parts.rollout.execute(&set(vec![change("s1", old)])).await;
    assert!(matches!(out[0].1, Outcome::Triggered { .. }), "{out:?}");
    assert_eq!(fake.calls("ecs:DescribeServices"), 1, "one look");

    // Two change sets planned at once, each fresh: the second waits for the first's rollout,
    // then looks again and finds it fresh. (The UpdateService bucket full again first, so that
    // no wait for a token makes the description old.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = tokio::time::Instant::now();
    let (first, second) = (set(vec![change("s2", now)]), set(vec![change("s2", now)]));
    let (a, b) = tokio::join!(
        parts.rollout.execute(&first),
        parts.rollout.execute(&second)
    );
    assert_eq!(fake.rollouts_of("prod", "s2"), 1, "{a:?} {b:?}");
    assert!(
        [&a[0].1, &b[0].1]
            .iter()
            .any(|o| matches!(o, Outcome::Skipped { reason } if reason.contains("already fresh"))),
        "{a:?} {b:?}"
    );
}
