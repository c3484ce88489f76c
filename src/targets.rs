//! Targets: the accounts and regions one deployment manages, each with a reconciler of its own.
//!
//! A target is (account, region, credentials): its own clients (credentials from
//! `sts:AssumeRole` on the target's role, or the operator's own), its own guard (token buckets per
//! account and region, as ECS's and Secrets Manager's quotas are) and its own rollout engine. A
//! [`Fleet`] runs a pass over every target side by side and gathers them into one [`Pass`], so
//! that drivers do what they did with one reconciler. One target's failure (its role cannot be
//! assumed, its calls are refused, its scan fails) is recorded in [`Pass::targets`] and never
//! stops the others.
//!
//! **Routing a change.** An event names a secret by ARN or by name, and says in its envelope
//! which account and region it comes from ([`crate::event::Origin`]):
//!
//! - A Secrets Manager secret named by name (or an ARN the owner can complete) is first resolved
//!   to its full ARN by the target that owns the envelope's (or the ARN's) account and region:
//!   a name means a secret there, never a secret of the same name in another account. With no
//!   such target it cannot be told apart from other accounts' secrets of that name, and is
//!   dropped with a log line (the periodic resync still decides its dependants).
//! - The full ARN then goes to every target: services in any account or region may reference a
//!   shared secret by ARN. Each target decides its own services from fresh metadata, so a
//!   target without dependants rolls nothing.
//! - An SSM parameter goes to the targets of its account (all of them when the envelope names
//!   no account): ECS resolves another account's parameter only by ARN, and ecs-reloader does
//!   not read those ([`crate::decide::Unresolved::ForeignParameter`]).
//!
//! **Whose credentials read a secret's metadata.** The owner's, when the secret's account is a
//! target ([`RoutedSecrets`]): that needs no resource policy on the secret for the reading, and
//! the owner's quota is the one spent. Otherwise the referencing target's own credentials, which
//! AWS allows when the secret's resource policy does (and the secret's KMS key is not involved
//! in metadata reads).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::aws::guard::Stats;
use crate::aws::{AwsResult, Identity, Page, SecretMeta, SecretVersion, Secrets};
use crate::clock::Clock;
use crate::event::{Changes, Origin, Subject};
use crate::index::TargetError;
use crate::reconcile::{Pass, ReconcileError, Reconciler, Request, Selection};
use crate::sources::{self, Routing};

/// A pass over a reconciler or a fleet: what the drivers run.
pub trait Passes: Send + Sync {
    /// Runs one pass.
    fn run_pass<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Pass, ReconcileError>>;
}

impl Passes for Reconciler {
    fn run_pass<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Pass, ReconcileError>> {
        Box::pin(self.pass(req))
    }
}

impl Passes for Fleet {
    fn run_pass<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Pass, ReconcileError>> {
        Box::pin(self.pass(req))
    }
}

pub use crate::reconcile::TargetStatus;

/// One target's reconciler.
pub struct Member {
    /// The account (empty when the target uses the operator's own credentials).
    pub account: String,
    /// The region.
    pub region: String,
    /// The role assumed in the account, if any.
    pub role_arn: Option<String>,
    /// Its reconciler (own clients, guard and rollout engine).
    pub reconciler: Reconciler,
}

impl Member {
    fn status(&self, problem: Option<String>, pass: Option<&Pass>) -> TargetStatus {
        // A target on the operator's own credentials learns its account from its services, or
        // knows it from `sts:GetCallerIdentity`.
        let account = if self.account.is_empty() {
            pass.and_then(|p| p.assessment.services.first())
                .map(|a| a.key.account.clone())
                .or_else(|| self.reconciler.account())
                .unwrap_or_default()
        } else {
            self.account.clone()
        };
        TargetStatus {
            account,
            region: self.region.clone(),
            role_arn: self.role_arn.clone(),
            problem,
        }
    }

