from __future__ import annotations

import pytest
import torch
from torch import nn

from service.engine.packed_linear import (
    PACKED_MAX_ROWS,
    PackedLinear,
    SharedInputGemm,
    pack_linear_layers,
    packing_supported,
    shared_input_groups,
)

pytestmark = pytest.mark.skipif(not packing_supported(torch.device("cpu"), torch.float32),
                                reason="this torch build has no oneDNN linear")


@pytest.mark.parametrize("rows", [1, 7, 32, PACKED_MAX_ROWS, PACKED_MAX_ROWS + 1, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_nn_linear(rows, bias):
    torch.manual_seed(0)
    lin = nn.Linear(96, 160, bias=bias)
    packed = PackedLinear(lin)
    x = torch.randn(1, rows, 96)
    with torch.inference_mode():
        assert torch.allclose(packed(x), lin(x), rtol=1e-5, atol=1e-5)


def test_pack_linear_layers_swaps_every_linear_and_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 8)))
    x = torch.randn(4, 16)
    with torch.inference_mode():
        before = model(x)
        assert pack_linear_layers(model) == 2
        after = model(x)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-5)


def test_packing_is_only_for_cpu_float32_and_bfloat16():
    assert not packing_supported(torch.device("cpu"), torch.float64)
    assert not packing_supported(torch.device("cuda"), torch.float32)


def _tiny_llama(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from service.engine import attention

    attention.register()
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention.ATTENTION_NAME).eval()


def test_shared_input_groups_finds_qkv_and_gate_up_and_restores_the_attention(tiny_model_dir):
    model = _tiny_llama(tiny_model_dir)
    names = {id(m): name.rsplit(".", 1)[-1] for name, m in model.named_modules()}
    groups = shared_input_groups(model)
    layers = model.config.num_hidden_layers
    assert sorted(tuple(names[id(m)] for m in g) for g in groups) == sorted(
        [("q_proj", "k_proj", "v_proj")] * layers + [("gate_proj", "up_proj")] * layers)
    assert model.config._attn_implementation == "hfserve_paged"


def test_shared_input_groups_is_empty_when_the_trace_fails():
    assert shared_input_groups(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))) == []


@pytest.mark.parametrize("rows", [1, 7, 32, PACKED_MAX_ROWS + 1])
def test_layers_sharing_a_gemm_give_each_their_own_output_bit_for_bit(rows):
    torch.manual_seed(0)
    q, k, v = nn.Linear(64, 64), nn.Linear(64, 32, bias=False), nn.Linear(64, 32)
    alone = [PackedLinear(lin) for lin in (q, k, v)]
    gemm = SharedInputGemm([q, k, v])
    shared = [PackedLinear(lin, (gemm, i)) for i, lin in enumerate((q, k, v))]
    x, y = torch.randn(1, rows, 64), torch.randn(1, rows, 64)
    with torch.inference_mode():
        # Call orders: the members in order; the last first; one member twice on the same input; a member on
        # another input between its siblings' calls.
        for order in ([(0, x), (1, x), (2, x)], [(2, x), (0, x), (1, x)], [(1, x), (1, x), (0, x), (2, x)],
                      [(0, x), (1, y), (1, x), (2, x)]):
            for member, inp in order:
                assert torch.equal(shared[member](inp), alone[member](inp)), (order, member)


def test_packing_with_groups_keeps_the_models_logits_bit_for_bit(tiny_model_dir):
    plain, grouped = _tiny_llama(tiny_model_dir), _tiny_llama(tiny_model_dir)
    pack_linear_layers(plain)
    groups = shared_input_groups(grouped)
    assert pack_linear_layers(grouped, groups) == sum(1 for m in plain.modules() if isinstance(m, PackedLinear))
    assert sum(1 for m in grouped.modules() if isinstance(m, PackedLinear) and len(m.gemm.sizes) > 1) == sum(
        len(g) for g in groups) > 0
    plain.set_attn_implementation("sdpa")
    grouped.set_attn_implementation("sdpa")
    ids = torch.arange(12)[None] % plain.config.vocab_size
    with torch.inference_mode():
        assert torch.equal(plain(input_ids=ids, use_cache=False).logits, grouped(input_ids=ids, use_cache=False).logits)


def test_a_shared_gemm_runs_once_per_input_and_lets_go_of_it(monkeypatch):
    from service.engine import packed_linear

    calls = []
    gemm_fn = packed_linear._packed_gemm
    monkeypatch.setattr(packed_linear, "_packed_gemm", lambda *a: calls.append(a[3]) or gemm_fn(*a))
    gate, up = nn.Linear(16, 24, bias=False), nn.Linear(16, 24, bias=False)
    gemm = SharedInputGemm([gate, up])
    members = [PackedLinear(gate, (gemm, 0)), PackedLinear(up, (gemm, 1))]
    x = torch.randn(3, 16)
    with torch.inference_mode():
        members[0](x)
        members[1](x)
    assert calls == [3]
    assert gemm._input is None and gemm._outputs == ()
