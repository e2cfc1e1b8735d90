"""exec-sandbox's input rules, checked here before any request is sent.

exec-sandbox checks some of them on the host (timeout, code size, memory)
and the rest in its guest agent (empty code, NUL, environment, package
specs); either way the caller sees the same exception classes, and so does
a caller of this module, with nothing sent to the service. A few rules are
pid1's (an environment name must be a shell name, the features pid1 lacks);
docs/exec-sandbox.md lists them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from .config import MIN_MEMORY_MB
from .exceptions import (
    CodeValidationError,
    EnvVarValidationError,
    NotSupportedError,
    PackageNotAllowedError,
    VmConfigError,
)
from .models import Language

__all__ = [
    "BLOCKED_ENV_VARS",
    "MAX_CODE_SIZE",
    "MAX_ENV_VARS",
    "MAX_ENV_VAR_NAME_LENGTH",
    "MAX_ENV_VAR_VALUE_LENGTH",
    "MAX_PACKAGES",
    "MAX_TIMEOUT_SECONDS",
    "check_code",
    "check_code_size",
    "check_env_vars",
    "check_features",
    "check_language",
    "check_memory",
    "check_packages",
    "check_timeout",
]

MAX_TIMEOUT_SECONDS = 300
MAX_CODE_SIZE = 1024 * 1024
"""Characters on the host; the same number of UTF-8 bytes in the guest."""
MAX_ENV_VARS = 100
MAX_ENV_VAR_NAME_LENGTH = 256
MAX_ENV_VAR_VALUE_LENGTH = 4096
MAX_PACKAGES = 50
MAX_PACKAGE_SPEC_LENGTH = 214
"""PyPI's longest name, as exec-sandbox bounds a whole spec (in UTF-8 bytes)."""

BLOCKED_ENV_VARS = frozenset(
    {
        # The dynamic linker and glibc: code loaded into every process.
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "LD_BIND_NOW",
        "LD_DEBUG",
        "LD_DEBUG_OUTPUT",
        "LD_USE_LOAD_BIAS",
        "LD_PROFILE",
        "LD_ORIGIN_PATH",
        "LD_AOUT_LIBRARY_PATH",
        "LD_AOUT_PRELOAD",
        "GLIBC_TUNABLES",
        "GCONV_PATH",
        "HOSTALIASES",
        "LOCPATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
        "MALLOC_CHECK_",
        "MALLOC_TRACE",
        "MALLOC_PERTURB_",
        # Interpreters' start-up hooks.
        "NODE_OPTIONS",
        "NODE_REPL_HISTORY",
        "PYTHONPATH",
        "PYTHONINSPECT",
        "PYTHONWARNINGS",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "BASH_ENV",
        "ENV",
        "PROMPT_COMMAND",
        "IFS",
        "CDPATH",
        "PS4",
        "PATH",
    }
)
"""Names exec-sandbox refuses, compared upper-cased: each makes an
interpreter, the shell or the dynamic linker run or load something else."""

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_VERSION_OPERATORS = "@=<>~"
_PACKAGE_VERSION = re.compile(r"[A-Za-z0-9_.\-@=<>~^*\[\], ]*\Z")
"""What may follow the name: no ``/`` (a local path) and no ``;`` or
quotes (environment markers)."""


def _forbidden_control(text: str) -> bool:
    """NUL, the C0 controls but tab, and DEL: terminal escapes and log
    injection."""
    return any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in text)


def check_timeout(timeout_seconds: int | None) -> None:
    if timeout_seconds is not None and not 1 <= timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise ValueError(
            f"timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}, got {timeout_seconds}"
        )


def check_code_size(code: str) -> None:
    if len(code) > MAX_CODE_SIZE:
        raise VmConfigError(
            f"Code too large: {len(code)} bytes exceeds {MAX_CODE_SIZE} byte limit",
            context={"code_size": len(code), "max_code_size": MAX_CODE_SIZE},
        )


def check_memory(memory_mb: int) -> None:
    if memory_mb < MIN_MEMORY_MB:
        raise VmConfigError(
            f"memory_mb={memory_mb} is below minimum ({MIN_MEMORY_MB}MB)",
            context={"memory_mb": memory_mb},
        )


def check_language(language: str | Language) -> Language:
    """The ``Language``; an unknown name is a ``ValueError`` as
    ``Language(name)`` raises it."""
    lang = Language(language)
    if lang is Language.JAVASCRIPT:
        raise NotSupportedError(
            "language='javascript': pid1's guest has no JavaScript runtime yet; "
            "use 'python' or 'raw' (a shell script)",
            context={"feature": "javascript"},
        )
    return lang


def check_features(
    *,
    allow_network: bool,
    allowed_domains: Sequence[str] | None,
    expose_ports: Sequence[Any] | None,
) -> None:
    """pid1 guests have no network device: a request for one is refused,
    never run without it."""
    if expose_ports:
        raise NotSupportedError(
            "expose_ports: pid1 guests have no network device, so no port can be exposed",
            context={"feature": "expose_ports"},
        )
    if allow_network or allowed_domains:
        raise NotSupportedError(
            "allow_network/allowed_domains: pid1 guests have no network; "
            "pass data in with Session.write_file() instead",
            context={"feature": "network"},
        )


