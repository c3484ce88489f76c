use super::*;
use crate::aws::{Deployment, ParameterVersion};
use crate::reference::{parse_value_from, Home, ParameterId, Site};
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
        shape: Default::default(),
        deployments: vec![Deployment {
            id: "ecs-svc/1".into(),
            status: crate::aws::DeploymentStatus::Primary,
            task_definition: "arn:aws:ecs:eu-west-1:111122223333:task-definition/api:1".into(),
            created_at: deployed,
            rollout_state: Some(crate::aws::RolloutState::Completed),
            rollout_state_reason: None,
            desired_count: 2,
            running_count: 2,
            failed_tasks: 0,
        }],
        tags: Default::default(),
    }
}

/// A secret's history: (version id, created, stages), when it last changed, when a rotation
/// last completed, and the label moves events announced.
#[derive(Clone)]
struct Secret {
    versions: Vec<(&'static str, DateTime<Utc>, Vec<&'static str>)>,
    last_changed: DateTime<Utc>,
    last_rotated: Option<DateTime<Utc>>,
    events: BTreeMap<String, DateTime<Utc>>,
}

impl Secret {
    fn created_once(at: DateTime<Utc>) -> Self {
        Secret {
            versions: vec![("v1", at, vec![AWSCURRENT])],
            last_changed: at,
            last_rotated: None,
            events: BTreeMap::new(),
        }
    }

    fn holder(&self, stage: &str) -> Option<&'static str> {
        self.versions
            .iter()
            .find(|v| v.2.contains(&stage))
            .map(|v| v.0)
    }

    /// Moves `AWSCURRENT` to `to`, and `AWSPREVIOUS` to the old current, as Secrets Manager does.
    fn promote_to(&mut self, to: &'static str) {
        let old = self.holder(AWSCURRENT);
        if old == Some(to) {
            return;
        }
        for v in &mut self.versions {
            v.2.retain(|s| *s != AWSPREVIOUS && *s != AWSCURRENT);
            if Some(v.0) == old {
                v.2.push(AWSPREVIOUS);
            }
            if v.0 == to {
                v.2.push(AWSCURRENT);
            }
        }
    }

    /// `PutSecretValue` at `at`: a new current version, the old one becomes previous.
    fn put(mut self, id: &'static str, at: DateTime<Utc>) -> Self {
        self.versions.push((id, at, vec![]));
        self.promote_to(id);
        self.last_changed = at;
        self
    }

    /// A rotation's first step (or all a failed rotation does): a new `AWSPENDING` version.
    fn stage_pending(mut self, id: &'static str, at: DateTime<Utc>) -> Self {
        for v in &mut self.versions {
            v.2.retain(|s| *s != AWSPENDING);
        }
        self.versions.push((id, at, vec![AWSPENDING]));
        self.last_changed = at;
        self
    }

    /// A rotation's last step and its completion: `AWSCURRENT` moves to the pending version and
    /// `LastRotatedDate` is set.
    fn finish_rotation(mut self, at: DateTime<Utc>) -> Self {
        if let Some(p) = self.holder(AWSPENDING) {
            self.promote_to(p);
            for v in &mut self.versions {
                v.2.retain(|s| *s != AWSPENDING);
            }
        }
        self.last_changed = at;
        self.last_rotated = Some(at);
        self
    }

    /// `UpdateSecretVersionStage` of `AWSCURRENT` by hand: no rotation record.
    fn promote_by_hand(mut self, to: &'static str, at: DateTime<Utc>) -> Self {
        self.promote_to(to);
        self.last_changed = at;
        self
    }

    /// A description, tag, KMS key, schedule or replication edit.
    fn edit(mut self, at: DateTime<Utc>) -> Self {
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

    /// An event dated a move of `label` at `at`.
    fn event(mut self, label: &str, at: DateTime<Utc>) -> Self {
        self.events.insert(label.to_string(), at);
        self
    }

    fn sm_state(&self) -> SmState {
        let mut stages = BTreeMap::new();
        let mut created = BTreeMap::new();
        for (id, at, st) in &self.versions {
            created.insert(id.to_string(), *at);
            for s in st {
                stages.insert(s.to_string(), id.to_string());
            }
        }
        SmState {
            id: SecretsManagerId::new(ARN, "app/db").expect("valid"),
            last_changed: Some(self.last_changed),
            last_rotated: self.last_rotated,
            stages,
            created: Fetched::Done(created),
            label_moves: self.events.clone(),
        }
    }

    fn state(&self) -> RefState {
        RefState::SecretsManager(self.sm_state())
    }
}

