from __future__ import annotations

import hashlib

from service.model_builder import build


def digest(path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir()) if f.is_file()}


def test_the_build_is_deterministic(tmp_path):
    first = digest(build("tiny", tmp_path / "a"))
    second = digest(build("tiny", tmp_path / "b"))
    assert {"model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"} <= set(first)
    assert first == second


def test_weights_are_saved_in_the_presets_dtype(tmp_path, monkeypatch):
    import dataclasses

    import torch
    from safetensors import safe_open

    from service.model_builder import PRESETS

    monkeypatch.setitem(PRESETS, "tiny-bf16", dataclasses.replace(PRESETS["tiny"], weights_dtype="bfloat16"))
    path = build("tiny-bf16", tmp_path)
    with safe_open(path / "model.safetensors", "pt") as f:
        dtypes = {f.get_tensor(name).dtype for name in f.keys()}  # noqa: SIM118 -- safe_open is not a dict
    assert dtypes == {torch.bfloat16}


def test_the_gpu_benchmark_preset_has_about_a_billion_parameters():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from service.model_builder import PRESETS

    p = PRESETS["llama-1b"]
    config = LlamaConfig(vocab_size=p.vocab_size, hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
                         num_hidden_layers=p.num_hidden_layers, num_attention_heads=p.num_attention_heads,
                         num_key_value_heads=p.num_key_value_heads, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert 1.0e9 < sum(t.numel() for t in model.parameters()) < 1.2e9
    assert p.weights_dtype == "bfloat16"
