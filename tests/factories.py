"""Builders shared by the tests: requests, schedulers, fake runners, engines and apps."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, ServerConfig
from service.engine.block_manager import BlockManager
from service.engine.outputs import ModelRunnerOutput, SchedulerOutput
from service.engine.request import Request
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import Scheduler

_ids = itertools.count()


def make_request(num_prompt: int = 8, max_tokens: int = 4, *, prompt: list[int] | None = None,
                 eos: frozenset[int] = frozenset(), priority: int = 0, arrival: float | None = None,
                 **params: object) -> Request:
    tokens = prompt if prompt is not None else [(i * 7 + 3) % 50 + 10 for i in range(num_prompt)]
    req = Request(f"r{next(_ids)}", list(tokens), SamplingParams(max_tokens=max_tokens, **params),  # type: ignore[arg-type]
                  eos_token_ids=eos, priority=priority)
    if arrival is not None:
        req.arrival_time = arrival
    return req


def make_scheduler(num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8,
                   max_num_batched_tokens: int = 64, max_model_len: int = 256, policy: str = "fcfs",
                   prefix_caching: bool = False, aging_s: float = 5.0) -> Scheduler:
    bm = BlockManager(num_blocks, block_size, enable_prefix_caching=prefix_caching)
    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                          policy=policy, priority_aging_s=aging_s)
    return Scheduler(cfg, bm, max_model_len)


def runner_output(sched: SchedulerOutput, token: int | dict[str, int] = 1) -> ModelRunnerOutput:
    """A hand-built runner output: every sampling chunk gets `token` (or its entry in a dict)."""
    ids = tuple(c.request_id for c in sched.chunks if c.sample)
    toks = tuple(token[r] if isinstance(token, dict) else token for r in ids)
    return ModelRunnerOutput(sched.step_id, ids, toks, tuple(None for _ in ids), {})


@dataclass
class FakeRunner:
    """Stands in for ModelRunner: token = (previous token + 1) % vocab. Can be slowed or made to fail."""

    max_model_len: int = 512
    num_blocks: int = 256
    block_size: int = 4
    vocab_size: int = 1000
    step_delay_s: float = 0.0
    fail_steps: set[int] = field(default_factory=set)  # step ids that raise
    calls: int = 0
    seen: list[SchedulerOutput] = field(default_factory=list)
    _last: dict[str, int] = field(default_factory=dict)
    thread_names: set[str] = field(default_factory=set)

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self.calls += 1
        self.seen.append(sched)
        self.thread_names.add(threading.current_thread().name)
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        if sched.step_id in self.fail_steps:
            raise RuntimeError(f"injected failure in step {sched.step_id}")
        for new in sched.new_requests:
            self._last[new.request_id] = new.token_ids[-1]
        ids, toks = [], []
        for c in sched.chunks:
            if c.sample:
                tok = (self._last[c.request_id] + 1) % self.vocab_size
                self._last[c.request_id] = tok
                ids.append(c.request_id)
                toks.append(tok)
        return ModelRunnerOutput(sched.step_id, tuple(ids), tuple(toks), tuple(None for _ in ids), {})


class CharTokenizer:
    """Token id t decodes to chr(t) for printable ids; enough for engine tests without a real vocabulary."""

    def detokenizer(self, prompt_ids: list[int], skip_special_tokens: bool = True) -> _CharDetok:
        return _CharDetok()


class _CharDetok:
    def append(self, token_ids: list[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def append_token(self, token_id: int) -> str:
        return chr(token_id)

    def flush(self) -> str:
        return ""


def engine_config(model: str | Path = "unused", *, dtype: str = "float32", block_size: int = 4,
                  num_blocks: int | None = None, max_num_seqs: int = 16, max_num_batched_tokens: int = 512,
                  prefix_caching: bool = True, decode_mirror: bool | None = None,
                  max_model_len: int | None = None, device: str = "cpu", enforce_eager: bool = False,
                  **sched: object) -> EngineConfig:
    return EngineConfig(
        model=ModelConfig(model=str(model), dtype=dtype, device=device, max_model_len=max_model_len,
                          enforce_eager=enforce_eager),
        cache=CacheConfig(block_size=block_size, num_gpu_blocks_override=num_blocks,
                          enable_prefix_caching=prefix_caching, decode_mirror=decode_mirror),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                  **sched),  # type: ignore[arg-type]
    )


def server_config(**kw: object) -> ServerConfig:
    return ServerConfig(**kw)  # type: ignore[arg-type]
