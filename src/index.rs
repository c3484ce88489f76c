//! The index: which services resolve which secrets.
//!
//! A scan lists clusters, pages through `ListServices`, describes services ten at a time with
//! their tags, and reads each task definition revision's secret references. Revisions are
//! immutable, so [`TaskDefCache`] describes each ARN once per process, however many services or
//! scans share it. [`resolve`] then reads the metadata (never the value) of every secret the
//! selected services reference, and [`Target`]s select services by exact secret identity.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use crate::aws::{all_pages, AwsError, AwsResult, Clients, ErrorKind, Service, TaskDefinition};
use crate::decide::{RefState, ResolvedRef, SmState, SsmState};
use crate::reference::{
    canonical_param_name, parse_tag_value, parse_value_from, ParamSelector, RefError,
    SecretIdentity, SecretRef, SecretsManagerId, Site, SmRef, SsmRef,
};

/// Tag declaring extra references (space-separated) for secrets a task definition does not show.
pub const TAG_SECRETS: &str = "ecs-reloader/secrets";
/// `DescribeServices` takes at most this many services per call.
pub const DESCRIBE_SERVICES_BATCH: usize = 10;
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

/// A service with its parsed references.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The service as described.
    pub service: Service,
    /// Every reference: where, the text, and the parse result.
    pub refs: Vec<(Site, String, Result<SecretRef, RefError>)>,
}

impl Entry {
    /// The deployment time new tasks are judged against.
    pub fn deployed_at(&self) -> Option<DateTime<Utc>> {
        self.service.primary().map(|d| d.created_at)
    }

    /// Whether one of its references names `target`.
    pub fn references(&self, target: &SecretIdentity, home_region: &str) -> bool {
        self.refs.iter().any(|(_, _, r)| match r {
            Ok(r) => ref_names(r, target, home_region),
            Err(_) => false,
        })
    }
}

