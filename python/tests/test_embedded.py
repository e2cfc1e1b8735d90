"""The embedded service's life and the ways a client cannot reach a service:
no vmexec, no image, a service killed under it, the Python process gone, a
wrong token, a full service. Only the last needs a VM: the services
started here have no pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import pid1

# Seconds for a process to be gone after what should end it.
GONE_TIMEOUT_S = 30


def gone(pid: int) -> bool:
    """Dead, or a zombie nobody reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_no_vmexec_says_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PID1_VMEXEC", str(tmp_path / "vmexec"))
    with pytest.raises(pid1.VmexecNotFoundError, match="just build") as named:
        pid1.Client()
    assert "PID1_VMEXEC=" in named.value.message
    monkeypatch.delenv("PID1_VMEXEC")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pid1.VmexecNotFoundError, match="no vmexec on PATH"):
        pid1.AsyncClient()
    assert issubclass(pid1.VmexecNotFoundError, pid1.SetupError)


def test_no_image_says_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PID1_IMAGE_DIR", str(tmp_path))
    with pytest.raises(pid1.SetupError, match="just image") as caught:
        pid1.Client()
    assert "exited with status" in caught.value.message


def test_close_stops_the_embedded_service_and_removes_its_directory() -> None:
    client = pid1.Client(pool=0)
    embedded = client.embedded
    assert embedded is not None and client.url == f"unix:{embedded.socket}"
    assert embedded.directory.stat().st_mode & 0o777 == 0o700
    assert client.health()["pool"]["target"] == 0
    assert embedded.socket.exists()
    client.close()
    assert embedded.process.poll() == 0
    assert not embedded.socket.exists()
    assert not list(embedded.directory.glob(f"{embedded.socket.stem}.*")), "a socket or log was left"
    client.close()


async def test_an_async_client_stops_its_service_too() -> None:
    async with pid1.AsyncClient(pool=0) as client:
        embedded = client.embedded
        assert embedded is not None
        assert (await client.health())["pool"]["target"] == 0
    assert embedded.process.poll() == 0
    assert not embedded.socket.exists()


def test_a_forked_child_leaves_its_parents_service_alone() -> None:
    with pid1.Client(pool=0) as client:
        child = os.fork()
        if child == 0:
            try:
                client.close()
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert client.embedded is not None and client.embedded.socket.exists()
        with pid1.Client(url=client.url) as fresh:
            assert fresh.health()["pool"]["target"] == 0


def test_a_killed_service_is_a_clear_unavailable_error() -> None:
    with pid1.Client(pool=0) as client:
        assert client.embedded is not None
        os.kill(client.embedded.pid, signal.SIGKILL)
        client.embedded.process.wait()
        with pytest.raises(pid1.UnavailableError, match="killed by signal 9") as caught:
            client.run("print(1)")
        assert caught.value.code == "service_died"
        with pytest.raises(pid1.UnavailableError):
            client.session()
    with pytest.raises(pid1.UnavailableError, match="cannot reach the pid1 service at unix:/nonexistent"):
        pid1.Client(url="unix:/nonexistent/sock").health()


def test_the_service_dies_with_the_python_process() -> None:
    # The client is made in a thread that ends at once: the service must
    # outlive that thread, and not the process.
    program = textwrap.dedent(
        """
        import sys, threading, time
        import pid1
        made = []
        thread = threading.Thread(target=lambda: made.append(pid1.Client(pool=0)))
        thread.start(); thread.join()
        client = made[0]
        print(client.embedded.pid, client.embedded.socket, flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        assert child.stdout is not None
        pid_text, socket = child.stdout.readline().split()
        pid = int(pid_text)
        with pid1.Client(url=f"unix:{socket}") as other:
            assert other.health()["pool"]["target"] == 0
        assert not gone(pid)
        child.kill()
        child.wait()
        assert wait_gone(pid), f"the service {pid} outlived the Python process that started it"
        # It stopped cleanly: its socket is gone, and its log had no name.
        assert not Path(socket).exists()
        assert not list(Path(socket).parent.glob(f"{Path(socket).stem}.*"))
    finally:
        child.kill()
        child.wait()
        if pid and not gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_wrong_token_is_unauthorized(tcp_service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(pid1.UnauthorizedError) as wrong:
        pid1.Client(url=tcp_service.url, token="not-the-token").health()
    assert wrong.value.status == 401 and wrong.value.code == "unauthorized"
    with pytest.raises(pid1.UnauthorizedError):
        pid1.Client(url=tcp_service.url).run("print(1)")
    with pid1.Client(url=tcp_service.url, token=tcp_service.token) as right:
        assert right.health()["pool"]["target"] == 0
    monkeypatch.setenv("PID1_SERVER", tcp_service.url)
    monkeypatch.setenv("PID1_TOKEN", tcp_service.token)
    with pid1.Client() as from_env:
        assert from_env.embedded is None and from_env.url == tcp_service.url
        assert from_env.health()["status"] in ("ok", "degraded")


def test_a_full_service_is_unavailable_with_its_retry_after() -> None:
    # One VM at most and no queue: a session holds it, so a run is turned away.
    with pid1.Client(pool=0, serve_args=["--max-vms", "1", "--queue", "0"]) as client:
        with client.session(language="sh") as held:
            assert held.exec("echo held").stdout == "held\n"
            with pytest.raises(pid1.UnavailableError) as busy:
                client.run("print(1)")
            assert (busy.value.status, busy.value.code) == (503, "busy")
            assert busy.value.retry_after is not None and busy.value.retry_after > 0
