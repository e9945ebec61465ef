from __future__ import annotations

import hashlib

from service.model_builder import build


def digest(path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir()) if f.is_file()}


def test_the_build_is_deterministic(tmp_path):
    first = digest(build("tiny", tmp_path / "a"))
    second = digest(build("tiny", tmp_path / "b"))
    assert {"model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"} <= set(first)
    assert first == second
