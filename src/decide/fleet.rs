//! Decisions across the services of one change: what [`decide`](super::decide) cannot see from
//! one service alone. Pure, and derived from AWS state only, so that every run, every Lambda
//! invocation and a restarted `serve` reach the same answer.
//!
//! 1. **Waves** ([`wave_of`]): the tag `ecs-reloader/wave` orders a change's dependants; a tag
//!    that is not an integer makes a stale service `unknown` (rolling out of the declared order
//!    is worse than not rolling).
//! 2. **Holds** ([`hold_failed`]): a dependant whose deployment *after* a change failed, rolled
//!    back or is stuck means "this change breaks rollouts"; the other stale dependants of that
//!    change are held. Only a deployment that carries the change alone implicates it: a forced
//!    deployment runs the revision the service already ran, so a failed deployment of a *new*
//!    task definition (CI's) holds nothing.
//! 3. **Gates** ([`gate`]), for drivers that cannot wait for health (`--no-wait`, the Lambda):
//!    per change, its canary rolls alone; the rest of its wave once a dependant runs the change
//!    healthily; a later wave once no earlier wave of that change is still stale or rolling.
//!
//! 4. **Policies** ([`apply_policy`]): a stale service that needs approval (notify-only, by
//!    `[rollout] notify_only` or the tag `ecs-reloader/notify-only`) is `pending`; one outside its
//!    maintenance window (`[rollout] windows`, or the tag `ecs-reloader/window`) is `scheduled`
//!    for the window's start. Applied before the gates, so that a canary is always a service
//!    that may roll now.
//!
//! "After the change" is the rule's own test ([`deployed_after`]), so that a deployment the rule
//! calls fresh is exactly one these refinements count as carrying the change.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Decision, GRANULARITY};
use crate::aws::ServiceKey;
use crate::aws::{Deployment, Service};
use crate::deployment::{self, Limits, Verdict};
use crate::reference::SecretIdentity;
use crate::window::{Opening, Windows, TAG_WINDOW};

/// Tag that makes a service notify-only (`true`) or not (`false`), whatever the configuration.
pub(crate) const TAG_NOTIFY_ONLY: &str = "ecs-reloader/notify-only";

/// When and whether stale services may roll without a person.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    /// `[rollout] windows` (any time when empty).
    pub windows: Windows,
    /// `[rollout] notify_only`.
    pub notify_only: bool,
    /// A person asked for these services by name (`reconcile --secret` / `--service`): that
    /// approves notify-only ones.
    pub approved: bool,
    /// `--ignore-windows`: an emergency roll now, whatever the windows say.
    pub ignore_windows: bool,
    /// `[rollout] image_drift`.
    pub image_drift: super::drift::ImageDrift,
    /// `reconcile --service X --allow-image-drift`: the person approved starting whatever image
    /// the named services' tags name now.
    pub allow_image_drift: bool,
}

/// Whether a stale service may roll now, by the fleet's policies: the one check, asked when
/// deciding ([`apply_policy`]) and again right before its `UpdateService` (the rollout engine's
/// look), so that a window that closes or a notify-only tag added while a change set rolls
/// stops it there too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Eligibility {
    /// It may.
    Now,
    /// It waits for a person's approval (notify-only).
    Pending(String),
    /// It waits for its maintenance window.
    Scheduled {
        /// When the window opens.
        at: DateTime<Utc>,
        /// The window.
        window: String,
    },
    /// A policy tag cannot be read: rolling would guess.
    Unreadable(String),
}

