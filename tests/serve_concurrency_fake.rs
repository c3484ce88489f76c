//! `serve` over the in-memory fake and queue, on tokio's paused clock: change sets in flight side
//! by side, coalescing per service, and nothing lost on shutdown.

use std::sync::Arc;
use std::time::Duration;

use ecs_reloader::aws::fake::{Behaviour, FakeAws, MemoryQueue};
use ecs_reloader::aws::queue::Queue;
use ecs_reloader::config::{Config, Dur};
use ecs_reloader::driver::serve::{Server, Settings};
use ecs_reloader::driver::setup;
use ecs_reloader::metrics::Metrics;
use ecs_reloader::notify::Notifier;
use ecs_reloader::reconcile::Mode;
use ecs_reloader::reference::Site;

fn secret() -> Site {
    Site::Secret {
        container: "app".into(),
        name: "S".into(),
    }
}

fn rotated(arn: &str) -> String {
    format!(
        r#"{{"source":"aws.secretsmanager","detail-type":"AWS Service Event via CloudTrail","detail":{{"eventName":"RotationSucceeded","additionalEventData":{{"SecretId":"{arn}"}}}}}}"#
    )
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.serving.await;
    }

    fn gauge(&self, name: &str) -> i64 {
        let text = self.metrics.render(&Default::default());
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    }
}

/// `serve` with debounce 0, polling rollouts every 5 s, a long resync period.
async fn serve(
    fake: &FakeAws,
    clock: Arc<dyn ecs_reloader::clock::Clock>,
    queue: Arc<MemoryQueue>,
    grace: Duration,
) -> Running {
    serve_resyncing(fake, clock, queue, grace, Duration::from_secs(24 * 3600)).await
}

/// [`serve`], with a full resync every `resync`.
async fn serve_resyncing(
    fake: &FakeAws,
    clock: Arc<dyn ecs_reloader::clock::Clock>,
    queue: Arc<MemoryQueue>,
    grace: Duration,
    resync: Duration,
) -> Running {
    let mut config = Config::default();
    config.events.debounce = Dur(Duration::ZERO);
    config.rollout.poll_interval = Dur(Duration::from_secs(5));
    config.serve.shutdown_grace = Dur(grace);
    let metrics = Arc::new(Metrics::new());
    let notifier = Arc::new(Notifier::new(metrics.clone(), None));
    let parts = setup::assemble(
        &config,
        fake.clients(),
        clock,
        notifier.clone(),
        Mode::Watch,
    );
    let mut settings = Settings::from_config(&config);
    settings.resync_interval = resync;
    let server = Server::new(parts, Some(queue as Arc<dyn Queue>), notifier, settings);
    let status = server.status();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(server.run_until(rx));
    while status.not_ready().is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Running {
        stop,
        serving,
        metrics,
    }
}

