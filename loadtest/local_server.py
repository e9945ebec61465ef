"""A server process on this machine, as the harness, the benchmarks and the tests start one: a free port to give
it, and the wait until its /health answers 200."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import aiohttp

HOST = "127.0.0.1"


class ServerExitedError(RuntimeError):
    """The server process ended before /health answered."""

    def __init__(self, returncode: int) -> None:
        super().__init__(f"the server exited with {returncode} before it was ready")
        self.returncode = returncode


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the kernel's pick; another process could take it before the server)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def wait_healthy(base_url: str, returncode: Callable[[], int | None], timeout_s: float,
                       interval_s: float = 0.1) -> None:
    """Poll GET {base_url}/health until it answers 200.

    `returncode` reports the process's exit status, None while it runs (`Popen.poll`, or a lambda reading an
    asyncio subprocess's `returncode`). Raises ServerExitedError once it is not None, TimeoutError after
    `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            code = returncode()
            if code is not None:
                raise ServerExitedError(code)
            try:
                async with session.get(base_url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the server at {base_url} was not ready within {timeout_s:.0f} s")
            await asyncio.sleep(interval_s)
