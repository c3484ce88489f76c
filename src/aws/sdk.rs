//! The real implementation of the AWS traits over the AWS SDK for Rust.
//!
//! Credentials and region come from `aws-config`'s default chain (environment, profile, SSO, the
//! ECS task-role endpoint, IMDS), and `AWS_ENDPOINT_URL` is honoured as the SDK honours it, which
//! is how the tests point it at an emulator. Secrets and parameters may live in other regions
//! than the cluster (cross-region ARNs): those clients are built on first use from the same
//! shared configuration.
//!
//! Errors are classified so that only what a retry can fix is retried (throttling, 5xx, timeouts,
//! dropped connections), by the guard: the SDK does not retry the calls the guard paces (see
//! [`guard_retries`]). What cannot be fixed by waiting (no credentials, an endpoint name that
//! does not resolve, a connection refused, a region that is not even a host name) is
//! [`ErrorKind::Setup`]: neither the SDK nor the guard retries it, and its message is one line
//! that names what to set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use chrono::{DateTime, Utc};

use super::{
    all_pages, AwsError, AwsResult, Clients, Controller, Deployment, DeploymentStatus, Ecs,
    ErrorKind, Page, ParameterMeta, ParameterVersion, Parameters, RawRef, RolloutState, SecretMeta,
    SecretVersion, Secrets, Service, Task, TaskDefinition,
};
use crate::reference::Site;

mod s3;
mod schedules;
mod tasks;

/// How the SDK retries on its own (below ecs-reloader's own backoff): `[aws] retry_mode`, read
/// into this when the configuration is loaded, so that a misspelt mode is an error naming its
/// line there rather than a silent `standard` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryMode {
    /// Exponential backoff with jitter on retryable errors.
    Standard,
    /// Standard plus client-side rate limiting that adapts to throttling.
    Adaptive,
}

/// What the SDK configuration takes from ecs-reloader's own configuration.
#[derive(Debug, Clone)]
pub struct SdkSettings {
    /// Overrides the default chain's region (`--region`, `[aws] region`).
    pub region: Option<String>,
    /// The shared-config profile for credentials and region (`--profile`); otherwise
    /// `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
    /// SDK retry mode.
    pub retry_mode: RetryMode,
    /// SDK attempts per call (first try included).
    pub max_attempts: u32,
}

/// The defaults of `[aws] retry_mode` and `max_attempts` too (`config` reads them here).
impl Default for SdkSettings {
    fn default() -> Self {
        SdkSettings {
            region: None,
            profile: None,
            retry_mode: RetryMode::Standard,
            max_attempts: 3,
        }
    }
}

/// The configuration could not produce clients.
#[derive(Debug, thiserror::Error)]
pub enum SdkSetupError {
    /// No region from the configuration, the environment or the profile.
    #[error(
        "no AWS region: set --region, AWS_REGION, a profile region, or [aws] region in the configuration"
    )]
    NoRegion,
    /// The region cannot be part of a host name, so no endpoint can be built for it.
    #[error(
        "`{0}` is not a region name: set --region or AWS_REGION to a region such as us-east-1"
    )]
    BadRegion(String),
    /// `AWS_ENDPOINT_URL` (or a profile's `endpoint_url`) is not an http(s) URL.
    #[error("AWS_ENDPOINT_URL {0:?} is not a URL such as https://ecs.us-east-1.amazonaws.com or http://127.0.0.1:5000")]
    BadEndpoint(String),
}

/// Whether `url` is something the SDK can send requests to (it accepts anything, warns, and
/// fails every call).
fn is_endpoint_url(url: &str) -> bool {
    axum::http::Uri::try_from(url)
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some())
}

/// Whether `region` can stand in an endpoint's host name (what the SDK's endpoint rules require;
/// whether the region exists is only known when its endpoint does not resolve).
fn is_region_name(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 63
        && !region.starts_with('-')
        && !region.ends_with('-')
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Loads the shared SDK configuration and builds the three clients.
pub async fn clients(settings: &SdkSettings) -> Result<Clients, SdkSetupError> {
    clients_from(&load(settings).await)
}

/// Loads the shared SDK configuration: the default chain, with our retry and timeout settings.
pub async fn load(settings: &SdkSettings) -> SdkConfig {
    let retry = match settings.retry_mode {
        RetryMode::Standard => RetryConfig::standard(),
        RetryMode::Adaptive => RetryConfig::adaptive(),
    }
    .with_max_attempts(settings.max_attempts.max(1));
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts)
        .http_client(shared_https_client());
    if let Some(p) = &settings.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &settings.region {
        loader = loader.region(Region::new(r.clone()));
    }
    loader.load().await
}

/// One HTTPS client for every SDK client and credential provider of the process. Left to
/// itself, each SDK client builds its own default one: its own connection pool, and its own TLS
/// configuration with the system's root certificates parsed again. This is the SDK's default
/// client (rustls with aws-lc, the proxy from the environment), built once.
fn shared_https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut conn =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        conn.set_connector_settings(settings.cloned());
        if let Some(c) = components {
            conn.set_sleep_impl(c.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    })
}

/// The clients over an already loaded configuration (tests build one pointing at the emulator).
pub fn clients_from(config: &SdkConfig) -> Result<Clients, SdkSetupError> {
    clients_as(config, None)
}

/// A role to act as in a target account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssumeRole {
    /// The role's ARN.
    pub arn: String,
    /// The external ID its trust policy asks for.
    pub external_id: Option<String>,
    /// The session name (who acted, in the target's CloudTrail).
    pub session_name: String,
}

/// The configuration of one target: `base` (its HTTP client, retry and timeout settings, and
/// its credentials as the source of the role's) in `region`, with the credentials of `role`
/// when there is one. The SDK's `AssumeRoleProvider` gets the role's credentials from STS, and
/// the identity cache refreshes them before they expire; `role` may be shared by several
/// regions' configurations (one session per account).
pub fn target_config(
    base: &SdkConfig,
    region: &str,
    role: Option<&aws_credential_types::provider::SharedCredentialsProvider>,
) -> SdkConfig {
    let mut b = base.to_builder();
    b.set_region(Some(Region::new(region.to_string())));
    if let Some(role) = role {
        b.set_credentials_provider(Some(role.clone()));
    }
    b.build()
}

