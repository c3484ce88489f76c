//! One reading of an ECS deployment: healthy, in progress, failed, rolled back or stuck. Pure.
//!
//! Two places look at deployments and must never disagree: the rollout watcher, which follows
//! the deployment it created, and the decisions that gate on AWS state (holds after a failure,
//! the canary and wave gates of drivers that do not wait). Both ask this module.
//!
//! The reading, in order (the first that applies wins):
//! 1. The deployment is gone from the service. If the primary is a circuit-breaker rollback, it
//!    was **rolled back**; otherwise a newer deployment replaced it (**superseded**: the newer one
//!    started after ours, so its tasks read the fresh value too).
//! 2. `rolloutState` `FAILED`: **failed**.
//! 3. It is no longer primary: rolled back if the primary is a rollback, else superseded.
//! 4. It is itself a circuit-breaker rollback: **rolled back** (what a service whose last rollout
//!    failed shows while it returns to the previous deployment).
//! 5. `rolloutState` `COMPLETED`: **healthy**.
//! 6. `failedTasks` at the threshold: **failed**.
//! 7. Without a rollout state (no circuit breaker): primary, alone, with running ≥ desired:
//!    **healthy**.
//! 8. Otherwise in progress, or **stuck** once in progress longer than the timeout.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::aws::{Deployment, RolloutState, Service};

/// What a deployment amounts to right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Done and healthy.
    Healthy,
    /// Replaced by a newer deployment that is not a rollback.
    Superseded {
        /// The newer deployment.
        by: String,
    },
    /// Still rolling.
    InProgress,
    /// Rolling for longer than the timeout.
    Stuck {
        /// When the deployment was created.
        since: DateTime<Utc>,
        /// What it waits for, when it says (a lifecycle hook awaiting someone's action).
        waiting_for: Option<String>,
    },
    /// ECS gave up, or too many tasks failed to start.
    Failed {
        /// Why.
        reason: String,
    },
    /// The circuit breaker rolled it back.
    RolledBack {
        /// ECS's reason.
        reason: String,
    },
}

impl Verdict {
    /// Why it went wrong, for reports; `None` when it did not.
    pub(crate) fn problem(&self, deployment: &str) -> Option<String> {
        match self {
            Verdict::Failed { reason } => Some(format!("deployment {deployment} failed: {reason}")),
            Verdict::RolledBack { reason } => {
                Some(format!("deployment {deployment} was rolled back: {reason}"))
            }
            Verdict::Stuck { since, waiting_for } => Some(format!(
                "deployment {deployment} in progress since {}{}",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                waiting_for
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            )),
            _ => None,
        }
    }
}

/// The limits a reading applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// In progress longer than this is stuck (`[rollout] timeout`).
    pub stuck_after: Duration,
    /// This many failed tasks fail a deployment that is not complete (0: never).
    pub failed_tasks_threshold: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stuck_after: Duration::from_secs(15 * 60),
            failed_tasks_threshold: 3,
        }
    }
}

/// Whether ECS marked a deployment as a circuit-breaker rollback.
fn is_rollback(d: &Deployment) -> bool {
    d.id.ends_with("-rollback")
        || d.rollout_state_reason.as_deref().is_some_and(|r| {
            let r = r.to_ascii_lowercase();
            r.contains("circuit breaker") && r.contains("roll")
                || r.contains("rolling back")
                || r.contains("rolled back")
        })
}

fn rollback_reason(d: &Deployment) -> String {
    d.rollout_state_reason
        .clone()
        .unwrap_or_else(|| format!("rolled back to {}", d.id))
}

