"""`hfserve-client` / `python -m service.client`: the SDK from a shell.

    hfserve-client complete "def fib(n):" --max-tokens 64 --stream
    hfserve-client chat                       # interactive; or: chat "Hello" --system "Be brief."
    hfserve-client embed "first text" "second text"
    hfserve-client health

Exit status: 0 on success, 1 on an API error (one line on stderr) or an unhealthy server, 2 on bad usage (one
line on stderr), 130 on Ctrl-C, 141 when whoever reads the output stops reading (`| head`), quietly, as a
process killed by SIGPIPE would. The output is only the results; logs (a retry, say) go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import orjson
import structlog

from service.client.client import AsyncClient, default_api_key, default_base_url
from service.client.errors import APIError

PROG = "hfserve-client"

# Flags shared by complete and chat, sent under the HTTP API's names.
SAMPLING_FLAGS: tuple[tuple[str, type], ...] = (
    ("max_tokens", int), ("temperature", float), ("top_p", float), ("top_k", int), ("min_p", float),
    ("seed", int), ("presence_penalty", float), ("frequency_penalty", float), ("repetition_penalty", float),
)

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe


class UsageError(ValueError):
    """Arguments that cannot make a sensible request; caught by main() as exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Call an OpenAI-compatible inference server.")
    parser.add_argument("--base-url", default=default_base_url(),
                        help="server root (default: $SERVICE_BASE_URL, else http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=default_api_key(),
                        help="Bearer token (default: $HFSERVE_API_KEY, else $OPENAI_API_KEY)")
    parser.add_argument("--model", default=None, help="model name to send (default: the server's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="total seconds per call (default 600)")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="seconds to wait for each chunk of a stream (default 60)")
    parser.add_argument("--max-retries", type=int, default=2)
    sub = parser.add_subparsers(dest="command", required=True)

    complete = sub.add_parser("complete", help="complete a prompt")
    complete.add_argument("prompt")
    _add_sampling(complete)
    complete.add_argument("--logprobs", type=int, default=None, help="return logprobs with this many alternatives")
    complete.add_argument("--stream", action="store_true", help="print text as it arrives")
    complete.add_argument("--json", action="store_true",
                          help="print the whole JSON response (not with --stream; needed for n > 1)")

    chat = sub.add_parser("chat", help="one chat turn, or an interactive chat if no message is given")
    chat.add_argument("message", nargs="?", default=None, help="the message (not blank); none: interactive")
    chat.add_argument("--system", default=None, help="a system message to start with")
    _add_sampling(chat)
    chat.add_argument("--no-stream", dest="stream", action="store_false", help="wait for whole replies")

    embed = sub.add_parser("embed", help="print one JSON vector per text")
    embed.add_argument("texts", nargs="+")

    sub.add_parser("health", help="print the server's health; exit 1 if it is not healthy")
    sub.add_parser("models", help="list the served models")
    tokenize = sub.add_parser("tokenize", help="print the token ids of a text")
    tokenize.add_argument("text")
    detokenize = sub.add_parser("detokenize", help="print the text of token ids")
    detokenize.add_argument("tokens", nargs="+", type=int)
    return parser


def _add_sampling(p: argparse.ArgumentParser) -> None:
    for name, kind in SAMPLING_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    p.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=JSON",
                   help="any other request field, e.g. --param ignore_eos=true (repeatable)")


