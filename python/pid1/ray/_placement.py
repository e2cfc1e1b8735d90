"""Which node takes the next run: the driver's count of what it has placed
on each node against the node's capacity, with no Ray call and no I/O.

A node's capacity is its service's own figure (``pool.capacity`` in
``/v1/health``, i.e. ``--max-vms``); its load is the runs this driver has
in flight there plus the sessions it holds open there (each holds a VM).
A run goes to the node with the lowest load per slot; among equals, to the
one that was given work longest ago, so that even one-at-a-time runs take
turns and each node's warm pool refills while another serves. When no node
has room the caller waits in line (first come, first served) and is handed
a slot as soon as one is given back.

Callers wait from any event loop (the pool's own, or a caller's), so the
table is guarded by a thread lock and each waiter is woken on its own loop.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from dataclasses import dataclass

from ._errors import NoNodesError

__all__ = ["NodeLoad", "Placement"]


@dataclass
class NodeLoad:
    """One node's slots and what this driver holds of them."""

    node_id: str
    slots: int
    running: int = 0
    sessions: int = 0
    turn: int = 0
    """When the node was last given work (a counter, not a clock)."""

    @property
    def used(self) -> int:
        return self.running + self.sessions

    @property
    def has_room(self) -> bool:
        return self.used < self.slots


@dataclass(frozen=True)
class _Wish:
    """What a caller asks for: any node but ``exclude``, or only ``node``;
    a run's slot or a session's."""

    exclude: frozenset[str]
    node: str | None
    session: bool


@dataclass(eq=False)
class _Waiter:
    """A caller in line, woken on its own loop."""

    wish: _Wish
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[str]
    granted: str | None = None


