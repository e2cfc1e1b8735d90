"""Waiting on a node's actor with a deadline, and what Ray's failures mean
for a pid1 caller: the node is gone, or the call failed with the SDK's own
error, which comes back as itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray
import ray.exceptions

from .._async_client import _call_back
from .._errors import SandboxError

__all__ = ["Deadline", "NodeGone", "answer", "answer_now", "streamed", "translate"]

# Seconds on top of the SDK's own deadline for a node's answer: the SDK in
# the actor gives up first, so this fires only when the actor itself is
# stuck and Ray has not (yet) called it dead.
RAY_MARGIN_S = 30.0


class NodeGone(Exception):
    """A call's node went away under it: its actor died (``lost``), or Ray
    cannot reach it for now."""

    def __init__(self, node: str, cause: BaseException, lost: bool) -> None:
        super().__init__(f"node {node}: {_first_line(cause)}")
        self.node = node
        self.cause = cause
        self.lost = lost


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Deadline:
    """When a call stops waiting; ``None`` seconds: never (a job with no
    timeout of its own)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._at = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - time.monotonic())


def translate(error: BaseException, node: str) -> BaseException:
    """The error a caller sees for what a call to ``node``'s actor raised.
    Ray's task error comes first: it is also an instance of its cause's
    class, but without that exception's fields."""
    if isinstance(error, ray.exceptions.ActorUnavailableError):
        return NodeGone(node, error, lost=False)
    if isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)):
        return NodeGone(node, error, lost=True)
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause
        if isinstance(cause, Exception):
            # The SDK's own exception (or a bad argument's TypeError), as it
            # was raised on the node.
            return cause
        return SandboxError(f"node {node}: {_first_line(error)}", code="node_failed")
    if isinstance(error, ray.exceptions.TaskCancelledError):
        return asyncio.CancelledError()
    return error


def _no_answer(node: str, deadline: Deadline) -> SandboxError:
    return SandboxError(
        f"node {node} did not answer within {deadline.seconds:g} s", code="no_answer"
    )


def _cancel(ref: Any) -> None:
    try:
        ray.cancel(ref)
    except Exception:  # already finished or gone: nothing to cancel
        pass


def answer_now(ref: ray.ObjectRef[Any], node: str, deadline: Deadline) -> Any:
    """``answer`` for a blocking caller: ``ray.get`` on the caller's own
    thread, so a run from a blocking caller crosses no other thread of the
    driver on its way out or back."""
    try:
        return ray.get(ref, timeout=deadline.left())
    except ray.exceptions.GetTimeoutError:
        _cancel(ref)
        raise _no_answer(node, deadline) from None
    except Exception as e:
        raise translate(e, node) from None
    except BaseException:
        _cancel(ref)
        raise


async def answer(ref: ray.ObjectRef[Any], node: str, deadline: Deadline) -> Any:
    """The value of an actor call's ref, waiting no longer than the deadline
    (then the call is cancelled on the node)."""
    future = asyncio.wrap_future(ref.future())
    try:
        return await asyncio.wait_for(future, deadline.left())
    except asyncio.TimeoutError:
        _cancel(ref)
        raise _no_answer(node, deadline) from None
    except asyncio.CancelledError:
        _cancel(ref)
        raise
    except Exception as e:
        raise translate(e, node) from None


async def streamed(
    generator: Any,
    node: str,
    deadline: Deadline,
    callbacks: Mapping[str, Callable[[str], Any] | None],
) -> Any:
    """Consumes a streaming actor call that yields ``(stream, text)`` pieces
    and then ``("result", value)``: the pieces go to their callbacks (plain
    or async), in order, and the value is returned."""
    try:
        while True:
            try:
                ref = await asyncio.wait_for(generator.__anext__(), deadline.left())
            except StopAsyncIteration:
                raise SandboxError(
                    f"node {node} ended the stream without a result", code="node_failed"
                ) from None
            except asyncio.TimeoutError:
                raise _no_answer(node, deadline) from None
            except Exception as e:
                raise translate(e, node) from None
            kind, value = await answer(ref, node, deadline)
            if kind == "result":
                return value
            await _call_back(callbacks.get(kind), value)
    except BaseException:
        _cancel(generator)
        raise
