"""``Pool``: a pid1 service on each node of a Ray cluster, and runs placed
on them from the driver.

The pool keeps one actor per eligible node (``_node.NodeService``, pinned
with a hard node affinity), each owning that node's ``vmexec serve``. Runs
are placed by the driver (``_placement``): the least loaded node with a
free slot, counted against each service's own capacity. The pool's
asyncio work runs on a thread of its own, so the blocking methods are thin
bridges to it and the ``*_async`` ones run on the caller's loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn, TypeVar, Union

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .. import _protocol as wire
from .._errors import Pid1Error, SetupError, UnavailableError
from ._calls import RAY_MARGIN_S, Deadline, NodeGone, answer, answer_now, streamed
from ._errors import NodeLostError, NoNodesError
from ._node import NodeResult, NodeService, NodeSettings
from ._placement import Placement
from ._session import AsyncPoolSession, PoolSession

__all__ = ["NodeInfo", "NodeStatus", "Pool"]

log = logging.getLogger("pid1.ray")

T = TypeVar("T")

OutputCallback = Callable[[str], Any]
NodeFilter = Union[str, Sequence[str], Mapping[str, float], None]

# Calls one node's actor takes at once. The driver sends a node no more
# runs than its service has VMs, so this is only a ceiling for session
# steps and file calls on top of them.
MAX_CONCURRENCY = 1024

# Seconds between two looks at the cluster for nodes that joined or died.
# A lost node is also noticed at once by the run that was on it.
REFRESH_S = 10.0

# Seconds a node's shutdown may take: its sessions closed, its service's
# SIGTERM (2 s of grace for runs, then its VMs killed), SIGKILL after 8 s.
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class NodeInfo:
    """A Ray node as the pool sees it (from ``ray.nodes()``)."""

    node_id: str
    address: str
    hostname: str
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeStatus:
    """One node of the pool: ``state`` is ``starting``, ``ready``,
    ``failed`` (its service did not start: ``error`` says why), ``lost``
    or ``stopped``; ``slots`` its service's capacity, ``running`` and
    ``sessions`` what this driver holds there; ``health`` its service's
    last ``/v1/health`` answer as the node reported it; ``labels`` its Ray
    labels."""

    node_id: str
    address: str
    state: str
    slots: int
    running: int
    sessions: int
    error: str | None
    health: Mapping[str, Any] | None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Node:
    info: NodeInfo
    settings: NodeSettings
    actor: Any = None
    state: str = "starting"
    error: str | None = None
    health: Mapping[str, Any] | None = None
    slots: int = 0


def _wanted(spec: NodeFilter) -> dict[str, float]:
    """Resource totals a node must have: names must merely be present."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        return {spec: 1e-9}
    if isinstance(spec, Mapping):
        return {str(name): float(amount) for name, amount in spec.items()}
    return {str(name): 1e-9 for name in spec}


