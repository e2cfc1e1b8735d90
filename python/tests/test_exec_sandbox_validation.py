"""pid1.exec_sandbox's input rules, without a VM: each bad input raises
exec-sandbox's exception before any request reaches the service.

The service here is a stand-in that answers ``/v1/health`` and records
every other request, so a rule that let a call through would show as a
recorded request (and, for the cases the stand-in cannot answer, as a
different exception)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import pytest_asyncio

import pid1.exec_sandbox as es
from pid1.exec_sandbox import (
    CodeValidationError,
    EnvVarValidationError,
    InputValidationError,
    Language,
    NotSupportedError,
    PackageNotAllowedError,
    PermanentError,
    SandboxError,
    Scheduler,
    SchedulerConfig,
    TransientError,
    VmConfigError,
    VmDependencyError,
)

HEALTH = {
    "status": "ok",
    "version": "test",
    "pool": {
        "ready": 0,
        "warming": 0,
        "in_use": 0,
        "capacity": 1,
        "target": 0,
        "waiting": 0,
        "queue_limit": 0,
    },
    "sessions": 0,
    "template": {"state": "ready", "detail": ""},
    "accel": "tcg",
}


class StandIn(ThreadingHTTPServer):
    requests: list[str]
    health: dict[str, object]


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def _answer(self) -> None:
        if self.path == "/v1/health":
            body, status = json.dumps(self.server.health).encode(), 200
        else:
            self.server.requests.append(f"{self.command} {self.path}")
            body = json.dumps({"error": {"kind": "failed", "message": "the stand-in runs nothing"}}).encode()
            status = 500
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    server = StandIn(("127.0.0.1", 0), Handler)
    server.requests = []
    server.health = HEALTH
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest_asyncio.fixture
async def scheduler(stand_in: StandIn) -> AsyncIterator[Scheduler]:
    stand_in.requests.clear()
    async with Scheduler(url=f"http://127.0.0.1:{stand_in.server_address[1]}") as s:
        yield s
    assert stand_in.requests == [], "a bad input reached the service"


# -- the names ----------------------------------------------------------------

EXEC_SANDBOX_NAMES = {
    "AssetChecksumError", "AssetDownloadError", "AssetError", "AssetNotFoundError",
    "BalloonTransientError", "CodeValidationError", "CommunicationError",
    "CommunicationOutcomeUnknownError", "EnvVarValidationError", "ExecutionResult",
    "ExposedPort", "FileInfo", "GuestAgentError", "InputValidationError", "Language",
    "OutputLimitError", "PackageNotAllowedError", "PermanentError", "PortMapping",
    "SandboxDependencyError", "SandboxError", "Scheduler", "SchedulerConfig", "Session",
    "SessionClosedError", "SnapshotError", "SocketAuthError", "TimingBreakdown",
    "TransientError", "VmBootError", "VmBootTimeoutError", "VmCapacityError",
    "VmConfigError", "VmDependencyError", "VmError", "VmGvproxyError", "VmOverlayError",
    "VmPermanentError", "VmQemuCrashError", "VmTimeoutError", "VmTransientError",
    "configure_logging",
}  # fmt: skip


def test_every_exec_sandbox_name_is_exported() -> None:
    assert EXEC_SANDBOX_NAMES <= set(es.__all__)
    for name in es.__all__:
        assert getattr(es, name) is not None


@pytest.mark.parametrize(
    ("name", "bases"),
    [
        ("TransientError", ("SandboxError",)),
        ("PermanentError", ("SandboxError",)),
        ("VmTransientError", ("TransientError",)),
        ("VmBootTimeoutError", ("VmTransientError",)),
        ("VmCapacityError", ("VmTransientError",)),
        ("VmQemuCrashError", ("VmTransientError",)),
        ("VmPermanentError", ("PermanentError",)),
        ("VmConfigError", ("VmPermanentError",)),
        ("VmDependencyError", ("VmPermanentError",)),
        ("SessionClosedError", ("PermanentError",)),
        ("OutputLimitError", ("PermanentError",)),
        ("InputValidationError", ("SandboxError",)),
        ("CodeValidationError", ("InputValidationError",)),
        ("EnvVarValidationError", ("InputValidationError",)),
        ("PackageNotAllowedError", ("SandboxError",)),
        ("CommunicationOutcomeUnknownError", ("SandboxError",)),
        ("SocketAuthError", ("CommunicationError",)),
        ("AssetDownloadError", ("AssetError",)),
        ("NotSupportedError", ("VmConfigError",)),
    ],
)
def test_exception_bases_are_exec_sandboxs(name: str, bases: tuple[str, ...]) -> None:
    cls = getattr(es, name)
    for base in bases:
        assert issubclass(cls, getattr(es, base))
    error = cls("m") if name != "SocketAuthError" else cls("m", 1, 2)
    assert error.message == "m" and isinstance(error.context, dict)


def test_aliases_are_exec_sandboxs() -> None:
    assert es.VmError is es.VmPermanentError
    assert es.VmTimeoutError is es.VmBootTimeoutError
    assert es.VmBootError is es.VmTransientError
    assert not issubclass(es.CommunicationOutcomeUnknownError, (TransientError, PermanentError))


def test_language_values() -> None:
    assert [m.value for m in Language] == ["python", "javascript", "raw"]
    assert Language("raw") is Language.RAW and Language.PYTHON == "python"


# -- SchedulerConfig ----------------------------------------------------------


def test_config_defaults() -> None:
    c = SchedulerConfig()
    assert (c.warm_pool_size, c.default_memory_mb, c.default_timeout_seconds) == (0, 192, 30)
    assert c.session_idle_timeout_seconds == 300 and c.images_dir is None
    assert (c.s3_bucket, c.s3_region, c.s3_prefix, c.max_concurrent_s3_uploads) == (
        None,
        "us-east-1",
        "snapshots/",
        4,
    )
    assert c.enable_package_validation and c.auto_download_assets


@pytest.mark.parametrize(
    "fields",
    [
        {"no_such_field": 1},
        {"warm_pool_size": -1},
        {"default_memory_mb": 127},
        {"default_timeout_seconds": 0},
        {"default_timeout_seconds": 301},
        {"session_idle_timeout_seconds": 9},
        {"session_idle_timeout_seconds": 3601},
        {"max_concurrent_s3_uploads": 17},
        {"memory_overcommit_ratio": 0.5},
        {"cpu_overcommit_ratio": 21},
        {"host_memory_reserve_ratio": 0.6},
        {"host_cpu_reserve_cores": -1},
        {"warm_pool_size": "2"},
        {"enable_package_validation": "yes"},
    ],
)
def test_config_refuses(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(fields))):
        SchedulerConfig(**fields)  # type: ignore[arg-type]


def test_config_is_frozen_and_accepts_unused_fields() -> None:
    c = SchedulerConfig(s3_bucket="b", memory_overcommit_ratio=3, images_dir="/images")  # type: ignore[arg-type]
    assert c.images_dir == Path("/images") and c.memory_overcommit_ratio == 3.0
    with pytest.raises(ValueError):
        c.warm_pool_size = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.warm_pool_size = 3  # type: ignore[misc]
    assert c.model_copy(update={"warm_pool_size": 2}).warm_pool_size == 2
    assert c.model_dump()["s3_bucket"] == "b"


# -- run() and session() -------------------------------------------------------

BAD_RUNS = [
    ({"timeout_seconds": 0}, ValueError),
    ({"timeout_seconds": 301}, ValueError),
    ({"code": "x" * (1024 * 1024 + 1)}, VmConfigError),
    ({"memory_mb": 127}, VmConfigError),
    ({"code": ""}, CodeValidationError),
    ({"code": "  \n\t "}, CodeValidationError),
    ({"code": "print(1)\0"}, CodeValidationError),
    ({"code": "é" * (600 * 1024)}, CodeValidationError),
    ({"env_vars": {f"V{i}": "x" for i in range(101)}}, EnvVarValidationError),
    ({"env_vars": {"A" * 257: "x"}}, EnvVarValidationError),
    ({"env_vars": {"": "x"}}, EnvVarValidationError),
    ({"env_vars": {"A": "x" * 4097}}, EnvVarValidationError),
    ({"env_vars": {"A": "a\nb"}}, EnvVarValidationError),
    ({"env_vars": {"A": "a\x1b[31m"}}, EnvVarValidationError),
    ({"env_vars": {"A": "\x7f"}}, EnvVarValidationError),
    ({"env_vars": {"A\x01": "x"}}, EnvVarValidationError),
    ({"env_vars": {"A-B": "x"}}, EnvVarValidationError),
    ({"env_vars": {"A": 1}}, EnvVarValidationError),
    ({"language": "cobol"}, ValueError),
    ({"language": "javascript"}, NotSupportedError),
    ({"language": Language.JAVASCRIPT}, NotSupportedError),
    ({"allow_network": True}, NotSupportedError),
    ({"allowed_domains": ["example.com"]}, NotSupportedError),
    ({"expose_ports": [8080]}, NotSupportedError),
    ({"expose_ports": [es.PortMapping(internal=8080, external=3000)]}, NotSupportedError),
    ({"packages": ["pandas"]}, PackageNotAllowedError),
    ({"packages": ["numpy="]}, PackageNotAllowedError),
    ({"packages": ["../evil==1"]}, PackageNotAllowedError),
    ({"packages": [f"p{i}==1" for i in range(51)]}, PackageNotAllowedError),
]

BLOCKED = [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GLIBC_TUNABLES", "NODE_OPTIONS",
    "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "BASH_ENV", "ENV", "PROMPT_COMMAND",
    "IFS", "PATH", "TMPDIR", "MALLOC_CHECK_", "ld_preload", "Path", "bash_env",
]  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize(("change", "error"), BAD_RUNS)
async def test_run_refuses_before_any_request(
    scheduler: Scheduler, change: dict[str, object], error: type[Exception]
) -> None:
    call: dict[str, object] = {"code": "print(1)", "language": "python", **change}
    with pytest.raises(error):
        await scheduler.run(**call)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", BLOCKED)
async def test_blocked_env_names(scheduler: Scheduler, name: str) -> None:
    with pytest.raises(EnvVarValidationError, match="Blocked"):
        await scheduler.run("print(1)", language="python", env_vars={name: "x"})


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "error"),
    [
        (c, e)
        for c, e in BAD_RUNS
        if set(c) & {"memory_mb", "language", "allow_network", "allowed_domains", "expose_ports", "packages"}
    ],
)
async def test_session_refuses_before_any_request(
    scheduler: Scheduler, change: dict[str, object], error: type[Exception]
) -> None:
    call: dict[str, object] = {"language": "python", **change}
    with pytest.raises(error):
        await scheduler.session(**call)  # type: ignore[arg-type]


def test_refusals_are_exec_sandboxs_families() -> None:
    """The refusals a caller of exec-sandbox catches as input errors are
    InputValidationError; pid1's missing features are permanent."""
    assert issubclass(CodeValidationError, InputValidationError)
    assert issubclass(NotSupportedError, PermanentError) and issubclass(NotSupportedError, SandboxError)


