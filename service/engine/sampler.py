"""Turns a step's logits into tokens, one row per sampling request, vectorised over the batch.

Every parameter is per row, so requests with different settings share a step. Sampling is batch-invariant:
a row's token depends only on its own logits and its own random stream. Masks are applied in vocabulary order
and the random draw is an exponential race (argmax of p / E, E ~ Exp(1), which picks i with probability p_i),
whose noise comes from the request's own generator when it has a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from service.engine.outputs import TokenLogprobs
from service.engine.sampling_params import SamplingParams


@dataclass
class SamplingState:
    """What the sampler needs to remember about one request between steps."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    stop_ids: frozenset[int] = frozenset()  # EOS and stop_token_ids, held back until min_tokens


_U64 = (1 << 64) - 1


def mix_seed(seed: int) -> int:
    """SplitMix64's finaliser: a bijection on 64-bit values whose low 32 bits depend on every input bit."""
    z = (seed + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device, seed: int) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)

    def new_generator(self, seed: int) -> torch.Generator:
        """A generator for a request's seed (any 64-bit value). torch's CPU generator keeps only a seed's low
        32 bits, which made seeds 0, 2**32 and 2**63 draw the same; the seed is mixed first so that every bit
        counts (CUDA's generator uses all 64)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(mix_seed(seed))
        return g

    @torch.inference_mode()
    def sample(
        self, logits: torch.Tensor, states: list[SamplingState]
    ) -> tuple[list[int], list[TokenLogprobs | None]]:
        """logits: [N, V] for N requests. Returns the N tokens and, where asked, their logprobs."""
        logits = logits[:, : self.vocab_size].float()
        raw_logprobs = self._raw_logprobs(logits, states)
        logits = self._apply_processors(logits, states)
        greedy = [s.params.greedy for s in states]
        if all(greedy):
            tokens = logits.argmax(dim=-1)
        else:
            tokens = self._sample_random(logits, states, greedy)
        token_list = tokens.tolist()
        logprobs: list[TokenLogprobs | None] = [None] * len(states)
        if raw_logprobs is not None:
            for i, s in enumerate(states):
                k = s.params.logprobs
                if k is None:
                    continue
                row = raw_logprobs[i]
                top = torch.topk(row, k) if k > 0 else None
                logprobs[i] = TokenLogprobs(
                    token_id=token_list[i],
                    logprob=float(row[token_list[i]]),
                    top=tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else (),
                )
        return token_list, logprobs

    @staticmethod
    def _raw_logprobs(logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor | None:
        # The model's own distribution, before penalties and temperature, as vLLM reports by default.
        if any(s.params.logprobs is not None for s in states):
            return torch.log_softmax(logits, dim=-1)
        return None

    def _apply_processors(self, logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
        for i, s in enumerate(states):
            p = s.params
            if p.needs_penalties:
                logits[i] = apply_penalties(logits[i], s)
            if p.logit_bias:
                ids = torch.tensor([t for t, _ in p.logit_bias], device=logits.device)
                bias = torch.tensor([b for _, b in p.logit_bias], device=logits.device, dtype=logits.dtype)
                logits[i].index_add_(0, ids, bias)
            if s.stop_ids and len(s.output_token_ids) < p.min_tokens:
                logits[i, list(s.stop_ids)] = float("-inf")
        return logits

    def _sample_random(self, logits: torch.Tensor, states: list[SamplingState], greedy: list[bool]) -> torch.Tensor:
        device = logits.device
        params = [s.params for s in states]
        temps = torch.tensor([1.0 if p.greedy else p.temperature for p in params], device=device)
        scaled = logits / temps[:, None]
        top_k = [p.top_k for p in params]
        top_p = [p.top_p for p in params]
        min_p = [p.min_p for p in params]
        if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
            scaled = _mask_top_k_top_p(scaled, top_k, top_p)
        probs = torch.softmax(scaled, dim=-1)
        if any(m > 0 for m in min_p):
            mp = torch.tensor(min_p, device=device)
            probs = probs.masked_fill(probs < mp[:, None] * probs.max(dim=-1, keepdim=True).values, 0.0)
        noise = torch.ones_like(probs)
        unseeded = [i for i, s in enumerate(states) if s.generator is None and not greedy[i]]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), probs.shape[1], device=device).exponential_(
                generator=self._generator
            )
        for i, s in enumerate(states):
            if s.generator is not None and not greedy[i]:
                noise[i].exponential_(generator=s.generator)
        sampled = (probs / noise).argmax(dim=-1)
        if any(greedy):
            g = torch.tensor(greedy, device=device)
            sampled = torch.where(g, logits.argmax(dim=-1), sampled)
        return sampled


def _mask_top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Set to -inf every logit outside each row's top-k and top-p nucleus. Rows with k=0, p=1 are untouched."""
    device = logits.device
    vocab = logits.shape[1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=device)[None, :]
    # k above the vocabulary keeps it all; clamped in Python, so no k overflows the tensor's int64.
    k = torch.tensor([min(kk, vocab) if kk > 0 else vocab for kk in top_k], device=device)
    drop = ranks >= k[:, None]
    p = torch.tensor(top_p, device=device, dtype=logits.dtype)
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly before each rank; rank 0 is always kept
    drop |= before > p[:, None]
    mask = torch.zeros_like(drop).scatter_(1, order, drop)
    return logits.masked_fill(mask, float("-inf"))


# A smaller repetition penalty divides logits into float32 overflow (1e-45: every seen token's logit became inf,
# and the first such token won); at this one the order of the scaled logits is still the exact one.
MIN_REPETITION_PENALTY = 1e-6


def apply_penalties(row: torch.Tensor, state: SamplingState) -> torch.Tensor:
    """Repetition penalty over prompt and output (as HF and vLLM), presence/frequency over output (OpenAI)."""
    p = state.params
    device = row.device
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(state.prompt_token_ids) | set(state.output_token_ids)), device=device)
        if seen.numel():
            vals = row[seen]
            penalty = max(p.repetition_penalty, MIN_REPETITION_PENALTY)
            row[seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
    if state.output_token_ids and (p.presence_penalty or p.frequency_penalty):
        out = torch.tensor(state.output_token_ids, device=device)
        counts = torch.bincount(out, minlength=row.shape[0]).to(row.dtype)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
    return row
