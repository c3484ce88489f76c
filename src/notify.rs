//! Telling the world about rollouts: log lines, metrics, and outcome events on an EventBridge
//! bus (source `ecs-reloader`), for `serve` and the Lambda.
//!
//! Events are put in the background so that a slow bus never slows a rollout, and
//! [`Notifier::flush`] waits for every put still under way: the Lambda calls it before it
//! answers, because an execution environment may be frozen right after the answer and a put
//! still in flight would then never leave.

use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::task::JoinSet;

use crate::aws::queue::Bus;
use crate::decide::Decision;
use crate::metrics::Metrics;
use crate::plan::ServiceKey;
use crate::reconcile::Pass;
use crate::rollout::{LogProgress, Outcome, Phase, Progress, Proof};

/// Detail-types of the outcome events.
pub mod detail_type {
    /// `UpdateService` succeeded.
    pub(crate) const STARTED: &str = "Rollout Started";
    /// The new deployment is healthy (or was triggered, when not watched).
    pub(crate) const SUCCEEDED: &str = "Rollout Succeeded";
    /// The rollout failed.
    pub(crate) const FAILED: &str = "Rollout Failed";
    /// Not started: an earlier rollout of the change set failed.
    pub(crate) const HALTED: &str = "Rollout Halted";
    /// Stale, but held: another dependant's rollout after the same change went wrong.
    pub(crate) const HELD: &str = "Rollout Held";
    /// Not started: the service no longer needed it when its turn came.
    pub(crate) const SKIPPED: &str = "Rollout Skipped";
    /// A target (an account and region) could not be worked on: its role could not be assumed,
    /// or its calls were refused. Every other target went on.
    pub(crate) const TARGET_UNREACHABLE: &str = "Target Unreachable";
    /// Not started: someone else's deployment was in progress when its turn came.
    pub(crate) const DEFERRED: &str = "Rollout Deferred";
    /// Stale, but notify-only: waits for a person's approval.
    pub(crate) const PENDING: &str = "Rollout Pending";
    /// Started, and waiting for someone's action (a lifecycle hook) when its time ran out.
    pub(crate) const PAUSED: &str = "Rollout Paused";
    /// Resolves a changed value, but nobody here may roll it (an `EXTERNAL` controller): its own
    /// controller must.
    pub(crate) const NEEDS_ATTENTION: &str = "Rollout Needs Attention";
    /// After a healthy rollout: whether every running task started after the change (and if
    /// not, which did not).
    pub(crate) const VERIFIED: &str = "Rollout Verified";
    /// A standalone task (not in a service) holds a value changed since it started: never
    /// rolled or stopped, for a person to act on.
    pub(crate) const STANDALONE_TASK_STALE: &str = "Standalone Task Stale";
}

/// Logs, counts and publishes.
pub struct Notifier {
    metrics: Arc<Metrics>,
    bus: Option<Arc<dyn Bus>>,
    puts: Mutex<JoinSet<()>>,
    /// `serve`'s status page, when there is one.
    board: Option<Arc<crate::status_page::Board>>,
}

impl Notifier {
    /// Reports to `metrics`, and to `bus` when there is one.
    pub fn new(metrics: Arc<Metrics>, bus: Option<Arc<dyn Bus>>) -> Self {
        Notifier {
            metrics,
            bus,
            puts: Mutex::new(JoinSet::new()),
            board: None,
        }
    }

    /// Keeps `serve`'s status page up to date too.
    pub(crate) fn with_board(mut self, board: Arc<crate::status_page::Board>) -> Self {
        self.board = Some(board);
        self
    }

    /// The status page's board, when there is one.
    pub(crate) fn board(&self) -> Option<&Arc<crate::status_page::Board>> {
        self.board.as_ref()
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn publish(&self, detail_type: &'static str, detail: serde_json::Value) {
        let Some(bus) = self.bus.clone() else { return };
        let mut puts = self.puts.lock().unwrap_or_else(|p| p.into_inner());
        // Finished puts are reaped here, so that a long-running `serve` keeps none.
        while puts.try_join_next().is_some() {}
        puts.spawn(async move {
            if let Err(e) = bus.put(detail_type, &detail).await {
                tracing::warn!(error = %e, detail_type, "could not publish an outcome event");
            }
        });
    }

    /// Waits until every outcome event put so far has been answered.
    pub async fn flush(&self) {
        let mut pending = {
            let mut puts = self.puts.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *puts)
        };
        while pending.join_next().await.is_some() {}
    }

