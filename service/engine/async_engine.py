"""The asyncio front of the engine: every request becomes a Future (and, when streaming, an OutputStream), goes
into the scheduler's waiting queue, and is served by one background batch loop.

    add_request ──> Scheduler.waiting ──> batch loop:  schedule ─> runner.execute (executor thread)
                                                         ^                 │
                                                         └── update ◄──────┘ ─> detokenize, stop strings,
                                                                                 stream deltas, resolve futures

All engine state (scheduler, block manager, live requests) is touched only on the event-loop thread; the
executor thread runs `runner.execute` on an immutable SchedulerOutput and returns a plain ModelRunnerOutput.
Every Future resolves exactly once, on every path: finished, stopped, aborted, timed out or failed.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from service.config import EngineConfig
from service.engine.block_manager import BlockManager
from service.engine.detokenizer import Detokenizer
from service.engine.engine_stats import EngineStats, StepWindow
from service.engine.output_processor import LiveRequest, OutputProcessor
from service.engine.output_stream import OutputStream, RequestResult
from service.engine.outputs import ModelRunnerOutput, SchedulerOutput
from service.engine.request import Request, RequestStatus
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import Scheduler
from service.engine.step_thread import StepThread
from service.engine.stop_strings import StopStringMatcher
from service.engine.wakeup import wait_for_wake, wait_until
from service.errors import (
    BadRequestError,
    EngineDeadError,
    EngineStepError,
    OverloadedError,
    RequestTimeoutError,
    ServiceError,
    ShuttingDownError,
)

log = structlog.get_logger("engine")


class Runner(Protocol):
    """What the engine needs of a model runner. The real one is ModelRunner; tests use fakes."""

    max_model_len: int
    num_blocks: int
    block_size: int
    vocab_size: int

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput: ...


class TokenizerLike(Protocol):
    def detokenizer(self, prompt_ids: list[int], skip_special_tokens: bool = True) -> Detokenizer: ...


@dataclass(slots=True)
class RequestHandle:
    request_id: str
    future: asyncio.Future[RequestResult]
    stream: OutputStream | None
    _request: Request

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far (all of them once it finished, however it ended); read on the loop thread."""
        return self._request.num_output_tokens

    async def result(self) -> RequestResult:
        # Shielded: a caller that is cancelled must not cancel the engine's future; the engine resolves it.
        return await asyncio.shield(self.future)


@dataclass(slots=True)
class _InFlight:
    sched: SchedulerOutput
    future: asyncio.Future[ModelRunnerOutput]
    submitted_at: float


