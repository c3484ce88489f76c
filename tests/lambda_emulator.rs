//! The binary as a Lambda `bootstrap`, end to end: a Lambda Runtime API emulator hands it
//! invocations, the AWS emulator (through the recording proxy) plays AWS.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::lambda_api::{Answer, RuntimeApi};
use support::proxy::Proxy;
use support::{start_bootstrap, start_bootstrap_to, Aws, Emulator};

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture")
}

fn rotation_succeeded(arn: &str) -> Value {
    let mut v = fixture(include_str!("fixtures/events/rotation_succeeded.json"));
    v["region"] = json!("us-east-1");
    v["detail"]["additionalEventData"]["SecretId"] = json!(arn);
    // From the emulator's account (the operator's own): another account's would be dropped.
    v["account"] = json!(support::ACCOUNT);
    v["detail"]["recipientAccountId"] = json!(support::ACCOUNT);
    v
}

fn parameter_change(name: &str) -> Value {
    let mut v = fixture(include_str!("fixtures/events/parameter_store_change.json"));
    v["detail"]["name"] = json!(name);
    v["account"] = json!(support::ACCOUNT);
    v
}

async fn response(api: &RuntimeApi, payload: &Value) -> Value {
    match api
        .answer(&api.invoke(payload), Duration::from_secs(60))
        .await
    {
        Answer::Response(v) => v,
        Answer::Error(e) => panic!("invocation failed: {e}"),
    }
}