def sampling_from_args(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {name: getattr(args, name) for name, _ in SAMPLING_FLAGS}
    params["stop"] = args.stop
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected KEY=JSON")
        try:
            params[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            params[key] = value  # a bare word is a string
    return params


def request_params(args: argparse.Namespace) -> dict[str, Any]:
    """The fields `complete` or `chat` sends besides its prompt, refusing combinations the output cannot show.
    Raises UsageError."""
    command = args.command
    if command == "chat" and args.message is not None and not args.message.strip():
        raise UsageError("chat: the message is blank; leave it out for an interactive chat")
    params = sampling_from_args(args)
    for key in ("prompt", "messages"):
        if key in params:
            raise UsageError(f"--param {key}: the {command} command sets it from its arguments")
    if "stream" in params:
        raise UsageError("--param stream: use --stream" if command == "complete"
                         else "--param stream: chat streams unless --no-stream")
    if params.get("stream_options") is not None and not args.stream:
        raise UsageError("--param stream_options: only for a streamed call")
    n = params.get("n")
    many = isinstance(n, int) and not isinstance(n, bool) and n > 1
    if command == "complete":
        if args.logprobs is not None:
            params["logprobs"] = args.logprobs
        if args.stream and args.json:
            raise UsageError("--json prints the whole response, so it does not go with --stream")
        if many and not args.json:
            raise UsageError(f"n={n}: only --json shows more than one choice (and not with --stream)")
    elif many:
        raise UsageError(f"n={n}: a chat keeps one reply per turn")
    return params


async def run(args: argparse.Namespace, out: TextIO, input_line: Callable[[], str | None]) -> int:
    """Run one command, writing its results to `out`. Raises APIError, and UsageError before sending anything."""
    params = request_params(args) if args.command in ("complete", "chat") else {}
    async with AsyncClient(args.base_url, args.api_key, timeout=args.timeout, idle_timeout=args.idle_timeout,
                           max_retries=args.max_retries, model=args.model) as client:
        if args.command == "complete":
            return await _complete(client, args, params, out)
        if args.command == "chat":
            return await _chat(client, args, params, out, input_line)
        if args.command == "embed":
            for vector in (await client.embed(args.texts)).vectors:
                out.write(orjson.dumps(vector).decode() + "\n")
            return 0
        if args.command == "health":
            health = await client.health()
            out.write(orjson.dumps(health.body).decode() + "\n" if health.body is not None else f"{health.status}\n")
            return 0 if health.ok else 1
        if args.command == "models":
            for model in await client.models():
                out.write(model.id + "\n")
            return 0
        if args.command == "tokenize":
            out.write(orjson.dumps((await client.tokenize(args.text)).tokens).decode() + "\n")
            return 0
        if args.command == "detokenize":
            out.write(await client.detokenize(args.tokens) + "\n")
            return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse allows only the ones above


async def _complete(client: AsyncClient, args: argparse.Namespace, params: dict[str, Any], out: TextIO) -> int:
    if args.stream:
        async with client.stream_complete(args.prompt, **params) as stream:
            async for delta in stream:
                out.write(delta.text)
                out.flush()
        out.write("\n")
        return 0
    result = await client.complete(args.prompt, **params)
    out.write((orjson.dumps(result.raw).decode() if args.json else result.text) + "\n")
    return 0


async def _chat(client: AsyncClient, args: argparse.Namespace, params: dict[str, Any], out: TextIO,
                input_line: Callable[[], str | None]) -> int:
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    if args.message is not None:  # one turn (request_params refused a blank message)
        messages.append({"role": "user", "content": args.message})
        await _chat_turn(client, messages, params, args.stream, out)
        return 0
    while True:  # interactive: every pass awaits a line, so blank lines cost nothing and Ctrl-C gets through
        text = await _read_line(input_line)
        if text is None or text.strip() in ("/exit", "/quit"):
            return 0
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        reply = await _chat_turn(client, messages, params, args.stream, out)
        messages.append({"role": "assistant", "content": reply})


async def _chat_turn(client: AsyncClient, messages: list[dict[str, str]], params: dict[str, Any], stream: bool,
                     out: TextIO) -> str:
    if not stream:
        reply = (await client.chat(messages, **params)).text
        out.write(reply + "\n")
        return reply
    parts = []
    async with client.stream_chat(messages, **params) as chat_stream:
        async for delta in chat_stream:
            parts.append(delta.content)
            out.write(delta.content)
            out.flush()
    out.write("\n")
    return "".join(parts)


async def _read_line(input_line: Callable[[], str | None]) -> str | None:
    """`input_line()` in a daemon thread. Not asyncio.to_thread: its executor is joined at exit, so Ctrl-C at the
    prompt would hang until Enter."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | None] = loop.create_future()

    def settle(result: str | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def work() -> None:
        result: str | None = None
        exc: BaseException | None = None
        try:
            result = input_line()
        except (OSError, ValueError) as err:  # unreadable or undecodable stdin: the awaiting task re-raises it
            exc = err
        finally:  # always settle, so the chat never waits on a reader that died; anything else reads as EOF
            with contextlib.suppress(RuntimeError):  # the loop closed while we waited for input
                loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=work, name="stdin-reader", daemon=True).start()
    return await future


def _read_stdin_line() -> str | None:
    """The next line of input, None at end of input. A terminal gets a prompt; a pipe does not."""
    if sys.stdin.isatty():
        try:
            return input("> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _logs_on_stderr():
            code = asyncio.run(run(args, sys.stdout, _read_stdin_line))
        sys.stdout.flush()  # here, so that a reader gone by now is caught below rather than at exit
        return code
    except APIError as exc:
        print(f"{PROG}: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout's reader went away (`| head`): not an error worth a line
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except ValueError as exc:  # a bad --base-url or --param, a usage error
        print(f"{PROG}: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


@contextlib.contextmanager
def _logs_on_stderr() -> Iterator[None]:
    """The SDK's log lines (a retry, say) on stderr, apart from the output: unconfigured, structlog prints to
    stdout. A program that configured structlog itself before calling main() keeps its configuration."""
    if structlog.is_configured():
        yield
        return
    colors = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
                    structlog.dev.ConsoleRenderer(colors=colors)],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        yield
    finally:
        structlog.reset_defaults()


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's flush at exit does not hit the broken pipe again."""
    with contextlib.suppress(OSError, ValueError):  # not a real file (tests), or already closed
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


def _one_line(text: str) -> str:
    return " ".join(text.split())
