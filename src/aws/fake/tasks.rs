//! The fake's cluster-wide task listing: its services' tasks (group `service:<name>`) and
//! standalone tasks started with [`FakeAws::run_task`].

use async_trait::async_trait;

use super::{cluster_name, FakeAws, ACCOUNT};
use crate::aws::{AwsError, AwsResult, ClusterTasks, ErrorKind, Page, RunningTask};

impl FakeAws {
    /// `RunTask`: a standalone task of `task_def` in `cluster`, started now; returns its ARN.
    pub fn run_task(&self, cluster: &str, task_def: &str) -> String {
        let now = self.now();
        let mut w = self.w();
        let id = Self::next_id(&mut w, "");
        let arn = format!("arn:aws:ecs:{}:{ACCOUNT}:task/{cluster}/{id}", self.region);
        let family = task_def
            .rsplit('/')
            .next()
            .and_then(|f| f.split(':').next())
            .unwrap_or(task_def);
        w.standalone
            .entry(cluster.to_string())
            .or_default()
            .push(RunningTask {
                arn: arn.clone(),
                task_definition: task_def.to_string(),
                group: Some(format!("family:{family}")),
                started_by: None,
                started_at: Some(now),
            });
        arn
    }

    /// `StopTask` (a test's own doing: ecs-reloader never stops a task).
    pub fn stop_task(&self, cluster: &str, arn: &str) {
        if let Some(tasks) = self.w().standalone.get_mut(cluster) {
            tasks.retain(|t| t.arn != arn);
        }
    }

    /// Every running task of a cluster: its services' and the standalone ones.
    fn cluster_tasks(&self, cluster: &str) -> Vec<RunningTask> {
        let w = self.w();
        let c = cluster_name(cluster);
        let mut out: Vec<RunningTask> = Vec::new();
        if let Some(services) = w.clusters.get(c) {
            for (name, s) in services {
                for t in self.tasks_of(&w, c, name) {
                    out.push(RunningTask {
                        arn: t.arn,
                        task_definition: s.service.task_definition.clone(),
                        group: Some(format!("service:{name}")),
                        started_by: Some("ecs-svc/0000000000000000000".into()),
                        started_at: t.started_at,
                    });
                }
            }
        }
        out.extend(w.standalone.get(c).cloned().unwrap_or_default());
        out
    }
}

#[async_trait]
impl ClusterTasks for FakeAws {
    async fn list_cluster_tasks(
        &self,
        cluster: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>> {
        self.gate("ecs:ListTasks", cluster)?;
        let arns: Vec<String> = self
            .cluster_tasks(cluster)
            .into_iter()
            .map(|t| t.arn)
            .collect();
        let w = self.w();
        Ok(Self::page(&w, &arns, next))
    }

    async fn describe_cluster_tasks(
        &self,
        cluster: &str,
        tasks: &[String],
    ) -> AwsResult<Vec<RunningTask>> {
        self.gate("ecs:DescribeTasks", cluster)?;
        if tasks.len() > 100 {
            return Err(AwsError::new(
                "ecs:DescribeTasks",
                cluster,
                ErrorKind::Other,
                "InvalidParameterException: at most 100 tasks",
            ));
        }
        Ok(self
            .cluster_tasks(cluster)
            .into_iter()
            .filter(|t| tasks.contains(&t.arn))
            .collect())
    }
}

impl FakeAws {
    /// An EventBridge rule or Scheduler schedule named `name` that runs `task_def` in `cluster`.
    pub fn schedule_task(
        &self,
        kind: crate::aws::ScheduleKind,
        name: &str,
        cluster: &str,
        task_def: &str,
    ) {
        let cluster = format!("arn:aws:ecs:{}:{ACCOUNT}:cluster/{cluster}", self.region);
        self.w().schedules.push(crate::aws::ScheduledRun {
            kind,
            name: name.to_string(),
            cluster,
            task_definition: task_def.to_string(),
        });
    }
}

#[async_trait]
impl crate::aws::Schedules for FakeAws {
    async fn ecs_schedules(&self) -> AwsResult<Vec<crate::aws::ScheduledRun>> {
        self.gate("events+scheduler:ListSchedules", "-")?;
        Ok(self.w().schedules.clone())
    }
}
