"""Production figures of `serve` and `plan`: the release binary, through the AWS SDK, against the
emulator (moto 5.2.1, patched by tests/emulator/moto_launcher.py), everything on loopback.
Prints figures; not a test. The in-memory fake's figures (benches/scan.rs) are a model; these are
what the binary does.

    cargo build --release --bin ecs-reloader
    PYTHON=.venv/bin/python .venv/bin/python benches/sdk.py [footprint|plan|event] ...

Optional: BIN=path/to/ecs-reloader (default $CARGO_TARGET_DIR/release/ecs-reloader, else
target/release/ecs-reloader). GNU time (/usr/bin/time) is needed for `plan`.

- footprint: `serve` over 10,000 services in 20 clusters, 400 task definitions each naming two
  secrets (one of them by JSON key), 100 secrets. Peak resident set (VmHWM of
  /proc/<pid>/status, which starts at exec) after the start-up resync, then after five rotation
  events, each rolled to its end (canary off, 20 updates/s, 50 at once).
- plan: a cold `plan` of 2,000 services of the same shape (default pacing), its peak resident set
  as GNU time reports it (`time -f %M` forks the binary itself, so no harness is counted).
- event: `serve` over 1,015 services in 10 clusters, each secret used by three services in three
  clusters, canary off, debounce 0, a warm watch cache. For each of 25 secrets: rotate it, wait
  2.2 s (past the whole-second ambiguity), put its RotationSucceeded event on the queue; measured:
  the time to the first UpdateService, and the ECS calls in between (seen by a recording proxy
  between the binary and moto). Then the same with the UpdateService bucket drained: the next
  event put on the queue right after the previous event's first UpdateService, while its other
  two rollouts still wait for their turn.
"""

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGION = "us-east-1"
PYTHON = os.environ.get("PYTHON", sys.executable)
ECS = "AmazonEC2ContainerServiceV20141113."

# Read pacing off for the start-up resync of the footprint world (as in BENCHMARKS.md §5).
UNPACED = {
    "ECS_RELOADER_PACING_LIST_CLUSTERS_PER_SECOND": "100000",
    "ECS_RELOADER_PACING_LIST_SERVICES_PER_SECOND": "100000",
    "ECS_RELOADER_PACING_DESCRIBE_SERVICES_PER_SECOND": "100000",
    "ECS_RELOADER_PACING_DESCRIBE_TASK_DEFINITION_PER_SECOND": "100000",
    "ECS_RELOADER_PACING_DESCRIBE_SECRET_PER_SECOND": "100000",
}


