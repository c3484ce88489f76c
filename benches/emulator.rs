//! Benchmarks against the AWS emulator (moto on loopback): scan speed against a sequential boto3
//! baseline, event latency of `serve`, and footprint. Prints figures; not a test.
//!
//! `cargo bench --bench emulator` (needs `moto[server]`; see tests/emulator/requirements.txt).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use support::proxy::Proxy;
use support::{run_binary, wait_for, Aws, Emulator, Refs, Serve};

/// Read pacing off: every scan call kind's bucket refilled far faster than anything can call.
const UNPACED: &[(&str, &str)] = &[
    ("ECS_RELOADER_PACING_LIST_CLUSTERS_PER_SECOND", "100000"),
    ("ECS_RELOADER_PACING_LIST_SERVICES_PER_SECOND", "100000"),
    ("ECS_RELOADER_PACING_DESCRIBE_SERVICES_PER_SECOND", "100000"),
    (
        "ECS_RELOADER_PACING_DESCRIBE_TASK_DEFINITION_PER_SECOND",
        "100000",
    ),
    ("ECS_RELOADER_PACING_DESCRIBE_SECRET_PER_SECOND", "100000"),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// S services over C clusters, T task definitions, K secrets; returns the secret ARNs.
async fn world(aws: &Aws, s: usize, c: usize, t: usize, k: usize) -> Vec<String> {
    let secrets: Vec<String> = stream::iter(0..k)
        .map(|i| async move { aws.secret(&format!("bench/secret-{i:04}")).await.0 })
        .buffered(16)
        .collect()
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..c {
        aws.cluster(&format!("cluster-{i:02}")).await;
    }
    let defs: Vec<String> = stream::iter(0..t)
        .map(|i| {
            let arn: &'static str = Box::leak(secrets[i % k].clone().into_boxed_str());
            let refs: &'static [&'static str] = Box::leak(vec![arn].into_boxed_slice());
            async move {
                aws.task_def(
                    &format!("td-{i:04}"),
                    Refs {
                        secrets: refs,
                        ..Default::default()
                    },
                )
                .await
            }
        })
        .buffered(16)
        .collect()
        .await;
    stream::iter(0..s)
        .map(|i| {
            let (cluster, td) = (format!("cluster-{:02}", i % c), defs[i % t].clone());
            async move {
                aws.service(&cluster, &format!("svc-{i:05}"), &td, &[])
                    .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    secrets
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

async fn scan_speed() {
    let (s, c, t, k) = (2000, 20, 400, 100);
    println!("\n2. Scan speed: S = {s}, C = {c}, T = {t}, K = {k} in moto; cold `ecs-reloader plan` vs a sequential boto3 script");
    let emu = Emulator::start();
    let aws = Aws::connect(&emu.url()).await;
    let built = Instant::now();
    world(&aws, s, c, t, k).await;
    println!("   (world built in {:.1} s)", built.elapsed().as_secs_f64());
    let clusters: Vec<String> = (0..c).map(|i| format!("cluster-{i:02}")).collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/baseline_scan.py");
    let mut baseline = Vec::new();
    let mut paced = Vec::new();
    let mut unpaced = Vec::new();
    for _ in 0..3 {
        let out = Command::new(python())
            .arg(&script)
            .args(&clusters)
            .env("AWS_ENDPOINT_URL", emu.url())
            .env("AWS_REGION", support::REGION)
            .env("AWS_DEFAULT_REGION", support::REGION)
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .output()
            .expect("baseline runs");
        baseline.push(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .expect("seconds"),
        );
        for (env, into) in [(&[][..], &mut paced), (UNPACED, &mut unpaced)] {
            let t0 = Instant::now();
            let run = run_binary(&emu.url(), &["plan", "--output", "json"], env).await;
            assert_eq!(run.code, 0, "{}", run.stderr);
            into.push(t0.elapsed().as_secs_f64());
        }
    }
    let (b, p, u) = (median(baseline), median(paced), median(unpaced));
    println!("   sequential boto3 baseline (lower-bound calls), median of 3: {b:.2} s");
    println!("   ecs-reloader plan, read pacing off (scan_concurrency 8), median of 3: {u:.2} s; ratio to baseline {:.2}", u / b);
    println!("   ecs-reloader plan, default pacing (10 reads/s per call kind), median of 3: {p:.2} s; ratio to baseline {:.2}", p / b);
}

async fn event_latency() {
    // 1,015 services in 10 clusters; each secret is used by three of them (three task
    // definitions, one service each).
    let (n, c, runs) = (1015usize, 10usize, 25usize);
    let k = n / 3;
    println!("\n4. Event latency: `serve` with a warm watch cache, debounce 0, {n} services in {c} clusters, each secret used by 3; event on the queue -> first UpdateService");
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let built = Instant::now();
    let secrets = world(&aws, n, c, k, k).await;
    println!("   (world built in {:.1} s)", built.elapsed().as_secs_f64());
    let (queue, _, _) = aws.queue_with_dlq("latency", 30, 5).await;
    let serve = Serve::start(
        &proxy.url(),
        &["--queue-url", &queue],
        &[
            ("ECS_RELOADER_EVENTS_DEBOUNCE", "0s"),
            ("ECS_RELOADER_RESYNC_INTERVAL", "1h"),
        ],
    );
    serve.ready().await;
    let mut samples = Vec::new();
    let mut reads = Vec::new();
    for (i, arn) in secrets.iter().enumerate().take(runs) {
        aws.rotate(&format!("bench/secret-{i:04}")).await;
        // Past the whole-second ambiguity, so that no settle wait is measured.
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let before = proxy.updated_services().len();
        let mark = proxy.calls().len();
        let body = serde_json::json!({"source": "aws.secretsmanager", "detail-type": "AWS Service Event via CloudTrail",
            "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": arn}}}).to_string();
        let t0 = Instant::now();
        aws.send(&queue, &body).await;
        wait_for(
            "the first UpdateService",
            Duration::from_secs(60),
            || async { proxy.updated_services().len() > before },
        )
        .await;
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        reads.push(
            proxy
                .calls()
                .iter()
                .skip(mark)
                .take_while(|call| call.operation() != "UpdateService")
                .filter(|call| call.target.starts_with("AmazonEC2ContainerService"))
                .count() as f64,
        );
        wait_for("the queue to drain", Duration::from_secs(60), || async {
            aws.queue_total(&queue).await == 0
        })
        .await;
    }
    println!(
        "   p50 {:.0} ms, p99 {:.0} ms (n = {runs}; includes SQS long-poll delivery in moto)",
        percentile(samples.clone(), 0.5),
        percentile(samples, 0.99)
    );
    println!(
        "   ECS reads before the first UpdateService: median {:.0}, max {:.0}",
        median(reads.clone()),
        reads.iter().copied().fold(0.0, f64::max)
    );
}

async fn footprint() {
    let (s, c, t, k) = (10_000, 20, 400, 100);
    println!(
        "\n5. Footprint: `serve` with a {s}-service index (C = {c}, T = {t}, K = {k}) in moto"
    );
    let emu = Emulator::start();
    let aws = Aws::connect(&emu.url()).await;
    let built = Instant::now();
    world(&aws, s, c, t, k).await;
    println!("   (world built in {:.1} s)", built.elapsed().as_secs_f64());
    let serve = Serve::start(
        &emu.url(),
        &[],
        &[UNPACED, &[("ECS_RELOADER_RESYNC_INTERVAL", "1h")][..]].concat(),
    );
    let t0 = Instant::now();
    serve.ready().await;
    let pid = serve.child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    println!(
        "   startup resync of {s} services: {:.1} s (read pacing off)",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "   peak RSS (VmHWM) after the startup resync: {:.1} MiB; current RSS: {:.1} MiB",
        kib("VmHWM:") / 1024.0,
        kib("VmRSS:") / 1024.0
    );
    drop(serve);
    drop(emu);

    // A cold `plan` of 2,000 services (C = 20, T = 400, K = 100), its peak RSS as GNU time
    // reports it (the process ends, so /proc cannot be read after it).
    let (s, c, t, k) = (2000, 20, 400, 100);
    let emu = Emulator::start();
    let aws = Aws::connect(&emu.url()).await;
    world(&aws, s, c, t, k).await;
    let out = tokio::process::Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M"])
        .arg(env!("CARGO_BIN_EXE_ecs-reloader"))
        .args(["plan", "--output", "json"])
        .env("AWS_ENDPOINT_URL", emu.url())
        .env("AWS_REGION", support::REGION)
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .expect("GNU time (apt-get install time) runs the plan");
    let err = String::from_utf8_lossy(&out.stderr);
    let kib: f64 = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    println!(
        "   cold `plan` of {s} services (default pacing): peak RSS {:.1} MiB; exit {}",
        kib / 1024.0,
        out.status.code().unwrap_or(-1)
    );

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ecs-reloader"));
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!(
        "   binary as built for this bench ({}): {:.1} MiB",
        bin.display(),
        size as f64 / 1_048_576.0
    );
}

/// The least time ECS's buckets allow for the calls that reached the emulator, each kind
/// draining side by side, when `share` of every refill goes to another client.
fn proxy_floor(proxy: &Proxy, share: f64) -> f64 {
    [
        ("ListClusters", 50.0, 20.0),
        ("ListServices", 100.0, 20.0),
        ("DescribeServices", 100.0, 20.0),
        ("DescribeTaskDefinition", 50.0, 20.0),
    ]
    .iter()
    .map(|(op, burst, refill)| {
        ((proxy.count(op) as f64 - burst) / (refill * (1.0 - share))).max(0.0)
    })
    .fold(0.0, f64::max)
}

async fn bucket_floor() {
    let (s, c, t, k) = (2000, 20, 400, 100);
    println!("\n6b. Bucket floor through a proxy enforcing ECS's buckets in front of moto: S = {s}, C = {c}, T = {t}, K = {k}; cold `ecs-reloader plan` (defaults) and the sequential boto3 script");
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    world(&aws, s, c, t, k).await;
    let clusters: Vec<String> = (0..c).map(|i| format!("cluster-{i:02}")).collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/baseline_scan.py");
    for (label, share) in [
        ("alone on the account", 0.0),
        ("another client takes half of every refill", 0.5),
    ] {
        // Buckets refill between runs, as an account's do between scans.
        tokio::time::sleep(Duration::from_secs(10)).await;
        proxy.reset();
        proxy.enforce_ecs_buckets(share);
        let t0 = Instant::now();
        let run = run_binary(&proxy.url(), &["plan", "--output", "json"], &[]).await;
        let took = t0.elapsed().as_secs_f64();
        let floor = proxy_floor(&proxy, share);
        let throttled: usize = ["ListServices", "DescribeServices", "DescribeTaskDefinition"]
            .iter()
            .map(|op| proxy.throttled(op))
            .sum();
        println!(
            "   ecs-reloader plan, {label}: {took:.2} s, floor {floor:.2} s, ratio {:.3}; exit {}; throttled by the proxy {throttled}",
            took / floor.max(0.001),
            run.code
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        proxy.reset();
        proxy.enforce_ecs_buckets(share);
        let t0 = Instant::now();
        let out = Command::new(python())
            .arg(&script)
            .args(&clusters)
            .env("AWS_ENDPOINT_URL", proxy.url())
            .env("AWS_REGION", support::REGION)
            .env("AWS_DEFAULT_REGION", support::REGION)
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .output()
            .expect("baseline runs");
        let took = t0.elapsed().as_secs_f64();
        let floor = proxy_floor(&proxy, share);
        let throttled: usize = ["ListServices", "DescribeServices", "DescribeTaskDefinition"]
            .iter()
            .map(|op| proxy.throttled(op))
            .sum();
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(160)
            .collect::<String>();
        println!(
            "   sequential boto3 (its default retries), {label}: {took:.2} s, floor {floor:.2} s, ratio {:.3}; exit {}; throttled by the proxy {throttled}{}",
            took / floor.max(0.001),
            out.status.code().unwrap_or(-1),
            if out.status.success() { String::new() } else { format!("; {last}") }
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    println!("Emulator benchmarks (cargo bench --bench emulator [scan|latency|footprint|buckets])");
    if only.as_deref().is_none_or(|o| o == "scan") {
        scan_speed().await;
    }
    if only.as_deref().is_none_or(|o| o == "latency") {
        event_latency().await;
    }
    if only.as_deref().is_none_or(|o| o == "footprint") {
        footprint().await;
    }
    if only.as_deref().is_none_or(|o| o == "buckets") {
        bucket_floor().await;
    }
}
