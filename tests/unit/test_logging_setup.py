from datetime import UTC, datetime, timedelta

import structlog
from structlog.processors import TimeStamper

from service.logging_setup import add_utc_timestamp, configure_logging


def test_timestamp_is_iso_utc_like_structlogs_own() -> None:
    ours = add_utc_timestamp(None, "info", {})["timestamp"]
    theirs = TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    assert ours.endswith("Z") and len(ours) == len("2026-01-01T00:00:00.000000Z")
    parsed = datetime.fromisoformat(ours.replace("Z", "+00:00"))
    assert abs(parsed - datetime.fromisoformat(theirs.replace("Z", "+00:00"))) < timedelta(seconds=1)
    assert abs(parsed - datetime.now(UTC)) < timedelta(seconds=1)


def test_consecutive_timestamps_never_go_backwards() -> None:
    stamps = [add_utc_timestamp(None, "info", {})["timestamp"] for _ in range(2000)]
    assert stamps == sorted(stamps)


def test_json_logs_turn_off_transformers_progress_bars() -> None:
    """tqdm's bars on stderr would break a reader that parses every log line as JSON."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    try:
        configure_logging("console", "info")
        assert hf_logging.is_progress_bar_enabled()
        configure_logging("json", "info")
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
        structlog.reset_defaults()
