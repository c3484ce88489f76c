//! Reliability of `serve` against odd deliveries: ten duplicates, events out of order and late,
//! events for secrets that do not exist, and every way an event may name a secret. The real
//! binary against the emulator; each case must roll exactly the right services exactly once.

mod support;

use std::time::Duration;

use support::proxy::Proxy;
use support::{wait_for, Aws, Emulator, Serve};

/// A `PutSecretValue` call as CloudTrail records it, dated now: an event's time is when its
/// change happened (a copy of a change that a pass begun later has decided needs no pass).
fn api_call(secret_id: &str, arn: Option<&str>) -> String {
    let response = match arn {
        Some(a) => serde_json::json!({ "arn": a }),
        None => serde_json::Value::Null,
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    serde_json::json!({
        "version": "0", "id": "r", "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
        "time": now, "region": "us-east-1", "resources": [],
        "detail": {"eventName": "PutSecretValue", "eventSource": "secretsmanager.amazonaws.com",
                   "requestParameters": {"secretId": secret_id}, "responseElements": response}
    })
    .to_string()
}

fn rotation(arn: &str, time: &str) -> String {
    serde_json::json!({
        "version": "0", "id": "r", "detail-type": "AWS Service Event via CloudTrail", "source": "aws.secretsmanager",
        "time": time, "region": "us-east-1", "resources": [],
        "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": arn}}
    })
    .to_string()
}

struct Bench {
    serve: Serve,
    aws: Aws,
    proxy: Proxy,
    queue: String,
}

impl Bench {
    fn count(&self, service: &str) -> usize {
        self.proxy
            .updated_services()
            .iter()
            .filter(|s| *s == service)
            .count()
    }

    /// Sends the bodies, waits for the queue to drain, and checks the rollouts so far.
    async fn deliver(&self, bodies: &[String], expect: &[(&str, usize)]) {
        for b in bodies {
            self.aws.send(&self.queue, b).await;
        }
        for (svc, n) in expect {
            wait_for(
                &format!("{svc} rolled {n}x"),
                Duration::from_secs(60),
                || async { self.count(svc) >= *n },
            )
            .await;
        }
        wait_for("the queue to drain", Duration::from_secs(60), || async {
            self.aws.queue_total(&self.queue).await == 0
        })
        .await;
        self.serve.idle().await;
        for (svc, n) in expect {
            assert_eq!(
                self.count(svc),
                *n,
                "{svc}: {:?}",
                self.proxy.updated_services()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_deliveries_roll_exactly_the_right_services_once() {
    let emu = Emulator::start();
    let proxy = Proxy::start(emu.port).await;
    let aws = Aws::connect(&emu.url()).await;
    // A secret whose custom label `blue` sits on its newer version.
    let (staged, first) = aws.secret("app/staged").await;
    let second = aws.rotate("app/staged").await;
    aws.move_stage("app/staged", "blue", &second).await;
    let arns = aws
        .one_secret_world(
            &["app/db", "app/db-replica"],
            "prod",
            &[("db", 0), ("replica", 1)],
        )
        .await;
    let db = arns[0].clone();
    let td_blue = aws.task_def_for("blue", &format!("{staged}::blue:")).await;
    aws.service("prod", "pinned-blue", &td_blue, &[]).await;
    let (queue, _, _) = aws.queue_with_dlq("odd", 5, 3).await;
    let serve = Serve::start(
        &proxy.url(),
        &["--queue-url", &queue],
        &[("ECS_RELOADER_RESYNC_INTERVAL", "1h")],
    );
    serve.ready().await;
    let b = Bench {
        serve,
        aws,
        proxy,
        queue,
    };

    // Ten duplicates of one rotation: one rollout.
    b.aws.rotate("app/db").await;
    let ten: Vec<String> = (0..10)
        .map(|_| rotation(&db, "2026-11-22T10:00:00Z"))
        .collect();
    b.deliver(&ten, &[("prod/db", 1), ("prod/replica", 0)])
        .await;

    // Late and out of order: an older event arriving after the newer one was handled changes
    // nothing; state, not the event, decides.
    b.deliver(
        &[
            rotation(&db, "2026-11-22T09:00:00Z"),
            rotation(&db, "2026-11-22T08:00:00Z"),
        ],
        &[("prod/db", 1)],
    )
    .await;

    // Events for secrets that do not exist (deleted, or never were): deleted, nothing rolls.
    let ghost = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ghost-AbCdEf";
    b.deliver(
        &[
            rotation(ghost, "2026-11-22T10:00:00Z"),
            api_call("never/was", None),
        ],
        &[("prod/db", 1)],
    )
    .await;
    assert_eq!(
        b.aws.queue_total(&b.queue).await,
        0,
        "well-formed events for unknown secrets are not poison"
    );

    // A custom label moved back to an older version: the metadata cannot date that, the event
    // can; the service pinned to the label rolls once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    b.aws.move_stage("app/staged", "blue", &first).await;
    let moved = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let label_event = serde_json::json!({
        "version": "0", "id": "l", "detail-type": "Secret Label Updated", "source": "aws.secretsmanager",
        "time": moved, "region": "us-east-1", "resources": [staged],
        "detail": {"name": "app/staged", "labelUpdated": "blue", "versionId": first}
    })
    .to_string();
    b.deliver(
        std::slice::from_ref(&label_event),
        &[("prod/pinned-blue", 1)],
    )
    .await;
    // The same event again, late: nothing more.
    b.deliver(&[label_event], &[("prod/pinned-blue", 1)]).await;

    // The secret named by name, by partial ARN, and by full ARN: each rotation rolls once.
    let partial = db
        .rsplit_once('-')
        .map(|(p, _)| p.to_string())
        .expect("suffix");
    let mut expected = 1;
    for named_as in ["app/db", partial.as_str(), db.as_str()] {
        b.aws.rotate("app/db").await;
        expected += 1;
        b.deliver(
            &[api_call(named_as, None)],
            &[("prod/db", expected), ("prod/replica", 0)],
        )
        .await;
    }
}