class Pool:
    """pid1 services on the nodes of a Ray cluster, and runs placed on them.

    ``pool_size``: warm VMs each node's service keeps (``--pool``);
    ``max_vms``: VMs at once per node (``--max-vms``; its default: the
    service's, 8), which is each node's count of slots. ``resources``: only
    nodes with these custom resources (a name, names, or minimum totals);
    ``labels``: only nodes with these Ray labels. ``vmexec``, ``cache_dir``,
    ``tmp_dir``, ``serve_args``, ``env``: how each node's service starts
    (see ``NodeSettings``); ``url``/``token``: use the service already
    running on each node at that address (a systemd unit's, a DaemonSet's)
    instead of starting one. ``node_settings(node_info)`` may return a
    mapping of ``NodeSettings`` fields that overrides these for one node.

    Ray must be reachable: when the caller has not called ``ray.init``,
    the pool calls ``ray.init(address=address or "auto")``, which joins a
    running cluster (``ray start --head``) and never starts one.

    The constructor returns once every eligible node's service answered
    and has a warm VM (or failed: see ``nodes()``); it raises when none
    could start. ``retry``: a run whose node is lost is run again, once, on
    another node. ``shutdown()`` (or the end of a ``with`` block, or the
    interpreter's exit) stops every node's service and its VMs.
    """

    def __init__(
        self,
        pool_size: int = 2,
        *,
        max_vms: int | None = None,
        resources: NodeFilter = None,
        labels: Mapping[str, str] | None = None,
        vmexec: str | None = None,
        cache_dir: str | None = None,
        tmp_dir: str | None = None,
        serve_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        url: str | None = None,
        token: str | None = None,
        node_settings: Callable[[NodeInfo], Mapping[str, Any] | None] | None = None,
        address: str | None = None,
        refresh_interval: float = REFRESH_S,
        start_timeout: float = NodeSettings.start_timeout,
        retry: bool = True,
    ) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size: {pool_size} is not a number of VMs")
        if max_vms is not None and max_vms < 1:
            raise ValueError(f"max_vms: {max_vms} leaves no room for a VM")
        self._settings = NodeSettings(
            pool_size=pool_size,
            max_vms=max_vms,
            vmexec=vmexec,
            cache_dir=cache_dir,
            tmp_dir=tmp_dir,
            serve_args=tuple(serve_args),
            env=dict(env or {}),
            start_timeout=start_timeout,
            url=url,
            token=token,
        )
        self._node_settings = node_settings
        self._resources = _wanted(resources)
        self._labels = dict(labels or {})
        self._refresh_interval = refresh_interval
        self._retry = retry
        self._nodes: dict[str, _Node] = {}
        self._sessions: set[AsyncPoolSession] = set()
        self._placement = Placement()
        self._shut = False
        _connect(address)

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pid1-ray-pool", daemon=True
        )
        self._thread.start()
        self._refreshing = self._sync(_make_lock())
        self._refresher: concurrent.futures.Future[None] | None = None
        atexit.register(self.shutdown)
        try:
            self._sync(self._refresh())
            self._check_started()
        except BaseException:
            self.shutdown()
            raise
        if refresh_interval > 0:
            self._refresher = asyncio.run_coroutine_threadsafe(self._keep_refreshing(), self._loop)

    # -- the blocking API --------------------------------------------------

    def run(
        self,
        code: str,
        language: str = "python",
        timeout: float | None = 30,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        files: wire.FileSpec | None = None,
        download: Iterable[str] | None = None,
        memory_limit_mb: int | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        *,
        output_limit: int | None = None,
        node: str | None = None,
    ) -> NodeResult:
        """``pid1.Client.run`` on a node with room; ``result.node`` says
        which. ``node``: only that node (no retry elsewhere). Callbacks are
        called on the pool's thread."""
        self._check_open()
        request = _run_request(
            code, language, timeout, env, stdin, files, download, memory_limit_mb, output_limit
        )
        callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        tries = _Tries(self, "run", node)
        if (
            on_stdout is None
            and on_stderr is None
            and threading.current_thread() is not self._thread
        ):
            # A slot free now: the call goes out and its answer is awaited
            # on this thread, without the two hops to the pool's thread.
            node_id = self._placement.take_now(tries.exclude, node)
            if node_id is not None:
                tries.tried.append(node_id)
                try:
                    ref = self._actor(node_id).run.remote(request)
                    result: NodeResult = answer_now(ref, node_id, _run_deadline(timeout))
                    return result
                except (NodeGone, UnavailableError) as e:
                    tries.failed(node_id, e)
                finally:
                    self._placement.give_back(node_id)
        return self._sync(self._run(request, callbacks, node, tries))

    def submit(
        self,
        code: str,
        language: str = "python",
        timeout: float | None = 30,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        files: wire.FileSpec | None = None,
        download: Iterable[str] | None = None,
        memory_limit_mb: int | None = None,
        *,
        output_limit: int | None = None,
        node: str | None = None,
    ) -> concurrent.futures.Future[NodeResult]:
        """``run`` without waiting: a future of its result, so a blocking
        caller can keep thousands in flight (``concurrent.futures.wait``)."""
        self._check_open()
        coroutine = self.run_async(
            code,
            language,
            timeout,
            env,
            stdin,
            files,
            download,
            memory_limit_mb,
            output_limit=output_limit,
            node=node,
        )
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def map(
        self,
        codes: Iterable[str | Mapping[str, Any]],
        *,
        return_exceptions: bool = False,
        **common: Any,
    ) -> list[Any]:
        """Runs every code at once (as many as the nodes have slots, the
        rest in line) and returns their results in order. An item is the
        code, or a mapping of ``run`` arguments; ``common`` are ``run``
        arguments for all. A failed run raises its error once all have
        ended, or with ``return_exceptions`` stands in the list as itself."""
        return self._sync(self.map_async(codes, return_exceptions=return_exceptions, **common))

    def session(
        self,
        language: str = "python",
        memory_limit_mb: int | None = None,
        idle_timeout: float | None = None,
        *,
        node: str | None = None,
    ) -> PoolSession:
        """``pid1.Client.session`` on a node with room: every step runs on
        that node (``session.node``), and if the node is lost the next call
        raises ``SessionLostError``."""
        return PoolSession(
            self._sync(self._open_session(language, memory_limit_mb, idle_timeout, node))
        )

    def nodes(self) -> list[NodeStatus]:
        """The pool's nodes as the driver sees them now (no call is made)."""
        loads = self._placement.loads()
        statuses = []
        for node in list(self._nodes.values()):
            load = loads.get(node.info.node_id)
            statuses.append(
                NodeStatus(
                    node_id=node.info.node_id,
                    address=node.info.address,
                    state=node.state,
                    slots=node.slots,
                    running=load.running if load else 0,
                    sessions=load.sessions if load else 0,
                    error=node.error,
                    health=node.health,
                    labels=node.info.labels,
                )
            )
        return statuses

    def health(self) -> dict[str, Mapping[str, Any]]:
        """Each ready node's report, asked now: its service's ``/v1/health``
        (``service``), its actor's and service's pids, its open sessions."""
        return self._sync(self._health())

    def refresh(self) -> list[NodeStatus]:
        """Looks at the cluster now: a node that joined gets a service
        (this waits for it), one that died is dropped."""
        self._sync(self._refresh())
        return self.nodes()

    def shutdown(self) -> None:
        """Stops every node's service (which kills its VMs) and the pool's
        actors; waiting calls fail. Idempotent."""
        if self._shut:
            return
        self._shut = True
        atexit.unregister(self.shutdown)
        try:
            if self._thread.is_alive():
                asyncio.run_coroutine_threadsafe(self._stop_all(), self._loop).result(
                    STOP_TIMEOUT_S * 2
                )
        except (concurrent.futures.TimeoutError, RuntimeError) as e:
            log.warning("pid1.ray: the pool's shutdown did not finish: %s", e)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        ready = sum(node.state == "ready" for node in self._nodes.values())
        return f"<pid1.ray.Pool {ready} node(s) ready{' shut down' if self._shut else ''}>"

    # -- the asyncio API ---------------------------------------------------

    async def run_async(
        self,
        code: str,
        language: str = "python",
        timeout: float | None = 30,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        files: wire.FileSpec | None = None,
        download: Iterable[str] | None = None,
        memory_limit_mb: int | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        *,
        output_limit: int | None = None,
        node: str | None = None,
    ) -> NodeResult:
        """``run`` for asyncio callers, on their loop (callbacks may be
        async); ``asyncio.gather`` keeps thousands in flight."""
        self._check_open()
        request = _run_request(
            code, language, timeout, env, stdin, files, download, memory_limit_mb, output_limit
        )
        callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        return await self._run(request, callbacks, node, _Tries(self, "run", node))

    async def _run(
        self,
        request: dict[str, Any],
        callbacks: Mapping[str, OutputCallback | None],
        node: str | None,
        tries: _Tries,
    ) -> NodeResult:
        streaming = any(callback is not None for callback in callbacks.values())

        async def attempt(node_id: str) -> NodeResult:
            actor = self._actor(node_id)
            deadline = _run_deadline(request["timeout"])
            if not streaming:
                result: NodeResult = await answer(actor.run.remote(request), node_id, deadline)
                return result
            generator = actor.run_streamed.options(num_returns="streaming").remote(request)
            result = await streamed(generator, node_id, deadline, callbacks)
            return result

        return await self._placed(attempt, node, False, tries)

    async def map_async(
        self,
        codes: Iterable[str | Mapping[str, Any]],
        *,
        return_exceptions: bool = False,
        **common: Any,
    ) -> list[Any]:
        """``map`` for asyncio callers."""
        calls = []
        for item in codes:
            arguments = dict(common)
            if isinstance(item, Mapping):
                arguments.update(item)
            else:
                arguments["code"] = item
            calls.append(self.run_async(**arguments))
        results = await asyncio.gather(*calls, return_exceptions=True)
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    def session_async(
        self,
        language: str = "python",
        memory_limit_mb: int | None = None,
        idle_timeout: float | None = None,
        *,
        node: str | None = None,
    ) -> _SessionOpener:
        """``session`` for asyncio callers: ``s = await pool.session_async()``
        or ``async with pool.session_async() as s``."""
        return _SessionOpener(self._open_session(language, memory_limit_mb, idle_timeout, node))

    # -- placing a call ----------------------------------------------------

    async def _placed(
        self,
        attempt: Callable[[str], Awaitable[T]],
        node: str | None,
        session: bool,
        tries: _Tries,
    ) -> T:
        """``attempt(node_id)`` on a node with room, retried once on another
        node when its node is lost or its service cannot take it. A run's
        slot is handed back when it ends; a session's is kept."""
        while True:
            try:
                node_id = await self._placement.take(tries.exclude, node, session)
            except NoNodesError as e:
                tries.no_node(e)
            tries.tried.append(node_id)
            keep = False
            try:
                answer_ = await attempt(node_id)
                keep = session
                return answer_
            except (NodeGone, UnavailableError) as e:
                tries.failed(node_id, e)
            finally:
                if not keep:
                    self._placement.give_back(node_id, session)

    async def _open_session(
        self,
        language: str,
        memory_limit_mb: int | None,
        idle_timeout: float | None,
        node: str | None,
    ) -> AsyncPoolSession:
        self._check_open()
        request = {
            "language": language,
            "memory_limit_mb": memory_limit_mb,
            "idle_timeout": idle_timeout,
        }

        async def attempt(node_id: str) -> AsyncPoolSession:
            actor = self._actor(node_id)
            deadline = Deadline(wire.CALL_TIMEOUT_S + RAY_MARGIN_S)
            opened = await answer(actor.open_session.remote(request), node_id, deadline)
            return AsyncPoolSession(self, node_id, actor, opened)

        session = await self._placed(attempt, node, True, _Tries(self, "session", node))
        self._sessions.add(session)
        return session

    def _session_ended(self, session: AsyncPoolSession) -> None:
        if session in self._sessions:
            self._sessions.discard(session)
            self._placement.give_back(session.node, session=True)

    def _actor(self, node_id: str) -> Any:
        node = self._nodes.get(node_id)
        if node is None or node.actor is None or node.state != "ready":
            raise NodeGone(node_id, RuntimeError("the node left the pool"), lost=True)
        return node.actor

    # -- nodes -------------------------------------------------------------

    def _eligible(self) -> list[NodeInfo]:
        """The alive nodes that pass the pool's filters (a GCS call)."""
        eligible = []
        for entry in ray.nodes():  # type: ignore[no-untyped-call]
            if not entry.get("Alive"):
                continue
            resources = entry.get("Resources") or {}
            labels = entry.get("Labels") or {}
            if any(resources.get(name, 0.0) < amount for name, amount in self._resources.items()):
                continue
            if any(labels.get(key) != value for key, value in self._labels.items()):
                continue
            eligible.append(
                NodeInfo(
                    node_id=entry["NodeID"],
                    address=entry.get("NodeManagerAddress", ""),
                    hostname=entry.get("NodeManagerHostname", ""),
                    resources=dict(resources),
                    labels=dict(labels),
                )
            )
        return eligible

    def _settings_for(self, info: NodeInfo) -> NodeSettings:
        if self._node_settings is None:
            return self._settings
        overrides = self._node_settings(info) or {}
        try:
            return replace(self._settings, **overrides)
        except TypeError as e:
            raise ValueError(f"node_settings gave {sorted(overrides)}: {e}") from None

    async def _refresh(self) -> None:
        async with self._refreshing:
            if self._shut:
                return
            eligible = await asyncio.get_running_loop().run_in_executor(None, self._eligible)
            alive = {info.node_id for info in eligible}
            for node_id, node in list(self._nodes.items()):
                if node.state in ("starting", "ready") and node_id not in alive:
                    self._lose(node_id, "it left the Ray cluster")
            new = [info for info in eligible if info.node_id not in self._nodes]
            await asyncio.gather(*(self._start(info) for info in new))

    async def _keep_refreshing(self) -> None:
        while not self._shut:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self._refresh()
            except Exception as e:  # the next look may fare better
                log.warning("pid1.ray: looking at the cluster failed: %s", e)

    async def _start(self, info: NodeInfo) -> None:
        """Starts a node's actor and waits for its service."""
        node = _Node(info, self._settings)
        self._nodes[info.node_id] = node
        self._placement.starting(+1)
        try:
            node.settings = self._settings_for(info)
            node.actor = NodeService.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(info.node_id, soft=False),
                max_concurrency=MAX_CONCURRENCY,
            ).remote(node.settings)
            deadline = Deadline(node.settings.start_timeout + RAY_MARGIN_S)
            report = await answer(node.actor.start.remote(), info.node_id, deadline)
            node.health = report
            node.slots = int(report["service"]["pool"]["capacity"])
            if self._shut or node.state != "starting":
                return
            node.state = "ready"
            self._placement.add(info.node_id, node.slots)
            log.info("pid1.ray: node %s ready, %d slots", info.node_id, node.slots)
        except Exception as e:
            node.state, node.error = "failed", _describe(e)
            log.warning(
                "pid1.ray: node %s could not start its service: %s", info.node_id, node.error
            )
            _kill(node.actor)
        finally:
            self._placement.starting(-1)

    def _check_started(self) -> None:
        if any(node.state == "ready" for node in self._nodes.values()):
            return
        if not self._nodes:
            raise NoNodesError(
                "no alive Ray node matches the pool"
                + (f" (resources {self._resources})" if self._resources else "")
                + (f" (labels {self._labels})" if self._labels else "")
            )
        reasons = "; ".join(
            f"node {node_id}: {node.error}" for node_id, node in self._nodes.items()
        )
        raise SetupError(
            f"no node of the pool could start its pid1 service: {reasons}", code="no_nodes"
        )

    def _lose(self, node_id: str, why: str) -> None:
        node = self._nodes.get(node_id)
        if node is None or node.state in ("lost", "failed", "stopped"):
            return
        node.state, node.error = "lost", why
        self._placement.remove(node_id)
        # An actor Ray still reaches (a node its GCS calls dead) is ended,
        # so its service stops rather than serve runs nobody placed.
        _kill(node.actor)
        log.warning("pid1.ray: node %s lost: %s", node_id, why)

    async def _health(self) -> dict[str, Mapping[str, Any]]:
        ready = [node for node in self._nodes.values() if node.state == "ready"]

        async def ask(node: _Node) -> Mapping[str, Any]:
            deadline = Deadline(wire.CALL_TIMEOUT_S)
            try:
                report: Mapping[str, Any] = await answer(
                    node.actor.health.remote(), node.info.node_id, deadline
                )
            except (Pid1Error, NodeGone) as e:
                return {"node": node.info.node_id, "error": _describe(e)}
            node.health = report
            return report

        reports = await asyncio.gather(*(ask(node) for node in ready))
        return {node.info.node_id: report for node, report in zip(ready, reports)}

    async def _stop_all(self) -> None:
        self._placement.close("the pool was shut down")
        if self._refresher is not None:
            self._refresher.cancel()
        for session in list(self._sessions):
            session._end()
        # Nodes still starting are stopped too: their actors' shutdown is
        # in a concurrency group of its own, beside the start.
        nodes = [node for node in self._nodes.values() if node.actor is not None]
        await asyncio.gather(*(self._stop(node) for node in nodes))

    async def _stop(self, node: _Node) -> None:
        if node.state in ("ready", "starting"):
            try:
                await answer(
                    node.actor.shutdown.remote(), node.info.node_id, Deadline(STOP_TIMEOUT_S)
                )
            except (Pid1Error, NodeGone) as e:
                log.warning("pid1.ray: node %s did not stop cleanly: %s", node.info.node_id, e)
            node.state = "stopped"
        _kill(node.actor)

    # -- plumbing ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._shut:
            raise UnavailableError("the pool is shut down", code="shut_down")

    def _sync(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the pool's thread and waits for it."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError(
                "a blocking pool call from the pool's own thread (an output callback?) "
                "would wait for itself; use the *_async methods there"
            )
        if not self._thread.is_alive():
            coroutine.close()
            raise UnavailableError("the pool is shut down", code="shut_down")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise


