//! The rollout plan: which stale services roll, in what order. Pure.
//!
//! Services roll in waves by the tag `ecs-reloader/wave` (an integer, lower first, default 0,
//! read by [`crate::decide::wave_of`]), e.g. read replicas before writers; within a wave, by
//! cluster and name so that a plan is reproducible. The rollout engine takes the first service as the canary when asked to.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::Service;
use crate::decide::{Decision, Finding, Item};

pub use crate::aws::ServiceKey;

/// One service to roll.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Which service.
    pub key: ServiceKey,
    /// Its wave.
    pub wave: i64,
    /// Why it rolls.
    pub findings: Vec<Finding>,
    /// A deployment created at or after this carries every change it rolls for (the latest of
    /// those changes, plus the dates' granularity); `None` when a change time is unknown. The
    /// engine checks it right before rolling, in case someone deployed since the plan.
    #[serde(skip)]
    pub fresh_from: Option<DateTime<Utc>>,
    /// The service as the plan described it: how it is rolled when it cannot be described again
    /// right before its turn (throttled still), and what the engine looks at instead of
    /// describing it again when the pass described it moments ago (see `described_at`).
    #[serde(skip)]
    pub planned: Option<Box<Service>>,
    /// Its ECR image tags as checked for drift (`[rollout] image_drift = "hold"`): asked again
    /// right before its rollout, since a tag may move while a change set rolls.
    #[serde(skip)]
    pub images: Vec<CheckedImage>,
    /// When the pass began describing the service (before its `DescribeServices` call left), on
    /// tokio's clock. Right before rolling, the engine describes a service again unless this is
    /// well under a second ago ([`crate::rollout::engine::RECENT_ENOUGH`]): a change event's pass
    /// describes its candidates and rolls the first of them within milliseconds, and a second
    /// `DescribeServices` then would only repeat the first. `None`: always look again.
    #[serde(skip)]
    pub described_at: Option<tokio::time::Instant>,
}

/// A container's image tag and the digests its running tasks ran when it was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedImage {
    /// The container.
    pub container: String,
    /// Its image as written (an ECR tag).
    pub image: String,
    /// The digests its running tasks ran.
    pub running: Vec<String>,
}

/// The ordered set of services to roll.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChangeSet {
    /// In rollout order.
    pub changes: Vec<Change>,
    /// The policies the services were found eligible under: the engine asks the same question
    /// again right before each `UpdateService` ([`crate::decide::Eligibility`]).
    #[serde(skip)]
    pub policies: crate::decide::Policies,
}

impl ChangeSet {
    /// Whether there is nothing to roll.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes grouped by wave, lowest first, owned.
    pub(crate) fn waves_owned(self) -> Vec<Vec<Change>> {
        let mut out: Vec<Vec<Change>> = Vec::new();
        for c in self.changes {
            match out.last_mut() {
                Some(group) if group.first().is_some_and(|g| g.wave == c.wave) => group.push(c),
                _ => out.push(vec![c]),
            }
        }
        out
    }

    /// The changes grouped by wave, lowest first.
    pub fn waves(&self) -> Vec<(i64, Vec<&Change>)> {
        let mut out: Vec<(i64, Vec<&Change>)> = Vec::new();
        for c in &self.changes {
            match out.last_mut() {
                Some((w, group)) if *w == c.wave => group.push(c),
                _ => out.push((c.wave, vec![c])),
            }
        }
        out
    }
}

/// The first moment a deployment carries every change behind `findings`: the latest of the
/// rule's own evidence times (`None` when one is unknown).
fn fresh_from(findings: &[Finding]) -> Option<DateTime<Utc>> {
    findings
        .iter()
        .map(|f| f.fresh_after)
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
}

/// Orders the stale services of a pass into a change set: by wave (see
/// [`crate::decide::wave_of`]), then cluster and name, so that a plan is reproducible.
pub fn plan(items: &[Item<'_>]) -> ChangeSet {
    let mut changes: Vec<Change> = items
        .iter()
        .filter_map(|i| match &i.decision {
            Decision::Stale { findings } => Some(Change {
                key: ServiceKey::of(i.service),
                wave: i.wave,
                findings: findings.clone(),
                fresh_from: fresh_from(findings),
                planned: Some(Box::new(i.service.clone())),
                images: Vec::new(),
                described_at: None,
            }),
            _ => None,
        })
        .collect();
    changes.sort_by(|a, b| (a.wave, &a.key).cmp(&(b.wave, &b.key)));
    ChangeSet {
        changes,
        policies: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::Controller;
    use crate::decide::TAG_WAVE;

    fn svc(cluster: &str, name: &str, wave: Option<&str>) -> Service {
        let mut tags = std::collections::BTreeMap::new();
        if let Some(w) = wave {
            tags.insert(TAG_WAVE.to_string(), w.to_string());
        }
        Service {
            arn: format!("arn:aws:ecs:eu-west-1:1:service/{cluster}/{name}"),
            name: name.into(),
            cluster_arn: format!("arn:aws:ecs:eu-west-1:1:cluster/{cluster}"),
            status: "ACTIVE".into(),
            task_definition: "td".into(),
            desired_count: 1,
            controller: Controller::Ecs,
            shape: Default::default(),
            deployments: vec![],
            tags,
        }
    }

    #[test]
    fn waves_order_before_names_and_non_stale_services_are_left_out() {
        let stale = Decision::Stale { findings: vec![] };
        let services = [
            svc("b", "writer", Some("2")),
            svc("a", "replica", Some("1")),
            svc("a", "api", None),
            svc("a", "zzz", Some("-1")),
            svc("a", "idle", None),
        ];
        let decisions = [
            stale.clone(),
            stale.clone(),
            stale.clone(),
            stale,
            Decision::InSync,
        ];
        let items: Vec<Item<'_>> = services
            .iter()
            .zip(decisions)
            .map(|(s, d)| Item::new(s, Vec::new(), d))
            .collect();
        let set = plan(&items);
        let order: Vec<String> = set.changes.iter().map(|c| c.key.to_string()).collect();
        assert_eq!(order, ["a/zzz", "a/api", "a/replica", "b/writer"]);
        let waves: Vec<i64> = set.waves().iter().map(|(w, _)| *w).collect();
        assert_eq!(waves, [-1, 0, 1, 2]);
    }
}