    /// After a pass: makes held services loud (a metric and a `Rollout Held` event each,
    /// naming the rollout that went wrong), so that an alarm fires however the failure was
    /// seen — by the engine that watched it, or by a later pass, as in the Lambda; and tells of
    /// notify-only services that wait for approval (`Rollout Pending`, with the secrets and the
    /// reason).
    pub fn after_pass(&self, pass: &Pass) {
        if let Some(board) = &self.board {
            board.after_pass(pass, chrono::Utc::now());
        }
        for t in &pass.targets {
            self.metrics
                .set_target_up(&t.account, &t.region, t.problem.is_none());
            let Some(problem) = &t.problem else { continue };
            self.metrics.target_failure(&t.account, &t.region);
            tracing::error!(account = %t.account, region = %t.region, error = %problem, "target unreachable; the other targets went on");
            self.publish(
                detail_type::TARGET_UNREACHABLE,
                json!({
                    "account": t.account,
                    "region": t.region,
                    "role_arn": t.role_arn,
                    "error": problem,
                }),
            );
        }
        for t in &pass.assessment.standalone_tasks {
            // Counted with the rollout outcomes that need a person (held, pending).
            self.metrics.rollout("standalone_task_stale");
            let secrets = t.secrets();
            tracing::warn!(cluster = %t.cluster, task = %t.task_id, secrets = ?secrets, "a standalone task holds an old value (not rolled, not stopped)");
            let reasons: Vec<String> = t
                .findings
                .iter()
                .map(|f| format!("{}: {}", f.secret, f.reason))
                .collect();
            self.publish(
                detail_type::STANDALONE_TASK_STALE,
                json!({
                    "cluster": t.cluster,
                    "task": t.task_id,
                    "task_arn": t.task_arn,
                    "task_definition": t.task_definition,
                    "started_at": t.started_at,
                    "secrets": secrets,
                    "reasons": reasons,
                }),
            );
        }
        for a in &pass.assessment.services {
            let (detail_type, kind, reason, findings) = match &a.decision {
                Decision::Held { reason, findings } => {
                    (detail_type::HELD, "held", reason, findings)
                }
                Decision::Pending { reason, findings } => {
                    (detail_type::PENDING, "pending", reason, findings)
                }
                Decision::Skipped { reason, findings } if !findings.is_empty() => (
                    detail_type::NEEDS_ATTENTION,
                    "needs_attention",
                    reason,
                    findings,
                ),
                _ => continue,
            };
            self.metrics.rollout(kind);
            self.metrics
                .target_rollout(&a.key.account, &a.key.region, kind);
            tracing::warn!(service = %a.key, reason, "{kind}");
            let secrets: Vec<&str> = findings.iter().map(|f| f.secret.as_str()).collect();
            let changes: Vec<String> = findings
                .iter()
                .filter_map(|f| f.provenance.as_ref().map(|p| format!("{}: {p}", f.secret)))
                .collect();
            self.publish(
                detail_type,
                json!({
                    "cluster": a.key.cluster,
                    "service": a.key.service,
                    "account": a.key.account,
                    "region": a.key.region,
                    "reason": reason,
                    "secrets": secrets,
                    "changes": changes,
                }),
            );
        }
    }
}

/// The detail-type of an outcome event, and the metric kind, for a phase.
fn outcome_event(phase: &Phase) -> Option<(&'static str, &'static str)> {
    match phase {
        Phase::Waiting => None,
        Phase::Rolling { .. } => Some((detail_type::STARTED, "started")),
        Phase::Done(Outcome::Healthy { .. } | Outcome::Triggered { .. }) => {
            Some((detail_type::SUCCEEDED, "succeeded"))
        }
        Phase::Done(Outcome::Failed { .. }) => Some((detail_type::FAILED, "failed")),
        Phase::Done(Outcome::Halted { .. }) => Some((detail_type::HALTED, "halted")),
        Phase::Done(Outcome::Skipped { .. }) => Some((detail_type::SKIPPED, "skipped")),
        Phase::Done(Outcome::Deferred { .. }) => Some((detail_type::DEFERRED, "deferred")),
        Phase::Done(Outcome::Paused { .. }) => Some((detail_type::PAUSED, "paused")),
    }
}

