//! The index: which services resolve which secrets.
//!
//! A scan lists clusters, pages through `ListServices`, describes services ten at a time with
//! their tags, and reads each task definition revision's secret references. Revisions are
//! immutable, so [`TaskDefCache`] describes each ARN once per process, however many services or
//! scans share it. [`resolve`] then reads the metadata (never the value) of every secret the
//! selected services reference, and [`Target`]s select services by exact secret identity.
//!
//! Only the scan can fail as a whole (listing clusters or services, describing services or task
//! definitions). Resolving never does: a lookup that fails makes exactly the references that need
//! it unresolved, with an [`Unresolved`] reason naming the call, the resource and what to grant,
//! and every other reference is resolved as usual. Which metadata to fetch at all is the rule's
//! call ([`needs_version_dates`], [`needs_label_history`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use crate::aws::{
    all_pages, AwsError, AwsResult, Clients, ErrorKind, ParameterMeta, Service, TaskDefinition,
};
use crate::decide::{
    needs_label_history, needs_version_dates, Fetched, RefState, ResolvedRef, SmState, SsmState,
    Unresolved,
};
use crate::reference::S3ObjectId;
use crate::reference::{
    canonical_param_name, parse_at, parse_tag_value, Home, ParamSelector, ParameterId, RefError,
    SecretIdentity, SecretRef, SecretsManagerId, Site, SmRef, SsmRef,
};

