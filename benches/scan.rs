//! Scan benchmarks over the in-memory fake: API efficiency against the lower bound, and the
//! ECS throttling model at 10,000 services. Time inside runs on tokio's paused clock, so the
//! simulated durations are exact and independent of this machine; wall-clock CPU time is printed
//! beside them.
//!
//! `cargo bench --bench scan`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ecs_reloader::driver::fake_world::{World, WorldBuilder};
use ecs_reloader::event::{self, Changes};
use ecs_reloader::index::Scope;
use ecs_reloader::reconcile::Request;

/// The shape of a scanned world: S services round C clusters, over T task definitions, each
/// using one of K secrets.
struct Shape {
    services: usize,
    clusters: usize,
    task_defs: usize,
    secrets: usize,
}

/// The world of a shape: secrets and task definitions, 10 s later the services, 10 s later the
/// parts (in sync, past the whole-second ambiguity).
fn world(w: &Shape) -> WorldBuilder {
    World::builder()
        .services(w.services)
        .clusters(w.clusters)
        .task_defs(w.task_defs)
        .secrets(w.secrets)
        .settle(Duration::from_secs(10))
}

fn delta(
    after: &BTreeMap<&'static str, u64>,
    before: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn print_calls(title: &str, calls: &BTreeMap<&'static str, u64>) -> u64 {
    println!("  {title}:");
    let mut total = 0;
    for (op, n) in calls {
        println!("    {op:<40} {n:>6}");
        total += n;
    }
    println!("    {:<40} {total:>6}", "total");
    total
}

fn api_efficiency(rt: &tokio::runtime::Runtime) {
    let w = Shape {
        services: 2000,
        clusters: 20,
        task_defs: 400,
        secrets: 100,
    };
    println!(
        "\n1. API efficiency: S = {}, C = {}, T = {}, K = {} (in-memory fake)",
        w.services, w.clusters, w.task_defs, w.secrets
    );
    rt.block_on(async {
        let world = world(&w).build().await;
        let (fake, parts) = (&world.fake, &world.parts);

        let before = fake.all_calls();
        let a = parts.reconciler.assess(&Scope::default(), &[]).await.expect("cold scan");
        assert_eq!(a.services.len(), w.services);
        let cold = delta(&fake.all_calls(), &before);
        let total = print_calls("cold full scan, everything in sync", &cold);
        let pages = cold.get("ecs:ListServices").copied().unwrap_or(0);
        let bound = pages + w.services.div_ceil(10) as u64 + w.task_defs as u64 + w.secrets as u64;
        println!(
            "    lower bound (ListServices pages + ceil(S/10) + T + K) = {pages} + {} + {} + {} = {bound}; ratio {:.3}",
            w.services.div_ceil(10),
            w.task_defs,
            w.secrets,
            total as f64 / bound as f64
        );

        let before = fake.all_calls();
        parts.reconciler.assess(&Scope::default(), &[]).await.expect("warm scan");
        let warm = delta(&fake.all_calls(), &before);
        print_calls("warm resync (same process)", &warm);
        println!("    DescribeTaskDefinition calls in the warm resync: {}", warm.get("ecs:DescribeTaskDefinition").copied().unwrap_or(0));

        for name in world.secret_names() {
            fake.put_secret_value(name, &[]);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let before = fake.all_calls();
        let a = parts.reconciler.assess(&Scope::default(), &[]).await.expect("stale scan");
        let stale = delta(&fake.all_calls(), &before);
        let n_stale = a.services.iter().filter(|s| s.decision.is_stale()).count();
        print_calls(&format!("warm resync after every secret rotated ({n_stale} stale)"), &stale);
        println!("    (ListSecretVersionIds is called only for secrets changed after some dependent's deployment)");
    });
}

fn throttling_model(rt: &tokio::runtime::Runtime) {
    let w = Shape {
        services: 10_000,
        clusters: 20,
        task_defs: 400,
        secrets: 100,
    };
    println!("\n3. Throttling model: S = {}, C = {}, T = {}, K = {}, ECS's documented token buckets in the fake", w.services, w.clusters, w.task_defs, w.secrets);
    rt.block_on(async {
        let World { fake, parts, .. } = world(&w).ecs_buckets().build().await;
        let wall = Instant::now();
        let t0 = tokio::time::Instant::now();
        let before = fake.all_calls();
        let a = parts.reconciler.assess(&Scope::default(), &[]).await;
        let simulated = t0.elapsed();
        let a = a.expect("a full resync surfaces no throttling error");
        let calls = delta(&fake.all_calls(), &before);
        // ECS buckets (burst, refill/s) for what the scan calls.
        let buckets = [
            ("ecs:ListServices", 100.0, 20.0),
            ("ecs:DescribeServices", 100.0, 20.0),
            ("ecs:DescribeTaskDefinition", 50.0, 20.0),
        ];
        let minimum = buckets
            .iter()
            .map(|(op, burst, refill)| {
                let n = calls.get(op).copied().unwrap_or(0) as f64;
                ((n - burst) / refill).max(0.0)
            })
            .fold(0.0f64, f64::max);
        println!("    services decided: {}", a.services.len());
        println!(
            "    full resync, simulated time: {:.1} s",
            simulated.as_secs_f64()
        );
        println!(
            "    minimum imposed by ECS's buckets: {minimum:.1} s; ratio {:.2}",
            simulated.as_secs_f64() / minimum.max(0.001)
        );
        let throttled: u64 = [
            "ecs:ListServices",
            "ecs:DescribeServices",
            "ecs:DescribeTaskDefinition",
        ]
        .iter()
        .map(|op| fake.throttled(op))
        .sum();
        println!(
            "    throttling errors returned by the fake: {throttled}; surfaced to the caller: 0"
        );
        println!(
            "    wall-clock CPU time of the simulation: {:.2} s",
            wall.elapsed().as_secs_f64()
        );
        print_calls("calls", &calls);
    });
}

/// The least time ECS's buckets allow for `calls` (burst, refill/s), each kind draining side by
/// side: max over kinds of (n − burst) / refill.
fn bucket_floor(calls: &BTreeMap<&'static str, u64>, refill_share: f64) -> f64 {
    [
        ("ecs:ListServices", 100.0, 20.0),
        ("ecs:DescribeServices", 100.0, 20.0),
        ("ecs:DescribeTaskDefinition", 50.0, 20.0),
    ]
    .iter()
    .map(|(op, burst, refill)| {
        let n = calls.get(op).copied().unwrap_or(0) as f64;
        ((n - burst) / (refill * refill_share)).max(0.0)
    })
    .fold(0.0f64, f64::max)
}

fn bucket_floor_ratio(rt: &tokio::runtime::Runtime) {
    let w = Shape {
        services: 2000,
        clusters: 20,
        task_defs: 400,
        secrets: 100,
    };
    println!(
        "\n6. Bucket floor: cold plan-equivalent scan, S = {}, C = {}, T = {}, K = {}, ECS's buckets in the fake, default [pacing]",
        w.services, w.clusters, w.task_defs, w.secrets
    );
    for (title, share) in [
        ("alone on the account", 0.0),
        ("another client takes half of every refill", 0.5),
    ] {
        rt.block_on(async {
            let World { fake, parts, .. } = world(&w).ecs_buckets().build().await;
            for op in [
                "ecs:ListServices",
                "ecs:DescribeServices",
                "ecs:DescribeTaskDefinition",
            ] {
                fake.share_bucket(op, share);
            }
            let before = fake.all_calls();
            let t0 = tokio::time::Instant::now();
            let a = parts.reconciler.assess(&Scope::default(), &[]).await;
            let simulated = t0.elapsed().as_secs_f64();
            let a = a.expect("no throttle surfaces as an error");
            // Throttled calls cost no token: the floor counts the calls that went through.
            let calls: BTreeMap<&'static str, u64> = delta(&fake.all_calls(), &before)
                .into_iter()
                .map(|(op, n)| (op, n - fake.throttled(op)))
                .collect();
            let floor = bucket_floor(&calls, 1.0 - share);
            let throttled: u64 = [
                "ecs:ListServices",
                "ecs:DescribeServices",
                "ecs:DescribeTaskDefinition",
            ]
            .iter()
            .map(|op| fake.throttled(op))
            .sum();
            println!("  {title}:");
            println!(
                "    services decided {}, error none; simulated time {simulated:.2} s; floor {floor:.2} s; ratio {:.3}",
                a.services.len(),
                simulated / floor.max(0.001)
            );
            println!("    throttling errors returned by the fake: {throttled}; surfaced: 0");
        });
    }
}

/// What one rotation event costs with a warm watch cache, against the scan every event cost
/// before: S services, three of which (in three clusters) use the rotated secret.
fn event_cost(rt: &tokio::runtime::Runtime) {
    println!("\n8. Event cost: a rotation of a secret three services use; ECS's token buckets in the fake; the pass after a startup resync");
    for (services, clusters) in [(1_015usize, 10usize), (10_000, 20)] {
        let w = Shape {
            services,
            clusters,
            task_defs: 400,
            secrets: 100,
        };
        rt.block_on(async {
            let world = world(&w)
                .dependants(
                    "app/hot",
                    &[("cluster-00", "hot"), ("cluster-01", "hot"), ("cluster-02", "hot")],
                )
                .ecs_buckets()
                .build()
                .await;
            let hot = world.secret_arn("app/hot").expect("created");
            let fake = &world.fake;
            let r = &world.parts.reconciler;
            r.pass(&Request::all()).await.expect("startup resync");
            let all_clusters = world.clusters().to_vec();
            let body = format!(
                r#"{{"source":"aws.secretsmanager","detail-type":"AWS Service Event via CloudTrail","detail":{{"eventName":"RotationSucceeded","additionalEventData":{{"SecretId":"{hot}"}}}}}}"#
            );
            for (label, scan) in [("watch cache", false), ("a scan per event (before)", true)] {
                fake.put_secret_value("app/hot", &[]);
                // Past the ECS buckets' refill after the last pass, and the whole-second tie.
                tokio::time::sleep(Duration::from_secs(60)).await;
                let mut changes = Changes::default();
                changes.add(&event::parse(&body).expect("event"));
                let mut req = Request::changes(changes);
                if scan {
                    // Naming the clusters leaves the default scope: the cache is not used.
                    req.clusters = all_clusters.clone();
                }
                let mark = fake.call_log().len();
                let updates = fake.updates().len();
                let t0 = r.clock().now();
                let pass = r.pass(&req).await.expect("pass");
                assert_eq!(pass.failed().count(), 0);
                let first = fake.updates().get(updates).map(|u| u.at).expect("rolled");
                let reads = fake
                    .call_log()
                    .into_iter()
                    .skip(mark)
                    .take_while(|c| c.operation != "ecs:UpdateService")
                    .filter(|c| c.operation.starts_with("ecs:"))
                    .count();
                println!(
                    "    S = {services:>6}, {label:<26}: {reads:>4} ECS reads before the first UpdateService, reached after {:>7.3} s (simulated)",
                    (first - t0).num_milliseconds() as f64 / 1000.0
                );
                // Let the three rollouts finish before the next round.
                tokio::time::sleep(Duration::from_secs(120)).await;
            }
        });
    }
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    println!("Scan benchmarks (cargo bench --bench scan [event]): a model of the in-memory fake, its times simulated on a paused clock");
    if std::env::args().nth(1).as_deref() == Some("event") {
        event_cost(&rt);
        return;
    }
    api_efficiency(&rt);
    throttling_model(&rt);
    bucket_floor_ratio(&rt);
    event_cost(&rt);
    if let Some(kib) = peak_rss_kib() {
        println!("\n   peak RSS of this bench process (fake AWS with 10,000 services + the reconciler): {:.1} MiB", kib as f64 / 1024.0);
    }
}
