//! ecs-reloader: rolls Amazon ECS services whose tasks resolve a Secrets Manager secret or an SSM
//! parameter that changed since they started.
//!
//! Data flows one way, and the core knows neither the AWS SDK nor which driver runs it. Every
//! driver runs the same pass, [`reconcile::Reconciler::pass`]:
//!
//! ```text
//! driver (CLI | serve | Lambda)         its own I/O only: arguments and the terminal; the queue,
//!   │                                   heartbeats and acknowledgements; the Runtime API
//!   └─ Fleet::pass(Request)             every target (account, region) side by side, changes
//!      │                                routed by account and region; one target's failure is
//!      │                                recorded in Pass::targets, the others go on
//!   └─ Reconciler::pass(Request) → Pass { decisions, outcomes, requeue_after }
//!       ├─ index      clusters → services → task definitions (cached by ARN) → references
//!       ├─ decide     pure: (service, resolved secret metadata, now) → Decision;
//!       │             then across services: waves, holds, and (without waiting) gates
//!       ├─ plan       pure: decisions → ordered change set (waves)
//!       └─ rollout    canary, waves, bounded concurrency, health, halt (through the guard:
//!                     token buckets and backoff around every AWS call)
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`reference`] | parsing `valueFrom` / `credentialsParameter` / tag values; secret identity |
//! | `sources` | one file per source of values (Secrets Manager, SSM, S3 environment files) behind `Source`: lookups, refusal wording, the events that announce a change, routing, matching |
//! | [`event`] | the EventBridge envelope, ECS's events, and gathering a batch of changes (each source reads its own events) |
//! | `intake` | what `serve` and the Lambda make of a message: parsed, weighed (whose events count), counted |
//! | [`index`] | scanning ECS, the task-definition cache, resolving references and targets |
//! | [`decide`] | the staleness rule and its edge cases (read its docs); waves, holds, gates |
//! | `deployment` | the one reading of an ECS deployment (healthy, in progress, failed, rolled back, stuck) |
//! | [`plan`] | ordering stale services into a change set |
//! | [`reconcile`] | the pass every driver runs, and when to look again |
//! | [`rollout`] | executing a change set: the engine schedules, paces and halts; `rollout::strategy` holds one file per way of rolling a service and reading its rollout |
//! | [`report`] | table and JSON output |
//! | [`notify`] | outcome events and rollout metrics |
//! | [`aws`] | the AWS traits, the SDK implementation and (feature `test-util`) the in-memory fake |
//! | [`config`] | TOML + `ECS_RELOADER_*` configuration |
//! | [`targets`] | the accounts and regions managed, one reconciler each; routing changes among them |
//! | [`clock`] | wall-clock time, pausable in tests |
//! | [`metrics`] | Prometheus metrics of `serve` |
//! | [`driver`] | the CLI, `serve` and the Lambda handler, and wiring the parts from configuration |
//! | `status_page` | what `serve`'s page shows, kept up to date by [`notify`] |
//!
//! Seams: a new source of values is one file in `sources` and a line in its `SOURCES` (plus
//! a variant in each closed enum of the vocabulary, its port and fake); a new way of rolling is
//! one file in `rollout::strategy` (plus its `RolledBy` variant
//! in [`aws::Service::rolled_by`], its calls in the ports and the fake); a new driver is one file
//! in [`driver`] over `intake::sort`, [`targets::Fleet`] and [`notify::Notifier`]. Data flows one
//! way: no top-level module imports its way back to itself (`tests/architecture.rs`).

// Public items must be reachable from outside the crate (the binary, the tests): everything else
// is `pub(crate)`.
#![warn(unreachable_pub)]

pub mod aws;
pub mod clock;
pub mod config;
#[cfg(test)]
mod dashboards;
pub mod decide;
pub(crate) mod deployment;
pub mod driver;
pub(crate) mod emf;
pub mod event;
pub mod index;
pub(crate) mod intake;
pub mod lease;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod reconcile;
pub mod reference;
pub mod report;
pub mod rollout;
pub(crate) mod sources;
pub(crate) mod status_page;
pub mod targets;
pub mod tasks;
pub(crate) mod watch;
pub mod window;
