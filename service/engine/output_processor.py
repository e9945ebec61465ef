"""Loop-side life of each request after it is queued: its text (incremental detokenization, stop strings),
its stream deltas, and the one result or error that resolves its future.

    RequestUpdate (tokens, logprobs) ──> detokenize ──> stop strings ──> OutputStream delta
                                                                     └─> at the end: Future result / error
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.engine.detokenizer import Detokenizer
from service.engine.engine_stats import EngineStats
from service.engine.output_stream import OutputStream, RequestDelta, RequestResult
from service.engine.outputs import TokenLogprobs
from service.engine.request import Request, RequestStatus
from service.engine.scheduler import RequestUpdate
from service.engine.stop_strings import StopStringMatcher
from service.errors import ServiceError


@dataclass(slots=True)
class LiveRequest:
    """A request whose future has not resolved yet."""

    request: Request
    future: asyncio.Future[RequestResult]
    stream: OutputStream | None
    detok: Detokenizer
    stops: StopStringMatcher
    deadline: float | None
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None


class OutputProcessor:
    def __init__(self, stats: EngineStats, stop_in_scheduler: Callable[[str], object]) -> None:
        self.stats = stats
        # Ends a request in the scheduler when a stop string (found here, on text) ends it.
        self._stop_in_scheduler = stop_in_scheduler
        self.live: dict[str, LiveRequest] = {}
        self.idle = asyncio.Event()  # set whenever the last live request resolves
        self.on_request_finished: list[Callable[[Request, RequestResult], None]] = []

    def add(self, live: LiveRequest) -> None:
        self.live[live.request.request_id] = live
        self.idle.clear()

    def process(self, updates: list[RequestUpdate]) -> None:
        for update in updates:
            request = update.request
            live = self.live.get(request.request_id)
            if live is None:
                continue
            text = ""
            if update.new_token_ids:
                live.logprobs.extend(update.new_logprobs)
                text = self._emit_text(live, live.detok.append(update.new_token_ids))
            delta = RequestDelta(text, update.new_token_ids, update.new_logprobs, update.prompt_logprobs)
            if update.prompt_logprobs is not None:
                live.prompt_logprobs = (live.prompt_logprobs or []) + update.prompt_logprobs
            if request.is_finished:
                # Release held-back bytes, then held-back text, unless a stop string already ended it (the
                # flushed bytes may themselves complete a stop string).
                if not isinstance(request.stop_reason, str):
                    delta.text += self._emit_text(live, live.detok.flush())
                if not isinstance(request.stop_reason, str):
                    delta.text += live.stops.flush()
                live.text.append(delta.text)
                self.finish(request.request_id, last_delta=delta)
            else:
                live.text.append(delta.text)
                if live.stream is not None and (delta.text or delta.token_ids or delta.prompt_logprobs):
                    live.stream.put(delta)

    def _emit_text(self, live: LiveRequest, text: str) -> str:
        """Pass new text through the stop-string matcher; end the request if a stop string appears."""
        if not text:
            return ""
        emit, hit = live.stops.feed(text)
        if hit is not None:
            request = live.request
            if not request.is_finished:
                self._stop_in_scheduler(request.request_id)
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = hit
        return emit

    def finish(self, request_id: str, *, error: ServiceError | None = None,
               last_delta: RequestDelta | None = None) -> None:
        """Resolve the request's future (and close its stream) exactly once; later calls do nothing."""
        live = self.live.pop(request_id, None)
        if live is None:
            return
        if not self.live:
            self.idle.set()
        request = live.request
        if error is not None:
            if live.stream is not None:
                live.stream.put(RequestDelta(error=error))
            if not live.future.done():
                live.future.set_exception(error)
            self.stats.count_finished("error")
            return
        reason = request.finish_reason.value if request.finish_reason else "abort"
        delta = last_delta or RequestDelta()
        delta.finish_reason = reason
        delta.stop_reason = request.stop_reason
        result = RequestResult(
            request_id=request_id,
            text="".join(live.text),
            token_ids=list(request.output_token_ids),
            finish_reason=reason,
            stop_reason=request.stop_reason,
            num_prompt_tokens=request.num_prompt_tokens,
            num_cached_tokens=request.num_cached_tokens,
            logprobs=live.logprobs,
            prompt_logprobs=live.prompt_logprobs,
            queue_time_s=(request.first_scheduled_time - request.arrival_time)
            if request.first_scheduled_time is not None else None,
            ttft_s=(request.first_token_time - request.arrival_time) if request.first_token_time else None,
            e2e_s=time.monotonic() - request.arrival_time,
        )
        self.stats.count_finished(reason)
        self.stats.prompt_tokens += request.num_prompt_tokens
        if live.stream is not None:
            live.stream.put(delta)
        if not live.future.done():
            live.future.set_result(result)
        for hook in self.on_request_finished:
            hook(request, result)
