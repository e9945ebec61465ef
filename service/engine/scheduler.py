"""Token-budget scheduler in the spirit of vLLM v1.

Each step hands out at most `max_num_batched_tokens` tokens:
  1. running requests first, in admission order: one token for a decode, or the next chunk of an unfinished
     prefill. If the KV cache has no room, the youngest running request (or, under the priority policy, the
     least urgent) is preempted by recompute: its blocks are freed and it goes back to the head of the queue;
  2. then waiting requests, by queue order, while the budget, `max_num_seqs` and the free blocks allow.
     A prompt larger than what is left of the budget is prefilled in chunks over several steps.

There are no phases: a request has `num_tokens` and `num_computed_tokens`, and every step closes some of the
gap. Plain Python, no torch, so it is tested with hand-built runner outputs.
"""

from __future__ import annotations

import itertools
import time

from service.config import SchedulerConfig
from service.engine.block_manager import BlockManager
from service.engine.outputs import ModelRunnerOutput, NewRequestData, ScheduledChunk, SchedulerOutput
from service.engine.request import Request, RequestStatus
from service.engine.request_queue import PriorityQueue, make_queue
from service.errors import BadRequestError, ContextLengthExceededError


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager, max_model_len: int) -> None:
        self.config = config
        self.block_manager = block_manager
        self.max_model_len = max_model_len
        self.waiting = make_queue(config.policy, config.priority_aging_s)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_waiting_tokens = 0
        self.num_preemptions_total = 0
        self._finished_since_last_step: list[str] = []
        self._step_ids = itertools.count()
        self._admission_ids = itertools.count()

    # ---- admission -----------------------------------------------------------------------------------------
    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Raise if a request of this shape could never run, whatever else is happening."""
        total = num_prompt_tokens + max_tokens
        if total > self.max_model_len:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{total} tokens ({num_prompt_tokens} in the prompt, {max_tokens} for the completion). "
                "Please reduce the length of the prompt or max_tokens.",
                # The prompt alone leaves no room for a single token: no max_tokens would help.
                param="prompt" if num_prompt_tokens >= self.max_model_len else "max_tokens",
            )
        blocks = self.block_manager.blocks_needed(total)
        if blocks > self.block_manager.num_blocks:
            raise BadRequestError(
                f"The request needs {total} tokens of KV cache, but the whole cache holds "
                f"{self.block_manager.num_blocks * self.block_manager.block_size}. "
                "Reduce the prompt or max_tokens.",
                param="max_tokens",
            )

    def add_request(self, request: Request) -> None:
        self.check_fits(request.num_prompt_tokens, request.sampling_params.max_tokens)
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request id {request.request_id}")
        self.requests[request.request_id] = request
        request.status = RequestStatus.WAITING
        self.waiting.push(request)
        self.num_waiting_tokens += request.num_tokens

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    # ---- ending requests -----------------------------------------------------------------------------------
    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        """End a request (abort, stop string, deadline, error) between steps. Idempotent."""
        assert status.is_finished
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif self.waiting.remove(request):
            self.num_waiting_tokens -= request.num_tokens
        self._end(request, status)
        return request

    def _end(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        request.finished_time = time.monotonic()
        self.block_manager.free(request.request_id)
        self._finished_since_last_step.append(request.request_id)

    # ---- scheduling ----------------------------------------------------------------------------------------
    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.block_manager.free(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.push_front(request)
        self.num_waiting_tokens += request.num_tokens

    def _pick_victim(self) -> Request:
        if isinstance(self.waiting, PriorityQueue):
            key = self.waiting.key
            return max(self.running, key=lambda r: (key(r), r.admission_seq))
        return self.running[-1]

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        new_requests: list[NewRequestData] = []
        preempted: list[str] = []
        scheduled: set[str] = set()
        bm = self.block_manager
        running_status = RequestStatus.RUNNING

        # 1. Running requests: decodes and the rest of chunked prefills. Once per running request per step, so
        # the methods it calls are bound to locals.
        bs = bm.block_size
        grow, add_chunk, mark_scheduled = bm.grow, chunks.append, scheduled.add
        for request in list(self.running):
            if budget <= 0:
                break
            if request.status != running_status:
                continue  # preempted earlier in this loop
            computed = request.num_computed_tokens
            num_tokens = len(request.prompt_token_ids) + len(request.output_token_ids)
            n = num_tokens - computed
            if n > budget:
                n = budget
            elif n <= 0:
                continue
            while (new_blocks := grow(request, computed + n)) is None:
                victim = self._pick_victim()
                if victim.request_id in scheduled:
                    victim = request  # never take back what this step already scheduled
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            if new_blocks is None:
                continue
            if (computed + n) // bs != computed // bs:
                bm.cache_full_blocks(request, computed + n)  # a block filled up
            add_chunk(ScheduledChunk(request.request_id, computed, n, new_blocks, False, computed + n == num_tokens))
            mark_scheduled(request.request_id)
            budget -= n

        # 2. Waiting requests, unless this step had to preempt (there is no room to grow).
        now = time.monotonic()
        while not preempted and budget > 0 and len(self.waiting) > 0:
            if len(self.running) >= self.config.max_num_seqs:
                break
            request = self.waiting.peek()
            hits = []
            # Prompt logprobs need the logits of every prompt position, so such a request computes them all.
            if request.num_computed_tokens == 0 and not request.want_prompt_logprobs:
                hits = bm.find_cached_prefix(request)
            num_cached = len(hits) * bm.block_size
            num_tokens = request.num_tokens
            n = min(num_tokens - num_cached, budget)
            if not bm.allocate(request, num_cached + n, hits):
                break
            bm.record_prefix_lookup(num_tokens, len(hits))
            self.waiting.pop()
            self.num_waiting_tokens -= num_tokens
            request.num_computed_tokens = num_cached
            if request.first_scheduled_time is None:
                request.first_scheduled_time = now
                request.num_cached_tokens = num_cached
                new_requests.append(
                    NewRequestData(request.request_id, tuple(request.prompt_token_ids), request.sampling_params,
                                   self._prompt_logprobs_wanted(request))
                )
            request.status = running_status
            request.admission_seq = next(self._admission_ids)
            self.running.append(request)
            bm.cache_full_blocks(request, num_cached + n)
            # A (re-)admitted request starts a fresh block table in the runner.
            chunks.append(ScheduledChunk(request.request_id, num_cached, n, tuple(bm.block_ids(request.request_id)),
                                         True, num_cached + n == num_tokens))
            scheduled.add(request.request_id)
            budget -= n

        # Ended requests are reported with the next real step (an empty step never reaches the runner).
        finished: tuple[str, ...] = ()
        if chunks:
            finished = tuple(self._finished_since_last_step)
            self._finished_since_last_step.clear()
        return SchedulerOutput(
            step_id=next(self._step_ids),
            new_requests=tuple(new_requests),
            chunks=tuple(chunks),
            finished_request_ids=finished,
            preempted_request_ids=tuple(preempted),
            num_batched_tokens=self.config.max_num_batched_tokens - budget,
        )

    @staticmethod
    def _prompt_logprobs_wanted(request: Request) -> int:
        return request.num_prompt_tokens if request.want_prompt_logprobs else 0

    # ---- applying a step's results -------------------------------------------------------------------------
    def update_from_output(self, sched: SchedulerOutput, out: ModelRunnerOutput) -> None:
        """Apply a step: advance each chunk's computed tokens, append sampled tokens, end what must stop.

        Requests that ended while the step ran (aborted) are skipped: their results are dropped. The output
        processor then reads the same ModelRunnerOutput for text and streams.
        """
        requests = self.requests
        running_status = RequestStatus.RUNNING
        for chunk in sched.chunks:
            request = requests.get(chunk.request_id)
            if request is not None and request.status == running_status:
                request.num_computed_tokens += chunk.num_tokens
        now = time.monotonic()
        any_finished = False
        for rid, token in zip(out.request_ids, out.sampled_token_ids, strict=True):
            request = requests.get(rid)
            if request is None or request.status != running_status:
                continue
            request.append_output_token(token, now)
            status = self._check_stop(request, token)
            if status is not None:
                del requests[rid]
                self._end(request, status)
                any_finished = True
        if any_finished:
            self.running = [r for r in self.running if r.status == running_status]

    def _check_stop(self, request: Request, token: int) -> RequestStatus | None:
        params = request.sampling_params
        n_out = len(request.output_token_ids)
        if n_out >= params.min_tokens:
            if not params.ignore_eos and token in request.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED  # the model's own end: stop_reason stays None, as in vLLM
            if token in params.stop_token_ids:
                request.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
        if n_out >= params.max_tokens or len(request.prompt_token_ids) + n_out >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def fail_step(self, sched: SchedulerOutput) -> list[Request]:
        """End every live request of a failed step with FINISHED_ERROR; returns them."""
        failed = []
        for chunk in sched.chunks:
            request = self.finish_request(chunk.request_id, RequestStatus.FINISHED_ERROR)
            if request is not None:
                failed.append(request)
        return failed
