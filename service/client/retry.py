"""When to retry a failed call, and how long to wait first.

Retried: connection errors, 429 and 503 (OverloadedError), 502 and 504. Never retried: other 4xx (the request
itself is wrong; sending it again cannot help), 500 (the server failed on this request and may fail the same
way), timeouts (the time budget is spent), and anything once a stream has handed data to the caller (a retry
would repeat text the caller already has). The wait is exponential with "equal jitter", half fixed and half
random, so clients that failed together do not come back together; a server's Retry-After replaces it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import structlog

from service.client.errors import APIError, ConnectionError, OverloadedError, ServerError

log = structlog.get_logger("hfserve.client")

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    # A Retry-After beyond this is treated as "not worth waiting for": the error is raised instead.
    max_retry_after_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries}: must be >= 0")
        if not 0 < self.backoff_base_s <= self.backoff_max_s:
            raise ValueError(f"backoff_base_s={self.backoff_base_s}: must be in (0, backoff_max_s]")

    def retryable(self, err: APIError) -> bool:
        if isinstance(err, ConnectionError):
            return True
        return isinstance(err, (OverloadedError, ServerError)) and err.status in RETRYABLE_STATUSES

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """The wait before retry number `attempt` (0-based)."""
        if retry_after_s is not None:
            return max(0.0, retry_after_s)
        cap = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return cap / 2 + self.rng.uniform(0, cap / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110). None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Retrier:
    """The retry state of one call: how many attempts so far, and the call's deadline (loop time)."""

    def __init__(self, policy: RetryPolicy, what: str, deadline: float | None) -> None:
        self.policy = policy
        self.what = what
        self.deadline = deadline
        self.attempt = 0

    async def wait_before_retry(self, err: APIError) -> bool:
        """Sleep and return True if `err` deserves another attempt; False means: raise it."""
        if self.attempt >= self.policy.max_retries or not self.policy.retryable(err):
            return False
        retry_after = err.retry_after_s if isinstance(err, OverloadedError) else None
        if retry_after is not None and retry_after > self.policy.max_retry_after_s:
            return False
        delay = self.policy.delay_s(self.attempt, retry_after)
        if self.deadline is not None and asyncio.get_running_loop().time() + delay >= self.deadline:
            return False  # the wait alone would overrun the total timeout
        self.attempt += 1
        log.warning("retrying", call=self.what, attempt=self.attempt, max_retries=self.policy.max_retries,
                    delay_s=round(delay, 3), error=type(err).__name__, status=err.status, reason=err.message)
        await asyncio.sleep(delay)
        return True
