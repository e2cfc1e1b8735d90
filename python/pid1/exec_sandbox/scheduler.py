"""``Scheduler``: exec-sandbox's entry point, over the pid1 service.

``async with Scheduler(config) as scheduler`` connects a ``pid1.AsyncClient``:
to ``url`` / ``PID1_SERVER`` when given, else to an embedded ``vmexec
serve`` whose warm pool is ``config.warm_pool_size``. Each ``run()`` gets a
fresh VM that the service destroys after it; ``session()`` holds one.
Every input rule is checked before a request is sent (``validation``).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pid1

from . import validation
from ._native import (
    RUN_OUTPUT_LIMIT,
    SERVICE_LANGUAGE,
    check_output_limits,
    env_prefix,
    execution_result,
    guarded,
    translate,
)
from .config import SchedulerConfig
from .exceptions import SandboxError, VmDependencyError
from .models import ExecutionResult, Language, PortMapping
from .session import Session

__all__ = ["Scheduler"]

MAX_SERVICE_ENV_VARS = 64
"""The service's limit on a run's environment; past it (exec-sandbox takes
100) the variables are set by the code itself, as in a session."""

POOL_POLL_S = 0.2
"""How often ``wait_pool_ready`` asks the service's health."""


class Scheduler:
    """Runs code in pid1 microVMs with exec-sandbox's API.

    ``url``/``token`` (pid1's, keyword-only) name a running service, as
    ``pid1.AsyncClient`` takes them; without them ``PID1_SERVER`` /
    ``PID1_TOKEN``, else an embedded service started on entry and stopped on
    exit."""

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
    ) -> None:
        self.config = config or SchedulerConfig()
        self._url = url
        self._token = token
        self._client: pid1.AsyncClient | None = None
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()

    async def __aenter__(self) -> Scheduler:
        if self._client is not None:
            raise SandboxError("Scheduler already started")
        self._client = await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            # Sessions left open die with the scheduler, as exec-sandbox's do.
            await asyncio.gather(*(s._close_quietly() for s in list(self._sessions)), return_exceptions=True)
        finally:
            await client.aclose()

    async def _connect(self) -> pid1.AsyncClient:
        serve_args: list[str] = []
        images = self.config.images_dir
        if images is not None:
            kernel, rootfs = Path(images) / "vmlinux", Path(images) / "rootfs.erofs"
            missing = [str(p) for p in (kernel, rootfs) if not p.is_file()]
            if missing:
                raise VmDependencyError(
                    f"images_dir={images}: no {' or '.join(missing)}; build them with `just image`",
                    context={"images_dir": str(images)},
                )
            serve_args += ["--kernel", str(kernel), "--rootfs", str(rootfs)]
        try:
            client = pid1.AsyncClient(
                self._url, self._token, pool=self.config.warm_pool_size, serve_args=serve_args
            )
        except pid1.Pid1Error as e:
            raise translate(e, operation="start") from e
        try:
            await client.health()
        except pid1.Pid1Error as e:
            await client.aclose()
            raise translate(e, operation="start") from e
        except BaseException:
            await client.aclose()
            raise
        return client

    def _started(self) -> pid1.AsyncClient:
        if self._client is None:
            raise SandboxError("Scheduler not started. Use: async with Scheduler() as scheduler:")
        return self._client

    async def wait_pool_ready(self, timeout: float = 120) -> None:
        """Waits until the service reports its warm pool full (``ready`` at
        its target); returns at once when ``warm_pool_size`` is 0. Raises
        ``TimeoutError`` past ``timeout`` seconds."""
        client = self._started()
        if self.config.warm_pool_size == 0:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                pool = (await client.health()).get("pool", {})
            except pid1.Pid1Error as e:
                raise translate(e, operation="wait_pool_ready") from e
            if pool.get("ready", 0) >= pool.get("target", 0):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"warm pool not ready within {timeout:g}s: "
                    f"{pool.get('ready', 0)} of {pool.get('target', 0)} VMs ready"
                )
            await asyncio.sleep(POOL_POLL_S)

    def _prepare(
        self,
        *,
        language: str | Language,
        packages: list[str] | None,
        memory_mb: int | None,
        allow_network: bool,
        allowed_domains: list[str] | None,
        expose_ports: list[PortMapping | int] | None,
    ) -> tuple[pid1.AsyncClient, Language, int, list[str]]:
        """exec-sandbox's checks before a VM is taken, in its order."""
        client = self._started()
        memory = memory_mb or self.config.default_memory_mb
        validation.check_memory(memory)
        lang = validation.check_language(language)
        validation.check_features(
            allow_network=allow_network, allowed_domains=allowed_domains, expose_ports=expose_ports
        )
        specs = validation.check_packages(packages, lang)
        return client, lang, memory, specs

    async def run(
        self,
        code: str,
        *,
        language: str | Language,
        packages: list[str] | None = None,
        timeout_seconds: int | None = None,
        memory_mb: int | None = None,
        allow_network: bool = False,
        allowed_domains: list[str] | None = None,
        expose_ports: list[PortMapping | int] | None = None,
        env_vars: dict[str, str] | None = None,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        on_boot_log: Callable[[str], None] | None = None,
    ) -> ExecutionResult:
        """Runs ``code`` in a fresh VM, destroyed after it. A timeout is a
        result with ``exit_code=-1``; ``memory_mb`` is the job's memory
        limit; ``on_boot_log`` gets one line saying how the VM started
        (pid1 VMs are restored, there is no boot console to stream).
        ``packages``: pinned specs (``"pandas==2.2.0"``) the code can import;
        a set's first use installs it, which takes tens of seconds."""
        validation.check_timeout(timeout_seconds)
        validation.check_code_size(code)
        client, lang, memory, specs = self._prepare(
            language=language,
            packages=packages,
            memory_mb=memory_mb,
            allow_network=allow_network,
            allowed_domains=allowed_domains,
            expose_ports=expose_ports,
        )
        validation.check_code(code)
        env = validation.check_env_vars(env_vars)
        timeout = timeout_seconds if timeout_seconds is not None else self.config.default_timeout_seconds
        if len(env) > MAX_SERVICE_ENV_VARS:
            code, env = env_prefix(lang, env) + code, {}
        began = time.monotonic()
        try:
            result = await client.run(
                code,
                language=SERVICE_LANGUAGE[lang],
                timeout=timeout,
                env=env or None,
                memory_limit_mb=memory,
                on_stdout=guarded(on_stdout, "on_stdout"),
                on_stderr=guarded(on_stderr, "on_stderr"),
                output_limit=RUN_OUTPUT_LIMIT,
                packages=specs,
            )
        except pid1.Pid1Error as e:
            raise translate(e, operation="run") from e
        client_ms = round((time.monotonic() - began) * 1000)
        if on_boot_log is not None:
            _boot_log(on_boot_log, result)
        check_output_limits(result, operation="run")
        return execution_result(result, timeout_seconds=timeout, client_ms=client_ms, in_session=False)

    async def session(
        self,
        *,
        language: str | Language,
        packages: list[str] | None = None,
        memory_mb: int | None = None,
        allow_network: bool = False,
        allowed_domains: list[str] | None = None,
        expose_ports: list[PortMapping | int] | None = None,
        idle_timeout_seconds: int | None = None,
        on_boot_log: Callable[[str], None] | None = None,
    ) -> Session:
        """Opens a session: a VM held until ``close()``, the scheduler's
        exit, or ``idle_timeout_seconds`` without a call (default: the
        config's). ``packages``: as ``run()``'s, for every step. Use it as
        ``async with await scheduler.session(...)``."""
        client, lang, memory, specs = self._prepare(
            language=language,
            packages=packages,
            memory_mb=memory_mb,
            allow_network=allow_network,
            allowed_domains=allowed_domains,
            expose_ports=expose_ports,
        )
        idle = idle_timeout_seconds or self.config.session_idle_timeout_seconds
        try:
            native = await client.session(
                language=SERVICE_LANGUAGE[lang], memory_limit_mb=memory, idle_timeout=idle, packages=specs
            )
        except pid1.Pid1Error as e:
            raise translate(e, operation="session") from e
        if on_boot_log is not None:
            guarded(on_boot_log, "on_boot_log")(f"pid1: session {native.id} opened")  # type: ignore[misc]
        session = Session(
            native,
            language=lang,
            default_timeout_seconds=self.config.default_timeout_seconds,
            on_close=self._sessions.discard,
        )
        self._sessions.add(session)
        return session


def _boot_log(on_boot_log: Callable[[str], None], result: pid1.Result) -> None:
    raw = result.raw
    line = (
        f"pid1: VM {raw.get('start', '?')} ({raw.get('accel', '?')}), "
        f"ready in {float(raw.get('boot_ms', 0.0)):.1f} ms"
    )
    call = guarded(on_boot_log, "on_boot_log")
    assert call is not None
    call(line)