class Placement:
    """The load table and the line of callers waiting for room."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeLoad] = {}
        self._waiters: deque[_Waiter] = deque()
        self._turns = itertools.count(1)
        self._starting = 0
        self._closed: str | None = None

    # -- the table ---------------------------------------------------------

    def add(self, node_id: str, slots: int) -> None:
        """A node whose service is ready, with room for ``slots`` VMs."""
        if slots < 1:
            raise ValueError(f"node {node_id}: {slots} slots is no room at all")
        with self._lock:
            self._nodes[node_id] = NodeLoad(node_id, slots)
            self._dispatch()

    def remove(self, node_id: str) -> None:
        """A node that is gone: nothing more is placed there, and callers
        that only it could serve are told so."""
        with self._lock:
            self._nodes.pop(node_id, None)
            self._dispatch()

    def starting(self, delta: int) -> None:
        """Nodes whose service is still starting: while there are some, a
        caller with no node to go to waits for them instead of failing."""
        with self._lock:
            self._starting = max(0, self._starting + delta)
            self._dispatch()

    def close(self, why: str) -> None:
        """Refuses every caller from now on, those waiting included."""
        with self._lock:
            self._closed = why
            self._dispatch()

    def loads(self) -> dict[str, NodeLoad]:
        """A copy of the table, for status reports."""
        with self._lock:
            return {
                node_id: NodeLoad(load.node_id, load.slots, load.running, load.sessions, load.turn)
                for node_id, load in self._nodes.items()
            }

    # -- taking and giving back --------------------------------------------

    def take_now(
        self,
        exclude: frozenset[str] = frozenset(),
        node: str | None = None,
        session: bool = False,
    ) -> str | None:
        """``take`` without waiting: a node with room now, or ``None``."""
        with self._lock:
            return self._take_now(_Wish(exclude, node, session))

    async def take(
        self,
        exclude: frozenset[str] = frozenset(),
        node: str | None = None,
        session: bool = False,
    ) -> str:
        """A node with room, its slot counted as held (a session's slot
        until ``give_back(..., session=True)``). ``exclude``: nodes not to
        use; ``node``: only this one. Raises ``NoNodesError`` when no node
        that fits is alive or starting."""
        loop = asyncio.get_running_loop()
        wish = _Wish(exclude, node, session)
        waiter = _Waiter(wish, loop, loop.create_future())
        with self._lock:
            chosen = self._take_now(wish)
            if chosen is not None:
                return chosen
            self._waiters.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                granted, waiter.granted = waiter.granted, None
            if granted is not None:
                # Handed a slot just as it was cancelled (before or after
                # its future was set): pass it on.
                self.give_back(granted, session)
            raise

    def give_back(self, node_id: str, session: bool = False) -> None:
        """A run ended (or a session closed) on ``node_id``."""
        with self._lock:
            load = self._nodes.get(node_id)
            if load is not None:
                if session:
                    load.sessions = max(0, load.sessions - 1)
                else:
                    load.running = max(0, load.running - 1)
            self._dispatch(full=False)

    # -- under the lock ----------------------------------------------------

    def _take_now(self, wish: _Wish) -> str | None:
        refusal = self._refusal(wish)
        if refusal is not None:
            raise refusal
        chosen = self._choose(wish)
        if chosen is None:
            return None
        self._hold(chosen, wish.session)
        return chosen.node_id

    def _fits(self, wish: _Wish, load: NodeLoad) -> bool:
        if load.node_id in wish.exclude:
            return False
        return wish.node is None or wish.node == load.node_id

    def _choose(self, wish: _Wish) -> NodeLoad | None:
        best: NodeLoad | None = None
        for load in self._nodes.values():
            if not load.has_room or not self._fits(wish, load):
                continue
            if best is None or (load.used / load.slots, load.turn) < (
                best.used / best.slots,
                best.turn,
            ):
                best = load
        return best

    def _hold(self, load: NodeLoad, session: bool) -> None:
        if session:
            load.sessions += 1
        else:
            load.running += 1
        load.turn = next(self._turns)

    def _refusal(self, wish: _Wish) -> NoNodesError | None:
        """Why no node, ready or to come, could serve the waiter; ``None``
        while one could."""
        if self._closed is not None:
            return NoNodesError(self._closed)
        if any(self._fits(wish, load) for load in self._nodes.values()):
            return None
        if self._starting and wish.node is None:
            return None
        if wish.node is not None:
            return NoNodesError(f"node {wish.node} is not (or no longer) in the pool")
        if self._nodes:
            return NoNodesError("no node of the pool is left besides those already tried")
        return NoNodesError("no node of the pool is alive")

    def _dispatch(self, full: bool = True) -> None:
        """Hands freed slots to waiters in order, and (``full``: after the
        set of nodes changed) fails those that can no longer be served.
        Without ``full`` it stops once no node has room, so a slot given
        back costs the same with ten or ten thousand callers in line."""
        kept: deque[_Waiter] = deque()
        while self._waiters:
            if not full and not any(load.has_room for load in self._nodes.values()):
                break
            waiter = self._waiters.popleft()
            if waiter.future.done():
                continue
            refusal = self._refusal(waiter.wish)
            if refusal is not None:
                _wake(waiter, refusal)
                continue
            chosen = self._choose(waiter.wish)
            if chosen is None:
                kept.append(waiter)
                continue
            self._hold(chosen, waiter.wish.session)
            waiter.granted = chosen.node_id
            if not _wake(waiter, chosen.node_id):
                waiter.granted = None
                if waiter.wish.session:
                    chosen.sessions -= 1
                else:
                    chosen.running -= 1
        kept.extend(self._waiters)
        self._waiters = kept


def _wake(waiter: _Waiter, outcome: str | NoNodesError) -> bool:
    """Settles the waiter's future on its own loop (called from any thread);
    ``False`` when that loop is closed and nobody waits any more."""

    def settle() -> None:
        if waiter.future.done():
            return
        if isinstance(outcome, BaseException):
            waiter.future.set_exception(outcome)
        else:
            waiter.future.set_result(outcome)

    try:
        waiter.loop.call_soon_threadsafe(settle)
    except RuntimeError:
        return False
    return True
