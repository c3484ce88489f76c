//! `ecs-reloader serve`: the long-running operator.
//!
//! Work comes from an SQS queue that EventBridge rules feed, and from a periodic full resync.
//! Events are hints: each one names a secret, and the services that resolve it are decided from
//! AWS state, as the CLI decides them. Hence:
//!
//! - **Nothing is lost.** A message is deleted only after its change was reconciled (decided, and
//!   any rollout it needed run to its end). While work goes on, its visibility is extended. If the
//!   process dies or is stopped, the message reappears and is decided again; services already
//!   rolled are in sync by then, so there is no duplicate rollout.
//! - **Poison is not deleted.** An unparsable message gets one log line saying why and is left
//!   alone, so that the queue's redrive policy moves it to the dead-letter queue; the loop goes on.
//! - **Bursts coalesce.** After a message arrives, messages are gathered for `[events] debounce`
//!   more; duplicates and several secrets of one service then make one decision and one rollout.
//! - **Settling services come back later.** When a rotation or a deployment is in progress, the
//!   message is hidden until the decision can be made, and reappears then.
//! - **Startup resyncs.** A restart rolls only what is stale, never what a previous run rolled.
//!
//! Work runs one batch at a time; a long rollout delays the next batch (not its messages, which
//! wait in the queue).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::aws::guard::Stats;
use crate::aws::queue::{Bus, Message, Queue};
use crate::driver::setup::Parts;
use crate::event::{self, Parsed};
use crate::index::{Scope, Target};
use crate::metrics::Metrics;
use crate::plan::ServiceKey;
use crate::reconcile::ReconcileError;
use crate::rollout::{Outcome, Phase, Progress, Rollout};

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Clusters to manage (empty: all).
    pub clusters: Vec<String>,
    /// Full resync period.
    pub resync_interval: Duration,
    /// Gathering window after a message.
    pub debounce: Duration,
    /// Visibility of messages in work.
    pub visibility: Duration,
    /// Long-poll wait.
    pub long_poll: Duration,
    /// Grace on shutdown.
    pub shutdown_grace: Duration,
    /// When a settling service has no known end (a deployment in progress), look again after this.
    pub settle_recheck: Duration,
}

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Status {
    /// The first full resync finished.
    pub index_built: AtomicBool,
    /// The last receive succeeded (or there is no queue).
    pub queue_ok: AtomicBool,
}

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP endpoint could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// The operator.
pub struct Server {
    parts: Parts,
    queue: Option<Arc<dyn Queue>>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    settings: Settings,
}

enum Work {
    /// Delete these messages: reconciled.
    Done,
    /// Hide these messages until then: decide again.
    Later(Duration),
}

impl Server {
    /// A server over assembled parts. `metrics` should be the one the parts' progress reports to.
    pub fn new(
        parts: Parts,
        queue: Option<Arc<dyn Queue>>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        let status = Arc::new(Status {
            index_built: AtomicBool::new(false),
            queue_ok: AtomicBool::new(queue.is_none()),
        });
        Server {
            parts,
            queue,
            metrics,
            status,
            settings,
        }
    }

