//! Lambda figures: init time (process start to the first `invocation/next`) and warm
//! invocations, against the Lambda Runtime API emulator and the AWS emulator.
//!
//! `cargo bench --bench lambda` (needs `moto[server]`, see tests/emulator/requirements.txt).
//! Prints medians over several runs; not a test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::lambda_api::{Answer, RuntimeApi};
use support::{start_bootstrap, Aws, Emulator, Refs};

const SERVICES: usize = 50;
const INIT_RUNS: usize = 7;
const WARM_RUNS: usize = 9;
/// Pause between warm invocations, so that the client-side read bucket (10/s) is full again,
/// as it is between real events; back-to-back figures are printed separately.
const PAUSE: Duration = Duration::from_millis(2500);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let emu = Emulator::start();
    let aws = Aws::connect(&emu.url()).await;
    let (db, _) = aws.secret("app/db").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.cluster("prod").await;
    let refs: &'static [&'static str] =
        Box::leak(vec![&*Box::leak(db.clone().into_boxed_str())].into_boxed_slice());
    let td = aws
        .task_def(
            "db",
            Refs {
                secrets: refs,
                ..Default::default()
            },
        )
        .await;
    for i in 0..SERVICES {
        aws.service("prod", &format!("svc-{i:03}"), &td, &[]).await;
    }
    let schedule: Value =
        serde_json::from_str(include_str!("../tests/fixtures/events/scheduled.json"))
            .expect("fixture");
    let mut event: Value = serde_json::from_str(include_str!(
        "../tests/fixtures/events/rotation_succeeded.json"
    ))
    .expect("fixture");
    event["detail"]["additionalEventData"]["SecretId"] = json!(db);
    // The emulator's default account, the operator's own: another account's event is dropped.
    event["account"] = json!(support::ACCOUNT);
    event["detail"]["recipientAccountId"] = json!(support::ACCOUNT);

    let mut inits = Vec::new();
    for _ in 0..INIT_RUNS {
        let api = RuntimeApi::start().await;
        let started = Instant::now();
        let mut child = start_bootstrap(&emu.url(), &api, &[]);
        while api.first_next().is_none() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        inits.push(api.first_next().expect("asked") - started);
        let _ = child.start_kill();
        let _ = child.wait().await;
    }

    let api = RuntimeApi::start().await;
    let _child = start_bootstrap(&emu.url(), &api, &[]);
    let mut first = None;
    let mut resyncs = Vec::new();
    let mut events = Vec::new();
    for i in 0..=WARM_RUNS {
        tokio::time::sleep(PAUSE).await;
        let t = Instant::now();
        let id = api.invoke(&schedule);
        assert!(matches!(
            api.answer(&id, Duration::from_secs(60)).await,
            Answer::Response(_)
        ));
        if i == 0 {
            first = Some(t.elapsed());
        } else {
            resyncs.push(t.elapsed());
        }
        tokio::time::sleep(PAUSE).await;
        let t = Instant::now();
        let id = api.invoke(&event);
        assert!(matches!(
            api.answer(&id, Duration::from_secs(60)).await,
            Answer::Response(_)
        ));
        events.push(t.elapsed());
    }

    let mut back_to_back = Vec::new();
    for _ in 0..WARM_RUNS {
        let t = Instant::now();
        let id = api.invoke(&schedule);
        assert!(matches!(
            api.answer(&id, Duration::from_secs(60)).await,
            Answer::Response(_)
        ));
        back_to_back.push(t.elapsed());
    }

    println!("Lambda figures ({SERVICES} services sharing one secret, moto on loopback, debug or bench profile as built)");
    println!(
        "  init (process start -> first invocation/next), median of {INIT_RUNS}: {}",
        ms(median(inits))
    );
    println!(
        "  first invocation (cold cache, full resync): {}",
        ms(first.expect("ran"))
    );
    println!(
        "  warm full resync invocation, median of {WARM_RUNS}: {}",
        ms(median(resyncs))
    );
    println!(
        "  warm change-event invocation (nothing stale), median of {}: {}",
        WARM_RUNS + 1,
        ms(median(events))
    );
    println!(
        "  warm full resyncs back to back (paced by the 10/s client-side read bucket), median of {WARM_RUNS}: {}",
        ms(median(back_to_back))
    );
}
