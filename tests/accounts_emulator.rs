//! One deployment for an organisation: `[[targets]]` in two accounts × two regions, against the
//! emulator. moto keeps one backend per account, and credentials from `sts:AssumeRole` on a role
//! of another account act in that account; the launcher makes AssumeRole check an existing
//! role's trust policy (the operator's account and the external ID), as AWS does.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use support::{run_binary, wait_for, Aws, Emulator, Serve, REGION};

/// The secrets account (and a workload account too).
const A: &str = "111111111111";
/// Another workload account.
const B: &str = "222222222222";
/// An account whose role does not trust the operator with the external ID it is given.
const C: &str = "333333333333";
const WEST: &str = "eu-west-1";
const EXTERNAL_ID: &str = "org-4f1c";
const ROLE: &str = "ecs-reloader-target";

fn role_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/{ROLE}")
}

/// Clients acting in `account` and `region`, through a role of that account (one with no trust
/// check: the world's builder, not the operator).
async fn in_account(url: &str, account: &str, region: &'static str) -> Aws {
    let base = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(region))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await;
    let role = aws_config::sts::AssumeRoleProvider::builder(format!(
        "arn:aws:iam::{account}:role/world-builder"
    ))
    .session_name("tests")
    .configure(&base)
    .build()
    .await;
    let conf = base
        .to_builder()
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(role))
        .build();
    Aws {
        ecs: aws_sdk_ecs::Client::new(&conf),
        sm: aws_sdk_secretsmanager::Client::new(&conf),
        ssm: aws_sdk_ssm::Client::new(&conf),
        sqs: aws_sdk_sqs::Client::new(&conf),
        events: aws_sdk_eventbridge::Client::new(&conf),
    }
}

/// The target role in `account`, trusting the operator's account (123456789012, the emulator's
/// default) with `external_id`, created as the member template would (IAM through boto3: the
/// crate has no IAM client).
fn target_role(url: &str, account: &str, external_id: &str) {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        r#"
import boto3, json
c = lambda n, **k: boto3.client(n, endpoint_url="{url}", region_name="{REGION}", **k)
cr = c("sts", aws_access_key_id="test", aws_secret_access_key="test").assume_role(
    RoleArn="arn:aws:iam::{account}:role/world-builder", RoleSessionName="tests")["Credentials"]
iam = c("iam", aws_access_key_id=cr["AccessKeyId"], aws_secret_access_key=cr["SecretAccessKey"],
        aws_session_token=cr["SessionToken"])
doc = {{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow",
    "Principal": {{"AWS": "arn:aws:iam::123456789012:role/ecs-reloader-operator"}},
    "Action": "sts:AssumeRole", "Condition": {{"StringEquals": {{"sts:ExternalId": "{external_id}"}}}}}}]}}
iam.create_role(RoleName="{ROLE}", AssumeRolePolicyDocument=json.dumps(doc))
"#
    );
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A configuration file with these targets (account, external ID).
fn config(targets: &[(&str, &str)], extra: &str) -> tempfile::Path {
    let mut text =
        String::from("[aws]\nregion = \"us-east-1\"\n\n[scope]\nclusters = [\"prod\"]\n\n");
    for (account, external_id) in targets {
        text.push_str(&format!(
            "[[targets]]\nrole_arn = \"{}\"\nexternal_id = \"{external_id}\"\nsession_name = \"ecs-reloader\"\nregions = [\"us-east-1\", \"eu-west-1\"]\n\n",
            role_arn(account)
        ));
    }
    text.push_str(extra);
    tempfile::Path::with(&text)
}

/// A temporary file, removed on drop (no extra crate for it).
mod tempfile {
    pub struct Path(pub std::path::PathBuf);

    impl Path {
        pub fn with(text: &str) -> Path {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "ecs-reloader-accounts-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, text).expect("write config");
            Path(p)
        }

