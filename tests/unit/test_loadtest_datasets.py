"""Prompt sources: random prompts fitted to a token count, ShareGPT files, prompt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.datasets import prompts_dataset, random_dataset, sharegpt_dataset


class CharCounter:
    """A stand-in tokenizer: one token per 3 characters, rounded up, plus one special token."""

    source = "test counter"

    def __init__(self) -> None:
        self.calls = 0

    async def count(self, text: str, add_special_tokens: bool = True) -> int:
        self.calls += 1
        return -(-len(text) // 3) + (1 if add_special_tokens else 0)


async def test_random_prompts_hit_the_token_target() -> None:
    counter = CharCounter()
    ds = await random_dataset(20, 60, 64, 0.0, 0, seed=1, counter=counter)
    assert len(ds.samples) == 20 and ds.ignore_eos_default and ds.prompt_len_source == "test counter"
    for s in ds.samples:
        assert s.output_len == 64
        assert abs(s.prompt_len - 60) <= 2  # a word is several characters: within a word of the target
        assert s.prompt_len == await counter.count(s.prompt)
    assert len({s.prompt for s in ds.samples}) == 20


async def test_random_lengths_spread_with_the_range_ratio_and_share_a_prefix() -> None:
    ds = await random_dataset(40, 50, 20, 0.5, 10, seed=2, counter=CharCounter())
    outs = [s.output_len for s in ds.samples]
    assert min(outs) >= 10 and max(outs) <= 30 and len(set(outs)) > 5
    prefix = ds.samples[0].prompt.split()[:3]
    assert all(s.prompt.split()[:3] == prefix for s in ds.samples)
    assert all(35 - 3 <= s.prompt_len <= 85 + 3 for s in ds.samples)


async def test_random_is_seeded() -> None:
    a = await random_dataset(5, 30, 8, 0.3, 0, seed=3, counter=None)
    b = await random_dataset(5, 30, 8, 0.3, 0, seed=3, counter=None)
    assert a == b
    assert a.prompt_len_source.startswith("estimate")
    assert all(len(s.prompt.split()) == s.prompt_len for s in a.samples)


async def test_random_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="range-ratio"):
        await random_dataset(5, 30, 8, 1.0, 0, seed=0, counter=None)


async def test_sharegpt(tmp_path: Path) -> None:
    data = [
        {"id": "a", "conversations": [{"from": "human", "value": "x " * 40}, {"from": "gpt", "value": "y " * 30}]},
        {"id": "b", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "y " * 30}]},
        {"id": "c", "conversations": [{"from": "human", "value": "only one turn"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "z " * 50}, {"from": "gpt", "value": "w " * 60}]},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    ds = await sharegpt_dataset(path, 10, seed=0, counter=CharCounter(), fixed_output_len=None)
    # "hi" is too short and "c" has no reply: two usable conversations
    assert sorted(s.prompt_len for s in ds.samples) == [28, 35]
    assert sorted(s.output_len for s in ds.samples) == [20, 40]
    assert not ds.ignore_eos_default
    fixed = await sharegpt_dataset(path, 10, seed=0, counter=None, fixed_output_len=7)
    assert {s.output_len for s in fixed.samples} == {7}


async def test_prompt_files(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt here\n")
    ds = await prompts_dataset(txt, 5, 12, counter=None)
    assert [s.prompt for s in ds.samples] == ["first prompt", "second prompt here"] * 2 + ["first prompt"]
    assert {s.output_len for s in ds.samples} == {12}
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a b c", "max_tokens": 3}) + "\n" + json.dumps({"text": "d e"}) + "\n")
    ds = await prompts_dataset(jsonl, 2, 12, counter=CharCounter())
    assert [(s.prompt, s.output_len, s.prompt_len) for s in ds.samples] == [("a b c", 3, 3), ("d e", 12, 2)]
