"""``packages`` against real VMs, through the shared embedded service: a
run and a session import what they named and nothing else, a set the
index does not have is refused without harm to the next run, and the
exec-sandbox drop-in installs pinned specs and refuses unpinned ones.

The first test pays for the set's first use (resolve, install, a layer
and a template); the others find it cached. They need the service side
of packages: without it (``vmexec serve --help`` lists no
``--pool-packages``) the module is skipped, saying so."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import pid1
from pid1.exec_sandbox import PackageNotAllowedError, Scheduler

SIX = "six==1.17.0"

IMPORT_SIX = "import six; print(six.__version__)"


def _serve_takes_packages() -> bool:
    vmexec = os.environ.get("PID1_VMEXEC") or str(Path(__file__).resolve().parents[2] / "target/release/vmexec")
    try:
        done = subprocess.run([vmexec, "serve", "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--pool-packages" in done.stdout


pytestmark = pytest.mark.skipif(
    not _serve_takes_packages(),
    reason="this vmexec's `serve --help` lists no --pool-packages: the service cannot install packages yet",
)


def test_a_run_imports_the_packages_it_names(client: pid1.Client) -> None:
    result = client.run(IMPORT_SIX, packages=[SIX])
    assert result.ok, result.stderr
    assert result.stdout == "1.17.0\n"
    assert result.packages == [SIX]
    pieces: list[str] = []
    streamed = client.run(IMPORT_SIX, packages=(SIX,), on_stdout=pieces.append)
    assert "".join(pieces) == "1.17.0\n" and streamed.packages == [SIX]


def test_a_run_without_packages_cannot_import_them(client: pid1.Client) -> None:
    result = client.run(IMPORT_SIX)
    assert result.exit_code == 1 and "ModuleNotFoundError" in result.stderr
    assert result.packages == []


def test_a_session_keeps_its_packages_across_steps(client: pid1.Client) -> None:
    with client.session(packages=[SIX]) as session:
        assert session.packages == [SIX]
        first = session.exec("import six\nversion = six.__version__")
        # Imported afresh, from the layer again, not from the first step's module.
        second = session.exec("import sys\ndel sys.modules['six']\nimport six\nprint(six.__version__, version)")
    assert first.ok, first.stderr
    assert second.ok and second.stdout == "1.17.0 1.17.0\n", second.stderr
    assert first.packages == second.packages == [SIX]


def test_an_unknown_package_raises_and_the_next_run_works(client: pid1.Client) -> None:
    with pytest.raises(pid1.PackageError) as caught:
        client.run("print(1)", packages=["pid1-test-no-such-package-3f9c==1.0"])
    assert (caught.value.status, caught.value.code, caught.value.field) == (422, "packages", "packages")
    assert "pid1-test-no-such-package-3f9c" in caught.value.message
    after = client.run("print(2)")
    assert after.ok and after.stdout == "2\n"


@pytest.mark.asyncio
async def test_the_drop_in_installs_pinned_specs_and_refuses_unpinned_ones(service_url: str) -> None:
    async with Scheduler(url=service_url) as scheduler:
        result = await scheduler.run(IMPORT_SIX, language="python", packages=[SIX])
        assert (result.exit_code, result.stdout) == (0, "1.17.0\n"), result.stderr
        # The service takes an unpinned "six"; exec-sandbox does not, and
        # neither does its drop-in, before any request.
        with pytest.raises(PackageNotAllowedError, match="Must include version specifier"):
            await scheduler.run(IMPORT_SIX, language="python", packages=["six"])