    fn owns(&self, account: Option<&str>, region: Option<&str>) -> bool {
        // A target on the operator's own credentials knows its account from
        // `sts:GetCallerIdentity` (or once it has seen one of its services); until then it may
        // own anything.
        let own = if self.account.is_empty() {
            self.reconciler.account().unwrap_or_default()
        } else {
            self.account.clone()
        };
        owns(&own, &self.region, account, region)
    }
}

/// Whether a target of `target_account` (empty: unknown) in `target_region` may own something
/// of `account` in `region` (an unknown side counts as a match: nothing says otherwise).
fn owns(
    target_account: &str,
    target_region: &str,
    account: Option<&str>,
    region: Option<&str>,
) -> bool {
    let account_ok = match account {
        Some(a) => target_account.is_empty() || target_account == a,
        None => true,
    };
    account_ok && region.is_none_or(|r| r == target_region)
}

/// Every target's reconciler.
pub struct Fleet {
    members: Vec<Member>,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
    /// When a target could not be worked on, the pass says to look again after this.
    retry_after: Duration,
    /// Who the operator's own credentials are.
    identity: Option<Arc<dyn Identity>>,
    /// The operator's own account, asked once.
    own: tokio::sync::OnceCell<String>,
}

/// The accounts whose events count: the operator's own and every target's. An event is
/// evidence about its own account only, so one from any other account (an organisation's bus
/// lets every member account in) rolls nothing and dates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// The operator's own account: an event that names no account is about it.
    pub own: String,
    /// Every account managed, the own one included.
    pub accounts: BTreeSet<String>,
}

impl Fleet {
    /// One reconciler alone (the operator's own account and region): its passes are exactly
    /// its own.
    pub fn single(reconciler: Reconciler, stats: Arc<Stats>) -> Fleet {
        let region = reconciler.clients().region.clone();
        let clock = reconciler.clock().clone();
        let identity = reconciler.clients().identity.clone();
        Fleet {
            members: vec![Member {
                account: String::new(),
                region,
                role_arn: None,
                reconciler,
            }],
            clock,
            stats,
            retry_after: Duration::from_secs(60),
            identity: Some(identity),
            own: tokio::sync::OnceCell::new(),
        }
    }

    /// Several targets; `stats` counts all their calls. The operator's own identity is that of
    /// the first target on its own credentials, if any ([`Fleet::with_identity`] names it).
    pub fn new(members: Vec<Member>, clock: Arc<dyn Clock>, stats: Arc<Stats>) -> Fleet {
        for m in members.iter().filter(|m| !m.account.is_empty()) {
            m.reconciler.know_account(&m.account);
        }
        let identity = members
            .iter()
            .find(|m| m.role_arn.is_none() && m.account.is_empty())
            .map(|m| m.reconciler.clients().identity.clone());
        Fleet {
            members,
            clock,
            stats,
            retry_after: Duration::from_secs(60),
            identity,
            own: tokio::sync::OnceCell::new(),
        }
    }

    /// Whose credentials the operator runs with (its own account's events count).
    pub fn with_identity(mut self, identity: Arc<dyn Identity>) -> Fleet {
        self.identity = Some(identity);
        self
    }

    /// The operator's own account: asked once (`sts:GetCallerIdentity`), then remembered. Every
    /// target on the operator's own credentials is in it.
    pub async fn own_account(&self) -> AwsResult<String> {
        let identity = self.identity.clone().ok_or_else(|| {
            crate::aws::AwsError::new(
                "sts:GetCallerIdentity",
                "-",
                crate::aws::ErrorKind::Setup,
                "no credentials of the operator's own to ask",
            )
        })?;
        let own = self
            .own
            .get_or_try_init(|| async move { identity.account().await })
            .await?;
        for m in self.members.iter().filter(|m| m.account.is_empty()) {
            m.reconciler.know_account(own);
        }
        Ok(own.clone())
    }

    /// The accounts whose events count ([`Managed`]).
    pub async fn managed(&self) -> AwsResult<Managed> {
        let own = self.own_account().await?;
        let mut accounts: BTreeSet<String> = self
            .members
            .iter()
            .filter(|m| !m.account.is_empty())
            .map(|m| m.account.clone())
            .collect();
        accounts.insert(own.clone());
        Ok(Managed { own, accounts })
    }

