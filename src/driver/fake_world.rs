//! A whole fake account, populated and wired (feature `test-util`): the fake tests and the scan
//! bench each used to build their world by hand, with the same names and the same sleeps in
//! slightly different orders; one builder keeps those worlds comparable and their set-up short.
//!
//! It lives beside the wiring rather than in `aws::fake` because it assembles [`Parts`]: `aws`
//! naming `driver` would be an import cycle (`tests/architecture.rs`).
//!
//! The world is laid out in two phases, `settle` apart: secrets, parameters and task definitions
//! first, then the services, then `settle` again. Every service's deployment is therefore
//! unambiguously newer than every value it resolves, and every change a test makes afterwards
//! unambiguously newer than every deployment (dates have whole-second granularity): the world
//! starts in sync.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::aws::fake::FakeAws;
use crate::clock::Clock;
use crate::config::Config;
use crate::driver::setup::{self, Parts};
use crate::reconcile::Mode;
use crate::reference::Site;
use crate::rollout::{LogProgress, Progress};

/// Where a generated service sits, for naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Its number among all generated services (they go round the clusters in turn).
    pub index: usize,
    /// Its cluster's number.
    pub cluster: usize,
    /// Its number within its cluster.
    pub nth: usize,
}

/// What a [`World`] will hold; see [`World::builder`].
pub struct WorldBuilder {
    region: String,
    clusters: usize,
    services: usize,
    task_defs: usize,
    secrets: usize,
    parameters: usize,
    cluster_name: fn(usize) -> String,
    service_name: fn(Slot) -> String,
    dependants: Vec<(String, Vec<(String, String)>)>,
    settle: Duration,
    page_size: Option<usize>,
    ecs_buckets: bool,
    config: Config,
    mode: Mode,
    progress: Arc<dyn Progress>,
}

impl Default for WorldBuilder {
    fn default() -> Self {
        WorldBuilder {
            region: "eu-west-1".into(),
            clusters: 1,
            services: 0,
            task_defs: 0,
            secrets: 0,
            parameters: 0,
            cluster_name: |c| format!("cluster-{c:02}"),
            service_name: |s| format!("svc-{:05}", s.index),
            dependants: Vec::new(),
            settle: Duration::from_secs(5),
            page_size: None,
            ecs_buckets: false,
            config: Config::default(),
            mode: Mode::Watch,
            progress: Arc::new(LogProgress),
        }
    }
}

impl WorldBuilder {
    /// The fake's region (default `eu-west-1`).
    pub fn region(mut self, region: &str) -> Self {
        self.region = region.into();
        self
    }

    /// Clusters the generated services go round (default 1).
    pub fn clusters(mut self, n: usize) -> Self {
        self.clusters = n.max(1);
        self
    }

    /// Generated services, in total: service `i` is in cluster `i % clusters` and runs task
    /// definition `i % task_defs` (default none).
    pub fn services(mut self, n: usize) -> Self {
        self.services = n;
        self
    }

    /// Task definitions `td-0000`… (one revision each); `t` references secret `t % secrets` and
    /// parameter `t % parameters`. With services and none asked for, there is one.
    pub fn task_defs(mut self, n: usize) -> Self {
        self.task_defs = n;
        self
    }

    /// Secrets `app/secret-0000`…, each with one `AWSCURRENT` version.
    pub fn secrets(mut self, n: usize) -> Self {
        self.secrets = n;
        self
    }

    /// SSM parameters `/app/param-0000`…, each at version 1.
    pub fn parameters(mut self, n: usize) -> Self {
        self.parameters = n;
        self
    }

    /// Names clusters by number (default `cluster-00`…).
    pub fn cluster_names(mut self, name: fn(usize) -> String) -> Self {
        self.cluster_name = name;
        self
    }

    /// Names generated services by where they sit (default `svc-00000`… by index).
    pub fn service_names(mut self, name: fn(Slot) -> String) -> Self {
        self.service_name = name;
        self
    }

