//! Executing a change set: `UpdateService(forceNewDeployment)` per service, behind the
//! [`Rollout`] trait so that the core does not care how carefully it is done. [`engine`] is the
//! careful way (canary, waves, bounded concurrency, health watching, halt); what a deployment
//! amounts to is [`crate::deployment`]'s reading, shared with the decisions.

pub mod engine;
pub(crate) mod strategy;

use async_trait::async_trait;
use serde::Serialize;

use crate::plan::{ChangeSet, ServiceKey};

/// What became of one service of a change set.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `UpdateService` succeeded; health was not watched.
    Triggered {
        /// The new deployment's id.
        deployment: String,
    },
    /// The new deployment became healthy.
    Healthy {
        /// The deployment's id.
        deployment: String,
        /// Whether every running task started after the change (see [`Proof`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        proof: Option<Proof>,
    },
    /// The rollout failed (the call failed, or the deployment did not become healthy).
    Failed {
        /// Why.
        reason: String,
    },
    /// Not started because an earlier rollout of the change set failed.
    Halted {
        /// Which rollout's failure halted it.
        reason: String,
    },
    /// Not started: described again right before its turn, the service no longer needed it
    /// (deleted, opted out, scaled to 0, already fresh). Not a failure; halts nothing.
    Skipped {
        /// What changed since the plan.
        reason: String,
    },
    /// Not started: described again right before its turn, the service had a deployment in
    /// progress (someone else's). Decided again later; halts nothing.
    Deferred {
        /// Which deployment.
        reason: String,
    },
    /// Started, and waiting for someone's action (a blue/green lifecycle hook awaiting
    /// `ContinueServiceDeployment`) when its time ran out: neither a failure nor healthy. Nothing
    /// further of the change set starts while it waits.
    Paused {
        /// The deployment.
        deployment: String,
        /// What it waits for.
        reason: String,
    },
}

impl Outcome {
    /// Whether this counts as a success (the service carries the change, or no longer needs
    /// to).
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            Outcome::Triggered { .. } | Outcome::Healthy { .. } | Outcome::Skipped { .. }
        )
    }

    /// Whether it went wrong (failed, or halted by a failure).
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed { .. } | Outcome::Halted { .. })
    }

    /// The explanation, for outcomes that have one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Failed { reason }
            | Outcome::Halted { reason }
            | Outcome::Skipped { reason }
            | Outcome::Deferred { reason }
            | Outcome::Paused { reason, .. } => Some(reason),
            Outcome::Triggered { .. } | Outcome::Healthy { .. } => None,
        }
    }

    /// A short label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Triggered { .. } => "rolled",
            Outcome::Healthy { .. } => "rolled (healthy)",
            Outcome::Failed { .. } => "FAILED",
            Outcome::Halted { .. } => "halted",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Paused { .. } => "paused (awaiting action)",
        }
    }
}

/// After a healthy rollout: did the new value reach every running task? A task that started
/// before the change still holds the old value, whatever the deployment says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "proof", rename_all = "snake_case")]
pub enum Proof {
    /// Every running task started after the change.
    Verified {
        /// How many were looked at.
        tasks: usize,
    },
    /// These running tasks started before the change.
    Older {
        /// Their ARNs.
        tasks: Vec<String>,
    },
    /// The service runs no task (nothing to prove).
    NoTasks,
    /// The tasks could not be read (the reason says why); the rollout itself is healthy.
    Unchecked {
        /// Why.
        reason: String,
    },
}

/// Executes change sets.
#[async_trait]
pub trait Rollout: Send + Sync {
    /// Rolls the services of `set`, in its order, and reports each one's outcome.
    async fn execute(&self, set: &ChangeSet) -> Vec<(ServiceKey, Outcome)>;
}

/// Where a service of a change set is.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Not started.
    Waiting,
    /// `UpdateService` done; being watched.
    Rolling {
        /// The new deployment.
        deployment: String,
        /// Where the changes it rolls for come from (who made them, which events), for the log
        /// line and the outcome event.
        why: Vec<String>,
    },
    /// Finished.
    Done(Outcome),
}

/// Told of every change of phase, to show progress.
pub trait Progress: Send + Sync {
    /// `key` entered `phase`.
    fn update(&self, key: &ServiceKey, phase: &Phase);

    /// [`update`](Self::update), with where the changes it rolls for come from (who made them,
    /// which events: see [`crate::event::Provenance`]), for whoever reports outcomes.
    fn update_why(&self, key: &ServiceKey, phase: &Phase, why: &[String]) {
        let _ = why;
        self.update(key, phase);
    }
}

/// Where the changes behind a change set's entry come from, one line per stale reference.
pub(crate) fn why_of(change: &crate::plan::Change) -> Vec<String> {
    change
        .findings
        .iter()
        .map(|f| match &f.provenance {
            Some(p) => format!("{}: {p}", f.secret),
            None => f.secret.clone(),
        })
        .collect()
}

/// Progress as log lines (for logs and non-terminals).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogProgress;

impl Progress for LogProgress {
    fn update(&self, key: &ServiceKey, phase: &Phase) {
        match phase {
            Phase::Waiting => tracing::debug!(service = %key, "waiting"),
            Phase::Rolling { deployment, why } => {
                tracing::info!(service = %key, deployment, why = ?why, "rolling")
            }
            Phase::Done(o) if o.is_success() => {
                tracing::info!(service = %key, outcome = o.label(), "done")
            }
            Phase::Done(o) => tracing::warn!(service = %key, outcome = o.label(), ?o, "done"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Each rollout's `rolling` log line says where its changes come from (#25).
    #[test]
    fn the_rolling_line_says_who_made_the_change() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            LogProgress.update(
                &ServiceKey {
                    cluster: "prod".into(),
                    service: "api".into(),
                    ..ServiceKey::default()
                },
                &Phase::Rolling {
                    deployment: "ecs-svc/1".into(),
                    why: vec!["app/db: announced by api_call event e-1 by arn:aws:sts::1:assumed-role/r/x".into()],
                },
            );
        });
        let text = String::from_utf8_lossy(&out.0.lock().expect("lock")).to_string();
        assert!(
            text.contains("rolling")
                && text.contains("assumed-role/r/x")
                && text.contains("prod/api"),
            "{text}"
        );
    }
}