    /// The targets.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Every target's API call counters, added up.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Runs one pass over every target, side by side. With one target, its pass as it is (an
    /// error included); with several, one target's error is recorded in [`Pass::targets`] and
    /// the others' passes are gathered.
    pub async fn pass(&self, req: &Request) -> Result<Pass, ReconcileError> {
        // The operator's own account and region alone: its pass is exactly the reconciler's
        // (its errors included), over the changes routed to it: a name means a secret or a
        // parameter of the account and region its event names, here as with many targets. A
        // single assumed role is still a target, reported as one when it fails.
        if let [only] = self.members.as_slice() {
            if only.role_arn.is_none() {
                return match self.route(req).await.pop().flatten() {
                    Some(routed) => only.reconciler.pass(&routed).await,
                    None => Ok(empty_pass(self.clock.now())),
                };
            }
        }
        let requests = self.route(req).await;
        let runs = self.members.iter().zip(requests).map(|(m, r)| async move {
            match r {
                Some(r) => Some(m.reconciler.pass(&r).await),
                None => None,
            }
        });
        let results = futures::future::join_all(runs).await;
        self.gather(req, results)
    }

    fn gather(
        &self,
        req: &Request,
        results: Vec<Option<Result<Pass, ReconcileError>>>,
    ) -> Result<Pass, ReconcileError> {
        let mut merged: Option<Pass> = None;
        let mut statuses = Vec::new();
        // Errors that only say "not here" (a named service or secret in another target).
        let mut not_here: Option<ReconcileError> = None;
        let mut ran = 0;
        for (m, result) in self.members.iter().zip(results) {
            let pass = match result {
                None => {
                    statuses.push(m.status(None, None));
                    continue;
                }
                Some(Ok(p)) => p,
                Some(Err(e)) if named_elsewhere(&e, req) => {
                    statuses.push(m.status(None, None));
                    not_here.get_or_insert(e);
                    continue;
                }
                Some(Err(e)) => {
                    let problem = crate::aws::sdk::causes(&e);
                    tracing::error!(target = %m.status(None, None), error = %problem, "target failed; the others go on");
                    statuses.push(m.status(Some(problem), None));
                    continue;
                }
            };
            ran += 1;
            statuses.push(m.status(None, Some(&pass)));
            merged = Some(match merged {
                None => pass,
                Some(acc) => merge(acc, pass),
            });
        }
        if ran == 0 {
            if let Some(e) = not_here {
                if statuses.iter().all(|s| s.problem.is_none()) {
                    return Err(e);
                }
            }
        }
        let mut pass = merged.unwrap_or_else(|| empty_pass(self.clock.now()));
        if statuses.iter().any(|s| s.problem.is_some()) {
            pass.target_retry = Some(self.retry_after);
        }
        pass.targets = statuses;
        Ok(pass)
    }

