"""The plain-HF static-batching baseline of `make bench-compare`: `model.generate` on static batches behind a
minimal OpenAI-style `/v1/completions` (streaming or not).

While a batch generates, newcomers wait for the whole batch to finish; the batch ends when its last member
does. That is how serving with plain `generate` behaves, and what continuous batching is measured against.
Tokens stream as each step makes them (a streamer hooked into `generate`), so TTFT and ITL are comparable.
Sampling settings are the batch's first request's; rows finish at their own max_tokens or EOS.

    python -m loadtest.static_baseline_server --model models/default --port 8001 --max-batch-size 32
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
from aiohttp import web
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    ignore_eos: bool
    temperature: float
    top_p: float
    events: asyncio.Queue[tuple[int, str | None]] = field(default_factory=asyncio.Queue)  # (token, finish)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False  # the client went away; the row stops at the next step

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled


class _BatchStreamer(BaseStreamer):
    """Receives each step's new tokens (one per row) on the generate thread and hands them to the loop."""

    def __init__(self, jobs: list[Job], eos_ids: set[int], loop: asyncio.AbstractEventLoop) -> None:
        self.jobs = jobs
        self.eos_ids = eos_ids
        self.loop = loop
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # generate's first call passes the prompt
            self.seen_prompt = True
            return
        for job, tok in zip(self.jobs, value.reshape(-1).tolist(), strict=True):
            if job.done:
                continue
            job.token_ids.append(tok)
            if not job.ignore_eos and tok in self.eos_ids:
                job.finish_reason = "stop"
            elif len(job.token_ids) >= job.max_tokens:
                job.finish_reason = "length"
            self.loop.call_soon_threadsafe(job.events.put_nowait, (tok, job.finish_reason))

    def end(self) -> None:
        for job in self.jobs:
            if not job.done:
                job.finish_reason = "length"
                self.loop.call_soon_threadsafe(job.events.put_nowait, (-1, "length"))


class _RowsDone(StoppingCriteria):
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.tensor([j.done for j in self.jobs], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class StaticBatcher:
    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int, batch_wait_s: float) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.pending: asyncio.Queue[Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        # generate() fills a request config's unset fields from the model's, EOS included, and would then end
        # rows that asked for ignore_eos: the streamer decides EOS per row instead.
        model.generation_config.eos_token_id = None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.pending.get()]
            if self.batch_wait_s:
                await asyncio.sleep(self.batch_wait_s)
            while len(batch) < self.max_batch_size and not self.pending.empty():
                batch.append(self.pending.get_nowait())
            batch = [j for j in batch if not j.cancelled]
            if batch:
                await loop.run_in_executor(self.executor, self._generate, batch, loop)

    def _generate(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.tensor([[self.pad_id] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs])
        first = jobs[0]
        config = GenerationConfig(
            max_new_tokens=max(j.max_tokens for j in jobs),
            do_sample=first.temperature > 0,
            temperature=first.temperature if first.temperature > 0 else None,
            top_p=first.top_p if first.temperature > 0 else None,
            eos_token_id=None,  # see __init__: the streamer ends rows at EOS
            pad_token_id=self.pad_id,
        )
        streamer = _BatchStreamer(jobs, self.eos_ids, loop)
        try:
            with torch.inference_mode():
                self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                    generation_config=config, streamer=streamer,
                                    stopping_criteria=[_RowsDone(jobs)])
        finally:
            streamer.end()


BATCHER = web.AppKey("batcher", StaticBatcher)
NAME = web.AppKey("name", str)


def _chunk(rid: str, name: str, text: str, finish: str | None, usage: dict[str, int] | None = None,
           token_ids: list[int] | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    body: dict[str, Any] = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": name,
                            "choices": [] if usage else [choice]}
    if usage:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def completions(request: web.Request) -> web.StreamResponse:
    batcher, name = request.app[BATCHER], request.app[NAME]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="body is not JSON") from None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or body.get("n", 1) != 1:
        raise web.HTTPBadRequest(text="this baseline takes one string prompt and n=1")
    ids = batcher.tokenizer.encode(prompt)
    temperature = body.get("temperature")
    job = Job(ids, int(body.get("max_tokens") or 16), bool(body.get("ignore_eos", False)),
              1.0 if temperature is None else float(temperature), float(body.get("top_p") or 1.0))
    batcher.pending.put_nowait(job)
    rid = f"cmpl-{uuid.uuid4().hex}"

    def usage() -> dict[str, int]:
        return {"prompt_tokens": len(ids), "completion_tokens": len(job.token_ids),
                "total_tokens": len(ids) + len(job.token_ids)}

    def decode() -> str:
        return str(batcher.tokenizer.decode(job.token_ids, skip_special_tokens=True))

    want_ids = bool(body.get("return_token_ids"))  # vLLM's extension: which tokens each chunk carries
    if not body.get("stream"):
        while (await job.events.get())[1] is None:
            pass
        choice: dict[str, Any] = {"index": 0, "text": decode(), "finish_reason": job.finish_reason}
        if want_ids:
            choice["token_ids"] = job.token_ids
        return web.json_response(
            {"id": rid, "object": "text_completion", "created": int(time.time()), "model": name,
             "choices": [choice], "usage": usage()}, dumps=lambda o: orjson.dumps(o).decode())
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    sent, sent_ids = "", 0
    try:
        while True:
            _, finish = await job.events.get()
            text = decode()
            if text.endswith("\ufffd") and finish is None:
                continue  # an incomplete UTF-8 sequence: wait for the token that completes it
            delta, sent = text[len(sent):], text
            if delta or finish:
                ids_now = job.token_ids[sent_ids:] if want_ids else None
                sent_ids = len(job.token_ids)
                await resp.write(_chunk(rid, name, delta, finish, token_ids=ids_now))
            if finish:
                break
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(_chunk(rid, name, "", None, usage()))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        job.cancelled = True  # the client left: its row stops at the next step
    except asyncio.CancelledError:
        job.cancelled = True
        raise
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": request.app[NAME], "object": "model", "owned_by": "static-baseline"}]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(model_dir: str, name: str, dtype: str, max_batch_size: int, batch_wait_s: float) -> web.Application:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).eval()
    app = web.Application()
    app[BATCHER] = StaticBatcher(model, tokenizer, max_batch_size, batch_wait_s)
    app[NAME] = name
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)

    async def worker(app: web.Application) -> Any:
        task = asyncio.create_task(app[BATCHER].run())
        yield
        task.cancel()
        app[BATCHER].executor.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(worker)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Local model directory.")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=0.0, help="Wait this long for a batch to fill.")
    args = p.parse_args()
    name = args.served_model_name or Path(args.model).name
    app = create_app(args.model, name, args.dtype, args.max_batch_size, args.batch_wait_ms / 1000.0)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
