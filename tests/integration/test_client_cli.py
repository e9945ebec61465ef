"""`python -m service.client` against the real server: output, interactive chat, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import orjson
import pytest

from service.api.context import CONTEXT
from service.client.cli import build_parser, run
from tests.integration.test_client_live import require_route

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def server(make_client):
    tc = await make_client()
    return tc, str(tc.make_url(""))


def finished(tc) -> int:
    return sum(tc.app[CONTEXT].engine.stats.requests_finished.values())


async def cli(base_url: str, *argv: str, lines: list[str] | None = None) -> tuple[int, str]:
    """Run the CLI in-process; `lines` feed an interactive chat."""
    args = build_parser().parse_args(["--base-url", base_url, "--max-retries", "0", *argv])
    out = io.StringIO()
    queue = list(lines or [])
    code = await run(args, out, lambda: queue.pop(0) if queue else None)
    return code, out.getvalue()


async def subprocess_cli(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.client", *argv, cwd=REPO, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin or b""), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_complete_prints_the_same_text_streamed_or_not(server):
    _, url = server
    flags = ["--max-tokens", "10", "--temperature", "0", "--param", "ignore_eos=true"]
    code, streamed = await cli(url, "complete", "def fib(n):", *flags, "--stream")
    assert code == 0
    code, whole = await cli(url, "complete", "def fib(n):", *flags)
    assert code == 0 and streamed == whole and whole.strip()
    code, raw = await cli(url, "complete", "def fib(n):", *flags, "--json")
    assert orjson.loads(raw)["choices"][0]["text"] + "\n" == whole


async def test_health_and_models(server):
    _, url = server
    code, out = await cli(url, "health")
    assert code == 0 and orjson.loads(out)["status"] == "ok"
    assert await cli(url, "models") == (0, "tiny\n")


async def test_interactive_chat_keeps_the_conversation(server, monkeypatch):
    tc, url = server
    require_route(tc, "POST", "/v1/chat/completions")
    engine = tc.app[CONTEXT].engine
    prompt_lengths: list[int] = []
    add_request = engine.add_request

    def recording_add_request(ids, *args, **kw):
        prompt_lengths.append(len(ids))
        return add_request(ids, *args, **kw)

    monkeypatch.setattr(engine, "add_request", recording_add_request)
    code, out = await cli(url, "chat", "--system", "Be brief.", "--max-tokens", "4", "--temperature", "0",
                          lines=["hello", "", "and again", "/exit", "never sent"])
    assert code == 0 and out.endswith("\n")
    assert finished(tc) == 2  # two turns; the blank line was skipped and /exit ended the chat
    # The second turn's prompt holds the first turn (question and reply) as well as its own question.
    assert len(prompt_lengths) == 2 and prompt_lengths[1] > prompt_lengths[0] + 4


async def test_interactive_chat_reads_piped_stdin_until_its_end(server):
    tc, url = server
    require_route(tc, "POST", "/v1/chat/completions")
    code, out, err = await subprocess_cli("--base-url", url, "chat", "--max-tokens", "3", stdin=b"hello\nagain\n")
    assert code == 0, err
    assert finished(tc) == 2 and out.endswith("\n")


async def test_one_shot_chat(server):
    tc, url = server
    require_route(tc, "POST", "/v1/chat/completions")
    code, out = await cli(url, "chat", "hello", "--max-tokens", "4", "--no-stream")
    assert code == 0 and out.endswith("\n") and finished(tc) == 1


async def test_tokenize_then_detokenize(server):
    tc, url = server
    require_route(tc, "POST", "/tokenize")
    code, out = await cli(url, "tokenize", "print(1)")
    tokens = orjson.loads(out)
    assert code == 0 and tokens
    assert await cli(url, "detokenize", *map(str, tokens)) == (0, "print(1)\n")


async def test_module_entry_point_streams_text(server):
    _, url = server
    code, out, err = await subprocess_cli("--base-url", url, "complete", "def fib(n):", "--max-tokens", "8",
                                          "--stream")
    assert code == 0, err
    assert out.endswith("\n") and out.strip()


async def test_errors_exit_non_zero_with_one_line(server, unused_tcp_port_factory):
    _, url = server
    code, out, err = await subprocess_cli("--base-url", url, "complete", "x", "--temperature", "-3")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("hfserve-client: BadRequestError: ") and "temperature" in err
    dead = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    code, _, err = await subprocess_cli("--base-url", dead, "--max-retries", "0", "health")
    assert code == 1 and err.count("\n") == 1 and err.startswith("hfserve-client: ConnectionError: ")
