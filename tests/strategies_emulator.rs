//! Each service rolled the way it deploys (#23), with the real binary through the SDK against the
//! emulator (which has ECS task sets, CodeDeploy and ECR; not ECS's service deployments, which
//! `strategies_fake.rs` plays): an `EXTERNAL` service no longer stops the scan, a `CODE_DEPLOY`
//! service is rolled with `codedeploy:CreateDeployment` and never `UpdateService`, and the ECR
//! adapter reads what a tag names without reading the image.

mod support;

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ecs::types::{
    ContainerDefinition, DeploymentController, DeploymentControllerType, LoadBalancer, PortMapping,
    Secret,
};
use support::proxy::Proxy;
use support::{run_binary, Aws, Emulator, REGION};

async fn config(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(REGION))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

/// A task definition whose `web` container resolves `secret` and listens on 8080.
async fn web_task_def(aws: &Aws, family: &str, secret: &str) -> String {
    let c = ContainerDefinition::builder()
        .name("web")
        .image("public.ecr.aws/nginx/nginx:latest")
        .memory(128)
        .port_mappings(PortMapping::builder().container_port(8080).build())
        .secrets(
            Secret::builder()
                .name("DB")
                .value_from(secret)
                .build()
                .expect("secret"),
        )
        .build();
    aws.ecs
        .register_task_definition()
        .family(family)
        .container_definitions(c)
        .send()
        .await
        .expect("register")
        .task_definition()
        .and_then(|t| t.task_definition_arn())
        .expect("arn")
        .to_string()
}

fn controller(t: DeploymentControllerType) -> DeploymentController {
    DeploymentController::builder()
        .r#type(t)
        .build()
        .expect("controller")
}

/// A fleet of one rolling service, one `EXTERNAL` service running a task set, and one
/// `CODE_DEPLOY` service deployed by a CodeDeploy group, all resolving `app/db`, which changes.
/// `plan` decides each (before the fix, the `EXTERNAL` service's empty task definition failed
/// the whole scan with exit 2); `reconcile --no-wait` sends `UpdateService` to the rolling one
/// only and a CodeDeploy deployment of the current revision to the CodeDeploy one.
#[tokio::test]
async fn every_controller_is_decided_and_rolled_its_own_way() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let conf = config(&emu.url()).await;
    let codedeploy = aws_sdk_codedeploy::Client::new(&conf);

    let (secret, _) = aws.secret("app/db").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.cluster("prod").await;
    let td = web_task_def(&aws, "web", &secret).await;
    aws.service("prod", "rolling", &td, &[]).await;
    aws.ecs
        .create_service()
        .cluster("prod")
        .service_name("external")
        .desired_count(1)
        .deployment_controller(controller(DeploymentControllerType::External))
        .send()
        .await
        .expect("external service");
    aws.ecs
        .create_task_set()
        .cluster("prod")
        .service("external")
        .task_definition(&td)
        .send()
        .await
        .expect("task set");
    aws.ecs
        .create_service()
        .cluster("prod")
        .service_name("bluegreen")
        .task_definition(&td)
        .desired_count(1)
        .deployment_controller(controller(DeploymentControllerType::CodeDeploy))
        .load_balancers(
            LoadBalancer::builder()
                .target_group_arn(
                    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/blue/1",
                )
                .container_name("web")
                .container_port(8080)
                .build(),
        )
        .send()
        .await
        .expect("CodeDeploy service");
    // What ECS shows of a CODE_DEPLOY service once deployed: a primary task set (the emulator
    // creates none by itself).
    aws.ecs
        .create_task_set()
        .cluster("prod")
        .service("bluegreen")
        .task_definition(&td)
        .send()
        .await
        .expect("CodeDeploy task set");
    codedeploy
        .create_application()
        .application_name("web")
        .compute_platform(aws_sdk_codedeploy::types::ComputePlatform::Ecs)
        .send()
        .await
        .expect("application");
    codedeploy
        .create_deployment_group()
        .application_name("web")
        .deployment_group_name("web-prod")
        .service_role_arn("arn:aws:iam::123456789012:role/codedeploy")
        .ecs_services(
            aws_sdk_codedeploy::types::EcsService::builder()
                .cluster_name("prod")
                .service_name("bluegreen")
                .build(),
        )
        .send()
        .await
        .expect("deployment group");
    // The task set and the services start now; the change comes after.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    aws.rotate("app/db").await;

    let plan = run_binary(&proxy.url(), &["plan", "--output", "json"], &[]).await;
    assert_eq!(
        plan.code, 0,
        "a plan is whole: stdout:\n{}\nstderr:\n{}",
        plan.stdout, plan.stderr
    );
    let report = plan.json();
    let row = |name: &str| {
        report["services"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"]["service"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in the plan: {report}"))
    };
    assert_eq!(row("rolling")["decision"], "stale", "{report}");
    assert_eq!(row("bluegreen")["decision"], "stale", "{report}");
    let external = row("external");
    assert_eq!(external["decision"], "skipped", "{external}");
    assert!(
        external["reason"]
            .as_str()
            .is_some_and(|r| r.contains("EXTERNAL")),
        "{external}"
    );
    assert_eq!(external["action"], "needs_controller", "{external}");
    assert!(
        external["findings"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "{external}"
    );
    assert_eq!(proxy.count("UpdateService"), 0);

    let run = run_binary(
        &proxy.url(),
        &["reconcile", "--no-wait", "--output", "json"],
        &[("ECS_RELOADER_ROLLOUT_CANARY", "false")],
    )
    .await;
    // The EXTERNAL service still needs its controller: a problem of the run.
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stderr.contains("own controller"), "{}", run.stderr);
    assert_eq!(proxy.updated_services(), vec!["prod/rolling".to_string()]);
    let creates: Vec<_> = proxy
        .calls()
        .into_iter()
        .filter(|c| c.operation() == "CreateDeployment")
        .collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
    let body: serde_json::Value = serde_json::from_str(&creates[0].body).expect("JSON");
    assert_eq!(body["deploymentGroupName"], "web-prod");
    let spec: serde_json::Value = serde_json::from_str(
        body["revision"]["appSpecContent"]["content"]
            .as_str()
            .expect("AppSpec content"),
    )
    .expect("AppSpec JSON");
    let props = &spec["Resources"][0]["TargetService"]["Properties"];
    assert_eq!(props["TaskDefinition"], td.as_str(), "{spec}");
    assert_eq!(props["LoadBalancerInfo"]["ContainerName"], "web");
    assert_eq!(props["LoadBalancerInfo"]["ContainerPort"], 8080);
    let listed = codedeploy
        .list_deployments()
        .application_name("web")
        .deployment_group_name("web-prod")
        .send()
        .await
        .expect("list deployments");
    assert_eq!(listed.deployments().len(), 1);
}