/// Whether a reference names an identity: exact, by name or full ARN, never by prefix.
pub fn ref_names(r: &SecretRef, target: &SecretIdentity, home: &str) -> bool {
    match (r, target) {
        (SecretRef::SecretsManager(sm), SecretIdentity::SecretsManager(id)) => sm.names(id, home),
        (SecretRef::Parameter(p), SecretIdentity::Parameter { region, name }) => {
            p.region.as_deref().unwrap_or(home) == region && &p.name == name
        }
        (SecretRef::Named(n), SecretIdentity::SecretsManager(id)) => {
            id.region == home && *n == id.name
        }
        (SecretRef::Named(n), SecretIdentity::Parameter { region, name }) => {
            region == home && canonical_param_name(n) == *name
        }
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
                .map(|batch| {
                    let c = c.clone();
                    async move {
                        let services = {
                            let _p = permits.acquire().await.map_err(closed)?;
                            clients.ecs.describe_services(&c, &batch).await?
                        };
                        let revisions: HashSet<String> = services.iter().map(revision_of).collect();
                        let defs = futures::future::try_join_all(revisions.into_iter().map(
                            |arn| async move {
                                let _p = permits.acquire().await.map_err(closed)?;
                                cache.get(clients, &arn).await.map(|d| (arn, d))
                            },
                        ))
                        .await?;
                        Ok::<_, AwsError>((services, defs))
                    }
                })
                .buffer_unordered(concurrency)
                .try_collect::<Vec<_>>()
                .await
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let mut services: Vec<Service> = Vec::new();
    let mut defs: HashMap<String, Arc<TaskDefinition>> = HashMap::new();
    for (batch, batch_defs) in per_cluster.into_iter().flatten() {
        services.extend(batch);
        defs.extend(batch_defs);
    }
    services.sort_by(|a, b| (a.cluster_name(), &a.name).cmp(&(b.cluster_name(), &b.name)));

    let mut inv = Inventory {
        clusters,
        ..Default::default()
    };
    for service in services {
        let mut refs: Vec<(Site, String, Result<SecretRef, RefError>)> = Vec::new();
        if let Some(def) = defs.get(&revision_of(&service)) {
            for raw in &def.refs {
                refs.push((
                    raw.site.clone(),
                    raw.value.clone(),
                    parse_value_from(&raw.value),
                ));
            }
        }
        if let Some(tag) = service.tags.get(TAG_SECRETS) {
            for (text, parsed) in parse_tag_value(tag) {
                refs.push((Site::ServiceTag, text, parsed));
            }
        }
        if refs.is_empty() {
            inv.without_secrets += 1;
        } else {
            inv.entries.push(Entry { service, refs });
        }
    }
    Ok(inv)
}

/// One `DescribeServices` batch with the revisions it brought in.
type DescribedBatch = (Vec<Service>, Vec<(String, Arc<TaskDefinition>)>);

fn closed(_: tokio::sync::AcquireError) -> AwsError {
    AwsError::new("scan", "-", ErrorKind::Other, "scan cancelled")
}

/// The revision new tasks of a service start from: the primary deployment's.
fn revision_of(s: &Service) -> String {
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
/// Secrets Manager (a name or partial ARN can only be matched exactly once resolved).
pub async fn resolve_target(clients: &Clients, given: &str) -> Result<Target, TargetError> {
    let parsed = crate::reference::parse_declared(given).map_err(|source| TargetError::Parse {
        given: given.to_string(),
        source,
    })?;
    let home = clients.region.as_str();
    let mut identities = Vec::new();
    match &parsed {
        SecretRef::SecretsManager(sm) => {
            let region = sm.region.as_deref().unwrap_or(home);
            match clients
                .secrets
                .describe_secret(region, &sm.lookup_id())
                .await
            {
                Ok(meta) => identities.push(sm_identity(&meta.arn, &meta.name)?),
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        SecretRef::Parameter(p) => identities.push(SecretIdentity::Parameter {
            region: p.region.clone().unwrap_or_else(|| home.to_string()),
            name: p.name.clone(),
        }),
        SecretRef::Named(n) => {
            match clients.secrets.describe_secret(home, n).await {
                Ok(meta) => identities.push(sm_identity(&meta.arn, &meta.name)?),
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            let name = canonical_param_name(n);
            let found = clients
                .parameters
                .describe_parameters(home, std::slice::from_ref(&name))
                .await?;
            if found.iter().any(|p| p.name == name) {
                identities.push(SecretIdentity::Parameter {
                    region: home.to_string(),
                    name,
                });
            }
        }
    }
    if identities.is_empty() {
        return Err(TargetError::NotFound(given.to_string()));
    }
    Ok(Target {
        given: given.to_string(),
        identities,
        label_moves: Vec::new(),
    })
}

fn sm_identity(arn: &str, name: &str) -> AwsResult<SecretIdentity> {
    SecretsManagerId::new(arn, name)
        .map(SecretIdentity::SecretsManager)
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
    Secret { region: String, id: String },
    Parameter { region: String, name: String },
}

/// Reads the metadata behind every reference of `entries` and pairs each reference with it.
/// Returns, per entry (same order), its resolved references.
pub async fn resolve(
    clients: &Clients,
    entries: &[Entry],
    concurrency: usize,
) -> AwsResult<Vec<Vec<ResolvedRef>>> {
    let home = clients.region.clone();
    let concurrency = concurrency.max(1);

    // Which lookups, and the oldest deployment depending on each (to know whether version
    // creation dates are needed at all).
    let mut oldest: BTreeMap<Lookup, Option<DateTime<Utc>>> = BTreeMap::new();
    let mut history_needed: HashSet<Lookup> = HashSet::new();
    for e in entries {
        let d = e.deployed_at();
        for (_, _, r) in &e.refs {
            let Ok(r) = r else { continue };
            for (key, needs_history) in lookups_of(r, &home) {
                let slot = oldest.entry(key.clone()).or_insert(d);
                *slot = match (*slot, d) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if needs_history {
                    history_needed.insert(key);
                }
            }
        }
    }

    let secret_keys: Vec<(Lookup, String, String, Option<DateTime<Utc>>)> = oldest
        .iter()
        .filter_map(|(k, d)| match k {
            Lookup::Secret { region, id } => Some((k.clone(), region.clone(), id.clone(), *d)),
            Lookup::Parameter { .. } => None,
        })
        .collect();
    let secret_states: Vec<(Lookup, Result<RefState, String>)> = stream::iter(secret_keys)
        .map(|(key, region, id, oldest)| async move {
            let state = secret_state(clients, &region, &id, oldest).await?;
            Ok::<_, AwsError>((key, state))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;

    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in oldest.keys() {
        if let Lookup::Parameter { region, name } = key {
            by_region
                .entry(region.clone())
                .or_default()
                .push(name.clone());
        }
    }
    let mut param_states: HashMap<Lookup, Result<RefState, String>> = HashMap::new();
    for (region, names) in by_region {
        for batch in names.chunks(DESCRIBE_PARAMETERS_BATCH) {
            let found = clients
                .parameters
                .describe_parameters(&region, batch)
                .await?;
            for name in batch {
                let key = Lookup::Parameter {
                    region: region.clone(),
                    name: name.clone(),
                };
                let state = match found.iter().find(|p| &p.name == name) {
                    Some(p) => {
                        let history = if history_needed.contains(&key) {
                            Some(clients.parameters.parameter_history(&region, name).await?)
                        } else {
                            None
                        };
                        Ok(RefState::Parameter(SsmState {
                            region: region.clone(),
                            name: name.clone(),
                            last_modified: p.last_modified,
                            version: p.version,
                            history,
                        }))
                    }
                    None => Err(format!("SSM parameter {name} not found in {region}")),
                };
                param_states.insert(key, state);
            }
        }
    }

    let mut states: HashMap<Lookup, Result<RefState, String>> = secret_states.into_iter().collect();
    states.extend(param_states);

    Ok(entries
        .iter()
        .map(|e| pair_refs(e, &states, &home))
        .collect())
}

/// The lookups a reference needs, and whether each needs the label history.
fn lookups_of(r: &SecretRef, home: &str) -> Vec<(Lookup, bool)> {
    match r {
        SecretRef::SecretsManager(sm) => vec![(sm_lookup(sm, home), false)],
        SecretRef::Parameter(p) => {
            vec![(
                ssm_lookup(p, home),
                matches!(p.selector, ParamSelector::Label(_)),
            )]
        }
        SecretRef::Named(n) => vec![
            (
                Lookup::Secret {
                    region: home.to_string(),
                    id: n.clone(),
                },
                false,
            ),
            (
                Lookup::Parameter {
                    region: home.to_string(),
                    name: canonical_param_name(n),
                },
                false,
            ),
        ],
    }
}

fn sm_lookup(sm: &SmRef, home: &str) -> Lookup {
    Lookup::Secret {
        region: sm.region.clone().unwrap_or_else(|| home.to_string()),
        id: sm.lookup_id(),
    }
}

fn ssm_lookup(p: &SsmRef, home: &str) -> Lookup {
    Lookup::Parameter {
        region: p.region.clone().unwrap_or_else(|| home.to_string()),
        name: p.name.clone(),
    }
}

async fn secret_state(
    clients: &Clients,
    region: &str,
    id: &str,
    oldest_deployment: Option<DateTime<Utc>>,
) -> AwsResult<Result<RefState, String>> {
    let meta = match clients.secrets.describe_secret(region, id).await {
        Ok(m) => m,
        Err(e) if e.kind == ErrorKind::NotFound => {
            return Ok(Err(format!("secret {id} not found in {region}")))
        }
        Err(e) if e.kind == ErrorKind::AccessDenied => return Ok(Err(e.to_string())),
        Err(e) => return Err(e),
    };
    if let Some(when) = meta.deleted {
        return Ok(Err(format!(
            "secret {} is scheduled for deletion ({when})",
            meta.name
        )));
    }
    let sm_id = match SecretsManagerId::new(&meta.arn, &meta.name) {
        Ok(i) => i,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut stages = BTreeMap::new();
    for (version, labels) in &meta.version_stages {
        for l in labels {
            stages.insert(l.clone(), version.clone());
        }
    }
    // Creation dates matter only if some dependent deployment is older than the last change
    // (see `decide`): skip the call otherwise.
    let needed = match (meta.last_changed, oldest_deployment) {
        (Some(u), Some(d)) => d < u + chrono::Duration::seconds(1),
        _ => true,
    };
    let mut created = BTreeMap::new();
    if needed {
        let arn = meta.arn.clone();
        let versions = all_pages(|t| clients.secrets.list_secret_versions(region, &arn, t)).await?;
        for v in versions {
            if let Some(c) = v.created {
                created.insert(v.id, c);
            }
        }
    }
    Ok(Ok(RefState::SecretsManager(SmState {
        id: sm_id,
        last_changed: meta.last_changed,
        stages,
        created,
        label_moves: BTreeMap::new(),
    })))
}

fn pair_refs(
    e: &Entry,
    states: &HashMap<Lookup, Result<RefState, String>>,
    home: &str,
) -> Vec<ResolvedRef> {
    let mut out = Vec::new();
    for (site, text, parsed) in &e.refs {
        let r = match parsed {
            Ok(r) => r,
            Err(err) => {
                out.push(ResolvedRef {
                    site: site.clone(),
                    text: text.clone(),
                    reference: Err(err.to_string()),
                    state: Err("not parsed".into()),
                });
                continue;
            }
        };
        let missing = || Err::<RefState, String>("not looked up".into());
        match r {
            SecretRef::Named(n) => {
                // A tag name may be a secret, a parameter, or both; unresolved only if neither.
                let sm = states
                    .get(&Lookup::Secret {
                        region: home.to_string(),
                        id: n.clone(),
                    })
                    .cloned()
                    .unwrap_or_else(missing);
                let ssm = states
                    .get(&Lookup::Parameter {
                        region: home.to_string(),
                        name: canonical_param_name(n),
                    })
                    .cloned()
                    .unwrap_or_else(missing);
                let mut any = false;
                if let Ok(state) = sm {
                    any = true;
                    let concrete = SecretRef::SecretsManager(SmRef {
                        partition: None,
                        region: None,
                        account: None,
                        tail: n.clone(),
                        json_key: None,
                        selector: crate::reference::VersionSelector::Current,
                    });
                    out.push(ResolvedRef {
                        site: site.clone(),
                        text: text.clone(),
                        reference: Ok(concrete),
                        state: Ok(state),
                    });
                }
                if let Ok(state) = ssm {
                    any = true;
                    let concrete = SecretRef::Parameter(SsmRef {
                        region: None,
                        account: None,
                        name: canonical_param_name(n),
                        selector: ParamSelector::Latest,
                    });
                    out.push(ResolvedRef {
                        site: site.clone(),
                        text: text.clone(),
                        reference: Ok(concrete),
                        state: Ok(state),
                    });
                }
                if !any {
                    out.push(ResolvedRef {
                        site: site.clone(),
                        text: text.clone(),
                        reference: Ok(r.clone()),
                        state: Err(format!(
                            "no Secrets Manager secret or SSM parameter named {n}"
                        )),
                    });
                }
            }
            SecretRef::SecretsManager(sm) => out.push(ResolvedRef {
                site: site.clone(),
                text: text.clone(),
                reference: Ok(r.clone()),
                state: states
                    .get(&sm_lookup(sm, home))
                    .cloned()
                    .unwrap_or_else(missing),
            }),
            SecretRef::Parameter(p) => out.push(ResolvedRef {
                site: site.clone(),
                text: text.clone(),
                reference: Ok(r.clone()),
                state: states
                    .get(&ssm_lookup(p, home))
                    .cloned()
                    .unwrap_or_else(missing),
            }),
        }
    }
    out
}
