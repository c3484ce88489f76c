//! Rendering an assessment (and, after a run, its outcomes) as a table for people or one JSON
//! document for programs. Both carry the same facts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::decide::Decision;
use crate::plan::ServiceKey;
use crate::reconcile::{Assessed, Assessment};
use crate::rollout::Outcome;

/// A finished (or planned) run, ready to render.
#[derive(Debug, Clone, Serialize)]
pub struct Report<'a> {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// When the assessment was made.
    pub at: chrono::DateTime<chrono::Utc>,
    /// One row per service that references a secret.
    pub services: Vec<Row<'a>>,
    /// Services in scope that reference no secret.
    pub services_without_secrets: usize,
    /// Decisions and actions, counted apart: each adds up to the number of rows.
    pub summary: Summary,
    /// With several targets: each (account, region), and why it could not be worked on if so.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub targets: &'a [crate::targets::TargetStatus],
    /// Standalone tasks holding a changed value: reported, never rolled or stopped.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub standalone_tasks: &'a [crate::tasks::StandaloneTask],
    /// Scheduled tasks that resolve a changed value: their next run picks it up (information).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub scheduled_tasks: &'a [crate::tasks::ScheduledTask],
}

/// The counts of a report. Every service has exactly one decision and exactly one action, so
/// each map sums to `services`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Services with secrets (the rows).
    pub services: usize,
    /// Services by decision (`stale`, `in_sync`, ...).
    pub decisions: BTreeMap<&'static str, usize>,
    /// Services by action (`rolled_healthy`, `would_roll`, `none`, ...).
    pub actions: BTreeMap<&'static str, usize>,
}

/// What was done about a service (or, in a dry run, what would be): one spelling in the table,
/// the JSON rows and both summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `UpdateService` succeeded; health was not watched (`--no-wait`, the Lambda).
    Rolled,
    /// Rolled, and the new deployment became healthy.
    RolledHealthy,
    /// The rollout failed.
    Failed,
    /// Not started: an earlier rollout of the change set failed.
    Halted,
    /// Stale; a dry run changes nothing.
    WouldRoll,
    /// Stale but not in the executed change set.
    NotRolled,
    /// Settling: decided again later.
    Waiting,
    /// Described again right before its turn, it no longer needed a rollout.
    Skipped,
    /// Described again right before its turn, a deployment was in progress: decided again later.
    Deferred,
    /// Outside its maintenance window: rolls when the window opens.
    WaitingForWindow,
    /// Notify-only: waits for a person's approval.
    NeedsApproval,
    /// Started, and waiting for someone's action (a lifecycle hook).
    Paused,
    /// Resolves a changed value, but only its own controller can roll it.
    NeedsController,
    /// Nothing to do.
    None,
}

impl Action {
    /// The action's name (as serde spells it).
    pub fn label(self) -> &'static str {
        match self {
            Action::Rolled => "rolled",
            Action::RolledHealthy => "rolled_healthy",
            Action::Failed => "failed",
            Action::Halted => "halted",
            Action::WouldRoll => "would_roll",
            Action::NotRolled => "not_rolled",
            Action::Waiting => "waiting",
            Action::Skipped => "skipped",
            Action::Deferred => "deferred",
            Action::WaitingForWindow => "waiting_for_window",
            Action::NeedsApproval => "needs_approval",
            Action::Paused => "paused",
            Action::NeedsController => "needs_controller",
            Action::None => "none",
        }
    }

    fn of(outcome: Option<&Outcome>, decision: &Decision, dry_run: bool) -> Action {
        match (outcome, decision) {
            (Some(Outcome::Triggered { .. }), _) => Action::Rolled,
            (Some(Outcome::Healthy { .. }), _) => Action::RolledHealthy,
            (Some(Outcome::Failed { .. }), _) => Action::Failed,
            (Some(Outcome::Halted { .. }), _) => Action::Halted,
            (Some(Outcome::Skipped { .. }), _) => Action::Skipped,
            (Some(Outcome::Deferred { .. }), _) => Action::Deferred,
            (Some(Outcome::Paused { .. }), _) => Action::Paused,
            (None, d) if d.needs_attention() => Action::NeedsController,
            (None, Decision::Stale { .. }) if dry_run => Action::WouldRoll,
            (None, Decision::Stale { .. }) => Action::NotRolled,
            (None, Decision::Settling { .. }) => Action::Waiting,
            (None, Decision::Scheduled { .. }) => Action::WaitingForWindow,
            (None, Decision::Pending { .. }) => Action::NeedsApproval,
            (None, _) => Action::None,
        }
    }
}

