//! ECS's rolling update: `UpdateService(forceNewDeployment)`, read through the service's
//! `deployments` array ([`crate::deployment::judge`]).

use async_trait::async_trait;

use super::{Context, Reading, Started, Strategy};
use crate::aws::{AwsResult, Service};
use crate::deployment::{self, Verdict};
use crate::plan::ServiceKey;

pub(crate) struct EcsForce<'a> {
    pub(crate) cx: &'a Context,
}

/// Forces a new deployment (the guard paces it, checks the lease and whether a lost answer
/// took effect).
pub(super) async fn force(cx: &Context, service: &Service) -> AwsResult<Started> {
    let at = cx.clock.now() - chrono::Duration::seconds(1);
    let d = cx
        .clients
        .ecs
        .force_new_deployment(service.cluster_name(), &service.name)
        .await?;
    Ok(Started { id: d.id, at })
}

#[async_trait]
impl Strategy for EcsForce<'_> {
    fn name(&self) -> &'static str {
        "forced deployment (rolling)"
    }

    async fn start(&self, service: &Service) -> AwsResult<Started> {
        force(self.cx, service).await
    }

    async fn read(&self, key: &ServiceKey, started: &Started) -> Reading {
        let service = match self
            .cx
            .clients
            .ecs
            .describe_services(&key.cluster, std::slice::from_ref(&key.service))
            .await
        {
            Ok(mut found) if !found.is_empty() => found.remove(0),
            Ok(_) => return Reading::Failed("the service disappeared during its rollout".into()),
            Err(e) => return Reading::Unreadable(e.to_string()),
        };
        match deployment::judge(&service, &started.id, self.cx.clock.now(), &self.cx.limits) {
            Verdict::InProgress => Reading::InProgress,
            Verdict::Healthy => Reading::Healthy,
            Verdict::Superseded { by } => Reading::Superseded(by),
            Verdict::Stuck { .. } => Reading::Failed(format!(
                "deployment {} not healthy after {} (timeout)",
                started.id,
                humantime::format_duration(self.cx.limits.stuck_after)
            )),
            v @ (Verdict::Failed { .. } | Verdict::RolledBack { .. }) => {
                Reading::Failed(v.problem(&started.id).unwrap_or_default())
            }
        }
    }
}
