"""The `hfserve-client` CLI against the fault-injecting server (or none): usage errors, where logs go, a reader
that stops reading. Each failure must be one line on stderr and an exit status from the docs, never a traceback
or a hang.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest
import structlog
from aiohttp import web

from service.client.cli import main
from tests.unit.test_client_faults import OK_COMPLETION, FaultServer, chunk, ok, start_fault_server, status

REPO = Path(__file__).resolve().parents[2]
NOWHERE = "http://127.0.0.1:9"  # nothing listens: a usage error must be caught before anything is sent


@pytest.fixture
async def fault(aiohttp_server) -> tuple[FaultServer, str]:
    return await start_fault_server(aiohttp_server)


@pytest.fixture
def unconfigured_structlog():
    """structlog as a fresh process has it (another test may have configured it); restored afterwards."""
    was_configured, config = structlog.is_configured(), structlog.get_config()
    structlog.reset_defaults()
    yield
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


async def run_main(*argv: str) -> int:
    """main() in a thread, since it runs its own event loop and this one serves the fault server."""
    return await asyncio.to_thread(main, list(argv))


async def subprocess_cli(*argv: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.client", *argv, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"hfserve-client {' '.join(argv)} still running after {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_one_line(err: str, *words: str) -> None:
    assert err.count("\n") == 1 and err.startswith("hfserve-client: "), err
    assert "Traceback" not in err and all(w in err for w in words), err


@pytest.mark.parametrize("message", ["", "   "])
async def test_a_blank_chat_message_is_a_usage_error_not_a_spin(message):
    code, out, err = await subprocess_cli("--base-url", NOWHERE, "chat", message, timeout=20)
    assert (code, out) == (2, "")
    assert_one_line(err, "blank", "interactive")


@pytest.mark.parametrize(("argv", "words"), [
    (["complete", "x", "--param", "stream=true"], ["--param stream", "--stream"]),
    (["chat", "x", "--param", "stream=false"], ["--param stream", "--no-stream"]),
    (["complete", "x", "--param", "prompt=y"], ["--param prompt"]),
    (["chat", "x", "--param", 'messages=[{"role":"user","content":"y"}]'], ["--param messages"]),
    (["complete", "x", "--param", 'stream_options={"include_usage":true}'], ["stream_options"]),
    (["complete", "x", "--stream", "--json"], ["--json", "--stream"]),
    (["complete", "x", "--stream", "--param", "n=2"], ["n=2", "--json"]),
    (["complete", "x", "--param", "n=2"], ["n=2", "--json"]),
    (["chat", "x", "--param", "n=3"], ["n=3", "one reply"]),
])
async def test_arguments_the_output_cannot_show_are_usage_errors(capsys, argv, words):
    assert await run_main("--base-url", NOWHERE, "--max-retries", "0", *argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line(captured.err, *words)


async def test_n_choices_come_back_whole_with_json(fault, capsys):
    server, url = fault
    two = {**OK_COMPLETION, "choices": [{**OK_COMPLETION["choices"][0], "index": i} for i in range(2)]}

    async def respond(request: web.Request) -> web.StreamResponse:
        return web.json_response(two)

    server.script = [respond]
    assert await run_main("--base-url", url, "complete", "x", "--param", "n=2", "--param", "logprobs=2",
                          "--json") == 0
    assert orjson.loads(capsys.readouterr().out) == two
    body = server.bodies[0]
    assert body is not None and body["n"] == 2 and body["logprobs"] == 2  # --param logprobs is not dropped


async def test_retry_logs_go_to_stderr_and_leave_json_output_parseable(fault, capsys, unconfigured_structlog):
    server, url = fault
    server.script = [status(503, "service_unavailable", {"Retry-After": "0"}), ok]
    assert await run_main("--base-url", url, "complete", "x", "--json") == 0
    captured = capsys.readouterr()
    assert orjson.loads(captured.out) == OK_COMPLETION  # stdout holds the response and nothing else
    assert "retrying" in captured.err and "attempt=1" in captured.err
    assert len(server.attempts) == 2
    assert not structlog.is_configured()  # main() put structlog back as it found it


async def test_a_program_that_configured_structlog_keeps_its_configuration(fault, capsys, unconfigured_structlog):
    server, url = fault
    server.script = [status(503, "service_unavailable", {"Retry-After": "0"}), ok]
    events: list[str] = []

    def keep(_logger: object, _method: str, event: dict[str, object]) -> dict[str, object]:
        events.append(str(event["event"]))
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    assert await run_main("--base-url", url, "complete", "x") == 0
    assert events == ["retrying"]
    assert "retrying" not in capsys.readouterr().err
    assert structlog.get_config()["processors"] == [keep]


async def trickle(request: web.Request) -> web.StreamResponse:
    """A stream that keeps sending, a delta every 10 ms, until the client hangs up."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(3000):
        await resp.write(chunk(f"token{i} "))
        await asyncio.sleep(0.01)
    return resp


async def test_a_reader_that_stops_reading_ends_the_cli_quietly(fault):
    """`hfserve-client complete ... --stream | head -c 5`: exit 141 with nothing on stderr, and the server sees
    the connection close, so it stops generating."""
    server, url = fault
    server.script = [trickle]
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.client", "--base-url", url, "complete", "x", "--stream", cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL, stdout=write_end, stderr=asyncio.subprocess.PIPE)
    os.close(write_end)
    try:
        first = await asyncio.to_thread(os.read, read_end, 5)
    finally:
        os.close(read_end)
    assert first == b"token"
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 141
    assert err.decode() == ""
    await asyncio.wait_for(server.disconnected.wait(), 5)
