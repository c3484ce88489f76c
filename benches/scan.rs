//! Scan benchmarks over the in-memory fake: API efficiency against the lower bound, and the
//! ECS throttling model at 10,000 services. Time inside runs on tokio's paused clock, so the
//! simulated durations are exact and independent of this machine; wall-clock CPU time is printed
//! beside them.
//!
//! `cargo bench --bench scan`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecs_reloader::aws::fake::FakeAws;
use ecs_reloader::config::Config;
use ecs_reloader::driver::setup::{self, Parts};
use ecs_reloader::event::{self, Changes};
use ecs_reloader::index::Scope;
use ecs_reloader::reconcile::{Mode, Request};
use ecs_reloader::reference::Site;
use ecs_reloader::rollout::LogProgress;

struct World {
    services: usize,
    clusters: usize,
    task_defs: usize,
    secrets: usize,
}

fn build(w: &World) -> (FakeAws, Parts) {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let arns: Vec<String> = (0..w.secrets)
        .map(|k| fake.create_secret(&format!("app/secret-{k:04}")))
        .collect();
    let defs: Vec<String> = (0..w.task_defs)
        .map(|t| {
            let site = Site::Secret {
                container: "app".into(),
                name: "S".into(),
            };
            fake.register_task_definition(
                &format!("td-{t:04}"),
                &[(site, arns[t % w.secrets].as_str())],
            )
        })
        .collect();
    let parts = setup::assemble(
        &Config::default(),
        fake.clients(),
        clock,
        Arc::new(LogProgress),
        Mode::Watch,
    );
    let _ = defs;
    (fake, parts)
}

fn populate(fake: &FakeAws, w: &World) {
    for s in 0..w.services {
        let td = format!(
            "arn:aws:ecs:eu-west-1:111122223333:task-definition/td-{:04}:1",
            s % w.task_defs
        );
        fake.create_service(
            &format!("cluster-{:02}", s % w.clusters),
            &format!("svc-{s:05}"),
            &td,
            1,
            &[],
        );
    }
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
    let w = World {
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
        let (fake, parts) = build(&w);
        tokio::time::sleep(Duration::from_secs(10)).await;
        populate(&fake, &w);
        tokio::time::sleep(Duration::from_secs(10)).await;

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

        for k in 0..w.secrets {
            fake.put_secret_value(&format!("app/secret-{k:04}"), &[]);
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
    let w = World {
        services: 10_000,
        clusters: 20,
        task_defs: 400,
        secrets: 100,
    };
    println!("\n3. Throttling model: S = {}, C = {}, T = {}, K = {}, ECS's documented token buckets in the fake", w.services, w.clusters, w.task_defs, w.secrets);
    rt.block_on(async {
        let (fake, parts) = build(&w);
        tokio::time::sleep(Duration::from_secs(10)).await;
        populate(&fake, &w);
        tokio::time::sleep(Duration::from_secs(10)).await;
        fake.use_ecs_buckets();
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
    let w = World {
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
            let (fake, parts) = build(&w);
            tokio::time::sleep(Duration::from_secs(10)).await;
            populate(&fake, &w);
            tokio::time::sleep(Duration::from_secs(10)).await;
            fake.use_ecs_buckets();
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
        let w = World {
            services,
            clusters,
            task_defs: 400,
            secrets: 100,
        };
        rt.block_on(async {
            let (fake, parts) = build(&w);
            let hot = fake.create_secret("app/hot");
            let td_hot = fake.register_task_definition(
                "td-hot",
                &[(
                    Site::Secret {
                        container: "app".into(),
                        name: "S".into(),
                    },
                    hot.as_str(),
                )],
            );
            tokio::time::sleep(Duration::from_secs(10)).await;
            populate(&fake, &w);
            for c in 0..3 {
                fake.create_service(&format!("cluster-{c:02}"), "hot", &td_hot, 1, &[]);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            fake.use_ecs_buckets();
            let r = &parts.reconciler;
            r.pass(&Request::all()).await.expect("startup resync");
            let all_clusters: Vec<String> = (0..clusters).map(|c| format!("cluster-{c:02}")).collect();
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
    println!("Scan benchmarks (cargo bench --bench scan [event])");
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
