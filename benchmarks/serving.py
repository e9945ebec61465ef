"""How the benchmark servers (null_model, bare_sse) run: an aiohttp AppRunner as service/server.py sets it up
(handler_cancellation, no aiohttp access log), `READY <port>` on stdout once listening, until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web


async def serve_until_signal(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
