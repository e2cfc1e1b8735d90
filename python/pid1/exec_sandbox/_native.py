"""How pid1's native results and errors become exec-sandbox's: the
``ExecutionResult`` of a ``pid1.Result``, the exception class of a
``pid1.Pid1Error``, and output callbacks that cannot break a call."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import pid1

from .exceptions import (
    CodeValidationError,
    CommunicationError,
    CommunicationOutcomeUnknownError,
    EnvVarValidationError,
    InputValidationError,
    OutputLimitError,
    PackageInstallPermanentError,
    PackageNotAllowedError,
    SandboxError,
    SessionClosedError,
    SnapshotError,
    VmCapacityError,
    VmConfigError,
    VmDependencyError,
    VmPermanentError,
    VmTransientError,
)
from .models import ExecutionResult, Language, TimingBreakdown

logger = logging.getLogger("pid1.exec_sandbox")

SERVICE_LANGUAGE = {Language.PYTHON: "python", Language.RAW: "sh"}
"""exec-sandbox's language names as the service's."""


def _ms(value: object) -> int:
    return round(float(value)) if isinstance(value, (int, float)) else 0


MAX_STDOUT_BYTES = 1_000_000
MAX_STDERR_BYTES = 100_000
"""exec-sandbox's output limits: past either, a call raises
``OutputLimitError`` (its output until then has reached the callbacks)."""

RUN_OUTPUT_LIMIT = MAX_STDOUT_BYTES + 1
"""What a run asks the service to keep of each stream: one byte past the
larger limit tells a cut stream from one that fits exactly."""


def check_output_limits(result: pid1.Result, *, operation: str) -> None:
    over = [
        f"{name} ({len(data)}{'+' if cut else ''} bytes, max {limit})"
        for name, data, cut, limit in (
            ("stdout", result.stdout_bytes, result.stdout_truncated, MAX_STDOUT_BYTES),
            ("stderr", result.stderr_bytes, result.stderr_truncated, MAX_STDERR_BYTES),
        )
        if cut or len(data) > limit
    ]
    if over:
        raise OutputLimitError(
            f"{operation}: output limit exceeded: {', '.join(over)}",
            context={"operation": operation},
        )


def timed_out_note(timeout_seconds: int) -> str:
    """The line a timed-out call's stderr ends with, as exec-sandbox's does."""
    return f"[timeout_error] Execution timed out after {timeout_seconds} seconds"


def exit_code_of(result: pid1.Result) -> int:
    """-1 on timeout, else the status (128 + N for signal N, as the service
    reports it)."""
    if result.timed_out:
        return -1
    if result.exit_code is not None:
        return result.exit_code
    if result.signal is not None:
        return 128 + result.signal
    return -1


def execution_result(
    result: pid1.Result,
    *,
    timeout_seconds: int,
    client_ms: int,
    in_session: bool,
) -> ExecutionResult:
    """The ``ExecutionResult`` of a native result; ``client_ms`` is the whole
    call as this client measured it."""
    raw: Mapping[str, Any] = result.raw
    boot_ms = _ms(raw.get("boot_ms"))
    exec_ms = _ms(raw.get("exec_ms"))
    service_ms = _ms(raw.get("total_ms"))
    start = str(raw.get("start", ""))
    stderr = result.stderr
    if result.timed_out:
        stderr = stderr + ("" if not stderr or stderr.endswith("\n") else "\n")
        stderr += timed_out_note(timeout_seconds)
    if in_session:
        timing = TimingBreakdown(setup_ms=0, boot_ms=0, execute_ms=client_ms, total_ms=client_ms)
    else:
        timing = TimingBreakdown(
            setup_ms=max(0, service_ms - boot_ms - exec_ms),
            boot_ms=boot_ms,
            execute_ms=exec_ms,
            total_ms=client_ms,
            admission_ms=0 if start == "pooled" else None,
            l1_restore_ms=boot_ms if start == "restored" else None,
        )
    return ExecutionResult(
        stdout=result.stdout,
        stderr=stderr,
        exit_code=exit_code_of(result),
        timing=timing,
        execution_time_ms=exec_ms,
        external_cpu_time_ms=None if in_session else _ms(raw.get("cpu_ms")),
        external_memory_peak_mb=None
        if in_session
        else round(int(raw.get("peak_memory_bytes", 0)) / (1024 * 1024)),
        # A session step runs in the session's own VM: no hand-out to count.
        warm_pool_hit=not in_session and start == "pooled",
        l1_cache_hit=not in_session and start == "restored",
    )


def guarded(callback: Callable[[str], object] | None, name: str) -> Callable[[str], None] | None:
    """A callback that, if it raises, is logged and not called again, as
    exec-sandbox treats a failing ``on_stdout``: the call goes on, its
    output is still collected."""
    if callback is None:
        return None
    state = {"on": True}

    def call(chunk: str) -> None:
        if not state["on"]:
            return
        try:
            callback(chunk)
        except Exception:
            state["on"] = False
            logger.warning("%s callback raised, disabling it", name, exc_info=True)

    return call


def env_prefix(language: Language, env_vars: Mapping[str, str]) -> str:
    """Code that sets ``env_vars`` in a session's process before a step, as
    exec-sandbox sets them (a session's environment is its process's, and
    the variables stay set for later steps)."""
    if not env_vars:
        return ""
    if language is Language.PYTHON:
        return f"__import__('os').environ.update({dict(env_vars)!r})\n"
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env_vars.items())


def translate(error: pid1.Pid1Error, *, operation: str) -> SandboxError:
    """The exec-sandbox exception for a native error; raise it ``from``
    the native one."""
    context: dict[str, Any] = {
        "operation": operation,
        "status": error.status,
        "kind": error.code,
        "field": getattr(error, "field", None),
    }
    message = f"{operation}: {error.message}"
    field = context["field"] or ""
    packages = _packages_error(error, message, context)
    if packages is not None:
        return packages
    if isinstance(error, pid1.SetupError):
        return VmDependencyError(message, context)
    if isinstance(error, pid1.SessionClosedError):
        return SessionClosedError(message, context)
    if isinstance(error, pid1.UnauthorizedError):
        return VmConfigError(message + " (set PID1_TOKEN to the service's token)", context)
    if isinstance(error, pid1.UnavailableError):
        if error.status == 503:
            context["retry_after"] = error.retry_after
            return VmCapacityError(message, context)
        return CommunicationError(message, context)
    if isinstance(error, pid1.InvalidRequestError):
        if error.code == "file" or operation in ("write_file", "read_file", "list_files"):
            return VmPermanentError(message, context)
        if field == "code":
            return CodeValidationError(message, context)
        if field.startswith("env"):
            return EnvVarValidationError(message, context)
        if field in ("timeout", "memory_limit_mb", "idle_timeout", "language"):
            return VmConfigError(message, context)
        return InputValidationError(message, context)
    if isinstance(error, pid1.SandboxError):
        if error.code == "vm_lost":
            return CommunicationOutcomeUnknownError(message, context)
        return VmTransientError(message, context)
    return SandboxError(message, context)


def _packages_error(error: pid1.Pid1Error, message: str, context: dict[str, Any]) -> SandboxError | None:
    """A refused or failed package set as exec-sandbox raises it when its
    install fails: a spec its installer refuses is ``PackageNotAllowedError``;
    a set the index cannot give (no such package or version, a conflict, no
    wheel) ``PackageInstallPermanentError``; an index out of reach, once its
    retries are spent, ``SnapshotError`` ("Failed to create snapshot")."""
    if isinstance(error, pid1.PackageError):
        return PackageInstallPermanentError(f"Package installation failed permanently: {message}", context)
    if isinstance(error, pid1.PackagesUnavailableError):
        return SnapshotError(f"Failed to create snapshot: {message}", context)
    if isinstance(error, pid1.InvalidRequestError) and error.field == "packages":
        return PackageNotAllowedError(message, context)
    return None
