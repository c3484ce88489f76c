//! `ecs-reloader serve`: the long-running operator. It owns the queue, the heartbeats, the
//! acknowledgements and its HTTP endpoints; each piece of work is one
//! [`Reconciler::pass`](crate::reconcile::Reconciler::pass).
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
//! - **A change that must wait stays hidden, not requeued.** When a pass says to look again
//!   later (a rotation, a deployment or a canary in progress), its messages are kept invisible
//!   by the heartbeat and the change is decided again when due. They are never received again
//!   meanwhile, so their receive count does not grow and waiting never sends a valid event to
//!   the dead-letter queue. A restart lets them reappear once, and they are decided afresh.
//! - **Startup resyncs.** A restart rolls only what is stale, never what a previous run rolled.
//!
//! - **Work runs side by side.** Receiving, deciding and watching are concurrent: each batch of
//!   messages is its own pass, so an event that arrives while another change set's rollouts are
//!   watched is decided and rolled at once, and resyncs keep their schedule. The rollout
//!   engine's limits (global, per cluster) hold across all of them, and a service that one change
//!   set is rolling is rolled by no other meanwhile: the second waits, looks again, finds it
//!   fresh and coalesces. Halts stay per change set. At most [`MAX_PASSES`] passes run at once;
//!   beyond that, messages wait in the queue.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::aws::guard::Stats;
use crate::aws::queue::{Message, Queue, SdkQueue};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::decide::Kind;
use crate::driver::setup::{self, Parts};
use crate::event::{self, Changes, Parsed};
use crate::intake;
use crate::lease::{DynamoStore, Keeper, Leadership};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::reconcile::{Mode, Pass, ReconcileError, Request};
use crate::targets::Fleet;

/// Passes in flight at once (event batches, due changes and a resync): beyond this, messages
/// wait in the queue. Rollouts are bounded separately, by `[rollout] max_concurrent`.
pub const MAX_PASSES: usize = 32;

/// What a finished piece of work tells the loop.
enum Done {
    /// A resync, and when the next is due.
    Resync(Duration),
    /// A batch of messages.
    Batch,
}

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct Settings {
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
    /// A pass that failed as a whole (the scan could not list or describe) is tried again after
    /// this, its messages kept hidden meanwhile (doubled at each retry, [`intake::RETRIES`] at
    /// most; then left to the resync).
    pub retry_after: Duration,
    /// The clock skew allowed: how much earlier than a pass an event must be dated for a copy
    /// of it to count as already decided.
    pub clock_skew: Duration,
}

impl Settings {
    /// From the configuration.
    pub fn from_config(config: &Config) -> Self {
        Settings {
            resync_interval: config.resync.interval.0,
            debounce: config.events.debounce.0,
            visibility: config.events.visibility_timeout.0,
            long_poll: Duration::from_secs(20),
            shutdown_grace: config.serve.shutdown_grace.0,
            retry_after: Duration::from_secs(30),
            clock_skew: config.decide.clock_skew.0,
        }
    }
}

/// What `/readyz` reports; every change of readiness is logged once, with the reason.
#[derive(Debug, Default)]
pub struct Status {
    index_built: AtomicBool,
    queue_ok: AtomicBool,
    /// Another replica leads: this one is ready as a standby.
    standby: Mutex<Option<String>>,
    /// This replica leads (always, without a lease).
    leading: AtomicBool,
    queue_problem: Mutex<Option<String>>,
    last_logged: Mutex<Option<String>>,
}

