"""The real service (app, middlewares, engine, scheduler, detokenizer) over HTTP, with a NullRunner in place of
the model: whatever it costs per request is the server's own overhead.

    python -m benchmarks.null_model --model-dir models/default --port 8101

Only the model's tokenizer is loaded (for encoding prompts and detokenizing output). The app is served exactly
as `service/server.py` serves it: an aiohttp AppRunner with handler_cancellation on uvloop, structlog JSON
access lines at info level. The process prints `READY <port>` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import uvloop

from benchmarks.null_runner import NullRunner
from benchmarks.serving import serve_until_signal
from service.api.app import create_app
from service.api.context import ServerContext
from service.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, ServerConfig
from service.engine.async_engine import AsyncEngine
from service.engine.tokenizer import Tokenizer
from service.gc_policy import settle_after_startup
from service.logging_setup import configure_logging

__all__ = ["NullRunner", "build_null_context", "null_engine", "text_token_ids"]

# Token ids the runner cycles through; spread over the vocabulary so their texts have realistic lengths.
NUM_TEXT_TOKENS = 256


def text_token_ids(tokenizer: Tokenizer, limit: int = NUM_TEXT_TOKENS) -> list[int]:
    """Ids that decode on their own to printable text (no newline, no special token, no partial UTF-8).

    With these, every sampled token is one non-empty text delta, so a request of max_tokens=n streams n events,
    and no stop string made of other characters can match.
    """
    special = set(tokenizer.hf.all_special_ids)
    ok = []
    for i in range(tokenizer.vocab_size):
        if i in special:
            continue
        text = tokenizer.decode([i])
        if text and text.isprintable() and "\ufffd" not in text:
            ok.append(i)
    if not ok:
        raise ValueError("the tokenizer has no printable single-token texts")
    stride = max(1, len(ok) // limit)
    return ok[::stride][:limit]


def model_max_len(model_dir: Path, default: int = 2048) -> int:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except OSError:
        return default
    return int(config.get("max_position_embeddings", default))


def null_engine(model_dir: str | Path, *, max_num_seqs: int = 64, max_num_batched_tokens: int = 512,
                block_size: int = 16, enable_prefix_caching: bool = True,
                tokenizer: Tokenizer | None = None) -> tuple[AsyncEngine, Tokenizer]:
    """An AsyncEngine over a NullRunner, configured as `build_engine` configures the real one."""
    model_dir = Path(model_dir)
    tokenizer = tokenizer or Tokenizer(str(model_dir))
    max_len = model_max_len(model_dir)
    config = EngineConfig(
        model=ModelConfig(model=str(model_dir), device="cpu"),
        cache=CacheConfig(block_size=block_size, enable_prefix_caching=enable_prefix_caching),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
    )
    # Enough blocks that every sequence can hold a full context: the cache never limits the benchmark.
    num_blocks = max_num_seqs * -(-max_len // block_size)
    runner = NullRunner(vocab_size=tokenizer.vocab_size, max_model_len=max_len, num_blocks=num_blocks,
                        block_size=block_size, token_ids=text_token_ids(tokenizer))
    return AsyncEngine(config, runner, tokenizer, tokenizer.eos_token_ids), tokenizer


def build_null_context(model_dir: str | Path, server: ServerConfig | None = None, **engine_kw: object
                       ) -> ServerContext:
    engine, tokenizer = null_engine(model_dir, **engine_kw)  # type: ignore[arg-type]
    return ServerContext(engine, tokenizer, "null", server or ServerConfig())


async def serve(ctx: ServerContext, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, as service/server.py does (minus the drain), GC settings included."""
    app = create_app(ctx)
    settle_after_startup()
    await serve_until_signal(app, host, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"),
                        help="model directory whose tokenizer is used (`make model` builds models/default)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--log-level", default="info", help="structlog level; info writes one access line a request")
    args = parser.parse_args(argv)
    if not (args.model_dir / "tokenizer.json").exists():
        print(f"null_model: no tokenizer in {args.model_dir}; run `make model` first", file=sys.stderr)
        return 2
    configure_logging("json", args.log_level)
    ctx = build_null_context(args.model_dir, ServerConfig(host=args.host, port=args.port),
                             max_num_seqs=args.max_num_seqs)
    uvloop.run(serve(ctx, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
