"""The binary run exactly as infra/, config/, the README and the Dockerfile say (see
as_deployed.py): each scenario in its own network and mount namespaces, with its own emulator.

The scenarios spend most of their time waiting (readiness, rollout polls, SIGTERM ending a
20-second long poll), and share no address or file, so they all start at once, the first time a
test asks for one, and each test then waits for its own."""

import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT

SCRIPT = ROOT / "tests/infra/as_deployed.py"
SCENARIOS = ["ecs", "lambda", "configs", "readme", "image"]


@pytest.fixture(scope="module")
def runs():
    started = {}
    for name in SCENARIOS:
        out = tempfile.TemporaryFile(mode="w+")
        started[name] = (subprocess.Popen([sys.executable, str(SCRIPT), name], stdout=out, stderr=subprocess.STDOUT, text=True), out)
    yield started
    for p, out in started.values():
        if p.poll() is None:
            p.kill()
            p.wait()
        out.close()


def _run(runs, scenario):
    p, out = runs[scenario]
    code = p.wait(timeout=1500)
    out.seek(0)
    text = out.read()
    print(text[-4000:])
    if code == 77:
        pytest.skip(next((l for l in text.splitlines() if l.startswith("SKIP")), "skipped"))
    assert code == 0, f"{scenario} exited {code}:\n{text[-8000:]}"
    return text


def test_every_template_container_runs_as_rendered(runs):
    assert "ok: ecs-reloader-0 container ecs-reloader" in _run(runs, "ecs")


def test_every_template_function_runs_as_rendered_on_both_architectures(runs):
    out = _run(runs, "lambda")
    assert "function (x86_64)" in out and "function (arm64)" in out


def test_every_config_example_runs(runs):
    out = _run(runs, "configs")
    for name in ["serve.toml", "lambda.toml", "cli.toml", "ecs-reloader.toml", "organisation.toml"]:
        assert f"ok: config/{name}" in out


def test_every_readme_command_line_runs(runs):
    _run(runs, "readme")


def test_the_image_builds_and_runs_read_only_as_non_root(runs):
    out = _run(runs, "image")
    assert "HEALTHCHECK reports healthy" in out and "arm64 image" in out
