use super::*;
use crate::aws::{Deployment, ParameterVersion};
use crate::reference::{parse_value_from, Site};
use chrono::TimeZone;
use proptest::prelude::*;

const ARN: &str = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/db-AbCdEf";

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0)
        .single()
        .expect("valid time")
}

fn t_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + ms)
        .single()
        .expect("valid time")
}

fn service(deployed: DateTime<Utc>) -> Service {
    Service {
        arn: "arn:aws:ecs:eu-west-1:111122223333:service/prod/api".into(),
        name: "api".into(),
        cluster_arn: "arn:aws:ecs:eu-west-1:111122223333:cluster/prod".into(),
        status: "ACTIVE".into(),
        task_definition: "arn:aws:ecs:eu-west-1:111122223333:task-definition/api:1".into(),
        desired_count: 2,
        controller: Controller::Ecs,
        deployments: vec![Deployment {
            id: "ecs-svc/1".into(),
            status: "PRIMARY".into(),
            task_definition: "arn:aws:ecs:eu-west-1:111122223333:task-definition/api:1".into(),
            created_at: deployed,
            rollout_state: Some("COMPLETED".into()),
            rollout_state_reason: None,
            desired_count: 2,
            running_count: 2,
            failed_tasks: 0,
        }],
        tags: Default::default(),
    }
}

/// A secret's history: (version id, created, stages), and when it last changed.
struct Secret {
    versions: Vec<(&'static str, DateTime<Utc>, Vec<&'static str>)>,
    last_changed: DateTime<Utc>,
}

impl Secret {
    fn created_once(at: DateTime<Utc>) -> Self {
        Secret {
            versions: vec![("v1", at, vec![AWSCURRENT])],
            last_changed: at,
        }
    }

    /// `PutSecretValue` at `at`: a new current version, the old one becomes previous.
    fn put(mut self, id: &'static str, at: DateTime<Utc>) -> Self {
        for v in &mut self.versions {
            v.2.retain(|s| *s != AWSPREVIOUS);
            if let Some(pos) = v.2.iter().position(|s| *s == AWSCURRENT) {
                v.2[pos] = AWSPREVIOUS;
            }
        }
        self.versions.push((id, at, vec![AWSCURRENT]));
        self.last_changed = at;
        self
    }

    fn move_stage(mut self, stage: &'static str, to: &'static str, at: DateTime<Utc>) -> Self {
        for v in &mut self.versions {
            v.2.retain(|s| *s != stage);
            if v.0 == to {
                v.2.push(stage);
            }
        }
        self.last_changed = at;
        self
    }

    fn state(&self) -> RefState {
        let mut stages = BTreeMap::new();
        let mut created = BTreeMap::new();
        for (id, at, st) in &self.versions {
            created.insert(id.to_string(), *at);
            for s in st {
                stages.insert(s.to_string(), id.to_string());
            }
        }
        RefState::SecretsManager(SmState {
            id: SecretsManagerId::new(ARN, "app/db").expect("valid"),
            last_changed: Some(self.last_changed),
            stages,
            created,
            label_moves: BTreeMap::new(),
        })
    }
}

fn resolved(value_from: &str, state: RefState) -> ResolvedRef {
    ResolvedRef {
        site: Site::Secret {
            container: "app".into(),
            name: "DB".into(),
        },
        text: value_from.into(),
        reference: parse_value_from(value_from).map_err(|e| e.to_string()),
        state: Ok(state),
    }
}

fn decide_at(svc: &Service, refs: &[ResolvedRef], now: DateTime<Utc>) -> Decision {
    decide(svc, refs, now, &Policy::default())
}

#[test]
fn first_run_on_an_account_already_in_sync_rolls_nothing() {
    let secret = Secret::created_once(t(0)).put("v2", t(100));
    let svc = service(t(200));
    assert_eq!(
        decide_at(&svc, &[resolved(ARN, secret.state())], t(1000)),
        Decision::InSync
    );
}

