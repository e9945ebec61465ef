from __future__ import annotations

from pathlib import Path

import pytest

from service.model_builder import build


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model, built offline once per session (about a second)."""
    return build("tiny", tmp_path_factory.mktemp("tiny-model"))
