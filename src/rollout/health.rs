//! Whether a forced deployment is healthy yet: a pure reading of `DescribeServices`.
//!
//! Healthy: `rolloutState` `COMPLETED` where the service reports it; otherwise (no circuit
//! breaker, no rollout state) our deployment is primary with running = desired and every older
//! deployment drained. Failed: `rolloutState` `FAILED`, our deployment rolled back by the circuit
//! breaker (it is no longer primary and a rollback took its place), or `failedTasks` reaching the
//! threshold. A deployment replaced by a newer one that is *not* a rollback (someone deployed on
//! top) counts as done: the newer deployment started after ours, so its tasks read the fresh value.

use crate::aws::Service;

/// The health of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Done and healthy.
    Healthy,
    /// Replaced by a newer deployment that is not a rollback.
    Superseded {
        /// The newer deployment.
        by: String,
    },
    /// Still rolling.
    Progressing,
    /// Failed.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Reads the health of `deployment_id` off a described service.
pub fn health(service: &Service, deployment_id: &str, failed_tasks_threshold: i32) -> Health {
    let ours = service.deployments.iter().find(|d| d.id == deployment_id);
    let primary = service.primary();
    let Some(ours) = ours else {
        return match primary {
            Some(p) if is_rollback(p.rollout_state_reason.as_deref()) => Health::Failed {
                reason: format!(
                    "rolled back: {}",
                    p.rollout_state_reason
                        .as_deref()
                        .unwrap_or("circuit breaker")
                ),
            },
            Some(p) => Health::Superseded { by: p.id.clone() },
            None => Health::Failed {
                reason: "the service has no primary deployment".into(),
            },
        };
    };
    if ours.rollout_state.as_deref() == Some("FAILED") {
        let why = ours
            .rollout_state_reason
            .as_deref()
            .unwrap_or("rolloutState FAILED");
        return Health::Failed {
            reason: why.to_string(),
        };
    }
    if !ours.is_primary() {
        if let Some(p) = primary {
            if is_rollback(p.rollout_state_reason.as_deref()) || p.id.ends_with("-rollback") {
                return Health::Failed {
                    reason: format!("rolled back to {}", p.id),
                };
            }
            return Health::Superseded { by: p.id.clone() };
        }
    }
    if failed_tasks_threshold > 0 && ours.failed_tasks >= failed_tasks_threshold {
        return Health::Failed {
            reason: format!(
                "{} task(s) failed to start (threshold {failed_tasks_threshold})",
                ours.failed_tasks
            ),
        };
    }
    match ours.rollout_state.as_deref() {
        Some("COMPLETED") => Health::Healthy,
        Some(_) => Health::Progressing,
        None => {
            let drained = service.deployments.len() == 1;
            if ours.is_primary() && drained && ours.running_count >= ours.desired_count {
                Health::Healthy
            } else {
                Health::Progressing
            }
        }
    }
}

fn is_rollback(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| {
        let r = r.to_ascii_lowercase();
        r.contains("circuit breaker") || r.contains("rolling back") || r.contains("rolled back")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{Controller, Deployment};
    use chrono::Utc;

    fn dep(id: &str, status: &str, state: Option<&str>, running: i32, failed: i32) -> Deployment {
        Deployment {
            id: id.into(),
            status: status.into(),
            task_definition: "td".into(),
            created_at: Utc::now(),
            rollout_state: state.map(String::from),
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
            deployments,
            tags: Default::default(),
        }
    }

    #[test]
    fn rollout_state_decides_where_reported() {
        let s = svc(vec![dep("new", "PRIMARY", Some("COMPLETED"), 2, 0)]);
        assert_eq!(health(&s, "new", 3), Health::Healthy);
        let s = svc(vec![
            dep("new", "PRIMARY", Some("IN_PROGRESS"), 1, 0),
            dep("old", "ACTIVE", Some("COMPLETED"), 1, 0),
        ]);
        assert_eq!(health(&s, "new", 3), Health::Progressing);
        let s = svc(vec![dep("new", "PRIMARY", Some("FAILED"), 0, 5)]);
        assert!(matches!(health(&s, "new", 3), Health::Failed { .. }));
    }

    #[test]
    fn without_rollout_state_running_equals_desired_and_old_drained() {
        let s = svc(vec![
            dep("new", "PRIMARY", None, 2, 0),
            dep("old", "ACTIVE", None, 1, 0),
        ]);
        assert_eq!(health(&s, "new", 3), Health::Progressing, "old not drained");
        let s = svc(vec![dep("new", "PRIMARY", None, 1, 0)]);
        assert_eq!(health(&s, "new", 3), Health::Progressing, "not all running");
        let s = svc(vec![dep("new", "PRIMARY", None, 2, 0)]);
        assert_eq!(health(&s, "new", 3), Health::Healthy);
    }

    #[test]
    fn failed_tasks_threshold() {
        let s = svc(vec![dep("new", "PRIMARY", Some("IN_PROGRESS"), 0, 3)]);
        assert!(matches!(health(&s, "new", 3), Health::Failed { .. }));
        assert_eq!(health(&s, "new", 4), Health::Progressing);
        assert_eq!(health(&s, "new", 0), Health::Progressing, "0 disables it");
    }

    #[test]
    fn circuit_breaker_rollback_fails_and_a_newer_deploy_supersedes() {
        let mut back = dep("back", "PRIMARY", Some("IN_PROGRESS"), 0, 0);
        back.rollout_state_reason =
            Some("ECS deployment circuit breaker: rolling back to deploymentId old".into());
        let s = svc(vec![
            back.clone(),
            dep("new", "ACTIVE", Some("IN_PROGRESS"), 0, 1),
        ]);
        assert!(matches!(health(&s, "new", 3), Health::Failed { .. }));
        let s = svc(vec![back]);
        assert!(
            matches!(health(&s, "new", 3), Health::Failed { .. }),
            "ours already gone"
        );
        let s = svc(vec![dep("ci", "PRIMARY", Some("IN_PROGRESS"), 0, 0)]);
        assert_eq!(health(&s, "new", 3), Health::Superseded { by: "ci".into() });
    }
}
