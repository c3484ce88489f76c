//! The manual driver: `ecs-reloader reconcile` and `ecs-reloader plan`: arguments in, one pass,
//! the report and the exit status out. `plan` is `reconcile --dry-run`: the same pass, which
//! waits out short settles the same way, so the plan shows what the real run would do.

use std::io::Write;

use crate::plan::ServiceKey;
use crate::reconcile::{Pass, ReconcileError, Request, Selection};
use crate::report::Report;
use crate::rollout::Outcome;
use crate::targets::Passes;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Clusters (empty: the configuration's, or all).
    pub clusters: Vec<String>,
    /// Only services that resolve one of these secrets.
    pub secrets: Vec<String>,
    /// Only these services (`CLUSTER/SERVICE` or a name).
    pub services: Vec<String>,
    /// Roll outside maintenance windows.
    pub ignore_windows: bool,
    /// Roll the named services even if their image tags moved.
    pub allow_image_drift: bool,
    /// Change nothing.
    pub dry_run: bool,
    /// Output format.
    pub output: Output,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// Whether everything in scope ended in sync (or, for a dry run, the plan was computed).
    pub ok: bool,
    /// A one-line explanation when not ok.
    pub message: String,
}

/// Runs one pass and writes the report to `out`.
pub async fn run(
    reconciler: &(impl Passes + ?Sized),
    opts: &Options,
    out: &mut (dyn Write + Send),
) -> Result<Ending, ReconcileError> {
    let req = Request {
        selection: if opts.secrets.is_empty() {
            Selection::All
        } else {
            Selection::Secrets(opts.secrets.clone())
        },
        clusters: opts.clusters.clone(),
        dry_run: opts.dry_run,
        budget: None,
        services: opts.services.clone(),
        ignore_windows: opts.ignore_windows,
        allow_image_drift: opts.allow_image_drift,
    };
    let pass = reconciler.run_pass(&req).await?;
    write_report(&pass, opts, out);
    let unreachable: Vec<String> = pass
        .targets
        .iter()
        .filter(|t| t.problem.is_some())
        .map(|t| t.to_string())
        .collect();
    if opts.dry_run {
        // A plan that could not look at every target is not the whole plan.
        return Ok(Ending {
            ok: unreachable.is_empty(),
            message: if unreachable.is_empty() {
                String::new()
            } else {
                format!(
                    "the plan lacks target(s) that could not be worked on: {}",
                    unreachable.join(", ")
                )
            },
        });
    }
    let problems = pass.problems();
    Ok(Ending {
        ok: problems.is_empty(),
        message: problems.join("; "),
    })
}

fn write_report(pass: &Pass, opts: &Options, out: &mut (dyn Write + Send)) {
    let report =
        Report::new(&pass.assessment, &pass.outcomes, opts.dry_run).with_targets(&pass.targets);
    let text = match opts.output {
        Output::Text => report.to_table(),
        Output::Json => report.to_json(),
    };
    // A closed stdout (a pipe into `head`) is not worth failing the run over.
    let _ = writeln!(out, "{}", text.trim_end());
}

/// Progress for a person: on a terminal, a live status line (done / in flight / waiting, and
/// which services are in flight) with a permanent line per finished service; elsewhere, one log
/// line per change.
pub struct TerminalProgress {
    state: std::sync::Mutex<ProgressState>,
    live: bool,
}

#[derive(Default)]
struct ProgressState {
    phases: std::collections::BTreeMap<ServiceKey, crate::rollout::Phase>,
}

impl TerminalProgress {
    /// Live when stderr is a terminal.
    pub fn new() -> Self {
        use std::io::IsTerminal;
        TerminalProgress {
            state: std::sync::Mutex::default(),
            live: std::io::stderr().is_terminal(),
        }
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::rollout::Progress for TerminalProgress {
    fn update(&self, key: &ServiceKey, phase: &crate::rollout::Phase) {
        use crate::rollout::Phase;
        if !self.live {
            crate::rollout::LogProgress.update(key, phase);
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.phases.insert(key.clone(), phase.clone());
        let (mut done, mut waiting) = (0, 0);
        let mut rolling = Vec::new();
        for (k, p) in &st.phases {
            match p {
                Phase::Waiting => waiting += 1,
                Phase::Rolling { .. } => rolling.push(k.to_string()),
                Phase::Done(_) => done += 1,
            }
        }
        let mut err = std::io::stderr().lock();
        if let Phase::Done(o) = phase {
            let detail = match o {
                Outcome::Healthy { deployment, .. } | Outcome::Triggered { deployment } => {
                    format!(" ({deployment})")
                }
                other => format!(": {}", other.reason().unwrap_or_default()),
            };
            let _ = writeln!(err, "\r\x1b[2K{key}: {}{detail}", o.label());
        }
        let shown: Vec<String> = rolling.iter().take(4).cloned().collect();
        let more = rolling.len().saturating_sub(shown.len());
        let _ = write!(
            err,
            "\r\x1b[2Krollout: {done} done, {} in flight, {waiting} waiting{}{}",
            rolling.len(),
            if shown.is_empty() {
                String::new()
            } else {
                format!(" [{}", shown.join(", "))
            },
            if shown.is_empty() {
                String::new()
            } else if more > 0 {
                format!(" +{more}]")
            } else {
                "]".into()
            },
        );
        if waiting == 0 && rolling.is_empty() {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}
