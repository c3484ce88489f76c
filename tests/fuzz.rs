//! Fuzzing of the two parsers that take outside input, with large case counts: no input makes
//! them panic; every input is either parsed or rejected with an error. The CI runs 20,000 cases
//! each; `cargo test --release --test fuzz -- --ignored` runs 500,000.

use ecs_reloader::event;
use ecs_reloader::reference::{parse_declared, parse_tag_value, parse_value_from};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,300}",
        "arn(:[A-Za-z0-9/_+=.@-]{0,20}){0,10}",
        "[{}\\[\\]\":,a-zA-Z0-9 .-]{0,200}",
    ]
}

fn event_like() -> impl Strategy<Value = String> {
    let source = prop_oneof![
        Just("aws.secretsmanager".to_string()),
        Just("aws.ssm".to_string()),
        Just("aws.events".to_string()),
        "[a-z.]{0,12}"
    ];
    let dt = prop_oneof![
        Just("Secret Label Updated".to_string()),
        Just("AWS API Call via CloudTrail".to_string()),
        Just("AWS Service Event via CloudTrail".to_string()),
        Just("Parameter Store Change".to_string()),
        Just("Scheduled Event".to_string()),
        "\\PC{0,20}",
    ];
    let value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,40}".prop_map(serde_json::Value::from),
        proptest::collection::vec("\\PC{0,10}", 0..3).prop_map(|v| serde_json::json!(v)),
    ];
    let keys = prop_oneof![
        Just("eventName".to_string()),
        Just("name".to_string()),
        Just("labelUpdated".to_string()),
        Just("operation".to_string()),
        Just("errorCode".to_string()),
        Just("additionalEventData".to_string()),
        Just("requestParameters".to_string()),
        Just("responseElements".to_string()),
        Just("secretId".to_string()),
        Just("SecretId".to_string()),
    ];
    (
        source,
        dt,
        proptest::collection::btree_map(keys, value, 0..6),
        proptest::option::of("\\PC{0,30}"),
    )
        .prop_map(|(s, d, detail, time)| {
            let mut v = serde_json::json!({"source": s, "detail-type": d, "detail": detail});
            if let Some(t) = time {
                v["time"] = serde_json::Value::from(t);
            }
            v.to_string()
        })
}

fn run(cases: u32) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&arbitrary_text(), |s| {
            let _ = parse_value_from(&s);
            let _ = parse_declared(&s);
            let _ = parse_tag_value(&s);
            let _ = event::parse(&s);
            Ok(())
        })
        .expect("no panic on arbitrary text");
    runner
        .run(&event_like(), |s| {
            // Parsed or rejected, never a panic; a rejection always says something.
            if let Err(e) = event::parse(&s) {
                prop_assert!(!e.to_string().is_empty());
            }
            Ok(())
        })
        .expect("no panic on event-shaped input");
}

#[test]
fn parsers_survive_twenty_thousand_cases_each() {
    run(20_000);
}

#[test]
#[ignore = "long: 500,000 cases; run with --release -- --ignored"]
fn parsers_survive_half_a_million_cases_each() {
    run(500_000);
}