#[test]
fn a_rotation_after_the_deployment_makes_it_stale_and_the_rollout_makes_it_fresh() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let refs = [resolved(ARN, secret.state())];
    let d = decide_at(&service(t(200)), &refs, t(1000));
    assert!(d.is_stale(), "{d:?}");
    // Our rollout happens at t(1000): a second run must not roll again.
    assert_eq!(
        decide_at(&service(t(1000)), &refs, t(1001)),
        Decision::InSync
    );
}

#[test]
fn json_key_references_follow_the_secret() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let d = decide_at(
        &service(t(200)),
        &[resolved(&format!("{ARN}:password::"), secret.state())],
        t(1000),
    );
    assert!(d.is_stale(), "{d:?}");
}

#[test]
fn a_pinned_version_id_never_rolls() {
    let secret = Secret::created_once(t(0))
        .put("v2", t(300))
        .put("v3", t(400));
    let refs = [resolved(&format!("{ARN}:::v1"), secret.state())];
    assert_eq!(
        decide_at(&service(t(200)), &refs, t(1000)),
        Decision::Pinned
    );
}

#[test]
fn a_pinned_stage_rolls_only_when_that_stage_moves() {
    let secret = Secret::created_once(t(0)).move_stage("blue", "v1", t(10));
    let refs = |s: &Secret| [resolved(&format!("{ARN}::blue:"), s.state())];
    let svc = service(t(200));

    // AWSCURRENT rotates after the deployment: the blue-pinned service does not care.
    let rotated = secret.put("v2", t(300));
    assert_eq!(decide_at(&svc, &refs(&rotated), t(1000)), Decision::InSync);

    // blue moves to the new version: now it does.
    let moved = rotated.move_stage("blue", "v2", t(400));
    assert!(decide_at(&svc, &refs(&moved), t(1000)).is_stale());
}

#[test]
fn awsprevious_moves_on_every_rotation() {
    let secret = Secret::created_once(t(0))
        .put("v2", t(100))
        .put("v3", t(300));
    let refs = [resolved(&format!("{ARN}::AWSPREVIOUS:"), secret.state())];
    assert!(decide_at(&service(t(200)), &refs, t(1000)).is_stale());
}

#[test]
fn a_deployment_between_a_rotations_two_moments_is_stale() {
    // v2 created as AWSPENDING at 100, deployment at 200, promotion at 300.
    let mut secret = Secret::created_once(t(0));
    secret.versions.push(("v2", t(100), vec![AWSPENDING]));
    secret.last_changed = t(100);
    let secret = secret.move_stage(AWSCURRENT, "v2", t(300));
    let d = decide_at(&service(t(200)), &[resolved(ARN, secret.state())], t(1000));
    assert!(
        d.is_stale(),
        "promotion after the deployment must roll: {d:?}"
    );
}

#[test]
fn a_rotation_in_progress_holds_the_rollout_until_promotion() {
    let mut secret = Secret::created_once(t(0)).put("v2", t(300));
    secret.versions.push(("v3", t(500), vec![AWSPENDING]));
    secret.last_changed = t(500);
    let refs = [resolved(ARN, secret.state())];
    match decide_at(&service(t(200)), &refs, t(520)) {
        Decision::Settling {
            until, findings, ..
        } => {
            assert_eq!(until, Some(t(500 + 600)));
            assert_eq!(findings.len(), 1);
        }
        other => panic!("expected settling, got {other:?}"),
    }
    // A rotation that never finished stops holding the service back after the grace.
    assert!(decide_at(&service(t(200)), &refs, t(500 + 601)).is_stale());
}

