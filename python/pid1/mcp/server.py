"""The MCP server: pid1 sandboxes as tools for an agent, on the official
``mcp`` package (``MCPServer``), over stdio.

Tools: ``run_python`` and ``run_shell`` (a fresh VM per call),
``session_open`` / ``session_exec`` / ``session_close`` (a VM held across
calls, its state kept; ``run_python`` and ``session_open`` take pip
``packages``), and ``write_file`` / ``read_file`` / ``list_files``
in a session. Every answer is text that says the exit code, a timeout, a
signal and any truncation, so a model reads what happened without parsing.

It connects as ``pid1.AsyncClient`` does: ``PID1_SERVER`` (and
``PID1_TOKEN``), else an embedded ``vmexec serve`` stopped with the server.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Literal

import pid1

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError as e:  # pragma: no cover - depends on the installed extra
    raise ImportError("pid1.mcp needs the `mcp` package (2.x): pip install 'pid1[mcp]'") from e

__all__ = ["SandboxTools", "build_server", "format_result", "run_stdio"]

OUTPUT_LIMIT = 100_000
"""Bytes of stdout, and of stderr, a tool answer carries: enough for a
traceback or a table, and a bound on what one call puts in a model's
context. The service cuts runs there; session steps are cut here."""

MAX_SESSIONS = 16
"""Sessions one server holds at once: each is a VM, and a model that
forgets to close them should hear so before the host runs out."""

INSTRUCTIONS = (
    "Runs code in throwaway microVMs (no network; Python 3.11 and bash). "
    "run_python / run_shell give each call a fresh VM. For state across calls "
    "(variables, files), session_open, then session_exec, and session_close when done. "
    "run_python and session_open install pip packages named in `packages`."
)


def format_result(result: pid1.Result, *, timeout: float | None) -> str:
    """A result as text: the outcome first, then each stream that has output."""
    if result.timed_out:
        head = f"timed out after {timeout:g} s: the code was killed" if timeout else "timed out"
    elif result.signal is not None:
        head = f"killed by signal {result.signal} (exit code {result.exit_code})"
    else:
        head = f"exit code: {result.exit_code}"
    parts = [head]
    if result.packages:
        parts.append(f"packages: {', '.join(result.packages)}")
    for name, text, cut in (
        ("stdout", result.stdout, result.stdout_truncated),
        ("stderr", result.stderr, result.stderr_truncated),
    ):
        if len(text) > OUTPUT_LIMIT:
            text, cut = text[:OUTPUT_LIMIT], True
        if text or cut:
            note = f" (truncated: only the first {OUTPUT_LIMIT} bytes are kept)" if cut else ""
            parts.append(f"--- {name}{note} ---\n{text.rstrip(chr(10))}")
    if len(parts) == 1:
        parts.append("(no output)")
    return "\n".join(parts)


def _tool_error(error: pid1.Pid1Error) -> ToolError:
    where = f" ({error.field})" if getattr(error, "field", None) else ""
    return ToolError(f"{type(error).__name__}{where}: {error.message}")


class SandboxTools:
    """The tools' state: one client and the sessions opened through it."""

    def __init__(self, client: pid1.AsyncClient | None = None) -> None:
        self._client = client
        self._sessions: dict[str, pid1.AsyncSession] = {}

    @property
    def client(self) -> pid1.AsyncClient:
        """The client, made on first use; a service that cannot be started
        is each tool call's error (what to run), not the server's death."""
        if self._client is None:
            try:
                self._client = pid1.AsyncClient()
            except pid1.Pid1Error as e:
                raise _tool_error(e) from e
        return self._client

    def _session(self, session_id: str) -> pid1.AsyncSession:
        session = self._sessions.get(session_id)
        if session is None:
            known = ", ".join(self._sessions) or "none"
            raise ToolError(f"no open session {session_id!r} (open ones: {known}); use session_open")
        return session

    async def run(
        self,
        code: str,
        language: str,
        timeout: float,
        stdin: str | None,
        packages: Sequence[str] | None = None,
    ) -> str:
        try:
            result = await self.client.run(
                code,
                language=language,
                timeout=timeout,
                stdin=stdin,
                output_limit=OUTPUT_LIMIT,
                packages=packages,
            )
        except pid1.Pid1Error as e:
            raise _tool_error(e) from e
        return format_result(result, timeout=timeout)

    async def open_session(self, language: str, packages: Sequence[str] | None = None) -> str:
        if len(self._sessions) >= MAX_SESSIONS:
            raise ToolError(f"{MAX_SESSIONS} sessions are open already; close one with session_close")
        try:
            session = await self.client.session(language=language, packages=packages)
        except pid1.Pid1Error as e:
            raise _tool_error(e) from e
        self._sessions[session.id] = session
        idle = session.info.get("idle_timeout")
        after = f"; closed after {idle:g} s without a call" if isinstance(idle, (int, float)) else ""
        with_packages = f"; packages: {', '.join(session.packages)}" if session.packages else ""
        return f"session_id: {session.id} ({language}{with_packages}{after})"

    async def exec_step(self, session_id: str, code: str, timeout: float) -> str:
        session = self._session(session_id)
        try:
            result = await session.exec(code, timeout=timeout)
        except pid1.SessionClosedError as e:
            self._sessions.pop(session_id, None)
            raise _tool_error(e) from e
        except pid1.Pid1Error as e:
            raise _tool_error(e) from e
        return format_result(result, timeout=timeout)

    async def close_session(self, session_id: str) -> str:
        session = self._session(session_id)
        del self._sessions[session_id]
        try:
            await session.close()
        except pid1.SessionClosedError:
            return f"session {session_id} had already ended"
        except pid1.Pid1Error as e:
            raise _tool_error(e) from e
        return f"session {session_id} closed"

    async def write(self, session_id: str, path: str, content: str, encoding: str, mode: str) -> str:
        session = self._session(session_id)
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ToolError(f"content is not valid base64: {e}") from e
        else:
            data = content.encode("utf-8")
        try:
            bits = int(mode, 8)
        except ValueError:
            raise ToolError(f"mode {mode!r} is not octal permission bits such as 644 or 755") from None
        try:
            await session.write_file(path, data, mode=bits)
        except pid1.Pid1Error as e:
            raise _tool_error(e) from e
        return f"wrote {len(data)} bytes to {path} (mode {bits:o})"

    async def read(self, session_id: str, path: str) -> str:
        session = self._session(session_id)
        try:
            data = await session.read_file(path)
        except pid1.Pid1Error as e:
            raise _tool_error(e) from e
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return f"{path}: {len(data)} bytes, not UTF-8 text; base64:\n" + base64.b64encode(data).decode()
        if len(text) > OUTPUT_LIMIT:
            return f"{path}: {len(data)} bytes, the first {OUTPUT_LIMIT} characters:\n{text[:OUTPUT_LIMIT]}"
        return text

    async def listing(self, session_id: str, path: str) -> str:
        session = self._session(session_id)
        try:
            entries = await session.list_files(path)
        except pid1.Pid1Error as e:
            raise _tool_error(e) from e
        if not entries:
            return f"{path or '~'}: empty"
        return "\n".join(
            f"{e.kind:5} {e.mode:04o} {e.size:>10} {e.name}{'/' if e.is_dir else ''}" for e in entries
        )

    async def aclose(self) -> None:
        """Closes every session, then the client (and an embedded service)."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            try:
                await session.close()
            except pid1.Pid1Error:
                pass
        if self._client is not None:
            await self._client.aclose()


def build_server(tools: SandboxTools) -> MCPServer:
    """The MCP server whose tools call ``tools``."""
    server = MCPServer(name="pid1", instructions=INSTRUCTIONS, version=pid1.__version__, log_level="WARNING")

    @server.tool()
    async def run_python(
        code: str, timeout: float = 30, stdin: str | None = None, packages: list[str] | None = None
    ) -> str:
        """Run Python 3.11 code in a fresh sandbox VM (no network, destroyed after).
        Returns the exit code, stdout and stderr. Print what you want to see.
        timeout: seconds before the code is killed (0: none).
        packages: pip requirements the code imports, e.g. ["numpy==2.1.3", "six"];
        a set not used before takes tens of seconds to install."""
        return await tools.run(code, "python", timeout, stdin, packages)

    @server.tool()
    async def run_shell(command: str, timeout: float = 30, stdin: str | None = None) -> str:
        """Run a shell script (bash, with busybox's tools; a #! line picks
        another interpreter) in a fresh sandbox VM (no network, destroyed
        after). Returns the exit code, stdout and stderr."""
        return await tools.run(command, "sh", timeout, stdin)

    @server.tool()
    async def session_open(
        language: Literal["python", "shell"] = "python", packages: list[str] | None = None
    ) -> str:
        """Open a sandbox session: a VM kept for you, whose Python (or shell)
        state and files persist from one session_exec to the next. Returns its
        session_id. Close it with session_close when done.
        packages: pip requirements every step can import, e.g. ["pandas==2.2.3"]."""
        return await tools.open_session("sh" if language == "shell" else "python", packages)

    @server.tool()
    async def session_exec(session_id: str, code: str, timeout: float = 30) -> str:
        """Run code in an open session; variables, imports and files from
        earlier calls are still there. In Python the value of a last bare
        expression is printed."""
        return await tools.exec_step(session_id, code, timeout)

    @server.tool()
    async def session_close(session_id: str) -> str:
        """Close a session and destroy its VM."""
        return await tools.close_session(session_id)

    @server.tool()
    async def write_file(
        session_id: str,
        path: str,
        content: str,
        encoding: Literal["utf-8", "base64"] = "utf-8",
        mode: str = "644",
    ) -> str:
        """Write a file into a session's VM. path: relative to the home
        /home/user (or absolute under it); missing directories are made.
        content: text, or base64 with encoding="base64". mode: octal, e.g. 755."""
        return await tools.write(session_id, path, content, encoding, mode)

    @server.tool()
    async def read_file(session_id: str, path: str) -> str:
        """Read a file from a session's VM: its text, or base64 when it is
        not UTF-8."""
        return await tools.read(session_id, path)

    @server.tool()
    async def list_files(session_id: str, path: str = "") -> str:
        """List a directory in a session's VM ("" is the home /home/user):
        kind, mode, size and name a line."""
        return await tools.listing(session_id, path)

    return server


def run_stdio() -> None:
    """Serves on stdin/stdout; the sessions, the client and an embedded
    service are closed when the client hangs up (or on SIGINT/SIGTERM)."""
    import asyncio
    import signal
    import sys

    async def serve() -> None:
        tools = SandboxTools()
        # Made first, so that an embedded service starts while the MCP client
        # is still initializing.
        try:
            _ = tools.client
        except ToolError as e:
            print(f"pid1.mcp: {e}", file=sys.stderr)
        server = build_server(tools)
        task = asyncio.ensure_future(server.run_stdio_async())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await tools.aclose()

    asyncio.run(serve())
