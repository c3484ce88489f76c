//! Executing a change set: `UpdateService(forceNewDeployment)` per service, behind the
//! [`Rollout`] trait so that the core does not care how carefully it is done.

use async_trait::async_trait;
use serde::Serialize;

use crate::aws::Clients;
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
}

impl Outcome {
    /// Whether this counts as a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Triggered { .. } | Outcome::Healthy { .. })
    }

    /// A short label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Triggered { .. } => "rolled",
            Outcome::Healthy { .. } => "rolled (healthy)",
            Outcome::Failed { .. } => "FAILED",
            Outcome::Halted { .. } => "halted",
        }
    }
}

/// Executes change sets.
#[async_trait]
pub trait Rollout: Send + Sync {
    /// Rolls the services of `set`, in its order, and reports each one's outcome.
    async fn execute(&self, set: &ChangeSet) -> Vec<(ServiceKey, Outcome)>;
}

/// The simplest rollout: trigger each service in order, one at a time, and do not watch.
pub struct Trigger {
    clients: Clients,
}

impl Trigger {
    /// A trigger over these clients.
    pub fn new(clients: Clients) -> Self {
        Trigger { clients }
    }
}

#[async_trait]
impl Rollout for Trigger {
    async fn execute(&self, set: &ChangeSet) -> Vec<(ServiceKey, Outcome)> {
        let mut out = Vec::with_capacity(set.changes.len());
        for c in &set.changes {
            let outcome = match self
                .clients
                .ecs
                .force_new_deployment(&c.key.cluster, &c.key.service)
                .await
            {
                Ok(d) => {
                    tracing::info!(service = %c.key, deployment = %d.id, "forced a new deployment");
                    Outcome::Triggered { deployment: d.id }
                }
                Err(e) => {
                    tracing::error!(service = %c.key, error = %e, "could not force a new deployment");
                    Outcome::Failed {
                        reason: e.to_string(),
                    }
                }
            };
            out.push((c.key.clone(), outcome));
        }
        out
    }
}
