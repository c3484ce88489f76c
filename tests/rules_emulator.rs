//! The staleness rule and the reading of references against the emulator, as a new user would
//! meet them on an account shaped like a real one: a failed rotation and metadata-only edits roll
//! nothing, a deployment made between a rotation's two moments is rolled once; one refused
//! reference never stops the others; references are read as ECS reads them (registry credentials
//! by name, another account's parameter never mistaken for ours, another account's secret read
//! through its resource policy); and `GetParameterHistory`, which returns values, is called only
//! where a decision needs it, never with decryption.
//!
//! The emulator plays rotations (with a "-failing" Lambda for a failed one), cross-account
//! resource policies and per-resource refusals (the proxy): see `tests/emulator/moto_launcher.py`
//! and `tests/support/proxy.rs`.

mod support;

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use support::proxy::Proxy;
use support::{run_binary, Aws, Emulator, Refs, Run, REGION};

const ROTATE: &str = "arn:aws:lambda:us-east-1:123456789012:function:rotate";
const ROTATE_FAILING: &str = "arn:aws:lambda:us-east-1:123456789012:function:rotate-failing";

/// The service `name` (of cluster `prod`) in a JSON report.
fn service<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["key"]["service"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {run:#}"))
}

fn decision(report: &serde_json::Value, name: &str) -> String {
    service(report, name)["decision"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

fn problems(report: &serde_json::Value, name: &str) -> String {
    service(report, name)["problems"].to_string()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Secrets Manager dates are whole seconds: let one go by.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// Past the moment a change made now is unambiguously older than a new deployment (its second,
/// plus a second of clock skew): a plan then shows `stale` rather than `settling`.
async fn past_settling() {
    tokio::time::sleep(Duration::from_millis(2100)).await;
}

/// What a dry run decides (`plan` today also applies the canary gate of drivers that cannot wait,
/// which would hide all but one dependant of a change).
async fn plan(url: &str, env: &[(&str, &str)]) -> (Run, serde_json::Value) {
    let run = run_binary(url, &["reconcile", "--dry-run", "--output", "json"], env).await;
    assert_ne!(run.code, 2, "the run failed as a whole:\n{}", run.stderr);
    let json = run.json();
    (run, json)
}

async fn rotate_with(aws: &Aws, name: &str, lambda: &str, token: Option<&str>) -> String {
    let out = aws
        .sm
        .rotate_secret()
        .secret_id(name)
        .rotation_lambda_arn(lambda)
        .rotation_rules(
            aws_sdk_secretsmanager::types::RotationRulesType::builder()
                .automatically_after_days(30)
                .build(),
        )
        .set_client_request_token(token.map(String::from))
        .send()
        .await
        .expect("rotate secret");
    out.version_id().expect("version").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_change_no_value_roll_nothing_and_a_completed_rotation_rolls_once() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let url = proxy.url();
    let mut arns = Vec::new();
    for s in ["app/db", "app/desc", "app/kms", "app/schedule"] {
        arns.push(aws.secret(s).await.0);
    }
    next_second().await;
    aws.cluster("prod").await;
    for (name, arn) in ["db", "desc", "kms", "schedule"].iter().zip(&arns) {
        let td = aws.task_def_for(name, arn).await;
        aws.service("prod", name, &td, &[]).await;
    }
    next_second().await;

    // A rotation whose Lambda fails after its first step: a version staged AWSPENDING,
    // AWSCURRENT never moves. Metadata-only edits: a description (and a tag), a KMS key, a
    // rotation schedule.
    let pending = rotate_with(&aws, "app/db", ROTATE_FAILING, None).await;
    aws.sm
        .update_secret()
        .secret_id("app/desc")
        .description("the database password")
        .send()
        .await
        .expect("describe");
    aws.sm
        .tag_resource()
        .secret_id("app/desc")
        .tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key("team")
                .value("db")
                .build(),
        )
        .send()
        .await
        .expect("tag");
    aws.sm
        .update_secret()
        .secret_id("app/kms")
        .kms_key_id("alias/other")
        .send()
        .await
        .expect("kms key");
    aws.sm
        .rotate_secret()
        .secret_id("app/schedule")
        .rotation_lambda_arn(ROTATE)
        .rotate_immediately(false)
        .rotation_rules(
            aws_sdk_secretsmanager::types::RotationRulesType::builder()
                .automatically_after_days(7)
                .build(),
        )
        .send()
        .await
        .expect("schedule");
    next_second().await;

    // Even with no grace for rotations in progress, nothing is stale, and nothing rolls.
    let no_grace = [("ECS_RELOADER_DECIDE_ROTATION_GRACE", "0s")];
    let (run, report) = plan(&url, &no_grace).await;
    for name in ["db", "desc", "kms", "schedule"] {
        assert_eq!(decision(&report, name), "in_sync", "{name}: {}", run.stdout);
    }
    let run = run_binary(&url, &["reconcile"], &no_grace).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        proxy.count("UpdateService"),
        0,
        "nothing rolled for nothing"
    );

    // A deployment made between the rotation's two moments: after the version was staged,
    // before it is promoted. Then the rotation is retried and completes.
    let td = aws.task_def_for("between", &arns[0]).await;
    aws.service("prod", "between", &td, &[]).await;
    next_second().await;
    rotate_with(&aws, "app/db", ROTATE, Some(&pending)).await;
    past_settling().await;

    let (_, report) = plan(&url, &[]).await;
    assert_eq!(decision(&report, "db"), "stale", "{report:#}");
    assert_eq!(
        decision(&report, "between"),
        "stale",
        "the promotion came after its deployment: {report:#}"
    );
    let run = run_binary(&url, &["reconcile"], &[]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        sorted(proxy.updated_services()),
        ["prod/between", "prod/db"],
        "each rolled once"
    );
    let again = run_binary(&url, &["reconcile"], &[]).await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(proxy.count("UpdateService"), 2, "never twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_reference_never_stops_the_others() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let url = proxy.url();
    let (good, _) = aws.secret("app/good").await;
    let (refused, _) = aws.secret("app/refused").await;
    aws.parameter("/p/ok", "1").await;
    aws.parameter("/p/denied", "1").await;
    next_second().await;
    aws.cluster("prod").await;
    for (name, value_from) in [
        ("good", good.as_str()),
        ("refused", refused.as_str()),
        ("param-ok", "/p/ok"),
        ("param-denied", "/p/denied"),
    ] {
        let td = aws.task_def_for(name, value_from).await;
        aws.service("prod", name, &td, &[]).await;
    }
    next_second().await;
    aws.rotate("app/good").await;
    aws.parameter("/p/ok", "2").await;
    next_second().await;

    // An SCP denies reading one parameter; a resource policy denies reading one secret.
    proxy.refuse(
        "AmazonSSM.DescribeParameters",
        "/p/denied",
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/ecs-reloader/i-0 is not authorized to perform: ssm:DescribeParameters with an explicit deny in a service control policy",
    );
    proxy.refuse(
        "secretsmanager.DescribeSecret",
        "app/refused",
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/ecs-reloader/i-0 is not authorized to perform: secretsmanager:DescribeSecret because no resource-based policy allows the secretsmanager:DescribeSecret action",
    );

    let (_, report) = plan(&url, &[]).await;
    assert_eq!(decision(&report, "good"), "stale");
    assert_eq!(decision(&report, "param-ok"), "stale");
    assert_eq!(decision(&report, "param-denied"), "unknown");
    let p = problems(&report, "param-denied");
    for needle in [
        "ssm:DescribeParameters",
        "/p/denied",
        "allow ssm:DescribeParameters",
    ] {
        assert!(p.contains(needle), "{needle:?} not in {p}");
    }
    assert_eq!(decision(&report, "refused"), "unknown");
    let p = problems(&report, "refused");
    for needle in ["secretsmanager:DescribeSecret", "app/refused", "IAM policy"] {
        assert!(p.contains(needle), "{needle:?} not in {p}");
    }

    let run = run_binary(&url, &["reconcile", "--output", "json"], &[]).await;
    assert_eq!(
        run.code, 1,
        "unresolved references are reported with exit 1, not a failed run: {}",
        run.stderr
    );
    assert_eq!(
        sorted(proxy.updated_services()),
        ["prod/good", "prod/param-ok"],
        "every other service is decided and rolled"
    );
}

/// SDK clients acting in another account (moto: credentials from `sts:AssumeRole` on a role of
/// that account act in it).
async fn secrets_in_account(url: &str, account: &str) -> aws_sdk_secretsmanager::Client {
    let base = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(REGION))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await;
    let role = aws_config::sts::AssumeRoleProvider::builder(format!(
        "arn:aws:iam::{account}:role/secrets-owner"
    ))
    .session_name("tests")
    .configure(&base)
    .build()
    .await;
    let conf = aws_sdk_secretsmanager::config::Builder::from(&base)
        .credentials_provider(role)
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_read_as_ecs_reads_them() {
    const THEM: &str = "222233334444";
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let url = proxy.url();
    let them = secrets_in_account(&emu.url(), THEM).await;

    // Ours: a parameter, a registry secret, app/db. Theirs: app/db shared with us by its
    // resource policy, and app/closed not shared.
    aws.parameter("/app/flag", "on").await;
    aws.secret("app/registry").await;
    let (mine, _) = aws.secret("app/db").await;
    let mut theirs = Vec::new();
    for name in ["app/db", "app/closed"] {
        let out = them
            .create_secret()
            .name(name)
            .secret_string("theirs")
            .send()
            .await
            .expect("their secret");
        theirs.push(out.arn().expect("arn").to_string());
    }
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": ["secretsmanager:DescribeSecret", "secretsmanager:ListSecretVersionIds"],
        "Resource": "*"}]});
    them.put_resource_policy()
        .secret_id(&theirs[0])
        .resource_policy(policy.to_string())
        .send()
        .await
        .expect("policy");
    assert!(theirs[0].contains(THEM));
    next_second().await;

    aws.cluster("prod").await;
    let their_param = format!("arn:aws:ssm:{REGION}:999999999999:parameter/app/flag");
    for (name, value_from) in [
        ("mine-param", "/app/flag"),
        ("their-param", their_param.as_str()),
        ("mine-secret", mine.as_str()),
        ("their-secret", theirs[0].as_str()),
        ("closed", theirs[1].as_str()),
    ] {
        let td = aws.task_def_for(name, value_from).await;
        aws.service("prod", name, &td, &[]).await;
    }
    let td = aws
        .task_def(
            "registry",
            Refs {
                registry: Some("app/registry"),
                ..Default::default()
            },
        )
        .await;
    aws.service("prod", "registry", &td, &[]).await;
    next_second().await;

    let (_, report) = plan(&url, &[]).await;
    for name in ["mine-param", "mine-secret", "their-secret", "registry"] {
        assert_eq!(decision(&report, name), "in_sync", "{name}: {report:#}");
    }

    // Our /app/flag and registry secret change, and their app/db.
    aws.parameter("/app/flag", "off").await;
    aws.rotate("app/registry").await;
    them.put_secret_value()
        .secret_id(&theirs[0])
        .secret_string("rotated")
        .send()
        .await
        .expect("their rotation");
    next_second().await;

    let (_, report) = plan(&url, &[]).await;
    assert_eq!(decision(&report, "mine-param"), "stale");
    assert_eq!(
        decision(&report, "registry"),
        "stale",
        "credentialsParameter by name is a Secrets Manager secret: {report:#}"
    );
    assert_eq!(decision(&report, "mine-secret"), "in_sync");
    assert_eq!(decision(&report, "their-secret"), "stale");
    assert_eq!(
        service(&report, "their-secret")["findings"][0]["secret"],
        format!("app/db [{THEM} {REGION}]"),
        "another account's app/db is shown (and keyed) apart from ours"
    );
    assert_eq!(decision(&report, "their-param"), "unknown");
    let p = problems(&report, "their-param");
    assert!(p.contains("account 999999999999"), "{p}");
    assert_eq!(decision(&report, "closed"), "unknown");
    let p = problems(&report, "closed");
    let account = format!("account {THEM}");
    for needle in [account.as_str(), "resource policy", "KMS key policy"] {
        assert!(p.contains(needle), "{needle:?} not in {p}");
    }

    let run = run_binary(&url, &["reconcile"], &[]).await;
    assert_eq!(run.code, 1, "two references are unresolved: {}", run.stderr);
    assert_eq!(
        sorted(proxy.updated_services()),
        ["prod/mine-param", "prod/registry", "prod/their-secret"],
        "someone else's /app/flag is not ours"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_history_is_read_only_where_a_decision_needs_it() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let url = proxy.url();
    let label = |version: i64| {
        let aws = aws.clone();
        async move {
            aws.ssm
                .label_parameter_version()
                .name("/app/key")
                .parameter_version(version)
                .labels("prod")
                .send()
                .await
                .expect("label");
        }
    };
    aws.parameter("/app/key", "one").await;
    label(1).await;
    next_second().await;
    aws.cluster("prod").await;
    let td = aws.task_def_for("labelled", "/app/key:prod").await;
    aws.service("prod", "labelled", &td, &[]).await;
    next_second().await;

    let (_, report) = plan(&url, &[]).await;
    assert_eq!(decision(&report, "labelled"), "in_sync");
    let history_calls = || {
        proxy
            .calls()
            .into_iter()
            .filter(|c| c.operation() == "GetParameterHistory")
            .collect::<Vec<_>>()
    };
    assert!(
        history_calls().is_empty(),
        "nothing was written since the deployment: no call that returns values"
    );

    // A new version, labelled: now only the history can tell.
    aws.parameter("/app/key", "two").await;
    label(2).await;
    past_settling().await;
    let (_, report) = plan(&url, &[]).await;
    assert_eq!(decision(&report, "labelled"), "stale");
    let calls = history_calls();
    assert_eq!(
        calls.len(),
        1,
        "one call for the one labelled parameter: {calls:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&calls[0].body).expect("json body");
    assert_eq!(body["WithDecryption"], false, "never decrypted: {body}");
    let forbidden = ["GetParameter", "GetParameters", "GetSecretValue"];
    assert!(
        proxy
            .calls()
            .iter()
            .all(|c| !forbidden.contains(&c.operation())),
        "no call that reads a value on purpose"
    );
}
