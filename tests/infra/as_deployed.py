"""Runs the real binary exactly as the deployment artefacts configure it, against the emulator.

    python3 tests/infra/as_deployed.py ecs|lambda|configs|readme|image

Each scenario runs in a network namespace of its own (so that the fixed addresses a deployment
uses, such as 0.0.0.0:8080, are free, and nothing can leave loopback), with the AWS emulator
started inside it. The binary itself always runs with the whole file system mounted read-only
(a mount namespace of its own) as user 65532, as on Fargate with ReadonlyRootFilesystem and the
image's USER: a write anywhere fails it.

- ecs: every template under infra/ is deployed into the emulator's CloudFormation with example
  parameters; each ECS container definition, read back from ECS, is run with the image's
  entry point, ENV and user from the Dockerfile, the container's command and environment, and
  the credentials Fargate gives a task (the container credentials endpoint, served on loopback).
  It must become ready, its health-check command must exit 0, a rotation announced on the
  default bus must reach the template's queue through the template's rule and roll the
  dependant (and nothing outside ManagedClusters), and SIGTERM must end it with status 0.
- lambda: each Lambda function, read back from Lambda, is started as provided.al2023 starts
  `bootstrap` (no arguments, the runtime's environment plus the function's variables) against a
  Runtime API emulator; arm64 functions run the arm64 package's bootstrap under qemu. A scheduled
  invocation must answer and roll the dependant of an unannounced rotation; an SQS batch too.
- configs: every example under config/, run the way its header says.
- readme: every command line in README.md's sh blocks, in order, with the substitutions listed
  in PLACEHOLDERS; a line this script does not know how to run fails it.
- image: builds the image from the Dockerfile on a base assembled from the host's files (no
  registry is reachable), runs it read-only as a non-root user with host networking, waits for
  its HEALTHCHECK to report healthy and for a rotation to roll the dependant; then builds the
  arm64 image and runs its binary from the image's own file system under qemu. Exits 77 (skip)
  when no Docker daemon can start here.
"""

import http.server
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
BIN = TARGET / "debug/ecs-reloader"
ARM64_PACKAGE = ROOT / "target/lambda/ecs-reloader-arm64.zip"
QEMU = ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"]
REGION = "us-east-1"
ACCOUNT = "123456789012"
NONROOT = 65532
SKIP = 77
EVENTS = ROOT / "tests/fixtures/events"

# Example parameters for each template under infra/: a template without them fails the run.
EXAMPLES = {
    "ecs-reloader.yaml": [
        {
            "Mode": "ecs",
            "ManagedClusters": "prod,staging",
            "ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/ecs-reloader:1",
            "OperatorCluster": "ops",
            "Subnets": "subnet-0123456789abcdef0",
            "SecurityGroups": "sg-0123456789abcdef0",
            # An organisation's central account: the member role name and a member account.
            "MemberAccounts": "111111111111",
            "MemberRoleName": "ecs-reloader-target",
        },
        {"Mode": "lambda", "ManagedClusters": "prod,staging", "CodeBucket": "code", "Architecture": "x86_64"},
        # CODE_DEPLOY services rolled through CodeDeploy (ECS_RELOADER_ROLLOUT_CODEDEPLOY=true);
        # the two above leave it off.
        {"Mode": "lambda", "ManagedClusters": "prod,staging", "CodeBucket": "code", "Architecture": "arm64",
         "CodeDeployApplications": "orders"},
    ],
    # No container or function: deployed, checked to complete, and removed (its end-to-end path,
    # in two accounts, is tests/infra/test_organisation.py's). The central bus is another
    # account's, so that its rules never forward this account's events back to itself.
    "ecs-reloader-member.yaml": [
        {
            "OperatorRoleArn": f"arn:aws:iam::{ACCOUNT}:role/ecs-reloader-operator",
            "ExternalId": "example-external-id",
            "CentralEventBusArn": f"arn:aws:events:{REGION}:210987654321:event-bus/default",
            "ManagedClusters": "prod,staging",
            "CodeDeployApplications": "orders",
            "EnvironmentFileBuckets": "conf",
        },
    ],
}


def log(*a):
    print(*a, flush=True)


# ---- The sandbox ---------------------------------------------------------------------------------


