"""What one model-step hop to the executor thread costs the process, for a step that needs the GIL (as the
NullRunner's does): a part of the null-model benchmark's cost that the design (the model step runs on one
executor thread) makes unavoidable.

    python -m benchmarks.thread_hop [--steps 3000] [--loop-work-us 1000] [--step-iterations 2000]

Each step the event loop does --loop-work-us of its own Python work (what output processing and HTTP do
between steps) while a step of pure Python runs: inline, as a callback on the loop itself; or on a
one-thread ThreadPoolExecutor through run_in_executor, with 1, 2 or 3 steps queued ahead; or on the engine's
StepThread (service/engine/step_thread.py), as the engine hands over its steps. Reported: process CPU per step
beyond the loop's own work, so the inline row is the step itself and the others add the hop.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import uvloop

from service.engine.step_thread import StepThread


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def make_step(iterations: int) -> Callable[[], int]:
    def step() -> int:
        total = 0
        for i in range(iterations):
            total += i
        return total
    return step


def _resolve_with(fut: asyncio.Future[int], step: Callable[[], int]) -> None:
    fut.set_result(step())


async def measure(mode: str, depth: int, args: argparse.Namespace) -> float:
    loop = asyncio.get_running_loop()
    step = make_step(args.step_iterations)
    pending: collections.deque[asyncio.Future[int]] = collections.deque()
    step_thread = StepThread("thread-hop")
    with ThreadPoolExecutor(max_workers=1) as executor:
        cpu0 = time.process_time()
        for _ in range(args.steps):
            while len(pending) < depth:
                if mode == "inline":
                    fut: asyncio.Future[int] = loop.create_future()
                    loop.call_soon(_resolve_with, fut, step)
                elif mode == "step-thread":
                    fut = step_thread.submit(lambda _: step(), None)
                else:
                    fut = loop.run_in_executor(executor, step)
                pending.append(fut)
            busy(args.loop_work_us / 1e6)
            await pending.popleft()
        while pending:
            await pending.popleft()
        cpu = time.process_time() - cpu0
    step_thread.shutdown(wait=True)
    return cpu / args.steps * 1e6 - args.loop_work_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--loop-work-us", type=float, default=1000.0)
    parser.add_argument("--step-iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cases = [("inline", 1), ("executor", 1), ("executor", 2), ("executor", 3), ("step-thread", 1)]
    results: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for mode, depth in cases:
            results[(mode, depth)].append(uvloop.run(measure(mode, depth, args)))
    print(f"CPU per step beyond the loop's own {args.loop_work_us:.0f} us of work ({args.steps} steps, "
          f"{args.rounds} rounds)")
    for (mode, depth), values in results.items():
        label = {"inline": "inline on the loop", "step-thread": "StepThread, 1 queued"}.get(
            mode, f"executor thread, {depth} queued")
        print(f"  {label:<28} " + "  ".join(f"{v:7.1f}" for v in values) + "  us")


if __name__ == "__main__":
    main()
