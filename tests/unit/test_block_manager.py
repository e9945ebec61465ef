from __future__ import annotations

from service.engine.block_manager import BlockManager
from tests.factories import make_request


def test_allocate_grows_table_and_free_returns_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    req = make_request(num_prompt=6)
    assert bm.allocate(req, 6)
    assert bm.num_held_blocks(req.request_id) == 2
    assert bm.num_free_blocks == 6
    assert bm.allocate(req, 9)  # grows by one block
    assert bm.num_held_blocks(req.request_id) == 3
    bm.free(req.request_id)
    assert bm.num_free_blocks == 8
    bm.check_invariants()


def test_allocate_refuses_without_side_effects():
    bm = BlockManager(num_blocks=3, block_size=4)
    a, b = make_request(), make_request()
    assert bm.allocate(a, 8)
    assert not bm.allocate(b, 8)  # needs 2, 1 free
    assert bm.num_held_blocks(b.request_id) == 0
    assert bm.num_free_blocks == 1
    bm.check_invariants()


def test_block_ids_are_unique_across_requests():
    bm = BlockManager(num_blocks=10, block_size=2)
    reqs = [make_request() for _ in range(5)]
    for r in reqs:
        assert bm.allocate(r, 4)
    ids = [i for r in reqs for i in bm.block_ids(r.request_id)]
    assert sorted(ids) == list(range(10))
    assert bm.usage == 1.0


def test_prefix_cache_shares_full_blocks_and_counts_refs():
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    prompt = list(range(100, 110))  # 2 full blocks + 2 tokens
    a = make_request(prompt=prompt)
    assert bm.allocate(a, len(prompt))
    bm.cache_full_blocks(a, len(prompt))
    b = make_request(prompt=prompt + [7, 8])
    hits = bm.find_cached_prefix(b)
    assert [h.block_id for h in hits] == bm.block_ids(a.request_id)[:2]
    assert bm.allocate(b, 12, hits)
    assert bm.block_ids(b.request_id)[:2] == bm.block_ids(a.request_id)[:2]
    bm.check_invariants()
    # Freeing one sharer keeps the blocks held by the other.
    bm.free(a.request_id)
    bm.check_invariants()
    assert all(blk.ref_cnt == 1 for blk in hits)


def test_dropped_prefix_cache_finds_nothing_and_live_requests_register_again_with_correct_chaining():
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    prompt = list(range(100, 110))  # 2 full blocks + 2 tokens
    a = make_request(prompt=prompt)
    assert bm.allocate(a, 12)
    bm.cache_full_blocks(a, 10)
    bm.drop_prefix_cache()
    assert bm.find_cached_prefix(make_request(prompt=prompt + [1])) == []
    # `a` goes on and fills its third block: all three are registered again, chained from the first.
    a.output_token_ids.extend([1, 2])
    bm.cache_full_blocks(a, 12)
    hits = bm.find_cached_prefix(make_request(prompt=prompt + [1, 2, 3]))
    assert [h.block_id for h in hits] == bm.block_ids(a.request_id)
    # A request whose first block holds a's third block's tokens must not hit it (it sits at another position).
    assert bm.find_cached_prefix(make_request(prompt=prompt[8:] + [1, 2, 3])) == []
    bm.check_invariants()


def test_prefix_cache_never_covers_the_last_token():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    prompt = list(range(8))  # exactly two blocks
    a = make_request(prompt=prompt)
    bm.allocate(a, 8)
    bm.cache_full_blocks(a, 8)
    b = make_request(prompt=prompt)
    assert len(bm.find_cached_prefix(b)) == 1  # one token must be left to compute


def test_freed_cached_blocks_are_reused_until_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    old = make_request(prompt=[1, 2, 3, 4, 5])
    bm.allocate(old, 5)
    bm.cache_full_blocks(old, 5)
    bm.free(old.request_id)
    assert bm.num_free_blocks == 4
    again = make_request(prompt=[1, 2, 3, 4, 9])
    assert len(bm.find_cached_prefix(again)) == 2
    # Fill the cache with something else: the cached blocks get evicted and the hit disappears.
    other = make_request(prompt=[50] * 8)
    assert bm.allocate(other, 8)
    bm.free(other.request_id)
    assert bm.find_cached_prefix(again) == []
    bm.check_invariants()


def test_uncached_free_blocks_are_taken_before_cached_ones():
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    cached = make_request(prompt=[1, 2, 3])
    bm.allocate(cached, 3)
    bm.cache_full_blocks(cached, 3)
    bm.free(cached.request_id)
    filler = make_request(prompt=[9, 9])
    assert bm.allocate(filler, 4)  # two blocks: the uncached ones
    probe = make_request(prompt=[1, 2, 3])
    assert len(bm.find_cached_prefix(probe)) == 1


def test_token_ids_between_spans_prompt_and_output():
    r = make_request(prompt=[1, 2, 3])
    r.output_token_ids.extend([4, 5])
    every = [1, 2, 3, 4, 5]
    for start in range(6):
        for end in range(start, 6):
            assert r.token_ids_between(start, end) == every[start:end]
