//! Scheduled tasks over the SDK: EventBridge rules (default bus) and EventBridge Scheduler
//! schedules whose target is an ECS cluster. Only the target's cluster and task definition are
//! kept; its `Input` (container overrides, which may carry environment values) is dropped here,
//! on receipt.

use async_trait::async_trait;
use aws_config::SdkConfig;

use super::{map_err_at, NoRetryWhenUnreachable, Place};
use crate::aws::{all_pages, AwsResult, Page, ScheduleKind, ScheduledRun, Schedules};

/// The EventBridge and Scheduler clients of one target.
pub(super) struct SdkSchedules {
    events: aws_sdk_eventbridge::Client,
    scheduler: aws_sdk_scheduler::Client,
    place: Place,
}

impl SdkSchedules {
    pub(super) fn new(config: &SdkConfig, role: Option<&str>) -> SdkSchedules {
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        SdkSchedules {
            events: aws_sdk_eventbridge::Client::from_conf(
                aws_sdk_eventbridge::config::Builder::from(config)
                    .retry_classifier(NoRetryWhenUnreachable)
                    .build(),
            ),
            scheduler: aws_sdk_scheduler::Client::from_conf(
                aws_sdk_scheduler::config::Builder::from(config)
                    .retry_classifier(NoRetryWhenUnreachable)
                    .build(),
            ),
            place: Place {
                role: role.map(str::to_string),
                ..Place::of(config, &region)
            },
        }
    }

    async fn rules(&self) -> AwsResult<Vec<ScheduledRun>> {
        let names = all_pages(|next| async move {
            let out = self
                .events
                .list_rules()
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| map_err_at("events:ListRules", "default", &self.place, e))?;
            Ok(Page {
                items: out
                    .rules()
                    .iter()
                    .filter_map(|r| r.name().map(str::to_string))
                    .collect(),
                next: out.next_token().map(str::to_string),
            })
        })
        .await?;
        let mut runs = Vec::new();
        for rule in names {
            let rule = rule.as_str();
            let targets = all_pages(|next| async move {
                let out = self
                    .events
                    .list_targets_by_rule()
                    .rule(rule)
                    .set_next_token(next)
                    .send()
                    .await
                    .map_err(|e| map_err_at("events:ListTargetsByRule", rule, &self.place, e))?;
                Ok(Page {
                    items: out
                        .targets()
                        .iter()
                        .filter_map(|t| {
                            let td = t.ecs_parameters()?.task_definition_arn();
                            Some(ScheduledRun {
                                kind: ScheduleKind::EventbridgeRule,
                                name: rule.to_string(),
                                cluster: t.arn().to_string(),
                                task_definition: td.to_string(),
                            })
                        })
                        .collect(),
                    next: out.next_token().map(str::to_string),
                })
            })
            .await?;
            runs.extend(targets);
        }
        Ok(runs)
    }

    async fn schedules(&self) -> AwsResult<Vec<ScheduledRun>> {
        let summaries = all_pages(|next| async move {
            let out = self
                .scheduler
                .list_schedules()
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| map_err_at("scheduler:ListSchedules", "-", &self.place, e))?;
            Ok(Page {
                items: out
                    .schedules()
                    .iter()
                    .filter(|s| {
                        s.target().is_some_and(|t| {
                            t.arn().contains(":ecs:") && t.arn().contains(":cluster/")
                        })
                    })
                    .filter_map(|s| {
                        Some((
                            s.group_name().unwrap_or("default").to_string(),
                            s.name()?.to_string(),
                        ))
                    })
                    .collect(),
                next: out.next_token().map(str::to_string),
            })
        })
        .await?;
        let mut runs = Vec::new();
        for (group, name) in summaries {
            let out = self
                .scheduler
                .get_schedule()
                .name(&name)
                .group_name(&group)
                .send()
                .await
                .map_err(|e| {
                    map_err_at(
                        "scheduler:GetSchedule",
                        &format!("{group}/{name}"),
                        &self.place,
                        e,
                    )
                })?;
            let Some(target) = out.target() else { continue };
            let Some(ecs) = target.ecs_parameters() else {
                continue;
            };
            runs.push(ScheduledRun {
                kind: ScheduleKind::SchedulerSchedule,
                name: if group == "default" {
                    name
                } else {
                    format!("{group}/{name}")
                },
                cluster: target.arn().to_string(),
                task_definition: ecs.task_definition_arn().to_string(),
            });
        }
        Ok(runs)
    }
}

#[async_trait]
impl Schedules for SdkSchedules {
    async fn ecs_schedules(&self) -> AwsResult<Vec<ScheduledRun>> {
        let mut runs = self.rules().await?;
        runs.extend(self.schedules().await?);
        runs.sort();
        Ok(runs)
    }
}
