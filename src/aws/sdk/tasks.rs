//! Every task of a cluster over the SDK, for the standalone-task report.

use async_trait::async_trait;

use super::{map_err_at, to_chrono, SdkEcs};
use crate::aws::{AwsResult, ClusterTasks, Page, RunningTask};

#[async_trait]
impl ClusterTasks for SdkEcs {
    async fn list_cluster_tasks(
        &self,
        cluster: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>> {
        let out = self
            .client
            .list_tasks()
            .cluster(cluster)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .max_results(100)
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| map_err_at("ecs:ListTasks", cluster, &self.place, e))?;
        Ok(Page {
            items: out.task_arns().to_vec(),
            next: out.next_token().map(str::to_string),
        })
    }

    async fn describe_cluster_tasks(
        &self,
        cluster: &str,
        tasks: &[String],
    ) -> AwsResult<Vec<RunningTask>> {
        let out = self
            .client
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(tasks.to_vec()))
            .send()
            .await
            .map_err(|e| map_err_at("ecs:DescribeTasks", cluster, &self.place, e))?;
        Ok(out
            .tasks()
            .iter()
            .filter_map(|t| {
                Some(RunningTask {
                    arn: t.task_arn()?.to_string(),
                    task_definition: t.task_definition_arn()?.to_string(),
                    group: t.group().map(str::to_string),
                    started_by: t.started_by().map(str::to_string),
                    // Created, not started: a task resolves its values before its containers
                    // start (an image pull can take minutes), so a change in between is one it
                    // may not hold; judging from creation never misses it.
                    started_at: to_chrono(t.created_at().or(t.started_at())),
                })
            })
            .collect())
    }
}
