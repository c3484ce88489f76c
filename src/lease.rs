//! One writer among `serve` replicas: a lease on one DynamoDB item, taken and renewed with
//! conditional writes. Only the holder receives from the queue, resyncs and calls
//! `UpdateService`; the others stand by and take over when the holder stops renewing.
//!
//! The record holds the holder, the wall-clock time the lease runs out (`expires`) and a term
//! that grows at every change of holder. Every write is a compare-and-swap on what was read, so
//! two replicas can never both win the same term.
//!
//! **Timing.** With lease time *T*: every replica tries every *T*/4. The holder writes
//! `expires = now + T` and trusts its lease only until *T* − *T*/3 after it *sent* that write
//! (its own monotonic clock, so a slow answer only shortens it). A standby takes the lease only
//! once its wall clock is past `expires`. So the holder stops acting at least *T*/3 before
//! another can start, as long as the replicas' clocks differ by less than that (10 s with the
//! default 30 s); and a dead holder is replaced within *T* + *T*/4.
//!
//! **An item that claims too much is not trusted.** A record whose `expires` lies further ahead
//! than *T* plus the allowed skew (*T*/3) was not written by a replica keeping these rules (a bad
//! `PutItem`, a clock far ahead). While its holder keeps renewing it, it stands; once it has not
//! changed for a whole lease time, a standby takes the lease as if it had run out, so one bad
//! write cannot stop every replica for good. And a replica that has seen nobody lead for two lease
//! times says so on `/readyz` ([`Leadership::leaderless`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::aws::{AwsError, AwsResult, ErrorKind};
use crate::clock::Clock;

/// The stored lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Who holds it.
    pub holder: String,
    /// When it runs out (the holder's wall clock at its last renewal, plus the lease time).
    pub expires: DateTime<Utc>,
    /// Grows at every change of holder.
    pub term: u64,
}

/// Where the lease lives.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The current record, read consistently; `None` when there is none.
    async fn read(&self) -> AwsResult<Option<Record>>;
    /// Writes `new` if the stored record is still `expected` (`None`: there is none). `Ok(false)`
    /// when it is not: someone else wrote first.
    async fn swap(&self, expected: Option<&Record>, new: &Record) -> AwsResult<bool>;
}

/// Who leads, as this replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// This replica holds the lease.
    Leader {
        /// The lease's term.
        term: u64,
    },
    /// Another replica holds it (or nobody could be asked yet).
    Standby {
        /// The holder, when known.
        leader: Option<String>,
    },
}

/// A replica's view of the lease, shared with whatever must stop when it is lost.
pub struct Leadership {
    me: String,
    trusted_until: Mutex<Option<Instant>>,
    role: Mutex<Role>,
    /// The lease time (`None`: no lease).
    ttl: Option<Duration>,
    /// When some replica was last seen leading (this one, or a renewal of another's).
    last_led: Mutex<Instant>,
}

impl crate::aws::guard::Leading for Leadership {
    fn is_leader(&self) -> bool {
        Leadership::is_leader(self)
    }
}

impl Leadership {
    /// A replica that never competes: always the leader (one replica, no lease configured).
    pub(crate) fn sole() -> Arc<Self> {
        Arc::new(Leadership {
            me: "sole".into(),
            trusted_until: Mutex::new(None),
            role: Mutex::new(Role::Leader { term: 0 }),
            ttl: None,
            last_led: Mutex::new(Instant::now()),
        })
    }

    fn competing(me: String, ttl: Duration) -> Self {
        Leadership {
            me,
            trusted_until: Mutex::new(Some(Instant::now())),
            role: Mutex::new(Role::Standby { leader: None }),
            ttl: Some(ttl),
            last_led: Mutex::new(Instant::now()),
        }
    }

