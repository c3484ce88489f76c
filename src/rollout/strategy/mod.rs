//! How a service is rolled and how its rollout is read: one file per way, behind [`Strategy`].
//! The engine schedules, paces and halts; it knows no API call of its own.
//!
//! | controller, strategy | file | starts with | reads with |
//! |---|---|---|---|
//! | `ECS`, rolling | [`ecs_force`] | `UpdateService(forceNewDeployment)` | the `deployments` array |
//! | `ECS`, blue/green, linear, canary | [`ecs_native`] | `UpdateService(forceNewDeployment)` | `ListServiceDeployments` / `DescribeServiceDeployments` |
//! | `CODE_DEPLOY` | [`codedeploy`] | `codedeploy:CreateDeployment` (same revision) | `codedeploy:GetDeployment` |
//! | `EXTERNAL` | none: only its controller rolls it ([`crate::aws::Service::rolled_by`]) | | |
//!
//! Adding a way of rolling: one file here, a variant of [`RolledBy`], its line in [`Context::for_service`].

pub(crate) mod codedeploy;
pub(crate) mod ecs_force;
pub(crate) mod ecs_native;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::aws::{AwsResult, Clients, RolledBy, Service};
use crate::plan::ServiceKey;

/// A rollout that was started: what to read it by.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Started {
    /// The deployment's id as its reader knows it (an ECS deployment id, a CodeDeploy id).
    pub(crate) id: String,
    /// When it was started, on our clock less a second (the reader's lower bound).
    pub(crate) at: DateTime<Utc>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reading {
    /// Under way.
    InProgress,
    /// Waiting for someone's action (a lifecycle hook): not a failure, and not a timeout.
    Awaiting(String),
    /// Done and healthy.
    Healthy,
    /// A newer deployment replaced it (someone deployed meanwhile): it carries the change too.
    Superseded(String),
    /// Failed, rolled back or stopped: why.
    Failed(String),
    /// Could not be read this time (the guard already retried): look again.
    Unreadable(String),
}

/// One way of rolling a service.
#[async_trait]
pub(crate) trait Strategy: Send + Sync {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// How long beyond `[rollout] timeout` its rollouts may take by design (a bake time).
    fn allowance(&self, service: &Service) -> Duration {
        let _ = service;
        Duration::ZERO
    }
    /// Starts a rollout of `service` (as described right before), the same revision again, so
    /// that new tasks resolve every secret again.
    async fn start(&self, service: &Service) -> AwsResult<Started>;
    /// Reads where the rollout stands.
    async fn read(&self, key: &ServiceKey, started: &Started) -> Reading;
    /// A rollout of `service` made since `since` that failed, when the way it deploys hides
    /// that from ECS's deployments (CodeDeploy deletes a failed replacement): then the change
    /// is not tried again, and the rest of the change set halts.
    async fn failed_since(&self, service: &Service, since: DateTime<Utc>) -> Option<String> {
        let _ = (service, since);
        None
    }
}

/// What every strategy shares: the clients, the deployment limits, the clock, and CodeDeploy's
/// deployment groups (cached).
pub(crate) struct Context {
    clients: Clients,
    limits: crate::deployment::Limits,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    codedeploy: bool,
    groups: codedeploy::Groups,
}

impl Context {
    pub(crate) fn new(
        clients: Clients,
        limits: crate::deployment::Limits,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
        codedeploy: bool,
    ) -> Self {
        Context {
            clients,
            limits,
            clock,
            codedeploy,
            groups: codedeploy::Groups::default(),
        }
    }

    /// The way `service` is rolled, or why nobody here may roll it.
    pub(crate) fn for_service(&self, service: &Service) -> Result<Box<dyn Strategy + '_>, String> {
        Ok(match service.rolled_by(self.codedeploy)? {
            RolledBy::ForcedRolling => Box::new(ecs_force::EcsForce { cx: self }),
            RolledBy::ForcedNative(strategy) => {
                Box::new(ecs_native::EcsNative { cx: self, strategy })
            }
            RolledBy::CodeDeploy => Box::new(codedeploy::CodeDeployStrategy { cx: self }),
        })
    }
}