/// See [`Eligibility`].
pub(crate) fn eligibility(
    service: &Service,
    now: DateTime<Utc>,
    policies: &Policies,
) -> Eligibility {
    let tags = &service.tags;
    let notify_only = match tags
        .get(TAG_NOTIFY_ONLY)
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => Ok(policies.notify_only),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(format!("tag {TAG_NOTIFY_ONLY}={v:?} is not true or false")),
    };
    let windows = match tags.get(TAG_WINDOW) {
        None => Ok(policies.windows.clone()),
        Some(v) => Windows::parse_tag(v).map_err(|e| format!("tag {TAG_WINDOW}: {e}")),
    };
    let (notify_only, windows) = match (notify_only, windows) {
        (Ok(n), Ok(w)) => (n, w),
        (Err(p), _) | (_, Err(p)) => return Eligibility::Unreadable(p),
    };
    if notify_only && !policies.approved {
        return Eligibility::Pending("notify-only: decided and reported, not rolled; `ecs-reloader reconcile --service CLUSTER/SERVICE` (or --secret) approves it".into());
    }
    if policies.ignore_windows {
        return Eligibility::Now;
    }
    match windows.opening(now) {
        Opening::At { start, window } => Eligibility::Scheduled { at: start, window },
        _ => Eligibility::Now,
    }
}

/// Applies notify-only and maintenance windows to stale services (see the module
/// documentation and [`eligibility`]). A tag that cannot be read makes its stale service
/// `unknown`.
pub(crate) fn apply_policy(items: &mut [Item<'_>], now: DateTime<Utc>, policies: &Policies) {
    for item in items.iter_mut() {
        let Decision::Stale { findings } = &mut item.decision else {
            continue;
        };
        item.decision = match eligibility(item.service, now, policies) {
            Eligibility::Now => continue,
            Eligibility::Unreadable(p) => Decision::Unknown { problems: vec![p] },
            Eligibility::Pending(reason) => Decision::Pending {
                reason,
                findings: std::mem::take(findings),
            },
            Eligibility::Scheduled { at, window } => Decision::Scheduled {
                at,
                window,
                findings: std::mem::take(findings),
            },
        };
    }
}

/// Tag that orders services into waves.
pub(crate) const TAG_WAVE: &str = "ecs-reloader/wave";

/// The wave a service declares (default 0).
pub(crate) fn wave_of(s: &Service) -> Result<i64, String> {
    match s.tags.get(TAG_WAVE) {
        None => Ok(0),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("tag {TAG_WAVE}={v:?} is not an integer")),
    }
}

/// Whether a deployment created at `deployed` started after a change at `changed`: the
/// complement of the rule's "stale" (whole-second dates, ties count as before). An unknown
/// change time is never "after".
pub(crate) fn deployed_after(deployed: DateTime<Utc>, changed: Option<DateTime<Utc>>) -> bool {
    changed.is_some_and(|c| deployed >= fresh_from(c))
}

/// The first deployment time that carries a change made at `changed`.
pub fn fresh_from(changed: DateTime<Utc>) -> DateTime<Utc> {
    changed + GRANULARITY
}

/// A secret a service resolves, and when it last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretChange {
    /// Which secret or parameter (shared: a fleet has far fewer secrets than references).
    pub secret: std::sync::Arc<SecretIdentity>,
    /// When what the service resolves last changed, as the rule dates it.
    pub changed_at: Option<DateTime<Utc>>,
}

/// One service of a pass with its decision, what the refinements work on.
#[derive(Debug, Clone)]
pub struct Item<'a> {
    /// The service as described.
    pub service: &'a Service,
    /// Its wave (0 when the tag is unusable: it is `unknown` then, and never rolls).
    pub wave: i64,
    /// Every secret it resolves, with its change time.
    pub secrets: Vec<SecretChange>,
    /// The decision, refined in place.
    pub decision: Decision,
    /// Looked at for another secret's sake, not selected by the pass (see
    /// `Reconciler::assess_with`): it counts for holds and waves, and is never made a canary
    /// (the pass will not roll it).
    pub context: bool,
}

impl<'a> Item<'a> {
    /// Builds an item and applies the wave rule: a stale service with an unusable wave tag is
    /// `unknown`.
    pub fn new(service: &'a Service, secrets: Vec<SecretChange>, decision: Decision) -> Self {
        let (wave, decision) = match wave_of(service) {
            Ok(w) => (w, decision),
            Err(problem) if decision.is_stale() => (
                0,
                Decision::Unknown {
                    problems: vec![problem],
                },
            ),
            Err(_) => (0, decision),
        };
        Item {
            service,
            wave,
            secrets,
            decision,
            context: false,
        }
    }

    fn key(&self) -> ServiceKey {
        ServiceKey::of(self.service)
    }

