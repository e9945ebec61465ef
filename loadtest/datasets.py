"""Where prompts come from (`--dataset-name`): `random` text of measured length, a user's `sharegpt` file, or
a `prompts` file (plain text, one per line, or JSONL; vLLM's `custom` dataset is the JSONL case).

`random` builds prompts from seeded English words rather than random token ids, so the same workload works on
any server whatever its vocabulary; each prompt is then grown or shrunk a word at a time until the target's
tokenizer (its `/tokenize`, else `--tokenizer`) says it has the asked-for number of tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.tokens import TokenCounter

WORDS = (  # noqa: SIM905  (a word list reads better as prose)
    "the of and to in is was that for on with as by at from his her they this which be or are an had not but "
    "what all were when we there can been one do if will would about out up them some time more these so into "
    "has two like him see could no other than then its now look only come over think also back after use how "
    "our work first well way even new want because any give day most us river garden window morning travel "
    "market quiet yellow simple number people water little sound place year live thing every near build self "
    "earth father head stand own page should country found answer school grow study still learn plant cover "
    "food sun four between state keep eye never last let thought city tree cross farm hard start might story "
    "saw far sea draw left late run while press close night real life few north open seem together next white "
    "children begin got walk example ease paper group always music those both mark often letter until mile "
    "car feet care second book carry took science eat room friend began idea fish mountain stop once base "
    "hear horse cut sure watch color face wood main enough plain girl usual young ready above ever red list "
    "though feel talk bird soon body dog family direct pose leave song measure door product black short class "
    "wind question happen complete ship area half rock order fire south problem piece told knew pass since top "
    "whole king space heard best hour better true during hundred five remember step early hold west ground"
).split()


@dataclass(frozen=True)
class SampleRequest:
    prompt: str
    prompt_len: int
    output_len: int


@dataclass(frozen=True)
class Dataset:
    samples: list[SampleRequest]
    prompt_len_source: str  # how prompt_len was measured
    ignore_eos_default: bool  # random prompts want exactly output_len tokens


def _uniform_lens(rng: random.Random, mean: int, ratio: float, n: int) -> list[int]:
    lo = max(int(mean * (1.0 - ratio)), 1)
    hi = max(int(mean * (1.0 + ratio)), lo)
    return [rng.randint(lo, hi) for _ in range(n)]


async def _fit_words(counter: TokenCounter, words: list[str], target: int, prefix: str = "") -> tuple[str, int]:
    """The run of `words` (after `prefix`) whose token count is closest to `target`, and that count."""
    def text(n: int) -> str:
        return prefix + " ".join(words[:n])

    base = await counter.count(prefix) if prefix else 0
    n = min(max(target - base, 1), len(words))
    best: tuple[int, int, int] | None = None  # (distance, words, tokens)
    seen: set[int] = set()
    while n not in seen and len(seen) < 16:
        seen.add(n)
        count = await counter.count(text(n))
        if best is None or abs(count - target) < best[0]:
            best = (abs(count - target), n, count)
        if count == target:
            break
        per_word = max((count - base) / n, 0.25)  # a word is one or more tokens
        step = round((target - count) / per_word) or (1 if count < target else -1)
        n = min(max(n + step, 1), len(words))
    assert best is not None
    return text(best[1]), best[2]


async def random_dataset(n: int, input_len: int, output_len: int, range_ratio: float, prefix_len: int,
                         seed: int, counter: TokenCounter | None) -> Dataset:
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"--random-range-ratio must be in [0, 1), got {range_ratio}")
    if input_len < 1 or output_len < 1 or prefix_len < 0:
        raise ValueError(f"random lengths must be positive: input={input_len} output={output_len} "
                         f"prefix={prefix_len}")
    rng = random.Random(seed)
    in_lens = _uniform_lens(rng, input_len, range_ratio, n)
    out_lens = _uniform_lens(rng, output_len, range_ratio, n)
    prefix_words = [rng.choice(WORDS) for _ in range(prefix_len * 2 + 4)]
    bodies = [[rng.choice(WORDS) for _ in range((prefix_len + length) * 2 + 8)] for length in in_lens]
    samples = []
    if counter is None:  # one word per token: a guess, said so in the result
        prefix = " ".join(prefix_words[:prefix_len]) + " " if prefix_len else ""
        for words, n_in, n_out in zip(bodies, in_lens, out_lens, strict=True):
            samples.append(SampleRequest(prefix + " ".join(words[:n_in]), prefix_len + n_in, n_out))
        return Dataset(samples, "estimate: one token per word (no /tokenize, no --tokenizer)", True)
    prefix = ""
    if prefix_len:
        prefix, _ = await _fit_words(counter, prefix_words, prefix_len)
        prefix += " "
    for words, n_in, n_out in zip(bodies, in_lens, out_lens, strict=True):
        text, count = await _fit_words(counter, words, prefix_len + n_in, prefix)
        samples.append(SampleRequest(text, count, n_out))
    return Dataset(samples, counter.source, True)


def _read_text(path: Path) -> str:
    """A dataset file's text, or a ValueError that names the file and what is wrong with it."""
    if path.is_dir():
        raise ValueError(f"--dataset-path {path} is a directory; give the dataset file itself")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--dataset-path {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"--dataset-path {path}: cannot read it ({exc.strerror or exc})") from None


