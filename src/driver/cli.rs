//! The manual driver: `ecs-reloader reconcile` and `ecs-reloader plan`.
//!
//! One pass: resolve the named secrets, assess, wait out short settles (a change made within the
//! last second or two, see [`crate::decide`]), then roll what is stale, or with `--dry-run` only
//! show what would roll. Both wait the same way, so the dry run shows what the real run would do.

use std::io::Write;
use std::time::Duration;

use crate::index::Scope;
use crate::plan::ServiceKey;
use crate::reconcile::{Assessment, ReconcileError, Reconciler};
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
    let mut assessment = reconciler.assess(&scope, &targets).await?;

    // A dry run waits out short settles too, so that it shows what `reconcile` would do.
    assessment = settle(
        reconciler,
        &scope,
        &targets,
        assessment,
        opts.max_settle_wait,
    )
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
    Ok(Ending {
        ok: problems.is_empty(),
        message: problems.join("; "),
    })
}

/// Re-assesses while some service settles with a known end that is close enough to wait for.
async fn settle(
    reconciler: &Reconciler,
    scope: &Scope,
    targets: &[crate::index::Target],
    mut assessment: Assessment,
    max_wait: Duration,
) -> Result<Assessment, ReconcileError> {
    let deadline =
        reconciler.clock().now() + chrono::Duration::from_std(max_wait).unwrap_or_default();
    while let Some(until) = assessment.next_settle() {
        if until > deadline {
            break;
        }
        let wait = (until - reconciler.clock().now())
            .to_std()
            .unwrap_or_default();
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "waiting for recent changes to settle"
        );
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
        assessment = reconciler.assess(scope, targets).await?;
    }
    Ok(assessment)
}
