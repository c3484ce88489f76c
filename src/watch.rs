//! The watch cache: which services may resolve which secrets, so that a change event costs only
//! its dependants instead of a scan of every cluster.
//!
//! Like kube-runtime's reflector, it only says where to look. A pass for a change describes the
//! candidate services again and decides them from that fresh state, so a stale entry costs at
//! most a wasted `DescribeServices` slot, never a wrong decision. What it can miss is a service
//! that started referencing a secret since it was filled: ECS's own events (a deployment
//! started, a service deleted or re-tagged) refresh single entries, and every full scan (the
//! periodic resync) replaces it whole, so a missed event costs at most one resync period.
//!
//! Keys are loose on purpose: `region` plus the name as written, and for a Secrets Manager ARN
//! also the name without its six-character suffix, because a reference's text cannot say which
//! of the two it holds. Exact matching stays where it was ([`crate::index::Entry::references`]).
//! An entry keeps only its cluster and keys: the service itself is described again when needed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::index::Entry;
use crate::reference::SecretIdentity;

/// A service's place in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watched {
    cluster: Arc<str>,
    keys: Vec<Arc<str>>,
    /// The epoch of the look it comes from: an older look never overwrites it.
    seen: u64,
}

#[derive(Debug, Default)]
struct State {
    /// A full scan of the default scope has filled it: before that it cannot say where to look.
    built: bool,
    /// By service ARN.
    services: HashMap<Arc<str>, Watched>,
    /// Loose key → service ARNs.
    by_key: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// A counter of scans begun and refreshes seen: what happened later has a larger number.
    epoch: u64,
    /// The epoch the applied scan began at.
    applied: u64,
    /// When the applied scan finished.
    applied_at: Option<tokio::time::Instant>,
    /// Scans running, by the epoch they began at.
    running: BTreeSet<u64>,
    /// What single refreshes saw while a scan ran, by service ARN (`None`: gone), with its
    /// epoch: newer than a scan that began before it, so that scan must not overwrite them.
    touched: HashMap<Arc<str>, (u64, Option<Watched>)>,
    /// Interned cluster names and keys: ten thousand services share a few hundred of each.
    strings: HashSet<Arc<str>>,
}

impl State {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }

    fn remove(&mut self, arn: &str) {
        if let Some(old) = self.services.remove(arn) {
            for k in &old.keys {
                if let Some(set) = self.by_key.get_mut(k) {
                    set.remove(arn);
                    if set.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
        }
    }

    fn put(&mut self, arn: Arc<str>, w: Watched) {
        self.remove(&arn);
        for k in &w.keys {
            self.by_key
                .entry(k.clone())
                .or_default()
                .insert(arn.clone());
        }
        self.services.insert(arn, w);
    }

    fn watched(&mut self, e: &Entry, default_region: &str, seen: u64) -> Watched {
        let home = e.home(default_region);
        let mut keys: Vec<String> = e
            .refs
            .iter()
            .filter_map(|w| w.parsed.as_ref().ok())
            .flat_map(|r| crate::sources::watch_keys(r, &home))
            .collect();
        keys.sort();
        keys.dedup();
        Watched {
            cluster: self.intern(e.service.cluster_name()),
            keys: keys.iter().map(|k| self.intern(k)).collect(),
            seen,
        }
    }
}

/// A full scan in progress, as the cache knows it; dropped unfinished (the scan failed), it is
/// forgotten.
pub(crate) struct Scan<'a> {
    watch: &'a Watch,
    began: u64,
}

impl Drop for Scan<'_> {
    fn drop(&mut self) {
        let mut s = self.watch.state();
        s.running.remove(&self.began);
        s.prune();
    }
}

impl Scan<'_> {
    /// The scan found these services (those referencing at least one secret): they replace the
    /// cache, except services a refresh saw after the scan began, and except when a scan that
    /// began later was applied already.
    pub(crate) fn finish(self, entries: &[Entry], default_region: &str) {
        let mut s = self.watch.state();
        if self.began < s.applied {
            return;
        }
        let mut fresh: Vec<(Arc<str>, Watched)> = Vec::with_capacity(entries.len());
        for e in entries {
            let w = s.watched(e, default_region, self.began);
            let arn = s.intern(&e.service.arn);
            fresh.push((arn, w));
        }
        s.services.clear();
        s.by_key.clear();
        let began = self.began;
        let newer: Vec<(Arc<str>, Option<Watched>)> = s
            .touched
            .iter()
            .filter(|(_, (at, _))| *at > began)
            .map(|(a, (_, w))| (a.clone(), w.clone()))
            .collect();
        let newer_arns: HashSet<&Arc<str>> = newer.iter().map(|(a, _)| a).collect();
        for (arn, w) in fresh {
            if !newer_arns.contains(&arn) {
                s.put(arn, w);
            }
        }
        for (arn, w) in newer {
            if let Some(w) = w {
                s.put(arn, w);
            }
        }
        s.applied = began;
        s.applied_at = Some(tokio::time::Instant::now());
        s.built = true;
        let used: HashSet<Arc<str>> = s
            .services
            .iter()
            .flat_map(|(a, w)| {
                std::iter::once(a.clone())
                    .chain(std::iter::once(w.cluster.clone()))
                    .chain(w.keys.iter().cloned())
            })
            .chain(s.touched.keys().cloned())
            .collect();
        s.strings.retain(|x| used.contains(x));
    }
}

