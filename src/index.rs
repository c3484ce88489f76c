//! The index: which services resolve which secrets.
//!
//! A scan lists clusters, pages through `ListServices`, describes services ten at a time with
//! their tags, and reads each task definition revision's secret references. Revisions are
//! immutable, so [`TaskDefCache`] describes each ARN once per process, however many services or
//! scans share it. [`resolve`] then reads the metadata (never the value) of every secret the
//! selected services reference, each through its source ([`crate::sources`]), and [`Target`]s
//! select services by exact secret identity.
//!
//! Only the scan can fail as a whole (listing clusters or services, describing services or task
//! definitions). Resolving never does: a lookup that fails makes exactly the references that need
//! it unresolved, with an [`Unresolved`] reason naming the call, the resource and what to grant,
//! and every other reference is resolved as usual. Which metadata to fetch at all is the rule's
//! call ([`crate::decide::needs_version_dates`], [`crate::decide::needs_label_history`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use crate::aws::{all_pages, AwsError, AwsResult, Clients, ErrorKind, Service, TaskDefinition};
use crate::decide::{RefState, ResolvedRef, Unresolved};
use crate::reference::{
    parse_at, parse_tag_value, Home, RefError, SecretIdentity, SecretRef, Site,
};
use crate::sources::{self, Cx, Lookup, States, Wanted, SOURCES};

/// Tag declaring extra references (space-separated) for secrets a task definition does not show.
pub(crate) const TAG_SECRETS: &str = "ecs-reloader/secrets";
/// `DescribeServices` takes at most this many services per call.
pub(crate) const DESCRIBE_SERVICES_BATCH: usize = 10;

/// Task definition revisions by ARN, each described at most once.
#[derive(Default)]
pub struct TaskDefCache {
    entries: Mutex<HashMap<String, Arc<OnceCell<Arc<TaskDefinition>>>>>,
    fetches: AtomicU64,
}

impl TaskDefCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The revision, described on first use. Concurrent callers for one ARN share one call; a
    /// failed call is not cached.
    pub async fn get(&self, clients: &Clients, arn: &str) -> AwsResult<Arc<TaskDefinition>> {
        let cell = {
            let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(arn.to_string()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            self.fetches.fetch_add(1, Ordering::Relaxed);
            clients
                .ecs
                .describe_task_definition(arn)
                .await
                .map(Arc::new)
        })
        .await
        .cloned()
    }

    /// The revision if it is already described.
    fn peek(&self, arn: &str) -> Option<Arc<TaskDefinition>> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(arn).and_then(|c| c.get().cloned())
    }

    /// Each container's image of a revision already described (none when it is not).
    pub(crate) fn images_of(&self, arn: &str) -> Vec<(String, String)> {
        self.peek(arn).map(|d| d.images.clone()).unwrap_or_default()
    }

    /// How many `DescribeTaskDefinition` calls this cache has made.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// How many revisions it holds.
    pub fn len(&self) -> usize {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|c| c.initialized()).count()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One reference as a service's task definition (or tag) writes it.
#[derive(Debug, Clone)]
pub struct Written {
    /// Where it sits.
    pub site: Site,
    /// The text as written.
    pub text: String,
    /// What it parses to.
    pub parsed: Result<SecretRef, RefError>,
}

/// A service with its parsed references.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The service as described.
    pub service: Service,
    /// Every reference: where, the text, and the parse result.
    pub refs: Vec<Written>,
    /// Why its task definition could not be read: then what it resolves is unknown, and so is
    /// its decision (one service's revision never fails the scan of the others).
    pub(crate) unreadable: Option<String>,
}

impl Entry {
    /// The deployment time new tasks are judged against.
    pub(crate) fn deployed_at(&self) -> Option<DateTime<Utc>> {
        self.service.primary().map(|d| d.created_at)
    }

    /// Whether one of its references names `target`.
    pub fn references(&self, target: &SecretIdentity, home_region: &str) -> bool {
        let home = self.home(home_region);
        self.refs.iter().any(|w| match &w.parsed {
            Ok(r) => ref_names(r, target, &home),
            Err(_) => false,
        })
    }

    /// Where its tasks resolve references without an account or region: its own account and
    /// region, from its ARN.
    pub fn home(&self, default_region: &str) -> Home {
        Home::of_arn(&self.service.arn, default_region)
    }
}

