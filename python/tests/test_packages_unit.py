"""``packages`` without a VM: the bodies and deadlines of runs and session
openings that name packages, the checks made before anything is sent,
the resolved set in results, and the service's package errors as the
native, exec-sandbox and MCP callers see them.

The service is a stand-in HTTP server that records each request and
answers what the test scripted for it, so a check that let a bad list
through shows as a recorded request."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import pid1
import pid1.exec_sandbox as es
from pid1 import _protocol as wire
from pid1._errors import error_from_body
from pid1._results import parse_result
from pid1.exec_sandbox import exceptions as es_exceptions

SIX = "six==1.17.0"

RESULT = {
    "stdout": "1.17.0\n",
    "stderr": "",
    "exit_code": 0,
    "timed_out": False,
    "stdout_truncated": False,
    "stderr_truncated": False,
    "peak_memory_bytes": 4096,
    "cpu_ms": 1.5,
    "start": "restored",
    "boot_ms": 300.0,
    "exec_ms": 30.1,
    "total_ms": 331.0,
    "kernel_ms": 0,
    "init_ms": 0,
    "accel": "tcg",
    "packages": [SIX],
}

HEALTH = {
    "status": "ok",
    "pool": {"ready": 0, "warming": 0, "in_use": 0, "capacity": 1, "target": 0},
    "sessions": 0,
}

SESSION = {"id": "s1", "language": "python", "idle_timeout": 300, "steps": 0, "packages": [SIX]}


def error(status: int, kind: str, message: str, field: str | None = "packages") -> tuple[int, dict[str, Any]]:
    detail: dict[str, Any] = {"kind": kind, "message": message}
    if field is not None:
        detail["field"] = field
    return status, {"error": detail}


UNKNOWN = error(422, "packages", "no package named pid1-no-such-package on the index")
UNREACHABLE = error(502, "packages_unavailable", "the index cannot be reached and six==1.17.0 is not cached")
NOT_A_REQUIREMENT = error(400, "bad_request", "packages: 'six@1.17.0' is not a requirement")


class StandIn(ThreadingHTTPServer):
    """Answers ``answers["METHOD /path"]`` (a status and a JSON body) and
    records every request but the health check as ``(method, path, body)``."""

    requests: list[tuple[str, str, Any]]
    answers: dict[str, tuple[int, Any]]


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        key = f"{self.command} {self.path}"
        if key != "GET /v1/health":
            self.server.requests.append((self.command, self.path, json.loads(raw) if raw else None))
        status, body = self.server.answers.get(key, error(404, "not_found", f"no {key} here", None))
        if status == 200 and "ndjson" in (self.headers.get("Accept") or ""):
            data = (json.dumps({"type": "stdout", "data": base64.b64encode(b"1.17.0\n").decode()}) + "\n"
                    + json.dumps({"type": "result", "result": body}) + "\n").encode()  # fmt: skip
            kind = wire.NDJSON
        else:
            data, kind = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn(("127.0.0.1", 0), Handler)
    server.requests = []
    server.answers = {
        "GET /v1/health": (200, HEALTH),
        "POST /v1/runs": (200, RESULT),
        "POST /v1/sessions": (200, SESSION),
        "POST /v1/sessions/s1/exec": (200, RESULT),
        "DELETE /v1/sessions/s1": (200, {}),
    }
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def url_of(server: StandIn) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def bodies(server: StandIn, method: str, path: str) -> list[Any]:
    return [body for m, p, body in server.requests if (m, p) == (method, path)]


def run_call(packages: Any, timeout: float | None = 30) -> wire.Call:
    return wire.run_call("import six", "python", timeout, None, None, None, None, None, None, packages)


# -- the request, without I/O --------------------------------------------------


def test_packages_are_sent_as_a_list_only_when_there_are_some() -> None:
    assert run_call([SIX, "numpy>=2"]).json["packages"] == [SIX, "numpy>=2"]
    assert run_call((SIX,)).json["packages"] == [SIX]
    for none in (None, [], ()):
        assert "packages" not in run_call(none).json
        assert "packages" not in wire.open_call("python", None, None, none).json
    assert wire.open_call("python", 256, 60, [SIX]).json == {
        "language": "python",
        "memory_limit_mb": 256,
        "idle_timeout": 60,
        "packages": [SIX],
    }


def test_a_call_with_packages_waits_long_enough_for_a_first_install() -> None:
    plain, with_six = run_call(None).wait_s, run_call([SIX]).wait_s
    assert plain is not None and with_six is not None
    assert with_six - plain == wire.PACKAGES_MARGIN_S >= 300
    assert run_call([SIX], timeout=0).wait_s is None, "a run without end still waits without end"
    opened = wire.open_call("python", None, None, [SIX]).wait_s
    assert opened == wire.CALL_TIMEOUT_S + wire.PACKAGES_MARGIN_S
    assert wire.open_call("python", None, None, None).wait_s == wire.CALL_TIMEOUT_S
    # The deadline reaches httpx: its read timeout is the call's.
    assert run_call([SIX]).timeout().read == with_six


@pytest.mark.parametrize(
    ("packages", "says"),
    [
        ("six==1.17.0", "not one string"),
        (b"six", "not one string"),
        ({SIX}, "not a set"),
        (iter([SIX]), "not a list_iterator"),
        ([SIX, ""], r"packages\[1\]"),
        (["   "], r"packages\[0\]"),
        ([SIX, 6], r"packages\[1\]: 6"),
        (["six\0==1"], "NUL"),
    ],
)
def test_a_list_that_is_not_requirement_strings_is_refused_before_sending(packages: Any, says: str) -> None:
    for make in (lambda: run_call(packages), lambda: wire.open_call("python", None, None, packages)):
        with pytest.raises(pid1.InvalidRequestError, match=says) as caught:
            make()
        assert caught.value.field == "packages" and not isinstance(caught.value, pid1.PackageError)


def test_results_carry_the_resolved_set() -> None:
    assert parse_result(RESULT).packages == [SIX]
    assert parse_result({**RESULT, "packages": []}).packages == []
    without = dict(RESULT)
    del without["packages"]
    assert parse_result(without).packages == []


# -- the errors ----------------------------------------------------------------


def test_package_errors_map_to_their_classes() -> None:
    unknown = error_from_body(UNKNOWN[1], UNKNOWN[0])
    assert type(unknown) is pid1.PackageError and isinstance(unknown, pid1.InvalidRequestError)
    assert (unknown.status, unknown.code, unknown.field) == (422, "packages", "packages")
    unreachable = error_from_body(UNREACHABLE[1], UNREACHABLE[0])
    assert type(unreachable) is pid1.PackagesUnavailableError
    assert isinstance(unreachable, pid1.UnavailableError) and not isinstance(unreachable, pid1.SandboxError)
    assert unreachable.status == 502 and unreachable.retry_after is None
    refused = error_from_body(NOT_A_REQUIREMENT[1], NOT_A_REQUIREMENT[0])
    assert type(refused) is pid1.InvalidRequestError and refused.field == "packages"
    # A streamed run ends in the same object, and raises the same class.
    line = json.dumps({"type": "error", "error": UNKNOWN[1]["error"]})
    with pytest.raises(pid1.PackageError):
        wire.StreamReader().line(line)
    # A 502 of another kind is still the VM's failure.
    assert type(error_from_body(error(502, "vm_lost", "eof", None)[1], 502)) is pid1.SandboxError


def test_the_new_names_are_exported() -> None:
    assert {"PackageError", "PackagesUnavailableError"} <= set(pid1.__all__)


# -- through the clients -------------------------------------------------------


def test_the_blocking_client_sends_packages_and_reads_the_set(stand_in: StandIn) -> None:
    with pid1.Client(url_of(stand_in)) as client:
        result = client.run("import six; print(six.__version__)", packages=[SIX])
        streamed = client.run("print(1)", packages=(SIX,), on_stdout=lambda text: None)
        with client.session(packages=[SIX]) as session:
            step = session.exec("print(six.__version__)")
        client.run("print(1)")
        stand_in.answers["POST /v1/sessions"] = (200, {**SESSION, "packages": []})
        with client.session() as plain:
            assert plain.packages == []
    assert result.packages == streamed.packages == step.packages == session.packages == [SIX]
    assert [b.get("packages") for b in bodies(stand_in, "POST", "/v1/runs")] == [[SIX], [SIX], None]
    assert bodies(stand_in, "POST", "/v1/sessions") == [
        {"language": "python", "packages": [SIX]},
        {"language": "python"},
    ]
    assert "packages" not in bodies(stand_in, "POST", "/v1/sessions/s1/exec")[0]


@pytest.mark.asyncio
async def test_the_async_client_sends_packages_and_reads_the_set(stand_in: StandIn) -> None:
    async with pid1.AsyncClient(url_of(stand_in)) as client:
        result = await client.run("import six", packages=[SIX])
        streamed = await client.run("import six", packages=[SIX], on_stdout=lambda text: None)
        async with client.session(packages=[SIX]) as session:
            step = await session.exec("print(six.__version__)")
    assert result.packages == streamed.packages == step.packages == session.packages == [SIX]
    assert [b.get("packages") for b in bodies(stand_in, "POST", "/v1/runs")] == [[SIX], [SIX]]
    assert bodies(stand_in, "POST", "/v1/sessions") == [{"language": "python", "packages": [SIX]}]


def test_a_bare_string_never_reaches_the_service(stand_in: StandIn) -> None:
    with pid1.Client(url_of(stand_in)) as client:
        with pytest.raises(pid1.InvalidRequestError, match="not one string"):
            client.run("import six", packages=SIX)  # type: ignore[arg-type]
        with pytest.raises(pid1.InvalidRequestError, match="not one string"):
            client.session(packages=SIX)  # type: ignore[arg-type]
    assert stand_in.requests == []


def test_a_refused_set_raises_and_the_next_run_goes_on(stand_in: StandIn) -> None:
    with pid1.Client(url_of(stand_in)) as client:
        stand_in.answers["POST /v1/runs"] = UNKNOWN
        with pytest.raises(pid1.PackageError, match="pid1-no-such-package") as caught:
            client.run("print(1)", packages=["pid1-no-such-package==1.0"])
        assert caught.value.field == "packages"
        stand_in.answers["POST /v1/sessions"] = UNREACHABLE
        with pytest.raises(pid1.PackagesUnavailableError, match="cannot be reached"):
            client.session(packages=[SIX])
        stand_in.answers["POST /v1/runs"] = (200, RESULT)
        assert client.run("print(1)").ok


# -- the exec-sandbox drop-in --------------------------------------------------


def scheduler_of(server: StandIn) -> es.Scheduler:
    return es.Scheduler(url=url_of(server))


@pytest.mark.asyncio
async def test_the_drop_in_sends_pinned_packages(stand_in: StandIn) -> None:
    async with scheduler_of(stand_in) as scheduler:
        result = await scheduler.run("import six; print(six.__version__)", language="python", packages=[SIX])
        async with await scheduler.session(language="python", packages=[SIX, "numpy>=2,<3"]):
            pass
    assert result.stdout == "1.17.0\n" and result.exit_code == 0
    assert bodies(stand_in, "POST", "/v1/runs")[0]["packages"] == [SIX]
    assert bodies(stand_in, "POST", "/v1/sessions")[0]["packages"] == [SIX, "numpy>=2,<3"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"packages": ["six"]}, "Must include version specifier"),
        ({"packages": "six==1.17.0"}, "not the string"),
        ({"packages": ["six==1.17.0; os_name == 'nt'"]}, "invalid characters"),
        ({"packages": ["six==1.17.0\x01"]}, "control characters"),
        ({"packages": ["a" * 210 + "==1.0"]}, "too long"),
        ({"packages": [SIX], "language": "raw"}, "Unsupported language 'raw'"),
    ],
)
async def test_the_drop_in_refuses_what_exec_sandbox_refuses_before_any_request(
    stand_in: StandIn, change: dict[str, Any], says: str
) -> None:
    call = {"language": "python", **change}
    async with scheduler_of(stand_in) as scheduler:
        with pytest.raises(es.PackageNotAllowedError, match=says):
            await scheduler.run("print(1)", **call)
        with pytest.raises(es.PackageNotAllowedError, match=says):
            await scheduler.session(**call)
    assert stand_in.requests == [], "a refused spec reached the service"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "cls", "family"),
    [
        (UNKNOWN, es_exceptions.PackageInstallPermanentError, es.PermanentError),
        (UNREACHABLE, es.SnapshotError, es.SandboxError),
        (NOT_A_REQUIREMENT, es.PackageNotAllowedError, es.SandboxError),
    ],
)
async def test_the_drop_in_raises_exec_sandboxs_install_errors(
    stand_in: StandIn, answer: tuple[int, Any], cls: type, family: type
) -> None:
    stand_in.answers["POST /v1/runs"] = answer
    stand_in.answers["POST /v1/sessions"] = answer
    async with scheduler_of(stand_in) as scheduler:
        for call in (
            scheduler.run("print(1)", language="python", packages=["six@1.17.0"]),
            scheduler.session(language="python", packages=["six@1.17.0"]),
        ):
            with pytest.raises(cls) as caught:
                await call
            assert type(caught.value) is cls and isinstance(caught.value, family)
            assert isinstance(caught.value.__cause__, pid1.Pid1Error)
            assert caught.value.context["kind"] == answer[1]["error"]["kind"]
            assert answer[1]["error"]["message"] in caught.value.message


def test_the_drop_in_passes_pinned_specs_on_and_an_empty_list_as_none() -> None:
    assert es.validation.check_packages([SIX], es.Language.PYTHON) == [SIX]
    assert es.validation.check_packages(None, es.Language.RAW) == []


# -- the MCP server ------------------------------------------------------------


class RecordingClient:
    """What SandboxTools asks of its client, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def run(self, code: str, **kwargs: Any) -> pid1.Result:
        self.calls.append(("run", kwargs))
        return parse_result(RESULT)

    async def session(self, **kwargs: Any) -> Any:
        self.calls.append(("session", kwargs))
        return type("Opened", (), {"id": "s1", "info": SESSION, "packages": SESSION["packages"]})()


def test_the_mcp_tools_take_packages() -> None:
    server = pytest.importorskip("pid1.mcp.server")
    client = RecordingClient()
    tools = server.SandboxTools(client)  # type: ignore[arg-type]

    async def use() -> tuple[str, str, str]:
        ran = await tools.run("import six", "python", 30, None, [SIX])
        opened = await tools.open_session("python", [SIX])
        plain = await tools.run("print(1)", "python", 30, None)
        return ran, opened, plain

    ran, opened, _ = asyncio.run(use())
    assert client.calls[0] == ("run", {**client.calls[0][1], "packages": [SIX]})
    assert client.calls[1] == ("session", {"language": "python", "packages": [SIX]})
    assert client.calls[2][1]["packages"] is None
    assert ran.splitlines()[:2] == ["exit code: 0", f"packages: {SIX}"]
    assert opened.startswith("session_id: s1 (python; packages: six==1.17.0")

    schemas = asyncio.run(server.build_server(tools).list_tools())
    arguments = {tool.name: tool.input_schema["properties"] for tool in schemas}
    assert "packages" in arguments["run_python"] and "packages" in arguments["session_open"]
    assert "packages" not in arguments["run_shell"]
