"""`python -m loadtest` / `hfserve-loadtest`: flags named as `vllm bench serve`'s (guidellm's or genai-perf's
where vLLM has none), turned into frozen configs, one run or a sweep, and the outputs asked for."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtest.arrivals import RampStrategy, RampUp
from loadtest.config import EndpointKind, LoadConfig, TargetConfig
from loadtest.datasets import Dataset, prompts_dataset, random_dataset, sharegpt_dataset
from loadtest.metrics import DEFAULT_PERCENTILES, LATENCY_METRICS, GoodputSLO, parse_percentile_metrics
from loadtest.plots import plot_run, plot_sweep
from loadtest.report import (
    append_csv,
    build_result,
    check_csv,
    format_sweep_table,
    format_table,
    write_detailed,
    write_json,
)
from loadtest.runner import TargetUnusableError, run_load
from loadtest.tokens import LocalTokenizer, TokenCounter, check_tokenizer_path, resolve_counter

SWEEP_KEYS = ("max-concurrency", "request-rate")
DATASETS = ("random", "sharegpt", "prompts", "custom")  # custom: vLLM's name for a JSONL prompts file
ALWAYS_PERCENTILE = 99.0  # the CSV's, the sweep table's and the sweep plot's percentile
SECRET_ARGS = ("api_key", "header")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hfserve-loadtest",
        description="Load-test any OpenAI-compatible /v1/completions or /v1/chat/completions endpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t = p.add_argument_group("target")
    t.add_argument("--base-url", default=None, help="Server root, e.g. http://127.0.0.1:8000 (default: --host/--port).")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=8000)
    t.add_argument("--endpoint", default="/v1/completions", help="Path of the completions or chat endpoint.")
    t.add_argument("--backend", choices=["openai", "openai-chat"], default=None,
                   help="Request format; default: from --endpoint (chat if it ends in chat/completions).")
    t.add_argument("--model", default=None, help="Model name to send; default: the first of GET /v1/models.")
    t.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="Bearer key (or $OPENAI_API_KEY).")
    t.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                   help="Extra HTTP header, as 'Name=value' or 'Name: value' (split at whichever of '=' and ':' "
                        "comes first); repeat.")
    t.add_argument("--extra-body", default=None, metavar="JSON", help="JSON object merged into every request body.")
    t.add_argument("--disable-stream", action="store_true",
                   help="Send stream=false: no TTFT, TPOT or ITL then (reported as none), and --goodput may bound "
                        "only e2el.")
    t.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None,
                   help="Send ignore_eos (default: on for the random dataset, off otherwise).")
    t.add_argument("--temperature", type=float, default=None)
    t.add_argument("--top-p", type=float, default=None)
    t.add_argument("--top-k", type=int, default=None)
    t.add_argument("--request-timeout", type=float, default=600.0,
                   help="Seconds (> 0) before a request counts as failed.")
    t.add_argument("--tokenizer", default=None,
                   help="Local tokenizer directory (it must exist), used when the target has no /tokenize.")

    lo = p.add_argument_group("load")
    lo.add_argument("--max-concurrency", type=int, default=None, help="Most requests in flight (closed loop).")
    lo.add_argument("--request-rate", type=float, default=math.inf, help="Open-loop arrivals per second.")
    lo.add_argument("--burstiness", type=float, default=1.0, help="Gamma shape of the gaps; 1 = Poisson.")
    lo.add_argument("--num-prompts", type=int, default=1000, help="Requests to send.")
    lo.add_argument("--duration", type=float, default=None, help="Send for this many seconds instead.")
    lo.add_argument("--num-warmups", type=int, default=0, help="Untimed requests sent first.")
    lo.add_argument("--ramp-up-strategy", choices=[s.value for s in RampStrategy], default=None)
    lo.add_argument("--ramp-up-start-rps", type=float, default=None)
    lo.add_argument("--ramp-up-end-rps", type=float, default=None)
    lo.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...",
                    help=f"One run per value; KEY is one of {', '.join(SWEEP_KEYS)}.")
    lo.add_argument("--abort-fraction", type=float, default=0.0,
                    help="Share of clients that disconnect mid-stream; the server is then checked.")
    lo.add_argument("--seed", type=int, default=0)

    d = p.add_argument_group("data")
    d.add_argument("--dataset-name", choices=DATASETS, default="random",
                   help="custom is vLLM's name for a JSONL file of prompts: the same as prompts here.")
    d.add_argument("--dataset-path", default=None,
                   help="ShareGPT JSON, or a prompts .txt (one prompt per line) or .jsonl (one string or "
                        '{"prompt": ..., "max_tokens": N} object per line) file.')
    d.add_argument("--random-input-len", type=int, default=1024)
    d.add_argument("--random-output-len", type=int, default=128)
    d.add_argument("--random-range-ratio", type=float, default=0.0)
    d.add_argument("--random-prefix-len", type=int, default=0)
    d.add_argument("--sharegpt-output-len", type=int, default=None, help="Override each reply's length.")
    d.add_argument("--prompts-output-len", "--custom-output-len", dest="prompts_output_len", type=int,
                   default=128, help="max_tokens for prompts that do not give one.")

    m = p.add_argument_group("metrics and output")
    m.add_argument("--goodput", nargs="+", default=None, metavar="NAME:MS", help="SLOs, e.g. ttft:500 tpot:50.")
    m.add_argument("--metric-percentiles", default=",".join(f"{x:g}" for x in DEFAULT_PERCENTILES),
                   help=f"Percentiles to report, in (0, 100]; p{ALWAYS_PERCENTILE:g} is always reported too, as the "
                        "CSV's columns, the sweep table and the sweep plot use it.")
    m.add_argument("--percentile-metrics", default=",".join(LATENCY_METRICS),
                   help="Metrics whose percentiles are reported (vLLM's flag, e.g. ttft,tpot,itl,e2el); the rest "
                        "get mean, median, std, min and max only, and blank p99 columns in the CSV.")
    m.add_argument("--save-result", action="store_true", help="Write the result JSON.")
    m.add_argument("--save-detailed", action="store_true",
                   help="Also put vLLM's per-request lists (input_lens, output_lens, ttfts, itls, "
                        "generated_texts, errors) into the result JSON, and write per-request JSONL beside it.")
    m.add_argument("--result-dir", default=".", help="Where result files go.")
    m.add_argument("--result-filename", default=None)
    m.add_argument("--csv", default=None, metavar="PATH",
                   help="Append one row of headline metrics per run, as each run finishes.")
    m.add_argument("--plot", default=None, metavar="DIR", help="Write PNG plots here.")
    m.add_argument("--disable-tqdm", action="store_true")
    return p


def _headers(items: list[str]) -> tuple[tuple[str, str], ...]:
    """'Name=value' or 'Name: value': split at the first ':' if it comes before the first '=', else at the
    first '=', so that a value may hold the other character ('Authorization: Bearer tok==')."""
    out = []
    for item in items:
        colon, equals = item.find(":"), item.find("=")
        if colon < 0 and equals < 0:
            raise ValueError(f"--header takes 'Name=value' or 'Name: value', got {item!r}")
        sep = ":" if colon >= 0 and (equals < 0 or colon < equals) else "="
        key, _, value = item.partition(sep)
        if not key.strip():
            raise ValueError(f"--header {item!r} has no header name")
        out.append((key.strip(), value.strip()))
    return tuple(out)


def target_from_args(args: argparse.Namespace) -> TargetConfig:
    extra: dict[str, Any] = {}
    if args.extra_body:
        extra = orjson.loads(args.extra_body)
        if not isinstance(extra, dict):
            raise ValueError(f"--extra-body must be a JSON object, got {args.extra_body!r}")
    if args.backend is not None:
        kind = EndpointKind.CHAT if args.backend == "openai-chat" else EndpointKind.COMPLETIONS
    else:
        kind = EndpointKind.infer(args.endpoint)
    return TargetConfig(
        base_url=args.base_url or f"http://{args.host}:{args.port}",
        endpoint=args.endpoint, model=args.model, kind=kind, api_key=args.api_key,
        headers=_headers(args.header), extra_body=extra, stream=not args.disable_stream,
        ignore_eos=bool(args.ignore_eos), temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        request_timeout_s=args.request_timeout,
    )


def loads_from_args(args: argparse.Namespace) -> list[LoadConfig]:
    ramp = None
    if args.ramp_up_strategy is not None:
        if args.ramp_up_start_rps is None or args.ramp_up_end_rps is None:
            raise ValueError("--ramp-up-strategy needs --ramp-up-start-rps and --ramp-up-end-rps")
        ramp = RampUp(RampStrategy(args.ramp_up_strategy), args.ramp_up_start_rps, args.ramp_up_end_rps)
    base = LoadConfig(
        num_prompts=args.num_prompts, duration_s=args.duration, request_rate=args.request_rate,
        burstiness=args.burstiness, max_concurrency=args.max_concurrency, num_warmups=args.num_warmups,
        ramp_up=ramp, abort_fraction=args.abort_fraction, seed=args.seed,
    )
    if args.sweep is None:
        return [base]
    key, sep, values = args.sweep.partition("=")
    if not sep or key not in SWEEP_KEYS or not values:
        raise ValueError(f"--sweep takes KEY=V1,V2,... with KEY one of {SWEEP_KEYS}, got {args.sweep!r}")
    if key == "max-concurrency":
        return [replace(base, max_concurrency=int(v)) for v in values.split(",")]
    return [replace(base, request_rate=float(v)) for v in values.split(",")]


def parse_percentiles(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        out = ()
    if not out or any(not 0 < x <= 100 for x in out):
        raise ValueError(f"--metric-percentiles takes numbers in (0, 100], got {text!r}")
    return out


def reported_percentiles(requested: tuple[float, ...]) -> tuple[float, ...]:
    """The requested percentiles, with p99 added where missing: the CSV, the sweep table and plot show it."""
    return requested if ALWAYS_PERCENTILE in requested else tuple(sorted({*requested, ALWAYS_PERCENTILE}))


def backend_name(target: TargetConfig) -> str:
    """vLLM's `--backend` value for the request format sent."""
    return "openai-chat" if target.kind is EndpointKind.CHAT else "openai"


