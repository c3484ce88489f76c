//! A small HTTP/1.1 proxy in front of the emulator that records every AWS call (by
//! `X-Amz-Target`, with its body) and can inject the faults the emulator cannot: JSON-protocol
//! throttling (HTTP 400 `ThrottlingException`), 5xx, latency and dropped connections, and
//! standing refusals of chosen calls on chosen resources (`AccessDeniedException` from IAM, an
//! SCP or a resource policy), which moto's IAM enforcement cannot answer in JSON.
//!
//! Faults are decided by a seeded generator, so a failing run can be replayed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    /// e.g. `AmazonEC2ContainerServiceV20141113.UpdateService`.
    pub target: String,
    /// The JSON request body.
    pub body: String,
    /// What the proxy did with it.
    pub fault: Option<Fault>,
}

impl Call {
    /// The operation name (after the dot).
    pub fn operation(&self) -> &str {
        self.target.rsplit('.').next().unwrap_or(&self.target)
    }
}

/// An injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answered 400 ThrottlingException; not forwarded.
    Throttle,
    /// Answered 500; not forwarded.
    ServerError,
    /// Connection closed before forwarding.
    Drop,
    /// Forwarded (it takes effect), then the connection closes before the answer.
    LoseAnswer,
    /// Answered 400 with a standing refusal's error; not forwarded.
    Refused,
}

impl Fault {
    /// Whether the emulator saw the call.
    pub fn forwarded(fault: Option<Fault>) -> bool {
        matches!(fault, None | Some(Fault::LoseAnswer))
    }
}

/// Which faults to inject, as probabilities per call, for calls whose target contains `only`.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    pub only: String,
    pub throttle: f64,
    pub server_error: f64,
    pub drop: f64,
    pub lose_answer: f64,
    pub latency: Duration,
    pub seed: u64,
}

/// A standing refusal: calls whose target contains `target` and whose body contains `body` are
/// answered with `error` (e.g. `AccessDeniedException`) and `message`.
#[derive(Debug, Clone)]
struct Refusal {
    target: String,
    body: String,
    error: String,
    message: String,
}

