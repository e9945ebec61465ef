"""Runs one step of the model: packs the scheduled chunks into a single forward over our paged KV cache,
computes logits only where a token is sampled, and samples.

Runs in the engine's single executor thread. It keeps its own copy of each live request's tokens (it appends
what it samples), so a SchedulerOutput only has to say which span of which request to compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from service.config import CacheConfig, ModelConfig, SchedulerConfig
from service.engine import attention
from service.engine.attention import AttentionMetadata, GatherDecode, MirrorDecode, PrefillSpan
from service.engine.cuda_graphs import DecodeGraphs
from service.engine.decode_mirror import DecodeKVMirror
from service.engine.kv_cache import KVCache, KVCacheSpec
from service.engine.outputs import ModelRunnerOutput, ScheduledChunk, SchedulerOutput, TokenLogprobs
from service.engine.packed_linear import pack_linear_layers, packing_supported, shared_input_groups
from service.engine.platform import configure_cuda_attention, resolve_device, resolve_dtype
from service.engine.sampler import Sampler, SamplingState

CPU_KV_CACHE_CAP_BYTES = 4 * 1024**3


@dataclass
class RunnerRequestState:
    token_ids: list[int]
    sampling: SamplingState
    block_ids: list[int] = field(default_factory=list)  # the request's block table, kept from chunk deltas
    num_prompt_logprobs: int = 0
    prompt_logprobs_done: int = 1  # position 0 never has a logprob


def decode_graph_mode(device: torch.device, model_config: ModelConfig, use_mirror: bool) -> bool | None:
    """True: replay CUDA graphs of decode steps; None: run every step eagerly. (False, the graphs' padded path
    run without capture, is what the CPU tests switch on to check that path.)"""
    if device.type == "cuda" and not model_config.enforce_eager and not use_mirror:
        return True
    return None


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_max_len(config: PretrainedConfig) -> int:
    cfg = text_config(config)
    return int(getattr(cfg, "max_position_embeddings", 2048))


class ModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        scheduler_config: SchedulerConfig,
        eos_token_ids: frozenset[int],
    ) -> None:
        attention.register()
        self.device = resolve_device(model_config.device)
        self.dtype = resolve_dtype(model_config.dtype, self.device)
        self.score_dtype = attention.score_dtype(self.dtype)  # of attention scores and their masks
        if self.device.type == "cuda":
            configure_cuda_attention()
        torch.manual_seed(model_config.seed)
        path = Path(model_config.model)
        hf_config = AutoConfig.from_pretrained(path)
        attention.require_attention_interface(hf_config)
        self.max_model_len = min(model_config.max_model_len or model_max_len(hf_config), model_max_len(hf_config))
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=self.dtype, attn_implementation=attention.ATTENTION_NAME
        )
        self.model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()
        use_packing = model_config.packed_linear
        if use_packing is None:
            use_packing = packing_supported(self.device, self.dtype)
        self.num_packed_linear = (pack_linear_layers(self.model, shared_input_groups(self.model)) if use_packing
                                  else 0)
        cfg = text_config(self.model.config)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        spec = KVCacheSpec(
            num_layers=cfg.num_hidden_layers,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        self.block_size = cache_config.block_size
        self.num_blocks = self._num_blocks(spec, cache_config, scheduler_config)
        use_mirror = cache_config.decode_mirror
        if use_mirror is None:
            use_mirror = self.device.type == "cpu"
        graph_mode = decode_graph_mode(self.device, model_config, use_mirror)
        # With graphs, one more block than the block manager hands out: padding rows write there.
        self.kv_cache = KVCache(spec, self.num_blocks + (graph_mode is not None), self.block_size)
        # Never let the mirror grow past the paged cache's own size.
        self.mirror = DecodeKVMirror(spec, scheduler_config.max_num_seqs, self.max_model_len,
                                     memory_limit_bytes=self.kv_cache.nbytes) if use_mirror else None
        self.vocab_size = int(cfg.vocab_size)
        self.sampler = Sampler(self.vocab_size, self.device, model_config.seed)
        self.eos_token_ids = eos_token_ids
        self._states: dict[str, RunnerRequestState] = {}
        self.decode_graphs: DecodeGraphs | None = None
        if graph_mode is not None:
            with torch.inference_mode():
                graphs = DecodeGraphs(
                    self.model, self.kv_cache, scratch_block=self.num_blocks,
                    max_blocks=-(-self.max_model_len // self.block_size), max_batch=scheduler_config.max_num_seqs,
                    score_dtype=self.score_dtype, capture=graph_mode)
                if not graph_mode or graphs.capture_all():
                    self.decode_graphs = graphs

    def _num_blocks(self, spec: KVCacheSpec, cache: CacheConfig, sched: SchedulerConfig) -> int:
        if cache.num_gpu_blocks_override is not None:
            return cache.num_gpu_blocks_override
        per_block = spec.bytes_per_token * self.block_size
        if cache.kv_cache_memory_bytes is not None:
            budget = cache.kv_cache_memory_bytes
        elif self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * 0.8)
        else:
            want = sched.max_num_seqs * self.max_model_len * spec.bytes_per_token
            budget = min(want, CPU_KV_CACHE_CAP_BYTES)
        return max(budget // per_block, -(-self.max_model_len // self.block_size))

    @property
    def num_live_states(self) -> int:
        return len(self._states)

    # ---- the step ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        t0 = time.perf_counter()
        for rid in sched.finished_request_ids:
            self._states.pop(rid, None)
        if self.mirror is not None:
            for rid in sched.finished_request_ids + sched.preempted_request_ids:
                self.mirror.release(rid)
        for new in sched.new_requests:
            gen = None
            if new.sampling_params.seed is not None:
                gen = self.sampler.new_generator(new.sampling_params.seed)
            stop_ids = frozenset(new.sampling_params.stop_token_ids)
            if not new.sampling_params.ignore_eos:
                stop_ids |= self.eos_token_ids
            self._states[new.request_id] = RunnerRequestState(
                token_ids=list(new.token_ids),
                sampling=SamplingState(new.sampling_params, list(new.token_ids), generator=gen, stop_ids=stop_ids),
                num_prompt_logprobs=new.num_prompt_logprobs,
            )
        if sched.is_empty:
            return ModelRunnerOutput(sched.step_id, (), (), (), {}, time.perf_counter() - t0)
        for c in sched.chunks:
            st = self._states[c.request_id]
            if c.reset_blocks:
                st.block_ids = list(c.new_block_ids)
            elif c.new_block_ids:
                st.block_ids.extend(c.new_block_ids)

        graphed = self._graph_decode(sched) if self.decode_graphs is not None else None
        if graphed is not None:
            sample_logits, sample_ids = graphed
            prompt_logprobs: dict[str, list[TokenLogprobs | None]] = {}
        else:
            batch = self._prepare(sched.chunks)
            out = self.model(
                input_ids=batch.input_ids,
                position_ids=batch.positions,
                use_cache=False,
                logits_to_keep=batch.logits_indices,
                paged_metadata=batch.attn,
            )
            logits = out.logits[0]
            prompt_logprobs = self._prompt_logprobs(batch, logits)
            sample_logits = logits[batch.sample_rows] if batch.prompt_lp_rows else logits
            sample_ids = batch.sample_request_ids
        states = [self._states[rid].sampling for rid in sample_ids]
        tokens, logprobs = self.sampler.sample(sample_logits, states)
        for rid, tok in zip(sample_ids, tokens, strict=True):
            st = self._states[rid]
            st.token_ids.append(tok)
            st.sampling.output_token_ids.append(tok)
        return ModelRunnerOutput(
            step_id=sched.step_id,
            request_ids=tuple(sample_ids),
            sampled_token_ids=tuple(tokens),
            logprobs=tuple(logprobs),
            prompt_logprobs=prompt_logprobs,
            execute_time_s=time.perf_counter() - t0,
        )

    def _graph_decode(self, sched: SchedulerOutput) -> tuple[torch.Tensor, list[str]] | None:
        """Logits and request ids of a pure-decode step replayed from a graph; None if it is not one."""
        graphs = self.decode_graphs
        assert graphs is not None
        chunks = sched.chunks
        if sched.num_batched_tokens != len(chunks):  # a chunk of more than one token (a prefill) is in the step
            return None
        bs = self.block_size
        tokens, positions, slots, tables, ids = [], [], [], [], []
        for c in chunks:
            if not c.sample:  # a lone token cut out of a longer prompt: a prefill chunk, eager
                return None
            st = self._states[c.request_id]
            tokens.append(st.token_ids[c.start])
            positions.append(c.start)
            slots.append(st.block_ids[c.start // bs] * bs + c.start % bs)
            tables.append(st.block_ids)
            ids.append(c.request_id)
        bucket = graphs.bucket(len(chunks), max(positions) // bs + 1)
        if bucket is None:
            return None
        return graphs.run(bucket, tokens, positions, slots, tables), ids

    def _prepare(self, chunks: tuple[ScheduledChunk, ...]) -> _Batch:
        bs = self.block_size
        dev = self.device
        # A decode is one token that ends the request's known tokens; a lone token cut out of a longer prompt
        # by the budget is a (tiny) prefill chunk instead.
        decodes = [c for c in chunks if c.num_tokens == 1 and c.sample]
        prefills = [c for c in chunks if not (c.num_tokens == 1 and c.sample)]
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        keep: list[int] = []
        sample_ids: list[str] = []
        sample_rows: list[int] = []
        prompt_lp_rows: dict[str, tuple[int, int, int]] = {}  # rid -> (first row, first position, count)

        decodes, decode_meta = self._decode_metadata(decodes)
        for i, c in enumerate(decodes):
            st = self._states[c.request_id]
            input_ids.append(st.token_ids[c.start])
            positions.append(c.start)
            slots.append(st.block_ids[c.start // bs] * bs + c.start % bs)
            if c.sample:
                keep.append(i)
                sample_ids.append(c.request_id)
        meta = AttentionMetadata(self.kv_cache, torch.empty(0), num_decodes=len(decodes), decode=decode_meta)
        for c in prefills:
            st = self._states[c.request_id]
            start_tok = len(input_ids)
            end = c.start + c.num_tokens
            input_ids.extend(st.token_ids[c.start : end])
            positions.extend(range(c.start, end))
            table = st.block_ids
            for p in range(c.start, end):
                slots.append(table[p // bs] * bs + p % bs)
            span = PrefillSpan(start_tok, len(input_ids), c.start)
            if c.start > 0:
                span.block_ids = torch.tensor(table[: -(-end // bs)], dtype=torch.long, device=dev)
            meta.prefills.append(span)
            # Prompt logprobs: position p's logits give the logprob of token p + 1.
            lo = max(c.start, st.prompt_logprobs_done - 1)
            hi = min(end, st.num_prompt_logprobs - 1)
            if hi > lo:
                prompt_lp_rows[c.request_id] = (len(keep), lo, hi - lo)
                keep.extend(range(start_tok + lo - c.start, start_tok + hi - c.start))
            if c.sample:
                keep.append(len(input_ids) - 1)
                sample_ids.append(c.request_id)
        if prompt_lp_rows:
            # Rows of `keep` that are sampling rows (the rest are prompt-logprob rows).
            lp_rows = {r for first, _, n in prompt_lp_rows.values() for r in range(first, first + n)}
            sample_rows = [i for i in range(len(keep)) if i not in lp_rows]
        meta.slot_mapping = torch.tensor(slots, dtype=torch.long, device=dev)
        return _Batch(
            input_ids=torch.tensor([input_ids], dtype=torch.long, device=dev),
            positions=torch.tensor([positions], dtype=torch.long, device=dev),
            logits_indices=torch.tensor(keep, dtype=torch.long, device=dev),
            attn=meta,
            sample_request_ids=sample_ids,
            sample_rows=sample_rows,
            prompt_lp_rows=prompt_lp_rows,
        )

    def _decode_metadata(
        self, decodes: list[ScheduledChunk]
    ) -> tuple[list[ScheduledChunk], MirrorDecode | GatherDecode | None]:
        """How this step's decodes read their context; may reorder them (mirror rows)."""
        if not decodes:
            return decodes, None
        bs, dev = self.block_size, self.device
        longest = max(c.start + 1 for c in decodes)
        length = -(-longest // bs) * bs
        mirror = self.mirror
        if mirror is not None:
            new = [c for c in decodes if c.request_id not in mirror.rows]
            if mirror.ensure_capacity(mirror.num_rows + len(new), length):
                fills = [todo for c in new
                         if (todo := mirror.assign(c.request_id, self.kv_cache, self._states[c.request_id].block_ids,
                                                   c.start)) is not None]
                decodes = sorted(decodes, key=lambda c: mirror.rows[c.request_id])
                rows = [mirror.rows[c.request_id] for c in decodes]
                for c, row in zip(decodes, rows, strict=True):
                    mirror.set_length(row, c.start + 1)
                # Rows not decoding this step (rare) are computed and discarded; any valid length will do.
                lens = [min(mirror.length(r), length) for r in range(mirror.num_rows)]
                lens_t = torch.tensor(lens, dtype=torch.long, device=dev)
                aligned = rows == list(range(mirror.num_rows))
                return decodes, MirrorDecode(
                    mirror=mirror,
                    num_rows=mirror.num_rows,
                    length=length,
                    write_index=mirror.flat_index(rows, [c.start for c in decodes]),
                    context_lens=lens_t,
                    mask=attention.decode_length_mask(lens_t, length, self.score_dtype),
                    rows=None if aligned else torch.tensor(rows, dtype=torch.long, device=dev),
                    fills=fills,
                )
            mirror.clear()  # over its memory limit: gather this step, refill rows later
        nblk = length // bs
        tables = [self._states[c.request_id].block_ids for c in decodes]
        table = [t[:nblk] + [0] * (nblk - min(nblk, len(t))) for t in tables]
        lens_t = torch.tensor([c.start + 1 for c in decodes], dtype=torch.long, device=dev)
        return decodes, GatherDecode(
            block_ids=torch.tensor(table, dtype=torch.long, device=dev),
            context_lens=lens_t,
            mask=attention.decode_length_mask(lens_t, length, self.score_dtype),
        )

    def _prompt_logprobs(self, batch: _Batch, logits: torch.Tensor) -> dict[str, list[TokenLogprobs | None]]:
        result: dict[str, list[TokenLogprobs | None]] = {}
        for rid, (first, pos, n) in batch.prompt_lp_rows.items():
            st = self._states[rid]
            k = st.sampling.params.logprobs or 0
            lp = torch.log_softmax(logits[first : first + n, : self.vocab_size].float(), dim=-1)
            targets = st.token_ids[pos + 1 : pos + 1 + n]
            chosen = lp[torch.arange(n), torch.tensor(targets)].tolist()
            top = torch.topk(lp, k) if k > 0 else None
            entries: list[TokenLogprobs | None] = [None] if pos == 0 else []
            for j in range(n):
                alts = tuple(zip(top.indices[j].tolist(), top.values[j].tolist(), strict=True)) if top else ()
                entries.append(TokenLogprobs(targets[j], chosen[j], alts))
            st.prompt_logprobs_done = pos + 1 + n
            result[rid] = entries
        return result


@dataclass
class _Batch:
    input_ids: torch.Tensor
    positions: torch.Tensor
    logits_indices: torch.Tensor
    attn: AttentionMetadata
    sample_request_ids: list[str]
    sample_rows: list[int]
    prompt_lp_rows: dict[str, tuple[int, int, int]]
