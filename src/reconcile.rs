//! The reconciler: scan → resolve → decide → plan, the one core that every driver (CLI, `serve`,
//! Lambda) runs. It holds the clients, the task-definition cache and the clock, and nothing that
//! must survive a restart: every decision is derived from AWS state.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::aws::{AwsError, Clients, Service};
use crate::clock::Clock;
use crate::decide::{decide, Decision, Policy};
use crate::index::{self, resolve_target, Scope, Target, TargetError, TaskDefCache};
use crate::plan::{plan, wave_of, ChangeSet, ServiceKey};

/// Secrets that events named, each with the label moves the events announced (label, when).
pub type Named =
    std::collections::BTreeMap<crate::event::Named, Vec<(String, chrono::DateTime<chrono::Utc>)>>;

/// Gives the resolved Secrets Manager states the label moves that targets' events announced.
fn apply_label_moves(resolved: &mut [Vec<crate::decide::ResolvedRef>], targets: &[Target]) {
    use crate::decide::RefState;
    for t in targets.iter().filter(|t| !t.label_moves.is_empty()) {
        for refs in resolved.iter_mut() {
            for r in refs.iter_mut() {
                if let Ok(RefState::SecretsManager(s)) = &mut r.state {
                    let id = crate::reference::SecretIdentity::SecretsManager(s.id.clone());
                    if t.identities.contains(&id) {
                        for (label, at) in &t.label_moves {
                            let slot = s.label_moves.entry(label.clone()).or_insert(*at);
                            *slot = (*slot).max(*at);
                        }
                    }
                }
            }
        }
    }
}

/// Why a reconcile could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// A secret named by the caller could not be resolved.
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// One service with its decision.
#[derive(Debug, Clone, Serialize)]
pub struct Assessed {
    /// Which service.
    pub key: ServiceKey,
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision,
    /// Every secret it resolves (display form), for the report.
    pub secrets: Vec<String>,
    /// The service as described (not serialised).
    #[serde(skip)]
    pub service: Service,
}

/// The state of a scope at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    /// When it was computed (our clock).
    pub at: DateTime<Utc>,
    /// Services that reference secrets (and, with targets, reference one of them).
    pub services: Vec<Assessed>,
    /// Services in scope that reference no secret.
    pub without_secrets: usize,
    /// The resolved targets, if the caller named secrets.
    #[serde(skip)]
    pub targets: Vec<Target>,
}

impl Assessment {
    /// The change set: stale services in rollout order.
    pub fn change_set(&self) -> ChangeSet {
        plan(self.services.iter().map(|a| (&a.service, &a.decision)))
    }

    /// The earliest moment a settling service should be decided again, if any has one.
    pub fn next_settle(&self) -> Option<DateTime<Utc>> {
        self.services
            .iter()
            .filter_map(|a| match &a.decision {
                Decision::Settling { until, .. } => *until,
                _ => None,
            })
            .min()
    }
}

/// Knobs of the reconciler.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The staleness rule's tunables.
    pub policy: Policy,
    /// AWS calls in flight during a scan.
    pub scan_concurrency: usize,
    /// A rollout in progress longer than this is stuck (holds its change's other dependents).
    pub stuck_after: std::time::Duration,
    /// Failed tasks that make a rollout in progress count as failed.
    pub failed_tasks_threshold: i32,
    /// Gate the canary through AWS state (for drivers that do not wait for health).
    pub gate_canary: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: Policy::default(),
            scan_concurrency: 8,
            stuck_after: std::time::Duration::from_secs(15 * 60),
            failed_tasks_threshold: 3,
            gate_canary: false,
        }
    }
}

/// The reconcile core.
pub struct Reconciler {
    clients: Clients,
    cache: Arc<TaskDefCache>,
    clock: Arc<dyn Clock>,
    settings: Settings,
}

impl Reconciler {
    /// A reconciler over `clients`.
    pub fn new(clients: Clients, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        Reconciler {
            clients,
            cache: Arc::new(TaskDefCache::new()),
            clock,
            settings,
        }
    }

