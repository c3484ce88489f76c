"""The binary run exactly as infra/, config/, the README and the Dockerfile say (see
as_deployed.py): each scenario in its own network and mount namespaces, with its own emulator."""

import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "tests/infra/as_deployed.py"


def _run(scenario):
    out = subprocess.run([sys.executable, str(SCRIPT), scenario], capture_output=True, text=True, timeout=1200)
    print(out.stdout[-4000:])
    if out.returncode == 77:
        pytest.skip(next((l for l in out.stdout.splitlines() if l.startswith("SKIP")), "skipped"))
    assert out.returncode == 0, f"{scenario}:\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}"
    return out.stdout


def test_every_template_container_runs_as_rendered():
    assert "ok: ecs-reloader-0 container ecs-reloader" in _run("ecs")


def test_every_template_function_runs_as_rendered_on_both_architectures():
    out = _run("lambda")
    assert "function (x86_64)" in out and "function (arm64)" in out


def test_every_config_example_runs():
    _run("configs")


def test_every_readme_command_line_runs():
    _run("readme")


def test_the_image_builds_and_runs_read_only_as_non_root():
    out = _run("image")
    assert "HEALTHCHECK reports healthy" in out and "arm64 image" in out