def enter_sandbox():
    """Re-executes this script in new network and mount namespaces, with loopback up."""
    if os.environ.get("ECSR_SANDBOX") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    argv = ["unshare", "--net", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        argv.insert(1, "--map-root-user")
    env = dict(os.environ, ECSR_SANDBOX="1", PYTHONDONTWRITEBYTECODE="1")
    os.execvpe(argv[0], argv + ["--", sys.executable, __file__] + sys.argv[1:], env)


def confined(argv, uid=NONROOT):
    """argv, run with every file system read-only, as `uid`."""
    ro = 'mount -o remount,bind,ro / && exec "$@"'
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", ro, "sh"]
    if uid is not None:
        # HOME as the image gives user 65532 (it does not exist here: nothing is read there).
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "env", "HOME=/home/nonroot"]
    return cmd + list(argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, limit=60.0, proc=None):
    deadline = time.time() + limit
    while True:
        v = check()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"waiting for {what}: the process exited with {proc.returncode}\n{proc_output(proc)}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{proc_output(proc)}" if proc else ""))
        time.sleep(0.2)


_outputs = {}
_logdir = None


def spawn(argv, env, name, cwd="/"):
    global _logdir
    _logdir = _logdir or tempfile.mkdtemp(prefix="ecs-reloader-as-deployed-")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:60]
    out = tempfile.NamedTemporaryFile(dir=_logdir, prefix=f"{safe}-", suffix=".log", delete=False)
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _outputs[p.pid] = out.name
    return p


def proc_output(p, full=False):
    path = _outputs.get(p.pid)
    text = Path(path).read_text(errors="replace") if path else ""
    return text if full else text[-6000:]


