//! The real implementation of the AWS traits over the AWS SDK for Rust.
//!
//! Credentials and region come from `aws-config`'s default chain (environment, profile, SSO, the
//! ECS task-role endpoint, IMDS), and `AWS_ENDPOINT_URL` is honoured as the SDK honours it, which
//! is how the tests point it at an emulator. Secrets and parameters may live in other regions
//! than the cluster (cross-region ARNs): those clients are built on first use from the same
//! shared configuration.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use chrono::{DateTime, Utc};

use super::{
    all_pages, AwsError, AwsResult, Clients, Controller, Deployment, Ecs, ErrorKind, Page,
    ParameterMeta, ParameterVersion, Parameters, RawRef, SecretMeta, SecretVersion, Secrets,
    Service, TaskDefinition,
};
use crate::reference::Site;

/// How the SDK retries on its own (below ecs-reloader's own backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryMode {
    /// Exponential backoff with jitter on retryable errors.
    Standard,
    /// Standard plus client-side rate limiting that adapts to throttling.
    Adaptive,
}

/// What the SDK configuration takes from ecs-reloader's own configuration.
#[derive(Debug, Clone)]
pub struct SdkSettings {
    /// Overrides the default chain's region.
    pub region: Option<String>,
    /// SDK retry mode.
    pub retry_mode: RetryMode,
    /// SDK attempts per call (first try included).
    pub max_attempts: u32,
}

impl Default for SdkSettings {
    fn default() -> Self {
        SdkSettings {
            region: None,
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
        "no AWS region: set AWS_REGION, a profile region, or [aws] region in the configuration"
    )]
    NoRegion,
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
        .timeout_config(timeouts);
    if let Some(r) = &settings.region {
        loader = loader.region(Region::new(r.clone()));
    }
    loader.load().await
}

/// The three clients over an already loaded configuration.
pub fn clients_from(config: &SdkConfig) -> Result<Clients, SdkSetupError> {
    let region = config
        .region()
        .map(|r| r.to_string())
        .ok_or(SdkSetupError::NoRegion)?;
    let shared = Arc::new(Shared {
        config: config.clone(),
        regional_sm: Mutex::default(),
        regional_ssm: Mutex::default(),
    });
    Ok(Clients {
        ecs: Arc::new(SdkEcs {
            client: aws_sdk_ecs::Client::new(&shared.config),
        }),
        secrets: Arc::new(SdkSecrets(shared.clone())),
        parameters: Arc::new(SdkParameters(shared)),
        region,
    })
}

struct Shared {
    config: SdkConfig,
    regional_sm: Mutex<HashMap<String, aws_sdk_secretsmanager::Client>>,
    regional_ssm: Mutex<HashMap<String, aws_sdk_ssm::Client>>,
}

impl Shared {
    fn sm(&self, region: &str) -> aws_sdk_secretsmanager::Client {
        let mut map = self.regional_sm.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_sdk_secretsmanager::config::Builder::from(&self.config)
                    .region(Region::new(region.to_string()))
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
                    .build();
                aws_sdk_ssm::Client::from_conf(conf)
            })
            .clone()
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
            | "ParameterNotFound",
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

/// Maps an SDK error to an [`AwsError`] naming the call and the resource.
pub(crate) fn map_err<E>(
    operation: &'static str,
    resource: &str,
    err: SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let kind = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            ErrorKind::Transient
        }
        _ => classify(err.code(), status),
    };
    let message = match (err.code(), err.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    AwsError::new(operation, resource, kind, message)
}

fn to_chrono(t: Option<&aws_smithy_types::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

struct SdkEcs {
    client: aws_sdk_ecs::Client,
}

fn deployment(d: &aws_sdk_ecs::types::Deployment) -> Option<Deployment> {
    Some(Deployment {
        id: d.id()?.to_string(),
        status: d.status().unwrap_or_default().to_string(),
        task_definition: d.task_definition().unwrap_or_default().to_string(),
        created_at: to_chrono(d.created_at())?,
        rollout_state: d.rollout_state().map(|s| s.as_str().to_string()),
        rollout_state_reason: d.rollout_state_reason().map(str::to_string),
        desired_count: d.desired_count(),
        running_count: d.running_count(),
        failed_tasks: d.failed_tasks(),
    })
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
    Service {
        arn: s.service_arn().unwrap_or_default().to_string(),
        name: s.service_name().unwrap_or_default().to_string(),
        cluster_arn: s.cluster_arn().unwrap_or_default().to_string(),
        status: s.status().unwrap_or_default().to_string(),
        task_definition: s.task_definition().unwrap_or_default().to_string(),
        desired_count: s.desired_count(),
        controller,
        deployments: s.deployments().iter().filter_map(deployment).collect(),
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
            .map_err(|e| map_err("ecs:ListClusters", "-", e))?;
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
            .map_err(|e| map_err("ecs:ListServices", cluster, e))?;
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
            .map_err(|e| map_err("ecs:DescribeServices", cluster, e))?;
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
            .map_err(|e| map_err("ecs:DescribeTaskDefinition", arn, e))?;
        let mut refs = Vec::new();
        if let Some(td) = out.task_definition() {
            for c in td.container_definitions() {
                let container = c.name().unwrap_or("?").to_string();
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
            .map_err(|e| map_err("ecs:UpdateService", &resource, e))?;
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
            .map_err(|e| map_err("secretsmanager:DescribeSecret", id, e))?;
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
            .map_err(|e| map_err("secretsmanager:ListSecretVersionIds", arn, e))?;
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
        all_pages(|next| {
            let client = client.clone();
            let filter = filter.clone();
            let resource = resource.clone();
            async move {
                let out = client
                    .describe_parameters()
                    .parameter_filters(filter)
                    .set_next_token(next)
                    .send()
                    .await
                    .map_err(|e| map_err("ssm:DescribeParameters", &resource, e))?;
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
        all_pages(|next| {
            let client = client.clone();
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
                    .map_err(|e| map_err("ssm:GetParameterHistory", name, e))?;
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
