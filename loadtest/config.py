"""The harness's frozen configuration: what to hit (TargetConfig) and how hard (LoadConfig)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from loadtest.arrivals import RampUp


class EndpointKind(Enum):
    COMPLETIONS = "completions"  # OpenAI legacy: prompt in, choices[].text out
    CHAT = "chat"  # messages in, choices[].delta.content out

    @classmethod
    def infer(cls, endpoint: str) -> EndpointKind:
        return cls.CHAT if endpoint.rstrip("/").endswith("chat/completions") else cls.COMPLETIONS


@dataclass(frozen=True)
class TargetConfig:
    base_url: str
    endpoint: str = "/v1/completions"
    model: str | None = None
    kind: EndpointKind = EndpointKind.COMPLETIONS
    api_key: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    extra_body: dict[str, Any] = field(default_factory=dict)
    stream: bool = True
    ignore_eos: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"--base-url must start with http:// or https://, got {self.base_url!r}")
        if not self.endpoint.startswith("/"):
            raise ValueError(f"--endpoint must start with '/', got {self.endpoint!r}")
        if not (math.isfinite(self.request_timeout_s) and self.request_timeout_s > 0):
            raise ValueError(f"--request-timeout must be a number of seconds > 0, got {self.request_timeout_s}")

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    @property
    def endpoint_url(self) -> str:
        return self.url(self.endpoint)

    def http_headers(self) -> dict[str, str]:
        out = {"Content-Type": "application/json"}
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        out.update(dict(self.headers))
        return out


@dataclass(frozen=True)
class LoadConfig:
    """Closed loop: max_concurrency with an infinite request_rate. Open loop: a finite request_rate, optionally
    capped by max_concurrency. A run stops after num_prompts requests, or after duration_s if that is set."""

    num_prompts: int = 1000
    duration_s: float | None = None
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_warmups: int = 0
    ramp_up: RampUp | None = None
    abort_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"--num-prompts must be >= 1, got {self.num_prompts}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"--duration must be > 0, got {self.duration_s}")
        if self.request_rate <= 0:
            raise ValueError(f"--request-rate must be > 0, got {self.request_rate}")
        if self.burstiness <= 0:
            raise ValueError(f"--burstiness must be > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        if self.num_warmups < 0:
            raise ValueError(f"--num-warmups must be >= 0, got {self.num_warmups}")
        if not 0.0 <= self.abort_fraction <= 1.0:
            raise ValueError(f"--abort-fraction must be in [0, 1], got {self.abort_fraction}")
        if self.duration_s is not None and not self.open_loop and self.max_concurrency is None:
            raise ValueError("--duration with an infinite --request-rate needs --max-concurrency "
                             "(otherwise it would send without bound)")

    @property
    def open_loop(self) -> bool:
        return self.ramp_up is not None or math.isfinite(self.request_rate)

    @property
    def label(self) -> str:
        rate = "inf" if not self.open_loop else (
            f"ramp{self.ramp_up.start_rps:g}-{self.ramp_up.end_rps:g}" if self.ramp_up else f"{self.request_rate:g}")
        return f"rate{rate}-conc{self.max_concurrency or 'inf'}"