def _turn_text(path: Path, i: int, turn: object) -> object:
    if not isinstance(turn, dict):
        raise ValueError(f"{path}: conversation {i}: each turn must be an object with a 'value' (or 'content'), "
                         f"got {type(turn).__name__} {str(turn)[:40]!r}")
    return turn.get("value") if "value" in turn else turn.get("content")


def _sharegpt_pairs(path: Path) -> list[tuple[str, str]]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: a ShareGPT file is a JSON list of conversations")
    pairs = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: conversation {i} is not a JSON object: {str(entry)[:40]!r}")
        turns = entry.get("conversations") or entry.get("conversation") or []
        if not isinstance(turns, list):
            raise ValueError(f"{path}: conversation {i}: 'conversations' must be a list of turns, "
                             f"got {type(turns).__name__}")
        if len(turns) < 2:
            continue
        prompt, reply = _turn_text(path, i, turns[0]), _turn_text(path, i, turns[1])
        if isinstance(prompt, str) and isinstance(reply, str):
            pairs.append((prompt, reply))
    return pairs


async def sharegpt_dataset(path: Path, n: int, seed: int, counter: TokenCounter | None,
                           fixed_output_len: int | None) -> Dataset:
    """First human turn as prompt, first reply's length as output length; vLLM's filters on length."""
    if fixed_output_len is not None and fixed_output_len < 1:
        raise ValueError(f"--sharegpt-output-len must be >= 1, got {fixed_output_len}")
    pairs = _sharegpt_pairs(path)
    random.Random(seed).shuffle(pairs)
    samples: list[SampleRequest] = []
    for prompt, reply in pairs:
        if len(samples) >= n:
            break
        if counter is not None:
            p_len = await counter.count(prompt)
            o_len = fixed_output_len or await counter.count(reply, add_special_tokens=False)
        else:
            p_len = len(prompt.split())
            o_len = fixed_output_len or len(reply.split())
        if p_len < 4 or (fixed_output_len is None and o_len < 4):
            continue  # too short to time
        if p_len > 1024 or p_len + o_len > 2048:
            continue
        samples.append(SampleRequest(prompt, p_len, o_len))
    if not samples:
        raise ValueError(f"{path}: no usable conversations (each needs a prompt and a reply of 4+ tokens)")
    source = counter.source if counter is not None else "estimate: words (no /tokenize, no --tokenizer)"
    return Dataset(samples, source, False)


def _output_len(path: Path, lineno: int, obj: dict[str, Any], default: int) -> int:
    key = "max_tokens" if "max_tokens" in obj else "output_len" if "output_len" in obj else None
    if key is None:
        return default
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{path}:{lineno}: {key!r} must be a whole number of tokens >= 1, got {json.dumps(value)}")
    return value


def _prompt_lines(path: Path, default_output_len: int) -> list[tuple[str, int]]:
    """`.jsonl`/`.ndjson`: one JSON string, or object with a 'prompt' (or 'text') and optionally 'max_tokens'
    (or 'output_len'), per line. Any other file but `.json`: one prompt per line."""
    if path.suffix == ".json":
        raise ValueError(f"{path}: a prompts file is plain text (one prompt per line) or JSON Lines (.jsonl, one "
                         "string or object per line), not one JSON document; for a ShareGPT file use "
                         "--dataset-name sharegpt")
    out = []
    jsonl = path.suffix in (".jsonl", ".ndjson")
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        if not jsonl:
            out.append((line.strip(), default_output_len))
            continue
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if isinstance(obj, str):
            out.append((obj, default_output_len))
            continue
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: each JSONL line must be a string or an object with a 'prompt', "
                             f"got {type(obj).__name__}: {line.strip()[:60]}")
        prompt = obj.get("prompt", obj.get("text"))
        if not isinstance(prompt, str):
            raise ValueError(f"{path}:{lineno}: each JSONL line needs a 'prompt' (or 'text') string: {line[:80]}")
        out.append((prompt, _output_len(path, lineno, obj, default_output_len)))
    return out


async def prompts_dataset(path: Path, n: int, output_len: int, counter: TokenCounter | None) -> Dataset:
    """Prompts in file order, cycled to n."""
    if output_len < 1:
        raise ValueError(f"--prompts-output-len must be >= 1, got {output_len}")
    lines = _prompt_lines(path, output_len)
    if not lines:
        raise ValueError(f"{path}: no prompts")
    lens = {p: (await counter.count(p) if counter else len(p.split())) for p, _ in lines}
    samples = [SampleRequest(p, lens[p], o) for p, o in (lines[i % len(lines)] for i in range(n))]
    source = counter.source if counter is not None else "estimate: words (no /tokenize, no --tokenizer)"
    return Dataset(samples, source, False)