/// Whether a reference read at `home` names an identity: exact (partition, account, region and
/// name), by name or full ARN, never by prefix.
pub(crate) fn ref_names(r: &SecretRef, target: &SecretIdentity, home: &Home) -> bool {
    crate::sources::names(r, target, home)
}

/// What a scan covers.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Cluster names or ARNs; empty means every cluster of the region.
    pub clusters: Vec<String>,
}

/// The result of a scan.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Services that reference at least one secret.
    pub entries: Vec<Entry>,
    /// Services that reference none (not shown, only counted).
    pub without_secrets: usize,
    /// Clusters scanned.
    pub clusters: Vec<String>,
    /// ARNs of the services that reference none (for the watch cache: a service that stopped
    /// referencing secrets leaves it).
    pub(crate) plain: Vec<String>,
}

/// Scans the scope. `concurrency` bounds the calls in flight.
pub async fn scan(
    clients: &Clients,
    cache: &TaskDefCache,
    scope: &Scope,
    concurrency: usize,
) -> AwsResult<Inventory> {
    let concurrency = concurrency.max(1);
    let clusters = if scope.clusters.is_empty() {
        all_pages(|t| clients.ecs.list_clusters(t)).await?
    } else {
        scope.clusters.clone()
    };

    // Pipelined, because each call kind has its own token bucket: per cluster, its service
    // pages; per batch of ten, DescribeServices and at once the batch's revisions not yet cached.
    // The three kinds of call then drain their buckets side by side instead of one after another.
    // One semaphore bounds the calls in flight.
    let permits = tokio::sync::Semaphore::new(concurrency);
    let permits = &permits;
    let per_cluster: Vec<Vec<DescribedBatch>> = stream::iter(clusters.iter().cloned())
        .map(|c| async move {
            let arns = {
                let _p = permits.acquire().await.map_err(closed)?;
                all_pages(|t| clients.ecs.list_services(&c, t)).await?
            };
            let batches: Vec<Vec<String>> = arns
                .chunks(DESCRIBE_SERVICES_BATCH)
                .map(<[String]>::to_vec)
                .collect();
            stream::iter(batches)
                .map(|batch| describe_batch(clients, cache, permits, c.clone(), batch))
                .buffer_unordered(concurrency)
                .try_collect::<Vec<_>>()
                .await
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    Ok(inventory(
        cache,
        clusters,
        per_cluster.into_iter().flatten().collect(),
    ))
}

/// Describes named services (a change's candidates from the watch cache), ten at a time per
/// cluster, with the revisions not yet cached. Returns what it found as an inventory, and the
/// ARNs that were asked for and are gone (deleted, or `INACTIVE`).
pub(crate) async fn describe(
    clients: &Clients,
    cache: &TaskDefCache,
    by_cluster: &BTreeMap<String, Vec<String>>,
    concurrency: usize,
) -> AwsResult<(Inventory, Vec<String>)> {
    let concurrency = concurrency.max(1);
    let permits = tokio::sync::Semaphore::new(concurrency);
    let permits = &permits;
    let batches: Vec<(String, Vec<String>)> = by_cluster
        .iter()
        .flat_map(|(c, arns)| {
            arns.chunks(DESCRIBE_SERVICES_BATCH)
                .map(move |b| (c.clone(), b.to_vec()))
        })
        .collect();
    // A cluster deleted since the cache named it: its services are gone, and the rest of the
    // change goes on.
    let described: Vec<DescribedBatch> = stream::iter(batches)
        .map(|(c, batch)| async move {
            match describe_batch(clients, cache, permits, c, batch).await {
                Err(e) if e.kind == ErrorKind::NotFound => Ok(DescribedBatch {
                    services: Vec::new(),
                    failed: Vec::new(),
                }),
                other => other,
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let mut found: HashSet<String> = HashSet::new();
    let described: Vec<DescribedBatch> = described
        .into_iter()
        .map(|batch| {
            let services: Vec<Service> = batch
                .services
                .into_iter()
                .filter(|s| s.status != "INACTIVE")
                .collect();
            found.extend(services.iter().map(|s| s.arn.clone()));
            DescribedBatch {
                services,
                failed: batch.failed,
            }
        })
        .collect();
    let gone = by_cluster
        .values()
        .flatten()
        .filter(|a| !found.contains(*a))
        .cloned()
        .collect();
    Ok((
        inventory(cache, by_cluster.keys().cloned().collect(), described),
        gone,
    ))
}

/// One `DescribeServices` call and, at once, the batch's revisions not yet cached.
async fn describe_batch(
    clients: &Clients,
    cache: &TaskDefCache,
    permits: &tokio::sync::Semaphore,
    cluster: String,
    batch: Vec<String>,
) -> AwsResult<DescribedBatch> {
    let services = {
        let _p = permits.acquire().await.map_err(closed)?;
        clients.ecs.describe_services(&cluster, &batch).await?
    };
    // An `EXTERNAL` service without task sets names no revision: nothing of it runs.
    let revisions: HashSet<String> = services
        .iter()
        .map(revision_of)
        .filter(|r| !r.is_empty())
        .collect();
    let failed = futures::future::join_all(revisions.into_iter().map(|arn| async move {
        let _p = permits.acquire().await.map_err(closed)?;
        match cache.get(clients, &arn).await {
            Ok(_) => Ok(None),
            // Setup problems are the whole pass's, not one revision's.
            Err(e) if e.kind == ErrorKind::Setup => Err(e),
            Err(e) => {
                tracing::warn!(task_definition = %arn, error = %e, "could not read a task definition: its services are unknown");
                Ok(Some((arn, e.to_string())))
            }
        }
    }))
    .await
    .into_iter()
    .collect::<AwsResult<Vec<_>>>()?
    .into_iter()
    .flatten()
    .collect();
    Ok(DescribedBatch { services, failed })
}

/// Services with their revisions' references, in a stable order.
/// Services with their revisions' references (from the cache, which holds every revision a
/// batch named), in a stable order.
fn inventory(
    cache: &TaskDefCache,
    clusters: Vec<String>,
    described: Vec<DescribedBatch>,
) -> Inventory {
    let mut services: Vec<Service> =
        Vec::with_capacity(described.iter().map(|b| b.services.len()).sum());
    let mut failed: HashMap<String, String> = HashMap::new();
    for batch in described {
        services.extend(batch.services);
        failed.extend(batch.failed);
    }
    let mut defs: HashMap<String, Arc<TaskDefinition>> = HashMap::new();
    for s in &services {
        if let std::collections::hash_map::Entry::Vacant(v) = defs.entry(revision_of(s)) {
            if let Some(d) = cache.peek(v.key()) {
                v.insert(d);
            }
        }
    }
    services.sort_by(|a, b| (a.cluster_name(), &a.name).cmp(&(b.cluster_name(), &b.name)));

    let mut inv = Inventory {
        clusters,
        entries: Vec::with_capacity(services.len()),
        ..Default::default()
    };
    for service in services {
        let mut refs: Vec<Written> = Vec::with_capacity(
            defs.get(&revision_of(&service)).map_or(0, |d| d.refs.len())
                + usize::from(service.tags.contains_key(TAG_SECRETS)),
        );
        if let Some(def) = defs.get(&revision_of(&service)) {
            for raw in &def.refs {
                refs.push(Written {
                    site: raw.site.clone(),
                    text: raw.value.clone(),
                    parsed: parse_at(&raw.site, &raw.value),
                });
            }
        }
        if let Some(tag) = service.tags.get(TAG_SECRETS) {
            for (text, parsed) in parse_tag_value(tag) {
                refs.push(Written {
                    site: Site::ServiceTag,
                    text,
                    parsed,
                });
            }
        }
        let unreadable = failed.get(&revision_of(&service)).map(|e| {
            format!("its task definition could not be read, so what it resolves is unknown: {e}")
        });
        if refs.is_empty() && unreadable.is_none() {
            inv.without_secrets += 1;
            inv.plain.push(service.arn);
        } else {
            inv.entries.push(Entry {
                service,
                refs,
                unreadable,
            });
        }
    }
    inv
}

/// One `DescribeServices` batch (its revisions are in the cache by then, but for those that
/// could not be read: revision → why).
struct DescribedBatch {
    services: Vec<Service>,
    failed: Vec<(String, String)>,
}

/// The references a task definition revision writes, parsed as ECS reads each site (for tasks
/// outside services, which have no tag: see [`crate::tasks`]).
pub(crate) fn written_refs(def: &TaskDefinition) -> Vec<Written> {
    def.refs
        .iter()
        .map(|raw| Written {
            site: raw.site.clone(),
            text: raw.value.clone(),
            parsed: parse_at(&raw.site, &raw.value),
        })
        .collect()
}

fn closed(_: tokio::sync::AcquireError) -> AwsError {
    AwsError::new("scan", "-", ErrorKind::Other, "scan cancelled")
}

/// The revision new tasks of a service start from: the primary deployment's.
pub(crate) fn revision_of(s: &Service) -> String {
    s.primary()
        .map(|d| d.task_definition.clone())
        .unwrap_or_else(|| s.task_definition.clone())
}

/// A `--secret` argument or an event's secret, resolved to identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What the user or event said.
    pub given: String,
    /// What it names (a bare name may name a secret and a parameter).
    pub identities: Vec<SecretIdentity>,
    /// Label moves the events announced, for the staleness rule.
    pub label_moves: Vec<crate::event::LabelMove>,
    /// Who made the change, from its events (empty when no event named it).
    pub provenance: Vec<crate::event::Provenance>,
}

/// Why a target could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not parsable as a reference.
    #[error("{given:?} is not a secret name, ARN or parameter: {source}")]
    Parse {
        /// What was given.
        given: String,
        /// The parse error.
        source: RefError,
    },
    /// Nothing of that name exists.
    #[error("no Secrets Manager secret or SSM parameter named {0:?} in this region")]
    NotFound(String),
    /// AWS failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// Resolves what a user or an event named into exact identities, through `DescribeSecret` for
/// Secrets Manager (a name or partial ARN can only be matched exactly once resolved). A bare
/// name may be a secret and a parameter: one lookup failing does not hide what the other found.
pub(crate) async fn resolve_target(clients: &Clients, given: &str) -> Result<Target, TargetError> {
    let parsed = crate::reference::parse_declared(given).map_err(|source| TargetError::Parse {
        given: given.to_string(),
        source,
    })?;
    let home = Home::region(&clients.region);
    let mut identities = Vec::new();
    let mut failure: Option<AwsError> = None;
    // A concrete reference is its source's; a bare name may be any source's, each asked to
    // confirm it exists (one lookup failing does not hide what another found).
    let asked: Vec<(SecretRef, bool)> = match &parsed {
        SecretRef::Named(n) => SOURCES
            .iter()
            .filter_map(|s| s.named(n, &home))
            .map(|(_, concrete)| (concrete, true))
            .collect(),
        concrete => vec![(concrete.clone(), false)],
    };
    for (r, confirm) in &asked {
        for source in SOURCES {
            let Some(found) = source.identify(clients, r, &home, *confirm) else {
                continue;
            };
            match found.await {
                Ok(Some(id)) => identities.push(id),
                Ok(None) => {}
                Err(e) => failure = failure.or(Some(e)),
            }
        }
    }
    if identities.is_empty() {
        return Err(match failure {
            Some(e) => e.into(),
            None => TargetError::NotFound(given.to_string()),
        });
    }
    Ok(Target {
        given: given.to_string(),
        identities,
        label_moves: Vec::new(),
        provenance: Vec::new(),
    })
}

/// Reads the metadata behind every reference of `entries` and pairs each reference with it.
/// Returns, per entry (same order), its resolved references. It cannot fail: a lookup that fails
/// leaves exactly the references that need it unresolved, each with the reason.
pub async fn resolve(
    clients: &Clients,
    entries: &[Entry],
    concurrency: usize,
) -> Vec<Vec<ResolvedRef>> {
    let states = look_up(clients, entries, concurrency).await;
    entries
        .iter()
        .map(|e| pair_refs(e.refs.iter().cloned(), &states, &e.home(&clients.region)))
        .collect()
}

/// [`resolve`], moving each entry's written references into its resolved ones (the entries are
/// left without `refs`). A resync of ten thousand services otherwise holds every reference twice,
/// as written and as resolved, at the moment its memory peaks.
pub(crate) async fn resolve_taking(
    clients: &Clients,
    entries: &mut [Entry],
    concurrency: usize,
) -> Vec<Vec<ResolvedRef>> {
    let states = look_up(clients, entries, concurrency).await;
    entries
        .iter_mut()
        .map(|e| {
            let home = e.home(&clients.region);
            pair_refs(std::mem::take(&mut e.refs), &states, &home)
        })
        .collect()
}

/// The metadata behind every reference of `entries`, by lookup.
async fn look_up(clients: &Clients, entries: &[Entry], concurrency: usize) -> States {
    let concurrency = concurrency.max(1);
    // Display is relative to the operator's home: the account and region of the services it scans.
    let home = entries
        .first()
        .map(|e| e.home(&clients.region))
        .unwrap_or_else(|| Home::region(&clients.region));

    // Which lookups, and the oldest deployment depending on each: the rule says from that
    // whether version dates or label histories are needed at all.
    let mut wanted: BTreeMap<Lookup, (Option<DateTime<Utc>>, bool)> = BTreeMap::new();
    for e in entries {
        let d = e.deployed_at();
        let entry_home = e.home(&clients.region);
        for r in e.refs.iter().map(|w| &w.parsed) {
            let Ok(r) = r else { continue };
            for (key, is_label) in sources::lookups_of(r, &entry_home) {
                let slot = wanted.entry(key).or_insert((d, false));
                slot.0 = sources::oldest(slot.0, d);
                slot.1 |= is_label;
            }
        }
    }
    let wanted = wanted
        .into_iter()
        .map(|(key, (oldest, label))| Wanted { key, oldest, label })
        .collect();
    sources::look_up(
        Cx {
            clients,
            home: &home,
            concurrency,
        },
        wanted,
    )
    .await
}

fn pair_refs(
    refs: impl IntoIterator<Item = Written, IntoIter = impl ExactSizeIterator<Item = Written>>,
    states: &States,
    home: &Home,
) -> Vec<ResolvedRef> {
    let refs = refs.into_iter();
    let looked_up = |key: &Lookup, resource: &str| -> Result<Arc<RefState>, Unresolved> {
        states.get(key).cloned().unwrap_or_else(|| {
            Err(Unresolved::MissingMetadata {
                resource: resource.to_string(),
                what: "metadata (not looked up)",
            })
        })
    };
    // Sized exactly: a vector grown by `push` starts at four, and ten thousand services have one
    // or two references each.
    let mut out = Vec::with_capacity(refs.len());
    for Written { site, text, parsed } in refs {
        let resolved = |reference: Result<SecretRef, RefError>, state| ResolvedRef {
            site: site.clone(),
            text: text.clone(),
            reference,
            state,
        };
        let r = match parsed {
            Ok(r) => r,
            Err(err) => {
                out.push(resolved(
                    Err(err.clone()),
                    Err(Unresolved::Unparsable(err.clone())),
                ));
                continue;
            }
        };
        let SecretRef::Named(n) = &r else {
            // The common case: what was written moves into what is resolved.
            let state = match sources::of_ref(&r, home) {
                Some((key, _)) => looked_up(&key, &key.resource()),
                None => Err(Unresolved::MissingMetadata {
                    resource: text.clone(),
                    what: "a source for the reference",
                }),
            };
            out.push(ResolvedRef {
                site,
                text,
                reference: Ok(r),
                state,
            });
            continue;
        };
        // A tag name may be a secret, a parameter, or both; unresolved only if neither.
        let mut any = false;
        let mut failed = Vec::new();
        for (key, concrete) in SOURCES.iter().filter_map(|s| s.named(n, home)) {
            match looked_up(&key, n) {
                Ok(state) => {
                    any = true;
                    out.push(resolved(Ok(concrete), Ok(state)));
                }
                Err(e) => failed.push(e),
            }
        }
        if !any {
            // Neither exists, unless a lookup failed otherwise: then that failure is the
            // reason (a refusal may hide the one that exists).
            let reason = failed
                .into_iter()
                .find(|e| !matches!(e, Unresolved::NotFound { .. }))
                .unwrap_or_else(|| Unresolved::NeitherFound {
                    name: n.clone(),
                    region: home.region.clone(),
                });
            out.push(resolved(Ok(r.clone()), Err(reason)));
        }
    }
    out
}
