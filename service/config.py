"""Frozen, validated configuration. Flags (see cli.py) map one-to-one onto these fields."""

from __future__ import annotations

from dataclasses import dataclass, field


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class ModelConfig:
    model: str
    served_model_name: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 | float64
    device: str = "auto"  # auto | cpu | cuda
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    seed: int = 0
    chat_template: str | None = None  # path to a Jinja template overriding the tokenizer's
    # Run linear layers through oneDNN with prepacked weights (packed_linear.py). None: where supported
    # (CPU, fp32/bf16).
    packed_linear: bool | None = None
    # CUDA: run every step eagerly instead of replaying CUDA graphs of decode steps (cuda_graphs.py).
    enforce_eager: bool = False
    # Where requests' sampling defaults come from: auto | none | a directory (api/sampling_defaults.py).
    generation_config: str = "auto"

    def __post_init__(self) -> None:
        _require(self.dtype in ("auto", "float32", "bfloat16", "float16", "float64"),
                 f"dtype={self.dtype!r}: expected auto, float32, bfloat16, float16 or float64")
        _require(self.device in ("auto", "cpu", "cuda"), f"device={self.device!r}: expected auto, cpu or cuda")
        _require(self.max_model_len is None or self.max_model_len >= 2,
                 f"max_model_len={self.max_model_len}: must be at least 2")

    @property
    def name(self) -> str:
        return self.served_model_name or self.model.rstrip("/").split("/")[-1]


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    num_gpu_blocks_override: int | None = None
    # Memory for the KV cache when no block count is forced. None: enough for max_num_seqs full contexts,
    # capped at 4 GiB on the CPU.
    kv_cache_memory_bytes: int | None = None
    enable_prefix_caching: bool = True
    # Keep a dense copy of decoding requests' KV so decode attention needs no gather (decode_mirror.py).
    # None: on for the CPU, where gathers dominate; off for CUDA.
    decode_mirror: bool | None = None

    def __post_init__(self) -> None:
        _require(self.block_size in (1, 2, 4, 8, 16, 32, 64, 128),
                 f"block_size={self.block_size}: must be a power of two up to 128")
        _require(self.num_gpu_blocks_override is None or self.num_gpu_blocks_override >= 1,
                 f"num_gpu_blocks_override={self.num_gpu_blocks_override}: must be positive")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    policy: str = "fcfs"  # fcfs | priority
    # Under the priority policy, each this many seconds of waiting is worth one priority level.
    priority_aging_s: float = 5.0
    # When the engine is idle and fewer than `batch_wait_min_requests` are waiting, wait at most this long
    # for more to arrive before the first step. 0 adds no latency.
    batch_wait_timeout_s: float = 0.0
    batch_wait_min_requests: int = 1
    max_queued_requests: int | None = None
    max_queued_tokens: int | None = None
    # Submit step k+1 before detokenizing and streaming step k's outputs, so the model does not wait on them.
    overlap_output_processing: bool = True

    def __post_init__(self) -> None:
        _require(self.max_num_seqs >= 1, f"max_num_seqs={self.max_num_seqs}: must be positive")
        _require(self.max_num_batched_tokens >= 1,
                 f"max_num_batched_tokens={self.max_num_batched_tokens}: must be positive")
        _require(self.policy in ("fcfs", "priority"), f"policy={self.policy!r}: expected fcfs or priority")
        _require(self.priority_aging_s > 0, f"priority_aging_s={self.priority_aging_s}: must be positive")
        _require(self.batch_wait_timeout_s >= 0,
                 f"batch_wait_timeout_s={self.batch_wait_timeout_s}: must be >= 0")
        _require(self.batch_wait_min_requests >= 1,
                 f"batch_wait_min_requests={self.batch_wait_min_requests}: must be positive")


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Consecutive failed steps after which the engine declares itself dead.
    max_consecutive_step_failures: int = 3
    # Prompts longer than this many characters are tokenized in a worker thread, off the event loop.
    offload_tokenization_chars: int = 2048


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    protect_metrics: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout_s: float = 600.0
    max_request_timeout_s: float = 3600.0
    drain_timeout_s: float = 30.0
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    embedding_model: str | None = None  # directory of the encoder behind /v1/embeddings; None disables it
    embedding_batch_wait_s: float = 0.005

    def __post_init__(self) -> None:
        _require(0 < self.port < 65536, f"port={self.port}: must be in 1..65535")
        _require(self.max_body_bytes >= 1024, f"max_body_bytes={self.max_body_bytes}: must be at least 1024")
        _require(0 < self.request_timeout_s <= self.max_request_timeout_s,
                 f"request_timeout_s={self.request_timeout_s}: must be in (0, max_request_timeout_s]")
        _require(self.drain_timeout_s >= 0, f"drain_timeout_s={self.drain_timeout_s}: must be >= 0")
        _require(self.log_format in ("auto", "json", "console"), f"log_format={self.log_format!r}")