/// Reads deployment `id` of `service` at `now`.
pub(crate) fn judge(service: &Service, id: &str, now: DateTime<Utc>, limits: &Limits) -> Verdict {
    let primary = service.primary();
    let Some(ours) = service.deployments.iter().find(|d| d.id == id) else {
        return match primary {
            Some(p) if is_rollback(p) => Verdict::RolledBack {
                reason: rollback_reason(p),
            },
            Some(p) => Verdict::Superseded { by: p.id.clone() },
            None => Verdict::Failed {
                reason: "the service has no primary deployment".into(),
            },
        };
    };
    if ours.rollout_state == Some(RolloutState::Failed) {
        return Verdict::Failed {
            reason: ours
                .rollout_state_reason
                .clone()
                .unwrap_or_else(|| "rolloutState FAILED".into()),
        };
    }
    // A replacement in flight beside a primary that still serves traffic (a CodeDeploy
    // blue/green task set before traffic moves): in progress, until it is stuck.
    if !ours.is_primary()
        && ours.rollout_state == Some(RolloutState::InProgress)
        && primary.is_none_or(|p| ours.created_at > p.created_at)
    {
        let stuck = chrono::Duration::from_std(
            limits.stuck_after + service.shape.bake_time.unwrap_or_default(),
        )
        .unwrap_or(chrono::Duration::MAX);
        return if now - ours.created_at > stuck {
            Verdict::Stuck {
                since: ours.created_at,
                waiting_for: ours.rollout_state_reason.clone(),
            }
        } else {
            Verdict::InProgress
        };
    }
    if !ours.is_primary() {
        return match primary {
            Some(p) if is_rollback(p) => Verdict::RolledBack {
                reason: rollback_reason(p),
            },
            Some(p) => Verdict::Superseded { by: p.id.clone() },
            None => Verdict::InProgress,
        };
    }
    if is_rollback(ours) {
        return Verdict::RolledBack {
            reason: rollback_reason(ours),
        };
    }
    if ours.rollout_state == Some(RolloutState::Completed) {
        return Verdict::Healthy;
    }
    if limits.failed_tasks_threshold > 0 && ours.failed_tasks >= limits.failed_tasks_threshold {
        return Verdict::Failed {
            reason: format!(
                "{} task(s) failed to start (threshold {})",
                ours.failed_tasks, limits.failed_tasks_threshold
            ),
        };
    }
    if ours.rollout_state.is_none()
        && service.deployments.len() == 1
        && ours.running_count >= ours.desired_count
    {
        return Verdict::Healthy;
    }
    // A strategy's designed wait (a blue/green bake time) is not being stuck.
    let stuck = chrono::Duration::from_std(
        limits.stuck_after + service.shape.bake_time.unwrap_or_default(),
    )
    .unwrap_or(chrono::Duration::MAX);
    if now - ours.created_at > stuck {
        return Verdict::Stuck {
            since: ours.created_at,
            waiting_for: ours.rollout_state_reason.clone(),
        };
    }
    Verdict::InProgress
}

/// The service's latest rollout as a whole: a failed deployment still listed wins (it is what
/// the circuit breaker leaves behind while rolling back), else the primary's reading. Returns the
/// deployment the verdict is about.
pub(crate) fn current<'a>(
    service: &'a Service,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Option<(&'a Deployment, Verdict)> {
    if let Some(failed) = service
        .deployments
        .iter()
        .find(|d| d.rollout_state == Some(RolloutState::Failed))
    {
        return Some((failed, judge(service, &failed.id, now, limits)));
    }
    let p = service.primary()?;
    // A replacement in flight beside a primary that still serves traffic (a CodeDeploy
    // blue/green task set before traffic moves) is the rollout to read.
    if let Some(replacement) = service
        .deployments
        .iter()
        .filter(|d| !d.is_primary() && d.rollout_state == Some(RolloutState::InProgress))
        .filter(|d| d.created_at > p.created_at)
        .max_by_key(|d| d.created_at)
    {
        return Some((replacement, judge(service, &replacement.id, now, limits)));
    }
    Some((p, judge(service, &p.id, now, limits)))
}

