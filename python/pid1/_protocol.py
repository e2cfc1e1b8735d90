"""The service's HTTP API without I/O: where to connect, request bodies and
paths, HTTP deadlines, the NDJSON lines of a streamed run and the text
decoding of its chunks. The sync and the async client both drive this."""

from __future__ import annotations

import base64
import codecs
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union
from urllib.parse import quote

import httpx

from ._errors import InvalidRequestError, Pid1Error, UnavailableError, error_from_body
from ._results import File, FileInfo, parse_file_info

__all__ = [
    "NDJSON",
    "Address",
    "Call",
    "StreamReader",
    "close_call",
    "delete_file_call",
    "exec_call",
    "health_call",
    "list_files_call",
    "open_call",
    "packages_list",
    "parse_address",
    "pool_ready",
    "raise_for_answer",
    "read_file_call",
    "run_call",
    "write_file_call",
]

NDJSON = "application/x-ndjson"

# The host name requests to a Unix socket carry; the service ignores it.
UNIX_HOST = "http://pid1"

# Seconds on top of a job's own timeout before the client stops waiting for
# an answer: the service's queue (30 s by default), a restore on demand and
# its own margin for a silent guest all fit in it. The service has a
# deadline for every wait, so this only fires when it hangs or vanished.
ANSWER_MARGIN_S = 90.0

# Seconds more a run, or a session's opening, waits when it names packages:
# the first use of a set resolves it, installs it on the host, builds its
# layer and then boots and snapshots a template with it, which a loaded
# 2-core TCG host takes minutes over. Later uses find all of it cached.
PACKAGES_MARGIN_S = 300.0

# Seconds for calls that run no job: health, opening and closing a session,
# file operations (a 256 MiB file through the serial port at ~5 MB/s is 50 s).
CALL_TIMEOUT_S = 120.0

# Seconds to connect: a local service accepts at once.
CONNECT_TIMEOUT_S = 10.0

FileSpec = Union[Mapping[str, bytes | str], Iterable[File]]


@dataclass(frozen=True)
class Address:
    """Where the service is: a Unix socket path, or an HTTP base URL."""

    base_url: str
    uds: str | None = None

    def __str__(self) -> str:
        return f"unix:{self.uds}" if self.uds else self.base_url


def parse_address(url: str) -> Address:
    """``unix:/path/to.sock`` or ``http(s)://host:port``."""
    if url.startswith("unix:"):
        path = url[len("unix:") :]
        path = path.removeprefix("//")
        if not path:
            raise ValueError("unix: needs a socket path, e.g. unix:/tmp/pid1.sock")
        return Address(base_url=UNIX_HOST, uds=os.path.expanduser(path))
    if url.startswith(("http://", "https://")):
        return Address(base_url=url.rstrip("/"))
    raise ValueError(f"{url!r}: give unix:/path/to.sock or http://host:port")


@dataclass(frozen=True)
class Call:
    """One request: what either client sends, and how long it waits for the
    answer (``None``: without end, for a job with no timeout)."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    wait_s: float | None = CALL_TIMEOUT_S

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.wait_s, connect=CONNECT_TIMEOUT_S)


def _bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidRequestError(f"{what}: expected bytes or str, got {type(value).__name__}", field=what)


def _uploads(files: FileSpec | None) -> list[dict[str, Any]]:
    if files is None:
        return []
    items: Iterable[File]
    if isinstance(files, Mapping):
        items = [File(path, content) for path, content in files.items()]
    else:
        items = files
    uploads = []
    for index, item in enumerate(items):
        if not isinstance(item, File):
            raise InvalidRequestError(
                f"files[{index}]: expected a pid1.File or a mapping of path to content",
                field=f"files[{index}]",
            )
        content = _bytes(item.content, f"files[{index}].content")
        uploads.append(
            {
                "path": item.path,
                "content": base64.b64encode(content).decode("ascii"),
                "mode": item.mode,
            }
        )
    return uploads


def _stdin(stdin: bytes | str | None) -> str | None:
    if stdin is None or isinstance(stdin, str):
        return stdin
    try:
        return bytes(stdin).decode("utf-8")
    except UnicodeDecodeError as e:
        # The API carries stdin as JSON text.
        raise InvalidRequestError(
            f"stdin: the service takes text, and these bytes are not UTF-8 ({e.reason} at {e.start})",
            field="stdin",
        ) from None


def packages_list(packages: Sequence[str] | None) -> list[str]:
    """The ``packages`` of a run or a session as the service takes them: a
    list or tuple of pip requirement strings (``numpy==2.1.3``, ``six``).
    Only their shape is checked here; the service parses each and resolves
    the set."""
    if packages is None:
        return []
    if isinstance(packages, (str, bytes, bytearray)):
        raise InvalidRequestError(
            f"packages: give a list of requirements, e.g. [{packages!r}], not one string "
            "(it would be read as its characters)",
            field="packages",
        )
    if not isinstance(packages, Sequence):
        raise InvalidRequestError(
            f"packages: give a list or tuple of requirement strings, not a {type(packages).__name__}",
            field="packages",
        )
    for index, spec in enumerate(packages):
        if not isinstance(spec, str) or not spec.strip():
            raise InvalidRequestError(
                f"packages[{index}]: {spec!r} is not a requirement such as 'numpy==2.1.3'",
                field="packages",
            )
        if "\0" in spec:
            raise InvalidRequestError(f"packages[{index}]: {spec!r} holds a NUL", field="packages")
    return list(packages)


def with_packages(wait_s: float | None, packages: list[str]) -> float | None:
    """How long a call that may have to make its packages' set waits."""
    if wait_s is None or not packages:
        return wait_s
    return wait_s + PACKAGES_MARGIN_S