def _refuse_token_id(token_ids: Sequence[int], vocab: int, param: str) -> None:
    """Raise a BadRequestError naming the first of `token_ids` outside [0, vocab), if any."""
    bad = next((t for t in token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        where = "" if param == "prompt" else f" in {param}"
        raise BadRequestError(f"Token id {bad}{where} is outside the vocabulary [0, {vocab}).", param=param)


def _retrieve_exception(fut: asyncio.Future[RequestResult]) -> None:
    # Streaming callers read errors from the stream and never await the future; mark it as seen.
    if not fut.cancelled():
        fut.exception()


class AsyncEngine:
    def __init__(self, config: EngineConfig, runner: Runner, tokenizer: TokenizerLike,
                 eos_token_ids: frozenset[int] = frozenset()) -> None:
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = runner.max_model_len
        self.block_manager = BlockManager(runner.num_blocks, runner.block_size,
                                          enable_prefix_caching=config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.block_manager, runner.max_model_len)
        self.stats = EngineStats()
        self.outputs = OutputProcessor(
            self.stats, lambda rid: self.scheduler.finish_request(rid, RequestStatus.FINISHED_STOPPED))
        # Observers (metrics): called with the request and its result when it ends.
        self.on_request_finished = self.outputs.on_request_finished
        self._executor = StepThread("model-step")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:8]
        self._consecutive_failures = 0
        self._next_deadline = math.inf  # no live request's deadline is earlier
        self.dead_reason: str | None = None
        self.draining = False
        self.step_in_flight_since: float | None = None
        self.last_heartbeat = time.monotonic()
        self._debug_window = StepWindow()
        # Observers (metrics): called after each step with its input, output and duration.
        self.on_step: list[Callable[[SchedulerOutput, ModelRunnerOutput, float], None]] = []

    # ---- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-batch-loop")

    async def stop(self) -> None:
        """Abort everything still live and stop the loop."""
        for rid in list(self.outputs.live):
            self.outputs.finish(rid, error=ShuttingDownError("The server is shutting down."))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=False)

    @property
    def is_alive(self) -> bool:
        return self.dead_reason is None and self._task is not None and not self._task.done()

    @property
    def num_live(self) -> int:
        return len(self.outputs.live)

    def is_live(self, request_id: str) -> bool:
        return request_id in self.outputs.live

    async def wait_idle(self) -> None:
        """Wait until no request is live (graceful drain; the caller bounds the wait)."""
        while self.outputs.live:
            await self.outputs.idle.wait()

    # ---- requests ------------------------------------------------------------------------------------------
    def new_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def add_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        stream: bool = False,
        priority: int = 0,
        timeout_s: float | None = None,
        want_prompt_logprobs: bool = False,
        request_id: str | None = None,
        checked: bool = False,
    ) -> RequestHandle:
        """Queue a request. Raises a ServiceError (never blocks) if it cannot be accepted. `checked`: the caller
        already passed check_request for it and check_admission for a group of requests that includes it."""
        if self.dead_reason is not None:
            raise EngineDeadError(f"The engine is not running: {self.dead_reason}")
        if self.draining:
            raise ShuttingDownError("The server is shutting down and accepts no new requests.")
        if not checked:
            self.check_request(prompt_token_ids, params)
            self.check_admission(1, len(prompt_token_ids))

        rid = request_id or self.new_request_id()
        request = Request(rid, list(prompt_token_ids), params, eos_token_ids=self.eos_token_ids,
                          priority=priority, want_prompt_logprobs=want_prompt_logprobs)
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        if deadline is not None and deadline < self._next_deadline:
            self._next_deadline = deadline
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RequestResult] = loop.create_future()
        future.add_done_callback(_retrieve_exception)
        out_stream = OutputStream() if stream else None
        live = LiveRequest(
            request=request,
            future=future,
            stream=out_stream,
            detok=self.tokenizer.detokenizer(request.prompt_token_ids, params.skip_special_tokens),
            stops=StopStringMatcher(params.stop, params.include_stop_str_in_output) if params.stop else None,
            deadline=deadline,
            logprobs=[] if params.logprobs is not None else None,
        )
        self.scheduler.add_request(request)
        self.outputs.add(live)
        self._wake.set()
        return RequestHandle(rid, future, out_stream, request)

    def check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise a BadRequestError if this request could never run here, whatever the load: an empty prompt, a
        token id outside the vocabulary (prompt, logit_bias, stop_token_ids: the sampler indexes logits with
        them), or more tokens than the context or the whole KV cache holds."""
        if not prompt_token_ids:
            raise BadRequestError("The prompt is empty.", param="prompt")
        vocab = self.runner.vocab_size
        if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= vocab:
            _refuse_token_id(prompt_token_ids, vocab, "prompt")
        if params.logit_bias:
            _refuse_token_id([t for t, _ in params.logit_bias], vocab, "logit_bias")
        if params.stop_token_ids:
            _refuse_token_id(params.stop_token_ids, vocab, "stop_token_ids")
        self.scheduler.check_fits(len(prompt_token_ids), params.max_tokens)

    def check_admission(self, num_requests: int, num_prompt_tokens: int) -> None:
        """Raise OverloadedError (429) unless `num_requests` new requests holding `num_prompt_tokens` prompt
        tokens in all (one HTTP request's prompts and choices) fit under the queue limits. Whatever its size, a
        request is admitted when nothing is waiting, so no request is refused forever."""
        cfg = self.config.scheduler
        waiting = self.scheduler.num_waiting
        if waiting == 0:
            return
        this = f" and this request adds {num_requests}" if num_requests > 1 else ""
        # Rejections are counted where the 429 is answered (the HTTP error middleware).
        if cfg.max_queued_requests is not None and waiting + num_requests > cfg.max_queued_requests:
            raise OverloadedError(
                f"The server is overloaded: {waiting} requests are already waiting{this} "
                f"(limit {cfg.max_queued_requests}). Retry later."
            )
        if cfg.max_queued_tokens is not None and (
            self.scheduler.num_waiting_tokens + num_prompt_tokens > cfg.max_queued_tokens
        ):
            raise OverloadedError(
                f"The server is overloaded: {self.scheduler.num_waiting_tokens} prompt tokens are already "
                f"waiting and this request adds {num_prompt_tokens} (limit {cfg.max_queued_tokens}). Retry later."
            )

    def record_rejection(self, reason: str) -> None:
        """Count a request refused before it ran (overloaded, invalid, timeout)."""
        self.stats.count_rejected(reason)

    def abort(self, request_id: str) -> bool:
        """End a request now. Its blocks are freed; the runner forgets it at the next step."""
        if request_id not in self.outputs.live:
            return False
        self.scheduler.finish_request(request_id, RequestStatus.FINISHED_ABORTED)
        self.outputs.finish(request_id)
        return True

    # ---- the batch loop ------------------------------------------------------------------------------------
    async def _run(self) -> None:
        """Overlapped loop: as soon as step k returns, its bookkeeping is applied and step k+1 is scheduled and
        submitted; only then are k's outputs detokenized and streamed, while k+1 runs. A request that a stop
        string ends during that window is still computed in k+1, and that result is dropped."""
        in_flight: _InFlight | None = None
        while True:
            try:
                self.last_heartbeat = time.monotonic()
                if in_flight is None:
                    if not self.scheduler.has_unfinished():
                        await wait_for_wake(self._wake, 1.0)  # wakes on a new request; ticks the heartbeat
                        continue
                    await self._gather_batch()
                    self._expire_deadlines()
                    in_flight = self._submit(self.scheduler.schedule())
                    if in_flight is None:
                        # Nothing could be scheduled (waiting for room a finishing request will make).
                        await wait_for_wake(self._wake, 0.01)
                    continue
                step, in_flight = in_flight, None
                try:
                    out = await step.future
                except Exception as exc:  # noqa: BLE001 -- any model error fails this step, not the server
                    self.step_in_flight_since = None
                    self._on_step_failure(step.sched, exc)
                    continue
                self._consecutive_failures = 0
                self.scheduler.update_from_output(step.sched, out)
                self._record_step(step.sched, out, out.finished_at - step.submitted_at)
                if self.dead_reason is not None:
                    return
                processed = not self.config.scheduler.overlap_output_processing
                if processed:
                    self.outputs.process(out)
                self._expire_deadlines()
                if self.scheduler.has_unfinished():
                    in_flight = self._submit(self.scheduler.schedule())
                if in_flight is not None:
                    self.stats.record_gap(in_flight.submitted_at - out.finished_at)
                else:
                    self.step_in_flight_since = None
                if not processed:
                    self.outputs.process(out)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("engine loop error", error=str(exc))
                self.fail_all(EngineStepError(f"Internal engine error: {exc}"))
                self.block_manager.drop_prefix_cache()  # a step may have been scheduled and never run
                self._consecutive_failures += 1
                if self._consecutive_failures >= self.config.max_consecutive_step_failures:
                    self._declare_dead(f"repeated internal errors, last: {exc}")
                    return

    def _submit(self, sched: SchedulerOutput) -> _InFlight | None:
        """Hand a step to the executor thread; None if the step is empty or the executor is gone."""
        if sched.is_empty:
            return None
        now = time.monotonic()
        try:
            future = self._executor.submit(self.runner.execute, sched)
        except RuntimeError as exc:  # the executor refuses work: it has been shut down
            for request in self.scheduler.fail_step(sched):
                self.outputs.finish(request.request_id, error=EngineDeadError(str(exc)))
            self._declare_dead(f"the model executor is gone ({exc})")
            return None
        self.step_in_flight_since = now
        return _InFlight(sched, future, now)

    async def _gather_batch(self) -> None:
        """MAX-serve-style batch timeout: when idle and few requests wait, wait a little for more."""
        cfg = self.config.scheduler
        if cfg.batch_wait_timeout_s <= 0 or self.scheduler.num_running > 0:
            return
        await wait_until(self._wake, lambda: self.scheduler.num_waiting >= cfg.batch_wait_min_requests,
                         time.monotonic() + cfg.batch_wait_timeout_s)

    def _record_step(self, sched: SchedulerOutput, out: ModelRunnerOutput, elapsed: float) -> None:
        s = self.stats
        s.steps += 1
        self._debug_window.add(sched, elapsed)
        if self._debug_window.due():
            # At most one debug line per second, summarising the steps since the last one: readable at any load.
            log.debug("engine steps", **self._debug_window.flush(), running=self.scheduler.num_running,
                      waiting=self.scheduler.num_waiting, kv_usage=round(self.block_manager.usage, 3))
        s.last_step_time_s = elapsed
        s.last_step_tokens = sched.num_batched_tokens
        s.last_step_batch_size = len(sched.chunks)
        s.generation_tokens += len(out.sampled_token_ids)
        for hook in self.on_step:
            hook(sched, out, elapsed)

    def _on_step_failure(self, sched: SchedulerOutput, exc: BaseException) -> None:
        self.stats.step_failures += 1
        self._consecutive_failures += 1
        log.error("model step failed", error=repr(exc), requests=len(sched.chunks),
                  consecutive=self._consecutive_failures)
        error = EngineStepError(f"The model step failed: {type(exc).__name__}: {exc}")
        for request in self.scheduler.fail_step(sched):
            self.outputs.finish(request.request_id, error=error)
        self.block_manager.drop_prefix_cache()  # the step registered blocks it never wrote
        if self._consecutive_failures >= self.config.max_consecutive_step_failures:
            self._declare_dead(f"{self._consecutive_failures} consecutive model steps failed, last: {exc!r}")

    def _declare_dead(self, reason: str) -> None:
        log.error("engine is dead", reason=reason)
        self.dead_reason = reason
        self.fail_all(EngineDeadError(f"The engine stopped: {reason}"))

    def fail_all(self, error: ServiceError) -> None:
        """End every live request with `error` (shutdown, dead engine)."""
        for rid in list(self.outputs.live):
            self.scheduler.finish_request(rid, RequestStatus.FINISHED_ERROR)
            self.outputs.finish(rid, error=error)

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        if now < self._next_deadline:
            return  # the common case, checked every step: no deadline can have passed yet
        expired = [rid for rid, live in self.outputs.live.items()
                   if live.deadline is not None and live.deadline <= now]
        self._next_deadline = min((live.deadline for live in self.outputs.live.values()
                                   if live.deadline is not None and live.deadline > now), default=math.inf)
        for rid in expired:
            self.scheduler.finish_request(rid, RequestStatus.FINISHED_ABORTED)
            self.stats.count_rejected("timeout")
            self.outputs.finish(rid, error=RequestTimeoutError("The request took longer than its timeout."))
