//! Reads paced with ECS's own bucket shapes, yielding when another client of the account draws
//! on the same buckets: over the fake with ECS's documented buckets, on tokio's paused clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ecs_reloader::aws::fake::{CallRecord, FakeAws};
use ecs_reloader::aws::guard::{self, Kind, Limits};
use ecs_reloader::config::Config;
use ecs_reloader::driver::fake_world::World;
use ecs_reloader::driver::setup;
use ecs_reloader::index::Scope;

const READS: [Kind; 3] = [
    Kind::ListServices,
    Kind::DescribeServices,
    Kind::DescribeTaskDefinition,
];

/// Times of the calls of `op` we sent (throttled ones included).
fn sent(log: &[CallRecord], op: &str) -> Vec<DateTime<Utc>> {
    log.iter()
        .filter(|c| c.operation == op)
        .map(|c| c.at)
        .collect()
}

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// No window holds more calls than the bucket allows: burst + rate × the window's length.
fn assert_within_bucket(times: &[DateTime<Utc>], kind: Kind, limits: &Limits) {
    let pace = limits.pace(kind);
    for i in 0..times.len() {
        for j in i..times.len() {
            let n = (j - i + 1) as f64;
            let allowed = pace.burst as f64 + pace.per_second * secs(times[i], times[j]) + 1e-6;
            assert!(
                n <= allowed,
                "{}: {n} calls between {} and {} (allowed {allowed:.2})",
                kind.operation(),
                times[i],
                times[j]
            );
        }
    }
}

/// Calls in [from, to), per second.
fn rate_between(times: &[DateTime<Utc>], from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let n = times.iter().filter(|t| **t >= from && **t < to).count();
    n as f64 / secs(from, to)
}

/// 2,000 services in 20 clusters over 400 task definitions, each using one of 100 secrets, with
/// ECS's documented buckets.
async fn scan_world() -> (FakeAws, setup::Parts) {
    let w = World::builder()
        .services(2000)
        .clusters(20)
        .task_defs(400)
        .secrets(100)
        .settle(Duration::from_secs(10))
        .ecs_buckets()
        .build()
        .await;
    (w.fake, w.parts)
}

/// Alone on the account, a cold scan at ECS's bucket shapes is never throttled, and no call kind
/// ever goes faster than its bucket allows, in any window.
#[tokio::test(start_paused = true)]
async fn alone_every_kind_stays_within_its_bucket() {
    let (fake, parts) = scan_world().await;
    let a = parts
        .reconciler
        .assess(&Scope::default(), &[])
        .await
        .expect("scan");
    assert_eq!(a.services.len(), 2000);
    let log = fake.call_log();
    let limits = setup::limits(&Config::default());
    for kind in READS {
        let times = sent(&log, kind.operation());
        assert!(!times.is_empty(), "{}", kind.operation());
        assert_within_bucket(&times, kind, &limits);
        assert_eq!(fake.throttled(kind.operation()), 0, "{}", kind.operation());
    }
    // Faster than the old fixed 10/s: 400 task definitions at 20/s after a burst of 50.
    let tds = sent(&log, "ecs:DescribeTaskDefinition");
    let span = secs(tds[0], tds[tds.len() - 1]);
    assert!(span < 18.0 * 1.2, "DescribeTaskDefinition took {span:.1} s");
}

/// Another client takes half of every refill: throttling starts, each throttled kind's rate
/// comes down to what is left, the scan completes with no error, and still no window exceeds
/// the bucket.
#[tokio::test(start_paused = true)]
async fn another_client_taking_half_slows_us_and_the_scan_completes() {
    let (fake, parts) = scan_world().await;
    for kind in READS {
        fake.share_bucket(kind.operation(), 0.5);
    }
    let a = parts
        .reconciler
        .assess(&Scope::default(), &[])
        .await
        .expect("no throttle surfaces as an error");
    assert_eq!(a.services.len(), 2000);
    let log = fake.call_log();
    let limits = setup::limits(&Config::default());
    for kind in READS {
        assert_within_bucket(&sent(&log, kind.operation()), kind, &limits);
    }
    let op = "ecs:DescribeTaskDefinition";
    assert!(
        fake.throttled(op) > 0,
        "the other client caused no throttle"
    );
    let first_throttle = log
        .iter()
        .find(|c| c.operation == op && c.throttled)
        .map(|c| c.at)
        .expect("a throttle");
    let times = sent(&log, op);
    let last = times[times.len() - 1];
    let from = first_throttle + chrono::Duration::seconds(2);
    assert!(secs(from, last) > 5.0, "a steady phase to look at");
    // Sent (throttled included): without yielding this stays at the bucket's 20/s with half of
    // it refused; yielding, it settles near the 10/s the other client leaves.
    let rate = rate_between(&times, from, last);
    assert!(rate <= 13.0, "{op} sent at {rate:.1}/s while throttled");
    let throttled = fake.throttled(op) as f64;
    assert!(
        throttled / (times.len() as f64) < 0.1,
        "{throttled} of {} calls throttled",
        times.len()
    );
}

/// Once the other client stops, a kind the throttling slowed climbs back to its bucket's rate.
#[tokio::test(start_paused = true)]
async fn the_rate_recovers_once_the_other_client_stops() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    fake.create_service("c", "s", "td", 1, &[]);
    fake.use_ecs_buckets();
    let op = "ecs:DescribeServices";
    fake.share_bucket(op, 0.5);
    let limits = Limits::default();
    let (clients, _, pacing) = guard::guard_with_pacing(fake.clients(), limits, clock.clone());

    let run_for = |d: Duration| {
        let clients = clients.clone();
        async move {
            let end = tokio::time::Instant::now() + d;
            let worker = || async {
                while tokio::time::Instant::now() < end {
                    clients
                        .ecs
                        .describe_services("c", &["s".into()])
                        .await
                        .expect("never an error");
                }
            };
            futures::future::join_all((0..8).map(|_| worker())).await;
        }
    };

    run_for(Duration::from_secs(30)).await;
    let t1 = clock.now();
    let slowed = pacing
        .rate(Kind::DescribeServices)
        .expect("slowed by throttling");
    assert!(slowed < 20.0, "{slowed}");
    let log = fake.call_log();
    let sent_times = sent(&log, op);
    let shared = rate_between(&sent_times, t1 - chrono::Duration::seconds(10), t1);
    assert!(shared <= 13.0, "sent {shared:.1}/s while sharing");

    fake.share_bucket(op, 0.0);
    run_for(Duration::from_secs(30)).await;
    let t2 = clock.now();
    assert_eq!(
        pacing.rate(Kind::DescribeServices),
        None,
        "back to the bucket alone"
    );
    let log = fake.call_log();
    let ok_after: Vec<_> = log
        .iter()
        .filter(|c| c.operation == op && !c.throttled)
        .map(|c| c.at)
        .collect();
    let recovered = rate_between(&ok_after, t2 - chrono::Duration::seconds(10), t2);
    assert!(
        recovered >= 19.0,
        "{recovered:.1}/s after the other client stopped"
    );
    assert_within_bucket(&sent(&log, op), Kind::DescribeServices, &limits);
}
