"""The blocking client: ``Client`` and its ``Session``."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import httpx

from . import _protocol as wire
from ._embedded import START_TIMEOUT_S, EmbeddedService
from ._errors import Pid1Error, SessionClosedError, UnavailableError
from ._results import FileInfo, Result, parse_file_info, parse_result

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


def _job_timeout(timeout: float | None) -> httpx.Timeout:
    return httpx.Timeout(wire.read_timeout(timeout), connect=wire.CONNECT_TIMEOUT_S)


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

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        if self._closed:
            raise Pid1Error("the client is closed")
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                content=content,
                params=params,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as e:
            raise self._target.unreachable(e) from e
        if response.status_code >= 400:
            raise wire.error_from_answer(
                response.status_code, response.content, response.headers.get("retry-after")
            )
        return response

    def _job(
        self,
        path: str,
        body: dict[str, Any],
        timeout: float | None,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> Result:
        if on_stdout is None and on_stderr is None:
            return parse_result(self._request("POST", path, json=body, timeout=_job_timeout(timeout)).json())
        if self._closed:
            raise Pid1Error("the client is closed")
        callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        reader = wire.StreamReader()
        try:
            with self._http.stream(
                "POST", path, json=body, headers={"Accept": wire.NDJSON}, timeout=_job_timeout(timeout)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise wire.error_from_answer(
                        response.status_code, response.content, response.headers.get("retry-after")
                    )
                for line in response.iter_lines():
                    piece = reader.line(line)
                    if piece is not None:
                        callback = callbacks[piece[0]]
                        if callback is not None and piece[1]:
                            callback(piece[1])
        except httpx.TransportError as e:
            raise self._target.unreachable(e) from e
        for stream, text in reader.tails():
            callback = callbacks[stream]
            if callback is not None:
                callback(text)
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
    ) -> Result:
        """Runs ``code`` in a fresh VM (destroyed after it) and returns what
        it left. ``timeout``: seconds (0: none); ``files``: uploads, a
        mapping of guest path to content or a list of ``File``;
        ``download``: guest paths whose content comes back in
        ``Result.files``; ``on_stdout``/``on_stderr``: called with text as
        the job writes it."""
        body = wire.run_body(
            code, language, timeout, env, stdin, files, download, memory_limit_mb, output_limit
        )
        return self._job("/v1/runs", body, timeout, on_stdout, on_stderr)

    def session(
        self,
        language: str = "python",
        memory_limit_mb: int | None = None,
        idle_timeout: float | None = None,
    ) -> Session:
        """Opens a session: a VM held for this caller, with one Python or
        shell process whose state persists across ``exec`` calls. Closed by
        ``close()``, by leaving its ``with`` block, or ``idle_timeout``
        seconds after its last call (the service's default: 300)."""
        body = wire.open_body(language, memory_limit_mb, idle_timeout)
        info = self._request("POST", "/v1/sessions", json=body).json()
        return Session(self, info)

    def health(self) -> dict[str, Any]:
        """The service's ``/v1/health``: its pool, sessions, template, version."""
        answer: dict[str, Any] = self._request("GET", "/v1/health").json()
        return answer

    def wait_ready(self, timeout: float = 120.0, ready: int = 1) -> dict[str, Any]:
        """Waits until ``ready`` warm VMs (at most the pool's target) are
        ready to hand out; returns the health that said so."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            pool = health.get("pool", {})
            if pool.get("ready", 0) >= min(ready, pool.get("target", 0)):
                return health
            if time.monotonic() > deadline:
                raise UnavailableError(
                    f"the pool did not have {ready} warm VM(s) within {timeout:g} s: {pool}",
                    code="not_ready",
                )
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
    """A VM held for one caller; see ``Client.session``."""

    def __init__(self, client: Client, info: Mapping[str, Any]) -> None:
        self._client = client
        self.id: str = str(info["id"])
        self.language: str = str(info.get("language", ""))
        self.info: Mapping[str, Any] = info
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _call(self, method: str, tail: str, **kwargs: Any) -> httpx.Response:
        self._check_open()
        try:
            return self._client._request(method, tail, **kwargs)
        except SessionClosedError:
            self._closed = True
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(f"session {self.id} is closed", code="closed")

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
        body = wire.exec_body(code, timeout, env, stdin)
        try:
            return self._client._job(
                wire.session_path(self.id, "/exec"), body, timeout, on_stdout, on_stderr
            )
        except SessionClosedError:
            self._closed = True
            raise

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Writes a guest file (missing directories are made)."""
        content = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._call(
            "PUT", wire.file_path(self.id, path), content=content, params={"mode": format(mode, "o")}
        )

    def read_file(self, path: str) -> bytes:
        """A guest file's bytes."""
        return self._call("GET", wire.file_path(self.id, path)).content

    def list_files(self, path: str = "") -> list[FileInfo]:
        """A guest directory's entries, by name (``""``: the home)."""
        listing = self._call("GET", wire.session_path(self.id, "/files"), params={"path": path}).json()
        return [parse_file_info(entry, path) for entry in listing.get("entries", [])]

    def delete_file(self, path: str) -> None:
        """Deletes a guest file, link or empty directory."""
        self._call("DELETE", wire.file_path(self.id, path))

    def close(self) -> None:
        """Closes the session and destroys its VM (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client._request("DELETE", wire.session_path(self.id))
        except SessionClosedError:
            pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pid1.Session {self.id} {self.language} {'closed' if self._closed else 'open'}>"
