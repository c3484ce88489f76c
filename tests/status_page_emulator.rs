//! `serve`'s status page (`GET /`) against the emulator, rendered by a real browser: headless
//! Chromium (Debian's `chromium`, which `scripts/test.sh` installs) loads the page of a `serve`
//! in a known state (one service rolled for a change a known role made, one pending approval)
//! and the test checks what it shows, and what the outcome events say of who changed what.

mod support;

use std::time::Duration;

use support::proxy::Proxy;
use support::{wait_for, Aws, Emulator, Serve};

const ROTATOR: &str = "arn:aws:sts::123456789012:assumed-role/rotator/lambda-7";

fn put_secret_value(arn: &str) -> String {
    serde_json::json!({
        "version": "0", "id": "evt-status-1", "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.secretsmanager", "account": support::ACCOUNT, "region": "us-east-1",
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "resources": [],
        "detail": {"eventName": "PutSecretValue", "userIdentity": {"type": "AssumedRole", "arn": ROTATOR},
                   "recipientAccountId": support::ACCOUNT,
                   "requestParameters": {"secretId": "app/db"}, "responseElements": {"arn": arn}}
    })
    .to_string()
}

/// Debian's Chromium, run as the workplace's probe runs it: headless, without the background
/// networking a closed network refuses, in an empty profile.
fn chromium(args: &[String]) -> std::process::Output {
    let profile = tempdir("chromium-profile");
    let mut all = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    all.extend_from_slice(args);
    std::process::Command::new("chromium")
        .args(&all)
        .output()
        .expect("chromium runs (Debian's `chromium`: scripts/test.sh installs it)")
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ecs-reloader-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_who_changed_what_and_what_needs_a_person() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    let (arn, _) = aws.secret("app/db").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.cluster("prod").await;
    let td = aws.task_def_for("db", &arn).await;
    aws.service("prod", "api", &td, &[]).await;
    aws.service(
        "prod",
        "billing",
        &td,
        &[("ecs-reloader/notify-only", "true")],
    )
    .await;
    let (queue, _, _) = aws.queue_with_dlq("status", 5, 3).await;
    let outcomes = aws.outcome_queue().await;
    let serve = Serve::start(
        &proxy.url(),
        &["--queue-url", &queue],
        &[
            ("ECS_RELOADER_RESYNC_INTERVAL", "1h"),
            ("ECS_RELOADER_NOTIFY_EVENT_BUS", "default"),
        ],
    );
    serve.ready().await;
    serve.idle().await;
    aws.rotate("app/db").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.send(&queue, &put_secret_value(&arn)).await;
    wait_for("api to roll", Duration::from_secs(60), || async {
        proxy.updated_services().iter().any(|s| s == "prod/api")
    })
    .await;
    wait_for("the queue to drain", Duration::from_secs(60), || async {
        aws.queue_total(&queue).await == 0
    })
    .await;
    serve.idle().await;

    // The outcome events say who made the change too.
    let mut started = None;
    for _ in 0..30 {
        let out = aws
            .sqs
            .receive_message()
            .queue_url(&outcomes)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        started = out
            .messages()
            .iter()
            .filter_map(|m| m.body())
            .find(|b| b.contains("Rollout Started") && b.contains("prod") && b.contains("\"api\""))
            .map(String::from)
            .or(started);
        if started.is_some() {
            break;
        }
    }
    let started = started.expect("a Rollout Started event for prod/api");
    assert!(
        started.contains(ROTATOR) && started.contains("evt-status-1"),
        "{started}"
    );

    // What the page says, as served.
    let (code, page) = serve.get("/").await.expect("GET /");
    assert_eq!(code, 200);
    for needle in [
        "<h2>Needs a person</h2>",
        "prod/billing",
        "pending",
        "ecs-reloader reconcile --service prod/billing",
        "<h2>Last rollouts</h2>",
        "prod/api",
        ROTATOR,
        "evt-status-1",
        "this replica (no lease: the only one)",
    ] {
        assert!(
            page.contains(needle),
            "{needle} is not on the page:\n{page}"
        );
    }

    // As a browser renders it: the DOM after loading, and a screenshot.
    let url = format!("http://127.0.0.1:{}/", serve.port);
    let dom = chromium(&["--dump-dom".into(), url.clone()]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    for needle in ["Needs a person", "prod/billing", ROTATOR, "Last rollouts"] {
        assert!(
            dom.contains(needle),
            "{needle} is not in the rendered page:\n{dom}"
        );
    }
    let shots = tempdir("status-page");
    let shot = shots.join("status-page.png");
    let out = chromium(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1280,900".into(),
        "--hide-scrollbars".into(),
        url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "{} bytes",
        png.len()
    );
    // KEEP_SCREENSHOT=path keeps it (the README's picture is made so).
    if let Some(keep) = std::env::var_os("KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("keep the screenshot");
    }
    let _ = std::fs::remove_dir_all(shots);
}