    /// The readiness flags.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// The HTTP endpoints on `addr`, serving until `shutdown` says so.
    pub async fn bind_http(
        &self,
        addr: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        let state = HttpState {
            status: self.status.clone(),
            metrics: self.metrics.clone(),
            stats: self.parts.stats.clone(),
        };
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(state);
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        Ok(tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown.wait_for(|v| *v).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "HTTP endpoint failed");
            }
        }))
    }

    /// Runs until `shutdown` resolves, then lets in-flight work reach a safe point within the
    /// grace and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        self.run_until(rx).await
    }

    /// [`run`](Self::run), with the shutdown as a watch channel (true: stop).
    pub async fn run_until(self, mut stop: watch::Receiver<bool>) {
        if self.queue.is_none() {
            tracing::warn!("no queue configured: only periodic resyncs will run");
        }
        tracing::info!("startup resync");
        if self.with_grace(self.resync(), &mut stop).await.is_none() || *stop.borrow() {
            return;
        }
        self.status.index_built.store(true, Ordering::SeqCst);
        let mut next_resync = tokio::time::Instant::now() + self.settings.resync_interval;
        loop {
            if *stop.borrow() {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= next_resync {
                self.with_grace(self.resync(), &mut stop).await;
                next_resync = tokio::time::Instant::now() + self.settings.resync_interval;
                continue;
            }
            let Some(queue) = self.queue.clone() else {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_resync) => {}
                    _ = stop.wait_for(|v| *v) => break,
                }
                continue;
            };
            let wait = self.settings.long_poll.min(next_resync - now);
            let received = tokio::select! {
                r = queue.receive(10, wait) => r,
                _ = stop.wait_for(|v| *v) => break,
            };
            match received {
                Ok(messages) => {
                    self.status.queue_ok.store(true, Ordering::SeqCst);
                    if !messages.is_empty() {
                        self.with_grace(self.handle(queue.as_ref(), messages), &mut stop)
                            .await;
                    }
                }
                Err(e) => {
                    self.status.queue_ok.store(false, Ordering::SeqCst);
                    tracing::warn!(error = %e, "cannot receive from the queue; retrying in 5 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.wait_for(|v| *v) => break,
                    }
                }
            }
        }
        tracing::info!("stopped");
    }

    /// Runs `work`; on shutdown gives it the grace, then drops it (`None`).
    async fn with_grace<F: Future>(
        &self,
        work: F,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<F::Output> {
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => return Some(out),
            _ = stop.wait_for(|v| *v) => {}
        }
        tracing::info!(
            grace_s = self.settings.shutdown_grace.as_secs(),
            "shutting down: letting in-flight work reach a safe point"
        );
        tokio::select! {
            out = &mut work => Some(out),
            _ = tokio::time::sleep(self.settings.shutdown_grace) => {
                tracing::warn!("in-flight work cut short; its messages will reappear and be decided again");
                None
            }
        }
    }

    fn scope(&self) -> Scope {
        Scope {
            clusters: self.settings.clusters.clone(),
        }
    }

    /// A full resync.
    async fn resync(&self) {
        self.metrics.reconcile("resync");
        match self.reconcile(&[]).await {
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "resync failed; the next one will try again"),
        }
    }

    /// Decides and rolls; with `targets`, only their dependents. Returns when to look again if
    /// something is still settling.
    async fn reconcile(&self, targets: &[Target]) -> Result<Option<Duration>, ReconcileError> {
        let r = &self.parts.reconciler;
        let assessment = r
            .assess_settled(&self.scope(), targets, Duration::from_secs(15))
            .await?;
        let stale = assessment
            .services
            .iter()
            .filter(|a| a.decision.is_stale())
            .count();
        if targets.is_empty() {
            self.metrics.stale_services.set(stale as i64);
        }
        let set = assessment.change_set();
        if !set.is_empty() {
            tracing::info!(services = set.changes.len(), "rolling stale services");
            self.parts.rollout.execute(&set).await;
        }
        let now = r.clock().now();
        let later = assessment
            .services
            .iter()
            .filter_map(|a| match &a.decision {
                crate::decide::Decision::Settling { until, .. } => Some(
                    until
                        .and_then(|u| (u - now).to_std().ok())
                        .unwrap_or(self.settings.settle_recheck)
                        .max(Duration::from_secs(1)),
                ),
                _ => None,
            })
            .min();
        Ok(later)
    }

    /// One batch of messages, with everything that arrives within the debounce window.
    async fn handle(&self, queue: &dyn Queue, first: Vec<Message>) {
        let received_at = tokio::time::Instant::now();
        let mut batch = first;
        let deadline = received_at + self.settings.debounce;
        while tokio::time::Instant::now() < deadline {
            let left = deadline - tokio::time::Instant::now();
            match queue.receive(10, left.min(Duration::from_secs(1))).await {
                Ok(more) => batch.extend(more),
                Err(e) => {
                    tracing::warn!(error = %e, "receive during debounce failed");
                    break;
                }
            }
        }

        let now = self.parts.reconciler.clock().now();
        let mut work: Vec<Message> = Vec::new();
        let mut named = crate::reconcile::Named::new();
        let mut full = false;
        for m in batch {
            if let Some(sent) = m.sent_at {
                let lag = (now - sent).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics.queue_lag.observe(lag);
            }
            match event::parse(&m.body) {
                Ok(Parsed::Change(c)) => {
                    self.metrics.event(c.kind.label());
                    tracing::info!(message = %m.id, secret = ?c.secret, kind = c.kind.label(), "change event");
                    let moves = named.entry(c.secret).or_default();
                    if let (event::ChangeKind::LabelUpdated { label, .. }, Some(at)) =
                        (&c.kind, c.at)
                    {
                        moves.push((label.clone(), at));
                    }
                    work.push(m);
                }
                Ok(Parsed::Resync) => {
                    self.metrics.event("scheduled");
                    full = true;
                    work.push(m);
                }
                Ok(Parsed::Ignored(why)) => {
                    self.metrics.event("ignored");
                    tracing::info!(message = %m.id, why, "event needs no action");
                    self.delete(queue, &m).await;
                }
                Err(e) => {
                    self.metrics.event("poison");
                    tracing::warn!(
                        message = %m.id,
                        receive_count = m.receive_count,
                        error = %e,
                        "unusable message: left for the queue's redrive policy (dead-letter queue)"
                    );
                }
            }
        }
        if work.is_empty() {
            return;
        }

        // Keep the messages hidden while the work goes on.
        let heartbeat = {
            let receipts: Vec<String> = work.iter().map(|m| m.receipt.clone()).collect();
            let queue = self.queue.clone();
            let visibility = self.settings.visibility;
            tokio::spawn(async move {
                let Some(queue) = queue else { return };
                loop {
                    for r in &receipts {
                        if let Err(e) = queue.extend(r, visibility).await {
                            tracing::warn!(error = %e, "could not extend a message's visibility");
                        }
                    }
                    tokio::time::sleep(visibility / 3).await;
                }
            })
        };
        let outcome = self.work(&named, full, received_at).await;
        heartbeat.abort();
        match outcome {
            Ok(Work::Done) => {
                for m in &work {
                    self.delete(queue, m).await;
                }
            }
            Ok(Work::Later(after)) => {
                tracing::info!(
                    after_s = after.as_secs(),
                    "still settling: the events will come back then"
                );
                for m in &work {
                    if let Err(e) = queue.extend(&m.receipt, after).await {
                        tracing::warn!(error = %e, "could not delay a message");
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reconcile failed; the messages will reappear and be retried");
            }
        }
    }

    async fn work(
        &self,
        named: &crate::reconcile::Named,
        full: bool,
        received_at: tokio::time::Instant,
    ) -> Result<Work, ReconcileError> {
        let targets = if full {
            Vec::new()
        } else {
            self.parts.reconciler.resolve_named(named).await?
        };
        if !full && targets.is_empty() {
            tracing::info!("no changed secret exists any more: nothing to do");
            return Ok(Work::Done);
        }
        self.metrics
            .reconcile(if full { "resync" } else { "event" });
        let started = received_at.elapsed().as_secs_f64();
        let later = self.reconcile(&targets).await?;
        self.metrics.decision_latency.observe(started);
        Ok(match later {
            Some(after) => Work::Later(after),
            None => Work::Done,
        })
    }

    async fn delete(&self, queue: &dyn Queue, m: &Message) {
        if let Err(e) = queue.delete(&m.receipt).await {
            tracing::warn!(message = %m.id, error = %e, "could not delete a message; it will be decided again");
        }
    }
}

#[derive(Clone)]
struct HttpState {
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    let built = s.status.index_built.load(Ordering::SeqCst);
    let queue = s.status.queue_ok.load(Ordering::SeqCst);
    let code = if built && queue {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        format!("index_built={built} queue_reachable={queue}\n"),
    )
}

async fn metrics(
    State(s): State<HttpState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(&s.stats),
    )
}

