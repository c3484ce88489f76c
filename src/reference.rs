//! Secret references: the strings a task definition (or a service tag) uses to name a
//! Secrets Manager secret or an SSM parameter, parsed into [`SecretRef`].
//!
//! ECS accepts these forms in `secrets[].valueFrom`, `logConfiguration.secretOptions[].valueFrom`
//! and `repositoryCredentials.credentialsParameter`:
//!
//! | form | example |
//! |---|---|
//! | Secrets Manager full ARN | `arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/db-AbCdEf` |
//! | … with `json-key:version-stage:version-id` | `arn:…:secret:app/db-AbCdEf:password:AWSPREVIOUS:` (empty fields keep their colons) |
//! | Secrets Manager partial ARN (no 6-character suffix) | `arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/db` |
//! | SSM parameter ARN | `arn:aws:ssm:eu-west-1:111122223333:parameter/app/db` |
//! | SSM parameter name (same region only) | `/app/db`, `app/db`, `db_password` |
//!
//! A bare name in `valueFrom` is always an SSM parameter: that is how ECS reads it. A
//! `credentialsParameter` is always a Secrets Manager secret, by name or ARN (ECS reads private
//! registry credentials from Secrets Manager only), hence [`parse_at`]. A bare name in the
//! `ecs-reloader/secrets` tag may be either, so [`parse_declared`] yields [`SecretRef::Named`],
//! which the index resolves against both services.
//!
//! **Identity** is partition + account + region + name ([`SecretIdentity`]): a bare name means the
//! task's own account and region ([`Home`]), an ARN means exactly what it says, and two secrets of
//! the same name in different accounts or regions are different secrets everywhere (matching,
//! holds, canary gates).
//!
//! This module is pure: no I/O, no AWS types.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Where in a task definition (or service) a reference was found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Site {
    /// `containerDefinitions[].secrets[]`, by container and variable name.
    Secret { container: String, name: String },
    /// `containerDefinitions[].logConfiguration.secretOptions[]`.
    LogOption { container: String, name: String },
    /// `containerDefinitions[].repositoryCredentials.credentialsParameter`.
    RepositoryCredentials { container: String },
    /// The service tag `ecs-reloader/secrets`.
    ServiceTag,
    /// `containerDefinitions[].environmentFiles[]` (type `s3`), by container: read by ECS at
    /// task start like a secret (see [`crate::sources::s3`]).
    EnvironmentFile { container: String },
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Secret { container, name } => write!(f, "{container}: secret {name}"),
            Site::LogOption { container, name } => write!(f, "{container}: log option {name}"),
            Site::RepositoryCredentials { container } => {
                write!(f, "{container}: repository credentials")
            }
            Site::ServiceTag => f.write_str("tag ecs-reloader/secrets"),
            Site::EnvironmentFile { container } => write!(f, "{container}: environment file"),
        }
    }
}

/// Which version of a Secrets Manager secret a reference resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum VersionSelector {
    /// No stage and no version id: ECS resolves `AWSCURRENT`.
    Current,
    /// A version stage (staging label) other than the default.
    Stage(String),
    /// A version id: pinned, never changes on rotation.
    VersionId(String),
}

impl VersionSelector {
    /// The staging label this selector follows, if it follows one.
    pub fn stage(&self) -> Option<&str> {
        match self {
            VersionSelector::Current => Some(AWSCURRENT),
            VersionSelector::Stage(s) => Some(s),
            VersionSelector::VersionId(_) => None,
        }
    }
}

/// The staging label Secrets Manager (and ECS by default) treats as the live value.
pub const AWSCURRENT: &str = "AWSCURRENT";
/// The staging label Secrets Manager moves to the replaced version on every promotion.
pub(crate) const AWSPREVIOUS: &str = "AWSPREVIOUS";
/// The staging label a rotation gives the new version until it is promoted.
pub const AWSPENDING: &str = "AWSPENDING";

/// A reference to a Secrets Manager secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SmRef {
    /// `aws`, `aws-cn`, `aws-us-gov`, … (`None` for a bare name).
    pub partition: Option<String>,
    /// Region from the ARN; `None` means the caller's region.
    pub region: Option<String>,
    /// Account from the ARN; `None` means the caller's account.
    pub account: Option<String>,
    /// What follows `secret:` up to the first field separator: the name, or the name plus the
    /// `-XXXXXX` suffix of a full ARN. Which of the two it is cannot be told from the text alone
    /// (a name may itself end in `-` and six characters), hence [`SmRef::lookup_id`] and exact
    /// comparison against a resolved identity.
    pub tail: String,
    /// The JSON key ECS extracts from the secret string, if any.
    pub json_key: Option<String>,
    /// The version this reference resolves.
    pub selector: VersionSelector,
}