/// Whether a deployment of the service is under way (rolling, rolling back, or an older one still
/// draining): another forced deployment must not be stacked on it.
pub(crate) fn busy(service: &Service) -> bool {
    service.deployments.len() > 1
        || service
            .primary()
            .is_some_and(|p| p.rollout_state == Some(RolloutState::InProgress))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{Controller, DeploymentStatus};

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("time")
    }

    fn dep(
        id: &str,
        status: DeploymentStatus,
        state: Option<RolloutState>,
        running: i32,
        failed: i32,
    ) -> Deployment {
        Deployment {
            id: id.into(),
            status,
            task_definition: "td".into(),
            created_at: t(0),
            rollout_state: state,
            rollout_state_reason: None,
            desired_count: 2,
            running_count: running,
            failed_tasks: failed,
        }
    }

    fn svc(deployments: Vec<Deployment>) -> Service {
        Service {
            arn: "a".into(),
            name: "s".into(),
            cluster_arn: "c".into(),
            status: "ACTIVE".into(),
            task_definition: "td".into(),
            desired_count: 2,
            controller: Controller::Ecs,
            shape: Default::default(),
            deployments,
            tags: Default::default(),
        }
    }

    use DeploymentStatus::{Active, Primary};
    use RolloutState::{Completed, Failed, InProgress};

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn rollout_state_decides_where_reported() {
        let s = svc(vec![dep("new", Primary, Some(Completed), 2, 0)]);
        assert_eq!(judge(&s, "new", t(10), &limits()), Verdict::Healthy);
        let s = svc(vec![
            dep("new", Primary, Some(InProgress), 1, 0),
            dep("old", Active, Some(Completed), 1, 0),
        ]);
        assert_eq!(judge(&s, "new", t(10), &limits()), Verdict::InProgress);
        let s = svc(vec![dep("new", Primary, Some(Failed), 0, 5)]);
        assert!(matches!(
            judge(&s, "new", t(10), &limits()),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn without_rollout_state_running_equals_desired_and_old_drained() {
        let s = svc(vec![
            dep("new", Primary, None, 2, 0),
            dep("old", Active, None, 1, 0),
        ]);
        assert_eq!(
            judge(&s, "new", t(10), &limits()),
            Verdict::InProgress,
            "old not drained"
        );
        let s = svc(vec![dep("new", Primary, None, 1, 0)]);
        assert_eq!(judge(&s, "new", t(10), &limits()), Verdict::InProgress);
        let s = svc(vec![dep("new", Primary, None, 2, 0)]);
        assert_eq!(judge(&s, "new", t(10), &limits()), Verdict::Healthy);
    }

    #[test]
    fn failed_tasks_threshold_fails_only_an_unfinished_deployment() {
        let s = svc(vec![dep("new", Primary, Some(InProgress), 0, 3)]);
        assert!(matches!(
            judge(&s, "new", t(10), &limits()),
            Verdict::Failed { .. }
        ));
        let four = Limits {
            failed_tasks_threshold: 4,
            ..limits()
        };
        assert_eq!(judge(&s, "new", t(10), &four), Verdict::InProgress);
        let off = Limits {
            failed_tasks_threshold: 0,
            ..limits()
        };
        assert_eq!(judge(&s, "new", t(10), &off), Verdict::InProgress);
        let s = svc(vec![dep("new", Primary, Some(Completed), 2, 3)]);
        assert_eq!(
            judge(&s, "new", t(10), &limits()),
            Verdict::Healthy,
            "tasks retried their way to a completed rollout"
        );
    }

    #[test]
    fn circuit_breaker_rollbacks_are_recognised_however_they_show() {
        let mut back = dep("back", Primary, Some(InProgress), 0, 0);
        back.rollout_state_reason =
            Some("ECS deployment circuit breaker: rolling back to deploymentId old".into());
        let s = svc(vec![
            back.clone(),
            dep("new", Active, Some(InProgress), 0, 1),
        ]);
        assert!(matches!(
            judge(&s, "new", t(10), &limits()),
            Verdict::RolledBack { .. }
        ));
        let s = svc(vec![back.clone()]);
        assert!(
            matches!(
                judge(&s, "new", t(10), &limits()),
                Verdict::RolledBack { .. }
            ),
            "ours already gone"
        );
        // What the service itself shows while it rolls back: the gates and holds see this.
        let (_, v) = current(&s, t(10), &limits()).expect("primary");
        assert!(matches!(v, Verdict::RolledBack { .. }), "{v:?}");
        let s = svc(vec![dep("ci", Primary, Some(InProgress), 0, 0)]);
        assert_eq!(
            judge(&s, "new", t(10), &limits()),
            Verdict::Superseded { by: "ci".into() }
        );
        let s = svc(vec![dep("x-rollback", Primary, Some(InProgress), 0, 0)]);
        assert!(matches!(
            current(&s, t(10), &limits()),
            Some((_, Verdict::RolledBack { .. }))
        ));
    }

    #[test]
    fn a_failed_deployment_still_listed_is_the_services_story() {
        let s = svc(vec![
            dep("back", Primary, Some(InProgress), 0, 0),
            dep("new", Active, Some(Failed), 0, 4),
        ]);
        let (d, v) = current(&s, t(10), &limits()).expect("some");
        assert_eq!(d.id, "new");
        assert!(matches!(v, Verdict::Failed { .. }));
    }

    #[test]
    fn in_progress_past_the_timeout_is_stuck() {
        let s = svc(vec![dep("new", Primary, Some(InProgress), 0, 0)]);
        assert_eq!(judge(&s, "new", t(900), &limits()), Verdict::InProgress);
        assert_eq!(
            judge(&s, "new", t(901), &limits()),
            Verdict::Stuck {
                since: t(0),
                waiting_for: None
            }
        );
        assert!(busy(&s));
    }
}
