//! `ecs-reloader serve` end to end: the real binary against the emulator, with a queue and a
//! dead-letter queue, events put on the queue directly and through an EventBridge rule.

mod support;

use std::time::Duration;

use support::proxy::Proxy;
use support::{wait_for, Aws, Emulator, Serve};

/// An event's time is when its change happened: now, as the tests make each change just before
/// sending its event (a copy of a change that a pass begun later has decided needs no pass).
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn rotation_succeeded(arn: &str) -> String {
    serde_json::json!({
        "version": "0", "id": "1", "detail-type": "AWS Service Event via CloudTrail",
        "source": "aws.secretsmanager", "time": now(), "region": "us-east-1", "resources": [],
        "detail": {"eventName": "RotationSucceeded", "eventSource": "secretsmanager.amazonaws.com",
                   "requestParameters": null, "responseElements": null,
                   "additionalEventData": {"SecretId": arn}}
    })
    .to_string()
}

fn parameter_change(name: &str) -> String {
    serde_json::json!({
        "version": "0", "id": "2", "detail-type": "Parameter Store Change", "source": "aws.ssm",
        "time": now(), "region": "us-east-1", "resources": [],
        "detail": {"name": name, "type": "SecureString", "operation": "Update"}
    })
    .to_string()
}

fn put_secret_value_call(name: &str, arn: &str) -> String {
    serde_json::json!({
        "version": "0", "id": "3", "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
        "time": now(), "region": "us-east-1", "resources": [],
        "detail": {"eventName": "PutSecretValue", "eventSource": "secretsmanager.amazonaws.com",
                   "requestParameters": {"secretId": name}, "responseElements": {"aRN": arn}}
    })
    .to_string()
}

fn count(proxy: &Proxy, service: &str) -> usize {
    proxy
        .updated_services()
        .iter()
        .filter(|s| *s == service)
        .count()
}

