//! S3 environment files, end to end: the real binary against the emulator's S3 (a versioned
//! bucket) and ECS, through the recording proxy. A written file rolls exactly its dependants,
//! once; a second run rolls nothing; a bucket the proxy refuses makes only its dependants
//! `unknown`, naming the call and the grant; and no call ever reads an object. And `serve` hears
//! S3's own `Object Created` / `Object Deleted` events (the bucket's EventBridge notifications
//! on, a rule shaped as the template's): a write rolls exactly the file's dependants, once; a
//! deletion (its event sent by the test: moto sends none) rolls nothing and dead-letters
//! nothing.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ecs::types::{ContainerDefinition, EnvironmentFile, EnvironmentFileType};
use support::proxy::Proxy;
use support::{run_binary, wait_for, Aws, Emulator, Serve, REGION};

/// An S3 client straight at the emulator (path-style: the emulator has no bucket host names).
async fn s3(url: &str) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "tests");
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(REGION))
        .credentials_provider(creds)
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    )
}

async fn bucket(s3: &aws_sdk_s3::Client, name: &str) {
    s3.create_bucket()
        .bucket(name)
        .send()
        .await
        .expect("create bucket");
    s3.put_bucket_versioning()
        .bucket(name)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("versioning on");
}

async fn write(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body.as_bytes().to_vec().into())
        .send()
        .await
        .expect("put object");
}

/// A one-container task definition whose only reference is an environment file.
async fn env_file_task_def(aws: &Aws, family: &str, object_arn: &str) -> String {
    let c = ContainerDefinition::builder()
        .name("app")
        .image("public.ecr.aws/nginx/nginx:latest")
        .memory(128)
        .environment_files(
            EnvironmentFile::builder()
                .r#type(EnvironmentFileType::S3)
                .value(object_arn)
                .build()
                .expect("environment file"),
        )
        .build();
    aws.ecs
        .register_task_definition()
        .family(family)
        .container_definitions(c)
        .send()
        .await
        .expect("register task definition")
        .task_definition()
        .and_then(|t| t.task_definition_arn())
        .expect("arn")
        .to_string()
}