impl SmRef {
    /// The identifier to hand to `DescribeSecret`: the ARN without ECS's extra fields, or the name.
    pub(crate) fn lookup_id(&self) -> String {
        match (&self.partition, &self.region, &self.account) {
            (Some(p), Some(r), Some(a)) => {
                format!("arn:{p}:secretsmanager:{r}:{a}:secret:{}", self.tail)
            }
            _ => self.tail.clone(),
        }
    }

    /// Whether this reference names the secret whose resolved identity is `id`, given the region
    /// the reference is read in. Exact, never by prefix: `app/db` does not name
    /// `app/db-replica-AbCdEf`.
    pub fn names(&self, id: &SecretsManagerId, home_region: &str) -> bool {
        self.names_from(id, &Home::region(home_region))
    }

    /// [`names`](Self::names), read from `home`: a reference without an account means home's
    /// account, so a bare name never names another account's secret of the same name.
    pub(crate) fn names_from(&self, id: &SecretsManagerId, home: &Home) -> bool {
        let region = self.region.as_deref().unwrap_or(&home.region);
        if region != id.region {
            return false;
        }
        let account = self.account.as_deref().or(home.account.as_deref());
        if let (Some(a), Some(b)) = (account, &id.account) {
            if a != b {
                return false;
            }
        }
        self.tail == id.name || id.arn_tail() == Some(self.tail.as_str())
    }
}

/// Which version of an SSM parameter a reference resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ParamSelector {
    /// The latest version (the usual case).
    Latest,
    /// `name:N`: pinned to version N.
    Version(u64),
    /// `name:label`: follows a parameter label.
    Label(String),
}

/// A reference to an SSM parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SsmRef {
    /// Region from the ARN; `None` means the caller's region.
    pub region: Option<String>,
    /// Account from the ARN; `None` means the caller's account.
    pub account: Option<String>,
    /// The parameter name in the form SSM uses: a hierarchical name always starts with `/`.
    pub name: String,
    /// The version this reference resolves.
    pub selector: ParamSelector,
}

/// A parsed secret reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "service", rename_all = "snake_case")]
pub enum SecretRef {
    /// A Secrets Manager secret.
    SecretsManager(SmRef),
    /// An SSM parameter.
    Parameter(SsmRef),
    /// A bare name from the service tag: a secret or a parameter of that name, whichever exists.
    Named(String),
    /// An S3 object (an environment file), by bucket and key.
    S3File(S3ObjectId),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::SecretsManager(r) => {
                f.write_str(&r.lookup_id())?;
                match &r.selector {
                    VersionSelector::Current => Ok(()),
                    VersionSelector::Stage(s) => write!(f, " (stage {s})"),
                    VersionSelector::VersionId(v) => write!(f, " (version {v})"),
                }
            }
            SecretRef::Parameter(p) => {
                write!(f, "ssm:{}", p.name)?;
                match &p.selector {
                    ParamSelector::Latest => Ok(()),
                    ParamSelector::Version(v) => write!(f, ":{v}"),
                    ParamSelector::Label(l) => write!(f, ":{l}"),
                }
            }
            SecretRef::Named(n) => f.write_str(n),
            SecretRef::S3File(o) => write!(f, "{o}"),
        }
    }
}

// ---- S3 environment files: what identifies one and what its listing says (the source's
// logic is `crate::sources::s3`; these are here, with the other identities, so that every
// module below the sources can name them).

/// The call that dates an object: `ListObjectsV2` (IAM action `s3:ListBucket`).
pub(crate) const S3_LIST_CALL: &str = "s3:ListObjectsV2";

/// An S3 object, by partition, bucket and key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct S3ObjectId {
    /// `aws`, `aws-cn`, …
    pub partition: String,
    /// The bucket.
    pub bucket: String,
    /// The object key (as written, no leading `/`).
    pub key: String,
}

impl fmt::Display for S3ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl S3ObjectId {
    /// The object an ARN's fields name (`arn:aws:s3:::bucket/key`): S3 object ARNs carry no
    /// region or account, and one that does is not an object ARN.
    pub(crate) fn from_arn(
        partition: &str,
        region: &str,
        account: &str,
        resource: &str,
    ) -> Result<S3ObjectId, &'static str> {
        if !region.is_empty() || !account.is_empty() {
            return Err("an S3 object ARN names no region or account (arn:aws:s3:::bucket/key)");
        }
        let Some((bucket, key)) = resource.split_once('/') else {
            return Err("an S3 object ARN's resource is bucket/key");
        };
        if bucket.is_empty() || key.is_empty() {
            return Err("an S3 object ARN names a bucket and a key");
        }
        Ok(S3ObjectId {
            partition: partition.to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// The object in the partition of `region` (what an event names: bucket and key).
    pub(crate) fn in_region(region: &str, bucket: &str, key: &str) -> S3ObjectId {
        S3ObjectId {
            partition: partition_of(region).to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
        }
    }

    /// The bucket's ARN, as IAM policies name it.
    pub(crate) fn bucket_arn(&self) -> String {
        format!("arn:{}:s3:::{}", self.partition, self.bucket)
    }
}

/// What the listing says about an object: when it was written, never what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct S3State {
    /// The object.
    pub id: S3ObjectId,
    /// `LastModified` (*W*).
    pub last_modified: Option<DateTime<Utc>>,
    /// `ETag`, for reports.
    pub etag: Option<String>,
}

/// Where a task resolves references that name no account or region: the account and region of
/// its service (ECS resolves a bare name there). The operator scans its own account and region, so
/// this is also "home" for display: identities elsewhere are shown with their account and region.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Home {
    /// `aws`, `aws-cn`, `aws-us-gov`, …
    pub partition: String,
    /// The region.
    pub region: String,
    /// The account, when known (ECS ARNs always carry it).
    pub account: Option<String>,
}

