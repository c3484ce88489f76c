//! Resolving references over the in-memory fake, on tokio's paused clock: one bad reference never
//! stops the others, references are read as ECS reads them (identity is account + region + name,
//! registry credentials are secrets), metadata is fetched only where the rule needs it, and
//! changes that change no value roll nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ecs_reloader::aws::fake::FakeAws;
use ecs_reloader::aws::ErrorKind;
use ecs_reloader::clock::Clock;
use ecs_reloader::decide::{decide, Decision, Policy};
use ecs_reloader::index::{self, Scope, TaskDefCache};
use ecs_reloader::reference::Site;

const REGION: &str = "eu-west-1";

fn world() -> (FakeAws, Arc<dyn Clock>) {
    FakeAws::on_tokio_clock(REGION)
}

/// The parts every driver runs, over the fake, with the default configuration.
fn parts(fake: &FakeAws, clock: &Arc<dyn Clock>) -> ecs_reloader::driver::setup::Parts {
    ecs_reloader::driver::setup::assemble(
        &ecs_reloader::config::Config::default(),
        fake.clients(),
        clock.clone(),
        Arc::new(ecs_reloader::rollout::LogProgress),
        ecs_reloader::reconcile::Mode::Watch,
    )
}

fn secret(name: &str) -> Site {
    Site::Secret {
        container: "app".into(),
        name: name.into(),
    }
}

/// Scans, resolves and decides every service: service name → decision.
async fn decisions(fake: &FakeAws, clock: &Arc<dyn Clock>) -> BTreeMap<String, Decision> {
    let clients = fake.clients();
    let cache = TaskDefCache::new();
    let inv = index::scan(&clients, &cache, &Scope::default(), 4)
        .await
        .expect("the scan itself succeeds");
    let resolved = index::resolve(&clients, &inv.entries, 4).await;
    inv.entries
        .iter()
        .zip(&resolved)
        .map(|(e, refs)| {
            (
                e.service.name.clone(),
                decide(&e.service, refs, clock.now(), &Policy::default()),
            )
        })
        .collect()
}