/// The credentials of `role`, assumed with `base`'s credentials (through STS in `base`'s region
/// and endpoint).
pub async fn assume_role(
    base: &SdkConfig,
    role: &AssumeRole,
) -> aws_credential_types::provider::SharedCredentialsProvider {
    let mut b = aws_config::sts::AssumeRoleProvider::builder(role.arn.clone())
        .session_name(role.session_name.clone())
        .configure(base);
    if let Some(id) = &role.external_id {
        b = b.external_id(id.clone());
    }
    aws_credential_types::provider::SharedCredentialsProvider::new(b.build().await)
}

/// [`clients_from`], for clients that act as `role` (named in what a refused `sts:AssumeRole`
/// says).
pub(crate) fn clients_as(config: &SdkConfig, role: Option<&str>) -> Result<Clients, SdkSetupError> {
    let region = config
        .region()
        .map(|r| r.to_string())
        .ok_or(SdkSetupError::NoRegion)?;
    if !is_region_name(&region) {
        return Err(SdkSetupError::BadRegion(region));
    }
    // The SDK drops an invalid AWS_ENDPOINT_URL from the shared configuration with a warning,
    // yet its clients still read the variable and then fail every call.
    let from_env = std::env::var("AWS_ENDPOINT_URL").ok();
    for url in config.endpoint_url().into_iter().chain(from_env.as_deref()) {
        if !is_endpoint_url(url) {
            return Err(SdkSetupError::BadEndpoint(url.to_string()));
        }
    }
    let shared = Arc::new(Shared {
        config: config.clone(),
        role: role.map(str::to_string),
        regional_sm: Mutex::default(),
        regional_ssm: Mutex::default(),
        regional_ecr: Mutex::default(),
    });
    let ecs = aws_sdk_ecs::config::Builder::from(config)
        .retry_classifier(NoRetryWhenUnreachable)
        .retry_config(guard_retries())
        .build();
    let ecs = Arc::new(SdkEcs {
        client: aws_sdk_ecs::Client::from_conf(ecs),
        place: Place {
            role: role.map(str::to_string),
            ..Place::of(config, &region)
        },
    });
    Ok(Clients {
        tasks: ecs.clone(),
        ecs,
        secrets: Arc::new(SdkSecrets(shared.clone())),
        codedeploy: Arc::new(SdkCodeDeploy {
            client: aws_sdk_codedeploy::Client::from_conf(
                aws_sdk_codedeploy::config::Builder::from(config)
                    .retry_classifier(NoRetryWhenUnreachable)
                    .retry_config(guard_retries())
                    .build(),
            ),
            place: Place {
                role: role.map(str::to_string),
                ..Place::of(config, &region)
            },
        }),
        registry: Arc::new(SdkRegistry(shared.clone())),
        parameters: Arc::new(SdkParameters(shared)),
        objects: Arc::new(s3::SdkObjects::new(config, role)),
        schedules: Arc::new(schedules::SdkSchedules::new(config, role)),
        identity: Arc::new(SdkIdentity(aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(config)
                .retry_classifier(NoRetryWhenUnreachable)
                .build(),
        ))),
        region,
    })
}

/// `sts:GetCallerIdentity`: allowed to every principal, whatever its policies say.
struct SdkIdentity(aws_sdk_sts::Client);

#[async_trait]
impl crate::aws::Identity for SdkIdentity {
    async fn account(&self) -> AwsResult<String> {
        let out = self
            .0
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| map_err("sts:GetCallerIdentity", "-", e))?;
        out.account()
            .filter(|a| !a.is_empty())
            .map(String::from)
            .ok_or_else(|| {
                AwsError::new(
                    "sts:GetCallerIdentity",
                    "-",
                    ErrorKind::Other,
                    "the answer names no account",
                )
            })
    }
}

struct Shared {
    config: SdkConfig,
    role: Option<String>,
    regional_sm: Mutex<HashMap<String, aws_sdk_secretsmanager::Client>>,
    regional_ssm: Mutex<HashMap<String, aws_sdk_ssm::Client>>,
    regional_ecr: Mutex<HashMap<String, aws_sdk_ecr::Client>>,
}

/// CodeDeploy in the clients' region (a service is deployed by a group of its own region).
struct SdkCodeDeploy {
    client: aws_sdk_codedeploy::Client,
    place: Place,
}

