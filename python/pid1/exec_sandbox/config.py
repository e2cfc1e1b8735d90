"""``SchedulerConfig``: exec-sandbox's configuration, its fields, defaults
and ranges.

exec-sandbox's is a frozen pydantic model that forbids unknown fields.
This one is a frozen dataclass that behaves alike where callers can tell:
an unknown field or an out-of-range value raises ``ValueError`` (pydantic's
``ValidationError`` is one) naming the field, and assignment raises.

What pid1 does with each field is in docs/exec-sandbox.md. In short:
``warm_pool_size`` is the embedded service's pool, the defaults apply to
every call, and the snapshot, S3, overcommit and asset fields are accepted,
checked and not used (pid1 has its own snapshot template and no downloads).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SchedulerConfig"]

DEFAULT_MEMORY_MB = 192
"""exec-sandbox's default guest memory."""

MIN_MEMORY_MB = 128
"""exec-sandbox's minimum: below it, its kernel cannot boot."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "exec-sandbox"


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """How a ``Scheduler`` runs code (all fields keyword-only, all optional)."""

    warm_pool_size: int = 0
    """Warm VMs kept ready (≥ 0): the embedded service's ``--pool``.
    0 (exec-sandbox's default) keeps none, so each call restores a VM."""
    default_memory_mb: int = DEFAULT_MEMORY_MB
    """Memory for a call that names none (≥ 128): the job's memory limit."""
    default_timeout_seconds: int = 30
    """Timeout for a call that names none (1 to 300)."""
    session_idle_timeout_seconds: int = 300
    """Idle seconds after which a session is closed (10 to 3600)."""
    images_dir: Path | None = None
    """Where the guest image is: ``PID1_IMAGE_DIR`` of the embedded service."""
    disk_snapshot_cache_dir: Path = field(default_factory=lambda: _cache_dir() / "disk-snapshots")
    """Accepted, not used."""
    memory_snapshot_cache_dir: Path = field(default_factory=lambda: _cache_dir() / "memory-snapshots")
    """Accepted, not used."""
    s3_bucket: str | None = None
    """Accepted, not used."""
    s3_region: str = "us-east-1"
    """Accepted, not used."""
    s3_prefix: str = "snapshots/"
    """Accepted, not used."""
    max_concurrent_s3_uploads: int = 4
    """Accepted (1 to 16), not used."""
    memory_overcommit_ratio: float = 5.0
    """Accepted (1 to 10), not used: the service sizes itself by host memory."""
    cpu_overcommit_ratio: float = 2.0
    """Accepted (1 to 20), not used."""
    host_memory_reserve_ratio: float = 0.08
    """Accepted (0.01 to 0.5), not used."""
    host_cpu_reserve_cores: float = 0.5
    """Accepted (0 to 16), not used."""
    enable_package_validation: bool = True
    """Accepted, not used: a package spec must be pinned either way."""
    auto_download_assets: bool = True
    """Accepted, not used: pid1 downloads nothing."""

    def __post_init__(self) -> None:
        _int(self, "warm_pool_size", low=0)
        _int(self, "default_memory_mb", low=MIN_MEMORY_MB)
        _int(self, "default_timeout_seconds", low=1, high=300)
        _int(self, "session_idle_timeout_seconds", low=10, high=3600)
        _int(self, "max_concurrent_s3_uploads", low=1, high=16)
        _float(self, "memory_overcommit_ratio", 1.0, 10.0)
        _float(self, "cpu_overcommit_ratio", 1.0, 20.0)
        _float(self, "host_memory_reserve_ratio", 0.01, 0.5)
        _float(self, "host_cpu_reserve_cores", 0.0, 16.0)
        for name in ("images_dir",):
            _path(self, name, optional=True)
        for name in ("disk_snapshot_cache_dir", "memory_snapshot_cache_dir"):
            _path(self, name, optional=False)
        _text(self, "s3_bucket", optional=True)
        _text(self, "s3_region", optional=False)
        _text(self, "s3_prefix", optional=False)
        for name in ("enable_package_validation", "auto_download_assets"):
            if not isinstance(getattr(self, name), bool):
                _refuse(name, "a bool", getattr(self, name))

    def model_dump(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_copy(self, *, update: dict[str, Any] | None = None) -> SchedulerConfig:
        return SchedulerConfig(**{**self.model_dump(), **(update or {})})


_FIELDS = frozenset(f.name for f in dataclasses.fields(SchedulerConfig))
_generated_init = SchedulerConfig.__init__


@functools.wraps(_generated_init)
def _init_refusing_unknown(self: SchedulerConfig, *args: Any, **kwargs: Any) -> None:
    # pydantic's extra="forbid" answers an unknown field with a ValueError
    # that names it; the dataclass' own TypeError would read as a bug here.
    if args:
        raise ValueError("SchedulerConfig takes keyword arguments only")
    unknown = sorted(set(kwargs) - _FIELDS)
    if unknown:
        raise ValueError(
            f"SchedulerConfig: unknown field(s) {', '.join(unknown)} (extra inputs are not permitted)"
        )
    _generated_init(self, **kwargs)


SchedulerConfig.__init__ = _init_refusing_unknown  # type: ignore[method-assign]


class FrozenFieldError(dataclasses.FrozenInstanceError, ValueError):
    """Assigning to a field: an ``AttributeError`` as a frozen dataclass
    raises, and a ``ValueError`` as pydantic's frozen models raise."""


def _refuse_assignment(self: SchedulerConfig, name: str, value: object = None) -> None:
    raise FrozenFieldError(f"SchedulerConfig is frozen: {name} cannot be changed")


SchedulerConfig.__setattr__ = _refuse_assignment  # type: ignore[method-assign, assignment]
SchedulerConfig.__delattr__ = _refuse_assignment  # type: ignore[method-assign, assignment]


def _refuse(name: str, wanted: str, value: object) -> None:
    raise ValueError(f"SchedulerConfig.{name}: {wanted}, not {value!r}")


def _int(config: SchedulerConfig, name: str, *, low: int, high: int | None = None) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        _refuse(name, "an integer", value)
    if value < low or (high is not None and value > high):
        wanted = f"at least {low}" if high is None else f"from {low} to {high}"
        _refuse(name, wanted, value)


def _float(config: SchedulerConfig, name: str, low: float, high: float) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        _refuse(name, "a number", value)
    if not low <= value <= high:
        _refuse(name, f"from {low} to {high}", value)
    object.__setattr__(config, name, float(value))


def _path(config: SchedulerConfig, name: str, *, optional: bool) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if isinstance(value, str):
        object.__setattr__(config, name, Path(value))
    elif not isinstance(value, Path):
        _refuse(name, "a path", value)


def _text(config: SchedulerConfig, name: str, *, optional: bool) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if not isinstance(value, str):
        _refuse(name, "a string", value)
