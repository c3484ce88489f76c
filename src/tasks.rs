//! Tasks outside services (#24). A standalone task (`RunTask`, `StartTask`) resolved its secrets,
//! parameters and environment files when it started, and keeps them until it ends: ecs-reloader
//! cannot roll it and must not stop it (it may be a batch job half done), so `plan` and the
//! resync *report* the standalone tasks that hold a value changed since they started, with an
//! outcome event and a metric, for a person to act on.
//!
//! Read only on full passes (`plan`, `reconcile` without a selection, resyncs), never per event:
//! `ListTasks` per cluster (paged) and `DescribeTasks` by 100, through the guard's ECS buckets;
//! revisions come from the task-definition cache and metadata through [`index::resolve`], so a
//! secret both a service and a task use is read once per task pass. A refused or failing
//! cluster is logged and skipped: the report is information, never a reason to fail a pass.
//!
//! Scheduled tasks (EventBridge rules and EventBridge Scheduler schedules with an ECS target)
//! start with the current value at their next run: a full pass lists which task definitions
//! they run and reports those that resolve something the pass found changed, as "picks the new
//! value up at its next run" (information: the exit status is unaffected).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{
    all_pages, Clients, Controller, Deployment, DeploymentStatus, RunningTask, ScheduleKind,
    Service,
};
use crate::decide::{findings_at, Decision, Finding};
use crate::index::{self, Entry, TaskDefCache};
use crate::reference::SecretIdentity;

/// `DescribeTasks` takes at most this many tasks per call.
const DESCRIBE_TASKS_BATCH: usize = 100;

/// A standalone task that holds a value changed after it started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StandaloneTask {
    /// Its cluster (name).
    pub cluster: String,
    /// Its id (the last part of its ARN).
    pub task_id: String,
    /// Its ARN.
    pub task_arn: String,
    /// The revision it runs.
    pub task_definition: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// What changed since, and why each counts (the rule of `src/decide.rs`, with the task's
    /// start as *d*).
    pub findings: Vec<Finding>,
}

impl StandaloneTask {
    /// The changed secrets, parameters and files, for display.
    pub fn secrets(&self) -> Vec<&str> {
        self.findings.iter().map(|f| f.secret.as_str()).collect()
    }
}

/// The standalone tasks of `clusters` (every cluster when empty) that hold a changed value.
pub(crate) async fn standalone(
    clients: &Clients,
    cache: &TaskDefCache,
    clusters: &[String],
    concurrency: usize,
) -> Vec<StandaloneTask> {
    let clusters = if clusters.is_empty() {
        match all_pages(|t| clients.ecs.list_clusters(t)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "standalone tasks not reported: the clusters could not be listed");
                return Vec::new();
            }
        }
    } else {
        clusters.to_vec()
    };
    let mut running: Vec<(String, RunningTask)> = Vec::new();
    for cluster in &clusters {
        match cluster_standalone(clients, cluster).await {
            Ok(tasks) => running.extend(tasks.into_iter().map(|t| (cluster.clone(), t))),
            Err(e) => {
                tracing::warn!(cluster = %cluster, error = %e, "standalone tasks of this cluster not reported")
            }
        }
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut tasks: Vec<(String, RunningTask, DateTime<Utc>)> = Vec::new();
    for (cluster, t) in running {
        let Some(started) = t.started_at else {
            tracing::debug!(task = %t.arn, "a standalone task without a start time: not judged");
            continue;
        };
        let def = match cache.get(clients, &t.task_definition).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(task = %t.arn, error = %e, "a standalone task's revision could not be described: not reported");
                continue;
            }
        };
        let refs = index::written_refs(&def);
        if refs.is_empty() {
            continue;
        }
        entries.push(Entry {
            service: as_service(&cluster, &t, started),
            refs,
            unreadable: None,
        });
        tasks.push((cluster, t, started));
    }
    let resolved = index::resolve(clients, &entries, concurrency).await;
    tracing::debug!(
        clusters = clusters.len(),
        standalone = tasks.len(),
        "standalone tasks with references"
    );
    tasks
        .into_iter()
        .zip(resolved)
        .filter_map(|((cluster, t, started), refs)| {
            let findings = findings_at(&refs, started);
            tracing::debug!(task = %t.arn, started = %started, findings = findings.len(), "standalone task judged");
            (!findings.is_empty()).then(|| StandaloneTask {
                cluster: cluster.rsplit('/').next().unwrap_or(&cluster).to_string(),
                task_id: t.arn.rsplit('/').next().unwrap_or(&t.arn).to_string(),
                task_arn: t.arn,
                task_definition: t.task_definition,
                started_at: started,
                findings,
            })
        })
        .collect()
}

/// Whether a task definition names a revision (`family:3`, or an ARN ending so), which is
/// immutable and may be cached, rather than a family, which means its latest revision.
fn is_revision(task_definition: &str) -> bool {
    let name = task_definition
        .rsplit('/')
        .next()
        .unwrap_or(task_definition);
    name.rsplit_once(':')
        .is_some_and(|(family, rev)| !family.is_empty() && rev.parse::<u32>().is_ok())
}

/// The running tasks of one cluster that belong to no service.
async fn cluster_standalone(
    clients: &Clients,
    cluster: &str,
) -> crate::aws::AwsResult<Vec<RunningTask>> {
    let arns = all_pages(|t| clients.tasks.list_cluster_tasks(cluster, t)).await?;
    let mut out = Vec::new();
    for batch in arns.chunks(DESCRIBE_TASKS_BATCH) {
        out.extend(
            clients
                .tasks
                .describe_cluster_tasks(cluster, batch)
                .await?
                .into_iter()
                .filter(|t| !t.of_service()),
        );
    }
    Ok(out)
}