/// Tag declaring extra references (space-separated) for secrets a task definition does not show.
pub(crate) const TAG_SECRETS: &str = "ecs-reloader/secrets";
/// `DescribeServices` takes at most this many services per call.
pub(crate) const DESCRIBE_SERVICES_BATCH: usize = 10;
/// `DescribeParameters`' name filter takes at most this many values.
const DESCRIBE_PARAMETERS_BATCH: usize = 50;

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
    match (r, target) {
        (SecretRef::SecretsManager(sm), SecretIdentity::SecretsManager(id)) => {
            sm.names_from(id, home)
        }
        (SecretRef::Parameter(p), SecretIdentity::Parameter(id)) => {
            p.region.as_deref().unwrap_or(&home.region) == id.region
                && home.foreign_account(p.account.as_deref()) == id.account
                && p.name == id.name
        }
        (SecretRef::Named(n), SecretIdentity::SecretsManager(id)) => {
            id.region == home.region && home.owns(id.account.as_deref()) && *n == id.name
        }
        (SecretRef::Named(n), SecretIdentity::Parameter(id)) => {
            id.region == home.region && id.account.is_none() && canonical_param_name(n) == id.name
        }
        (SecretRef::S3File(o), SecretIdentity::S3Object(id)) => o == id,
        _ => false,
    }
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
    match &parsed {
        SecretRef::SecretsManager(sm) => {
            let region = sm.region.as_deref().unwrap_or(&home.region);
            match clients
                .secrets
                .describe_secret(region, &sm.lookup_id())
                .await
            {
                Ok(meta) => identities.push(sm_identity(&meta.arn, &meta.name, &home)?),
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => failure = Some(e),
            }
        }
        // Identified by its ARN alone: nothing to look up.
        SecretRef::S3File(o) => identities.push(SecretIdentity::S3Object(o.clone())),
        SecretRef::Parameter(p) => identities.push(SecretIdentity::Parameter(ParameterId::new(
            p.region.as_deref().unwrap_or(&home.region),
            p.account.as_deref(),
            &p.name,
            &home,
        ))),
        SecretRef::Named(n) => {
            match clients.secrets.describe_secret(&home.region, n).await {
                Ok(meta) => identities.push(sm_identity(&meta.arn, &meta.name, &home)?),
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => failure = Some(e),
            }
            let name = canonical_param_name(n);
            match clients
                .parameters
                .describe_parameters(&home.region, std::slice::from_ref(&name))
                .await
            {
                Ok(found) if found.iter().any(|p| p.name == name) => identities.push(
                    SecretIdentity::Parameter(ParameterId::new(&home.region, None, &name, &home)),
                ),
                Ok(_) => {}
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

fn sm_identity(arn: &str, name: &str, home: &Home) -> AwsResult<SecretIdentity> {
    SecretsManagerId::new(arn, name)
        .map(|id| SecretIdentity::SecretsManager(id.seen_from(home)))
        .map_err(|e| {
            AwsError::new(
                "secretsmanager:DescribeSecret",
                arn,
                ErrorKind::Other,
                e.to_string(),
            )
        })
}

/// A lookup key: which call answers for a reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Lookup {
    /// `DescribeSecret` in `region` by name or ARN (another account's ARN included: the
    /// operator's credentials may read it if the secret's resource policy allows).
    Secret { region: String, id: String },
    /// A parameter of the operator's account (`account` is `None`) or of another (not read).
    Parameter {
        region: String,
        account: Option<String>,
        name: String,
    },
    /// `ListObjectsV2` of an environment file's bucket, with the key as prefix.
    Object(S3ObjectId),
}

type States = HashMap<Lookup, Result<Arc<RefState>, Unresolved>>;

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
    let mut oldest: BTreeMap<Lookup, Option<DateTime<Utc>>> = BTreeMap::new();
    let mut label_refs: HashSet<Lookup> = HashSet::new();
    for e in entries {
        let d = e.deployed_at();
        let entry_home = e.home(&clients.region);
        for r in e.refs.iter().map(|w| &w.parsed) {
            let Ok(r) = r else { continue };
            for (key, is_label) in lookups_of(r, &entry_home) {
                let slot = oldest.entry(key.clone()).or_insert(d);
                *slot = match (*slot, d) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if is_label {
                    label_refs.insert(key);
                }
            }
        }
    }

    let secret_keys: Vec<(Lookup, String, String, Option<DateTime<Utc>>)> = oldest
        .iter()
        .filter_map(|(k, d)| match k {
            Lookup::Secret { region, id } => Some((k.clone(), region.clone(), id.clone(), *d)),
            Lookup::Parameter { .. } | Lookup::Object(_) => None,
        })
        .collect();
    let home_ref = &home;
    let mut states: States = stream::iter(secret_keys)
        .map(|(key, region, id, oldest)| async move {
            let state = secret_state(clients, &region, &id, oldest, home_ref).await;
            (key, state.map(Arc::new))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let objects: Vec<S3ObjectId> = oldest
        .keys()
        .filter_map(|k| match k {
            Lookup::Object(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    let object_states: Vec<(Lookup, Result<Arc<RefState>, Unresolved>)> = stream::iter(objects)
        .map(|id| async move {
            let state = crate::sources::s3::object_state(clients, &id).await;
            (Lookup::Object(id), state.map(Arc::new))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    states.extend(object_states);

    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in oldest.keys() {
        match key {
            Lookup::Parameter {
                region,
                account: None,
                name,
            } => by_region
                .entry(region.clone())
                .or_default()
                .push(name.clone()),
            Lookup::Parameter {
                region,
                account: Some(account),
                name,
            } => {
                states.insert(
                    key.clone(),
                    Err(Unresolved::ForeignParameter {
                        name: name.clone(),
                        account: account.clone(),
                        region: region.clone(),
                    }),
                );
            }
            Lookup::Secret { .. } | Lookup::Object(_) => {}
        }
    }
    for (region, names) in by_region {
        for batch in names.chunks(DESCRIBE_PARAMETERS_BATCH) {
            for (name, found) in describe_parameters(clients, &region, batch, &home).await {
                let key = Lookup::Parameter {
                    region: region.clone(),
                    account: None,
                    name: name.clone(),
                };
                let state = match found {
                    Ok(Some(p)) => {
                        let wanted = label_refs.contains(&key)
                            && needs_label_history(
                                p.last_modified,
                                oldest.get(&key).copied().flatten(),
                            );
                        let history = if wanted {
                            match clients.parameters.parameter_history(&region, &name).await {
                                Ok(h) => Fetched::Done(h),
                                Err(e) => {
                                    Fetched::Failed(unresolved(&e, &name, &region, &home, None))
                                }
                            }
                        } else {
                            Fetched::Skipped
                        };
                        Ok(RefState::Parameter(SsmState {
                            id: ParameterId::new(&region, None, &name, &home),
                            last_modified: p.last_modified,
                            version: p.version,
                            history,
                            label_moves: BTreeMap::new(),
                        }))
                    }
                    Ok(None) => Err(Unresolved::NotFound {
                        call: "ssm:DescribeParameters",
                        resource: format!("parameter {name}"),
                        region: region.clone(),
                    }),
                    Err(e) => Err(e),
                };
                states.insert(key, state.map(Arc::new));
            }
        }
    }

    states
}

/// `DescribeParameters` for a batch of names, each name with what was found for it. A failed
/// batch is retried name by name (unless the failure is throttling or an unreachable endpoint,
/// which would fail the same way), so that one name that the call refuses does not take the
/// other forty-nine with it.
async fn describe_parameters(
    clients: &Clients,
    region: &str,
    batch: &[String],
    home: &Home,
) -> Vec<(String, Result<Option<ParameterMeta>, Unresolved>)> {
    let pick = |found: &[ParameterMeta], name: &str| found.iter().find(|p| p.name == name).cloned();
    match clients.parameters.describe_parameters(region, batch).await {
        Ok(found) => batch
            .iter()
            .map(|n| (n.clone(), Ok(pick(&found, n))))
            .collect(),
        Err(e) if batch.len() > 1 && !e.is_retryable() => {
            let mut out = Vec::with_capacity(batch.len());
            for n in batch {
                let one = clients
                    .parameters
                    .describe_parameters(region, std::slice::from_ref(n))
                    .await
                    .map(|found| pick(&found, n))
                    .map_err(|e| unresolved(&e, n, region, home, None));
                out.push((n.clone(), one));
            }
            out
        }
        Err(e) => batch
            .iter()
            .map(|n| (n.clone(), Err(unresolved(&e, n, region, home, None))))
            .collect(),
    }
}

/// The lookups a reference needs (read at `home`), and whether each is for a label reference.
fn lookups_of(r: &SecretRef, home: &Home) -> Vec<(Lookup, bool)> {
    match r {
        SecretRef::SecretsManager(sm) => vec![(sm_lookup(sm, home), false)],
        SecretRef::Parameter(p) => {
            vec![(
                ssm_lookup(p, home),
                matches!(p.selector, ParamSelector::Label(_)),
            )]
        }
        SecretRef::Named(n) => vec![
            (named_secret(n, home), false),
            (named_parameter(n, home), false),
        ],
        SecretRef::S3File(o) => vec![(Lookup::Object(o.clone()), false)],
    }
}

fn sm_lookup(sm: &SmRef, home: &Home) -> Lookup {
    Lookup::Secret {
        region: sm.region.clone().unwrap_or_else(|| home.region.clone()),
        id: sm.lookup_id(),
    }
}

fn ssm_lookup(p: &SsmRef, home: &Home) -> Lookup {
    Lookup::Parameter {
        region: p.region.clone().unwrap_or_else(|| home.region.clone()),
        account: home.foreign_account(p.account.as_deref()),
        name: p.name.clone(),
    }
}

fn named_secret(n: &str, home: &Home) -> Lookup {
    Lookup::Secret {
        region: home.region.clone(),
        id: n.to_string(),
    }
}

fn named_parameter(n: &str, home: &Home) -> Lookup {
    Lookup::Parameter {
        region: home.region.clone(),
        account: None,
        name: canonical_param_name(n),
    }
}

use crate::reference::arn_account;

/// What a failed call means for the references that needed it: the call, the resource, and what
/// to grant or fix. `owner` is the account the resource belongs to, when the reference says.
fn unresolved(
    e: &AwsError,
    resource: &str,
    region: &str,
    home: &Home,
    owner: Option<&str>,
) -> Unresolved {
    let call = e.operation;
    let resource = resource.to_string();
    let message = e.message.clone();
    let elsewhere = region != home.region;
    let kms = message.contains("KMS") || message.contains("kms:");
    let bad_token = [
        "security token",
        "UnrecognizedClient",
        "InvalidClientTokenId",
    ]
    .iter()
    .any(|m| message.contains(m));
    match e.kind {
        ErrorKind::NotFound => Unresolved::NotFound {
            call,
            resource,
            region: region.to_string(),
        },
        ErrorKind::AccessDenied if bad_token && elsewhere => Unresolved::Region {
            call,
            resource,
            region: region.to_string(),
            message: format!("the operator's credentials were refused ({message})"),
            fix: "the region is probably not enabled for this account (an opt-in region): enable it, or fix the region in the reference".into(),
        },
        _ if kms => Unresolved::Kms {
            call,
            resource,
            message,
        },
        ErrorKind::AccessDenied => {
            let foreign = home.foreign_account(owner);
            let fix = match (call, foreign) {
                (c, Some(account)) if c.starts_with("secretsmanager:") => format!(
                    "the secret belongs to account {account}: its resource policy must allow the operator's role secretsmanager:DescribeSecret and secretsmanager:ListSecretVersionIds, and so must the operator's IAM policy; the KMS key policy is not involved in these metadata reads (only the tasks' execution role needs kms:Decrypt on the secret's key)"
                ),
                (c, None) if c.starts_with("secretsmanager:") => format!(
                    "allow {c} on this secret in the operator's IAM policy; if it already does, an explicit deny in an SCP, a permissions boundary or the secret's resource policy refuses it"
                ),
                ("ssm:DescribeParameters", _) => "allow ssm:DescribeParameters (it takes Resource \"*\") in the operator's IAM policy; if it already does, an SCP or a permissions boundary denies it".into(),
                ("ssm:GetParameterHistory", _) => format!(
                    "allow ssm:GetParameterHistory on arn:{}:ssm:{region}:{}:parameter{} in the operator's IAM policy (needed only for name:label references; never kms:Decrypt); if it already does, an SCP or a permissions boundary denies it",
                    home.partition,
                    home.account.as_deref().unwrap_or("<account>"),
                    if resource.starts_with('/') { resource.clone() } else { format!("/{resource}") },
                ),
                (c, _) => format!("allow {c} in the operator's IAM policy, or lift the SCP that denies it"),
            };
            Unresolved::Denied {
                call,
                resource,
                message,
                fix,
            }
        }
        ErrorKind::Transient if elsewhere => Unresolved::Region {
            call,
            resource,
            region: region.to_string(),
            message: format!("could not be reached ({message})"),
            fix: "check the region in the reference (a typo, or a region this partition does not have) and that it is enabled for this account".into(),
        },
        // Another region's endpoint that cannot be reached at all (no such region: DNS).
        ErrorKind::Setup if elsewhere => Unresolved::Region {
            call,
            resource,
            region: region.to_string(),
            message: format!("could not be reached ({message})"),
            fix: "check the region in the reference (a typo, or a region this partition does not have)".into(),
        },
        ErrorKind::Throttled | ErrorKind::Transient | ErrorKind::Setup => Unresolved::Unavailable {
            call,
            resource,
            message,
        },
        ErrorKind::Other => Unresolved::Failed {
            call,
            resource,
            message,
        },
    }
}

async fn secret_state(
    clients: &Clients,
    region: &str,
    id: &str,
    oldest_deployment: Option<DateTime<Utc>>,
    home: &Home,
) -> Result<RefState, Unresolved> {
    let owner = arn_account(id);
    let meta = clients
        .secrets
        .describe_secret(region, id)
        .await
        .map_err(|e| unresolved(&e, id, region, home, owner))?;
    if let Some(when) = meta.deleted {
        return Err(Unresolved::ScheduledForDeletion {
            name: meta.name,
            at: when.to_rfc3339(),
        });
    }
    let sm_id = SecretsManagerId::new(&meta.arn, &meta.name)
        .map_err(Unresolved::Unparsable)?
        .seen_from(home);
    let mut stages = BTreeMap::new();
    for (version, labels) in &meta.version_stages {
        for l in labels {
            stages.insert(l.clone(), version.clone());
        }
    }
    let created = if needs_version_dates(meta.last_changed, oldest_deployment) {
        let arn = meta.arn.clone();
        match all_pages(|t| clients.secrets.list_secret_versions(region, &arn, t)).await {
            Ok(versions) => Fetched::Done(
                versions
                    .into_iter()
                    .filter_map(|v| Some((v.id, v.created?)))
                    .collect(),
            ),
            Err(e) => Fetched::Failed(unresolved(&e, &meta.arn, region, home, owner)),
        }
    } else {
        Fetched::Skipped
    };
    Ok(RefState::SecretsManager(SmState {
        id: sm_id,
        last_changed: meta.last_changed,
        last_rotated: meta.last_rotated,
        stages,
        created,
        label_moves: BTreeMap::new(),
    }))
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
        match &r {
            SecretRef::Named(n) => {
                // A tag name may be a secret, a parameter, or both; unresolved only if neither.
                let sm = looked_up(&named_secret(n, home), n);
                let ssm = looked_up(&named_parameter(n, home), n);
                let not_found = |x: &Result<Arc<RefState>, Unresolved>| {
                    matches!(x, Err(Unresolved::NotFound { .. }))
                };
                let mut any = false;
                if let Ok(state) = &sm {
                    any = true;
                    let concrete = SecretRef::SecretsManager(SmRef {
                        partition: None,
                        region: None,
                        account: None,
                        tail: n.clone(),
                        json_key: None,
                        selector: crate::reference::VersionSelector::Current,
                    });
                    out.push(resolved(Ok(concrete), Ok(state.clone())));
                }
                if let Ok(state) = &ssm {
                    any = true;
                    let concrete = SecretRef::Parameter(SsmRef {
                        region: None,
                        account: None,
                        name: canonical_param_name(n),
                        selector: ParamSelector::Latest,
                    });
                    out.push(resolved(Ok(concrete), Ok(state.clone())));
                }
                if !any {
                    // Neither exists, unless a lookup failed otherwise: then that failure is the
                    // reason (a refusal may hide the one that exists).
                    let reason = [sm, ssm]
                        .into_iter()
                        .filter(|x| !not_found(x))
                        .find_map(Result::err)
                        .unwrap_or_else(|| Unresolved::NeitherFound {
                            name: n.clone(),
                            region: home.region.clone(),
                        });
                    out.push(resolved(Ok(r.clone()), Err(reason)));
                }
            }
            // The common cases: what was written moves into what is resolved.
            SecretRef::SecretsManager(sm) => {
                let state = looked_up(&sm_lookup(sm, home), &sm.lookup_id());
                out.push(ResolvedRef {
                    site,
                    text,
                    reference: Ok(r),
                    state,
                });
            }
            SecretRef::Parameter(p) => {
                let state = looked_up(&ssm_lookup(p, home), &p.name);
                out.push(ResolvedRef {
                    site,
                    text,
                    reference: Ok(r),
                    state,
                });
            }
            SecretRef::S3File(o) => {
                let state = looked_up(&Lookup::Object(o.clone()), &o.to_string());
                out.push(ResolvedRef {
                    site,
                    text,
                    reference: Ok(r),
                    state,
                });
            }
        }
    }
    out
}