def check_args(args: argparse.Namespace, slo: GoodputSLO | None) -> None:
    """Usage errors that need no server: raised before anything is sent."""
    if args.disable_stream and slo is not None and slo.streaming_metrics:
        raise ValueError(f"--goodput {', '.join(slo.streaming_metrics)}: there is no TTFT or TPOT without "
                         "streaming; drop --disable-stream or bound only e2el")
    if args.tokenizer:  # checked even when the target's /tokenize will count, so that a typo shows at once
        check_tokenizer_path(args.tokenizer)
    if args.csv:
        check_csv(Path(args.csv))


async def fetch_server_info(session: aiohttp.ClientSession, target: TargetConfig) -> dict[str, Any]:
    try:
        async with session.get(target.url("/v1/models"), headers=target.http_headers(),
                               timeout=aiohttp.ClientTimeout(total=30)) as resp:
            body = await resp.read()
            if resp.status != 200:
                return {"error": f"GET /v1/models answered {resp.status}", "body": body[:300].decode(errors="replace")}
            parsed = orjson.loads(body)
            return parsed if isinstance(parsed, dict) else {"data": parsed}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"error": f"GET /v1/models failed: {exc!r}"}


def _first_model(info: dict[str, Any]) -> str | None:
    data = info.get("data")
    if isinstance(data, list) and data and isinstance(data[0], dict) and data[0].get("id"):
        return str(data[0]["id"])
    return None


