"""The asyncio client: ``AsyncClient`` and its ``AsyncSession``."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx

from . import _protocol as wire
from ._client import POLL_S, Target
from ._embedded import START_TIMEOUT_S, EmbeddedService
from ._errors import Pid1Error, SessionClosedError
from ._results import FileInfo, Result, parse_result

__all__ = ["AsyncClient", "AsyncSession"]

AsyncOutputCallback = Callable[[str], Any | Awaitable[Any]]


async def _call_back(callback: AsyncOutputCallback | None, text: str) -> None:
    if callback is None or not text:
        return
    answer = callback(text)
    if inspect.isawaitable(answer):
        await answer


class AsyncClient:
    """An asyncio client of a pid1 service; the arguments are ``Client``'s.

    An embedded service is started when the client is made and awaited on
    first use (or on ``async with``); it stops at ``aclose()``.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        vmexec: str | os.PathLike[str] | None = None,
        pool: int | None = None,
        serve_args: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self._target = Target(url, token, vmexec, pool, serve_args)
        uds = self._target.address.uds
        transport = httpx.AsyncHTTPTransport(uds=uds) if uds else None
        self._http = httpx.AsyncClient(
            base_url=self._target.address.base_url,
            transport=transport,
            headers=self._target.headers(),
            timeout=self._target.timeout(),
        )
        self._closed = False
        self._start_timeout = start_timeout
        self._started = self._target.embedded is None
        self._starting: asyncio.Lock | None = None

    @property
    def url(self) -> str:
        return str(self._target.address)

    @property
    def embedded(self) -> EmbeddedService | None:
        return self._target.embedded

    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            embedded = self._target.embedded
            assert embedded is not None
            deadline = time.monotonic() + self._start_timeout
            while True:
                try:
                    embedded.check_started()
                except BaseException:
                    await self.aclose()
                    raise
                try:
                    if (await self._http.get("/v1/health", timeout=1.0)).status_code == 200:
                        self._started = True
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    error = embedded.start_timed_out(self._start_timeout)
                    await self.aclose()
                    raise error
                await asyncio.sleep(POLL_S)

    # -- transport ---------------------------------------------------------

    async def _send(self, call: wire.Call) -> httpx.Response:
        if self._closed:
            raise Pid1Error("the client is closed")
        await self._ensure_started()
        try:
            response = await self._http.request(
                call.method,
                call.path,
                json=call.json,
                content=call.content,
                params=call.params,
                timeout=call.timeout(),
            )
        except httpx.TransportError as e:
            raise self._target.unreachable(e) from e
        wire.raise_for_answer(response)
        return response

    async def _job(
        self, call: wire.Call, on_stdout: AsyncOutputCallback | None, on_stderr: AsyncOutputCallback | None
    ) -> Result:
        """A run or a session step; streamed when there is a callback."""
        if on_stdout is None and on_stderr is None:
            return parse_result((await self._send(call)).json())
        if self._closed:
            raise Pid1Error("the client is closed")
        await self._ensure_started()
        callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        reader = wire.StreamReader()
        try:
            async with self._http.stream(
                call.method, call.path, json=call.json, headers={"Accept": wire.NDJSON}, timeout=call.timeout()
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    wire.raise_for_answer(response)
                async for line in response.aiter_lines():
                    piece = reader.line(line)
                    if piece is not None:
                        await _call_back(callbacks[piece[0]], piece[1])
        except httpx.TransportError as e:
            raise self._target.unreachable(e) from e
        for stream, text in reader.tails():
            await _call_back(callbacks[stream], text)
        return parse_result(reader.finish())

    # -- the API -----------------------------------------------------------

    async def run(
        self,
        code: str,
        language: str = "python",
        timeout: float | None = 30,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        files: wire.FileSpec | None = None,
        download: Iterable[str] | None = None,
        memory_limit_mb: int | None = None,
        on_stdout: AsyncOutputCallback | None = None,
        on_stderr: AsyncOutputCallback | None = None,
        *,
        output_limit: int | None = None,
        packages: Sequence[str] | None = None,
    ) -> Result:
        """See ``Client.run``; callbacks may be plain or async functions."""
        call = wire.run_call(
            code, language, timeout, env, stdin, files, download, memory_limit_mb, output_limit, packages
        )
        return await self._job(call, on_stdout, on_stderr)

    def session(
        self,
        language: str = "python",
        memory_limit_mb: int | None = None,
        idle_timeout: float | None = None,
        *,
        packages: Sequence[str] | None = None,
    ) -> _SessionOpener:
        """Opens a session: ``async with client.session() as s`` or
        ``s = await client.session()``."""
        return _SessionOpener(self, wire.open_call(language, memory_limit_mb, idle_timeout, packages))

    async def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = (await self._send(wire.health_call())).json()
        return answer

    async def wait_ready(self, timeout: float = 120.0, ready: int = 1) -> dict[str, Any]:
        """See ``Client.wait_ready``."""
        deadline = time.monotonic() + timeout
        while True:
            health = await self.health()
            if wire.pool_ready(health, ready):
                return health
            if time.monotonic() > deadline:
                raise wire.not_ready(health, ready, timeout)
            await asyncio.sleep(POLL_S * 5)

    async def aclose(self) -> None:
        """Closes the connections and stops an embedded service (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._http.aclose()
        embedded = self._target.embedded
        if embedded is not None:
            # Stopping waits for the process: off the event loop.
            await asyncio.get_running_loop().run_in_executor(None, embedded.stop)

    close = aclose

    async def __aenter__(self) -> AsyncClient:
        try:
            await self._ensure_started()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<pid1.AsyncClient {self.url} {'closed' if self._closed else 'open'}>"


class _SessionOpener:
    """What ``AsyncClient.session`` returns: awaitable, or an async context
    manager that closes the session at its end."""

    def __init__(self, client: AsyncClient, call: wire.Call) -> None:
        self._client = client
        self._call = call
        self._session: AsyncSession | None = None

    async def _open(self) -> AsyncSession:
        return AsyncSession(self._client, (await self._client._send(self._call)).json())

    def __await__(self) -> Any:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._open()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()


class AsyncSession:
    """A VM held for one caller; see ``AsyncClient.session``. ``packages``
    is the resolved set every step can import (``name==version``)."""

    def __init__(self, client: AsyncClient, info: Mapping[str, Any]) -> None:
        self._client = client
        self.id: str = str(info["id"])
        self.language: str = str(info.get("language", ""))
        self.packages: list[str] = [str(spec) for spec in info.get("packages") or ()]
        self.info: Mapping[str, Any] = info
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"session {self.id} is closed", code="closed")

    async def _send(self, call: wire.Call) -> httpx.Response:
        self._check_open()
        try:
            return await self._client._send(call)
        except SessionClosedError:
            self._closed = True
            raise

    async def exec(
        self,
        code: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        on_stdout: AsyncOutputCallback | None = None,
        on_stderr: AsyncOutputCallback | None = None,
    ) -> Result:
        """See ``Session.exec``."""
        self._check_open()
        call = wire.exec_call(self.id, code, timeout, env, stdin)
        try:
            return await self._client._job(call, on_stdout, on_stderr)
        except SessionClosedError:
            self._closed = True
            raise

    async def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        await self._send(wire.write_file_call(self.id, path, data, mode))

    async def read_file(self, path: str) -> bytes:
        return (await self._send(wire.read_file_call(self.id, path))).content

    async def list_files(self, path: str = "") -> list[FileInfo]:
        return wire.list_entries((await self._send(wire.list_files_call(self.id, path))).json(), path)

    async def delete_file(self, path: str) -> None:
        await self._send(wire.delete_file_call(self.id, path))

    async def close(self) -> None:
        """Closes the session and destroys its VM (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._client._send(wire.close_call(self.id))
        except SessionClosedError:
            pass

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<pid1.AsyncSession {self.id} {self.language} {'closed' if self._closed else 'open'}>"
