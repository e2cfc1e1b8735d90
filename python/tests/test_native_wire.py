"""The wire without a service: stream lines, results, error mapping, bodies."""

from __future__ import annotations

import base64
import json

import pytest

import pid1
from pid1 import _protocol as wire
from pid1._errors import error_from_body
from pid1._results import parse_result

RESULT = {
    "stdout": "hi\n",
    "stderr": "",
    "exit_code": 0,
    "timed_out": False,
    "stdout_truncated": False,
    "stderr_truncated": False,
    "peak_memory_bytes": 4096,
    "cpu_ms": 1.5,
    "start": "pooled",
    "boot_ms": 0.4,
    "exec_ms": 30.1,
    "total_ms": 31.0,
    "kernel_ms": 0,
    "init_ms": 0,
    "accel": "tcg",
}


def chunk(stream: str, data: bytes) -> str:
    return json.dumps({"type": stream, "data": base64.b64encode(data).decode()})


def test_a_character_split_between_chunks_comes_out_whole() -> None:
    reader = wire.StreamReader()
    data = "é€".encode()
    pieces = [reader.line(chunk("stdout", data[:1])), reader.line(chunk("stdout", data[1:4]))]
    assert pieces[0] == ("stdout", "")
    assert pieces[1] == ("stdout", "é")
    assert reader.line(chunk("stdout", data[4:])) == ("stdout", "€")
    assert reader.line(json.dumps({"type": "result", "result": RESULT})) is None
    assert reader.finish() == RESULT


def test_an_incomplete_character_at_the_end_is_replaced() -> None:
    reader = wire.StreamReader()
    assert reader.line(chunk("stderr", b"ok\xe2\x82")) == ("stderr", "ok")
    assert reader.tails() == [("stderr", "\ufffd")]


def test_a_stream_without_its_result_is_unavailable() -> None:
    reader = wire.StreamReader()
    reader.line(chunk("stdout", b"partial"))
    with pytest.raises(pid1.UnavailableError, match="ended before its result"):
        reader.finish()


def test_an_error_line_raises_by_its_kind() -> None:
    line = {"type": "error", "error": {"kind": "vm_lost", "message": "the VM was lost mid-run: eof"}}
    with pytest.raises(pid1.SandboxError, match="lost mid-run") as caught:
        wire.StreamReader().line(json.dumps(line))
    assert caught.value.code == "vm_lost"


def test_garbage_lines_are_errors_not_crashes() -> None:
    with pytest.raises(pid1.Pid1Error, match="not JSON"):
        wire.StreamReader().line("{nope")
    with pytest.raises(pid1.Pid1Error, match="unknown line"):
        wire.StreamReader().line('{"type": "other"}')


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (400, "bad_request", pid1.InvalidRequestError),
        (400, "refused", pid1.InvalidRequestError),
        (413, None, pid1.InvalidRequestError),
        (422, "file", pid1.InvalidRequestError),
        (401, "unauthorized", pid1.UnauthorizedError),
        (404, "no_session", pid1.SessionClosedError),
        (410, "session_ended", pid1.SessionClosedError),
        (404, "not_found", pid1.Pid1Error),
        (502, "vm_lost", pid1.SandboxError),
        (500, "failed", pid1.SandboxError),
        (503, "busy", pid1.UnavailableError),
    ],
)
def test_error_answers_map_to_the_tree(status: int, kind: str | None, cls: type) -> None:
    body = {"error": {"kind": kind, "message": "why", "field": "code"}} if kind else None
    error = error_from_body(body, status, "1")
    assert type(error) is cls
    assert error.status == status
    if kind:
        assert (error.message, error.code, error.field) == ("why", kind, "code")
    if isinstance(error, pid1.UnavailableError):
        assert error.retry_after == 1.0


def test_results_keep_exact_bytes_and_say_timeouts_and_signals() -> None:
    binary = bytes(range(256))
    result = parse_result({**RESULT, "stdout": "lossy", "stdout_base64": base64.b64encode(binary).decode()})
    assert result.stdout_bytes == binary
    assert result.stdout == binary.decode("utf-8", "replace")
    assert result.ok and result.signal is None and result.timings.exec_ms == 30.1
    timed_out = parse_result({**RESULT, "exit_code": -1, "timed_out": True})
    assert timed_out.exit_code is None and timed_out.timed_out and not timed_out.ok
    killed = parse_result({**RESULT, "exit_code": 137})
    assert (killed.exit_code, killed.signal) == (137, 9)
    files = parse_result({**RESULT, "files": [{"path": "o", "content": base64.b64encode(b"\0").decode()}]})
    assert files.files == {"o": b"\0"}


def test_bodies_carry_files_as_base64_and_refuse_what_json_cannot_say() -> None:
    body = wire.run_call(
        "x", "sh", 5, {"A": "1"}, b"in", {"a.txt": "é"}, ["out"], 64, None
    ).json
    assert body["stdin"] == "in" and body["download"] == ["out"]
    assert body["files"] == [{"path": "a.txt", "content": base64.b64encode("é".encode()).decode(), "mode": 0o644}]
    listed = wire.run_call("x", "python", None, None, None, [pid1.File("r.sh", b"#!", 0o755)], None, None, None).json
    assert listed["files"][0]["mode"] == 0o755 and "timeout" not in listed
    with pytest.raises(pid1.InvalidRequestError, match="not UTF-8") as caught:
        wire.run_call("x", "python", None, None, b"\xff", None, None, None, None)
    assert caught.value.field == "stdin"
    with pytest.raises(pid1.InvalidRequestError, match="files\\[0\\]"):
        wire.run_call("x", "python", None, None, None, ["a.txt"], None, None, None)  # type: ignore[list-item]
    with pytest.raises(pid1.InvalidRequestError, match="environment is fixed"):
        wire.exec_body("x", None, {"A": "1"}, None)


def test_addresses() -> None:
    assert wire.parse_address("unix:/tmp/s.sock") == wire.Address("http://pid1", "/tmp/s.sock")
    assert wire.parse_address("http://127.0.0.1:8470/") == wire.Address("http://127.0.0.1:8470")
    with pytest.raises(ValueError, match="unix:/path"):
        wire.parse_address("tcp:127.0.0.1:1")
    assert wire.file_path("ab", "/home/user/d/é x") == "/v1/sessions/ab/files/d/%C3%A9%20x"