impl Home {
    /// A home known only by its region.
    pub fn region(region: &str) -> Home {
        Home {
            partition: partition_of(region).to_string(),
            region: region.to_string(),
            account: None,
        }
    }

    /// The home of an ECS resource (a service, a cluster): its ARN's partition, region and
    /// account; `fallback_region` when the ARN cannot be read.
    pub(crate) fn of_arn(arn: &str, fallback_region: &str) -> Home {
        match split_arn(arn) {
            Ok(p) if !p.region.is_empty() => Home {
                partition: p.partition.to_string(),
                region: p.region.to_string(),
                account: non_empty(p.account),
            },
            _ => Home::region(fallback_region),
        }
    }

    /// Whether `account` is this home's account (an unknown account on either side counts as
    /// home: nothing says otherwise).
    pub(crate) fn owns(&self, account: Option<&str>) -> bool {
        match (account, &self.account) {
            (Some(a), Some(h)) => a == h,
            _ => true,
        }
    }

    /// The account as identities store it: `None` for home's own account.
    pub(crate) fn foreign_account(&self, account: Option<&str>) -> Option<String> {
        account.filter(|a| !self.owns(Some(a))).map(str::to_string)
    }

    /// How an identity in `region` / `account` is qualified for display: nothing at home, else
    /// `[account region]` (or `[region]` for home's account elsewhere).
    fn qualifier(&self, region: &str, account: Option<&str>) -> Option<String> {
        let other_account = !self.owns(account);
        match (other_account, region != self.region) {
            (false, false) => None,
            (false, true) => Some(format!("[{region}]")),
            (true, _) => Some(format!("[{} {region}]", account.unwrap_or("?"))),
        }
    }
}

/// The partition a region belongs to (region names are unique across partitions).
pub(crate) fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else {
        "aws"
    }
}

/// The resolved identity of a Secrets Manager secret: its full ARN, split. Two identities are
/// the same secret exactly when their full ARNs are equal (the ARN carries partition, account,
/// region and name); the display qualifier is not part of the identity.
#[derive(Debug, Clone, Serialize)]
pub struct SecretsManagerId {
    /// The full ARN, with the 6-character suffix.
    pub arn: String,
    /// The secret's name.
    pub name: String,
    /// The region the secret lives in.
    pub region: String,
    /// The owning account, when the ARN carries one.
    pub account: Option<String>,
    /// `[account region]` when it lives outside the operator's home (see [`Home`]): the display,
    /// and every key built from it (holds, canary gates), then tells it from a home secret of the
    /// same name.
    #[serde(skip)]
    pub qualifier: Option<String>,
}

impl PartialEq for SecretsManagerId {
    fn eq(&self, other: &Self) -> bool {
        self.arn == other.arn
    }
}

impl Eq for SecretsManagerId {}

impl std::hash::Hash for SecretsManagerId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.arn.hash(state);
    }
}

impl PartialOrd for SecretsManagerId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SecretsManagerId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.arn.cmp(&other.arn)
    }
}

impl SecretsManagerId {
    /// Builds an identity from the full ARN and name that `DescribeSecret` returns.
    pub fn new(arn: &str, name: &str) -> Result<Self, RefError> {
        let parts = split_arn(arn)?;
        if parts.service != "secretsmanager" {
            return Err(RefError::WrongService {
                input: arn.to_string(),
                service: parts.service.to_string(),
            });
        }
        Ok(SecretsManagerId {
            arn: arn.to_string(),
            name: name.to_string(),
            region: parts.region.to_string(),
            account: non_empty(parts.account),
            qualifier: None,
        })
    }

    /// The same identity, displayed as seen from `home`.
    pub(crate) fn seen_from(mut self, home: &Home) -> Self {
        self.qualifier = home.qualifier(&self.region, self.account.as_deref());
        self
    }

    /// What follows `secret:` in the full ARN (`name-AbCdEf`).
    pub(crate) fn arn_tail(&self) -> Option<&str> {
        self.arn.split_once(":secret:").map(|(_, t)| t)
    }
}

