"""Other architectures than Llama: the engine's greedy tokens and their logprobs equal HF's own eager model.

Each case builds a tiny random checkpoint of one architecture family (its config class, a few kwargs that turn on
what sets it apart: sliding windows, soft-capping, attention sinks, qkv bias, q/k norms, learned positions,
mixture of experts), saved next to the tiny test model's tokenizer. Eight prompts of 1 to 30 tokens, two of
which reuse another's cached prefix blocks, run together through the engine, once with the decode mirror and
once with chunked prefill and gathered decodes on 4-token blocks. Every generated token must equal HF
`generate`'s greedy token, and its logprob HF's log-softmax.

Weights are drawn wide (std 0.5), so logits have no near-ties. The models run in float64, except the mixtures of
experts: transformers' expert kernels take no float64, so they run in float32 with a looser logprob tolerance.
Architectures whose layers compute attention themselves (Falcon, StableLM) are refused at load, before any
weight is read.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from service.__main__ import main
from service.engine.attention import UnsupportedModelError
from service.engine.factory import build_engine
from service.engine.sampling_params import SamplingParams
from tests.factories import engine_config

MAX_TOKENS = 10
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
SHAPE: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
MIXTURE = dict(num_experts_per_tok=2)

# name: (config class, kwargs beyond SHAPE, dtype)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any], str]] = {
    "mistral-sliding-window": ("MistralConfig", dict(sliding_window=7), "float64"),
    "qwen2-qkv-bias": ("Qwen2Config", {}, "float64"),
    "qwen2-window-above-layer-1": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=7,
                                                       max_window_layers=1), "float64"),
    "qwen3-qk-norm": ("Qwen3Config", dict(head_dim=32), "float64"),
    "gemma": ("GemmaConfig", dict(head_dim=16), "float64"),
    "gemma2-softcap": ("Gemma2Config", dict(head_dim=16, sliding_window=7, attn_logit_softcapping=1.0), "float64"),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=16, sliding_window=7), "float64"),
    "phi3-fused-qkv": ("Phi3Config", {}, "float64"),
    "phi-partial-rotary": ("PhiConfig", {}, "float64"),
    "gpt2-learned-positions": ("GPT2Config", dict(num_key_value_heads=None), "float64"),
    "gpt-neox": ("GPTNeoXConfig", dict(num_key_value_heads=None), "float64"),
    "opt": ("OPTConfig", dict(num_key_value_heads=None, ffn_dim=128, word_embed_proj_dim=64), "float64"),
    "olmo2": ("Olmo2Config", {}, "float64"),
    "starcoder2": ("Starcoder2Config", dict(sliding_window=None), "float64"),
    "granite": ("GraniteConfig", {}, "float64"),
    "smollm3": ("SmolLM3Config", {}, "float64"),
    "cohere": ("CohereConfig", {}, "float64"),
    "mixtral-moe": ("MixtralConfig", dict(num_local_experts=4, **MIXTURE), "float32"),
    "qwen3-moe": ("Qwen3MoeConfig", dict(num_experts=4, moe_intermediate_size=32, head_dim=16, **MIXTURE),
                  "float32"),
    "gpt-oss-sinks": ("GptOssConfig", dict(num_local_experts=4, head_dim=16, sliding_window=7, **MIXTURE),
                      "float32"),
}
ENGINES = {
    "mirror": dict(block_size=16),
    "chunked-gather": dict(block_size=4, max_num_batched_tokens=7, decode_mirror=False),
}
LOGPROB_TOLERANCE = {"float64": 1e-4, "float32": 2e-4}  # the sampler works on float32 logits


def _config(tokenizer_dir: Path, class_name: str, extra: dict[str, Any]) -> transformers.PretrainedConfig:
    tok_cfg = transformers.AutoConfig.from_pretrained(tokenizer_dir)
    kw = {**SHAPE, **extra}
    if kw["num_key_value_heads"] is None:  # multi-head attention only
        del kw["num_key_value_heads"]
    return getattr(transformers, class_name)(vocab_size=tok_cfg.vocab_size, bos_token_id=tok_cfg.bos_token_id,
                                             eos_token_id=tok_cfg.eos_token_id, pad_token_id=tok_cfg.pad_token_id,
                                             **kw)


def _copy_tokenizer(tokenizer_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)


def _checkpoint(tokenizer_dir: Path, out: Path, config: transformers.PretrainedConfig) -> Path:
    """A random checkpoint of `config` with the tiny model's tokenizer."""
    _copy_tokenizer(tokenizer_dir, out)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
            elif name.endswith("sinks"):
                p.normal_(0.0, 2.0)  # far from zero, so that leaving them out changes every softmax
    model.save_pretrained(out)
    return out


