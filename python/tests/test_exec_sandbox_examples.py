"""exec-sandbox's README examples (tests/examples/, the import changed to
pid1.exec_sandbox) run unchanged against the shared service: each one's
output is what the README says, and the examples of features pid1 lacks
fail with NotSupportedError instead of running without them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent / "examples"

# Seconds one example may take: a few VMs restored on a loaded TCG host.
EXAMPLE_TIMEOUT_S = 240

WORKS = {
    "hello.py": "Hello from a secure VM!\n\n0\n",
    "session.py": "6.2832\n\n3\n",
    "session_shell.py": "hello from /tmp\n\n",
    "file_io.py": "data.bin 9B\ninput.csv 26B\nmodel.pkl 7B\noutput.csv 26B\n",
    "error_handling.py": "",
    "configuration.py": "configured\n\n",
    "exit_codes.py": "killed by signal 11\n",
    "pitfalls.py": "1 True\n42\n\n",
    "packages.py": "2.2.0\n\n",
}

REFUSED = {
    "session_javascript.py": "javascript",
    "network.py": "network",
    "port_forwarding.py": "expose_ports",
}


def test_every_example_is_checked() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(WORKS) | set(REFUSED) | {
        "boot_log.py",
        "streaming.py",
    }


def run_example(name: str, service_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    (cwd / "local_model.pkl").write_bytes(b"weights")
    env = {**os.environ, "PID1_SERVER": service_url}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(WORKS))
def test_example_runs_as_the_readme_says(name: str, service_url: str, tmp_path: Path) -> None:
    done = run_example(name, service_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == WORKS[name]
    if name == "file_io.py":
        assert (tmp_path / "output.csv").read_text() == "NAME,SCORE\nALICE,95\nBOB,87"


def test_streaming_example_prints_each_chunk(service_url: str, tmp_path: Path) -> None:
    """Chunks come as the guest writes them (exec-sandbox batches by time,
    pid1 by write), so only their order and content are the README's."""
    done = run_example("streaming.py", service_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[OUT] ") and "[ERR]" not in done.stdout
    assert done.stdout.replace("[OUT] ", "") == "0\n1\n2\n3\n4\n"


def test_boot_log_example_says_how_the_vm_started(service_url: str, tmp_path: Path) -> None:
    done = run_example("boot_log.py", service_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[boot] pid1: VM ") and " ms" in done.stdout


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_example_of_a_missing_feature_is_refused(name: str, service_url: str, tmp_path: Path) -> None:
    done = run_example(name, service_url, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pid1.exec_sandbox.exceptions.NotSupportedError") and REFUSED[name] in last
