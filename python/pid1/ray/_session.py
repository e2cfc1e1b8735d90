"""A session of a pool: a VM held on one node, whose every step goes to
that node's actor (which holds the SDK's session). When that node is lost,
the session's next call raises ``SessionLostError``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _protocol as wire
from .._errors import SessionClosedError, UnavailableError
from .._results import FileInfo
from ._calls import RAY_MARGIN_S, Deadline, NodeGone, answer, streamed
from ._errors import SessionLostError
from ._node import NodeResult

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["AsyncPoolSession", "PoolSession"]

T = TypeVar("T")

OutputCallback = Callable[[str], Any]


class AsyncPoolSession:
    """A session on one node of a pool, for asyncio callers; the methods
    are ``pid1.AsyncSession``'s, and each result says its ``node``."""

    def __init__(self, pool: Pool, node: str, actor: Any, opened: Mapping[str, Any]) -> None:
        self._pool = pool
        self._actor = actor
        self.node: str = node
        self.id: str = str(opened["id"])
        self.language: str = str(opened.get("language", ""))
        self.info: Mapping[str, Any] = opened.get("info", {})
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _end(self) -> None:
        """Marks the session closed and hands its slot back (once)."""
        if not self._closed:
            self._closed = True
            self._pool._session_ended(self)

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"session {self.id} is closed", code="closed")

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        self._check_open()
        try:
            return await call()
        except NodeGone as gone:
            if not gone.lost:
                raise UnavailableError(
                    f"node {self.node}, which holds session {self.id}, cannot be reached now: "
                    f"{gone.cause}",
                    code="node_unreachable",
                ) from None
            self._end()
            raise SessionLostError(
                f"session {self.id} is gone: node {self.node}, which held its VM, was lost "
                "(its state went with it; open a new session)",
                node=self.node,
            ) from None
        except SessionClosedError:
            self._end()
            raise

    async def exec(
        self,
        code: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> NodeResult:
        """A step in the session's process; see ``pid1.Session.exec``."""
        request = {"code": code, "timeout": timeout, "env": env, "stdin": stdin}
        read = wire.read_timeout(timeout)
        deadline = Deadline(None if read is None else read + RAY_MARGIN_S)

        async def call() -> NodeResult:
            if on_stdout is None and on_stderr is None:
                ref = self._actor.session_exec.remote(self.id, request)
                result: NodeResult = await answer(ref, self.node, deadline)
                return result
            generator = self._actor.session_exec_streamed.options(num_returns="streaming").remote(
                self.id, request
            )
            callbacks = {"stdout": on_stdout, "stderr": on_stderr}
            result = await streamed(generator, self.node, deadline, callbacks)
            return result

        return await self._call(call)

    async def _file(self, operation: str, *args: Any) -> Any:
        deadline = Deadline(wire.CALL_TIMEOUT_S + RAY_MARGIN_S)

        async def call() -> Any:
            ref = self._actor.session_file.remote(self.id, operation, args)
            return await answer(ref, self.node, deadline)

        return await self._call(call)

    async def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        await self._file("write_file", path, data, mode)

    async def read_file(self, path: str) -> bytes:
        data: bytes = await self._file("read_file", path)
        return data

    async def list_files(self, path: str = "") -> list[FileInfo]:
        entries: list[FileInfo] = await self._file("list_files", path)
        return entries

    async def delete_file(self, path: str) -> None:
        await self._file("delete_file", path)

    async def close(self) -> None:
        """Closes the session and destroys its VM (idempotent; a session
        whose node was lost closes without a call)."""
        if self._closed:
            return
        self._end()
        deadline = Deadline(wire.CALL_TIMEOUT_S + RAY_MARGIN_S)
        try:
            await answer(self._actor.close_session.remote(self.id), self.node, deadline)
        except (NodeGone, SessionClosedError):
            pass

    async def __aenter__(self) -> AsyncPoolSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pid1.ray.AsyncPoolSession {self.id} on {self.node[:12]} {state}>"


class PoolSession:
    """A session on one node of a pool, for blocking callers; the methods
    are ``pid1.Session``'s (output callbacks are called on the pool's
    thread), and each result says its ``node``."""

    def __init__(self, inner: AsyncPoolSession) -> None:
        self._inner = inner

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def node(self) -> str:
        return self._inner.node

    @property
    def language(self) -> str:
        return self._inner.language

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def exec(
        self,
        code: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> NodeResult:
        return self._inner._pool._sync(
            self._inner.exec(code, timeout, env, stdin, on_stdout, on_stderr)
        )

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        self._inner._pool._sync(self._inner.write_file(path, data, mode))

    def read_file(self, path: str) -> bytes:
        return self._inner._pool._sync(self._inner.read_file(path))

    def list_files(self, path: str = "") -> list[FileInfo]:
        return self._inner._pool._sync(self._inner.list_files(path))

    def delete_file(self, path: str) -> None:
        self._inner._pool._sync(self._inner.delete_file(path))

    def close(self) -> None:
        self._inner._pool._sync(self._inner.close())

    def __enter__(self) -> PoolSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<pid1.ray.PoolSession {self.id} on {self.node[:12]} {state}>"
