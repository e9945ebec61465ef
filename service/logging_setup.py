"""structlog configuration: JSON lines in production, readable console output on a terminal."""

from __future__ import annotations

import logging
import sys

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
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # orjson renders bytes; the console renderer renders text.
        logger_factory=structlog.BytesLoggerFactory(file=sys.stderr.buffer) if use_json
        else structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
