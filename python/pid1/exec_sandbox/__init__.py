"""A drop-in for exec-sandbox: code written for it runs on pid1 once its
import reads ``from pid1.exec_sandbox import Scheduler, SchedulerConfig,
Language`` (or any other of exec-sandbox's public names)::

    from pid1.exec_sandbox import Scheduler

    async with Scheduler() as scheduler:
        result = await scheduler.run("print('hello')", language="python")
        print(result.stdout)

The names, signatures, defaults, input rules, result fields and exception
classes are exec-sandbox's, as far as pid1 has the feature; what it lacks
(network, exposed ports, JavaScript) raises ``NotSupportedError`` (a
``VmConfigError``) instead of running without it. ``packages`` are
installed by the service (on the host, into a layer the VM mounts).
docs/exec-sandbox.md lists every name and every difference.
"""

from __future__ import annotations

import logging

from .config import SchedulerConfig
from .exceptions import (
    AssetChecksumError,
    AssetDownloadError,
    AssetError,
    AssetNotFoundError,
    BalloonTransientError,
    CodeValidationError,
    CommunicationError,
    CommunicationOutcomeUnknownError,
    EnvVarValidationError,
    GuestAgentError,
    InputValidationError,
    NotSupportedError,
    OutputLimitError,
    PackageNotAllowedError,
    PermanentError,
    SandboxDependencyError,
    SandboxError,
    SessionClosedError,
    SnapshotError,
    SocketAuthError,
    TransientError,
    VmBootError,
    VmBootTimeoutError,
    VmCapacityError,
    VmConfigError,
    VmDependencyError,
    VmError,
    VmGvproxyError,
    VmOverlayError,
    VmPermanentError,
    VmQemuCrashError,
    VmTimeoutError,
    VmTransientError,
)
from .models import ExecutionResult, ExposedPort, FileInfo, Language, PortMapping, TimingBreakdown
from .scheduler import Scheduler
from .session import Session

__all__ = [
    "AssetChecksumError",
    "AssetDownloadError",
    "AssetError",
    "AssetNotFoundError",
    "BalloonTransientError",
    "CodeValidationError",
    "CommunicationError",
    "CommunicationOutcomeUnknownError",
    "EnvVarValidationError",
    "ExecutionResult",
    "ExposedPort",
    "FileInfo",
    "GuestAgentError",
    "InputValidationError",
    "Language",
    "NotSupportedError",
    "OutputLimitError",
    "PackageNotAllowedError",
    "PermanentError",
    "PortMapping",
    "SandboxDependencyError",
    "SandboxError",
    "Scheduler",
    "SchedulerConfig",
    "Session",
    "SessionClosedError",
    "SnapshotError",
    "SocketAuthError",
    "TimingBreakdown",
    "TransientError",
    "VmBootError",
    "VmBootTimeoutError",
    "VmCapacityError",
    "VmConfigError",
    "VmDependencyError",
    "VmError",
    "VmGvproxyError",
    "VmOverlayError",
    "VmPermanentError",
    "VmQemuCrashError",
    "VmTimeoutError",
    "VmTransientError",
    "configure_logging",
]


def configure_logging(level: int | str = logging.INFO) -> None:
    """Sends this module's log records (failing callbacks, mostly) to
    stderr at ``level``, as exec-sandbox's function of the name does for
    its own."""
    logger = logging.getLogger("pid1.exec_sandbox")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
