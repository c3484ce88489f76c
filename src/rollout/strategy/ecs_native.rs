//! ECS's own blue/green, linear and canary strategies. A forced deployment runs the whole
//! strategy (both revisions side by side, traffic shifts, bake time, alarms, lifecycle hooks), so
//! it starts like a rolling one; but the `deployments` array says `COMPLETED` before the bake time
//! is over and says nothing of hooks or rollbacks, so it is read through its service deployment.

use std::time::Duration;

use async_trait::async_trait;

use super::{Context, Reading, Started, Strategy};
use crate::aws::{AwsResult, EcsStrategy, Service};
use crate::plan::ServiceKey;

/// How far before the call the listing reaches back (our clock and AWS's may differ).
const LIST_MARGIN: chrono::Duration = chrono::Duration::seconds(30);

pub(crate) struct EcsNative<'a> {
    pub(crate) cx: &'a Context,
    pub(crate) strategy: EcsStrategy,
}

#[async_trait]
impl Strategy for EcsNative<'_> {
    fn name(&self) -> &'static str {
        match self.strategy {
            EcsStrategy::BlueGreen | EcsStrategy::Rolling => "forced deployment (ECS blue/green)",
            EcsStrategy::Linear => "forced deployment (ECS linear)",
            EcsStrategy::Canary => "forced deployment (ECS canary)",
        }
    }

    /// The bake time the service declares: ECS waits it out before calling the deployment
    /// successful, so it is not part of a rollout being slow.
    fn allowance(&self, service: &Service) -> Duration {
        service.shape.bake_time.unwrap_or_default()
    }

    async fn start(&self, service: &Service) -> AwsResult<Started> {
        super::ecs_force::force(self.cx, service).await
    }

    async fn read(&self, key: &ServiceKey, started: &Started) -> Reading {
        let found = match self
            .cx
            .clients
            .ecs
            // A margin for the distance between our clock and AWS's.
            .service_deployments(&key.cluster, &key.service, started.at - LIST_MARGIN)
            .await
        {
            Ok(f) => f,
            Err(e) => return Reading::Unreadable(e.to_string()),
        };
        // Ours: the one whose service revision (or ARN) ends with the deployment's number;
        // else the first created since the call (found is newest first).
        let id = started.id.rsplit('/').next().unwrap_or(&started.id);
        let tail = |arn: &str| arn.rsplit('/').next().map(str::to_string);
        let named = found.iter().find(|d| {
            tail(&d.arn).as_deref() == Some(id)
                || d.revision.as_deref().and_then(tail).as_deref() == Some(id)
        });
        let since_call = found
            .iter()
            .rev()
            .find(|d| d.created_at >= started.at - chrono::Duration::seconds(2));
        let Some(ours) = named.or(since_call).or_else(|| found.first()) else {
            // Not listed yet (ECS creates it a moment after the call answers).
            return Reading::InProgress;
        };
        if let Some(newer) = found
            .iter()
            .find(|d| d.created_at > ours.created_at && d.arn != ours.arn)
        {
            return Reading::Superseded(newer.arn.clone());
        }
        let why = |what: &str| {
            format!(
                "service deployment {} {what}{}",
                ours.arn,
                ours.status_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        };
        match ours.status.as_str() {
            "SUCCESSFUL" => Reading::Healthy,
            "ROLLBACK_REQUESTED"
            | "ROLLBACK_IN_PROGRESS"
            | "ROLLBACK_SUCCESSFUL"
            | "ROLLBACK_FAILED" => Reading::Failed(why("rolled back")),
            "STOPPED" | "STOP_REQUESTED" => Reading::Failed(why("stopped")),
            _ => match &ours.awaiting {
                Some(hook) => Reading::Awaiting(format!("service deployment {}: {hook}", ours.arn)),
                None => Reading::InProgress,
            },
        }
    }
}
