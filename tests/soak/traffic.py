"""The soak test's clients: one coroutine per kind of traffic, each returning an outcome label that the tally
checks against what that kind may legitimately get back.

Outcome labels: an HTTP status ("200", "408", ...), "200+error:<type>" for a stream that ended with an error
event, "disconnected" (we hung up mid-stream), "cancelled" (we gave up before any answer), or
"client:<exception>" (the connection failed; never expected).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

WORDS = ("the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "this",
         "are", "or", "from", "at", "which", "an", "have", "not", "def", "return", "self", "import", "class", "if",
         "else", "while", "lambda", "yield", "async", "await", "none", "true", "false")

# What each kind may answer. 429 is legitimate for anything that reaches the engine's queue, since bursts
# fill it on purpose; the embedding batcher has its own, much larger, queue.
ALLOWED: dict[str, frozenset[str]] = {
    "completion": frozenset({"200", "429"}),
    "completion_stream": frozenset({"200", "429"}),
    "chat": frozenset({"200", "429"}),
    "chat_stream": frozenset({"200", "429"}),
    "embeddings": frozenset({"200"}),
    "disconnect_stream": frozenset({"disconnected", "429"}),
    "disconnect_queued": frozenset({"cancelled", "429"}),
    "deadline": frozenset({"408", "429"}),
    "deadline_stream": frozenset({"200+error:timeout", "429"}),
    "invalid": frozenset({"400", "404", "405", "413", "415"}),
    "too_long": frozenset({"400"}),
    "burst": frozenset({"200", "429"}),
}


@dataclass
class Tally:
    """Outcomes by kind, plus the first few surprises with enough detail to debug them."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    surprises: list[str] = field(default_factory=list)

    def record(self, kind: str, outcome: str, detail: str = "") -> None:
        self.outcomes[(kind, outcome)] += 1
        if (outcome not in ALLOWED[kind] or detail) and len(self.surprises) < 20:
            self.surprises.append(f"{kind}: {outcome} {detail}".strip())

    def by_kind(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for (kind, outcome), n in sorted(self.outcomes.items()):
            out.setdefault(kind, Counter())[outcome] += n
        return out

    def by_outcome(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for (_, outcome), n in self.outcomes.items():
            total[outcome] += n
        return total

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


class Traffic:
    """Every request kind of the soak, against one server. `max_model_len` sizes the over-long prompts."""

    def __init__(self, session: aiohttp.ClientSession, base: str, model: str, max_model_len: int,
                 max_body_bytes: int, seed: int = 0) -> None:
        self.session = session
        self.base = base
        self.model = model
        self.max_model_len = max_model_len
        self.max_body_bytes = max_body_bytes
        self.rng = random.Random(seed)
        self.tally = Tally()

    # ---- helpers -------------------------------------------------------------------------------------------
    def text(self, lo: int = 3, hi: int = 40) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(lo, hi)))

    def sampling(self) -> dict[str, Any]:
        """Varied but valid sampling parameters, so that many code paths of the sampler run."""
        body: dict[str, Any] = {"max_tokens": self.rng.randint(1, 48), "temperature": self.rng.choice([0.0, 0.7, 1.0])}
        if self.rng.random() < 0.3:
            body["ignore_eos"] = True
        if self.rng.random() < 0.2:
            body["stop"] = [self.rng.choice(WORDS)]
        if self.rng.random() < 0.2:
            body["n"] = 2
        if self.rng.random() < 0.2:
            body["seed"] = self.rng.randint(0, 1000)
        return body

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.text(2, 8)}, {"role": "user", "content": self.text()}]

    async def _read_stream(self, resp: aiohttp.ClientResponse, stop_after: int | None = None) -> tuple[str, str]:
        """Read SSE frames; return (outcome, detail). With stop_after, hang up after that many frames."""
        frames: list[bytes] = []
        async for line in resp.content:
            if not line.strip():
                continue
            frames.append(line)
            if stop_after is not None and len(frames) >= stop_after:
                resp.close()  # drops the connection: the server sees a disconnect
                return "disconnected", ""
        if not frames or frames[-1].strip() != b"data: [DONE]":
            return "200", f"stream did not end with [DONE]: {frames[-1:]!r}"
        events = [json.loads(f[len(b"data: "):]) for f in frames[:-1]]
        errors = [e["error"] for e in events if "error" in e]
        if errors:
            return f"200+error:{errors[-1]['type']}", ""
        finishes = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
        if not finishes:
            return "200", "stream ended without a finish_reason"
        return "200", ""

    async def _post_json(self, kind: str, path: str, body: Any) -> None:
        async with self.session.post(self.base + path, json=body) as resp:
            payload = await resp.json(content_type=None)
            detail = ""
            if resp.status == 200 and path != "/v1/embeddings":
                choices = payload.get("choices") or []
                if not choices or any(c.get("finish_reason") not in ("stop", "length") for c in choices):
                    detail = f"bad choices {str(choices)[:200]}"
            elif resp.status == 429:
                detail = self._check_429(resp, payload)
            elif resp.status != 200 and "error" not in payload:
                detail = f"error without OpenAI shape: {str(payload)[:200]}"
            self.tally.record(kind, str(resp.status), detail)

    @staticmethod
    def _check_429(resp: aiohttp.ClientResponse, payload: dict[str, Any]) -> str:
        if "Retry-After" not in resp.headers or payload.get("error", {}).get("type") != "overloaded":
            return f"429 without Retry-After or type overloaded: {dict(resp.headers)} {payload}"
        return ""

    async def _post_stream(self, kind: str, path: str, body: dict[str, Any], stop_after: int | None = None) -> None:
        async with self.session.post(self.base + path, json={**body, "stream": True}) as resp:
            if resp.status != 200:
                payload = await resp.json(content_type=None)
                self.tally.record(kind, str(resp.status),
                                  self._check_429(resp, payload) if resp.status == 429 else "")
                return
            outcome, detail = await self._read_stream(resp, stop_after)
            self.tally.record(kind, outcome, detail)

    # ---- the kinds -----------------------------------------------------------------------------------------
    async def completion(self) -> None:
        await self._post_json("completion", "/v1/completions", {"prompt": self.text(), **self.sampling()})

    async def completion_stream(self) -> None:
        body = {"prompt": self.text(), **self.sampling(), "stream_options": {"include_usage": True}}
        await self._post_stream("completion_stream", "/v1/completions", body)

    async def chat(self) -> None:
        await self._post_json("chat", "/v1/chat/completions", {"messages": self.messages(), **self.sampling()})

    async def chat_stream(self) -> None:
        await self._post_stream("chat_stream", "/v1/chat/completions",
                                {"messages": self.messages(), **self.sampling()})

    async def embeddings(self) -> None:
        inputs = [self.text(1, 30) for _ in range(self.rng.randint(1, 6))]
        async with self.session.post(self.base + "/v1/embeddings", json={"input": inputs}) as resp:
            payload = await resp.json(content_type=None)
            detail = ""
            if resp.status == 200 and len(payload["data"]) != len(inputs):
                detail = f"{len(payload['data'])} vectors for {len(inputs)} inputs"
            self.tally.record("embeddings", str(resp.status), detail)

    async def disconnect_stream(self) -> None:
        """Hang up after a few frames of a long stream: the server must abort the request and free its blocks."""
        path = self.rng.choice(["/v1/completions", "/v1/chat/completions"])
        body: dict[str, Any] = {"max_tokens": 400, "ignore_eos": True}
        body.update({"prompt": self.text()} if path == "/v1/completions" else {"messages": self.messages()})
        await self._post_stream("disconnect_stream", path, body, stop_after=self.rng.randint(1, 4))

    async def disconnect_queued(self) -> None:
        """Give up a few milliseconds after sending, before any answer: with the batch full, the request is
        usually still waiting in the queue, and must leave it."""
        body = {"prompt": self.text(), "max_tokens": 200, "ignore_eos": True,
                "stream": self.rng.random() < 0.5}
        try:
            async with asyncio.timeout(self.rng.uniform(0.002, 0.05)):
                async with self.session.post(self.base + "/v1/completions", json=body) as resp:
                    await resp.read()
                    self.tally.record("disconnect_queued", str(resp.status))
        except TimeoutError:
            self.tally.record("disconnect_queued", "cancelled")

    async def deadline(self) -> None:
        """A per-request deadline far shorter than the generation: 408, or an error event in a stream."""
        body = {"prompt": self.text(), "max_tokens": self.max_model_len // 2, "ignore_eos": True,
                "request_timeout": self.rng.uniform(0.02, 0.3)}
        if self.rng.random() < 0.5:
            await self._post_stream("deadline_stream", "/v1/completions", body)
        else:
            await self._post_json("deadline", "/v1/completions", body)

    async def invalid(self) -> None:
        """Malformed or refused bodies: each must get its 4xx in OpenAI's error shape, and never reach the engine."""
        choice = self.rng.randrange(8)
        url = self.base + "/v1/completions"
        ok = {"prompt": "hi", "max_tokens": 4}
        if choice == 0:
            req = self.session.post(url, data=b'{"prompt": "unterminated', headers={"Content-Type": "application/json"})
        elif choice == 1:
            bad = self.rng.choice([{"temperature": 9}, {"n": 999}, {"max_tokens": 0}, {"top_p": 0},
                                   {"logit_bias": {str(i): 1 for i in range(400)}}, {"stop": ["a"] * 9},
                                   {"prompt": ""}, {"request_timeout": -1}])
            req = self.session.post(url, json={**ok, **bad})
        elif choice == 2:
            req = self.session.post(url, json={**ok, "model": "no-such-model"})
        elif choice == 3:
            req = self.session.post(url, data=b"prompt=hi", headers={"Content-Type": "text/plain"})
        elif choice == 4:
            req = self.session.post(url, json={"prompt": "x" * (self.max_body_bytes + 1024)})
        elif choice == 5:
            req = self.session.post(self.base + "/v1/no-such-route", json=ok)
        elif choice == 6:
            req = self.session.get(url)
        else:
            req = self.session.post(self.base + "/v1/chat/completions", json={"messages": []})
        async with req as resp:
            payload = await resp.json(content_type=None)
            detail = "" if "error" in payload else f"error without OpenAI shape: {str(payload)[:200]}"
            self.tally.record("invalid", str(resp.status), detail)

    async def too_long(self) -> None:
        """Prompts that cannot fit the context: 400 with code context_length_exceeded."""
        choice = self.rng.randrange(3)
        if choice == 0:  # token ids past the context
            body: dict[str, Any] = {"prompt": [self.rng.randrange(5, 200) for _ in range(self.max_model_len + 8)]}
            path = "/v1/completions"
        elif choice == 1:  # fits alone, not with max_tokens
            body = {"prompt": [7] * (self.max_model_len // 2), "max_tokens": self.max_model_len}
            path = "/v1/completions"
        else:  # chat messages longer than the context
            words = 2 * self.max_model_len  # each word is at least one token
            body = {"messages": [{"role": "user", "content": self.text(words, words)}]}
            path = "/v1/chat/completions"
        async with self.session.post(self.base + path, json=body) as resp:
            payload = await resp.json(content_type=None)
            code = payload.get("error", {}).get("code")
            self.tally.record("too_long", str(resp.status),
                              "" if code == "context_length_exceeded" else f"code={code!r}")

    async def burst(self, size: int) -> None:
        """`size` requests at once, more than the waiting queue admits: some must get 429 with Retry-After."""
        body = {"prompt": self.text(), "max_tokens": 16, "ignore_eos": True}
        await asyncio.gather(*(self._post_json("burst", "/v1/completions", body) for _ in range(size)))

    async def sweep_row_counts(self, max_rows: int) -> None:
        """One prompt of each length 1..max_rows, alone on an idle server, so each is a step of exactly that many
        rows. On the CPU, packed linear layers keep oneDNN/ideep state per row count (bounded: a few hundred MiB
        for the default model, flat once every count has been seen); filling it before the RSS baseline keeps
        that one-off cost out of the growth figure. Random ids, so the prefix cache never shortens a step."""
        for rows in range(1, max_rows + 1):
            prompt = [self.rng.randrange(5, 1000) for _ in range(rows)]
            async with self.session.post(self.base + "/v1/completions", json={"prompt": prompt, "max_tokens": 1}) as r:
                assert r.status == 200, await r.text()

    def weighted_kinds(self) -> list[tuple[Callable[[], Awaitable[None]], int]]:
        return [
            (self.completion, 15), (self.completion_stream, 15), (self.chat, 10), (self.chat_stream, 10),
            (self.embeddings, 10), (self.disconnect_stream, 8), (self.disconnect_queued, 8), (self.deadline, 8),
            (self.invalid, 10), (self.too_long, 6),
        ]

    async def run_one(self) -> None:
        kinds, weights = zip(*self.weighted_kinds(), strict=True)
        make = self.rng.choices(kinds, weights)[0]
        name = make.__name__
        try:
            await make()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.tally.record(name, f"client:{type(exc).__name__}", str(exc)[:200])