/// service → (decision, reasons), from a JSON report.
fn decisions(report: &serde_json::Value) -> BTreeMap<String, (String, String)> {
    report["services"]
        .as_array()
        .expect("services array")
        .iter()
        .map(|s| {
            (
                s["key"]["service"].as_str().unwrap_or("?").to_string(),
                (
                    s["decision"].as_str().unwrap_or("?").to_string(),
                    s.to_string(),
                ),
            )
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_file_write_rolls_its_dependants_once_and_no_object_is_ever_read() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let s3 = s3(&emu.url()).await;
    bucket(&s3, "conf").await;
    bucket(&s3, "locked").await;
    write(&s3, "conf", "app.env", "LEVEL=info\n").await;
    write(&s3, "conf", "other.env", "LEVEL=warn\n").await;
    write(&s3, "locked", "team.env", "TEAM=a\n").await;
    // S3 dates are whole seconds: the deployments come unambiguously later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.cluster("prod").await;
    let td_app = env_file_task_def(&aws, "app", "arn:aws:s3:::conf/app.env").await;
    let td_other = env_file_task_def(&aws, "other", "arn:aws:s3:::conf/other.env").await;
    let td_locked = env_file_task_def(&aws, "locked", "arn:aws:s3:::locked/team.env").await;
    aws.service("prod", "api", &td_app, &[]).await;
    aws.service("prod", "worker", &td_app, &[]).await;
    aws.service("prod", "other", &td_other, &[]).await;
    aws.service("prod", "locked", &td_locked, &[]).await;
    let url = proxy.url();

    // In sync: a first run rolls nothing.
    let first = run_binary(&url, &["reconcile", "--output", "json"], &[]).await;
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert!(proxy.updated_services().is_empty());
    assert!(
        decisions(&first.json())
            .values()
            .all(|(d, _)| d == "in_sync"),
        "{}",
        first.stdout
    );

    // One file written (a new version of a versioned bucket): exactly its dependants roll.
    write(&s3, "conf", "app.env", "LEVEL=debug\n").await;
    let second = run_binary(&url, &["reconcile", "--output", "json"], &[]).await;
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    let rolled = sorted(proxy.updated_services());
    assert_eq!(rolled.len(), 2, "{rolled:?}");
    assert!(
        rolled.iter().any(|s| s.contains("api")) && rolled.iter().any(|s| s.contains("worker"))
    );
    let d = decisions(&second.json());
    assert!(
        d["api"]
            .1
            .contains("environment file s3://conf/app.env written"),
        "{}",
        d["api"].1
    );

    // Level-triggered: a run right after rolls nothing.
    let third = run_binary(&url, &["reconcile", "--output", "json"], &[]).await;
    assert_eq!(third.code, 0, "{}\n{}", third.stdout, third.stderr);
    assert_eq!(proxy.updated_services().len(), 2, "no second rollout");

    // A refused bucket: only its dependant is unknown, and the others are still decided.
    proxy.refuse(
        "S3.ListObjectsV2",
        "/locked",
        "AccessDenied",
        "User: arn:aws:sts::123456789012:assumed-role/ecs-reloader/x is not authorized to perform: s3:ListBucket on resource: \"arn:aws:s3:::locked\"",
    );
    write(&s3, "conf", "other.env", "LEVEL=error\n").await;
    let plan = run_binary(&url, &["plan", "--output", "json"], &[]).await;
    let d = decisions(&plan.json());
    assert_eq!(d["locked"].0, "unknown", "{}", plan.stdout);
    assert!(
        d["locked"].1.contains("s3:ListObjectsV2")
            && d["locked"].1.contains("s3://locked/team.env")
            && d["locked"]
                .1
                .contains("allow s3:ListBucket on arn:aws:s3:::locked"),
        "{}",
        d["locked"].1
    );
    assert_eq!(d["other"].0, "stale", "{}", d["other"].1);
    assert_eq!(d["api"].0, "in_sync");
    assert_eq!(d["worker"].0, "in_sync");
    assert_eq!(proxy.updated_services().len(), 2, "plan changes nothing");

    // Every S3 call the binary made was a listing; no object was ever read.
    let s3_calls: Vec<String> = proxy
        .calls()
        .iter()
        .filter(|c| c.target.starts_with("S3."))
        .map(|c| c.operation().to_string())
        .collect();
    assert!(
        s3_calls.iter().any(|op| op == "ListObjectsV2"),
        "{s3_calls:?}"
    );
    assert!(
        s3_calls.iter().all(|op| op == "ListObjectsV2"),
        "only listings, never GetObject or HeadObject: {s3_calls:?}"
    );
    assert_eq!(
        proxy
            .calls()
            .iter()
            .filter(|c| c.operation() == "GetObject")
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_rolls_an_env_files_dependants_on_s3s_own_event() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let s3 = s3(&emu.url()).await;
    bucket(&s3, "conf").await;
    s3.put_bucket_notification_configuration()
        .bucket("conf")
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .event_bridge_configuration(
                    aws_sdk_s3::types::EventBridgeConfiguration::builder().build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("EventBridge notifications on");
    write(&s3, "conf", "app.env", "LEVEL=info\n").await;
    write(&s3, "conf", "other.env", "LEVEL=warn\n").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.cluster("prod").await;
    let td_app = env_file_task_def(&aws, "app", "arn:aws:s3:::conf/app.env").await;
    let td_other = env_file_task_def(&aws, "other", "arn:aws:s3:::conf/other.env").await;
    aws.service("prod", "api", &td_app, &[]).await;
    aws.service("prod", "other", &td_other, &[]).await;
    let (queue, queue_arn, dlq) = aws.queue_with_dlq("changes", 2, 2).await;
    // The template's EnvironmentFileRule, for the bucket "conf".
    aws.events
        .put_rule()
        .name("environment-files")
        .event_pattern(
            serde_json::json!({
                "source": ["aws.s3"],
                "detail-type": ["Object Created", "Object Deleted"],
                "detail": {"bucket": {"name": ["conf"]}}
            })
            .to_string(),
        )
        .send()
        .await
        .expect("rule");
    aws.events
        .put_targets()
        .rule("environment-files")
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

    let serve = Serve::start(
        &proxy.url(),
        &["--queue-url", &queue],
        &[
            ("ECS_RELOADER_RESYNC_INTERVAL", "1h"),
            ("ECS_RELOADER_EVENTS_DEBOUNCE", "1s"),
        ],
    );
    serve.ready().await;
    assert!(proxy.updated_services().is_empty(), "in sync at start");

    // A write: S3's event reaches the queue through the rule, and rolls the file's dependant.
    write(&s3, "conf", "app.env", "LEVEL=debug\n").await;
    wait_for("api rolled", Duration::from_secs(60), || async {
        !proxy.updated_services().is_empty()
    })
    .await;
    let (_, metrics) = serve.get("/metrics").await.expect("metrics");
    assert!(
        metrics.contains("ecs_reloader_events_received_total{kind=\"s3_object_created\"} 1"),
        "rolled by S3's own event: {metrics}"
    );
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        aws.queue_total(&queue).await == 0
    })
    .await;
    serve.idle().await;
    let rolled = proxy.updated_services();
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    assert!(rolled[0].contains("api"), "{rolled:?}");

    // A deletion: its dependant cannot start new tasks; nothing is rolled, nothing poisoned.
    s3.delete_object()
        .bucket("conf")
        .key("other.env")
        .send()
        .await
        .expect("delete");
    // moto 5.2.1 sends no `Object Deleted` event of its own: the test sends AWS's shape.
    aws.events
        .put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .source("aws.s3")
                .detail_type("Object Deleted")
                .resources("arn:aws:s3:::conf")
                .detail(
                    serde_json::json!({
                        "version": "0", "bucket": {"name": "conf"},
                        "object": {"key": "other.env", "sequencer": "617f08299329d189"},
                        "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
                        "reason": "DeleteObject", "deletion-type": "Delete Marker Created"
                    })
                    .to_string(),
                )
                .build(),
        )
        .send()
        .await
        .expect("put events");
    // Done signal: serve counted the deletion's event; then the queue drains and serve idles.
    wait_for(
        "the deletion's event to be received",
        Duration::from_secs(60),
        || async {
            serve.get("/metrics").await.is_some_and(|(_, body)| {
                body.contains("ecs_reloader_events_received_total{kind=\"s3_object_deleted\"} 1")
            })
        },
    )
    .await;
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        aws.queue_total(&queue).await == 0
    })
    .await;
    serve.idle().await;
    assert_eq!(
        proxy.updated_services().len(),
        1,
        "a deletion rolls nothing"
    );
    assert_eq!(aws.queue_total(&dlq).await, 0, "and dead-letters nothing");
    assert_eq!(
        proxy
            .calls()
            .iter()
            .filter(|c| c.target.starts_with("S3.") && c.operation() != "ListObjectsV2")
            .count(),
        0,
        "only listings"
    );
}