        pub fn as_str(&self) -> &str {
            self.0.to_str().expect("utf-8 path")
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Two accounts × two regions. Account A holds the secret `app/db` in us-east-1 (the rotated
/// one), and decoys of the same name in eu-west-1 (A) and us-east-1 (B). Dependants of A's
/// us-east-1 secret, all by its ARN: in A us-east-1, A eu-west-1 (another region), B us-east-1
/// and B eu-west-1 (another account). Decoys depend on the same-named secrets elsewhere.
struct World {
    clients: BTreeMap<(&'static str, &'static str), Aws>,
    secret: String,
    initial: BTreeMap<(&'static str, &'static str, &'static str), String>,
}

const DEPENDANTS: [(&str, &str, &str); 4] = [
    (A, REGION, "a-east-uses"),
    (A, WEST, "a-west-uses"),
    (B, REGION, "b-east-uses"),
    (B, WEST, "b-west-uses"),
];
const DECOYS: [(&str, &str, &str); 2] = [(A, REGION, "a-east-decoy"), (B, REGION, "b-east-decoy")];

impl World {
    async fn build(url: &str, accounts: &[&'static str]) -> World {
        let mut clients = BTreeMap::new();
        for &account in accounts {
            for region in [REGION, WEST] {
                clients.insert((account, region), in_account(url, account, region).await);
            }
        }
        let (secret, _) = clients[&(A, REGION)].secret("app/db").await;
        let (a_west_decoy, _) = clients[&(A, WEST)].secret("app/db").await;
        let (b_decoy, _) = clients[&(B, REGION)].secret("app/db").await;
        assert!(secret.contains(A) && b_decoy.contains(B) && a_west_decoy.contains(WEST));
        // Secrets Manager dates are whole seconds: deployments come strictly later.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let refs = BTreeMap::from([
            ("a-east-uses", secret.clone()),
            ("a-west-uses", secret.clone()),
            ("b-east-uses", secret.clone()),
            ("b-west-uses", secret.clone()),
            ("a-east-decoy", a_west_decoy),
            ("b-east-decoy", b_decoy),
        ]);
        let mut initial = BTreeMap::new();
        for ((account, region), aws) in &clients {
            aws.cluster("prod").await;
            for (a, r, name) in DEPENDANTS.iter().chain(&DECOYS) {
                if (a, r) == (account, region) {
                    let td = aws.task_def_for(name, &refs[name]).await;
                    aws.service("prod", name, &td, &[]).await;
                    initial.insert((*a, *r, *name), aws.deployment_id("prod", name).await);
                }
            }
        }
        World {
            clients,
            secret,
            initial,
        }
    }

    /// Services whose deployment changed since the world was built.
    async fn rolled(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ((a, r, name), first) in &self.initial {
            if self.clients[&(*a, *r)].deployment_id("prod", name).await != *first {
                out.push(format!("{a} {r} {name}"));
            }
        }
        out
    }

    async fn rotate(&self) {
        self.clients[&(A, REGION)].rotate(&self.secret).await;
        // A change under a second old is settling: let it age, as any real event has.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

fn expected(services: &[(&str, &str, &str)]) -> Vec<String> {
    let mut v: Vec<String> = services
        .iter()
        .map(|(a, r, n)| format!("{a} {r} {n}"))
        .collect();
    v.sort();
    v
}

/// A metric sample's value, by name and labels as they appear in the exposition.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

/// Receives outcome events into `seen` (detail-type, account, region) until `done` says so.
async fn outcome_events(
    aws: &Aws,
    queue: &str,
    seen: &Seen,
    done: impl Fn(&[(String, String, String)]) -> bool,
) {
    wait_for("the outcome events", Duration::from_secs(60), || {
        let (seen, aws, queue) = (seen.clone(), aws.clone(), queue.to_string());
        let done = &done;
        async move {
            let got = aws
                .sqs
                .receive_message()
                .queue_url(&queue)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive");
            let mut seen = seen.lock().expect("lock");
            for m in got.messages() {
                let e: serde_json::Value =
                    serde_json::from_str(m.body().unwrap_or("{}")).expect("json");
                let d = &e["detail"];
                seen.push((
                    e["detail-type"].as_str().unwrap_or("?").to_string(),
                    d["account"].as_str().unwrap_or("?").to_string(),
                    d["region"].as_str().unwrap_or("?").to_string(),
                ));
            }
            done(&seen)
        }
    })
    .await;
}

fn has(seen: &[(String, String, String)], t: &str, a: &str, r: &str) -> bool {
    seen.iter()
        .any(|s| (s.0.as_str(), s.1.as_str(), s.2.as_str()) == (t, a, r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_lists_every_target_and_a_rotation_rolls_its_dependants_in_every_account_once() {
    let emu = Emulator::start();
    let url = emu.url();
    target_role(&url, A, EXTERNAL_ID);
    target_role(&url, B, EXTERNAL_ID);
    let world = World::build(&url, &[A, B]).await;
    let aws = Aws::connect(&url).await;
    let (queue, _, _) = aws.queue_with_dlq("changes", 30, 5).await;
    let cfg = config(&[(A, EXTERNAL_ID), (B, EXTERNAL_ID)], "");

    // The plan, before any change: every target, every service with its account and region.
    let plan = run_binary(
        &url,
        &["plan", "--config", cfg.as_str(), "--output", "json"],
        &[],
    )
    .await;
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let report = plan.json();
    let mut targets: Vec<String> = report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| {
            assert!(t.get("problem").is_none(), "{t}");
            format!(
                "{} {}",
                t["account"].as_str().unwrap_or("?"),
                t["region"].as_str().unwrap_or("?")
            )
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            format!("{A} {WEST}"),
            format!("{A} {REGION}"),
            format!("{B} {WEST}"),
            format!("{B} {REGION}")
        ]
    );
    let mut listed: Vec<String> = report["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            assert_eq!(s["decision"], "in_sync", "{s}");
            let k = &s["key"];
            format!(
                "{} {} {}",
                k["account"].as_str().unwrap_or("?"),
                k["region"].as_str().unwrap_or("?"),
                k["service"].as_str().unwrap_or("?")
            )
        })
        .collect();
    listed.sort();
    let mut all: Vec<_> = DEPENDANTS.iter().chain(&DECOYS).copied().collect();
    all.sort();
    assert_eq!(listed, expected(&all));
    // The table names account and region too.
    let table = run_binary(&url, &["plan", "--config", cfg.as_str()], &[]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.starts_with("ACCOUNT") && table.stdout.contains(&format!("{B}  {WEST}")),
        "{}",
        table.stdout
    );
    // --account / --region keep only those targets; one that names none is an error.
    let one = run_binary(
        &url,
        &[
            "plan",
            "--config",
            cfg.as_str(),
            "--output",
            "json",
            "--account",
            B,
            "--region",
            WEST,
        ],
        &[],
    )
    .await;
    assert_eq!(one.code, 0, "{}", one.stderr);
    let services: Vec<String> = one.json()["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["key"]["service"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(services, ["b-west-uses"]);
    let typo = run_binary(
        &url,
        &[
            "plan",
            "--config",
            cfg.as_str(),
            "--account",
            "999999999999",
        ],
        &[],
    )
    .await;
    assert_eq!(typo.code, 2);
    assert!(
        typo.stderr.contains("--account 999999999999"),
        "{}",
        typo.stderr
    );

    // serve: idle and in sync first, so that only the event can roll anything.
    let serve = Serve::start(
        &url,
        &["--config", cfg.as_str(), "--queue-url", &queue],
        &[("ECS_RELOADER_EVENTS_DEBOUNCE", "1s")],
    );
    serve.ready().await;
    serve.idle().await;
    assert_eq!(world.rolled().await, Vec::<String>::new());

    world.rotate().await;
    // The event as EventBridge delivers it from account A: it names the secret by name only
    // (Secret Label Updated without resources), so only the envelope says whose `app/db` it is.
    let event = serde_json::json!({
        "version": "0", "id": "e-1", "source": "aws.secretsmanager",
        "detail-type": "Secret Label Updated", "account": A, "region": REGION,
        "time": chrono::Utc::now().to_rfc3339(), "resources": [],
        "detail": {"name": "app/db", "labelUpdated": "AWSCURRENT"}
    });
    aws.send(&queue, &event.to_string()).await;
    wait_for(
        "the dependants in both accounts and regions to roll",
        Duration::from_secs(60),
        || async { world.rolled().await.len() >= DEPENDANTS.len() },
    )
    .await;
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        aws.queue_total(&queue).await == 0
    })
    .await;
    serve.idle().await;
    assert_eq!(
        world.rolled().await,
        expected(&DEPENDANTS),
        "exactly the dependants of A's us-east-1 app/db"
    );

    // Once: the same event again rolls nothing more, and each target counted one rollout.
    let rolled_to: Vec<String> = {
        let mut v = Vec::new();
        for (a, r, n) in DEPENDANTS {
            v.push(world.clients[&(a, r)].deployment_id("prod", n).await);
        }
        v
    };
    aws.send(&queue, &event.to_string()).await;
    wait_for(
        "the duplicate to be handled",
        Duration::from_secs(60),
        || async { aws.queue_total(&queue).await == 0 },
    )
    .await;
    serve.idle().await;
    for ((a, r, n), before) in DEPENDANTS.iter().zip(&rolled_to) {
        assert_eq!(
            &world.clients[&(*a, *r)].deployment_id("prod", n).await,
            before,
            "{a} {r} {n} rolled twice"
        );
    }
    assert_eq!(world.rolled().await, expected(&DEPENDANTS));
    let (_, metrics) = serve.get("/metrics").await.expect("metrics");
    for (a, r, _) in DEPENDANTS {
        assert_eq!(
            sample(
                &metrics,
                "ecs_reloader_target_rollouts_total",
                &[("account", a), ("region", r), ("kind", "started")]
            ),
            Some(1.0),
            "{a} {r}:\n{metrics}"
        );
        assert_eq!(
            sample(
                &metrics,
                "ecs_reloader_target_up",
                &[("account", a), ("region", r)]
            ),
            Some(1.0),
            "{a} {r}:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_be_assumed_leaves_the_other_targets_rollouts_intact() {
    let emu = Emulator::start();
    let url = emu.url();
    target_role(&url, A, EXTERNAL_ID);
    target_role(&url, B, EXTERNAL_ID);
    // C's role trusts the operator with another external ID than the one configured.
    target_role(&url, C, "not-what-we-send");
    let world = World::build(&url, &[A, B]).await;
    // B is given a wrong external ID: its AssumeRole is refused; C's role refuses too.
    let cfg = config(&[(A, EXTERNAL_ID), (B, "wrong-id"), (C, EXTERNAL_ID)], "");
    world.rotate().await;

    let plan = run_binary(
        &url,
        &["plan", "--config", cfg.as_str(), "--output", "json"],
        &[],
    )
    .await;
    assert_eq!(
        plan.code, 1,
        "a plan that misses targets says so: {}",
        plan.stderr
    );
    let report = plan.json();
    let problems: BTreeMap<String, String> = report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| {
            Some((
                format!("{} {}", t["account"].as_str()?, t["region"].as_str()?),
                t["problem"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(
        problems.keys().cloned().collect::<Vec<_>>(),
        [
            format!("{B} {WEST}"),
            format!("{B} {REGION}"),
            format!("{C} {WEST}"),
            format!("{C} {REGION}")
        ],
        "{report}"
    );
    for p in problems.values() {
        assert!(
            p.contains("sts:AssumeRole") || p.contains("cannot assume"),
            "{p}"
        );
    }
    assert!(problems[&format!("{B} {REGION}")].contains(&role_arn(B)));
    assert_eq!(report["targets"].as_array().map(Vec::len), Some(6));

    let run = run_binary(&url, &["reconcile", "--config", cfg.as_str()], &[]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains(&format!("UNREACHABLE target {B} {REGION}"))
            && run.stdout.contains(&role_arn(B)),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("grant") || run.stdout.contains("trust"),
        "says what to grant: {}",
        run.stdout
    );
    // A's dependants rolled, in both regions; B's, behind the refused role, did not.
    let a_only = expected(&[(A, REGION, "a-east-uses"), (A, WEST, "a-west-uses")]);
    assert_eq!(world.rolled().await, a_only);

    // serve says so too: a metric per target, and outcome events naming account and region
    // (caught from the operator's default bus by a rule into a queue).
    let aws = Aws::connect(&url).await;
    let outcomes = aws.outcome_queue().await;
    world.rotate().await;
    let serve = Serve::start(
        &url,
        &["--config", cfg.as_str()],
        &[("ECS_RELOADER_NOTIFY_EVENT_BUS", "default")],
    );
    serve.ready().await;
    wait_for(
        "serve's first pass to report every target",
        Duration::from_secs(60),
        || async {
            let Some((_, m)) = serve.get("/metrics").await else {
                return false;
            };
            [B, C].iter().all(|a| {
                [REGION, WEST].iter().all(|r| {
                    sample(
                        &m,
                        "ecs_reloader_target_up",
                        &[("account", a), ("region", r)],
                    ) == Some(0.0)
                })
            }) && [REGION, WEST].iter().all(|r| {
                sample(
                    &m,
                    "ecs_reloader_target_up",
                    &[("account", A), ("region", r)],
                ) == Some(1.0)
            })
        },
    )
    .await;
    let (_, metrics) = serve.get("/metrics").await.expect("metrics");
    assert!(
        sample(
            &metrics,
            "ecs_reloader_target_failures_total",
            &[("account", C), ("region", WEST)]
        ) >= Some(1.0),
        "{metrics}"
    );
    let seen = Seen::default();
    outcome_events(&aws, &outcomes, &seen, |seen| {
        has(seen, "Target Unreachable", B, REGION)
            && has(seen, "Target Unreachable", C, WEST)
            && has(seen, "Rollout Started", A, REGION)
            && has(seen, "Rollout Started", A, WEST)
    })
    .await;
    let seen = seen.lock().expect("lock").clone();
    assert!(
        !seen.iter().any(|s| s.0 == "Rollout Started" && s.1 != A),
        "only A's services roll: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_routes_an_event_from_the_secrets_account_to_every_target() {
    use support::lambda_api::{Answer, RuntimeApi};
    let emu = Emulator::start();
    let url = emu.url();
    target_role(&url, A, EXTERNAL_ID);
    target_role(&url, B, EXTERNAL_ID);
    // And C, whose role refuses the operator: reported, and the others go on.
    target_role(&url, C, "not-what-we-send");
    let world = World::build(&url, &[A, B]).await;
    let cfg = config(&[(A, EXTERNAL_ID), (B, EXTERNAL_ID), (C, EXTERNAL_ID)], "");
    let aws = Aws::connect(&url).await;
    let outcomes = aws.outcome_queue().await;
    let api = RuntimeApi::start().await;
    let log_path = std::env::temp_dir().join(format!(
        "ecs-reloader-accounts-emf-{}.log",
        std::process::id()
    ));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = support::start_bootstrap_to(
        &url,
        &api,
        &[
            ("ECS_RELOADER_CONFIG", cfg.as_str()),
            ("ECS_RELOADER_NOTIFY_EVENT_BUS", "default"),
        ],
        log.into(),
    );
    world.rotate().await;
    // Delivered to the function directly, as EventBridge does: from account A, by name only.
    let event = serde_json::json!({
        "version": "0", "id": "e-2", "source": "aws.secretsmanager",
        "detail-type": "Secret Label Updated", "account": A, "region": REGION,
        "time": chrono::Utc::now().to_rfc3339(), "resources": [],
        "detail": {"name": "app/db", "labelUpdated": "AWSCURRENT"}
    });
    for round in 0..2 {
        match api
            .answer(&api.invoke(&event), Duration::from_secs(60))
            .await
        {
            Answer::Response(_) => {}
            Answer::Error(e) => panic!("invocation {round} failed: {e}"),
        }
        // Rolled once, in both accounts and regions; the same event again rolls nothing more.
        assert_eq!(world.rolled().await, expected(&DEPENDANTS), "round {round}");
    }
    let after: Vec<String> = {
        let mut v = Vec::new();
        for (a, r, n) in DEPENDANTS {
            v.push(world.clients[&(a, r)].deployment_id("prod", n).await);
        }
        v
    };
    // A later event of that change (a copy of an event a pass already decided needs no pass of
    // its own: this one is dated anew, so that it is decided again).
    let mut later = event.clone();
    later["time"] = serde_json::json!(chrono::Utc::now().to_rfc3339());
    match api
        .answer(&api.invoke(&later), Duration::from_secs(60))
        .await
    {
        Answer::Response(_) => {}
        Answer::Error(e) => panic!("invocation failed: {e}"),
    }
    for ((a, r, n), before) in DEPENDANTS.iter().zip(&after) {
        assert_eq!(
            &world.clients[&(*a, *r)].deployment_id("prod", n).await,
            before,
            "{a} {r} {n} rolled twice"
        );
    }
    // Outcome events name account and region, C's unreachability included.
    let seen = Seen::default();
    outcome_events(&aws, &outcomes, &seen, |seen| {
        DEPENDANTS
            .iter()
            .all(|(a, r, _)| has(seen, "Rollout Started", a, r))
            && has(seen, "Target Unreachable", C, REGION)
            && has(seen, "Target Unreachable", C, WEST)
    })
    .await;
    // The metric documents count C's missed passes, and each target's rollouts.
    let _ = child.start_kill();
    let _ = child.wait().await;
    let text = std::fs::read_to_string(&log_path).expect("stdout");
    let _ = std::fs::remove_file(&log_path);
    let docs: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let sum = |metric: &str, account: &str, region: &str| -> f64 {
        docs.iter()
            .filter(|d| d["account"] == account && d["region"] == region)
            .filter_map(|d| d[metric].as_f64())
            .sum()
    };
    assert!(
        sum("target_failures", C, WEST) >= 2.0,
        "two passes at least (the first event and the later one; the copy between may be one a pass already owned): {text}"
    );
    for (a, r, _) in DEPENDANTS {
        assert_eq!(
            sum("target_rollouts", a, r),
            2.0,
            "started and succeeded: {text}"
        );
    }
}
