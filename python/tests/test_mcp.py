"""``python -m pid1.mcp`` driven by the ``mcp`` client over stdio: its
tools are listed, code runs, a session keeps state and files, and errors
come back as tool errors a model can read. The server talks to the shared
service of conftest.py through PID1_SERVER."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

TOOLS = {
    "run_python",
    "run_shell",
    "session_open",
    "session_exec",
    "session_close",
    "write_file",
    "read_file",
    "list_files",
}


def text_of(result: object) -> str:
    return "\n".join(getattr(c, "text", "") for c in getattr(result, "content", []))


@asynccontextmanager
async def connected(service_url: str) -> AsyncIterator[ClientSession]:
    """The server as a child process, and a client session on its stdio.
    (A context manager, not a fixture: anyio's cancel scopes must close in
    the task that opened them.)"""
    env = {**os.environ, "PID1_SERVER": service_url}
    params = StdioServerParameters(command=sys.executable, args=["-m", "pid1.mcp"], env=env)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@pytest.mark.asyncio
async def test_tools_run_code_hold_a_session_and_refuse_bad_input(service_url: str) -> None:
    async with connected(service_url) as mcp_session:
        await tools_run_code_and_hold_a_session(mcp_session)


async def tools_run_code_and_hold_a_session(mcp_session: ClientSession) -> None:
    listed = await mcp_session.list_tools()
    assert TOOLS <= {tool.name for tool in listed.tools}
    run_python = next(t for t in listed.tools if t.name == "run_python")
    assert "code" in run_python.input_schema["properties"]

    ran = await mcp_session.call_tool("run_python", {"code": "import sys\nprint(6 * 7)\nsys.exit(3)"})
    assert not ran.is_error
    assert text_of(ran).startswith("exit code: 3") and "--- stdout ---\n42" in text_of(ran)

    shell = await mcp_session.call_tool("run_shell", {"command": "echo out; echo err >&2; kill -9 $$"})
    assert "killed by signal 9 (exit code 137)" in text_of(shell)
    assert "--- stderr ---\nerr" in text_of(shell)

    opened = await mcp_session.call_tool("session_open", {"language": "python"})
    session_id = text_of(opened).split()[1]
    await mcp_session.call_tool("session_exec", {"session_id": session_id, "code": "x = 20"})
    step = await mcp_session.call_tool("session_exec", {"session_id": session_id, "code": "x + 22"})
    assert "--- stdout ---\n42" in text_of(step)

    wrote = await mcp_session.call_tool(
        "write_file",
        {"session_id": session_id, "path": "d/bin.dat", "content": base64.b64encode(b"\xff\x00").decode(),
         "encoding": "base64"},
    )  # fmt: skip
    assert "wrote 2 bytes" in text_of(wrote)
    code = "open('d/t.txt', 'w').write(str(x) + ' ' + open('d/bin.dat', 'rb').read().hex())"
    await mcp_session.call_tool("session_exec", {"session_id": session_id, "code": code})
    read = await mcp_session.call_tool("read_file", {"session_id": session_id, "path": "d/t.txt"})
    assert text_of(read) == "20 ff00"
    binary = await mcp_session.call_tool("read_file", {"session_id": session_id, "path": "d/bin.dat"})
    assert text_of(binary).endswith(base64.b64encode(b"\xff\x00").decode())
    listing = await mcp_session.call_tool("list_files", {"session_id": session_id, "path": "d"})
    assert "bin.dat" in text_of(listing) and "t.txt" in text_of(listing)

    missing = await mcp_session.call_tool("read_file", {"session_id": session_id, "path": "nope"})
    assert missing.is_error and "nope" in text_of(missing)

    closed = await mcp_session.call_tool("session_close", {"session_id": session_id})
    assert "closed" in text_of(closed)
    gone = await mcp_session.call_tool("session_exec", {"session_id": session_id, "code": "x"})
    assert gone.is_error and "no open session" in text_of(gone)

    refused = await mcp_session.call_tool("run_python", {"code": "   "})
    assert refused.is_error and "InvalidRequestError" in text_of(refused)
