//! The real binary against the emulator through the fault-injecting proxy: throttling (HTTP 400
//! `ThrottlingException`), 5xx, latency, connections dropped before the request is forwarded
//! and after it took effect. Every stale service must still be rolled exactly once.

mod support;

use std::time::Duration;

use support::proxy::{Fault, FaultPlan, Proxy};
use support::{run_binary, Aws, Emulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stale_service_rolls_exactly_once_through_faults() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let services: Vec<String> = (0..8).map(|i| format!("svc-{i}")).collect();
    let layout: Vec<(&str, usize)> = services.iter().map(|s| (s.as_str(), 0)).collect();
    aws.one_secret_world(&["app/db"], "prod", &layout).await;
    aws.rotate("app/db").await;

    proxy.set_faults(FaultPlan {
        only: "AmazonEC2ContainerService".into(),
        throttle: 0.30,
        server_error: 0.10,
        drop: 0.05,
        lose_answer: 0.05,
        latency: Duration::from_millis(20),
        seed: 7,
    });
    let run = run_binary(
        &proxy.url(),
        &["reconcile", "--output", "json"],
        &[
            ("ECS_RELOADER_ROLLOUT_UPDATES_PER_SECOND", "20"),
            ("ECS_RELOADER_ROLLOUT_MAX_CONCURRENT", "4"),
        ],
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );

    let mut rolled = proxy.updated_services();
    rolled.sort();
    let expected: Vec<String> = services.iter().map(|s| format!("prod/{s}")).collect();
    assert_eq!(
        rolled, expected,
        "each stale service reached ECS exactly once"
    );

    let calls = proxy.calls();
    let faults = |f: Fault| calls.iter().filter(|c| c.fault == Some(f)).count();
    assert!(
        faults(Fault::Throttle) > 0 && faults(Fault::ServerError) > 0 && faults(Fault::Drop) > 0,
        "the faults did happen"
    );
    let report = run.json();
    for row in report["services"].as_array().expect("services") {
        assert_eq!(row["outcome"]["outcome"], "healthy", "{row}");
    }

    // And a second run, still through the faults, rolls nothing.
    proxy.reset();
    let again = run_binary(&proxy.url(), &["reconcile"], &[]).await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(proxy.updated_services().is_empty());

    // UpdateService answers lost after it took effect: recognised, never repeated.
    aws.rotate("app/db").await;
    proxy.reset();
    proxy.set_faults(FaultPlan {
        only: "UpdateService".into(),
        lose_answer: 0.5,
        seed: 11,
        ..Default::default()
    });
    let lossy = run_binary(
        &proxy.url(),
        &["reconcile"],
        &[("ECS_RELOADER_ROLLOUT_UPDATES_PER_SECOND", "20")],
    )
    .await;
    assert_eq!(lossy.code, 0, "{}{}", lossy.stdout, lossy.stderr);
    let lost = proxy
        .calls()
        .iter()
        .filter(|c| c.fault == Some(Fault::LoseAnswer))
        .count();
    assert!(lost > 0, "some answers were lost");
    let mut rolled = proxy.updated_services();
    rolled.sort();
    assert_eq!(
        rolled, expected,
        "a lost answer does not cause a second deployment"
    );
}

/// Every throttle reaches the guard, whose pacing slows that kind of call down: the SDK retries
/// none of the calls the guard paces. (With the SDK's own three attempts, most throttles were
/// retried inside the SDK and the pacing never heard of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_throttle_reaches_the_guard() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let services: Vec<String> = (0..60).map(|i| format!("svc-{i:02}")).collect();
    let layout: Vec<(&str, usize)> = services.iter().map(|s| (s.as_str(), 0)).collect();
    aws.one_secret_world(&["app/db"], "prod", &layout).await;
    proxy.set_faults(FaultPlan {
        only: "DescribeServices".into(),
        throttle: 0.5,
        seed: 3,
        ..Default::default()
    });
    let run = run_binary(
        &proxy.url(),
        &["plan", "--output", "json"],
        &[("ECS_RELOADER_LOG", "ecs_reloader=debug")],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let throttled = proxy.throttled("DescribeServices");
    let retried = run
        .stderr
        .lines()
        .filter(|l| l.contains("AWS call failed, retrying") && l.contains("ecs:DescribeServices"))
        .count();
    assert!(throttled > 0, "the proxy throttled some calls");
    assert_eq!(
        retried, throttled,
        "each throttle the proxy answered was retried by the guard, not inside the SDK"
    );
}