    /// A secret `name` of its own, with a task definition referencing only it, run by the
    /// services `(cluster, service)`: the few dependants of a rotation among many bystanders. A
    /// pair that names a generated service gives it this task definition instead of its own.
    pub fn dependants(mut self, name: &str, services: &[(&str, &str)]) -> Self {
        self.dependants.push((
            name.into(),
            services
                .iter()
                .map(|(c, s)| (c.to_string(), s.to_string()))
                .collect(),
        ));
        self
    }

    /// The time between the phases, and after the last (default 5 s).
    pub fn settle(mut self, d: Duration) -> Self {
        self.settle = d;
        self
    }

    /// Page size of every listing (default the fake's, 100).
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = Some(n);
        self
    }

    /// ECS's documented token buckets on the fake, full once the world is built.
    pub fn ecs_buckets(mut self) -> Self {
        self.ecs_buckets = true;
        self
    }

    /// The configuration the parts are assembled from (default [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The mode the parts are assembled for (default [`Mode::Watch`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Where rollouts report (default [`LogProgress`]).
    pub fn progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Populates a fake on tokio's clock (from 2026-01-01; a world with services advances it by
    /// twice `settle`, so call this on paused time) and assembles the parts over it.
    pub async fn build(self) -> World {
        let (fake, clock) = FakeAws::on_tokio_clock(&self.region);
        if let Some(n) = self.page_size {
            fake.set_page_size(n);
        }
        let secrets: Vec<(String, String)> = (0..self.secrets)
            .map(|k| {
                let name = format!("app/secret-{k:04}");
                let arn = fake.create_secret(&name);
                (name, arn)
            })
            .collect();
        let parameters: Vec<String> = (0..self.parameters)
            .map(|p| {
                let name = format!("/app/param-{p:04}");
                fake.put_parameter(&name);
                name
            })
            .collect();
        let n_defs = if self.services > 0 {
            self.task_defs.max(1)
        } else {
            self.task_defs
        };
        let task_defs: Vec<String> = (0..n_defs)
            .map(|t| {
                let mut refs: Vec<(Site, &str)> = Vec::new();
                if !secrets.is_empty() {
                    refs.push((site("S"), secrets[t % secrets.len()].1.as_str()));
                }
                if !parameters.is_empty() {
                    refs.push((site("P"), parameters[t % parameters.len()].as_str()));
                }
                fake.register_task_definition(&format!("td-{t:04}"), &refs)
            })
            .collect();
        let mut dependant_secrets = Vec::new();
        let mut dependant_def: BTreeMap<(String, String), String> = BTreeMap::new();
        for (name, services) in &self.dependants {
            let arn = fake.create_secret(name);
            let family = format!("uses-{}", name.replace(|c: char| !c.is_alphanumeric(), "-"));
            let td = fake.register_task_definition(&family, &[(site("S"), arn.as_str())]);
            for key in services {
                dependant_def.insert(key.clone(), td.clone());
            }
            dependant_secrets.push((name.clone(), arn));
        }

        let mut services: Vec<(String, String)> = Vec::new();
        if self.services > 0 || !dependant_def.is_empty() {
            tokio::time::sleep(self.settle).await;
            for index in 0..self.services {
                let slot = Slot {
                    index,
                    cluster: index % self.clusters,
                    nth: index / self.clusters,
                };
                let key = ((self.cluster_name)(slot.cluster), (self.service_name)(slot));
                let td = dependant_def
                    .remove(&key)
                    .unwrap_or_else(|| task_defs[index % task_defs.len()].clone());
                fake.create_service(&key.0, &key.1, &td, 1, &[]);
                services.push(key);
            }
            // Dependants that are not generated services come after them, in the order named.
            for (_, named) in &self.dependants {
                for key in named {
                    if let Some(td) = dependant_def.remove(key) {
                        fake.create_service(&key.0, &key.1, &td, 1, &[]);
                        services.push(key.clone());
                    }
                }
            }
            tokio::time::sleep(self.settle).await;
        }
        if self.ecs_buckets {
            fake.use_ecs_buckets();
        }
        let mut clusters: Vec<String> = Vec::new();
        for (c, _) in &services {
            if !clusters.contains(c) {
                clusters.push(c.clone());
            }
        }
        let parts = setup::assemble(
            &self.config,
            fake.clients(),
            clock.clone(),
            self.progress,
            self.mode,
        );
        World {
            fake,
            clock,
            parts,
            clusters,
            services,
            secrets: secrets.into_iter().chain(dependant_secrets).collect(),
            generated_secrets: self.secrets,
        }
    }
}

