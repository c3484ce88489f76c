//! Tasks outside services, end to end: the real binary against the emulator, through the
//! recording proxy. A standalone task (RunTask) that resolves a rotated secret is reported by
//! `plan` and `reconcile` (JSON, under its own key) and left running: no StopTask, no
//! UpdateService for it, while the service that resolves the same secret is rolled.

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
    let url = proxy.url();

    // Nothing changed since it started: not reported.
    let before = run_binary(&url, &["plan", "--output", "json"], &[]).await;
    assert_eq!(before.code, 0, "{}\n{}", before.stdout, before.stderr);
    assert!(reported(&before.json()).is_empty(), "{}", before.stdout);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.rotate("app/db").await;
    let plan = run_binary(&url, &["plan", "--output", "json"], &[]).await;
    let report = plan.json();
    assert_eq!(reported(&report), [task.clone()], "{}", plan.stdout);
    let t = &report["standalone_tasks"][0];
    assert_eq!(t["cluster"], "prod");
    assert_eq!(t["task_definition"], td.as_str());
    assert!(t["findings"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("AWSCURRENT")));

    let run = run_binary(&url, &["reconcile", "--output", "json"], &[]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(reported(&run.json()), [task.clone()]);
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