/// The identity of an SSM parameter: region, account and canonical name. The account is `None`
/// for the operator's own account (so that an event, which names no account, and a reference by
/// ARN with the home account are the same parameter) and `Some` only for another account's.
#[derive(Debug, Clone, Serialize)]
pub struct ParameterId {
    /// The parameter's region.
    pub region: String,
    /// Another account's id; `None` for the operator's own.
    pub account: Option<String>,
    /// The canonical name (leading `/` for hierarchical names).
    pub name: String,
    /// `[account region]` / `[region]` outside home, for display (not part of the identity).
    #[serde(skip)]
    pub qualifier: Option<String>,
}

impl ParameterId {
    /// The parameter `name` in `region` of the operator's own account, shown as seen from a home
    /// in `home_region`.
    pub fn own(region: &str, name: &str, home_region: &str) -> Self {
        ParameterId::new(region, None, name, &Home::region(home_region))
    }

    /// The parameter `name` in `region` of `account` (normalised against `home`).
    pub fn new(region: &str, account: Option<&str>, name: &str, home: &Home) -> Self {
        let account = home.foreign_account(account);
        ParameterId {
            region: region.to_string(),
            qualifier: home.qualifier(region, account.as_deref()),
            account,
            name: name.to_string(),
        }
    }

    fn key(&self) -> (&str, Option<&str>, &str) {
        (&self.region, self.account.as_deref(), &self.name)
    }
}

impl PartialEq for ParameterId {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ParameterId {}

impl std::hash::Hash for ParameterId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for ParameterId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ParameterId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The identity of anything ecs-reloader watches: what events and `--secret` resolve to, and
/// what the index is keyed by. Its display is the key of holds and canary gates: the bare name at
/// home, qualified with account and region elsewhere, so that it is unique across them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "service", rename_all = "snake_case")]
pub enum SecretIdentity {
    /// A Secrets Manager secret, by its full ARN.
    SecretsManager(SecretsManagerId),
    /// An SSM parameter, by region, account and canonical name.
    Parameter(ParameterId),
    /// An S3 object, by partition, bucket and key (bucket names are unique in a partition).
    S3Object(S3ObjectId),
}

impl fmt::Display for SecretIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, qualifier) = match self {
            SecretIdentity::SecretsManager(id) => (id.name.clone(), &id.qualifier),
            SecretIdentity::Parameter(p) => (format!("ssm:{}", p.name), &p.qualifier),
            SecretIdentity::S3Object(o) => return write!(f, "{o}"),
        };
        f.write_str(&name)?;
        match qualifier {
            Some(q) => write!(f, " {q}"),
            None => Ok(()),
        }
    }
}

/// Why a reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// Empty, or only white space.
    #[error("empty secret reference")]
    Empty,
    /// Contains white space or control characters, which no ARN or name may hold.
    #[error("secret reference {input:?} contains white space or control characters")]
    BadCharacter {
        /// The offending input.
        input: String,
    },
    /// Starts with `arn:` but does not have the six ARN fields.
    #[error("malformed ARN {input:?}: {why}")]
    MalformedArn {
        /// The offending input.
        input: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `repositoryCredentials.credentialsParameter` naming something other than a Secrets
    /// Manager secret: ECS reads registry credentials from Secrets Manager only.
    #[error("repository credentials {input:?} must name a Secrets Manager secret (by name or ARN): ECS reads them from Secrets Manager only")]
    NotASecret {
        /// The offending input.
        input: String,
    },
    /// `environmentFiles[].value` that is not an S3 object ARN (`arn:aws:s3:::bucket/key`).
    #[error("environment file {input:?} must be an S3 object ARN (arn:aws:s3:::bucket/key)")]
    NotAnS3Object {
        /// The offending input.
        input: String,
    },
    /// An ARN of a service that cannot hold secrets for ECS.
    #[error("ARN {input:?} is for service {service:?}, not secretsmanager, ssm or s3")]
    WrongService {
        /// The offending input.
        input: String,
        /// The service the ARN names.
        service: String,
    },
}

/// An ARN read into its six fields: the one ARN type every module reads ARNs with (secret and
/// parameter ARNs, service and cluster ARNs, role ARNs, the accounts events name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arn<'a> {
    /// `aws`, `aws-cn`, …
    pub(crate) partition: &'a str,
    /// `secretsmanager`, `ecs`, `iam`, …
    pub(crate) service: &'a str,
    /// Empty for global services.
    pub(crate) region: &'a str,
    /// Empty where the resource names none.
    pub(crate) account: &'a str,
    /// What follows the account (`secret:name-AbCdEf`, `service/cluster/name`, …).
    pub(crate) resource: &'a str,
}

impl<'a> Arn<'a> {
    /// `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`, or `None`.
    pub(crate) fn parse(input: &'a str) -> Option<Arn<'a>> {
        let mut it = input.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some(service),
            Some(region),
            Some(account),
            Some(resource),
        ) = (
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
        )
        else {
            return None;
        };
        Some(Arn {
            partition,
            service,
            region,
            account,
            resource,
        })
    }

