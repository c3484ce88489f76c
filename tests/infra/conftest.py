"""Fixtures: the patched AWS emulator on a free loopback port, and boto3 clients for it."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator(launcher=ROOT / "tests/emulator/moto_launcher.py"):
    """The emulator on a free loopback port, for as long as the generator is not closed."""
    port = _free_port()
    env = dict(os.environ, MOTO_ECS_SERVICE_RUNNING="1")
    proc = subprocess.Popen(
        [sys.executable, str(launcher), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("emulator did not start")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def endpoint():
    yield from emulator()


@pytest.fixture(scope="session")
def aws(endpoint):
    def client(name):
        return boto3.client(
            name,
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    return client