/// A token bucket the proxy enforces for one operation, as ECS does per account and region:
/// full at the start, refilled continuously; an empty bucket answers `ThrottlingException`.
/// `other_share` of every refill goes to another client of the account.
#[derive(Debug, Clone)]
struct Bucket {
    burst: f64,
    refill: f64,
    other_share: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens =
            (self.tokens + elapsed * self.refill * (1.0 - self.other_share)).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct State {
    calls: Mutex<Vec<Call>>,
    plan: Mutex<FaultPlan>,
    rng: AtomicU64,
    refusals: Mutex<Vec<Refusal>>,
    buckets: Mutex<std::collections::HashMap<String, Bucket>>,
}

/// The running proxy; stops on drop.
pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(State {
            calls: Mutex::default(),
            plan: Mutex::default(),
            rng: AtomicU64::new(1),
            refusals: Mutex::default(),
            buckets: Mutex::default(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                // Small writes go out at once: a sequential client would otherwise wait out
                // delayed acknowledgements on every call.
                let _ = sock.set_nodelay(true);
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, upstream, st).await;
                });
            }
        });
        Proxy { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the fault plan (and reseeds).
    pub fn set_faults(&self, plan: FaultPlan) {
        self.state.rng.store(plan.seed.max(1), Ordering::Relaxed);
        *self.state.plan.lock().expect("plan") = plan;
    }

    /// Enforces ECS's documented buckets (ListServices and DescribeServices burst 100, refill 20/s;
    /// DescribeTaskDefinition burst 50, refill 20/s; ListClusters burst 50, refill 20/s),
    /// full from now, with `other_share` of every refill taken by another client.
    pub fn enforce_ecs_buckets(&self, other_share: f64) {
        let now = std::time::Instant::now();
        let mut b = self.state.buckets.lock().expect("buckets");
        b.clear();
        for (op, burst, refill) in [
            ("ListClusters", 50.0, 20.0),
            ("ListServices", 100.0, 20.0),
            ("DescribeServices", 100.0, 20.0),
            ("DescribeTaskDefinition", 50.0, 20.0),
        ] {
            b.insert(
                op.to_string(),
                Bucket {
                    burst,
                    refill,
                    other_share,
                    tokens: burst,
                    at: now,
                },
            );
        }
    }

    /// How many calls of an operation the proxy throttled.
    pub fn throttled(&self, operation: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.operation() == operation && c.fault == Some(Fault::Throttle))
            .count()
    }

    /// From now on, answers every call whose `X-Amz-Target` contains `target` and whose body
    /// contains `body` with HTTP 400 `error` (a JSON-protocol error, as AWS sends it).
    pub fn refuse(&self, target: &str, body: &str, error: &str, message: &str) {
        self.state.refusals.lock().expect("refusals").push(Refusal {
            target: target.into(),
            body: body.into(),
            error: error.into(),
            message: message.into(),
        });
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().expect("calls").clone()
    }

    /// Forgets the calls so far.
    pub fn reset(&self) {
        self.state.calls.lock().expect("calls").clear();
    }

    /// How many calls of an operation (e.g. `UpdateService`) reached the emulator.
    pub fn count(&self, operation: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.operation() == operation && c.fault.is_none())
            .count()
    }

    /// The `service` of every `UpdateService` that reached the emulator.
    pub fn updated_services(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.operation() == "UpdateService" && Fault::forwarded(c.fault))
            .filter_map(|c| {
                let v: serde_json::Value = serde_json::from_str(&c.body).ok()?;
                let cluster = v.get("cluster")?.as_str()?.to_string();
                let service = v.get("service")?.as_str()?.to_string();
                Some(format!("{cluster}/{service}"))
            })
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn next_random(state: &State) -> f64 {
    // xorshift64*: deterministic for a seed, good enough to pick faults.
    let mut x = state.rng.load(Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.rng.store(x, Ordering::Relaxed);
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

async fn serve(sock: TcpStream, upstream: u16, state: Arc<State>) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut reader = BufReader::new(r);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            head.push(line);
        }
        let header = |name: &str| {
            head.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // The SigV4 credential scope names the service (`…/us-east-1/s3/aws4_request`): other
        // REST services (EventBridge Scheduler) carry no target header either.
        let signed_for_s3 = header("authorization").is_some_and(|a| a.contains("/s3/aws4_request"));
        let rest = head
            .first()
            .filter(|_| signed_for_s3)
            .and_then(|l| s3_operation(l, header("x-amz-target").is_some()));
        let target = match &rest {
            Some((op, _)) => format!("S3.{op}"),
            None => header("x-amz-target").unwrap_or_default(),
        };
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;

        // An S3 call is named by its path: that is what a refusal matches (`/bucket`).
        let body_text = match &rest {
            Some((_, path)) => path.clone(),
            None => String::from_utf8_lossy(&body).into_owned(),
        };
        let refusal = state
            .refusals
            .lock()
            .expect("refusals")
            .iter()
            .find(|r| target.contains(&r.target) && body_text.contains(&r.body))
            .cloned();
        let plan = state.plan.lock().expect("plan").clone();
        let applies = !plan.only.is_empty() && target.contains(&plan.only);
        let operation = target.rsplit('.').next().unwrap_or(&target).to_string();
        let bucket_empty = state
            .buckets
            .lock()
            .expect("buckets")
            .get_mut(&operation)
            .is_some_and(|b| !b.take());
        let fault = if refusal.is_some() {
            Some(Fault::Refused)
        } else if bucket_empty {
            Some(Fault::Throttle)
        } else if applies {
            let r = next_random(&state);
            if r < plan.throttle {
                Some(Fault::Throttle)
            } else if r < plan.throttle + plan.server_error {
                Some(Fault::ServerError)
            } else if r < plan.throttle + plan.server_error + plan.drop {
                Some(Fault::Drop)
            } else if r < plan.throttle + plan.server_error + plan.drop + plan.lose_answer {
                Some(Fault::LoseAnswer)
            } else {
                None
            }
        } else {
            None
        };
        state.calls.lock().expect("calls").push(Call {
            target: target.clone(),
            body: body_text,
            fault,
        });
        if applies && !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        match fault {
            Some(Fault::Refused) if rest.is_some() => {
                // S3 answers in XML, with 403 for a refusal.
                let r = refusal.expect("a refusal");
                let b = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><RequestId>proxy</RequestId></Error>",
                    r.error, r.message
                );
                let resp = format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nx-amz-request-id: proxy\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                );
                w.write_all(resp.as_bytes()).await?;
                continue;
            }
            Some(Fault::Refused) => {
                let r = refusal.expect("a refusal");
                let b = serde_json::json!({"__type": r.error, "message": r.message}).to_string();
                let resp = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-errortype: {}\r\nx-amzn-requestid: proxy\r\nContent-Length: {}\r\n\r\n{b}",
                    r.error,
                    b.len()
                );
                w.write_all(resp.as_bytes()).await?;
                continue;
            }
            Some(Fault::Drop) => return Ok(()),
            Some(Fault::Throttle) => {
                let b = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
                let resp = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-errortype: ThrottlingException\r\nx-amzn-requestid: proxy\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                );
                w.write_all(resp.as_bytes()).await?;
                continue;
            }
            Some(Fault::ServerError) => {
                let b = r#"{"__type":"ServerException","message":"injected"}"#;
                let resp = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-errortype: ServerException\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                );
                w.write_all(resp.as_bytes()).await?;
                continue;
            }
            None | Some(Fault::LoseAnswer) => {}
        }

        // Forward on a fresh connection that the emulator closes after answering.
        let mut up = TcpStream::connect(("127.0.0.1", upstream)).await?;
        up.set_nodelay(true)?;
        let mut req = Vec::new();
        for l in &head {
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
                continue;
            }
            req.extend_from_slice(l.as_bytes());
        }
        req.extend_from_slice(b"Connection: close\r\n\r\n");
        req.extend_from_slice(&body);
        up.write_all(&req).await?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp).await?;
        if fault == Some(Fault::LoseAnswer) {
            return Ok(());
        }
        let split = resp
            .windows(4)
            .position(|x| x == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(resp.len());
        let (rhead, rbody) = resp.split_at(split);
        let rhead = String::from_utf8_lossy(rhead);
        if rhead
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            w.write_all(&resp).await?;
            continue;
        }
        let mut out = String::new();
        for l in rhead.split("\r\n").filter(|l| !l.is_empty()) {
            let lower = l.to_ascii_lowercase();
            if lower.starts_with("content-length:") || lower.starts_with("connection:") {
                continue;
            }
            out.push_str(l);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", rbody.len()));
        w.write_all(out.as_bytes()).await?;
        w.write_all(rbody).await?;
    }
}

