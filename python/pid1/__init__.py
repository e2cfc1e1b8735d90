"""pid1: run untrusted code in fresh microVMs from Python.

    import pid1

    with pid1.Client() as client:          # PID1_SERVER, else an embedded `vmexec serve`
        print(client.run("print(6 * 7)").stdout)

``Client`` blocks, ``AsyncClient`` is its asyncio twin; both speak the HTTP
API of ``vmexec serve`` (``service/openapi.json``) over a Unix socket or TCP.
"""

from ._async_client import AsyncClient, AsyncSession
from ._client import Client, Session
from ._errors import (
    InvalidRequestError,
    PackageError,
    PackagesUnavailableError,
    Pid1Error,
    SandboxError,
    SessionClosedError,
    SetupError,
    UnauthorizedError,
    UnavailableError,
    VmexecNotFoundError,
)
from ._results import File, FileInfo, Result, Timings

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Client",
    "File",
    "FileInfo",
    "InvalidRequestError",
    "PackageError",
    "PackagesUnavailableError",
    "Pid1Error",
    "Result",
    "SandboxError",
    "Session",
    "SessionClosedError",
    "SetupError",
    "Timings",
    "UnauthorizedError",
    "UnavailableError",
    "VmexecNotFoundError",
]
