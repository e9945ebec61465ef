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


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("data", "message"), [
    ([{"conversations": ["hello there", "hi"]}], r"conversation 0: each turn must be an object"),
    ([{"conversations": "hello"}], r"conversation 0: 'conversations' must be a list"),
    (["not a conversation"], r"conversation 0 is not a JSON object"),
    ({"conversations": []}, r"a JSON list of conversations"),
])
async def test_malformed_sharegpt_files_are_refused_clearly(tmp_path: Path, data: object, message: str) -> None:
    path = write(tmp_path / "sg.json", json.dumps(data))
    with pytest.raises(ValueError, match=message):
        await sharegpt_dataset(path, 4, seed=0, counter=None, fixed_output_len=None)


@pytest.mark.parametrize(("lines", "message"), [
    (['{"prompt": "a"}', '["a", "list"]'], r"p\.jsonl:2: each JSONL line must be a string or an object"),
    (['{"prompt": "a", "max_tokens": null}'], r"p\.jsonl:1: 'max_tokens' must be a whole number of tokens >= 1, "
                                              r"got null"),
    (['{"prompt": "a", "max_tokens": 0}'], r"'max_tokens' must be a whole number of tokens >= 1, got 0"),
    (['{"prompt": "a", "output_len": "12"}'], r"'output_len' must be a whole number"),
    (['{"prompt": "a", "max_tokens": true}'], r"'max_tokens' must be a whole number"),
    (['{"prompt": "a"}', '{"prompt": "b",}', '{"prompt": "c"}'], r"p\.jsonl:2: not valid JSON"),
    (['{"prompt": 3}'], r"p\.jsonl:1: each JSONL line needs a 'prompt'"),
])
async def test_malformed_jsonl_prompts_name_the_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write(tmp_path / "p.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        await prompts_dataset(path, 2, 12, counter=None)


async def test_a_json_prompts_file_is_refused_not_read_as_text(tmp_path: Path) -> None:
    path = write(tmp_path / "p.json", json.dumps(["first", "second"]))
    with pytest.raises(ValueError, match=r"p\.json: a prompts file is plain text .* or JSON Lines"):
        await prompts_dataset(path, 2, 12, counter=None)


async def test_a_directory_or_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        await prompts_dataset(tmp_path, 2, 12, counter=None)
    with pytest.raises(ValueError, match="is a directory"):
        await sharegpt_dataset(tmp_path, 2, seed=0, counter=None, fixed_output_len=None)
    with pytest.raises(ValueError, match="no such file"):
        await prompts_dataset(tmp_path / "nope.txt", 2, 12, counter=None)


async def test_output_lengths_below_one_are_refused(tmp_path: Path) -> None:
    txt = write(tmp_path / "p.txt", "a prompt\n")
    with pytest.raises(ValueError, match="prompts-output-len"):
        await prompts_dataset(txt, 2, 0, counter=None)
    sg = write(tmp_path / "sg.json", json.dumps([{"conversations": [{"value": "x " * 9}, {"value": "y " * 9}]}]))
    with pytest.raises(ValueError, match="sharegpt-output-len"):
        await sharegpt_dataset(sg, 2, seed=0, counter=None, fixed_output_len=0)