class _Tries:
    """One call's placements: the nodes it went to, those lost under it,
    and whether it may go to another (once, and only when it was not asked
    for on one node)."""

    def __init__(self, pool: Pool, what: str, node: str | None) -> None:
        self._pool = pool
        self.what = what
        self.node = node
        self.tried: list[str] = []
        self.lost: list[str] = []
        self.refused: UnavailableError | None = None

    @property
    def exclude(self) -> frozenset[str]:
        return frozenset(self.tried)

    def _may_go_on(self) -> bool:
        return self._pool._retry and self.node is None and len(self.tried) < 2

    def failed(self, node_id: str, error: NodeGone | UnavailableError) -> None:
        """Records a failed placement; raises what the caller sees when the
        call may not go on."""
        if isinstance(error, UnavailableError):
            if not self._may_go_on():
                raise error
            self.refused = error
            log.info(
                "pid1.ray: node %s cannot take a %s (%s); trying another", node_id, self.what, error
            )
            return
        if error.lost:
            self.lost.append(node_id)
            self._pool._lose(node_id, f"its actor died: {error.cause}")
        self._pool._check_open()
        if not self._may_go_on():
            if self.node is not None:
                why = "it was asked for on that node only"
            elif not self._pool._retry:
                why = "retries are off"
            else:
                why = "it was tried twice"
            raise NodeLostError(self._message(why), nodes=tuple(self.lost)) from None
        log.info(
            "pid1.ray: %s on node %s failed (%s); retrying on another node",
            self.what,
            node_id,
            error,
        )

    def no_node(self, error: NoNodesError) -> NoReturn:
        """Raises what the caller sees when no node is left to go to."""
        self._pool._check_open()
        if self.lost:
            raise NodeLostError(self._message(str(error)), nodes=tuple(self.lost)) from None
        if self.refused is not None:
            raise self.refused from None
        raise error

    def _message(self, tail: str) -> str:
        tried, lost, what = self.tried, self.lost, self.what
        if not lost:
            return f"the {what} could not be placed on nodes {', '.join(tried)}: {tail}"
        first = f"node {lost[0]} was lost while it ran this {what}"
        if len(lost) > 1:
            return f"{first}, and node {lost[1]}, where it was retried, was lost too"
        if len(tried) > 1:
            return f"{first}; on node {tried[1]}, where it was retried: {tail}"
        return f"{first}, and it was not retried: {tail}"


