"""The CUDA-graph decode path's padding and bucketing, checked on the CPU.

The runner is switched to the graphs' padded, static-buffer forward without capture (decode_graph_mode False):
every pure-decode step then pads its batch and context into buckets, with padding rows writing to the scratch
block. Greedy outputs must still equal HF generate, and no block may leak.
"""

from __future__ import annotations

import pytest
import torch

from service.api.context import CONTEXT
from service.engine import model_runner
from service.engine.cuda_graphs import DecodeGraphs
from tests.integration.test_greedy_equivalence import cases, generate_all, hf_model  # noqa: F401 -- fixtures too


@pytest.fixture
def graphs_without_capture(monkeypatch):
    monkeypatch.setattr(model_runner, "decode_graph_mode", lambda device, config, use_mirror: False)


@pytest.mark.parametrize(
    "engine_kw",
    [{"max_num_seqs": 16}, {"max_num_seqs": 6, "num_blocks": 60, "max_num_batched_tokens": 9}],
    ids=["roomy", "preempting-chunked"],
)
@pytest.mark.usefixtures("graphs_without_capture")
async def test_padded_decode_path_matches_hf_generate(make_client, cases, engine_kw):  # noqa: F811
    client = await make_client(decode_mirror=False, **engine_kw)
    engine = client.app[CONTEXT].engine
    graphs = engine.runner.decode_graphs
    assert graphs is not None
    padded = []
    engine.on_step.append(lambda sched, out, dt: padded.append(len(sched.chunks) not in graphs.sizes))

    got = await generate_all(client, cases, stream=True)

    assert got == [expected for _, _, expected in cases]
    assert graphs.num_captured >= 3, "decode steps never went through the padded path"
    assert any(padded), "no step needed batch padding"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    # The scratch block is outside what the block manager hands out.
    assert graphs.scratch_block == engine.block_manager.num_blocks


async def test_a_failed_capture_leaves_every_step_eager(make_client, cases, monkeypatch):  # noqa: F811
    """The start-up capture runs (the runner asks for real graphs) and fails: the server still starts, drops
    the graphs, and runs every step eagerly with the same outputs."""
    attempts = []

    def out_of_memory(self, b: int, nblk: int):
        attempts.append((b, nblk))
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model_runner, "decode_graph_mode", lambda device, config, use_mirror: True)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(DecodeGraphs, "_make_replay", out_of_memory)
    client = await make_client(decode_mirror=False)
    engine = client.app[CONTEXT].engine
    assert attempts, "the start-up capture never ran"
    assert engine.runner.decode_graphs is None

    got = await generate_all(client, cases[:6], stream=True)

    assert got == [expected for _, _, expected in cases[:6]]