/// Progress for `serve`: log lines, metrics, and outcome events on the bus.
pub struct NotifyProgress {
    metrics: Arc<Metrics>,
    bus: Option<Arc<dyn Bus>>,
}

impl NotifyProgress {
    /// Reports to `metrics`, and to `bus` when there is one.
    pub fn new(metrics: Arc<Metrics>, bus: Option<Arc<dyn Bus>>) -> Self {
        NotifyProgress { metrics, bus }
    }
}

/// The detail-type of an outcome event, and the metric kind, for a phase.
fn outcome_event(phase: &Phase) -> Option<(&'static str, &'static str)> {
    match phase {
        Phase::Waiting => None,
        Phase::Rolling { .. } => Some(("Rollout Started", "started")),
        Phase::Done(Outcome::Healthy { .. } | Outcome::Triggered { .. }) => {
            Some(("Rollout Succeeded", "succeeded"))
        }
        Phase::Done(Outcome::Failed { .. }) => Some(("Rollout Failed", "failed")),
        Phase::Done(Outcome::Halted { .. }) => Some(("Rollout Halted", "halted")),
    }
}

impl Progress for NotifyProgress {
    fn update(&self, key: &ServiceKey, phase: &Phase) {
        crate::rollout::LogProgress.update(key, phase);
        let Some((detail_type, kind)) = outcome_event(phase) else {
            return;
        };
        self.metrics.rollout(kind);
        let Some(bus) = self.bus.clone() else { return };
        let detail = match phase {
            Phase::Rolling { deployment } => {
                serde_json::json!({"cluster": key.cluster, "service": key.service, "deployment": deployment})
            }
            Phase::Done(o) => {
                serde_json::json!({"cluster": key.cluster, "service": key.service, "outcome": o})
            }
            Phase::Waiting => return,
        };
        tokio::spawn(async move {
            if let Err(e) = bus.put(detail_type, &detail).await {
                tracing::warn!(error = %e, detail_type, "could not publish an outcome event");
            }
        });
    }
}
