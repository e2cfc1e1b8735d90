"""pid1 on a Ray cluster: a ``vmexec serve`` on each node, runs placed by Ray.

    import pid1.ray

    with pid1.ray.Pool(pool_size=2) as pool:      # joins the running cluster
        results = pool.map([f"print({i} * {i})" for i in range(1000)])
        print(results[7].stdout, results[7].node)

``Pool`` mirrors ``pid1.Client`` (``run``, ``session``) and adds ``map``,
``submit`` and the ``*_async`` forms; every result is a ``pid1.Result``
that also says which node ran it (``NodeResult.node``). See docs/ray.md.

Importing this package turns Ray's usage reporting off
(``RAY_USAGE_STATS_ENABLED=0``) before Ray starts: sandbox hosts often
have no way out, and a driver should not call home from them.
"""

from __future__ import annotations

import os

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

try:
    import ray as _ray  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pid1.ray needs Ray: pip install 'pid1[ray]' (or pip install 'ray>=2.60,<3')"
    ) from e

from ._errors import NodeLostError, NoNodesError, SessionLostError
from ._node import NodeResult, NodeSettings
from ._pool import NodeInfo, NodeStatus, Pool
from ._session import AsyncPoolSession, PoolSession

__all__ = [
    "AsyncPoolSession",
    "NoNodesError",
    "NodeInfo",
    "NodeLostError",
    "NodeResult",
    "NodeSettings",
    "NodeStatus",
    "Pool",
    "PoolSession",
    "SessionLostError",
]
