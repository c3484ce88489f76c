//! Prometheus metrics of `serve`: events by kind, poison messages, reconciles, rollouts by
//! outcome, stale services, queue lag and depth, AWS calls and throttles by operation, and the
//! latency from an event's receipt to its decision.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::aws::guard::Stats;

/// A `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The kind.
    pub kind: String,
}

/// A target's labels: its account and region.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// The account (empty: the operator's own credentials, account not configured).
    pub account: String,
    /// The region.
    pub region: String,
}

/// A target's labels with a `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetKind {
    /// The account.
    pub account: String,
    /// The region.
    pub region: String,
    /// The kind.
    pub kind: String,
}

/// An `operation` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    /// e.g. `ecs:UpdateService`.
    pub operation: String,
}

/// The metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Events received, by kind (`rotation_succeeded`, `label_updated`, `api_call`,
    /// `parameter_change`, `scheduled`, `ignored`, `poison`).
    pub events: Family<Kind, Counter>,
    /// Reconciles, by trigger (`event`, `resync`).
    pub reconciles: Family<Kind, Counter>,
    /// Rollouts by phase or outcome (`started`, `succeeded`, `failed`, `halted`).
    pub rollouts: Family<Kind, Counter>,
    /// Stale services at the last full resync.
    pub stale_services: Gauge,
    /// Messages waiting in the queue.
    pub queue_depth: Gauge,
    /// Seconds from a message's sending to its receipt.
    pub queue_lag: Histogram,
    /// Seconds from an event's receipt to its decision.
    pub decision_latency: Histogram,
    /// Passes or message batches being worked on now (0: idle).
    pub busy: Gauge,
    /// 1 while this replica holds the single-writer lease (always 1 without one).
    pub leader: Gauge,
    /// Changes that wait to be decided again (a deployment, rotation or canary in progress);
    /// their messages stay hidden meanwhile.
    pub waiting: Gauge,
    /// Rollouts by target (account, region) and phase or outcome.
    pub target_rollouts: Family<TargetKind, Counter>,
    /// 1 when the target's last pass ran, 0 when it could not (role not assumed, calls refused).
    pub target_up: Family<TargetLabels, Gauge>,
    /// Passes a target could not run.
    pub target_failures: Family<TargetLabels, Counter>,
    pub(crate) api_calls: Family<Operation, Counter>,
    pub(crate) api_throttles: Family<Operation, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `ecs_reloader` prefix.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("ecs_reloader")),
            events: Family::default(),
            reconciles: Family::default(),
            rollouts: Family::default(),
            stale_services: Gauge::default(),
            queue_depth: Gauge::default(),
            queue_lag: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            decision_latency: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            busy: Gauge::default(),
            leader: Gauge::default(),
            waiting: Gauge::default(),
            target_rollouts: Family::default(),
            target_up: Family::default(),
            target_failures: Family::default(),
            api_calls: Family::default(),
            api_throttles: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "events_received",
                "Events received, by kind",
                m.events.clone(),
            );
            r.register("reconciles", "Reconciles, by trigger", m.reconciles.clone());
            r.register(
                "rollouts",
                "Rollouts, by phase or outcome",
                m.rollouts.clone(),
            );
            r.register(
                "stale_services",
                "Stale services at the last full resync",
                m.stale_services.clone(),
            );
            r.register(
                "queue_depth",
                "Messages waiting in the queue (approximate)",
                m.queue_depth.clone(),
            );
            r.register(
                "queue_lag_seconds",
                "From a message's sending to its receipt",
                m.queue_lag.clone(),
            );
            r.register(
                "decision_latency_seconds",
                "From an event's receipt to its decision",
                m.decision_latency.clone(),
            );
            r.register(
                "busy",
                "Passes or message batches being worked on now (0: idle)",
                m.busy.clone(),
            );
            r.register(
                "leader",
                "1 while this replica leads (holds the single-writer lease)",
                m.leader.clone(),
            );
            r.register(
                "changes_waiting",
                "Changes waiting to be decided again, their messages hidden",
                m.waiting.clone(),
            );
            r.register(
                "target_rollouts",
                "Rollouts, by target account, region and phase or outcome",
                m.target_rollouts.clone(),
            );
            r.register(
                "target_up",
                "1 when the target's last pass ran, 0 when its role could not be assumed or its calls were refused",
                m.target_up.clone(),
            );
            r.register(
                "target_failures",
                "Passes a target (account, region) could not run",
                m.target_failures.clone(),
            );
            r.register(
                "api_calls",
                "AWS API attempts, by operation",
                m.api_calls.clone(),
            );
            r.register(
                "api_throttles",
                "AWS API attempts answered with throttling, by operation",
                m.api_throttles.clone(),
            );
        }
        m
    }

    /// Counts one event of `kind`.
    pub fn event(&self, kind: &str) {
        self.events
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts one rollout phase or outcome.
    pub fn rollout(&self, kind: &str) {
        self.rollouts
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts one rollout phase or outcome of a target's service.
    pub fn target_rollout(&self, account: &str, region: &str, kind: &str) {
        self.target_rollouts
            .get_or_create(&TargetKind {
                account: account.to_string(),
                region: region.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Records whether a target's pass ran.
    pub fn set_target_up(&self, account: &str, region: &str, up: bool) {
        self.target_up
            .get_or_create(&TargetLabels {
                account: account.to_string(),
                region: region.to_string(),
            })
            .set(i64::from(up));
    }

    /// Counts a pass a target could not run.
    pub fn target_failure(&self, account: &str, region: &str) {
        self.target_failures
            .get_or_create(&TargetLabels {
                account: account.to_string(),
                region: region.to_string(),
            })
            .inc();
    }

    /// Counts one reconcile.
    pub fn reconcile(&self, trigger: &str) {
        self.reconciles
            .get_or_create(&Kind {
                kind: trigger.to_string(),
            })
            .inc();
    }

    /// The text exposition, with the guard's call counters copied in.
    pub fn render(&self, stats: &Stats) -> String {
        for (op, s) in stats.snapshot() {
            let label = Operation {
                operation: op.to_string(),
            };
            self.api_calls
                .get_or_create(&label)
                .inner()
                .store(s.calls, std::sync::atomic::Ordering::Relaxed);
            self.api_throttles
                .get_or_create(&label)
                .inner()
                .store(s.throttled, std::sync::atomic::Ordering::Relaxed);
        }
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = encode(&mut out, &r) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new();
        m.event("rotation_succeeded");
        m.event("rotation_succeeded");
        m.rollout("started");
        m.stale_services.set(3);
        let text = m.render(&Stats::default());
        assert!(
            text.contains("ecs_reloader_events_received_total{kind=\"rotation_succeeded\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ecs_reloader_rollouts_total{kind=\"started\"} 1"),
            "{text}"
        );
        assert!(text.contains("ecs_reloader_stale_services 3"), "{text}");
    }
}
