"""loadtest/local_server.py: the wait for a server's /health, as the harness, benchmarks and tests use it."""

from __future__ import annotations

import pytest
from aiohttp import web

from loadtest.local_server import ServerExitedError, free_port, wait_healthy


async def test_returns_once_health_answers_200(aiohttp_server) -> None:
    calls = 0

    async def health(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=503 if calls < 3 else 200)  # starting, starting, ready

    app = web.Application()
    app.router.add_get("/health", health)
    server = await aiohttp_server(app)
    await wait_healthy(str(server.make_url("")).rstrip("/"), lambda: None, timeout_s=10, interval_s=0.01)
    assert calls == 3


async def test_a_process_that_exited_raises_with_its_status() -> None:
    with pytest.raises(ServerExitedError, match="exited with 3") as info:
        await wait_healthy(f"http://127.0.0.1:{free_port()}", lambda: 3, timeout_s=10)
    assert info.value.returncode == 3


async def test_nothing_listening_times_out() -> None:
    with pytest.raises(TimeoutError, match="not ready within"):
        await wait_healthy(f"http://127.0.0.1:{free_port()}", lambda: None, timeout_s=0.3, interval_s=0.05)