#[async_trait]
impl crate::aws::CodeDeploy for SdkCodeDeploy {
    async fn list_applications(&self, next: Option<String>) -> AwsResult<Page<String>> {
        let out = self
            .client
            .list_applications()
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| map_err_at("codedeploy:ListApplications", "-", &self.place, e))?;
        Ok(Page {
            items: out.applications().to_vec(),
            next: out.next_token().map(str::to_string),
        })
    }

    async fn list_deployment_groups(
        &self,
        application: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>> {
        let out = self
            .client
            .list_deployment_groups()
            .application_name(application)
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| {
                map_err_at(
                    "codedeploy:ListDeploymentGroups",
                    application,
                    &self.place,
                    e,
                )
            })?;
        Ok(Page {
            items: out.deployment_groups().to_vec(),
            next: out.next_token().map(str::to_string),
        })
    }

    async fn get_deployment_group(
        &self,
        application: &str,
        group: &str,
    ) -> AwsResult<crate::aws::DeploymentGroup> {
        let resource = format!("{application}/{group}");
        let out = self
            .client
            .get_deployment_group()
            .application_name(application)
            .deployment_group_name(group)
            .send()
            .await
            .map_err(|e| map_err_at("codedeploy:GetDeploymentGroup", &resource, &self.place, e))?;
        let services = out
            .deployment_group_info()
            .map(|g| {
                g.ecs_services()
                    .iter()
                    .filter_map(|s| {
                        Some((s.cluster_name()?.to_string(), s.service_name()?.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(crate::aws::DeploymentGroup {
            application: application.to_string(),
            name: group.to_string(),
            services,
        })
    }

    async fn create_deployment(
        &self,
        application: &str,
        group: &str,
        appspec: &str,
    ) -> AwsResult<String> {
        use aws_sdk_codedeploy::types::{AppSpecContent, RevisionLocation, RevisionLocationType};
        let resource = format!("{application}/{group}");
        let revision = RevisionLocation::builder()
            .revision_type(RevisionLocationType::AppSpecContent)
            .app_spec_content(AppSpecContent::builder().content(appspec).build())
            .build();
        let out = self
            .client
            .create_deployment()
            .application_name(application)
            .deployment_group_name(group)
            .revision(revision)
            .description(
                "ecs-reloader: the same revision again, so that new tasks resolve changed secrets",
            )
            // Not idempotent: a retry after a lost answer would deploy twice.
            .customize()
            .config_override(
                aws_sdk_codedeploy::config::Builder::default()
                    .retry_config(RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| map_err_at("codedeploy:CreateDeployment", &resource, &self.place, e))?;
        out.deployment_id().map(str::to_string).ok_or_else(|| {
            AwsError::new(
                "codedeploy:CreateDeployment",
                resource,
                ErrorKind::Other,
                "no deployment id in the answer",
            )
        })
    }

    async fn get_deployment(&self, id: &str) -> AwsResult<crate::aws::CodeDeployStatus> {
        use aws_sdk_codedeploy::types::DeploymentStatus as S;
        let out = self
            .client
            .get_deployment()
            .deployment_id(id)
            .send()
            .await
            .map_err(|e| map_err_at("codedeploy:GetDeployment", id, &self.place, e))?;
        let info = out.deployment_info();
        let error = info
            .and_then(|i| i.error_information())
            .and_then(|e| e.message())
            .unwrap_or("no error information")
            .to_string();
        Ok(match info.and_then(|i| i.status()) {
            Some(S::Succeeded) => crate::aws::CodeDeployStatus::Succeeded,
            Some(S::Failed) => crate::aws::CodeDeployStatus::Failed(format!("failed: {error}")),
            Some(S::Stopped) => crate::aws::CodeDeployStatus::Failed(format!("stopped: {error}")),
            Some(other) => crate::aws::CodeDeployStatus::InProgress(other.as_str().to_string()),
            None => crate::aws::CodeDeployStatus::InProgress("unknown".into()),
        })
    }

    async fn failed_since(
        &self,
        application: &str,
        group: &str,
        since: DateTime<Utc>,
    ) -> AwsResult<Vec<String>> {
        use aws_sdk_codedeploy::types::{DeploymentStatus as S, TimeRange};
        let resource = format!("{application}/{group}");
        let out = self
            .client
            .list_deployments()
            .application_name(application)
            .deployment_group_name(group)
            .include_only_statuses(S::Failed)
            .include_only_statuses(S::Stopped)
            .create_time_range(
                TimeRange::builder()
                    .start(aws_smithy_types::DateTime::from_secs(since.timestamp()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| map_err_at("codedeploy:ListDeployments", &resource, &self.place, e))?;
        Ok(out.deployments().to_vec())
    }
}

/// ECR, per region (an image may live in another region than its service).
struct SdkRegistry(Arc<Shared>);

#[async_trait]
impl crate::aws::Registry for SdkRegistry {
    async fn describe_images(
        &self,
        region: &str,
        registry: &str,
        repository: &str,
        tags: &[String],
    ) -> AwsResult<Vec<crate::aws::TaggedImage>> {
        let client = {
            let mut map = self
                .0
                .regional_ecr
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.entry(region.to_string())
                .or_insert_with(|| {
                    aws_sdk_ecr::Client::from_conf(
                        aws_sdk_ecr::config::Builder::from(&self.0.config)
                            .region(Region::new(region.to_string()))
                            .retry_classifier(NoRetryWhenUnreachable)
                            .retry_config(guard_retries())
                            .build(),
                    )
                })
                .clone()
        };
        let ids = tags
            .iter()
            .map(|t| {
                aws_sdk_ecr::types::ImageIdentifier::builder()
                    .image_tag(t)
                    .build()
            })
            .collect();
        let out = client
            .describe_images()
            .registry_id(registry)
            .repository_name(repository)
            .set_image_ids(Some(ids))
            .send()
            .await
            .map_err(|e| map_err_at("ecr:DescribeImages", repository, &self.0.place(region), e))?;
        Ok(out
            .image_details()
            .iter()
            .flat_map(|d| {
                let digest = d.image_digest().unwrap_or_default().to_string();
                d.image_tags()
                    .iter()
                    .filter(|t| tags.contains(t))
                    .map(move |t| crate::aws::TaggedImage {
                        tag: t.clone(),
                        digest: digest.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}

impl Shared {
    fn sm(&self, region: &str) -> aws_sdk_secretsmanager::Client {
        let mut map = self.regional_sm.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_sdk_secretsmanager::config::Builder::from(&self.config)
                    .region(Region::new(region.to_string()))
                    .retry_classifier(NoRetryWhenUnreachable)
                    .retry_config(guard_retries())
                    .build();
                aws_sdk_secretsmanager::Client::from_conf(conf)
            })
            .clone()
    }

    fn ssm(&self, region: &str) -> aws_sdk_ssm::Client {
        let mut map = self.regional_ssm.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_sdk_ssm::config::Builder::from(&self.config)
                    .region(Region::new(region.to_string()))
                    .retry_classifier(NoRetryWhenUnreachable)
                    .retry_config(guard_retries())
                    .build();
                aws_sdk_ssm::Client::from_conf(conf)
            })
            .clone()
    }

    fn place(&self, region: &str) -> Place {
        Place {
            role: self.role.clone(),
            ..Place::of(&self.config, region)
        }
    }
}

fn classify(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    match code {
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "ThrottledException"
            | "RequestThrottled",
        ) => ErrorKind::Throttled,
        Some(
            "ResourceNotFoundException"
            | "ClusterNotFoundException"
            | "ServiceNotFoundException"
            | "ParameterNotFound"
            | "ImageNotFoundException"
            | "RepositoryNotFoundException"
            | "DeploymentGroupDoesNotExistException"
            | "DeploymentDoesNotExistException"
            | "ApplicationDoesNotExistException",
        ) => ErrorKind::NotFound,
        Some(
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "ExpiredTokenException"
            | "InvalidSignatureException",
        ) => ErrorKind::AccessDenied,
        Some(
            "ServerException" | "InternalServiceError" | "InternalFailure" | "ServiceUnavailable",
        ) => ErrorKind::Transient,
        _ if status.is_some_and(|s| s >= 500) => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

/// Where a client's calls go: enough to say what to fix when they cannot get there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Place {
    /// The region the client calls.
    pub region: Option<String>,
    /// `AWS_ENDPOINT_URL` (or `endpoint_url` in the profile), when set.
    pub endpoint_url: Option<String>,
    /// The role the client's credentials come from (a target's), when it assumes one.
    pub role: Option<String>,
}

impl Place {
    fn of(config: &SdkConfig, region: &str) -> Place {
        Place {
            region: Some(region.to_string()),
            endpoint_url: config.endpoint_url().map(str::to_string),
            role: None,
        }
    }

    /// The host a call of `operation` (`ecs:ListClusters`) goes to, as a person would look it up.
    fn host(&self, operation: &str) -> String {
        let service = operation.split(':').next().unwrap_or(operation);
        match (&self.endpoint_url, &self.region) {
            (Some(url), _) => format!("{url} (AWS_ENDPOINT_URL)"),
            (None, Some(region)) => format!("{service}.{region}.amazonaws.com"),
            (None, None) => format!("the {service} endpoint"),
        }
    }
}

/// Why a call could not be made at all: what [`ErrorKind::Setup`] stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SetupCause {
    /// The default chain found no credentials anywhere.
    NoCredentials,
    /// A credential provider did not answer in time (typically instance metadata off EC2).
    CredentialsTimedOut,
    /// A credential provider is configured but failed (a missing profile, an expired SSO
    /// session, a role that cannot be assumed).
    Credentials(String),
    /// The endpoint's host name does not resolve (an unknown region, a wrong endpoint URL).
    Dns,
    /// The endpoint refused the connection.
    Refused,
    /// No route to the endpoint.
    NoRoute,
}

/// What a credentials error says, when one is among `err`'s sources.
fn why_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return causes(c);
        }
        next = e.source();
    }
    String::new()
}

/// Walks an error's sources for a cause no retry can fix.
fn setup_cause(err: &(dyn std::error::Error + 'static)) -> Option<SetupCause> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(match c {
                CredentialsError::CredentialsNotLoaded(_) => SetupCause::NoCredentials,
                CredentialsError::ProviderTimedOut(_) => SetupCause::CredentialsTimedOut,
                other => SetupCause::Credentials(causes(other)),
            });
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => return Some(SetupCause::Refused),
                K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                    return Some(SetupCause::NoRoute)
                }
                // std reports a failed getaddrinfo with this prefix (and no stable kind).
                _ if io
                    .to_string()
                    .starts_with("failed to lookup address information") =>
                {
                    return Some(SetupCause::Dns)
                }
                _ => {}
            }
        }
        // hyper-util's connector names a failed lookup so.
        if e.to_string() == "dns error" {
            return Some(SetupCause::Dns);
        }
        next = e.source();
    }
    None
}

impl SetupCause {
    /// One line: what is wrong, and what to set.
    fn message(&self, operation: &str, place: &Place) -> String {
        let host = place.host(operation);
        let region = place.region.as_deref().unwrap_or("?");
        match self {
            SetupCause::NoCredentials => "no AWS credentials found (looked in the environment, the shared \
                config and credentials files, web identity, the ECS container endpoint and instance \
                metadata): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a profile with \
                --profile or AWS_PROFILE, or run with a task role or instance profile"
                .into(),
            SetupCause::CredentialsTimedOut => "loading AWS credentials timed out (instance metadata \
                or the container endpoint did not answer): outside AWS set AWS_ACCESS_KEY_ID and \
                AWS_SECRET_ACCESS_KEY or --profile, and AWS_EC2_METADATA_DISABLED=true"
                .into(),
            SetupCause::Credentials(why) => format!(
                "cannot load AWS credentials: {why}: check --profile / AWS_PROFILE and the shared \
                 config files (for SSO: aws sso login)"
            ),
            SetupCause::Dns if place.endpoint_url.is_some() => {
                format!("cannot resolve the host of {host}: check AWS_ENDPOINT_URL")
            }
            SetupCause::Dns => format!(
                "cannot resolve {host}: is `{region}` a region? Check --region / AWS_REGION, and \
                 this machine's DNS (in a VPC: DNS resolution, VPC endpoints or a NAT gateway)"
            ),
            SetupCause::Refused if place.endpoint_url.is_some() => {
                format!("connection refused by {host}: is the endpoint running? Check AWS_ENDPOINT_URL")
            }
            SetupCause::Refused => format!(
                "connection refused by {host}: check the network path (HTTPS_PROXY, firewall, VPC endpoints)"
            ),
            SetupCause::NoRoute => format!(
                "no route to {host}: a private subnet needs a NAT gateway or VPC endpoints for \
                 the AWS APIs (see README, Deploying)"
            ),
        }
    }
}

/// The retry configuration of every client whose calls the guard paces (ECS, Secrets Manager,
/// SSM, ECR, CodeDeploy): none. The guard ([`crate::aws::guard`]) retries those calls itself,
/// after its own backoff and through its own buckets, so that each throttle reaches the adaptive
/// pacing (which cuts that call kind's rate) instead of being absorbed by the SDK's retries, and
/// so that a retried call takes a token like any other. The clients the guard does not pace
/// (SQS, EventBridge, DynamoDB, STS) keep `[aws] retry_mode` and `max_attempts`.
fn guard_retries() -> RetryConfig {
    RetryConfig::disabled()
}

/// Keeps the SDK from retrying what the guard would not retry either: its own standard retry
/// treats every I/O error (a refused connection, a failed lookup) as transient, which would only
/// delay the message by seconds per call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoRetryWhenUnreachable;

impl ClassifyRetry for NoRetryWhenUnreachable {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.output_or_error() {
            Some(Err(e)) => match e.as_connector_error() {
                Some(c) if setup_cause(c).is_some() => RetryAction::RetryForbidden,
                _ => RetryAction::NoActionIndicated,
            },
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "ecs-reloader: unreachable endpoints and missing credentials are not retried"
    }

    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// An error and its sources as one line, without repeats and without debug formatting (the SDK's
/// `DisplayErrorContext` ends with a `{:?}` dump of the whole error).
pub fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Maps an SDK error to an [`AwsError`] naming the call and the resource.
pub(crate) fn map_err<E>(
    operation: &'static str,
    resource: &str,
    err: SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    map_err_at(operation, resource, &Place::default(), err)
}

/// [`map_err`] for a client whose region and endpoint are known, so that a setup error can name
/// the host it could not reach.
pub(crate) fn map_err_at<E>(
    operation: &'static str,
    resource: &str,
    place: &Place,
    err: SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    if let SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) = &err {
        if let (Some(role), Some(SetupCause::Credentials(_) | SetupCause::NoCredentials)) =
            (&place.role, setup_cause(&err).as_ref())
        {
            let why = if why_text(&err).is_empty() {
                "no credentials to assume it with".to_string()
            } else {
                why_text(&err)
            };
            return AwsError::new(
                "sts:AssumeRole",
                role.clone(),
                ErrorKind::Setup,
                format!(
                    "cannot assume {role} (needed for {operation} {resource}): {why}: the role's trust \
                     policy must allow the operator's role to call sts:AssumeRole (with the external \
                     ID configured for the target, if any), and the operator's own IAM policy must \
                     allow sts:AssumeRole on this role (infra/ecs-reloader-member.yaml creates such a role)"
                ),
            );
        }
        if let Some(cause) = setup_cause(&err) {
            return AwsError::new(
                operation,
                resource,
                ErrorKind::Setup,
                cause.message(operation, place),
            );
        }
    }
    let kind = match &err {
        // As the SDK's own retry classifier sees a failed dispatch: I/O errors (a dropped
        // connection) and timeouts may pass; an error raised before anything was sent (signing,
        // the endpoint, an interceptor) will not.
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => ErrorKind::Transient,
        SdkError::DispatchFailure(d) => match d.as_other() {
            Some(aws_smithy_types::retry::ErrorKind::ThrottlingError) => ErrorKind::Throttled,
            Some(_) => ErrorKind::Transient,
            None => ErrorKind::Other,
        },
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => ErrorKind::Transient,
        _ => classify(err.code(), status),
    };
    let message = match (err.code(), err.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => causes(&err),
    };
    AwsError::new(operation, resource, kind, message)
}

fn to_chrono(t: Option<&aws_smithy_types::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

struct SdkEcs {
    client: aws_sdk_ecs::Client,
    place: Place,
}

fn deployment(d: &aws_sdk_ecs::types::Deployment) -> Option<Deployment> {
    Some(Deployment {
        id: d.id()?.to_string(),
        status: DeploymentStatus::from_ecs(d.status().unwrap_or_default()),
        task_definition: d.task_definition().unwrap_or_default().to_string(),
        created_at: to_chrono(d.created_at())?,
        rollout_state: d
            .rollout_state()
            .map(|s| RolloutState::from_ecs(s.as_str())),
        rollout_state_reason: d.rollout_state_reason().map(str::to_string),
        desired_count: d.desired_count(),
        running_count: d.running_count(),
        failed_tasks: d.failed_tasks(),
    })
}

/// `CODE_DEPLOY` and `EXTERNAL` services have no deployments of their own: their task sets carry
/// what runs (the task definition, since when), read here as deployments. The `PRIMARY` task set
/// (the one serving production traffic; the newest when the controller named none) is the
/// primary, steady by definition: a task set scaling is no rollout. A newer one beside it is a
/// rollout in flight (a CodeDeploy replacement before traffic moves), in progress until it is
/// steady; a draining one is on its way out.
fn task_sets(sets: &[aws_sdk_ecs::types::TaskSet]) -> Vec<Deployment> {
    let mut out: Vec<Deployment> = sets
        .iter()
        .filter(|t| t.status() != Some("DRAINING"))
        .filter_map(|t| {
            Some(Deployment {
                id: t.id()?.to_string(),
                status: match t.status() {
                    Some("PRIMARY") => DeploymentStatus::Primary,
                    _ => DeploymentStatus::Active,
                },
                task_definition: t.task_definition().unwrap_or_default().to_string(),
                created_at: to_chrono(t.created_at())?,
                rollout_state: Some(match t.stability_status().map(|s| s.as_str()) {
                    Some("STEADY_STATE") => RolloutState::Completed,
                    _ => RolloutState::InProgress,
                }),
                rollout_state_reason: None,
                desired_count: t.computed_desired_count(),
                running_count: t.running_count(),
                failed_tasks: 0,
            })
        })
        .collect();
    if !out.iter().any(Deployment::is_primary) {
        if let Some(newest) = out.iter_mut().max_by_key(|d| d.created_at) {
            newest.status = DeploymentStatus::Primary;
        }
    }
    let primary_at = out.iter().find(|d| d.is_primary()).map(|d| d.created_at);
    for d in &mut out {
        if d.is_primary() || primary_at.is_some_and(|p| d.created_at <= p) {
            // The primary, and an older set beside it (the original, awaiting its
            // termination): no rollout of theirs is in flight.
            d.rollout_state = Some(RolloutState::Completed);
        }
    }
    out
}

/// How long a blue/green, linear or canary deployment waits by design: the bake time after the
/// traffic moved, plus each linear step's bake or the canary's bake before the rest moves.
fn designed_wait(c: &aws_sdk_ecs::types::DeploymentConfiguration) -> Option<std::time::Duration> {
    let minutes = |m: Option<i32>| m.and_then(|m| u64::try_from(m).ok()).unwrap_or(0);
    let bake = minutes(c.bake_time_in_minutes());
    let linear = c.linear_configuration().map_or(0, |l| {
        let step = l.step_percent().filter(|p| *p > 0.0).unwrap_or(100.0);
        // The number of steps to 100 %, each baked.
        let steps = (100.0 / step).ceil().clamp(1.0, 100.0) as u64;
        steps * minutes(l.step_bake_time_in_minutes())
    });
    let canary = c
        .canary_configuration()
        .map_or(0, |k| minutes(k.canary_bake_time_in_minutes()));
    let total = bake + linear + canary;
    (total > 0).then(|| std::time::Duration::from_secs(total * 60))
}

fn service(s: &aws_sdk_ecs::types::Service) -> Service {
    use aws_sdk_ecs::types::DeploymentControllerType as T;
    let controller = match s.deployment_controller().map(|c| c.r#type()) {
        Some(T::CodeDeploy) => Controller::CodeDeploy,
        Some(T::External) => Controller::External,
        _ => Controller::Ecs,
    };
    let tags: BTreeMap<String, String> = s
        .tags()
        .iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect();
    let config = s.deployment_configuration();
    let shape = crate::aws::Shape {
        strategy: config
            .and_then(|c| c.strategy())
            .map(|st| crate::aws::EcsStrategy::from_ecs(st.as_str()))
            .unwrap_or_default(),
        bake_time: config.and_then(designed_wait),
        load_balancers: s
            .load_balancers()
            .iter()
            .filter_map(|lb| {
                Some(crate::aws::LoadBalancer {
                    container_name: lb.container_name()?.to_string(),
                    container_port: lb.container_port()?,
                })
            })
            .collect(),
    };
    // Sized exactly: collected through `filter_map`, a vector starts at four deployments (416
    // bytes) where a service has one, for each of ten thousand services of a resync.
    let mut deployments: Vec<Deployment> = Vec::with_capacity(s.deployments().len());
    deployments.extend(s.deployments().iter().filter_map(deployment));
    if controller != Controller::Ecs && deployments.is_empty() {
        deployments = task_sets(s.task_sets());
    }
    Service {
        arn: s.service_arn().unwrap_or_default().to_string(),
        name: s.service_name().unwrap_or_default().to_string(),
        cluster_arn: s.cluster_arn().unwrap_or_default().to_string(),
        status: s.status().unwrap_or_default().to_string(),
        task_definition: s.task_definition().unwrap_or_default().to_string(),
        desired_count: s.desired_count(),
        controller,
        shape,
        deployments,
        tags,
    }
}

#[async_trait]
impl Ecs for SdkEcs {
    async fn list_clusters(&self, next: Option<String>) -> AwsResult<Page<String>> {
        let out = self
            .client
            .list_clusters()
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| map_err_at("ecs:ListClusters", "-", &self.place, e))?;
        Ok(Page {
            items: out.cluster_arns().to_vec(),
            next: out.next_token().map(str::to_string),
        })
    }

    async fn list_services(&self, cluster: &str, next: Option<String>) -> AwsResult<Page<String>> {
        let out = self
            .client
            .list_services()
            .cluster(cluster)
            .max_results(100)
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| map_err_at("ecs:ListServices", cluster, &self.place, e))?;
        Ok(Page {
            items: out.service_arns().to_vec(),
            next: out.next_token().map(str::to_string),
        })
    }

    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> AwsResult<Vec<Service>> {
        let out = self
            .client
            .describe_services()
            .cluster(cluster)
            .set_services(Some(services.to_vec()))
            .include(aws_sdk_ecs::types::ServiceField::Tags)
            .send()
            .await
            .map_err(|e| map_err_at("ecs:DescribeServices", cluster, &self.place, e))?;
        for f in out.failures() {
            if f.reason() != Some("MISSING") {
                tracing::warn!(
                    cluster,
                    arn = f.arn().unwrap_or("-"),
                    reason = f.reason().unwrap_or("-"),
                    "DescribeServices failure"
                );
            }
        }
        Ok(out.services().iter().map(service).collect())
    }

    async fn describe_task_definition(&self, arn: &str) -> AwsResult<TaskDefinition> {
        let out = self
            .client
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .map_err(|e| map_err_at("ecs:DescribeTaskDefinition", arn, &self.place, e))?;
        let mut refs = Vec::new();
        let mut images = Vec::new();
        if let Some(td) = out.task_definition() {
            for c in td.container_definitions() {
                let container = c.name().unwrap_or("?").to_string();
                if let Some(image) = c.image() {
                    images.push((container.clone(), image.to_string()));
                }
                for s in c.secrets() {
                    refs.push(RawRef {
                        site: Site::Secret {
                            container: container.clone(),
                            name: s.name().to_string(),
                        },
                        value: s.value_from().to_string(),
                    });
                }
                if let Some(lc) = c.log_configuration() {
                    for s in lc.secret_options() {
                        refs.push(RawRef {
                            site: Site::LogOption {
                                container: container.clone(),
                                name: s.name().to_string(),
                            },
                            value: s.value_from().to_string(),
                        });
                    }
                }
                for f in c.environment_files() {
                    refs.push(RawRef {
                        site: Site::EnvironmentFile {
                            container: container.clone(),
                        },
                        value: f.value().to_string(),
                    });
                }
                if let Some(rc) = c.repository_credentials() {
                    refs.push(RawRef {
                        site: Site::RepositoryCredentials {
                            container: container.clone(),
                        },
                        value: rc.credentials_parameter().to_string(),
                    });
                }
            }
        }
        Ok(TaskDefinition {
            arn: arn.to_string(),
            refs,
            images,
        })
    }

    async fn force_new_deployment(
        &self,
        cluster: &str,
        service_name: &str,
    ) -> AwsResult<Deployment> {
        let resource = format!("{cluster}/{service_name}");
        let out = self
            .client
            .update_service()
            .cluster(cluster)
            .service(service_name)
            .force_new_deployment(true)
            // Not idempotent: a retry after a lost answer would force a second deployment.
            // The guard retries instead, after checking whether the first attempt took effect.
            .customize()
            .config_override(
                aws_sdk_ecs::config::Builder::default().retry_config(RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| map_err_at("ecs:UpdateService", &resource, &self.place, e))?;
        out.service()
            .and_then(|s| {
                s.deployments()
                    .iter()
                    .filter_map(deployment)
                    .find(|d| d.is_primary())
            })
            .ok_or_else(|| {
                AwsError::new(
                    "ecs:UpdateService",
                    resource,
                    ErrorKind::Other,
                    "no primary deployment in the answer",
                )
            })
    }

    async fn list_tasks(
        &self,
        cluster: &str,
        service: &str,
        next: Option<String>,
    ) -> AwsResult<Page<String>> {
        let resource = format!("{cluster}/{service}");
        let out = self
            .client
            .list_tasks()
            .cluster(cluster)
            .service_name(service)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| map_err_at("ecs:ListTasks", &resource, &self.place, e))?;
        Ok(Page {
            items: out.task_arns().to_vec(),
            next: out.next_token().map(str::to_string),
        })
    }

    async fn describe_tasks(&self, cluster: &str, tasks: &[String]) -> AwsResult<Vec<Task>> {
        let out = self
            .client
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(tasks.to_vec()))
            .send()
            .await
            .map_err(|e| map_err_at("ecs:DescribeTasks", cluster, &self.place, e))?;
        Ok(out
            .tasks()
            .iter()
            .filter_map(|t| {
                Some(Task {
                    arn: t.task_arn()?.to_string(),
                    started_at: to_chrono(t.started_at()),
                    digests: t
                        .containers()
                        .iter()
                        .filter_map(|c| {
                            Some((c.name()?.to_string(), c.image_digest()?.to_string()))
                        })
                        .collect(),
                })
            })
            .collect())
    }

    async fn service_deployments(
        &self,
        cluster: &str,
        service: &str,
        since: DateTime<Utc>,
    ) -> AwsResult<Vec<crate::aws::ServiceDeployment>> {
        let resource = format!("{cluster}/{service}");
        let after = aws_smithy_types::DateTime::from_secs(since.timestamp());
        let listed = self
            .client
            .list_service_deployments()
            .cluster(cluster)
            .service(service)
            .created_at(
                aws_sdk_ecs::types::CreatedAt::builder()
                    .after(after)
                    .build(),
            )
            .max_results(20)
            .send()
            .await
            .map_err(|e| map_err_at("ecs:ListServiceDeployments", &resource, &self.place, e))?;
        let arns: Vec<String> = listed
            .service_deployments()
            .iter()
            .filter_map(|b| b.service_deployment_arn().map(str::to_string))
            .collect();
        if arns.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .describe_service_deployments()
            .set_service_deployment_arns(Some(arns))
            .send()
            .await
            .map_err(|e| map_err_at("ecs:DescribeServiceDeployments", &resource, &self.place, e))?;
        let mut found: Vec<crate::aws::ServiceDeployment> = out
            .service_deployments()
            .iter()
            .filter_map(|d| {
                let awaiting = d
                    .lifecycle_hook_details()
                    .iter()
                    .find(|h| {
                        h.status()
                            == Some(&aws_sdk_ecs::types::DeploymentLifecycleHookStatus::AwaitingAction)
                    })
                    .map(|h| {
                        format!(
                            "lifecycle hook {} ({}) awaits action (ContinueServiceDeployment) at {}",
                            h.hook_id().unwrap_or("?"),
                            h.target_type().map_or("?", |t| t.as_str()),
                            d.lifecycle_stage().map_or("?", |s| s.as_str())
                        )
                    });
                Some(crate::aws::ServiceDeployment {
                    arn: d.service_deployment_arn()?.to_string(),
                    created_at: to_chrono(d.created_at())?,
                    status: d.status().map(|s| s.as_str().to_string()).unwrap_or_default(),
                    status_reason: d.status_reason().map(str::to_string),
                    stage: d.lifecycle_stage().map(|s| s.as_str().to_string()),
                    awaiting,
                    revision: d
                        .target_service_revision()
                        .and_then(|r| r.arn())
                        .map(str::to_string),
                })
            })
            .collect();
        found.sort_by_key(|d| std::cmp::Reverse(d.created_at));
        Ok(found)
    }
}

