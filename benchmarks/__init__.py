"""Benchmarks of the server itself, each run as `python -m benchmarks.<module>`; every module's docstring says
what it measures and how. The overhead ones (`make bench-overhead`) use a runner that costs nothing
(null_runner.py): scheduler_overhead.py per engine step, http_overhead.py for the whole service over HTTP
against a bare aiohttp server (bare_sse.py), loaded by sse_load.py and profiled with profile_summary.py."""
