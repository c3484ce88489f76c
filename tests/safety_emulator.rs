//! Safety across passes (#21) where a driver's behaviour is the point: the real binary as
//! `serve` against the emulator, through the recording (and refusing) proxy.

mod support;

use std::time::Duration;

use support::proxy::Proxy;
use support::{wait_for, Aws, Emulator, Serve};

fn rotation(arn: &str) -> String {
    serde_json::json!({
        "version": "0", "id": "r", "detail-type": "AWS Service Event via CloudTrail",
        "source": "aws.secretsmanager", "region": "us-east-1", "resources": [],
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": arn}}
    })
    .to_string()
}

fn rolled(proxy: &Proxy, service: &str) -> usize {
    proxy
        .updated_services()
        .iter()
        .filter(|s| *s == service)
        .count()
}

/// Two rotation events in one SQS batch, one for a secret whose `DescribeSecret` a resource
/// policy refuses: the other is rolled at once, both messages are acknowledged, none reaches
/// the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_secret_does_not_stop_its_batch() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let arns = aws
        .one_secret_world(&["app/ok", "app/refused"], "prod", &[("ok", 0), ("no", 1)])
        .await;
    let (queue, _, dlq) = aws.queue_with_dlq("batch", 5, 2).await;
    let serve = Serve::start(
        &proxy.url(),
        &["--queue-url", &queue],
        &[("ECS_RELOADER_RESYNC_INTERVAL", "1h")],
    );
    serve.ready().await;
    serve.idle().await;
    aws.rotate("app/ok").await;
    aws.rotate("app/refused").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    proxy.refuse(
        "secretsmanager.DescribeSecret",
        "app/refused",
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/ecs-reloader/i-0 is not authorized to perform: secretsmanager:DescribeSecret because no resource-based policy allows the secretsmanager:DescribeSecret action",
    );
    aws.send(&queue, &rotation(&arns[0])).await;
    aws.send(&queue, &rotation(&arns[1])).await;
    wait_for(
        "the readable change to roll",
        Duration::from_secs(30),
        || async { rolled(&proxy, "prod/ok") >= 1 },
    )
    .await;
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        aws.queue_total(&queue).await == 0
    })
    .await;
    serve.idle().await;
    assert_eq!(rolled(&proxy, "prod/ok"), 1);
    assert_eq!(rolled(&proxy, "prod/no"), 0);
    assert_eq!(
        aws.queue_total(&dlq).await,
        0,
        "no usable event dead-lettered"
    );
}

/// A notify-only service in wave 0 and another in wave 1: `serve` decides the change once,
/// reports both as pending, and acknowledges the message; nothing re-polls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_only_first_wave_is_not_polled() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let (arn, _) = aws.secret("app/db").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.cluster("prod").await;
    let td = aws.task_def_for("db", &arn).await;
    aws.service(
        "prod",
        "replica",
        &td,
        &[
            ("ecs-reloader/notify-only", "true"),
            ("ecs-reloader/wave", "0"),
        ],
    )
    .await;
    aws.service("prod", "writer", &td, &[("ecs-reloader/wave", "1")])
        .await;
    let (queue, _, _) = aws.queue_with_dlq("waits", 5, 3).await;
    let serve = Serve::start(
        &proxy.url(),
        &["--queue-url", &queue],
        &[("ECS_RELOADER_RESYNC_INTERVAL", "1h")],
    );
    serve.ready().await;
    serve.idle().await;
    aws.rotate("app/db").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.send(&queue, &rotation(&arn)).await;
    wait_for("the queue to drain", Duration::from_secs(30), || async {
        aws.queue_total(&queue).await == 0
    })
    .await;
    // Watched for 45 s (before: decided again every 30 s, its message kept in flight).
    tokio::time::sleep(Duration::from_secs(45)).await;
    let passes = serve
        .gauge(r#"ecs_reloader_reconciles_total{kind="event"}"#)
        .await;
    assert_eq!(passes, Some(1.0), "decided once");
    assert_eq!(serve.gauge("ecs_reloader_changes_waiting").await, Some(0.0));
    assert_eq!(
        rolled(&proxy, "prod/replica") + rolled(&proxy, "prod/writer"),
        0
    );
}
