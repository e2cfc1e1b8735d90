"""The errors a pool adds to the SDK's: a node lost under a run or a
session, and a pool with no node left. Each is a subclass of the SDK error
a caller already handles (``SandboxError``, ``SessionClosedError``,
``UnavailableError``), so code written for ``pid1.Client`` needs no change."""

from __future__ import annotations

from .._errors import SandboxError, SessionClosedError, UnavailableError

__all__ = ["NoNodesError", "NodeLostError", "SessionLostError"]


class NodeLostError(SandboxError):
    """A run's node was lost while it ran, and the run could not be retried
    on another node (none was left, or that one was lost too). ``nodes``
    are the Ray node ids that were lost under it, in order."""

    def __init__(self, message: str, *, nodes: tuple[str, ...] = ()) -> None:
        super().__init__(message, code="node_lost")
        self.nodes = nodes


class SessionLostError(SessionClosedError):
    """The node that held a session's VM was lost; the session's state is
    gone with it. ``node`` is that node's Ray id."""

    def __init__(self, message: str, *, node: str = "") -> None:
        super().__init__(message, code="node_lost")
        self.node = node


class NoNodesError(UnavailableError):
    """No node of the pool can take a run: none is alive, or every one's
    service failed to start (the message says why for each)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="no_nodes")
