"""The same engine on CUDA: greedy outputs through the server match HF generate on the GPU, with decode steps
replayed from CUDA graphs (the default) and with every step eager.

Skipped where no CUDA device is present (CI and CPU machines)."""

from __future__ import annotations

import pytest
import torch

from service.api.context import CONTEXT
from tests.integration.test_greedy_equivalence import cases, generate_all, hf_model  # noqa: F401 -- fixtures too

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda-graphs", "eager"])
async def test_greedy_matches_hf_generate_on_cuda(make_client, cases, enforce_eager):  # noqa: F811
    client = await make_client(device="cuda", enforce_eager=enforce_eager)
    graphs = client.app[CONTEXT].engine.runner.decode_graphs
    got = await generate_all(client, cases, stream=True)
    assert got == [expected for _, _, expected in cases]
    if enforce_eager:
        assert graphs is None
    else:
        assert graphs is not None
        assert graphs.num_captured > 0, "no decode step was replayed from a graph"
