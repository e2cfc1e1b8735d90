"""``Session``: exec-sandbox's stateful VM, over a session of the pid1
service (``pid1.AsyncSession``).

Calls are serialised with an ``asyncio.Lock``, as exec-sandbox's are, and
the session closes itself when the service says it is gone (idle past its
timeout, its process ended). ``close()`` does not wait for the lock: it is
how a caller stops a step that runs.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pid1

from . import validation
from ._native import check_output_limits, env_prefix, execution_result, guarded, logger, translate
from .exceptions import SessionClosedError
from .models import ExecutionResult, ExposedPort, FileInfo, Language

__all__ = ["Session"]

MAX_FILE_SIZE_BYTES = 500 * 1024 * 1024
"""exec-sandbox's largest file; the service holds a file in memory, so
this is also what one call may cost it."""


class Session:
    """A VM held across ``exec()`` calls: variables, imports and files
    persist. Made by ``await scheduler.session(...)``; use it as
    ``async with await scheduler.session(language="python") as s:``."""

    def __init__(
        self,
        native: pid1.AsyncSession,
        *,
        language: Language,
        default_timeout_seconds: int,
        on_close: Callable[[Session], None] | None = None,
    ) -> None:
        self._native = native
        self._language = language
        self._default_timeout_seconds = default_timeout_seconds
        self._on_close = on_close
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self._exec_count = 0
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def vm_id(self) -> str:
        """The service's session id."""
        return str(self._native.id)

    @property
    def exec_count(self) -> int:
        """``exec()`` calls that returned a result."""
        return self._exec_count

    @property
    def exposed_ports(self) -> list[ExposedPort]:
        """Always empty: pid1 guests have no network."""
        return []

    @asynccontextmanager
    async def _guard(self, operation: str) -> AsyncIterator[None]:
        """One call at a time, on an open session; the service's errors as
        exec-sandbox's, and a session the service has dropped marked closed."""
        if self._closed:
            raise SessionClosedError("Session is closed")
        async with self._lock:
            if self._closed:
                raise SessionClosedError("Session closed while waiting for lock")
            try:
                yield
            except pid1.Pid1Error as e:
                if isinstance(e, pid1.SessionClosedError):
                    await self._close_quietly()
                raise translate(e, operation=operation) from e
            except asyncio.CancelledError:
                # The step may still be running in the guest; a session whose
                # state is unknown is not handed back.
                await self._close_quietly()
                raise

    async def exec(
        self,
        code: str,
        *,
        timeout_seconds: int | None = None,
        env_vars: dict[str, str] | None = None,
        on_stdout: Callable[[str], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
    ) -> ExecutionResult:
        """Runs ``code`` in the session's process. A timeout is a result with
        ``exit_code=-1``, not an exception. ``env_vars`` are set in the
        process before the code runs, and stay set."""
        validation.check_timeout(timeout_seconds)
        validation.check_code_size(code)
        if self._closed:
            raise SessionClosedError("Session is closed")
        validation.check_code(code)
        env = validation.check_env_vars(env_vars)
        timeout = timeout_seconds if timeout_seconds is not None else self._default_timeout_seconds
        async with self._guard("exec"):
            began = time.monotonic()
            result = await self._native.exec(
                env_prefix(self._language, env) + code,
                timeout=timeout,
                on_stdout=guarded(on_stdout, "on_stdout"),
                on_stderr=guarded(on_stderr, "on_stderr"),
            )
            client_ms = round((time.monotonic() - began) * 1000)
            self._exec_count += 1
        check_output_limits(result, operation="exec")
        return execution_result(result, timeout_seconds=timeout, client_ms=client_ms, in_session=True)

    async def write_file(
        self, path: str, content: bytes | Path | IO[bytes], *, make_executable: bool = False
    ) -> None:
        """Writes ``content`` (bytes, a local file, or a binary stream, which
        stays open) to ``path`` in the guest, mode 0o755 when
        ``make_executable`` else 0o644."""
        data = _read_content(content)
        async with self._guard("write_file"):
            await self._native.write_file(path, data, mode=0o755 if make_executable else 0o644)

    async def read_file(self, path: str, *, destination: Path | IO[bytes]) -> None:
        """Copies the guest file ``path`` into ``destination``: a local path
        (written whole) or a binary stream (written at its position, left
        open)."""
        async with self._guard("read_file"):
            data = await self._native.read_file(path)
        if isinstance(destination, (str, Path)):
            Path(destination).write_bytes(data)
        else:
            destination.write(data)

    async def list_files(self, path: str = "") -> list[FileInfo]:
        """The entries of the guest directory ``path`` (``""``: the home)."""
        async with self._guard("list_files"):
            entries = await self._native.list_files(path)
        return [FileInfo(name=e.name, is_dir=e.is_dir, size=0 if e.is_dir else e.size) for e in entries]

    async def close(self) -> None:
        """Closes the session and destroys its VM (idempotent; concurrent
        callers share one close)."""
        if self._close_task is None:
            self._closed = True
            self._close_task = asyncio.ensure_future(self._close_native())
        await asyncio.shield(self._close_task)

    async def _close_native(self) -> None:
        if self._on_close is not None:
            self._on_close(self)
        try:
            await self._native.close()
        except pid1.SessionClosedError:
            pass
        except pid1.Pid1Error as e:
            raise translate(e, operation="close") from e

    async def _close_quietly(self) -> None:
        """Closes on a failure path, where the failure being raised matters
        more than one from the close."""
        try:
            await self.close()
        except Exception:
            logger.warning("closing session %s failed", self.vm_id, exc_info=True)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Session {self.vm_id} {self._language.value} {state} exec_count={self._exec_count}>"


def _read_content(content: bytes | Path | IO[bytes] | Any) -> bytes:
    """The bytes to upload, with exec-sandbox's size rule."""
    if isinstance(content, Path):
        if not content.exists():
            raise FileNotFoundError(f"Source file not found: {content}")
        size = content.stat().st_size
        if size > MAX_FILE_SIZE_BYTES:
            raise ValueError(f"File {content.name} is {size} bytes, exceeds {MAX_FILE_SIZE_BYTES}")
        return content.read_bytes()
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
    elif isinstance(content, io.IOBase) or hasattr(content, "read"):
        data = content.read(MAX_FILE_SIZE_BYTES + 1)
        if not isinstance(data, bytes):
            raise TypeError("content: a binary stream (IO[bytes]), not a text one")
    else:
        raise TypeError(f"content: bytes, a Path or an IO[bytes], not {type(content).__name__}")
    if len(data) > MAX_FILE_SIZE_BYTES:
        raise ValueError(f"Content is {len(data)} bytes, exceeds {MAX_FILE_SIZE_BYTES}")
    return data