#[test]
fn two_rotated_secrets_give_one_decision_with_two_findings() {
    let a = Secret::created_once(t(0)).put("v2", t(300));
    let b = RefState::Parameter(SsmState {
        region: "eu-west-1".into(),
        name: "/app/key".into(),
        last_modified: Some(t(310)),
        version: 4,
        history: None,
    });
    let refs = [resolved(ARN, a.state()), resolved("/app/key", b)];
    match decide_at(&service(t(200)), &refs, t(1000)) {
        Decision::Stale { findings } => assert_eq!(findings.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn whole_second_dates_count_ties_as_stale_and_settle_until_unambiguous() {
    // Version created at 100.000 (really anywhere in 100.000–100.999); deployment at 100.400.
    let secret = Secret::created_once(t(0)).put("v2", t(100));
    let refs = [resolved(ARN, secret.state())];
    assert!(decide_at(&service(t_ms(100_400)), &refs, t(1000)).is_stale());
    // Deployed at 101.000: certainly after.
    assert_eq!(
        decide_at(&service(t(101)), &refs, t(1000)),
        Decision::InSync
    );
    // Deciding at 100.500: a rollout now could land in the same second; wait until 102 (1 s skew).
    match decide_at(&service(t(50)), &refs, t_ms(100_500)) {
        Decision::Settling { until, .. } => assert_eq!(until, Some(t(102))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn opted_out_services_report_what_they_would_roll_for() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let mut svc = service(t(200));
    svc.tags.insert(TAG_ENABLED.into(), "False".into());
    match decide_at(&svc, &[resolved(ARN, secret.state())], t(1000)) {
        Decision::OptedOut { findings } => assert_eq!(findings.len(), 1),
        other => panic!("{other:?}"),
    }
    svc.tags.insert(TAG_ENABLED.into(), "true".into());
    assert!(decide_at(&svc, &[resolved(ARN, secret.state())], t(1000)).is_stale());
}

#[test]
fn unresolvable_references_block_the_rollout() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let missing_stage = resolved(&format!("{ARN}::green:"), secret.state());
    let mut deleted = resolved(ARN, secret.state());
    deleted.state = Err("ResourceNotFoundException".into());
    let mut bad = resolved(ARN, secret.state());
    bad.reference = Err("malformed".into());
    for r in [missing_stage, deleted, bad] {
        let refs = [resolved(ARN, secret.state()), r];
        assert!(matches!(
            decide_at(&service(t(200)), &refs, t(1000)),
            Decision::Unknown { .. }
        ));
    }
}

#[test]
fn deployments_in_progress_are_not_stacked() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let refs = [resolved(ARN, secret.state())];
    let mut svc = service(t(200));
    svc.deployments[0].rollout_state = Some("IN_PROGRESS".into());
    assert!(matches!(
        decide_at(&svc, &refs, t(1000)),
        Decision::Settling { until: None, .. }
    ));
    // An in-progress deployment created after the change is already fresh.
    let mut svc = service(t(400));
    svc.deployments[0].rollout_state = Some("IN_PROGRESS".into());
    assert_eq!(decide_at(&svc, &refs, t(1000)), Decision::InSync);
}

#[test]
fn services_that_cannot_or_need_not_roll_are_skipped() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let refs = [resolved(ARN, secret.state())];
    let mut svc = service(t(200));
    svc.controller = Controller::CodeDeploy;
    assert!(matches!(
        decide_at(&svc, &refs, t(1000)),
        Decision::Skipped { .. }
    ));
    let mut svc = service(t(200));
    svc.desired_count = 0;
    assert!(matches!(
        decide_at(&svc, &refs, t(1000)),
        Decision::Skipped { .. }
    ));
    let mut svc = service(t(200));
    svc.status = "DRAINING".into();
    assert!(matches!(
        decide_at(&svc, &refs, t(1000)),
        Decision::Skipped { .. }
    ));
}

#[test]
fn ssm_latest_pinned_and_label() {
    let history = vec![
        ParameterVersion {
            version: 1,
            last_modified: Some(t(0)),
            labels: vec!["prod".into()],
        },
        ParameterVersion {
            version: 2,
            last_modified: Some(t(300)),
            labels: vec![],
        },
    ];
    let state = RefState::Parameter(SsmState {
        region: "eu-west-1".into(),
        name: "/app/key".into(),
        last_modified: Some(t(300)),
        version: 2,
        history: Some(history),
    });
    let svc = service(t(200));
    assert!(decide_at(&svc, &[resolved("/app/key", state.clone())], t(1000)).is_stale());
    assert!(decide_at(&svc, &[resolved("app/key", state.clone())], t(1000)).is_stale());
    assert_eq!(
        decide_at(&svc, &[resolved("/app/key:1", state.clone())], t(1000)),
        Decision::Pinned
    );
    assert_eq!(
        decide_at(&svc, &[resolved("/app/key:prod", state)], t(1000)),
        Decision::InSync
    );
}

proptest! {
    /// Whatever the secret's history, a service found stale and rolled at that moment is in sync
    /// afterwards: no reload loop.
    #[test]
    fn a_rollout_when_stale_is_never_stale_again(
        puts in proptest::collection::vec(0i64..5_000, 1..6),
        deployed in 0i64..6_000,
        after in 0i64..10_000,
    ) {
        let mut sorted = puts.clone();
        sorted.sort();
        let ids = ["v2", "v3", "v4", "v5", "v6"];
        let mut secret = Secret::created_once(t_ms(0));
        for (i, p) in sorted.iter().enumerate() {
            secret = secret.put(ids[i], t_ms(*p));
        }
        let refs = [resolved(ARN, secret.state())];
        let now = t_ms(sorted[sorted.len() - 1] + after);
        if decide_at(&service(t_ms(deployed)), &refs, now).is_stale() {
            prop_assert_eq!(decide_at(&service(now), &refs, now), Decision::InSync);
        }
    }

    /// An older deployment is never fresher than a newer one.
    #[test]
    fn staleness_is_monotonic_in_the_deployment_time(
        put in 0i64..5_000, d1 in 0i64..6_000, d2 in 0i64..6_000, stage in 0usize..3,
    ) {
        let (lo, hi) = (d1.min(d2), d1.max(d2));
        let secret = Secret::created_once(t_ms(0)).move_stage("blue", "v1", t_ms(0)).put("v2", t_ms(put));
        let suffix = ["", "::AWSPREVIOUS:", "::blue:"][stage];
        let refs = [resolved(&format!("{ARN}{suffix}"), secret.state())];
        let now = t_ms(100_000);
        if decide_at(&service(t_ms(hi)), &refs, now).is_stale() {
            prop_assert!(decide_at(&service(t_ms(lo)), &refs, now).is_stale());
        }
    }
}

#[test]
fn a_failed_rollout_for_a_change_holds_the_other_dependents() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let refs = [resolved(ARN, secret.state())];
    let id = refs[0].state.as_ref().map(|s| s.identity()).expect("state");
    let mut broken = service(t(400));
    broken.name = "canary".into();
    broken.deployments[0].rollout_state = Some("FAILED".into());
    let other = service(t(200));
    let d_broken = decide_at(&broken, &refs, t(1000));
    let d_other = decide_at(&other, &refs, t(1000));
    assert!(d_other.is_stale());
    let mut items = vec![
        (&broken, vec![(id.clone(), Some(t(300)))], d_broken),
        (&other, vec![(id.clone(), Some(t(300)))], d_other),
    ];
    hold_failed(&mut items, t(1000), Duration::from_secs(900), 3);
    assert!(
        matches!(&items[1].2, Decision::Held { reason, .. } if reason.contains("prod/canary")),
        "{:?}",
        items[1].2
    );

    // A failure older than the change does not hold: the new change deserves a new attempt.
    let mut old_failure = broken.clone();
    old_failure.deployments[0].created_at = t(250);
    let mut items = vec![
        (
            &old_failure,
            vec![(id.clone(), Some(t(300)))],
            Decision::InSync,
        ),
        (
            &other,
            vec![(id.clone(), Some(t(300)))],
            decide_at(&other, &refs, t(1000)),
        ),
    ];
    hold_failed(&mut items, t(1000), Duration::from_secs(900), 3);
    assert!(items[1].2.is_stale());
}

#[test]
fn a_stuck_rollout_counts_as_failed_after_the_timeout() {
    let mut svc = service(t(0));
    svc.deployments[0].rollout_state = Some("IN_PROGRESS".into());
    assert!(failed_rollout(&svc, t(100), Duration::from_secs(900), 3).is_none());
    assert!(failed_rollout(&svc, t(1000), Duration::from_secs(900), 3).is_some());
    svc.deployments[0].failed_tasks = 3;
    assert!(failed_rollout(&svc, t(100), Duration::from_secs(900), 3).is_some());
}

#[test]
fn without_waiting_the_canary_goes_first_and_the_rest_once_it_is_healthy() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let refs = [resolved(ARN, secret.state())];
    let id = refs[0].state.as_ref().map(|s| s.identity()).expect("state");
    let named = |n: &str, deployed: i64| {
        let mut s = service(t(deployed));
        s.name = n.into();
        s
    };
    let (a, b, c) = (named("a", 200), named("b", 200), named("c", 200));
    type Item<'a> = (
        &'a Service,
        Vec<(SecretIdentity, Option<DateTime<Utc>>)>,
        Decision,
    );
    fn items<'a>(
        svcs: Vec<&'a Service>,
        id: &SecretIdentity,
        refs: &[ResolvedRef],
    ) -> Vec<Item<'a>> {
        svcs.into_iter()
            .map(|s| {
                (
                    s,
                    vec![(id.clone(), Some(t(300)))],
                    decide_at(s, refs, t(1000)),
                )
            })
            .collect()
    }
    // Nobody has rolled: only the first rolls.
    let mut first = items(vec![&a, &b, &c], &id, &refs);
    gate_canary(&mut first);
    let labels: Vec<&str> = first.iter().map(|i| i.2.label()).collect();
    assert_eq!(labels, ["stale", "settling", "settling"]);

    // The canary is rolling (its new deployment is already fresh): the others wait.
    let mut a_rolling = named("a", 1000);
    a_rolling.deployments[0].rollout_state = Some("IN_PROGRESS".into());
    let mut second = items(vec![&a_rolling, &b, &c], &id, &refs);
    gate_canary(&mut second);
    let labels: Vec<&str> = second.iter().map(|i| i.2.label()).collect();
    assert_eq!(labels, ["in_sync", "settling", "settling"]);

    // The canary is healthy: the rest roll.
    let a_done = named("a", 1000);
    let mut third = items(vec![&a_done, &b, &c], &id, &refs);
    gate_canary(&mut third);
    let labels: Vec<&str> = third.iter().map(|i| i.2.label()).collect();
    assert_eq!(labels, ["in_sync", "stale", "stale"]);
}

#[test]
fn an_event_dates_a_custom_label_moved_back() {
    // blue on v2 (created at 300) by 310; deployment at 400; blue moved back to v1 at 500.
    let secret = Secret::created_once(t(0))
        .put("v2", t(300))
        .move_stage("blue", "v2", t(310))
        .move_stage("blue", "v1", t(500));
    let r = resolved(&format!("{ARN}::blue:"), secret.state());
    assert_eq!(
        decide_at(&service(t(400)), std::slice::from_ref(&r), t(1000)),
        Decision::InSync,
        "the metadata alone cannot date the move"
    );
    let mut hinted = r;
    if let Ok(RefState::SecretsManager(s)) = &mut hinted.state {
        s.label_moves.insert("blue".into(), t(500));
    }
    assert!(decide_at(&service(t(400)), std::slice::from_ref(&hinted), t(1000)).is_stale());
    // After the rollout, the same (duplicate, late) event changes nothing.
    assert_eq!(
        decide_at(&service(t(1000)), &[hinted], t(1001)),
        Decision::InSync
    );
}