/// The S3 operation of a REST request line (S3 calls carry no `X-Amz-Target`), with its path and
/// query: path-style requests (`GET /bucket?list-type=2&prefix=…`), as the SDK sends them to a
/// custom endpoint. Asked only of requests signed for S3.
fn s3_operation(request_line: &str, has_target: bool) -> Option<(String, String)> {
    if has_target {
        return None;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?;
    let uri = parts.next()?;
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    if path == "/" || path.is_empty() {
        return None;
    }
    // `/bucket` and `/bucket/` name the bucket; `/bucket/key` an object.
    let object = path.trim_matches('/').contains('/');
    let has = |q: &str| {
        query
            .split('&')
            .any(|kv| kv == q || kv.starts_with(&format!("{q}=")))
    };
    let op = match (method, object) {
        ("GET", false) if has("list-type") => "ListObjectsV2",
        ("GET", false) if has("versions") => "ListObjectVersions",
        ("GET", false) => "ListObjects",
        ("GET", true) => "GetObject",
        ("HEAD", true) => "HeadObject",
        ("HEAD", false) => "HeadBucket",
        ("PUT", true) => "PutObject",
        ("DELETE", true) => "DeleteObject",
        (m, _) => return Some((format!("S3{m}"), uri.to_string())),
    };
    Some((op.to_string(), uri.to_string()))
}