    /// Each target's request: the same, except for changes, which are routed (see the module's
    /// docs). `None`: nothing for that target.
    async fn route(&self, req: &Request) -> Vec<Option<Request>> {
        let Selection::Changes(changes) = &req.selection else {
            return self.members.iter().map(|_| Some(req.clone())).collect();
        };
        if changes.resync {
            return self.members.iter().map(|_| Some(req.clone())).collect();
        }
        // Knowing the operator's own account places the targets on its credentials; without it
        // they may own anything (the intake has already refused other accounts' events).
        if let Err(e) = self.own_account().await {
            tracing::warn!(error = %e, "the operator's own account is unknown: routing by the targets' services");
        }
        let mut per_member: Vec<Changes> =
            self.members.iter().map(|_| Changes::default()).collect();
        for (subject, moves) in &changes.subjects {
            let origins: Vec<Origin> = changes
                .origins
                .get(subject)
                .map(|o| o.iter().cloned().collect())
                .unwrap_or_else(|| vec![Origin::default()]);
            let provenance = changes
                .provenance
                .get(subject)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let add = |c: &mut Changes, s: Subject| {
                c.subjects
                    .entry(s.clone())
                    .or_default()
                    .extend(moves.iter().cloned());
                c.note(&s, provenance);
                c.origins
                    .entry(s)
                    .or_default()
                    .extend(origins.iter().cloned());
            };
            match sources::routing(subject) {
                Routing::Owner => {
                    let id = subject.given();
                    let pinned = self.pin_secret(&id, &origins).await;
                    // A name the envelope does not place in one account (no `account`) may have
                    // resolved to several accounts' secrets: their dependants are decided on
                    // metadata alone, without the event's label moves, which belong to one.
                    let accounts: BTreeSet<Option<(String, String)>> =
                        pinned.iter().map(|p| arn_place(p)).collect();
                    let moves = if accounts.len() > 1 {
                        &[][..]
                    } else {
                        &moves[..]
                    };
                    for p in pinned {
                        for c in per_member.iter_mut() {
                            let s = subject.pinned(p.clone());
                            c.subjects
                                .entry(s.clone())
                                .or_default()
                                .extend(moves.iter().cloned());
                            c.note(&s, provenance);
                            c.origins
                                .entry(s)
                                .or_default()
                                .extend(origins.iter().cloned());
                        }
                    }
                }
                // Any target's services may name any bucket (another account's included), and each
                // lists it with its own credentials: every target looks at its dependants. Who
                // wrote the object is told only to the targets of the bucket owner's account.
                Routing::Everyone => {
                    for (m, c) in self.members.iter().zip(per_member.iter_mut()) {
                        add(c, subject.clone());
                        if let Some(kept) = c.provenance.get_mut(subject) {
                            kept.retain(|p| m.owns(p.account.as_deref(), None));
                        }
                    }
                }
                Routing::OriginAccount => {
                    for (m, c) in self.members.iter().zip(per_member.iter_mut()) {
                        if origins.iter().any(|o| m.owns(o.account.as_deref(), None)) {
                            add(c, subject.clone());
                            // A name means a parameter of each account: only this member's
                            // account's actors made its change.
                            if let Some(kept) = c.provenance.get_mut(subject) {
                                kept.retain(|p| m.owns(p.account.as_deref(), None));
                            }
                        }
                    }
                }
            }
        }
        // ECS's events refresh the watch cache of the target whose account and region the
        // service lives in.
        for h in &changes.services {
            let place = arn_place(&h.service);
            for (m, c) in self.members.iter().zip(per_member.iter_mut()) {
                let owns = match &place {
                    Some((account, region)) => m.owns(Some(account), Some(region)),
                    None => true,
                };
                if owns {
                    c.services.insert(h.clone());
                }
            }
        }
        per_member
            .into_iter()
            .map(|c| {
                (!c.subjects.is_empty() || !c.services.is_empty()).then(|| Request {
                    selection: Selection::Changes(c),
                    ..req.clone()
                })
            })
            .collect()
    }

    /// The full ARNs a changed secret's id stands for, resolved by the target(s) owning the
    /// account and region it was changed in.
    async fn pin_secret(&self, id: &str, origins: &[Origin]) -> BTreeSet<String> {
        let arn = arn_place(id);
        let mut out = BTreeSet::new();
        let owners: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| match &arn {
                Some((account, region)) => m.owns(Some(account), Some(region)),
                None => origins
                    .iter()
                    .any(|o| m.owns(o.account.as_deref(), o.region.as_deref())),
            })
            .collect();
        for owner in &owners {
            match crate::index::resolve_target(owner.reconciler.clients(), id).await {
                Ok(t) => out.extend(t.identities.iter().filter_map(sources::pin)),
                Err(TargetError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(secret = %id, target = %owner.status(None, None), error = %e, "could not resolve a changed secret in its own account")
                }
            }
        }
        if out.is_empty() {
            match arn {
                // Every target tries the ARN itself.
                Some(_) => {
                    out.insert(id.to_string());
                }
                None => {
                    tracing::info!(secret = %id, ?origins, "a changed secret named by name, and no target in its account and region found it: not routed (the resync decides its dependants)")
                }
            }
        }
        out
    }
}