impl Status {
    /// Why `serve` is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        if self.standby().is_some() {
            return None;
        }
        if !self.leading.load(Ordering::SeqCst) {
            return Some("the lease table has not said who leads yet".into());
        }
        if !self.index_built.load(Ordering::SeqCst) {
            return Some("the startup resync has not finished".into());
        }
        if !self.queue_ok.load(Ordering::SeqCst) {
            let why = self
                .queue_problem
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "no receive has succeeded yet".into());
            return Some(format!("the queue cannot be read: {why}"));
        }
        None
    }

    /// Who leads, when another replica does.
    pub fn standby(&self) -> Option<String> {
        self.standby
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_standby(&self, leader: Option<String>) {
        *self.standby.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    fn log_change(&self) {
        let now = self.not_ready();
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return;
        }
        match &now {
            Some(why) => tracing::warn!(reason = %why, "not ready"),
            None => tracing::info!("ready"),
        }
        *last = now;
    }

    fn set_index_built(&self) {
        self.index_built.store(true, Ordering::SeqCst);
        self.log_change();
    }

    fn set_queue(&self, problem: Option<String>) {
        self.queue_ok.store(problem.is_none(), Ordering::SeqCst);
        *self.queue_problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
        self.log_change();
    }
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
    /// `[serve] listen` is not an address.
    #[error("[serve] listen / --listen {0:?} is not an address like 0.0.0.0:8080")]
    BadListen(String),
    /// The SDK could not be set up.
    #[error(transparent)]
    Setup(#[from] crate::aws::sdk::SdkSetupError),
    /// The targets could not be set up.
    #[error(transparent)]
    Targets(#[from] setup::FleetSetupError),
    /// The operator's own account could not be learned: without it, no event can be told to be
    /// ours or another account's.
    #[error("cannot learn the operator's own account")]
    Identity(#[source] crate::aws::AwsError),
}

/// The main loop's state.
struct Loop {
    was_leading: bool,
    /// `None` while a resync runs.
    next_resync: Option<Instant>,
    work: tokio::task::JoinSet<Done>,
}

/// What a turn of the main loop ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Take another turn.
    Next,
    /// Nothing was due: poll the queue.
    Idle,
    /// Stop was asked for.
    Stop,
}

/// A batch of messages whose change is being worked on or waits to be decided again.
struct Batch {
    messages: Vec<Message>,
    changes: Changes,
    received_at: Instant,
    /// One per batch merged into this one (see [`Server::park`]).
    heartbeat: Vec<tokio::task::JoinHandle<()>>,
    /// Retries so far (a target or the whole pass failed): bounded by [`intake::RETRIES`].
    retries: u32,
}

impl Drop for Batch {
    fn drop(&mut self) {
        for h in self.heartbeat.drain(..) {
            h.abort();
        }
    }
}

/// The operator.
pub struct Server {
    reconciler: Fleet,
    stats: Arc<Stats>,
    queue: Option<Arc<dyn Queue>>,
    notifier: Arc<Notifier>,
    status: Arc<Status>,
    settings: Settings,
    /// Changes that wait, with when they are due.
    waiting: tokio::sync::Mutex<Vec<(Instant, Batch)>>,
    leadership: Arc<Leadership>,
    /// Changes a pass that began after them has decided: later copies need no pass.
    recent: intake::Recent,
    /// The changes waiting, as the status page lists them.
    in_flight: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// A server over assembled parts whose progress is `notifier`.
    pub fn new(
        parts: Parts,
        queue: Option<Arc<dyn Queue>>,
        notifier: Arc<Notifier>,
        settings: Settings,
    ) -> Self {
        Self::over(
            Fleet::single(parts.reconciler, parts.stats),
            queue,
            notifier,
            settings,
        )
    }

    /// A server over every target of `fleet`.
    pub fn over(
        fleet: Fleet,
        queue: Option<Arc<dyn Queue>>,
        notifier: Arc<Notifier>,
        settings: Settings,
    ) -> Self {
        let status = Arc::new(Status::default());
        if queue.is_none() {
            status.queue_ok.store(true, Ordering::SeqCst);
        }
        Server {
            stats: fleet.stats().clone(),
            reconciler: fleet,
            queue,
            notifier,
            status,
            recent: intake::Recent::new(settings.resync_interval, settings.clock_skew),
            settings,
            waiting: tokio::sync::Mutex::new(Vec::new()),
            leadership: Leadership::sole(),
            in_flight: Arc::default(),
        }
    }

    /// A replica that acts only while `leadership` says it leads (its parts must have been
    /// assembled with the same).
    pub(crate) fn with_leadership(mut self, leadership: Arc<Leadership>) -> Self {
        self.leadership = leadership;
        self
    }

    fn metrics(&self) -> &Arc<Metrics> {
        self.notifier.metrics()
    }

    /// The readiness flags.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// The HTTP endpoints on `addr`, serving until `shutdown` says so.
    pub(crate) async fn bind_http(
        &self,
        addr: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        let state = HttpState {
            status: self.status.clone(),
            board: self.notifier.board().cloned(),
            in_flight: self.in_flight.clone(),
            leadership: self.leadership.clone(),
            metrics: self.metrics().clone(),
            stats: self.stats.clone(),
        };
        let app = Router::new()
            .route("/", get(status_page))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(state);
        tracing::info!(%addr, "serving / (status page), /healthz, /readyz and /metrics");
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
        let this = Arc::new(self);
        if this.queue.is_none() {
            tracing::warn!("no queue configured: only periodic resyncs will run");
        }
        this.status.log_change();
        let mut l = Loop {
            was_leading: false,
            next_resync: Some(Instant::now()),
            work: tokio::task::JoinSet::new(),
        };
        // One turn: reap finished passes; follow the lease; start what is due (a resync, a
        // change whose wait is over); else poll the queue until the next thing is due.
        loop {
            if *stop.borrow() {
                break;
            }
            while let Some(done) = l.work.try_join_next() {
                finished(done, &mut l.next_resync, this.settings.retry_after);
            }
            let step = if this.follow_lease(&mut l).await {
                match this.start_due(&mut l, &mut stop).await {
                    Step::Idle => this.poll(&mut l, &mut stop).await,
                    other => other,
                }
            } else {
                this.stand_by(&mut stop).await
            };
            if step == Step::Stop {
                break;
            }
        }
        this.drain(l.work).await;
        tracing::info!("stopped");
    }

    /// Leadership: whether this replica leads now; on a change, a new leader resyncs (whatever
    /// the last one left undone, a resync finds) and a replica that stopped leading stands down.
    async fn follow_lease(self: &Arc<Self>, l: &mut Loop) -> bool {
        let leading = self.leadership.is_leader();
        self.metrics().leader.set(i64::from(leading));
        self.status.leading.store(leading, Ordering::SeqCst);
        if leading != l.was_leading {
            l.was_leading = leading;
            if leading {
                tracing::info!("leading: resyncing, then hearing events");
                self.status.set_standby(None);
                if l.next_resync.is_some() {
                    l.next_resync = Some(Instant::now());
                }
            } else {
                self.stand_down().await;
            }
            self.status.log_change();
        }
        leading
    }

    /// A turn of a replica that does not lead: it says who does, and waits a second.
    async fn stand_by(self: &Arc<Self>, stop: &mut watch::Receiver<bool>) -> Step {
        // A pass that was running when the lease was lost may have parked its change after the
        // stand-down: let it go too.
        if !self.waiting.lock().await.is_empty() {
            self.stand_down().await;
        }
        let leader = match self.leadership.role() {
            crate::lease::Role::Standby { leader } => leader,
            crate::lease::Role::Leader { .. } => None,
        };
        // Ready as a standby only once another replica is known to lead: before the lease
        // table has answered, this replica may be about to lead and is not ready.
        self.status.set_standby(leader);
        self.status.log_change();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => Step::Next,
            _ = stop.wait_for(|v| *v) => Step::Stop,
        }
    }

    /// Scheduling: starts the resync when it is due (the startup one alone, before any event),
    /// waits when [`MAX_PASSES`] run, and starts a waiting change whose time has come.
    async fn start_due(self: &Arc<Self>, l: &mut Loop, stop: &mut watch::Receiver<bool>) -> Step {
        let now = Instant::now();
        if l.next_resync.is_some_and(|at| now >= at) {
            if !self.status.index_built.load(Ordering::SeqCst) {
                // The startup resync runs alone: it fills the watch cache every event's pass
                // then uses, and events wait in the queue meanwhile.
                tracing::info!("startup resync");
                let Some(after) = self.with_grace(self.resync(), stop).await else {
                    return Step::Stop;
                };
                if *stop.borrow() {
                    return Step::Stop;
                }
                self.status.set_index_built();
                l.next_resync = Some(Instant::now() + after);
            } else {
                l.next_resync = None;
                let s = self.clone();
                l.work.spawn(async move { Done::Resync(s.resync().await) });
            }
            return Step::Next;
        }
        if l.work.len() >= MAX_PASSES {
            return tokio::select! {
                done = l.work.join_next() => {
                    if let Some(done) = done {
                        finished(done, &mut l.next_resync, self.settings.retry_after);
                    }
                    Step::Next
                }
                _ = stop.wait_for(|v| *v) => Step::Stop,
            };
        }
        if let Some(batch) = self.due(now).await {
            let s = self.clone();
            l.work.spawn(async move {
                s.work(batch).await;
                Done::Batch
            });
            return Step::Next;
        }
        Step::Idle
    }

    /// Polling: receives from the queue until the next waiting change or resync is due, and
    /// starts a pass for what arrived.
    async fn poll(self: &Arc<Self>, l: &mut Loop, stop: &mut watch::Receiver<bool>) -> Step {
        let now = Instant::now();
        let wake = [self.next_due().await, l.next_resync]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + self.settings.long_poll);
        let Some(queue) = self.queue.clone() else {
            return tokio::select! {
                _ = tokio::time::sleep_until(wake.min(now + Duration::from_secs(1))) => Step::Next,
                _ = stop.wait_for(|v| *v) => Step::Stop,
            };
        };
        let wait = self
            .settings
            .long_poll
            .min(wake.saturating_duration_since(now));
        let received = tokio::select! {
            r = queue.receive(10, wait) => r,
            _ = stop.wait_for(|v| *v) => return Step::Stop,
        };
        match received {
            Ok(messages) => {
                self.status.set_queue(None);
                if messages.is_empty() {
                    return Step::Next;
                }
                // Busy from the first message to the end of its pass, without a gap a watcher of
                // the gauge could mistake for "done".
                self.metrics().busy.inc();
                match self.gather(queue.as_ref(), messages).await {
                    // ECS's events only refresh the watch cache (a `DescribeServices` per ten
                    // services): done at once, before anything else is received, so that a
                    // change right behind them finds the cache up to date.
                    Some(batch) if !batch.changes.may_roll() => {
                        self.work(batch).await;
                        self.metrics().busy.dec();
                    }
                    Some(batch) => {
                        let s = self.clone();
                        l.work.spawn(async move {
                            s.work(batch).await;
                            s.metrics().busy.dec();
                            Done::Batch
                        });
                    }
                    None => {
                        self.metrics().busy.dec();
                    }
                }
                Step::Next
            }
            Err(e) => {
                self.status.set_queue(Some(e.to_string()));
                tracing::warn!(error = %e, "cannot receive from the queue; retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => Step::Next,
                    _ = stop.wait_for(|v| *v) => Step::Stop,
                }
            }
        }
    }

    /// Shutdown: lets the passes in flight reach a safe point within the grace, then cuts them
    /// short (their messages reappear and are decided again).
    async fn drain(&self, mut work: tokio::task::JoinSet<Done>) {
        if work.is_empty() {
            return;
        }
        tracing::info!(
            passes = work.len(),
            grace_s = self.settings.shutdown_grace.as_secs(),
            "shutting down: letting in-flight work reach a safe point"
        );
        let drained = tokio::time::timeout(self.settings.shutdown_grace, async {
            while work.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "in-flight work cut short; its messages will reappear and be decided again"
            );
            work.abort_all();
            while work.join_next().await.is_some() {}
        }
    }

    /// After losing the lease: what waits is the new leader's, so its messages are let go (they
    /// reappear once their visibility runs out).
    async fn stand_down(&self) {
        let mut waiting = self.waiting.lock().await;
        if !waiting.is_empty() {
            tracing::info!(
                changes = waiting.len(),
                "no longer leading: leaving waiting changes to the leader"
            );
        }
        waiting.clear();
        self.metrics().waiting.set(0);
        self.show_waiting(&waiting);
        if let Some(board) = self.notifier.board() {
            board.forget();
        }
        // Their messages reappear: if this replica leads again by then, they are no copies.
        self.recent.clear();
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

    /// A full resync; returns when the next one is due (sooner when something settles).
    async fn resync(&self) -> Duration {
        self.metrics().reconcile("resync");
        self.metrics().busy.inc();
        let result = self.reconciler.pass(&Request::all()).await;
        self.metrics().busy.dec();
        match result {
            Ok(pass) => {
                let stale = pass.decisions().get(&Kind::Stale).copied().unwrap_or(0);
                self.metrics().stale_services.set(stale as i64);
                self.notifier.after_pass(&pass);
                if let Some(board) = self.notifier.board() {
                    board.resynced(&pass);
                }
                pass.requeue_after
                    .map_or(self.settings.resync_interval, |d| {
                        d.min(self.settings.resync_interval)
                    })
            }
            Err(e) => {
                tracing::error!(error = %e, "resync failed; trying again soon");
                self.settings.retry_after.min(self.settings.resync_interval)
            }
        }
    }

    async fn due(&self, now: Instant) -> Option<Batch> {
        let mut waiting = self.waiting.lock().await;
        let i = waiting.iter().position(|(due, _)| *due <= now)?;
        let (_, batch) = waiting.remove(i);
        self.metrics().waiting.set(waiting.len() as i64);
        self.show_waiting(&waiting);
        Some(batch)
    }

    async fn next_due(&self) -> Option<Instant> {
        self.waiting.lock().await.iter().map(|(due, _)| *due).min()
    }

    /// One batch of messages, with everything that arrives within the debounce window; `None`
    /// when none of them asks for work (each was deleted or left for the dead-letter queue).
    async fn gather(&self, queue: &dyn Queue, first: Vec<Message>) -> Option<Batch> {
        let received_at = Instant::now();
        let mut batch = first;
        let deadline = received_at + self.settings.debounce;
        while Instant::now() < deadline {
            let left = deadline - Instant::now();
            match queue.receive(10, left.min(Duration::from_secs(1))).await {
                Ok(more) => batch.extend(more),
                Err(e) => {
                    tracing::warn!(error = %e, "receive during debounce failed");
                    break;
                }
            }
        }

        let now = self.reconciler.clock().now();
        // Whose events count (asked at start-up: this is the remembered answer).
        let managed = match self.reconciler.managed().await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "the operator's own account is unknown: the batch is left to reappear");
                return None;
            }
        };
        for m in &batch {
            if let Some(sent) = m.sent_at {
                let lag = (now - sent).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics().queue_lag.observe(lag);
            }
        }
        let sorted = intake::sort(
            batch.into_iter().map(|m| {
                let (id, body) = (m.id.clone(), m.body.clone());
                (m, id, body)
            }),
            &managed,
            self.metrics(),
            &self.recent,
        );
        for m in &sorted.done {
            self.delete(queue, m).await;
        }
        for m in &sorted.poison {
            // Left for the queue's redrive policy (the dead-letter queue).
            tracing::debug!(message = %m.id, receive_count = m.receive_count, "unusable message left on the queue");
        }
        let retries = sorted.fewest_retries();
        let changes = sorted.changes;
        let work: Vec<Message> = sorted.used.into_iter().map(|u| u.handle).collect();
        if work.is_empty() {
            return None;
        }
        // This batch's pass owns these changes from now until it is done with them (or leaves
        // them to the resync): copies that arrive meanwhile need no pass of their own.
        self.recent.record(&changes, now);
        let heartbeat = self.heartbeat(&work).into_iter().collect();
        Some(Batch {
            messages: work,
            changes,
            received_at,
            heartbeat,
            retries,
        })
    }

    /// Keeps the messages hidden while their change is worked on or waits.
    fn heartbeat(&self, messages: &[Message]) -> Option<tokio::task::JoinHandle<()>> {
        let queue = self.queue.clone()?;
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt.clone()).collect();
        let visibility = self.settings.visibility;
        Some(tokio::spawn(async move {
            loop {
                for r in &receipts {
                    if let Err(e) = queue.extend(r, visibility).await {
                        tracing::warn!(error = %e, "could not extend a message's visibility");
                    }
                }
                tokio::time::sleep(visibility / 3).await;
            }
        }))
    }

    /// Decides (and rolls) a batch's change; deletes its messages when done, or keeps the batch
    /// hidden until it is due again.
    async fn work(&self, mut batch: Batch) {
        // ECS's events alone only refresh the watch cache: counted apart, and not a decision.
        let kind = intake::pass_kind(&batch.changes);
        self.metrics().reconcile(kind);
        self.metrics().busy.inc();
        let started = self.reconciler.clock().now();
        let result: Result<Pass, ReconcileError> = self
            .reconciler
            .pass(&Request::changes(batch.changes.clone()))
            .await;
        self.metrics().busy.dec();
        if kind != "watch_refresh" {
            self.metrics()
                .decision_latency
                .observe(batch.received_at.elapsed().as_secs_f64());
        }
        let look = match &result {
            Ok(pass) => intake::next_look(pass.requeue_after, pass.target_retry, batch.retries),
            Err(_) => intake::next_look(None, Some(self.settings.retry_after), batch.retries),
        };
        if look.retry {
            batch.retries += 1;
        }
        // Later copies of these changes need no pass of their own: this one read AWS's state
        // after them, and what is left of it waits here or goes to the resync.
        self.recent.record(&batch.changes, started);
        let after = match result {
            Ok(pass) => {
                self.notifier.after_pass(&pass);
                match look.after {
                    None => {
                        if let Some(queue) = &self.queue {
                            for m in &batch.messages {
                                self.delete(queue.as_ref(), m).await;
                            }
                        }
                        return;
                    }
                    // A wait longer than the resync period (a maintenance window tomorrow):
                    // holding the messages that long would age them toward SQS's 12-hour
                    // visibility limit, so they are handed on as new messages, delayed (at most
                    // 15 minutes at a time), and what only their events tell (a label moved
                    // back) is still known when the wait ends.
                    Some(after) if after > self.settings.resync_interval => {
                        if self.hand_on(&batch, after).await {
                            return;
                        }
                        self.settings.resync_interval
                    }
                    Some(after) => {
                        tracing::info!(
                            after_s = after.as_secs(),
                            "still settling: deciding again then (the messages stay hidden)"
                        );
                        after
                    }
                }
            }
            Err(e) => match look.after {
                Some(after) => {
                    tracing::error!(error = %e, retry_s = after.as_secs(), retries = batch.retries, "reconcile failed; trying again (the messages stay hidden)");
                    after
                }
                None => {
                    tracing::error!(error = %e, "reconcile failed again: the change is left to the resync (its messages are acknowledged)");
                    if let Some(queue) = &self.queue {
                        for m in &batch.messages {
                            self.delete(queue.as_ref(), m).await;
                        }
                    }
                    return;
                }
            },
        };
        if !self.leadership.is_leader() {
            // Lost the lease meanwhile (the pass ran beside the loop that stood down): what is
            // left is the leader's. Dropping the batch stops its heartbeat, so its messages
            // reappear for the leader.
            tracing::info!("no longer leading: leaving the change to the leader");
            self.recent.clear();
            return;
        }
        self.park(batch, Instant::now() + after).await;
    }

    /// Keeps a batch waiting until `due`. The waiting list is keyed by what changed: a batch
    /// that shares a subject with one already waiting joins it (one decision for both, at the
    /// earlier time), so two waits for one subject are one and the list holds at most one entry
    /// per subject.
    async fn park(&self, mut batch: Batch, due: Instant) {
        let mut waiting = self.waiting.lock().await;
        let shared = waiting.iter().position(|(_, w)| {
            w.changes
                .subjects
                .keys()
                .any(|k| batch.changes.subjects.contains_key(k))
        });
        match shared {
            Some(i) => {
                let (at, w) = &mut waiting[i];
                *at = (*at).min(due);
                w.messages.append(&mut batch.messages);
                w.heartbeat.append(&mut batch.heartbeat);
                w.changes.absorb(std::mem::take(&mut batch.changes));
                w.retries = w.retries.min(batch.retries);
                w.received_at = w.received_at.min(batch.received_at);
            }
            None => waiting.push((due, batch)),
        }
        self.metrics().waiting.set(waiting.len() as i64);
        self.show_waiting(&waiting);
    }

    /// The waiting changes as the status page lists them: what changed, who changed it, and
    /// when it is decided again.
    fn show_waiting(&self, waiting: &[(Instant, Batch)]) {
        let now = Instant::now();
        let shown: Vec<String> = waiting
            .iter()
            .flat_map(|(due, b)| {
                let again = due.saturating_duration_since(now).as_secs();
                b.changes.subjects.keys().map(move |subject| {
                    let who: Vec<String> = b
                        .changes
                        .provenance
                        .get(subject)
                        .map(|p| p.iter().map(|p| p.to_string()).collect())
                        .unwrap_or_default();
                    let name = subject.given();
                    if who.is_empty() {
                        format!("{name}: decided again in {again} s")
                    } else {
                        format!(
                            "{name} (announced by {}): decided again in {again} s",
                            who.join("; ")
                        )
                    }
                })
            })
            .collect();
        *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()) = shown;
    }

    /// Sends a batch's change events again, delayed, and deletes the originals; `false` (and
    /// nothing deleted) when a send failed, so the batch waits in place instead.
    async fn hand_on(&self, batch: &Batch, after: Duration) -> bool {
        let Some(queue) = &self.queue else {
            return false;
        };
        let delay = after.min(Duration::from_secs(15 * 60));
        let mut bodies: Vec<&String> = batch
            .messages
            .iter()
            .filter(|m| matches!(event::parse(&m.body), Ok(Parsed::Change(_))))
            .map(|m| &m.body)
            .collect();
        bodies.sort();
        bodies.dedup();
        for body in bodies {
            // The retries so far travel with the change, so that they stay bounded.
            let body = intake::with_retries(body, batch.retries);
            if let Err(e) = queue.send(&body, delay).await {
                tracing::warn!(error = %e, "could not hand a waiting change on; keeping it hidden");
                return false;
            }
        }
        tracing::info!(
            after_s = after.as_secs(),
            delay_s = delay.as_secs(),
            "a long wait: the change is handed on as a delayed message"
        );
        for m in &batch.messages {
            self.delete(queue.as_ref(), m).await;
        }
        true
    }

    async fn delete(&self, queue: &dyn Queue, m: &Message) {
        if let Err(e) = queue.delete(&m.receipt).await {
            tracing::warn!(message = %m.id, error = %e, "could not delete a message; it will be decided again");
        }
    }
}

