"""The native API against real VMs, through the shared embedded service
(``client``) and through its URL (``service_url``)."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

import pid1

# Prints to both streams in turn, pausing between, so each piece reaches the
# host on its own and their order is the order they were written.
INTERLEAVED = """\
import sys, time
for i in range(3):
    print(f"out{i}", flush=True)
    time.sleep(0.05)
    print(f"err{i}", file=sys.stderr, flush=True)
    time.sleep(0.05)
"""

# "é" split between two writes, then a byte that is not UTF-8.
SPLIT_BINARY = """\
import sys, time
out = sys.stdout.buffer
out.write(b"\\xc3"); out.flush(); time.sleep(0.05)
out.write(b"\\xa9\\xff" + bytes(range(256))); out.flush()
"""
SPLIT_BINARY_BYTES = b"\xc3\xa9\xff" + bytes(range(256))


def test_a_run_returns_output_exit_and_figures(client: pid1.Client) -> None:
    result = client.run("print(6 * 7)")
    assert (result.stdout, result.stderr, result.exit_code) == ("42\n", "", 0)
    assert result.ok and not result.timed_out and not result.stdout_truncated
    assert result.start in ("pooled", "restored", "cold")
    assert result.timings.total_ms > 0 and result.timings.exec_ms > 0
    assert result.peak_memory_bytes > 0
    assert result.raw["stdout"] == "42\n"


def test_callbacks_get_output_as_it_streams_in_order(client: pid1.Client) -> None:
    seen: list[tuple[str, str]] = []
    result = client.run(
        INTERLEAVED,
        on_stdout=lambda text: seen.append(("out", text)),
        on_stderr=lambda text: seen.append(("err", text)),
    )
    assert result.ok
    # Joined per stream, the pieces are the result's output...
    assert "".join(t for s, t in seen if s == "out") == result.stdout == "out0\nout1\nout2\n"
    assert "".join(t for s, t in seen if s == "err") == result.stderr == "err0\nerr1\nerr2\n"
    # ...and across streams they came in the order the job wrote them.
    lines = [line for _, text in seen for line in text.splitlines() if line]
    assert lines == ["out0", "err0", "out1", "err1", "out2", "err2"]


def test_a_callback_that_raises_ends_the_run_and_the_client_goes_on(client: pid1.Client) -> None:
    def refuse(text: str) -> None:
        raise LookupError(f"refused {text!r}")

    with pytest.raises(LookupError, match="refused 'first"):
        client.run("import time\nprint('first', flush=True)\ntime.sleep(30)", on_stdout=refuse)
    assert client.run("print('after')").stdout == "after\n"
    # The abandoned job's VM was destroyed, not left to sleep out its 30 s.
    deadline = time.monotonic() + 20
    while client.health()["pool"]["in_use"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.health()["pool"]["in_use"] == 0


def test_binary_output_survives_exactly(client: pid1.Client) -> None:
    pieces: list[str] = []
    result = client.run(SPLIT_BINARY, on_stdout=pieces.append)
    assert result.stdout_bytes == SPLIT_BINARY_BYTES
    assert result.stdout == SPLIT_BINARY_BYTES.decode("utf-8", "replace")
    # The character split between writes is decoded whole, not replaced.
    assert "".join(pieces) == result.stdout and result.stdout.startswith("é\ufffd")
    assert base64.b64decode(result.raw["stdout_base64"]) == SPLIT_BINARY_BYTES


def test_stdin_reaches_the_job(client: pid1.Client) -> None:
    result = client.run("import sys; print(sys.stdin.read().upper(), end='')", stdin="abc\ndef")
    assert result.stdout == "ABC\nDEF"


def test_files_go_up_and_come_down_with_env_in_a_shell_job(client: pid1.Client) -> None:
    result = client.run(
        'mkdir out; cat in.txt; ./tool.sh; stat -c %a tool.sh; printf "%s" "$GREETING" > out/greeting; cp data.bin out/data.bin',
        language="sh",
        env={"GREETING": "héllo"},
        files=[
            pid1.File("in.txt", "text in\n"),
            pid1.File("tool.sh", "#!/bin/sh\necho tool ran\n", 0o755),
            pid1.File("data.bin", b"\x00\xff\x01"),
        ],
        download=["out/greeting", "out/data.bin"],
    )
    assert result.ok, result.stderr
    assert result.stdout == "text in\ntool ran\n755\n"
    assert result.files == {"out/greeting": "héllo".encode(), "out/data.bin": b"\x00\xff\x01"}


def test_a_mapping_of_files_is_accepted(client: pid1.Client) -> None:
    result = client.run("print(open('a/b.txt').read())", files={"a/b.txt": b"mapped"})
    assert result.stdout == "mapped\n"


def test_a_job_past_its_timeout_is_timed_out(client: pid1.Client) -> None:
    result = client.run("import time; print('start', flush=True); time.sleep(60)", timeout=1)
    assert result.timed_out and result.exit_code is None and not result.ok
    assert result.stdout == "start\n"


def test_refused_input_raises_with_the_services_words(client: pid1.Client) -> None:
    with pytest.raises(pid1.InvalidRequestError) as empty:
        client.run("   ")
    assert (empty.value.status, empty.value.code, empty.value.field) == (400, "bad_request", "code")
    assert "code" in empty.value.message
    with pytest.raises(pid1.InvalidRequestError) as env:
        client.run("print(1)", env={"1BAD": "x"})
    assert env.value.field is not None and env.value.field.startswith("env")
    with pytest.raises(pid1.InvalidRequestError) as escape:
        client.run("print(1)", files={"../etc/passwd": "x"}, on_stdout=print)
    assert escape.value.status == 400 and escape.value.field == "files[0].path"
    with pytest.raises(pid1.InvalidRequestError):
        client.run("print(1)", language="cobol")
    # The service is still there.
    assert client.health()["pool"]["capacity"] >= 1


def test_a_download_that_fails_in_a_stream_raises_its_error(client: pid1.Client) -> None:
    with pytest.raises(pid1.InvalidRequestError) as missing:
        client.run("print(1)", download=["nowhere.txt"], on_stdout=lambda _: None)
    assert missing.value.code == "file" and missing.value.field == "nowhere.txt"


def test_a_session_keeps_state_and_serves_files(client: pid1.Client) -> None:
    with client.session() as session:
        assert not session.closed and len(session.id) == 32
        assert session.exec("x = 41").ok
        assert session.exec("x + 1").stdout == "42\n"
        streamed: list[str] = []
        assert session.exec("print('piece')", on_stdout=streamed.append).stdout == "piece\n"
        assert "".join(streamed) == "piece\n"

        session.write_file("work/blob.bin", bytes(range(256)), mode=0o600)
        session.write_file("/home/user/work/note.txt", "é")
        assert session.read_file("/home/user/work/blob.bin") == bytes(range(256))
        assert session.exec("print(open('work/note.txt').read())").stdout == "é\n"
        listing = {entry.name: entry for entry in session.list_files("work")}
        assert set(listing) == {"blob.bin", "note.txt"}
        blob = listing["blob.bin"]
        assert (blob.path, blob.kind, blob.size, blob.mode, blob.is_dir) == ("work/blob.bin", "file", 256, 0o600, False)
        assert any(entry.name == "work" and entry.is_dir for entry in session.list_files())
        session.delete_file("work/note.txt")
        with pytest.raises(pid1.InvalidRequestError) as gone:
            session.read_file("work/note.txt")
        assert gone.value.code == "file"
        with pytest.raises(pid1.InvalidRequestError, match="environment is fixed"):
            session.exec("print(1)", env={"A": "1"})
        held = session.id
    assert session.closed
    with pytest.raises(pid1.SessionClosedError):
        session.exec("x")
    # The service forgot it too: a handle to the same id is told so.
    stale = pid1.Session(client, {"id": held})
    with pytest.raises(pid1.SessionClosedError) as unknown:
        stale.exec("x")
    assert unknown.value.status == 404 and stale.closed


def test_a_shell_session_that_exits_is_closed(client: pid1.Client) -> None:
    session = client.session(language="sh")
    assert session.exec("cd /tmp; export A=1").ok
    assert session.exec('pwd; echo "$A"').stdout == "/tmp\n1\n"
    with pytest.raises(pid1.SessionClosedError):
        session.exec("exit 3")
    assert session.closed
    session.close()


def test_an_explicit_url_reaches_the_same_service(service_url: str) -> None:
    with pid1.Client(url=service_url) as other:
        assert other.embedded is None
        assert other.health()["status"] in ("ok", "degraded")


async def test_async_runs_stream_to_sync_and_async_callbacks(service_url: str) -> None:
    seen: list[tuple[str, str]] = []

    async def on_stderr(text: str) -> None:
        await asyncio.sleep(0)
        seen.append(("err", text))

    async with pid1.AsyncClient(url=service_url) as client:
        result = await client.run(
            INTERLEAVED, on_stdout=lambda text: seen.append(("out", text)), on_stderr=on_stderr
        )
        assert result.ok and result.stdout == "out0\nout1\nout2\n"
        lines = [line for _, text in seen for line in text.splitlines() if line]
        assert lines == ["out0", "err0", "out1", "err1", "out2", "err2"]
        both = await asyncio.gather(
            client.run("print('a')"), client.run("echo b; echo c >&2", language="sh", timeout=10)
        )
        assert [(r.stdout, r.stderr) for r in both] == [("a\n", ""), ("b\n", "c\n")]
        with pytest.raises(pid1.InvalidRequestError) as refused:
            await client.run("x\0y")
        assert refused.value.field == "code"


async def test_an_async_session_keeps_state_and_serves_files(service_url: str) -> None:
    async with pid1.AsyncClient(url=service_url) as client:
        async with client.session() as session:
            await session.exec("import base64; seen = []")
            await session.exec("seen.append(1)")
            assert (await session.exec("len(seen)")).stdout == "1\n"
            await session.write_file("f.bin", b"\x00\x01", mode=0o640)
            assert await session.read_file("f.bin") == b"\x00\x01"
            assert [(e.name, e.mode) for e in await session.list_files() if e.name == "f.bin"] == [("f.bin", 0o640)]
            await session.delete_file("f.bin")
        assert session.closed
        opened = await client.session(language="sh")
        try:
            assert (await opened.exec("echo $((6*7))")).stdout == "42\n"
        finally:
            await opened.close()
        with pytest.raises(pid1.SessionClosedError):
            await opened.exec("true")