    fn saw_a_leader(&self) {
        *self.last_led.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long nobody has been seen leading, once that is two lease times or more: the lease
    /// table is out of reach, or every replica stands by. `None` while someone leads (and
    /// always without a lease).
    pub fn leaderless(&self) -> Option<Duration> {
        let ttl = self.ttl?;
        if self.is_leader() {
            return None;
        }
        let since = self
            .last_led
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        (since >= ttl * 2).then_some(since)
    }

    /// Whether this replica may act now.
    pub(crate) fn is_leader(&self) -> bool {
        match *self.trusted_until.lock().unwrap_or_else(|p| p.into_inner()) {
            // No lease configured.
            None => true,
            Some(until) => Instant::now() < until,
        }
    }

    /// This replica's name in the lease.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Who leads, as last seen.
    pub fn role(&self) -> Role {
        if !self.is_leader() {
            let role = self.role.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Role::Leader { .. } = role {
                return Role::Standby { leader: None };
            }
            return role;
        }
        self.role.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Keeps a replica's lease: tries to take or renew it every lease time / 4.
pub struct Keeper {
    store: Arc<dyn LeaseStore>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    leadership: Arc<Leadership>,
    /// The record last read, and since when it has stood unchanged (this replica's monotonic
    /// clock): what tells a holder that renews from an item nobody keeps.
    observed: Mutex<Option<(Record, Instant)>>,
}

impl Keeper {
    /// A keeper for replica `me`.
    pub fn new(
        store: Arc<dyn LeaseStore>,
        clock: Arc<dyn Clock>,
        ttl: Duration,
        me: String,
    ) -> Self {
        Keeper {
            store,
            clock,
            ttl,
            leadership: Arc::new(Leadership::competing(me, ttl)),
            observed: Mutex::new(None),
        }
    }

    /// What the rest of the replica consults.
    pub fn leadership(&self) -> Arc<Leadership> {
        self.leadership.clone()
    }

    /// One attempt to take or keep the lease; returns the role it leaves.
    pub async fn step(&self) -> Role {
        let sent = Instant::now();
        let now = self.clock.now();
        let me = self.leadership.me.clone();
        let outcome = self.try_take(&me, now).await;
        let role = match outcome {
            Ok(Ok(term)) => {
                self.leadership.saw_a_leader();
                let trust = self.ttl.saturating_sub(self.ttl / 3);
                *self
                    .leadership
                    .trusted_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(sent + trust);
                Role::Leader { term }
            }
            Ok(Err(leader)) => {
                self.stop_trusting();
                Role::Standby {
                    leader: Some(leader),
                }
            }
            Err(e) => {
                // Keep what is still trusted: it runs out by itself.
                tracing::warn!(error = %e, "cannot reach the lease table");
                return self.leadership.role();
            }
        };
        let mut last = self
            .leadership
            .role
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *last != role {
            match &role {
                Role::Leader { term } => tracing::info!(term, me = %me, "leading"),
                Role::Standby { leader } => {
                    tracing::info!(leader = ?leader, me = %me, "standing by")
                }
            }
            *last = role.clone();
        }
        role
    }

    fn stop_trusting(&self) {
        *self
            .leadership
            .trusted_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Since when `current` has stood unchanged; a change of record (a renewal, a new holder)
    /// shows that some replica leads.
    fn observe(&self, current: Option<&Record>, now: DateTime<Utc>) -> Instant {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match (&*observed, current) {
            (Some((seen, since)), Some(r)) if seen == r => *since,
            (_, current) => {
                if current.is_some_and(|r| r.expires > now) {
                    self.leadership.saw_a_leader();
                }
                let since = Instant::now();
                *observed = current.map(|r| (r.clone(), since));
                since
            }
        }
    }

    /// `Ok(Ok(term))` when this replica holds the lease, `Ok(Err(holder))` when another does.
    async fn try_take(&self, me: &str, now: DateTime<Utc>) -> AwsResult<Result<u64, String>> {
        let current = self.store.read().await?;
        let unchanged_since = self.observe(current.as_ref(), now);
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or_default();
        let expires = now + ttl;
        // The furthest a replica keeping these rules can write: the lease time, plus the skew
        // its peers' clocks may have.
        let believable = expires + ttl / 3;
        let term = match &current {
            Some(r) if r.holder == me => r.term,
            Some(r) if r.expires > believable && unchanged_since.elapsed() >= self.ttl => {
                tracing::warn!(
                    holder = %r.holder,
                    expires = %r.expires,
                    "the lease item claims to run further ahead than any replica writes, and nobody has renewed it for a lease time: not trusted, taken over"
                );
                r.term + 1
            }
            Some(r) if r.expires > now => return Ok(Err(r.holder.clone())),
            Some(r) => r.term + 1,
            None => 1,
        };
        let new = Record {
            holder: me.to_string(),
            expires,
            term,
        };
        if self.store.swap(current.as_ref(), &new).await? {
            Ok(Ok(term))
        } else {
            let holder = self
                .store
                .read()
                .await?
                .map(|r| r.holder)
                .unwrap_or_default();
            Ok(Err(holder))
        }
    }

    /// The lease time.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Keeps the lease until `stop` says so, then gives it up (so that a standby takes over at
    /// once rather than after the lease time).
    pub async fn run(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = self.ttl / 4;
        loop {
            self.step().await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|v| *v) => break,
            }
        }
        self.release().await;
    }

    async fn release(&self) {
        let was_leader = self.leadership.is_leader();
        self.stop_trusting();
        if !was_leader {
            return;
        }
        let me = self.leadership.me.clone();
        if let Ok(Some(r)) = self.store.read().await {
            if r.holder == me {
                let expired = Record {
                    expires: self.clock.now() - chrono::Duration::seconds(1),
                    ..r.clone()
                };
                match self.store.swap(Some(&r), &expired).await {
                    Ok(_) => tracing::info!("lease given up"),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not give the lease up; it runs out by itself")
                    }
                }
            }
        }
    }
}

/// The lease in memory, for tests of replicas in one process (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
#[derive(Default)]
pub struct MemoryStore(Mutex<Option<Record>>);

#[cfg(any(test, feature = "test-util"))]
#[async_trait]
impl LeaseStore for MemoryStore {
    async fn read(&self) -> AwsResult<Option<Record>> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    async fn swap(&self, expected: Option<&Record>, new: &Record) -> AwsResult<bool> {
        let mut cur = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref() != expected {
            return Ok(false);
        }
        *cur = Some(new.clone());
        Ok(true)
    }
}

/// The lease as one item of a DynamoDB table whose partition key is the string `lease`.
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    name: String,
}

