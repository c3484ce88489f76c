//! Policies people ask for, over the in-memory fake on tokio's paused clock: maintenance windows
//! (and the emergency override), notify-only with approval. The fake's clock starts on
//! Thursday 2026-01-01 00:00 UTC.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ecs_reloader::aws::fake::FakeAws;
use ecs_reloader::aws::queue::Bus;
use ecs_reloader::aws::AwsResult;
use ecs_reloader::clock::Clock;
use ecs_reloader::config::Config;
use ecs_reloader::driver::cli::{self, Options, Output};
use ecs_reloader::driver::serve::{Server, Settings};
use ecs_reloader::driver::setup::{self, Parts};
use ecs_reloader::metrics::Metrics;
use ecs_reloader::notify::Notifier;
use ecs_reloader::reconcile::Mode;
use ecs_reloader::reference::Site;
use ecs_reloader::rollout::LogProgress;

/// Records outcome events.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, serde_json::Value)>>);

#[async_trait]
impl Bus for Recorder {
    async fn put(&self, detail_type: &str, detail: &serde_json::Value) -> AwsResult<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((detail_type.to_string(), detail.clone()));
        Ok(())
    }
}

struct World {
    fake: FakeAws,
    clock: Arc<dyn Clock>,
}

/// Secret `app/db`, and services api, worker (and those in `extra`, with tags) using it; then a
/// rotation, a few seconds later.
async fn world(extra: &[(&str, &[(&str, &str)])]) -> World {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let db = fake.create_secret("app/db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let site = Site::Secret {
        container: "app".into(),
        name: "DB".into(),
    };
    let td = fake.register_task_definition("app", &[(site, db.as_str())]);
    fake.create_service("prod", "api", &td, 2, &[]);
    fake.create_service("prod", "worker", &td, 2, &[]);
    for (name, tags) in extra {
        fake.create_service("prod", name, &td, 2, tags);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    World { fake, clock }
}

fn parts(w: &World, config: &Config, progress: Arc<dyn ecs_reloader::rollout::Progress>) -> Parts {
    setup::assemble(
        config,
        w.fake.clients(),
        w.clock.clone(),
        progress,
        Mode::Watch,
    )
}

async fn run(p: &Parts, opts: Options) -> (cli::Ending, serde_json::Value) {
    let mut out = Vec::new();
    let opts = Options {
        output: Output::Json,
        ..opts
    };
    let ending = cli::run(&p.reconciler, &opts, &mut out)
        .await
        .expect("pass runs");
    (ending, serde_json::from_slice(&out).expect("json"))
}

fn decision<'a>(report: &'a serde_json::Value, service: &str) -> &'a serde_json::Value {
    report["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["key"]["service"] == service))
        .unwrap_or_else(|| panic!("{service} in {report}"))
}

fn rolled(w: &World) -> Vec<String> {
    let mut r: Vec<String> = w.fake.updates().iter().map(|u| u.service.clone()).collect();
    r.sort();
    r
}

fn windowed(windows: &str) -> Config {
    let mut c = Config::default();
    c.rollout.windows = ecs_reloader::window::Windows::parse(windows).expect("a window");
    c.rollout.poll_interval = ecs_reloader::config::Dur(Duration::from_secs(5));
    c.rollout.canary = false;
    c
}

#[tokio::test(start_paused = true)]
async fn outside_its_window_a_stale_service_is_scheduled_and_the_window_rolls_it() {
    let w = world(&[("anytime", &[("ecs-reloader/window", "any")])]).await;
    let p = parts(&w, &windowed("Thu 03:00-04:00 UTC"), Arc::new(LogProgress));

    let (ending, report) = run(&p, Options::default()).await;
    assert!(
        ending.ok,
        "scheduled is by policy, not a problem: {}",
        ending.message
    );
    let api = decision(&report, "api");
    assert_eq!(api["decision"], "scheduled", "{api}");
    assert_eq!(api["at"], "2026-01-01T03:00:00Z", "{api}");
    assert_eq!(api["window"], "Thu 03:00-04:00 UTC");
    assert_eq!(
        rolled(&w),
        ["prod/anytime"],
        "the tag lifts the window for one service"
    );

    // The first pass inside the window rolls the rest.
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    let (ending, _) = run(&p, Options::default()).await;
    assert!(ending.ok, "{}", ending.message);
    assert_eq!(rolled(&w), ["prod/anytime", "prod/api", "prod/worker"]);
}

#[tokio::test(start_paused = true)]
async fn ignore_windows_is_an_emergency_for_what_is_named() {
    let w = world(&[]).await;
    let p = parts(
        &w,
        &windowed("Sat 03:00-04:00 Europe/Berlin"),
        Arc::new(LogProgress),
    );
    let (_, report) = run(
        &p,
        Options {
            secrets: vec!["app/db".into()],
            ..Options::default()
        },
    )
    .await;
    assert_eq!(decision(&report, "api")["decision"], "scheduled");
    assert!(rolled(&w).is_empty());
    let (ending, _) = run(
        &p,
        Options {
            secrets: vec!["app/db".into()],
            ignore_windows: true,
            ..Options::default()
        },
    )
    .await;
    assert!(ending.ok, "{}", ending.message);
    assert_eq!(rolled(&w), ["prod/api", "prod/worker"]);
}

