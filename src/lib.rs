//! ecs-reloader: rolls Amazon ECS services whose tasks resolve a Secrets Manager secret or an SSM
//! parameter that changed since they started.
//!
//! Data flows one way, and the core knows neither the AWS SDK nor which driver runs it:
//!
//! ```text
//! driver (CLI | serve | Lambda)
//!   └─ index      clusters → services → task definitions (cached by ARN) → references
//!       └─ decide pure: (service, resolved secret metadata, now) → Decision
//!           └─ plan  pure: decisions → ordered change set (waves)
//!               └─ rollout  canary, waves, bounded concurrency, health, halt (through the
//!                           guard: token buckets and backoff around every AWS call)
//!                   └─ report  table / JSON
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`reference`] | parsing `valueFrom` / `credentialsParameter` / tag values; secret identity |
//! | [`decide`] | the staleness rule and its edge cases (read its docs) |
//! | [`plan`] | ordering stale services into a change set |
//! | [`index`] | scanning ECS, the task-definition cache, resolving references and targets |
//! | [`reconcile`] | the one reconciler every driver runs |
//! | [`rollout`] | executing a change set |
//! | [`report`] | table and JSON output |
//! | [`aws`] | the AWS traits, the SDK implementation and the in-memory fake |
//! | [`config`] | TOML + `ECS_RELOADER_*` configuration |
//! | [`clock`] | wall-clock time, pausable in tests |
//! | [`event`] | the EventBridge event shapes that announce a change |
//! | [`metrics`] | Prometheus metrics of `serve` |
//! | [`driver`] | the CLI, `serve` and the Lambda handler, and assembling the parts from configuration |

pub mod aws;
pub mod clock;
pub mod config;
pub mod decide;
pub mod driver;
pub mod event;
pub mod index;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod reference;
pub mod report;
pub mod rollout;