    /// The account, when the ARN names one.
    pub(crate) fn account(&self) -> Option<&'a str> {
        Some(self.account).filter(|a| !a.is_empty())
    }

    /// The region, when the ARN names one.
    pub(crate) fn region(&self) -> Option<&'a str> {
        Some(self.region).filter(|r| !r.is_empty())
    }
}

/// The account an ARN names, if `id` is an ARN that names one.
pub(crate) fn arn_account(id: &str) -> Option<&str> {
    Arn::parse(id)?.account()
}

type ArnParts<'a> = Arn<'a>;

fn split_arn(input: &str) -> Result<ArnParts<'_>, RefError> {
    let malformed = |why| RefError::MalformedArn {
        input: input.to_string(),
        why,
    };
    let Some(Arn {
        partition,
        service,
        region,
        account,
        resource,
    }) = Arn::parse(input)
    else {
        return Err(malformed("an ARN has six ':'-separated fields"));
    };
    if partition.is_empty() || service.is_empty() {
        return Err(malformed("partition and service must not be empty"));
    }
    if resource.is_empty() {
        return Err(malformed("no resource"));
    }
    Ok(ArnParts {
        partition,
        service,
        region,
        account,
        resource,
    })
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn check_chars(input: &str) -> Result<&str, RefError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(RefError::Empty);
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RefError::BadCharacter {
            input: input.to_string(),
        });
    }
    Ok(trimmed)
}

/// Parses a `valueFrom` / `credentialsParameter` string the way ECS reads it: an ARN of either
/// service, or else an SSM parameter name.
pub fn parse_value_from(input: &str) -> Result<SecretRef, RefError> {
    let s = check_chars(input)?;
    if s.starts_with("arn:") {
        // ECS resolves S3 objects only as environment files, never as `valueFrom`.
        match parse_arn(s)? {
            SecretRef::S3File(_) => Err(RefError::WrongService {
                input: s.to_string(),
                service: "s3".into(),
            }),
            r => Ok(r),
        }
    } else {
        Ok(SecretRef::Parameter(parse_param_name(s, None, None)))
    }
}

/// Parses a reference as ECS reads it at `site`: `repositoryCredentials.credentialsParameter` is a
/// Secrets Manager secret by name or ARN (never an SSM parameter); everything else as
/// [`parse_value_from`].
pub(crate) fn parse_at(site: &Site, input: &str) -> Result<SecretRef, RefError> {
    if matches!(site, Site::EnvironmentFile { .. }) {
        // An S3 key may hold spaces: only control characters are refused.
        let s = input.trim();
        if s.is_empty() {
            return Err(RefError::Empty);
        }
        if s.chars().any(char::is_control) {
            return Err(RefError::BadCharacter {
                input: input.to_string(),
            });
        }
        return match s.starts_with("arn:").then(|| parse_arn(s)) {
            Some(Ok(r @ SecretRef::S3File(_))) => Ok(r),
            Some(Err(e @ RefError::MalformedArn { .. })) => Err(e),
            _ => Err(RefError::NotAnS3Object {
                input: s.to_string(),
            }),
        };
    }
    if !matches!(site, Site::RepositoryCredentials { .. }) {
        return parse_value_from(input);
    }
    let s = check_chars(input)?;
    if s.starts_with("arn:") {
        return match parse_arn(s)? {
            r @ SecretRef::SecretsManager(_) => Ok(r),
            _ => Err(RefError::NotASecret {
                input: s.to_string(),
            }),
        };
    }
    Ok(SecretRef::SecretsManager(SmRef {
        partition: None,
        region: None,
        account: None,
        tail: s.to_string(),
        json_key: None,
        selector: VersionSelector::Current,
    }))
}

/// Parses one entry of the `ecs-reloader/secrets` tag: an ARN, or a bare name that may be a
/// Secrets Manager secret or an SSM parameter.
pub fn parse_declared(input: &str) -> Result<SecretRef, RefError> {
    let s = check_chars(input)?;
    if s.starts_with("arn:") {
        parse_arn(s)
    } else {
        Ok(SecretRef::Named(s.to_string()))
    }
}

/// Splits the tag value (space-separated, since tag values cannot hold commas) into references.
/// Every entry is returned, parsed or not, so one bad entry does not hide the others.
pub fn parse_tag_value(value: &str) -> Vec<(String, Result<SecretRef, RefError>)> {
    value
        .split_whitespace()
        .map(|part| (part.to_string(), parse_declared(part)))
        .collect()
}

