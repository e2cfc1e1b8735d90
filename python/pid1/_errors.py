"""The exception tree, and how the service's error answers map onto it.

Every error answer of the service is ``{"error": {"kind", "message",
"field"?}}`` with a status; a streamed run ends with the same object on an
``{"type": "error"}`` line. The ``kind`` decides the class, so a streamed
error and a plain one raise the same exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "InvalidRequestError",
    "PackageError",
    "PackagesUnavailableError",
    "Pid1Error",
    "SandboxError",
    "SessionClosedError",
    "SetupError",
    "UnauthorizedError",
    "UnavailableError",
    "VmexecNotFoundError",
    "error_from_body",
]


class Pid1Error(Exception):
    """Base of every error this package raises.

    ``message`` is the service's own words where it answered, ``status`` the
    HTTP status (``None`` when there was no answer), ``code`` the service's
    error ``kind`` (``bad_request``, ``vm_lost``...), ``field`` the request
    field or guest path at fault, when the service named one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.field = field

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(Pid1Error):
    """The service refused the input (400, 413, 422): bad code, env, path,
    a file that could not be read or written... No VM was harmed."""


class PackageError(InvalidRequestError):
    """The packages asked for cannot be installed as named (422, kind
    ``packages``): an unknown package, a version the index does not have,
    requirements that conflict once resolved, or a package with no binary
    wheel for the guest (CPython 3.11 on Linux), or, from a service that
    runs offline, a set its cache lacks. A changed list mends it, a
    retry does not. A list that is not requirements at all (a bad string,
    too many, two pins of one package) is a plain ``InvalidRequestError``
    with ``field`` ``packages`` (400)."""


class SandboxError(Pid1Error):
    """The VM failed (lost mid-run, or the service could not run the job);
    a job that merely timed out is a result with ``timed_out``, not this."""


class UnavailableError(Pid1Error):
    """The service cannot take the call now: busy or shutting down (503,
    ``retry_after`` seconds), or not reachable at all (refused connection,
    a service that died)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class PackagesUnavailableError(UnavailableError):
    """The packages cannot be had now (502, kind ``packages_unavailable``):
    the package index is out of reach and the set is not in the service's
    cache. The request was sound and no VM failed, so
    this is not a ``SandboxError``: like a busy service, the same call may
    succeed later, once the index answers or the set has been cached."""


class UnauthorizedError(Pid1Error):
    """No bearer token or the wrong one (401): set ``token=`` or PID1_TOKEN."""


class SessionClosedError(Pid1Error):
    """The session is gone: closed, idle past its timeout, or its process
    ended (404 / 410 on it)."""


class SetupError(Pid1Error):
    """The embedded service could not start; the message says what to run."""


class VmexecNotFoundError(SetupError):
    """No ``vmexec`` binary to start the embedded service with."""


_BY_KIND: dict[str, type[Pid1Error]] = {
    "bad_request": InvalidRequestError,
    "refused": InvalidRequestError,
    "file": InvalidRequestError,
    "packages": PackageError,
    "packages_unavailable": PackagesUnavailableError,
    "unauthorized": UnauthorizedError,
    "no_session": SessionClosedError,
    "session_ended": SessionClosedError,
    "busy": UnavailableError,
    "shutting_down": UnavailableError,
    "vm_lost": SandboxError,
    "failed": SandboxError,
}

_BY_STATUS: dict[int, type[Pid1Error]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    404: SessionClosedError,
    410: SessionClosedError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    502: SandboxError,
    500: SandboxError,
    503: UnavailableError,
}


def error_from_body(
    body: Any,
    status: int | None,
    retry_after: str | None = None,
) -> Pid1Error:
    """The exception for an error answer: ``body`` is its parsed JSON (or
    anything else when the body was not the service's error object)."""
    detail: Mapping[str, Any] = {}
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        detail = body["error"]
    kind = detail.get("kind") if isinstance(detail.get("kind"), str) else None
    message = detail.get("message") if isinstance(detail.get("message"), str) else None
    field = detail.get("field") if isinstance(detail.get("field"), str) else None
    if message is None:
        message = f"the service answered {status}" if status is not None else "the service failed"
    cls = _BY_KIND.get(kind or "") or _BY_STATUS.get(status or 0) or Pid1Error
    # An unknown endpoint (kind `not_found`) is a 404 too, but no session's.
    if kind == "not_found":
        cls = Pid1Error
    if issubclass(cls, UnavailableError):
        return cls(
            message, status=status, code=kind, field=field, retry_after=_seconds(retry_after)
        )
    return cls(message, status=status, code=kind, field=field)


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