/// Whether `e` only says that what the request named is not in this target.
fn named_elsewhere(e: &ReconcileError, req: &Request) -> bool {
    match e {
        ReconcileError::NoSuchService(_) => true,
        ReconcileError::Target(TargetError::NotFound(_)) => {
            matches!(req.selection, Selection::Secrets(_))
        }
        _ => false,
    }
}

/// The account and region of an ARN with both.
fn arn_place(id: &str) -> Option<(String, String)> {
    let arn = crate::reference::Arn::parse(id)?;
    Some((arn.account()?.to_string(), arn.region()?.to_string()))
}

fn empty_pass(at: chrono::DateTime<chrono::Utc>) -> Pass {
    Pass {
        assessment: crate::reconcile::Assessment {
            at,
            services: Vec::new(),
            without_secrets: 0,
            change_set: crate::plan::ChangeSet::default(),
            standalone_tasks: Vec::new(),
            scheduled_tasks: Vec::new(),
        },
        outcomes: Vec::new(),
        cut_short: false,
        requeue_after: None,
        targets: Vec::new(),
        target_retry: None,
        unread: Vec::new(),
    }
}

/// Two targets' passes as one.
fn merge(mut a: Pass, b: Pass) -> Pass {
    a.assessment.at = a.assessment.at.max(b.assessment.at);
    a.assessment.services.extend(b.assessment.services);
    a.assessment.without_secrets += b.assessment.without_secrets;
    a.assessment
        .standalone_tasks
        .extend(b.assessment.standalone_tasks);
    a.assessment
        .scheduled_tasks
        .extend(b.assessment.scheduled_tasks);
    a.assessment
        .change_set
        .changes
        .extend(b.assessment.change_set.changes);
    a.outcomes.extend(b.outcomes);
    a.cut_short |= b.cut_short;
    a.requeue_after = match (a.requeue_after, b.requeue_after) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    a.unread.extend(b.unread);
    a.target_retry = match (a.target_retry, b.target_retry) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    a
}

/// Secrets Manager, reading a secret of another target's account with that target's clients.
pub struct RoutedSecrets {
    own: Arc<dyn Secrets>,
    by_account: HashMap<String, Arc<dyn Secrets>>,
}

impl RoutedSecrets {
    /// `own` for everything but ARNs of the accounts in `by_account`.
    pub fn new(own: Arc<dyn Secrets>, by_account: HashMap<String, Arc<dyn Secrets>>) -> Self {
        RoutedSecrets { own, by_account }
    }

    fn pick(&self, id: &str) -> &Arc<dyn Secrets> {
        arn_place(id)
            .and_then(|(account, _)| self.by_account.get(&account))
            .unwrap_or(&self.own)
    }
}

#[async_trait]
impl Secrets for RoutedSecrets {
    async fn describe_secret(&self, region: &str, id: &str) -> AwsResult<SecretMeta> {
        self.pick(id).describe_secret(region, id).await
    }

    async fn list_secret_versions(
        &self,
        region: &str,
        arn: &str,
        next: Option<String>,
    ) -> AwsResult<Page<SecretVersion>> {
        self.pick(arn).list_secret_versions(region, arn, next).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arn_places() {
        assert_eq!(
            arn_place("arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/db-AbCdEf"),
            Some(("111122223333".into(), "eu-west-1".into()))
        );
        assert_eq!(arn_place("app/db"), None);
        assert_eq!(arn_place("arn:aws:iam::111122223333:role/x"), None);
    }

    #[test]
    fn a_target_owns_its_account_and_region_and_unknowns() {
        let (a, r) = ("111122223333", "eu-west-1");
        assert!(owns(a, r, Some(a), Some(r)));
        assert!(owns(a, r, None, Some(r)));
        assert!(owns(a, r, Some(a), None));
        assert!(!owns(a, r, Some("444455556666"), Some(r)));
        assert!(!owns(a, r, Some(a), Some("us-east-1")));
        assert!(
            owns("", r, Some("444455556666"), Some(r)),
            "own credentials: account unknown"
        );
    }
}
