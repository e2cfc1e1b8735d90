"""Shared fixtures: one embedded service (a real ``vmexec serve`` with real
VMs) for the whole test session, its URL for clients that connect to it
explicitly, and a TCP service with a token for the authorization tests.

``vmexec`` comes from ``PID1_VMEXEC``, else the checkout's
``target/release/vmexec``. The tests that need no VM (bad setup, the wire)
run without an image.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pid1

ROOT = Path(__file__).resolve().parents[2]

# Seconds for the shared service's first warm VM: a restore and its warm-up
# jobs, or on a first use the template's making (a cold boot and a
# snapshot), on a loaded 2-core TCG host.
READY_TIMEOUT_S = 300


def vmexec_path() -> str:
    return os.environ.get("PID1_VMEXEC") or str(ROOT / "target" / "release" / "vmexec")


@pytest.fixture(scope="session", autouse=True)
def _environment() -> Iterator[None]:
    """The tests choose their service themselves: a caller's PID1_SERVER or
    PID1_TOKEN must not redirect them."""
    saved = {name: os.environ.pop(name) for name in ("PID1_SERVER", "PID1_TOKEN") if name in os.environ}
    os.environ["PID1_VMEXEC"] = vmexec_path()
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def client(_environment: None) -> Iterator[pid1.Client]:
    """The embedded service every VM test shares, with a warm VM ready."""
    with pid1.Client() as shared:
        shared.wait_ready(timeout=READY_TIMEOUT_S)
        yield shared


@pytest.fixture(scope="session")
def service_url(client: pid1.Client) -> str:
    """The shared service's ``unix:`` URL, for clients given a ``url``."""
    return client.url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TcpService:
    """A ``vmexec serve`` on TCP with a bearer token and no pool: the calls
    made to it (health, refused ones) need no VM."""

    def __init__(self, directory: Path) -> None:
        self.token = secrets.token_hex(16)
        token_file = directory / "token"
        token_file.write_text(self.token + "\n")
        token_file.chmod(0o600)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = directory / "serve.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [vmexec_path(), "serve", "--listen", f"tcp:{self.url[len('http://'):]}",
                 "--token-file", str(token_file), "--pool", "0", "--grace", "1"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip

    def wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        host, port = self.url[len("http://") :].split(":")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vmexec serve exited: {self.log.read_text()}")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"vmexec serve did not listen within {timeout} s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def tcp_service(tmp_path_factory: pytest.TempPathFactory, _environment: None) -> Iterator[TcpService]:
    service = TcpService(tmp_path_factory.mktemp("tcp-service"))
    try:
        service.wait()
        yield service
    finally:
        service.stop()
