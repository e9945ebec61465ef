"""Sleeping on an asyncio.Event with a deadline: how the batch loops wait for work without polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_for_wake(event: asyncio.Event, seconds: float) -> None:
    """Clear `event`, then wait up to `seconds` for someone to set it again."""
    event.clear()
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def wait_until(event: asyncio.Event, done: Callable[[], bool], deadline: float) -> None:
    """Wait until `done()` holds or `deadline` (time.monotonic) passes, re-checking each time `event` is set."""
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        await wait_for_wake(event, remaining)
