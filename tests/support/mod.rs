//! Test support: the AWS emulator (moto, patched by `tests/emulator/moto_launcher.py`) on a free
//! loopback port, a recording and fault-injecting proxy in front of it, SDK clients to build a
//! world with, and a runner for the real binary. Nothing here touches an address outside
//! 127.0.0.0/8.

#![allow(dead_code)]

pub mod lambda_api;
pub mod proxy;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ecs::types::{
    ContainerDefinition, LogConfiguration, LogDriver, RepositoryCredentials, Secret, Tag,
};

pub const REGION: &str = "us-east-1";
/// The emulator's default account: the operator's own in every test that runs it with the
/// default credentials (events from any other account are dropped).
#[allow(dead_code)]
pub const ACCOUNT: &str = "123456789012";

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// moto_server on loopback, stopped on drop.
pub struct Emulator {
    child: Child,
    pub port: u16,
}

impl Emulator {
    /// Starts the patched emulator. `MOTO_ECS_SERVICE_RUNNING=1` makes services of desired count
    /// 1 report a COMPLETED rollout (moto models no rollouts otherwise).
    pub fn start() -> Emulator {
        let port = free_port();
        let launcher =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/emulator/moto_launcher.py");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let child = Command::new(python)
            .arg(&launcher)
            .arg(port.to_string())
            .env("MOTO_ECS_SERVICE_RUNNING", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the emulator (is moto[server] installed? see .ci/run)");
        let emu = Emulator { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "emulator did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        emu
    }

    /// Its endpoint URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SDK clients pointed straight at the emulator, for building worlds (their calls bypass the
/// proxy, so they are not counted as the binary's).
#[derive(Clone)]
pub struct Aws {
    pub ecs: aws_sdk_ecs::Client,
    pub sm: aws_sdk_secretsmanager::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub events: aws_sdk_eventbridge::Client,
}

impl Aws {
    pub async fn connect(url: &str) -> Aws {
        Aws::connect_in(url, REGION).await
    }

    /// Clients for the emulator in another region.
    pub async fn connect_in(url: &str, region: &'static str) -> Aws {
        let creds = aws_sdk_ecs::config::Credentials::new("test", "test", None, None, "tests");
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(url)
            .region(Region::new(region))
            .credentials_provider(creds)
            .load()
            .await;
        Aws {
            ecs: aws_sdk_ecs::Client::new(&conf),
            sm: aws_sdk_secretsmanager::Client::new(&conf),
            ssm: aws_sdk_ssm::Client::new(&conf),
            sqs: aws_sdk_sqs::Client::new(&conf),
            events: aws_sdk_eventbridge::Client::new(&conf),
        }
    }

    pub async fn cluster(&self, name: &str) {
        self.ecs
            .create_cluster()
            .cluster_name(name)
            .send()
            .await
            .expect("create cluster");
    }

    /// Creates a secret; returns (full ARN, version id).
    pub async fn secret(&self, name: &str) -> (String, String) {
        let out = self
            .sm
            .create_secret()
            .name(name)
            .secret_string("initial")
            .send()
            .await
            .expect("create secret");
        (
            out.arn().expect("arn").to_string(),
            out.version_id().expect("version").to_string(),
        )
    }

    /// `PutSecretValue`: a new AWSCURRENT version; returns its id.
    pub async fn rotate(&self, name: &str) -> String {
        let out = self
            .sm
            .put_secret_value()
            .secret_id(name)
            .secret_string(format!("rotated-{}", rand_suffix()))
            .send()
            .await
            .expect("put secret value");
        out.version_id().expect("version").to_string()
    }

    /// `UpdateSecretVersionStage`: moves `stage` to `version` (from wherever it is).
    pub async fn move_stage(&self, name: &str, stage: &str, version: &str) {
        let desc = self
            .sm
            .describe_secret()
            .secret_id(name)
            .send()
            .await
            .expect("describe");
        let from = desc.version_ids_to_stages().and_then(|m| {
            m.iter()
                .find(|(_, st)| st.iter().any(|s| s == stage))
                .map(|(v, _)| v.clone())
        });
        self.sm
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(stage)
            .move_to_version_id(version)
            .set_remove_from_version_id(from)
            .send()
            .await
            .expect("update stage");
    }

    pub async fn parameter(&self, name: &str, value: &str) {
        self.ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .expect("put parameter");
    }

    /// Registers a one-container task definition; returns its ARN.
    pub async fn task_def(&self, family: &str, refs: Refs<'_>) -> String {
        let mut c = ContainerDefinition::builder()
            .name("app")
            .image("public.ecr.aws/nginx/nginx:latest")
            .memory(128);
        for (i, v) in refs.secrets.iter().enumerate() {
            c = c.secrets(
                Secret::builder()
                    .name(format!("SECRET_{i}"))
                    .value_from(*v)
                    .build()
                    .expect("secret"),
            );
        }
        if !refs.log.is_empty() {
            let mut lc = LogConfiguration::builder().log_driver(LogDriver::Splunk);
            for (i, v) in refs.log.iter().enumerate() {
                lc = lc.secret_options(
                    Secret::builder()
                        .name(format!("token-{i}"))
                        .value_from(*v)
                        .build()
                        .expect("secret"),
                );
            }
            c = c.log_configuration(lc.build().expect("log config"));
        }
        if let Some(v) = refs.registry {
            c = c.repository_credentials(
                RepositoryCredentials::builder()
                    .credentials_parameter(v)
                    .build()
                    .expect("creds"),
            );
        }
        let out = self
            .ecs
            .register_task_definition()
            .family(family)
            .container_definitions(c.build())
            .send()
            .await
            .expect("register task definition");
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .expect("arn")
            .to_string()
    }

    pub async fn service(&self, cluster: &str, name: &str, task_def: &str, tags: &[(&str, &str)]) {
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
            .collect();
        self.ecs
            .create_service()
            .cluster(cluster)
            .service_name(name)
            .task_definition(task_def)
            .desired_count(1)
            .set_tags((!tags.is_empty()).then_some(tags))
            .send()
            .await
            .expect("create service");
    }

    /// A task definition with one secret reference.
    pub async fn task_def_for(&self, family: &str, value_from: &str) -> String {
        let refs = [value_from];
        self.task_def(
            family,
            Refs {
                secrets: &refs,
                ..Default::default()
            },
        )
        .await
    }

    /// An account already in sync: these secrets (returns their ARNs), then, a whole second
    /// later (Secrets Manager dates are whole seconds), `cluster` with one service per
    /// (name, index of the secret it references).
    pub async fn one_secret_world(
        &self,
        secrets: &[&str],
        cluster: &str,
        services: &[(&str, usize)],
    ) -> Vec<String> {
        let mut arns = Vec::new();
        for s in secrets {
            arns.push(self.secret(s).await.0);
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        self.cluster(cluster).await;
        let mut defs = std::collections::HashMap::new();
        for (name, i) in services {
            if !defs.contains_key(i) {
                let td = self.task_def_for(&format!("td-{i}"), &arns[*i]).await;
                defs.insert(*i, td);
            }
            self.service(cluster, name, &defs[i], &[]).await;
        }
        arns
    }

    /// The primary deployment's id.
    pub async fn deployment_id(&self, cluster: &str, name: &str) -> String {
        let out = self
            .ecs
            .describe_services()
            .cluster(cluster)
            .services(name)
            .send()
            .await
            .expect("describe");
        out.services()[0].deployments()[0]
            .id()
            .expect("id")
            .to_string()
    }
}

impl Aws {
    /// A queue with a dead-letter queue after `max_receives`; returns (queue URL, queue ARN, DLQ URL).
    pub async fn queue_with_dlq(
        &self,
        name: &str,
        visibility_s: u32,
        max_receives: u32,
    ) -> (String, String, String) {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let dlq = self
            .sqs
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .expect("dlq");
        let dlq_url = dlq.queue_url().expect("url").to_string();
        let dlq_arn = self.queue_arn(&dlq_url).await;
        let redrive =
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receives}"}}"#);
        let q = self
            .sqs
            .create_queue()
            .queue_name(name)
            .attributes(A::VisibilityTimeout, visibility_s.to_string())
            .attributes(A::RedrivePolicy, redrive)
            .send()
            .await
            .expect("queue");
        let url = q.queue_url().expect("url").to_string();
        let arn = self.queue_arn(&url).await;
        (url, arn, dlq_url)
    }

    pub async fn queue_arn(&self, url: &str) -> String {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::QueueArn)
            .send()
            .await
            .expect("attrs");
        out.attributes()
            .and_then(|a| a.get(&A::QueueArn))
            .expect("arn")
            .clone()
    }

    pub async fn send(&self, url: &str, body: &str) {
        self.sqs
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }

    /// Messages visible + in flight.
    /// A queue that receives every outcome event (source `ecs-reloader`) on the default bus.
    #[allow(dead_code)]
    pub async fn outcome_queue(&self) -> String {
        let (url, arn, _) = self.queue_with_dlq("outcomes", 30, 5).await;
        self.events
            .put_rule()
            .name("outcomes")
            .event_pattern(r#"{"source": ["ecs-reloader"]}"#)
            .send()
            .await
            .expect("rule");
        self.events
            .put_targets()
            .rule("outcomes")
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("q")
                    .arn(arn)
                    .build()
                    .expect("target"),
            )
            .send()
            .await
            .expect("targets");
        url
    }

    pub async fn queue_total(&self, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("attrs");
        let a = out.attributes().cloned().unwrap_or_default();
        let n = |k: A| a.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        n(A::ApproximateNumberOfMessages) + n(A::ApproximateNumberOfMessagesNotVisible)
    }
}

/// A running `ecs-reloader serve`, killed on drop.
pub struct Serve {
    pub child: tokio::process::Child,
    pub port: u16,
}

impl Serve {
    pub fn start(endpoint: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Serve {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ecs-reloader"));
        cmd.arg("serve").arg("--listen").arg(&listen).args(args);
        clean_env(&mut cmd, endpoint);
        cmd.env("ECS_RELOADER_LOG", "info,aws=warn,hyper=warn");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        // TEST_SERVE_LOGS=1 shows what serve logs, when a test needs explaining.
        let logs = if std::env::var_os("TEST_SERVE_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        cmd.stdout(Stdio::null()).stderr(logs).kill_on_drop(true);
        let child = cmd.spawn().expect("serve starts");
        Serve { child, port }
    }

    /// GET a path; (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    }

    /// Waits until /readyz answers 200.
    pub async fn ready(&self) {
        wait_for("serve to be ready", Duration::from_secs(60), || async {
            matches!(self.get("/readyz").await, Some((200, _)))
        })
        .await;
    }

    /// A gauge from /metrics (`None` while it does not answer).
    pub async fn gauge(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Waits until `serve` says it is idle: no pass running, no change waiting to be decided
    /// again. With the queue drained too, nothing more will happen until the next event or
    /// resync: the signal that "nothing else was rolled" can be checked.
    pub async fn idle(&self) {
        wait_for("serve to be idle", Duration::from_secs(60), || async {
            self.gauge("ecs_reloader_busy").await == Some(0.0)
                && self.gauge("ecs_reloader_changes_waiting").await == Some(0.0)
        })
        .await;
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running");
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

/// Polls `check` until it is true, or panics after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the binary as Lambda starts `bootstrap`: no arguments, the runtime's environment.
pub fn start_bootstrap(
    endpoint: &str,
    api: &lambda_api::RuntimeApi,
    extra_env: &[(&str, &str)],
) -> tokio::process::Child {
    start_bootstrap_to(endpoint, api, extra_env, Stdio::null())
}

/// [`start_bootstrap`], with its standard output (where the metric documents go) to `stdout`.
pub fn start_bootstrap_to(
    endpoint: &str,
    api: &lambda_api::RuntimeApi,
    extra_env: &[(&str, &str)],
    stdout: Stdio,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ecs-reloader"));
    clean_env(&mut cmd, endpoint);
    for (k, v) in lambda_api::lambda_env(api) {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.stdout(stdout).stderr(Stdio::null()).kill_on_drop(true);
    cmd.spawn().expect("bootstrap starts")
}

fn clean_env(cmd: &mut tokio::process::Command, endpoint: &str) {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("ECS_RELOADER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("ECS_RELOADER_LOG", "warn")
        .env("ECS_RELOADER_ROLLOUT_POLL_INTERVAL", "1s");
}

/// The references of a test task definition.
#[derive(Default, Clone, Copy)]
pub struct Refs<'a> {
    pub secrets: &'a [&'a str],
    pub log: &'a [&'a str],
    pub registry: Option<&'a str>,
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The output of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the real binary against `endpoint` with a clean AWS environment.
pub async fn run_binary(endpoint: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ecs-reloader"));
    cmd.args(args);
    // moto reports rollouts complete at once: clean_env sets a 1 s poll instead of 15 s.
    clean_env(&mut cmd, endpoint);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("binary finished within 120 s")
        .expect("binary ran");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
