//! The `plan` / `reconcile` CLI, end to end: the real binary against the AWS emulator, through a
//! proxy that records every call it makes.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::proxy::Proxy;
use support::{run_binary, Aws, Emulator, Refs};

/// service → decision, from a JSON report.
fn decisions(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["services"]
        .as_array()
        .expect("services array")
        .iter()
        .map(|s| {
            let key = format!(
                "{}/{}",
                s["key"]["cluster"].as_str().unwrap_or("?"),
                s["key"]["service"].as_str().unwrap_or("?")
            );
            (key, s["decision"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

struct World {
    aws: Aws,
    pinned_version: String,
    staged_v1: String,
}

/// Two clusters; every reference form of the matrix; secrets created over a second before the
/// services, so that the account starts in sync.
async fn build(aws: Aws) -> World {
    let (db, _) = aws.secret("app/db").await;
    let (replica, _) = aws.secret("app/db-replica").await;
    aws.secret("app/api-key").await;
    let (registry, _) = aws.secret("app/registry").await;
    let (log_token, _) = aws.secret("app/log-token").await;
    let (pinned, pinned_version) = aws.secret("app/pinned").await;
    let (staged, staged_v1) = aws.secret("app/staged").await;
    aws.move_stage("app/staged", "blue", &staged_v1).await;
    aws.secret("sidecar/conjur").await;
    aws.parameter("/app/flag", "on").await;
    aws.parameter("plain_param", "x").await;
    let partial_db = db
        .rsplit_once('-')
        .map(|(base, _)| base.to_string())
        .expect("suffix");
    let (_, api_key_arn) = (
        0,
        aws.sm
            .describe_secret()
            .secret_id("app/api-key")
            .send()
            .await
            .expect("d")
            .arn()
            .expect("arn")
            .to_string(),
    );

    // Whole-second secret dates: make every deployment unambiguously later.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    aws.cluster("prod").await;
    aws.cluster("staging").await;
    let td = |family: &'static str, refs: Refs<'static>| {
        let aws = aws.clone();
        async move { aws.task_def(family, refs).await }
    };
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let db_s = leak(db.clone());
    let json_ref = leak(format!("{db}:password::"));
    let partial = leak(partial_db);
    let replica_s = leak(replica);
    let pinned_ref = leak(format!("{pinned}:::{pinned_version}"));
    let staged_ref = leak(format!("{staged}::blue:"));
    let registry_s = leak(registry);
    let log_s = leak(log_token);
    let api_s = leak(api_key_arn);
    let sec =
        |v: &'static str| -> &'static [&'static str] { Box::leak(vec![v].into_boxed_slice()) };

    let t_full = td(
        "db-full",
        Refs {
            secrets: sec(db_s),
            ..Default::default()
        },
    )
    .await;
    let t_json = td(
        "db-json",
        Refs {
            secrets: sec(json_ref),
            ..Default::default()
        },
    )
    .await;
    let t_partial = td(
        "db-partial",
        Refs {
            secrets: sec(partial),
            ..Default::default()
        },
    )
    .await;
    let t_replica = td(
        "replica",
        Refs {
            secrets: sec(replica_s),
            ..Default::default()
        },
    )
    .await;
    let t_pinned = td(
        "pinned",
        Refs {
            secrets: sec(pinned_ref),
            ..Default::default()
        },
    )
    .await;
    let t_staged = td(
        "staged",
        Refs {
            secrets: sec(staged_ref),
            ..Default::default()
        },
    )
    .await;
    let t_ssm_name = td(
        "ssm-name",
        Refs {
            secrets: sec("/app/flag"),
            ..Default::default()
        },
    )
    .await;
    let t_ssm_arn = td(
        "ssm-arn",
        Refs {
            secrets: sec("arn:aws:ssm:us-east-1:123456789012:parameter/plain_param"),
            ..Default::default()
        },
    )
    .await;
    let t_log = td(
        "logs",
        Refs {
            log: sec(log_s),
            ..Default::default()
        },
    )
    .await;
    let t_repo = td(
        "private-image",
        Refs {
            registry: Some(registry_s),
            ..Default::default()
        },
    )
    .await;
    let t_plain = td("plain", Refs::default()).await;
    let two: &'static [&'static str] = Box::leak(vec![api_s, "/app/flag"].into_boxed_slice());
    let t_two = td(
        "two",
        Refs {
            secrets: two,
            ..Default::default()
        },
    )
    .await;

    aws.service("prod", "db-full", &t_full, &[]).await;
    aws.service("prod", "db-json", &t_json, &[]).await;
    aws.service("staging", "db-partial", &t_partial, &[]).await;
    aws.service("prod", "replica", &t_replica, &[]).await;
    aws.service("prod", "pinned", &t_pinned, &[]).await;
    aws.service("prod", "staged", &t_staged, &[]).await;
    aws.service("prod", "ssm-name", &t_ssm_name, &[]).await;
    aws.service("prod", "ssm-arn", &t_ssm_arn, &[]).await;
    aws.service("prod", "logs", &t_log, &[]).await;
    aws.service("prod", "private-image", &t_repo, &[]).await;
    aws.service(
        "prod",
        "sidecar",
        &t_plain,
        &[("ecs-reloader/secrets", "sidecar/conjur")],
    )
    .await;
    aws.service("prod", "no-secrets", &t_plain, &[]).await;
    aws.service("prod", "two-secrets", &t_two, &[]).await;
    aws.service(
        "prod",
        "opted-out",
        &t_full,
        &[("ecs-reloader/enabled", "false")],
    )
    .await;
    World {
        aws,
        pinned_version,
        staged_v1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_matrix_against_the_emulator() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let world = build(Aws::connect(&emu.url()).await).await;
    let aws = &world.aws;
    let url = proxy.url();

    // A first run on an account whose tasks already run the current versions rolls nothing.
    let plan = run_binary(&url, &["plan", "--output", "json"], &[]).await;
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let d = decisions(&plan.json());
    assert_eq!(d.len(), 13, "services with secrets: {d:?}");
    assert!(!d.contains_key("prod/no-secrets"));
    assert_eq!(plan.json()["services_without_secrets"], 1);
    for (svc, decision) in &d {
        let expected = match svc.as_str() {
            "prod/pinned" => "pinned",
            "prod/opted-out" => "opted_out",
            _ => "in_sync",
        };
        assert_eq!(decision, expected, "{svc} before any rotation");
    }
    let first = run_binary(&url, &["reconcile"], &[]).await;
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert_eq!(proxy.count("UpdateService"), 0);

    // Rotate everything that can rotate (AWSCURRENT only for the staged secret).
    for s in [
        "app/db",
        "app/api-key",
        "app/registry",
        "app/log-token",
        "app/pinned",
        "app/staged",
        "sidecar/conjur",
    ] {
        aws.rotate(s).await;
    }
    aws.parameter("/app/flag", "off").await;

    // Dry run scoped to app/db: the lookalike app/db-replica is not selected; nothing changes.
    proxy.reset();
    let dry = run_binary(
        &url,
        &[
            "reconcile",
            "--secret",
            "app/db",
            "--dry-run",
            "--output",
            "json",
        ],
        &[],
    )
    .await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let d = decisions(&dry.json());
    assert_eq!(
        d.keys().cloned().collect::<Vec<_>>(),
        [
            "prod/db-full",
            "prod/db-json",
            "prod/opted-out",
            "staging/db-partial"
        ],
        "exactly the services resolving app/db"
    );
    assert_eq!(d["prod/db-full"], "stale", "{}", dry.stdout);
    assert_eq!(d["staging/db-partial"], "stale");
    assert_eq!(d["prod/opted-out"], "opted_out");
    assert_eq!(proxy.count("UpdateService"), 0, "a dry run changes nothing");

    // The same, for real, naming the secret by full ARN.
    let db_arn = aws
        .sm
        .describe_secret()
        .secret_id("app/db")
        .send()
        .await
        .expect("d")
        .arn()
        .expect("arn")
        .to_string();
    let scoped = run_binary(
        &url,
        &["reconcile", "--secret", &db_arn, "--output", "json"],
        &[],
    )
    .await;
    assert_eq!(scoped.code, 0, "{}{}", scoped.stdout, scoped.stderr);
    assert_eq!(
        sorted(proxy.updated_services()),
        ["prod/db-full", "prod/db-json", "staging/db-partial"]
    );

    // Everything else that is stale, each exactly once (two-secrets rotated twice: one rollout).
    proxy.reset();
    let all = run_binary(&url, &["reconcile", "--output", "json"], &[]).await;
    assert_eq!(all.code, 0, "{}{}", all.stdout, all.stderr);
    assert_eq!(
        sorted(proxy.updated_services()),
        [
            "prod/logs",
            "prod/private-image",
            "prod/sidecar",
            "prod/ssm-name",
            "prod/two-secrets"
        ]
    );
    let d = decisions(&all.json());
    assert_eq!(
        d["prod/pinned"], "pinned",
        "a pinned version id never rolls"
    );
    assert_eq!(
        d["prod/staged"], "in_sync",
        "rotating AWSCURRENT does not move blue"
    );
    assert_eq!(d["prod/replica"], "in_sync", "the lookalike did not change");
    assert_eq!(d["prod/ssm-arn"], "in_sync");
    assert_eq!(d["prod/opted-out"], "opted_out");
    let two = all.json()["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["key"]["service"] == "two-secrets")
        .cloned()
        .expect("two-secrets row");
    assert_eq!(
        two["findings"].as_array().map(Vec::len),
        Some(2),
        "both secrets named: {two}"
    );

    // Idempotent: a second run right after rolls nothing.
    proxy.reset();
    let again = run_binary(&url, &["reconcile", "--output", "json"], &[]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        proxy.count("UpdateService"),
        0,
        "second run: {}",
        again.stdout
    );

    // Moving the pinned stage does roll the stage-pinned service, and only it.
    let v2 = aws
        .sm
        .describe_secret()
        .secret_id("app/staged")
        .send()
        .await
        .expect("d")
        .version_ids_to_stages()
        .and_then(|m| {
            m.iter()
                .find(|(_, s)| s.iter().any(|x| x == "AWSCURRENT"))
                .map(|(v, _)| v.clone())
        })
        .expect("current version");
    assert_ne!(v2, world.staged_v1);
    aws.move_stage("app/staged", "blue", &v2).await;
    proxy.reset();
    let moved = run_binary(&url, &["reconcile"], &[]).await;
    assert_eq!(moved.code, 0, "{}{}", moved.stdout, moved.stderr);
    assert_eq!(proxy.updated_services(), ["prod/staged"]);
    assert!(
        moved.stdout.contains("prod") && moved.stdout.contains("staged"),
        "table names it:\n{}",
        moved.stdout
    );

    // Never a secret value, never a decryption.
    let calls = proxy.calls();
    assert!(!calls.is_empty());
    for c in &calls {
        assert_ne!(c.operation(), "GetSecretValue");
        assert_ne!(c.operation(), "GetParameter");
        assert_ne!(c.operation(), "GetParameters");
        assert!(!c.body.contains("\"WithDecryption\":true"), "{c:?}");
    }
    let _ = &world.pinned_version;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_definition_is_described_once_per_run() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    aws.secret("shared").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.cluster("c").await;
    let td = aws
        .task_def(
            "shared",
            Refs {
                secrets: &["arn:aws:secretsmanager:us-east-1:123456789012:secret:shared"],
                ..Default::default()
            },
        )
        .await;
    for i in 0..23 {
        aws.service("c", &format!("svc-{i:02}"), &td, &[]).await;
    }
    let run = run_binary(&proxy.url(), &["plan", "--output", "json"], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(decisions(&run.json()).len(), 23);
    assert_eq!(
        proxy.count("DescribeTaskDefinition"),
        1,
        "23 services share one revision"
    );
    assert_eq!(proxy.count("DescribeServices"), 3, "batches of at most ten");
    assert_eq!(proxy.count("DescribeSecret"), 1, "one distinct secret");
    assert_eq!(
        proxy.count("ListSecretVersionIds"),
        0,
        "no deployment predates the last change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error() {
    let emu = Emulator::start();
    let url = emu.url();

    let unknown = run_binary(&url, &["reconcile", "--secret", "does/not-exist"], &[]).await;
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("does/not-exist"),
        "{}",
        unknown.stderr
    );

    let bad_arn = run_binary(&url, &["plan", "--secret", "arn:aws:s3:::bucket"], &[]).await;
    assert_ne!(bad_arn.code, 0);
    assert!(bad_arn.stderr.contains("s3"), "{}", bad_arn.stderr);

    let dir = std::env::temp_dir().join(format!("ecs-reloader-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "[aws]\nregion = \"us-east-1\"\n\n[scope]\nclustres = [\"prod\"]\n",
    )
    .expect("write");
    let bad_cfg = run_binary(
        &url,
        &["plan", "--config", cfg.to_str().expect("utf8")],
        &[],
    )
    .await;
    assert_eq!(bad_cfg.code, 2);
    assert!(
        bad_cfg.stderr.contains("clustres") && bad_cfg.stderr.contains("line 5"),
        "{}",
        bad_cfg.stderr
    );

    let bad_env = run_binary(
        &url,
        &["plan"],
        &[("ECS_RELOADER_SCOPE_SCAN_CONCURRENCY", "lots")],
    )
    .await;
    assert_eq!(bad_env.code, 2);
    assert!(
        bad_env
            .stderr
            .contains("ECS_RELOADER_SCOPE_SCAN_CONCURRENCY"),
        "{}",
        bad_env.stderr
    );

    let missing_cluster = run_binary(&url, &["plan", "--cluster", "nope"], &[]).await;
    assert_ne!(missing_cluster.code, 0);
    assert!(
        missing_cluster.stderr.contains("ListServices") && missing_cluster.stderr.contains("nope"),
        "{}",
        missing_cluster.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