def binary():
    if os.environ.get("BIN"):
        return os.environ["BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "ecs-reloader")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """The patched moto on a free loopback port."""

    def __init__(self):
        self.port = free_port()
        env = dict(os.environ, MOTO_ECS_SERVICE_RUNNING="1")
        self.proc = subprocess.Popen(
            [PYTHON, os.path.join(ROOT, "tests/emulator/moto_launcher.py"), str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("the emulator did not start")
                time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Proxy:
    """A recording proxy: forwards every request to moto and notes (time, X-Amz-Target, the
    service an UpdateService names)."""

    def __init__(self, upstream_port):
        calls, lock, local = [], threading.Lock(), threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                target = self.headers.get("X-Amz-Target") or ""
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                for attempt in range(2):
                    conn = getattr(local, "conn", None)
                    if conn is None:
                        conn = local.conn = http.client.HTTPConnection("127.0.0.1", upstream_port)
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                        break
                    except (http.client.HTTPException, OSError):
                        local.conn = None
                        if attempt:
                            raise
                service = ""
                if target.endswith(".UpdateService") and body:
                    try:
                        service = json.loads(body).get("service", "")
                    except ValueError:
                        pass
                with lock:
                    calls.append((time.monotonic(), target, service))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = do_PUT = do_DELETE = do_HEAD = _forward

        self.calls, self.lock = calls, lock
        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # the binary hung up (killed at the end of a run)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return list(self.calls)


def clients(url):
    kw = dict(
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(max_pool_connections=16, retries={"max_attempts": 2}),
    )
    return {n: boto3.client(n, **kw) for n in ("ecs", "secretsmanager", "sqs")}


def world(aws, services, clusters, task_defs, secrets, json_key=True, two=True):
    """Secrets, then (a whole second later) clusters, task definitions and services. Task
    definition i names secret i % K, and (`two`) secret (i + 37) % K by its JSON key `password`.
    Service j runs task definition j % T in cluster j % C. Returns the secrets' ARNs."""
    sm, ecs = aws["secretsmanager"], aws["ecs"]
    with ThreadPoolExecutor(8) as pool:
        arns = list(
            pool.map(
                lambda i: sm.create_secret(Name=f"bench/secret-{i:04}", SecretString="{}")["ARN"],
                range(secrets),
            )
        )
        time.sleep(1.1)
        for c in range(clusters):
            ecs.create_cluster(clusterName=f"cluster-{c:02}")

        def task_def(i):
            refs = [{"name": "S0", "valueFrom": arns[i % secrets]}]
            if two:
                other = arns[(i + 37) % secrets]
                refs.append({"name": "S1", "valueFrom": f"{other}:password::" if json_key else other})
            out = ecs.register_task_definition(
                family=f"td-{i:04}",
                containerDefinitions=[
                    {"name": "app", "image": "public.ecr.aws/nginx/nginx:latest", "memory": 128, "secrets": refs}
                ],
            )
            return out["taskDefinition"]["taskDefinitionArn"]

        defs = list(pool.map(task_def, range(task_defs)))

        def service(j):
            ecs.create_service(
                cluster=f"cluster-{j % clusters:02}",
                serviceName=f"svc-{j:05}",
                taskDefinition=defs[j % task_defs],
                desiredCount=1,
            )

        list(pool.map(service, range(services)))
    return arns


def queue(aws, name):
    return aws["sqs"].create_queue(QueueName=name, Attributes={"VisibilityTimeout": "30"})["QueueUrl"]


def queue_total(aws, url):
    a = aws["sqs"].get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def rotation_event(arn):
    return json.dumps(
        {
            "source": "aws.secretsmanager",
            "detail-type": "AWS Service Event via CloudTrail",
            "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": arn}},
        }
    )


def clean_env(endpoint, extra):
    env = {k: v for k, v in os.environ.items() if not (k.startswith("AWS_") or k.startswith("ECS_RELOADER_"))}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_REGION=REGION,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        ECS_RELOADER_LOG="warn",
        ECS_RELOADER_ROLLOUT_POLL_INTERVAL="1s",
    )
    env.update(extra)
    return env