#[tokio::test(start_paused = true)]
async fn serve_wakes_at_the_windows_start() {
    let w = world(&[]).await;
    let config = windowed("Thu 03:00-04:00 UTC");
    let notifier = Arc::new(Notifier::new(Arc::new(Metrics::new()), None));
    let p = parts(&w, &config, notifier.clone());
    let mut settings = Settings::from_config(&config);
    settings.resync_interval = Duration::from_secs(24 * 3600);
    let server = Server::new(p, None, notifier, settings);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(server.run_until(rx));
    // 02:59: still outside, and a resync a day away would be too late; nothing rolled.
    tokio::time::sleep(Duration::from_secs(2 * 3600 + 59 * 60)).await;
    assert!(rolled(&w).is_empty());
    tokio::time::sleep(Duration::from_secs(2 * 60)).await;
    assert_eq!(rolled(&w), ["prod/api", "prod/worker"], "rolled at 03:00");
    let at = w.fake.updates()[0].at;
    assert!(
        at >= "2026-01-01T03:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .expect("t")
            && at
                < "2026-01-01T03:00:10Z"
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .expect("t"),
        "{at}"
    );
    let _ = tx.send(true);
    let _ = serving.await;
}

#[tokio::test(start_paused = true)]
async fn notify_only_reports_pending_and_a_named_service_is_the_approval() {
    let w = world(&[("auto", &[("ecs-reloader/notify-only", "false")])]).await;
    let mut config = Config::default();
    config.rollout.notify_only = true;
    config.rollout.canary = false;
    config.rollout.poll_interval = ecs_reloader::config::Dur(Duration::from_secs(5));
    let bus = Arc::new(Recorder::default());
    let notifier = Arc::new(Notifier::new(Arc::new(Metrics::new()), Some(bus.clone())));
    let p = parts(&w, &config, notifier.clone());

    // A plain pass decides and reports; only the service tagged out of notify-only rolls.
    let pass = p
        .reconciler
        .pass(&ecs_reloader::reconcile::Request::all())
        .await
        .expect("pass");
    notifier.after_pass(&pass);
    notifier.flush().await;
    assert_eq!(rolled(&w), ["prod/auto"]);
    let events = bus.0.lock().expect("lock").clone();
    let pending: Vec<&serde_json::Value> = events
        .iter()
        .filter(|(t, _)| t == "Rollout Pending")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(pending.len(), 2, "{events:?}");
    assert!(
        pending.iter().all(|d| d["secrets"][0] == "app/db"),
        "{pending:?}"
    );
    assert!(pending.iter().all(|d| d["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("--service")));
    let text = notifier.metrics().render(&Default::default());
    assert!(
        text.contains("ecs_reloader_rollouts_total{kind=\"pending\"} 2"),
        "{text}"
    );

    // The CLI says so and exits non-zero; naming a service approves exactly that one.
    let (ending, report) = run(&p, Options::default()).await;
    assert!(
        !ending.ok && ending.message.contains("pending approval"),
        "{}",
        ending.message
    );
    assert_eq!(decision(&report, "api")["decision"], "pending");
    let (ending, _) = run(
        &p,
        Options {
            services: vec!["prod/api".into()],
            ..Options::default()
        },
    )
    .await;
    assert!(ending.ok, "{}", ending.message);
    assert_eq!(rolled(&w), ["prod/api", "prod/auto"]);
    // Naming the secret approves its remaining dependants.
    let (ending, _) = run(
        &p,
        Options {
            secrets: vec!["app/db".into()],
            ..Options::default()
        },
    )
    .await;
    assert!(ending.ok, "{}", ending.message);
    assert_eq!(rolled(&w), ["prod/api", "prod/auto", "prod/worker"]);
}

/// After a healthy rollout, every running task must have started after the change: `verified`,
/// or the tasks that did not are named, with a `Rollout Verified` event and a metric either way.
#[tokio::test(start_paused = true)]
async fn a_healthy_rollout_is_proved_task_by_task() {
    let w = world(&[]).await;
    // A task of worker's that ECS never stopped: it started before the rotation.
    let before = w.clock.now() - chrono::Duration::seconds(8);
    w.fake.add_lingering_task("prod", "worker", before);
    let mut config = Config::default();
    config.rollout.canary = false;
    config.rollout.poll_interval = ecs_reloader::config::Dur(Duration::from_secs(5));
    let bus = Arc::new(Recorder::default());
    let notifier = Arc::new(Notifier::new(Arc::new(Metrics::new()), Some(bus.clone())));
    let p = parts(&w, &config, notifier.clone());
    let (ending, report) = run(&p, Options::default()).await;
    assert!(ending.ok, "{}", ending.message);
    let api = &decision(&report, "api")["outcome"];
    assert_eq!(api["outcome"], "healthy", "{api}");
    assert_eq!(api["proof"]["proof"], "verified", "{api}");
    assert_eq!(api["proof"]["tasks"], 2, "{api}");
    let worker = &decision(&report, "worker")["outcome"];
    assert_eq!(worker["proof"]["proof"], "older", "{worker}");
    let older = worker["proof"]["tasks"].as_array().expect("tasks");
    assert_eq!(older.len(), 1, "{worker}");
    assert!(
        older[0].as_str().unwrap_or_default().contains("lingering"),
        "{worker}"
    );

    notifier.flush().await;
    let events = bus.0.lock().expect("lock").clone();
    let verified: Vec<&serde_json::Value> = events
        .iter()
        .filter(|(t, _)| t == "Rollout Verified")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(verified.len(), 2, "{events:?}");
    assert!(verified
        .iter()
        .any(|d| d["service"] == "api" && d["verified"] == true));
    assert!(verified
        .iter()
        .any(|d| d["service"] == "worker" && d["verified"] == false));
    let text = notifier.metrics().render(&Default::default());
    assert!(
        text.contains("ecs_reloader_rollouts_total{kind=\"verified\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ecs_reloader_rollouts_total{kind=\"unverified\"} 1"),
        "{text}"
    );
}
