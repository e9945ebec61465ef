"""The garbage collector's settings for a long-running server.

Start-up leaves a few hundred thousand long-lived objects behind (modules, the tokenizer, the model's Python
objects). Left where they are, every full collection walks all of them: a pause of about 0.2 s on the 2-core
benchmark machine, in the middle of serving. Freezing them moves them out of the collector's sight for good.

Serving itself allocates short-lived containers by the thousand per step (requests, deltas, frames), almost
all freed by reference counting. At CPython's default young threshold (700) the collector scans them several
times a second anyway; a higher threshold lets nearly all of them die unexamined. Cyclic garbage still gets
collected, only in larger, rarer batches.
"""

from __future__ import annotations

import gc

# Net container allocations between two young collections (CPython's default is 700).
YOUNG_THRESHOLD = 50_000


def settle_after_startup(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Collect start-up garbage, freeze what survives, and raise the young generation's threshold.

    Call once, after the model and tokenizer are loaded and before serving.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