/// A task seen as a service with one deployment created when it started: what the index
/// resolves references for (the oldest deployment decides which metadata is read) and where
/// references without an account or region resolve (the task's ARN).
fn as_service(cluster: &str, t: &RunningTask, started: DateTime<Utc>) -> Service {
    Service {
        arn: t.arn.clone(),
        name: t.arn.rsplit('/').next().unwrap_or(&t.arn).to_string(),
        cluster_arn: cluster.to_string(),
        status: "ACTIVE".into(),
        task_definition: t.task_definition.clone(),
        desired_count: 1,
        controller: Controller::Ecs,
        shape: Default::default(),
        deployments: vec![Deployment {
            id: t.arn.clone(),
            status: DeploymentStatus::Primary,
            task_definition: t.task_definition.clone(),
            created_at: started,
            rollout_state: None,
            rollout_state_reason: None,
            desired_count: 1,
            running_count: 1,
            failed_tasks: 0,
        }],
        tags: Default::default(),
    }
}

/// A rule or schedule whose task resolves a value that changed: its next run starts with the
/// new value. Information, not a problem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduledTask {
    /// An EventBridge rule or a Scheduler schedule.
    pub kind: ScheduleKind,
    /// Its name.
    pub name: String,
    /// The cluster it runs the task in (name).
    pub cluster: String,
    /// The task definition it runs.
    pub task_definition: String,
    /// The changed secrets, parameters and files it resolves.
    pub secrets: Vec<String>,
}

/// What a pass found changed: every identity its services' findings name.
pub(crate) fn changed_identities<'a>(
    decisions: impl IntoIterator<Item = &'a Decision>,
) -> BTreeSet<SecretIdentity> {
    let mut out = BTreeSet::new();
    for decision in decisions {
        let findings: &[Finding] = match decision {
            Decision::Stale { findings }
            | Decision::OptedOut { findings }
            | Decision::Settling { findings, .. }
            | Decision::Held { findings, .. }
            | Decision::Scheduled { findings, .. }
            | Decision::Pending { findings, .. } => findings,
            _ => &[],
        };
        out.extend(findings.iter().filter_map(|f| f.identity.clone()));
    }
    out
}

/// The rules and schedules whose task definitions resolve one of `changed`.
pub(crate) async fn scheduled(
    clients: &Clients,
    cache: &TaskDefCache,
    clusters: &[String],
    changed: &BTreeSet<SecretIdentity>,
    now: DateTime<Utc>,
    concurrency: usize,
) -> Vec<ScheduledTask> {
    if changed.is_empty() {
        return Vec::new();
    }
    let runs = match clients.schedules.ecs_schedules().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "scheduled tasks not reported: their rules and schedules could not be read");
            return Vec::new();
        }
    };
    let mut entries = Vec::new();
    let mut kept = Vec::new();
    let in_scope = |cluster: &str| {
        let name = cluster.rsplit('/').next().unwrap_or(cluster);
        clusters.is_empty() || clusters.iter().any(|c| c == cluster || c == name)
    };
    for run in runs.into_iter().filter(|r| in_scope(&r.cluster)) {
        // A family without a revision runs its latest: not immutable, so never cached.
        let def = if is_revision(&run.task_definition) {
            cache.get(clients, &run.task_definition).await
        } else {
            clients
                .ecs
                .describe_task_definition(&run.task_definition)
                .await
                .map(std::sync::Arc::new)
        };
        let def = match def {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(schedule = %run.name, error = %e, "a scheduled task's revision could not be described: not reported");
                continue;
            }
        };
        let refs = index::written_refs(&def);
        if refs.is_empty() {
            continue;
        }
        // Its next run starts now or later: no version dates are needed, only identities.
        let task = RunningTask {
            arn: run.cluster.clone(),
            task_definition: run.task_definition.clone(),
            group: None,
            started_by: None,
            started_at: Some(now),
        };
        entries.push(Entry {
            service: as_service(&run.cluster, &task, now),
            refs,
            unreadable: None,
        });
        kept.push(run);
    }
    let resolved = index::resolve(clients, &entries, concurrency).await;
    kept.into_iter()
        .zip(resolved)
        .filter_map(|(run, refs)| {
            let mut secrets: Vec<String> = refs
                .iter()
                .filter_map(|r| r.state.as_ref().ok())
                .map(|s| s.identity())
                .filter(|i| changed.contains(i))
                .map(|i| i.to_string())
                .collect();
            secrets.sort();
            secrets.dedup();
            (!secrets.is_empty()).then(|| ScheduledTask {
                kind: run.kind,
                name: run.name,
                cluster: run
                    .cluster
                    .rsplit('/')
                    .next()
                    .unwrap_or(&run.cluster)
                    .to_string(),
                task_definition: run.task_definition,
                secrets,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::is_revision;

    #[test]
    fn only_a_revision_is_immutable() {
        for rev in [
            "job:3",
            "arn:aws:ecs:eu-west-1:111122223333:task-definition/job:12",
        ] {
            assert!(is_revision(rev), "{rev}");
        }
        for family in [
            "job",
            "arn:aws:ecs:eu-west-1:111122223333:task-definition/job",
            "arn:aws:ecs:eu-west-1:111122223333:task-definition/job:latest",
            ":3",
        ] {
            assert!(!is_revision(family), "{family}");
        }
    }
}