def check_packages(packages: Sequence[str] | None, language: Language) -> list[str]:
    """exec-sandbox's rules for ``packages``: at most 50 specs, each a name
    and a version, for Python only; the specs to send."""
    if not packages:
        return []
    if isinstance(packages, str):
        raise PackageNotAllowedError(f"packages: a list of specs, not the string {packages!r}")
    if language is not Language.PYTHON:
        raise PackageNotAllowedError(
            f"Unsupported language '{language.value}' for package installation (supported: python)"
        )
    if len(packages) > MAX_PACKAGES:
        raise PackageNotAllowedError(f"Too many packages: {len(packages)} (max {MAX_PACKAGES})")
    for spec in packages:
        _check_package_spec(spec)
    return list(packages)


def _check_package_spec(spec: object) -> None:
    """One spec, as exec-sandbox's guest agent checks it before installing."""
    if not isinstance(spec, str) or not spec:
        raise PackageNotAllowedError(f"Invalid package spec: {spec!r}")
    size = len(spec.encode("utf-8", "surrogatepass"))
    if size > MAX_PACKAGE_SPEC_LENGTH:
        raise PackageNotAllowedError(
            f"Package spec too long: {size} bytes (max {MAX_PACKAGE_SPEC_LENGTH})"
        )
    if ".." in spec or "/" in spec or "\\" in spec:
        raise PackageNotAllowedError(f"Invalid package spec: {spec!r} (path characters not allowed)")
    if any(unicodedata.category(c) == "Cc" for c in spec):
        raise PackageNotAllowedError(f"Invalid package spec: {spec!r} (control characters not allowed)")
    end = next((i for i, c in enumerate(spec) if c in _VERSION_OPERATORS), -1)
    if end <= 0 or not _PACKAGE_NAME.match(spec[:end]):
        raise PackageNotAllowedError(
            f"Invalid package spec: {spec!r}. Must include version specifier (e.g., pandas==2.0.0)"
        )
    if not spec[end:].strip(_VERSION_OPERATORS):
        raise PackageNotAllowedError(f"Invalid package spec: {spec!r} (empty version after operator)")
    if not _PACKAGE_VERSION.match(spec[end:]):
        raise PackageNotAllowedError(f"Invalid package spec: {spec!r} (contains invalid characters)")


def check_code(code: str) -> None:
    """The guest agent's code rules."""
    if not isinstance(code, str):
        raise CodeValidationError(f"Code must be a string, not {type(code).__name__}")
    if not code.strip():
        raise CodeValidationError("Code cannot be empty")
    if "\0" in code:
        raise CodeValidationError("Code cannot contain null bytes")
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > MAX_CODE_SIZE:
        raise CodeValidationError(f"Code too large: {size} bytes (max {MAX_CODE_SIZE} bytes)")


def check_env_vars(env_vars: Mapping[str, str] | None) -> dict[str, str]:
    """exec-sandbox's environment rules, then pid1's: a name is a shell
    name (``[A-Za-z_][A-Za-z0-9_]*``), since the service passes it to a real
    process environment."""
    if env_vars is None:
        return {}
    if not isinstance(env_vars, Mapping):
        raise EnvVarValidationError(f"env_vars must be a dict, not {type(env_vars).__name__}")
    if len(env_vars) > MAX_ENV_VARS:
        raise EnvVarValidationError(f"Too many environment variables: {len(env_vars)} (max {MAX_ENV_VARS})")
    for key, value in env_vars.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise EnvVarValidationError(f"Environment variable {key!r}: names and values are strings")
        if key.upper() in BLOCKED_ENV_VARS:
            raise EnvVarValidationError(f"Blocked environment variable: '{key}' (security risk)")
        if not key or len(key) > MAX_ENV_VAR_NAME_LENGTH:
            raise EnvVarValidationError(
                f"Invalid environment variable name length: {len(key)} (must be 1-{MAX_ENV_VAR_NAME_LENGTH})"
            )
        size = len(value.encode("utf-8", "surrogatepass"))
        if len(value) > MAX_ENV_VAR_VALUE_LENGTH or size > MAX_ENV_VAR_VALUE_LENGTH:
            raise EnvVarValidationError(
                f"Environment variable '{key}' value too large: {size} bytes (max {MAX_ENV_VAR_VALUE_LENGTH})"
            )
        if _forbidden_control(key):
            raise EnvVarValidationError(
                f"Environment variable name {key!r} contains forbidden control character"
            )
        if _forbidden_control(value):
            raise EnvVarValidationError(
                f"Environment variable '{key}' value contains forbidden control character"
            )
        if not _SHELL_NAME.match(key):
            raise EnvVarValidationError(
                f"Environment variable name {key!r}: pid1 takes names of letters, digits "
                "and '_', not starting with a digit"
            )
    return dict(env_vars)
