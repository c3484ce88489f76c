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
    /// Counts by decision and outcome.
    pub summary: BTreeMap<&'static str, usize>,
}

/// One service.
#[derive(Debug, Clone, Serialize)]
pub struct Row<'a> {
    /// The service and its decision.
    #[serde(flatten)]
    pub assessed: &'a Assessed,
    /// What was done, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'a Outcome>,
}

impl<'a> Report<'a> {
    /// Builds a report; `outcomes` are those of the executed change set (empty for a dry run).
    pub fn new(
        assessment: &'a Assessment,
        outcomes: &'a [(ServiceKey, Outcome)],
        dry_run: bool,
    ) -> Self {
        let mut summary: BTreeMap<&'static str, usize> = BTreeMap::new();
        let services: Vec<Row<'a>> = assessment
            .services
            .iter()
            .map(|a| {
                *summary.entry(a.decision.label()).or_default() += 1;
                let outcome = outcomes.iter().find(|(k, _)| *k == a.key).map(|(_, o)| o);
                if let Some(o) = outcome {
                    *summary.entry(o.label()).or_default() += 1;
                }
                Row {
                    assessed: a,
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
        }
    }

    /// The JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The table.
    pub fn to_table(&self) -> String {
        let header = [
            "CLUSTER", "SERVICE", "DECISION", "ACTION", "REASON", "SECRETS",
        ];
        let rows: Vec<[String; 6]> = self
            .services
            .iter()
            .map(|r| {
                let a = r.assessed;
                let action = match (r.outcome, &a.decision) {
                    (Some(o), _) => o.label().to_string(),
                    (None, Decision::Stale { .. }) if self.dry_run => "would roll".into(),
                    (None, Decision::Stale { .. }) => "not rolled".into(),
                    (None, Decision::Settling { .. }) => "wait".into(),
                    (None, Decision::Scheduled { .. }) => "wait for window".into(),
                    (None, Decision::Pending { .. }) => "needs approval".into(),
                    _ => "-".into(),
                };
                let full = match (r.outcome, &a.decision) {
                    (Some(o), _) if o.reason().is_some() => {
                        o.reason().unwrap_or_default().to_string()
                    }
                    (_, d) => reason(d),
                };
                let reason = clip(&full, REASON_WIDTH);
                [
                    a.key.cluster.clone(),
                    a.key.service.clone(),
                    a.decision.label().into(),
                    action,
                    reason,
                    a.secrets.join(" "),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        // The last two columns are long; cap them so one reason does not stretch every line.
        widths[4] = widths[4].min(REASON_WIDTH);
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut l = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}  ");
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut out, &header.map(String::from));
        for row in &rows {
            line(&mut out, row);
        }
        let counts: Vec<String> = self
            .summary
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let _ = writeln!(
            out,
            "\n{} service(s) with secrets{}; {} without. {}",
            self.services.len(),
            if counts.is_empty() {
                String::new()
            } else {
                format!(": {}", counts.join(", "))
            },
            self.services_without_secrets,
            if self.dry_run {
                "Dry run: nothing was changed."
            } else {
                ""
            }
        );
        out
    }
}

/// The table shows this much of a reason; the JSON document has all of it.
const REASON_WIDTH: usize = 90;

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(width - 1).collect();
        out.push('…');
        out
    }
}

fn reason(d: &Decision) -> String {
    let first = |f: &[crate::decide::Finding]| match f {
        [] => String::new(),
        [one] => format!("{}: {}", one.secret, one.reason),
        [one, rest @ ..] => format!("{}: {} (+{} more)", one.secret, one.reason, rest.len()),
    };
    match d {
        Decision::Stale { findings } => first(findings),
        Decision::InSync => "deployment is newer than every secret it resolves".into(),
        Decision::Pinned => "every reference is pinned to a version id".into(),
        Decision::OptedOut { findings } if findings.is_empty() => {
            "tagged ecs-reloader/enabled=false".into()
        }
        Decision::OptedOut { findings } => format!(
            "tagged ecs-reloader/enabled=false; would roll: {}",
            first(findings)
        ),
        Decision::Settling { reason, until, .. } => match until {
            Some(u) => format!(
                "{reason} (until {})",
                u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => reason.clone(),
        },
        Decision::Skipped { reason } => reason.clone(),
        Decision::Unknown { problems } => problems.join("; "),
        Decision::Held { reason, .. } => reason.clone(),
        Decision::Scheduled { at, window, .. } => format!(
            "outside its maintenance window: rolls at {} ({window})",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        Decision::Pending { reason, .. } => reason.clone(),
    }
}
