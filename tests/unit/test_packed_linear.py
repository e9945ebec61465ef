from __future__ import annotations

import pytest
import torch
from torch import nn

from service.engine.packed_linear import PACKED_MAX_ROWS, PackedLinear, pack_linear_layers, packing_supported

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