struct SdkSecrets(Arc<Shared>);

#[async_trait]
impl Secrets for SdkSecrets {
    async fn describe_secret(&self, region: &str, id: &str) -> AwsResult<SecretMeta> {
        let out = self
            .0
            .sm(region)
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| {
                map_err_at(
                    "secretsmanager:DescribeSecret",
                    id,
                    &self.0.place(region),
                    e,
                )
            })?;
        let version_stages = out
            .version_ids_to_stages()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(SecretMeta {
            arn: out.arn().unwrap_or(id).to_string(),
            name: out.name().unwrap_or(id).to_string(),
            last_changed: to_chrono(out.last_changed_date()),
            last_rotated: to_chrono(out.last_rotated_date()),
            version_stages,
            deleted: to_chrono(out.deleted_date()),
        })
    }

    async fn list_secret_versions(
        &self,
        region: &str,
        arn: &str,
        next: Option<String>,
    ) -> AwsResult<Page<SecretVersion>> {
        let out = self
            .0
            .sm(region)
            .list_secret_version_ids()
            .secret_id(arn)
            .include_deprecated(false)
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| {
                map_err_at(
                    "secretsmanager:ListSecretVersionIds",
                    arn,
                    &self.0.place(region),
                    e,
                )
            })?;
        let items = out
            .versions()
            .iter()
            .filter_map(|v| {
                Some(SecretVersion {
                    id: v.version_id()?.to_string(),
                    created: to_chrono(v.created_date()),
                    stages: v.version_stages().to_vec(),
                })
            })
            .collect();
        Ok(Page {
            items,
            next: out.next_token().map(str::to_string),
        })
    }
}