    /// The clients it uses.
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The task-definition cache (shared across calls, warm for the life of the process).
    pub fn cache(&self) -> &TaskDefCache {
        &self.cache
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Resolves secret names given by a user or an event.
    pub async fn resolve_targets(&self, given: &[String]) -> Result<Vec<Target>, ReconcileError> {
        let mut out = Vec::with_capacity(given.len());
        for g in given {
            out.push(resolve_target(&self.clients, g).await?);
        }
        Ok(out)
    }

    /// Decides every service of `scope`; with `targets`, only services that reference one of
    /// them (a service so selected is decided on all its secrets: one rollout fixes all).
    pub async fn assess(
        &self,
        scope: &Scope,
        targets: &[Target],
    ) -> Result<Assessment, ReconcileError> {
        let conc = self.settings.scan_concurrency;
        let inventory = index::scan(&self.clients, &self.cache, scope, conc).await?;
        let home = self.clients.region.as_str();
        let entries: Vec<_> = inventory
            .entries
            .into_iter()
            .filter(|e| {
                targets.is_empty()
                    || targets
                        .iter()
                        .flat_map(|t| &t.identities)
                        .any(|id| e.references(id, home))
            })
            .collect();
        let mut resolved = index::resolve(&self.clients, &entries, conc).await;
        apply_label_moves(&mut resolved, targets);
        let now = self.clock.now();
        let mut decided: Vec<_> = entries
            .iter()
            .zip(&resolved)
            .map(|(entry, refs)| {
                let mut decision = decide(&entry.service, refs, now, &self.settings.policy);
                if let Err(problem) = wave_of(&entry.service) {
                    if decision.is_stale() {
                        decision = Decision::Unknown {
                            problems: vec![problem],
                        };
                    }
                }
                let changes = refs
                    .iter()
                    .filter_map(|r| r.state.as_ref().ok())
                    .map(|s| (s.identity(), s.changed_at()))
                    .collect();
                (&entry.service, changes, decision)
            })
            .collect();
        // A change that already broke one dependent's rollout holds the others.
        crate::decide::hold_failed(
            &mut decided,
            now,
            self.settings.stuck_after,
            self.settings.failed_tasks_threshold,
        );
        if self.settings.gate_canary {
            // In plan order, so that the canary is the service the plan would roll first.
            let mut order: Vec<usize> = (0..decided.len()).collect();
            order.sort_by_key(|&i| {
                let svc = decided[i].0;
                (wave_of(svc).unwrap_or(0), ServiceKey::of(svc))
            });
            let mut ordered: Vec<_> = order
                .iter()
                .map(|&i| (decided[i].0, decided[i].1.clone(), decided[i].2.clone()))
                .collect();
            crate::decide::gate_canary(&mut ordered);
            for (slot, (_, _, d)) in order.into_iter().zip(ordered) {
                decided[slot].2 = d;
            }
        }
        let decisions: Vec<Decision> = decided.into_iter().map(|(_, _, d)| d).collect();
        let services = entries
            .into_iter()
            .zip(resolved)
            .zip(decisions)
            .map(|((entry, refs), decision)| {
                let mut secrets: Vec<String> = refs
                    .iter()
                    .map(|r| match &r.state {
                        Ok(s) => s.identity().to_string(),
                        Err(_) => r.text.clone(),
                    })
                    .collect();
                secrets.sort();
                secrets.dedup();
                Assessed {
                    key: ServiceKey::of(&entry.service),
                    decision,
                    secrets,
                    service: entry.service,
                }
            })
            .collect();
        Ok(Assessment {
            at: now,
            services,
            without_secrets: inventory.without_secrets,
            targets: targets.to_vec(),
        })
    }

    /// Like [`assess`](Self::assess), but waits out settles that end within `max_wait` (a change
    /// made within the last second or two: see [`crate::decide`]) and decides again.
    pub async fn assess_settled(
        &self,
        scope: &Scope,
        targets: &[Target],
        max_wait: std::time::Duration,
    ) -> Result<Assessment, ReconcileError> {
        let deadline = self.clock.now() + chrono::Duration::from_std(max_wait).unwrap_or_default();
        let mut assessment = self.assess(scope, targets).await?;
        while let Some(until) = assessment.next_settle() {
            if until > deadline {
                break;
            }
            let wait = (until - self.clock.now()).to_std().unwrap_or_default();
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                "waiting for recent changes to settle"
            );
            tokio::time::sleep(wait + std::time::Duration::from_millis(50)).await;
            assessment = self.assess(scope, targets).await?;
        }
        Ok(assessment)
    }

    /// Resolves the secrets events name into targets. A secret that no longer exists, or a name
    /// that is not a secret at all, is logged and skipped: nothing can depend on it.
    pub async fn resolve_named(&self, named: &Named) -> Result<Vec<Target>, ReconcileError> {
        use crate::event::Named;
        use crate::reference::{canonical_param_name, ParameterId, SecretIdentity};
        let mut out = Vec::new();
        for (n, label_moves) in named {
            match n {
                Named::Secret(id) => match resolve_target(&self.clients, id).await {
                    Ok(t) => out.push(Target {
                        label_moves: label_moves.clone(),
                        ..t
                    }),
                    Err(TargetError::NotFound(_)) => {
                        tracing::info!(secret = %id, "changed secret no longer exists")
                    }
                    Err(TargetError::Parse { given, source }) => {
                        tracing::warn!(secret = %given, error = %source, "event names no usable secret")
                    }
                    Err(e) => return Err(e.into()),
                },
                Named::Parameter { region, name } => out.push(Target {
                    given: name.clone(),
                    identities: vec![SecretIdentity::Parameter(ParameterId::own(
                        region.as_deref().unwrap_or(&self.clients.region),
                        &canonical_param_name(name),
                        &self.clients.region,
                    ))],
                    label_moves: Vec::new(),
                }),
            }
        }
        Ok(out)
    }
}
