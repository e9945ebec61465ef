"""structlog configuration: JSON lines in production, readable console output on a terminal."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps) if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            add_utc_timestamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # orjson renders bytes; the console renderer renders text.
        logger_factory=structlog.BytesLoggerFactory(file=sys.stderr.buffer) if use_json
        else structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if use_json:
        # transformers draws tqdm bars on stderr while loading weights: not lines a JSON log reader can parse.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


class _SecondCache:
    """The formatted date and time of the current second, reformatted only when the second changes."""

    second = -1
    text = ""


def add_utc_timestamp(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """`timestamp`: ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True) writes it.

    Every access line carries one, so the date part is formatted once a second rather than once a line.
    """
    now = time.time()
    second = int(now)
    if second != _SecondCache.second:
        _SecondCache.second, _SecondCache.text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    event_dict["timestamp"] = f"{_SecondCache.text}.{int((now - second) * 1e6):06d}Z"
    return event_dict
