"""docs/api.md must mention every request field the server accepts, so the page cannot fall behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.schemas.chat import ChatCompletionRequest
from service.api.schemas.completions import CompletionRequest
from service.api.schemas.embeddings import EmbeddingRequest
from service.api.schemas.tokenize import DetokenizeRequest, TokenizeChatRequest, TokenizeTextRequest

DOC = (Path(__file__).parents[2] / "docs" / "api.md").read_text()


@pytest.mark.parametrize("model", [CompletionRequest, ChatCompletionRequest, EmbeddingRequest,
                                   TokenizeTextRequest, TokenizeChatRequest, DetokenizeRequest])
def test_every_request_field_is_documented(model):
    missing = [name for name in model.model_fields if f"`{name}" not in DOC]
    assert missing == []


def test_every_route_is_documented():
    from service.api.openapi import OPERATIONS

    for method, path, *_ in OPERATIONS:
        assert f"| {method.upper()} | `{path}` |" in DOC
