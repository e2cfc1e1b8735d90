"""The actor a pool pins to each node: it owns that node's ``vmexec serve``
(the SDK's embedded service, on a private Unix socket) and runs what the
driver places there through the SDK's ``AsyncClient``.

The actor is an asyncio actor: a run is an ``await`` on the service, so one
actor carries as many runs at once as its service has VMs, and health and
shutdown calls have a concurrency group of their own so they never wait
behind runs. The service is a child of the actor's process with a
parent-death signal, so a node whose actor dies (the node lost, the pool's
driver gone) takes its service and every QEMU along.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import ray

from .._async_client import AsyncClient, AsyncSession
from .._errors import Pid1Error, SessionClosedError, SetupError
from .._results import Result

__all__ = ["CONTROL", "NodeResult", "NodeService", "NodeSettings"]

# The concurrency group of calls that must not wait behind runs.
CONTROL = "control"

# Calls of the control group at once: a health check, a shutdown, a few spare.
CONTROL_CONCURRENCY = 4


@dataclass(frozen=True)
class NodeResult(Result):
    """A ``pid1.Result`` that also says which node ran it: ``node`` is the
    Ray node id (``ray.get_runtime_context().get_node_id()`` there)."""

    node: str = ""


@dataclass(frozen=True)
class NodeSettings:
    """How one node's service is started. ``None`` fields take the
    service's own defaults."""

    pool_size: int = 2
    """Warm VMs the service keeps ready (``vmexec serve --pool``)."""
    max_vms: int | None = None
    """VMs at once on the node (``--max-vms``): the node's slots."""
    vmexec: str | None = None
    """The ``vmexec`` binary on the node; ``None``: ``$PID1_VMEXEC``, else PATH."""
    cache_dir: str | None = None
    """The service's cache root (its ``XDG_CACHE_HOME``: templates are kept
    in ``CACHE_DIR/pid1``); ``None``: the node user's ``~/.cache``."""
    tmp_dir: str | None = None
    """Where the service makes its VMs' sockets and files (its ``TMPDIR``)."""
    serve_args: tuple[str, ...] = ()
    """More ``vmexec serve`` arguments (``--memory 512``, ``--queue 128``...)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """More environment for the service (``PID1_IMAGE_DIR``...)."""
    start_timeout: float = 300.0
    """Seconds for the service to answer and warm its first VM: on a node
    with an empty cache that includes making the template."""
    url: str | None = None
    """A service already running on the node (``unix:/run/pid1.sock``, a
    systemd unit's or a DaemonSet's; ``http://127.0.0.1:8470``) to use
    instead of starting one; the pool then neither starts nor stops it,
    and the fields above that shape a service are not used."""
    token: str | None = None
    """That service's bearer token, for TCP."""


def with_node(result: Result, node: str) -> NodeResult:
    values = {f.name: getattr(result, f.name) for f in fields(Result)}
    return NodeResult(**values, node=node)


Output = Callable[[str], None]


class NodeServiceImpl:
    """The actor's body; ``NodeService`` is it as a Ray actor class."""

    def __init__(self, settings: NodeSettings) -> None:
        self._settings = settings
        self._node = ray.get_runtime_context().get_node_id()
        self._sessions: dict[str, AsyncSession] = {}
        self._start_error: Pid1Error | None = None
        self._client: AsyncClient | None = None
        self._apply_environment()
        try:
            self._client = self._new_client()
        except Pid1Error as e:
            # Kept for start(), which reports it: an exception here would
            # reach the driver as a bare "actor died".
            self._start_error = e

    # -- the service -------------------------------------------------------

    def _apply_environment(self) -> None:
        """The actor's process is its own: what the service inherits is set
        in it before the service is spawned."""
        settings = self._settings
        extra = dict(settings.env)
        if settings.cache_dir is not None:
            os.makedirs(settings.cache_dir, exist_ok=True)
            extra["XDG_CACHE_HOME"] = settings.cache_dir
        if settings.tmp_dir is not None:
            os.makedirs(settings.tmp_dir, exist_ok=True)
            extra["TMPDIR"] = settings.tmp_dir
        os.environ.update(extra)
        # tempfile caches TMPDIR at its first use; the service's private
        # directory follows the new one.
        tempfile.tempdir = None

    def _new_client(self) -> AsyncClient:
        settings = self._settings
        if settings.url is not None:
            return AsyncClient(url=settings.url, token=settings.token)
        args: list[str] = []
        if settings.max_vms is not None:
            args += ["--max-vms", str(settings.max_vms)]
        args += settings.serve_args
        return AsyncClient(
            vmexec=settings.vmexec,
            pool=settings.pool_size,
            serve_args=args,
            start_timeout=settings.start_timeout,
        )

    def _live(self) -> AsyncClient:
        """The client of a running service; a service that died is started
        anew (its sessions died with it and answer as closed)."""
        if self._start_error is not None:
            raise self._start_error
        client = self._client
        assert client is not None
        embedded = client.embedded
        if embedded is not None and embedded.exited() is not None:
            embedded.stop()
            self._sessions.clear()
            self._client = client = self._new_client()
        return client

    # -- control -----------------------------------------------------------

    @ray.method(concurrency_group=CONTROL)
    async def start(self) -> dict[str, Any]:
        """Waits for the service and its first warm VM; its health."""
        client = self._live()
        ready = 1 if self._settings.pool_size > 0 else 0
        health = await client.wait_ready(timeout=self._settings.start_timeout, ready=ready)
        return self._report(health)

    @ray.method(concurrency_group=CONTROL)
    async def health(self) -> dict[str, Any]:
        return self._report(await self._live().health())

    def _report(self, health: Mapping[str, Any]) -> dict[str, Any]:
        client = self._client
        embedded = client.embedded if client is not None else None
        return {
            "node": self._node,
            "pid": os.getpid(),
            "service_pid": embedded.pid if embedded is not None else None,
            "url": client.url if client is not None else None,
            "sessions": len(self._sessions),
            "service": dict(health),
        }

    @ray.method(concurrency_group=CONTROL)
    async def shutdown(self) -> None:
        """Closes every session and stops the service (it kills its VMs);
        a service given by ``url`` is left running."""
        client, self._client = self._client, None
        self._start_error = SetupError("this node's service was shut down", code="shut_down")
        sessions, self._sessions = list(self._sessions.values()), {}
        if client is None:
            return
        for session in sessions:
            try:
                await asyncio.wait_for(session.close(), 5.0)
            except (Pid1Error, asyncio.TimeoutError):
                pass
        await client.aclose()

    # -- runs --------------------------------------------------------------

    async def run(self, request: Mapping[str, Any]) -> NodeResult:
        return with_node(await self._live().run(**request), self._node)

    async def run_streamed(self, request: Mapping[str, Any]) -> AsyncIterator[tuple[str, Any]]:
        """``("stdout" | "stderr", text)`` as the job writes, then
        ``("result", NodeResult)``."""
        client = self._live()
        async for item in self._streamed(
            lambda out, err: client.run(**request, on_stdout=out, on_stderr=err)
        ):
            yield item

    async def _streamed(
        self, start: Callable[[Output, Output], Awaitable[Result]]
    ) -> AsyncIterator[tuple[str, Any]]:
        pieces: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        job = asyncio.ensure_future(
            start(
                lambda text: pieces.put_nowait(("stdout", text)),
                lambda text: pieces.put_nowait(("stderr", text)),
            )
        )
        job.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            ended = False
            while not ended:
                piece = await pieces.get()
                if piece is None:
                    break
                # Pieces that queued up meanwhile go as one: each item is a
                # Ray object, dearer than a few bytes of output.
                while not pieces.empty():
                    following = pieces.get_nowait()
                    if following is None:
                        ended = True
                        break
                    if following[0] == piece[0]:
                        piece = (piece[0], piece[1] + following[1])
                    else:
                        yield piece
                        piece = following
                yield piece
            yield ("result", with_node(await job, self._node))
        finally:
            if not job.done():
                job.cancel()

    # -- sessions ----------------------------------------------------------

    async def open_session(self, request: Mapping[str, Any]) -> dict[str, Any]:
        session = await self._live().session(**request)
        self._sessions[session.id] = session
        return {"id": session.id, "language": session.language, "info": dict(session.info)}

    def _session(self, session_id: str) -> AsyncSession:
        session = self._sessions.get(session_id)
        if session is None or session.closed:
            self._sessions.pop(session_id, None)
            raise SessionClosedError(
                f"session {session_id} is closed (node {self._node})", code="closed"
            )
        return session

    async def session_exec(self, session_id: str, request: Mapping[str, Any]) -> NodeResult:
        session = self._session(session_id)
        return with_node(await session.exec(**request), self._node)

    async def session_exec_streamed(
        self, session_id: str, request: Mapping[str, Any]
    ) -> AsyncIterator[tuple[str, Any]]:
        session = self._session(session_id)
        async for item in self._streamed(
            lambda out, err: session.exec(**request, on_stdout=out, on_stderr=err)
        ):
            yield item

    async def session_file(self, session_id: str, operation: str, args: Sequence[Any]) -> Any:
        """``write_file``, ``read_file``, ``list_files`` or ``delete_file``."""
        if operation not in ("write_file", "read_file", "list_files", "delete_file"):
            raise ValueError(f"{operation}: not a session file operation")
        session = self._session(session_id)
        answer = await getattr(session, operation)(*args)
        return answer

    async def close_session(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            await session.close()


# Ray's stubs do not know ``concurrency_groups`` as an argument of remote().
NodeService: Any = ray.remote(  # type: ignore[call-overload]
    num_cpus=0,
    max_restarts=0,
    concurrency_groups={CONTROL: CONTROL_CONCURRENCY},
)(NodeServiceImpl)
