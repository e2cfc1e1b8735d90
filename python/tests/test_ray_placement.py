"""The pool's placement table on its own: no Ray cluster, no VM."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

pytest.importorskip("ray", reason="pid1.ray needs Ray: pip install 'pid1[ray]'")

from pid1.ray import NoNodesError
from pid1.ray._placement import Placement


T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_the_least_loaded_node_per_slot_takes_the_run_and_equals_take_turns() -> None:
    async def body() -> None:
        placement = Placement()
        placement.add("a", 2)
        placement.add("b", 4)
        taken = [await placement.take() for _ in range(6)]
        # b has twice a's slots, so it takes twice a's runs.
        assert taken.count("a") == 2 and taken.count("b") == 4
        for node in taken:
            placement.give_back(node)
        # With both empty, one-at-a-time runs alternate.
        sequence = []
        for _ in range(4):
            node = await placement.take()
            sequence.append(node)
            placement.give_back(node)
        assert sequence in (["a", "b", "a", "b"], ["b", "a", "b", "a"])

    run(body())


def test_a_full_pool_queues_callers_in_order_and_hands_each_freed_slot_on() -> None:
    async def body() -> None:
        placement = Placement()
        placement.add("a", 1)
        assert await placement.take() == "a"
        order: list[int] = []

        async def waiter(index: int) -> None:
            await placement.take()
            order.append(index)

        waiters = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert order == [] and placement.loads()["a"].running == 1
        for _ in range(3):
            placement.give_back("a")
            await asyncio.sleep(0.01)
        await asyncio.gather(*waiters)
        assert order == [0, 1, 2]
        assert placement.loads()["a"].running == 1

    run(body())


def test_a_session_holds_its_slot_and_a_cancelled_waiter_gives_a_granted_one_back() -> None:
    async def body() -> None:
        placement = Placement()
        placement.add("a", 1)
        assert await placement.take(session=True) == "a"
        waiting = asyncio.create_task(placement.take())
        await asyncio.sleep(0.01)
        placement.give_back("a", session=True)
        # Granted, but cancelled before it ran: the slot must not leak.
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert placement.loads()["a"].used == 0
        assert await placement.take() == "a"

    run(body())


def test_callers_fail_when_their_node_goes_or_none_is_left_and_wait_while_one_starts() -> None:
    async def body() -> None:
        placement = Placement()
        with pytest.raises(NoNodesError, match="no node of the pool is alive"):
            await placement.take()
        placement.starting(+1)
        waiting = asyncio.create_task(placement.take())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        placement.add("a", 1)
        placement.starting(-1)
        assert await waiting == "a"
        pinned = asyncio.create_task(placement.take(node="a"))
        elsewhere = asyncio.create_task(placement.take(exclude=frozenset({"b"})))
        await asyncio.sleep(0.01)
        placement.remove("a")
        with pytest.raises(NoNodesError, match="node a is not"):
            await pinned
        with pytest.raises(NoNodesError):
            await elsewhere
        placement.add("b", 1)
        with pytest.raises(NoNodesError, match="besides those already tried"):
            await placement.take(exclude=frozenset({"b"}))
        placement.close("the pool was shut down")
        with pytest.raises(NoNodesError, match="shut down"):
            await placement.take()

    run(body())


def test_a_waiter_on_another_threads_loop_is_woken_on_its_own_loop() -> None:
    placement = Placement()
    placement.add("a", 1)
    assert run(placement.take()) == "a"
    got: list[str] = []

    def other_thread() -> None:
        got.append(run(placement.take()))

    thread = threading.Thread(target=other_thread)
    thread.start()
    while not placement._waiters:
        threading.Event().wait(0.005)
    placement.give_back("a")
    thread.join(10)
    assert got == ["a"]