fn triggered(v: &Value) -> Vec<String> {
    let mut t: Vec<String> = v["triggered"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_works_as_a_lambda_bootstrap() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    aws.parameter("/app/flag", "on").await;
    let arns = aws
        .one_secret_world(
            &["app/db", "app/other"],
            "prod",
            &[("api", 0), ("worker", 0), ("quiet", 1)],
        )
        .await;
    let db = arns[0].clone();
    let td_flag = aws.task_def_for("flag", "/app/flag").await;
    aws.service("prod", "flags", &td_flag, &[]).await;

    let api = RuntimeApi::start().await;
    let log_dir = std::env::temp_dir().join(format!("ecs-reloader-emf-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).expect("temp dir");
    let log_path = log_dir.join("stdout.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = start_bootstrap_to(&proxy.url(), &api, &[], log.into());

    // 1. A direct EventBridge event: the canary (first in plan order) rolls, the other waits.
    aws.rotate("app/db").await;
    let r = response(&api, &rotation_succeeded(&db)).await;
    assert_eq!(triggered(&r), ["prod/api"], "{r}");
    assert_eq!(r["settling"], 1, "{r}");
    assert_eq!(proxy.updated_services(), ["prod/api"]);

    // 2. The scheduled resync sees the canary healthy and rolls the rest; nothing twice.
    let schedule = fixture(include_str!("fixtures/events/scheduled.json"));
    let r = response(&api, &schedule).await;
    assert_eq!(triggered(&r), ["prod/worker"], "{r}");
    let r = response(&api, &schedule).await;
    assert!(triggered(&r).is_empty(), "in sync now: {r}");

    // 3. An SQS batch with one poison record: exactly that record is reported.
    aws.parameter("/app/flag", "off").await;
    let batch = json!({"Records": [
        {"messageId": "good-1", "body": parameter_change("/app/flag").to_string(), "eventSource": "aws:sqs"},
        {"messageId": "poison-1", "body": "{\"source\":\"nobody\"}", "eventSource": "aws:sqs"},
        {"messageId": "good-2", "body": parameter_change("/app/flag").to_string(), "eventSource": "aws:sqs"}
    ]});
    let r = response(&api, &batch).await;
    assert_eq!(
        r,
        json!({"batchItemFailures": [{"itemIdentifier": "poison-1"}]})
    );
    assert_eq!(
        proxy
            .updated_services()
            .iter()
            .filter(|s| *s == "prod/flags")
            .count(),
        1,
        "duplicates coalesce"
    );

    // 4. A rotation no event announced: the scheduled resync finds it.
    aws.rotate("app/other").await;
    let r = response(&api, &schedule).await;
    assert_eq!(triggered(&r), ["prod/quiet"], "{r}");

    // 5. Garbage is an invocation error, and the function goes on serving.
    match api
        .answer(&api.invoke(&json!("garbage")), Duration::from_secs(30))
        .await
    {
        Answer::Error(e) => assert!(e.contains("not a JSON object"), "{e}"),
        Answer::Response(v) => panic!("garbage answered {v}"),
    }
    let r = response(&api, &schedule).await;
    assert!(triggered(&r).is_empty());

    let mut rolled = proxy.updated_services();
    rolled.sort();
    assert_eq!(
        rolled,
        ["prod/api", "prod/flags", "prod/quiet", "prod/worker"],
        "each exactly once"
    );
    assert!(api.init_errors().is_empty());
    assert_eq!(
        proxy.count("DescribeTaskDefinition"),
        3,
        "the cache stays warm across invocations"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;

    // The same metrics as serve's /metrics, as embedded-metric-format documents in the log:
    // the counters' growth adds up to what happened.
    let text = std::fs::read_to_string(&log_path).expect("stdout");
    let _ = std::fs::remove_dir_all(&log_dir);
    let docs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|d| d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ecs-reloader")
        .collect();
    let sum = |metric: &str, kind: &str| -> f64 {
        docs.iter()
            .filter(|d| d["kind"] == kind)
            .filter_map(|d| d[metric].as_f64())
            .sum()
    };
    assert_eq!(sum("rollouts", "started"), 4.0, "{text}");
    assert_eq!(sum("rollouts", "succeeded"), 4.0, "{text}");
    assert_eq!(sum("events_received", "rotation_succeeded"), 1.0, "{text}");
    assert_eq!(
        sum("events_received", "poison"),
        2.0,
        "one record, one garbage payload: {text}"
    );
    assert!(
        docs.iter()
            .any(|d| d.get("api_calls").is_some() && d["operation"] == "ecs:UpdateService"),
        "{text}"
    );
}

/// Without waiting, waves are barriers through AWS state: wave 2 rolls only once an invocation
/// sees every wave-1 dependant of the change healthy (and wave 1's canary goes first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_are_barriers_across_invocations() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let (arn, _) = aws.secret("app/db").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.cluster("prod").await;
    let td = aws.task_def_for("td", &arn).await;
    aws.service("prod", "replica-a", &td, &[("ecs-reloader/wave", "1")])
        .await;
    aws.service("prod", "replica-b", &td, &[("ecs-reloader/wave", "1")])
        .await;
    aws.service("prod", "writer", &td, &[("ecs-reloader/wave", "2")])
        .await;

    let api = RuntimeApi::start().await;
    let mut child = start_bootstrap(&proxy.url(), &api, &[]);
    aws.rotate("app/db").await;
    let schedule = fixture(include_str!("fixtures/events/scheduled.json"));

    let r = response(&api, &rotation_succeeded(&arn)).await;
    assert_eq!(triggered(&r), ["prod/replica-a"], "wave 1's canary: {r}");
    let r = response(&api, &schedule).await;
    assert_eq!(
        triggered(&r),
        ["prod/replica-b"],
        "the rest of wave 1, not wave 2 with it: {r}"
    );
    assert_eq!(r["settling"], 1, "the writer waits for wave 1: {r}");
    let r = response(&api, &schedule).await;
    assert_eq!(triggered(&r), ["prod/writer"], "wave 1 is healthy: {r}");
    let r = response(&api, &schedule).await;
    assert!(triggered(&r).is_empty(), "all in sync: {r}");
    assert_eq!(
        proxy.updated_services(),
        ["prod/replica-a", "prod/replica-b", "prod/writer"],
        "in wave order, each once"
    );
    let _ = child.start_kill();
}

/// A custom label moved back to an older version is visible only in its event. When the canary
/// gate spreads the change set over several invocations, the handler hands the event to a later
/// invocation through the change queue (a new message, delayed), so the move is not forgotten;
/// a resync alone could not see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_moved_back_survives_the_canary_gate_through_the_queue() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let (arn, v1) = aws.secret("app/db").await;
    let v2 = aws.rotate("app/db").await;
    aws.move_stage("app/db", "blue", &v2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.cluster("prod").await;
    let td = aws.task_def_for("blue", &format!("{arn}::blue:")).await;
    aws.service("prod", "a", &td, &[]).await;
    aws.service("prod", "b", &td, &[]).await;
    let (queue, _, _) = aws.queue_with_dlq("changes", 30, 3).await;

    let api = RuntimeApi::start().await;
    let mut child = start_bootstrap(
        &proxy.url(),
        &api,
        &[("ECS_RELOADER_EVENTS_QUEUE_URL", queue.as_str())],
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.move_stage("app/db", "blue", &v1).await;
    let mut moved = fixture(include_str!("fixtures/events/secret_label_updated.json"));
    moved["region"] = json!("us-east-1");
    moved["time"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    moved["resources"] = json!([arn]);
    moved["detail"]["name"] = json!("app/db");
    moved["detail"]["labelUpdated"] = json!("blue");
    moved["detail"]["versionId"] = json!(v1);
    moved["account"] = json!(support::ACCOUNT);

    let r = response(&api, &moved).await;
    assert_eq!(triggered(&r), ["prod/a"], "the canary: {r}");
    assert_eq!(r["settling"], 1, "{r}");

    // Another execution environment, which never heard the event: its resync alone cannot see
    // the move (b is in sync as far as the metadata tells). (The first environment remembers
    // the move and would apply it in its own resync.)
    let api2 = RuntimeApi::start().await;
    let mut child2 = start_bootstrap(
        &proxy.url(),
        &api2,
        &[("ECS_RELOADER_EVENTS_QUEUE_URL", queue.as_str())],
    );
    let schedule = fixture(include_str!("fixtures/events/scheduled.json"));
    let r = response(&api2, &schedule).await;
    assert!(triggered(&r).is_empty(), "{r}");

    // The event waits on the queue; delivered (as the event source mapping would), it rolls b.
    let mut records = Vec::new();
    for _ in 0..20 {
        let out = aws
            .sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for m in out.messages() {
            records.push(json!({
                "messageId": m.message_id().unwrap_or_default(),
                "receiptHandle": m.receipt_handle().unwrap_or_default(),
                "body": m.body().unwrap_or_default(),
                "eventSource": "aws:sqs",
            }));
        }
        if !records.is_empty() {
            break;
        }
    }
    assert_eq!(records.len(), 1, "one deferred change: {records:?}");
    let r = response(&api2, &json!({ "Records": records })).await;
    assert_eq!(r, json!({"batchItemFailures": []}));
    assert_eq!(proxy.updated_services(), ["prod/a", "prod/b"], "each once");
    // Done: nothing more is handed on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        aws.queue_total(&queue).await,
        1,
        "only the received, undeleted record"
    );
    let _ = child.start_kill();
    let _ = child2.start_kill();
}
