//! `CODE_DEPLOY` services: ECS refuses `forceNewDeployment` for them, so they are rolled the way
//! they deploy, with a CodeDeploy deployment of their **current** task definition (the same
//! revision: new tasks, the secrets resolved again) on the deployment group that manages them,
//! and read through `GetDeployment`. `UpdateService` is never sent to them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{Context, Reading, Started, Strategy};
use crate::aws::{all_pages, AwsError, AwsResult, CodeDeployStatus, ErrorKind, Service};
use crate::plan::ServiceKey;

/// How long a reading of the deployment groups is trusted for a service it does not name (a
/// group created since): the next rollout of such a service reads them again.
const GROUPS_TTL: Duration = Duration::from_secs(60);

/// (cluster, service) → (application, group), as CodeDeploy's ECS deployment groups name them.
type GroupMap = HashMap<(String, String), (String, String)>;

/// CodeDeploy's deployment groups, read once and again only when a service is missing from a
/// reading older than [`GROUPS_TTL`].
#[derive(Default)]
pub(crate) struct Groups(Mutex<Option<(tokio::time::Instant, GroupMap)>>);

impl Groups {
    /// Forgets what was read: a group named there no longer exists.
    fn forget(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn lookup(&self, key: &(String, String)) -> Option<Option<(String, String)>> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (at, map) = g.as_ref()?;
        match map.get(key) {
            Some(found) => Some(Some(found.clone())),
            None if at.elapsed() < GROUPS_TTL => Some(None),
            None => None,
        }
    }

    async fn group_of(
        &self,
        cx: &Context,
        cluster: &str,
        service: &str,
    ) -> AwsResult<(String, String)> {
        let key = (cluster.to_string(), service.to_string());
        let cached = match self.lookup(&key) {
            Some(found) => found,
            None => {
                let map = read_groups(cx).await?;
                let found = map.get(&key).cloned();
                *self.0.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((tokio::time::Instant::now(), map));
                found
            }
        };
        cached.ok_or_else(|| {
            AwsError::new(
                "codedeploy:GetDeploymentGroup",
                format!("{cluster}/{service}"),
                ErrorKind::NotFound,
                "no CodeDeploy deployment group of this account and region deploys this service",
            )
        })
    }
}

async fn read_groups(cx: &Context) -> AwsResult<GroupMap> {
    let cd = &cx.clients.codedeploy;
    let mut map = HashMap::new();
    for app in all_pages(|t| cd.list_applications(t)).await? {
        // The operator is granted the applications it may deploy (`CodeDeployApplications` in
        // infra/), not every application the account lists: a refused one is not ours.
        let groups = match all_pages(|t| cd.list_deployment_groups(&app, t)).await {
            Ok(g) => g,
            Err(e) if e.kind == ErrorKind::AccessDenied => {
                tracing::debug!(application = %app, error = %e, "not a CodeDeploy application this operator may deploy");
                continue;
            }
            Err(e) => return Err(e),
        };
        for group in groups {
            let g = cd.get_deployment_group(&app, &group).await?;
            for (cluster, service) in g.services {
                map.insert((cluster, service), (app.clone(), group.clone()));
            }
        }
    }
    Ok(map)
}

/// The AppSpec that deploys `service`'s current revision again behind its load balancer.
pub(crate) fn appspec(service: &Service) -> Result<String, String> {
    let task_definition = service
        .primary()
        .map(|d| d.task_definition.clone())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| service.task_definition.clone());
    if task_definition.is_empty() {
        return Err("it names no task definition".into());
    }
    let Some(lb) = service.shape.load_balancers.first() else {
        return Err("it has no load balancer, which a CodeDeploy ECS deployment needs".into());
    };
    Ok(serde_json::json!({
        "version": 0.0,
        "Resources": [{
            "TargetService": {
                "Type": "AWS::ECS::Service",
                "Properties": {
                    "TaskDefinition": task_definition,
                    "LoadBalancerInfo": {
                        "ContainerName": lb.container_name,
                        "ContainerPort": lb.container_port,
                    },
                },
            },
        }],
    })
    .to_string())
}

pub(crate) struct CodeDeployStrategy<'a> {
    pub(crate) cx: &'a Context,
}

#[async_trait]
impl Strategy for CodeDeployStrategy<'_> {
    fn name(&self) -> &'static str {
        "CodeDeploy deployment (same revision)"
    }

    async fn start(&self, service: &Service) -> AwsResult<Started> {
        let resource = format!("{}/{}", service.cluster_name(), service.name);
        let spec = appspec(service).map_err(|why| {
            AwsError::new(
                "codedeploy:CreateDeployment",
                &resource,
                ErrorKind::Other,
                why,
            )
        })?;
        let at = self.cx.clock.now() - chrono::Duration::seconds(1);
        let mut fresh = false;
        let (id, app, group) = loop {
            let (app, group) = self
                .cx
                .groups
                .group_of(self.cx, service.cluster_name(), &service.name)
                .await?;
            match self
                .cx
                .clients
                .codedeploy
                .create_deployment(&app, &group, &spec)
                .await
            {
                Ok(id) => break (id, app, group),
                // The group was replaced since it was read: read the groups again, once.
                Err(e) if e.kind == ErrorKind::NotFound && !fresh => {
                    tracing::info!(service = %resource, group = %group, error = %e, "the deployment group is gone: reading the groups again");
                    self.cx.groups.forget();
                    fresh = true;
                }
                Err(e) => return Err(e),
            }
        };
        tracing::info!(service = %resource, application = %app, group = %group, deployment = %id, "CodeDeploy deployment created");
        Ok(Started { id, at })
    }

    async fn failed_since(
        &self,
        service: &Service,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Option<String> {
        let (app, group) = self
            .cx
            .groups
            .group_of(self.cx, service.cluster_name(), &service.name)
            .await
            .ok()?;
        match self.cx.clients.codedeploy.failed_since(&app, &group, since).await {
            Ok(failed) => failed.first().map(|id| {
                format!("its CodeDeploy deployment {id} after the change failed or was stopped (CodeDeploy rolled it back): not tried again until the value changes again")
            }),
            Err(e) => {
                tracing::warn!(service = %service.name, error = %e, "could not read the group's failed deployments");
                None
            }
        }
    }

    async fn read(&self, _key: &ServiceKey, started: &Started) -> Reading {
        match self.cx.clients.codedeploy.get_deployment(&started.id).await {
            Ok(CodeDeployStatus::Succeeded) => Reading::Healthy,
            // `Ready`: the replacement is up and CodeDeploy waits for someone to reroute traffic
            // (ContinueDeployment): someone's action, not a slow rollout.
            Ok(CodeDeployStatus::InProgress(status)) if status == "Ready" => Reading::Awaiting(format!(
                "CodeDeploy deployment {} is Ready: it waits for someone to reroute traffic (ContinueDeployment)",
                started.id
            )),
            Ok(CodeDeployStatus::InProgress(_)) => Reading::InProgress,
            Ok(CodeDeployStatus::Failed(why)) => {
                Reading::Failed(format!("CodeDeploy deployment {} {why}", started.id))
            }
            Err(e) => Reading::Unreadable(e.to_string()),
        }
    }
}