class Serve:
    def __init__(self, endpoint, queue_url, extra):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [binary(), "serve", "--listen", f"127.0.0.1:{self.port}", "--queue-url", queue_url],
            env=clean_env(endpoint, extra),
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except Exception:
            return None, ""

    def wait(self, what, check, limit=600):
        deadline = time.time() + limit
        while not check():
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"serve exited while waiting for {what}:\n{self.log.read().decode()[-3000:]}")
            if time.time() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.05)

    def ready(self):
        self.wait("readiness", lambda: self.get("/readyz")[0] == 200)

    def gauge(self, name):
        _, body = self.get("/metrics")
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def idle(self):
        self.wait(
            "idle",
            lambda: self.gauge("ecs_reloader_busy") == 0.0 and self.gauge("ecs_reloader_changes_waiting") == 0.0,
        )

    def status_mib(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
        return 0.0

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def footprint():
    s, c, t, k = 10_000, 20, 400, 100
    print(f"\nfootprint: `serve`, {s} services in {c} clusters, {t} task definitions x 2 secrets (one by JSON key), {k} secrets")
    emu = Emulator()
    aws = clients(emu.url)
    t0 = time.time()
    arns = world(aws, s, c, t, k)
    url = queue(aws, "footprint")
    print(f"   (world built in {time.time() - t0:.0f} s)")
    # VARIANTS="A=1 B=2;C=3": one `serve` after another on the same world, each with these
    # extra variables (say TOKIO_WORKER_THREADS=1); empty: one run as it is.
    for variant in os.environ.get("VARIANTS", "").split(";"):
        extra = dict(kv.split("=", 1) for kv in variant.split())
        print(f"   -- {variant or 'as built'}")
        serve_footprint(emu, aws, arns, url, extra)
    emu.stop()


def serve_footprint(emu, aws, arns, url, extra):
    serve = Serve(
        emu.url,
        url,
        dict(
            UNPACED,
            ECS_RELOADER_RESYNC_INTERVAL="1h",
            ECS_RELOADER_EVENTS_DEBOUNCE="0s",
            ECS_RELOADER_ROLLOUT_CANARY="false",
            ECS_RELOADER_ROLLOUT_UPDATES_PER_SECOND="20",
            ECS_RELOADER_ROLLOUT_MAX_CONCURRENT="50",
            **extra,
        ),
    )
    t0 = time.time()
    time.sleep(0.3)
    idle = serve.status_mib("VmRSS:")
    serve.ready()
    took = time.time() - t0
    hwm, rss = serve.status_mib("VmHWM:"), serve.status_mib("VmRSS:")
    threads = len(os.listdir(f"/proc/{serve.proc.pid}/task"))
    print(f"   start-up resync: {took:.1f} s (read pacing off); resident 0.3 s after start: {idle:.1f} MiB")
    anon, file = serve.status_mib("RssAnon:"), serve.status_mib("RssFile:")
    print(f"   after the start-up resync: peak RSS (VmHWM) {hwm:.1f} MiB, resident {rss:.1f} MiB (anonymous {anon:.1f}, the binary's and libraries' pages {file:.1f}), {threads} threads")
    t0 = time.time()
    for i in range(5):
        aws["secretsmanager"].put_secret_value(SecretId=f"bench/secret-{i:04}", SecretString=json.dumps({"password": f"r{i}"}))
        time.sleep(2.2)
        aws["sqs"].send_message(QueueUrl=url, MessageBody=rotation_event(arns[i]))
        serve.wait("the queue to drain", lambda: queue_total(aws, url) == 0)
        serve.idle()
    _, body = serve.get("/metrics")
    rolled = ", ".join(l for l in body.splitlines() if l.startswith("ecs_reloader_rollouts"))
    hwm, rss = serve.status_mib("VmHWM:"), serve.status_mib("VmRSS:")
    print(f"   five rotation events rolled ({rolled}) in {time.time() - t0:.0f} s")
    print(f"   after them: peak RSS (VmHWM) {hwm:.1f} MiB, resident {rss:.1f} MiB")
    serve.stop()


def plan():
    s, c, t, k = 2000, 20, 400, 100
    print(f"\nplan: cold `plan` of {s} services in {c} clusters, {t} task definitions x 2 secrets (one by JSON key), {k} secrets, default pacing")
    emu = Emulator()
    aws = clients(emu.url)
    world(aws, s, c, t, k)
    t0 = time.time()
    out = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss_kib=%M", binary(), "plan", "--output", "json"],
        env=clean_env(emu.url, {}),
        capture_output=True,
        text=True,
    )
    took = time.time() - t0
    kib = next((int(l.split("=")[1]) for l in out.stderr.splitlines() if l.startswith("maxrss_kib=")), 0)
    print(f"   peak RSS (GNU time) {kib / 1024:.1f} MiB; {took:.1f} s; exit {out.returncode}")
    emu.stop()


