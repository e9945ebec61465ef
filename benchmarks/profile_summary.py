"""Where a process's CPU goes, from py-spy's raw (folded) output: one line per distinct stack,
`frame;frame;...;frame count`, outermost first, each frame `function (file:line)`.

    python -m benchmarks.profile_summary profile.folded

Reports an exclusive split of the samples by category (socket writes; else the innermost frame of our own
code; else the innermost library frame), the functions with the most samples on-CPU at the top of the stack
(self), the source files likewise, and the inclusive share of a few landmarks of the request path (a sample
counts once per landmark, whatever the recursion).

py-spy counts a thread that is runnable but waiting for a CPU as busy, so on a loaded machine a thread that
wakes often (the model-step executor) shows more than the CPU it burns.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")

# (label, substring of a frame): the inclusive cost of each stage of a streamed completion.
LANDMARKS: tuple[tuple[str, str], ...] = (
    ("aiohttp request handling (all)", "_handle_request (aiohttp/web_protocol.py"),
    ("access log middleware", "access_log_middleware ("),
    ("access log line (structlog)", "structlog/"),
    ("completions handler", "create_completion ("),
    ("request validation (pydantic)", "model_validate ("),
    ("prompt tokenization", "encode ("),
    ("engine.add_request", "add_request ("),
    ("SSE stream loop", "_stream (service/api/completions.py"),
    ("SSE writes", "send (service/api/sse.py"),
    ("stream.get / iterate_deltas", "iterate_deltas ("),
    ("engine batch loop", "_run (service/engine/async_engine.py"),
    ("scheduler.schedule", "schedule (service/engine/scheduler.py"),
    ("scheduler.update_from_output", "update_from_output ("),
    ("output processing", "output_processor.py"),
    ("model-step thread (NullRunner)", "execute (benchmarks/null_runner.py"),
    ("HTTP parser / transport", "data_received ("),
)


# Exclusive attribution of a sample: a frame in aiohttp's writer means socket output; otherwise the innermost
# frame of our own code decides, by file; otherwise the innermost library frame, by package.
_WRITES = "aiohttp/http_writer.py"
_OURS: tuple[tuple[str, str], ...] = (
    ("service/engine/scheduler.py", "engine: scheduler + block manager"),
    ("service/engine/block_manager.py", "engine: scheduler + block manager"),
    ("service/engine/request", "engine: scheduler + block manager"),
    ("service/engine/output_processor.py", "engine: output processing"),
    ("service/engine/detokenizer.py", "engine: output processing"),
    ("service/engine/stop_strings.py", "engine: output processing"),
    ("service/engine/output_stream.py", "stream mailbox (put/get)"),
    ("service/engine/async_engine.py", "engine: batch loop, add_request"),
    ("service/engine/tokenizer.py", "prompt tokenization"),
    ("service/api/middleware.py", "access log middleware"),
    ("service/api/", "handler (validation, SSE chunks)"),
    ("service/", "service: other"),
    ("benchmarks/null_runner.py", "null runner"),
)
_LIBS: tuple[tuple[str, str], ...] = (
    ("concurrent/futures", "executor thread handoff"),
    ("structlog/", "access log middleware"),
    ("json/", "access log middleware"),
    ("pydantic", "handler (validation, SSE chunks)"),
    ("aiohttp/", "aiohttp: HTTP parsing, request/response objects"),
    ("asyncio/", "event loop (asyncio/uvloop)"),
    ("uvloop/", "event loop (asyncio/uvloop)"),
)


def _category(frames: list[str]) -> str:
    if any(_WRITES in f for f in frames):
        return "socket writes (aiohttp StreamWriter, send)"
    for table in (_OURS, _LIBS):
        for frame in reversed(frames):
            for needle, label in table:
                if needle in frame:
                    return label
    return "other"


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m['func']} ({file})"


def _file(frame: str) -> str:
    m = _FRAME.match(frame)
    return _short(frame).split(" (", 1)[1][:-1] if m else frame


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    self_func: Counter[str] = Counter()
    self_file: Counter[str] = Counter()
    landmarks: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        self_func[_short(frames[-1])] += n
        self_file[_file(frames[-1])] += n
        categories[_category(frames)] += n
        for label, needle in LANDMARKS:
            if any(needle in f for f in frames):
                landmarks[label] += n
    pct = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "categories": [(name, pct(n)) for name, n in categories.most_common()],
        "self_functions": [(name, pct(n)) for name, n in self_func.most_common(top)],
        "self_files": [(name, pct(n)) for name, n in self_file.most_common(top)],
        "landmarks": [(label, pct(landmarks[label])) for label, _ in LANDMARKS],
    }


def print_summary(s: dict[str, Any]) -> None:
    print(f"\nprofile: {s['samples']} samples (py-spy, on-CPU stacks of all threads)")
    print("exclusive % of samples, by where the CPU went:")
    for label, p in s["categories"]:
        print(f"  {p:6.1f}  {label}")
    print("inclusive % of samples, by stage:")
    for label, p in s["landmarks"]:
        print(f"  {p:6.1f}  {label}")
    print("self % by source file:")
    for name, p in s["self_files"][:15]:
        print(f"  {p:6.1f}  {name}")
    print("self % by function:")
    for name, p in s["self_functions"]:
        print(f"  {p:6.1f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folded", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print_summary(summarize(args.folded, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