@pytest.mark.asyncio
async def test_not_started() -> None:
    with pytest.raises(SandboxError, match="not started"):
        await Scheduler().run("print(1)", language="python")


@pytest.mark.asyncio
async def test_images_dir_without_image(tmp_path: Path) -> None:
    with pytest.raises(VmDependencyError, match="just image"):
        async with Scheduler(SchedulerConfig(images_dir=tmp_path)):
            pass


@pytest.mark.asyncio
async def test_no_vmexec_says_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PID1_SERVER", raising=False)
    monkeypatch.setenv("PID1_VMEXEC", str(tmp_path / "vmexec"))
    with pytest.raises(VmDependencyError, match="just build"):
        async with Scheduler():
            pass


@pytest.mark.asyncio
async def test_unreachable_service_is_a_sandbox_error(tmp_path: Path) -> None:
    with pytest.raises(es.CommunicationError):
        async with Scheduler(url=f"unix:{tmp_path / 'none.sock'}"):
            pass


@pytest.mark.asyncio
async def test_wait_pool_ready_times_out_on_a_pool_that_stays_empty(stand_in: StandIn) -> None:
    pool = {**HEALTH["pool"], "target": 1, "ready": 0}  # type: ignore[dict-item]
    stand_in.health = {**HEALTH, "pool": pool}
    try:
        url = f"http://127.0.0.1:{stand_in.server_address[1]}"
        async with Scheduler(SchedulerConfig(warm_pool_size=1), url=url) as scheduler:
            with pytest.raises(TimeoutError, match="0 of 1"):
                await scheduler.wait_pool_ready(timeout=0.3)
        async with Scheduler(url=url) as scheduler:
            await scheduler.wait_pool_ready(timeout=0.3)  # no pool asked for: no wait
    finally:
        stand_in.health = HEALTH
