"""The same engine on CUDA: greedy outputs through the server match HF generate on the GPU.

Skipped where no CUDA device is present (CI and CPU machines)."""

from __future__ import annotations

import pytest
import torch

from tests.integration.test_greedy_equivalence import cases, generate_all  # noqa: F401 -- the fixture too

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


async def test_greedy_matches_hf_generate_on_cuda(make_client, cases):  # noqa: F811
    client = await make_client(device="cuda")
    got = await generate_all(client, cases, stream=True)
    assert got == [expected for _, _, expected in cases]