    /// The plan order: wave, then cluster and name.
    pub fn order(&self) -> (i64, ServiceKey) {
        (self.wave, self.key())
    }
}

/// Whether a failed deployment carries only a change of secrets: it runs the revision that
/// another listed deployment (the one it replaced, or the rollback to it) runs. A deployment
/// alone in its service gives no such evidence either way; it is taken to carry the change, the
/// side on which a broken change breaks nothing more.
pub(crate) fn carries_only_secrets(service: &Service, failed: &Deployment) -> bool {
    let others: Vec<&Deployment> = service
        .deployments
        .iter()
        .filter(|d| d.id != failed.id)
        .collect();
    others.is_empty()
        || others
            .iter()
            .any(|d| d.task_definition == failed.task_definition)
}

/// Holds stale services whose change already broke another dependant's rollout (see the module
/// documentation). The hold lifts when the broken service is healthy again or the secret changes
/// again (the failure then predates the new change).
pub(crate) fn hold_failed(items: &mut [Item<'_>], now: DateTime<Utc>, limits: &Limits) {
    let mut failing: BTreeMap<SecretIdentity, (ServiceKey, String)> = BTreeMap::new();
    for item in items.iter() {
        let Some((dep, verdict)) = deployment::current(item.service, now, limits) else {
            continue;
        };
        let Some(problem) = verdict.problem(&dep.id) else {
            continue;
        };
        if !carries_only_secrets(item.service, dep) {
            continue;
        }
        for s in &item.secrets {
            if deployed_after(dep.created_at, s.changed_at) {
                failing
                    .entry((*s.secret).clone())
                    .or_insert_with(|| (item.key(), problem.clone()));
            }
        }
    }
    if failing.is_empty() {
        return;
    }
    for item in items.iter_mut() {
        let me = item.key();
        let Decision::Stale { findings } = &mut item.decision else {
            continue;
        };
        let hit = findings.iter().find_map(|f| {
            let id = f.identity.as_ref()?;
            failing
                .get(id)
                .filter(|(who, _)| *who != me)
                .map(|w| (f.secret.clone(), w.clone()))
        });
        if let Some((secret, (who, why))) = hit {
            let reason = format!(
                "held: the rollout of {who} after this change of {secret} went wrong ({why}); fix it, then run again"
            );
            item.decision = Decision::Held {
                reason,
                findings: std::mem::take(findings),
            };
        }
    }
}

/// What keeps a wave of a change open, and so what a later wave waits for: something that
/// settles by itself (looked at again soon), a window (looked at again when it opens), or a
/// person (an approval, a held rollout: nobody polls for that; the resync reports it again).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Blocker {
    Poll,
    At(DateTime<Utc>),
    Person { held: bool, who: ServiceKey },
}

impl Blocker {
    /// Two blockers of earlier waves as one: polling wins, then the earliest window.
    fn and(self, other: Blocker) -> Blocker {
        match (self, other) {
            (Blocker::Poll, _) | (_, Blocker::Poll) => Blocker::Poll,
            (Blocker::At(a), Blocker::At(b)) => Blocker::At(a.min(b)),
            (Blocker::At(a), _) | (_, Blocker::At(a)) => Blocker::At(a),
            (a @ Blocker::Person { held: true, .. }, _)
            | (_, a @ Blocker::Person { held: true, .. }) => a,
            (a, _) => a,
        }
    }
}

/// What the dependants of one change show.
#[derive(Default)]
struct ChangeProgress {
    /// A dependant runs a deployment made after the change, and it is healthy.
    passed: bool,
    /// A dependant's deployment after the change is rolling (first in plan order).
    rolling: Option<ServiceKey>,
    /// The lowest wave with a dependant still stale, settling or rolling.
    open_wave: Option<i64>,
    /// What keeps each open wave open.
    blockers: BTreeMap<i64, Blocker>,
    /// The canary chosen in this pass.
    canary: Option<ServiceKey>,
}