struct SdkParameters(Arc<Shared>);

#[async_trait]
impl Parameters for SdkParameters {
    async fn describe_parameters(
        &self,
        region: &str,
        names: &[String],
    ) -> AwsResult<Vec<ParameterMeta>> {
        let resource = names.join(",");
        let filter = aws_sdk_ssm::types::ParameterStringFilter::builder()
            .key("Name")
            .option("Equals")
            .set_values(Some(names.to_vec()))
            .build()
            .map_err(|e| {
                AwsError::new(
                    "ssm:DescribeParameters",
                    &resource,
                    ErrorKind::Other,
                    e.to_string(),
                )
            })?;
        let client = self.0.ssm(region);
        let place = self.0.place(region);
        all_pages(|next| {
            let client = client.clone();
            let filter = filter.clone();
            let resource = resource.clone();
            let place = place.clone();
            async move {
                let out = client
                    .describe_parameters()
                    .parameter_filters(filter)
                    .set_next_token(next)
                    .send()
                    .await
                    .map_err(|e| map_err_at("ssm:DescribeParameters", &resource, &place, e))?;
                let items = out
                    .parameters()
                    .iter()
                    .filter_map(|p| {
                        Some(ParameterMeta {
                            name: p.name()?.to_string(),
                            last_modified: to_chrono(p.last_modified_date()),
                            version: p.version(),
                        })
                    })
                    .collect();
                Ok(Page {
                    items,
                    next: out.next_token().map(str::to_string),
                })
            }
        })
        .await
    }