fn resolved(value_from: &str, state: RefState) -> ResolvedRef {
    ResolvedRef {
        site: Site::Secret {
            container: "app".into(),
            name: "DB".into(),
        },
        text: value_from.into(),
        reference: parse_value_from(value_from),
        state: Ok(std::sync::Arc::new(state)),
    }
}

fn param(
    last_modified: DateTime<Utc>,
    version: i64,
    history: Fetched<Vec<ParameterVersion>>,
) -> SsmState {
    SsmState {
        id: ParameterId::own("eu-west-1", "/app/key", "eu-west-1"),
        last_modified: Some(last_modified),
        version,
        history,
        label_moves: BTreeMap::new(),
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
fn a_deployment_between_a_rotations_two_moments_is_rolled_once_after_the_promotion() {
    // v2 created as AWSPENDING at 100, deployment at 200, the rotation completes at 300.
    let before = Secret::created_once(t(0)).stage_pending("v2", t(100));
    let refs = |s: &Secret| [resolved(ARN, s.state())];
    // Between the two moments: nothing to roll yet (the value did not change).
    assert_eq!(
        decide_at(&service(t(200)), &refs(&before), t(250)),
        Decision::InSync
    );
    let rotated = before.finish_rotation(t(300));
    let d = decide_at(&service(t(200)), &refs(&rotated), t(1000));
    match &d {
        Decision::Stale { findings } => {
            assert!(findings[0].reason.contains("LastRotatedDate"), "{d:?}")
        }
        other => panic!("the promotion after the deployment must roll: {other:?}"),
    }
    // Rolled at 1000: never twice.
    assert_eq!(
        decide_at(&service(t(1000)), &refs(&rotated), t(5000)),
        Decision::InSync
    );
    // AWSPREVIOUS moved with it.
    let previous = [resolved(&format!("{ARN}::AWSPREVIOUS:"), rotated.state())];
    assert!(decide_at(&service(t(200)), &previous, t(1000)).is_stale());
}

#[test]
fn the_events_of_a_promotion_date_it_without_a_rotation_record() {
    // A manual two-step promotion: v2 staged at 100, deployment at 200, AWSCURRENT moved to v2 by
    // UpdateSecretVersionStage at 300 (rotation off: no LastRotatedDate).
    let promoted = Secret::created_once(t(0))
        .stage_pending("v2", t(100))
        .promote_by_hand("v2", t(300));
    let svc = service(t(200));
    // The trade-off: a resync alone cannot date the move, and rolls nothing.
    assert_eq!(
        decide_at(&svc, &[resolved(ARN, promoted.state())], t(1000)),
        Decision::InSync
    );
    // Its event (RotationSucceeded, Secret Label Updated or UpdateSecretVersionStage) does.
    let dated = promoted.clone().event(AWSCURRENT, t_ms(300_400));
    let refs = [resolved(ARN, dated.state())];
    assert!(decide_at(&svc, &refs, t(1000)).is_stale());
    // Once, not twice: the same (duplicate, late) event changes nothing after the rollout.
    assert_eq!(
        decide_at(&service(t(1000)), &refs, t(1001)),
        Decision::InSync
    );
    // AWSCURRENT moved *back* to an older version, dated by its event, rolls as well.
    let back = Secret::created_once(t(0))
        .put("v2", t(100))
        .promote_by_hand("v1", t(300))
        .event(AWSCURRENT, t(300));
    assert!(decide_at(&svc, &[resolved(ARN, back.state())], t(1000)).is_stale());
}

#[test]
fn a_failed_rotation_rolls_nothing_ever() {
    // Deployed at 100; a rotation stages v2 at 200 and fails; Secrets Manager retries at 3800
    // and fails again (each attempt moves LastChangedDate).
    let failed = Secret::created_once(t(0))
        .stage_pending("v2", t(200))
        .edit(t(3800));
    let refs = [resolved(ARN, failed.state())];
    for now in [t(201), t(200 + 601), t(3801), t(1_000_000)] {
        assert_eq!(
            decide_at(&service(t(100)), &refs, now),
            Decision::InSync,
            "at {now}"
        );
    }
    // A pinned stage, AWSPREVIOUS: nothing moved either.
    let previous = Secret::created_once(t(0))
        .put("v2", t(50))
        .stage_pending("v3", t(200));
    let refs = [resolved(&format!("{ARN}::AWSPREVIOUS:"), previous.state())];
    assert_eq!(
        decide_at(&service(t(100)), &refs, t(5000)),
        Decision::InSync
    );
}

#[test]
fn metadata_only_edits_roll_nothing() {
    // Description, tags, KMS key, rotation schedule, replication: only LastChangedDate moves.
    let edited = Secret::created_once(t(0))
        .put("v2", t(50))
        .move_stage("blue", "v1", t(50))
        .edit(t(300));
    for suffix in ["", "::AWSPREVIOUS:", "::blue:", ":password::"] {
        let refs = [resolved(&format!("{ARN}{suffix}"), edited.state())];
        assert_eq!(
            decide_at(&service(t(200)), &refs, t(1000)),
            Decision::InSync,
            "{suffix}"
        );
    }
    // And an edit after a real rotation does not hide it.
    let both = Secret::created_once(t(0)).put("v2", t(300)).edit(t(400));
    assert!(decide_at(&service(t(200)), &[resolved(ARN, both.state())], t(1000)).is_stale());
}

#[test]
fn a_rollout_waits_out_every_date_that_made_it_stale() {
    // Stale by the version (created 100) and by the rotation record (500): settle until 500 + 1 s
    // (+ 1 s skew), so that the new deployment is after both.
    let secret = Secret::created_once(t(0))
        .stage_pending("v2", t(100))
        .finish_rotation(t(500));
    let refs = [resolved(ARN, secret.state())];
    match decide_at(&service(t(50)), &refs, t_ms(500_200)) {
        Decision::Settling { until, .. } => assert_eq!(until, Some(t(502))),
        other => panic!("{other:?}"),
    }
    assert!(decide_at(&service(t(50)), &refs, t(502)).is_stale());
}

#[test]
fn a_rotation_in_progress_holds_the_rollout_until_promotion() {
    // Stale by a PutSecretValue at 300 while a rotation staged v3 at 500.
    let secret = Secret::created_once(t(0))
        .put("v2", t(300))
        .stage_pending("v3", t(500));
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
    // A rotation that never finished stops holding the service back after the grace (it is
    // rolled for the PutSecretValue, never for the failed rotation).
    assert!(decide_at(&service(t(200)), &refs, t(500 + 601)).is_stale());
}

#[test]
fn two_rotated_secrets_give_one_decision_with_two_findings() {
    let a = Secret::created_once(t(0)).put("v2", t(300));
    let b = RefState::Parameter(param(t(310), 4, Fetched::Skipped));
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
    let tie = decide_at(&service(t_ms(100_400)), &refs, t(1000));
    assert!(tie.is_stale());
    // The reason says why a date that reads as earlier counts as after.
    match &tie {
        Decision::Stale { findings } => assert!(
            findings[0]
                .reason
                .contains("in the same second as the deployment")
                && findings[0].reason.contains("whole seconds"),
            "{}",
            findings[0].reason
        ),
        other => panic!("{other:?}"),
    }
    // A date plainly after the deployment reads as such.
    match decide_at(&service(t(50)), &refs, t(1000)) {
        Decision::Stale { findings } => assert!(
            findings[0].reason.contains("after the deployment")
                && !findings[0].reason.contains("same second"),
            "{}",
            findings[0].reason
        ),
        other => panic!("{other:?}"),
    }
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
    deleted.state = Err(Unresolved::NotFound {
        call: "secretsmanager:DescribeSecret",
        resource: ARN.into(),
        region: "eu-west-1".into(),
    });
    let bad = resolved("arn:aws:secretsmanager:eu-west-1", secret.state());
    let expected = [
        "stage green",
        "secretsmanager:DescribeSecret arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/db-AbCdEf: not found in eu-west-1",
        "malformed ARN",
    ];
    for (r, needle) in [missing_stage, deleted, bad].into_iter().zip(expected) {
        let site = r.site.to_string();
        let refs = [resolved(ARN, secret.state()), r];
        match decide_at(&service(t(200)), &refs, t(1000)) {
            Decision::Unknown { problems } => {
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert!(problems[0].contains(needle), "{problems:?}");
                assert!(problems[0].contains(&site), "names where: {problems:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn deployments_in_progress_are_not_stacked() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let refs = [resolved(ARN, secret.state())];
    let mut svc = service(t(200));
    svc.deployments[0].rollout_state = Some(crate::aws::RolloutState::InProgress);
    assert!(matches!(
        decide_at(&svc, &refs, t(1000)),
        Decision::Settling { until: None, .. }
    ));
    // An in-progress deployment created after the change is already fresh.
    let mut svc = service(t(400));
    svc.deployments[0].rollout_state = Some(crate::aws::RolloutState::InProgress);
    assert_eq!(decide_at(&svc, &refs, t(1000)), Decision::InSync);
}

#[test]
fn services_that_cannot_or_need_not_roll_are_skipped() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let refs = [resolved(ARN, secret.state())];
    let mut svc = service(t(200));
    svc.controller = Controller::CodeDeploy;
    let off = Policy {
        codedeploy: false,
        ..Policy::default()
    };
    let d = decide(&svc, &refs, t(1000), &off);
    assert!(
        matches!(&d, Decision::Skipped { reason, .. } if reason.contains("codedeploy = false"))
            && d.needs_attention(),
        "{d:?}"
    );
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
    let state = RefState::Parameter(param(t(300), 2, Fetched::Done(history)));
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

/// One step of a generated history.
#[derive(Debug, Clone, Copy)]
enum Op {
    Put,
    StagePending,
    FinishRotation,
    PromoteByHand,
    PromoteByHandWithEvent,
    Edit,
    MoveBlue,
    MoveBlueWithEvent,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Put),
        Just(Op::StagePending),
        Just(Op::FinishRotation),
        Just(Op::PromoteByHand),
        Just(Op::PromoteByHandWithEvent),
        Just(Op::Edit),
        Just(Op::MoveBlue),
        Just(Op::MoveBlueWithEvent),
    ]
}

/// A secret after `ops`, each `gap` milliseconds after the previous one (event times a little
/// later than the change, as EventBridge delivers them); returns it and the time of the last step.
fn history(ops: &[(Op, i64, i64)]) -> (Secret, i64) {
    const IDS: [&str; 12] = [
        "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13",
    ];
    let mut secret = Secret::created_once(t_ms(0)).move_stage("blue", "v1", t_ms(0));
    let mut now = 0;
    let mut next = 0;
    for (op, gap, lag) in ops {
        now += gap;
        let at = t_ms(now);
        let older = secret.versions[(now as usize) % secret.versions.len()].0;
        secret = match op {
            Op::Put => {
                next += 1;
                secret.put(IDS[next - 1], at)
            }
            Op::StagePending => {
                next += 1;
                secret.stage_pending(IDS[next - 1], at)
            }
            Op::FinishRotation => secret.finish_rotation(at),
            Op::PromoteByHand => secret.promote_by_hand(older, at),
            Op::PromoteByHandWithEvent => secret
                .promote_by_hand(older, at)
                .event(AWSCURRENT, t_ms(now + lag)),
            Op::Edit => secret.edit(at),
            Op::MoveBlue => secret.move_stage("blue", older, at),
            Op::MoveBlueWithEvent => secret
                .move_stage("blue", older, at)
                .event("blue", t_ms(now + lag)),
        };
        now += lag;
    }
    (secret, now)
}

fn ops() -> impl Strategy<Value = Vec<(Op, i64, i64)>> {
    proptest::collection::vec((op(), 0i64..3_000, 0i64..900), 1..12)
}

const SUFFIXES: [&str; 4] = ["", "::AWSPREVIOUS:", "::blue:", ":password::"];

proptest! {
    /// Whatever the secret's history (rotations that complete or fail, promotions by hand with or
    /// without their event, metadata edits, custom labels moved back and forth), a service found
    /// stale and rolled at that moment is in sync afterwards: no reload loop.
    #[test]
    fn a_rollout_when_stale_is_never_stale_again(
        ops in ops(),
        deployed in 0i64..30_000,
        after in 0i64..20_000,
        stage in 0usize..4,
    ) {
        let (secret, end) = history(&ops);
        let refs = [resolved(&format!("{ARN}{}", SUFFIXES[stage]), secret.state())];
        let now = t_ms(end + after);
        if decide_at(&service(t_ms(deployed)), &refs, now).is_stale() {
            prop_assert_eq!(decide_at(&service(now), &refs, now), Decision::InSync);
        }
    }

    /// An older deployment is never fresher than a newer one.
    #[test]
    fn staleness_is_monotonic_in_the_deployment_time(
        ops in ops(), d1 in 0i64..30_000, d2 in 0i64..30_000, stage in 0usize..4,
    ) {
        let (lo, hi) = (d1.min(d2), d1.max(d2));
        let (secret, end) = history(&ops);
        let refs = [resolved(&format!("{ARN}{}", SUFFIXES[stage]), secret.state())];
        let now = t_ms(end + 100_000);
        if decide_at(&service(t_ms(hi)), &refs, now).is_stale() {
            prop_assert!(decide_at(&service(t_ms(lo)), &refs, now).is_stale());
        }
    }

    /// A change that moves no label and creates no version AWSCURRENT follows (a metadata edit,
    /// a rotation that fails after staging AWSPENDING) never makes an in-sync service stale.
    #[test]
    fn changes_that_change_no_value_never_roll(
        ops in ops(),
        noise in proptest::collection::vec((prop_oneof![Just(Op::Edit), Just(Op::StagePending)], 1i64..5_000), 1..5),
        stage in 0usize..4,
    ) {
        let (secret, end) = history(&ops);
        let refs = |s: &Secret| [resolved(&format!("{ARN}{}", SUFFIXES[stage]), s.state())];
        let deployed = t_ms(end + 2_000);
        let before = decide_at(&service(deployed), &refs(&secret), t_ms(end + 2_000));
        let mut noisy = secret.clone();
        let mut now = end + 2_000;
        for (i, (op, gap)) in noise.iter().enumerate() {
            now += gap;
            noisy = match op {
                Op::StagePending => noisy.stage_pending(["p1", "p2", "p3", "p4", "p5"][i], t_ms(now)),
                _ => noisy.edit(t_ms(now)),
            };
        }
        let after = decide_at(&service(deployed), &refs(&noisy), t_ms(now + 1_000_000));
        prop_assert_eq!(before, after);
    }

    /// The rule owns the question the index asks before `ListSecretVersionIds`: whenever
    /// [`needs_version_dates`] says no, the decision is the same without the dates.
    #[test]
    fn version_dates_are_skipped_only_where_no_decision_reads_them(
        ops in ops(), offset in -3_000i64..5_000, stage in 0usize..4,
    ) {
        let (secret, end) = history(&ops);
        let d = t_ms(end + offset);
        let with = secret.sm_state();
        if needs_version_dates(with.last_changed, Some(d)) {
            return Ok(());
        }
        let mut without = with.clone();
        without.created = Fetched::Skipped;
        let value_from = format!("{ARN}{}", SUFFIXES[stage]);
        let now = t_ms(end + 5_000);
        prop_assert_eq!(
            decide_at(&service(d), &[resolved(&value_from, RefState::SecretsManager(with))], now),
            decide_at(&service(d), &[resolved(&value_from, RefState::SecretsManager(without))], now)
        );
    }
}

#[test]
fn ssm_labels_need_their_history_only_after_a_newer_version() {
    let history = vec![
        ParameterVersion {
            version: 1,
            last_modified: Some(t(0)),
            labels: vec![],
        },
        ParameterVersion {
            version: 2,
            last_modified: Some(t(100)),
            labels: vec!["prod".into()],
        },
    ];
    let label = |p: SsmState| [resolved("/app/key:prod", RefState::Parameter(p))];
    // Nothing written since the deployment: decided without GetParameterHistory.
    assert!(!needs_label_history(Some(t(100)), Some(t(200))));
    assert_eq!(
        decide_at(
            &service(t(200)),
            &label(param(t(100), 2, Fetched::Skipped)),
            t(1000)
        ),
        Decision::InSync
    );
    // Written after it: the history decides, and a refused history makes it unknown.
    assert!(needs_label_history(Some(t(100)), Some(t(50))));
    assert!(decide_at(
        &service(t(50)),
        &label(param(t(100), 2, Fetched::Done(history.clone()))),
        t(1000)
    )
    .is_stale());
    let refused = Unresolved::Denied {
        call: "ssm:GetParameterHistory",
        resource: "/app/key".into(),
        message: "AccessDeniedException".into(),
        fix: "allow it".into(),
    };
    assert!(matches!(
        decide_at(&service(t(50)), &label(param(t(100), 2, Fetched::Failed(refused))), t(1000)),
        Decision::Unknown { problems } if problems[0].contains("ssm:GetParameterHistory")
    ));
    // A label moved back to version 1 after the deployment (LastModifiedDate does not move):
    // invisible without its event, stale with it.
    let mut moved = param(t(100), 2, Fetched::Skipped);
    moved.label_moves.insert("prod".into(), t(300));
    assert!(decide_at(&service(t(200)), &label(moved), t(1000)).is_stale());
}

#[test]
fn holds_and_gates_are_keyed_by_account_and_region() {
    // Two secrets named app/db: home's, and another account's in another region.
    let home = Home::of_arn(
        "arn:aws:ecs:eu-west-1:111122223333:service/prod/api",
        "eu-west-1",
    );
    let mine = SecretsManagerId::new(ARN, "app/db")
        .expect("arn")
        .seen_from(&home);
    let theirs = SecretsManagerId::new(
        "arn:aws:secretsmanager:us-east-1:999999999999:secret:app/db-XyZ123",
        "app/db",
    )
    .expect("arn")
    .seen_from(&home);
    let mine_id = SecretIdentity::SecretsManager(mine.clone());
    let theirs_id = SecretIdentity::SecretsManager(theirs.clone());
    assert_eq!(mine_id.to_string(), "app/db", "short at home");
    assert_eq!(theirs_id.to_string(), "app/db [999999999999 us-east-1]");
    assert_ne!(mine_id, theirs_id);

    let state_of = |id: &SecretsManagerId| {
        let mut s = Secret::created_once(t(0)).put("v2", t(300)).sm_state();
        s.id = id.clone();
        RefState::SecretsManager(s)
    };
    let refs_mine = [resolved(ARN, state_of(&mine))];
    let refs_theirs = [resolved(&theirs.arn, state_of(&theirs))];
    // Theirs broke a rollout; ours did not.
    let mut broken = service(t(400));
    broken.name = "broken".into();
    broken.deployments[0].rollout_state = Some(crate::aws::RolloutState::Failed);
    let other = service(t(200));
    let change = |id: &SecretIdentity| {
        vec![SecretChange {
            secret: std::sync::Arc::new(id.clone()),
            changed_at: Some(t(300)),
        }]
    };
    let mut items = vec![
        Item::new(
            &broken,
            change(&theirs_id),
            decide_at(&broken, &refs_theirs, t(1000)),
        ),
        Item::new(
            &other,
            change(&mine_id),
            decide_at(&other, &refs_mine, t(1000)),
        ),
    ];
    hold_failed(&mut items, t(1000), &crate::deployment::Limits::default());
    assert!(
        items[1].decision.is_stale(),
        "a failure for another account's app/db holds nothing of ours: {:?}",
        items[1].decision
    );
    // SSM: same name, other account: another parameter, displayed apart.
    let own = ParameterId::own("eu-west-1", "/app/key", "eu-west-1");
    let foreign = ParameterId::new("eu-west-1", Some("999999999999"), "/app/key", &home);
    assert_ne!(own, foreign);
    assert_eq!(SecretIdentity::Parameter(own).to_string(), "ssm:/app/key");
    assert_eq!(
        SecretIdentity::Parameter(foreign).to_string(),
        "ssm:/app/key [999999999999 eu-west-1]"
    );
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
    if let Ok(state) = &mut hinted.state {
        if let RefState::SecretsManager(s) = std::sync::Arc::make_mut(state) {
            s.label_moves.insert("blue".into(), t(500));
        }
    }
    assert!(decide_at(&service(t(400)), std::slice::from_ref(&hinted), t(1000)).is_stale());
    // After the rollout, the same (duplicate, late) event changes nothing.
    assert_eq!(
        decide_at(&service(t(1000)), &[hinted], t(1001)),
        Decision::InSync
    );
}

/// Who may roll a stale service (clause 7): ECS's controller and CodeDeploy's are rolled; an
/// `EXTERNAL` one only by its controller, so it is skipped *with* what changed: a dependant that
/// needs attention. In sync, it is simply in sync.
#[test]
fn a_stale_service_nobody_here_may_roll_needs_attention() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let refs = [resolved(ARN, secret.state())];
    let mut svc = service(t(200));
    svc.controller = Controller::CodeDeploy;
    assert!(
        decide_at(&svc, &refs, t(1000)).is_stale(),
        "CodeDeploy rolls it"
    );
    svc.controller = Controller::External;
    let d = decide_at(&svc, &refs, t(1000));
    assert!(
        matches!(&d, Decision::Skipped { reason, findings } if reason.contains("EXTERNAL") && findings.len() == 1),
        "{d:?}"
    );
    assert!(d.needs_attention());
    let fresh = service(t(400));
    let mut fresh = fresh;
    fresh.controller = Controller::External;
    assert_eq!(decide_at(&fresh, &refs, t(1000)), Decision::InSync);
}

/// An ECS service kept busy past `[rollout] timeout` by an older deployment that never drains
/// is held (stuck), not decided again forever; a task set's steady original beside a young
/// replacement is not stuck.
#[test]
fn a_deployment_that_never_drains_is_stuck_but_a_task_sets_original_is_not() {
    let secret = Secret::created_once(t(0)).put("v2", t(300));
    let refs = [resolved(ARN, secret.state())];
    let mut svc = service(t(200));
    let mut old = svc.deployments[0].clone();
    old.id = "ecs-svc/0".into();
    old.status = crate::aws::DeploymentStatus::Active;
    old.created_at = t(100);
    svc.deployments.push(old);
    let late = t(200) + chrono::Duration::hours(1);
    assert!(
        matches!(decide_at(&svc, &refs, late), Decision::Held { .. }),
        "{:?}",
        decide_at(&svc, &refs, late)
    );
    // The same shape as task sets: the original steady, a replacement created a minute ago.
    svc.controller = Controller::CodeDeploy;
    svc.deployments[1].created_at = late - chrono::Duration::minutes(1);
    svc.deployments[1].rollout_state = Some(crate::aws::RolloutState::InProgress);
    assert!(
        matches!(decide_at(&svc, &refs, late), Decision::Settling { .. }),
        "{:?}",
        decide_at(&svc, &refs, late)
    );
}