/// One service.
#[derive(Debug, Clone, Serialize)]
pub struct Row<'a> {
    /// The service and its decision.
    #[serde(flatten)]
    pub assessed: &'a Assessed,
    /// What was done (or would be).
    pub action: Action,
    /// What became of the rollout, if one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'a Outcome>,
}

/// How the table is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// For a program or a file: one line per service, the whole reason last on it.
    Lines,
    /// For a person at a terminal this wide: a line per service, then its reasons underneath,
    /// wrapped, each in full.
    Terminal {
        /// Columns.
        width: usize,
    },
}

impl Layout {
    /// `Terminal` when stdout is one (at its width), `Lines` otherwise.
    pub(crate) fn for_stdout() -> Layout {
        use std::io::IsTerminal;
        if !std::io::stdout().is_terminal() {
            return Layout::Lines;
        }
        // A terminal that reports no size (0 columns) gets a common width.
        let width = terminal_size::terminal_size()
            .map(|(w, _)| usize::from(w.0))
            .filter(|w| *w > 0)
            .unwrap_or(100);
        Layout::Terminal { width }
    }
}

impl<'a> Report<'a> {
    /// Builds a report; `outcomes` are those of the executed change set (empty for a dry run).
    pub fn new(
        assessment: &'a Assessment,
        outcomes: &'a [(ServiceKey, Outcome)],
        dry_run: bool,
    ) -> Self {
        let mut summary = Summary::default();
        let services: Vec<Row<'a>> = assessment
            .services
            .iter()
            .map(|a| {
                let outcome = outcomes.iter().find(|(k, _)| *k == a.key).map(|(_, o)| o);
                let action = Action::of(outcome, &a.decision, dry_run);
                summary.services += 1;
                *summary.decisions.entry(a.decision.label()).or_default() += 1;
                *summary.actions.entry(action.label()).or_default() += 1;
                Row {
                    assessed: a,
                    action,
                    outcome,
                }
            })
            .collect();
        Report {
            dry_run,
            at: assessment.at,
            services,
            services_without_secrets: assessment.without_secrets,
            summary,
            targets: &[],
            standalone_tasks: &assessment.standalone_tasks,
            scheduled_tasks: &assessment.scheduled_tasks,
        }
    }

    /// The report of a pass over several targets: account and region columns, and the targets
    /// that could not be worked on.
    pub fn with_targets(mut self, targets: &'a [crate::targets::TargetStatus]) -> Self {
        self.targets = targets;
        self
    }

    /// The JSON document.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The table, laid out for wherever stdout goes.
    pub fn to_table(&self) -> String {
        self.to_table_as(Layout::for_stdout())
    }

