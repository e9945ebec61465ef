"""Dynamic batching for embeddings, in the spirit of MAX serve's embeddings scheduler.

Every input gets a Future. One batch loop collects pending inputs until it has `max_batch_size` of them,
or `max_batch_tokens` tokens, or the oldest has waited `batch_wait_timeout_s`; it then runs the encoder in its
own step thread (service/engine/step_thread.py) and resolves each future with its vector. Inputs whose caller
went away are skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import torch

from service.embeddings.model import EmbeddingModel
from service.engine.step_thread import StepThread
from service.engine.wakeup import wait_until
from service.errors import EngineDeadError, EngineStepError, OverloadedError

log = structlog.get_logger("embeddings")


@dataclass(slots=True)
class _Item:
    token_ids: list[int]
    future: asyncio.Future[torch.Tensor]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class BatcherStats:
    batches: int = 0
    inputs: int = 0
    last_batch_size: int = 0
    last_batch_latency_s: float = 0.0


class EmbeddingBatcher:
    def __init__(self, model: EmbeddingModel, max_batch_size: int = 32, max_batch_tokens: int = 8192,
                 batch_wait_timeout_s: float = 0.005, max_queued: int = 4096) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_queued = max_queued
        self.stats = BatcherStats()
        self._queue: deque[_Item] = deque()
        self._queued_tokens = 0
        self._wake = asyncio.Event()
        self._executor = StepThread("embed-step")
        self._task: asyncio.Task[None] | None = None
        # Observers (metrics) called with (batch size, seconds) after each batch.
        self.on_batch: list[Callable[[int, float], None]] = []

    @property
    def queue_len(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="embedding-batch-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(EngineDeadError("The embedding batcher stopped."))
        self._queue.clear()
        self._executor.shutdown(wait=False)

    async def embed(self, inputs: list[list[int]]) -> list[torch.Tensor]:
        """Vectors for each input, in order. Cancelling the caller drops its inputs from the queue."""
        if self._task is None or self._task.done():
            raise EngineDeadError("The embedding batcher is not running.")
        if len(self._queue) + len(inputs) > self.max_queued:
            raise OverloadedError(f"The embedding queue is full ({len(self._queue)} inputs waiting). Retry later.")
        loop = asyncio.get_running_loop()
        futures = []
        for ids in inputs:
            fut: asyncio.Future[torch.Tensor] = loop.create_future()
            self._queue.append(_Item(ids, fut))
            self._queued_tokens += len(ids)
            futures.append(fut)
        self._wake.set()
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._wait_for_batch()
            batch = self._take_batch()
            if not batch:
                continue
            t0 = time.monotonic()
            try:
                vectors = await self._executor.submit(self.model.encode, [i.token_ids for i in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- fail this batch's callers, keep serving
                log.error("embedding batch failed", error=repr(exc), size=len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(EngineStepError(f"The embedding model failed: {exc!r}"))
                continue
            for item, vec in zip(batch, vectors, strict=True):
                if not item.future.done():
                    item.future.set_result(vec)
            elapsed = time.monotonic() - t0
            self.stats.batches += 1
            self.stats.inputs += len(batch)
            self.stats.last_batch_size = len(batch)
            self.stats.last_batch_latency_s = elapsed
            for hook in self.on_batch:
                hook(len(batch), elapsed)

    async def _wait_for_batch(self) -> None:
        await wait_until(
            self._wake,
            lambda: len(self._queue) >= self.max_batch_size or self._queued_tokens >= self.max_batch_tokens,
            self._queue[0].enqueued + self.batch_wait_timeout_s,
        )

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        tokens = 0
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue[0]
            if batch and tokens + len(item.token_ids) > self.max_batch_tokens:
                break
            self._queue.popleft()
            self._queued_tokens -= len(item.token_ids)
            if item.future.done():  # the caller went away
                continue
            batch.append(item)
            tokens += len(item.token_ids)
        return batch
