"""The embedded default: a private ``vmexec serve`` for a client that was
given no service to talk to.

It listens on a Unix socket of its own in this user's directory of mode
0700, logs to a file that has no name, and is stopped (SIGTERM, then SIGKILL) when the client
closes, when the client is garbage-collected, or at interpreter exit. If
the Python process dies without that, the kernel sends the service SIGTERM
(``PR_SET_PDEATHSIG``), and the service then kills its QEMUs and removes
its socket.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import queue
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from ._errors import SetupError, UnavailableError, VmexecNotFoundError
from ._protocol import Address

__all__ = ["DEFAULT_POOL", "START_TIMEOUT_S", "EmbeddedService", "find_vmexec"]

# Warm VMs the embedded service keeps: one answers a program's first run at
# pool speed, and each idle one costs ~40 MiB of host memory.
DEFAULT_POOL = 1

# Seconds for the embedded service to answer its health check: it listens
# in well under a second; the margin covers a loaded 2-core host.
START_TIMEOUT_S = 60.0

# Seconds SIGTERM gives runs still in flight when the client closes; the
# client is going away, so nobody waits for their answers for long.
GRACE_S = 2.0

# Seconds after SIGTERM before SIGKILL: the grace, then killing the VMs.
STOP_TIMEOUT_S = GRACE_S + 8.0

# Bytes of the service's log quoted in an error.
LOG_TAIL_BYTES = 2000

# A Unix socket's path must fit in sun_path (108 bytes on Linux).
SOCKET_PATH_MAX = 100

_PR_SET_PDEATHSIG = 1

HOW_TO_GET_VMEXEC = (
    "build it in a pid1 checkout with `just build` (and the guest image with "
    "`just image`), then set PID1_VMEXEC=<checkout>/target/release/vmexec or put "
    "vmexec on PATH (`just install`); or give url= / PID1_SERVER to use a running "
    "`vmexec serve`"
)


def find_vmexec(explicit: str | os.PathLike[str] | None = None) -> str:
    """The ``vmexec`` to run: ``explicit``, else ``$PID1_VMEXEC``, else PATH."""
    given, origin = explicit, "vmexec="
    if given is None and os.environ.get("PID1_VMEXEC"):
        given, origin = os.environ["PID1_VMEXEC"], "PID1_VMEXEC="
    if given is not None:
        path = Path(given).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path.resolve())
        raise VmexecNotFoundError(
            f"cannot start the embedded pid1 service: {origin}{given} is not an "
            f"executable file; {HOW_TO_GET_VMEXEC}",
            code="no_vmexec",
        )
    found = shutil.which("vmexec")
    if found is None:
        raise VmexecNotFoundError(
            f"cannot start the embedded pid1 service: no vmexec on PATH; {HOW_TO_GET_VMEXEC}",
            code="no_vmexec",
        )
    return found


def _runtime_dir() -> Path:
    """This user's directory for embedded services' sockets: made mode 0700
    once and reused, so that a Python process killed outright leaves
    nothing new behind (its service removes its own socket)."""
    uid = os.getuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    candidates = [Path(runtime) / "pid1"] if os.path.isabs(runtime) else []
    candidates.append(Path(tempfile.gettempdir()) / f"pid1-py-{uid}")
    candidates.append(Path("/tmp") / f"pid1-py-{uid}")
    refused = []
    for directory in candidates:
        if len(str(directory)) + len("/4194304-0123456789ab.sock") > SOCKET_PATH_MAX:
            continue
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            info = directory.lstat()
        except OSError as e:
            refused.append(f"{directory}: {e}")
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == uid and info.st_mode & 0o077 == 0:
            return directory
        refused.append(f"{directory}: not a directory of mode 0700 owned by uid {uid}")
    raise SetupError(
        "cannot start the embedded pid1 service: no private directory for its socket ("
        + "; ".join(refused)
        + ")",
        code="no_directory",
    )


class _Spawner:
    """One thread that lives as long as the process and starts every
    embedded service: a parent-death signal fires when the *thread* that
    forked exits, so a service started from a short-lived thread would be
    killed with that thread."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], concurrent.futures.Future[subprocess.Popen[bytes]]]
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="pid1-spawner", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            start, future = self._requests.get()
            try:
                future.set_result(start())
            except BaseException as e:  # handed to the caller
                future.set_exception(e)

    def spawn(self, start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._requests.put((start, future))
        return future.result()


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawn(start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
    return _spawner.spawn(start)


def _death_signal_setup() -> Callable[[], None] | None:
    """What the child runs before exec: ask for SIGTERM when the spawner
    thread (so the Python process) dies, and exit at once if it already has."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def _stop(process: subprocess.Popen[bytes], socket: Path, log: BinaryIO, owner: int) -> None:
    """SIGTERM, a bounded wait, then SIGKILL; then what it may have left.
    Only the process that started the service stops it: a child forked
    from it (multiprocessing, a worker pool) inherits the client and its
    exit handlers, and must not take its parent's service down."""
    if os.getpid() != owner:
        return
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except ProcessLookupError:
            pass
    # The service removes its socket when it stops; not when SIGKILLed.
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()
    log.close()


class EmbeddedService:
    """A ``vmexec serve`` of this process's own, on a private Unix socket."""

    def __init__(
        self,
        vmexec: str | os.PathLike[str] | None = None,
        pool: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.vmexec = find_vmexec(vmexec)
        if pool is None:
            pool = int(os.environ.get("PID1_POOL", DEFAULT_POOL))
        if pool < 0:
            raise ValueError(f"pool: {pool} is not a number of VMs")
        self.pool = pool
        self.directory = _runtime_dir()
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.socket = self.directory / f"{name}.sock"
        self.command = [
            self.vmexec,
            "serve",
            "--listen",
            f"unix:{self.socket}",
            "--pool",
            str(pool),
            "--grace",
            str(GRACE_S),
            *args,
        ]
        setup = _death_signal_setup()
        # The log is read through a handle of its own (the service appends
        # through another) and has no name once the service holds it, so
        # nothing of it outlives both processes.
        log_path = self.directory / f"{name}.log"
        appender = open(log_path, "ab")
        self._log = open(log_path, "rb")
        log_path.unlink()

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=appender,
                stderr=appender,
                start_new_session=True,
                preexec_fn=setup,
            )

        try:
            self.process = _spawn(start)
        except OSError as e:
            self._log.close()
            raise SetupError(f"cannot start the embedded pid1 service ({self.vmexec}): {e}") from e
        finally:
            appender.close()
        self._finalizer = weakref.finalize(self, _stop, self.process, self.socket, self._log, os.getpid())

    @property
    def address(self) -> Address:
        return Address(base_url="http://pid1", uds=str(self.socket))

    @property
    def url(self) -> str:
        """The ``unix:`` URL another client can use to share this service."""
        return f"unix:{self.socket}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        """The end of the service's log (its stderr)."""
        try:
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - LOG_TAIL_BYTES))
            return self._log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def exited(self, when: str = "") -> str | None:
        """Why the service is gone, or ``None`` while it runs."""
        status = self.process.poll()
        if status is None:
            return None
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        tail = self.log_tail()
        return f"the embedded pid1 service (vmexec serve) {how}{when}" + (
            f"; its log ends:\n{tail}" if tail else ""
        )

    def check_started(self) -> None:
        """Raises ``SetupError`` if the service exited before it answered."""
        why = self.exited(" before it answered")
        if why is not None:
            self.stop()
            raise SetupError(why, code="serve_exited")

    def start_timed_out(self, timeout: float) -> SetupError:
        tail = self.log_tail()
        self.stop()
        return SetupError(
            f"the embedded pid1 service did not answer within {timeout:g} s"
            + (f"; its log ends:\n{tail}" if tail else ""),
            code="serve_timeout",
        )

    def unavailable(self, cause: BaseException) -> UnavailableError:
        """The error for a call that could not reach the service."""
        why = self.exited()
        if why is None:
            return UnavailableError(f"the embedded pid1 service did not answer: {cause}", code="unreachable")
        return UnavailableError(why, code="service_died")

    def stop(self) -> None:
        """Stops the service (idempotent); its socket goes with it."""
        self._finalizer()