def run_call(
    code: str,
    language: str,
    timeout: float | None,
    env: Mapping[str, str] | None,
    stdin: bytes | str | None,
    files: FileSpec | None,
    download: Iterable[str] | None,
    memory_limit_mb: int | None,
    output_limit: int | None,
    packages: Sequence[str] | None = None,
) -> Call:
    """``POST /v1/runs``; the service checks the values."""
    requirements = packages_list(packages)
    body: dict[str, Any] = {"code": code, "language": language}
    if timeout is not None:
        body["timeout"] = timeout
    if env:
        body["env"] = dict(env)
    stdin_text = _stdin(stdin)
    if stdin_text is not None:
        body["stdin"] = stdin_text
    uploads = _uploads(files)
    if uploads:
        body["files"] = uploads
    if download:
        if isinstance(download, str):
            download = [download]
        body["download"] = list(download)
    if memory_limit_mb is not None:
        body["memory_limit_mb"] = memory_limit_mb
    if output_limit is not None:
        body["output_limit"] = output_limit
    if requirements:
        body["packages"] = requirements
    return Call("POST", "/v1/runs", json=body, wait_s=with_packages(read_timeout(timeout), requirements))


def exec_body(
    code: str,
    timeout: float | None,
    env: Mapping[str, str] | None,
    stdin: bytes | str | None,
) -> dict[str, Any]:
    """The JSON body of a session step. A step runs in the session's
    long-lived process, whose environment and stdin are fixed when it
    starts, so the service takes neither per step; asking is refused here
    rather than ignored."""
    if env:
        raise InvalidRequestError(
            "env: a session step runs in the session's process, whose environment "
            "is fixed; set variables in the code (os.environ, export) or use run()",
            field="env",
        )
    if stdin is not None:
        raise InvalidRequestError(
            "stdin: a session step has no stdin of its own; write a file "
            "with write_file() and read it, or use run()",
            field="stdin",
        )
    body: dict[str, Any] = {"code": code}
    if timeout is not None:
        body["timeout"] = timeout
    return body