async def load_dataset(args: argparse.Namespace, counter: TokenCounter | None, n: int) -> Dataset:
    if args.dataset_name == "random":
        return await random_dataset(n, args.random_input_len, args.random_output_len, args.random_range_ratio,
                                    args.random_prefix_len, args.seed, counter)
    if not args.dataset_path:
        raise ValueError(f"--dataset-name {args.dataset_name} needs --dataset-path")
    path = Path(args.dataset_path)
    if args.dataset_name == "sharegpt":
        return await sharegpt_dataset(path, n, args.seed, counter, args.sharegpt_output_len)
    return await prompts_dataset(path, n, args.prompts_output_len, counter)  # "prompts" or vLLM's "custom"


def _safe_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in SECRET_ARGS and value:
            value = "<redacted>"
        out[key] = value if not isinstance(value, float) or math.isfinite(value) else str(value)
    return out


def _result_path(args: argparse.Namespace, model: str, label: str, sweep: bool) -> Path:
    if args.result_filename:
        name = Path(args.result_filename)
        if sweep:
            name = name.with_name(f"{name.stem}-{label}{name.suffix or '.json'}")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = Path(f"loadtest-{label}-{Path(model).name}-{stamp}.json")
    return Path(args.result_dir) / name


async def async_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run what the flags say and return each run's result dict (what --save-result writes)."""
    args = build_parser().parse_args(argv)
    target = target_from_args(args)
    loads = loads_from_args(args)
    slo = GoodputSLO.parse(args.goodput) if args.goodput else None
    percentiles = reported_percentiles(parse_percentiles(args.metric_percentiles))
    percentile_metrics = parse_percentile_metrics(args.percentile_metrics)
    check_args(args, slo)
    sweep = args.sweep is not None
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    results: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(connector=connector, read_bufsize=1 << 16) as session:
        server_info = await fetch_server_info(session, target)
        model = args.model or _first_model(server_info)
        if model is None:
            raise TargetUnusableError(f"no --model given and {target.url('/v1/models')} named none: {server_info}")
        counter = await resolve_counter(session, target, model, args.tokenizer)
        tokenizer_id = None if counter is None else args.tokenizer if isinstance(counter, LocalTokenizer) else model
        dataset = await load_dataset(args, counter, max(load.num_prompts for load in loads))
        ignore_eos = dataset.ignore_eos_default if args.ignore_eos is None else args.ignore_eos
        target = replace(target, model=model, ignore_eos=ignore_eos)
        for load in loads:
            run = await run_load(session, target, model, load, dataset.samples, counter, slo, percentiles,
                                 show_progress=not args.disable_tqdm)
            result = build_result(run, target_url=target.endpoint_url, model=model, args=_safe_args(args),
                                  server_info=server_info, prompt_len_source=dataset.prompt_len_source,
                                  percentiles=percentiles, percentile_metrics=percentile_metrics,
                                  backend=backend_name(target), tokenizer_id=tokenizer_id,
                                  detailed=args.save_detailed)
            print(format_table(result, percentiles), flush=True)
            if args.save_result or args.save_detailed:
                path = _result_path(args, model, load.label, sweep)
                write_json(path, result)
                print(f"result: {path}")
                if args.save_detailed:
                    detailed = path.with_suffix(".requests.jsonl")
                    write_detailed(detailed, run.records, run.t0)
                    print(f"per-request: {detailed}")
            if args.csv:
                append_csv(Path(args.csv), [result])  # now, so an interrupted sweep keeps the finished runs
            if args.plot:
                plot_run(run.records, run.t0, Path(args.plot), prefix=f"{load.label}-" if sweep else "")
            results.append(result)
    if sweep:
        print(format_sweep_table(results))
        if args.plot:
            plot_sweep(results, Path(args.plot))
    return results


def _run(argv: Sequence[str] | None) -> list[dict[str, Any]]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(async_main(argv))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(async_main(argv))


def main(argv: Sequence[str] | None = None) -> None:
    try:
        _run(argv)
    except (ValueError, OSError) as exc:  # bad flags or input files (FileNotFoundError is an OSError)
        print(f"hfserve-loadtest: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except TargetUnusableError as exc:
        print(f"hfserve-loadtest: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