impl ChangeProgress {
    fn block(&mut self, wave: i64, blocker: Blocker) {
        self.open_wave = Some(self.open_wave.map_or(wave, |w| w.min(wave)));
        let merged = match self.blockers.remove(&wave) {
            Some(b) => b.and(blocker),
            None => blocker,
        };
        self.blockers.insert(wave, merged);
    }

    /// What the waves before `wave` wait for, together.
    fn before(&self, wave: i64) -> Option<Blocker> {
        self.blockers
            .range(..wave)
            .map(|(_, b)| b.clone())
            .reduce(Blocker::and)
    }
}

/// The canary and wave gates for drivers that cannot wait (see the module documentation).
/// `items` must be in plan order ([`Item::order`]); `canary` is `[rollout] canary`.
///
/// With `watching` (the engine waits for health within the pass, and rolls the stale services of
/// the change set wave by wave itself), the wave barrier applies only to what the change set does
/// not hold: an earlier-wave dependant that waits (settling, outside its window, pending
/// approval, held) or is rolling keeps the later waves back. And a dependant rolling for the
/// change before any has proved healthy is a canary in flight (another pass's, in `serve`,
/// where passes run side by side): the others wait for it, so that it still guards them.
pub fn gate(
    items: &mut [Item<'_>],
    canary: bool,
    watching: bool,
    now: DateTime<Utc>,
    limits: &Limits,
) {
    // Choosing a canary is the engine's business when it watches; waiting for one in flight is
    // everyone's.
    let choose = canary && !watching;
    let mut changes: BTreeMap<SecretIdentity, ChangeProgress> = BTreeMap::new();
    for item in items.iter() {
        let (pending, blocker): (Vec<&SecretIdentity>, Blocker) = match &item.decision {
            Decision::Stale { findings } if !watching => (
                findings
                    .iter()
                    .filter_map(|f| f.identity.as_ref())
                    .collect(),
                Blocker::Poll,
            ),
            // Waiting dependants hold their wave open: a service outside its window or waiting
            // for approval must not see a later wave roll first.
            Decision::Settling { findings, .. } => (
                findings
                    .iter()
                    .filter_map(|f| f.identity.as_ref())
                    .collect(),
                Blocker::Poll,
            ),
            Decision::Scheduled { findings, at, .. } => (
                findings
                    .iter()
                    .filter_map(|f| f.identity.as_ref())
                    .collect(),
                Blocker::At(*at),
            ),
            Decision::Pending { findings, .. } => (
                findings
                    .iter()
                    .filter_map(|f| f.identity.as_ref())
                    .collect(),
                Blocker::Person {
                    held: false,
                    who: item.key(),
                },
            ),
            Decision::Held { findings, .. } => (
                findings
                    .iter()
                    .filter_map(|f| f.identity.as_ref())
                    .collect(),
                Blocker::Person {
                    held: true,
                    who: item.key(),
                },
            ),
            _ => (Vec::new(), Blocker::Poll),
        };
        for id in pending {
            changes
                .entry(id.clone())
                .or_default()
                .block(item.wave, blocker.clone());
        }
        if item.decision.is_stale() {
            continue;
        }
        let Some((dep, verdict)) = deployment::current(item.service, now, limits) else {
            continue;
        };
        for s in &item.secrets {
            if !deployed_after(dep.created_at, s.changed_at) {
                continue;
            }
            let p = changes.entry((*s.secret).clone()).or_default();
            match verdict {
                Verdict::Healthy | Verdict::Superseded { .. } => p.passed = true,
                Verdict::InProgress => {
                    p.rolling.get_or_insert_with(|| item.key());
                    p.block(item.wave, Blocker::Poll);
                }
                // Broken rollouts are hold_failed's business.
                Verdict::Stuck { .. } | Verdict::Failed { .. } | Verdict::RolledBack { .. } => {}
            }
        }
    }
    for item in items.iter_mut() {
        if item.context {
            continue;
        }
        let me = item.key();
        let wave = item.wave;
        let Decision::Stale { findings } = &mut item.decision else {
            continue;
        };
        let mut wait: Option<(String, Blocker)> = None;
        for f in findings.iter() {
            let Some(p) = f.identity.as_ref().and_then(|id| changes.get_mut(id)) else {
                continue;
            };
            if let Some(open) = p.open_wave.filter(|w| *w < wave) {
                let blocker = p.before(wave).unwrap_or(Blocker::Poll);
                let why = match &blocker {
                    Blocker::Poll => "is not done yet".to_string(),
                    Blocker::At(at) => format!(
                        "waits for its maintenance window ({})",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    Blocker::Person { held: false, who } => {
                        format!("waits for approval of {who} (notify-only)")
                    }
                    Blocker::Person { held: true, who } => format!("is held ({who})"),
                };
                wait = Some((
                    format!(
                        "wave {open} of the change of {} {why}: wave {wave} waits",
                        f.secret
                    ),
                    blocker,
                ));
                break;
            }
            if !canary || p.passed {
                continue;
            }
            if let Some(who) = &p.rolling {
                wait = Some((
                    format!(
                        "canary {who} for {} is rolling: waiting for it to be healthy",
                        f.secret
                    ),
                    Blocker::Poll,
                ));
                break;
            }
            if !choose {
                continue;
            }
            let chosen = p.canary.get_or_insert_with(|| me.clone());
            if *chosen != me {
                wait = Some((
                    format!("canary {chosen} for {} goes first", f.secret),
                    Blocker::Poll,
                ));
                break;
            }
        }
        // A wait that ends by itself is looked at again soon, or when its window opens; one
        // that needs a person is reported as such and not polled (the resync reports it again).
        if let Some((reason, blocker)) = wait {
            let findings = std::mem::take(findings);
            item.decision = match blocker {
                Blocker::Poll => Decision::Settling {
                    until: None,
                    reason,
                    findings,
                },
                Blocker::At(at) => Decision::Settling {
                    until: Some(at),
                    reason,
                    findings,
                },
                Blocker::Person { held: true, .. } => Decision::Held {
                    reason: format!("held: {reason}"),
                    findings,
                },
                Blocker::Person { held: false, .. } => Decision::Pending { reason, findings },
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{Controller, DeploymentStatus, RolloutState};
    use crate::decide::Finding;
    use crate::reference::SecretsManagerId;
    use std::time::Duration;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("time")
    }

    fn secret(name: &str) -> SecretIdentity {
        SecretIdentity::SecretsManager(
            SecretsManagerId::new(
                &format!("arn:aws:secretsmanager:eu-west-1:111122223333:secret:{name}-AbCdEf"),
                name,
            )
            .expect("arn"),
        )
    }

    fn service(name: &str, deployed: i64, wave: Option<i64>) -> Service {
        let mut tags = BTreeMap::new();
        if let Some(w) = wave {
            tags.insert(TAG_WAVE.to_string(), w.to_string());
        }
        Service {
            arn: format!("arn:aws:ecs:eu-west-1:111122223333:service/prod/{name}"),
            name: name.into(),
            cluster_arn: "arn:aws:ecs:eu-west-1:111122223333:cluster/prod".into(),
            status: "ACTIVE".into(),
            task_definition: "td:1".into(),
            desired_count: 2,
            controller: Controller::Ecs,
            shape: Default::default(),
            deployments: vec![Deployment {
                id: format!("ecs-svc/{name}-{deployed}"),
                status: DeploymentStatus::Primary,
                task_definition: "td:1".into(),
                created_at: t(deployed),
                rollout_state: Some(RolloutState::Completed),
                rollout_state_reason: None,
                desired_count: 2,
                running_count: 2,
                failed_tasks: 0,
            }],
            tags,
        }
    }

    /// The decision the rule would make for a change of `s` at 300.
    fn item<'a>(svc: &'a Service, s: &SecretIdentity) -> Item<'a> {
        let d = svc.primary().expect("primary").created_at;
        let decision = if deployed_after(d, Some(t(300))) {
            Decision::InSync
        } else {
            Decision::Stale {
                findings: vec![Finding {
                    secret: s.to_string(),
                    identity: Some(s.clone()),
                    fresh_after: Some(t(301)),
                    site: "container api".into(),
                    reason: "changed".into(),
                    provenance: None,
                }],
            }
        };
        Item::new(
            svc,
            vec![SecretChange {
                secret: std::sync::Arc::new(s.clone()),
                changed_at: Some(t(300)),
            }],
            decision,
        )
    }

    fn labels(items: &[Item<'_>]) -> Vec<&'static str> {
        items.iter().map(|i| i.decision.label()).collect()
    }

    fn gated<'a>(svcs: &[&'a Service], s: &SecretIdentity, canary: bool) -> Vec<Item<'a>> {
        let mut items: Vec<Item<'a>> = svcs.iter().map(|x| item(x, s)).collect();
        items.sort_by_key(Item::order);
        gate(&mut items, canary, false, t(1000), &Limits::default());
        items
    }

    #[test]
    fn a_broken_rollout_after_the_change_holds_the_other_dependants() {
        let s = secret("app/db");
        let mut broken = service("canary", 400, None);
        broken.deployments[0].rollout_state = Some(RolloutState::Failed);
        let other = service("api", 200, None);
        let mut items = vec![item(&broken, &s), item(&other, &s)];
        assert!(items[1].decision.is_stale());
        hold_failed(&mut items, t(1000), &Limits::default());
        assert!(
            matches!(&items[1].decision, Decision::Held { reason, .. } if reason.contains("prod/canary")),
            "{:?}",
            items[1].decision
        );

        // A failure older than the change does not hold: the new change deserves a new attempt.
        let mut old_failure = broken.clone();
        old_failure.deployments[0].created_at = t(250);
        let mut items = vec![item(&old_failure, &s), item(&other, &s)];
        hold_failed(&mut items, t(1000), &Limits::default());
        assert!(items[1].decision.is_stale());

        // Another secret's change is not held by it.
        let unrelated = secret("app/other");
        let mut items = vec![item(&broken, &s), item(&other, &unrelated)];
        hold_failed(&mut items, t(1000), &Limits::default());
        assert!(items[1].decision.is_stale());
    }

    #[test]
    fn stuck_and_rolled_back_rollouts_hold_too() {
        let s = secret("app/db");
        let mut stuck = service("canary", 400, None);
        stuck.deployments[0].rollout_state = Some(RolloutState::InProgress);
        let other = service("api", 200, None);
        let mut items = vec![item(&stuck, &s), item(&other, &s)];
        hold_failed(&mut items, t(1000), &Limits::default());
        assert!(
            items[1].decision.is_stale(),
            "in progress for 600 s is not stuck"
        );
        hold_failed(&mut items, t(1400), &Limits::default());
        assert_eq!(items[1].decision.label(), "held", "stuck after 900 s");

        // What the circuit breaker leaves: a rollback primary and ours, failed.
        let mut rolled_back = service("canary", 400, None);
        let mut back = rolled_back.deployments[0].clone();
        back.id = "ecs-svc/back".into();
        back.rollout_state = Some(RolloutState::InProgress);
        back.rollout_state_reason =
            Some("ECS deployment circuit breaker: rolling back to deploymentId old".into());
        back.created_at = t(450);
        rolled_back.deployments[0].status = DeploymentStatus::Active;
        rolled_back.deployments[0].rollout_state = Some(RolloutState::Failed);
        rolled_back.deployments.insert(0, back);
        let mut items = vec![item(&rolled_back, &s), item(&other, &s)];
        hold_failed(&mut items, t(500), &Limits::default());
        assert_eq!(items[1].decision.label(), "held");
    }

    #[test]
    fn a_failed_deployment_of_a_new_task_definition_holds_nothing() {
        // CI deployed td:2 after the change; it fails while td:1 still runs.
        let s = secret("app/db");
        let mut ci = service("web", 400, None);
        ci.task_definition = "td:2".into();
        let mut new = ci.deployments[0].clone();
        new.id = "ecs-svc/ci".into();
        new.task_definition = "td:2".into();
        new.rollout_state = Some(RolloutState::Failed);
        ci.deployments[0].status = DeploymentStatus::Active;
        ci.deployments[0].created_at = t(100);
        ci.deployments.insert(0, new);
        let other = service("api", 200, None);
        let mut items = vec![item(&ci, &s), item(&other, &s)];
        hold_failed(&mut items, t(1000), &Limits::default());
        assert!(items[1].decision.is_stale(), "{:?}", items[1].decision);

        // The same failure of a forced deployment (same revision as the one it replaced) holds.
        let mut forced = ci.clone();
        forced.deployments[0].task_definition = "td:1".into();
        let mut items = vec![item(&forced, &s), item(&other, &s)];
        hold_failed(&mut items, t(1000), &Limits::default());
        assert_eq!(items[1].decision.label(), "held");
    }

    #[test]
    fn without_waiting_the_canary_goes_first_and_the_rest_once_it_is_healthy() {
        let s = secret("app/db");
        let (a, b, c) = (
            service("a", 200, None),
            service("b", 200, None),
            service("c", 200, None),
        );
        assert_eq!(
            labels(&gated(&[&a, &b, &c], &s, true)),
            ["stale", "settling", "settling"]
        );
        assert_eq!(
            labels(&gated(&[&a, &b, &c], &s, false)),
            ["stale", "stale", "stale"],
            "no canary: all of the wave"
        );

        let mut a_rolling = service("a", 1000, None);
        a_rolling.deployments[0].rollout_state = Some(RolloutState::InProgress);
        assert_eq!(
            labels(&gated(&[&a_rolling, &b, &c], &s, true)),
            ["in_sync", "settling", "settling"]
        );

        let a_done = service("a", 1000, None);
        assert_eq!(
            labels(&gated(&[&a_done, &b, &c], &s, true)),
            ["in_sync", "stale", "stale"]
        );
    }

    #[test]
    fn without_waiting_waves_are_barriers_through_aws_state() {
        let s = secret("app/db");
        let r1 = service("replica-1", 200, Some(1));
        let r2 = service("replica-2", 200, Some(1));
        let w = service("writer", 200, Some(2));
        // Wave 1 first: its canary alone; the writer waits for wave 1.
        let first = gated(&[&w, &r1, &r2], &s, true);
        let names: Vec<&str> = first.iter().map(|i| i.service.name.as_str()).collect();
        assert_eq!(names, ["replica-1", "replica-2", "writer"]);
        assert_eq!(labels(&first), ["stale", "settling", "settling"]);
        // The canary is healthy: the rest of wave 1 rolls, the writer still waits.
        let r1_done = service("replica-1", 1000, Some(1));
        assert_eq!(
            labels(&gated(&[&w, &r1_done, &r2], &s, true)),
            ["in_sync", "stale", "settling"]
        );
        // Wave 1 still rolling: the writer waits.
        let mut r2_rolling = service("replica-2", 1000, Some(1));
        r2_rolling.deployments[0].rollout_state = Some(RolloutState::InProgress);
        let third = gated(&[&w, &r1_done, &r2_rolling], &s, true);
        assert_eq!(labels(&third), ["in_sync", "in_sync", "settling"]);
        assert!(
            matches!(&third[2].decision, Decision::Settling { reason, .. } if reason.contains("wave 1")),
            "{:?}",
            third[2].decision
        );
        // Wave 1 healthy: the writer rolls.
        let r2_done = service("replica-2", 1000, Some(1));
        assert_eq!(
            labels(&gated(&[&w, &r1_done, &r2_done], &s, true)),
            ["in_sync", "in_sync", "stale"]
        );
        // Without a canary, wave 1 still goes before wave 2.
        assert_eq!(
            labels(&gated(&[&w, &r1, &r2], &s, false)),
            ["stale", "stale", "settling"]
        );
    }

    #[test]
    fn a_bad_wave_tag_makes_a_stale_service_unknown() {
        let s = secret("app/db");
        let mut svc = service("x", 200, None);
        svc.tags.insert(TAG_WAVE.into(), "first".into());
        assert_eq!(item(&svc, &s).decision.label(), "unknown");
        let fresh = {
            let mut f = service("y", 1000, None);
            f.tags.insert(TAG_WAVE.into(), "first".into());
            f
        };
        assert_eq!(item(&fresh, &s).decision.label(), "in_sync");
        assert_eq!(wave_of(&service("z", 0, Some(3))), Ok(3));
        let _ = Duration::ZERO;
    }
}
