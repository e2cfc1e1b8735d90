"""pid1.exec_sandbox against real VMs, through the shared service of
conftest.py: a run with streaming callbacks, exit codes for a signal and a
timeout, sessions with state, files and their errors."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from pid1.exec_sandbox import (
    ExecutionResult,
    Language,
    OutputLimitError,
    Scheduler,
    SchedulerConfig,
    SessionClosedError,
    VmPermanentError,
)


@pytest_asyncio.fixture
async def scheduler(service_url: str) -> AsyncIterator[Scheduler]:
    async with Scheduler(SchedulerConfig(default_timeout_seconds=60), url=service_url) as s:
        yield s


@pytest.mark.asyncio
async def test_run_streams_output_in_order(scheduler: Scheduler) -> None:
    events: list[tuple[str, str]] = []

    def on_stderr(chunk: str) -> None:
        events.append(("err", chunk))
        raise RuntimeError("a callback that fails is switched off, the run goes on")

    result = await scheduler.run(
        "import os, sys, time\n"
        "for i in range(3):\n"
        "    print(i, flush=True); time.sleep(0.05)\n"
        "print('oops', file=sys.stderr, flush=True)\n"
        "print('more', file=sys.stderr, flush=True)\n"
        "print(os.environ['GREETING'])\n",
        language="python",
        env_vars={"GREETING": "hello there"},
        on_stdout=lambda chunk: events.append(("out", chunk)),
        on_stderr=on_stderr,
    )
    assert isinstance(result, ExecutionResult)
    assert result.exit_code == 0
    assert result.stdout == "0\n1\n2\nhello there\n"
    assert result.stderr == "oops\nmore\n"
    assert "".join(c for s, c in events if s == "out") == result.stdout
    # The failing callback was switched off after its first call; the output
    # was still collected.
    assert [s for s, _ in events].count("err") == 1
    assert next(c for s, c in events if s == "err").startswith("oops")
    assert result.execution_time_ms is not None and result.execution_time_ms > 0
    assert result.external_cpu_time_ms is not None and result.external_memory_peak_mb is not None
    assert result.timing.total_ms >= result.timing.execute_ms > 0
    assert result.warm_pool_hit or result.l1_cache_hit or result.timing.boot_ms > 0


@pytest.mark.asyncio
async def test_signal_is_128_plus_n_and_raw_is_shell(scheduler: Scheduler) -> None:
    result = await scheduler.run(
        'echo "$WHO from $(pwd)"; kill -9 $$', language=Language.RAW, env_vars={"WHO": "sh it"}
    )
    assert result.stdout == "sh it from /home/user\n"
    assert result.exit_code == 137


@pytest.mark.asyncio
async def test_timeout_is_exit_minus_one(scheduler: Scheduler) -> None:
    result = await scheduler.run("import time\ntime.sleep(30)", language="python", timeout_seconds=1)
    assert result.exit_code == -1, result
    assert result.stderr.endswith("Execution timed out after 1 seconds"), result


@pytest.mark.asyncio
async def test_session_keeps_state_and_files(scheduler: Scheduler, tmp_path: Path) -> None:
    local = tmp_path / "model.pkl"
    local.write_bytes(b"\x80\x04weights")
    async with await scheduler.session(language="python") as session:
        assert not session.closed and session.exec_count == 0
        await session.exec("import math", env_vars={"MODE": "test"})
        await session.exec("x = math.pi * 2")
        result = await session.exec("import os\nprint(f'{x:.4f}', os.environ['MODE'])")
        assert result.stdout == "6.2832 test\n" and result.exit_code == 0
        assert session.exec_count == 3

        await session.write_file("input.csv", b"name,score\nAlice,95\n")
        await session.write_file("data/model.pkl", local)
        await session.write_file("run.sh", io.BytesIO(b"#!/bin/sh\necho ran\n"), make_executable=True)
        await session.exec("open('output.csv', 'w').write(open('input.csv').read().upper())")
        await session.read_file("output.csv", destination=tmp_path / "output.csv")
        assert (tmp_path / "output.csv").read_bytes() == b"NAME,SCORE\nALICE,95\n"
        buffer = io.BytesIO()
        await session.read_file("data/model.pkl", destination=buffer)
        assert buffer.getvalue() == local.read_bytes()
        listing = {f.name: f for f in await session.list_files("")}
        assert listing["data"].is_dir and listing["data"].size == 0
        assert listing["input.csv"].size == 20 and not listing["input.csv"].is_dir
        ran = await session.exec(
            "import subprocess; print(subprocess.run(['./run.sh'], capture_output=True).stdout)"
        )
        assert ran.stdout == "b'ran\\n'\n"

        with pytest.raises(VmPermanentError):
            await session.read_file("no-such-file", destination=io.BytesIO())
        with pytest.raises(OutputLimitError):
            await session.exec("print('x' * (2 * 1024 * 1024))")
        late = await session.exec("import time; time.sleep(30)", timeout_seconds=1)
        assert late.exit_code == -1 and "timed out" in late.stderr
        after = await session.exec("print(round(x))")
        assert after.stdout == "6\n", "the session outlives a step's timeout"
    assert session.closed
    with pytest.raises(SessionClosedError):
        await session.exec("print(x)")


@pytest.mark.asyncio
async def test_shell_session(scheduler: Scheduler) -> None:
    async with await scheduler.session(language="raw") as session:
        await session.exec("cd /tmp && export MY_VAR=hello")
        result = await session.exec("echo $MY_VAR from $(pwd)")
        assert result.stdout == "hello from /tmp\n"


@pytest.mark.asyncio
async def test_scheduler_exit_closes_its_sessions(service_url: str) -> None:
    async with Scheduler(url=service_url) as scheduler:
        session = await scheduler.session(language="python")
        await session.exec("y = 1")
    assert session.closed


@pytest.mark.asyncio
async def test_embedded_default_with_a_warm_pool() -> None:
    """No url and no PID1_SERVER: an embedded service of the scheduler's
    own, its pool warm_pool_size, stopped on exit."""
    async with Scheduler(SchedulerConfig(warm_pool_size=1)) as scheduler:
        client = scheduler._client
        assert client is not None and client.embedded is not None
        await scheduler.wait_pool_ready(timeout=300)
        pool = (await client.health())["pool"]
        assert pool["target"] == 1 and pool["ready"] == 1
        result = await scheduler.run("print(6 * 7)", language="python")
        assert result.stdout == "42\n" and result.warm_pool_hit
        embedded = client.embedded
    assert embedded.exited() is not None, "the embedded service outlived its scheduler"
