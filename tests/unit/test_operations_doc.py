"""docs/operations.md must name every command-line flag the server accepts, so the page cannot fall behind."""

from __future__ import annotations

from pathlib import Path

from service.cli import build_parser

DOC = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()


def test_every_flag_is_documented():
    flags = [opt for action in build_parser()._actions for opt in action.option_strings
             if opt.startswith("--") and opt != "--help"]
    assert len(flags) > 30  # the parser really was read
    missing = [flag for flag in flags if f"`{flag}`" not in DOC]
    assert missing == []
