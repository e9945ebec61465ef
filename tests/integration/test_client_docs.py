"""docs/client.md cannot rot: each ```python block runs, as a script, against a live server on the tiny model,
and each `$ hfserve-client ...` line of its console block runs as a command.

A block preceded by `<!-- requires: METHOD /path, ... -->` is skipped, naming the route, on a server build that
lacks one of those routes.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.api.context import CONTEXT

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "client.md"

BLOCK = re.compile(r"(?:<!-- requires: (?P<requires>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)

# Routes each CLI subcommand calls, for the console block's lines.
CLI_ROUTES = {
    "complete": ["POST /v1/completions"], "chat": ["POST /v1/chat/completions"], "embed": ["POST /v1/embeddings"],
    "health": ["GET /health"], "models": ["GET /v1/models"], "tokenize": ["POST /tokenize"],
    "detokenize": ["POST /detokenize"],
}


@dataclass(frozen=True)
class Example:
    name: str
    kind: str  # "python" or "cli"
    code: str
    routes: tuple[str, ...]


def examples() -> list[Example]:
    out = []
    for n, m in enumerate(BLOCK.finditer(DOC.read_text())):
        routes = tuple(r.strip() for r in (m["requires"] or "").split(",") if r.strip())
        if m["lang"] == "python":
            out.append(Example(f"python-{n}", "python", m["code"], routes))
        elif m["lang"] == "console":
            for line in m["code"].splitlines():
                if line.startswith("$ hfserve-client "):
                    argv = shlex.split(line[2:])
                    out.append(Example(f"cli-{argv[1]}", "cli", line[2:], tuple(CLI_ROUTES[argv[1]])))
    return out


def test_the_doc_has_examples_of_every_method():
    code = "".join(e.code for e in examples() if e.kind == "python")
    for call in ("complete(", "stream_complete(", "chat(", "stream_chat(", "embed(", "models(", "health(",
                 "tokenize(", "detokenize("):
        assert call in code, call


@pytest.fixture
async def live(make_client, monkeypatch):
    """A live server (with the embedding model, where the fixture can serve one); its URL in $SERVICE_BASE_URL."""
    can_embed = "embeddings" in inspect.signature(make_client).parameters
    tc = await make_client(embeddings=True) if can_embed else await make_client()
    monkeypatch.setenv("SERVICE_BASE_URL", str(tc.make_url("")))
    for var in ("HFSERVE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    routes = {f"{r.method} {r.resource.canonical}" for r in tc.app.router.routes() if r.resource is not None}
    if getattr(tc.app[CONTEXT], "embeddings", None) is None:
        routes.discard("POST /v1/embeddings")  # the route may exist with no model behind it
    return tc, routes


def run_script(code: str) -> None:
    """Run a doc block as `python block.py` would: its own globals, `__name__ == "__main__"`, its own loop."""
    exec(compile(code, str(DOC), "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("example", examples(), ids=lambda e: e.name)
async def test_doc_example_runs(live, example, capsys):
    _, routes = live
    missing = [r for r in example.routes if r not in routes]
    if missing:
        pytest.skip(f"the server has no {', '.join(missing)} route (or no model behind it) yet")
    if example.kind == "python":
        # In a thread: the block calls asyncio.run(), and this loop is busy serving it.
        await asyncio.to_thread(run_script, example.code)
        assert capsys.readouterr().out.strip()
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.client", *shlex.split(example.code)[1:], cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.strip()
