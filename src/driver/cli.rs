//! The manual driver: `ecs-reloader reconcile` and `ecs-reloader plan`.
//!
//! One pass: resolve the named secrets, assess, wait out short settles (a change made within the
//! last second or two, see [`crate::decide`]), then roll what is stale, or with `--dry-run` only
//! show what would roll. Both wait the same way, so the dry run shows what the real run would do.

use std::io::Write;
use std::time::Duration;

use crate::index::Scope;
use crate::plan::ServiceKey;
use crate::reconcile::{ReconcileError, Reconciler};
use crate::report::Report;
use crate::rollout::{Outcome, Rollout};

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
    /// Change nothing.
    pub dry_run: bool,
    /// Output format.
    pub output: Output,
    /// The longest the CLI waits for settling services before deciding without them.
    pub max_settle_wait: Duration,
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
    reconciler: &Reconciler,
    rollout: &dyn Rollout,
    opts: &Options,
    out: &mut (dyn Write + Send),
) -> Result<Ending, ReconcileError> {
    let targets = reconciler.resolve_targets(&opts.secrets).await?;
    let scope = Scope {
        clusters: opts.clusters.clone(),
    };
    // A dry run waits out short settles too, so that it shows what `reconcile` would do.
    let assessment = reconciler
        .assess_settled(&scope, &targets, opts.max_settle_wait)
        .await?;
    let set = assessment.change_set();
    let outcomes: Vec<(ServiceKey, Outcome)> = if opts.dry_run || set.is_empty() {
        Vec::new()
    } else {
        rollout.execute(&set).await
    };

    let report = Report::new(&assessment, &outcomes, opts.dry_run);
    let text = match opts.output {
        Output::Text => report.to_table(),
        Output::Json => report.to_json(),
    };
    // A closed stdout (a pipe into `head`) is not worth failing the run over.
    let _ = writeln!(out, "{}", text.trim_end());

    if opts.dry_run {
        return Ok(Ending {
            ok: true,
            message: String::new(),
        });
    }
    let failed = outcomes.iter().filter(|(_, o)| !o.is_success()).count();
    let unknown = assessment
        .services
        .iter()
        .filter(|a| a.decision.label() == "unknown")
        .count();
    let held = assessment
        .services
        .iter()
        .filter(|a| a.decision.label() == "held")
        .count();
    let settling = assessment
        .services
        .iter()
        .filter(|a| a.decision.label() == "settling")
        .count();
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!("{failed} rollout(s) failed or were halted"));
    }
    if unknown > 0 {
        problems.push(format!(
            "{unknown} service(s) reference secrets that could not be resolved"
        ));
    }
    if settling > 0 {
        problems.push(format!("{settling} service(s) still settling (deployment or rotation in progress): run again later"));
    }
    if held > 0 {
        problems.push(format!(
            "{held} service(s) held: another rollout of the same change failed"
        ));
    }
    Ok(Ending {
        ok: problems.is_empty(),
        message: problems.join("; "),
    })
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
                Outcome::Failed { reason } | Outcome::Halted { reason } => format!(": {reason}"),
                Outcome::Healthy { deployment } | Outcome::Triggered { deployment } => {
                    format!(" ({deployment})")
                }
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
