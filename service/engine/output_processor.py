"""Loop-side life of each request after it is queued: its text (incremental detokenization, stop strings),
its stream deltas, and the one result or error that resolves its future.

    ModelRunnerOutput (sampled tokens, logprobs) ──> detokenize ──> stop strings ──> OutputStream
                                                                                └─> at the end: Future result / error

It runs once per step for every request that sampled, so the common case (a token, its text, a stream) is kept
to a few attribute reads and calls; logprobs, stop strings and prompt logprobs cost only the requests that use
them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.engine.detokenizer import Detokenizer
from service.engine.engine_stats import EngineStats
from service.engine.output_stream import OutputStream, RequestDelta, RequestResult
from service.engine.outputs import ModelRunnerOutput, TokenLogprobs
from service.engine.request import LAST_UNFINISHED, Request, RequestStatus
from service.engine.stop_strings import StopStringMatcher
from service.errors import ServiceError


@dataclass(slots=True)
class LiveRequest:
    """A request whose future has not resolved yet."""

    request: Request
    future: asyncio.Future[RequestResult]
    stream: OutputStream | None
    detok: Detokenizer
    stops: StopStringMatcher | None  # None: the request has no stop strings
    deadline: float | None
    logprobs: list[TokenLogprobs | None] | None  # None: the request did not ask for logprobs
    text: list[str] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None


_STOPPED = RequestStatus.FINISHED_STOPPED


def _stopped_by_token(request: Request) -> bool:
    """Whether the token just sampled ended the request as a stop token (the model's EOS or a stop_token_ids
    entry) whose text is to be left out (vLLM's include_stop_str_in_output=false)."""
    return not isinstance(request.stop_reason, str) and not request.sampling_params.include_stop_str_in_output


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

    def process(self, out: ModelRunnerOutput) -> None:
        """Deliver one step's results, after the scheduler applied them (update_from_output).

        A request that is no longer live (aborted, timed out) while the step ran has nothing delivered; the
        scheduler dropped its token too.
        """
        live_map = self.live
        prompt_lps = out.prompt_logprobs
        for rid, token, logprobs in zip(out.request_ids, out.sampled_token_ids, out.logprobs, strict=True):
            live = live_map.get(rid)
            if live is None:
                continue
            if live.logprobs is not None:
                live.logprobs.append(logprobs)
            request = live.request
            if request.status is _STOPPED and _stopped_by_token(request):
                text = ""  # as in vLLM: the stop token stays in token_ids and logprobs, not in the text
            else:
                text = live.detok.append_token(token)
                if text and live.stops is not None:
                    text = self._through_stops(live, text)
            prompt_lp = prompt_lps.get(rid) if prompt_lps else None
            if prompt_lp is not None:
                live.prompt_logprobs = (live.prompt_logprobs or []) + prompt_lp
            if request.status > LAST_UNFINISHED:
                self._finish_last(live, RequestDelta(text, [token], [logprobs], prompt_lp))
                continue
            live.text.append(text)
            if live.stream is not None:
                live.stream.put_token(text, token, logprobs, prompt_lp)
        if prompt_lps:
            self._deliver_unsampled_prompt_logprobs(out)

    def _deliver_unsampled_prompt_logprobs(self, out: ModelRunnerOutput) -> None:
        """Prompt logprobs of prefill chunks that sampled nothing (a long prompt, prefilled in chunks)."""
        sampled = set(out.request_ids)
        for rid, prompt_lp in out.prompt_logprobs.items():
            live = self.live.get(rid)
            if rid in sampled or live is None:
                continue
            live.prompt_logprobs = (live.prompt_logprobs or []) + prompt_lp
            if live.stream is not None:
                live.stream.put(RequestDelta(prompt_logprobs=prompt_lp))

    def _through_stops(self, live: LiveRequest, text: str) -> str:
        """Pass new text through the stop-string matcher; end the request if a stop string appears."""
        assert live.stops is not None
        request = live.request
        emit, hit = live.stops.feed(text, request.num_output_tokens >= request.sampling_params.min_tokens)
        if hit is not None:
            if not request.is_finished:
                self._stop_in_scheduler(request.request_id)
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = hit
        return emit

    def _finish_last(self, live: LiveRequest, delta: RequestDelta) -> None:
        # Release held-back bytes, then held-back text, unless a stop string already ended it (the flushed bytes
        # may themselves complete a stop string).
        request = live.request
        if not isinstance(request.stop_reason, str):
            tail = live.detok.flush()
            if tail and live.stops is not None:
                tail = self._through_stops(live, tail)
            delta.text += tail
        if not isinstance(request.stop_reason, str) and live.stops is not None:
            delta.text += live.stops.flush()
        live.text.append(delta.text)
        self.finish(request.request_id, last_delta=delta)

    def finish(self, request_id: str, *, error: ServiceError | None = None,
               last_delta: RequestDelta | None = None) -> None:
        """Resolve the request's future (and close its stream) exactly once; later calls do nothing.

        A request that ends in an error (a timeout, a failed step, the drain's deadline) is a finished request
        too: counted as "error", its prompt tokens counted, and the finish hooks (the latency metrics) see it."""
        live = self.live.pop(request_id, None)
        if live is None:
            return
        if not self.live:
            self.idle.set()
        request = live.request
        if error is not None:
            reason = "error"
        else:
            reason = request.finish_reason.value if request.finish_reason else "abort"
        result = RequestResult(
            request_id=request_id,
            text="".join(live.text),
            token_ids=list(request.output_token_ids),
            finish_reason=reason,
            stop_reason=request.stop_reason,
            num_prompt_tokens=request.num_prompt_tokens,
            num_cached_tokens=request.num_cached_tokens,
            logprobs=live.logprobs if live.logprobs is not None else [],
            prompt_logprobs=live.prompt_logprobs,
            queue_time_s=(request.first_scheduled_time - request.arrival_time)
            if request.first_scheduled_time is not None else None,
            ttft_s=(request.first_token_time - request.arrival_time) if request.first_token_time else None,
            e2e_s=time.monotonic() - request.arrival_time,
        )
        self.stats.count_finished(reason)
        self.stats.prompt_tokens += request.num_prompt_tokens
        if error is not None:
            if live.stream is not None:
                live.stream.put(RequestDelta(error=error))
            if not live.future.done():
                live.future.set_exception(error)
        else:
            delta = last_delta or RequestDelta()
            delta.finish_reason = reason
            delta.stop_reason = request.stop_reason
            if live.stream is not None:
                live.stream.put(delta)
            if not live.future.done():
                live.future.set_result(result)
        for hook in self.on_request_finished:
            hook(request, result)