impl DynamoStore {
    /// The lease named `name` in `table`.
    pub fn new(config: &aws_config::SdkConfig, table: &str, name: &str) -> Self {
        DynamoStore {
            client: aws_sdk_dynamodb::Client::new(config),
            table: table.to_string(),
            name: name.to_string(),
        }
    }
}

fn field<'a>(
    item: &'a std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
    key: &str,
) -> Option<&'a str> {
    use aws_sdk_dynamodb::types::AttributeValue as V;
    match item.get(key)? {
        V::S(s) | V::N(s) => Some(s.as_str()),
        _ => None,
    }
}

#[async_trait]
impl LeaseStore for DynamoStore {
    async fn read(&self) -> AwsResult<Option<Record>> {
        use aws_sdk_dynamodb::types::AttributeValue as V;
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("lease", V::S(self.name.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| crate::aws::sdk::map_err("dynamodb:GetItem", &self.table, e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let bad = |what: &str| {
            AwsError::new(
                "dynamodb:GetItem",
                self.table.clone(),
                ErrorKind::Other,
                format!("the lease item has no usable {what}"),
            )
        };
        let holder = field(item, "holder").ok_or_else(|| bad("holder"))?;
        let expires_ms: i64 = field(item, "expires_ms")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("expires_ms"))?;
        let term: u64 = field(item, "term")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("term"))?;
        Ok(Some(Record {
            holder: holder.to_string(),
            expires: DateTime::from_timestamp_millis(expires_ms)
                .ok_or_else(|| bad("expires_ms"))?,
            term,
        }))
    }

    async fn swap(&self, expected: Option<&Record>, new: &Record) -> AwsResult<bool> {
        use aws_sdk_dynamodb::types::AttributeValue as V;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("lease", V::S(self.name.clone()))
            .item("holder", V::S(new.holder.clone()))
            .item(
                "expires_ms",
                V::N(new.expires.timestamp_millis().to_string()),
            )
            .item("term", V::N(new.term.to_string()));
        put = match expected {
            None => put.condition_expression("attribute_not_exists(lease)"),
            Some(r) => put
                .condition_expression("holder = :h AND term = :t AND expires_ms = :e")
                .expression_attribute_values(":h", V::S(r.holder.clone()))
                .expression_attribute_values(":t", V::N(r.term.to_string()))
                .expression_attribute_values(":e", V::N(r.expires.timestamp_millis().to_string())),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(crate::aws::sdk::map_err("dynamodb:PutItem", &self.table, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;

    fn keeper(store: &Arc<MemoryStore>, clock: &Arc<dyn Clock>, me: &str) -> Keeper {
        Keeper::new(
            store.clone(),
            clock.clone(),
            Duration::from_secs(30),
            me.to_string(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn one_leads_and_a_standby_takes_over_only_after_the_leader_stops_acting() {
        let store = Arc::new(MemoryStore::default());
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Utc::now()));
        let a = keeper(&store, &clock, "a");
        let b = keeper(&store, &clock, "b");
        assert_eq!(a.step().await, Role::Leader { term: 1 });
        assert_eq!(
            b.step().await,
            Role::Standby {
                leader: Some("a".into())
            }
        );
        let (la, lb) = (a.leadership(), b.leadership());
        // Both keep stepping every 7.5 s; a renews, b stands by.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(7500)).await;
            a.step().await;
            b.step().await;
            assert!(la.is_leader() && !lb.is_leader());
        }
        // a dies (stops renewing): watch each second who may act; never both.
        let died = Instant::now();
        let mut a_stopped = None;
        let mut b_started = None;
        for s in 1..=60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if s % 7 == 0 {
                b.step().await;
            }
            assert!(!(la.is_leader() && lb.is_leader()), "two leaders at {s} s");
            if !la.is_leader() && a_stopped.is_none() {
                a_stopped = Some(died.elapsed());
            }
            if lb.is_leader() && b_started.is_none() {
                b_started = Some(died.elapsed());
            }
        }
        let (stopped, started) = (
            a_stopped.expect("a stops"),
            b_started.expect("b takes over"),
        );
        assert!(stopped <= Duration::from_secs(20), "{stopped:?}");
        assert!(
            started >= stopped + Duration::from_secs(10),
            "{stopped:?} {started:?}"
        );
        assert!(started <= Duration::from_secs(30 + 8), "{started:?}");
        assert_eq!(b.leadership().role(), Role::Leader { term: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_leader_gives_the_lease_up_at_once() {
        let store = Arc::new(MemoryStore::default());
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Utc::now()));
        let a = keeper(&store, &clock, "a");
        let b = keeper(&store, &clock, "b");
        let la = a.leadership();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { a.run(rx).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(la.is_leader());
        let _ = tx.send(true);
        let _ = running.await;
        assert!(!la.is_leader());
        assert_eq!(b.step().await, Role::Leader { term: 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_that_claims_too_long_a_lease_is_not_trusted_once_nobody_renews_it() {
        let store = Arc::new(MemoryStore::default());
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Utc::now()));
        // One bad write: a lease that would run for a day, which nobody renews.
        let bogus = Record {
            holder: "ghost".into(),
            expires: clock.now() + chrono::Duration::days(1),
            term: 7,
        };
        assert!(store.swap(None, &bogus).await.expect("swap"));
        let b = keeper(&store, &clock, "b");
        let started = Instant::now();
        let mut took = None;
        for _ in 0..40 {
            if let Role::Leader { term } = b.step().await {
                took = Some((started.elapsed(), term));
                break;
            }
            tokio::time::sleep(Duration::from_millis(7500)).await;
        }
        let (after, term) = took.expect("b takes the lease over");
        assert!(
            after >= Duration::from_secs(30) && after <= Duration::from_secs(38),
            "after one lease time without a renewal: {after:?}"
        );
        assert_eq!(term, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_keeps_renewing_is_trusted_even_with_its_clock_ahead() {
        let store = Arc::new(MemoryStore::default());
        let now = Utc::now();
        let ahead: Arc<dyn Clock> =
            Arc::new(TokioClock::starting_at(now + chrono::Duration::minutes(5)));
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(now));
        let a = keeper(&store, &ahead, "a");
        let b = keeper(&store, &clock, "b");
        assert_eq!(a.step().await, Role::Leader { term: 1 });
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(7500)).await;
            a.step().await;
            assert_eq!(
                b.step().await,
                Role::Standby {
                    leader: Some("a".into())
                }
            );
            assert!(b.leadership().leaderless().is_none(), "a is seen leading");
        }
    }

    /// A store that cannot be reached.
    struct Unreachable;

    #[async_trait]
    impl LeaseStore for Unreachable {
        async fn read(&self) -> AwsResult<Option<Record>> {
            Err(AwsError::new(
                "dynamodb:GetItem",
                "lease",
                ErrorKind::Transient,
                "connection refused",
            ))
        }

        async fn swap(&self, _: Option<&Record>, _: &Record) -> AwsResult<bool> {
            self.read().await.map(|_| false)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_leading_for_two_lease_times_is_said() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Utc::now()));
        let k = Keeper::new(
            Arc::new(Unreachable),
            clock,
            Duration::from_secs(30),
            "a".into(),
        );
        let l = k.leadership();
        for _ in 0..7 {
            k.step().await;
            tokio::time::sleep(Duration::from_millis(7500)).await;
        }
        assert_eq!(l.leaderless(), None, "52.5 s: under two lease times");
        tokio::time::sleep(Duration::from_secs(8)).await;
        k.step().await;
        assert!(l.leaderless().is_some_and(|d| d >= Duration::from_secs(60)));
        assert_eq!(Leadership::sole().leaderless(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_race_is_a_standby() {
        let store = Arc::new(MemoryStore::default());
        let first = Record {
            holder: "x".into(),
            expires: Utc::now() + chrono::Duration::seconds(60),
            term: 1,
        };
        assert!(store.swap(None, &first).await.expect("swap"));
        assert!(
            !store.swap(None, &first).await.expect("swap"),
            "exists already"
        );
        let stale = Record {
            term: 0,
            ..first.clone()
        };
        assert!(!store.swap(Some(&stale), &first).await.expect("swap"));
        assert!(Leadership::sole().is_leader());
    }
}