def open_body(
    language: str,
    memory_limit_mb: int | None,
    idle_timeout: float | None,
    packages: list[str],
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/sessions``; ``packages`` as
    ``packages_list`` made it."""
    body: dict[str, Any] = {"language": language}
    if memory_limit_mb is not None:
        body["memory_limit_mb"] = memory_limit_mb
    if idle_timeout is not None:
        body["idle_timeout"] = idle_timeout
    if packages:
        body["packages"] = packages
    return body


def session_path(session_id: str, tail: str = "") -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}{tail}"


def file_path(session_id: str, path: str) -> str:
    """The URL path of a guest file; ``/home/user/...`` and relative paths
    name the same file, and the service checks either."""
    if not isinstance(path, str) or not path:
        raise InvalidRequestError("path: give a guest file path", field="path")
    home = "/home/user/"
    relative = path.removeprefix(home)
    return session_path(session_id, "/files/" + quote(relative, safe="/"))


def read_timeout(job_timeout: float | None) -> float | None:
    """How long to wait for a job's answer: its timeout (30 s when not
    given; none for 0) plus the margin."""
    if job_timeout is None:
        job_timeout = 30.0
    if job_timeout <= 0:
        return None
    return job_timeout + ANSWER_MARGIN_S


def exec_call(
    session_id: str,
    code: str,
    timeout: float | None,
    env: Mapping[str, str] | None,
    stdin: bytes | str | None,
) -> Call:
    body = exec_body(code, timeout, env, stdin)
    return Call("POST", session_path(session_id, "/exec"), json=body, wait_s=read_timeout(timeout))


def open_call(
    language: str,
    memory_limit_mb: int | None,
    idle_timeout: float | None,
    packages: Sequence[str] | None = None,
) -> Call:
    requirements = packages_list(packages)
    body = open_body(language, memory_limit_mb, idle_timeout, requirements)
    return Call("POST", "/v1/sessions", json=body, wait_s=with_packages(CALL_TIMEOUT_S, requirements))


def close_call(session_id: str) -> Call:
    return Call("DELETE", session_path(session_id))


def health_call() -> Call:
    return Call("GET", "/v1/health")


def write_file_call(session_id: str, path: str, data: bytes | str, mode: int) -> Call:
    content = _bytes(data, "data")
    return Call("PUT", file_path(session_id, path), content=content, params={"mode": format(mode, "o")})


def read_file_call(session_id: str, path: str) -> Call:
    return Call("GET", file_path(session_id, path))


def list_files_call(session_id: str, path: str) -> Call:
    return Call("GET", session_path(session_id, "/files"), params={"path": path})


def delete_file_call(session_id: str, path: str) -> Call:
    return Call("DELETE", file_path(session_id, path))


def error_from_answer(status: int, content: bytes, retry_after: str | None) -> Pid1Error:
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    error = error_from_body(body, status, retry_after)
    if body is None and content:
        text = content[:200].decode("utf-8", "replace")
        error.message = f"{error.message}: {text}"
        error.args = (error.message,)
    return error


def raise_for_answer(response: httpx.Response) -> None:
    """Raises the error an answer of 4xx or 5xx carries (its body read)."""
    if response.status_code >= 400:
        raise error_from_answer(response.status_code, response.content, response.headers.get("retry-after"))


def pool_ready(health: Mapping[str, Any], ready: int) -> bool:
    """Whether ``ready`` warm VMs (at most the pool's target) can be handed out."""
    pool = health.get("pool", {})
    return bool(pool.get("ready", 0) >= min(ready, pool.get("target", 0)))


def not_ready(health: Mapping[str, Any], ready: int, timeout: float) -> UnavailableError:
    return UnavailableError(
        f"the pool did not have {ready} warm VM(s) within {timeout:g} s: {health.get('pool')}",
        code="not_ready",
    )


def list_entries(answer: Mapping[str, Any], path: str) -> list[FileInfo]:
    return [parse_file_info(entry, path) for entry in answer.get("entries", [])]


class StreamReader:
    """Turns the NDJSON lines of a streamed run into output pieces and one
    final result (or error). Pieces are handed back as bytes and, for text
    callbacks, as text decoded incrementally, so a character split between
    two pieces comes out whole."""

    def __init__(self) -> None:
        self._decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self.result: dict[str, Any] | None = None

    def line(self, line: str | bytes) -> tuple[str, str] | None:
        """One line: ``(stream, text)`` for output, ``None`` for the result
        (kept in ``result``) or a blank line; raises for an error line."""
        if not line.strip():
            return None
        if self.result is not None:
            raise Pid1Error("the service sent a line after the result")
        try:
            event = json.loads(line)
        except ValueError:
            raise Pid1Error(f"the service sent a line that is not JSON: {line[:200]!r}") from None
        kind = event.get("type") if isinstance(event, dict) else None
        if kind in self._decoders:
            data = base64.b64decode(event.get("data", ""))
            return kind, self._decoders[kind].decode(data)
        if kind == "result" and isinstance(event.get("result"), dict):
            self.result = event["result"]
            return None
        if kind == "error":
            raise error_from_body(event, None)
        raise Pid1Error(f"the service sent an unknown line: {str(line)[:200]}")

    def tails(self) -> list[tuple[str, str]]:
        """Text still held by the decoders (an incomplete character at the end)."""
        tails = []
        for stream, decoder in self._decoders.items():
            text = decoder.decode(b"", final=True)
            if text:
                tails.append((stream, text))
        return tails

    def finish(self) -> dict[str, Any]:
        if self.result is None:
            raise UnavailableError("the stream ended before its result: the service went away mid-run")
        return self.result