    /// The table in a given layout.
    pub(crate) fn to_table_as(&self, layout: Layout) -> String {
        let terminal = matches!(layout, Layout::Terminal { .. });
        let by_target = !self.targets.is_empty();
        let mut header = vec!["CLUSTER", "SERVICE", "DECISION", "ACTION", "SECRETS"];
        if by_target {
            header.splice(0..0, ["ACCOUNT", "REGION"]);
        }
        if !terminal {
            header.push("REASON");
        }
        let mut rows: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        for r in &self.services {
            let a = r.assessed;
            let why = match r.outcome {
                Some(o) if o.reason().is_some() => Why::just(o.reason().unwrap_or_default()),
                _ => why(&a.decision),
            };
            let mut cells = vec![];
            if by_target {
                cells.push(a.key.account.clone());
                cells.push(a.key.region.clone());
            }
            cells.extend([
                a.key.cluster.clone(),
                a.key.service.clone(),
                a.decision.label().to_string(),
                r.action.label().to_string(),
                a.secrets.join(" "),
            ]);
            if !terminal {
                cells.push(one_line(&why.line()));
            }
            rows.push((cells, why.lines()));
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for (cells, _) in &rows {
            for (w, cell) in widths.iter_mut().zip(cells) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut l = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}  ");
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(
            &mut out,
            &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        );
        for (cells, reasons) in &rows {
            line(&mut out, cells);
            if let Layout::Terminal { width } = layout {
                for reason in reasons.iter().filter(|r| !r.is_empty()) {
                    for l in wrap(reason, width.saturating_sub(REASON_INDENT.len()).max(30)) {
                        let _ = writeln!(out, "{REASON_INDENT}{l}");
                    }
                }
            }
        }
        let counts = |m: &BTreeMap<&'static str, usize>| {
            m.iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut summary = format!(
            "{} service(s) with secrets, {} without.",
            self.summary.services, self.services_without_secrets
        );
        if self.summary.services > 0 {
            let _ = write!(
                summary,
                " Decisions: {}. Actions: {}.",
                counts(&self.summary.decisions),
                counts(&self.summary.actions)
            );
        }
        if self.dry_run {
            summary.push_str(" Dry run: nothing was changed.");
        }
        if by_target {
            let down: Vec<String> = self
                .targets
                .iter()
                .filter_map(|t| t.problem.as_ref().map(|p| format!("target {t}: {p}")))
                .collect();
            let _ = write!(
                summary,
                " Targets: {} of {} worked on.",
                self.targets.len() - down.len(),
                self.targets.len()
            );
            for d in down {
                summary.push_str("\nUNREACHABLE ");
                summary.push_str(&d);
            }
        }
        if !self.standalone_tasks.is_empty() {
            out.push('\n');
            let _ = writeln!(
                out,
                "STANDALONE TASKS holding an old value (never rolled or stopped by ecs-reloader: replace them when you can):"
            );
            for t in self.standalone_tasks {
                let reasons: Vec<String> = t
                    .findings
                    .iter()
                    .map(|f| format!("{}: {}", f.secret, f.reason))
                    .collect();
                let _ = writeln!(
                    out,
                    "{}/{}  {}  started {}  {}",
                    t.cluster,
                    t.task_id,
                    t.task_definition
                        .rsplit('/')
                        .next()
                        .unwrap_or(&t.task_definition),
                    t.started_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    one_line(&reasons.join("; "))
                );
            }
        }
        if !self.scheduled_tasks.is_empty() {
            out.push('\n');
            let _ = writeln!(
                out,
                "SCHEDULED TASKS resolving a changed value (each picks the new value up at its next run; nothing to do):"
            );
            for t in self.scheduled_tasks {
                let kind = match t.kind {
                    crate::aws::ScheduleKind::EventbridgeRule => "rule",
                    crate::aws::ScheduleKind::SchedulerSchedule => "schedule",
                };
                let _ = writeln!(
                    out,
                    "{kind} {}  {}  {}  {}",
                    t.name,
                    t.cluster,
                    t.task_definition
                        .rsplit('/')
                        .next()
                        .unwrap_or(&t.task_definition),
                    t.secrets.join(" ")
                );
            }
        }
        out.push('\n');
        match layout {
            Layout::Terminal { width } => {
                for part in summary.lines() {
                    for l in wrap(part, width.max(30)) {
                        let _ = writeln!(out, "{l}");
                    }
                }
            }
            Layout::Lines => {
                let _ = writeln!(out, "{summary}");
            }
        }
        out
    }
}

/// Reasons under a service row in a terminal are indented by this.
const REASON_INDENT: &str = "    ";

/// Collapses whitespace (a reason from AWS may hold newlines): one line per service.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Greedy word wrap at `width` columns; a word longer than a line (an ARN) gets a line of its own.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let fits = current.chars().count() + 1 + word.chars().count() <= width;
        if !current.is_empty() && !fits {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// Why a service got its decision: a reason, then its findings (one per stale reference), each
/// whole.
struct Why {
    head: Option<String>,
    findings: Vec<String>,
}

impl Why {
    fn just(reason: impl Into<String>) -> Why {
        Why {
            head: Some(reason.into()),
            findings: Vec::new(),
        }
    }

    /// All of it on one line: `head: finding; finding`.
    fn line(&self) -> String {
        let findings = self.findings.join("; ");
        match &self.head {
            Some(h) if findings.is_empty() => h.clone(),
            Some(h) => format!("{h}: {findings}"),
            None => findings,
        }
    }

    /// The head, then each finding, as separate lines.
    fn lines(&self) -> Vec<String> {
        let head = self.head.iter().map(|h| {
            if self.findings.is_empty() {
                h.clone()
            } else {
                format!("{h}:")
            }
        });
        head.chain(self.findings.iter().cloned()).collect()
    }
}

fn why(d: &Decision) -> Why {
    let each = |f: &[crate::decide::Finding]| -> Vec<String> {
        f.iter()
            .map(|one| match &one.provenance {
                Some(p) => format!("{}: {} ({p})", one.secret, one.reason),
                None => format!("{}: {}", one.secret, one.reason),
            })
            .collect()
    };
    match d {
        Decision::Stale { findings } => Why {
            head: None,
            findings: each(findings),
        },
        Decision::InSync => Why::just("deployment is newer than every secret it resolves"),
        Decision::Pinned => Why::just("every reference is pinned to a version id"),
        Decision::OptedOut { findings } if findings.is_empty() => {
            Why::just("tagged ecs-reloader/enabled=false")
        }
        Decision::OptedOut { findings } => Why {
            head: Some("tagged ecs-reloader/enabled=false; would roll for".into()),
            findings: each(findings),
        },
        Decision::Settling {
            reason,
            until,
            findings,
        } => Why {
            head: Some(match until {
                Some(u) => format!(
                    "{reason} (until {})",
                    u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => reason.clone(),
            }),
            findings: each(findings),
        },
        Decision::Skipped { reason, findings } => Why {
            head: Some(reason.clone()),
            findings: each(findings),
        },
        Decision::Unknown { problems } => Why {
            head: None,
            findings: problems.clone(),
        },
        Decision::Held { reason, findings } => Why {
            head: Some(reason.clone()),
            findings: each(findings),
        },
        Decision::Scheduled {
            at,
            window,
            findings,
        } => Why {
            head: Some(format!(
                "outside its maintenance window: rolls at {} ({window})",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            findings: each(findings),
        },
        Decision::Pending { reason, findings } => Why {
            head: Some(reason.clone()),
            findings: each(findings),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{Controller, Service};
    use crate::decide::Finding;
    use chrono::TimeZone;

    const LONG: &str = "version 5b2c1d0e-7f3a-4b6c-9d8e-0a1b2c3d4e5f (AWSCURRENT) created \
        2026-11-24T00:00:03Z, after the deployment (2026-11-24T00:00:01Z)";

    fn finding(secret: &str) -> Finding {
        Finding {
            secret: secret.into(),
            identity: None,
            fresh_after: None,
            site: "app: secret DB".into(),
            reason: LONG.into(),
            provenance: None,
        }
    }

    fn assessed(service: &str, decision: Decision) -> Assessed {
        Assessed {
            key: ServiceKey {
                cluster: "prod".into(),
                service: service.into(),
                ..ServiceKey::default()
            },
            decision,
            secrets: vec!["app/db".into()],
            service: Service {
                arn: format!("arn:aws:ecs:eu-west-1:111122223333:service/prod/{service}"),
                name: service.into(),
                cluster_arn: "arn:aws:ecs:eu-west-1:111122223333:cluster/prod".into(),
                status: "ACTIVE".into(),
                task_definition: "td".into(),
                desired_count: 1,
                controller: Controller::Ecs,
                shape: Default::default(),
                deployments: vec![],
                tags: BTreeMap::new(),
            },
        }
    }

    fn assessment(services: Vec<Assessed>) -> Assessment {
        Assessment {
            at: chrono::Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 5).unwrap(),
            services,
            without_secrets: 2,
            change_set: Default::default(),
            standalone_tasks: Vec::new(),
            scheduled_tasks: Vec::new(),
        }
    }

    fn stale() -> Decision {
        Decision::Stale {
            findings: vec![finding("app/db")],
        }
    }

    /// Where a change comes from is shown in the table's reason and in the JSON document.
    #[test]
    fn a_findings_provenance_is_shown() {
        let mut f = finding("app/db");
        f.provenance =
            Some("announced by api_call event e-1 by arn:aws:sts::1:assumed-role/rotator/x".into());
        let a = assessment(vec![assessed("api", Decision::Stale { findings: vec![f] })]);
        let report = Report::new(&a, &[], true);
        let table = report.to_table_as(Layout::Lines);
        assert!(
            table.contains(
                "(announced by api_call event e-1 by arn:aws:sts::1:assumed-role/rotator/x)"
            ),
            "{table}"
        );
        assert!(
            report
                .to_json()
                .contains("\"provenance\": \"announced by api_call event e-1"),
            "{}",
            report.to_json()
        );
    }

    /// "3 rolled (healthy), 3 stale" for three services: decisions and actions were one count.
    #[test]
    fn decisions_and_actions_each_add_up_to_the_services() {
        let a = assessment(vec![
            assessed("api", stale()),
            assessed("worker", stale()),
            assessed("web", stale()),
            assessed("cron", Decision::InSync),
        ]);
        let outcomes: Vec<(ServiceKey, Outcome)> = a.services[..3]
            .iter()
            .map(|s| {
                (
                    s.key.clone(),
                    Outcome::Healthy {
                        deployment: "ecs-svc/1".into(),
                        proof: None,
                    },
                )
            })
            .collect();
        let report = Report::new(&a, &outcomes, false);
        let s = &report.summary;
        assert_eq!(s.services, 4);
        assert_eq!(s.decisions.values().sum::<usize>(), 4);
        assert_eq!(s.actions.values().sum::<usize>(), 4);
        assert_eq!(s.decisions["stale"], 3);
        assert_eq!(s.actions["rolled_healthy"], 3);
        assert_eq!(s.actions["none"], 1);
        let table = report.to_table_as(Layout::Lines);
        assert!(
            table.contains(
                "4 service(s) with secrets, 2 without. Decisions: 1 in_sync, 3 stale. \
                 Actions: 1 none, 3 rolled_healthy."
            ),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["summary"]["services"], 4);
        assert_eq!(json["summary"]["decisions"]["stale"], 3);
        assert_eq!(json["summary"]["actions"]["rolled_healthy"], 3);
        assert_eq!(json["services"][0]["action"], "rolled_healthy");
    }

    /// The table cut reasons at 90 columns, mid-date; piped, each service stays one line.
    #[test]
    fn piped_every_service_is_one_line_with_its_whole_reason() {
        let a = assessment(vec![
            assessed(
                "api",
                Decision::Stale {
                    findings: vec![finding("app/db"), finding("app/api-key")],
                },
            ),
            assessed("cron", Decision::InSync),
        ]);
        let table = Report::new(&a, &[], true).to_table_as(Layout::Lines);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("CLUSTER") && lines[0].ends_with("REASON"));
        let api = lines.iter().find(|l| l.contains("api")).unwrap();
        assert!(api.contains("would_roll"), "{api}");
        assert!(
            api.ends_with(&format!("app/db: {LONG}; app/api-key: {LONG}")),
            "{api}"
        );
        // header, two services, blank, summary
        assert_eq!(lines.len(), 5, "{table}");
        assert!(table.contains("Dry run: nothing was changed."));
    }

    #[test]
    fn at_a_terminal_reasons_are_whole_and_wrapped_under_their_service() {
        let a = assessment(vec![
            assessed("api", stale()),
            assessed("cron", Decision::InSync),
        ]);
        let width = 60;
        let table = Report::new(&a, &[], true).to_table_as(Layout::Terminal { width });
        let lines: Vec<&str> = table.lines().collect();
        assert!(!lines[0].contains("REASON"));
        assert!(lines[1].contains("api") && lines[1].contains("stale"));
        let under_api: Vec<&str> = lines[2..]
            .iter()
            .take_while(|l| l.starts_with(REASON_INDENT))
            .copied()
            .collect();
        assert!(under_api.len() > 1, "wrapped: {table}");
        for l in &under_api {
            assert!(l.chars().count() <= width, "{l:?} is wider than {width}");
        }
        let joined: Vec<&str> = under_api.iter().map(|l| l.trim()).collect();
        assert_eq!(joined.join(" "), format!("app/db: {LONG}"));
    }

    /// `opted-out` in the table and `opted_out` in JSON: one spelling now, serde's.
    #[test]
    fn each_decision_has_one_spelling_in_table_and_json() {
        let all = vec![
            stale(),
            Decision::InSync,
            Decision::Pinned,
            Decision::OptedOut { findings: vec![] },
            Decision::Settling {
                until: None,
                reason: "deployment in progress".into(),
                findings: vec![],
            },
            Decision::Skipped {
                reason: "CODE_DEPLOY".into(),
                findings: vec![],
            },
            Decision::Unknown {
                problems: vec!["deleted".into()],
            },
            Decision::Held {
                reason: "canary failed".into(),
                findings: vec![],
            },
            Decision::Scheduled {
                at: chrono::Utc::now(),
                window: "Sun 00:00-01:00 UTC".into(),
                findings: vec![],
            },
            Decision::Pending {
                reason: "notify-only".into(),
                findings: vec![],
            },
        ];
        for d in all {
            let tag = serde_json::to_value(&d).unwrap()["decision"].clone();
            assert_eq!(tag, d.label(), "{d:?}");
            let a = assessment(vec![assessed("svc", d.clone())]);
            let report = Report::new(&a, &[], true);
            let row = report.to_table_as(Layout::Lines);
            let row = row.lines().nth(1).unwrap();
            assert_eq!(row.split_whitespace().nth(2), Some(d.label()), "{row}");
            let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
            assert_eq!(json["services"][0]["decision"], d.label());
            assert_eq!(json["summary"]["decisions"][d.label()], 1);
        }
    }

    #[test]
    fn actions_are_spelt_as_serde_spells_them() {
        for action in [
            Action::Rolled,
            Action::RolledHealthy,
            Action::Failed,
            Action::Halted,
            Action::WouldRoll,
            Action::NotRolled,
            Action::Waiting,
            Action::Skipped,
            Action::Deferred,
            Action::WaitingForWindow,
            Action::NeedsApproval,
            Action::None,
        ] {
            assert_eq!(serde_json::to_value(action).unwrap(), action.label());
        }
    }
}
