//! Two `serve` replicas on one queue, with the single-writer lease in (emulated) DynamoDB: one
//! acts, the other stands by; a burst of events rolls each service once; kill -9 of the leader in
//! the middle of a change set, and the standby takes over and finishes it with no duplicate.

mod support;

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use serde_json::json;
use support::proxy::Proxy;
use support::{wait_for, Aws, Emulator, Serve};

fn rotation_succeeded(arn: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/events/rotation_succeeded.json"))
            .expect("fixture");
    v["region"] = json!("us-east-1");
    v["detail"]["additionalEventData"]["SecretId"] = json!(arn);
    // From the emulator's account (the operator's own): another account's would be dropped.
    v["account"] = json!(support::ACCOUNT);
    v["detail"]["recipientAccountId"] = json!(support::ACCOUNT);
    // Dated now: each test makes its change just before sending the event.
    v["time"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    v.to_string()
}

async fn lease_table(url: &str) -> String {
    let creds = aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tests");
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .load()
        .await;
    let ddb = aws_sdk_dynamodb::Client::new(&conf);
    ddb.create_table()
        .table_name("ecs-reloader-lease")
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("lease")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("lease")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("table");
    "ecs-reloader-lease".into()
}

async fn leading(s: &Serve) -> bool {
    s.gauge("ecs_reloader_leader").await == Some(1.0)
}

fn counts(proxy: &Proxy) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for s in proxy.updated_services() {
        *m.entry(s).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_a_takeover_without_duplicates() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let table = lease_table(&emu.url()).await;
    let names: Vec<String> = (0..8).map(|i| format!("svc-{i}")).collect();
    let services: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 0)).collect();
    let arns = aws.one_secret_world(&["app/db"], "prod", &services).await;
    let (queue, _, dlq) = aws.queue_with_dlq("changes", 5, 5).await;
    let env = [
        ("ECS_RELOADER_LEASE_TABLE", table.as_str()),
        ("ECS_RELOADER_LEASE_TTL", "4s"),
        ("ECS_RELOADER_RESYNC_INTERVAL", "1h"),
        ("ECS_RELOADER_EVENTS_DEBOUNCE", "1s"),
        ("ECS_RELOADER_ROLLOUT_UPDATES_PER_SECOND", "1"),
        // What the killed leader held reappears soon after.
        ("ECS_RELOADER_EVENTS_VISIBILITY_TIMEOUT", "10s"),
    ];
    let args = ["--queue-url", queue.as_str()];
    let a = Serve::start(&proxy.url(), &args, &env);
    let b = Serve::start(&proxy.url(), &args, &env);
    a.ready().await;
    b.ready().await;
    wait_for("exactly one leader", Duration::from_secs(30), || async {
        leading(&a).await ^ leading(&b).await
    })
    .await;
    let (leader, standby) = if leading(&a).await { (a, b) } else { (b, a) };
    assert!(
        proxy.updated_services().is_empty(),
        "in sync: nothing rolled"
    );

    // 1. A burst of duplicates: each service rolled once, by the leader only.
    aws.rotate("app/db").await;
    for _ in 0..5 {
        aws.send(&queue, &rotation_succeeded(&arns[0])).await;
    }
    wait_for("every service rolled", Duration::from_secs(90), || async {
        proxy.updated_services().len() >= names.len()
    })
    .await;
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        aws.queue_total(&queue).await == 0
    })
    .await;
    leader.idle().await;
    assert!(
        counts(&proxy).values().all(|n| *n == 1),
        "{:?}",
        counts(&proxy)
    );
    assert_eq!(counts(&proxy).len(), names.len());
    assert!(!leading(&standby).await, "the standby stands by");

    // 2. kill -9 the leader in the middle of the next change set: the standby takes over and
    //    finishes it, rolling nothing twice.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.rotate("app/db").await;
    aws.send(&queue, &rotation_succeeded(&arns[0])).await;
    wait_for(
        "two rollouts of the second change",
        Duration::from_secs(60),
        || async { proxy.updated_services().len() >= names.len() + 2 },
    )
    .await;
    let mut leader = leader;
    leader.child.start_kill().expect("kill -9");
    let _ = leader.child.wait().await;
    let killed = Instant::now();
    let before = proxy.updated_services().len() - names.len();
    assert!(
        before < names.len(),
        "killed mid-way ({before} of {})",
        names.len()
    );
    wait_for("the standby to lead", Duration::from_secs(30), || async {
        leading(&standby).await
    })
    .await;
    let takeover = killed.elapsed();
    println!(
        "takeover after kill -9: {:.1} s (lease time 4 s)",
        takeover.as_secs_f64()
    );
    assert!(takeover <= Duration::from_secs(8), "{takeover:?}");
    wait_for(
        "the second change set finished",
        Duration::from_secs(90),
        || async { proxy.updated_services().len() >= 2 * names.len() },
    )
    .await;
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        aws.queue_total(&queue).await == 0
    })
    .await;
    standby.idle().await;
    assert!(
        counts(&proxy).values().all(|n| *n == 2),
        "each exactly once per change: {:?}",
        counts(&proxy)
    );
    assert_eq!(aws.queue_total(&dlq).await, 0, "nothing dead-lettered");
}
