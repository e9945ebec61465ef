from __future__ import annotations

import pytest

from service.engine.cuda_graphs import block_buckets, capture_sizes


@pytest.mark.parametrize(("max_num_seqs", "expected"), [
    (1, (1,)),
    (6, (1, 2, 4, 6)),
    (64, (1, 2, 4, 8, 16, 24, 32, 48, 64)),
    (1000, (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)),
])
def test_capture_sizes_stop_at_max_num_seqs(max_num_seqs, expected):
    assert capture_sizes(max_num_seqs) == expected


@pytest.mark.parametrize(("max_blocks", "expected"), [
    (1, (1,)),
    (5, (1, 2, 4, 5)),
    (128, (1, 2, 4, 8, 16, 32, 64, 128)),
])
def test_block_buckets_are_powers_of_two_then_the_maximum(max_blocks, expected):
    assert block_buckets(max_blocks) == expected


def test_a_step_pads_into_the_smallest_bucket_that_holds_it():
    from types import SimpleNamespace

    from service.engine.cuda_graphs import DecodeGraphs

    graphs = SimpleNamespace(sizes=(1, 2, 4, 8), blocks=(1, 2, 4, 5))
    assert DecodeGraphs.bucket(graphs, 3, 3) == (4, 4)  # type: ignore[arg-type]
    assert DecodeGraphs.bucket(graphs, 8, 5) == (8, 5)  # type: ignore[arg-type]
    assert DecodeGraphs.bucket(graphs, 9, 1) is None  # type: ignore[arg-type]
    assert DecodeGraphs.bucket(graphs, 1, 6) is None  # type: ignore[arg-type]