/// The ECR adapter asks what a tag names (`DescribeImages`: metadata), and a tag that does not
/// exist is told apart from a refusal.
#[tokio::test]
async fn the_registry_adapter_reads_tags_not_images() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let conf = config(&emu.url()).await;
    let ecr = aws_sdk_ecr::Client::new(&conf);
    ecr.create_repository()
        .repository_name("team/app")
        .send()
        .await
        .expect("repository");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
                   "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"},
        "layers": []
    })
    .to_string();
    let pushed = ecr
        .put_image()
        .repository_name("team/app")
        .image_manifest(&manifest)
        .image_tag("latest")
        .send()
        .await
        .expect("put image");
    let digest = pushed
        .image()
        .and_then(|i| i.image_id())
        .and_then(|i| i.image_digest())
        .expect("digest")
        .to_string();

    let c = ecs_reloader::aws::sdk::clients_from(&config(&proxy.url()).await).expect("clients");
    let found = c
        .registry
        .describe_images(REGION, "123456789012", "team/app", &["latest".to_string()])
        .await
        .expect("describe images");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].tag, "latest");
    assert_eq!(found[0].digest, digest);
    let missing = c
        .registry
        .describe_images(REGION, "123456789012", "team/app", &["gone".to_string()])
        .await;
    match missing {
        Ok(v) => assert!(v.is_empty(), "{v:?}"),
        Err(e) => assert_eq!(e.kind, ecs_reloader::aws::ErrorKind::NotFound, "{e}"),
    }
    let ops: Vec<String> = proxy
        .calls()
        .iter()
        .map(|c| c.operation().to_string())
        .collect();
    assert!(ops.iter().all(|o| o == "DescribeImages"), "{ops:?}");
    assert!(!ops
        .iter()
        .any(|o| o.contains("BatchGetImage") || o.contains("GetDownloadUrlForLayer")));
}

/// The approval of image drift is for services a person names: without `--service` it is
/// refused before anything is read.
#[tokio::test]
async fn allowing_image_drift_needs_named_services() {
    let emu = Emulator::start();
    let run = run_binary(&emu.url(), &["reconcile", "--allow-image-drift"], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--allow-image-drift") && run.stderr.contains("--service"),
        "{}",
        run.stderr
    );
}