/// Waits until the queue is drained and `service` has been rolled `n` times, then checks that no
/// further rollout follows.
async fn rolled(serve: &Serve, aws: &Aws, proxy: &Proxy, queue: &str, service: &str, n: usize) {
    wait_for(
        &format!("{service} rolled {n}x"),
        Duration::from_secs(60),
        || async { count(proxy, service) >= n },
    )
    .await;
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        aws.queue_total(queue).await == 0
    })
    .await;
    serve.idle().await;
    assert_eq!(
        count(proxy, service),
        n,
        "{service}: {:?}",
        proxy.updated_services()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_hears_every_event_kind_and_rolls_each_dependent_once() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    aws.parameter("/app/flag", "on").await;
    let arns = aws
        .one_secret_world(
            &["app/db", "app/db-replica", "app/other"],
            "prod",
            &[("db", 0), ("replica", 1), ("other", 2)],
        )
        .await;
    let (db, other) = (arns[0].clone(), arns[2].clone());
    let td_flag = aws.task_def_for("flag", "/app/flag").await;
    aws.service("prod", "flag", &td_flag, &[]).await;
    let (queue, queue_arn, dlq) = aws.queue_with_dlq("changes", 2, 2).await;

    let serve = Serve::start(
        &proxy.url(),
        &["--queue-url", &queue],
        &[
            ("ECS_RELOADER_RESYNC_INTERVAL", "1h"),
            ("ECS_RELOADER_EVENTS_DEBOUNCE", "1s"),
        ],
    );
    serve.ready().await;
    assert!(
        proxy.updated_services().is_empty(),
        "startup on an in-sync account rolls nothing"
    );

    // 1. RotationSucceeded, five copies: one rollout, of the right service only.
    aws.rotate("app/db").await;
    for _ in 0..5 {
        aws.send(&queue, &rotation_succeeded(&db)).await;
    }
    rolled(&serve, &aws, &proxy, &queue, "prod/db", 1).await;
    assert_eq!(
        count(&proxy, "prod/replica"),
        0,
        "the lookalike is untouched"
    );

    // 2. Parameter Store Change.
    aws.parameter("/app/flag", "off").await;
    aws.send(&queue, &parameter_change("/app/flag")).await;
    rolled(&serve, &aws, &proxy, &queue, "prod/flag", 1).await;

    // 3. Secret Label Updated, through a real EventBridge rule on the default bus.
    aws.events
        .put_rule()
        .name("secret-changes")
        .event_pattern(r#"{"source":["aws.secretsmanager","aws.ssm"]}"#)
        .send()
        .await
        .expect("rule");
    aws.events
        .put_targets()
        .rule("secret-changes")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(&queue_arn)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("targets");
    let version = aws.rotate("app/other").await;
    aws.events
        .put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .source("aws.secretsmanager")
                .detail_type("Secret Label Updated")
                .resources(&other)
                .detail(serde_json::json!({"name": "app/other", "labelUpdated": "AWSCURRENT", "versionId": version}).to_string())
                .build(),
        )
        .send()
        .await
        .expect("put events");
    rolled(&serve, &aws, &proxy, &queue, "prod/other", 1).await;

    // 4. A poison message goes to the dead-letter queue; serving goes on.
    aws.send(&queue, "this is not an event").await;
    wait_for(
        "the poison message in the DLQ",
        Duration::from_secs(60),
        || async { aws.queue_total(&dlq).await == 1 },
    )
    .await;
    assert!(matches!(serve.get("/readyz").await, Some((200, _))));

    // 5. A CloudTrail API call (the old `aRN` spelling), after the poison: still heard.
    aws.rotate("app/db").await;
    aws.send(&queue, &put_secret_value_call("app/db", &db))
        .await;
    rolled(&serve, &aws, &proxy, &queue, "prod/db", 2).await;
    assert_eq!(count(&proxy, "prod/replica"), 0);

    // 6. The other three kinds through the EventBridge rule as well.
    let put = |source: &'static str, detail_type: &'static str, detail: serde_json::Value| {
        let aws = aws.clone();
        async move {
            aws.events
                .put_events()
                .entries(
                    aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                        .source(source)
                        .detail_type(detail_type)
                        .detail(detail.to_string())
                        .build(),
                )
                .send()
                .await
                .expect("put events");
        }
    };
    let detail = |body: String| {
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["detail"].clone()
    };
    aws.rotate("app/db").await;
    put(
        "aws.secretsmanager",
        "AWS Service Event via CloudTrail",
        detail(rotation_succeeded(&db)),
    )
    .await;
    rolled(&serve, &aws, &proxy, &queue, "prod/db", 3).await;
    aws.parameter("/app/flag", "again").await;
    put(
        "aws.ssm",
        "Parameter Store Change",
        detail(parameter_change("/app/flag")),
    )
    .await;
    rolled(&serve, &aws, &proxy, &queue, "prod/flag", 2).await;
    aws.rotate("app/other").await;
    put(
        "aws.secretsmanager",
        "AWS API Call via CloudTrail",
        detail(put_secret_value_call("app/other", &other)),
    )
    .await;
    rolled(&serve, &aws, &proxy, &queue, "prod/other", 2).await;

    // Metrics say what happened.
    let (code, metrics) = serve.get("/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    for needle in [
        "ecs_reloader_events_received_total{kind=\"rotation_succeeded\"} 6",
        "ecs_reloader_events_received_total{kind=\"parameter_change\"} 2",
        "ecs_reloader_events_received_total{kind=\"label_updated\"} 1",
        "ecs_reloader_events_received_total{kind=\"api_call\"} 2",
        "ecs_reloader_events_received_total{kind=\"poison\"}",
        "ecs_reloader_rollouts_total{kind=\"succeeded\"} 7",
        "ecs_reloader_api_calls_total{operation=\"ecs:UpdateService\"} 7",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
    assert!(matches!(serve.get("/healthz").await, Some((200, _))));

    // SIGTERM: exits 0, promptly.
    let mut serve = serve;
    serve.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), serve.child.wait())
        .await
        .expect("exits promptly")
        .expect("status");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_then_restart_converges_without_a_duplicate() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let names: Vec<String> = (0..6).map(|i| format!("svc-{i}")).collect();
    let layout: Vec<(&str, usize)> = names.iter().map(|s| (s.as_str(), 0)).collect();
    aws.one_secret_world(&["app/db"], "prod", &layout).await;
    aws.rotate("app/db").await;

    // Slow rollouts: one at a time, one update every two seconds.
    let env = [
        ("ECS_RELOADER_ROLLOUT_UPDATES_PER_SECOND", "0.5"),
        ("ECS_RELOADER_ROLLOUT_MAX_CONCURRENT", "1"),
        ("ECS_RELOADER_RESYNC_INTERVAL", "1h"),
    ];
    let mut first = Serve::start(&proxy.url(), &[], &env);
    wait_for("two rollouts", Duration::from_secs(60), || async {
        proxy.updated_services().len() >= 2
    })
    .await;
    first.child.start_kill().expect("kill -9");
    let _ = first.child.wait().await;
    let before = proxy.updated_services().len();
    assert!(before < names.len(), "killed mid-way ({before} rolled)");

    // The restart's startup resync finishes the job, and repeats nothing.
    let second = Serve::start(&proxy.url(), &[], &env);
    wait_for("all services rolled", Duration::from_secs(90), || async {
        proxy.updated_services().len() >= names.len()
    })
    .await;
    second.ready().await;
    second.idle().await;
    let mut rolled = proxy.updated_services();
    rolled.sort();
    let expected: Vec<String> = names.iter().map(|n| format!("prod/{n}")).collect();
    assert_eq!(rolled, expected, "each exactly once across the crash");
}