def event():
    n, c, runs = 1015, 10, 25
    k = n // 3
    print(f"\nevent: `serve`, {n} services in {c} clusters, each secret used by 3 services in 3 clusters; canary off, debounce 0")
    emu = Emulator()
    proxy = Proxy(emu.port)
    aws = clients(emu.url)
    arns = world(aws, n, c, k, k, two=False)
    url = queue(aws, "latency")
    serve = Serve(
        proxy.url,
        url,
        dict(
            ECS_RELOADER_EVENTS_DEBOUNCE="0s",
            ECS_RELOADER_RESYNC_INTERVAL="1h",
            ECS_RELOADER_ROLLOUT_CANARY="false",
        ),
    )
    serve.ready()

    def first_update(mark):
        serve.wait("the first UpdateService", lambda: any(t.endswith(".UpdateService") for _, t, _ in proxy.snapshot()[mark:]), 60)
        calls = proxy.snapshot()[mark:]
        i = next(i for i, (_, t, _) in enumerate(calls) if t.endswith(".UpdateService"))
        return calls[i][0], [t[len(ECS):] for _, t, _ in calls[:i] if t.startswith(ECS)]

    latencies, reads, kinds = [], [], {}
    for i in range(runs):
        aws["secretsmanager"].put_secret_value(SecretId=f"bench/secret-{i:04}", SecretString=f"r{i}")
        time.sleep(2.2)
        mark = len(proxy.snapshot())
        t0 = time.monotonic()
        aws["sqs"].send_message(QueueUrl=url, MessageBody=rotation_event(arns[i]))
        at, ecs = first_update(mark)
        latencies.append((at - t0) * 1000)
        reads.append(len(ecs))
        key = " ".join(ecs)
        kinds[key] = kinds.get(key, 0) + 1
        serve.wait("the queue to drain", lambda: queue_total(aws, url) == 0, 120)
        serve.idle()
    latencies.sort()
    print(f"   event -> first UpdateService (n = {runs}): median {statistics.median(latencies):.0f} ms, max {latencies[-1]:.0f} ms")
    print(f"   ECS reads before it: median {statistics.median(reads):.0f}, max {max(reads)}")
    for key, count in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"     {count} x [{key}]")

    # The UpdateService bucket drained: the next event arrives right after the previous
    # event's first UpdateService, while its two other rollouts wait for their turn.
    drained = []
    for i in range(runs, runs + 10, 2):
        for j in (i, i + 1):
            aws["secretsmanager"].put_secret_value(SecretId=f"bench/secret-{j:04}", SecretString=f"r{j}")
        time.sleep(2.2)
        mark = len(proxy.snapshot())
        aws["sqs"].send_message(QueueUrl=url, MessageBody=rotation_event(arns[i]))
        first_update(mark)
        mark = len(proxy.snapshot())
        t0 = time.monotonic()
        aws["sqs"].send_message(QueueUrl=url, MessageBody=rotation_event(arns[i + 1]))
        theirs = {f"svc-{j:05}" for j in (i + 1, i + 1 + k, i + 1 + 2 * k)}

        def second():
            return [at for at, t, svc in proxy.snapshot()[mark:] if t.endswith(".UpdateService") and svc in theirs]

        serve.wait("the second event's first UpdateService", lambda: bool(second()), 60)
        calls = second()
        drained.append((calls[0] - t0) * 1000)
        serve.wait("the queue to drain", lambda: queue_total(aws, url) == 0, 120)
        serve.idle()
    print(f"   the same, the UpdateService bucket drained by the previous event's rollouts (n = {len(drained)}): median {statistics.median(drained):.0f} ms, max {max(drained):.0f} ms")
    serve.stop()
    emu.stop()


if __name__ == "__main__":
    wanted = sys.argv[1:] or ["footprint", "plan", "event"]
    print(f"benches/sdk.py: {binary()}")
    for name in wanted:
        {"footprint": footprint, "plan": plan, "event": event}[name]()
