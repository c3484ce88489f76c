//! Drivers: where work comes from and how long it may wait. Each runs the same
//! [`Reconciler`](crate::reconcile::Reconciler).

pub mod cli;
#[cfg(any(test, feature = "test-util"))]
pub mod fake_world;
pub mod healthcheck;
pub mod lambda;
pub mod serve;
pub mod setup;