fn problem(d: &Decision) -> String {
    match d {
        Decision::Unknown { problems } => problems.join("; "),
        other => panic!("expected unknown, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn one_bad_reference_never_stops_the_others() {
    let (fake, clock) = world();
    let good = fake.create_secret("app/good");
    let kms = fake.create_secret("app/kms");
    let slow = fake.create_secret("app/slow");
    let opt_in = fake.create_secret_in("ap-east-1", "app/opt-in");
    let nowhere = fake.create_secret_in("xx-nowhere-1", "app/typo-region");
    fake.put_parameter("/p/ok");
    fake.put_parameter("/p/denied");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let gone = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/gone-AbCdEf";
    let services = [
        ("good", good.as_str()),
        ("kms", kms.as_str()),
        ("slow", slow.as_str()),
        ("opt-in", opt_in.as_str()),
        ("nowhere", nowhere.as_str()),
        ("gone", gone),
        ("param-ok", "/p/ok"),
        ("param-denied", "/p/denied"),
    ];
    for (name, value_from) in services {
        let td = fake.register_task_definition(name, &[(secret("S"), value_from)]);
        fake.create_service("prod", name, &td, 1, &[]);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for s in ["app/good", "app/kms", "app/slow"] {
        fake.put_secret_value(s, &[]);
    }
    fake.put_parameter("/p/ok");
    tokio::time::sleep(Duration::from_secs(5)).await;

    fake.refuse(
        "ssm:DescribeParameters",
        "/p/denied",
        ErrorKind::AccessDenied,
        "AccessDeniedException: User: arn:aws:sts::111122223333:assumed-role/ecs-reloader/x is not authorized to perform: ssm:DescribeParameters because no identity-based policy allows the ssm:DescribeParameters action",
    );
    fake.refuse(
        "secretsmanager:DescribeSecret",
        &kms,
        ErrorKind::Other,
        "KMSInvalidStateException: the key is pending deletion",
    );
    fake.refuse(
        "secretsmanager:ListSecretVersionIds",
        &slow,
        ErrorKind::Throttled,
        "ThrottlingException: Rate exceeded",
    );
    fake.refuse(
        "secretsmanager:DescribeSecret",
        &opt_in,
        ErrorKind::AccessDenied,
        "UnrecognizedClientException: The security token included in the request is invalid.",
    );
    fake.refuse(
        "secretsmanager:DescribeSecret",
        &nowhere,
        ErrorKind::Transient,
        "dispatch failure: dns error: failed to lookup address information",
    );

    let d = decisions(&fake, &clock).await;
    assert_eq!(d.len(), 8);
    assert!(d["good"].is_stale(), "{:?}", d["good"]);
    assert!(d["param-ok"].is_stale(), "{:?}", d["param-ok"]);
    let expect = [
        (
            "param-denied",
            &[
                "ssm:DescribeParameters",
                "/p/denied",
                "allow ssm:DescribeParameters",
            ][..],
        ),
        (
            "kms",
            &[
                "secretsmanager:DescribeSecret",
                "app/kms",
                "KMS refused",
                "key policy",
            ],
        ),
        (
            "slow",
            &[
                "secretsmanager:ListSecretVersionIds",
                "app/slow",
                "after retries",
            ],
        ),
        ("opt-in", &["ap-east-1", "not enabled for this account"]),
        ("nowhere", &["xx-nowhere-1", "check the region"]),
        (
            "gone",
            &[
                "secretsmanager:DescribeSecret",
                "app/gone",
                "not found in eu-west-1",
            ],
        ),
    ];
    for (svc, needles) in expect {
        let p = problem(&d[svc]);
        for n in needles {
            assert!(p.contains(n), "{svc}: {n:?} not in {p}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_batch_of_parameters_is_narrowed_to_the_refused_name() {
    let (fake, clock) = world();
    for i in 0..5 {
        fake.put_parameter(&format!("/p/{i}"));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 0..5 {
        let td =
            fake.register_task_definition(&format!("t{i}"), &[(secret("S"), &format!("/p/{i}"))]);
        fake.create_service("prod", &format!("s{i}"), &td, 1, &[]);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.refuse(
        "ssm:DescribeParameters",
        "/p/3",
        ErrorKind::AccessDenied,
        "AccessDeniedException: explicit deny in a service control policy",
    );
    let d = decisions(&fake, &clock).await;
    for i in [0, 1, 2, 4] {
        assert_eq!(d[&format!("s{i}")], Decision::InSync, "s{i}");
    }
    assert!(problem(&d["s3"]).contains("/p/3"));
}

#[tokio::test(start_paused = true)]
async fn another_accounts_parameter_is_never_this_accounts() {
    let (fake, clock) = world();
    fake.put_parameter("/app/flag");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mine = fake.register_task_definition("mine", &[(secret("F"), "/app/flag")]);
    let own_arn = fake.register_task_definition(
        "own-arn",
        &[(
            secret("F"),
            "arn:aws:ssm:eu-west-1:111122223333:parameter/app/flag",
        )],
    );
    let theirs = fake.register_task_definition(
        "theirs",
        &[(
            secret("F"),
            "arn:aws:ssm:eu-west-1:999999999999:parameter/app/flag",
        )],
    );
    fake.create_service("prod", "mine", &mine, 1, &[]);
    fake.create_service("prod", "own-arn", &own_arn, 1, &[]);
    fake.create_service("prod", "theirs", &theirs, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // This account's /app/flag changes: someone else's parameter of that name did not.
    fake.put_parameter("/app/flag");
    tokio::time::sleep(Duration::from_secs(5)).await;

    let d = decisions(&fake, &clock).await;
    assert!(d["mine"].is_stale());
    assert!(d["own-arn"].is_stale(), "an ARN with this account is ours");
    let p = problem(&d["theirs"]);
    assert!(
        p.contains("account 999999999999") && p.contains("/app/flag"),
        "{p}"
    );
}

#[tokio::test(start_paused = true)]
async fn another_accounts_secret_is_described_by_its_arn_and_kept_apart() {
    let (fake, clock) = world();
    let mine = fake.create_secret("app/db");
    let theirs = fake.create_secret_in_account("999999999999", REGION, "app/db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td_mine = fake.register_task_definition("mine", &[(secret("DB"), &mine)]);
    let td_theirs = fake.register_task_definition("theirs", &[(secret("DB"), &theirs)]);
    fake.create_service("prod", "mine", &td_mine, 1, &[]);
    fake.create_service("prod", "theirs", &td_theirs, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.put_secret_value(&theirs, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let d = decisions(&fake, &clock).await;
    assert_eq!(d["mine"], Decision::InSync);
    match &d["theirs"] {
        Decision::Stale { findings } => {
            assert_eq!(findings[0].secret, "app/db [999999999999 eu-west-1]")
        }
        other => panic!("{other:?}"),
    }

    // Its resource policy does not allow the operator: unknown, saying which policy.
    fake.refuse(
        "secretsmanager:DescribeSecret",
        &theirs,
        ErrorKind::AccessDenied,
        "AccessDeniedException: ... because no resource-based policy allows the secretsmanager:DescribeSecret action",
    );
    let d = decisions(&fake, &clock).await;
    let p = problem(&d["theirs"]);
    for n in ["account 999999999999", "resource policy", "KMS key policy"] {
        assert!(p.contains(n), "{n:?} not in {p}");
    }
    assert_eq!(d["mine"], Decision::InSync);
}

#[tokio::test(start_paused = true)]
async fn repository_credentials_are_read_as_a_secret_by_name() {
    let (fake, clock) = world();
    fake.create_secret("app/registry");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition(
        "private",
        &[(
            Site::RepositoryCredentials {
                container: "app".into(),
            },
            "app/registry",
        )],
    );
    fake.create_service("prod", "private", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(decisions(&fake, &clock).await["private"], Decision::InSync);
    fake.put_secret_value("app/registry", &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(decisions(&fake, &clock).await["private"].is_stale());
    assert_eq!(
        fake.calls("ssm:DescribeParameters"),
        0,
        "never an SSM parameter"
    );
}

#[tokio::test(start_paused = true)]
async fn label_history_is_read_only_where_a_decision_needs_it() {
    let (fake, clock) = world();
    fake.put_parameter("/app/key");
    fake.label_parameter("/app/key", 1, "prod");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("t", &[(secret("K"), "/app/key:prod")]);
    fake.create_service("prod", "labelled", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;

    assert_eq!(decisions(&fake, &clock).await["labelled"], Decision::InSync);
    assert_eq!(
        fake.calls("ssm:GetParameterHistory"),
        0,
        "nothing was written since the deployment: no call that returns values"
    );

    // A new version, then the label moved to it: now the history decides.
    let v2 = fake.put_parameter("/app/key");
    fake.label_parameter("/app/key", v2, "prod");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(decisions(&fake, &clock).await["labelled"].is_stale());
    assert_eq!(fake.calls("ssm:GetParameterHistory"), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_rotations_and_metadata_edits_roll_nothing_and_a_promotion_rolls_once() {
    let (fake, clock) = world();
    let arn = fake.create_secret("app/db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("t", &[(secret("DB"), &arn)]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;

    // A rotation stages AWSPENDING and fails; a description edit; a retry fails again.
    fake.start_rotation("app/db");
    tokio::time::sleep(Duration::from_secs(60)).await;
    fake.edit_metadata("app/db");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    fake.edit_metadata("app/db");
    // Far past the rotation grace: still nothing to roll.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(decisions(&fake, &clock).await["api"], Decision::InSync);

    // A deployment between the rotation's two moments, then the rotation completes.
    fake.create_service("prod", "between", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.finish_rotation("app/db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let d = decisions(&fake, &clock).await;
    assert!(d["api"].is_stale() && d["between"].is_stale(), "{d:?}");
    for name in ["api", "between"] {
        ecs_reloader::aws::Ecs::force_new_deployment(&fake, "prod", name)
            .await
            .expect("roll");
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    let d = decisions(&fake, &clock).await;
    assert_eq!(d["api"], Decision::InSync, "never twice");
    assert_eq!(d["between"], Decision::InSync, "never twice");
}

#[tokio::test(start_paused = true)]
async fn an_event_dates_an_awscurrent_move_the_metadata_cannot() {
    use ecs_reloader::event::{self, Parsed};
    let (fake, clock) = world();
    let arn = fake.create_secret("app/db");
    let v2 = fake.put_secret_value("app/db", &["AWSPENDING"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td = fake.register_task_definition("t", &[(secret("DB"), &arn)]);
    fake.create_service("prod", "api", &td, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Promoted by hand (rotation off: no LastRotatedDate), after the deployment.
    fake.move_stage("app/db", "AWSCURRENT", &v2);
    let promoted_at = clock.now();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let parts = parts(&fake, &clock);
    let reconciler = &parts.reconciler;
    let scope = Scope::default();
    let resync = reconciler.assess(&scope, &[]).await.expect("assess");
    assert_eq!(
        resync.services[0].decision,
        Decision::InSync,
        "a resync cannot date the move: the documented trade-off"
    );

    // The CloudTrail event of that UpdateSecretVersionStage dates it.
    let body = serde_json::json!({
        "source": "aws.secretsmanager", "detail-type": "AWS API Call via CloudTrail",
        "time": promoted_at.to_rfc3339(),
        "detail": {"eventName": "UpdateSecretVersionStage",
            "requestParameters": {"secretId": "app/db", "versionStage": "AWSCURRENT", "moveToVersionId": v2},
            "responseElements": {"arn": arn}}
    });
    let Ok(Parsed::Change(change)) = event::parse(&body.to_string()) else {
        panic!("a change event")
    };
    let mut changes = ecs_reloader::event::Changes::default();
    assert!(changes.add(&Parsed::Change(change)));
    let pass = reconciler
        .pass(&ecs_reloader::reconcile::Request {
            dry_run: true,
            ..ecs_reloader::reconcile::Request::changes(changes)
        })
        .await
        .expect("pass");
    let with_event = &pass.assessment;
    assert!(
        with_event.services[0].decision.is_stale(),
        "{:?}",
        with_event.services[0].decision
    );
}

/// An SSM label moved back to an older version changes no `LastModifiedDate`: only the
/// CloudTrail `LabelParameterVersion` event, which names the labels, dates it; with it the
/// `name:label` dependants roll, dependants of other labels do not.
#[tokio::test(start_paused = true)]
async fn a_cloudtrail_event_dates_an_ssm_label_moved_back() {
    use ecs_reloader::event::{self, Changes};
    use ecs_reloader::reconcile::Request;
    let (fake, clock) = world();
    let v1 = fake.put_parameter("/app/flag");
    let v2 = fake.put_parameter("/app/flag");
    fake.label_parameter("/app/flag", v2, "prod");
    fake.label_parameter("/app/flag", v2, "canary");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let td_prod = fake.register_task_definition("p", &[(secret("FLAG"), "/app/flag:prod")]);
    let td_canary = fake.register_task_definition("c", &[(secret("FLAG"), "/app/flag:canary")]);
    fake.create_service("prod", "api", &td_prod, 1, &[]);
    fake.create_service("prod", "probe", &td_canary, 1, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.label_parameter("/app/flag", v1, "prod");
    let moved_at = clock.now();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let parts = parts(&fake, &clock);
    let dry = |changes: Changes| Request {
        dry_run: true,
        ..Request::changes(changes)
    };
    let resync = Changes {
        resync: true,
        ..Changes::default()
    };
    let pass = parts.reconciler.pass(&dry(resync)).await.expect("pass");
    assert!(
        pass.assessment
            .services
            .iter()
            .all(|a| a.decision == Decision::InSync),
        "a resync cannot see the move"
    );

    let body = serde_json::json!({
        "source": "aws.ssm", "detail-type": "AWS API Call via CloudTrail",
        "time": moved_at.to_rfc3339(), "region": "eu-west-1",
        "detail": {"eventName": "LabelParameterVersion",
            "requestParameters": {"name": "/app/flag", "parameterVersion": v1, "labels": ["prod"]}}
    });
    let mut changes = Changes::default();
    assert!(changes.add(&event::parse(&body.to_string()).expect("parses")));
    let pass = parts.reconciler.pass(&dry(changes)).await.expect("pass");
    let decided: BTreeMap<String, &Decision> = pass
        .assessment
        .services
        .iter()
        .map(|a| (a.key.service.clone(), &a.decision))
        .collect();
    assert!(decided["api"].is_stale(), "{decided:?}");
    assert_eq!(
        *decided["probe"],
        Decision::InSync,
        "another label did not move"
    );
}