fn site(name: &str) -> Site {
    Site::Secret {
        container: "app".into(),
        name: name.into(),
    }
}

/// A populated fake account and the parts assembled over it.
pub struct World {
    /// The account: tests change it and count its calls.
    pub fake: FakeAws,
    /// The fake's (and the parts') clock.
    pub clock: Arc<dyn Clock>,
    /// The reconciler and the rest, as a driver runs them.
    pub parts: Parts,
    clusters: Vec<String>,
    services: Vec<(String, String)>,
    /// (name, ARN): the generated secrets, then the dependants' ones.
    secrets: Vec<(String, String)>,
    generated_secrets: usize,
}

impl World {
    /// A builder of an empty account in `eu-west-1`, its parts from [`Config::default`].
    pub fn builder() -> WorldBuilder {
        WorldBuilder::default()
    }

    /// The clusters that hold services, in the order they were first used.
    pub fn clusters(&self) -> &[String] {
        &self.clusters
    }

    /// Every service created, as (cluster, service).
    pub fn services(&self) -> &[(String, String)] {
        &self.services
    }

    /// The names of the generated secrets (not the dependants' ones).
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.secrets[..self.generated_secrets]
            .iter()
            .map(|(n, _)| n.as_str())
    }

    /// The ARN of a secret the builder created, generated or a dependants' one.
    pub fn secret_arn(&self, name: &str) -> Option<&str> {
        self.secrets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Decision;
    use crate::index::Scope;

    #[tokio::test(start_paused = true)]
    async fn a_built_world_is_in_sync_and_named_as_asked() {
        let w = World::builder()
            .clusters(2)
            .services(5)
            .task_defs(3)
            .secrets(2)
            .parameters(1)
            .service_names(|s| format!("s{}-{}", s.cluster, s.nth))
            .dependants("app/hot", &[("cluster-01", "s1-0"), ("cluster-02", "hot")])
            .build()
            .await;
        assert_eq!(w.clusters(), ["cluster-00", "cluster-01", "cluster-02"]);
        assert_eq!(
            w.services().len(),
            6,
            "one dependant replaced a generated one"
        );
        assert_eq!(
            w.secret_names().collect::<Vec<_>>(),
            ["app/secret-0000", "app/secret-0001"]
        );
        let hot = w.secret_arn("app/hot").expect("created");
        let a = w
            .parts
            .reconciler
            .assess(&Scope::default(), &[])
            .await
            .expect("assess");
        assert_eq!(a.services.len(), 6);
        assert!(
            a.services.iter().all(|s| s.decision == Decision::InSync),
            "{:?}",
            a.services
        );
        assert!(
            w.fake.calls("ssm:GetParameterHistory") + w.fake.calls("ssm:DescribeParameters") > 0
        );

        w.fake.put_secret_value("app/hot", &[]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let a = w
            .parts
            .reconciler
            .assess(&Scope::default(), &[])
            .await
            .expect("assess");
        let mut stale: Vec<String> = a
            .services
            .iter()
            .filter(|s| s.decision.is_stale())
            .map(|s| format!("{}/{}", s.key.cluster, s.key.service))
            .collect();
        stale.sort();
        assert_eq!(stale, ["cluster-01/s1-0", "cluster-02/hot"], "{hot}");
    }
}
