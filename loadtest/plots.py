"""PNG plots (`--plot DIR`): latency CDFs, a timeline of concurrency and tokens/s, and for a sweep the
throughput-latency curve. matplotlib runs headless (Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; chosen before pyplot is imported
import matplotlib.pyplot as plt
import numpy as np

from loadtest.client import Outcome, RequestRecord
from loadtest.metrics import concurrency_steps, tokens_per_bucket


def _cdf(values: list[float], title: str, xlabel: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if values:
        xs = np.sort(np.asarray(values))
        ys = np.arange(1, len(xs) + 1) / len(xs)
        ax.step(xs, ys, where="post")
        for q in (0.5, 0.99):
            ax.axhline(q, color="grey", linewidth=0.5, linestyle=":")
    else:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of samples ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_run(records: list[RequestRecord], t0: float, out_dir: Path, prefix: str = "") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in records if r.outcome is Outcome.SUCCESS]
    ttft = [r.ttft * 1000 for r in ok if r.ttft is not None]
    itl = [g * 1000 for r in ok for g in r.itl]
    e2el = [r.e2el * 1000 for r in ok]
    paths = [
        _cdf(ttft, "Time to first token", "TTFT (ms)", out_dir / f"{prefix}cdf_ttft.png"),
        _cdf(itl, "Inter-token latency (per chunk)", "ITL (ms)", out_dir / f"{prefix}cdf_itl.png"),
        _cdf(e2el, "End-to-end latency", "E2EL (ms)", out_dir / f"{prefix}cdf_e2el.png"),
    ]
    paths.append(_timeline(records, t0, out_dir / f"{prefix}timeline.png"))
    return paths


def _timeline(records: list[RequestRecord], t0: float, path: Path) -> Path:
    fig, (ax_c, ax_t) = plt.subplots(2, 1, figsize=(8, 5), dpi=100, sharex=True)
    steps = concurrency_steps(records, t0)
    if steps:
        ax_c.step([t for t, _ in steps], [c for _, c in steps], where="post")
    ax_c.set_ylabel("requests in flight")
    ax_c.grid(alpha=0.3)
    # Finer buckets than the 1 s of the peak metric, so that a short run still shows a shape.
    span = max((t for t, _ in steps), default=1.0)
    width = min(max(span / 40, 0.05), 1.0)
    buckets = tokens_per_bucket(records, t0, width)
    if buckets:
        ax_t.bar((np.arange(len(buckets)) + 0.5) * width, np.asarray(buckets) / width, width=width, alpha=0.7)
    ax_t.set_ylabel(f"output tokens/s ({width:.2g} s bins)")
    ax_t.set_xlabel("seconds since start")
    ax_t.grid(alpha=0.3)
    fig.suptitle("Load timeline")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sweep(results: list[dict[str, Any]], out_dir: Path) -> Path:
    """Output throughput against latency, one point per sweep value."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=100)
    xs = [r["output_throughput"] for r in results]
    for ax, metric, title in zip(axes, ("ttft", "itl", "e2el"), ("TTFT", "ITL", "E2EL"), strict=True):
        for stat, style in (("median", "o-"), ("p99", "s--")):
            ys = [r.get(f"{stat}_{metric}_ms") for r in results]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=stat)
        for r, x in zip(results, xs, strict=True):
            y = r.get(f"median_{metric}_ms")
            if y is not None:
                ax.annotate(r["label"], (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_title(f"{title} vs throughput")
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(f"{title} (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out_dir / "sweep.png"
    fig.savefig(path)
    plt.close(fig)
    return path
