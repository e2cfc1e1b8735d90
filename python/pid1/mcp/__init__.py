"""``python -m pid1.mcp``: a stdio MCP server whose tools run code in pid1
sandboxes (see ``pid1.mcp.server``). Needs the ``mcp`` extra."""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    """Serves MCP over stdin/stdout until the client closes it."""
    from .server import run_stdio

    run_stdio()
