//! Concurrent Lambda invocations take turns through the single-writer lease: one that finds the
//! lease held hands its changes back to the queue (delayed, as new messages) and rolls nothing;
//! once the lease is free, the next invocation rolls them, once. Over the fake, paused time.

use std::sync::Arc;
use std::time::Duration;

use ecs_reloader::aws::fake::{FakeAws, SentQueue};
use ecs_reloader::clock::Clock;
use ecs_reloader::config::Config;
use ecs_reloader::driver::lambda::Handler;
use ecs_reloader::driver::setup;
use ecs_reloader::lease::{Keeper, MemoryStore, Role};
use ecs_reloader::metrics::Metrics;
use ecs_reloader::notify::Notifier;
use ecs_reloader::reconcile::Mode;
use ecs_reloader::reference::Site;
use serde_json::{json, Value};

fn handler(
    fake: &FakeAws,
    clock: &Arc<dyn Clock>,
    store: &Arc<MemoryStore>,
    me: &str,
    queue: Arc<SentQueue>,
) -> Handler {
    let keeper = Arc::new(Keeper::new(
        store.clone(),
        clock.clone(),
        Duration::from_secs(30),
        me.to_string(),
    ));
    let mut config = Config::default();
    config.rollout.canary = false;
    let notifier = Arc::new(Notifier::new(Arc::new(Metrics::new()), None));
    let parts = setup::assemble_with(
        &config,
        fake.clients(),
        clock.clone(),
        notifier.clone(),
        Mode::FireAndForget,
        keeper.leadership(),
    );
    Handler::new(parts, notifier, Some(queue)).with_lease(keeper)
}

#[tokio::test(start_paused = true)]
async fn an_invocation_without_the_lease_hands_its_changes_on_and_rolls_nothing() {
    let (fake, clock) = FakeAws::on_tokio_clock("us-east-1");
    let arn = fake.create_secret("app/db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let site = Site::Secret {
        container: "app".into(),
        name: "DB".into(),
    };
    let td = fake.register_task_definition("app", &[(site, arn.as_str())]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_secret_value("app/db", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let store = Arc::new(MemoryStore::default());
    // Another invocation holds the lease.
    let other = Keeper::new(
        store.clone(),
        clock.clone(),
        Duration::from_secs(30),
        "other".into(),
    );
    assert_eq!(other.step().await, Role::Leader { term: 1 });

    let queue = Arc::new(SentQueue::default());
    let h = handler(&fake, &clock, &store, "me", queue.clone());
    let mut event: Value =
        serde_json::from_str(include_str!("fixtures/events/rotation_succeeded.json"))
            .expect("fixture");
    event["detail"]["additionalEventData"]["SecretId"] = json!(arn);
    // From the account the fake plays (the operator's own): another account's would be dropped.
    event["account"] = json!(fake.account());
    event["detail"]["recipientAccountId"] = json!(fake.account());
    event["time"] = json!((clock.now() - chrono::Duration::seconds(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let batch = json!({"Records": [
        {"messageId": "m1", "body": event.to_string()},
        {"messageId": "bad", "body": "{}"}
    ]});
    let deadline = clock.now() + chrono::Duration::seconds(60);
    let r = h.handle(batch.clone(), deadline).await.expect("answers");
    assert_eq!(r, json!({"batchItemFailures": [{"itemIdentifier": "bad"}]}));
    assert!(fake.updates().is_empty(), "not its turn: nothing rolled");
    let sent = queue.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0].1,
        Duration::from_secs(30),
        "back after the lease time"
    );

    // The lease runs out (the other invocation ended without giving it up): this one rolls.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let deadline = clock.now() + chrono::Duration::seconds(60);
    let r = h.handle(batch, deadline).await.expect("answers");
    assert_eq!(r, json!({"batchItemFailures": [{"itemIdentifier": "bad"}]}));
    assert_eq!(fake.updates().len(), 1, "rolled once");
    // It gave the lease up when done: the other takes it at once.
    assert_eq!(other.step().await, Role::Leader { term: 3 });
}