impl Progress for Notifier {
    fn update(&self, key: &ServiceKey, phase: &Phase) {
        self.update_why(key, phase, &[]);
    }

    /// Every outcome event carries where its changes come from (`changes`).
    fn update_why(&self, key: &ServiceKey, phase: &Phase, why: &[String]) {
        LogProgress.update(key, phase);
        if let Some(board) = &self.board {
            board.rollout(key, phase, why, chrono::Utc::now());
        }
        if let Phase::Done(Outcome::Healthy {
            deployment,
            proof: Some(proof),
        }) = phase
        {
            let (kind, verified) = match proof {
                Proof::Verified { .. } => ("verified", Some(true)),
                Proof::Older { .. } => ("unverified", Some(false)),
                Proof::NoTasks | Proof::Unchecked { .. } => ("unchecked", None),
            };
            self.metrics.rollout(kind);
            if verified.is_some() {
                self.publish(
                    detail_type::VERIFIED,
                    json!({
                        "cluster": key.cluster,
                        "service": key.service,
                        "account": key.account,
                        "region": key.region,
                        "deployment": deployment,
                        "verified": verified,
                        "proof": proof,
                    }),
                );
            }
        }
        let Some((detail_type, kind)) = outcome_event(phase) else {
            return;
        };
        self.metrics.rollout(kind);
        self.metrics.target_rollout(&key.account, &key.region, kind);
        let detail = match phase {
            Phase::Rolling { deployment, why } => {
                json!({"cluster": key.cluster, "service": key.service, "account": key.account, "region": key.region, "deployment": deployment, "changes": why})
            }
            Phase::Done(o) => {
                json!({"cluster": key.cluster, "service": key.service, "account": key.account, "region": key.region, "outcome": o, "changes": why})
            }
            Phase::Waiting => return,
        };
        self.publish(detail_type, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::AwsResult;
    use async_trait::async_trait;
    use std::time::Duration;

    /// A bus that answers slowly and records what it was given.
    struct SlowBus(Mutex<Vec<String>>, Mutex<Vec<serde_json::Value>>);

    #[async_trait]
    impl Bus for SlowBus {
        async fn put(&self, detail_type: &str, detail: &serde_json::Value) -> AwsResult<()> {
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(detail_type.to_string());
            self.1
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(detail.clone());
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn flush_waits_for_every_put_under_way() {
        let bus = Arc::new(SlowBus(Mutex::default(), Mutex::default()));
        let n = Notifier::new(Arc::new(Metrics::new()), Some(bus.clone()));
        let key = ServiceKey {
            cluster: "prod".into(),
            service: "api".into(),
            ..ServiceKey::default()
        };
        n.update(
            &key,
            &Phase::Rolling {
                deployment: "d".into(),
                why: vec!["app/db: found by resync (no event)".into()],
            },
        );
        n.update_why(
            &key,
            &Phase::Done(Outcome::Failed {
                reason: "boom".into(),
            }),
            &["app/db: announced by api_call event e-1 by arn:aws:sts::1:assumed-role/r/x".into()],
        );
        assert!(bus.0.lock().expect("lock").is_empty(), "not yet answered");
        n.flush().await;
        let mut seen = bus.0.lock().expect("lock").clone();
        seen.sort();
        assert_eq!(seen, [detail_type::FAILED, detail_type::STARTED]);
        // Every outcome event says where its changes come from.
        let details = bus.1.lock().expect("lock").clone();
        assert!(
            details
                .iter()
                .all(|d| d["changes"].as_array().is_some_and(|c| !c.is_empty())),
            "{details:?}"
        );
        assert!(details.iter().any(|d| d["changes"][0]
            .as_str()
            .is_some_and(|c| c.contains("assumed-role/r/x"))));
    }
}