fn parse_arn(s: &str) -> Result<SecretRef, RefError> {
    let parts = split_arn(s)?;
    let malformed = |why| RefError::MalformedArn {
        input: s.to_string(),
        why,
    };
    match parts.service {
        "secretsmanager" => {
            let Some(rest) = parts.resource.strip_prefix("secret:") else {
                return Err(malformed(
                    "a Secrets Manager ARN's resource starts with 'secret:'",
                ));
            };
            let fields: Vec<&str> = rest.split(':').collect();
            if fields.len() > 4 {
                return Err(malformed("at most name:json-key:version-stage:version-id"));
            }
            let tail = fields[0];
            if tail.is_empty() {
                return Err(malformed("no secret name"));
            }
            if parts.region.is_empty() {
                return Err(malformed("a Secrets Manager ARN names a region"));
            }
            let field = |i: usize| fields.get(i).copied().and_then(non_empty);
            // ECS takes a version id over a stage when both are given; a pinned id is the
            // stronger statement, so we follow it.
            let selector = match (field(2), field(3)) {
                (_, Some(id)) => VersionSelector::VersionId(id),
                (Some(stage), None) if stage == AWSCURRENT => VersionSelector::Current,
                (Some(stage), None) => VersionSelector::Stage(stage),
                (None, None) => VersionSelector::Current,
            };
            Ok(SecretRef::SecretsManager(SmRef {
                partition: Some(parts.partition.to_string()),
                region: Some(parts.region.to_string()),
                account: non_empty(parts.account),
                tail: tail.to_string(),
                json_key: field(1),
                selector,
            }))
        }
        "ssm" => {
            let Some(rest) = parts.resource.strip_prefix("parameter") else {
                return Err(malformed("an SSM ARN's resource starts with 'parameter/'"));
            };
            let Some(name) = rest.strip_prefix('/') else {
                return Err(malformed("an SSM ARN's resource starts with 'parameter/'"));
            };
            if name.is_empty() || name.ends_with(':') {
                return Err(malformed("no parameter name"));
            }
            if parts.region.is_empty() {
                return Err(malformed("an SSM ARN names a region"));
            }
            Ok(SecretRef::Parameter(parse_param_name(
                name,
                Some(parts.region.to_string()),
                non_empty(parts.account),
            )))
        }
        "s3" => S3ObjectId::from_arn(parts.partition, parts.region, parts.account, parts.resource)
            .map(SecretRef::S3File)
            .map_err(malformed),
        other => Err(RefError::WrongService {
            input: s.to_string(),
            service: other.to_string(),
        }),
    }
}

/// Normalises a parameter name: a hierarchical name (one with `/`) is stored by SSM with a
/// leading `/`, and an ARN's `parameter/app/db` means `/app/db`. A `:N` or `:label` suffix selects
/// a version (parameter names cannot contain `:`).
fn parse_param_name(raw: &str, region: Option<String>, account: Option<String>) -> SsmRef {
    let (name, selector) = match raw.rsplit_once(':') {
        Some((n, sel)) if !n.is_empty() && !sel.is_empty() => {
            let selector = match sel.parse::<u64>() {
                Ok(v) => ParamSelector::Version(v),
                Err(_) => ParamSelector::Label(sel.to_string()),
            };
            (n, selector)
        }
        _ => (raw, ParamSelector::Latest),
    };
    SsmRef {
        region,
        account,
        name: canonical_param_name(name),
        selector,
    }
}