/// Waits (simulated time) until `service` has been rolled `n` times; returns when.
async fn rolled(fake: &FakeAws, cluster: &str, service: &str, n: usize) -> tokio::time::Instant {
    for _ in 0..100_000 {
        if fake.rollouts_of(cluster, service) >= n {
            return tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{cluster}/{service} was not rolled {n} time(s)");
}

#[tokio::test(start_paused = true)]
async fn an_event_is_rolled_while_another_change_set_is_watched() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let a = fake.create_secret("app/a");
    let b = fake.create_secret("app/b");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td_a = fake.register_task_definition("a", &[(secret(), a.as_str())]);
    let td_b = fake.register_task_definition("b", &[(secret(), b.as_str())]);
    fake.create_service("prod", "slow", &td_a, 1, &[]);
    fake.create_service("prod", "quick", &td_b, 1, &[]);
    // `slow`'s rollout takes ten minutes to become healthy.
    fake.set_behaviour(
        "prod",
        "slow",
        Behaviour::Complete(Duration::from_secs(600)),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let queue = Arc::new(MemoryQueue::new(10));
    let running = serve(&fake, clock, queue.clone(), Duration::from_secs(30)).await;

    fake.put_secret_value("app/a", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    queue.push(&rotated(&a));
    rolled(&fake, "prod", "slow", 1).await;

    // While `slow` is watched, app/b rotates.
    tokio::time::sleep(Duration::from_secs(60)).await;
    fake.put_secret_value("app/b", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent = tokio::time::Instant::now();
    queue.push(&rotated(&b));
    let at = rolled(&fake, "prod", "quick", 1).await;
    let latency = at - sent;
    println!("second change set's first UpdateService after {latency:?} (simulated)");
    assert!(
        latency <= Duration::from_secs(1),
        "the second change waited {latency:?} behind the first one's health watch"
    );
    assert!(
        running.gauge("ecs_reloader_busy") >= 1,
        "the first change set is still watched"
    );

    // Both finish; both messages are deleted once their rollouts are healthy.
    while !queue.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(fake.rollouts_of("prod", "slow"), 1);
    assert_eq!(fake.rollouts_of("prod", "quick"), 1);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn two_change_sets_for_one_service_coalesce_into_one_rollout() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let a = fake.create_secret("app/a");
    let b = fake.create_secret("app/b");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("ab", &[(secret(), a.as_str()), (secret(), b.as_str())]);
    fake.create_service("prod", "both", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.set_latency(Duration::from_millis(50));
    // One message per receive: the two events make two batches, two passes side by side.
    let queue = Arc::new(MemoryQueue::new(1));
    let running = serve(&fake, clock, queue.clone(), Duration::from_secs(30)).await;

    fake.put_secret_value("app/a", &[]);
    fake.put_secret_value("app/b", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    queue.push(&rotated(&a));
    queue.push(&rotated(&b));
    rolled(&fake, "prod", "both", 1).await;
    while !queue.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(queue.deleted(), 2, "both messages were handled");
    assert_eq!(
        fake.rollouts_of("prod", "both"),
        1,
        "both changes predate the one rollout: it serves both"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_leaves_unfinished_messages_to_reappear() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let a = fake.create_secret("app/a");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("a", &[(secret(), a.as_str())]);
    fake.create_service("prod", "slow", &td, 1, &[]);
    fake.set_behaviour(
        "prod",
        "slow",
        Behaviour::Complete(Duration::from_secs(600)),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let queue = Arc::new(MemoryQueue::new(10));
    let running = serve(&fake, clock, queue.clone(), Duration::from_secs(10)).await;

    fake.put_secret_value("app/a", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    queue.push(&rotated(&a));
    rolled(&fake, "prod", "slow", 1).await;
    // Stopped mid-watch: the grace runs out, the message is not deleted.
    running.stop().await;
    assert_eq!(queue.len(), 1, "the unfinished change's message stays");
    assert_eq!(queue.deleted(), 0);
    // Nothing keeps it hidden any more: once the last extension's visibility runs out, it is
    // received again.
    tokio::time::sleep(Config::default().events.visibility_timeout.0 + Duration::from_secs(1))
        .await;
    let again = queue.receive(10, Duration::ZERO).await.expect("receive");
    assert_eq!(again.len(), 1, "the message reappears for the next replica");
    assert_eq!(again[0].receive_count, 2);
}

#[tokio::test(start_paused = true)]
async fn a_resync_during_a_slow_canary_does_not_roll_past_it() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let a = fake.create_secret("app/a");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("a", &[(secret(), a.as_str())]);
    for s in ["api", "web", "worker"] {
        fake.create_service("prod", s, &td, 1, &[]);
    }
    // Whichever service is the canary fails, after five minutes.
    for s in ["api", "web", "worker"] {
        fake.set_behaviour("prod", s, Behaviour::Fail(Duration::from_secs(300), 3));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let queue = Arc::new(MemoryQueue::new(10));
    // A resync every minute: several run while the canary is watched.
    let running = serve_resyncing(
        &fake,
        clock,
        queue.clone(),
        Duration::from_secs(30),
        Duration::from_secs(60),
    )
    .await;

    fake.put_secret_value("app/a", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    queue.push(&rotated(&a));
    // Past the canary's failure and a few resyncs after it.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let rolled: Vec<String> = fake.updates().iter().map(|u| u.service.clone()).collect();
    assert_eq!(
        rolled.len(),
        1,
        "only the canary was rolled; the resyncs running beside it waited for it, then held the rest: {rolled:?}"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_engine_rolls_a_service_once_for_two_plans_made_before_either_rolled() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let a = fake.create_secret("app/a");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("a", &[(secret(), a.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let parts = setup::assemble(
        &Config::default(),
        fake.clients(),
        clock,
        Arc::new(ecs_reloader::rollout::LogProgress),
        Mode::Watch,
    );
    fake.put_secret_value("app/a", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let scope = ecs_reloader::index::Scope::default();
    let first = parts.reconciler.assess(&scope, &[]).await.expect("plan");
    let second = parts.reconciler.assess(&scope, &[]).await.expect("plan");
    assert_eq!(first.change_set.changes.len(), 1);
    assert_eq!(second.change_set.changes.len(), 1);
    // A real round trip lets the second plan's look happen before the first's UpdateService.
    fake.set_latency(Duration::from_millis(50));
    use ecs_reloader::rollout::Rollout;
    let (one, two) = tokio::join!(
        parts.rollout.execute(&first.change_set),
        parts.rollout.execute(&second.change_set)
    );
    assert_eq!(fake.rollouts_of("prod", "api"), 1, "{one:?} {two:?}");
    let outcomes: Vec<_> = one.iter().chain(&two).map(|(_, o)| o.clone()).collect();
    assert!(
        outcomes.iter().any(|o| matches!(o, ecs_reloader::rollout::Outcome::Skipped { reason } if reason.contains("already fresh"))),
        "the second found the first's deployment and coalesced: {outcomes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn ecs_events_alone_refresh_the_cache_and_are_counted_apart() {
    let (fake, clock) = FakeAws::on_tokio_clock("eu-west-1");
    let a = fake.create_secret("app/a");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("a", &[(secret(), a.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let queue = Arc::new(MemoryQueue::new(10));
    let running = serve(&fake, clock, queue.clone(), Duration::from_secs(30)).await;
    let arn = fake.service("prod", "api").expect("exists").arn;
    queue.push(&format!(
        r#"{{"source":"aws.ecs","detail-type":"ECS Deployment State Change","resources":["{arn}"],"detail":{{"eventName":"SERVICE_DEPLOYMENT_IN_PROGRESS"}}}}"#
    ));
    while !queue.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = running.metrics.render(&Default::default());
    assert!(
        text.contains(r#"ecs_reloader_reconciles_total{kind="watch_refresh"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"reconciles_total{kind="event"}"#),
        "{text}"
    );
    assert!(fake.updates().is_empty());
    running.stop().await;
}