/// Where to look for a change: service ARNs by cluster.
pub(crate) type Candidates = BTreeMap<String, Vec<String>>;

/// The cache. Shared by every pass of one reconciler; cheap to lock (no I/O under the lock).
#[derive(Debug, Default)]
pub(crate) struct Watch {
    state: Mutex<State>,
}

impl Watch {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a full scan has filled it.
    pub(crate) fn is_built(&self) -> bool {
        self.state().built
    }

    /// How many services it holds.
    pub(crate) fn len(&self) -> usize {
        self.state().services.len()
    }

    /// The epoch of a look about to be taken (a `DescribeServices` for a refresh or a change):
    /// what it finds is as new as this, however late it is observed.
    pub(crate) fn reserve(&self) -> u64 {
        let mut s = self.state();
        s.epoch += 1;
        s.epoch
    }

    /// A full scan of the default scope begins.
    pub(crate) fn begin_scan(&self) -> Scan<'_> {
        let mut s = self.state();
        s.epoch += 1;
        let began = s.epoch;
        s.running.insert(began);
        Scan { watch: self, began }
    }

    /// Single services seen afresh: `entries` as described (a service that references no secret
    /// any more has no refs and leaves the cache), `gone` deleted or no longer in scope.
    ///
    /// `stamp` is the epoch [`reserve`](Self::reserve)d before the look: a service the cache
    /// knows from a later look keeps that.
    pub(crate) fn observe(
        &self,
        stamp: u64,
        entries: &[Entry],
        gone: &[String],
        default_region: &str,
    ) {
        let mut s = self.state();
        let scanning = !s.running.is_empty();
        for e in entries {
            if s.services
                .get(e.service.arn.as_str())
                .is_some_and(|w| w.seen > stamp)
            {
                continue;
            }
            // What a service resolves is unknown while its task definition cannot be read: the
            // cache keeps what it knew (dropping it would hide the service from every change
            // pass until the next resync).
            if e.unreadable.is_some() {
                continue;
            }
            let arn = s.intern(&e.service.arn);
            let w = (!e.refs.is_empty()).then(|| s.watched(e, default_region, stamp));
            match &w {
                Some(w) => s.put(arn.clone(), w.clone()),
                None => s.remove(&arn),
            }
            if scanning {
                s.touched.insert(arn, (stamp, w));
            }
        }
        for g in gone {
            if s.services.get(g.as_str()).is_some_and(|w| w.seen > stamp) {
                continue;
            }
            s.remove(g.as_str());
            if scanning {
                let arn = s.intern(g);
                s.touched.insert(arn, (stamp, None));
            }
        }
    }

    /// The services that may resolve one of `identities`, by cluster; `None` until a scan has
    /// filled the cache, or when no scan has replaced it for `max_age`.
    pub(crate) fn candidates<'a>(
        &self,
        identities: impl IntoIterator<Item = &'a SecretIdentity>,
        max_age: std::time::Duration,
    ) -> Option<Candidates> {
        let s = self.state();
        if !s.built || s.applied_at.is_none_or(|at| at.elapsed() > max_age) {
            return None;
        }
        let mut out: Candidates = BTreeMap::new();
        let mut seen: HashSet<&Arc<str>> = HashSet::new();
        for id in identities {
            let Some(arns) = s.by_key.get(crate::sources::identity_key(id).as_str()) else {
                continue;
            };
            for arn in arns {
                if seen.insert(arn) {
                    if let Some(w) = s.services.get(arn) {
                        out.entry(w.cluster.to_string())
                            .or_default()
                            .push(arn.to_string());
                    }
                }
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        Some(out)
    }
}

impl State {
    /// Forgets refreshes no running scan began before.
    fn prune(&mut self) {
        match self.running.iter().next().copied() {
            None => self.touched.clear(),
            Some(oldest) => self.touched.retain(|_, (at, _)| *at > oldest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Written;
    use crate::reference::{parse_declared, Site};

    fn entry(cluster: &str, name: &str, refs: &[&str]) -> Entry {
        let service = crate::aws::Service {
            arn: format!("arn:aws:ecs:us-east-1:123456789012:service/{cluster}/{name}"),
            name: name.to_string(),
            cluster_arn: format!("arn:aws:ecs:us-east-1:123456789012:cluster/{cluster}"),
            status: "ACTIVE".into(),
            task_definition: String::new(),
            desired_count: 1,
            controller: crate::aws::Controller::Ecs,
            shape: Default::default(),
            deployments: Vec::new(),
            tags: Default::default(),
        };
        Entry {
            unreadable: None,
            service,
            refs: refs
                .iter()
                .map(|t| {
                    let site = Site::ServiceTag;
                    Written {
                        site: site.clone(),
                        text: t.to_string(),
                        parsed: parse_declared(t),
                    }
                })
                .collect(),
        }
    }

    fn sm(arn: &str, name: &str) -> SecretIdentity {
        SecretIdentity::SecretsManager(
            crate::reference::SecretsManagerId::new(arn, name).expect("valid ARN"),
        )
    }

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbCdEf";
    const AGE: std::time::Duration = std::time::Duration::from_secs(3600);

    #[test]
    fn an_older_look_does_not_overwrite_a_newer_one() {
        let w = Watch::default();
        w.begin_scan().finish(&[], "us-east-1");
        // A pass reserves its look, then a refresh sees the service referencing app/db.
        let old = w.reserve();
        w.observe(
            w.reserve(),
            &[entry("c1", "x", &["app/db"])],
            &[],
            "us-east-1",
        );
        // The pass's look, from before the change, arrives late.
        w.observe(old, &[entry("c1", "x", &["app/other"])], &[], "us-east-1");
        let c = w.candidates([&sm(ARN, "app/db")], AGE).expect("built");
        assert_eq!(c.values().flatten().count(), 1, "{c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_no_scan_replaced_for_too_long_is_not_trusted() {
        let w = Watch::default();
        w.begin_scan()
            .finish(&[entry("c1", "x", &["app/db"])], "us-east-1");
        assert!(w.candidates([&sm(ARN, "app/db")], AGE).is_some());
        tokio::time::sleep(AGE + std::time::Duration::from_secs(1)).await;
        assert!(
            w.candidates([&sm(ARN, "app/db")], AGE).is_none(),
            "too old: scan"
        );
    }

    #[test]
    fn a_name_a_partial_arn_and_a_full_arn_all_lead_to_the_service() {
        let w = Watch::default();
        assert!(
            w.candidates([&sm(ARN, "app/db")], AGE).is_none(),
            "not built yet"
        );
        w.begin_scan().finish(
            &[
                entry("c1", "by-name", &["app/db"]),
                entry("c1", "by-arn", &[ARN]),
                entry(
                    "c2",
                    "by-partial",
                    &["arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db"],
                ),
                entry("c2", "other", &["app/db-replica"]),
            ],
            "us-east-1",
        );
        let c = w.candidates([&sm(ARN, "app/db")], AGE).expect("built");
        let names: Vec<String> = c.values().flatten().cloned().collect();
        assert_eq!(names.len(), 3, "{c:?}");
        assert!(!names.iter().any(|n| n.ends_with("/other")));
    }

    #[test]
    fn a_refresh_during_a_scan_is_not_undone_by_the_scan() {
        let w = Watch::default();
        w.begin_scan().finish(&[], "us-east-1");
        let scan = w.begin_scan();
        // While the scan runs, the service starts referencing the secret.
        w.observe(
            w.reserve(),
            &[entry("c1", "late", &["app/db"])],
            &[],
            "us-east-1",
        );
        // The scan saw it before the change.
        scan.finish(&[entry("c1", "late", &[])], "us-east-1");
        let c = w.candidates([&sm(ARN, "app/db")], AGE).expect("built");
        assert_eq!(c.values().flatten().count(), 1, "{c:?}");
        // A later scan decides again.
        w.begin_scan().finish(&[], "us-east-1");
        assert_eq!(w.len(), 0);
        // A failed scan changes nothing and leaves nothing behind.
        w.observe(
            w.reserve(),
            &[entry("c1", "x", &["app/db"])],
            &[],
            "us-east-1",
        );
        drop(w.begin_scan());
        assert_eq!(w.len(), 1);
        assert!(w.state().touched.is_empty());
    }

    #[test]
    fn a_deleted_service_leaves() {
        let w = Watch::default();
        let e = entry("c1", "gone", &["app/db"]);
        let arn = e.service.arn.clone();
        w.begin_scan().finish(&[e], "us-east-1");
        w.observe(w.reserve(), &[], &[arn], "us-east-1");
        assert_eq!(w.len(), 0);
        assert!(w
            .candidates([&sm(ARN, "app/db")], AGE)
            .expect("built")
            .is_empty());
    }
}
