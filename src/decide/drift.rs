//! An image that must not change. A forced deployment (or a CodeDeploy deployment of the same
//! revision) resolves mutable image tags again: a service running `app:latest` that is rolled for
//! a secret starts whatever image the tag names *now*. So before a stale service rolls, each
//! container whose image names an ECR tag is compared: the digest its running tasks run
//! (`DescribeTasks`' `imageDigest`) against the digest the tag names now (`ecr:DescribeImages`,
//! metadata only: no image is pulled or read). Pure: the reads are the reconciler's.
//!
//! | image as written | drifts? |
//! |---|---|
//! | `…/repo@sha256:…` (by digest) | never |
//! | `<account>.dkr.ecr.<region>.amazonaws.com/repo:tag` (no tag: `latest`) | when the tag names another digest than the tasks run |
//! | any other registry (Docker Hub, GHCR, …) | cannot be asked: reported under `warn`, never held |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[rollout] image_drift`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageDrift {
    /// Hold the service (`reconcile --service X --allow-image-drift` approves it).
    #[default]
    Hold,
    /// Roll it, and log which containers start a different image.
    Warn,
    /// Roll it without looking (no registry reads).
    Allow,
}

/// An image tag in ECR, as a container definition names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EcrTag {
    /// The registry's account.
    pub(crate) registry: String,
    /// The registry's region.
    pub(crate) region: String,
    /// The repository.
    pub(crate) repository: String,
    /// The tag.
    pub(crate) tag: String,
}

/// What an image as written names: a digest (never drifts), an ECR tag, or a tag elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Image {
    /// Pinned by digest.
    Digest,
    /// A tag in ECR: comparable.
    Ecr(EcrTag),
    /// A tag in a registry ecs-reloader cannot ask.
    Elsewhere,
}

/// Reads an image reference (`[registry/]repository[:tag][@digest]`).
pub(crate) fn image(written: &str) -> Image {
    if written.contains('@') {
        return Image::Digest;
    }
    let Some((host, path)) = written.split_once('/') else {
        return Image::Elsewhere;
    };
    // <account>.dkr.ecr.<region>.amazonaws.com[.cn]
    let mut parts = host.split('.');
    let (Some(account), Some("dkr"), Some("ecr"), Some(region)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Image::Elsewhere;
    };
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) || region.is_empty() {
        return Image::Elsewhere;
    }
    // A tag follows the last `:` after the last `/`.
    let (repository, tag) = match path.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (path, "latest"),
    };
    if repository.is_empty() || tag.is_empty() {
        return Image::Elsewhere;
    }
    Image::Ecr(EcrTag {
        registry: account.to_string(),
        region: region.to_string(),
        repository: repository.to_string(),
        tag: tag.to_string(),
    })
}

/// One container that would start a different image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Drifted {
    /// The container.
    pub(crate) container: String,
    /// Its image as written.
    pub(crate) image: String,
    /// What its running tasks run.
    pub(crate) running: String,
    /// What the tag names now (`None`: the tag no longer exists, so new tasks could not start).
    pub(crate) now: Option<String>,
}

impl std::fmt::Display for Drifted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.now {
            Some(now) => write!(
                f,
                "container {}: tag {} now names {now}, its tasks run {}",
                self.container, self.image, self.running
            ),
            None => write!(
                f,
                "container {}: tag {} no longer exists (its tasks run {})",
                self.container, self.image, self.running
            ),
        }
    }
}

/// The containers of `images` (container → image as written) whose ECR tag names another
/// digest now (`tags`: what each tag names, absent when the registry said it does not exist)
/// than their running tasks run (`running`: container → digests seen). A container no task
/// reports a digest for is not judged (nothing to compare with).
pub(crate) fn drifted(
    images: &[(String, String)],
    running: &BTreeMap<String, Vec<String>>,
    tags: &BTreeMap<EcrTag, Option<String>>,
) -> Vec<Drifted> {
    let mut out = Vec::new();
    for (container, written) in images {
        let Image::Ecr(tag) = image(written) else {
            continue;
        };
        let Some(digests) = running.get(container).filter(|d| !d.is_empty()) else {
            continue;
        };
        let Some(now) = tags.get(&tag) else { continue };
        if now.as_ref().is_some_and(|n| digests.contains(n)) {
            continue;
        }
        out.push(Drifted {
            container: container.clone(),
            image: written.clone(),
            running: digests.join(", "),
            now: now.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECR: &str = "111122223333.dkr.ecr.eu-west-1.amazonaws.com";

    #[test]
    fn images_are_read_as_the_table_says() {
        assert_eq!(image(&format!("{ECR}/app@sha256:abc")), Image::Digest);
        assert_eq!(image(&format!("{ECR}/app:v1@sha256:abc")), Image::Digest);
        assert_eq!(image("nginx:latest"), Image::Elsewhere);
        assert_eq!(image("ghcr.io/org/app:1"), Image::Elsewhere);
        assert_eq!(image("localhost:5000/app:1"), Image::Elsewhere);
        let Image::Ecr(t) = image(&format!("{ECR}/team/app:latest")) else {
            panic!("not ECR")
        };
        assert_eq!(
            (
                t.registry.as_str(),
                t.region.as_str(),
                t.repository.as_str(),
                t.tag.as_str()
            ),
            ("111122223333", "eu-west-1", "team/app", "latest")
        );
        let Image::Ecr(t) = image(&format!("{ECR}/app")) else {
            panic!("not ECR")
        };
        assert_eq!(t.tag, "latest", "no tag means latest");
    }

    #[test]
    fn only_a_moved_or_vanished_tag_drifts() {
        let images = vec![
            ("app".to_string(), format!("{ECR}/app:latest")),
            ("side".to_string(), format!("{ECR}/side:1")),
            ("pinned".to_string(), format!("{ECR}/p@sha256:1")),
            ("hub".to_string(), "nginx:latest".to_string()),
        ];
        let running: BTreeMap<String, Vec<String>> = [
            ("app", "sha256:a"),
            ("side", "sha256:s"),
            ("pinned", "sha256:1"),
            ("hub", "sha256:h"),
        ]
        .iter()
        .map(|(c, d)| (c.to_string(), vec![d.to_string()]))
        .collect();
        let tag = |repo: &str, tag: &str| match image(&format!("{ECR}/{repo}:{tag}")) {
            Image::Ecr(t) => t,
            _ => panic!("not ECR"),
        };
        let mut tags = BTreeMap::new();
        tags.insert(tag("app", "latest"), Some("sha256:a".to_string()));
        tags.insert(tag("side", "1"), Some("sha256:s".to_string()));
        assert!(
            drifted(&images, &running, &tags).is_empty(),
            "nothing moved"
        );
        tags.insert(tag("app", "latest"), Some("sha256:b".to_string()));
        let d = drifted(&images, &running, &tags);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].container, "app");
        let shown = d[0].to_string();
        assert!(
            shown.contains("sha256:b")
                && shown.contains("sha256:a")
                && shown.contains("app:latest"),
            "{shown}"
        );
        tags.insert(tag("side", "1"), None);
        let d = drifted(&images, &running, &tags);
        assert_eq!(d.len(), 2);
        assert!(d[1].to_string().contains("no longer exists"));
    }
}