def http_get(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None, ""


# ---- The emulator and a world ----------------------------------------------------------------------


class Emulator:
    def __init__(self):
        self.port = free_port()
        env = dict(os.environ, MOTO_ECS_SERVICE_RUNNING="1")
        self.proc = spawn([sys.executable, str(ROOT / "tests/infra/moto_cfn_launcher.py"), str(self.port)], env, "moto", cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until("the emulator", lambda: http_get(self.url + "/moto-api/")[0] is not None, 30, self.proc)
        import boto3

        self.client = lambda name, region=REGION: boto3.client(
            name, endpoint_url=self.url, region_name=region, aws_access_key_id="test", aws_secret_access_key="test"
        )

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class World:
    """Clusters prod and staging (managed) and elsewhere (not), each with a service `api` that
    resolves the secret app/db; in sync when built."""

    def __init__(self, emu):
        self.ecs, self.sm, self.events, self.sqs = (emu.client(n) for n in ["ecs", "secretsmanager", "events", "sqs"])
        self.arn = self.sm.create_secret(Name="app/db", SecretString="one")["ARN"]
        time.sleep(1.1)  # Secrets Manager dates are whole seconds: deployments come strictly later.
        td = self.ecs.register_task_definition(
            family="api",
            containerDefinitions=[
                {"name": "app", "image": "nginx", "memory": 128, "secrets": [{"name": "DB", "valueFrom": self.arn}]}
            ],
        )["taskDefinition"]["taskDefinitionArn"]
        for cluster in ["prod", "staging", "elsewhere", "ops"]:
            self.ecs.create_cluster(clusterName=cluster)
            self.ecs.create_service(cluster=cluster, serviceName="api", taskDefinition=td, desiredCount=1)
        self.initial = {c: self.deployment(c) for c in ["prod", "staging", "elsewhere"]}

    def deployment(self, cluster):
        s = self.ecs.describe_services(cluster=cluster, services=["api"])["services"][0]
        return s["deployments"][0]["id"]

    def rolled(self, cluster):
        return self.deployment(cluster) != self.initial[cluster]

    def rotate(self):
        time.sleep(1.1)
        self.sm.put_secret_value(SecretId="app/db", SecretString=f"rotated-{time.time()}")
        # A change under a second old is `settling`: let it age past that, as any real event does.
        time.sleep(1.1)

    def announce_rotation(self):
        """A RotationSucceeded service event on the default bus, as Secrets Manager emits it."""
        e = json.loads((EVENTS / "rotation_succeeded.json").read_text())
        e["detail"]["additionalEventData"]["SecretId"] = self.arn
        # Recorded in this account (the operator's own): another account's event is dropped.
        e["detail"]["recipientAccountId"] = ACCOUNT
        out = self.events.put_events(
            Entries=[{"Source": e["source"], "DetailType": e["detail-type"], "Detail": json.dumps(e["detail"]), "EventBusName": "default"}]
        )
        assert out["FailedEntryCount"] == 0, out

    def rebaseline(self):
        self.initial = {c: self.deployment(c) for c in self.initial}


# ---- Stand-ins for what AWS gives a process --------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client killed mid-request (the end of every bootstrap run) is no news


def serve_http(handler_cls):
    srv = _Server(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class CredentialsEndpoint:
    """The container credentials endpoint of a task role (Fargate's is 169.254.170.2; the SDK also
    accepts a loopback AWS_CONTAINER_CREDENTIALS_FULL_URI)."""

    def __init__(self):
        self.calls = 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.calls += 1
                exp = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = json.dumps(
                    {"AccessKeyId": "ASIATASKROLE", "SecretAccessKey": "test", "Token": "token", "Expiration": exp, "RoleArn": "arn:aws:iam::123456789012:role/task"}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = serve_http(H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/v2/credentials/task"


class RuntimeApi:
    """The Lambda Runtime API: hands out queued invocations, records the answers."""

    def __init__(self, timeout_s):
        self.pending = queue.Queue()
        self.answers = {}
        self.init_errors = []
        self.cond = threading.Condition()
        self.seq = 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if not self.path.endswith("/runtime/invocation/next"):
                    return self._send(404)
                rid, payload = outer.pending.get()
                deadline = int((time.time() + timeout_s) * 1000)
                self._send(
                    200,
                    payload.encode(),
                    [
                        ("Content-Type", "application/json"),
                        ("Lambda-Runtime-Aws-Request-Id", rid),
                        ("Lambda-Runtime-Deadline-Ms", str(deadline)),
                        ("Lambda-Runtime-Invoked-Function-Arn", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:ecs-reloader"),
                        ("Lambda-Runtime-Trace-Id", "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=0"),
                    ],
                )

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                m = re.search(r"/runtime/invocation/([^/]+)/(response|error)$", self.path)
                with outer.cond:
                    if m:
                        outer.answers[m.group(1)] = (m.group(2), body)
                    elif self.path.endswith("/runtime/init/error"):
                        outer.init_errors.append(body)
                    outer.cond.notify_all()
                self._send(202, b'{"status":"OK"}', [("Content-Type", "application/json")])

            def log_message(self, *a):
                pass

        self.srv = serve_http(H)
        self.address = f"127.0.0.1:{self.srv.server_address[1]}"

    def invoke(self, payload, proc, limit=60):
        self.seq += 1
        rid = f"req-{self.seq}"
        self.pending.put((rid, json.dumps(payload)))
        deadline = time.time() + limit
        with self.cond:
            while rid not in self.answers:
                assert not self.init_errors, f"init error: {self.init_errors}\n{proc_output(proc)}"
                assert proc.poll() is None, f"bootstrap exited with {proc.returncode}\n{proc_output(proc)}"
                assert time.time() < deadline, f"no answer to {rid}\n{proc_output(proc)}"
                self.cond.wait(0.2)
        kind, body = self.answers[rid]
        assert kind == "response", f"invocation failed: {body}\n{proc_output(proc)}"
        return json.loads(body)


# ---- What the Dockerfile says the image is ----------------------------------------------------------


def image_config(binary):
    """The final stage of the Dockerfile: entry point, command, ENV, user, health check, and
    where its COPY lines put files (mapped to their sources here, `binary` for the binary)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    last_from = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    cfg = {"entrypoint": [], "cmd": [], "env": {}, "user": None, "healthcheck": None, "paths": {}}
    for l in lines[last_from + 1 :]:
        word, _, rest = l.partition(" ")
        word = word.upper()
        if word == "ENTRYPOINT":
            cfg["entrypoint"] = json.loads(rest)
        elif word == "CMD":
            cfg["cmd"] = json.loads(rest)
        elif word == "ENV":
            k, _, v = rest.partition("=")
            cfg["env"][k.strip()] = v.strip()
        elif word == "USER":
            cfg["user"] = rest.strip()
        elif word == "HEALTHCHECK":
            cfg["healthcheck"] = json.loads(rest[rest.index("CMD") + 3 :].strip())
        elif word == "COPY":
            args = rest.split()
            src, dst = args[-2], args[-1]
            from_stage = any(a.startswith("--from=") for a in args)
            cfg["paths"][dst] = str(binary) if from_stage else str(ROOT / src)
    return cfg


def mapped(value, paths):
    return paths.get(value, value)


# ---- Deploying the templates ------------------------------------------------------------------------


def deploy_all(emu, resource_type):
    """Deploys every template with each of its examples; returns (stack, params, resources) of
    those that hold a `resource_type`, and deletes the others (the emulator would run their
    functions in Docker when their queue gets a message)."""
    cfn, s3 = emu.client("cloudformation"), emu.client("s3")
    s3.create_bucket(Bucket="code")
    for arch in ["x86_64", "arm64"]:
        s3.put_object(Bucket="code", Key=f"ecs-reloader-{arch}.zip", Body=b"PK\x05\x06" + b"\0" * 18)
    templates = sorted((ROOT / "infra").glob("*.yaml")) + sorted((ROOT / "infra").glob("*.json"))
    assert templates, "no templates under infra/"
    stacks = []
    for t in templates:
        assert t.name in EXAMPLES, f"{t.name}: give it example parameters in EXAMPLES"
        for i, params in enumerate(EXAMPLES[t.name]):
            name = f"{t.stem}-{i}"
            cfn.create_stack(
                StackName=name,
                TemplateBody=t.read_text(),
                Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
            )
            st = cfn.describe_stacks(StackName=name)["Stacks"][0]
            assert st["StackStatus"] == "CREATE_COMPLETE", (name, st.get("StackStatusReason"))
            res = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
            if any(r["ResourceType"] == resource_type for r in res):
                stacks.append((name, params, {r["LogicalResourceId"]: r for r in res}))
            else:
                cfn.delete_stack(StackName=name)
    return stacks


def queue_of(emu, resources):
    [q] = [r for r in resources.values() if r["ResourceType"] == "AWS::SQS::Queue" and "Dead" not in r["LogicalResourceId"]]
    return q["PhysicalResourceId"]


def queue_total(sqs, url):
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def base_env(extra):
    """A process environment with nothing of this machine's AWS or ecs-reloader settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ECS_RELOADER_"))}
    env.update(extra)
    return env


# ---- Scenarios -------------------------------------------------------------------------------------


def run_serve(emu, world, argv, env, addr, queue_url, healthcheck=None, name="serve", cwd="/"):
    """Starts `serve`, waits for readiness, runs the health check, rolls one rotation announced
    on the default bus (when `queue_url` is the template's queue), stops it with SIGTERM."""
    if healthcheck:
        # A health check that cannot fail proves nothing: with nothing listening it must not pass.
        hc = subprocess.run(confined(healthcheck), env=env, cwd=cwd, capture_output=True, text=True, timeout=30)
        assert hc.returncode != 0, f"{name}: the health check passed with no operator running"
    p = spawn(confined(argv), env, name, cwd=cwd)
    host, port = addr.rsplit(":", 1)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    wait_until(f"{name}: /readyz", lambda: http_get(f"http://{host}:{port}/readyz")[0] == 200, 60, p)
    if healthcheck:
        hc = subprocess.run(confined(healthcheck), env=env, cwd=cwd, capture_output=True, text=True, timeout=30)
        assert hc.returncode == 0, f"{name}: health check {healthcheck} exited {hc.returncode}: {hc.stdout}{hc.stderr}"
    if queue_url:
        world.rotate()
        world.announce_rotation()
        wait_until(f"{name}: the dependant rolled", lambda: world.rolled("prod"), 60, p)
        wait_until(f"{name}: the queue drained", lambda: queue_total(world.sqs, queue_url) == 0, 60, p)
        assert world.rolled("staging") and not world.rolled("elsewhere"), f"{name}: only the managed clusters roll"
        world.rebaseline()
    os.kill(p.pid, signal.SIGTERM)
    try:
        code = p.wait(40)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError(f"{name}: still running 40 s after SIGTERM\n{proc_output(p)}")
    assert code == 0, f"{name}: exited {code} after SIGTERM\n{proc_output(p)}"
    return proc_output(p, full=True)


def scenario_ecs(emu):
    world = World(emu)
    ran = 0
    for stack, params, resources in deploy_all(emu, "AWS::ECS::TaskDefinition"):
        tds = [r for r in resources.values() if r["ResourceType"] == "AWS::ECS::TaskDefinition"]
        for td_res in tds:
            td = world.ecs.describe_task_definition(taskDefinition=td_res["PhysicalResourceId"])["taskDefinition"]
            # The emulator drops RuntimePlatform; test_templates.py checks it from the template.
            arch = params.get("Architecture", "x86_64")
            assert arch == "x86_64", "an arm64 task definition runs the arm64 image: the image scenario covers it"
            for c in td["containerDefinitions"]:
                img = image_config(BIN)
                assert c.get("readonlyRootFilesystem") is True, f"{stack}: ReadonlyRootFilesystem must be true"
                argv = [mapped(a, img["paths"]) for a in (c.get("entryPoint") or img["entrypoint"]) + (c.get("command") or img["cmd"])]
                env = dict(img["env"])
                env.update({e["name"]: e["value"] for e in c.get("environment", [])})
                env = {k: mapped(v, img["paths"]) for k, v in env.items()}
                creds = CredentialsEndpoint()
                env = base_env(
                    {
                        **env,
                        # What Fargate adds; the credentials endpoint is on loopback here.
                        "AWS_REGION": REGION,
                        "AWS_DEFAULT_REGION": REGION,
                        "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI": creds.url,
                        # The one test-only variable: AWS is the emulator.
                        "AWS_ENDPOINT_URL": emu.url,
                    }
                )
                hc = c["healthCheck"]["command"]
                assert hc[0] == "CMD", f"{stack}: the image has no shell, so the health check must be CMD, not {hc[0]}"
                assert hc[1:] == img["healthcheck"], f"{stack}: the template's health check {hc[1:]} is not the image's {img['healthcheck']}"
                listen = env.get("ECS_RELOADER_SERVE_LISTEN", "0.0.0.0:8080")
                out = run_serve(
                    emu, world, argv, env, listen, queue_of(emu, resources), [mapped(a, img["paths"]) for a in hc[1:]], name=f"{stack}/{c['name']}"
                )
                if "json" in argv:
                    bad = [l for l in out.splitlines() if l.strip() and not l.startswith("{")]
                    assert not bad, f"{stack}: --log-format json, yet: {bad[:3]}"
                assert creds.calls > 0, f"{stack}: the credentials did not come from the task role's endpoint"
                log(f"ok: {stack} container {c['name']}: ready, health check 0, rotation rolled prod/api and staging/api only, SIGTERM 0")
                ran += 1
    assert ran, "no ECS container definition in any template"


def lambda_binary(arch, scratch):
    if arch == "x86_64":
        return [str(BIN)]
    assert ARM64_PACKAGE.exists(), f"{ARM64_PACKAGE} is missing: ARCHS=arm64 PROFILE=dev scripts/package-lambda.sh builds it"
    with zipfile.ZipFile(ARM64_PACKAGE) as z:
        assert z.namelist() == ["bootstrap"], z.namelist()
        mode = z.getinfo("bootstrap").external_attr >> 16
        assert mode & 0o111, f"bootstrap must be executable in the zip (mode {mode:o})"
        z.extractall(scratch)
    boot = Path(scratch) / "bootstrap"
    boot.chmod(0o755)  # zipfile does not restore modes; Lambda does
    head = boot.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, "not an aarch64 ELF"
    return QEMU + [str(boot)]


def run_bootstrap(emu, world, binary, fn_env, timeout_s, memory, name, managed=("prod", "staging")):
    api = RuntimeApi(timeout_s)
    env = base_env(
        {
            **fn_env,
            # What provided.al2023 gives `bootstrap`.
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "AWS_LAMBDA_FUNCTION_NAME": "ecs-reloader",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/ecs-reloader",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2026/11/24/[$LATEST]0123456789",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EXECUTION_ENV": "AWS_Lambda_provided.al2023",
            "AWS_ACCESS_KEY_ID": "ASIAFUNCTIONROLE",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_SESSION_TOKEN": "token",
            "LAMBDA_TASK_ROOT": "/var/task",
            "LAMBDA_RUNTIME_DIR": "/var/runtime",
            "_HANDLER": "bootstrap",
            "TZ": ":UTC",
            "AWS_ENDPOINT_URL": emu.url,
        }
    )
    p = spawn(confined(binary), env, name)
    try:
        world.rotate()  # announced by no event: the scheduled resync must find it.
        schedule = json.loads((EVENTS / "scheduled.json").read_text())
        r = api.invoke(schedule, p)
        assert "prod/api" in r.get("triggered", []), f"{name}: scheduled resync answered {r}\n{proc_output(p)}"
        # The canary rolled first; the next resync, seeing it healthy, rolls the rest.
        r = api.invoke(schedule, p)
        for c in managed:
            wait_until(f"{name}: {c}/api rolled", lambda: world.rolled(c), 30, p)
        outside = [c for c in world.initial if c not in managed and world.rolled(c)]
        assert not outside, f"{name}: clusters outside the managed ones were rolled: {outside}"
        world.rebaseline()
        world.rotate()
        e = json.loads((EVENTS / "rotation_succeeded.json").read_text())
        e["detail"]["additionalEventData"]["SecretId"] = world.arn
        # From this account (the operator's own): another account's event is dropped.
        e["account"] = e["detail"]["recipientAccountId"] = ACCOUNT
        batch = {"Records": [{"messageId": "m-1", "body": json.dumps(e), "eventSource": "aws:sqs"}]}
        r = api.invoke(batch, p)
        assert r == {"batchItemFailures": []}, f"{name}: SQS batch answered {r}"
        assert world.rolled("prod"), f"{name}: the SQS event rolled nothing"
        world.rebaseline()
        # Settle the rest of that change (the canary gate) so the next function starts in sync.
        api.invoke(schedule, p)
        world.rebaseline()
    finally:
        p.kill()
        p.wait(10)
    if fn_env.get("ECS_RELOADER_LOG_FORMAT") == "json":
        bad = [l for l in proc_output(p, full=True).splitlines() if l.strip() and not l.startswith("{")]
        assert not bad, f"{name}: ECS_RELOADER_LOG_FORMAT=json, yet: {bad[:3]}"


def scenario_lambda(emu):
    world = World(emu)
    lam = emu.client("lambda")
    ran = set()
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o755)  # the function runs as another user
        for stack, params, resources in deploy_all(emu, "AWS::Lambda::Function"):
            for r in resources.values():
                if r["ResourceType"] != "AWS::Lambda::Function":
                    continue
                cfg = lam.get_function(FunctionName=r["PhysicalResourceId"])["Configuration"]
                # The emulator matches a schedule rule against every event put on the bus and
                # cannot deliver to a Lambda target (it answers 500): the schedule is played by
                # this script instead, so take the rule's target away once it is checked.
                events = emu.client("events")
                rule = resources["ResyncRule"]["PhysicalResourceId"]
                [t] = events.list_targets_by_rule(Rule=rule)["Targets"]
                assert t["Arn"] == cfg["FunctionArn"], (t, cfg["FunctionArn"])
                events.remove_targets(Rule=rule, Ids=[t["Id"]])
                assert cfg["Runtime"] == "provided.al2023" and cfg["Handler"] == "bootstrap", cfg
                [arch] = cfg.get("Architectures", ["x86_64"])
                assert arch == params.get("Architecture", "x86_64"), (arch, params)
                code = lam.get_function(FunctionName=r["PhysicalResourceId"])["Code"]
                fn_env = cfg.get("Environment", {}).get("Variables", {})
                run_bootstrap(emu, world, lambda_binary(arch, scratch), fn_env, cfg["Timeout"], cfg["MemorySize"], f"{stack}/{arch}")
                log(f"ok: {stack} function ({arch}): environment accepted, scheduled resync and SQS batch answered and rolled")
                ran.add(arch)
    assert ran == {"x86_64", "arm64"}, f"functions run for {ran}: both architectures must be exercised"


def scenario_configs(emu):
    world = World(emu)
    sqs = emu.client("sqs")
    queue_url = sqs.create_queue(QueueName="changes")["QueueUrl"]
    events = emu.client("events")
    events.put_rule(Name="changes", EventBusName="default", EventPattern=json.dumps({"source": ["aws.secretsmanager"]}))
    events.put_targets(Rule="changes", Targets=[{"Id": "q", "Arn": sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]}])
    creds = {"AWS_ENDPOINT_URL": emu.url, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}
    seen = []
    for path in sorted((ROOT / "config").glob("*.toml")):
        rel = str(path.relative_to(ROOT))
        header = [l for l in path.read_text().splitlines() if l.startswith("#")]
        usages = [m.group(1) for l in header for m in [re.match(r"#\s+(ecs-reloader (?:reconcile|plan|serve)\b.*)$", l)] if m]
        if path.name == "ecs-reloader.toml":
            usages = usages or [f"ecs-reloader reconcile --config {rel}"]  # the README's line
        if path.name == "lambda.toml":
            # Named by ECS_RELOADER_CONFIG in the function's environment, as its header says.
            run_bootstrap(emu, world, [str(BIN)], {"ECS_RELOADER_CONFIG": str(path)}, 120, 256, rel, managed=("prod",))
        elif not usages:
            raise AssertionError(f"{rel}: say in its header how it is used (an `ecs-reloader …` line), so that it can be run")
        for u in usages:
            argv = [str(BIN)] + shlex.split(u)[1:]
            if "serve" in argv:
                # Rollouts complete at once in the emulator: look every second, not every 15.
                env = base_env({**creds, "ECS_RELOADER_EVENTS_QUEUE_URL": queue_url, "ECS_RELOADER_ROLLOUT_POLL_INTERVAL": "1s"})
                run_serve(emu, world, argv, env, "0.0.0.0:8080", queue_url, [str(BIN), "healthcheck"], name=rel, cwd=ROOT)
                continue
            world.rotate()
            r = subprocess.run(confined(argv), env=base_env({**creds, "ECS_RELOADER_ROLLOUT_POLL_INTERVAL": "1s"}), cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{rel}: `{u}` exited {r.returncode}: {r.stdout}{r.stderr}"
            assert world.rolled("prod"), f"{rel}: `{u}` rolled nothing"
            world.rebaseline()
        log(f"ok: {rel}")
        seen.append(rel)
    assert len(seen) >= 4, seen


# README command lines: placeholders and what stands in for them here.
PLACEHOLDERS = {
    "<account>": ACCOUNT,
    "<region>": REGION,
    "<tag>": "1",
    "<bucket>": "code",
    "subnet-…,subnet-…": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
    "sg-…": "sg-0123456789abcdef0",
    "arn:aws:sns:…": f"arn:aws:sns:{REGION}:{ACCOUNT}:alarms",
    # Running it for an organisation. The stand-in deploys both templates into this one account;
    # the member's central bus is another account's, so that its rules never forward this
    # account's events back to itself.
    "<organization-id>": "o-exampleorgid",
    "<operator-role-arn>": f"arn:aws:iam::{ACCOUNT}:role/ecs-reloader-operator",
    "<external-id>": "example-external-id",
    "<central-account>": "210987654321",
}


def readme_lines():
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                yield line


def fake_aws_cli(emu, bindir):
    """`aws` for the README's AWS CLI lines (the CLI is not installed here): the same
    arguments, carried out with boto3 against the emulator, for the three subcommands used."""
    script = bindir / "aws"
    script.write_text(
        f"""#!{sys.executable}
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from as_deployed import aws_cli
sys.exit(aws_cli(sys.argv[1:]))
"""
    )
    script.chmod(0o755)


def aws_cli(args):
    import boto3

    # The endpoint, region and keys of the environment, as the CLI reads them.
    client = lambda n: boto3.client(n, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), region_name=os.environ.get("AWS_REGION"))
    if args[:2] == ["sqs", "create-queue"]:
        url = client("sqs").create_queue(QueueName=args[args.index("--queue-name") + 1])["QueueUrl"]
        print(json.dumps({"QueueUrl": url}))
        return 0
    if args[:2] == ["s3", "cp"] and args[3].startswith("s3://"):
        bucket, _, key = args[3][len("s3://") :].partition("/")
        key = key if key and not key.endswith("/") else key + Path(args[2]).name
        client("s3").put_object(Bucket=bucket, Key=key, Body=Path(args[2]).read_bytes())
        print(f"upload: {args[2]} to s3://{bucket}/{key}")
        return 0
    if args[:2] == ["cloudformation", "deploy"]:
        opt = lambda k: args[args.index(k) + 1]
        overrides = args[args.index("--parameter-overrides") + 1 :]
        overrides = overrides[: next((i for i, a in enumerate(overrides) if a.startswith("--")), len(overrides))]
        params = [dict(zip(["ParameterKey", "ParameterValue"], o.split("=", 1))) for o in overrides]
        cfn = client("cloudformation")
        cfn.create_stack(StackName=opt("--stack-name"), TemplateBody=Path(opt("--template-file")).read_text(), Parameters=params, Capabilities=[opt("--capabilities")])
        st = cfn.describe_stacks(StackName=opt("--stack-name"))["Stacks"][0]
        print(st["StackStatus"])
        return 0 if st["StackStatus"] == "CREATE_COMPLETE" else 1
    print(f"aws stand-in: not implemented: {args}", file=sys.stderr)
    return 2


def scenario_readme(emu):
    world = World(emu)
    world.rotate()
    scratch = Path(tempfile.mkdtemp())
    bindir = scratch / "bin"
    bindir.mkdir()
    fake_aws_cli(emu, bindir)
    (bindir / "ecs-reloader").symlink_to(BIN)
    emu.client("ecs").create_cluster(clusterName="ops")
    env = base_env(
        {"AWS_ENDPOINT_URL": emu.url, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true", "ECS_RELOADER_ROLLOUT_POLL_INTERVAL": "1s"}
    )
    env["PATH"] = f"{bindir}:{env['PATH']}"
    background = []
    try:
        for line in readme_lines():
            t0 = time.time()
            for k, v in PLACEHOLDERS.items():
                line = line.replace(k, v)
            assert "…" not in line and not re.search(r"<[a-z-]+>", line), f"README: a placeholder the test cannot fill: {line}"
            argv = shlex.split(line.rstrip("&").strip())
            assigns = {}
            while argv and re.match(r"^[A-Z_]+=", argv[0]):
                k, v = argv.pop(0).split("=", 1)
                assigns[k] = v
            if argv[0] == "export":
                env.update(dict(a.split("=", 1) for a in argv[1:]))
                log(f"ok: README `{line}` ({time.time() - t0:.1f} s)")
                continue
            if line == "scripts/test.sh":
                log("ok: README `scripts/test.sh`: that is the command running this test (CI's .ci/run)")
                continue
            if line.endswith("&"):
                p = spawn(argv, {**env, **assigns}, "readme-bg", cwd=ROOT)
                background.append(p)
                if "moto_launcher.py" in line:
                    port = argv[-1]
                    wait_until("the README's emulator", lambda: http_get(f"http://127.0.0.1:{port}/moto-api/")[0] is not None, 30, p)
                log(f"ok: README `{line}` (started)")
                continue
            if "serve" in argv:
                i = argv.index("serve")
                listen = argv[argv.index("--listen") + 1] if "--listen" in argv else "0.0.0.0:8080"
                q = argv[argv.index("--queue-url") + 1]
                sqs = boto3_for(env).client("sqs")
                sqs.create_queue(QueueName=q.rsplit("/", 1)[1])
                if argv[0] == "cargo":
                    # `cargo run` writes its lock and fingerprints: not confined, but the same serve.
                    run = lambda a, e, n: spawn(a, e, n, cwd=ROOT)
                    p = run(["cargo", "run", "--quiet", "--"] + argv[i:], {**env, **assigns}, "readme-cargo-run")
                    host, port = listen.rsplit(":", 1)
                    wait_until(f"README `{line}`: /readyz", lambda: http_get(f"http://{host}:{port}/readyz")[0] == 200, 300, p)
                    os.kill(p.pid, signal.SIGTERM)
                    assert p.wait(40) == 0, proc_output(p)
                else:
                    run_serve(emu, world, [str(BIN)] + argv[1:], {**env, **assigns}, listen, None, None, name=f"README {line}")
                log(f"ok: README `{line}` ({time.time() - t0:.1f} s)")
                continue
            if argv[0] == "ecs-reloader":
                cmd = confined([str(BIN)] + argv[1:])
            elif argv[:2] == ["cargo", "install"]:
                # The install path, without a release build: the debug profile this suite built.
                cmd = argv + ["--debug", "--root", str(scratch / "install"), "--offline", "--target-dir", str(TARGET)]
            elif argv[0] == "scripts/package-lambda.sh":
                # The cheapest build through every step of the script (the suite's own arm64 build).
                assigns.update(ARCHS=os.environ.get("ARCHS", "arm64"), PROFILE="dev")
                cmd = argv
            elif argv[:2] == ["aws", "cloudformation"]:
                # The operator's own cluster must exist, in whichever emulator the line talks to.
                boto3_for(env).client("ecs").create_cluster(clusterName="ops")
                cmd = argv
            elif argv[:2] == ["aws", "s3"]:
                boto3_for(env).client("s3").create_bucket(Bucket=PLACEHOLDERS["<bucket>"])
                cmd = argv
            elif argv[0] == "docker":
                log(f"ok: README `{line}`: run by the image scenario (it needs a Docker daemon)")
                continue
            else:
                cmd = argv
            r = subprocess.run(cmd, env={**env, **assigns}, cwd=ROOT, capture_output=True, text=True, timeout=900)
            assert r.returncode == 0, f"README `{line}` exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            if argv[:2] == ["cargo", "install"]:
                v = subprocess.run([str(scratch / "install/bin/ecs-reloader"), "--version"], capture_output=True, text=True)
                assert v.returncode == 0 and v.stdout.startswith("ecs-reloader "), v
            log(f"ok: README `{line}` ({time.time() - t0:.1f} s)")
    finally:
        for p in background:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)


def boto3_for(env):
    return _Clients(env)


class _Clients:
    def __init__(self, env):
        self.env = env

    def client(self, name):
        import boto3

        return boto3.client(name, endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name=self.env.get("AWS_REGION", REGION), aws_access_key_id="test", aws_secret_access_key="test")


SCENARIOS = {"ecs": scenario_ecs, "lambda": scenario_lambda, "configs": scenario_configs, "readme": scenario_readme}


def main():
    which = sys.argv[1:] or list(SCENARIOS) + ["image"]
    if "image" in which:
        sys.modules.setdefault("as_deployed", sys.modules[__name__])  # one instance of this module
        from image import scenario_image  # tests/infra/image.py
    else:
        scenario_image = None
    enter_sandbox()
    assert BIN.exists(), f"{BIN} is missing: `cargo build` (or `cargo test`) builds it"
    probe = subprocess.run(confined(["sh", "-c", f"touch /tmp/ecs-reloader-probe-{os.getpid()} || touch {ROOT}/probe"]), capture_output=True)
    assert probe.returncode != 0, "the confinement lets a process write: every file system must be read-only"
    status = 0
    for name in which:
        emu = Emulator()
        t0 = time.time()
        try:
            if name == "image":
                status = scenario_image(emu) or status
            else:
                SCENARIOS[name](emu)
            log(f"scenario {name}: passed in {time.time() - t0:.1f} s")
        finally:
            emu.stop()
    if _logdir:
        shutil.rmtree(_logdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