def _hf_reference(model_dir: Path, dtype: str, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    """HF's greedy tokens for each prompt, and each token's log-softmax under the raw logits."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                              attn_implementation="eager").eval()
    out = []
    for ids in prompts:
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=MAX_TOKENS,
                                 min_new_tokens=MAX_TOKENS, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 output_logits=True, return_dict_in_generate=True)
        tokens = gen.sequences[0, len(ids):].tolist()
        logprobs = [torch.log_softmax(step[0].double(), -1)[t].item() for step, t in zip(gen.logits, tokens,
                                                                                          strict=True)]
        out.append((tokens, logprobs))
    return out


async def _engine_greedy(model_dir: Path, dtype: str, prompts: list[list[int]],
                         **engine_kw: Any) -> tuple[list[tuple[list[int], list[float]]], int]:
    """Each prompt's greedy tokens and their logprobs, and how many prompt tokens the prefix cache supplied."""
    engine, _ = build_engine(engine_config(model_dir, dtype=dtype, **engine_kw))
    await engine.start()
    try:
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, logprobs=0)
        handles = []
        for ids in prompts:  # staggered, so that later prompts join a batch that is already decoding
            handles.append(engine.add_request(ids, params))
            await asyncio.sleep(0.005)
        results = [await asyncio.wait_for(h.result(), timeout=60) for h in handles]
    finally:
        await engine.stop()
    return ([(r.token_ids, [lp.logprob for lp in r.logprobs if lp is not None]) for r in results],
            sum(r.num_cached_tokens for r in results))


@pytest.fixture(scope="module")
def prompts(tiny_model_dir: Path) -> list[list[int]]:
    vocab = transformers.AutoConfig.from_pretrained(tiny_model_dir).vocab_size
    rng = random.Random(0)
    prompts = [[rng.randrange(5, vocab) for _ in range(n)] for n in (1, 3, 9, 17, 30, 5)]
    # Two more that share the 30-token prompt's first 20 tokens: they reuse its cached blocks.
    return [*prompts, prompts[4][:20] + [7, 8], prompts[4][:20] + [9]]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
async def test_engine_matches_hf_on_architecture(name, tiny_model_dir, tmp_path, prompts):
    class_name, extra, dtype = ARCHITECTURES[name]
    model_dir = _checkpoint(tiny_model_dir, tmp_path / name, _config(tiny_model_dir, class_name, extra))
    expected = _hf_reference(model_dir, dtype, prompts)
    for label, engine_kw in ENGINES.items():
        got, cached = await _engine_greedy(model_dir, dtype, prompts, **engine_kw)
        assert cached >= 16, f"{label}: the shared prefix was not served from the prefix cache"
        for i, ((tokens, logprobs), (want_tokens, want_logprobs)) in enumerate(zip(got, expected, strict=True)):
            assert tokens == want_tokens, f"{name}, {label}: prompt {i} diverged"
            assert logprobs == pytest.approx(want_logprobs, abs=LOGPROB_TOLERANCE[dtype]), f"{name}, {label}: {i}"


def _config_only(tokenizer_dir: Path, out: Path, class_name: str) -> Path:
    """A checkpoint directory with a config and a tokenizer but no weights."""
    _copy_tokenizer(tokenizer_dir, out)
    _config(tokenizer_dir, class_name, {}).save_pretrained(out)
    return out


@pytest.mark.parametrize("class_name", ["FalconConfig", "StableLmConfig"])
def test_models_that_compute_attention_themselves_are_refused_before_loading(class_name, tiny_model_dir, tmp_path):
    model_dir = _config_only(tiny_model_dir, tmp_path, class_name)  # no weights: the refusal comes first
    with pytest.raises(UnsupportedModelError, match="attention interface"):
        build_engine(engine_config(model_dir, dtype="float32"))


def test_the_server_refuses_such_a_model_with_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    _config_only(tiny_model_dir, tmp_path, "FalconConfig")
    # main() would point the process-wide structlog configuration at this test's captured stderr
    monkeypatch.setattr("service.__main__.configure_logging", lambda *_: None)
    assert main(["--model", str(tmp_path), "--port", "8999", "--embedding-model", "none"]) == 2
    assert capsys.readouterr().err.startswith("hfserve: FalconForCausalLM computes attention in its own code")
