"""The image scenario of as_deployed.py: the Dockerfile built and run for real.

No registry is reachable here, so the base is assembled from this machine's files (the CA bundle,
and the shared libraries the binary needs, for amd64 from the host and for arm64 from Debian's
cross libc) and named by the Dockerfile's BASE argument; the binary is the one the suite built,
copied in by the `prebuilt` source. Docker's daemon is started inside the scenario's own network
and mount namespaces (so `--network host` is the scenario's loopback), and stopped by its pid.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import as_deployed as ad

DOCKER = "/usr/bin/docker"  # Debian's client: its BuildKit needs no buildx plugin
DOCKERD = "/usr/sbin/dockerd"


class Daemon:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="ecs-reloader-dockerd-", dir=ad.TARGET))
        self.sock = self.root / "exec/docker.sock"
        (self.root / "exec").mkdir()
        self.log = open(self.root / "dockerd.log", "w")
        self.proc = subprocess.Popen(
            [
                DOCKERD,
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"),
                "--host", f"unix://{self.sock}",
                # Containers use --network host only: no bridge, no NAT rules.
                "--bridge", "none", "--iptables=false", "--ip6tables=false",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}", DOCKER_BUILDKIT="1")
        deadline = time.time() + 60
        while subprocess.run([DOCKER, "info"], env=self.env, capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd did not start:\n{(self.root / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.3)

    def docker(self, *args, check=True, **kw):
        r = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        subprocess.run(["umount", str(self.root / "exec/netns/default")], capture_output=True)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def needed_libs(binary, sysroot):
    """The shared libraries `binary` names (DT_NEEDED, recursively) and its interpreter, as files
    under `sysroot` ("/" for the host): (path in the image, file to copy)."""
    lib_dirs = {
        "/": ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64"],
    }.get(str(sysroot), [str(Path(sysroot) / "lib")])
    out = {}

    def elf(path):
        return subprocess.run(["readelf", "-d", "-l", "-W", path], capture_output=True, text=True, check=True).stdout

    todo = [str(binary)]
    while todo:
        info = elf(todo.pop())
        for line in info.splitlines():
            if "Requesting program interpreter" in line:
                interp = line.split(":", 1)[1].strip(" ]")
                src = interp if str(sysroot) == "/" else str(Path(sysroot) / "lib" / Path(interp).name)
                out[interp] = os.path.realpath(src)
            if "(NEEDED)" in line:
                name = line.split("[", 1)[1].rstrip("]")
                for d in lib_dirs:
                    if os.path.exists(f"{d}/{name}"):
                        dest = f"{d}/{name}" if str(sysroot) == "/" else f"/lib/{name}"
                        if dest not in out:
                            out[dest] = os.path.realpath(f"{d}/{name}")
                            todo.append(out[dest])
                        break
                else:
                    raise AssertionError(f"{binary} needs {name}, found in none of {lib_dirs}")
    return out


def build_base(daemon, platform, files, tag):
    """A base image with the CA bundle, `files` and user 65532, assembled offline."""
    ctx = Path(tempfile.mkdtemp(prefix="ecs-reloader-base-", dir=ad.TARGET))
    try:
        root = ctx / "rootfs"
        for dest, src in {**files, "/etc/ssl/certs/ca-certificates.crt": "/etc/ssl/certs/ca-certificates.crt"}.items():
            (root / dest.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / dest.lstrip("/"))
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
        (root / "etc/group").write_text("root:x:0:\nnonroot:x:65532:\n")
        (root / "home/nonroot").mkdir(parents=True)
        os.chown(root / "home/nonroot", 65532, 65532)
        (root / "tmp").mkdir(mode=0o1777)
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY rootfs/ /\n")
        daemon.docker("build", "--platform", platform, "-t", tag, str(ctx))
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


def docker_build(daemon, platform, binary, base, tag):
    """The README's `docker build -t ecs-reloader .`, with the prebuilt binary and the local base."""
    rel = Path("target/dist") / f"test-{platform.replace('/', '-')}" / "ecs-reloader"
    (ad.ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(binary, ad.ROOT / rel)
    t0 = time.time()
    daemon.docker(
        "build", "--platform", platform,
        "--build-arg", "SOURCE=prebuilt", "--build-arg", f"BINARY={rel}", "--build-arg", f"BASE={base}",
        "-t", tag, str(ad.ROOT),
    )
    [img] = json.loads(daemon.docker("image", "inspect", tag).stdout)
    [base_img] = json.loads(daemon.docker("image", "inspect", base).stdout)
    ad.log(
        f"built {tag} ({platform}) in {time.time() - t0:.1f} s: {img['Size'] / 1e6:.1f} MB "
        f"(binary {Path(binary).stat().st_size / 1e6:.1f} MB, base {base_img['Size'] / 1e6:.1f} MB), user {img['Config']['User']}"
    )
    return img


def scenario_image(emu):
    if not (os.path.exists(DOCKERD) and os.path.exists(DOCKER)):
        ad.log("SKIP image: Debian's docker.io is not installed (scripts/test.sh installs it)")
        return ad.SKIP
    try:
        daemon = Daemon()
    except RuntimeError as e:
        ad.log(f"SKIP image: no Docker daemon can start here: {e}")
        return ad.SKIP
    try:
        run_image(daemon, emu)
    finally:
        daemon.stop()
    return 0


def run_image(daemon, emu):
    world = ad.World(emu)
    [(stack, _, resources)] = ad.deploy_all(emu, "AWS::ECS::TaskDefinition")
    [td_res] = [r for r in resources.values() if r["ResourceType"] == "AWS::ECS::TaskDefinition"]
    td = world.ecs.describe_task_definition(taskDefinition=td_res["PhysicalResourceId"])["taskDefinition"]
    [c] = td["containerDefinitions"]
    queue_url = ad.queue_of(emu, resources)

    # The suite's debug binary; IMAGE_BINARIES=release takes scripts/package-lambda.sh's release
    # binary instead, for the image size in BENCHMARKS.md.
    binary = ad.ROOT / "target/dist/linux-amd64/ecs-reloader" if os.environ.get("IMAGE_BINARIES") == "release" else ad.BIN
    build_base(daemon, "linux/amd64", needed_libs(binary, "/"), "ecs-reloader-test/base:amd64")
    img = docker_build(daemon, "linux/amd64", binary, "ecs-reloader-test/base:amd64", "ecs-reloader:test")
    assert img["Config"]["User"] == "65532:65532", img["Config"]["User"]
    assert img["Config"]["Healthcheck"]["Test"][1:] == c["healthCheck"]["command"][1:], "the image's HEALTHCHECK is the template's"

    # The template's container, in the image: read-only, non-root, its command and environment.
    creds = ad.CredentialsEndpoint()
    env = {e["name"]: e["value"] for e in c.get("environment", [])}
    env.update(AWS_REGION=ad.REGION, AWS_DEFAULT_REGION=ad.REGION, AWS_EXECUTION_ENV="AWS_ECS_FARGATE", AWS_CONTAINER_CREDENTIALS_FULL_URI=creds.url, AWS_ENDPOINT_URL=emu.url)
    args = ["run", "-d", "--name", "ecs-reloader-test", "--read-only", "--network", "host", "--user", "65532:65532",
            "--health-interval", "1s", "--stop-timeout", str(c.get("stopTimeout", 30))]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    if c.get("entryPoint"):
        args += ["--entrypoint", c["entryPoint"][0]]
    args += ["ecs-reloader:test"] + c.get("command", [])
    daemon.docker(*args)
    try:
        inspect = lambda: json.loads(daemon.docker("inspect", "ecs-reloader-test").stdout)[0]
        state = inspect()
        assert state["HostConfig"]["ReadonlyRootfs"] is True and state["Config"]["User"] == "65532:65532"

        def healthy():
            s = inspect()["State"]
            assert s["Status"] == "running", f"the container stopped: {s}\n{daemon.docker('logs', 'ecs-reloader-test').stderr[-3000:]}"
            return s.get("Health", {}).get("Status") == "healthy"

        ad.wait_until("HEALTHCHECK: healthy", healthy, 90)
        ad.log("ok: image: HEALTHCHECK reports healthy (read-only, user 65532, host network)")
        world.rotate()
        world.announce_rotation()
        ad.wait_until("the image's operator rolled the dependant", lambda: world.rolled("prod") or not healthy(), 90)
        ad.wait_until("the queue drained", lambda: ad.queue_total(world.sqs, queue_url) == 0, 90)
        assert not world.rolled("elsewhere")
        world.rebaseline()
        ad.log("ok: image: a rotation on the template's queue rolled prod/api")
        daemon.docker("stop", "ecs-reloader-test")
        code = inspect()["State"]["ExitCode"]
        assert code == 0, f"exit {code} after SIGTERM:\n{daemon.docker('logs', 'ecs-reloader-test').stderr[-3000:]}"
        assert creds.calls > 0, "credentials did not come from the container credentials endpoint"
        ad.log("ok: image: docker stop (SIGTERM) exits 0")
    finally:
        daemon.docker("rm", "-f", "ecs-reloader-test", check=False)

    # arm64: built without emulation (the stages only copy); its file system then runs under qemu.
    arm = ad.ROOT / "target/dist/linux-arm64/ecs-reloader"
    assert arm.exists(), f"{arm} is missing: ARCHS=arm64 PROFILE=dev scripts/package-lambda.sh builds it"
    build_base(daemon, "linux/arm64", needed_libs(arm, "/usr/aarch64-linux-gnu"), "ecs-reloader-test/base:arm64")
    img = docker_build(daemon, "linux/arm64", arm, "ecs-reloader-test/base:arm64", "ecs-reloader:test-arm64")
    assert img["Architecture"] == "arm64", img["Architecture"]
    rootfs = Path(tempfile.mkdtemp(prefix="ecs-reloader-arm64-rootfs-", dir=ad.TARGET))
    try:
        cid = daemon.docker("create", "ecs-reloader:test-arm64").stdout.strip()
        export = subprocess.Popen([DOCKER, "export", cid], env=daemon.env, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(rootfs)], stdin=export.stdout, check=True)
        assert export.wait() == 0
        daemon.docker("rm", cid)
        os.chmod(rootfs, 0o755)
        qemu = ["qemu-aarch64-static", "-L", str(rootfs)]
        argv = qemu + [str(rootfs / a.lstrip("/")) if a == "/ecs-reloader" else a for a in img["Config"]["Entrypoint"] + c["command"]]
        env = ad.base_env({**env, "ECS_RELOADER_CONFIG": str(rootfs / img_env(img)["ECS_RELOADER_CONFIG"].lstrip("/"))})
        hc = qemu + [str(rootfs / "ecs-reloader")] + img["Config"]["Healthcheck"]["Test"][2:]
        ad.run_serve(emu, world, argv, env, env.get("ECS_RELOADER_SERVE_LISTEN", "0.0.0.0:8080"), queue_url, hc, name="arm64 image")
        ad.log("ok: arm64 image: its own binary, libraries and config under qemu: ready, health check 0, rotation rolled, SIGTERM 0")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def img_env(img):
    return dict(e.split("=", 1) for e in img["Config"]["Env"])
