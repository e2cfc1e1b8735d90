"""The blocking client: ``Client`` and its ``Session``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx

from . import _protocol as wire
from ._embedded import START_TIMEOUT_S, EmbeddedService
from ._errors import Pid1Error, SessionClosedError, UnavailableError
from ._results import FileInfo, Result, parse_result

__all__ = ["Client", "Session", "Target"]

OutputCallback = Callable[[str], Any]

# Seconds between health polls while a service starts or its pool warms.
POLL_S = 0.02


class Target:
    """Where a client sends its calls, from its arguments and environment:
    the given ``url``, else ``$PID1_SERVER``, else an embedded service."""

    def __init__(
        self,
        url: str | None,
        token: str | None,
        vmexec: str | os.PathLike[str] | None,
        pool: int | None,
        serve_args: Sequence[str],
    ) -> None:
        if url is None:
            url = os.environ.get("PID1_SERVER") or None
        self.token = token if token is not None else (os.environ.get("PID1_TOKEN") or None)
        self.embedded: EmbeddedService | None = None
        if url is None:
            self.embedded = EmbeddedService(vmexec=vmexec, pool=pool, args=serve_args)
            self.address = self.embedded.address
        else:
            self.address = wire.parse_address(url)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(wire.CALL_TIMEOUT_S, connect=wire.CONNECT_TIMEOUT_S)

    def unreachable(self, cause: BaseException) -> UnavailableError:
        if self.embedded is not None:
            return self.embedded.unavailable(cause)
        return UnavailableError(
            f"cannot reach the pid1 service at {self.address}: {cause}", code="unreachable"
        )


def _call_back(callback: OutputCallback | None, text: str) -> None:
    if callback is not None and text:
        callback(text)


class Client:
    """A blocking client of a pid1 service.

    ``url``: ``unix:/path/to.sock`` or ``http://host:port``; ``None``: the
    ``PID1_SERVER`` variable, else an embedded ``vmexec serve`` of this
    client's own (``vmexec`` from ``PID1_VMEXEC`` or PATH, ``pool`` warm VMs,
    ``serve_args`` added to its command line), stopped at ``close()``.
    ``token``: the bearer token of a TCP service; ``None``: ``PID1_TOKEN``.
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
        transport = httpx.HTTPTransport(uds=self._target.address.uds) if self._target.address.uds else None
        self._http = httpx.Client(
            base_url=self._target.address.base_url,
            transport=transport,
            headers=self._target.headers(),
            timeout=self._target.timeout(),
        )
        self._closed = False
        if self._target.embedded is not None:
            try:
                self._wait_started(start_timeout)
            except BaseException:
                self.close()
                raise

    @property
    def url(self) -> str:
        """Where this client's calls go (an embedded service's ``unix:`` URL)."""
        return str(self._target.address)

    @property
    def embedded(self) -> EmbeddedService | None:
        """The service this client started, if it started one."""
        return self._target.embedded

    def _wait_started(self, timeout: float) -> None:
        embedded = self._target.embedded
        assert embedded is not None
        deadline = time.monotonic() + timeout
        while True:
            embedded.check_started()
            try:
                if self._http.get("/v1/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise embedded.start_timed_out(timeout)
            time.sleep(POLL_S)

    # -- transport ---------------------------------------------------------

    def _send(self, call: wire.Call) -> httpx.Response:
        if self._closed:
            raise Pid1Error("the client is closed")
        try:
            response = self._http.request(
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

    def _job(self, call: wire.Call, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> Result:
        """A run or a session step; streamed when there is a callback."""
        if on_stdout is None and on_stderr is None:
            return parse_result(self._send(call).json())
        if self._closed:
            raise Pid1Error("the client is closed")
        callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        reader = wire.StreamReader()
        try:
            with self._http.stream(
                call.method, call.path, json=call.json, headers={"Accept": wire.NDJSON}, timeout=call.timeout()
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    wire.raise_for_answer(response)
                for line in response.iter_lines():
                    piece = reader.line(line)
                    if piece is not None:
                        _call_back(callbacks[piece[0]], piece[1])
        except httpx.TransportError as e:
            raise self._target.unreachable(e) from e
        for stream, text in reader.tails():
            _call_back(callbacks[stream], text)
        return parse_result(reader.finish())

    # -- the API -----------------------------------------------------------

    def run(
        self,
        code: str,
        language: str = "python",
        timeout: float | None = 30,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        files: wire.FileSpec | None = None,
        download: Iterable[str] | None = None,
        memory_limit_mb: int | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        *,
        output_limit: int | None = None,
        packages: Sequence[str] | None = None,
    ) -> Result:
        """Runs ``code`` in a fresh VM (destroyed after it) and returns what
        it left. ``timeout``: seconds (0: none); ``files``: uploads, a
        mapping of guest path to content or a list of ``File``;
        ``download``: guest paths whose content comes back in
        ``Result.files``; ``on_stdout``/``on_stderr``: called with text as
        the job writes it; ``packages``: pip requirements (``["numpy==2.1.3",
        "six"]``) the job can import, the resolved set in
        ``Result.packages`` (a set's first use installs it: tens of seconds
        or more). ``PackageError`` when the index has no such set,
        ``PackagesUnavailableError`` when the index cannot be reached."""
        call = wire.run_call(
            code, language, timeout, env, stdin, files, download, memory_limit_mb, output_limit, packages
        )
        return self._job(call, on_stdout, on_stderr)

    def session(
        self,
        language: str = "python",
        memory_limit_mb: int | None = None,
        idle_timeout: float | None = None,
        *,
        packages: Sequence[str] | None = None,
    ) -> Session:
        """Opens a session: a VM held for this caller, with one Python or
        shell process whose state persists across ``exec`` calls. Closed by
        ``close()``, by leaving its ``with`` block, or ``idle_timeout``
        seconds after its last call (the service's default: 300).
        ``packages``: as ``run``'s, for every step; ``Session.packages`` is
        the resolved set."""
        return Session(self, self._send(wire.open_call(language, memory_limit_mb, idle_timeout, packages)).json())

    def health(self) -> dict[str, Any]:
        """The service's ``/v1/health``: its pool, sessions, template, version."""
        answer: dict[str, Any] = self._send(wire.health_call()).json()
        return answer

    def wait_ready(self, timeout: float = 120.0, ready: int = 1) -> dict[str, Any]:
        """Waits until ``ready`` warm VMs (at most the pool's target) are
        ready to hand out; returns the health that said so."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if wire.pool_ready(health, ready):
                return health
            if time.monotonic() > deadline:
                raise wire.not_ready(health, ready, timeout)
            time.sleep(POLL_S * 5)

    def close(self) -> None:
        """Closes the connections and stops an embedded service (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._http.close()
        if self._target.embedded is not None:
            self._target.embedded.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pid1.Client {self.url} {state}>"


class Session:
    """A VM held for one caller; see ``Client.session``. ``packages`` is
    the resolved set every step can import (``name==version``)."""

    def __init__(self, client: Client, info: Mapping[str, Any]) -> None:
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

    def _send(self, call: wire.Call) -> httpx.Response:
        self._check_open()
        try:
            return self._client._send(call)
        except SessionClosedError:
            self._closed = True
            raise

    def exec(
        self,
        code: str,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> Result:
        """Runs one step in the session's process (its state kept). In
        Python a last bare expression's value is printed, as in a notebook."""
        self._check_open()
        call = wire.exec_call(self.id, code, timeout, env, stdin)
        try:
            return self._client._job(call, on_stdout, on_stderr)
        except SessionClosedError:
            self._closed = True
            raise

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Writes a guest file (missing directories are made)."""
        self._send(wire.write_file_call(self.id, path, data, mode))

    def read_file(self, path: str) -> bytes:
        """A guest file's bytes."""
        return self._send(wire.read_file_call(self.id, path)).content

    def list_files(self, path: str = "") -> list[FileInfo]:
        """A guest directory's entries, by name (``""``: the home)."""
        return wire.list_entries(self._send(wire.list_files_call(self.id, path)).json(), path)

    def delete_file(self, path: str) -> None:
        """Deletes a guest file, link or empty directory."""
        self._send(wire.delete_file_call(self.id, path))

    def close(self) -> None:
        """Closes the session and destroys its VM (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client._send(wire.close_call(self.id))
        except SessionClosedError:
            pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pid1.Session {self.id} {self.language} {'closed' if self._closed else 'open'}>"
