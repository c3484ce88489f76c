//! Tasks outside services, end to end: the real binary against the emulator, through the
//! recording proxy. A standalone task (RunTask) that resolves a rotated secret is reported by
//! `plan` and `reconcile` (JSON, under its own key) and left running: no StopTask, no
//! UpdateService for it, while the service that resolves the same secret is rolled. An
//! EventBridge rule and an EventBridge Scheduler schedule that run the same revision are
//! reported as picking the new value up at their next run (information: the exit status stays
//! 0); one whose revision resolves nothing changed is not mentioned.

mod support;

use std::time::Duration;

use aws_sdk_ecs::types::{AwsVpcConfiguration, LaunchType, NetworkConfiguration};
use support::proxy::Proxy;
use support::{run_binary, Aws, Emulator};

async fn run_task(aws: &Aws, cluster: &str, task_def: &str) -> String {
    let out = aws
        .ecs
        .run_task()
        .cluster(cluster)
        .task_definition(task_def)
        .launch_type(LaunchType::Fargate)
        .network_configuration(
            NetworkConfiguration::builder()
                .awsvpc_configuration(
                    AwsVpcConfiguration::builder()
                        .subnets("subnet-0123456789abcdef0")
                        .security_groups("sg-0123456789abcdef0")
                        .build()
                        .expect("awsvpc"),
                )
                .build(),
        )
        .send()
        .await
        .expect("run task");
    out.tasks()
        .first()
        .and_then(|t| t.task_arn())
        .expect("a task")
        .to_string()
}

const CLUSTER_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:cluster/prod";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/ecs-events";

async fn scheduler(url: &str) -> aws_sdk_scheduler::Client {
    let creds = aws_sdk_scheduler::config::Credentials::new("test", "test", None, None, "tests");
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_config::Region::new(support::REGION))
        .credentials_provider(creds)
        .load()
        .await;
    aws_sdk_scheduler::Client::new(&conf)
}

/// An EventBridge rule on the default bus that runs `task_def` in `prod` every day.
async fn rule(aws: &Aws, name: &str, task_def: &str) {
    aws.events
        .put_rule()
        .name(name)
        .schedule_expression("rate(1 day)")
        .send()
        .await
        .expect("put rule");
    aws.events
        .put_targets()
        .rule(name)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("task")
                .arn(CLUSTER_ARN)
                .role_arn(ROLE_ARN)
                .ecs_parameters(
                    aws_sdk_eventbridge::types::EcsParameters::builder()
                        .task_definition_arn(task_def)
                        .task_count(1)
                        .build()
                        .expect("ecs parameters"),
                )
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("put targets");
}

/// An EventBridge Scheduler schedule that runs `task_def` in `prod` every hour.
async fn schedule(client: &aws_sdk_scheduler::Client, name: &str, task_def: &str) {
    use aws_sdk_scheduler::types::{
        EcsParameters, FlexibleTimeWindow, FlexibleTimeWindowMode, Target,
    };
    client
        .create_schedule()
        .name(name)
        .schedule_expression("rate(1 hour)")
        .flexible_time_window(
            FlexibleTimeWindow::builder()
                .mode(FlexibleTimeWindowMode::Off)
                .build()
                .expect("window"),
        )
        .target(
            Target::builder()
                .arn(CLUSTER_ARN)
                .role_arn(ROLE_ARN)
                .ecs_parameters(
                    EcsParameters::builder()
                        .task_definition_arn(task_def)
                        .build()
                        .expect("ecs parameters"),
                )
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("create schedule");
}

fn scheduled(report: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    report["scheduled_tasks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["kind"].as_str().unwrap_or("?").to_string(),
                        t["name"].as_str().unwrap_or("?").to_string(),
                        t["secrets"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn reported(report: &serde_json::Value) -> Vec<String> {
    report["standalone_tasks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["task_arn"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_task_resolving_a_rotated_secret_is_reported_and_untouched() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let arns = aws
        .one_secret_world(&["app/db"], "prod", &[("web", 0)])
        .await;
    let td = aws.task_def_for("batch", &arns[0]).await;
    let task = run_task(&aws, "prod", &td).await;
    let plain = aws.task_def("plain", Default::default()).await;
    rule(&aws, "nightly", &td).await;
    rule(&aws, "cleanup", &plain).await;
    let sched = scheduler(&emu.url()).await;
    schedule(&sched, "hourly", &td).await;
    let url = proxy.url();

    // Nothing changed since it started: not reported.
    let before = run_binary(&url, &["plan", "--output", "json"], &[]).await;
    assert_eq!(before.code, 0, "{}\n{}", before.stdout, before.stderr);
    assert!(reported(&before.json()).is_empty(), "{}", before.stdout);
    assert!(
        scheduled(&before.json()).is_empty(),
        "nothing changed: {}",
        before.stdout
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.rotate("app/db").await;
    let plan = run_binary(
        &url,
        &["plan", "--output", "json"],
        &[(
            "ECS_RELOADER_LOG",
            "warn,ecs_reloader::tasks=debug,ecs_reloader::index=debug",
        )],
    )
    .await;
    let report = plan.json();
    assert_eq!(
        reported(&report),
        [task.as_str()],
        "{}\n{}",
        plan.stdout,
        plan.stderr
    );
    let t = &report["standalone_tasks"][0];
    assert_eq!(t["cluster"], "prod");
    assert_eq!(t["task_definition"], td.as_str());
    assert!(t["findings"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("AWSCURRENT")));
    let db = serde_json::json!(["app/db"]);
    assert_eq!(
        scheduled(&report),
        [
            ("eventbridge_rule".into(), "nightly".into(), db.clone()),
            ("scheduler_schedule".into(), "hourly".into(), db.clone()),
        ],
        "{}",
        plan.stdout
    );

    let run = run_binary(&url, &["reconcile", "--output", "json"], &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(reported(&run.json()), [task.as_str()]);
    assert_eq!(scheduled(&run.json()).len(), 2, "{}", run.stdout);
    let updated = proxy.updated_services();
    assert_eq!(updated.len(), 1, "{updated:?}");
    assert!(updated[0].contains("web"), "{updated:?}");
    assert!(
        proxy
            .calls()
            .iter()
            .all(|c| !matches!(c.operation(), "StopTask" | "RunTask" | "StartTask")),
        "the binary starts and stops no task"
    );
    let still = aws
        .ecs
        .describe_tasks()
        .cluster("prod")
        .tasks(&task)
        .send()
        .await
        .expect("describe");
    // (moto walks lastStatus through its states on every read; desiredStatus is what StopTask
    // would have changed.)
    assert_eq!(
        still.tasks().first().and_then(|t| t.desired_status()),
        Some("RUNNING")
    );
}
