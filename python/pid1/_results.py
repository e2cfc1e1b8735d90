"""What the service answers, as typed values: a run's ``Result`` (with its
``Timings``), a listing's ``FileInfo``, and ``File``, an upload."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["File", "FileInfo", "Result", "Timings", "parse_file_info", "parse_result"]


@dataclass(frozen=True)
class File:
    """A file written into the guest before a run: ``path`` relative to the
    job's home ``/home/user`` (or absolute under it), ``content`` as bytes
    or text (UTF-8), ``mode`` its permission bits."""

    path: str
    content: bytes | str
    mode: int = 0o644


@dataclass(frozen=True)
class FileInfo:
    """One entry of a guest directory listing."""

    name: str
    path: str
    kind: str
    """``file``, ``dir``, ``link`` (not followed) or ``other``."""
    size: int
    mode: int

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


@dataclass(frozen=True)
class Timings:
    """The service's figures for one run, in milliseconds."""

    boot_ms: float
    """Request to a VM in hand (near 0 for a pooled VM)."""
    exec_ms: float
    """Job sent to its result."""
    total_ms: float
    """Request to result, inside the service."""
    kernel_ms: float
    """The guest kernel's boot, for a VM booted cold; else 0."""
    init_ms: float
    """The init's start, for a VM booted cold; else 0."""


@dataclass(frozen=True)
class Result:
    """What a job left.

    ``exit_code`` is the job's exit status, ``128 + N`` when signal N
    killed it, and ``None`` when it timed out (then ``timed_out`` is set).
    ``signal`` is N for an exit code above 128, which is how the service
    reports a death by signal (a job that calls ``exit(130)`` itself reads
    the same). ``stdout``/``stderr`` are text (UTF-8, undecodable bytes
    replaced); ``stdout_bytes``/``stderr_bytes`` are exact.
    """

    stdout: str
    stderr: str
    stdout_bytes: bytes
    stderr_bytes: bytes
    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    peak_memory_bytes: int
    """The job's peak memory; 0 for a session step (not measured)."""
    cpu_ms: float
    """The job's CPU time; 0 for a session step."""
    start: str
    """How the VM came to run it: ``pooled``, ``restored`` or ``cold``."""
    accel: str
    """``kvm`` or ``tcg``."""
    timings: Timings
    files: dict[str, bytes] = field(default_factory=dict)
    """Downloaded files, by the path the request named."""
    packages: list[str] = field(default_factory=list)
    """The packages the job could import: the set resolved from the
    requirements the run or session named, ``name==version`` by name;
    empty when it named none."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The service's JSON result object."""

    @property
    def ok(self) -> bool:
        """Exited 0 and was not cut off by its timeout."""
        return self.exit_code == 0 and not self.timed_out


def _exact(raw: Mapping[str, Any], name: str) -> tuple[str, bytes]:
    """A stream's text and bytes: the base64 copy is there exactly when the
    bytes are not valid UTF-8."""
    encoded = raw.get(f"{name}_base64")
    if isinstance(encoded, str):
        data = base64.b64decode(encoded)
        return data.decode("utf-8", "replace"), data
    text = str(raw.get(name, ""))
    return text, text.encode("utf-8")


def parse_result(raw: Mapping[str, Any]) -> Result:
    """A ``Result`` from the service's result object."""
    stdout, stdout_bytes = _exact(raw, "stdout")
    stderr, stderr_bytes = _exact(raw, "stderr")
    timed_out = bool(raw.get("timed_out", False))
    code = raw.get("exit_code")
    exit_code = None if timed_out or not isinstance(code, int) else code
    signal = exit_code - 128 if exit_code is not None and exit_code > 128 else None
    files = {
        str(entry["path"]): base64.b64decode(entry["content"]) for entry in raw.get("files") or ()
    }
    return Result(
        stdout=stdout,
        stderr=stderr,
        stdout_bytes=stdout_bytes,
        stderr_bytes=stderr_bytes,
        exit_code=exit_code,
        signal=signal,
        timed_out=timed_out,
        stdout_truncated=bool(raw.get("stdout_truncated", False)),
        stderr_truncated=bool(raw.get("stderr_truncated", False)),
        peak_memory_bytes=int(raw.get("peak_memory_bytes", 0)),
        cpu_ms=float(raw.get("cpu_ms", 0.0)),
        start=str(raw.get("start", "")),
        accel=str(raw.get("accel", "")),
        timings=Timings(
            boot_ms=float(raw.get("boot_ms", 0.0)),
            exec_ms=float(raw.get("exec_ms", 0.0)),
            total_ms=float(raw.get("total_ms", 0.0)),
            kernel_ms=float(raw.get("kernel_ms", 0.0)),
            init_ms=float(raw.get("init_ms", 0.0)),
        ),
        files=files,
        packages=[str(spec) for spec in raw.get("packages") or ()],
        raw=raw,
    )


def parse_file_info(raw: Mapping[str, Any], directory: str) -> FileInfo:
    """A listing entry; ``path`` is the entry's, relative as ``directory`` was."""
    name = str(raw["name"])
    path = f"{directory.rstrip('/')}/{name}" if directory else name
    return FileInfo(
        name=name,
        path=path,
        kind=str(raw["kind"]),
        size=int(raw["size"]),
        mode=int(raw["mode"]),
    )
