"""exec-sandbox's data models: ``Language``, ``FileInfo``, ``PortMapping``,
``ExposedPort``, ``TimingBreakdown`` and ``ExecutionResult``.

exec-sandbox makes them pydantic models; pydantic is not a dependency here,
so they are dataclasses with the same fields, defaults and keyword
construction, plus ``model_dump()`` and ``model_copy()`` for code that
calls them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, TypeVar

__all__ = [
    "ExecutionResult",
    "ExposedPort",
    "FileInfo",
    "Language",
    "PortMapping",
    "TimingBreakdown",
]

_M = TypeVar("_M", bound="_Model")


class _Model:
    """The two pydantic methods that callers of exec-sandbox use."""

    def model_dump(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    def model_copy(self: _M, *, update: dict[str, Any] | None = None) -> _M:
        return dataclasses.replace(self, **(update or {}))  # type: ignore[type-var]


class Language(str, Enum):
    """The languages exec-sandbox names. ``RAW`` is a shell script (the
    guest's bash; a ``#!`` line picks another interpreter); ``JAVASCRIPT``
    is refused with ``NotSupportedError``: pid1's guest has no JavaScript
    runtime."""

    PYTHON = "python"
    JAVASCRIPT = "javascript"
    RAW = "raw"


@dataclass(kw_only=True)
class FileInfo(_Model):
    """One entry of ``Session.list_files()``."""

    name: str
    is_dir: bool
    size: int
    """Bytes; 0 for a directory."""


@dataclass(kw_only=True)
class PortMapping(_Model):
    """A guest port to expose on the host. Accepted so that code builds,
    refused by ``run()``/``session()``: pid1 guests have no network."""

    internal: int
    external: int | None = None
    protocol: Literal["tcp", "udp"] = "tcp"

    def __post_init__(self) -> None:
        if not 1 <= self.internal <= 65535:
            raise ValueError(f"internal: a port from 1 to 65535, not {self.internal}")
        if self.external is not None and not 1024 <= self.external <= 65535:
            raise ValueError(f"external: a port from 1024 to 65535, not {self.external}")
        if self.protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol: 'tcp' or 'udp', not {self.protocol!r}")


@dataclass(kw_only=True)
class ExposedPort(_Model):
    """An exposed port as allocated; never produced here (no network)."""

    internal: int
    external: int
    host: str = "127.0.0.1"
    protocol: Literal["tcp", "udp"] = "tcp"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.external}"


@dataclass(kw_only=True)
class TimingBreakdown(_Model):
    """Where a call's time went, in milliseconds.

    From pid1's figures: ``boot_ms`` is the service's time to a VM in hand
    (0 for a pooled VM), ``execute_ms`` the job's send-to-result time,
    ``setup_ms`` the rest of the service's time, and ``total_ms`` the whole
    call as this client saw it (HTTP included). For a session step,
    ``execute_ms`` and ``total_ms`` are the step's time as this client saw
    it. Fields pid1 has no figure for stay ``None``.
    """

    setup_ms: int
    boot_ms: int
    execute_ms: int
    total_ms: int
    connect_ms: int | None = None
    admission_ms: int | None = None
    overlay_ms: int | None = None
    qemu_cmd_build_ms: int | None = None
    gvproxy_start_ms: int | None = None
    qemu_fork_ms: int | None = None
    guest_wait_ms: int | None = None
    l1_restore_ms: int | None = None
    """The snapshot restore, when the VM was restored for this call."""
    teardown_ms: int | None = None
    boot_retries: int = 0


@dataclass(kw_only=True)
class ExecutionResult(_Model):
    """What a run or a session step left.

    ``exit_code`` is the exit status, ``128 + N`` for a death by signal N,
    and ``-1`` when the timeout killed the code (its stderr then ends with
    a line that says so). ``execution_time_ms`` is the job's time in the
    VM; ``external_cpu_time_ms`` and ``external_memory_peak_mb`` come from
    the job's cgroup (``None`` for a session step, which pid1 does not
    measure).
    """

    stdout: str
    stderr: str
    exit_code: int
    timing: TimingBreakdown
    execution_time_ms: int | None = None
    external_cpu_time_ms: int | None = None
    external_memory_peak_mb: int | None = None
    external_cpu_nr_throttled: int | None = None
    warm_pool_hit: bool = False
    """The VM came from the service's warm pool."""
    l1_cache_hit: bool = False
    """The VM was restored from the snapshot template for this call."""
    spawn_ms: int | None = None
    process_ms: int | None = None
    exposed_ports: list[ExposedPort] = field(default_factory=list)