class _SessionOpener:
    """What ``Pool.session_async`` returns: awaitable, or an async context
    manager that closes the session at its end."""

    def __init__(self, opening: Coroutine[Any, Any, AsyncPoolSession]) -> None:
        self._opening = opening
        self._session: AsyncPoolSession | None = None

    def __await__(self) -> Any:
        return self._opening.__await__()

    async def __aenter__(self) -> AsyncPoolSession:
        self._session = await self._opening
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()


async def _make_lock() -> asyncio.Lock:
    return asyncio.Lock()


def _connect(address: str | None) -> None:
    if ray.is_initialized():
        return
    try:
        ray.init(address=address or "auto")
    except ConnectionError as e:
        raise SetupError(
            f"no Ray cluster to join at {address or 'auto'}: {e}; start one "
            "(`ray start --head` here, `ray start --address HEAD:6379` on each "
            "other node) or call ray.init() before making the pool",
            code="no_ray",
        ) from None


def _run_request(
    code: str,
    language: str,
    timeout: float | None,
    env: Mapping[str, str] | None,
    stdin: bytes | str | None,
    files: wire.FileSpec | None,
    download: Iterable[str] | None,
    memory_limit_mb: int | None,
    output_limit: int | None,
) -> dict[str, Any]:
    """``AsyncClient.run``'s arguments as a node's actor takes them: an
    iterable (a generator, say) made a list, so that it pickles."""
    if files is not None and not isinstance(files, Mapping):
        files = list(files)
    if download is not None and not isinstance(download, str):
        download = list(download)
    return {
        "code": code,
        "language": language,
        "timeout": timeout,
        "env": dict(env) if env is not None else None,
        "stdin": stdin,
        "files": files,
        "download": download,
        "memory_limit_mb": memory_limit_mb,
        "output_limit": output_limit,
    }


def _run_deadline(timeout: float | None) -> Deadline:
    """How long the driver waits for a run's answer: the SDK's own wait in
    the actor, plus Ray's margin."""
    read = wire.read_timeout(timeout)
    return Deadline(None if read is None else read + RAY_MARGIN_S)


def _kill(actor: Any) -> None:
    if actor is None:
        return
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead or never created
        pass


def _describe(error: BaseException) -> str:
    if isinstance(error, NodeGone):
        return str(error)
    return f"{type(error).__name__}: {error}"
