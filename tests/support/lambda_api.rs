//! A Lambda Runtime API emulator for the tests: serves `GET /2018-06-01/runtime/invocation/next`
//! (long-polling until an event is queued) with the standard headers, and records the
//! `…/response` and `…/error` posts. It also notes when the first `next` request came, for the
//! init-time benchmark.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What the function answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Response(serde_json::Value),
    Error(String),
}

#[derive(Default)]
struct State {
    queue: Mutex<VecDeque<(String, String)>>,
    queued: Notify,
    answers: Mutex<HashMap<String, Answer>>,
    answered: Notify,
    init_errors: Mutex<Vec<String>>,
    first_next: Mutex<Option<Instant>>,
    seq: AtomicU64,
}

pub struct RuntimeApi {
    pub port: u16,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, st).await;
                });
            }
        });
        RuntimeApi { port, state, task }
    }

    /// The value of AWS_LAMBDA_RUNTIME_API.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Queues an invocation; returns its request id.
    pub fn invoke(&self, payload: &serde_json::Value) -> String {
        let id = format!("req-{}", self.state.seq.fetch_add(1, Ordering::Relaxed));
        self.state
            .queue
            .lock()
            .expect("queue")
            .push_back((id.clone(), payload.to_string()));
        self.state.queued.notify_one();
        id
    }

    /// Waits for the answer to `id`.
    pub async fn answer(&self, id: &str, limit: Duration) -> Answer {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.state.answered.notified();
            if let Some(a) = self.state.answers.lock().expect("answers").get(id).cloned() {
                return a;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "no answer to {id} within {limit:?}");
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// When the function first asked for work.
    pub fn first_next(&self) -> Option<Instant> {
        *self.state.first_next.lock().expect("first")
    }

    pub fn init_errors(&self) -> Vec<String> {
        self.state.init_errors.lock().expect("init").clone()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn respond(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    status: &str,
    headers: &[(String, String)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).await?;
    w.write_all(body.as_bytes()).await
}

async fn serve(sock: TcpStream, st: Arc<State>) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut reader = BufReader::new(r);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;
        let body = String::from_utf8_lossy(&body).into_owned();
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = path.trim_start_matches("/2018-06-01/runtime");
        match (method, path) {
            ("GET", "/invocation/next") => {
                st.first_next
                    .lock()
                    .expect("first")
                    .get_or_insert_with(Instant::now);
                let (id, payload) = loop {
                    let notified = st.queued.notified();
                    if let Some(item) = st.queue.lock().expect("queue").pop_front() {
                        break item;
                    }
                    notified.await;
                };
                let deadline = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() + 120_000)
                    .unwrap_or(0);
                let headers = vec![
                    ("Content-Type".into(), "application/json".into()),
                    ("Lambda-Runtime-Aws-Request-Id".into(), id),
                    ("Lambda-Runtime-Deadline-Ms".into(), deadline.to_string()),
                    ("Lambda-Runtime-Invoked-Function-Arn".into(), "arn:aws:lambda:us-east-1:123456789012:function:ecs-reloader".into()),
                    ("Lambda-Runtime-Trace-Id".into(), "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=0".into()),
                ];
                respond(&mut w, "200 OK", &headers, &payload).await?;
            }
            ("POST", p) if p.starts_with("/invocation/") => {
                let rest = &p["/invocation/".len()..];
                let (id, kind) = rest.split_once('/').unwrap_or((rest, ""));
                let answer = if kind == "response" {
                    Answer::Response(
                        serde_json::from_str(&body)
                            .unwrap_or(serde_json::Value::String(body.clone())),
                    )
                } else {
                    Answer::Error(body.clone())
                };
                st.answers
                    .lock()
                    .expect("answers")
                    .insert(id.to_string(), answer);
                st.answered.notify_waiters();
                respond(
                    &mut w,
                    "202 Accepted",
                    &[("Content-Type".into(), "application/json".into())],
                    r#"{"status":"OK"}"#,
                )
                .await?;
            }
            ("POST", "/init/error") => {
                st.init_errors.lock().expect("init").push(body);
                respond(&mut w, "202 Accepted", &[], "").await?;
            }
            _ => respond(&mut w, "404 Not Found", &[], "").await?,
        }
    }
}

/// The environment Lambda gives `bootstrap`.
pub fn lambda_env(api: &RuntimeApi) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_LAMBDA_RUNTIME_API", api.address()),
        ("AWS_LAMBDA_FUNCTION_NAME", "ecs-reloader".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2026/11/22/[$LATEST]test".into(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            "/aws/lambda/ecs-reloader".into(),
        ),
    ]
}