    async fn parameter_history(
        &self,
        region: &str,
        name: &str,
    ) -> AwsResult<Vec<ParameterVersion>> {
        let client = self.0.ssm(region);
        let place = self.0.place(region);
        all_pages(|next| {
            let client = client.clone();
            let place = place.clone();
            async move {
                let out = client
                    .get_parameter_history()
                    .name(name)
                    // Never decrypted: a SecureString's value stays ciphertext. A String's value
                    // comes back in plain text whatever we ask, which is why this call is made
                    // only for label references that need it.
                    .with_decryption(false)
                    .max_results(50)
                    .set_next_token(next)
                    .send()
                    .await
                    .map_err(|e| map_err_at("ssm:GetParameterHistory", name, &place, e))?;
                // Values are dropped here, on receipt: only version, date and labels leave this
                // function, and nothing of the answer is logged.
                let items = out
                    .parameters()
                    .iter()
                    .map(|p| ParameterVersion {
                        version: p.version(),
                        last_modified: to_chrono(p.last_modified_date()),
                        labels: p.labels().to_vec(),
                    })
                    .collect();
                Ok(Page {
                    items,
                    next: out.next_token().map(str::to_string),
                })
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::operation::list_clusters::ListClustersError;
    use aws_smithy_runtime_api::client::interceptors::context::Input;
    use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
    use aws_smithy_runtime_api::client::result::ConnectorError;

    /// What hyper-util's connector wraps a failed lookup in: "dns error", then getaddrinfo's.
    #[derive(Debug)]
    struct HyperConnectError(&'static str, std::io::Error);
    impl std::fmt::Display for HyperConnectError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for HyperConnectError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    fn refused() -> ConnectorError {
        ConnectorError::io(Box::new(HyperConnectError(
            "tcp connect error",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )))
    }

    fn dns() -> ConnectorError {
        ConnectorError::io(Box::new(HyperConnectError(
            "dns error",
            std::io::Error::other(
                "failed to lookup address information: Name or service not known",
            ),
        )))
    }

    fn reset() -> ConnectorError {
        ConnectorError::io(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
    }

    fn no_credentials() -> ConnectorError {
        ConnectorError::other(
            Box::new(CredentialsError::not_loaded(
                "no credentials found in chain. Attempted:\n  Environment: not set\n  Profile: not set",
            )),
            None,
        )
    }

    fn mapped(c: ConnectorError, place: &Place) -> AwsError {
        let err: SdkError<ListClustersError, HttpResponse> = SdkError::dispatch_failure(c);
        map_err_at("ecs:ListClusters", "-", place, err)
    }

    fn aws(region: &str) -> Place {
        Place {
            region: Some(region.into()),
            endpoint_url: None,
            role: None,
        }
    }

    #[test]
    fn what_no_retry_can_fix_is_a_setup_error_saying_what_to_set() {
        let e = mapped(no_credentials(), &aws("eu-west-1"));
        assert_eq!(e.kind, ErrorKind::Setup);
        assert!(
            e.message.starts_with("no AWS credentials found"),
            "{}",
            e.message
        );
        assert!(e.message.contains("AWS_ACCESS_KEY_ID") && e.message.contains("--profile"));
        assert!(!e.message.contains('\n'), "one line: {}", e.message);

        let e = mapped(dns(), &aws("eu-wset-1"));
        assert_eq!(e.kind, ErrorKind::Setup);
        assert!(
            e.message.starts_with(
                "cannot resolve ecs.eu-wset-1.amazonaws.com: is `eu-wset-1` a region?"
            ),
            "{}",
            e.message
        );
        assert!(e.message.contains("--region"), "{}", e.message);

        let local = Place {
            region: Some("us-east-1".into()),
            endpoint_url: Some("http://127.0.0.1:1".into()),
            role: None,
        };
        let e = mapped(refused(), &local);
        assert_eq!(e.kind, ErrorKind::Setup);
        assert!(
            e.message
                .starts_with("connection refused by http://127.0.0.1:1 (AWS_ENDPOINT_URL)"),
            "{}",
            e.message
        );
        let e = mapped(dns(), &local);
        assert!(
            e.message.contains("check AWS_ENDPOINT_URL"),
            "{}",
            e.message
        );
    }

    #[test]
    fn what_a_retry_can_fix_stays_retryable() {
        let e = mapped(reset(), &aws("eu-west-1"));
        assert_eq!(
            e.kind,
            ErrorKind::Transient,
            "a dropped connection: {}",
            e.message
        );
        let e = mapped(
            ConnectorError::timeout("connect timed out".into()),
            &aws("eu-west-1"),
        );
        assert_eq!(e.kind, ErrorKind::Transient);
        let e = mapped(
            ConnectorError::other(
                "incomplete message".into(),
                Some(aws_smithy_types::retry::ErrorKind::TransientError),
            ),
            &aws("eu-west-1"),
        );
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.is_retryable());
        // Raised before anything was sent (signing, an interceptor): the SDK does not retry it
        // and neither do we.
        let e = mapped(
            ConnectorError::other("failed to sign".into(), None),
            &aws("eu-west-1"),
        );
        assert_eq!(e.kind, ErrorKind::Other);
    }

    #[test]
    fn messages_carry_no_debug_dump() {
        let e = mapped(reset(), &aws("eu-west-1"));
        assert!(!e.message.contains("DispatchFailure {"), "{}", e.message);
        assert!(!e.message.contains("ConnectorError {"), "{}", e.message);
        assert_eq!(e.message, "dispatch failure: io error: connection reset");
    }

    #[test]
    fn the_sdk_does_not_retry_an_unreachable_endpoint_either() {
        let verdict = |c: ConnectorError| {
            let mut ctx = InterceptorContext::new(Input::doesnt_matter());
            ctx.set_output_or_error(Err(OrchestratorError::connector(c)));
            NoRetryWhenUnreachable.classify_retry(&ctx)
        };
        assert_eq!(verdict(refused()), RetryAction::RetryForbidden);
        assert_eq!(verdict(dns()), RetryAction::RetryForbidden);
        assert_eq!(verdict(reset()), RetryAction::NoActionIndicated);
    }

    #[test]
    fn regions_and_endpoint_urls_are_checked_before_any_call() {
        assert!(is_region_name("eu-west-1") && is_region_name("us-gov-west-1"));
        assert!(!is_region_name("us east 1") && !is_region_name("") && !is_region_name("-x"));
        assert!(
            is_endpoint_url("http://127.0.0.1:5000")
                && is_endpoint_url("https://ecs.eu-west-1.amazonaws.com")
        );
        assert!(
            !is_endpoint_url("not a url")
                && !is_endpoint_url("ftp://x")
                && !is_endpoint_url("127.0.0.1:5000")
        );
    }

    #[test]
    fn error_codes_are_classified() {
        assert_eq!(
            classify(Some("ThrottlingException"), Some(400)),
            ErrorKind::Throttled
        );
        assert_eq!(
            classify(Some("ClusterNotFoundException"), Some(400)),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(Some("ResourceNotFoundException"), Some(400)),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(Some("AccessDeniedException"), Some(400)),
            ErrorKind::AccessDenied
        );
        assert_eq!(classify(None, Some(503)), ErrorKind::Transient);
        assert_eq!(
            classify(Some("InvalidParameterException"), Some(400)),
            ErrorKind::Other
        );
    }
}