/// What the loop learns from a finished piece of work, wherever it notices it: when the next
/// resync is due. A pass that ended abnormally (a panic) leaves its messages to reappear; if it
/// was the resync (none is scheduled while one runs), the next one still comes.
fn finished(
    done: Result<Done, tokio::task::JoinError>,
    next_resync: &mut Option<Instant>,
    retry_after: Duration,
) {
    match done {
        Ok(Done::Resync(after)) => *next_resync = Some(Instant::now() + after),
        Ok(Done::Batch) => {}
        Err(e) => {
            tracing::error!(error = %e, "a pass ended abnormally");
            if next_resync.is_none() {
                *next_resync = Some(Instant::now() + retry_after);
            }
        }
    }
}

/// Where `serve` listens and what it reads, beyond the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--queue-url`.
    pub queue_url: Option<String>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--cluster` (repeatable).
    pub clusters: Vec<String>,
}

/// Wires `serve` from the configuration and runs it until `shutdown` resolves.
pub async fn run(
    mut config: Config,
    aws: &crate::aws::sdk::SdkSettings,
    overrides: Overrides,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if let Some(url) = overrides.queue_url {
        config.events.queue_url = url;
    }
    if let Some(listen) = overrides.listen {
        config.serve.listen = listen;
    }
    if !overrides.clusters.is_empty() {
        config.scope.clusters = overrides.clusters;
    }
    let listen: SocketAddr = config
        .serve
        .listen
        .parse()
        .map_err(|_| ServeError::BadListen(config.serve.listen.clone()))?;
    let sdk = setup::sdk(&config, aws).await?;
    let queue = (!config.events.queue_url.is_empty())
        .then(|| Arc::new(SdkQueue::new(&sdk.config, &config.events.queue_url)) as Arc<dyn Queue>);
    let notifier = Arc::new(
        Notifier::new(Arc::new(Metrics::new()), sdk.bus.clone())
            .with_board(Arc::new(crate::status_page::Board::default())),
    );
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(SystemClock);
    let (tx, rx) = watch::channel(false);
    let (leadership, keeper) = if config.lease.table.is_empty() {
        (Leadership::sole(), None)
    } else {
        let store = Arc::new(DynamoStore::new(&sdk.config, &config.lease.table, "serve"));
        let keeper = Keeper::new(store, clock.clone(), config.lease.ttl.0, replica_name());
        let leadership = keeper.leadership();
        tracing::info!(table = %config.lease.table, me = leadership.me(), "competing for the lease");
        let stop = rx.clone();
        (
            leadership,
            Some(tokio::spawn(async move { keeper.run(stop).await })),
        )
    };
    let fleet = setup::fleet(
        &config,
        &sdk,
        clock,
        notifier.clone(),
        Mode::Watch,
        Some(leadership.clone()),
        &[],
        &[],
    )
    .await?;
    let own = fleet.own_account().await.map_err(ServeError::Identity)?;
    tracing::info!(account = %own, "the operator's own account: events of accounts not managed are dropped");
    let server = Server::over(fleet, queue, notifier, Settings::from_config(&config))
        .with_leadership(leadership);
    let http = server.bind_http(listen, rx.clone()).await?;
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    server.run_until(rx).await;
    if let Some(k) = keeper {
        // Gives the lease up, so that a standby takes over at once.
        let _ = k.await;
    }
    let _ = http.await;
    Ok(())
}

/// This replica's name in the lease: the host (an ECS task's hostname is unique), the process
/// and a random part, so that a restarted process is a new holder.
pub(crate) fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{nonce:08x}", std::process::id())
}

#[derive(Clone)]
struct HttpState {
    status: Arc<Status>,
    board: Option<Arc<crate::status_page::Board>>,
    in_flight: Arc<Mutex<Vec<String>>>,
    leadership: Arc<Leadership>,
    metrics: Arc<Metrics>,
    stats: Arc<Stats>,
}

/// The status page (see [`crate::status_page`]).
async fn status_page(
    State(s): State<HttpState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let (_, ready) = readyz(State(s.clone())).await;
    let leader = match s.leadership.role() {
        crate::lease::Role::Leader { term: 0 } => {
            "this replica (no lease: the only one)".to_string()
        }
        crate::lease::Role::Leader { term } => {
            format!("this replica ({}, term {term})", s.leadership.me())
        }
        crate::lease::Role::Standby { leader: Some(l) } => format!("{l} (this replica stands by)"),
        crate::lease::Role::Standby { leader: None } => "nobody known yet".to_string(),
    };
    let live = crate::status_page::Live {
        leader,
        ready: ready.trim().to_string(),
        in_flight: s
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        busy: s.metrics.busy.get(),
        now: chrono::Utc::now(),
    };
    let page = match &s.board {
        Some(board) => board.render(&live),
        None => crate::status_page::Board::default().render(&live),
    };
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    // Every replica standing by for two lease times: nobody acts on the queue.
    if let Some(since) = s.leadership.leaderless() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no replica has led for {} s (two lease times or more): is the lease table reachable?\n",
                since.as_secs()
            ),
        );
    }
    if let Some(leader) = s.status.standby() {
        return (StatusCode::OK, format!("ready: standby ({leader} leads)\n"));
    }
    match s.status.not_ready() {
        None => (StatusCode::OK, "ready: leading\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review (#21): with [`MAX_PASSES`] passes in flight, the loop waited for one to
    /// end and dropped a panicked resync's error, so no resync ever came again. Both places the
    /// loop notices finished work now go through [`finished`].
    #[tokio::test]
    async fn a_panicked_resync_never_stops_later_resyncs() {
        let panicked = tokio::spawn(async {
            if true {
                panic!("a resync that panics");
            }
            Done::Batch
        })
        .await;
        let mut next_resync = None;
        finished(panicked, &mut next_resync, Duration::from_secs(30));
        assert!(next_resync.is_some(), "the next resync is scheduled");
        let mut scheduled = Some(Instant::now() + Duration::from_secs(600));
        let before = scheduled;
        let batch = tokio::spawn(async { Done::Batch }).await;
        finished(batch, &mut scheduled, Duration::from_secs(30));
        assert_eq!(scheduled, before, "a batch leaves the schedule alone");
    }
}
