"""exec-sandbox's exception tree, with the same names and bases, and how
pid1's native errors map onto it.

Code written for exec-sandbox catches these classes (``InputValidationError``
for a caller's bug, ``VmTransientError`` to retry, ``SandboxError`` for
everything), so every error this package raises is one of them; the native
``pid1.Pid1Error`` it came from, if any, is its ``__cause__``.

One class is pid1's own: ``NotSupportedError``, a ``VmConfigError`` for a
feature pid1 does not have yet (network, exposed ports, JavaScript), so
that such a request fails loudly instead of running without it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AssetChecksumError",
    "AssetDownloadError",
    "AssetError",
    "AssetNotFoundError",
    "BalloonError",
    "BalloonTransientError",
    "CodeValidationError",
    "CommunicationError",
    "CommunicationOutcomeUnknownError",
    "EnvVarValidationError",
    "GuestAgentError",
    "InputValidationError",
    "MigrationTransientError",
    "NotSupportedError",
    "OutputLimitError",
    "PackageInstallPermanentError",
    "PackageInstallTransientError",
    "PackageNotAllowedError",
    "PermanentError",
    "SandboxDependencyError",
    "SandboxError",
    "SessionClosedError",
    "SnapshotError",
    "SocketAuthError",
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
]


class SandboxError(Exception):
    """Base of every error of this module; ``message`` and a ``context``
    dict (here: the service's ``status``, ``kind`` and ``field``)."""

    def __init__(self, message: str, context: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.context = context or {}


class SandboxDependencyError(SandboxError):
    """An optional dependency is missing."""


class TransientError(SandboxError):
    """Marker base: may succeed on retry."""


class PermanentError(SandboxError):
    """Marker base: will not succeed on retry."""


class VmTransientError(TransientError):
    """A VM failure before the code ran: safe to retry."""


class VmBootTimeoutError(VmTransientError):
    """The VM did not become ready in time."""


class VmOverlayError(VmTransientError):
    """exec-sandbox's disk overlay failed; pid1 never raises it (its root is
    a read-only erofs image with tmpfs on top)."""

    def __init__(
        self,
        message: str,
        context: dict[str, Any] | None = None,
        stderr: str = "",
        error_class: str | None = None,
    ) -> None:
        super().__init__(message, context)
        self.stderr = stderr
        self.error_class = error_class


class VmQemuCrashError(VmTransientError):
    """QEMU exited while the VM was being started."""

    def __init__(
        self,
        message: str,
        context: dict[str, Any] | None = None,
        *,
        diagnostics: Any = None,
    ) -> None:
        super().__init__(message, context)
        self.diagnostics = diagnostics


class VmGvproxyError(VmTransientError):
    """exec-sandbox's network proxy failed; pid1 has no network, never raised."""


class VmCapacityError(VmTransientError):
    """No VM free in time (the service's 503): retry later."""


class VmPermanentError(PermanentError):
    """A VM failure that a retry will not mend."""


class VmConfigError(VmPermanentError):
    """An invalid configuration or request (memory under the minimum, code
    over 1 MiB, a wrong token...)."""


class NotSupportedError(VmConfigError):
    """pid1's own: a feature pid1 does not have (yet). The message names the
    feature; nothing was run."""


class VmDependencyError(VmPermanentError):
    """A binary or image is missing: here, ``vmexec`` or the guest image of
    the embedded service (the message says what to run)."""


class PackageInstallTransientError(TransientError):
    """A package install failed for a reason that may pass; never raised
    here: an index out of reach is a ``SnapshotError``, as exec-sandbox
    raises it once its retries are spent."""


class PackageInstallPermanentError(PermanentError):
    """A package install failed for good: the index has no such package or
    version, the specs conflict, or a package has no wheel for the guest."""


class BalloonTransientError(TransientError):
    """exec-sandbox's memory balloon failed; never raised here."""


class MigrationTransientError(TransientError):
    """exec-sandbox's memory snapshot migration failed; never raised here."""


VmError = VmPermanentError
VmTimeoutError = VmBootTimeoutError
VmBootError = VmTransientError
BalloonError = BalloonTransientError


class SnapshotError(SandboxError):
    """A snapshot operation failed; here, the packages could not be had:
    the service cannot reach the package index and the set is not cached."""


class CommunicationError(SandboxError):
    """The service could not be reached, or answered with something this
    module does not understand."""


class CommunicationOutcomeUnknownError(SandboxError):
    """The VM was lost after the code was sent: it may have run. Neither
    transient nor permanent: reconcile side effects before a retry."""


class SocketAuthError(CommunicationError):
    """exec-sandbox's socket peer check failed; never raised here."""

    def __init__(
        self,
        message: str,
        expected_uid: int,
        actual_uid: int,
        context: dict[str, Any] | None = None,
    ) -> None:
        ctx = dict(context or {})
        ctx.update({"expected_uid": expected_uid, "actual_uid": actual_uid})
        super().__init__(message, ctx)
        self.expected_uid = expected_uid
        self.actual_uid = actual_uid


class GuestAgentError(SandboxError):
    """The guest answered with an error; ``response`` is the answer."""

    def __init__(self, message: str, response: dict[str, Any]) -> None:
        super().__init__(message, context={"response": response})
        self.response = response


class PackageNotAllowedError(SandboxError):
    """A package spec that is not allowed: not a name and a version, a
    character exec-sandbox refuses, more than 50, a language other than
    Python, or a spec the service's parser refuses."""


class InputValidationError(SandboxError):
    """Base of the caller's bugs: bad input. A session stays usable."""


class CodeValidationError(InputValidationError):
    """Empty, whitespace-only or NUL-containing code."""


class EnvVarValidationError(InputValidationError):
    """A bad environment: too many, too long, control characters, a blocked
    name."""


class OutputLimitError(PermanentError):
    """stdout or stderr went past the service's output limit. The output up
    to the limit has reached the streaming callbacks; a session stays
    usable."""


class SessionClosedError(PermanentError):
    """The session is closed (by ``close()``, its idle timeout, or its VM or
    process ending)."""


class AssetError(SandboxError):
    """Base of exec-sandbox's asset download errors; pid1 downloads nothing."""


class AssetDownloadError(AssetError):
    """Never raised here: pid1's image is built locally."""


class AssetChecksumError(AssetError):
    """Never raised here: pid1's image is built locally."""


class AssetNotFoundError(AssetError):
    """Never raised here: pid1's image is built locally."""