/// The canonical form of a parameter name: hierarchical names start with exactly one `/`.
pub(crate) fn canonical_param_name(name: &str) -> String {
    if name.contains('/') && !name.starts_with('/') {
        format!("/{name}")
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/db-AbCdEf";

    fn sm(s: &str) -> SmRef {
        match parse_value_from(s) {
            Ok(SecretRef::SecretsManager(r)) => r,
            other => panic!("expected a Secrets Manager ref for {s}, got {other:?}"),
        }
    }

    fn ssm(s: &str) -> SsmRef {
        match parse_value_from(s) {
            Ok(SecretRef::Parameter(r)) => r,
            other => panic!("expected an SSM ref for {s}, got {other:?}"),
        }
    }

    #[test]
    fn full_arn() {
        let r = sm(ARN);
        assert_eq!(r.tail, "app/db-AbCdEf");
        assert_eq!(r.region.as_deref(), Some("eu-west-1"));
        assert_eq!(r.account.as_deref(), Some("111122223333"));
        assert_eq!(r.selector, VersionSelector::Current);
        assert_eq!(r.json_key, None);
        assert_eq!(r.lookup_id(), ARN);
    }

    #[test]
    fn json_key_and_empty_fields_keep_their_colons() {
        let r = sm(&format!("{ARN}:password::"));
        assert_eq!(r.json_key.as_deref(), Some("password"));
        assert_eq!(r.selector, VersionSelector::Current);
        assert_eq!(r.lookup_id(), ARN);

        let r = sm(&format!("{ARN}::AWSPREVIOUS:"));
        assert_eq!(r.json_key, None);
        assert_eq!(r.selector, VersionSelector::Stage("AWSPREVIOUS".into()));

        let r = sm(&format!("{ARN}:password::0123-abcd"));
        assert_eq!(r.selector, VersionSelector::VersionId("0123-abcd".into()));

        let r = sm(&format!("{ARN}:password:AWSCURRENT:"));
        assert_eq!(
            r.selector,
            VersionSelector::Current,
            "AWSCURRENT spelt out is the default"
        );

        // A version id wins over a stage.
        let r = sm(&format!("{ARN}::blue:0123"));
        assert_eq!(r.selector, VersionSelector::VersionId("0123".into()));
    }

    #[test]
    fn partial_arn_and_cross_region() {
        let r = sm("arn:aws:secretsmanager:us-east-2:111122223333:secret:app/db");
        assert_eq!(r.tail, "app/db");
        assert_eq!(r.region.as_deref(), Some("us-east-2"));
        let r = sm("arn:aws-cn:secretsmanager:cn-north-1:111122223333:secret:x");
        assert_eq!(r.partition.as_deref(), Some("aws-cn"));
    }

    #[test]
    fn ssm_names_and_arns_agree() {
        assert_eq!(ssm("/app/db").name, "/app/db");
        assert_eq!(ssm("app/db").name, "/app/db");
        assert_eq!(ssm("db_password").name, "db_password");
        let by_arn = ssm("arn:aws:ssm:eu-west-1:111122223333:parameter/app/db");
        assert_eq!(by_arn.name, "/app/db");
        assert_eq!(by_arn.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            ssm("arn:aws:ssm:eu-west-1:111122223333:parameter/flat").name,
            "flat"
        );
        assert_eq!(ssm("/app/db:3").selector, ParamSelector::Version(3));
        assert_eq!(
            ssm("/app/db:prod").selector,
            ParamSelector::Label("prod".into())
        );
        assert_eq!(ssm("/app/db:prod").name, "/app/db");
    }

    #[test]
    fn tag_values() {
        let parsed = parse_tag_value("  app/db  arn:aws:ssm:eu-west-1:1:parameter/x  arn:bad ");
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].1, Ok(SecretRef::Named("app/db".into())));
        assert!(matches!(parsed[1].1, Ok(SecretRef::Parameter(_))));
        assert!(matches!(parsed[2].1, Err(RefError::MalformedArn { .. })));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        for bad in [
            "",
            "   ",
            "arn:aws:secretsmanager:eu-west-1",
            "arn:aws:secretsmanager:eu-west-1:1:notsecret:x",
            "arn:aws:secretsmanager:eu-west-1:1:secret:",
            "arn:aws:secretsmanager::1:secret:x",
            "arn:aws:secretsmanager:eu-west-1:1:secret:x:a:b:c:d",
            "arn:aws:ssm:eu-west-1:1:parameter",
            "arn:aws:ssm:eu-west-1:1:parameter/",
            "arn:aws:s3:::bucket",
            "arn::secretsmanager:r:a:secret:x",
            "app db",
        ] {
            assert!(parse_value_from(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn lookalike_names_never_match() {
        let db = SecretsManagerId::new(ARN, "app/db").unwrap();
        let replica = SecretsManagerId::new(
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/db-replica-XyZ123",
            "app/db-replica",
        )
        .unwrap();
        let partial = sm("arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/db");
        assert!(partial.names(&db, "eu-west-1"));
        assert!(!partial.names(&replica, "eu-west-1"));
        let full_replica = sm(&replica.arn);
        assert!(full_replica.names(&replica, "eu-west-1"));
        assert!(!full_replica.names(&db, "eu-west-1"));
        let full_db = sm(&format!("{ARN}:password::"));
        assert!(full_db.names(&db, "eu-west-1"));
        assert!(!full_db.names(&replica, "eu-west-1"));
        // Same name, other region or account: another secret.
        let other_region = sm("arn:aws:secretsmanager:us-east-1:111122223333:secret:app/db");
        assert!(!other_region.names(&db, "eu-west-1"));
        let other_account = sm("arn:aws:secretsmanager:eu-west-1:999999999999:secret:app/db");
        assert!(!other_account.names(&db, "eu-west-1"));
    }

    #[test]
    fn repository_credentials_are_a_secret_by_name_or_arn() {
        let site = Site::RepositoryCredentials {
            container: "app".into(),
        };
        // A bare name is a Secrets Manager secret there, never an SSM parameter.
        match parse_at(&site, "app/registry") {
            Ok(SecretRef::SecretsManager(r)) => {
                assert_eq!(r.lookup_id(), "app/registry");
                assert_eq!(r.selector, VersionSelector::Current);
                let id = SecretsManagerId::new(
                    "arn:aws:secretsmanager:eu-west-1:111122223333:secret:app/registry-AbCdEf",
                    "app/registry",
                )
                .unwrap();
                let home = Home::of_arn(
                    "arn:aws:ecs:eu-west-1:111122223333:service/prod/api",
                    "eu-west-1",
                );
                assert!(r.names_from(&id, &home));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_at(&site, ARN),
            Ok(SecretRef::SecretsManager(_))
        ));
        assert!(matches!(
            parse_at(&site, "arn:aws:ssm:eu-west-1:111122223333:parameter/creds"),
            Err(RefError::NotASecret { .. })
        ));
        // Elsewhere a bare name stays an SSM parameter, as ECS reads it.
        let secret = Site::Secret {
            container: "app".into(),
            name: "X".into(),
        };
        assert!(matches!(
            parse_at(&secret, "app/registry"),
            Ok(SecretRef::Parameter(_))
        ));
    }

    #[test]
    fn identity_is_partition_account_region_and_name() {
        let home = Home::of_arn(
            "arn:aws:ecs:eu-west-1:111122223333:service/prod/api",
            "us-east-1",
        );
        assert_eq!(home.region, "eu-west-1");
        assert_eq!(home.account.as_deref(), Some("111122223333"));
        assert_eq!(home.partition, "aws");
        assert_eq!(Home::region("cn-north-1").partition, "aws-cn");
        // A bare name never names another account's secret of the same name.
        let foreign = SecretsManagerId::new(
            "arn:aws:secretsmanager:eu-west-1:999999999999:secret:app/db-XyZ123",
            "app/db",
        )
        .unwrap();
        let bare = SmRef {
            partition: None,
            region: None,
            account: None,
            tail: "app/db".into(),
            json_key: None,
            selector: VersionSelector::Current,
        };
        assert!(!bare.names_from(&foreign, &home));
        assert!(sm(&foreign.arn).names_from(&foreign, &home));
        // The display qualifier is not part of the identity.
        let seen = foreign.clone().seen_from(&home);
        assert_eq!(seen.qualifier.as_deref(), Some("[999999999999 eu-west-1]"));
        assert_eq!(seen, foreign);
        let mine = SecretsManagerId::new(ARN, "app/db")
            .unwrap()
            .seen_from(&home);
        assert_eq!(mine.qualifier, None);
        let other_region = SecretsManagerId::new(
            "arn:aws:secretsmanager:us-east-1:111122223333:secret:app/db-AbCdEf",
            "app/db",
        )
        .unwrap()
        .seen_from(&home);
        assert_eq!(
            SecretIdentity::SecretsManager(other_region).to_string(),
            "app/db [us-east-1]"
        );
        // Parameters: home's own account is `None`, whether named by ARN or not.
        let by_arn = ParameterId::new("eu-west-1", Some("111122223333"), "/p", &home);
        let by_name = ParameterId::own("eu-west-1", "/p", "eu-west-1");
        assert_eq!(by_arn, by_name);
        let theirs = ParameterId::new("eu-west-1", Some("999999999999"), "/p", &home);
        assert_ne!(theirs, by_name);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            "[A-Za-z0-9/_+=.@-]{1,40}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn never_panics(s in "\\PC{0,120}") {
                let _ = parse_value_from(&s);
                let _ = parse_declared(&s);
                let _ = parse_tag_value(&s);
                let _ = parse_at(&Site::RepositoryCredentials { container: "c".into() }, &s);
                let _ = Home::of_arn(&s, "eu-west-1");
            }

            #[test]
            fn arn_like_noise_never_panics(s in "arn(:[a-z0-9/_-]{0,12}){0,9}") {
                let _ = parse_value_from(&s);
            }

            #[test]
            fn full_arn_round_trips(n in name(), key in "[a-z]{0,8}", stage in "[A-Z]{0,8}") {
                let arn = format!("arn:aws:secretsmanager:eu-west-1:111122223333:secret:{n}-AbCdEf");
                let r = parse_value_from(&format!("{arn}:{key}:{stage}:")).unwrap();
                let SecretRef::SecretsManager(r) = r else { panic!("not SM") };
                prop_assert_eq!(r.lookup_id(), arn.clone());
                prop_assert_eq!(r.json_key.clone(), (!key.is_empty()).then(|| key.clone()));
                let id = SecretsManagerId::new(&arn, &n).unwrap();
                prop_assert!(r.names_or_panic(&id));
            }

            #[test]
            fn a_name_never_names_a_longer_lookalike(n in name(), extra in "[A-Za-z0-9]{1,10}") {
                let other = format!("{n}-{extra}");
                let id = SecretsManagerId::new(
                    &format!("arn:aws:secretsmanager:eu-west-1:1:secret:{other}-QwErTy"), &other).unwrap();
                let r = parse_value_from(&format!("arn:aws:secretsmanager:eu-west-1:1:secret:{n}")).unwrap();
                let SecretRef::SecretsManager(r) = r else { panic!("not SM") };
                prop_assert!(!r.names(&id, "eu-west-1"));
            }
        }

        impl SmRef {
            fn names_or_panic(&self, id: &SecretsManagerId) -> bool {
                self.names(id, "eu-west-1")
            }
        }
    }
}
