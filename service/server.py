"""Runs the HTTP server on the current (uvloop) event loop, and drains gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from service.api.app import create_app
from service.api.context import ServerContext
from service.api.sampling_defaults import load_sampling_defaults
from service.config import EngineConfig, ServerConfig
from service.embeddings.service import EmbeddingService
from service.engine.factory import build_engine
from service.errors import ShuttingDownError
from service.gc_policy import settle_after_startup

log = structlog.get_logger("server")


async def serve(engine_config: EngineConfig, server_config: ServerConfig) -> int:
    loop = asyncio.get_running_loop()
    engine, tokenizer = await loop.run_in_executor(None, build_engine, engine_config)
    embeddings = None
    if server_config.embedding_model is not None:
        path, wait_s = server_config.embedding_model, server_config.embedding_batch_wait_s
        device = str(getattr(engine.runner, "device", "cpu")).split(":")[0]
        embeddings = await loop.run_in_executor(None, lambda: EmbeddingService(path, device, wait_s))
    sampling_defaults = load_sampling_defaults(engine_config.model.generation_config, engine_config.model.model)
    ctx = ServerContext(engine, tokenizer, engine_config.model.name, server_config, embeddings, sampling_defaults)
    app = create_app(ctx)
    settle_after_startup()
    # handler_cancellation: a client that disconnects cancels its handler, whose `finally` aborts the request.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, server_config.host, server_config.port)
    await site.start()
    log.info("serving", model=ctx.model_name, host=server_config.host, port=server_config.port,
             dtype=str(getattr(engine.runner, "dtype", "?")), device=str(getattr(engine.runner, "device", "?")),
             kv_blocks=engine.block_manager.num_blocks, max_model_len=engine.max_model_len)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("draining", live=engine.num_live, timeout_s=server_config.drain_timeout_s)
    engine.draining = True
    try:
        async with asyncio.timeout(server_config.drain_timeout_s):
            await engine.wait_idle()
    except TimeoutError:
        log.warning("drain timeout; aborting the rest", live=engine.num_live)
        engine.fail_all(ShuttingDownError("The server is shutting down; the request was aborted."))
        await asyncio.sleep(0.1)  # let handlers write their error events
    await runner.cleanup()
    log.info("stopped")
    return 0
